//! Routing and admission end to end, with the real binary on 127.0.0.1: SNI routing to real
//! TLS servers (`openssl s_server`, reached by `openssl s_client`), source allow/deny with
//! clients bound to 127.0.0.2 and 127.0.0.3 and a SIGHUP that changes the lists, per-backend
//! `max_connections` with the pool's queue (order, timeout, two workers), and slow start.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A labelled series' value in a scrape.
fn metric(metrics: SocketAddr, name: &str, labels: &str) -> f64 {
    let (status, body) = http(metrics, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let prefix = format!("{name}{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .find(|l| labels.split(',').all(|kv| l.contains(kv)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Connections the data plane sent to `backend` (a backend's own accept count would include
/// the health probes).
fn relayed(metrics: SocketAddr, backend: SocketAddr) -> f64 {
    metric(
        metrics,
        "ringlb_backend_connections_total",
        &format!("backend=\"{backend}\""),
    )
}

/// A TCP backend that records the first bytes of every connection it takes (so a test can
/// check that inspected bytes reach it unchanged), then greets with its name and echoes.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start(name: &'static str) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let seen = s2.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Whatever arrives within 300 ms of the last byte is "the first bytes".
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    seen.lock().unwrap().push(got);
                    let _ = s.write_all(format!("{name}\n").as_bytes());
                });
            }
        });
        Recorder { addr, seen }
    }
    /// Whether some connection's first bytes were exactly `bytes`.
    fn saw(&self, bytes: &[u8]) -> bool {
        self.seen.lock().unwrap().iter().any(|b| b == bytes)
    }
}

/// Sends `bytes` (one write per `chunk` bytes, a pause between them so that each is its own
/// TCP segment), then reads until EOF: what came back.
fn send_and_read(to: SocketAddr, bytes: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for part in bytes.chunks(chunk) {
        s.write_all(part).unwrap();
        if chunk < bytes.len() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A self-signed certificate for `cn`, and an `openssl s_server` with it on a free port
/// that echoes each line reversed (`-rev`).
struct TlsServer {
    addr: SocketAddr,
    child: Child,
}

impl TlsServer {
    fn start(dir: &std::path::Path, cn: &str) -> TlsServer {
        let (cert, key) = tls::self_signed(dir, cn);
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-rev", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = addr(port);
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
        TlsServer { addr, child }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client` through the proxy with `servername`: the server certificate's subject
/// and whether the echo of a line came back (reversed) over the TLS session.
fn tls_client(to: SocketAddr, servername: Option<&str>) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &to.to_string(), "-ign_eof"]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&out).contains("hello-sni") {
                break;
            }
        }
        String::from_utf8_lossy(&out).to_string()
    });
    // s_client reads stdin only after the handshake; a line written now waits for it.
    stdin.write_all(b"ins-olleh\n").unwrap();
    stdin.flush().unwrap();
    let out = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let subject = out
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string();
    // -rev answers each line reversed.
    (subject, out.contains("hello-sni"))
}

#[test]
fn sni_routes_tls_to_the_pool_its_name_picks() {
    let dir = tempfile::tempdir().unwrap();
    let a = TlsServer::start(dir.path(), "a.test");
    let b = TlsServer::start(dir.path(), "x.b.test");
    let dflt = TlsServer::start(dir.path(), "default.test");
    let (port, metrics) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[metrics]\nlisten = \"{metrics}\"\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"d\"\n\
         routes = [{{ sni = \"a.test\", pool = \"a\" }}, {{ sni = \"*.b.test\", pool = \"b\" }}]\n\
         {}{}{}",
        pool_config("a", "round_robin", &[(a.addr, 1)], ""),
        pool_config("b", "least_conn", &[(b.addr, 1)], ""),
        pool_config("d", "round_robin", &[(dflt.addr, 1)], ""),
    );
    let _p = Proxy::start(&cfg, addr(port));
    for (name, want) in [
        (Some("a.test"), "a.test"),
        (Some("A.Test"), "a.test"),
        (Some("x.b.test"), "x.b.test"),
        (Some("unknown.test"), "default.test"),
        (None, "default.test"),
    ] {
        let (subject, echoed) = tls_client(addr(port), name);
        assert!(
            subject.contains(want),
            "-servername {name:?}: expected the certificate of {want}, got {subject:?}"
        );
        assert!(
            echoed,
            "-servername {name:?}: no echo through the TLS session"
        );
    }
    assert_eq!(
        metric(
            metrics,
            "ringlb_listener_no_route_total",
            "listener=\"tls\",reason=\"no_sni\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            metrics,
            "ringlb_listener_no_route_total",
            "reason=\"unknown_name\""
        ),
        1.0
    );
}

#[test]
fn sni_inspection_edges() {
    let (ra, rb, rd) = (
        Recorder::start("ra"),
        Recorder::start("rb"),
        Recorder::start("rd"),
    );
    let (port, port2, metrics) = (free_port(), free_port(), addr(free_port()));
    let cfg = format!(
        "[metrics]\nlisten = \"{metrics}\"\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"d\"\ninspect_timeout = \"500ms\"\n\
         routes = [{{ sni = \"a.test\", pool = \"a\" }}, {{ sni = \"*.b.test\", pool = \"b\" }}]\n\
         [[listeners]]\nname = \"only-routes\"\nbind = \"127.0.0.1:{port2}\"\ninspect_timeout = \"500ms\"\n\
         routes = [{{ sni = \"a.test\", pool = \"a\" }}]\n\
         {}{}{}",
        pool_config("a", "round_robin", &[(ra.addr, 1)], ""),
        pool_config("b", "round_robin", &[(rb.addr, 1)], ""),
        pool_config("d", "round_robin", &[(rd.addr, 1)], ""),
    );
    let _p = Proxy::start(&cfg, addr(port));
    let to = addr(port);

    // A ClientHello in 1-byte segments, over several TLS records, routes, and reaches the
    // backend byte for byte.
    let hello = common::hello::build_hello(Some("x.b.test"), 40);
    let back = send_and_read(to, &hello, 1);
    assert_eq!(back, b"rb\n");
    assert!(
        rb.saw(&hello),
        "the inspected bytes reached the backend changed"
    );

    // Plaintext goes to the default pool, unchanged too.
    let back = send_and_read(to, b"GET / HTTP/1.0\r\n\r\n", 64);
    assert_eq!(back, b"rd\n");
    assert!(rd.saw(b"GET / HTTP/1.0\r\n\r\n"));
    let hello_a = common::hello::build_hello(Some("a.test"), 16384);
    assert_eq!(send_and_read(to, &hello_a, 4096), b"ra\n");

    // Three bytes and a stall: closed at inspect_timeout, no backend reached.
    // Counted by the data plane: the recorders also see health probes.
    let relayed_all = || {
        (
            relayed(metrics, ra.addr),
            relayed(metrics, rb.addr),
            relayed(metrics, rd.addr),
        )
    };
    let before = relayed_all();
    let mut s = TcpStream::connect(to).unwrap();
    s.write_all(&hello[..3]).unwrap();
    assert!(closed_by_proxy(&s), "a stalled ClientHello was answered");
    // Half a hello and a half-close: closed, counted as a timeout. (That it is closed at
    // once rather than after inspect_timeout, with no re-poll on the EOF, is by
    // construction, not measured here.)
    let mut half = TcpStream::connect(to).unwrap();
    half.write_all(&hello[..20]).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_proxy(&half));
    // A plaintext client that says nothing at all is closed too (it cannot be routed), as
    // Proxy::start's probe was.
    let quiet = TcpStream::connect(to).unwrap();
    assert!(closed_by_proxy(&quiet));
    assert_eq!(
        metric(
            metrics,
            "ringlb_listener_no_route_total",
            "listener=\"tls\",reason=\"timeout\""
        ),
        4.0
    );

    // Without a default pool, an unknown name, no SNI and plaintext are closed.
    let to2 = addr(port2);
    let unknown = common::hello::build_hello(Some("zzz.test"), 16384);
    let no_sni = common::hello::build_hello(None, 16384);
    for bytes in [&unknown[..], &no_sni[..], b"hello\n"] {
        assert_eq!(send_and_read(to2, bytes, 4096), b"");
    }
    assert_eq!(send_and_read(to2, &hello_a, 4096), b"ra\n");
    assert_eq!(relayed_all(), (before.0 + 1.0, before.1, before.2));
    assert_eq!(
        metric(
            metrics,
            "ringlb_listener_no_route_total",
            "listener=\"only-routes\",reason=\"not_tls\""
        ),
        1.0
    );
}

#[test]
fn check_prints_the_route_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:1\"\n\
             routes = [{{ sni = \"*.example.com\", pool = \"web\" }}, {{ sni = \"api.example.com\", pool = \"api\" }}]\n{}{}",
            pool_config("web", "round_robin", &[(addr(2), 1)], ""),
            pool_config("api", "round_robin", &[(addr(3), 1)], ""),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let api = text.find("api.example.com").expect("exact route listed");
    let web = text.find("*.example.com").expect("wildcard listed");
    assert!(api < web, "exact names are tried first:\n{text}");
    assert!(text.contains("close (no default pool)"), "{text}");
}

#[test]
fn allow_and_deny_by_source_with_a_reload() {
    let backend = TestBackend::start("b1");
    let (port, metrics) = (free_port(), addr(free_port()));
    let cfg = |allow: &str, deny: &str| {
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n{}{}",
            listener_config(
                "l",
                port,
                "p",
                &format!("allow = [{allow}]\ndeny = [{deny}]")
            ),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        )
    };
    let p = Proxy::start(&cfg("\"127.0.0.0/8\"", "\"127.0.0.3\""), addr(port));
    let to = addr(port);
    let greet_from = |src: [u8; 4]| -> Option<(TcpStream, String)> {
        let s = connect_from(src.into(), to);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        use std::io::BufRead;
        match r.read_line(&mut line) {
            Ok(n) if n > 0 => Some((s, line.trim().to_string())),
            _ => None,
        }
    };
    // Proxy::start's own probe connection came from 127.0.0.1 (allowed): counts start here.
    wait_until(Duration::from_secs(5), || {
        relayed(metrics, backend.addr) == 1.0
    });
    let (mut held, name) = greet_from([127, 0, 0, 2]).expect("127.0.0.2 is allowed");
    assert_eq!(name, "b1");
    assert!(greet_from([127, 0, 0, 3]).is_none(), "127.0.0.3 is denied");
    assert_eq!(
        relayed(metrics, backend.addr),
        2.0,
        "a denied client reached a backend"
    );
    assert_eq!(
        metric(metrics, "ringlb_listener_denied_total", "listener=\"l\""),
        1.0
    );

    // SIGHUP with the lists turned around: the held connection carries on.
    std::fs::write(&p.config_path, cfg("\"127.0.0.0/8\"", "\"127.0.0.2/32\"")).unwrap();
    p.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        greet_from([127, 0, 0, 3]).is_some()
    });
    assert!(
        greet_from([127, 0, 0, 2]).is_none(),
        "127.0.0.2 is denied now"
    );
    held.write_all(b"still here\n").unwrap();
    let mut buf = [0u8; 11];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here\n");
    assert!(metric(metrics, "ringlb_listener_denied_total", "listener=\"l\"") >= 2.0);
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() {
    let backend = TestBackend::start("b1");
    let port = free_port();
    let cfg = format!(
        "[[listeners]]\nname = \"dual\"\nbind = \"[::]:{port}\"\npool = \"p\"\n\
         allow = [\"127.0.0.2\", \"::1\"]\n{}",
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let _p = Proxy::start(
        &cfg,
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    );
    // The kernel shows these clients as ::ffff:127.0.0.x; the rules are IPv4.
    let read_greeting = |s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        greeting(&s, Duration::from_secs(10))
    };
    assert_eq!(
        read_greeting(connect_from([127, 0, 0, 2].into(), addr(port))).as_deref(),
        Some("b1")
    );
    assert_eq!(
        read_greeting(connect_from([127, 0, 0, 3].into(), addr(port))),
        None
    );
    let v6 = TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).unwrap();
    assert_eq!(read_greeting(v6).as_deref(), Some("b1"));
}

#[test]
fn hostile_hellos_from_the_network_are_routed_or_closed() {
    // Random bytes, truncated and mutated ClientHellos, each from its own client, in
    // 1-to-64-byte segments: every one ends (routed to the default pool or closed), and the
    // proxy keeps serving.
    let rd = Recorder::start("rd");
    let (port, metrics) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[metrics]\nlisten = \"{metrics}\"\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"d\"\ninspect_timeout = \"300ms\"\n\
         routes = [{{ sni = \"a.test\", pool = \"d\" }}]\n{}",
        pool_config("d", "round_robin", &[(rd.addr, 1)], ""),
    );
    let _p = Proxy::start(&cfg, addr(port));
    let mut seed = 0x5eed_u64;
    let cases: usize = std::env::var("RINGLB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let handles: Vec<_> = (0..cases)
        .map(|i| {
            let mut bytes = common::hello::build_hello(Some("a.test"), 1 + i * 7 % 300);
            let mut noise = vec![0u8; 64];
            fill(&mut noise, &mut seed);
            match i % 4 {
                0 => bytes = noise.clone(),
                1 => bytes.truncate(noise[0] as usize % bytes.len()),
                2 => {
                    for k in 0..4 {
                        let at = noise[k] as usize * 7 % bytes.len();
                        bytes[at] = noise[k + 8];
                    }
                }
                _ => {
                    // A length field claiming more than is sent.
                    bytes[3] = 0x3f;
                    bytes.truncate(40);
                }
            }
            let chunk = 1 + noise[1] as usize % 64;
            std::thread::spawn(move || {
                let _ = send_and_read(addr(port), &bytes, chunk);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let hello = common::hello::build_hello(Some("a.test"), 16384);
    assert_eq!(
        send_and_read(addr(port), &hello, 4096),
        b"rd\n",
        "the proxy stopped serving"
    );
    // Every connection ends: the last one as soon as the proxy has read its client's FIN,
    // which can come a moment after the client saw the EOF (a scrape at once raced it once,
    // on a busy machine).
    wait_until(Duration::from_secs(10), || {
        metric(
            metrics,
            "ringlb_listener_active_connections",
            "listener=\"tls\"",
        ) == 0.0
    });
}

/// Connects and returns the stream once the proxy counts it (accepted, then queued or
/// served), so that arrival order is the order of the calls.
fn arrive(to: SocketAddr, metrics: SocketAddr, listener_total: f64) -> TcpStream {
    // Proxy::start's probe connection was the first.
    let listener_total = listener_total + 1.0;
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wait_until(Duration::from_secs(10), || {
        metric(
            metrics,
            "ringlb_listener_connections_total",
            "listener=\"l\"",
        ) >= listener_total
    });
    s
}

/// The greeting line, or None if the proxy closes the connection first. Neither within
/// `limit` fails the test: a client left hanging is neither served nor closed.
fn greeting(s: &TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match (&*s).read(&mut b) {
            Ok(1) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&line).to_string()),
            Ok(1) => line.push(b[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("neither a greeting nor a close within {limit:?}")
            }
            _ => return None,
        }
    }
}

/// Whether the proxy closed (or reset) the connection within 10 s; a read timeout is not a
/// close.
fn closed_by_proxy(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Starts a proxy for the queue tests and waits until its start-up probe connection has
/// come and gone (it took one of the backend's two slots for a moment).
fn queue_proxy(
    backend: SocketAddr,
    workers: u32,
    timeout: &str,
) -> (Proxy, SocketAddr, SocketAddr) {
    let (port, metrics) = (free_port(), addr(free_port()));
    let p = Proxy::start(
        &queue_config(backend, port, metrics, workers, timeout),
        addr(port),
    );
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(metrics).is_ok()
            && metric(metrics, "ringlb_backend_active_connections", "pool=\"p\"") == 0.0
            && relayed(metrics, backend) == 1.0
    });
    (p, addr(port), metrics)
}

fn queue_config(
    backend: SocketAddr,
    port: u16,
    metrics: SocketAddr,
    workers: u32,
    timeout: &str,
) -> String {
    format!(
        "workers = {workers}\n[metrics]\nlisten = \"{metrics}\"\n{}[pools.p]\nbackends = [{{ addr = \"{backend}\", max_connections = 2 }}]\nqueue_timeout = \"{timeout}\"\nqueue_size = 8\n",
        listener_config("l", port, "p", ""),
    )
}

#[test]
fn max_connections_queues_in_arrival_order() {
    let backend = TestBackend::start("b1");
    let (_p, to, metrics) = queue_proxy(backend.addr, 1, "30s");
    let clients: Vec<TcpStream> = (1..=5).map(|i| arrive(to, metrics, i as f64)).collect();
    assert_eq!(
        greeting(&clients[0], Duration::from_secs(10)).as_deref(),
        Some("b1")
    );
    assert_eq!(
        greeting(&clients[1], Duration::from_secs(10)).as_deref(),
        Some("b1")
    );
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 3.0
    });
    // Nothing was connected for the waiting three.
    assert_eq!(relayed(metrics, backend.addr), 3.0);
    let mut clients = clients;
    drop(clients.remove(0));
    let c3 = &clients[1];
    assert_eq!(
        greeting(c3, Duration::from_secs(10)).as_deref(),
        Some("b1"),
        "the oldest waiter goes first"
    );
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 2.0
    });
    assert_eq!(
        relayed(metrics, backend.addr),
        4.0,
        "exactly one waiter went through"
    );
    // The served one relays like any other.
    (&*c3).write_all(b"ping\n").unwrap();
    assert_eq!(
        greeting(c3, Duration::from_secs(10)).as_deref(),
        Some("ping")
    );
}

#[test]
fn a_full_queue_closes_newcomers_at_once() {
    let backend = TestBackend::start("b1");
    let (_p, to, metrics) = queue_proxy(backend.addr, 1, "30s");
    // 2 served, 8 waiting (queue_size = 8), and the eleventh finds the queue full.
    let clients: Vec<TcpStream> = (1..=10).map(|i| arrive(to, metrics, i as f64)).collect();
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 8.0
    });
    let late = TcpStream::connect(to).unwrap();
    assert_eq!(
        greeting(&late, Duration::from_secs(10)),
        None,
        "closed, not queued"
    );
    assert_eq!(
        metric(metrics, "ringlb_pool_queue_overflows_total", "pool=\"p\""),
        1.0
    );
    assert_eq!(
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\""),
        8.0
    );
    drop(clients);
}

#[test]
fn a_reload_that_raises_max_connections_lets_queued_clients_through() {
    let backend = TestBackend::start("b1");
    let (p, to, metrics) = queue_proxy(backend.addr, 1, "30s");
    let clients: Vec<TcpStream> = (1..=4).map(|i| arrive(to, metrics, i as f64)).collect();
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 2.0
    });
    // max_connections 2 -> 3: the oldest waiter goes through, the other keeps waiting.
    let cfg = std::fs::read_to_string(&p.config_path)
        .unwrap()
        .replace("max_connections = 2", "max_connections = 3");
    std::fs::write(&p.config_path, cfg).unwrap();
    p.signal("HUP");
    assert_eq!(
        greeting(&clients[2], Duration::from_secs(10)).as_deref(),
        Some("b1")
    );
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 1.0
    });
    assert_eq!(relayed(metrics, backend.addr), 4.0, "one waiter, not two");
    drop(clients);
}

#[test]
fn queue_timeout_closes_and_counts() {
    let backend = TestBackend::start("b1");
    let (_p, to, metrics) = queue_proxy(backend.addr, 1, "500ms");
    let clients: Vec<TcpStream> = (1..=5).map(|i| arrive(to, metrics, i as f64)).collect();
    for c in &clients[..2] {
        assert_eq!(greeting(c, Duration::from_secs(10)).as_deref(), Some("b1"));
    }
    for c in &clients[2..] {
        assert_eq!(
            greeting(c, Duration::from_secs(10)),
            None,
            "a queued client was served"
        );
    }
    assert_eq!(
        metric(metrics, "ringlb_pool_queue_timeouts_total", "pool=\"p\""),
        3.0
    );
    assert_eq!(
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\""),
        0.0
    );
    assert_eq!(relayed(metrics, backend.addr), 3.0);
}

#[test]
fn queue_is_served_across_workers_in_arrival_order() {
    let backend = TestBackend::start("b1");
    let (_p, to, metrics) = queue_proxy(backend.addr, 2, "30s");
    // 2 served and 8 waiting, spread by SO_REUSEPORT over both workers.
    let clients: Vec<TcpStream> = (1..=10).map(|i| arrive(to, metrics, i as f64)).collect();
    wait_until(Duration::from_secs(5), || {
        metric(metrics, "ringlb_pool_queue_length", "pool=\"p\"") == 8.0
    });
    for (i, c) in clients.iter().enumerate() {
        // Client i is served once the one two before it closes: in arrival order whichever
        // worker holds it.
        assert_eq!(
            greeting(c, Duration::from_secs(10)).as_deref(),
            Some("b1"),
            "client {i} was not served in order"
        );
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    assert_eq!(relayed(metrics, backend.addr), 11.0);
}

#[test]
fn slow_start_ramps_a_backend_that_comes_up() {
    let (old, new) = (TestBackend::start("old"), TestBackend::start("new"));
    let (port, admin) = (free_port(), addr(free_port()));
    let ramp = Duration::from_secs(4);
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config(
            "p",
            "round_robin",
            &[(old.addr, 1)],
            "slow_start = \"4s\"\n[pools.p.health]\ninterval = \"100ms\"\nrise = 1\n"
        ),
    );
    let _p = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let (status, body) = http(
        admin,
        "POST",
        "/pools/p/backends",
        Some(&format!("{{\"addr\": \"{}\"}}", new.addr)),
        None,
    );
    assert!(status < 300, "{status}: {body}");
    wait_until(Duration::from_secs(10), || {
        backend_state(admin, new.addr).as_deref() == Some("up")
    });
    let up_at = Instant::now();
    let backends = first_pool_backends(admin);
    let listed = backends
        .iter()
        .find(|b| b["addr"] == new.addr.to_string())
        .unwrap();
    assert!(
        listed["effective_weight"].as_f64().unwrap() < 1.0,
        "{listed}"
    );
    // Connections spread over the ramp, each sorted into the quarter it began in.
    let mut quarters = [[0u32; 2]; 4];
    while up_at.elapsed() < ramp {
        let q = ((up_at.elapsed().as_secs_f64() / ramp.as_secs_f64()) * 4.0) as usize;
        let (_, name) = greet(addr(port));
        quarters[q.min(3)][(name == "new") as usize] += 1;
        std::thread::sleep(Duration::from_millis(8));
    }
    let share = |q: [u32; 2]| q[1] as f64 / (q[0] + q[1]).max(1) as f64;
    let (first, last) = (share(quarters[0]), share(quarters[3]));
    assert!(
        quarters.iter().all(|q| q[0] + q[1] >= 20),
        "too few connections per quarter: {quarters:?}"
    );
    assert!(
        first < 0.25,
        "first quarter: {first:.2} of connections went to the new backend ({quarters:?})"
    );
    assert!(
        last > 0.3 && last > first + 0.15,
        "last quarter: {last:.2} ({quarters:?})"
    );
    // After the ramp, its full share.
    let backends = first_pool_backends(admin);
    let listed = backends
        .iter()
        .find(|b| b["addr"] == new.addr.to_string())
        .unwrap();
    assert_eq!(listed["effective_weight"].as_f64(), Some(1.0), "{listed}");
}

#[test]
fn routes_keep_proxy_protocol_and_http_health_checks() {
    let rec = Recorder::start("ra");
    let web = HttpBackend::start("web");
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n\
         [[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"web\"\nproxy_protocol = \"v1\"\n\
         routes = [{{ sni = \"a.test\", pool = \"a\" }}]\n{}{}",
        pool_config("a", "round_robin", &[(rec.addr, 1)], ""),
        pool_config(
            "web",
            "round_robin",
            &[(web.addr, 1)],
            "[pools.web.health]\nkind = \"http\"\ninterval = \"100ms\"\nfall = 1\nrise = 1\n"
        ),
    );
    let _p = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    // The routed connection gets the PROXY header first, then the hello as the client sent it.
    let hello = common::hello::build_hello(Some("a.test"), 16384);
    assert_eq!(send_and_read(addr(port), &hello, 4096), b"ra\n");
    let seen = rec.seen.lock().unwrap().clone();
    let got = seen
        .iter()
        .find(|b| b.ends_with(&hello))
        .expect("the hello reached the routed backend");
    let header = String::from_utf8_lossy(&got[..got.len() - hello.len()]).to_string();
    assert!(
        header.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ") && header.ends_with("\r\n"),
        "{header:?}"
    );
    // The default pool's HTTP probes keep working: it goes down at a 503 and comes back.
    web.health.store(503, std::sync::atomic::Ordering::Relaxed);
    wait_until(Duration::from_secs(10), || {
        backend_state(admin, web.addr).as_deref() == Some("down")
    });
    web.health.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_until(Duration::from_secs(10), || {
        backend_state(admin, web.addr).as_deref() == Some("up")
    });
}
