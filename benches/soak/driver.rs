//! The soak with faults: real `ringlb serve`, real echo backends (`ringlb backend --echo`),
//! a real `ringlb scale`, traffic verified byte for byte, and a fault driver, all on
//! loopback, for a bounded duration.
//!
//! Traffic (threads, each looping until the end): keep-alive echo rounds, short
//! connections, bulk transfers read while written, and half-closes (send, shut the write
//! side, read the echo to EOF). Every byte that comes back is compared with what was sent.
//!
//! Faults, on a timetable scaled to the duration: SIGHUP with changed weights; admin churn
//! on a fifth backend (add, drain, ready, delete); one static backend SIGKILLed and started
//! again on its port; `serve --upgrade` to a new process; the scaler launching and removing
//! backends on a schedule (out at seconds 0 and 30 of each minute, in 12 s later).
//!
//! A failed connection is explained only when the backend that served it (its greeting
//! names it) was killed while it ran, or it failed without a greeting within 2 s of a kill
//! (ringlb had connected to the backend just before it died). Everything else is
//! unexplained. The process's descriptors and RSS are sampled over time; at the end, with
//! no traffic and no connection left, its descriptors are compared with the first idle
//! sample.
//!
//! Shared by `benches/soak/main.rs` (the long run) and `tests/soak.rs` (60 s in CI).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Opts {
    pub bin: PathBuf,
    pub duration: Duration,
    /// Threads per traffic kind.
    pub threads: usize,
    /// Largest bulk transfer, bytes.
    pub bulk_max: usize,
    /// Time between `serve --upgrade`s.
    pub upgrade_every: Duration,
    /// Time between kills of a backend.
    pub kill_every: Duration,
    pub sample_every: Duration,
    /// Print samples and faults as they happen.
    pub verbose: bool,
}

#[derive(Default, Debug)]
pub struct Sample {
    pub t: f64,
    pub pid: u32,
    pub fds: usize,
    pub rss_kib: u64,
    pub active: f64,
}

/// Descriptors the last idle sample may hold beyond the first: the last comes from an
/// upgraded successor, which holds a few more or fewer than the first process (the first
/// sample can come before the control plane has opened all of its own). A leak over
/// thousands of connections shows as hundreds.
pub const FD_SLACK: usize = 8;

#[derive(Default, Debug)]
pub struct Report {
    pub seconds: f64,
    pub connections_ok: u64,
    pub bytes_verified: u64,
    pub mismatches: u64,
    /// Failed connections the faults explain, by cause.
    pub explained: BTreeMap<String, u64>,
    /// Failed connections nothing explains, by cause, and a few of them in full.
    pub unexplained: BTreeMap<String, u64>,
    pub unexplained_samples: Vec<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    pub samples: Vec<Sample>,
    /// Descriptors of the serving process when idle: first (before traffic), last (after).
    pub idle_fds: (usize, usize),
    /// `ringlb_relay_repairs_total`, summed over every process the run had.
    pub relay_repairs: f64,
    /// Error lines ringlb wrote (panics, repairs, failed reloads), a few in full.
    pub ringlb_errors: Vec<String>,
}

impl Report {
    pub fn failed_unexplained(&self) -> u64 {
        self.unexplained.values().sum()
    }

    /// A Markdown table of the samples and a summary, as the README shows it.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| t (s) | pid | open fds | RSS (MiB) | active connections |\n|---:|---:|---:|---:|---:|\n");
        for x in &self.samples {
            s.push_str(&format!(
                "| {:.0} | {} | {} | {:.1} | {:.0} |\n",
                x.t,
                x.pid,
                x.fds,
                x.rss_kib as f64 / 1024.0,
                x.active
            ));
        }
        s.push_str(&format!(
            "\n- duration: {:.0} s; connections verified: {}; bytes verified: {} ({:.1} GiB); checksum mismatches: {}\n",
            self.seconds,
            self.connections_ok,
            self.bytes_verified,
            self.bytes_verified as f64 / (1u64 << 30) as f64,
            self.mismatches
        ));
        s.push_str(&format!("- faults: {:?}\n", self.faults));
        s.push_str(&format!(
            "- failed, explained by a fault: {:?}\n",
            self.explained
        ));
        s.push_str(&format!("- failed, unexplained: {:?}\n", self.unexplained));
        s.push_str(&format!(
            "- idle descriptors before and after: {} and {}\n",
            self.idle_fds.0, self.idle_fds.1
        ));
        s.push_str(&format!(
            "- ringlb_relay_repairs_total: {}; error lines from ringlb: {}\n",
            self.relay_repairs,
            self.ringlb_errors.len()
        ));
        s
    }
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port range of `n` ports that are free now (for the scaler's process actuator).
fn free_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > 65535 - n {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports in a row");
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn echo_backend(bin: &Path, port: u16, name: &str) -> Proc {
    let c = Command::new(bin)
        .args([
            "backend",
            "--echo",
            "--port",
            &port.to_string(),
            "--name",
            name,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringlb backend --echo");
    wait_connect(SocketAddr::from(([127, 0, 0, 1], port)));
    Proc(c)
}

fn wait_connect(a: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(a).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{a} never accepted");
}

/// A plain HTTP/1.1 request (Connection: close); status and body. Errors are status 0.
fn http(to: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(to) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn metric_sum(metrics: SocketAddr, name: &str) -> Option<f64> {
    let (st, body) = http(metrics, "GET", "/metrics", None);
    if st != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// xorshift64: deterministic bytes per connection.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// What the traffic threads share: counters, the record of kills, the end.
struct Traffic {
    to: SocketAddr,
    stop: AtomicBool,
    ok: AtomicU64,
    bytes: AtomicU64,
    mismatches: AtomicU64,
    /// Each kill: backend name, when it was killed, when it came back.
    kills: Mutex<Vec<(String, Instant, Option<Instant>)>>,
    failures: Mutex<Vec<Failure>>,
    bulk_max: usize,
}

/// A failed connection: what failed, the backend its greeting named (if it got one), and
/// when it started and ended.
type Failure = (String, Option<String>, Instant, Instant);

#[derive(Clone, Copy)]
enum Kind {
    KeepAlive,
    Short,
    Bulk,
    HalfClose,
}

impl Traffic {
    /// One connection of `kind`: Ok(bytes verified), or the cause and the backend's name.
    fn one(&self, kind: Kind, seed: &mut u64) -> Result<u64, (String, Option<String>)> {
        let s =
            TcpStream::connect(self.to).map_err(|e| (format!("connect: {}", e.kind()), None))?;
        let io = |what: &str, e: std::io::Error| format!("{what}: {}", e.kind());
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut name = String::new();
        match r.read_line(&mut name) {
            Ok(0) => return Err(("greeting: EOF".into(), None)),
            Err(e) => return Err((io("greeting", e), None)),
            Ok(_) => {}
        }
        let name = Some(name.trim().to_string());
        let fail = |cause: String| (cause, name.clone());
        let mut w = s;
        let mut total = 0u64;
        let exchange =
            |r: &mut BufReader<TcpStream>, w: &mut TcpStream, n: usize, seed: &mut u64| {
                let mut out = vec![0u8; n];
                fill(&mut out, seed);
                w.write_all(&out).map_err(|e| io("write", e))?;
                let mut back = vec![0u8; n];
                r.read_exact(&mut back).map_err(|e| io("read", e))?;
                if back != out {
                    return Err("checksum mismatch".to_string());
                }
                Ok::<u64, String>(n as u64)
            };
        match kind {
            Kind::KeepAlive => {
                let rounds = 10 + (*seed % 30) as usize;
                for _ in 0..rounds {
                    let n = 64 + (*seed % 4000) as usize;
                    total += exchange(&mut r, &mut w, n, seed).map_err(fail)?;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Kind::Short => {
                total += exchange(&mut r, &mut w, 100, seed).map_err(fail)?;
            }
            Kind::Bulk => {
                let n = 64 * 1024 + (*seed as usize % self.bulk_max);
                let mut out = vec![0u8; n];
                fill(&mut out, seed);
                let mut w2 = w.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    w2.write_all(&out).map(|_| xxhash_rust::xxh3::xxh3_64(&out))
                });
                let mut back = vec![0u8; n];
                let read = r.read_exact(&mut back);
                let sent = writer.join().unwrap().map_err(|e| fail(io("write", e)))?;
                read.map_err(|e| fail(io("read", e)))?;
                if xxhash_rust::xxh3::xxh3_64(&back) != sent {
                    return Err(fail("checksum mismatch".into()));
                }
                total += n as u64;
            }
            Kind::HalfClose => {
                let n = 1 + (*seed % 20_000) as usize;
                let mut out = vec![0u8; n];
                fill(&mut out, seed);
                w.write_all(&out).map_err(|e| fail(io("write", e)))?;
                std::thread::sleep(Duration::from_millis(10));
                w.shutdown(Shutdown::Write)
                    .map_err(|e| fail(io("shutdown", e)))?;
                let mut back = Vec::new();
                r.read_to_end(&mut back)
                    .map_err(|e| fail(io("read to EOF", e)))?;
                if back != out {
                    return Err(fail(format!(
                        "{} ({} of {} bytes before EOF)",
                        if back.len() == n {
                            "checksum mismatch"
                        } else {
                            "short read"
                        },
                        back.len(),
                        n
                    )));
                }
                return Ok(n as u64);
            }
        }
        // Every kind but HalfClose ends with a half-close too: the echo's EOF must follow.
        w.shutdown(Shutdown::Write)
            .map_err(|e| fail(io("shutdown", e)))?;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)
            .map_err(|e| fail(io("read to EOF", e)))?;
        if !rest.is_empty() {
            return Err(fail(format!("{} bytes more than sent", rest.len())));
        }
        Ok(total)
    }

    fn run(self: Arc<Self>, kind: Kind, mut seed: u64) {
        while !self.stop.load(Relaxed) {
            let started = Instant::now();
            match self.one(kind, &mut seed) {
                Ok(n) => {
                    self.ok.fetch_add(1, Relaxed);
                    self.bytes.fetch_add(n, Relaxed);
                }
                Err((cause, name)) => {
                    if cause.starts_with("checksum") {
                        self.mismatches.fetch_add(1, Relaxed);
                    }
                    self.failures
                        .lock()
                        .unwrap()
                        .push((cause, name, started, Instant::now()));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
    }

    /// Whether a kill explains a failure of a connection that ran from `started` to `ended`
    /// through `backend` (None: it failed before the greeting).
    fn explained(&self, backend: &Option<String>, started: Instant, ended: Instant) -> bool {
        let kills = self.kills.lock().unwrap();
        kills.iter().any(|(name, at, back)| match backend {
            // It ran on that backend when it was killed.
            Some(b) => b == name && started <= *at && ended >= *at,
            // It failed before the greeting, just after a kill or while the backend was
            // down (ringlb had connected to it as it died).
            None => ended >= *at && ended <= back.unwrap_or(*at) + Duration::from_secs(2),
        })
    }
}

/// The serving ringlb processes: the newest serves; older ones finish their connections.
struct Balancer {
    bin: PathBuf,
    config: PathBuf,
    metrics: SocketAddr,
    current: Proc,
    old: Vec<Proc>,
    log: PathBuf,
    repairs: BTreeMap<u32, f64>,
}

impl Balancer {
    fn spawn(bin: &Path, config: &Path, log: &Path, upgrade: bool) -> Proc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        if upgrade {
            cmd.arg("--upgrade");
        }
        Proc(
            cmd.arg("--config")
                .arg(config)
                .env("RINGLB_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("start ringlb"),
        )
    }

    fn pid(&self) -> u32 {
        self.current.0.id()
    }

    fn note_repairs(&mut self) {
        if let Some(v) = metric_sum(self.metrics, "ringlb_relay_repairs_total") {
            let pid = self.pid();
            let e = self.repairs.entry(pid).or_default();
            *e = e.max(v);
        }
    }

    /// `serve --upgrade`: a successor takes the sockets; the old process finishes its
    /// connections and exits (reaped later).
    fn upgrade(&mut self) -> Result<(), String> {
        self.note_repairs();
        let new = Self::spawn(&self.bin, &self.config, &self.log, true);
        let old = std::mem::replace(&mut self.current, new);
        let old_pid = old.0.id();
        self.old.push(old);
        // Handed over once the old process holds no listening socket any more (it closes
        // its copies as it begins to stop), or has exited.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.current.0.try_wait() {
                return Err(format!("the successor exited: {st}"));
            }
            let exited = self
                .old
                .last_mut()
                .is_some_and(|o| o.0.try_wait().ok().flatten().is_some());
            if exited || !holds_a_listener(old_pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the old process {old_pid} never let go"))
    }

    /// Reaps old processes that have exited; an exit code other than 0 is an error.
    fn reap(&mut self, errors: &mut Vec<String>) {
        self.old.retain_mut(|p| match p.0.try_wait() {
            Ok(Some(st)) => {
                if st.code() != Some(0) {
                    errors.push(format!("an old ringlb process exited with {st}"));
                }
                false
            }
            _ => true,
        });
    }
}

/// Whether process `pid` holds a listening TCP socket (an old ringlb closes its copies as
/// it hands over).
fn holds_a_listener(pid: u32) -> bool {
    let inodes: std::collections::HashSet<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"0A")).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path())
            .ok()
            .and_then(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(|s| s.to_string())
            })
            .is_some_and(|i| inodes.contains(&i))
    })
}

fn ringlb_config(
    port: u16,
    admin: SocketAddr,
    metrics: SocketAddr,
    sock: &Path,
    statics: &[(u16, u32)],
) -> String {
    let list: Vec<String> = statics
        .iter()
        .map(|(p, w)| format!("{{ addr = \"127.0.0.1:{p}\", weight = {w} }}"))
        .collect();
    format!(
        r#"workers = 2
shutdown_timeout = "60s"
upgrade_socket = {sock:?}
buffer_count = 64
[admin]
listen = "{admin}"
[metrics]
listen = "{metrics}"
[[listeners]]
name = "soak"
bind = "127.0.0.1:{port}"
pool = "p"
idle_timeout = "60s"
backlog = 4096
[pools.p]
algorithm = "round_robin"
backends = [{}]
[pools.p.health]
kind = "tcp"
interval = "300ms"
timeout = "300ms"
rise = 2
fall = 1
"#,
        list.join(", ")
    )
}

fn scaler_config(
    bin: &Path,
    admin: SocketAddr,
    metrics: SocketAddr,
    first_port: u16,
    listen: SocketAddr,
) -> String {
    format!(
        r#"pool = "p"
admin_url = "http://{admin}"
interval = "500ms"
listen = "{listen}"
min = 1
max = 6
drain_timeout = "30s"
stop_backends_on_exit = true
startup_timeout = "30s"
[source]
kind = "lb"
metrics_url = "http://{metrics}/metrics"
metric = "active_connections"
[policy]
kind = "target_tracking"
target = 1000
scale_in_stabilization = "1s"
[actuator]
kind = "process"
command = "{} backend --echo --port {{port}}"
ports = "{first_port}-{}"
host = "127.0.0.1"
stop_grace = "5s"
[[schedule]]
name = "burst"
cron = "0,30 * * * * *"
min = 6
duration = "12s"
"#,
        bin.display(),
        first_port + 9
    )
}

/// Runs the soak; the report says what happened. Panics only on a broken setup.
pub fn run(o: &Opts) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let bin = o.bin.clone();
    let port = free_port();
    let (admin, metrics) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let sock = dir.path().join("upgrade.sock");
    let config = dir.path().join("ringlb.toml");
    let log = dir.path().join("ringlb.log");
    // Three static backends, and a fifth that the admin churn adds and removes.
    let names = ["s1", "s2", "s3"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut statics: Vec<Proc> = names
        .iter()
        .zip(&ports)
        .map(|(n, &p)| echo_backend(&bin, p, n))
        .collect();
    let churn_port = free_port();
    let _churn = echo_backend(&bin, churn_port, "churn");
    let mut weights = vec![1u32; 3];
    let write_config = |w: &[u32]| {
        let list: Vec<(u16, u32)> = ports.iter().copied().zip(w.iter().copied()).collect();
        std::fs::write(&config, ringlb_config(port, admin, metrics, &sock, &list)).unwrap();
    };
    write_config(&weights);
    let mut lb = Balancer {
        bin: bin.clone(),
        config: config.clone(),
        metrics,
        current: Balancer::spawn(&bin, &config, &log, false),
        old: Vec::new(),
        log: log.clone(),
        repairs: BTreeMap::new(),
    };
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    wait_connect(to);
    wait_connect(metrics);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !http(admin, "GET", "/backends", None)
            .1
            .matches("\"up\"")
            .count()
            .eq(&3)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let mut report = Report {
        idle_fds: (fds_of(lb.pid()), 0),
        ..Report::default()
    };
    let scaler_path = dir.path().join("scaler.toml");
    let scaler_listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        &scaler_path,
        scaler_config(&bin, admin, metrics, free_range(10), scaler_listen),
    )
    .unwrap();
    let scaler_log = dir.path().join("scaler.log");
    let mut scaler = Proc(
        Command::new(&bin)
            .args(["scale", "--config"])
            .arg(&scaler_path)
            .env("RINGLB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&scaler_log).unwrap())
            .spawn()
            .expect("start ringlb scale"),
    );

    let traffic = Arc::new(Traffic {
        to,
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        kills: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        bulk_max: o.bulk_max,
    });
    let mut threads = Vec::new();
    for (k, kind) in [Kind::KeepAlive, Kind::Short, Kind::Bulk, Kind::HalfClose]
        .into_iter()
        .enumerate()
    {
        for i in 0..o.threads {
            let t = traffic.clone();
            let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((k * 1000 + i) as u64 + 1);
            threads.push(std::thread::spawn(move || t.run(kind, seed)));
        }
    }

    // The fault driver.
    let mut errors = Vec::new();
    let end = start + o.duration;
    let (mut next_hup, mut next_churn, mut next_kill, mut next_upgrade, mut next_sample) = (
        start + Duration::from_secs(10),
        start + Duration::from_secs(2),
        start + o.kill_every / 2,
        start + o.upgrade_every,
        start,
    );
    let mut churn_step = 0usize;
    let churn_addr = format!("127.0.0.1:{churn_port}");
    let mut killed: Option<(usize, Instant)> = None;
    let count = |r: &mut Report, what: &'static str| *r.faults.entry(what).or_default() += 1;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += o.sample_every;
            lb.note_repairs();
            let pid = lb.pid();
            let s = Sample {
                t: start.elapsed().as_secs_f64(),
                pid,
                fds: fds_of(pid),
                rss_kib: rss_kib(pid),
                active: metric_sum(metrics, "ringlb_listener_active_connections").unwrap_or(-1.0),
            };
            if o.verbose {
                eprintln!(
                    "soak: t={:.0}s pid={} fds={} rss={:.1}MiB active={} ok={} bytes={} failed={}",
                    s.t,
                    s.pid,
                    s.fds,
                    s.rss_kib as f64 / 1024.0,
                    s.active,
                    traffic.ok.load(Relaxed),
                    traffic.bytes.load(Relaxed),
                    traffic.failures.lock().unwrap().len()
                );
            }
            report.samples.push(s);
        }
        if now >= next_hup {
            next_hup += Duration::from_secs(10);
            for (i, w) in weights.iter_mut().enumerate() {
                *w = 1 + ((*w as usize + i + 1) % 4) as u32;
            }
            write_config(&weights);
            signal(lb.pid(), "HUP");
            count(&mut report, "SIGHUP with new weights");
        }
        if now >= next_churn {
            next_churn += Duration::from_secs(2);
            let path = format!("/pools/p/backends/{churn_addr}");
            let (what, st) = match churn_step % 4 {
                0 => (
                    "admin add",
                    http(
                        admin,
                        "POST",
                        "/pools/p/backends",
                        Some(&format!("{{\"addr\": \"{churn_addr}\"}}")),
                    )
                    .0,
                ),
                1 => (
                    "admin drain",
                    http(admin, "POST", &format!("{path}/drain"), None).0,
                ),
                2 => (
                    "admin ready",
                    http(admin, "POST", &format!("{path}/ready"), None).0,
                ),
                _ => (
                    "admin delete",
                    http(admin, "DELETE", &format!("{path}?drain_timeout=30s"), None).0,
                ),
            };
            // 503: asked during an upgrade's handover (asked again at the next step); 409:
            // an add while the delete before still drains; 404: a step after such an add,
            // once that delete has finished (the backend is not there).
            if !matches!(st, 200 | 201 | 202 | 404 | 409 | 503) {
                errors.push(format!("{what}: HTTP {st}"));
            }
            churn_step += 1;
            count(&mut report, what);
        }
        if let Some((i, at)) = killed
            && now >= at + Duration::from_secs(2)
        {
            statics[i] = echo_backend(&bin, ports[i], names[i]);
            if let Some(k) = traffic.kills.lock().unwrap().last_mut() {
                k.2 = Some(Instant::now());
            }
            killed = None;
        }
        if killed.is_none() && now >= next_kill {
            next_kill += o.kill_every;
            let i = report.faults.get("backend SIGKILL").copied().unwrap_or(0) as usize % 3;
            traffic
                .kills
                .lock()
                .unwrap()
                .push((names[i].to_string(), Instant::now(), None));
            let _ = statics[i].0.kill();
            let _ = statics[i].0.wait();
            killed = Some((i, Instant::now()));
            count(&mut report, "backend SIGKILL");
        }
        if now >= next_upgrade {
            next_upgrade += o.upgrade_every;
            match lb.upgrade() {
                Ok(()) => count(&mut report, "serve --upgrade"),
                Err(e) => errors.push(format!("upgrade: {e}")),
            }
        }
        lb.reap(&mut errors);
        if scaler.0.try_wait().ok().flatten().is_some() {
            errors.push("the scaler exited".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    traffic.stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    report.seconds = start.elapsed().as_secs_f64();
    // Scale-outs and -ins, from the scaler's own log.
    let slog = std::fs::read_to_string(&scaler_log).unwrap_or_default();
    report.faults.insert(
        "scaler launches",
        slog.matches("launched backend process").count() as u64,
    );
    report.faults.insert(
        "scaler removals",
        slog.matches("scaling in: draining").count() as u64,
    );
    signal(scaler.0.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && scaler.0.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle: no traffic, and every connection (and every old process) gone.
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        lb.reap(&mut errors);
        if lb.old.is_empty()
            && metric_sum(metrics, "ringlb_listener_active_connections") == Some(0.0)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !lb.old.is_empty() {
        errors.push(format!(
            "{} old processes still running after the traffic stopped",
            lb.old.len()
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    lb.note_repairs();
    report.idle_fds.1 = fds_of(lb.pid());
    report.relay_repairs = lb.repairs.values().sum();
    report.connections_ok = traffic.ok.load(Relaxed);
    report.bytes_verified = traffic.bytes.load(Relaxed);
    report.mismatches = traffic.mismatches.load(Relaxed);
    for (cause, name, started, ended) in traffic.failures.lock().unwrap().iter() {
        let key = format!(
            "{cause}{}",
            if name.is_some() { "" } else { " (no greeting)" }
        );
        if traffic.explained(name, *started, *ended) && !cause.starts_with("checksum") {
            *report
                .explained
                .entry(format!("backend killed: {key}"))
                .or_default() += 1;
        } else {
            *report.unexplained.entry(key.clone()).or_default() += 1;
            if report.unexplained_samples.len() < 10 {
                report.unexplained_samples.push(format!(
                    "{key} via {name:?}, {:.3}s to {:.3}s",
                    started.duration_since(start).as_secs_f64(),
                    ended.duration_since(start).as_secs_f64()
                ));
            }
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    report.ringlb_errors = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked") || l.contains("left unarmed"))
        .map(str::to_string)
        .chain(errors)
        .collect();
    report
}
