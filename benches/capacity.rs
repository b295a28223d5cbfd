//! Capacity of the relay buffer pool: how many connections with bytes stuck in ringlb one
//! worker's default pool (16 MiB: 64 buffers of 256 KiB with incremental consumption, 256 of
//! 64 KiB with whole buffers) serves before a recv finds the pool empty and parks
//! (`ringlb_buffer_ring_exhausted_total` > 0).
//!
//!     cargo bench --bench capacity                          # this build, buf_inc on and off
//!     cargo bench --bench capacity -- --bin /tmp/ringlb-old --label old
//!
//! Each connection's backend writes 1 KiB every 20 ms; its client never reads and has a
//! small receive buffer, so once the kernel's buffers on the client side are full, ringlb
//! holds what keeps coming (up to its backpressure mark) for every connection at once: the
//! case of many slow readers of small responses. The kernel would first grow ringlb's send
//! buffers to `tcp_wmem`'s maximum (4 MiB each here) before ringlb held anything, which
//! takes minutes at this rate; so the benchmark runs in a network namespace of its own
//! (`unshare -n`, loopback only) whose `net.ipv4.tcp_wmem` caps send buffers at 16 KiB,
//! standing in for sockets that have reached their limit. N doubles from 64 until the pool
//! parks (or 4096); each N runs in a fresh ringlb for a few seconds. Bounded in time.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend that writes 1 KiB every 20 ms to every connection it has (never blocking:
/// a full socket is skipped that round).
fn ticker(stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = Vec::new();
        let chunk = [b'x'; 1024];
        while !stop.load(Ordering::Relaxed) {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                conns.push(s);
            }
            for s in &mut conns {
                let _ = s.write(&chunk);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    a
}

fn metric(metrics: SocketAddr, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(metrics) else {
        return -1.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs N stalled connections through a fresh ringlb; whether its pool parked.
fn parks(bin: &str, env: &[(&str, &str)], n: usize) -> (bool, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let backend = ticker(stop.clone());
    let (port, mport) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("ringlb-capacity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 1\nshutdown_timeout = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:{port}\"\npool = \"p\"\nbacklog = 4096\n[pools.p]\nbackends = [{{ addr = \"{backend}\" }}]\n[pools.p.health]\ninterval = \"1d\"\n"
        ),
    )
    .unwrap();
    let mut child: Child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .envs(env.iter().copied())
        .env("RINGLB_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("start ringlb");
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        clients.push(s);
    }
    // Long enough for every client's kernel buffers to fill and ringlb to hold the rest.
    std::thread::sleep(Duration::from_secs(4));
    let parked = metric(
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "ringlb_buffer_ring_exhausted_total",
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .unwrap_or(0.0);
    drop(clients);
    stop.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    (parked > 0.0, rss / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("RINGLB_CAPACITY_NETNS").is_none() {
        // Again, in a network namespace of our own (root; loopback only in there).
        let status = Command::new("unshare")
            .arg("-n")
            .arg(&args[0])
            .args(&args[1..])
            .env("RINGLB_CAPACITY_NETNS", "1")
            .status()
            .expect("unshare (util-linux; needs root)");
        std::process::exit(status.code().unwrap_or(1));
    }
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 16384"],
    ] {
        let ok = Command::new(cmd[0])
            .args(&cmd[1..])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{cmd:?} failed");
    }
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let bin = arg("--bin").unwrap_or_else(|| env!("CARGO_BIN_EXE_ringlb").to_string());
    let label = arg("--label").unwrap_or_else(|| "this build".into());
    let max: usize = arg("--max").and_then(|v| v.parse().ok()).unwrap_or(4096);
    println!("| build | buffers | largest N without parking | first N that parked | RSS there |");
    println!("|---|---|---|---|---|");
    for (name, env) in [
        ("incremental (buf_inc)", vec![]),
        ("whole buffers", vec![("RINGLB_IO_URING_OFF", "buf_inc")]),
    ] {
        let mut good = 0;
        let mut bad = None;
        let mut rss_at = 0.0;
        let mut n = 64;
        while n <= max {
            let (parked, rss) = parks(&bin, &env, n);
            eprintln!("{label} {name}: N={n} parked={parked} rss={rss:.1} MiB");
            rss_at = rss;
            if parked {
                bad = Some(n);
                break;
            }
            good = n;
            n *= 2;
        }
        println!(
            "| {label} | {name} | {good} | {} | {rss_at:.1} MiB |",
            bad.map(|b| b.to_string())
                .unwrap_or_else(|| format!("none up to {max}"))
        );
    }
}
