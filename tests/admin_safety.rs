//! The admin API is safe by default, with the real binary: a non-loopback `listen` without a
//! token is refused by `check` and `serve` (exit 1, key named) unless `insecure_no_token`
//! says so out loud; `/healthz` and `/readyz` answer probes without the token while
//! everything else needs it; `[admin] allow` refuses other sources with 403.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn write_config(dir: &std::path::Path, admin: &str, backend: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("ringlb.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\n{admin}\n{}{}",
            listener_config("l", free_port(), "p", ""),
            pool_config("p", "round_robin", &[(backend, 1)], "")
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_reachable_admin_without_a_token_is_refused_unless_insecure_is_said() {
    let b = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "listen = \"0.0.0.0:1\"", b.addr);
    for cmd in ["check", "serve"] {
        let out = Command::new(BIN)
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains("admin.listen") && err.contains("token_file"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(":2:"),
            "{cmd}: the error names the line: {err}"
        );
    }
    // Loopback needs no token; insecure_no_token lets a reachable address through.
    for admin in [
        "listen = \"127.0.0.1:1\"",
        "listen = \"0.0.0.0:1\"\ninsecure_no_token = true",
    ] {
        let path = write_config(dir.path(), admin, b.addr);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{admin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Bad allow rules are config errors too.
    let path = write_config(
        dir.path(),
        "listen = \"127.0.0.1:1\"\nallow = [\"10.0.0.1/8\"]",
        b.addr,
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.allow"));
}

#[test]
fn insecure_no_token_is_warned_at_start() {
    let b = TestBackend::start("b1");
    let (port, admin) = (free_port(), free_port());
    let cfg = format!(
        "[admin]\nlisten = \"0.0.0.0:{admin}\"\ninsecure_no_token = true\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(b.addr, 1)], "")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RINGLB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_for_exit(&mut child, Duration::from_secs(10)).expect("ringlb stops on SIGTERM");
    let err = stderr_of(&mut child);
    assert!(err.contains("insecure_no_token"), "{err}");
}

/// A GET from source address `src`: the status code (0 if the connection failed).
fn get_from(src: [u8; 4], to: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let mut s = connect_from(src.into(), to);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn probes_need_no_token_and_allow_limits_sources() {
    let b = TestBackend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\nallow = [\"127.0.0.1\", \"127.0.0.2\"]\n{}{}",
        token_file.display().to_string(),
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(b.addr, 1)], "")
    );
    let p = Proxy::start(&cfg, addr(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(admin).is_ok()
    });
    let local = [127, 0, 0, 1];
    assert_eq!(get_from(local, admin, "/healthz", None), 200);
    // Ready once the server has seen every worker accept (a moment after the listener does).
    wait_until(Duration::from_secs(10), || {
        get_from(local, admin, "/readyz", None) == 200
    });
    let (status, body) = http(admin, "GET", "/readyz", None, None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["listeners"], 1);
    assert!(
        !body.contains("127.0.0.1"),
        "readyz reveals an address: {body}"
    );
    assert_eq!(get_from(local, admin, "/backends", None), 401);
    assert_eq!(get_from(local, admin, "/backends", Some("t0ken")), 200);
    assert_eq!(
        get_from([127, 0, 0, 2], admin, "/backends", Some("t0ken")),
        200
    );
    // Outside `allow`: refused whatever it asks, probes included.
    assert_eq!(
        get_from([127, 0, 0, 3], admin, "/backends", Some("t0ken")),
        403
    );
    assert_eq!(get_from([127, 0, 0, 3], admin, "/healthz", None), 403);
    // A stop begins with a connection held: unready while it drains.
    let (_held, _) = greet(addr(port));
    p.signal("TERM");
    wait_until(Duration::from_secs(10), || {
        http(admin, "GET", "/readyz", None, None)
            .1
            .contains("stopping")
    });
    assert_eq!(get_from(local, admin, "/readyz", None), 503);
}
