//! Relaying through the real binary: integrity, half-close, many connections, retries,
//! timeouts, limits and graceful stop.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use xxhash_rust::xxh3::Xxh3;

fn single_pool(backends: &[SocketAddr], listener_extra: &str, top: &str) -> (Proxy, SocketAddr) {
    let port = free_port();
    let list: Vec<_> = backends.iter().map(|&a| (a, 1)).collect();
    let cfg = format!(
        "{top}\n{}{}",
        listener_config("l", port, "p", listener_extra),
        pool_config("p", "round_robin", &list, "")
    );
    (Proxy::start(&cfg, addr(port)), addr(port))
}

#[test]
fn sixty_four_mib_each_way_arrive_intact() {
    let echo = TestBackend::echo();
    let (_p, lb) = single_pool(&[echo.addr], "", "workers = 2");
    // An odd chunk size: chunk edges never line up with the proxy's buffers.
    echo_intact(
        lb,
        64 << 20,
        100_003,
        0x1234_5678_9abc_def0,
        "one connection",
    );
}

/// Sends `total` pseudo-random bytes (in `chunk`-sized writes) through an echo path while
/// reading them back, then half-closes; asserts every byte came back, in order.
fn echo_intact(lb: SocketAddr, total: usize, chunk: usize, seed: u64, what: &str) {
    let s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = Xxh3::new();
        let mut seed = seed;
        let mut buf = vec![0u8; chunk];
        let mut sent = 0;
        while sent < total {
            let n = buf.len().min(total - sent);
            fill(&mut buf[..n], &mut seed);
            w.write_all(&buf[..n]).unwrap();
            h.update(&buf[..n]);
            sent += n;
        }
        w.shutdown(Shutdown::Write).unwrap();
        h.digest()
    });
    let mut r = s;
    let mut h = Xxh3::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    let sent_hash = writer.join().unwrap();
    assert_eq!(got, total, "{what}: bytes back");
    assert_eq!(
        h.digest(),
        sent_hash,
        "{what}: checksum of the echoed stream"
    );
}

/// The congestion control `ss -ti` reports for the established sockets matching `filter`.
fn congestion_of(filter: &str) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", filter])
        .output()
        .expect("ss (iproute2) is needed: apt-get install iproute2");
    let known = ["reno", "cubic", "bbr", "dctcp", "vegas", "htcp", "westwood"];
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| known.contains(w))
        .map(String::from)
        .collect()
}

#[test]
fn tcp_congestion_is_set_on_both_sides() {
    // Whichever of reno/cubic is not the system default, so the setting is visible.
    let default =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    let cc = if default.trim() == "reno" {
        "cubic"
    } else {
        "reno"
    };
    let echo = TestBackend::echo();
    let port = free_port();
    let cfg = format!(
        "workers = 1\n{}{}",
        listener_config("l", port, "p", &format!("tcp_congestion = \"{cc}\"")),
        pool_config(
            "p",
            "round_robin",
            &[(echo.addr, 1)],
            &format!("tcp_congestion = \"{cc}\"")
        )
    );
    let _p = Proxy::start(&cfg, addr(port));
    let mut s = TcpStream::connect(addr(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    // ringlb's accepted socket (source port = the listener's) and its backend socket
    // (destination port = the backend's); the test's own sockets keep the default.
    let client_side = congestion_of(&format!("( sport = :{port} )"));
    let backend_side = congestion_of(&format!("( dport = :{} )", echo.addr.port()));
    assert_eq!(client_side, vec![cc.to_string()], "client side");
    assert_eq!(backend_side, vec![cc.to_string()], "backend side");
    let own = congestion_of(&format!("( dport = :{port} )"));
    assert_eq!(
        own,
        vec![default.trim().to_string()],
        "the test's socket keeps the default"
    );
}

/// A backend that reads each connection to EOF, waits `delay`, answers with what it counted
/// ("got N bytes"), then closes. It serves every connection: the pool's health checks
/// connect too, and a backend that stopped after two (as one here once did) refused the
/// test's own connection whenever two checks came first (a slow debug run under CI load).
fn counting_backend(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).is_ok() {
                    std::thread::sleep(delay);
                    let _ = s.write_all(format!("got {} bytes", all.len()).as_bytes());
                }
            });
        }
    });
    backend
}

#[test]
fn half_close_lets_the_reply_through() {
    let backend = counting_backend(Duration::ZERO);
    let (_p, lb) = single_pool(&[backend], "", "");
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[7u8; 300_000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 300000 bytes");
}

#[test]
fn two_thousand_concurrent_connections_echo() {
    ringlb::sys::raise_nofile_limit();
    let echo = TestBackend::echo();
    let (_p, lb) = single_pool(&[echo.addr], "", "workers = 2");
    let n = 2000;
    let mut conns: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(lb).unwrap()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("hello {i:05}\n").as_bytes()).unwrap();
    }
    wait_until(Duration::from_secs(20), || {
        echo.open.load(std::sync::atomic::Ordering::Relaxed) >= n
    });
    for (i, s) in conns.iter_mut().enumerate() {
        let mut line = String::new();
        BufReader::new(&*s).read_line(&mut line).unwrap();
        assert_eq!(line, format!("hello {i:05}\n"));
    }
}

#[test]
fn a_refusing_backend_is_retried_elsewhere() {
    let good = TestBackend::start("good");
    let (_p, lb) = single_pool(&[refusing_addr(), good.addr], "retries = 1", "workers = 2");
    for i in 0..200 {
        let (_s, name) = greet(lb);
        assert_eq!(name, "good", "connection {i}");
    }
}

#[test]
fn a_silent_backend_times_out_and_is_retried() {
    // A listener whose accept queue is full and never drained drops further SYNs: a
    // connect to it hangs until the proxy's connect_timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let silent_addr: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill its accept queue so further SYNs are dropped.
    let _fill: Vec<_> = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&silent_addr, Duration::from_millis(200)).ok())
        .collect();
    assert!(
        TcpStream::connect_timeout(&silent_addr, Duration::from_millis(300)).is_err(),
        "the silent backend still completes handshakes"
    );
    let good = TestBackend::start("good");
    let (_p, lb) = single_pool(
        &[silent_addr, good.addr],
        "retries = 1\nconnect_timeout = \"200ms\"",
        "",
    );
    for i in 0..6 {
        let (_s, name) = greet(lb);
        assert_eq!(name, "good", "connection {i}");
    }
}

#[test]
fn no_backend_left_closes_the_client() {
    let (_p, lb) = {
        let port = free_port();
        let cfg = format!(
            "{}{}",
            listener_config("l", port, "p", "retries = 1"),
            pool_config(
                "p",
                "round_robin",
                &[(refusing_addr(), 1), (refusing_addr(), 1)],
                ""
            )
        );
        let p = Proxy::start(&cfg, addr(port));
        (p, addr(port))
    };
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    // Closed with nothing sent: EOF or a reset, never a hang.
    match s.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let echo = TestBackend::echo();
    let (_p, lb) = single_pool(&[echo.addr], "idle_timeout = \"300ms\"", "");
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    // Then silence: the proxy closes it (EOF), well before the read timeout.
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
}

#[test]
fn max_connections_holds_the_next_client_until_a_slot_frees() {
    let b = TestBackend::start("b");
    let (_p, lb) = single_pool(&[b.addr], "max_connections = 2", "workers = 1");
    wait_until(Duration::from_secs(10), || {
        b.open.load(std::sync::atomic::Ordering::Relaxed) == 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let (first, _) = greet(lb);
    let (_second, _) = greet(lb);
    // The third is accepted by the kernel's backlog, or accepted and closed; either way it
    // gets no greeting while two are open.
    let third = TcpStream::connect(lb).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut line = String::new();
    let r = BufReader::new(&third).read_line(&mut line);
    assert!(
        line.is_empty(),
        "a third connection was served: {r:?} {line:?}"
    );
    drop(first);
    drop(third);
    // A slot frees up: new clients are served again.
    let mut served = false;
    for _ in 0..50 {
        let s = TcpStream::connect(lb).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut line = String::new();
        if BufReader::new(&s).read_line(&mut line).is_ok() && line == "b\n" {
            served = true;
            break;
        }
    }
    assert!(served, "no client was served after a slot freed");
}

#[test]
fn proxy_protocol_v1_header_reaches_the_backend() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (_p, lb) = single_pool(&[backend], "proxy_protocol = \"v1\"", "");
    // Health checks connect too (one at the start, one every 2 s): read connections until
    // ours (bounded), however many checks come first.
    let handle = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for s in l.incoming().take(10) {
            let s = s.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut rest = String::new();
            let _ = r.read_line(&mut rest);
            let ours = line.contains("127.0.0.9");
            lines.push((line, rest));
            if ours {
                break;
            }
        }
        lines
    });
    let c = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 9), lb);
    let local_port = c.local_addr().unwrap().port();
    (&c).write_all(b"payload\n").unwrap();
    let lines = handle.join().unwrap();
    let (header, rest) = lines
        .iter()
        .find(|(h, _)| h.contains("127.0.0.9"))
        .expect("our connection's header");
    assert_eq!(
        header,
        &format!(
            "PROXY TCP4 127.0.0.9 127.0.0.1 {local_port} {}\r\n",
            lb.port()
        )
    );
    assert_eq!(rest, "payload\n");
}

#[test]
fn sigterm_lets_an_open_connection_finish_then_exits_zero() {
    let echo = TestBackend::echo();
    let (mut p, lb) = single_pool(&[echo.addr], "", "shutdown_timeout = \"20s\"");
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    p.signal("TERM");
    // New connections are refused once the listeners close...
    wait_until(Duration::from_secs(10), || TcpStream::connect(lb).is_err());
    // ...while the open one still relays both ways.
    assert_eq!(
        p.wait_exit(Duration::from_millis(300)),
        None,
        "exited with a connection open"
    );
    s.write_all(b"after!").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    drop(s);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sigterm_with_nothing_open_exits_at_once() {
    let echo = TestBackend::echo();
    let (mut p, _lb) = single_pool(&[echo.addr], "", "shutdown_timeout = \"30s\"");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_then_recovers() {
    let echo = TestBackend::echo();
    let port = free_port();
    let cfg = format!(
        "workers = 1\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(echo.addr, 1)], "")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    // 48 descriptors in all: a few for the process itself, then two per connection.
    let child = std::process::Command::new("prlimit")
        .args(["--nofile=48:48", BIN, "serve", "--config"])
        .arg(&path)
        .env("RINGLB_LOG", "error")
        .spawn()
        .unwrap();
    let mut p = Proxy {
        child,
        dir,
        config_path: path,
    };
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    // Far more clients than descriptors: the kernel completes their handshakes (backlog),
    // the proxy serves what it can and pauses accepting for the rest.
    let mut conns: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(addr(port)).unwrap())
        .collect();
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let _ = s.write_all(b"x");
    }
    let served = conns
        .iter()
        .filter(|s| (&**s).read(&mut [0u8; 1]).map(|n| n == 1).unwrap_or(false))
        .count();
    eprintln!("served {served} of 60");
    // How many get served depends on how the kernel's accept burst races the backend
    // sockets; never all of them.
    assert!(served < 60, "served {served} of 60 with 48 descriptors");
    // While it is out of descriptors it must not spin: measure its CPU over a second.
    let before = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(p.pid()) - before;
    assert!(
        used < 30,
        "used {used} ticks of CPU in one second while out of descriptors"
    );
    // Free the descriptors: the waiting clients are served, and new ones too.
    conns.truncate(0);
    wait_until(Duration::from_secs(10), || {
        let mut s = TcpStream::connect(addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.write_all(b"y").is_ok() && s.read(&mut [0u8; 1]).map(|n| n == 1).unwrap_or(false)
    });
    assert_eq!(
        p.wait_exit(Duration::from_millis(10)),
        None,
        "the proxy died"
    );
}

#[test]
fn a_tiny_buffer_pool_parks_and_resumes_without_losing_bytes() {
    // 4 buffers of 4 KiB for 32 busy connections: recvs end with ENOBUFS all the time and
    // must park, resume, and keep every byte in order.
    let echo = TestBackend::echo();
    let (_p, lb) = single_pool(
        &[echo.addr],
        "",
        "workers = 1\nbuffer_size = 4096\nbuffer_count = 4",
    );
    echo_intact_concurrently(lb, 32, 1 << 20, 7919);
}

/// `n` connections at once, each through [`echo_intact`] with its own seed.
fn echo_intact_concurrently(lb: SocketAddr, n: u64, total: usize, chunk: usize) {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                echo_intact(lb, total, chunk, i + 1, &format!("connection {i}"))
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn busy_polling_relays_intact_and_an_idle_worker_still_sleeps() {
    let echo = TestBackend::echo();
    let (p, lb) = single_pool(&[echo.addr], "", "workers = 1\nbusy_poll = \"1ms\"");
    echo_intact_concurrently(lb, 8, 4 << 20, 4099);
    // The spin is bounded: with no traffic the worker sleeps between its 100 ms ticks
    // (each tick buys at most 1 ms of spinning), where an unbounded spin would burn the
    // whole second.
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(p.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(p.pid()) - before;
    assert!(used < 20, "used {used} ticks of CPU in an idle second");
}

#[test]
fn clients_that_stop_reading_do_not_starve_the_others() {
    // A backend that floods every connection; its clients never read. Backpressure bounds
    // what each stalled direction holds (about 3 buffers), so a small pool (64 of 4 KiB)
    // still serves the others. (With backpressure disabled, the release build starved the
    // echo here; the debug build did not, so this guards the release behaviour loosely.)
    let flood = listen_any(64);
    let flood_addr = flood.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in flood.incoming().flatten() {
            std::thread::spawn(move || {
                let chunk = vec![7u8; 64 * 1024];
                while (&s).write_all(&chunk).is_ok() {}
            });
        }
    });
    let echo = TestBackend::echo();
    let (flood_port, echo_port) = (free_port(), free_port());
    let cfg = format!(
        "workers = 1\nbuffer_size = 4096\nbuffer_count = 64\n{}{}{}{}",
        listener_config("flood", flood_port, "flood", ""),
        listener_config("echo", echo_port, "echo", ""),
        pool_config("flood", "round_robin", &[(flood_addr, 1)], ""),
        pool_config("echo", "round_robin", &[(echo.addr, 1)], "")
    );
    let _p = Proxy::start(&cfg, addr(echo_port));
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr(flood_port)).unwrap())
        .collect();
    // Let the floods fill every socket buffer on the way and stall.
    std::thread::sleep(Duration::from_secs(2));
    let mut s = TcpStream::connect(addr(echo_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..100 {
        let msg = format!("ping {i:03}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = [0u8; 8];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round trip {i} starved: {e}"));
        assert_eq!(&back, msg.as_bytes());
    }
    drop(stalled);
}

/// The io_uring features the test run leaves on: all of them, but those named in
/// `RINGLB_IO_URING_OFF` (CI runs the suite again with some forced off).
fn feature_on(name: &str) -> bool {
    let off = std::env::var("RINGLB_IO_URING_OFF").unwrap_or_default();
    !off.split(',').any(|f| f.trim() == name)
}

/// The sockets in the registered file tables of `pid`'s rings, as (index, socket inode),
/// read from each ring's fdinfo. The kernel prints the table only when it gets the ring's
/// lock at once, so a busy ring is asked again (bounded).
fn fixed_sockets(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:[io_uring]" {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        for _ in 0..100 {
            let Ok(info) = std::fs::read_to_string(&info_path) else {
                break;
            };
            if !info.contains("UserFiles:") {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // "UserFiles:\t<n>" then one "<index>: <path>" line per file in the table.
            let mut in_files = false;
            for l in info.lines() {
                if l.starts_with("UserFiles:") {
                    in_files = true;
                    continue;
                }
                if in_files {
                    let Some((i, path)) = l.trim().split_once(": ") else {
                        break;
                    };
                    let Ok(i) = i.parse::<u32>() else { break };
                    out.push((i, path.trim().to_string()));
                }
            }
            break;
        }
    }
    out
}

/// Direct descriptors: once a connection has relayed for a tick, its two sockets sit in the
/// worker ring's file table at the index of their descriptor number (the mirror the ring's
/// requests use), and once it closes the table lets go of both, so no socket outlives its
/// connection there. With `RINGLB_IO_URING_OFF=fixed_files` the table stays empty, and the
/// metric says which.
#[test]
fn open_sockets_are_mirrored_in_the_ring_file_table_and_released_at_close() {
    let echo = TestBackend::echo();
    let metrics = addr(free_port());
    let (p, lb) = single_pool(
        &[echo.addr],
        "",
        &format!("workers = 2\n[metrics]\nlisten = \"{metrics}\""),
    );
    let on = feature_on("fixed_files");
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(lb).unwrap()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = format!("hello {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // Each worker reports its ring as it starts, before it accepts: once one relayed, the
    // gauge has its value (both workers' rings agree).
    let want_line = format!(
        "ringlb_io_uring_features{{feature=\"fixed_files\"}} {}",
        on as u8
    );
    let body = http(metrics, "GET", "/metrics", None, None).1;
    assert!(
        body.contains(&want_line),
        "fixed_files is {on} in this run:\n{body}"
    );
    let pid = p.pid();
    let want = if on { 6 } else { 0 };
    let mut table = Vec::new();
    wait_until(Duration::from_secs(10), || {
        table = fixed_sockets(pid);
        table.len() == want
    });
    assert_eq!(
        table.len(),
        want,
        "3 connections, 2 sockets each: {table:?}"
    );
    for (i, path) in &table {
        assert!(path.starts_with("socket:"), "{path}");
        let fd = std::fs::read_link(format!("/proc/{pid}/fd/{i}")).unwrap();
        assert_eq!(
            fd.to_string_lossy(),
            *path,
            "index {i} mirrors descriptor {i}"
        );
    }
    drop(clients);
    wait_until(Duration::from_secs(10), || fixed_sockets(pid).is_empty());
    assert_eq!(
        fixed_sockets(pid),
        vec![],
        "closed connections leave the table"
    );
}

/// Half-closes of connections whose sockets moved to the ring's file table mid-stream:
/// forty clients write 300 KB in pieces across several worker ticks (so the worker mirrors
/// their sockets while bytes flow), then shut their write side; the backend answers 300 ms
/// after the EOF. Every client gets its whole answer, then the EOF: the FIN goes through
/// shutdown(2) on the descriptor, which the mirror leaves in place.
#[test]
fn half_close_after_the_sockets_moved_to_the_fixed_file_table() {
    let backend = counting_backend(Duration::from_millis(300));
    let (_p, lb) = single_pool(&[backend], "", "workers = 2");
    let clients: Vec<_> = (0..40u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(lb).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                for _ in 0..5 {
                    s.write_all(&[7u8; 60_000]).unwrap();
                    std::thread::sleep(Duration::from_millis(60 + i));
                }
                s.shutdown(Shutdown::Write).unwrap();
                let mut reply = String::new();
                s.read_to_string(&mut reply).unwrap();
                assert_eq!(reply, "got 300000 bytes", "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}
