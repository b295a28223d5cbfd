//! Distribution through the real binary: round robin by weight, least connections with
//! connections held open, and hash stickiness by client address. Two workers throughout, so
//! the counts shared between workers are what is tested.

mod common;
use common::*;
use std::collections::HashMap;

fn proxy_for(
    algorithm: &str,
    backends: &[&TestBackend],
    weights: &[u32],
    extra_pool: &str,
) -> (Proxy, std::net::SocketAddr) {
    let port = free_port();
    let list: Vec<_> = backends
        .iter()
        .zip(weights)
        .map(|(b, &w)| (b.addr, w))
        .collect();
    let cfg = format!(
        "workers = 2\n{}{}",
        listener_config("web", port, "web", ""),
        pool_config("web", algorithm, &list, extra_pool)
    );
    let p = Proxy::start(&cfg, addr(port));
    // The readiness probe's own connection reached a backend: let it end everywhere.
    for b in backends {
        wait_until(std::time::Duration::from_secs(10), || {
            b.open.load(std::sync::atomic::Ordering::Relaxed) == 0
        });
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    (p, addr(port))
}

#[test]
fn round_robin_is_exact_by_weight() {
    let b: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let (_p, lb) = proxy_for("round_robin", &[&b[0], &b[1], &b[2]], &[1, 1, 2], "");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let (_s, name) = greet(lb);
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (100, 100, 200),
        "{counts:?}"
    );
}

#[test]
fn least_conn_sends_each_connection_to_the_least_loaded() {
    let b: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let weights = [1.0, 1.0, 2.0];
    let (_p, lb) = proxy_for("least_conn", &[&b[0], &b[1], &b[2]], &[1, 1, 2], "");
    let mut held: Vec<(std::net::TcpStream, usize)> = Vec::new();
    let mut open = [0usize; 3];
    let connect_and_check = |held: &mut Vec<_>, open: &mut [usize; 3], n: usize| {
        let (s, name) = greet(lb);
        let i = ["a", "b", "c"].iter().position(|x| *x == name).unwrap();
        let load = |j: usize| open[j] as f64 / weights[j];
        let min = (0..3).map(load).fold(f64::MAX, f64::min);
        assert_eq!(
            load(i),
            min,
            "connection {n} went to {name} with loads {open:?}"
        );
        open[i] += 1;
        held.push((s, i));
    };
    for n in 0..60 {
        connect_and_check(&mut held, &mut open, n);
    }
    assert_eq!(open, [15, 15, 30]);
    // Close every connection of "c": the next 30 must all go to it, as it catches up.
    held.retain(|(_, i)| *i != 2);
    open[2] = 0;
    wait_until(std::time::Duration::from_secs(10), || {
        b[2].open.load(std::sync::atomic::Ordering::Relaxed) == 0
    });
    // The backend's thread ends a moment before the proxy releases the connection.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for n in 60..90 {
        connect_and_check(&mut held, &mut open, n);
    }
    assert_eq!(open, [15, 15, 30]);
}

#[test]
fn ring_hash_keeps_a_client_on_one_backend() {
    let b: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let (_p, lb) = proxy_for(
        "ring_hash",
        &[&b[0], &b[1], &b[2]],
        &[1, 1, 2],
        "hash_key = \"client_ip\"\n",
    );
    sticky_by_source(lb);
}

#[test]
fn maglev_keeps_a_client_on_one_backend() {
    let b: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let (_p, lb) = proxy_for("maglev", &[&b[0], &b[1], &b[2]], &[1, 1, 2], "");
    sticky_by_source(lb);
}

fn sticky_by_source(lb: std::net::SocketAddr) {
    let mut seen = HashMap::new();
    for ip in 2..42u8 {
        let src = std::net::Ipv4Addr::new(127, 0, 1, ip);
        for _ in 0..5 {
            let s = connect_from(src, lb);
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
            let prev = seen.entry(ip).or_insert_with(|| line.clone());
            assert_eq!(*prev, line, "client {src} moved between backends");
        }
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "40 clients should reach all three backends: {seen:?}"
    );
}
