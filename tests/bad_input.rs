//! Bad input as a careless operator writes it: a running balancer with held connections gets
//! SIGHUP with each of many broken files, `ringlb check` refuses the same files, and admin
//! requests with huge, empty and malformed values get a 400 and change nothing.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn echo_once(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).unwrap();
    let mut buf = vec![0u8; what.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, what);
}

/// Broken variants of a good config: every one must be refused whole.
fn broken_files(good: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, text: String| out.push((name.to_string(), text.into_bytes()));
    let sub = |from: &str, to: &str| {
        assert!(good.contains(from), "{from:?} is not in the base config");
        good.replacen(from, to, 1)
    };
    let top = |line: &str| format!("{line}\n{good}");
    let in_listener = |line: &str| sub("pool = \"p\"\n", &format!("pool = \"p\"\n{line}\n"));
    let in_pool = |line: &str| sub("[pools.p]\n", &format!("[pools.p]\n{line}\n"));
    let in_health = |line: &str| format!("{good}\n[pools.p.health]\n{line}\n");
    add("empty", String::new());
    add("only a comment", "# nothing here\n".into());
    // Out of range, and sums that overflow.
    for (k, v) in [
        (
            "shutdown_timeout",
            "\"18446744073709551615s18446744073709551615s\"",
        ),
        ("shutdown_timeout", "\"31d\""),
        ("shutdown_timeout", "\"99999999999999999999999h\""),
        ("busy_poll", "\"2ms\""),
        ("buffer_count", "3"),
        ("buffer_count", "65536"),
        ("buffer_size", "100"),
        ("buffer_size", "4294967296"),
        ("workers", "99999"),
        ("workers", "-1"),
    ] {
        add(&format!("{k} = {v}"), top(&format!("{k} = {v}")));
    }
    for (k, v) in [
        ("connect_timeout", "\"6m\""),
        ("connect_timeout", "\"0s\""),
        ("connect_timeout", "\"100000000000h\""),
        ("idle_timeout", "\"31d\""),
        ("idle_timeout", "\"0ms\""),
        ("retries", "8"),
        ("retries", "-1"),
        ("backlog", "0"),
        ("backlog", "1000000"),
        ("max_connections", "-1"),
        ("max_connections", "4294967296"),
        ("proxy_protocol", "\"v3\""),
        ("relay", "\"splice\""),
        ("tcp_congestion", "\"no-such-cc\""),
        ("tcp_keepalive", "{ idle = \"0s\" }"),
        ("tcp_keepalive", "{ idle = \"10h\" }"),
        ("tcp_keepalive", "{ count = 128 }"),
        ("tcp_keepalive", "{ idel = \"1s\" }"),
        ("server_fin_timeout", "\"0s\""),
        ("client_fin_timeout", "\"-1s\""),
        ("max_connection_age", "\"500ms\""),
        ("max_connection_age_idle", "\"2h\""),
        ("accept_proxy_protocol", "\"v3\""),
        ("accept_proxy_protocol", "\"v2\""),
        ("proxy_protocol_from", "[\"10.0.0.0/8\"]"),
        ("max_connections_per_source", "-1"),
        ("max_connections_per_source", "1000001"),
        ("connection_rate_per_source", "\"20\""),
        ("connection_rate_per_source", "\"0/s\""),
        ("connection_rate_per_source", "\"20/h\""),
        ("connection_rate_per_source", "\"99999999999/s\""),
        ("connection_rate_burst", "5"),
        ("source_table_size", "10"),
        ("source_table_size", "99999999999"),
    ] {
        add(
            &format!("listener {k} = {v}"),
            in_listener(&format!("{k} = {v}")),
        );
    }
    for (k, v) in [
        ("ring_points", "0"),
        ("ring_points", "100000"),
        ("maglev_table_size", "65536"),
        ("balance_factor", "0.5"),
        ("balance_factor", "inf"),
        ("balance_factor", "nan"),
        ("algorithm", "\"fastest\""),
        ("hash_key", "\"mac\""),
        ("on_backend_down", "\"shutdown\""),
        ("tcp_keepalive", "{ interval = \"0s\" }"),
        ("rebalance", "{ tolerance = -0.1 }"),
        ("rebalance", "{ tolerance = 11.0 }"),
        ("rebalance", "{ tolerance = nan }"),
        ("rebalance", "{ tolerance = inf }"),
        ("rebalance", "{ idle_for = \"10ms\" }"),
        ("rebalance", "{ idle_for = \"2h\" }"),
        ("rebalance", "{ rate = \"0/s\" }"),
        ("rebalance", "{ rate = \"20/h\" }"),
        ("rebalance", "{ rate = \"lots\" }"),
        ("rebalance", "{ rate = \"99999999/s\" }"),
        ("rebalance", "{ tolerence = 0.2 }"),
        ("rebalance", "true"),
        ("algorithm = \"maglev\"\nrebalance", "{}"),
    ] {
        add(&format!("pool {k} = {v}"), in_pool(&format!("{k} = {v}")));
    }
    for (k, v) in [
        ("interval", "\"0s\""),
        ("interval", "\"400d\""),
        ("timeout", "\"1h\""),
        ("rise", "0"),
        ("fall", "100000"),
        ("kind", "\"udp\""),
        ("port", "0"),
        ("port", "70000"),
        ("expect_status", "\"600\""),
        ("host", "\"a\\r\\nX-Injected: 1\""),
        ("kind", "\"send_expect\""),
        ("steps", "[{ send = \"x\" }]"),
        ("role", "\"master\""),
        ("max_read", "0"),
        ("max_read", "2000000"),
        ("password_file", "\"/nonexistent/redis.pass\""),
        ("kind = \"send_expect\"\nsteps", "[{ send_hex = \"0g\" }]"),
        ("kind = \"send_expect\"\nsteps", "[{ send_hex = \"123\" }]"),
        (
            "kind = \"send_expect\"\nsteps",
            "[{ expect_regex = \"(\" }]",
        ),
        (
            "kind = \"send_expect\"\nsteps",
            "[{ send = \"a\", send_hex = \"00\" }]",
        ),
        ("kind = \"send_expect\"\nsteps", "[{ expect = \"\" }]"),
        ("kind = \"send_expect\"\nsteps", "[{}]"),
        ("kind = \"send_expect\"\nsteps", "[{ sned = \"a\" }]"),
        ("kind = \"redis\"\nrole", "\"leader\""),
        ("kind = \"redis\"\nusername", "\"\""),
        ("kind = \"redis\"\ndatabase", "\"x\""),
        ("kind = \"postgres\"\nusername", "\"a\\u0000b\""),
    ] {
        add(
            &format!("health {k} = {v}"),
            in_health(&format!("{k} = {v}")),
        );
    }
    // Wrong types.
    add("workers as a string", top("workers = \"two\""));
    add("timeout as a number", in_listener("idle_timeout = 5"));
    add("pool as a number", sub("pool = \"p\"", "pool = 3"));
    add("weight as a string", sub("weight = 1", "weight = \"1\""));
    add("weight 0", sub("weight = 1", "weight = 0"));
    add("weight 257", sub("weight = 1", "weight = 257"));
    add(
        "backup as a string",
        sub("weight = 1", "weight = 1, backup = \"yes\""),
    );
    add(
        "weight huge",
        sub("weight = 1", "weight = 99999999999999999999"),
    );
    add(
        "backends as a string",
        sub("backends = [", "backends = \"x\"\nold = ["),
    );
    // Unknown keys at every level.
    add("unknown top key", top("wrokers = 2"));
    add(
        "unknown listener key",
        in_listener("conect_timeout = \"1s\""),
    );
    add("unknown pool key", in_pool("algoritm = \"maglev\""));
    add("unknown health key", in_health("intervall = \"1s\""));
    add(
        "unknown backend key",
        sub("weight = 1", "weight = 1, wieght = 2"),
    );
    // References and structure.
    add("unknown pool", sub("pool = \"p\"", "pool = \"q\""));
    add("no backends", sub("backends = [", "backends = []\nold = ["));
    add("port 0", sub(":", ":0#"));
    add("duplicate key", in_listener("pool = \"p\""));
    add("unclosed table", good.replacen("[pools.p]", "[pools.p", 1));
    add(
        "a listener that needs a restart",
        sub("bind = \"127.0.0.1:", "bind = \"127.0.0.2:"),
    );
    add(
        "a listener that needs a restart: admin",
        sub("listen = \"127.0.0.1:", "listen = \"127.0.0.3:"),
    );
    add(
        "a listener that needs a restart: workers",
        sub("workers = 2", "workers = 1"),
    );
    add(
        "a listener that needs a restart: buffers",
        top("buffer_count = 128"),
    );
    add("garbage", "\u{0}\u{1}\u{2}[[[".into());
    // Truncations: most cut a string, a table or an array open.
    let bytes = good.as_bytes();
    for k in 1..=12 {
        let cut = bytes.len() * k / 13;
        let text = String::from_utf8_lossy(&bytes[..cut]).into_owned();
        if ringlb::config::Config::parse("t", &text).is_err() {
            add(&format!("truncated at {cut}"), text);
        }
    }
    // Invalid UTF-8, in a value and at the start.
    let mut bad = good.as_bytes().to_vec();
    let at = good.find("name = \"l\"").unwrap() + 8;
    bad[at] = 0xff;
    out.push(("invalid UTF-8 in a value".into(), bad));
    out.push(("invalid UTF-8".into(), vec![0xc3, 0x28, 0xa0, 0xa1, 0xfe]));
    out
}

#[test]
fn sighup_with_each_broken_file_is_refused_and_nothing_stops() {
    let backend = TestBackend::echo();
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let good = format!(
        "workers = 2\nshutdown_timeout = \"5s\"\n[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}[pools.p]\nbackends = [{{ addr = \"{}\", weight = 1 }}]\n",
        listener_config("l", port, "p", ""),
        backend.addr
    );
    let lb = Proxy::start(&good, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(addr(port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let files = broken_files(&good);
    assert!(files.len() >= 50, "only {} broken files", files.len());
    assert_eq!(
        unlabelled_metric(metrics, "ringlb_config_last_reload_successful"),
        Some(1.0)
    );
    let started = unlabelled_metric(metrics, "ringlb_config_last_reload_timestamp_seconds")
        .expect("the reload timestamp");
    let good_since = unlabelled_metric(
        metrics,
        "ringlb_config_last_reload_success_timestamp_seconds",
    )
    .expect("the good-reload timestamp");
    for (i, (name, bytes)) in files.iter().enumerate() {
        // `ringlb check` and a reload share one validation: check refuses it too.
        let path = lb.dir.path().join("candidate.toml");
        std::fs::write(&path, bytes).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{name}: {err}");
        // A listener change is a valid file that only a restart can apply: check accepts it.
        let valid_for_a_restart = name.starts_with("a listener that needs a restart");
        assert_eq!(
            out.status.code(),
            Some(if valid_for_a_restart { 0 } else { 1 }),
            "check on {name}: {err}"
        );
        std::fs::write(&lb.config_path, bytes).unwrap();
        lb.signal("HUP");
        eprintln!("reload {i}: {name}");
        wait_until(Duration::from_secs(5), || {
            unlabelled_metric(metrics, "ringlb_config_reload_failures_total")
                == Some((i + 1) as f64)
        });
        assert_eq!(
            unlabelled_metric(metrics, "ringlb_config_last_reload_successful"),
            Some(0.0),
            "{name}"
        );
        for (j, s) in held.iter_mut().enumerate() {
            echo_once(s, format!("{name} {j}").as_bytes());
        }
        let mut fresh = TcpStream::connect(addr(port)).unwrap();
        fresh
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        echo_once(&mut fresh, b"new connection");
    }
    // Refused reloads move the attempt's timestamp, not the last good one's.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&lb.config_path, &files[0].1).unwrap();
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), || {
        unlabelled_metric(metrics, "ringlb_config_last_reload_timestamp_seconds")
            .is_some_and(|t| t > started)
    });
    assert_eq!(
        unlabelled_metric(
            metrics,
            "ringlb_config_last_reload_success_timestamp_seconds"
        ),
        Some(good_since)
    );
    // A good file afterwards applies.
    std::fs::write(&lb.config_path, good.replace("weight = 1", "weight = 7")).unwrap();
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), || {
        http(admin, "GET", "/backends", None, None)
            .1
            .contains("\"weight\":7")
    });
    assert_eq!(
        unlabelled_metric(metrics, "ringlb_config_last_reload_successful"),
        Some(1.0)
    );
    for s in &mut held {
        echo_once(s, b"still here");
    }
}

#[test]
fn admin_requests_with_huge_empty_and_malformed_values_get_400_and_change_nothing() {
    let backend = TestBackend::echo();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n{}[pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        listener_config("l", port, "p", ""),
        backend.addr
    );
    let _lb = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    // What a refusal must not change (connection counts move with the start-up probe, which
    // may still be open).
    let view = || {
        let mut v: serde_json::Value =
            serde_json::from_str(&http(admin, "GET", "/backends", None, None).1).unwrap();
        for b in v["pools"][0]["backends"].as_array_mut().unwrap() {
            let b = b.as_object_mut().unwrap();
            b.remove("connections_total");
            b.remove("active_connections");
        }
        v
    };
    let before = view();
    let b = backend.addr;
    // Long enough to overflow anything, short enough for the request line (a longer URI
    // gets 414, which is right too).
    let long = "9".repeat(4_000);
    let delete = |q: &str| ("DELETE", format!("/pools/p/backends/{b}?{q}"), None);
    let mut cases: Vec<(&str, String, Option<String>)> = [
        "drain_timeout=18446744073709551615s18446744073709551615s".to_string(),
        "drain_timeout=9999999999999999h".into(),
        "drain_timeout=31d".into(),
        "drain_timeout=".into(),
        format!("drain_timeout={long}s"),
        "drain_timeout=-1s".into(),
        "drain_timeout=5s&x=1".into(),
    ]
    .iter()
    .map(|q| delete(q))
    .collect();
    let weight = format!("/pools/p/backends/{b}/weight");
    for body in [
        "{\"weight\": 0}".to_string(),
        "{\"weight\": 257}".into(),
        "{\"weight\": 4294967296}".into(),
        "{\"weight\": -1}".into(),
        "{\"weight\": 1.5}".into(),
        "{\"weight\": \"2\"}".into(),
        String::new(),
        "{".into(),
        format!("{{\"weight\": {long}}}"),
    ] {
        cases.push(("PUT", weight.clone(), Some(body)));
    }
    for body in [
        String::new(),
        "{\"addr\": \"\"}".into(),
        "{\"addr\": \"127.0.0.1:0\"}".into(),
        "{\"addr\": \"0.0.0.0:80\"}".into(),
        format!("{{\"addr\": \"{long}\"}}"),
        "{\"addr\": \"127.0.0.1:9\", \"weight\": 0}".into(),
        "{\"addr\": \"127.0.0.1:9\", \"extra\": 1}".into(),
        "[]".into(),
    ] {
        cases.push(("POST", "/pools/p/backends".into(), Some(body)));
    }
    for (method, path, body) in &cases {
        let (status, resp) = http(admin, method, path, body.as_deref(), None);
        assert_eq!(
            status,
            400,
            "{method} {}: {resp}",
            &path[..path.len().min(120)]
        );
        let v: serde_json::Value =
            serde_json::from_str(&resp).unwrap_or_else(|_| panic!("not JSON: {resp}"));
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty() && e.len() < 2000),
            "{resp}"
        );
    }
    assert_eq!(view(), before, "a refused request changed something");
}

/// Runs `sh -c script` inside the mount namespace of process `pid`.
fn in_namespace_of(pid: u32, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--mount", "sh", "-c", script])
        .output()
        .expect("nsenter")
}

/// The state file's directory is a 64 KiB tmpfs in a mount namespace made for this test:
/// filled up, then remounted read-only (run as anyone but root: a directory made
/// read-only). Each time an admin change fails with a 5xx, and
/// changes nothing, neither in memory (GET /backends) nor on disk (the state file).
#[test]
fn a_full_or_read_only_state_directory_refuses_admin_changes_and_changes_nothing() {
    let backend = TestBackend::echo();
    let other = TestBackend::echo();
    let (port, admin) = (free_port(), addr(free_port()));
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let state_file = state_dir.join("state.json");
    let cfg = format!(
        "state_file = {:?}\n[admin]\nlisten = \"{admin}\"\n{}[pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        state_file.display().to_string(),
        listener_config("l", port, "p", ""),
        backend.addr
    );
    let cfg_path = dir.path().join("ringlb.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {} && exec {BIN} serve --config {}",
        state_dir.display(),
        cfg_path.display()
    );
    // Root (as CI runs) gets a tmpfs in a mount namespace of its own; anyone else a
    // directory made read-only (root would write through that).
    let root = String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout)
        .trim()
        == "0";
    let mut child = if root {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("RINGLB_LOG", "warn")
            .spawn()
            .expect("unshare")
    } else {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("RINGLB_LOG", "warn")
            .spawn()
            .unwrap()
    };
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _kill = Kill(&mut child);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let run = |script: &str| {
        if root {
            in_namespace_of(pid, script)
        } else {
            Command::new("sh").args(["-c", script]).output().unwrap()
        }
    };
    let state_path = state_file.display().to_string();
    let on_disk = || {
        String::from_utf8_lossy(&run(&format!("cat {state_path} 2>/dev/null")).stdout).into_owned()
    };
    // One change that lands, so the file has something to keep.
    let (status, body) = http(
        admin,
        "PUT",
        &format!("/pools/p/backends/{}/weight", backend.addr),
        Some("{\"weight\": 2}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let good_file = on_disk();
    assert!(good_file.contains("\"weight\": 2"), "{good_file}");
    // What must not change (connection counts move with the start-up probe).
    let listing = || {
        let mut list = first_pool_backends(admin);
        for b in &mut list {
            let b = b.as_object_mut().unwrap();
            b.remove("connections_total");
            b.remove("active_connections");
        }
        list
    };
    let before = listing();
    let changes = [
        (
            "PUT",
            format!("/pools/p/backends/{}/weight", backend.addr),
            Some("{\"weight\": 3}".to_string()),
        ),
        (
            "POST",
            "/pools/p/backends".to_string(),
            Some(format!("{{\"addr\": \"{}\"}}", other.addr)),
        ),
        (
            "POST",
            format!("/pools/p/backends/{}/drain", backend.addr),
            None,
        ),
        (
            "DELETE",
            format!("/pools/p/backends/{}", backend.addr),
            None,
        ),
    ];
    let fill = format!(
        "dd if=/dev/zero of={}/fill bs=4k count=64 2>/dev/null; true",
        state_dir.display()
    );
    let unfill = format!("rm -f {}/fill", state_dir.display());
    let read_only = format!("mount -o remount,ro {}", state_dir.display());
    let read_write = format!("mount -o remount,rw {}", state_dir.display());
    let (chmod_ro, chmod_rw) = (
        format!("chmod 555 {}", state_dir.display()),
        format!("chmod 755 {}", state_dir.display()),
    );
    let breakages = if root {
        vec![
            (&fill, &unfill, "full"),
            (&read_only, &read_write, "read-only"),
        ]
    } else {
        vec![(&chmod_ro, &chmod_rw, "read-only directory")]
    };
    for (break_it, mend_it, what) in breakages {
        let out = run(break_it);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (method, path, body) in &changes {
            let (status, resp) = http(admin, method, path, body.as_deref(), None);
            assert!(
                (500..600).contains(&status),
                "{what}: {method} {path} gave {status}: {resp}"
            );
            assert!(resp.contains("state file"), "{resp}");
            assert_eq!(
                listing(),
                before,
                "{what}: {method} {path} changed the balancer"
            );
            assert_eq!(
                on_disk(),
                good_file,
                "{what}: {method} {path} changed the file"
            );
        }
        // Traffic is untouched.
        let mut s = TcpStream::connect(addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        echo_once(&mut s, what.as_bytes());
        assert!(run(mend_it).status.success());
    }
    // Mended: the same change lands.
    let (status, body) = http(
        admin,
        "PUT",
        &format!("/pools/p/backends/{}/weight", backend.addr),
        Some("{\"weight\": 3}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(on_disk().contains("\"weight\": 3"));
}

/// Starts the debug binary with a fault injected (RINGLB_FAULT_*), stderr captured.
fn start_with_fault(fault: &str, config: &str, dir: &std::path::Path) -> std::process::Child {
    let path = dir.join("ringlb.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RINGLB_LOG", "warn")
        .env(fault, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A worker that panics ends the process with a clear line and exit 70, rather than leave
/// a balancer whose listener takes connections that nobody serves.
#[test]
fn a_worker_that_panics_ends_the_process_with_exit_70() {
    let backend = TestBackend::echo();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "workers = 2\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let mut child = start_with_fault("RINGLB_FAULT_WORKER_PANIC", &cfg, dir.path());
    let Some(status) = wait_for_exit(&mut child, Duration::from_secs(10)) else {
        let _ = child.kill();
        panic!("the balancer kept running with a dead worker");
    };
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(70), "{err}");
    assert!(
        err.contains("stopped, it panicked: injected fault"),
        "{err}"
    );
}

/// The reload's last line of defence: a panic while applying a (valid) file is caught, the
/// reload refused and counted, and the balancer and its connections carry on.
#[test]
fn a_panic_while_applying_a_reload_refuses_it_and_nothing_stops() {
    let backend = TestBackend::echo();
    let (port, metrics) = (free_port(), addr(free_port()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[metrics]\nlisten = \"{metrics}\"\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let mut child = start_with_fault("RINGLB_FAULT_RELOAD_PANIC", &cfg, dir.path());
    // The metrics port is bound before the workers start: wait for the listener itself.
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    let mut held = TcpStream::connect(addr(port)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut held, b"before");
    std::fs::write(
        dir.path().join("ringlb.toml"),
        cfg.replace("weight = 1", "weight = 2"),
    )
    .unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(5), || {
        unlabelled_metric(metrics, "ringlb_config_reload_failures_total") == Some(1.0)
    });
    assert_eq!(child.try_wait().unwrap(), None, "the balancer died");
    echo_once(&mut held, b"after");
    let _ = child.kill();
    let _ = child.wait();
    let err = stderr_of(&mut child);
    assert!(
        err.contains("applying the new configuration panicked: injected fault"),
        "{err}"
    );
}
