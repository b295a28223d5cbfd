//! Helpers for the end-to-end tests: real backends on 127.0.0.1, the real `ringlb` binary
//! as a child process, and bounded waits (every loop here has a deadline).
#![allow(dead_code)]

pub mod hello;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringlb");

/// A free loopback port (bound and released), never one this test process was given
/// before: the kernel may hand out the same ephemeral port twice in a row, and two listeners
/// of one config on one port is a config error (CI saw it once).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// A loopback listener with a deep backlog (std's is 128: a burst of connects through the
/// proxy would overflow it and wait out SYN retransmits).
pub fn listen_any(backlog: i32) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(backlog).unwrap();
    s.into()
}

/// An address that refuses connections: a port that was bound and released.
pub fn refusing_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A test backend. On each connection it writes its name and a newline, then echoes
/// everything; on EOF from the peer it shuts down its write side. Counts what it sees.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TestBackend {
    pub fn start(name: &str) -> TestBackend {
        Self::start_with(name, true)
    }

    /// A plain echo backend (no greeting).
    pub fn echo() -> TestBackend {
        Self::start_with("echo", false)
    }

    fn start_with(name: &str, greet: bool) -> TestBackend {
        let listener = listen_any(4096);
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, o, s, n) = (
            accepted.clone(),
            open.clone(),
            stop.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                o.fetch_add(1, Ordering::Relaxed);
                let (o, n) = (o.clone(), n.clone());
                std::thread::spawn(move || {
                    if greet {
                        let _ = stream.write_all(format!("{n}\n").as_bytes());
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => {
                                let _ = stream.shutdown(Shutdown::Write);
                                break;
                            }
                            Ok(k) => {
                                if stream.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    o.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        TestBackend {
            addr,
            name: name.to_string(),
            accepted,
            open,
            stop,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// The real binary, serving a config written to a temporary file.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl Proxy {
    /// Starts `ringlb serve` and waits (bounded) until `wait_for` accepts connections.
    pub fn start(config: &str, wait_for: SocketAddr) -> Proxy {
        Self::start_with(config, wait_for, false)
    }

    /// The same, in a process group of its own (which [`Proxy::signal_group`] signals whole,
    /// as a terminal's Ctrl-C does), when `own_group`.
    pub fn start_with(config: &str, wait_for: SocketAddr, own_group: bool) -> Proxy {
        Self::spawn(config, wait_for, own_group, &[])
    }

    /// The same, with extra environment variables (the debug build's fault injections).
    pub fn start_env(config: &str, wait_for: SocketAddr, env: &[(&str, &str)]) -> Proxy {
        Self::spawn(config, wait_for, false, env)
    }

    fn spawn(config: &str, wait_for: SocketAddr, own_group: bool, env: &[(&str, &str)]) -> Proxy {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("ringlb.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .env("RINGLB_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if own_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("start ringlb");
        let p = Proxy {
            child,
            dir,
            config_path,
        };
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(wait_for).is_ok()
        });
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends `sig` to the whole process group (started with `own_group`), as Ctrl-C does.
    pub fn signal_group(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{}", self.pid())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} -- -PGID failed");
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        wait_for_exit(&mut self.child, limit).and_then(|s| s.code())
    }
}

/// Waits (bounded) for a child to exit; its status, or `None` if it still runs at `limit`.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// All a child wrote to its piped stderr (once it has exited).
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// A real Prometheus server (Debian's package) scraping `target` every second; killed on
/// drop.
pub struct Prometheus {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Debian's `prometheus` package is not installed (apt-get install prometheus): this test needs a real Prometheus server");
        let dir = tempfile::tempdir().unwrap();
        let addr = addr(free_port());
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: target\n    static_configs:\n      - targets: ['{target}']\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// One instant query of `expr`: `None` if Prometheus gave no answer it could read,
    /// else the first series' labels and value, if there is one.
    fn instant(&self, expr: &str) -> Option<Option<(serde_json::Value, String)>> {
        TcpStream::connect(self.addr).ok()?;
        let (status, body) = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={expr}"),
            None,
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array().filter(|_| status == 200)?;
        Some(result.first().map(|r| {
            (
                r["metric"].clone(),
                r["value"][1].as_str().unwrap_or("").to_string(),
            )
        }))
    }

    /// The first series of an instant query, once Prometheus has one (bounded).
    pub fn query(&self, expr: &str, limit: Duration) -> Option<(serde_json::Value, String)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Some(r)) = self.instant(expr) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Waits (bounded) until an instant query of `expr` answers `want` ("" for no series).
    pub fn wait_for(&self, expr: &str, want: &str) {
        wait_until(Duration::from_secs(30), || match self.instant(expr) {
            Some(answer) => answer.map(|(_, v)| v).unwrap_or_default() == want,
            None => false,
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `limit` passes; panics on timeout.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("condition not met within {limit:?}");
}

/// The lines a child writes to its piped stderr, as they come (each echoed to the test's
/// stderr with `tag`, so a failure shows them).
pub fn stderr_lines(child: &mut Child, tag: &'static str) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{tag}: {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (bounded) for a line containing `needle`; panics on timeout or on the child's exit.
pub fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => continue,
            Err(e) => panic!("no line with {needle:?} within {limit:?}: {e}"),
        }
    }
}

/// Connects through the proxy and reads the backend's greeting line.
pub fn greet(addr: SocketAddr) -> (TcpStream, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    (s, line.trim().to_string())
}

/// Connects from a chosen loopback source address.
pub fn connect_from(src: std::net::Ipv4Addr, dst: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    s.connect(&dst.into()).unwrap();
    s.into()
}

pub fn listener_config(name: &str, port: u16, pool: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\npool = \"{pool}\"\n{extra}\n"
    )
}

pub fn pool_config(
    name: &str,
    algorithm: &str,
    backends: &[(SocketAddr, u32)],
    extra: &str,
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        "[pools.{name}]\nalgorithm = \"{algorithm}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Deterministic pseudo-random bytes (xorshift), for integrity checks.
pub fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The state of one backend as GET /backends reports it.
pub fn backend_state(admin: SocketAddr, backend: SocketAddr) -> Option<String> {
    backend_view(admin, None, backend).map(|b| b["state"].as_str().unwrap().to_string())
}

/// One backend as GET /backends shows it: in `pool`, or in the first pool that lists it.
pub fn backend_view(
    admin: SocketAddr,
    pool: Option<&str>,
    backend: SocketAddr,
) -> Option<serde_json::Value> {
    let (status, body) = http(admin, "GET", "/backends", None, None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| pool.is_none_or(|want| p["name"] == want))
        .flat_map(|p| p["backends"].as_array().unwrap().iter())
        .find(|b| b["addr"] == backend.to_string())
        .cloned()
}

/// A backend speaking just enough HTTP: `/health` answers with the status in `health`,
/// anything else with the backend's name; it greets nothing (plain HTTP).
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub health: Arc<std::sync::atomic::AtomicU16>,
}

impl HttpBackend {
    pub fn start(name: &str) -> HttpBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (h, name) = (health.clone(), name.to_string());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (h, name) = (h.clone(), name.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut hdr = String::new();
                        if r.read_line(&mut hdr).unwrap_or(0) == 0 || hdr == "\r\n" {
                            break;
                        }
                    }
                    let (code, body) = if line.starts_with("GET /health ") {
                        let c = h.load(Ordering::Relaxed);
                        (c, "health\n".to_string())
                    } else {
                        (200, format!("{name}\n"))
                    };
                    let _ = (&s).write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
                });
            }
        });
        HttpBackend { addr, health }
    }
}

/// The backends of the first pool, as `GET /backends` lists them.
pub fn first_pool_backends(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http(admin, "GET", "/backends", None, None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"][0]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of an unlabelled series in a scrape of `metrics`, if it is there.
pub fn unlabelled_metric(metrics: SocketAddr, name: &str) -> Option<f64> {
    let (status, body) = http(metrics, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}
