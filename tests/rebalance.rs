//! Rebalancing long-lived connections after a scale-out (a pool's `rebalance`, and
//! `POST /pools/{pool}/rebalance`), through the real binary: reconnecting clients of real
//! `redis-server`s spread over the new backends and none of their requests fails, a busy
//! connection is never cut, and the rate holds across two workers.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A `redis-server` on `port` (no persistence), killed when the test ends.
struct Redis(std::process::Child);
impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> (Redis, SocketAddr) {
    let port = free_port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt install redis-server)");
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    (Redis(child), addr(port))
}

struct Lb {
    _proxy: Proxy,
    lb: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
}

/// ringlb with two workers, an admin API and metrics, over `backends` of pool `p`
/// (`least_conn`, checks every 100 ms so that added backends come up at once).
fn start(backends: &[SocketAddr], pool_extra: &str) -> Lb {
    let (port, admin, metrics) = (free_port(), addr(free_port()), addr(free_port()));
    let list: Vec<_> = backends.iter().map(|&a| (a, 1)).collect();
    let cfg = format!(
        "workers = 2\n[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n{}{}[pools.p.health]\ninterval = \"100ms\"\nrise = 1\n",
        listener_config("l", port, "p", ""),
        pool_config("p", "least_conn", &list, pool_extra)
    );
    let proxy = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    Lb {
        _proxy: proxy,
        lb: addr(port),
        admin,
        metrics,
    }
}

/// Adds a backend through the admin API and waits until its checks have it up.
fn scale_out(lb: &Lb, b: SocketAddr) {
    let (status, body) = http(
        lb.admin,
        "POST",
        "/pools/p/backends",
        Some(&format!("{{\"addr\": \"{b}\"}}")),
        None,
    );
    assert_eq!(status, 201, "{body}");
    wait_until(Duration::from_secs(10), || {
        backend_state(lb.admin, b).as_deref() == Some("up")
    });
}

/// Open connections per backend, as `GET /backends` reports them.
fn held(lb: &Lb, backends: &[SocketAddr]) -> Vec<i64> {
    backends
        .iter()
        .map(|&b| {
            backend_view(lb.admin, Some("p"), b).expect("a member")["active_connections"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

fn rebalanced_total(lb: &Lb) -> u64 {
    let (_, body) = http(lb.metrics, "GET", "/metrics", None, None);
    body.lines()
        .filter(|l| l.starts_with("ringlb_backend_rebalanced_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Redis clients that each hold one connection and send a request every 100 ms (`ECHO` of
/// a token naming the client and the request, so that an answer meant for another request
/// cannot pass), as a driver's connection pool with retries does: a request whose connection
/// was closed (or reset) is sent again on a new one, up to three times; only then does it
/// count as failed.
struct Clients {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(lb: SocketAddr, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads = (0..n)
            .map(|i| {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<TcpStream> = None;
                    let mut seq = 0u64;
                    while !stop.load(Relaxed) {
                        seq += 1;
                        let token = format!("client-{i}-request-{seq}");
                        let msg = format!("ECHO {token}\r\n");
                        let want = format!("${}\r\n{token}\r\n", token.len());
                        let mut ok = false;
                        for _ in 0..3 {
                            if conn.is_none() {
                                match TcpStream::connect(lb) {
                                    Ok(s) => {
                                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                                        conn = Some(s);
                                    }
                                    Err(_) => {
                                        std::thread::sleep(Duration::from_millis(50));
                                        continue;
                                    }
                                }
                            }
                            let s = conn.as_mut().unwrap();
                            let mut back = vec![0u8; want.len()];
                            if s.write_all(msg.as_bytes()).is_ok()
                                && s.read_exact(&mut back).is_ok()
                                && back == want.as_bytes()
                            {
                                ok = true;
                                break;
                            }
                            conn = None;
                        }
                        if ok {
                            done.fetch_add(1, Relaxed);
                        } else {
                            failed.fetch_add(1, Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        Clients {
            stop,
            done,
            failed,
            threads,
        }
    }

    /// Stops them; returns (requests answered, requests failed).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.done.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// Forty reconnecting Redis clients on two `redis-server`s; two more join.
/// - Without `rebalance` the new ones get nothing: every client keeps its connection.
/// - With it, within 10 s every backend holds 10 ± 3, and no request failed.
#[test]
fn a_scale_out_spreads_reconnecting_clients_only_with_rebalance() {
    for on in [false, true] {
        let (_servers, addrs): (Vec<Redis>, Vec<SocketAddr>) = (0..4).map(|_| redis()).unzip();
        let extra = if on {
            "rebalance = { tolerance = 0.2, idle_for = \"100ms\", rate = \"20/s\" }"
        } else {
            ""
        };
        let lb = start(&addrs[..2], extra);
        let clients = Clients::start(lb.lb, 40);
        wait_until(Duration::from_secs(10), || {
            held(&lb, &addrs[..2]).iter().sum::<i64>() == 40
        });
        scale_out(&lb, addrs[2]);
        scale_out(&lb, addrs[3]);
        if on {
            // Every client connected (one may be between its close and its reconnect at
            // any one look) and every backend within 10 ± 3.
            wait_until(Duration::from_secs(10), || {
                let now = held(&lb, &addrs);
                now.iter().sum::<i64>() == 40 && now.iter().all(|&n| (7..=13).contains(&n))
            });
            assert!(rebalanced_total(&lb) >= 14, "{}", rebalanced_total(&lb));
        } else {
            // As long as the run with rebalancing may take, and longer.
            std::thread::sleep(Duration::from_secs(3));
            let now = held(&lb, &addrs);
            assert_eq!(&now[2..], &[0, 0], "nothing moves on its own: {now:?}");
            assert_eq!(rebalanced_total(&lb), 0);
        }
        let (done, failed) = clients.stop();
        assert!(done >= 40 * 5, "{done} requests answered");
        assert_eq!(
            failed, 0,
            "requests that failed even after reconnecting (rebalance {on})"
        );
    }
}

/// A connection in the middle of a transfer on the hot backend is never the one closed:
/// the idle ones go, and the transfer ends with every byte, in order.
#[test]
fn a_busy_connection_is_never_cut_by_a_rebalance() {
    let (hot, cold) = (TestBackend::echo(), TestBackend::echo());
    let lb = start(&[hot.addr], "");
    // The busy one is the oldest, which a rebalance would take first were it idle.
    let busy = TcpStream::connect(lb.lb).unwrap();
    wait_until(Duration::from_secs(10), || held(&lb, &[hot.addr])[0] == 1);
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(lb.lb).unwrap())
        .collect();
    wait_until(Duration::from_secs(10), || held(&lb, &[hot.addr])[0] == 11);
    // The transfer: 4 MiB in 64 KiB pieces, a piece every 50 ms (about 3 s), echoed back.
    busy.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut w = busy.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut seed = 0x5eed_u64;
        let mut piece = vec![0u8; 64 << 10];
        for _ in 0..64 {
            fill(&mut piece, &mut seed);
            w.write_all(&piece).unwrap();
            h.update(&piece);
            std::thread::sleep(Duration::from_millis(50));
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
        h.digest()
    });
    scale_out(&lb, cold.addr);
    let (status, body) = http(lb.admin, "POST", "/pools/p/rebalance", None, None);
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["backends"].as_array().unwrap().len(), 2, "{body}");
    let mut r = busy;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
    loop {
        let n = r.read(&mut buf).expect("the transfer is not cut");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, 64 << 16, "every byte back");
    assert_eq!(h.digest(), writer.join().unwrap(), "in order");
    // The rebalance closed idle ones instead (the hot backend's share is 5 or 6 of 11).
    wait_until(Duration::from_secs(10), || rebalanced_total(&lb) >= 4);
    let closed = idle
        .into_iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!((&*s).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(closed >= 4, "{closed} idle connections closed with a FIN");
}

/// `rate` is for the pool, not per worker: with 60 idle connections to move at 5 per second
/// over two workers, the closes over any stretch stay within 5 per second (and a grant's
/// rounding: one more).
#[test]
fn the_rate_holds_across_two_workers() {
    let backends: Vec<TestBackend> = (0..3).map(|_| TestBackend::echo()).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = start(
        &addrs[..1],
        "rebalance = { tolerance = 0.0, idle_for = \"100ms\", rate = \"5/s\" }",
    );
    let _idle: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(lb.lb).unwrap())
        .collect();
    wait_until(Duration::from_secs(10), || held(&lb, &addrs[..1])[0] == 60);
    scale_out(&lb, addrs[1]);
    scale_out(&lb, addrs[2]);
    wait_until(Duration::from_secs(10), || rebalanced_total(&lb) >= 1);
    let (t0, n0) = (Instant::now(), rebalanced_total(&lb));
    wait_until(Duration::from_secs(20), || rebalanced_total(&lb) >= n0 + 10);
    std::thread::sleep(Duration::from_secs(1));
    let (secs, n) = (t0.elapsed().as_secs_f64(), rebalanced_total(&lb) - n0);
    assert!(
        n as f64 <= 5.0 * secs + 2.0,
        "{n} closes in {secs:.1} s at 5/s"
    );
    // Closing moves nobody by itself: nobody reconnects here, so the new backends hold
    // nothing, and the hot one lost connections.
    assert_eq!(held(&lb, &addrs[1..]), vec![0, 0]);
    assert!(held(&lb, &addrs[..1])[0] < 60);
}
