//! The control plane through the real binary: health checks, metrics (parsed with a real
//! text-format parser, and scraped by a real Prometheus), the admin API, persisted state and
//! SIGHUP reload.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Lb {
    proxy: Proxy,
    lb: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
}

fn start(pool: &str, top: &str) -> Lb {
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let cfg = format!(
        "workers = 2\n{top}\n[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{pool}",
        listener_config("l", port, "p", "")
    );
    let proxy = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    Lb {
        proxy,
        lb: addr(port),
        admin,
        metrics,
    }
}

fn health(kind: &str, extra: &str) -> String {
    format!(
        "[pools.p.health]\nkind = \"{kind}\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n{extra}\n"
    )
}

fn wait_state(admin: SocketAddr, b: SocketAddr, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    wait_until(limit, || backend_state(admin, b).as_deref() == Some(want));
    t.elapsed()
}

#[test]
fn tcp_check_takes_a_dead_backend_out_and_brings_it_back() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let a_addr = a.addr;
    let lb = start(
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(a.addr, 1), (b.addr, 1)], ""),
            health("tcp", "")
        ),
        "",
    );
    drop(a); // a stops listening
    // Marked down within fall × interval + timeout (with slack for scheduling), without traffic.
    let took = wait_state(lb.admin, a_addr, "down", Duration::from_secs(5));
    eprintln!("down after {took:?}");
    for i in 0..20 {
        let (_s, name) = greet(lb.lb);
        assert_eq!(name, "b", "connection {i} went to the dead backend");
    }
    // Listening again: up after `rise` checks.
    let l = TcpListener::bind(a_addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = (&s).write_all(b"a\n");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    wait_state(lb.admin, a_addr, "up", Duration::from_secs(5));
    let names: Vec<String> = (0..10).map(|_| greet(lb.lb).1).collect();
    assert!(
        names.iter().any(|n| n == "a"),
        "a took no traffic after coming back: {names:?}"
    );
}

#[test]
fn refused_connects_take_a_backend_down_before_the_next_check() {
    let good = TestBackend::start("good");
    let dead = refusing_addr();
    // Checks every 60 s: only passive detection can act within this test.
    let h = "[pools.p.health]\ninterval = \"60s\"\nrise = 2\nfall = 3\n";
    let lb = start(
        &format!(
            "{}{h}",
            pool_config("p", "round_robin", &[(dead, 1), (good.addr, 1)], "")
        ),
        "",
    );
    for _ in 0..10 {
        let (_s, name) = greet(lb.lb);
        assert_eq!(name, "good");
    }
    wait_state(lb.admin, dead, "down", Duration::from_secs(3));
}

#[test]
fn http_probe_follows_the_health_endpoint() {
    let a = HttpBackend::start("a");
    let lb = start(
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(a.addr, 1)], ""),
            health("http", "path = \"/health\"\nexpect_status = \"200-299\"")
        ),
        "",
    );
    a.health.store(503, Ordering::Relaxed);
    wait_state(lb.admin, a.addr, "down", Duration::from_secs(5));
    // Its traffic port still accepts: only the probe says it is sick.
    assert!(TcpStream::connect(a.addr).is_ok());
    let (status, body) = http(lb.admin, "GET", "/healthz", None, None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no routable backend in pool(s): p"), "{body}");
    a.health.store(200, Ordering::Relaxed);
    wait_state(lb.admin, a.addr, "up", Duration::from_secs(5));
    assert_eq!(http(lb.admin, "GET", "/healthz", None, None).0, 200);
}

#[test]
fn a_health_port_that_never_answers_is_a_failure() {
    let a = HttpBackend::start("a");
    // Accepts, reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let lb = start(
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(a.addr, 1)], ""),
            health("http", &format!("port = {silent_port}"))
        ),
        "",
    );
    wait_state(lb.admin, a.addr, "down", Duration::from_secs(5));
    let m = scrape(lb.metrics);
    let fails = sample(&m, "ringlb_health_checks_total", &[("result", "fail")]);
    assert!(fails >= 2.0, "failed probes counted: {fails}");
}

fn scrape(metrics: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = http(metrics, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The sum of a metric's samples whose labels match.
fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_match_the_traffic() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let lb = start(
        &pool_config("p", "least_conn", &[(a.addr, 1), (b.addr, 1)], ""),
        "",
    );
    let before = scrape(lb.metrics);
    let conns_before = sample(
        &before,
        "ringlb_listener_connections_total",
        &[("listener", "l")],
    );
    let held: Vec<_> = (0..6).map(|_| greet(lb.lb).0).collect();
    for mut s in &held {
        s.write_all(b"0123456789").unwrap();
        let mut echo = [0u8; 10];
        s.read_exact(&mut echo).unwrap();
    }
    wait_until(Duration::from_secs(5), || {
        sample(
            &scrape(lb.metrics),
            "ringlb_listener_active_connections",
            &[("listener", "l")],
        ) == 6.0
    });
    let m = scrape(lb.metrics);
    assert_eq!(
        sample(&m, "ringlb_backend_active_connections", &[("pool", "p")]),
        6.0
    );
    assert_eq!(
        sample(
            &m,
            "ringlb_backend_active_connections",
            &[("backend", &a.addr.to_string())]
        ),
        3.0,
        "least_conn splits 6 as 3 + 3"
    );
    assert!(
        sample(
            &m,
            "ringlb_listener_connections_total",
            &[("listener", "l")]
        ) >= conns_before + 6.0
    );
    assert_eq!(sample(&m, "ringlb_backend_up", &[("pool", "p")]), 2.0);
    assert_eq!(sample(&m, "ringlb_backend_state", &[("state", "up")]), 2.0);
    assert_eq!(
        sample(
            &m,
            "ringlb_backend_weight",
            &[("backend", &b.addr.to_string())]
        ),
        1.0
    );
    drop(held);
    wait_until(Duration::from_secs(5), || {
        sample(
            &scrape(lb.metrics),
            "ringlb_listener_active_connections",
            &[],
        ) == 0.0
    });
    // Bytes are folded in at close: 10 each way per connection, plus the greetings.
    let m = scrape(lb.metrics);
    assert!(
        sample(
            &m,
            "ringlb_backend_bytes_total",
            &[("direction", "to_backend")]
        ) >= 60.0
    );
    assert!(
        sample(
            &m,
            "ringlb_backend_bytes_total",
            &[("direction", "to_client")]
        ) >= 60.0 + 12.0
    );
    // The process's own series (metrics-process, from /proc).
    assert!(
        m.samples
            .iter()
            .any(|x| x.metric == "process_cpu_seconds_total")
    );
    assert!(sample(&m, "process_threads", &[]) >= 3.0);
    assert!(sample(&m, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&m, "process_open_fds", &[]) >= 5.0);
    // Histograms, HELP and TYPE for every family; no duplicate series.
    let (_, text) = http(lb.metrics, "GET", "/metrics", None, None);
    for family in [
        "ringlb_listener_connections_total",
        "ringlb_listener_active_connections",
        "ringlb_listener_no_backend_total",
        "ringlb_backend_connections_total",
        "ringlb_backend_active_connections",
        "ringlb_backend_connect_errors_total",
        "ringlb_backend_bytes_total",
        "ringlb_backend_up",
        "ringlb_backend_state",
        "ringlb_backend_weight",
        "ringlb_backend_connect_duration_seconds",
        "ringlb_connection_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no TYPE for {family}"
        );
    }
    assert!(text.contains("# TYPE ringlb_backend_connect_duration_seconds histogram"));
    assert!(text.contains("# TYPE ringlb_backend_connections_total counter"));
    assert!(text.contains("# TYPE ringlb_backend_active_connections gauge"));
    let mut seen = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').unwrap().0;
        assert!(seen.insert(series.to_string()), "duplicate series {series}");
    }
    // Every closed connection was recorded in the lifetime histogram.
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ringlb_connection_duration_seconds_count{listener=\"l\"} "))
        .expect("the connection duration histogram")
        .parse()
        .unwrap();
    assert!(count >= 6.0, "{count} connections recorded");
}

#[test]
fn a_real_prometheus_scrapes_ringlb() {
    let a = TestBackend::start("a");
    let lb = start(&pool_config("p", "round_robin", &[(a.addr, 1)], ""), "");
    let prom = Prometheus::start(lb.metrics);
    let (labels, value) = prom
        .query("ringlb_backend_up", Duration::from_secs(30))
        .expect("Prometheus never returned ringlb_backend_up");
    assert_eq!(labels["backend"], a.addr.to_string());
    assert_eq!(labels["pool"], "p");
    assert_eq!(value, "1");
}

#[test]
fn admin_add_drain_delete_and_bad_input() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let lb = start(
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(a.addr, 1)], ""),
            health("tcp", "")
        ),
        "",
    );
    // Add: starting, then up after `rise` checks, then it takes traffic.
    let (status, body) = http(
        lb.admin,
        "POST",
        "/pools/p/backends",
        Some(&format!("{{\"addr\": \"{}\", \"weight\": 1}}", b.addr)),
        None,
    );
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"state\":\"starting\""), "{body}");
    wait_state(lb.admin, b.addr, "up", Duration::from_secs(5));
    let names: Vec<String> = (0..4).map(|_| greet(lb.lb).1).collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 2, "{names:?}");

    // Drain b with a connection open on it.
    let mut open_on_b = loop {
        let (s, name) = greet(lb.lb);
        if name == "b" {
            break s;
        }
    };
    let (status, body) = http(
        lb.admin,
        "POST",
        &format!("/pools/p/backends/{}/drain", b.addr),
        None,
        None,
    );
    assert_eq!(status, 202, "{body}");
    let accepted = b.accepted();
    for _ in 0..10 {
        assert_eq!(
            greet(lb.lb).1,
            "a",
            "a draining backend took a new connection"
        );
    }
    assert_eq!(b.accepted(), accepted);
    open_on_b.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    open_on_b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // Bad input: 4xx with a JSON error, and the state unchanged.
    // The state without the live count of connections (one that ended just before may still
    // be leaving the table as the requests run).
    let state = || {
        let mut v: serde_json::Value =
            serde_json::from_str(&http(lb.admin, "GET", "/backends", None, None).1).unwrap();
        for p in v["pools"].as_array_mut().unwrap() {
            for b in p["backends"].as_array_mut().unwrap() {
                b.as_object_mut().unwrap().remove("active_connections");
            }
        }
        v
    };
    let before = state();
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            "/pools/nope/backends".into(),
            Some(format!("{{\"addr\": \"{}\"}}", refusing_addr())),
            404,
        ),
        (
            "POST",
            "/pools/p/backends".into(),
            Some("{\"addr\": \"not an address\"}".into()),
            400,
        ),
        (
            "POST",
            "/pools/p/backends".into(),
            Some(format!("{{\"addr\": \"{}\"}}", a.addr)),
            409,
        ),
        (
            "POST",
            "/pools/p/backends".into(),
            Some("{\"addr\": ".into()),
            400,
        ),
        (
            "POST",
            "/pools/p/backends".into(),
            Some(format!(
                "{{\"addr\": \"{}\", \"weight\": 0}}",
                refusing_addr()
            )),
            400,
        ),
        (
            "POST",
            "/pools/p/backends".into(),
            Some(format!(
                "{{\"addr\": \"{}\", \"colour\": 1}}",
                refusing_addr()
            )),
            400,
        ),
        (
            "PUT",
            format!("/pools/p/backends/{}/weight", refusing_addr()),
            Some("{\"weight\": 2}".into()),
            404,
        ),
        (
            "PUT",
            format!("/pools/p/backends/{}/weight", a.addr),
            Some("{\"weight\": 9999}".into()),
            400,
        ),
        (
            "DELETE",
            format!("/pools/p/backends/{}?drain_timeout=soon", a.addr),
            None,
            400,
        ),
        // Not an address: no backend by that name.
        ("POST", "/pools/p/backends/garbage/drain".into(), None, 404),
        ("GET", "/nothing-here".into(), None, 404),
    ];
    for (method, path, body, want) in &cases {
        let (status, resp) = http(lb.admin, method, path, body.as_deref(), None);
        assert_eq!(status, *want, "{method} {path}: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {resp}"));
        assert!(v["error"].is_string(), "{resp}");
    }
    assert_eq!(state(), before, "a refused request changed the state");

    // DELETE: completes only after the open connection ends.
    let (status, body) = http(
        lb.admin,
        "DELETE",
        &format!("/pools/p/backends/{}?drain_timeout=60s", b.addr),
        None,
        None,
    );
    assert_eq!(status, 202, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        backend_state(lb.admin, b.addr).as_deref(),
        Some("draining"),
        "removed while a connection was open"
    );
    open_on_b.write_all(b"last words").unwrap();
    open_on_b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"last words");
    drop(open_on_b);
    wait_until(Duration::from_secs(5), || {
        backend_state(lb.admin, b.addr).is_none()
    });
}

#[test]
fn drain_then_ready_brings_traffic_back() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let lb = start(
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(a.addr, 1), (b.addr, 1)], ""),
            health("tcp", "")
        ),
        "",
    );
    let (held, name) = loop {
        let (s, name) = greet(lb.lb);
        if name == "b" {
            break (s, name);
        }
    };
    assert_eq!(name, "b");
    let drain = format!("/pools/p/backends/{}/drain", b.addr);
    assert_eq!(http(lb.admin, "POST", &drain, None, None).0, 202);
    let listed = first_pool_backends(lb.admin);
    let entry = listed
        .iter()
        .find(|e| e["addr"] == b.addr.to_string())
        .unwrap();
    assert_eq!(entry["state"], "draining");
    assert!(entry["draining_since"].as_u64().unwrap() > 0, "{entry}");
    assert_eq!(entry["active_connections"], 1, "{entry}");
    assert!(
        (0..6).all(|_| greet(lb.lb).1 == "a"),
        "a drained backend took traffic"
    );
    // Ready: routable again (its checks pass), and it takes its share once more.
    let ready = format!("/pools/p/backends/{}/ready", b.addr);
    let (status, body) = http(lb.admin, "POST", &ready, None, None);
    assert_eq!(status, 200, "{body}");
    wait_state(lb.admin, b.addr, "up", Duration::from_secs(5));
    let names: Vec<String> = (0..6).map(|_| greet(lb.lb).1).collect();
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 3, "{names:?}");
    let listed = first_pool_backends(lb.admin);
    let entry = listed
        .iter()
        .find(|e| e["addr"] == b.addr.to_string())
        .unwrap();
    assert!(entry["draining_since"].is_null(), "{entry}");
    drop(held);
}

#[test]
fn delete_closes_what_is_left_when_the_drain_timeout_passes() {
    let a = TestBackend::start("a");
    let lb = start(&pool_config("p", "round_robin", &[(a.addr, 1)], ""), "");
    let (mut s, _) = greet(lb.lb);
    let (status, _) = http(
        lb.admin,
        "DELETE",
        &format!("/pools/p/backends/{}?drain_timeout=300ms", a.addr),
        None,
        None,
    );
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(5), || {
        backend_state(lb.admin, a.addr).is_none()
    });
    // The proxy closed it after the timeout.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn admin_token_is_required_when_configured() {
    let a = TestBackend::start("a");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\n{}{}",
        token_file.display().to_string(),
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(a.addr, 1)], "")
    );
    let _p = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let add = format!("{{\"addr\": \"{}\"}}", refusing_addr());
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let (status, body) = http(admin, "POST", "/pools/p/backends", Some(&add), token);
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body.contains("error"));
    }
    assert_eq!(http(admin, "GET", "/backends", None, None).0, 401);
    let (status, body) = http(admin, "GET", "/backends", None, Some("s3cret-token"));
    assert_eq!(status, 200, "{body}");
    // The refused requests added nothing: the pool still has its one backend.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["pools"][0]["backends"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    assert_eq!(
        http(
            admin,
            "POST",
            "/pools/p/backends",
            Some(&add),
            Some("s3cret-token")
        )
        .0,
        201
    );
}

#[test]
fn runtime_changes_survive_a_restart() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let top = format!("state_file = {:?}", state.display().to_string());
    let pool = format!(
        "{}{}",
        pool_config("p", "round_robin", &[(a.addr, 1)], ""),
        health("tcp", "")
    );
    let lb = start(&pool, &top);
    assert_eq!(
        http(
            lb.admin,
            "POST",
            "/pools/p/backends",
            Some(&format!("{{\"addr\": \"{}\", \"weight\": 3}}", b.addr)),
            None
        )
        .0,
        201
    );
    assert_eq!(
        http(
            lb.admin,
            "PUT",
            &format!("/pools/p/backends/{}/weight", a.addr),
            Some("{\"weight\": 2}"),
            None
        )
        .0,
        200
    );
    drop(lb);
    let lb = start(&pool, &top);
    let (_, body) = http(lb.admin, "GET", "/backends", None, None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let backends = v["pools"][0]["backends"].as_array().unwrap();
    let find = |addr: SocketAddr| {
        backends
            .iter()
            .find(|x| x["addr"] == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{addr} missing: {body}"))
    };
    assert_eq!(find(b.addr)["weight"], 3);
    assert_eq!(find(a.addr)["weight"], 2);
    wait_state(lb.admin, b.addr, "up", Duration::from_secs(5));
}

#[test]
fn sighup_applies_a_new_weight_and_refuses_a_broken_file() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let lb = start(
        &pool_config("p", "round_robin", &[(a.addr, 1), (b.addr, 1)], ""),
        "",
    );
    let (mut held, _) = greet(lb.lb);
    let text = std::fs::read_to_string(&lb.proxy.config_path).unwrap();
    let reweighted = text.replace(
        &format!("{{ addr = \"{}\", weight = 1 }}", b.addr),
        &format!("{{ addr = \"{}\", weight = 3 }}", b.addr),
    );
    assert_ne!(text, reweighted);
    std::fs::write(&lb.proxy.config_path, &reweighted).unwrap();
    lb.proxy.signal("HUP");
    wait_until(Duration::from_secs(5), || {
        http(lb.admin, "GET", "/backends", None, None)
            .1
            .contains("\"weight\":3")
    });
    let mut counts = std::collections::HashMap::new();
    for _ in 0..40 {
        *counts.entry(greet(lb.lb).1).or_insert(0) += 1;
    }
    assert_eq!((counts["a"], counts["b"]), (10, 30), "{counts:?}");
    // A broken file is refused; traffic and the held connection carry on.
    std::fs::write(
        &lb.proxy.config_path,
        reweighted.replace("round_robin", "fastest"),
    )
    .unwrap();
    lb.proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http(lb.admin, "GET", "/backends", None, None)
            .1
            .contains("\"weight\":3")
    );
    let _ = greet(lb.lb);
    held.write_all(b"ok?").unwrap();
    let mut buf = [0u8; 3];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok?");
}
