//! What a listener does to connections besides relaying them, through the real binary:
//! TCP keepalive on both sockets (as `ss -o` shows it), the fin timeouts, `max_connection_age`
//! (closed only while idle), PROXY headers from a real HAProxy (`send-proxy-v2`) in front,
//! and the per-source limits across 2 workers.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Lb {
    _proxy: Proxy,
    port: u16,
    metrics: SocketAddr,
}

fn start(listener_extra: &str, pool: &str) -> Lb {
    let (port, metrics) = (free_port(), addr(free_port()));
    let cfg = format!(
        "workers = 2\n[metrics]\nlisten = \"{metrics}\"\n{}{pool}",
        listener_config("l", port, "p", listener_extra)
    );
    // Ready once the metrics endpoint answers and the listener listens: no probe connection
    // through the listener, which would reach the backends (and count as a PROXY timeout).
    let proxy = Proxy::start(&cfg, metrics);
    wait_until(Duration::from_secs(10), || listening(port));
    Lb {
        _proxy: proxy,
        port,
        metrics,
    }
}

/// Whether something listens on loopback `port` (as `ss -ltn` sees it).
fn listening(port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-ltnH"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (apt install iproute2)");
    !out.stdout.is_empty()
}

/// The value of `name{listener="l",...labels}` in a scrape (0 if absent).
fn metric(metrics: SocketAddr, name: &str, labels: &str) -> f64 {
    let (_, body) = http(metrics, "GET", "/metrics", None, None);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.split(',').all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (bounded) until `name{labels}` reads `want`; fails with the value it last read.
fn wait_metric(metrics: SocketAddr, name: &str, labels: &str, want: f64) {
    let t = Instant::now();
    loop {
        let v = metric(metrics, name, labels);
        if v == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}{{{labels}}} is {v}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ss -tno` lines for established sockets matching `filter`.
fn ss(filter: &str) -> String {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(filter)
        .output()
        .expect("ss (apt install iproute2)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The keepalive timer's seconds left in an `ss -o` line, if it has one.
fn keepalive_left(line: &str) -> Option<f64> {
    let t = line.split("timer:(keepalive,").nth(1)?;
    let v = t.split(',').next()?;
    // "6.9sec", "1min", "59sec", "1min59sec"
    let mut secs = 0.0;
    let mut rest = v;
    if let Some((m, r)) = rest.split_once("min") {
        secs += m.parse::<f64>().ok()? * 60.0;
        rest = r;
    }
    if let Some(s) = rest.strip_suffix("sec") {
        secs += s.parse::<f64>().ok()?;
    } else if let Some(ms) = rest.strip_suffix("ms") {
        secs += ms.parse::<f64>().ok()? / 1000.0;
    }
    Some(secs)
}

#[test]
fn keepalive_is_set_on_both_sockets_as_configured() {
    let backend = TestBackend::start("b");
    let plain_backend = TestBackend::start("plain");
    let (port, plain_port) = (free_port(), free_port());
    // Two listeners and two pools: with keepalive, and without, to see the difference.
    let cfg = format!(
        "workers = 2\n{}{}{}tcp_keepalive = {{ idle = \"93s\", interval = \"7s\", count = 4 }}\n{}",
        listener_config(
            "l",
            port,
            "p",
            "tcp_keepalive = { idle = \"47s\", interval = \"5s\", count = 3 }"
        ),
        listener_config("plain", plain_port, "plain", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], ""),
        pool_config("plain", "round_robin", &[(plain_backend.addr, 1)], "")
    );
    let _p = Proxy::start(&cfg, addr(plain_port));
    let (_c1, g1) = greet(addr(port));
    let (_c2, g2) = greet(addr(plain_port));
    assert_eq!((g1.as_str(), g2.as_str()), ("b", "plain"));
    // The client side: ringlb's accepted socket (local port = the listener's).
    let client_side = ss(&format!("( sport = :{port} )"));
    let left =
        keepalive_left(&client_side).unwrap_or_else(|| panic!("no keepalive timer: {client_side}"));
    assert!(left > 30.0 && left <= 47.0, "{client_side}");
    // The backend side: ringlb's socket to the backend (remote port = the backend's).
    let backend_side = ss(&format!("( dport = :{} )", backend.addr.port()));
    let left = keepalive_left(&backend_side)
        .unwrap_or_else(|| panic!("no keepalive timer: {backend_side}"));
    assert!(left > 60.0 && left <= 93.0, "{backend_side}");
    // Without the setting, no keepalive timer on either side.
    let plain = ss(&format!(
        "( sport = :{plain_port} or dport = :{} )",
        plain_backend.addr.port()
    ));
    assert!(!plain.is_empty() && !plain.contains("keepalive"), "{plain}");
}

/// Health checks aimed at another backend's port (on the same address), so that a test
/// backend sees only relayed connections.
fn checks_elsewhere() -> String {
    static SPARE: std::sync::OnceLock<TestBackend> = std::sync::OnceLock::new();
    let spare = SPARE.get_or_init(|| TestBackend::start("spare"));
    format!("[pools.p.health]\nport = {}\n", spare.addr.port())
}

/// A backend that accepts and holds each connection without ever writing, reading or
/// closing: the far side of a half-close that never completes. Sends each accepted stream
/// to the test.
fn silent_backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (a, rx)
}

/// Reads until EOF (or a reset), within `limit`; whether it ended.
fn ends_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_closed_connections_end_at_their_fin_timeout() {
    let (silent, accepted) = silent_backend();
    let lb = start(
        "server_fin_timeout = \"300ms\"\nclient_fin_timeout = \"300ms\"\nidle_timeout = \"1h\"",
        &pool_config("p", "round_robin", &[(silent, 1)], &checks_elsewhere()),
    );
    // The client ends its side; the backend never answers nor closes: after
    // server_fin_timeout ringlb closes, and the client reads the end.
    let mut c = TcpStream::connect(addr(lb.port)).unwrap();
    let mut b = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    b.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words", "the backend got every byte and the FIN");
    assert!(
        ends_within(&mut c, Duration::from_secs(10)),
        "server_fin_timeout closed it"
    );
    drop(b);

    // The backend ends its side; the client stays silent: client_fin_timeout.
    let mut c = TcpStream::connect(addr(lb.port)).unwrap();
    let mut b = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    b.write_all(b"bye").unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    let mut got = [0u8; 3];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_exact(&mut got).unwrap();
    assert!(
        ends_within(&mut b, Duration::from_secs(10)),
        "client_fin_timeout closed it"
    );
    wait_metric(
        lb.metrics,
        "ringlb_listener_fin_timeouts_total",
        "listener=\"l\"",
        2.0,
    );
    drop(c);

    // A connection open both ways is not touched by the fin timeouts.
    let mut c = TcpStream::connect(addr(lb.port)).unwrap();
    let _b = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        !ends_within(&mut c, Duration::from_millis(1500)),
        "no half-close, no fin timeout"
    );
}

#[test]
fn aged_connections_close_only_while_idle() {
    let echo = TestBackend::echo();
    let lb = start(
        "max_connection_age = \"1s\"\nmax_connection_age_idle = \"400ms\"",
        &pool_config("p", "round_robin", &[(echo.addr, 1)], ""),
    );
    let mut c = TcpStream::connect(addr(lb.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Busy well past the age, with never 400 ms of silence: every exchange completes.
    let started = Instant::now();
    let mut seed = 7u64;
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let mut req = vec![0u8; 1000 + (rounds % 7) * 10_000];
        fill(&mut req, &mut seed);
        c.write_all(&req).unwrap();
        let mut back = vec![0u8; req.len()];
        c.read_exact(&mut back)
            .expect("an exchange of a busy aged connection was cut");
        assert_eq!(back, req);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(
            lb.metrics,
            "ringlb_listener_max_age_closed_total",
            "listener=\"l\""
        ),
        0.0
    );
    // Silent now: closed once idle for max_connection_age_idle.
    assert!(
        ends_within(&mut c, Duration::from_secs(10)),
        "the aged connection was never closed"
    );
    wait_metric(
        lb.metrics,
        "ringlb_listener_max_age_closed_total",
        "listener=\"l\"",
        1.0,
    );
    eprintln!("{rounds} exchanges on the aged connection before it was closed");
}

/// A backend that reads a PROXY v1 line, reports it, then echoes.
fn proxy_v1_backend() -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let _ = tx.send(line.trim_end().to_string());
                let mut w = s;
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (a, rx)
}

/// Says `hi` through `port` from `src` and expects it back; false if the connection was
/// closed instead.
fn echoes_from(src: Ipv4Addr, port: u16) -> bool {
    let mut s = connect_from(src, addr(port));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(b"hi").is_err() {
        return false;
    }
    let mut b = [0u8; 2];
    s.read_exact(&mut b).is_ok() && &b == b"hi"
}

#[test]
fn proxy_header_from_a_real_haproxy_names_the_client() {
    let (backend, lines) = proxy_v1_backend();
    let lb = start(
        "accept_proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\nproxy_protocol = \"v1\"\ndeny = [\"127.0.0.66/32\"]\ninspect_timeout = \"500ms\"",
        &pool_config("p", "round_robin", &[(backend, 1)], &checks_elsewhere()),
    );
    let front = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\nfrontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n  server ringlb 127.0.0.1:{} send-proxy-v2 source 127.0.0.1\n",
            lb.port
        ),
    )
    .unwrap();
    let mut haproxy = Command::new("haproxy")
        .args(["-f"])
        .arg(&cfg)
        .args(["-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt install haproxy)");
    // Ready once it listens (a probe connection would reach ringlb as a header-less
    // connection and count as a timeout).
    wait_until(Duration::from_secs(10), || listening(front));

    // The backend sees the client's address (127.0.0.5), not HAProxy's, in ringlb's header.
    assert!(echoes_from(Ipv4Addr::new(127, 0, 0, 5), front));
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with("PROXY TCP4 127.0.0.5 127.0.0.1 "),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(" {front}")),
        "the destination HAProxy was reached at: {line}"
    );

    // deny applies to the address in the header.
    assert!(
        !echoes_from(Ipv4Addr::new(127, 0, 0, 66), front),
        "a denied client was served"
    );
    wait_metric(
        lb.metrics,
        "ringlb_listener_denied_total",
        "listener=\"l\"",
        1.0,
    );

    // A sender outside proxy_protocol_from, and a trusted one sending garbage or nothing.
    let mut direct = connect_from(Ipv4Addr::new(127, 0, 0, 9), addr(lb.port));
    direct
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi")
        .ok();
    assert!(ends_within(&mut direct, Duration::from_secs(10)));
    let mut garbage = TcpStream::connect(addr(lb.port)).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(ends_within(&mut garbage, Duration::from_secs(10)));
    let mut v1 = TcpStream::connect(addr(lb.port)).unwrap();
    v1.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").unwrap();
    assert!(
        ends_within(&mut v1, Duration::from_secs(10)),
        "v1 on a v2-only listener"
    );
    let mut mute = TcpStream::connect(addr(lb.port)).unwrap();
    assert!(
        ends_within(&mut mute, Duration::from_secs(10)),
        "inspect_timeout ends a silent sender"
    );
    for (reason, n) in [
        ("untrusted", 1.0),
        ("malformed", 1.0),
        ("version", 1.0),
        ("timeout", 1.0),
    ] {
        let label = format!("reason=\"{reason}\"");
        wait_metric(
            lb.metrics,
            "ringlb_listener_proxy_header_errors_total",
            &label,
            n,
        );
    }
    assert!(
        lines.try_recv().is_err(),
        "nothing refused reached the backend"
    );
    let _ = haproxy.kill();
    let _ = haproxy.wait();
}

#[test]
fn per_source_limits_refuse_one_source_and_serve_the_others() {
    let backend = TestBackend::start("b");
    let lb = start(
        "max_connections_per_source = 3",
        &pool_config("p", "round_robin", &[(backend.addr, 1)], ""),
    );
    let src = Ipv4Addr::new(127, 0, 0, 7);
    let greeted = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .is_ok()
            && line == "b\n"
    };
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(src, addr(lb.port))).collect();
    for s in &mut held {
        assert!(greeted(s));
    }
    let mut fourth = connect_from(src, addr(lb.port));
    assert!(
        !greeted(&mut fourth),
        "a 4th connection from one source was served"
    );
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 8), addr(lb.port));
    assert!(greeted(&mut other), "another source is served");
    assert_eq!(
        metric(
            lb.metrics,
            "ringlb_listener_source_limited_total",
            "reason=\"connections\""
        ),
        1.0
    );
    // A close gives the source its room back.
    drop(held.pop());
    wait_until(Duration::from_secs(5), || {
        let mut s = connect_from(src, addr(lb.port));
        greeted(&mut s)
    });
    // A reload raises the limit; the connections open across it stay counted (2 held + 3
    // new = 5, then a refusal), as a rebuilt table would have forgotten the 2.
    let path = lb._proxy.config_path.clone();
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        cfg.replace(
            "max_connections_per_source = 3",
            "max_connections_per_source = 5",
        ),
    )
    .unwrap();
    lb._proxy.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        unlabelled_metric(lb.metrics, "ringlb_config_reloads_total") == Some(1.0)
    });
    for _ in 0..3 {
        let mut s = connect_from(src, addr(lb.port));
        assert!(greeted(&mut s), "below the reloaded limit");
        held.push(s);
    }
    let mut sixth = connect_from(src, addr(lb.port));
    assert!(!greeted(&mut sixth), "past the reloaded limit");
}

#[test]
fn connection_rate_per_source_holds_across_two_workers() {
    let backend = TestBackend::start("b");
    let lb = start(
        "connection_rate_per_source = \"4/s\"\nconnection_rate_burst = 6",
        &pool_config("p", "round_robin", &[(backend.addr, 1)], ""),
    );
    let src = Ipv4Addr::new(127, 0, 0, 11);
    let started = Instant::now();
    let total = 40;
    let mut served = 0;
    for _ in 0..total {
        let s = connect_from(src, addr(lb.port));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        if BufReader::new(s).read_line(&mut line).is_ok() && line == "b\n" {
            served += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst at once, then 4 a second: never more, however the 40 connections were
    // spread over the 2 workers (SO_REUSEPORT hashes each source port), and at least the
    // burst. The bound grows with the time taken, so a slow machine cannot fail it.
    let bound = 6.0 + 4.0 * elapsed + 1.0;
    assert!(
        served >= 6 && (served as f64) <= bound,
        "{served} served in {elapsed:.2}s (bound {bound:.1})"
    );
    let refused = metric(
        lb.metrics,
        "ringlb_listener_source_limited_total",
        "reason=\"rate\"",
    );
    assert_eq!(refused as usize, total - served);
    // Another source has its own bucket.
    let (_s, g) = greet(addr(lb.port));
    assert_eq!(g, "b");
}

#[test]
fn after_a_proxy_header_sni_routes_and_the_log_names_the_real_client() {
    let (a, p) = (TestBackend::start("a"), TestBackend::start("p"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(
        &format!(
            "accept_proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\naccess_log = \"{}\"\nroutes = [{{ sni = \"a.example\", pool = \"a\" }}]",
            log.display()
        ),
        &format!(
            "{}{}",
            pool_config("p", "round_robin", &[(p.addr, 1)], ""),
            pool_config("a", "round_robin", &[(a.addr, 1)], "")
        ),
    );
    for (sni, src, want) in [
        ("a.example", "198.51.100.7:4242", "a"),
        ("other.example", "198.51.100.8:4343", "p"),
    ] {
        let hello = common::hello::build_hello(Some(sni), 16384);
        let (ip, port) = src.split_once(':').unwrap();
        let mut s = TcpStream::connect(addr(lb.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The header and the hello in separate writes, then all of the hello comes back.
        s.write_all(format!("PROXY TCP4 {ip} 127.0.0.1 {port} {}\r\n", lb.port).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&hello).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "routed by {sni}");
        let mut back = vec![0u8; hello.len()];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, hello, "the backend got the hello, without the header");
    }
    // The access log names the client the header gave.
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("198.51.100.7:4242") && text.contains("198.51.100.8:4343")
    });
}
