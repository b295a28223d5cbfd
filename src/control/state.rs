//! The control plane's view of the world: the config, the members of every pool, and the
//! runtime changes made through the admin API (persisted to `state_file`).
//!
//! Owns: every change of membership, weight and state, applied in one place. A change is
//! validated whole first, then persisted (temp file, fsync, rename), then applied and
//! published as a new snapshot: a failure at any step leaves nothing half-applied.
//! Must not touch: sockets or the event loop; the data plane sees only the snapshot swap and
//! the per-backend atomics.

use crate::backend::{Backend, BackendState, Members, Shared, Snapshot};
use crate::config::{Config, MAX_WEIGHT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A runtime change to one backend, kept across restarts and reloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Add { weight: u32 },
    Remove,
    Weight { weight: u32 },
}

/// Runtime changes per pool and backend, applied on top of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub pools: BTreeMap<String, BTreeMap<SocketAddr, Change>>,
}

/// What a reload changed: backends that joined (to check) and that left (to drain).
pub type Reloaded = (Vec<Arc<Backend>>, Vec<Arc<Backend>>);

/// An admin request that cannot be applied, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    /// Persisting failed: nothing was changed.
    Internal(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::Internal(m) => m,
        }
    }
}

pub struct State {
    pub config: Config,
    pub members: Members,
    overlay: Overlay,
    state_file: Option<PathBuf>,
    pub shared: Arc<Shared>,
}

impl Overlay {
    pub fn load(path: &Path) -> Result<Overlay, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("state file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(format!("state file {}: {e}", path.display())),
        }
    }

    /// Writes atomically: a crash leaves the old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("cannot write state file {}: {e}", path.display());
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        ));
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn with(&self, pool: &str, addr: SocketAddr, change: Change) -> Overlay {
        let mut o = self.clone();
        let entry = o.pools.entry(pool.to_string()).or_default();
        let merged = match (entry.get(&addr), change) {
            // A backend added at runtime and removed again leaves no trace.
            (Some(Change::Add { .. }), Change::Remove) => None,
            // A new weight for a backend added at runtime stays an addition.
            (Some(Change::Add { .. }), Change::Weight { weight }) => Some(Change::Add { weight }),
            (_, c) => Some(c),
        };
        match merged {
            Some(c) => {
                entry.insert(addr, c);
            }
            None => {
                entry.remove(&addr);
            }
        }
        o
    }
}

/// The members a config plus overlay give, reusing `existing` backends (same `Arc`) so their
/// states, counters and connections carry on. Backends the overlay adds start `starting`.
fn members_of(config: &Config, overlay: &Overlay, existing: &Members) -> Members {
    let mut out = Members::new();
    for (name, pc) in &config.pools {
        let old = existing.get(name);
        let reuse = |addr: SocketAddr, weight: u32, fresh: BackendState| match old
            .and_then(|o| o.iter().find(|b| b.addr == addr))
        {
            Some(b) => {
                b.set_weight(weight);
                b.clone()
            }
            None => Arc::new(Backend::new(name, addr, weight, fresh)),
        };
        let changes = overlay.pools.get(name);
        let mut list = Vec::new();
        for bc in pc.backends.get_ref() {
            let weight = match changes.and_then(|c| c.get(&bc.addr)) {
                Some(Change::Remove) => continue,
                Some(Change::Weight { weight }) | Some(Change::Add { weight }) => *weight,
                None => *bc.weight.get_ref(),
            };
            list.push(reuse(bc.addr, weight, BackendState::Up));
        }
        for (addr, change) in changes.into_iter().flatten() {
            if let Change::Add { weight } = change
                && !list.iter().any(|b| b.addr == *addr)
            {
                list.push(reuse(*addr, *weight, BackendState::Starting));
            }
        }
        out.insert(name.clone(), list);
    }
    out
}

impl State {
    /// The state at start: the config plus whatever the state file holds.
    pub fn new(config: Config, workers: usize) -> Result<State, String> {
        let overlay = match &config.state_file {
            Some(p) => Overlay::load(p)?,
            None => Overlay::default(),
        };
        let members = members_of(&config, &overlay, &Members::new());
        let shared = Shared::new(Snapshot::assemble(&config, &members, None), workers);
        Ok(State {
            state_file: config.state_file.clone(),
            config,
            members,
            overlay,
            shared,
        })
    }

    /// Publishes the current members as a new snapshot (balancers rebuilt).
    pub fn publish(&self) {
        let old = self.shared.snapshot.load_full();
        self.shared.snapshot.store(Arc::new(Snapshot::assemble(
            &self.config,
            &self.members,
            Some(&old),
        )));
    }

    fn persist(&self, next: &Overlay) -> Result<(), Refusal> {
        if let Some(p) = &self.state_file {
            next.save(p).map_err(Refusal::Internal)?;
        }
        Ok(())
    }

    fn find(&self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let list = self
            .members
            .get(pool)
            .ok_or_else(|| Refusal::NotFound(format!("no pool {pool:?}")))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| Refusal::BadRequest(format!("{addr:?} is not an IP:port address")))?;
        list.iter()
            .find(|b| b.addr == addr)
            .cloned()
            .ok_or_else(|| Refusal::NotFound(format!("pool {pool:?} has no backend {addr}")))
    }

    /// Adds a backend; it starts `starting` and takes traffic after `rise` passing checks.
    pub fn add(
        &mut self,
        pool: &str,
        addr: &str,
        weight: Option<u32>,
    ) -> Result<Arc<Backend>, Refusal> {
        if !self.members.contains_key(pool) {
            return Err(Refusal::NotFound(format!("no pool {pool:?}")));
        }
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| Refusal::BadRequest(format!("{addr:?} is not an IP:port address")))?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Refusal::BadRequest(format!(
                "{addr} needs a real IP and a port"
            )));
        }
        let weight = weight.unwrap_or(1);
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(Refusal::BadRequest(format!(
                "weight {weight} is out of range 1..={MAX_WEIGHT}"
            )));
        }
        if self.members[pool].iter().any(|b| b.addr == addr) {
            return Err(Refusal::Conflict(format!(
                "pool {pool:?} already has backend {addr}"
            )));
        }
        let next = self.overlay.with(pool, addr, Change::Add { weight });
        self.persist(&next)?;
        self.overlay = next;
        let b = Arc::new(Backend::new(pool, addr, weight, BackendState::Starting));
        self.members
            .get_mut(pool)
            .expect("checked above")
            .push(b.clone());
        self.publish();
        tracing::info!(pool, backend = %addr, weight, "backend added (starting)");
        Ok(b)
    }

    /// Stops new connections to a backend; existing ones continue.
    pub fn drain(&mut self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        if b.state() != BackendState::Draining {
            b.set_state(BackendState::Draining);
            self.publish();
            tracing::info!(pool, backend = %b.addr, active = b.active(), "backend draining");
        }
        Ok(b)
    }

    /// Starts removing a backend: persisted as removed, drained now; the caller finishes the
    /// removal with [`State::finish_removal`] once it has no connections (or time is up).
    pub fn remove(&mut self, pool: &str, addr: &str) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        let next = self.overlay.with(pool, b.addr, Change::Remove);
        self.persist(&next)?;
        self.overlay = next;
        b.set_state(BackendState::Draining);
        self.publish();
        tracing::info!(pool, backend = %b.addr, active = b.active(), "backend removing: draining first");
        Ok(b)
    }

    /// Takes a drained backend out of its pool; connections it still has are closed.
    pub fn finish_removal(&mut self, b: &Arc<Backend>) {
        if let Some(list) = self.members.get_mut(&b.pool) {
            let before = list.len();
            list.retain(|x| !Arc::ptr_eq(x, b));
            if list.len() != before {
                b.set_removed();
                self.publish();
                tracing::info!(pool = %b.pool, backend = %b.addr, remaining_connections = b.active(), "backend removed");
            }
        }
    }

    pub fn set_weight(
        &mut self,
        pool: &str,
        addr: &str,
        weight: u32,
    ) -> Result<Arc<Backend>, Refusal> {
        let b = self.find(pool, addr)?;
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(Refusal::BadRequest(format!(
                "weight {weight} is out of range 1..={MAX_WEIGHT}"
            )));
        }
        let next = self.overlay.with(pool, b.addr, Change::Weight { weight });
        self.persist(&next)?;
        self.overlay = next;
        b.set_weight(weight);
        self.publish();
        tracing::info!(pool, backend = %b.addr, weight, "weight changed");
        Ok(b)
    }

    /// A health verdict changed. Draining and removed backends keep their state.
    pub fn health_changed(&mut self, b: &Arc<Backend>, healthy: bool, reason: &str) {
        let member = self
            .members
            .get(&b.pool)
            .is_some_and(|l| l.iter().any(|x| Arc::ptr_eq(x, b)));
        if !member || b.state() == BackendState::Draining {
            return;
        }
        let next = if healthy {
            BackendState::Up
        } else {
            BackendState::Down
        };
        if b.state() != next {
            let from = b.state();
            b.set_state(next);
            self.publish();
            if healthy {
                tracing::info!(pool = %b.pool, backend = %b.addr, from = from.as_str(), reason, "backend up");
            } else {
                tracing::warn!(pool = %b.pool, backend = %b.addr, from = from.as_str(), reason, "backend down");
            }
        }
    }

    /// Applies a new config. Listeners cannot change without a restart. Returns the backends
    /// that joined (to check) and those that left (to drain, then remove).
    pub fn reload(&mut self, config: Config) -> Result<Reloaded, String> {
        let same_listeners = config.listeners.len() == self.config.listeners.len()
            && config
                .listeners
                .iter()
                .zip(&self.config.listeners)
                .all(|(a, b)| Config::same_socket(a, b));
        if !same_listeners {
            return Err(
                "listeners were added, removed, rebound or given another backlog or tcp_congestion: restart ringlb to apply that".into(),
            );
        }
        let mut members = members_of(&config, &self.overlay, &self.members);
        let mut joined = Vec::new();
        for (pool, list) in &members {
            for b in list {
                let known = self
                    .members
                    .get(pool)
                    .is_some_and(|l| l.iter().any(|x| Arc::ptr_eq(x, b)));
                if !known {
                    joined.push(b.clone());
                }
            }
        }
        // Backends the new config drops stay, draining, until they are empty.
        let mut left = Vec::new();
        for (pool, list) in &self.members {
            for b in list {
                let kept = members
                    .get(pool)
                    .is_some_and(|l| l.iter().any(|x| Arc::ptr_eq(x, b)));
                if !kept {
                    b.set_state(BackendState::Draining);
                    if let Some(l) = members.get_mut(pool) {
                        l.push(b.clone());
                    } else {
                        // The whole pool went away: nothing routes to it any more.
                        b.set_removed();
                    }
                    left.push(b.clone());
                }
            }
        }
        self.members = members;
        self.config = config;
        self.publish();
        Ok((joined, left))
    }

    /// Every pool has a routable backend; otherwise the pools that have none.
    pub fn pools_without_backends(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, l)| !l.iter().any(|b| b.is_routable()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(
            "t.toml",
            &format!(
                "{extra}\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }}]\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = State::new(config(""), 1).unwrap();
        let before = s.shared.snapshot.load_full();
        assert!(matches!(
            s.add("nope", "127.0.0.1:9003", None),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(
            s.add("p", "127.0.0.1:9001", None),
            Err(Refusal::Conflict(_))
        ));
        assert!(matches!(
            s.add("p", "not-an-addr", None),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            s.add("p", "127.0.0.1:9003", Some(0)),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            s.set_weight("p", "127.0.0.1:9009", 2),
            Err(Refusal::NotFound(_))
        ));
        assert!(
            Arc::ptr_eq(&before, &s.shared.snapshot.load_full()),
            "a refusal published a snapshot"
        );
        assert_eq!(s.members["p"].len(), 2);
    }

    #[test]
    fn a_reload_publishes_a_new_busy_poll() {
        use std::time::Duration;
        let mut s = State::new(config(""), 1).unwrap();
        assert_eq!(s.shared.snapshot.load().busy_poll, Duration::ZERO);
        s.reload(config("busy_poll = \"50us\"")).unwrap();
        assert_eq!(
            s.shared.snapshot.load().busy_poll,
            Duration::from_micros(50)
        );
    }

    #[test]
    fn overlay_persists_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let extra = format!("state_file = {:?}", file.display().to_string());
        let mut s = State::new(config(&extra), 1).unwrap();
        s.add("p", "127.0.0.1:9003", Some(3)).unwrap();
        let b = s.remove("p", "127.0.0.1:9001").unwrap();
        s.finish_removal(&b);
        s.set_weight("p", "127.0.0.1:9002", 5).unwrap();
        let again = State::new(config(&extra), 1).unwrap();
        let got: Vec<(String, u32, BackendState)> = again.members["p"]
            .iter()
            .map(|b| (b.addr.to_string(), b.weight(), b.state()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:9002".into(), 5, BackendState::Up),
                ("127.0.0.1:9003".into(), 3, BackendState::Starting)
            ]
        );
        // Added then removed at runtime: no trace left.
        let mut s = again;
        let b = s.remove("p", "127.0.0.1:9003").unwrap();
        s.finish_removal(&b);
        assert!(
            !Overlay::load(&file).unwrap().pools["p"]
                .contains_key(&"127.0.0.1:9003".parse().unwrap())
        );
    }

    #[test]
    fn a_failed_persist_applies_nothing() {
        let mut s = State::new(config("state_file = \"/nonexistent-dir/state.json\""), 1).unwrap();
        assert!(matches!(
            s.add("p", "127.0.0.1:9003", None),
            Err(Refusal::Internal(_))
        ));
        assert_eq!(s.members["p"].len(), 2);
    }

    #[test]
    fn health_does_not_override_draining() {
        let mut s = State::new(config(""), 1).unwrap();
        let b = s.drain("p", "127.0.0.1:9001").unwrap();
        s.health_changed(&b, true, "test");
        assert_eq!(b.state(), BackendState::Draining);
        let other = s.find("p", "127.0.0.1:9002").unwrap();
        s.health_changed(&other, false, "test");
        assert_eq!(other.state(), BackendState::Down);
        assert_eq!(s.pools_without_backends(), vec!["p".to_string()]);
    }
}
