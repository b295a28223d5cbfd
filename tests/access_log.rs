//! The access log end to end, with the real binary: one record per connection with the
//! right end reason and byte counts for each way a connection can end here (client close,
//! backend close, idle timeout, refused connect, no backend, denied), in text and in JSON;
//! logrotate (`mv` + SIGHUP, and SIGUSR1); a destination that stops reading (a FIFO nobody
//! drains) drops records and counts them while relaying goes on.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A backend that greets with "bye\n" and closes at once: the backend ends the connection.
fn closing_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"bye\n");
        }
    });
    a
}

/// Five listeners, one per way to end, all logging to `log` in `format`.
fn config(
    log: &Path,
    format: &str,
    ports: &[u16; 6],
    echo: SocketAddr,
    closing: SocketAddr,
) -> String {
    let listener = |name: &str, port: u16, pool: &str, extra: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\npool = \"{pool}\"\n\
             access_log = {:?}\naccess_log_format = \"{format}\"\n{extra}\n",
            log.display().to_string()
        )
    };
    format!(
        "workers = 1\n{}{}{}{}{}{}{}{}{}{}",
        listener("echo", ports[0], "echo", ""),
        listener("closing", ports[1], "closing", ""),
        listener("idle", ports[2], "echo", "idle_timeout = \"300ms\""),
        listener("refused", ports[3], "refused", "retries = 0"),
        listener("none", ports[4], "none", ""),
        listener("denied", ports[5], "echo", "deny = [\"127.0.0.1\"]"),
        pool_config("echo", "round_robin", &[(echo, 1)], ""),
        pool_config("closing", "round_robin", &[(closing, 1)], ""),
        pool_config(
            "refused",
            "round_robin",
            &[(refusing_addr(), 1)],
            "[pools.refused.health]\ninterval = \"1d\""
        ),
        // A backend that is down from the first check: no routable backend.
        pool_config(
            "none",
            "round_robin",
            &[(refusing_addr(), 1)],
            "[pools.none.health]\ninterval = \"100ms\"\nfall = 1\n"
        ),
    )
}

/// Runs one connection per way to end through `ports`; returns the bytes the echo
/// connection sent.
fn provoke(ports: &[u16; 6]) -> usize {
    // Client close: 1000 bytes up, echoed back, then the client's EOF.
    let mut s = TcpStream::connect(addr(ports[0])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload = vec![b'x'; 1000];
    s.write_all(&payload).unwrap();
    let mut back = vec![0u8; 1000];
    s.read_exact(&mut back).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    // Backend close.
    let mut s = TcpStream::connect(addr(ports[1])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    // Idle timeout: say nothing.
    let mut s = TcpStream::connect(addr(ports[2])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    // Refused connect, no backend, denied: each is closed by the proxy.
    for p in &ports[3..] {
        let mut s = TcpStream::connect(addr(*p)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    payload.len()
}

/// The records for `listener` in the log (lines containing its name as a field).
fn lines_of(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn start(
    format: &str,
) -> (
    Proxy,
    tempfile::TempDir,
    std::path::PathBuf,
    [u16; 6],
    TestBackend,
) {
    let echo = TestBackend::echo();
    let closing = closing_backend();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let ports = [
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    ];
    let p = Proxy::start(
        &config(&log, format, &ports, echo.addr, closing),
        addr(ports[0]),
    );
    // The none pool's backend goes down at its first check.
    std::thread::sleep(Duration::from_millis(400));
    (p, dir, log, ports, echo)
}

#[test]
fn text_records_say_how_each_connection_ended() {
    let (p, _dir, log, ports, _echo) = start("text");
    let before = lines_of(&log).len(); // Proxy::start's probe on "echo"
    let sent = provoke(&ports);
    wait_until(Duration::from_secs(10), || {
        lines_of(&log).len() >= before + 6
    });
    let lines = lines_of(&log)[before..].to_vec();
    let find = |listener: &str| {
        lines
            .iter()
            .find(|l| l.split(' ').nth(1) == Some(listener))
            .unwrap_or_else(|| panic!("no record for {listener}: {lines:#?}"))
            .clone()
    };
    let echo = find("echo");
    assert!(echo.contains("end=client_closed"), "{echo}");
    assert!(echo.contains(&format!("bytes_to_backend={sent}")), "{echo}");
    assert!(echo.contains(&format!("bytes_to_client={sent}")), "{echo}");
    assert!(echo.contains("attempts=1"), "{echo}");
    assert!(echo.contains(" 127.0.0.1:"), "the client address: {echo}");
    assert!(echo.contains(" echo/127.0.0.1:"), "pool/backend: {echo}");
    let closing = find("closing");
    assert!(
        closing.contains("end=backend_closed") && closing.contains("bytes_to_client=4"),
        "{closing}"
    );
    assert!(find("idle").contains("end=idle_timeout"));
    let refused = find("refused");
    assert!(
        refused.contains("end=connect_refused") && refused.contains("attempts=1"),
        "{refused}"
    );
    let none = find("none");
    assert!(
        none.contains("end=no_backend") && none.contains(" -/-"),
        "{none}"
    );
    assert!(find("denied").contains("end=denied"));

    // logrotate: move the file away, SIGHUP, and new records go to a new file.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    drop(greet_or_echo(addr(ports[1])));
    wait_until(Duration::from_secs(10), || lines_of(&log).len() == 1);
    let old = lines_of(&rotated).len();
    // SIGUSR1 reopens too (without a reload).
    std::fs::rename(&log, dir_of(&log).join("access.log.2")).unwrap();
    p.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    drop(greet_or_echo(addr(ports[1])));
    wait_until(Duration::from_secs(10), || lines_of(&log).len() == 1);
    assert_eq!(
        lines_of(&rotated).len(),
        old,
        "records went to the rotated file"
    );
}

fn dir_of(p: &Path) -> std::path::PathBuf {
    p.parent().unwrap().to_path_buf()
}

/// One connection to the closing backend, read to its end (the connection ends when the
/// caller drops the stream: the proxy waits for the client's side too).
fn greet_or_echo(to: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (s, got)
}

#[test]
fn json_records_parse() {
    let (_p, _dir, log, ports, _echo) = start("json");
    let before = lines_of(&log).len();
    let sent = provoke(&ports);
    wait_until(Duration::from_secs(10), || {
        lines_of(&log).len() >= before + 6
    });
    let records: Vec<serde_json::Value> = lines_of(&log)[before..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |listener: &str| {
        records
            .iter()
            .find(|r| r["listener"] == listener)
            .unwrap_or_else(|| panic!("no record for {listener}"))
            .clone()
    };
    let echo = of("echo");
    assert_eq!(echo["end"], "client_closed");
    assert_eq!(echo["bytes_to_backend"], sent as u64);
    assert_eq!(echo["bytes_to_client"], sent as u64);
    assert_eq!(echo["pool"], "echo");
    assert!(echo["backend"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(echo["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(echo["start"].as_str().unwrap().ends_with('Z'));
    assert_eq!(of("closing")["end"], "backend_closed");
    assert_eq!(of("idle")["end"], "idle_timeout");
    assert_eq!(of("refused")["end"], "connect_refused");
    assert_eq!(of("none")["end"], "no_backend");
    assert_eq!(of("none")["pool"], serde_json::Value::Null);
    assert_eq!(of("denied")["end"], "denied");
}

#[test]
fn a_stalled_log_destination_drops_records_and_relaying_goes_on() {
    let echo = TestBackend::echo();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A reader that never reads: the pipe fills, then the logger's write blocks.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    let (port, metrics) = (free_port(), addr(free_port()));
    let cfg = format!(
        "workers = 1\n[metrics]\nlisten = \"{metrics}\"\n{}{}",
        listener_config(
            "l",
            port,
            "p",
            &format!("access_log = {:?}", fifo.display().to_string())
        ),
        pool_config("p", "round_robin", &[(echo.addr, 1)], "")
    );
    let dir2 = tempfile::tempdir().unwrap();
    let path = dir2.path().join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    let child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RINGLB_LOG", "error")
        .env("RINGLB_ACCESS_LOG_QUEUE", "16")
        .spawn()
        .unwrap();
    let mut p = Proxy {
        child,
        dir: dir2,
        config_path: path,
    };
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    // Enough connections to fill a 64 KiB pipe and a 16-record queue several times over;
    // each one still relays.
    for i in 0..1500 {
        let mut s = TcpStream::connect(addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&b, b"ping");
    }
    let dropped = unlabelled_metric(metrics, "ringlb_access_log_dropped_total").unwrap_or(0.0);
    assert!(dropped > 0.0, "nothing was dropped");
    // A stalled logger does not hold the stop either.
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0));
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc_o_nonblock())
    }
}

/// O_NONBLOCK (Linux), so that opening the FIFO's read end does not wait for a writer.
fn libc_o_nonblock() -> i32 {
    0o4000
}
