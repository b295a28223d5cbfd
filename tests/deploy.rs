//! Deployment behaviour: systemd readiness through $NOTIFY_SOCKET, and the files in deploy/
//! checked against what the binary really exports.

mod common;
use common::*;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn ready_is_sent_only_once_the_listener_accepts_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let backend = TestBackend::start("b");
    let port = free_port();
    let cfg_path = dir.path().join("ringlb.toml");
    std::fs::write(&cfg_path, format!("{}{}", listener_config("l", port, "p", ""), pool_config("p", "round_robin", &[(backend.addr, 1)], ""))).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RINGLB_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means ready: the very next connect is served.
    let (s, name) = greet(addr(port));
    assert_eq!(name, "b");
    drop(s);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(TcpStream::connect(addr(port)).is_err());
}
