//! Deployment behaviour: systemd readiness through $NOTIFY_SOCKET, and the files in deploy/
//! checked against what the binary really exports.

mod common;
use common::*;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn ready_is_sent_only_once_the_listener_accepts_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let backend = TestBackend::start("b");
    let port = free_port();
    let cfg_path = dir.path().join("ringlb.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "{}{}",
            listener_config("l", port, "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RINGLB_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means ready: the very next connect is served.
    let (s, name) = greet(addr(port));
    assert_eq!(name, "b");
    drop(s);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(TcpStream::connect(addr(port)).is_err());
}

/// Metric names (without histogram suffixes) a scrape shows.
fn names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_metrics_that_exist() {
    // A balancer with traffic and health checks, and a scaler that has made a decision.
    let backend = TestBackend::start("b");
    let (port, admin, metrics, scaler_metrics) = (
        free_port(),
        addr(free_port()),
        addr(free_port()),
        addr(free_port()),
    );
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{}[pools.p.health]\ninterval = \"100ms\"\n",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let _p = Proxy::start(&cfg, addr(port));
    drop(greet(addr(port)));
    let dir = tempfile::tempdir().unwrap();
    let scfg = dir.path().join("s.toml");
    std::fs::write(
        &scfg,
        format!(
            "pool = \"p\"\nadmin_url = \"http://{admin}\"\ninterval = \"100ms\"\nlisten = \"{scaler_metrics}\"\nmin = 1\nmax = 1\n[source]\nkind = \"lb\"\nmetrics_url = \"http://{metrics}/metrics\"\n[policy]\nkind = \"target_tracking\"\ntarget = 5\n[actuator]\nkind = \"process\"\ncommand = \"sleep 1 # {{port}}\"\nports = \"31200-31209\"\n"
        ),
    )
    .unwrap();
    let mut scaler = Command::new(BIN)
        .args(["scale", "--config"])
        .arg(&scfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut exported = std::collections::BTreeSet::new();
    wait_until(Duration::from_secs(10), || {
        let lb = if TcpStream::connect(metrics).is_ok() {
            http(metrics, "GET", "/metrics", None, None).1
        } else {
            Default::default()
        };
        let sc = if TcpStream::connect(scaler_metrics).is_ok() {
            http(scaler_metrics, "GET", "/metrics", None, None).1
        } else {
            Default::default()
        };
        exported = names(&lb).union(&names(&sc)).cloned().collect();
        exported.contains("ringlb_health_checks_total")
            && exported.contains("ringlb_scaler_desired_backends")
            && exported.contains("ringlb_connection_duration_seconds")
    });
    let _ = scaler.kill();
    let _ = scaler.wait();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["deploy/grafana/ringlb.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut used = std::collections::BTreeSet::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("ringlb_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].trim_end_matches("_bucket").to_string());
            rest = &tail[end..];
        }
        let missing: Vec<_> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics ringlb does not export: {missing:?} (exported: {exported:?})"
        );
        assert!(!used.is_empty());
    }
    // The dashboard is valid JSON with a query in every panel.
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/ringlb.json")).unwrap(),
    )
    .unwrap();
    assert!(
        d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["targets"][0]["expr"].is_string())
    );
}

#[test]
fn every_deploy_file_passes_its_real_checker() {
    // promtool (config, rules, rule unit tests), systemd-analyze verify, the dashboard JSON,
    // kubernetes-validate --strict on two Kubernetes versions, the kustomization, the
    // Kubernetes YAML with its RBAC, probes and embedded configs run through this binary.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check.sh");
    let out = Command::new("bash").arg(script).arg(BIN).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "deploy/check.sh failed (it needs promtool, systemd-analyze, python3-yaml and kubernetes-validate: see .ci/run):\n{text}"
    );
    assert!(
        text.contains("SUCCESS")
            && text.contains("ok: 10 documents")
            && text.contains("ok: Kubernetes 1.30.0")
            && text.contains("ok: Kubernetes 1.37.0"),
        "{text}"
    );
}

/// `ringlb demo --autoscale | head -1`: once the pipe is gone the demo keeps running (its
/// status lines, every 2 s, meet a broken pipe: no panic), and Ctrl-C still stops it, in
/// order, with exit 0 and no backend process left behind.
#[test]
fn the_autoscale_demo_survives_a_closed_stdout_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let (listen, metrics, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut child = std::process::Command::new(common::BIN)
        .args([
            "demo",
            "--autoscale",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("RINGLB_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("ringlb demo"), "{first}");
    // The reader is gone (as `head` exits): the next status line meets a broken pipe.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the demo died when its stdout closed"
    );
    // And it still serves.
    let mut s = TcpStream::connect(common::addr(listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n").unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf[..9], b"HTTP/1.1 ");
    drop(s);
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let code = common::wait_for_exit(&mut child, Duration::from_secs(10))
        .expect("Ctrl-C did not stop the demo");
    let err = common::stderr_of(&mut child);
    assert!(code.success(), "{code}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("stopping the backends this scaler launched"),
        "{err}"
    );
}

/// The shipped seccomp profile, enforced by libseccomp (deploy/container/seccomp-run.py): ringlb
/// serves under it, relays, takes admin and metrics requests, writes its access log and
/// stops cleanly; and under the same profile without io_uring, `check` says seccomp is what
/// blocks it.
#[test]
fn the_seccomp_profile_runs_ringlb_and_a_blocked_io_uring_is_explained() {
    let root = env!("CARGO_MANIFEST_DIR");
    let profile = format!("{root}/deploy/container/seccomp-ringlb.json");
    let runner = format!("{root}/deploy/container/seccomp-run.py");
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{}",
            listener_config(
                "l",
                port,
                "p",
                &format!(
                    "access_log = {:?}",
                    dir.path().join("a.log").display().to_string()
                )
            ),
            pool_config("p", "least_conn", &[(backend.addr, 1)], "")
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([&runner, &profile, "--", BIN, "serve", "--config"])
        .arg(&cfg)
        .env("RINGLB_LOG", "warn")
        .spawn()
        .expect("/usr/bin/python3 with python3-seccomp");
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    for _ in 0..5 {
        assert_eq!(greet(addr(port)).1, "b1");
    }
    assert_eq!(http(admin, "GET", "/backends", None, None).0, 200);
    assert_eq!(http(metrics, "GET", "/metrics", None, None).0, 200);
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    assert_eq!(greet(addr(port)).1, "b1");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_for_exit(&mut child, Duration::from_secs(15)).expect("stops");
    assert_eq!(
        status.code(),
        Some(0),
        "ringlb under the profile did not stop cleanly"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("a.log"))
            .unwrap()
            .lines()
            .count()
            >= 5
    );

    // The same profile without io_uring: the preflight names seccomp.
    let mut p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    let names = p["syscalls"][0]["names"].as_array_mut().unwrap();
    names.retain(|n| !n.as_str().unwrap().starts_with("io_uring"));
    let blocked = dir.path().join("no-uring.json");
    std::fs::write(&blocked, p.to_string()).unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&runner)
        .arg(&blocked)
        .args(["--", BIN, "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("seccomp") && err.contains("io_uring_setup"),
        "{err}"
    );
}

/// A cgroup with a CPU quota of its own (v1 `cpu` hierarchy, or v2 with the cpu
/// controller), removed on drop.
struct QuotaCgroup {
    dir: std::path::PathBuf,
}

impl QuotaCgroup {
    /// `quota` µs per 100 ms period.
    fn new(quota: u64) -> QuotaCgroup {
        let name = format!("ringlb-test-{}-{quota}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).expect("a v1 cpu cgroup (run as root)");
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
            return QuotaCgroup { dir };
        }
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
        let dir = v2.join(&name);
        std::fs::create_dir(&dir).expect("a v2 cgroup (run as root)");
        std::fs::write(dir.join("cpu.max"), format!("{quota} 100000"))
            .expect("cgroup v2 without the cpu controller: no way to set a quota here");
        QuotaCgroup { dir }
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `ringlb serve` with `workers = 0` inside `cgroup` (or the test's own), and returns
/// the number of workers it logged choosing.
fn auto_workers_in(cgroup: Option<&QuotaCgroup>) -> usize {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 0\n{}{}",
            listener_config("l", port, "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        ),
    )
    .unwrap();
    let script = match cgroup {
        Some(c) => format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" serve --config \"$1\"",
            c.dir.display()
        ),
        None => "exec \"$0\" serve --config \"$1\"".into(),
    };
    let mut child = Command::new("sh")
        .args(["-c", &script, BIN])
        .arg(&cfg)
        .env("RINGLB_LOG", "info")
        .env("RINGLB_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    assert_eq!(greet(addr(port)).1, "b1");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_for_exit(&mut child, Duration::from_secs(15)).expect("stops");
    let err = stderr_of(&mut child);
    let line = err
        .lines()
        .find(|l| l.contains("workers = 0"))
        .unwrap_or_else(|| panic!("no line on how the workers were counted:\n{err}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["fields"]["workers"].as_u64().unwrap() as usize
}

#[test]
fn workers_0_follows_the_cgroup_cpu_quota() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs to tell a quota from none"
    );
    // No quota of its own: one worker per CPU.
    assert_eq!(auto_workers_in(None), cpus);
    // Half a CPU of time: one worker, not one per CPU.
    let half = QuotaCgroup::new(50_000);
    assert_eq!(auto_workers_in(Some(&half)), 1);
    // 1.5 CPUs: rounded up to 2 (capped by the CPUs there are).
    let one_and_half = QuotaCgroup::new(150_000);
    assert_eq!(auto_workers_in(Some(&one_and_half)), 2.min(cpus));
}
