//! Fuzzing as property tests (cargo-fuzz needs a nightly toolchain, which this project's
//! machines do not have; proptest runs on stable and inside `cargo test`, bounded):
//! - the balancer's and the scaler's config parsers, on arbitrary bytes and on structured
//!   mutations of the shipped configs (values swapped for hostile ones, lines dropped,
//!   doubled, swapped, cut short): never a panic; a config that parses prints as TOML that
//!   parses back to the same thing, and builds a running state and reloads into another
//!   without a panic;
//! - the PROXY v1/v2 header encoder, checked by decoding with the `ppp` crate as the oracle;
//! - the admin API of the real binary, with random methods, paths, queries and bodies:
//!   every answer is a 2xx or a 4xx with a JSON reason, and the balancer keeps serving.
//!
//! `RINGLB_FUZZ_CASES` scales every target (default 1; 10 for a longer local run).

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use ringlb::config::{Config, ProxyProtocol};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn scale() -> u32 {
    std::env::var("RINGLB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases: cases * scale(),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..PtConfig::default()
    })
}

const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "1",
    "7",
    "1024",
    "65537",
    "4294967296",
    "99999999999999999999",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "\"\"",
    "\"0s\"",
    "\"1us\"",
    "\"30d\"",
    "\"31d\"",
    "\"720h1s\"",
    "\"18446744073709551615s18446744073709551615s\"",
    "\"1.5.5s\"",
    "[]",
    "{}",
    "true",
    "\"round_robin\"",
    "\"maglev\"",
    "\"ring_hash\"",
    "\"127.0.0.1:1\"",
    "\"[::1]:80\"",
    "\"200-399\"",
    "\"/\"",
    "\"v2\"",
    "\"http\"",
    "[{ addr = \"127.0.0.1:9\" }]",
    "\"\u{0}\"",
    "\"\\r\\n\"",
    "\"é\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Value(usize, usize),
    Drop(usize),
    Double(usize),
    Swap(usize, usize),
    Cut(usize),
    Insert(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<usize>();
    let v = 0..HOSTILE.len();
    prop_oneof![
        4 => (i, v.clone()).prop_map(|(l, v)| Mutation::Value(l, v)),
        1 => i.prop_map(Mutation::Drop),
        1 => i.prop_map(Mutation::Double),
        1 => (i, i).prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => i.prop_map(Mutation::Cut),
        1 => (i, v).prop_map(|(l, v)| Mutation::Insert(l, v)),
    ]
}

/// Keys a mutation may insert: real ones, so that inserted lines reach validation.
const KEYS: &[&str] = &[
    "workers",
    "busy_poll",
    "shutdown_timeout",
    "connect_timeout",
    "idle_timeout",
    "retries",
    "backlog",
    "weight",
    "ring_points",
    "maglev_table_size",
    "balance_factor",
    "interval",
    "timeout",
    "rise",
    "fall",
    "min",
    "max",
    "target",
    "tolerance",
    "scale_in_cooldown",
    "drain_timeout",
    "threshold",
    "periods",
    "adjustment",
    "stop_grace",
];

fn mutate(seed: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = seed.lines().map(String::from).collect();
    for m in muts {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *m {
            Mutation::Value(l, v) => {
                // Replace the value of the l-th `key = value` line (or of an inline table's
                // first value).
                let idx: Vec<usize> = (0..n).filter(|&i| lines[i].contains(" = ")).collect();
                if let Some(&i) = idx.get(l % idx.len().max(1)) {
                    let (k, _) = lines[i].split_once(" = ").unwrap();
                    lines[i] = format!("{k} = {}", HOSTILE[v]);
                }
            }
            Mutation::Drop(l) => {
                lines.remove(l % n);
            }
            Mutation::Double(l) => {
                let x = lines[l % n].clone();
                lines.insert(l % n, x);
            }
            Mutation::Swap(a, b) => lines.swap(a % n, b % n),
            Mutation::Cut(l) => {
                let text = lines.join("\n");
                let mut at = l % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                lines = text[..at].lines().map(String::from).collect();
            }
            Mutation::Insert(l, v) => {
                lines.insert(
                    l % (n + 1),
                    format!("{} = {}", KEYS[l % KEYS.len()], HOSTILE[v]),
                );
            }
        }
    }
    lines.join("\n") + "\n"
}

fn seed(name: &str) -> String {
    std::fs::read_to_string(format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A config that parses: its effective TOML parses back to the same, and a state built on
/// it starts and reloads into `other` without a panic.
fn check_balancer_config(text: &str, other: Option<&Config>) -> Result<(), TestCaseError> {
    let Ok(c) = Config::parse("fuzz.toml", text) else {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    let printed = c.to_toml();
    let again = Config::parse("printed.toml", &printed).map_err(|e| {
        TestCaseError::fail(format!(
            "the effective config does not parse back: {e}\n{printed}"
        ))
    })?;
    prop_assert_eq!(again.to_toml(), printed);
    if c.state_file.is_none() {
        let mut s =
            ringlb::control::state::State::new(c.clone(), 1).map_err(TestCaseError::fail)?;
        if let Some(o) = other {
            let _ = s.reload(o.clone());
        }
    }
    Ok(())
}

#[test]
fn balancer_config_parser_on_arbitrary_bytes() {
    runner(2000)
        .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
            check_balancer_config(&String::from_utf8_lossy(&bytes), None)
        })
        .unwrap();
}

static ACCEPTED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn balancer_config_parser_on_mutations_of_the_reference_config() {
    let base = seed("ringlb.toml");
    let good = Config::parse("ringlb.toml", &base).unwrap();
    let (a0, r0) = (
        ACCEPTED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    );
    runner(1500)
        .run(&prop::collection::vec(mutation(), 1..5), |muts| {
            let text = mutate(&base, &muts);
            check_balancer_config(&text, Some(&good))
        })
        .unwrap();
    // Both sides are reached: mutations that still parse (and go on to build and reload a
    // state) and mutations that are refused. (The other test may add to the counts.)
    let (a, r) = (
        ACCEPTED.load(Ordering::Relaxed) - a0,
        REFUSED.load(Ordering::Relaxed) - r0,
    );
    eprintln!("mutated configs: {a} accepted, {r} refused");
    assert!(a >= 100 && r >= 100, "{a} accepted, {r} refused");
}

#[test]
fn scaler_config_parser_on_arbitrary_bytes_and_mutations() {
    runner(1000)
        .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
            let _ =
                ringlb::scaler::ScalerConfig::parse("fuzz.toml", &String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap();
    for name in [
        "scaler.toml",
        "scaler-step.toml",
        "scaler-simple.toml",
        "scaler-blu.toml",
    ] {
        let base = seed(name);
        ringlb::scaler::ScalerConfig::parse(name, &base).unwrap();
        runner(700)
            .run(&prop::collection::vec(mutation(), 1..5), |muts| {
                let text = mutate(&base, &muts);
                if let Ok(c) = ringlb::scaler::ScalerConfig::parse("fuzz.toml", &text) {
                    // What `ringlb scale --check` prints parses back.
                    let printed = toml::to_string_pretty(&c).unwrap();
                    ringlb::scaler::ScalerConfig::parse("printed.toml", &printed)
                        .map_err(|e| TestCaseError::fail(format!("{e}\n{printed}")))?;
                }
                Ok(())
            })
            .unwrap();
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
    ]
}

/// The addresses as the header must carry them: a mixed pair is written as IPv6.
fn as_sent(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        a => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    }
}

#[test]
fn proxy_headers_decode_with_ppp_to_the_addresses_encoded() {
    runner(3000)
        .run(&(socket_addr(), socket_addr()), |(client, local)| {
            let (want_src, want_dst) = as_sent(client, local);
            let mut buf = [0u8; ringlb::proxy::ring::HEADER_MAX];
            // v1: text, decoded by ppp's v1 parser.
            let n = ringlb::proxy::conn::proxy_header(ProxyProtocol::V1, client, local, &mut buf);
            prop_assert!(n > 0 && n <= 107, "v1 header of {} bytes", n);
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let h = ppp::v1::Header::try_from(text)
                .map_err(|e| TestCaseError::fail(format!("{e:?}: {text:?}")))?;
            let (src, dst) = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => (
                    SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                ),
                ppp::v1::Addresses::Tcp6(a) => (
                    SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                ),
                other => return Err(TestCaseError::fail(format!("v1 decoded as {other:?}"))),
            };
            prop_assert_eq!((src, dst), (want_src, want_dst));
            prop_assert_eq!(h.header.len(), n, "ppp read the whole header");
            // v2: binary, decoded by ppp's v2 parser.
            let n = ringlb::proxy::conn::proxy_header(ProxyProtocol::V2, client, local, &mut buf);
            let h = ppp::v2::Header::try_from(&buf[..n])
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(h.command, ppp::v2::Command::Proxy);
            prop_assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
            prop_assert_eq!(h.len(), n);
            let (src, dst) = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => (
                    SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                ),
                ppp::v2::Addresses::IPv6(a) => (
                    SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                ),
                other => return Err(TestCaseError::fail(format!("v2 decoded as {other:?}"))),
            };
            prop_assert_eq!((src, dst), (want_src, want_dst));
            Ok(())
        })
        .unwrap();
}

/// What a front balancer may send a listener that accepts PROXY headers: whole headers of
/// either version (the encoder above, checked against ppp), the same cut short, with bytes
/// flipped, or plain noise, each followed by a payload. The real binary must serve exactly
/// those whose header is whole and valid (the payload comes back from an echo backend,
/// never the header), end the others, and keep serving throughout.
#[test]
fn accepted_proxy_headers_from_the_wire() {
    let echo = TestBackend::echo();
    let port = free_port();
    let cfg = format!(
        "workers = 2\n{}{}",
        listener_config(
            "l",
            port,
            "p",
            "accept_proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\ninspect_timeout = \"300ms\""
        ),
        pool_config("p", "round_robin", &[(echo.addr, 1)], "")
    );
    let _lb = Proxy::start(&cfg, addr(port));
    #[derive(Debug, Clone)]
    enum Shape {
        Whole,
        Cut(usize),
        Flip(usize, u8),
        Noise(Vec<u8>),
    }
    let shape = prop_oneof![
        Just(Shape::Whole),
        (1usize..120).prop_map(Shape::Cut),
        (0usize..120, 1u8..=255).prop_map(|(i, x)| Shape::Flip(i, x)),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Shape::Noise),
    ];
    let served = AtomicUsize::new(0);
    runner(150)
        .run(
            &(socket_addr(), socket_addr(), any::<bool>(), shape),
            |(client, local, v2, shape)| {
                let version = if v2 {
                    ProxyProtocol::V2
                } else {
                    ProxyProtocol::V1
                };
                let mut buf = [0u8; ringlb::proxy::ring::HEADER_MAX];
                let n = ringlb::proxy::conn::proxy_header(version, client, local, &mut buf);
                let mut header = buf[..n].to_vec();
                match &shape {
                    Shape::Whole => {}
                    Shape::Cut(k) => header.truncate((*k).min(n - 1)),
                    Shape::Flip(i, x) => header[*i % n] ^= x,
                    Shape::Noise(b) => header = b.clone(),
                }
                let whole = matches!(shape, Shape::Whole);
                let mut s = TcpStream::connect(addr(port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let payload = b"payload after the header";
                let _ = s.write_all(&header);
                if whole {
                    let _ = s.write_all(payload);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                if whole {
                    prop_assert_eq!(&got[..], &payload[..], "a whole header was not served");
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A damaged header may still be a valid one (a flipped port digit): then
                    // nothing was sent after it, and nothing can come back but the rest.
                    prop_assert!(
                        got.len() <= header.len(),
                        "echoed more than was sent: {:?}",
                        got
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(served.load(Ordering::Relaxed) > 0);
    // Still serving.
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nok")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ok");
}

/// Random requests against the real admin API; two real backends give the fuzzer addresses
/// that exist.
#[test]
fn admin_api_answers_random_requests_with_2xx_or_a_4xx_reason() {
    let a = TestBackend::echo();
    let b = TestBackend::echo();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(a.addr, 1), (b.addr, 1)], "")
    );
    let mut lb = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let pools = prop::sample::select(vec![
        "p".to_string(),
        "q".into(),
        String::new(),
        "%00".into(),
        "p%2Fx".into(),
        "é".into(),
    ]);
    let addrs = prop::sample::select(vec![
        a.addr.to_string(),
        b.addr.to_string(),
        "127.0.0.1:1".into(),
        "127.0.0.1:0".into(),
        "[::1]:80".into(),
        "not-an-address".into(),
        "127.0.0.1:99999".into(),
        String::new(),
    ]);
    let tails = prop::sample::select(vec![
        "",
        "/drain",
        "/ready",
        "/weight",
        "/protection",
        "/x",
        "/drain/extra",
    ]);
    let methods = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]);
    let queries = prop::sample::select(vec![
        String::new(),
        "?drain_timeout=1s".into(),
        "?drain_timeout=0s".into(),
        "?drain_timeout=31d".into(),
        "?drain_timeout=18446744073709551615s18446744073709551615s".into(),
        "?drain_timeout=".into(),
        "?drain_timeout=1s&drain_timeout=2s".into(),
        "?x=1".into(),
        "?%ff".into(),
    ]);
    let bodies = prop::sample::select(vec![
        None,
        Some(String::new()),
        Some("{".into()),
        Some("null".into()),
        Some("[]".into()),
        Some("{\"weight\": 3}".into()),
        Some("{\"weight\": 0}".into()),
        Some("{\"weight\": 4294967296}".into()),
        Some("{\"weight\": -1}".into()),
        Some("{\"weight\": 1e400}".into()),
        Some(format!("{{\"addr\": \"{}\"}}", a.addr)),
        Some("{\"addr\": \"127.0.0.1:7\", \"weight\": 2}".into()),
        Some("{\"addr\": \"127.0.0.1:7\", \"weight\": 2, \"x\": 1}".into()),
        Some("{\"addr\": 5}".into()),
        Some("\u{0}\u{1}".into()),
    ]);
    let request = (
        methods,
        pools,
        prop::option::of(addrs),
        tails,
        queries,
        bodies,
    );
    runner(400)
        .run(&request, |(method, pool, addr, tail, query, body)| {
            let path = match &addr {
                Some(a) => format!("/pools/{pool}/backends/{a}{tail}{query}"),
                None => format!("/pools/{pool}/backends{query}"),
            };
            let (status, resp) = http(admin, method, &path, body.as_deref(), None);
            let ok = (200..300).contains(&status) || (400..500).contains(&status);
            prop_assert!(ok, "{} {} {:?}: {} {}", method, path, body, status, resp);
            if (400..500).contains(&status) && status != 405 {
                let v: serde_json::Value = serde_json::from_str(&resp).map_err(|_| {
                    TestCaseError::fail(format!("{method} {path}: not JSON: {resp}"))
                })?;
                prop_assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{}",
                    resp
                );
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        lb.wait_exit(Duration::from_millis(10)),
        None,
        "the balancer died"
    );
    assert_eq!(http(admin, "GET", "/backends", None, None).0, 200);
}
