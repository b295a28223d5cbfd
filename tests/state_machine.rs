//! A stateful property test of runtime state against the real binary: random sequences of
//! admin calls (add, weight, drain, ready, delete with and without a connection held),
//! connections released, SIGHUPs with the file changed or not, and restarts (SIGKILL, then
//! start again with the state file). After every step `GET /backends` and the state file
//! are compared with a model of the rules in README.md ("Runtime state").
//!
//! Bounded: `RINGLB_STATE_CASES` sequences (default 60; about 4 s here) of up to 20 steps, few shrink steps.

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const CANDIDATES: usize = 5;

#[derive(Debug, Clone)]
enum Step {
    Add(usize, u32),
    Weight(usize, u32),
    Drain(usize),
    Ready(usize),
    Delete {
        i: usize,
        hold: bool,
    },
    Release(usize),
    /// A new file: which candidates it lists, with their weights (never empty).
    Reload(BTreeMap<usize, u32>),
    ReloadUnchanged,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let i = 0..CANDIDATES;
    let w = 1u32..=4;
    let file = prop::collection::btree_map(0..CANDIDATES, 1u32..=4, 1..=3);
    prop_oneof![
        3 => (i.clone(), w.clone()).prop_map(|(i, w)| Step::Add(i, w)),
        2 => (i.clone(), w).prop_map(|(i, w)| Step::Weight(i, w)),
        2 => i.clone().prop_map(Step::Drain),
        2 => i.clone().prop_map(Step::Ready),
        3 => (i.clone(), any::<bool>()).prop_map(|(i, hold)| Step::Delete { i, hold }),
        1 => i.prop_map(Step::Release),
        2 => file.prop_map(Step::Reload),
        1 => Just(Step::ReloadUnchanged),
        1 => Just(Step::Restart),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Add,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    op: Op,
    weight: Option<u32>,
    drained: bool,
}

impl Entry {
    fn empty(&self) -> bool {
        self.op == Op::Keep && self.weight.is_none() && !self.drained
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Deleted,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    weight: u32,
    draining: bool,
    leaving: Option<Leaving>,
}

/// The rules, written again from the README, independently of src/control/state.rs.
#[derive(Debug, Default, Clone)]
struct Model {
    file: BTreeMap<usize, u32>,
    entries: BTreeMap<usize, Entry>,
    members: BTreeMap<usize, Member>,
    held: BTreeMap<usize, usize>,
}

impl Model {
    fn entry(&self, i: usize) -> Entry {
        self.entries.get(&i).cloned().unwrap_or(Entry {
            op: Op::Keep,
            weight: None,
            drained: false,
        })
    }
    fn set_entry(&mut self, i: usize, e: Entry) {
        if e.empty() {
            self.entries.remove(&i);
        } else {
            self.entries.insert(i, e);
        }
    }
    /// Members a file plus entries give (fresh: nothing leaving).
    fn members_of(&self) -> BTreeMap<usize, Member> {
        let mut out = BTreeMap::new();
        for (&i, &w) in &self.file {
            let e = self.entry(i);
            if e.op == Op::Remove {
                continue;
            }
            out.insert(
                i,
                Member {
                    weight: e.weight.unwrap_or(w),
                    draining: e.drained,
                    leaving: None,
                },
            );
        }
        for (&i, e) in &self.entries {
            if e.op == Op::Add && !self.file.contains_key(&i) {
                out.insert(
                    i,
                    Member {
                        weight: e.weight.unwrap_or(1),
                        draining: e.drained,
                        leaving: None,
                    },
                );
            }
        }
        out
    }
    /// Leaving members with no connection held are gone (their drain ends at once).
    fn settle(&mut self) {
        let done: Vec<usize> = self
            .members
            .iter()
            .filter(|(i, m)| m.leaving.is_some() && self.held.get(i).copied().unwrap_or(0) == 0)
            .map(|(i, _)| *i)
            .collect();
        for i in done {
            self.members.remove(&i);
            if !self.file.contains_key(&i) && self.entry(i).op == Op::Remove {
                self.entries.remove(&i);
            }
        }
    }
    fn reload(&mut self, file: BTreeMap<usize, u32>) {
        self.file = file;
        let listed = self.file.clone();
        let deleting: Vec<usize> = self
            .members
            .iter()
            .filter(|(_, m)| m.leaving == Some(Leaving::Deleted))
            .map(|(i, _)| *i)
            .collect();
        self.entries.retain(|i, e| {
            e.op == Op::Add
                || listed.contains_key(i)
                || (e.op == Op::Remove && deleting.contains(i))
        });
        let mut next = self.members_of();
        for (i, m) in &self.members {
            match next.get_mut(i) {
                // Kept: a dropped one listed again stays; its drain is what the entry says.
                Some(_) => assert_ne!(
                    m.leaving,
                    Some(Leaving::Deleted),
                    "a deleted backend has a remove entry"
                ),
                None => {
                    next.insert(
                        *i,
                        Member {
                            weight: m.weight,
                            draining: true,
                            leaving: Some(m.leaving.unwrap_or(Leaving::Dropped)),
                        },
                    );
                }
            }
        }
        self.members = next;
        self.settle();
    }
    fn restart(&mut self) {
        self.held.clear();
        self.members = self.members_of();
    }
}

/// The balancer as the harness drives it.
struct Harness {
    backends: Vec<TestBackend>,
    state_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    proxy: Option<Proxy>,
    port: u16,
    admin: SocketAddr,
    metrics: SocketAddr,
    held: BTreeMap<usize, Vec<TcpStream>>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness {
            backends: (0..CANDIDATES)
                .map(|i| TestBackend::start(&format!("b{i}")))
                .collect(),
            state_file: dir.path().join("state.json"),
            _dir: dir,
            proxy: None,
            port: free_port(),
            admin: addr(free_port()),
            metrics: addr(free_port()),
            held: BTreeMap::new(),
        }
    }
    fn config(&self, file: &BTreeMap<usize, u32>) -> String {
        let list: Vec<(SocketAddr, u32)> = file
            .iter()
            .map(|(&i, &w)| (self.backends[i].addr, w))
            .collect();
        format!(
            "workers = 1\nshutdown_timeout = \"0s\"\nstate_file = {:?}\n[admin]\nlisten = \"{}\"\n[metrics]\nlisten = \"{}\"\n{}{}[pools.p.health]\ninterval = \"100ms\"\nrise = 1\n",
            self.state_file.display().to_string(),
            self.admin,
            self.metrics,
            listener_config("l", self.port, "p", ""),
            pool_config("p", "round_robin", &list, "")
        )
    }
    fn start(&mut self, file: &BTreeMap<usize, u32>) {
        self.held.clear();
        self.proxy = None; // SIGKILL, as a crash would
        self.proxy = Some(Proxy::start(&self.config(file), addr(self.port)));
        let admin = self.admin;
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(admin).is_ok()
        });
    }
    fn reloads(&self) -> f64 {
        unlabelled_metric(self.metrics, "ringlb_config_reloads_total").unwrap_or(0.0)
    }
    fn reload(&mut self, file: &BTreeMap<usize, u32>) {
        let before = self.reloads();
        let p = self.proxy.as_ref().unwrap();
        std::fs::write(&p.config_path, self.config(file)).unwrap();
        p.signal("HUP");
        wait_until(Duration::from_secs(5), || self.reloads() > before);
    }
    fn index_of(&self, a: &str) -> usize {
        self.backends
            .iter()
            .position(|b| b.addr.to_string() == a)
            .unwrap_or_else(|| panic!("unknown backend {a}"))
    }
    /// Opens connections through the balancer until one reaches backend `i` (round robin
    /// over the routable ones), and keeps that one.
    fn hold(&mut self, i: usize) -> bool {
        let want = format!("b{i}");
        for _ in 0..3 * CANDIDATES {
            let Ok(s) = TcpStream::connect(addr(self.port)) else {
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut line = String::new();
            if std::io::BufReader::new(&s).read_line(&mut line).is_err() {
                continue;
            }
            if line.trim() == want {
                self.held.entry(i).or_default().push(s);
                return true;
            }
        }
        false
    }
    /// `GET /backends` as (index -> (weight, draining)).
    fn observed(&self) -> BTreeMap<usize, (u32, bool)> {
        first_pool_backends(self.admin)
            .iter()
            .map(|b| {
                let i = self.index_of(b["addr"].as_str().unwrap());
                (
                    i,
                    (
                        b["weight"].as_u64().unwrap() as u32,
                        b["state"] == "draining",
                    ),
                )
            })
            .collect()
    }
    /// The state file as (index -> entry).
    fn on_disk(&self) -> BTreeMap<usize, Entry> {
        let Ok(text) = std::fs::read_to_string(&self.state_file) else {
            return BTreeMap::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut out = BTreeMap::new();
        if let Some(p) = v["pools"].get("p").and_then(|p| p.as_object()) {
            for (a, e) in p {
                let op = match e["op"].as_str().unwrap_or("keep") {
                    "add" => Op::Add,
                    "remove" => Op::Remove,
                    _ => Op::Keep,
                };
                let entry = Entry {
                    op,
                    weight: e["weight"].as_u64().map(|w| w as u32),
                    drained: e["drained"].as_bool().unwrap_or(false),
                };
                out.insert(self.index_of(a), entry);
            }
        }
        out
    }
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> u16 {
        http(self.admin, method, path, body, None).0
    }
}

/// POST drain (`on`) or ready to backend `i`, and what the model expects of it: 404 for a
/// stranger; for a backend on its way out, a drain changes nothing (202) and ready is
/// refused (409); otherwise the drain flag is set or cleared.
fn set_drained(
    h: &Harness,
    m: &mut Model,
    i: usize,
    on: bool,
    at: (usize, &Step),
) -> Result<(), TestCaseError> {
    let verb = if on { "drain" } else { "ready" };
    let got = h.call(
        "POST",
        &format!("/pools/p/backends/{}/{verb}", h.backends[i].addr),
        None,
    );
    let (n, s) = at;
    match m.members.get(&i).cloned() {
        None => prop_assert_eq!(got, 404, "step {}: {:?}", n, s),
        Some(x) if x.leaving.is_some() => {
            prop_assert_eq!(got, if on { 202 } else { 409 }, "step {}: {:?}", n, s)
        }
        Some(_) => {
            prop_assert_eq!(got, if on { 202 } else { 200 }, "step {}: {:?}", n, s);
            let mut e = m.entry(i);
            e.drained = on;
            m.set_entry(i, e);
            m.members.get_mut(&i).unwrap().draining = on;
        }
    }
    Ok(())
}

fn run_sequence(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let mut m = Model {
        file: [(0usize, 1u32), (1, 1)].into_iter().collect(),
        ..Model::default()
    };
    h.start(&m.file);
    m.members = m.members_of();
    for (n, s) in steps.iter().enumerate() {
        let addrs: Vec<SocketAddr> = h.backends.iter().map(|b| b.addr).collect();
        let a = |i: usize| addrs[i];
        let member = |m: &Model, i: usize| m.members.get(&i).cloned();
        match s {
            Step::Add(i, w) => {
                let got = h.call(
                    "POST",
                    "/pools/p/backends",
                    Some(&format!("{{\"addr\": \"{}\", \"weight\": {w}}}", a(*i))),
                );
                if member(&m, *i).is_some() {
                    prop_assert_eq!(got, 409, "step {}: {:?}", n, s);
                } else {
                    prop_assert_eq!(got, 201, "step {}: {:?}", n, s);
                    m.set_entry(
                        *i,
                        Entry {
                            op: Op::Add,
                            weight: Some(*w),
                            drained: false,
                        },
                    );
                    m.members.insert(
                        *i,
                        Member {
                            weight: *w,
                            draining: false,
                            leaving: None,
                        },
                    );
                }
            }
            Step::Weight(i, w) => {
                let got = h.call(
                    "PUT",
                    &format!("/pools/p/backends/{}/weight", a(*i)),
                    Some(&format!("{{\"weight\": {w}}}")),
                );
                match member(&m, *i) {
                    None => prop_assert_eq!(got, 404, "step {}: {:?}", n, s),
                    Some(x) if x.leaving.is_some() => {
                        prop_assert_eq!(got, 409, "step {}: {:?}", n, s)
                    }
                    Some(_) => {
                        prop_assert_eq!(got, 200, "step {}: {:?}", n, s);
                        let mut e = m.entry(*i);
                        e.weight = Some(*w);
                        m.set_entry(*i, e);
                        m.members.get_mut(i).unwrap().weight = *w;
                    }
                }
            }
            Step::Drain(i) => set_drained(&h, &mut m, *i, true, (n, s))?,
            Step::Ready(i) => set_drained(&h, &mut m, *i, false, (n, s))?,
            Step::Delete { i, hold } => {
                if *hold && member(&m, *i).is_some_and(|x| !x.draining) && h.hold(*i) {
                    *m.held.entry(*i).or_default() += 1;
                }
                let got = h.call(
                    "DELETE",
                    &format!("/pools/p/backends/{}?drain_timeout=1m", a(*i)),
                    None,
                );
                match member(&m, *i) {
                    None => prop_assert_eq!(got, 404, "step {}: {:?}", n, s),
                    Some(x) => {
                        prop_assert_eq!(got, 202, "step {}: {:?}", n, s);
                        if x.leaving != Some(Leaving::Deleted) {
                            m.set_entry(
                                *i,
                                Entry {
                                    op: Op::Remove,
                                    weight: None,
                                    drained: false,
                                },
                            );
                            let x = m.members.get_mut(i).unwrap();
                            x.draining = true;
                            x.leaving = Some(Leaving::Deleted);
                        }
                        m.settle();
                    }
                }
            }
            Step::Release(i) => {
                h.held.remove(i);
                m.held.remove(i);
                m.settle();
            }
            Step::Reload(file) => {
                h.reload(file);
                m.reload(file.clone());
            }
            Step::ReloadUnchanged => {
                let file = m.file.clone();
                h.reload(&file);
                m.reload(file);
            }
            Step::Restart => {
                let file = m.file.clone();
                h.start(&file);
                m.restart();
            }
        }
        // Removals and reloads land asynchronously: wait (bounded) for the model's picture.
        let want: BTreeMap<usize, (u32, bool)> = m
            .members
            .iter()
            .map(|(i, x)| (*i, (x.weight, x.draining)))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (got, disk) = (h.observed(), h.on_disk());
            if got == want && disk == m.entries {
                break;
            }
            if std::time::Instant::now() >= deadline {
                prop_assert_eq!(
                    &got,
                    &want,
                    "GET /backends after step {}: {:?}\nsteps: {:?}\nmodel: {:?}",
                    n,
                    s,
                    steps,
                    m
                );
                prop_assert_eq!(
                    &disk,
                    &m.entries,
                    "state file after step {}: {:?}\nsteps: {:?}",
                    n,
                    s,
                    steps
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

#[test]
fn admin_calls_reloads_and_restarts_agree_with_the_model() {
    let cases = std::env::var("RINGLB_STATE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..=20), |steps| {
        run_sequence(&steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Sequences the property test found, kept as named regressions.
#[test]
fn regression_delete_post_delete_of_a_listed_backend_then_restart() {
    use Step::*;
    run_sequence(&[
        Delete { i: 0, hold: false },
        Add(0, 2),
        Delete { i: 0, hold: false },
        ReloadUnchanged,
        Restart,
    ])
    .unwrap();
}

/// Found by the property test: a DELETE still draining, a file that drops the backend, then
/// one that lists it again. The tombstone was dropped with the first reload, so the second
/// brought the backend back as a member while its DELETE still went on.
#[test]
fn regression_delete_draining_across_a_file_that_drops_then_relists_it() {
    use Step::*;
    let without: BTreeMap<usize, u32> = [(2, 1)].into_iter().collect();
    let with: BTreeMap<usize, u32> = [(1, 1)].into_iter().collect();
    run_sequence(&[
        Delete { i: 1, hold: true },
        Reload(without),
        Reload(with),
        Release(1),
        ReloadUnchanged,
        Restart,
    ])
    .unwrap();
}

#[test]
fn regression_drain_then_restart_then_ready() {
    use Step::*;
    run_sequence(&[Drain(1), Restart, Ready(1), Restart]).unwrap();
}

#[test]
fn regression_delete_with_a_held_connection_across_a_reload_that_edits_it() {
    use Step::*;
    let edit: BTreeMap<usize, u32> = [(0, 3), (1, 1)].into_iter().collect();
    run_sequence(&[
        Delete { i: 0, hold: true },
        Reload(edit),
        Weight(0, 2),
        Release(0),
        ReloadUnchanged,
    ])
    .unwrap();
}
