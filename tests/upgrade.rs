//! Zero-downtime upgrade with the real binary: a client loop opening connections all along,
//! plus held connections, across `ringlb serve --upgrade` to a second process of the same
//! binary. Not one connection is refused or reset, the held ones finish on the old process,
//! which then exits 0, and the new one serves the admin API from the socket it inherited.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One connection through the proxy: greeting, an echo, close. The error, if any.
fn one_round(to: std::net::SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect(to).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("greeting: {e}"))?;
    if line != "b1\n" {
        return Err(format!("greeting {line:?}"));
    }
    (&s).write_all(b"ping\n")
        .map_err(|e| format!("write: {e}"))?;
    line.clear();
    r.read_line(&mut line).map_err(|e| format!("echo: {e}"))?;
    if line != "ping\n" {
        return Err(format!("echo {line:?}"));
    }
    Ok(())
}

/// The inodes of the sockets listening on `port` (from /proc/net/tcp): the same set before
/// and after the upgrade means the new process accepts on the very sockets the old one had,
/// so nothing in their backlogs can be lost, however fast or slow anyone accepts.
fn listening_sockets(port: u16) -> std::collections::BTreeSet<u64> {
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

#[test]
fn an_upgrade_refuses_and_resets_nothing() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "workers = 2\nupgrade_socket = {:?}\n[admin]\nlisten = \"{admin}\"\n{}{}",
        sock.display().to_string(),
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let mut old = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || sock.exists());
    let to = addr(port);
    let sockets = listening_sockets(port);
    assert_eq!(
        sockets.len(),
        2,
        "one SO_REUSEPORT socket per worker: {sockets:?}"
    );
    // Held connections, open across the upgrade.
    let mut held: Vec<TcpStream> = (0..3).map(|_| greet(to).0).collect();

    // The client loop: a connection every few ms, all through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match one_round(to) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(e),
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = ok.load(Ordering::Relaxed);

    let mut new = successor(&old.config_path);
    // The old process hands over, stops taking connections and waits for its held ones.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        old.wait_exit(Duration::from_millis(10)),
        None,
        "the old process left its held connections"
    );
    assert_eq!(
        listening_sockets(port),
        sockets,
        "the new process listens on other sockets"
    );
    for s in &mut held {
        s.write_all(b"held\n").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held\n");
    }
    drop(held);
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the old process did not exit 0"
    );
    assert_eq!(
        listening_sockets(port),
        sockets,
        "the old process took sockets with it"
    );
    // Clients were served while both processes held the sockets (1.5 s and more).
    let overlap = ok.load(Ordering::Relaxed);
    assert!(
        overlap > before,
        "no connection was served during the upgrade"
    );
    // The new process carries on alone, admin API included.
    wait_until(Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > overlap + 10
    });
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    let failed = failed.lock().unwrap().clone();
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        total + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let (status, body) = http(admin, "GET", "/readyz", None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(new.0.try_wait().unwrap(), None, "the new process died");
    let _ = Command::new("kill")
        .args(["-TERM", &new.0.id().to_string()])
        .status();
    assert_eq!(
        wait_for_exit(&mut new.0, Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

/// A child killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process with one worker in front of `backend`, an upgrade socket, and a fault the debug
/// build injects (`fault`: variable, value); its stderr as given. Returns it, its config
/// file, its upgrade socket and its port.
fn with_fault(
    backend: &TestBackend,
    dir: &std::path::Path,
    fault: (&str, &str),
    stderr: Stdio,
) -> (KillOnDrop, std::path::PathBuf, std::path::PathBuf, u16) {
    let sock = dir.join("upgrade.sock");
    let config = dir.join("ringlb.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "workers = 1\nupgrade_socket = {:?}\n{}{}",
            sock.display().to_string(),
            listener_config("l", port, "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        ),
    )
    .unwrap();
    let old = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RINGLB_LOG", "warn")
            .env(fault.0, fault.1)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    (old, config, sock, port)
}

/// `ringlb serve --upgrade` with `config`: the successor of the process serving it.
fn successor(config: &std::path::Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--upgrade", "--config"])
            .arg(config)
            .env("RINGLB_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn upgrades_chain_one_after_another() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let port = free_port();
    let cfg = format!(
        "workers = 1\nupgrade_socket = {:?}\n{}{}",
        sock.display().to_string(),
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let mut first = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || sock.exists());
    let sockets = listening_sockets(port);
    let config_path = first.config_path.clone();
    let upgrade = || successor(&config_path);
    let mut second = upgrade();
    assert_eq!(first.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(one_round(addr(port)).is_ok());
    // The socket file is the second process's now: the first one's exit left it in place.
    wait_until(Duration::from_secs(10), || sock.exists());
    let mut third = upgrade();
    assert_eq!(
        wait_for_exit(&mut second.0, Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    assert!(one_round(addr(port)).is_ok());
    assert_eq!(listening_sockets(port), sockets);
    assert_eq!(third.0.try_wait().unwrap(), None);
}

#[test]
fn upgrade_without_a_running_process_says_so() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "upgrade_socket = {:?}\n{}{}",
            dir.path().join("nobody.sock").display().to_string(),
            listener_config("l", free_port(), "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--upgrade", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upgrade") && err.contains("nobody.sock"),
        "{err}"
    );
}

use std::sync::Mutex;

/// A client that arrives as the old process stops, with its accept's cancel queued but not
/// yet submitted (a fault the debug build injects: the worker stalls there). The socket wakes
/// the old process's accept, its first waiter, and not the new one's; the cancel then
/// discards that wakeup. Without the stop's drain the client would wait in the queue until
/// some other client came, which here none does: it must be served all the same.
#[test]
fn a_client_arriving_as_the_old_process_stops_is_served() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let (mut old, config_path, sock, port) = with_fault(
        &backend,
        dir.path(),
        ("RINGLB_FAULT_STOP_STALL_MS", "1500"),
        Stdio::piped(),
    );
    let lines = stderr_lines(&mut old.0, "old");
    wait_until(Duration::from_secs(10), || sock.exists());
    assert_eq!(one_round(addr(port)), Ok(()));
    let _new = successor(&config_path);
    wait_for_line(
        &lines,
        "injected fault: the stop stalls",
        Duration::from_secs(15),
    );
    // Inside the stall (1.5 s), with the new process surely accepting by now.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        one_round(addr(port)),
        Ok(()),
        "the client that came as the old process stopped was not served"
    );
    assert_eq!(
        wait_for_exit(&mut old.0, Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(
        one_round(addr(port)),
        Ok(()),
        "the new process does not serve"
    );
}

/// A successor that cannot take over (its config moves the listener: the inherited socket
/// is bound elsewhere) exits 1 and says why; the old process never stops serving, takes
/// admin changes again, and a later upgrade with a good config goes through.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let (port, other, admin) = (free_port(), free_port(), addr(free_port()));
    let cfg = |port: u16| {
        format!(
            "workers = 1\nupgrade_socket = {:?}\n[admin]\nlisten = \"{admin}\"\ninsecure_no_token = true\n{}{}",
            sock.display().to_string(),
            listener_config("l", port, "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        )
    };
    let mut old = Proxy::start(&cfg(port), addr(port));
    wait_until(Duration::from_secs(10), || sock.exists());
    let moved = dir.path().join("moved.toml");
    std::fs::write(&moved, cfg(other)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--upgrade", "--config"])
        .arg(&moved)
        .env("RINGLB_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("an upgrade keeps the listeners' addresses"),
        "{err}"
    );
    // Still serving, taking admin changes again (refused while it handed over), still
    // offering its sockets.
    assert_eq!(one_round(addr(port)), Ok(()));
    assert_eq!(old.wait_exit(Duration::from_millis(300)), None);
    let (status, body) = http(
        admin,
        "POST",
        "/pools/p/backends",
        Some("{\"addr\": \"127.0.0.2:9\"}"),
        None,
    );
    assert_eq!(status, 201, "{body}");
    let mut next = successor(&old.config_path);
    assert_eq!(old.wait_exit(Duration::from_secs(15)), Some(0));
    assert_eq!(one_round(addr(port)), Ok(()));
    assert_eq!(next.0.try_wait().unwrap(), None, "the successor died");
}

/// From 2 workers to 1: the one worker of the successor accepts on both inherited sockets
/// (the kernel spreads clients over them by hash, so a socket left without an accept would
/// leave about half the clients waiting), and a socket count of 2 stays.
#[test]
fn an_upgrade_to_fewer_workers_serves_every_inherited_socket() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let port = free_port();
    let cfg = |workers: usize| {
        format!(
            "workers = {workers}\nupgrade_socket = {:?}\n{}{}",
            sock.display().to_string(),
            listener_config("l", port, "p", ""),
            pool_config("p", "round_robin", &[(backend.addr, 1)], "")
        )
    };
    let mut old = Proxy::start(&cfg(2), addr(port));
    wait_until(Duration::from_secs(10), || sock.exists());
    let sockets = listening_sockets(port);
    assert_eq!(sockets.len(), 2);
    let fewer = dir.path().join("fewer.toml");
    std::fs::write(&fewer, cfg(1)).unwrap();
    let mut new = successor(&fewer);
    assert_eq!(old.wait_exit(Duration::from_secs(15)), Some(0));
    assert_eq!(listening_sockets(port), sockets);
    for i in 0..50 {
        assert_eq!(one_round(addr(port)), Ok(()), "connection {i}");
    }
    assert_eq!(new.0.try_wait().unwrap(), None, "the successor died");
}

/// The old process dies after it sent its sockets and before the successor says `ready`
/// (a fault the debug build injects; an OOM kill in life): the successor already accepts
/// on those sockets, so it serves on instead of exiting and leaving no one.
#[test]
fn a_successor_whose_predecessor_dies_mid_handover_serves_on() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let (mut old, config, sock, port) = with_fault(
        &backend,
        dir.path(),
        ("RINGLB_FAULT_UPGRADE_DIE_AFTER_SEND", "1"),
        Stdio::inherit(),
    );
    wait_until(Duration::from_secs(10), || sock.exists());
    assert_eq!(one_round(addr(port)), Ok(()));
    let mut new = successor(&config);
    assert_eq!(
        wait_for_exit(&mut old.0, Duration::from_secs(10)).and_then(|s| s.code()),
        Some(9),
        "the fault did not fire"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(new.0.try_wait().unwrap(), None, "the successor exited");
    for i in 0..10 {
        assert_eq!(one_round(addr(port)), Ok(()), "connection {i}");
    }
}

/// One admin request; None when it got no answer (a connection the old process closed).
fn try_http(to: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut s = TcpStream::connect(to).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

/// Admin changes all through an upgrade, with a state file: every change the API
/// acknowledged is in the successor's state, whichever process acknowledged it. (The
/// successor reads the state file as it starts, while the old process still answers; a
/// change the old one made after that read would be lost with it.)
#[test]
fn admin_changes_acknowledged_during_an_upgrade_are_never_lost() {
    let backend = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "workers = 1\nstate_file = {:?}\n[admin]\nlisten = \"{admin}\"\ninsecure_no_token = true\n{}{}",
        dir.path().join("state.json").display().to_string(),
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend.addr, 1)], "")
    );
    let old = Proxy::start(&cfg, addr(port));
    let sock = dir.path().join("ringlb-upgrade.sock");
    wait_until(Duration::from_secs(10), || sock.exists());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let adder = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) && i < 4000 {
                let a = format!("127.0.0.2:{}", 20000 + i);
                match try_http(
                    admin,
                    "POST",
                    "/pools/p/backends",
                    &format!("{{\"addr\": \"{a}\"}}"),
                ) {
                    Some(201) => acked.lock().unwrap().push(a),
                    Some(503) | None => {}
                    Some(other) => panic!("adding {a}: {other}"),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut old = old;
    let mut new = successor(&old.config_path);
    assert_eq!(old.wait_exit(Duration::from_secs(15)), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    adder.join().unwrap();
    let (status, body) = http(admin, "GET", "/backends", None, None);
    assert_eq!(status, 200, "{body}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "{} changes", acked.len());
    let lost: Vec<&String> = acked
        .iter()
        .filter(|a| !body.contains(a.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged changes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(new.0.try_wait().unwrap(), None);
}
