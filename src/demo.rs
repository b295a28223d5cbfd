//! `ringlb demo`: a newcomer's first run. Three small HTTP backends on loopback, each
//! answering with its own name, behind a balancer on 127.0.0.1:8000.
//!
//! Owns: the built-in backends (plain threads: they are scenery, not the product).
//! Must not touch: anything the real `serve` path does not also do; the demo builds a config
//! text and runs it through the same parser and server.

use crate::config::Config;
use crate::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Starts one HTTP backend that answers every request with `name`; returns its address.
pub fn start_backend(name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || serve_http(stream, &name));
            }
        })?;
    Ok(addr)
}

/// Answers HTTP/1.1 requests (keep-alive) with the backend's name.
fn serve_http(mut s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    let body = format!("hello from {name}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 8192];
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        // Answer each complete request head in the buffer.
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// The demo's config, as a user would write it.
pub fn config_text(
    listen: SocketAddr,
    metrics: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("  {{ addr = \"{a}\" }},"))
        .collect();
    format!(
        r#"workers = 0
shutdown_timeout = "2s"

[metrics]
listen = "{metrics}"

[admin]
listen = "{admin}"

[[listeners]]
name = "demo"
bind = "{listen}"
pool = "demo"
connect_timeout = "1s"
retries = 2

[pools.demo]
algorithm = "round_robin"
backends = [
{}
]

[pools.demo.health]
kind = "http"
path = "/health"
interval = "1s"
"#,
        list.join("\n")
    )
}

pub fn run(listen: SocketAddr, metrics: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let names = ["backend-1", "backend-2", "backend-3"];
    let mut addrs = Vec::new();
    for n in names {
        addrs.push(start_backend(n).map_err(|e| format!("cannot start a demo backend: {e}"))?);
    }
    let text = config_text(listen, metrics, admin, &addrs);
    let config = Config::parse("demo.toml", &text).map_err(|e| e.to_string())?;
    let server = Server::start(config, None)?;
    say(&format!(
        "ringlb demo: a balancer on {listen} in front of 3 backends"
    ));
    for (n, a) in names.iter().zip(&addrs) {
        say(&format!("  {n} on {a}"));
    }
    say("");
    say("Try:");
    say(&format!(
        "  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done   # round robin over the three"
    ));
    say(&format!(
        "  wrk -c64 -d5s http://{listen}/                            # load through the balancer"
    ));
    say("");
    say("The config in use (see `ringlb check --config FILE` for your own):");
    for line in text.lines() {
        say(&format!("  | {line}"));
    }
    say("");
    say("Ctrl-C stops it.");
    server.run_until_stopped()
}

/// Prints a line; once stdout is gone (`| head` has exited) it prints nothing more, instead
/// of panicking on the broken pipe.
fn say(line: &str) {
    use std::io::Write;
    static GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if GONE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        GONE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `ringlb backend`: one built-in HTTP backend on `addr`, until killed.
pub fn run_backend(addr: SocketAddr, name: &str, echo: bool) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    for stream in listener.incoming().flatten() {
        let name = name.to_string();
        if echo {
            std::thread::spawn(move || serve_echo(stream, &name));
        } else {
            std::thread::spawn(move || serve_http(stream, &name));
        }
    }
    Ok(())
}

/// `ringlb backend --echo`: the name and a newline (so a client knows who served it), then
/// every byte back; at the client's EOF, once all is echoed, the write side is shut.
fn serve_echo(mut s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    if s.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The staged load of `demo --autoscale`: (seconds, connections at the end of the stage),
/// ramping linearly within each stage, like a k6 `stages` script.
/// The 4 connections left after the ramp down are long-lived: they stay open through the
/// scale-in, so a backend is seen draining with live connections, and leaving once they end.
pub const STAGES: &[(u64, usize)] = &[(15, 45), (25, 45), (10, 4), (30, 4), (5, 0), (10, 0)];

/// Connections the staged load holds `t` seconds in.
pub fn load_at(t: f64) -> usize {
    let mut start = 0.0;
    let mut from = 0usize;
    for &(secs, to) in STAGES {
        let end = start + secs as f64;
        if t < end {
            let f = (t - start) / secs as f64;
            return (from as f64 + (to as f64 - from as f64) * f).round() as usize;
        }
        start = end;
        from = to;
    }
    from
}

/// `ringlb demo --autoscale`: a balancer with one backend, the scaler with the process
/// actuator (launching `ringlb backend`), and a staged load, with a progress line.
pub fn run_autoscale(
    listen: SocketAddr,
    metrics: SocketAddr,
    admin: SocketAddr,
) -> Result<(), String> {
    let first =
        start_backend("backend-1").map_err(|e| format!("cannot start a demo backend: {e}"))?;
    let text = config_text(listen, metrics, admin, &[first])
        .replace("round_robin", "least_conn")
        .replace("interval = \"1s\"", "interval = \"500ms\"");
    let config = Config::parse("demo.toml", &text).map_err(|e| e.to_string())?;
    let mut server = Server::start(config, None)?;
    let events = std::env::temp_dir().join("ringlb-demo-events.jsonl");
    let timeline = std::env::temp_dir().join("ringlb-demo-timeline.svg");
    let _ = std::fs::remove_file(&events);
    let scaler = demo_scaler(metrics, admin, &events)?;
    let (stop_scaler, scaler_thread) = spawn_scaler(scaler);
    say(&format!(
        "ringlb demo --autoscale: balancer on {listen}, metrics on http://{metrics}/metrics, admin on http://{admin}/backends"
    ));
    say(
        "Target tracking: 10 active connections per backend, 1 to 6 backends, scale-in after a 10 s window.",
    );
    say(
        "Staged load: ramp to 45 connections over 15 s, hold 25 s, ramp down to 4 long-lived ones over 10 s,",
    );
    say(
        "hold those 30 s (a backend drains with live connections, then leaves), close them; it ends by itself.",
    );
    say("Ctrl-C stops everything early, in order: load, scaler, balancer drain, backends.\n");

    let load = Arc::new(Load::default());
    spawn_load(listen, load.clone());
    spawn_progress(server.shared.clone(), load.clone());
    // Ctrl-C reaches this process, not the backends (their own process groups). The order
    // keeps every connection whole: the load's clients close theirs; the scaler stops, so
    // that it replaces nothing; the balancer drains (up to shutdown_timeout); only then are
    // the backends stopped.
    let result = server.wait_for_stop();
    load.stop.store(true, Ordering::Relaxed);
    let _ = stop_scaler.send(());
    let scaler = scaler_thread.join();
    let timeout = server.shutdown_timeout();
    server.stop(timeout);
    if let Ok(mut s) = scaler {
        s.stop_backends();
    }
    summarize(&events, &timeline, load.cut.load(Ordering::Relaxed));
    result
}

/// What the staged load shares with the demo: its stop, the connections it holds, and the
/// requests that failed on a connection it had not closed itself (cut connections).
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    open: AtomicUsize,
    cut: AtomicUsize,
}

/// The demo's scaler: target tracking on the balancer's active connections, launching
/// `ringlb backend` processes, its events written to `events`.
fn demo_scaler(
    metrics: SocketAddr,
    admin: SocketAddr,
    events: &Path,
) -> Result<crate::scaler::Scaler, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let scaler_text = format!(
        r#"pool = "demo"
admin_url = "http://{admin}"
interval = "1s"
min = 1
max = 6
drain_timeout = "60s"
# Stopped by the demo itself, after the balancer has drained (see the end of run_autoscale).
stop_backends_on_exit = false
events_file = {events:?}

[source]
kind = "lb"
metrics_url = "http://{metrics}/metrics"
metric = "active_connections"

[policy]
kind = "target_tracking"
target = 10
scale_in_stabilization = "10s"

[actuator]
kind = "process"
command = "{} backend --port {{port}}"
ports = "28400-28499"
stop_grace = "2s"
"#,
        exe.display(),
        events = events.display().to_string(),
    );
    let scaler_cfg = crate::scaler::ScalerConfig::parse("scaler.toml", &scaler_text)?;
    crate::scaler::Scaler::new(scaler_cfg)
}

/// Runs the scaler on a thread of its own until the returned sender fires (or is dropped);
/// the thread hands the scaler back, so that its backends can be stopped last.
fn spawn_scaler(
    scaler: crate::scaler::Scaler,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<crate::scaler::Scaler>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(scaler.run(async {
            let _ = stop_rx.await;
        }))
    });
    (stop_tx, thread)
}

/// The staged load (`STAGES`), on a thread: holds as many connections as the stage wants,
/// each making a request now and then; when the stages are over it stops the demo as
/// Ctrl-C would.
fn spawn_load(listen: SocketAddr, load: Arc<Load>) {
    let total: u64 = STAGES.iter().map(|s| s.0).sum();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut conns: Vec<TcpStream> = Vec::new();
        let mut turn = 0u64;
        while !load.stop.load(Ordering::Relaxed) {
            if start.elapsed().as_secs() >= total {
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                break;
            }
            let want = load_at(start.elapsed().as_secs_f64());
            while conns.len() < want {
                match TcpStream::connect(listen) {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                        conns.push(c);
                    }
                    Err(_) => break,
                }
            }
            // The newest go last: the long-lived ones then sit on backends the scaler
            // launched late, which it drains with their connections live.
            if conns.len() > want {
                let extra = conns.len() - want;
                conns.drain(..extra);
            }
            // Every connection makes a request now and then: live, not just open.
            turn += 1;
            let mut buf = [0u8; 512];
            conns.retain_mut(|c| {
                if !turn.is_multiple_of(4) {
                    return true;
                }
                let ok = c.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n").is_ok()
                    && c.read(&mut buf).map(|n| n > 0).unwrap_or(false);
                if !ok {
                    load.cut.fetch_add(1, Ordering::Relaxed);
                }
                ok
            });
            load.open.store(conns.len(), Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    });
}

/// A progress line every 2 s: the load, and each backend's port, state and connections.
fn spawn_progress(shared: Arc<crate::snapshot::Shared>, load: Arc<Load>) {
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !load.stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_secs(2));
            let snap = shared.snapshot.load();
            let Some(p) = snap.pool("demo") else { continue };
            let mut parts = Vec::new();
            let (mut up, mut starting, mut draining) = (0, 0, 0);
            for b in &p.backends {
                match b.state() {
                    crate::backend::BackendState::Up => up += 1,
                    crate::backend::BackendState::Starting => starting += 1,
                    crate::backend::BackendState::Draining => draining += 1,
                    _ => {}
                }
                parts.push(format!(
                    "{}:{}={}",
                    b.addr.port(),
                    &b.state().as_str()[..1],
                    b.active()
                ));
            }
            say(&format!(
                "[{:>3}s] load {:>2} conns | backends {up} up, {starting} starting, {draining} draining | {}",
                start.elapsed().as_secs(),
                load.open.load(Ordering::Relaxed),
                parts.join(" ")
            ));
        }
    });
}

/// The summary, from the scaler's own events, and the timeline drawn from them.
fn summarize(events: &Path, timeline: &Path, cut: usize) {
    let list = std::fs::read_to_string(events)
        .map(|t| crate::scaler::plot::read_events(&t))
        .unwrap_or_default();
    let (mut outs, mut ins) = (0, 0);
    for w in list.windows(2) {
        if w[1].desired > w[0].desired {
            outs += 1;
        } else if w[1].desired < w[0].desired {
            ins += 1;
        }
    }
    let peak = list.iter().map(|e| e.in_service).max().unwrap_or(0);
    say(&format!(
        "\nSummary: {} evaluations, {outs} scale-outs and {ins} scale-ins, at most {peak} backends in service; connections cut: {cut}.",
        list.len(),
    ));
    match crate::scaler::plot::plot_file(events, timeline) {
        Ok(_) => say(&format!(
            "Timeline: {} (events: {})",
            timeline.display(),
            events.display()
        )),
        Err(e) => say(&format!("No timeline: {e}")),
    }
}
