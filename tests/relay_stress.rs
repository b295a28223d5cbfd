//! Stress of the relay's re-arm paths: many clients that stop reading from flooding
//! backends, beside echo connections on the same worker, with a small buffer pool, so that
//! ENOBUFS parking and backpressure cancels interleave. The floods and the stalled clients
//! run as threads of this process and, in a second test, as separate processes. In every
//! round no echo waits more than a second (a stall was 4-10 s).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STALLED: usize = 20;
const ECHOES: usize = 10;
const ROUNDS: usize = 8;

fn metric(metrics: SocketAddr, name: &str) -> f64 {
    unlabelled_metric(metrics, name).unwrap_or(0.0)
}

/// A backend that writes to every connection as fast as it can, in threads of this process.
fn flood_in_threads() -> SocketAddr {
    let l = listen_any(1024);
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let chunk = vec![7u8; 16 * 1024];
                while (&s).write_all(&chunk).is_ok() {}
            });
        }
    });
    a
}

/// The same flood as a separate Python process.
fn flood_in_a_process(port: u16) -> Child {
    let script = format!(
        r#"
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen(1024)
def flood(c):
    b = b"\x07" * 16384
    try:
        while True: c.sendall(b)
    except OSError: pass
while True:
    c, _ = s.accept()
    threading.Thread(target=flood, args=(c,), daemon=True).start()
"#
    );
    Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("python3")
}

/// `n` clients of `lb` that never read, as a separate Python process (killed on drop).
fn stalled_in_a_process(lb: SocketAddr, n: usize) -> Child {
    let script = format!(
        r#"
import socket, time, sys
cs = [socket.create_connection(("127.0.0.1", {port})) for _ in range({n})]
print("connected", flush=True)
time.sleep(3600)
"#,
        port = lb.port()
    );
    let mut c = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = [0u8; 10];
    c.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"connected\n");
    c
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the rounds: each opens the stalled clients (through `stall`), lets the floods fill
/// what they can, then makes every echo connection do a few round trips, each within 1 s.
fn stress(flood: SocketAddr, mut stall: impl FnMut(SocketAddr) -> Box<dyn Send>) {
    let echo = TestBackend::echo();
    let (flood_port, echo_port, metrics) = (free_port(), free_port(), addr(free_port()));
    let cfg = format!(
        "workers = 1\nbuffer_size = 4096\nbuffer_count = 64\n[metrics]\nlisten = \"{metrics}\"\n{}{}{}{}",
        listener_config("flood", flood_port, "flood", ""),
        listener_config("echo", echo_port, "echo", ""),
        pool_config("flood", "round_robin", &[(flood, 1)], ""),
        pool_config("echo", "round_robin", &[(echo.addr, 1)], "")
    );
    let _p = Proxy::start(&cfg, addr(echo_port));
    let mut echoes: Vec<TcpStream> = (0..ECHOES)
        .map(|_| {
            let s = TcpStream::connect(addr(echo_port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s
        })
        .collect();
    for round in 0..ROUNDS {
        let stalled = stall(addr(flood_port));
        // Echo while the floods are still filling buffers, then once they have stalled.
        for pass in 0..4 {
            for (i, s) in echoes.iter_mut().enumerate() {
                let msg = format!("round {round} pass {pass} echo {i:02}");
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap_or_else(|e| {
                    panic!("{msg}: no echo within 1 s ({e}); buffer ring exhausted {} times, repairs {}",
                        metric(metrics, "ringlb_buffer_ring_exhausted_total"),
                        metric(metrics, "ringlb_relay_repairs_total"))
                });
                assert_eq!(back, msg.as_bytes());
            }
            std::thread::sleep(Duration::from_millis(50 * pass as u64));
        }
        drop(stalled);
    }
    assert_eq!(metric(metrics, "ringlb_relay_repairs_total"), 0.0);
    eprintln!(
        "buffer ring exhausted {} times over {ROUNDS} rounds",
        metric(metrics, "ringlb_buffer_ring_exhausted_total")
    );
}

#[test]
fn stalled_readers_in_threads_never_stall_echoes_on_the_same_worker() {
    let flood = flood_in_threads();
    stress(flood, |lb| {
        let v: Vec<TcpStream> = (0..STALLED)
            .map(|_| TcpStream::connect(lb).unwrap())
            .collect();
        Box::new(v)
    });
}

#[test]
fn stalled_readers_in_other_processes_never_stall_echoes_on_the_same_worker() {
    let port = free_port();
    let _flood = Killed(flood_in_a_process(port));
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    stress(addr(port), |lb| {
        Box::new(Killed(stalled_in_a_process(lb, STALLED)))
    });
}
