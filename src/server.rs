//! `ringlb serve`: the balancer's lifetime from start to exit.
//!
//! Owns: the order of start-up (config → snapshot → bound listeners → running workers),
//! the signals (SIGHUP reloads; SIGTERM/SIGINT stop accepting and let connections finish up
//! to `shutdown_timeout`), and the reload rule: a broken or unsupported new config is
//! refused whole and the running one kept.
//! Must not touch: the event loop's internals; it talks to workers through `Shared` only.

use crate::backend::{Shared, Snapshot};
use crate::config::Config;
use crate::proxy;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A running balancer: its workers and what they share.
pub struct Server {
    pub shared: Arc<Shared>,
    config: Config,
    path: Option<PathBuf>,
    workers: Vec<std::thread::JoinHandle<()>>,
    signals: signal_hook::iterator::Signals,
}

impl Server {
    /// Binds and starts everything; returns once every worker accepts.
    pub fn start(config: Config, path: Option<PathBuf>) -> Result<Server, String> {
        // Handlers first: a SIGTERM that arrives the moment the listeners accept must drain,
        // not kill the process by the default action.
        let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        let limit = proxy::ring::sys::raise_nofile_limit();
        let workers = proxy::worker_count(&config);
        let shared = Shared::new(Snapshot::build(&config, None), workers);
        let handles = proxy::start(&config, shared.clone())?;
        for l in &config.listeners {
            tracing::info!(listener = %l.name.get_ref(), bind = %l.bind, pool = %l.pool.get_ref(), workers, "listening");
        }
        tracing::debug!(open_files_limit = limit, "started");
        Ok(Server {
            shared,
            config,
            path,
            workers: handles,
            signals,
        })
    }

    /// Re-reads the config file. Backends that stay keep their connections and counters.
    pub fn reload(&mut self) -> Result<(), String> {
        let path = self
            .path
            .as_ref()
            .ok_or("this balancer has no config file to reload")?;
        let new = Config::load(path).map_err(|e| e.to_string())?;
        let same_listeners = new.listeners.len() == self.config.listeners.len()
            && new
                .listeners
                .iter()
                .zip(&self.config.listeners)
                .all(|(a, b)| a.name.get_ref() == b.name.get_ref() && a.bind == b.bind);
        if !same_listeners {
            return Err(
                "listeners were added, removed or rebound: restart ringlb to apply that".into(),
            );
        }
        let old = self.shared.snapshot.load_full();
        self.shared
            .snapshot
            .store(Arc::new(Snapshot::build(&new, Some(&old))));
        self.config = new;
        Ok(())
    }

    /// Waits for signals until SIGTERM/SIGINT, then drains and returns.
    pub fn run_until_stopped(mut self) -> Result<(), String> {
        let mut signals = std::mem::replace(
            &mut self.signals,
            signal_hook::iterator::Signals::new([] as [i32; 0]).map_err(|e| e.to_string())?,
        );
        for sig in signals.forever() {
            if sig == SIGHUP {
                match self.reload() {
                    Ok(()) => tracing::info!("configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused; the running configuration stays")
                    }
                }
                continue;
            }
            break;
        }
        let timeout = self.config.shutdown_timeout.get();
        self.stop(timeout);
        Ok(())
    }

    /// Stops accepting and waits up to `timeout` for open connections to finish.
    pub fn stop(self, timeout: Duration) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        let open = self.shared.open_connections();
        tracing::info!(open_connections = open, timeout = ?timeout, "stopping: no new connections; waiting for open ones");
        let deadline = Instant::now() + timeout;
        while !self.workers.iter().all(|h| h.is_finished()) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    open_connections = self.shared.open_connections(),
                    "shutdown_timeout passed: closing the rest"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!("stopped");
    }
}

/// `ringlb serve --config FILE`: returns the process exit code.
pub fn serve(path: &Path) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlb: config error: {e}");
            return 1;
        }
    };
    match Server::start(config, Some(path.to_path_buf())).and_then(|s| s.run_until_stopped()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringlb: {e}");
            1
        }
    }
}
