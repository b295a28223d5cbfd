//! The data plane: worker threads, each with its own io_uring ring and listening sockets.
//!
//! Owns: binding the SO_REUSEPORT listeners (before any thread starts, so a bad bind fails
//! the start cleanly) and starting one [`worker::Worker`] per core.
//! Must not touch: HTTP, health checks or the scaler; it reads the shared snapshot and writes
//! the shared counters, nothing else.

mod accept;
mod bufqueue;
pub mod clienthello;
mod close;
pub mod conn;
mod connect;
mod inspect;
pub mod preflight;
mod relay;
pub mod ring;
pub mod sys;
mod table;
pub mod worker;

use crate::config::Config;
use crate::snapshot::{Shared, Snapshot};
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How many workers a config asks for (0 = one per CPU this process may use).
pub fn worker_count(cfg: &Config) -> usize {
    if cfg.workers.get() > 0 {
        cfg.workers.get() as usize
    } else {
        sys::allowed_cpus().len().max(1)
    }
}

/// Binds one listening socket per listener for one worker.
fn bind(snapshot: &Snapshot) -> Result<Vec<Socket>, String> {
    snapshot
        .listeners
        .iter()
        .map(|l| {
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
            s.bind(&l.bind.into()).map_err(|e| err("bind", e))?;
            s.listen(l.backlog.min(i32::MAX as u32) as i32)
                .map_err(|e| err("listen on", e))?;
            Ok(s)
        })
        .collect()
}

/// Binds every worker's listeners, starts the workers, and returns once each has its ring
/// running (or the first error).
pub fn start(cfg: &Config, shared: Arc<Shared>) -> Result<Vec<JoinHandle<()>>, String> {
    let n = worker_count(cfg);
    let snapshot = shared.snapshot.load_full();
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(bind(&snapshot)?);
    }
    let doorbells = (0..n)
        .map(|_| sys::eventfd())
        .collect::<Result<Box<[_]>, _>>()
        .map_err(|e| format!("cannot create the workers' eventfds: {e}"))?;
    let _ = shared.doorbells.set(doorbells);
    let cpus = sys::allowed_cpus();
    let (count, size) = (
        *cfg.buffer_count.get_ref() as u16,
        *cfg.buffer_size.get_ref(),
    );
    let pin = cfg.pin_workers;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(n);
    for (id, socks) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let shared_for_exit = shared.clone();
        let tx = tx.clone();
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
                // A worker that ends before a stop was asked for leaves a balancer that cannot
                // serve what its listener takes: end the process, loudly, so that a
                // supervisor restarts it, rather than limp on.
                let stopping = shared_for_exit.clone();
                let why =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())) {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => format!("its ring failed: {e}"),
                        Err(p) => format!("it panicked: {}", crate::server::panic_text(&*p)),
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
    Ok(handles)
}
