//! How connections end, against the real binary: every way a TCP stream can end (client FIN
//! first, backend FIN first, both at once, a reset from either side, a FIN while megabytes
//! still wait in the other direction), in each phase of a process's life: running, stopping
//! after SIGTERM, and the old process of a `serve --upgrade`.
//!
//! For each, the far side gets exactly the bytes sent, then EOF (or a reset, for a reset),
//! and the connection leaves the table: while running, `ringlb_listener_active_connections`
//! comes back to 0; while stopping, the process exits 0 long before `shutdown_timeout`
//! (it exits only once its workers hold no connection).
//!
//! The cases run one after another, each alone, so nothing else wakes the worker that holds
//! it: a close that a stopping worker queues but never submits (the bug these tests were
//! written for) shows as a missing EOF, not as a slow one. The deadline for each EOF is 5 s,
//! against a `shutdown_timeout` of 60 s.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a side may wait for what it must get (bytes, then EOF or reset).
const DEADLINE: Duration = Duration::from_secs(5);
/// Stop and upgrade runs, each with every case.
const RUNS: usize = 20;
/// Bytes a side sends before it ends (a few buffers' worth).
const SMALL: usize = 150_000;
/// Bytes left waiting in the other direction in the `FinWhileQueued` case: more than the
/// sockets' buffers and ringlb's backpressure hold, so most are still on their way.
const QUEUED: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    ClientFinFirst,
    BackendFinFirst,
    BothFinAtOnce,
    ClientResets,
    BackendResets,
    /// The client half-closes while the backend's 8 MiB are still on their way to it.
    FinWhileQueued,
}

const CASES: [Case; 6] = [
    Case::ClientFinFirst,
    Case::BackendFinFirst,
    Case::BothFinAtOnce,
    Case::ClientResets,
    Case::BackendResets,
    Case::FinWhileQueued,
];

/// The backend side of each connection, paired with its client by an 8-byte id that the
/// client sends first (the readiness probe's connection, which sends none, is dropped).
struct Backends {
    addr: SocketAddr,
    rx: Receiver<(u64, TcpStream)>,
    early: HashMap<u64, TcpStream>,
}

impl Backends {
    fn start() -> Backends {
        let l: TcpListener = listen_any(1024);
        let addr = l.local_addr().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut id = [0u8; 8];
                    if s.read_exact(&mut id).is_ok() {
                        let _ = tx.send((u64::from_be_bytes(id), s));
                    }
                });
            }
        });
        Backends {
            addr,
            rx,
            early: HashMap::new(),
        }
    }

    /// The backend side of connection `id`.
    fn take(&mut self, id: u64) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.early.remove(&id) {
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (got, s) = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("connection {id} never reached the backend: {e}"));
            self.early.insert(got, s);
        }
    }
}

/// One proxied connection: the client's socket and the backend's.
struct Pair {
    case: Case,
    client: TcpStream,
    backend: TcpStream,
}

fn open(to: SocketAddr, backends: &mut Backends, id: u64, case: Case) -> Pair {
    let mut client = TcpStream::connect(to).unwrap();
    client.write_all(&id.to_be_bytes()).unwrap();
    let backend = backends.take(id);
    for s in [&client, &backend] {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    // Bytes both ways first: the relay is running before the case begins.
    let mut p = Pair {
        case,
        client,
        backend,
    };
    p.client.write_all(b"hello").unwrap();
    expect_bytes(&mut p.backend, b"hello", "backend, greeting");
    p.backend.write_all(b"olleh").unwrap();
    expect_bytes(&mut p.client, b"olleh", "client, greeting");
    p
}

fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut s = seed | 1;
    fill(&mut v, &mut s);
    v
}

/// Reads exactly `want` (within the deadline).
fn expect_bytes(s: &mut TcpStream, want: &[u8], who: &str) {
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{who}: reading {} bytes: {e}", want.len()));
    assert!(got == want, "{who}: the bytes differ from those sent");
}

/// What a side got after the bytes it expected: EOF, a reset, or nothing in time.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    Eof,
    Reset,
    ExtraBytes,
    Nothing(String),
}

fn then(s: &mut TcpStream) -> Then {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Then::Eof,
        Ok(_) => Then::ExtraBytes,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Then::Reset,
        Err(e) => Then::Nothing(e.to_string()),
    }
}

/// Reads exactly `want`, then EOF.
fn expect_all_then_eof(s: &mut TcpStream, want: &[u8], who: &str) {
    expect_bytes(s, want, who);
    assert_eq!(then(s), Then::Eof, "{who}: after {} bytes", want.len());
}

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Ends one connection the way its case says, and checks what each side gets.
fn end(p: Pair, seed: u64) {
    let Pair {
        case,
        mut client,
        mut backend,
    } = p;
    let who = |side: &str| format!("{case:?}, {side}");
    let (a, b) = (payload(SMALL, seed), payload(SMALL, seed ^ 0xabcd));
    match case {
        Case::ClientFinFirst => {
            client.write_all(&a).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            expect_all_then_eof(&mut backend, &a, &who("backend"));
            backend.write_all(&b).unwrap();
            drop(backend);
            expect_all_then_eof(&mut client, &b, &who("client"));
        }
        Case::BackendFinFirst => {
            backend.write_all(&b).unwrap();
            backend.shutdown(Shutdown::Write).unwrap();
            expect_all_then_eof(&mut client, &b, &who("client"));
            client.write_all(&a).unwrap();
            drop(client);
            expect_all_then_eof(&mut backend, &a, &who("backend"));
        }
        Case::BothFinAtOnce => {
            let (mut c2, mut b2) = (client.try_clone().unwrap(), backend.try_clone().unwrap());
            let (a2, b2_) = (a.clone(), b.clone());
            let w1 = std::thread::spawn(move || {
                c2.write_all(&a2).unwrap();
                c2.shutdown(Shutdown::Write).unwrap();
            });
            let w2 = std::thread::spawn(move || {
                b2.write_all(&b2_).unwrap();
                b2.shutdown(Shutdown::Write).unwrap();
            });
            expect_all_then_eof(&mut backend, &a, &who("backend"));
            expect_all_then_eof(&mut client, &b, &who("client"));
            w1.join().unwrap();
            w2.join().unwrap();
        }
        Case::ClientResets => {
            client.write_all(&a).unwrap();
            expect_bytes(&mut backend, &a, &who("backend"));
            reset(client);
            assert_eq!(then(&mut backend), Then::Reset, "{}", who("backend"));
        }
        Case::BackendResets => {
            backend.write_all(&b).unwrap();
            expect_bytes(&mut client, &b, &who("client"));
            reset(backend);
            assert_eq!(then(&mut client), Then::Reset, "{}", who("client"));
        }
        Case::FinWhileQueued => {
            let big = payload(QUEUED, seed ^ 0x5eed);
            let mut bw = backend.try_clone().unwrap();
            let big2 = big.clone();
            // The backend sends 8 MiB and closes; the client does not read yet.
            let writer = std::thread::spawn(move || {
                bw.write_all(&big2).unwrap();
                bw.shutdown(Shutdown::Write).unwrap();
            });
            std::thread::sleep(Duration::from_millis(100));
            client.write_all(&a).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            expect_all_then_eof(&mut backend, &a, &who("backend"));
            expect_all_then_eof(&mut client, &big, &who("client"));
            writer.join().unwrap();
        }
    }
}

fn config(workers: usize, port: u16, metrics: u16, backend: SocketAddr, extra: &str) -> String {
    format!(
        "workers = {workers}\nshutdown_timeout = \"60s\"\n{extra}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{}{}",
        listener_config("l", port, "p", ""),
        pool_config("p", "round_robin", &[(backend, 1)], "")
    )
}

/// `ringlb serve` (or `serve --upgrade`) at info level, its stderr read line by line.
fn serve(config: &std::path::Path, upgrade: bool) -> (std::process::Child, Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    if upgrade {
        cmd.arg("--upgrade");
    }
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .env("RINGLB_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child, if upgrade { "new" } else { "old" });
    (child, lines)
}

/// Every line the process wrote until now (without waiting).
fn lines_so_far(rx: &Receiver<String>) -> Vec<String> {
    rx.try_iter().collect()
}

fn active(metrics: SocketAddr) -> f64 {
    let (status, body) = http(metrics, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("ringlb_listener_active_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_end_of_stream_while_running() {
    let mut backends = Backends::start();
    let (port, metrics) = (free_port(), free_port());
    let p = Proxy::start(&config(2, port, metrics, backends.addr, ""), addr(port));
    for round in 0..3u64 {
        let pairs: Vec<Pair> = CASES
            .iter()
            .enumerate()
            .map(|(i, &c)| open(addr(port), &mut backends, round * 100 + i as u64, c))
            .collect();
        for (i, pair) in pairs.into_iter().enumerate() {
            end(pair, round * 100 + i as u64);
        }
        // Every connection left the table.
        wait_until(Duration::from_secs(10), || active(addr(metrics)) == 0.0);
    }
    drop(p);
}

/// Opens a connection for every case (twice, so both workers hold some), lets `phase`
/// begin, then ends them one by one, and checks that the process exits 0 well before its
/// `shutdown_timeout`, without closing anything for it.
fn stopping_run(run: usize, upgrade: bool) {
    let mut backends = Backends::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let (port, metrics) = (free_port(), free_port());
    let path = dir.path().join("ringlb.toml");
    let extra = format!("upgrade_socket = {:?}", sock.display().to_string());
    std::fs::write(&path, config(2, port, metrics, backends.addr, &extra)).unwrap();
    let (old, old_lines) = serve(&path, false);
    let mut old = KillOnDrop(Some(old));
    wait_until(Duration::from_secs(10), || sock.exists());
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    let pairs: Vec<Pair> = (0..2 * CASES.len())
        .map(|i| {
            open(
                addr(port),
                &mut backends,
                (run * 1000 + i) as u64,
                CASES[i % CASES.len()],
            )
        })
        .collect();
    let mut new = None;
    if upgrade {
        new = Some(KillOnDrop(Some(serve(&path, true).0)));
    } else {
        let ok = Command::new("kill")
            .args(["-TERM", &old.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    wait_for_line(
        &old_lines,
        "stopping: no new connections",
        Duration::from_secs(15),
    );
    for (i, pair) in pairs.into_iter().enumerate() {
        end(pair, (run * 1000 + i) as u64);
    }
    let status = wait_for_exit(old.0.as_mut().unwrap(), Duration::from_secs(10));
    let said = lines_so_far(&old_lines).join("\n");
    let phase = if upgrade { "upgrade" } else { "SIGTERM" };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "run {run} ({phase}): the old process did not exit 0 once its connections ended"
    );
    for bad in [
        "shutdown_timeout passed",
        "stopped while stopping",
        "panicked",
    ] {
        assert!(!said.contains(bad), "run {run} ({phase}): {bad}:\n{said}");
    }
    if new.is_some() {
        // The successor serves on: a fresh connection through it ends cleanly too.
        let pair = open(
            addr(port),
            &mut backends,
            (run * 1000 + 999) as u64,
            Case::ClientFinFirst,
        );
        end(pair, 7);
    }
}

/// Kills the child (a successor) when the test ends, passed or not.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn every_end_of_stream_after_sigterm() {
    for run in 0..RUNS {
        stopping_run(run, false);
    }
}

#[test]
fn every_end_of_stream_in_the_old_process_of_an_upgrade() {
    for run in 0..RUNS {
        stopping_run(run, true);
    }
}
