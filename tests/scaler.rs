//! The companion scaler end to end: the real balancer, the real `ringlb scale`, and backend
//! processes it launches (`ringlb backend`). Each test uses its own port range.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Balancer {
    _proxy: Proxy,
    lb: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    _static: TestBackend,
    static_addr: SocketAddr,
}

fn balancer() -> Balancer {
    balancer_env(&[])
}

/// A balancer started with extra environment variables (fault injections).
fn balancer_env(env: &[(&str, &str)]) -> Balancer {
    let b = TestBackend::start("static");
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let cfg = format!(
        "workers = 2\n[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{}[pools.p.health]\ninterval = \"200ms\"\nrise = 1\nfall = 2\n",
        listener_config("l", port, "p", ""),
        pool_config("p", "least_conn", &[(b.addr, 1)], "")
    );
    let proxy = Proxy::start_env(&cfg, addr(port), env);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    Balancer {
        _proxy: proxy,
        lb: addr(port),
        admin,
        metrics,
        static_addr: b.addr,
        _static: b,
    }
}

struct Scaler {
    child: Child,
    log: std::path::PathBuf,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// How a test scaler differs from the default one.
struct Opts<'a> {
    metrics_url: Option<&'a str>,
    /// Lines added at the top of the config (e.g. `state_file = ...`).
    top: String,
    /// The `{port}` command template (default: `ringlb backend`).
    command: Option<String>,
    /// Started in a process group of its own, as a shell starts a foreground job.
    own_group: bool,
    stop_backends_on_exit: bool,
    dir: Option<tempfile::TempDir>,
    /// `[[policies]]` in place of the default `[source]` + `[policy]`.
    policies: Option<String>,
    /// An `[actuator]` section in place of the default `process` one.
    actuator: Option<String>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            metrics_url: None,
            top: String::new(),
            command: None,
            own_group: false,
            stop_backends_on_exit: true,
            dir: None,
            policies: None,
            actuator: None,
        }
    }
}

impl Scaler {
    /// A scaler for pool p of `b`, launching backends on 20 ports from `first_port`,
    /// reading the balancer's metrics (or `metrics_url`).
    fn start(
        b: &Balancer,
        metrics_url: Option<&str>,
        first_port: u16,
        min: u32,
        max: u32,
    ) -> Scaler {
        Self::start_with(
            b,
            first_port,
            min,
            max,
            Opts {
                metrics_url,
                ..Opts::default()
            },
        )
    }

    fn start_with(b: &Balancer, first_port: u16, min: u32, max: u32, o: Opts) -> Scaler {
        use std::os::unix::process::CommandExt;
        let metrics_url = o
            .metrics_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("http://{}/metrics", b.metrics));
        let ports = (first_port, first_port + 19);
        let dir = o.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let metrics = addr(free_port());
        let command = o
            .command
            .unwrap_or_else(|| format!("{BIN} backend --port {{port}}"));
        let policies = o.policies.unwrap_or_else(|| {
            format!(
                "[source]\nkind = \"lb\"\nmetrics_url = \"{metrics_url}\"\n\n[policy]\nkind = \"target_tracking\"\ntarget = 5\nscale_in_stabilization = \"1500ms\"\n"
            )
        });
        let actuator = o.actuator.unwrap_or_else(|| {
            format!(
                "[actuator]\nkind = \"process\"\ncommand = \"{command}\"\nports = \"{}-{}\"\nstop_grace = \"2s\"\n",
                ports.0, ports.1
            )
        });
        let cfg = format!(
            r#"{top}
pool = "p"
admin_url = "http://{admin}"
interval = "300ms"
listen = "{metrics}"
min = {min}
max = {max}
drain_timeout = "60s"
stop_backends_on_exit = {stop}

{policies}

{actuator}
"#,
            admin = b.admin,
            top = o.top,
            stop = o.stop_backends_on_exit,
        );
        let path = dir.path().join("scaler.toml");
        std::fs::write(&path, cfg).unwrap();
        let log = dir.path().join("scaler.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["scale", "--config"])
            .arg(&path)
            .env("RINGLB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if o.own_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().unwrap();
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(metrics).is_ok()
        });
        Scaler {
            child,
            log,
            metrics,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        // SIGTERM: the scaler stops the backends it launched, then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (address, state, active connections) of every backend of pool p.
fn pool(admin: SocketAddr) -> Vec<(SocketAddr, String, i64)> {
    first_pool_backends(admin)
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().parse().unwrap(),
                b["state"].as_str().unwrap().to_string(),
                b["active_connections"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The one backend of pool p that the scaler launched (not the static one).
fn launched_backend(b: &Balancer) -> SocketAddr {
    pool(b.admin)
        .into_iter()
        .find(|(a, _, _)| *a != b.static_addr)
        .expect("a launched backend")
        .0
}

fn up_count(admin: SocketAddr) -> usize {
    pool(admin).iter().filter(|(_, s, _)| s == "up").count()
}

/// Holds `n` open connections through the balancer (it counts them from the accept on).
fn hold(lb: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(lb).unwrap()).collect()
}

/// One HTTP request on a kept-alive connection to a `ringlb backend`; returns the body line.
fn request(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    let mut body_len = 0;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            body_len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

fn scaler_metric(m: SocketAddr, name: &str, direction: Option<&str>) -> f64 {
    let (_, text) = http(m, "GET", "/metrics", None, None);
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && direction.is_none_or(|d| l.contains(&format!("direction=\"{d}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn grows_under_load_then_shrinks_after_the_window() {
    let b = balancer();
    let s = Scaler::start(&b, None, 31000, 1, 4);
    // The probes the Kubernetes manifest uses: alive, and ready once it evaluated.
    assert_eq!(http(s.metrics, "GET", "/healthz", None, None).0, 200);
    wait_until(Duration::from_secs(5), || {
        http(s.metrics, "GET", "/readyz", None, None).0 == 200
    });
    // 20 connections on one backend, target 5 per backend: 4 backends.
    let held = hold(b.lb, 20);
    let t = Instant::now();
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 4);
    eprintln!("grew to 4 in {:?}", t.elapsed());
    // It stays there (no flapping past max or back).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pool(b.admin).len(), 4);
    drop(held);
    // Load gone: after the 1.5 s window, back to the one backend it cannot remove.
    wait_until(Duration::from_secs(20), || pool(b.admin).len() == 1);
    assert_eq!(pool(b.admin)[0].0, b.static_addr);
    assert!(scaler_metric(s.metrics, "ringlb_scaler_decisions_total", Some("out")) >= 1.0);
    assert!(scaler_metric(s.metrics, "ringlb_scaler_decisions_total", Some("in")) >= 1.0);
    wait_until(Duration::from_secs(5), || {
        scaler_metric(s.metrics, "ringlb_scaler_desired_backends", None) == 1.0
    });
    let log = s.log();
    assert!(
        log.contains("decision: out") && log.contains("value 20.00, wish 4"),
        "decisions are logged with their numbers:\n{log}"
    );
    // The launched processes were stopped: their ports refuse.
    for port in 31000..31003 {
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(addr(port)).is_err()
        });
    }
}

#[test]
fn scale_in_drains_and_never_cuts_a_live_connection() {
    let b = balancer();
    let s = Scaler::start(&b, None, 31020, 1, 2);
    let held = hold(b.lb, 12);
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    let launched = launched_backend(&b);
    // Three long-lived connections: least_conn puts them on the new, empty backend.
    let mut long: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(b.lb).unwrap()).collect();
    for c in &mut long {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            request(c).unwrap(),
            format!("hello from backend-{}", launched.port())
        );
    }
    // The load goes: 3 connections over 2 backends, so the scaler scales in, and the only
    // backend it may remove is the one carrying the long-lived connections.
    drop(held);
    wait_until(Duration::from_secs(15), || {
        pool(b.admin)
            .iter()
            .any(|(a, s, _)| *a == launched && s == "draining")
    });
    // The scaler logs once its drain request has returned, which can be a moment after
    // the balancer shows the state.
    wait_until(Duration::from_secs(5), || {
        s.log().contains("scaling in: draining")
    });
    // Draining for a while: every exchange still completes, and the process still runs.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for c in &mut long {
            assert_eq!(
                request(c).unwrap(),
                format!("hello from backend-{}", launched.port()),
                "a draining connection failed"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        TcpStream::connect(launched).is_ok(),
        "the backend was stopped while connections were open"
    );
    let last = long.pop().unwrap();
    drop(long);
    let mut last = last;
    assert!(request(&mut last).is_ok());
    assert!(
        TcpStream::connect(launched).is_ok(),
        "stopped with one connection still open"
    );
    drop(last);
    // Last connection closed: removed, then stopped.
    wait_until(Duration::from_secs(10), || {
        !pool(b.admin).iter().any(|(a, _, _)| *a == launched)
    });
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(launched).is_err()
    });
}

/// Copies `from` to `to` on a thread, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// A TCP relay the test can cut: the balancer's metrics endpoint "goes away" for the scaler.
struct Cuttable {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
}

impl Cuttable {
    fn to(target: SocketAddr) -> Cuttable {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let o = open.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                if !o.load(Ordering::Relaxed) {
                    // Reset at once: nothing answers any more.
                    let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                    continue;
                }
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                pipe(c.try_clone().unwrap(), up.try_clone().unwrap());
                pipe(up, c);
            }
        });
        Cuttable { addr, open }
    }
}

#[test]
fn a_missing_metrics_endpoint_never_causes_a_scale_in() {
    let b = balancer();
    let relay = Cuttable::to(b.metrics);
    let s = Scaler::start(
        &b,
        Some(&format!("http://{}/metrics", relay.addr)),
        31040,
        1,
        2,
    );
    let held = hold(b.lb, 12);
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    relay.open.store(false, Ordering::Relaxed);
    drop(held);
    // Well past the stabilization window: with no reading, nothing is scaled in.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(pool(b.admin).len(), 2, "scaled in without a reading");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = s.log();
    assert!(log.contains("holding: no reading, so no scale-in"), "{log}");
    assert!(scaler_metric(s.metrics, "ringlb_scaler_decisions_total", Some("hold")) >= 3.0);
    // The endpoint comes back: the low load is read and the pool shrinks.
    relay.open.store(true, Ordering::Relaxed);
    wait_until(Duration::from_secs(15), || pool(b.admin).len() == 1);
}

/// The pid of the `ringlb backend` listening on `port`.
fn backend_pid(port: u16) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.iter().any(|a| a == "backend")
            && args
                .windows(2)
                .any(|w| w[0] == "--port" && w[1] == port.to_string())
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_backend_is_replaced_and_min_max_hold() {
    let b = balancer();
    let s = Scaler::start(&b, None, 31060, 2, 3);
    // min 2: one backend is launched beside the static one, with no load at all.
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    let launched = launched_backend(&b);
    let pid = backend_pid(launched.port()).expect("the launched backend's process");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    // Replaced by a new process on another port; back to 2.
    wait_until(Duration::from_secs(15), || {
        let p = pool(b.admin);
        p.len() == 2 && p.iter().all(|(a, s, _)| *a != launched && s == "up")
    });
    assert!(s.log().contains("backend process died"), "{}", s.log());
    // Heavy load: never above max.
    let held = hold(b.lb, 60);
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 3);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(pool(b.admin).len() <= 3, "above max");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
    wait_until(Duration::from_secs(15), || pool(b.admin).len() == 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pool(b.admin).len(), 2, "below min");
}

#[test]
fn bad_scaler_configs_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let base = "pool = \"p\"\nadmin_url = \"http://127.0.0.1:1\"\nmin = 1\nmax = 3\n[source]\nkind = \"lb\"\nmetrics_url = \"http://127.0.0.1:1/metrics\"\n[policy]\nkind = \"target_tracking\"\ntarget = 5\n[actuator]\nkind = \"process\"\ncommand = \"x {port}\"\nports = \"31100-31110\"\n";
    let exec = |line: &str| {
        base.replace(
            "kind = \"process\"\ncommand = \"x {port}\"\nports = \"31100-31110\"\n",
            &format!("kind = \"exec\"\nup = \"true\"\ndown = \"true\"\n{line}\n"),
        )
    };
    for (text, needle) in [
        (base.replace("max = 3", "max = 0"), "max"),
        (base.replace("min = 1", "min = 5"), "min"),
        (base.replace("target = 5", "target = 0"), "target"),
        (base.replace("x {port}", "x"), "{port}"),
        (
            base.replace("interval", "x")
                .replace("pool = \"p\"", "pool = \"p\"\nintervall = \"1s\""),
            "intervall",
        ),
        (base.replace("target_tracking", "magic"), "magic"),
        (exec("timeout = \"0s\""), "timeout"),
        (exec("timeout = \"2h\""), "timeout"),
        (
            exec("timeout = 30"),
            "duration 30 has no unit: write \"30s\"",
        ),
    ] {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["scale", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let _ = std::io::stdout().flush();
}

/// Drains `b`'s static backend (so only launched backends take traffic) and gives a
/// directory with the `state_file = ...` line for a scaler's config.
fn drained_static_and_a_state_file(b: &Balancer) -> (tempfile::TempDir, String) {
    let (st, body) = http(
        b.admin,
        "POST",
        &format!("/pools/p/backends/{}/drain", b.static_addr),
        None,
        None,
    );
    assert_eq!(st, 202, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let top = format!(
        "state_file = {:?}",
        dir.path().join("launched.json").display().to_string()
    );
    (dir, top)
}

/// Ctrl-C on a scaler (SIGINT to its whole process group) with `stop_backends_on_exit =
/// false`: the backends it launched are in groups of their own, so they keep serving and
/// every held connection keeps working; a restarted scaler adopts them from its state file
/// (same count, no duplicates) and later scales them in cleanly.
#[test]
fn ctrl_c_on_the_scaler_cuts_nothing_and_a_restarted_scaler_adopts_its_backends() {
    let b = balancer();
    // Only launched backends take traffic: the held connections then all reach them.
    let (dir, top) = drained_static_and_a_state_file(&b);
    let first = Scaler::start_with(
        &b,
        31100,
        2,
        2,
        Opts {
            top: top.clone(),
            own_group: true,
            stop_backends_on_exit: false,
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    let launched: Vec<SocketAddr> = pool(b.admin)
        .into_iter()
        .filter(|(_, s, _)| s == "up")
        .map(|(a, _, _)| a)
        .collect();
    let mut held: Vec<TcpStream> = hold(b.lb, 4);
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        request(s).unwrap();
    }
    // Ctrl-C: SIGINT to the scaler's whole process group.
    let mut first = first;
    let pgid = first.child.id();
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &format!("-{pgid}")])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for_exit(&mut first.child, Duration::from_secs(10))
        .expect("the scaler did not exit on SIGINT");
    assert!(status.success(), "{status}: {}", first.log());
    assert!(
        first.log().contains("leaving launched backends running"),
        "{}",
        first.log()
    );
    // Nothing was cut: the backends still serve, every held connection still works.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(up_count(b.admin), 2, "{:?}", pool(b.admin));
    for (i, s) in held.iter_mut().enumerate() {
        request(s).unwrap_or_else(|e| panic!("held connection {i} after Ctrl-C: {e}"));
    }
    for a in &launched {
        assert!(backend_pid(a.port()).is_some(), "{a} died with the scaler");
    }
    // A new scaler with the same state file adopts both: no duplicates.
    let second = Scaler::start_with(
        &b,
        31100,
        1,
        2,
        Opts {
            top,
            dir: Some(dir),
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(10), || {
        second.log().matches("adopted a backend").count() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !second.log().contains("launched backend process"),
        "launched a duplicate: {}",
        second.log()
    );
    assert_eq!(pool(b.admin).len(), 3, "{:?}", pool(b.admin));
    // And later scales them in, draining: with the held connections gone, to min 1.
    for (i, s) in held.iter_mut().enumerate() {
        request(s).unwrap_or_else(|e| panic!("held connection {i} with the new scaler: {e}"));
    }
    drop(held);
    wait_until(Duration::from_secs(20), || {
        pool(b.admin)
            .iter()
            .filter(|(a, _, _)| *a != b.static_addr)
            .count()
            == 1
    });
    let gone: Vec<&SocketAddr> = launched
        .iter()
        .filter(|a| !pool(b.admin).iter().any(|(x, _, _)| x == *a))
        .collect();
    assert_eq!(gone.len(), 1);
    wait_until(Duration::from_secs(10), || {
        backend_pid(gone[0].port()).is_none()
    });
    assert!(
        second.log().contains("scaling in: draining"),
        "{}",
        second.log()
    );
}

/// A backend command that never becomes healthy is deregistered after `startup_timeout`,
/// stopped and replaced (with a backoff); once the command works, the pool reaches its
/// desired count.
#[test]
fn a_backend_that_never_becomes_healthy_is_replaced_after_startup_timeout() {
    let b = balancer();
    let dir = tempfile::tempdir().unwrap();
    // The first two launches only sleep (never listen: checks fail, it stays starting);
    // later ones are real backends.
    let count = dir.path().join("launches");
    let script = dir.path().join("backend.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\nif [ $n -le 2 ]; then exec sleep 60; fi\nexec {BIN} backend --port $1\n",
            c = count.display()
        ),
    )
    .unwrap();
    let s = Scaler::start_with(
        &b,
        31140,
        2,
        2,
        Opts {
            top: "startup_timeout = \"1s\"".into(),
            command: Some(format!("sh {} {{port}}", script.display())),
            dir: Some(dir),
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(30), || up_count(b.admin) == 2);
    let log = s.log();
    assert!(log.contains("backend never became healthy"), "{log}");
    assert!(
        scaler_metric(s.metrics, "ringlb_scaler_startup_failures_total", None) >= 2.0,
        "{log}"
    );
    // Nothing starting is left behind.
    assert!(
        pool(b.admin).iter().all(|(_, st, _)| st == "up"),
        "{:?}",
        pool(b.admin)
    );
}

/// Scale-in protection a backend asks for (ECS task scale-in protection): a protected
/// backend is never chosen for scale-in, even holding no connections; when its protection
/// expires, it is.
#[test]
fn a_protected_backend_is_not_scaled_in_until_its_protection_expires() {
    let b = balancer();
    // Only launched backends take traffic: the held connections then all reach them.
    let (dir, top) = drained_static_and_a_state_file(&b);
    // Two backends, left running when this first scaler stops.
    let mut first = Scaler::start_with(
        &b,
        31180,
        2,
        2,
        Opts {
            top: top.clone(),
            stop_backends_on_exit: false,
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    assert!(
        Command::new("kill")
            .args(["-TERM", &first.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(10), || {
        first.child.try_wait().unwrap().is_some()
    });
    let ours: Vec<SocketAddr> = pool(b.admin)
        .into_iter()
        .filter(|(a, _, _)| *a != b.static_addr)
        .map(|(a, _, _)| a)
        .collect();
    let (protected, other) = (ours[0], ours[1]);
    let path = format!("/pools/p/backends/{protected}/protection");
    // Before the request: the protection cannot have begun earlier than this.
    let asked = std::time::Instant::now();
    let (st, body) = http(
        b.admin,
        "PUT",
        &path,
        Some("{\"enabled\": true, \"expires_in\": \"4s\"}"),
        None,
    );
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["enabled"], true, "{body}");
    let (st, body) = http(
        b.admin,
        "PUT",
        &path,
        Some("{\"enabled\": true, \"expires_in\": \"49h\"}"),
        None,
    );
    assert_eq!(st, 400, "{body}");
    // No load and min 0: the scaler wants none of ours. The unprotected one goes first...
    let second = Scaler::start_with(
        &b,
        31180,
        0,
        2,
        Opts {
            top,
            dir: Some(dir),
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(10), || {
        !pool(b.admin).iter().any(|(a, _, _)| *a == other)
    });
    // ...the protected one stays while its protection lasts, and the scaler says why...
    wait_until(Duration::from_secs(5), || {
        second.log().contains("protected from scale-in")
    });
    let v: serde_json::Value =
        serde_json::from_str(&http(b.admin, "GET", &path, None, None).1).unwrap();
    if v["enabled"] == true {
        assert!(
            pool(b.admin)
                .iter()
                .any(|(a, s, _)| *a == protected && s == "up"),
            "{:?}",
            pool(b.admin)
        );
    }
    // ...and goes once it has expired, never before: the first sight of it leaving (draining
    // or gone) comes 4 s or more after the request. (Protection ends were whole seconds,
    // truncated, so a 4 s protection could end after 3.1 s; this bound cannot flake the
    // other way, as a slow machine only sees it later.)
    wait_until(Duration::from_secs(15), || {
        !pool(b.admin)
            .iter()
            .any(|(a, s, _)| *a == protected && s == "up")
    });
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "a 4s protection ended after {waited:?}"
    );
    wait_until(Duration::from_secs(15), || {
        !pool(b.admin).iter().any(|(a, _, _)| *a == protected)
    });
    let v: serde_json::Value = serde_json::from_str(
        &http(
            b.admin,
            "GET",
            &format!("/pools/p/backends/{}/protection", b.static_addr),
            None,
            None,
        )
        .1,
    )
    .unwrap();
    assert_eq!(v["enabled"], false);
}

/// A metrics exporter for a real Prometheus to scrape: serves whatever text it is given.
struct Exporter {
    addr: SocketAddr,
    text: Arc<std::sync::Mutex<String>>,
}

impl Exporter {
    fn start() -> Exporter {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = t.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Exporter { addr, text }
    }
    fn set(&self, text: &str) {
        *self.text.lock().unwrap() = text.to_string();
    }
}

/// Two policies on PromQL readings from a real Prometheus: CPU (out only: step to exactly 3
/// at 60% or more) and the connection rate (exactly 1 below 100/min, 2 above). CPU high
/// with a low rate scales out; CPU back to normal scales in to the rate policy's count; a
/// missing reading of either blocks scale-in while the other can still scale out.
#[test]
fn two_policies_the_largest_wish_wins_and_a_missing_reading_blocks_only_scale_in() {
    let b = balancer();
    let load = Exporter::start();
    load.set("test_cpu 90\ntest_rate 50\n");
    let prom = Prometheus::start(load.addr);
    prom.wait_for("test_cpu", "90");
    let policies = format!(
        r#"
[[policies]]
name = "cpu"
kind = "step"
threshold = 60
adjustment_type = "exact_capacity"
scale_in = false
steps = [{{ lower = 0, adjustment = 3 }}]
[policies.source]
kind = "prometheus"
url = "http://{p}"
query = "test_cpu"

[[policies]]
name = "rate"
kind = "step"
threshold = 100
adjustment_type = "exact_capacity"
steps = [{{ upper = 0, adjustment = 1 }}, {{ lower = 0, adjustment = 2 }}]
[policies.source]
kind = "prometheus"
url = "http://{p}"
query = "test_rate"
"#,
        p = prom.addr
    );
    let s = Scaler::start_with(
        &b,
        31220,
        1,
        4,
        Opts {
            policies: Some(policies),
            ..Opts::default()
        },
    );
    let count = || {
        pool(b.admin)
            .iter()
            .filter(|(_, st, _)| st == "up" || st == "starting")
            .count()
    };
    // CPU high, rate low: CPU's 3 wins.
    wait_until(Duration::from_secs(20), || up_count(b.admin) == 3);
    // CPU normal (it abstains), rate low: in to the rate's 1.
    load.set("test_cpu 20\ntest_rate 50\n");
    wait_until(Duration::from_secs(20), || pool(b.admin).len() == 1);
    // No CPU reading at all, the rate high: the rate can still scale out, to 2...
    load.set("test_rate 150\n");
    prom.wait_for("test_cpu", "");
    wait_until(Duration::from_secs(20), || up_count(b.admin) == 2);
    // ...but with the rate low again, the missing CPU reading blocks the scale-in.
    load.set("test_rate 50\n");
    prom.wait_for("test_rate", "50");
    wait_until(Duration::from_secs(10), || {
        s.log().contains("no scale-in: no reading from cpu")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(),
        2,
        "scaled in on a missing reading: {:?}",
        pool(b.admin)
    );
    // And the other way round: no rate reading, CPU high: out to 3.
    load.set("test_cpu 90\n");
    prom.wait_for("test_rate", "");
    wait_until(Duration::from_secs(20), || up_count(b.admin) == 3);
    let log = s.log();
    assert!(log.contains("cpu: value 90.00, wish 3"), "{log}");
    assert!(log.contains("rate: no reading"), "{log}");
}

/// A scheduled action (AWS scheduled scaling) raising `min` to 3 a few seconds ahead, for a
/// few seconds: 3 backends by then, and when it ends, back to the policy's count.
#[test]
fn a_schedule_raises_min_at_its_time_and_the_pool_returns_when_it_ends() {
    let b = balancer();
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let s = Scaler::start_with(
        &b,
        31260,
        1,
        4,
        Opts {
            policies: Some(format!(
                "[source]\nkind = \"lb\"\nmetrics_url = \"http://{}/metrics\"\n\n[policy]\nkind = \"target_tracking\"\ntarget = 5\nscale_in_stabilization = \"1s\"\n\n[[schedule]]\nname = \"launch-day\"\nat = \"{at}\"\nmin = 3\nduration = \"6s\"\n",
                b.metrics
            )),
            ..Opts::default()
        },
    );
    // Before its time: no load, min 1, the static backend alone.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pool(b.admin).len(), 1, "{:?}", pool(b.admin));
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 3);
    assert!(
        s.log().contains("schedule in force") && s.log().contains("launch-day"),
        "{}",
        s.log()
    );
    assert_eq!(
        scaler_metric(s.metrics, "ringlb_scaler_min_backends", None),
        3.0
    );
    // It ends: back to the policy's count (min 1, no load).
    wait_until(Duration::from_secs(20), || pool(b.admin).len() == 1);
    assert!(s.log().contains("no schedule in force"), "{}", s.log());
}

/// A balancer in front of `static_addr`, like `balancer()` but sharing that backend.
fn balancer_in_front_of(static_addr: SocketAddr) -> (Proxy, SocketAddr, SocketAddr, SocketAddr) {
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let cfg = format!(
        "workers = 1\n[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{}[pools.p.health]\ninterval = \"200ms\"\nrise = 1\nfall = 2\n",
        listener_config("l", port, "p", ""),
        pool_config("p", "least_conn", &[(static_addr, 1)], "")
    );
    let proxy = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    (proxy, addr(port), admin, metrics)
}

/// One scaler, two balancer instances (the balancer scaled out behind ECMP or DNS): a
/// backend is registered on both; readings are summed; a scale-in ends only once both
/// have drained it; with one instance unreachable, the scaler holds.
#[test]
fn one_scaler_two_balancers_registers_on_both_and_stops_only_when_both_have_drained() {
    let b = balancer();
    let (mut p2, lb2, admin2, metrics2) = balancer_in_front_of(b.static_addr);
    let s = Scaler::start_with(
        &b,
        31300,
        1,
        3,
        Opts {
            top: format!("admin_urls = [\"http://{admin2}\"]"),
            policies: Some(format!(
                "[source]\nkind = \"lb\"\nmetrics_urls = [\"http://{}/metrics\", \"http://{metrics2}/metrics\"]\n\n[policy]\nkind = \"target_tracking\"\ntarget = 5\nscale_in_stabilization = \"1500ms\"\n",
                b.metrics
            )),
            ..Opts::default()
        },
    );
    // 16 connections through instance 1, target 5 per backend: 3 backends, registered and
    // up on both instances.
    let mut held1 = hold(b.lb, 16);
    let up_on = |admin: SocketAddr| up_count(admin);
    wait_until(Duration::from_secs(20), || {
        up_on(b.admin) == 3 && up_on(admin2) == 3
    });
    let mine = |admin: SocketAddr| -> Vec<SocketAddr> {
        pool(admin)
            .into_iter()
            .filter(|(a, _, _)| *a != b.static_addr)
            .map(|(a, _, _)| a)
            .collect()
    };
    let mut on1 = mine(b.admin);
    let mut on2 = mine(admin2);
    on1.sort();
    on2.sort();
    assert_eq!(on1, on2, "registered on both instances");
    // Two connections through instance 2, which sends them to its emptiest backends (the
    // launched ones); then the load on instance 1 goes: scale-in drains the launched
    // backends, and one that instance 2 still drains is not stopped.
    let keep = hold(lb2, 2);
    wait_until(Duration::from_secs(5), || {
        pool(admin2)
            .iter()
            .filter(|(a, _, n)| *a != b.static_addr && *n > 0)
            .count()
            > 0
    });
    held1.clear();
    let busy: Vec<(SocketAddr, i64)> = pool(admin2)
        .into_iter()
        .filter(|(a, _, n)| *a != b.static_addr && *n > 0)
        .map(|(a, _, n)| (a, n))
        .collect();
    assert!(!busy.is_empty(), "{:?}", pool(admin2));
    wait_until(Duration::from_secs(20), || {
        s.log().contains("scaling in: draining")
    });
    // Instance 1 lets its drained backends go at once (no connections there); instance 2
    // keeps a busy one draining, and its process keeps running meanwhile.
    let (a, _) = busy[0];
    wait_until(Duration::from_secs(20), || {
        !pool(b.admin).iter().any(|(x, _, _)| *x == a)
            && pool(admin2)
                .iter()
                .any(|(x, st, _)| *x == a && st == "draining")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        pool(admin2)
            .iter()
            .any(|(x, st, _)| *x == a && st == "draining")
    );
    assert!(
        backend_pid(a.port()).is_some(),
        "{a} stopped while instance 2 drains it"
    );
    drop(keep);
    // Everything drained on both: back to the static backend, the processes stopped.
    wait_until(Duration::from_secs(20), || {
        mine(b.admin).len() + mine(admin2).len() <= 2
    });
    // One instance down: the scaler holds (and says so) rather than act on half a view.
    let _ = p2.child.kill();
    let _ = p2.child.wait();
    wait_until(Duration::from_secs(10), || {
        s.log().contains("holding: cannot read the pool")
    });
}

/// An `[actuator]` of kind exec whose `up` and `down` are the scripts this writes to `dir`:
/// `up` records its call, waits `up_wait` (a cloud API, a pod starting) with the marker file
/// `up-running` present, then prints a dead address the first time and starts a real
/// `ringlb backend` on `base + n` after that; `down` records its call, fails the first
/// time, and stops that backend.
fn exec_actuator(dir: &std::path::Path, base: u16, dead: SocketAddr, up_wait: &str) -> String {
    let d = dir.display();
    let up = dir.join("up.sh");
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\nn=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n\necho \"up $1\" >> {d}/calls\ntouch {d}/up-running; sleep {up_wait}; rm -f {d}/up-running\nif [ $n -eq 1 ]; then echo {dead}; exit 0; fi\nport=$(({base} + n))\n{BIN} backend --port $port >/dev/null 2>&1 &\necho $! > {d}/$port.pid\necho launched >&2\necho 127.0.0.1:$port\n"
        ),
    )
    .unwrap();
    let down = dir.join("down.sh");
    std::fs::write(
        &down,
        format!(
            "#!/bin/sh\necho \"down $1 $2\" >> {d}/calls\nif [ ! -f {d}/down-failed ]; then touch {d}/down-failed; echo cloud API unavailable >&2; exit 1; fi\nport=${{1##*:}}\nif [ -f {d}/$port.pid ]; then kill $(cat {d}/$port.pid); fi\n"
        ),
    )
    .unwrap();
    format!(
        "[actuator]\nkind = \"exec\"\nup = \"sh {} {{count}}\"\ndown = \"sh {} {{addr}} {{count}}\"\ntimeout = \"30s\"\n",
        up.display(),
        down.display()
    )
}

/// Kills the process whose pid is in the file, when dropped.
struct KillPidFile(std::path::PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// The exec actuator end to end: `up` runs while the scaler's probes keep answering (it
/// runs on the async runtime, not on the thread that serves them), the address it prints is
/// registered, one that never becomes healthy gets `down` with its address and the count
/// (again after a failed `down`), and the next `up` brings a backend that comes up.
#[test]
fn an_exec_actuator_launches_and_removes_through_its_commands_and_probes_answer_meanwhile() {
    let b = balancer();
    let dir = tempfile::tempdir().unwrap();
    let dead = addr(free_port());
    let base = 31500;
    // The backend up.sh starts is the test's to stop (an exec backend outlives a scaler),
    // passed or not.
    let _live_process = KillPidFile(dir.path().join(format!("{}.pid", base + 2)));
    let s = Scaler::start_with(
        &b,
        31500,
        2,
        2,
        Opts {
            top: "startup_timeout = \"1500ms\"".into(),
            stop_backends_on_exit: false,
            actuator: Some(exec_actuator(dir.path(), base, dead, "3")),
            ..Opts::default()
        },
    );
    let running = dir.path().join("up-running");
    wait_until(Duration::from_secs(10), || running.exists());
    let (status, body) = http(s.metrics, "GET", "/healthz", None, None);
    assert_eq!(status, 200, "{body}");
    assert!(
        running.exists(),
        "/healthz answered only once up had finished: {}",
        s.log()
    );
    // The dead address: registered, never healthy, so `down` gets it, and `up` runs again.
    // That first `down` fails: it runs again at a later evaluation, the backend is not
    // forgotten.
    let calls = || std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    wait_until(Duration::from_secs(30), || {
        calls().matches(&format!("down {dead} 2")).count() >= 2
    });
    let live = addr(base + 2);
    wait_until(Duration::from_secs(30), || {
        pool(b.admin)
            .iter()
            .any(|(a, st, _)| *a == live && st == "up")
    });
    let listed = pool(b.admin);
    let up_calls = calls();
    let log = s.log();
    drop(s);
    assert!(
        !listed.iter().any(|(a, _, _)| *a == dead),
        "the dead backend is still listed: {listed:?}"
    );
    assert!(up_calls.starts_with("up 2\n"), "{up_calls}");
    assert!(log.contains("exec: backend up"), "{log}");
    // Between its two `down`s the dead backend stayed out of the balancer (it was not taken
    // for one of ours that the balancer had lost).
    assert!(
        !log.contains("registered a backend of ours the balancer did not list"),
        "{log}"
    );
}

/// Ctrl-C while an exec `up` waits (for a pod, say): the scaler stops at once instead of
/// waiting the command out, and what the command started is stopped with it (its process
/// group). Before, the `up` ran in the scaler's group, and a background child of `sh`
/// ignores SIGINT, so the scaler waited the command out.
#[test]
fn ctrl_c_during_a_slow_exec_up_stops_the_scaler_and_the_command() {
    let b = balancer();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut s = Scaler::start_with(
        &b,
        31600,
        2,
        2,
        Opts {
            own_group: true,
            stop_backends_on_exit: false,
            actuator: Some(format!(
                "[actuator]\nkind = \"exec\"\nup = \"sleep 120 & echo $! > {}; wait\"\ndown = \"true\"\n",
                pidfile.display()
            )),
            ..Opts::default()
        },
    );
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    });
    let sleeper: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &format!("-{}", s.child.id())])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for_exit(&mut s.child, Duration::from_secs(10))
        .expect("the scaler waited for its up command instead of stopping");
    assert!(status.success(), "{status}: {}", s.log());
    assert!(s.log().contains("the scaler is stopping"), "{}", s.log());
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .map_or(true, |st| st.contains(") Z "))
    });
}

/// A balancer that answers a change with 503 (as while an upgrade hands it over; the first
/// three changes here, a fault the debug build injects): the scaler asks again, and the
/// backend it launched is registered, not stopped for want of registration.
#[test]
fn a_registration_answered_503_is_asked_again() {
    let b = balancer_env(&[("RINGLB_FAULT_ADMIN_503", "3")]);
    let s = Scaler::start(&b, None, 31700, 2, 2);
    wait_until(Duration::from_secs(20), || up_count(b.admin) == 2);
    let log = s.log();
    assert!(!log.contains("refused the new backend"), "{log}");
    assert_eq!(
        log.matches("registered (starting until its checks pass)")
            .count(),
        1,
        "{log}"
    );
}

/// `rebalance_on_scale_out`: once the backend a scale-out launched is up, the scaler asks
/// the balancer to rebalance the pool, so that the long-lived connections held on the old
/// backend are not left there while the new one sits idle; the events file says so.
#[test]
fn a_scale_out_asks_the_balancer_to_rebalance_once_the_new_backend_is_up() {
    let b = balancer();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let s = Scaler::start_with(
        &b,
        31800,
        1,
        2,
        Opts {
            top: format!(
                "rebalance_on_scale_out = true\nevents_file = \"{}\"",
                events.display()
            ),
            dir: Some(dir),
            ..Opts::default()
        },
    );
    // 10 idle connections, target 5 per backend: one more backend.
    let held = hold(b.lb, 10);
    wait_until(Duration::from_secs(15), || up_count(b.admin) == 2);
    let new = launched_backend(&b);
    // Shares of 5 and 5: the static backend's idle connections (idle over the default
    // second) close until it holds its share.
    wait_until(Duration::from_secs(15), || {
        pool(b.admin)
            .iter()
            .find(|(a, _, _)| *a == b.static_addr)
            .is_some_and(|(_, _, n)| *n <= 5)
    });
    let (_, metrics) = http(b.metrics, "GET", "/metrics", None, None);
    let closed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ringlb_backend_rebalanced_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(closed >= 5.0, "{closed} closed to rebalance");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"rebalanced_after\"") && l.contains(&new.to_string())),
        "the events file records the rebalance:\n{text}"
    );
    assert!(s.log().contains("rebalances the pool"), "{}", s.log());
    drop(held);
}
