//! The data plane: worker threads, each with its own io_uring ring and listening sockets.
//!
//! Owns: binding the SO_REUSEPORT listeners (before any thread starts, so a bad bind fails
//! the start cleanly) and starting one [`worker::Worker`] per core.
//! Must not touch: HTTP, health checks or the scaler; it reads the shared snapshot and writes
//! the shared counters, nothing else.

mod accept;
mod accept_proxy;
mod bufqueue;
pub mod clienthello;
mod close;
pub mod conn;
mod connect;
mod event_loop;
mod inspect;
mod op;
pub mod preflight;
mod queue;
mod relay;
pub mod ring;
mod table;
mod tick;
mod waiters;
pub(crate) mod worker;

use crate::config::Config;
use crate::snapshot::{Shared, Snapshot};
use crate::sys;
pub use accept_proxy::ProxyHeaderError;
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Duplicates of every listening socket, by listener: what a process offers its successor.
pub type Offered = Vec<(String, Vec<std::os::fd::OwnedFd>)>;

/// Listening sockets an upgrade inherited, by listener name (see `control/upgrade.rs`).
pub type Inherited = std::collections::BTreeMap<String, Vec<std::os::fd::OwnedFd>>;

/// One listening socket per listener for one worker: an inherited one where there is one
/// (checked to be bound where the config says), else a new SO_REUSEPORT socket.
fn bind(snapshot: &Snapshot, inherited: &mut Inherited) -> Result<Vec<(usize, Socket)>, String> {
    snapshot
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if let Some(fd) = inherited.get_mut(&l.name).and_then(|v| v.pop()) {
                return adopt(l, fd).map(|s| (i, s));
            }
            bind_one(l).map(|s| (i, s))
        })
        .collect()
}

/// An inherited listening socket, if it is bound where listener `l` is.
fn adopt(l: &crate::snapshot::Listener, fd: std::os::fd::OwnedFd) -> Result<Socket, String> {
    let s = Socket::from(fd);
    let at = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| format!("listener {:?}: the inherited socket has no address", l.name))?;
    if at != l.bind {
        return Err(format!(
            "listener {:?}: the inherited socket is bound to {at}, the config says {}: an upgrade keeps the listeners' addresses",
            l.name, l.bind
        ));
    }
    // The successor's keepalive applies to what it accepts from now on.
    set_keepalive(&s, l).map_err(|e| {
        format!(
            "listener {:?}: cannot set TCP keepalive on the inherited socket: {e}",
            l.name
        )
    })?;
    Ok(s)
}

/// The listener's TCP keepalive, on its listening socket: accepted sockets inherit it, so it
/// costs nothing per connection.
fn set_keepalive(s: &Socket, l: &crate::snapshot::Listener) -> std::io::Result<()> {
    let Some(k) = l.tcp_keepalive else {
        return Ok(());
    };
    let secs = |s: u32| std::time::Duration::from_secs(s as u64);
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.idle {
        ka = ka.with_time(secs(t));
    }
    if let Some(t) = k.interval {
        ka = ka.with_interval(secs(t));
    }
    if let Some(n) = k.count {
        ka = ka.with_retries(n);
    }
    s.set_tcp_keepalive(&ka)
}

fn bind_one(l: &crate::snapshot::Listener) -> Result<Socket, String> {
    let err = |what: &str, e: std::io::Error| {
        format!("listener {:?}: cannot {what} {}: {e}", l.name, l.bind)
    };
    let s = Socket::new(
        Domain::for_address(l.bind),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|e| err("create a socket for", e))?;
    s.set_reuse_address(true)
        .map_err(|e| err("set SO_REUSEADDR on", e))?;
    s.set_reuse_port(true)
        .map_err(|e| err("set SO_REUSEPORT on", e))?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
    s.set_tcp_nodelay(true)
        .map_err(|e| err("set TCP_NODELAY on", e))?;
    if let Some(cc) = &l.tcp_congestion {
        s.set_tcp_congestion(cc.as_bytes())
            .map_err(|e| err(&format!("set TCP_CONGESTION {cc:?} on"), e))?;
    }
    set_keepalive(&s, l).map_err(|e| err("set TCP keepalive on", e))?;
    s.bind(&l.bind.into()).map_err(|e| err("bind", e))?;
    s.listen(l.backlog.min(i32::MAX as u32) as i32)
        .map_err(|e| err("listen on", e))?;
    Ok(s)
}

/// Binds every worker's listeners, starts the workers, and returns once each has its ring
/// running (or the first error).
///
/// `inherited`: listening sockets from an upgrade, used before any is bound; those left
/// over (the old process had more workers) go to the workers in turn, so that nothing
/// queued on them waits for ever. Returns the workers and a duplicate of every listening
/// socket by listener (what this process offers its own successor).
pub fn start(
    cfg: &Config,
    shared: Arc<Shared>,
    mut inherited: Inherited,
) -> Result<(Vec<JoinHandle<()>>, Offered), String> {
    let n = crate::cpus::worker_count(cfg.workers.get());
    let snapshot = shared.snapshot.load_full();
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(bind(&snapshot, &mut inherited)?);
    }
    for (name, rest) in inherited.iter_mut() {
        let Some(i) = snapshot.listeners.iter().position(|l| &l.name == name) else {
            if !rest.is_empty() {
                tracing::warn!(listener = %name, "upgrade: the old process had a listener this config does not; its sockets are closed");
            }
            continue;
        };
        for (k, fd) in rest.drain(..).enumerate() {
            let s = adopt(&snapshot.listeners[i], fd)?;
            sockets[k % n].push((i, s));
        }
    }
    let mut offer: Offered = snapshot
        .listeners
        .iter()
        .map(|l| (l.name.clone(), Vec::new()))
        .collect();
    for socks in &sockets {
        for (i, s) in socks {
            let dup = s
                .try_clone()
                .map_err(|e| format!("cannot duplicate a listening socket: {e}"))?;
            offer[*i].1.push(dup.into());
        }
    }
    let doorbells = (0..n)
        .map(|_| sys::eventfd())
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|e| format!("cannot create the workers' eventfds: {e}"))?;
    let _ = shared.doorbells.set(doorbells);
    let cpus = sys::allowed_cpus();
    let (count, size) = cfg.relay_buffers(preflight::incremental_buffers());
    let pin = cfg.pin_workers;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(n);
    // No worker accepts before every worker has its ring: under a low open-file limit the
    // first worker's clients could otherwise take the descriptors a later ring needs, and
    // the start would fail with EMFILE (seen with 48 descriptors and 2 workers).
    let mut go = Vec::with_capacity(n);
    for (id, socks) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let shared_for_exit = shared.clone();
        let tx = tx.clone();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        go.push(go_tx);
        let cpu = if pin && !cpus.is_empty() {
            Some(cpus[id % cpus.len()])
        } else {
            None
        };
        let h = std::thread::Builder::new()
            .name(format!("ringlb-w{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(e) = sys::pin_to_cpu(cpu)
                {
                    tracing::warn!(worker = id, cpu, error = %e, "cannot pin worker");
                }
                let worker = match worker::Worker::new(id, shared, socks, count, size) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = tx.send(Err(format!("worker {id}: {}", preflight::explain(&e))));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                if go_rx.recv().is_err() {
                    // Another worker could not start: the process is not starting.
                    return;
                }
                // A worker that ends before a stop was asked for leaves a balancer that cannot
                // serve what its listener takes: end the process, loudly, so that a
                // supervisor restarts it, rather than limp on.
                let stopping = shared_for_exit.clone();
                let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    event_loop::run(worker)
                })) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("its ring failed: {e}"),
                    Err(p) => format!("it panicked: {}", panic_text(&*p)),
                };
                if !stopping.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(worker = id, "worker {id} stopped, {why}; exiting (code 70)");
                    eprintln!("ringlb: worker {id} stopped, {why}; exiting");
                    std::process::exit(70);
                }
                tracing::error!(worker = id, "worker {id} stopped while stopping: {why}");
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        handles.push(h);
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => return Err("a worker died while starting".into()),
        }
    }
    for g in go {
        let _ = g.send(());
    }
    Ok((handles, offer))
}

/// What a caught panic said.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
