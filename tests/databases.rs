//! In front of databases, through the real binary and real servers: a real `redis-server`
//! primary and replica swapping roles behind a `redis` check with `role = "master"` and
//! `on_backend_down = "close"`; a real PostgreSQL (initdb in a temporary directory) behind
//! the `postgres` check, with `pgbench` running through; `send_expect` and `mysql` checks
//! against scripted peers; backup servers.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends, whatever happens.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16, password: &str) -> Server {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            password,
            "--masterauth",
            password,
            "--protected-mode",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt install redis-server)");
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    Server(child)
}

/// `redis-cli` against `port`: its output, trimmed.
fn redis_cli(port: u16, password: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
            "-a",
            password,
        ])
        .args(args)
        .output()
        .expect("redis-cli (apt install redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Backend `b` of `pool` as `GET /backends` shows it.
fn backend(admin: SocketAddr, pool: &str, b: SocketAddr) -> serde_json::Value {
    backend_view(admin, Some(pool), b).unwrap_or_else(|| panic!("{b} is not in pool {pool}"))
}

fn state(admin: SocketAddr, pool: &str, b: SocketAddr) -> String {
    backend(admin, pool, b)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_state(admin: SocketAddr, pool: &str, b: SocketAddr, want: &str) {
    let t = Instant::now();
    while state(admin, pool, b) != want {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{b} never became {want}: {}",
            backend(admin, pool, b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last health check's error of a backend, as `/stats` shows it.
fn last_check_error(admin: SocketAddr, b: SocketAddr) -> String {
    let (_, body) = http(admin, "GET", "/stats", None, None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["backends"].as_array().unwrap().clone())
        .find(|x| x["addr"] == b.to_string())
        .map(|x| x["last_check"]["error"].to_string())
        .unwrap_or_default()
}

struct Lb {
    _proxy: Proxy,
    port: u16,
    admin: SocketAddr,
}

fn start(listeners: &str, pools: &str) -> Lb {
    let admin = addr(free_port());
    let port = free_port();
    let cfg = format!(
        "workers = 2\n[admin]\nlisten = \"{admin}\"\n{}{listeners}{pools}",
        listener_config("l", port, "p", "")
    );
    let proxy = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    Lb {
        _proxy: proxy,
        port,
        admin,
    }
}

#[test]
fn redis_pool_follows_the_primary_through_a_role_swap() {
    let password = "s3cret pass";
    let (p1, p2) = (free_port(), free_port());
    let _a = redis(p1, password);
    let _b = redis(p2, password);
    assert_eq!(
        redis_cli(p2, password, &["REPLICAOF", "127.0.0.1", &p1.to_string()]),
        "OK"
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis.pass");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let lb = start(
        "",
        &format!(
            "{}on_backend_down = \"close\"\n[pools.p.health]\nkind = \"redis\"\nrole = \"master\"\npassword_file = \"{}\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n",
            pool_config("p", "round_robin", &[(addr(p1), 1), (addr(p2), 1)], ""),
            pw.display()
        ),
    );
    wait_state(lb.admin, "p", addr(p2), "down");
    wait_state(lb.admin, "p", addr(p1), "up");
    assert!(
        last_check_error(lb.admin, addr(p2)).contains("role:slave, expected role:master"),
        "{}",
        last_check_error(lb.admin, addr(p2))
    );
    // A real client writes through ringlb: every connection lands on the primary.
    for i in 0..10 {
        assert_eq!(
            redis_cli(lb.port, password, &["SET", "k", &format!("before{i}")]),
            "OK"
        );
    }
    // A session held open on the primary (AUTH, PING).
    let mut held = TcpStream::connect(addr(lb.port)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n",
        password.len()
    );
    held.write_all(auth.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"+PONG\r\n") {
        let n = held.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the held session ended early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let before = backend(lb.admin, "p", addr(p1))["connections_total"]
        .as_u64()
        .unwrap();

    // The swap, as an operator (or Sentinel) does it.
    assert_eq!(redis_cli(p2, password, &["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(
        redis_cli(p1, password, &["REPLICAOF", "127.0.0.1", &p2.to_string()]),
        "OK"
    );
    let swapped = Instant::now();
    wait_state(lb.admin, "p", addr(p1), "down");
    wait_state(lb.admin, "p", addr(p2), "up");
    eprintln!(
        "swap seen in {:?} (rise/fall 2 x 200 ms)",
        swapped.elapsed()
    );

    // The old primary's session is closed both ways (EOF or a reset) within a worker tick
    // of the state change; nothing is pending on it, so the read waits for exactly that.
    match held.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("the old primary's session is still open: {other:?}"),
    }
    // Counted once: a few ticks later it still reads 1 (the held session was the old
    // primary's only connection).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backend(lb.admin, "p", addr(p1))["closed_on_down_total"], 1);

    // New connections go only to the new primary, and writes work there.
    for i in 0..10 {
        assert_eq!(
            redis_cli(lb.port, password, &["SET", "k", &format!("after{i}")]),
            "OK"
        );
    }
    assert_eq!(redis_cli(p2, password, &["GET", "k"]), "after9");
    assert_eq!(
        backend(lb.admin, "p", addr(p1))["connections_total"]
            .as_u64()
            .unwrap(),
        before,
        "no new connection went to the demoted primary"
    );
    // redis-benchmark through ringlb, on the new primary.
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &lb.port.to_string(),
            "-a",
            password,
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "8",
            "-q",
        ])
        .output()
        .expect("redis-benchmark");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SET") && text.contains("GET"), "{text}");
}

#[test]
fn redis_check_refuses_a_wrong_password_and_an_impostor() {
    let port = free_port();
    let _r = redis(port, "right");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pass");
    std::fs::write(&pw, "wrong").unwrap();
    let impostor = TestBackend::start("impostor");
    let lb = start(
        "",
        &format!(
            "{}[pools.p.health]\nkind = \"redis\"\npassword_file = \"{}\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
            pool_config(
                "p",
                "round_robin",
                &[(addr(port), 1), (impostor.addr, 1)],
                ""
            ),
            pw.display()
        ),
    );
    wait_state(lb.admin, "p", addr(port), "down");
    wait_state(lb.admin, "p", impostor.addr, "down");
    let e = last_check_error(lb.admin, addr(port));
    assert!(e.contains("AUTH refused") && !e.contains("wrong"), "{e}");
    let e = last_check_error(lb.admin, impostor.addr);
    assert!(e.contains("not a Redis reply"), "{e}");
    // The password file is read at each check: fixing it brings the backend up.
    std::fs::write(&pw, "right\n").unwrap();
    wait_state(lb.admin, "p", addr(port), "up");
}

/// The PostgreSQL binaries (Debian's, or whatever is on PATH).
fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.reverse();
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

/// A real PostgreSQL on `port`, in a temporary directory, run as the `postgres` user
/// (PostgreSQL refuses to run as root).
struct Postgres {
    _server: Server,
    _dir: tempfile::TempDir,
}

fn postgres(port: u16) -> Postgres {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let as_postgres = |cmd: &std::path::Path| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    };
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .unwrap();
    let ok = as_postgres(&pg_bin("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("initdb (apt install postgresql)");
    assert!(ok.success(), "initdb failed");
    let child = as_postgres(&pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-k",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    wait_until(Duration::from_secs(30), || {
        Command::new(pg_bin("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    Postgres {
        _server: server,
        _dir: dir,
    }
}

#[test]
fn postgres_check_passes_postgresql_and_fails_an_impostor_and_pgbench_runs_through() {
    let port = free_port();
    let _pg = postgres(port);
    let impostor = TestBackend::start("impostor");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let q_port = free_port();
    let lb = start(
        &listener_config("q", q_port, "q", ""),
        &format!(
            "{}[pools.p.health]\nkind = \"postgres\"\nusername = \"postgres\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n{}[pools.q.health]\nkind = \"postgres\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 1\n",
            pool_config(
                "p",
                "round_robin",
                &[(addr(port), 1), (impostor.addr, 1)],
                ""
            ),
            pool_config(
                "q",
                "round_robin",
                &[
                    (addr(port), 1),
                    (impostor.addr, 1),
                    (silent.local_addr().unwrap(), 1)
                ],
                ""
            ),
        ),
    );
    // Both forms of the check: the StartupMessage (p) and the SSLRequest (q).
    for pool in ["p", "q"] {
        wait_state(lb.admin, pool, impostor.addr, "down");
        wait_state(lb.admin, pool, addr(port), "up");
    }
    wait_state(lb.admin, "q", silent.local_addr().unwrap(), "down");
    let e = last_check_error(lb.admin, impostor.addr);
    assert!(
        e.contains("not PostgreSQL") || e.contains("not a PostgreSQL message"),
        "{e}"
    );

    // pgbench through ringlb: only the real server is up, so every session lands there.
    let pgbench = |args: &[&str]| {
        let out = Command::new(pg_bin("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &lb.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .expect("pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    pgbench(&["-i", "-q", "-s", "1"]);
    let out = pgbench(&["-c", "4", "-j", "2", "-t", "100", "-C"]);
    assert!(
        out.contains("number of transactions actually processed: 400/400"),
        "{out}"
    );
}

/// A scripted peer that writes `greeting` to each connection, reads what comes, and closes.
fn scripted(greeting: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let _ = s.write_all(&greeting);
                let mut sink = [0u8; 256];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut sink);
            });
        }
    });
    a
}

#[test]
fn send_expect_and_mysql_checks() {
    // A greeting laid out as MariaDB 10.11 sends it (HandshakeV10), a "Too many connections"
    // error packet, and a backend that greets with its name then echoes (TestBackend).
    let packet = |seq: u8, payload: &[u8]| {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    };
    let mut hello = vec![10u8];
    hello.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
    hello.extend_from_slice(&5u32.to_le_bytes()); // connection id
    hello.extend_from_slice(b">:n[5^m*\0"); // auth data, part 1
    hello.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 0x15]);
    hello.extend_from_slice(&[0; 10]);
    hello.extend_from_slice(b"a*'6C97L\"`?^\0mysql_native_password\0");
    let mut too_many = vec![0xff, 0x10, 0x04];
    too_many.extend_from_slice(b"Too many connections");
    let (maria, full) = (scripted(packet(0, &hello)), scripted(packet(0, &too_many)));
    let echo = TestBackend::start("echo-1");
    let lb = start(
        &format!(
            "{}{}",
            listener_config("se", free_port(), "se", ""),
            listener_config("my", free_port(), "my", "")
        ),
        &format!(
            "{}{}[pools.se.health]\nkind = \"send_expect\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\nsteps = [{{ expect = \"echo-1\\n\" }}, {{ send = \"PING\\r\\n\", expect = \"PING\\r\\n\" }}, {{ send_hex = \"00 ff 0a\", expect_hex = \"00ff0a\" }}, {{ send = \"v=42\\n\", expect_regex = \"v=[0-9]+\" }}]\n{}[pools.my.health]\nkind = \"mysql\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
            pool_config("p", "round_robin", &[(echo.addr, 1)], ""),
            pool_config("se", "round_robin", &[(echo.addr, 1), (maria, 1)], ""),
            pool_config(
                "my",
                "round_robin",
                &[(maria, 1), (full, 1), (echo.addr, 1)],
                ""
            ),
        ),
    );
    wait_state(lb.admin, "se", maria, "down");
    wait_state(lb.admin, "se", echo.addr, "up");
    wait_state(lb.admin, "my", maria, "up");
    wait_state(lb.admin, "my", full, "down");
    wait_state(lb.admin, "my", echo.addr, "down");
    let e = last_check_error(lb.admin, full);
    assert!(e.contains("error 1040: Too many connections"), "{e}");
}

#[test]
fn backup_takes_over_only_while_every_primary_is_down() {
    let (a, b) = (
        HttpBackend::start("primary-a"),
        HttpBackend::start("primary-b"),
    );
    let backup = HttpBackend::start("backup");
    let lb = start(
        "",
        &format!(
            "[pools.p]\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\", backup = true }}]\n[pools.p.health]\nkind = \"http\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
            a.addr, b.addr, backup.addr
        ),
    );
    let who = || {
        http(addr(lb.port), "GET", "/", None, None)
            .1
            .trim()
            .to_string()
    };
    let serve =
        |n: usize| -> std::collections::BTreeSet<String> { (0..n).map(|_| who()).collect() };
    wait_state(lb.admin, "p", backup.addr, "up");
    assert_eq!(backend(lb.admin, "p", backup.addr)["backup"], true);
    assert_eq!(
        serve(20),
        ["primary-a", "primary-b"].map(String::from).into()
    );
    // One primary down: the other takes everything, the backup still nothing.
    a.health.store(503, std::sync::atomic::Ordering::Relaxed);
    wait_state(lb.admin, "p", a.addr, "down");
    assert_eq!(serve(10), ["primary-b".to_string()].into());
    // Every primary down: the backup serves.
    b.health.store(503, std::sync::atomic::Ordering::Relaxed);
    wait_state(lb.admin, "p", b.addr, "down");
    assert_eq!(serve(10), ["backup".to_string()].into());
    // A primary back: new connections go to it again.
    a.health.store(200, std::sync::atomic::Ordering::Relaxed);
    wait_state(lb.admin, "p", a.addr, "up");
    assert_eq!(serve(10), ["primary-a".to_string()].into());
    // A drained primary is not up either: the backup takes over again.
    let (status, body) = http(
        lb.admin,
        "POST",
        &format!("/pools/p/backends/{}/drain", a.addr),
        None,
        None,
    );
    assert!(status == 200 || status == 202, "{status} {body}");
    assert_eq!(serve(10), ["backup".to_string()].into());
    // A backup added through the admin API (as `ringlb ctl add --backup` does) joins the
    // backups that serve.
    let spare = HttpBackend::start("backup-2");
    let body = format!("{{\"addr\": \"{}\", \"backup\": true}}", spare.addr);
    let (status, text) = http(lb.admin, "POST", "/pools/p/backends", Some(&body), None);
    assert!(status == 200 || status == 201, "{status} {text}");
    wait_state(lb.admin, "p", spare.addr, "up");
    assert_eq!(backend(lb.admin, "p", spare.addr)["backup"], true);
    assert_eq!(serve(20), ["backup", "backup-2"].map(String::from).into());
    // The metric and the status page's data say which is the backup.
    let (_, stats) = http(lb.admin, "GET", "/stats", None, None);
    assert!(stats.contains("\"backup\":true"), "{stats}");
}

#[test]
fn on_backend_down_set_by_a_reload_applies_to_open_connections() {
    // The backend relays; its health is what an HTTP endpoint on another port says (the
    // check's `port`), so the test can fail it while a session is held.
    let echo = TestBackend::echo();
    let health = HttpBackend::start("health");
    let lb = start(
        "",
        &format!(
            "{}[pools.p.health]\nkind = \"http\"\nport = {}\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
            pool_config(
                "p",
                "round_robin",
                &[(echo.addr, 1)],
                "on_backend_down = \"keep\""
            ),
            health.addr.port()
        ),
    );
    wait_state(lb.admin, "p", echo.addr, "up");
    let mut held = TcpStream::connect(addr(lb.port)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut two = [0u8; 2];
    held.write_all(b"hi").unwrap();
    held.read_exact(&mut two).unwrap();
    // Down with "keep": the session goes on.
    health
        .health
        .store(503, std::sync::atomic::Ordering::Relaxed);
    wait_state(lb.admin, "p", echo.addr, "down");
    held.write_all(b"ok").unwrap();
    held.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"ok", "keep: the down backend's session still relays");
    // A reload says "close": the session that is already open is closed.
    let cfg = std::fs::read_to_string(&lb._proxy.config_path).unwrap();
    std::fs::write(
        &lb._proxy.config_path,
        cfg.replace("on_backend_down = \"keep\"", "on_backend_down = \"close\""),
    )
    .unwrap();
    lb._proxy.signal("HUP");
    let mut buf = [0u8; 8];
    match held.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("the session outlived the reload to \"close\": {other:?}"),
    }
    assert_eq!(backend(lb.admin, "p", echo.addr)["closed_on_down_total"], 1);
}
