//! `ringlb serve`: the balancer's lifetime from start to exit.
//!
//! Owns: the order of start-up (config → snapshot → bound listeners → running workers),
//! the signals (SIGHUP reloads; SIGTERM/SIGINT stop accepting and let connections finish up
//! to `shutdown_timeout`), and the reload rule: a broken or unsupported new config is
//! refused whole and the running one kept.
//! Must not touch: the event loop's internals; it talks to workers through `Shared` only.

use crate::config::Config;
use crate::control::state::State;
use crate::control::{Control, Endpoints};
use crate::proxy;
use crate::snapshot::Shared;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A running balancer: its workers, its control plane, and what they share.
pub struct Server {
    pub shared: Arc<Shared>,
    pub control: Control,
    shutdown_timeout: Duration,
    path: Option<PathBuf>,
    workers: Vec<std::thread::JoinHandle<()>>,
    signals: signal_hook::iterator::Signals,
    /// The access log's logger thread, once some listener logs.
    access_log: Option<std::thread::JoinHandle<()>>,
    /// Offers this process's sockets to a successor (`ringlb serve --upgrade`).
    handover: Option<crate::control::upgrade::Handover>,
}

/// Binds a control-plane endpoint (before anything starts, so a taken port fails the start).
fn bind_endpoint(what: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot bind the {what} endpoint on {addr}: {e}"))
}

impl Server {
    /// Binds and starts everything; returns once every worker accepts and the control
    /// plane serves.
    pub fn start(config: Config, path: Option<PathBuf>) -> Result<Server, String> {
        Self::start_with(config, path, false)
    }

    /// [`Server::start`], or with `upgrade`, taking the listening sockets (and the admin and
    /// metrics endpoints) from the process running on `upgrade_socket`, which then stops.
    pub fn start_with(
        config: Config,
        path: Option<PathBuf>,
        upgrade: bool,
    ) -> Result<Server, String> {
        let mut inherited = if upgrade {
            let at = config.upgrade_socket().ok_or(
                "--upgrade needs an upgrade_socket (or a state_file, whose directory holds it)",
            )?;
            crate::control::upgrade::receive(&at)?
        } else {
            crate::control::upgrade::Inherited::default()
        };
        // Handlers first: a SIGTERM that arrives the moment the listeners accept must drain,
        // not kill the process by the default action.
        let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        let limit = crate::sys::raise_nofile_limit();
        let endpoints = bind_endpoints(&config, &mut inherited)?;
        if endpoints.metrics.is_some() {
            // Only with an endpoint: without scrapes or upkeep, histogram samples would pile up.
            crate::metrics::install()?;
        }
        let workers = crate::cpus::worker_count(config.workers.get());
        let shutdown_timeout = config.shutdown_timeout.get();
        let mut state = State::new(config.clone(), workers)?;
        // A successor takes no admin change until it has told the old process that it
        // accepts: should it fail before that, the old one carries on, and a change this
        // one had acknowledged would be in the state file but not in the old one's state.
        state.handing_over = upgrade;
        let shared = state.shared.clone();
        shared.set_descriptor_limit(limit);
        let access_log = start_access_log(config.logs_access(), &shared, workers);
        // The control plane first: once the workers accept, every descriptor may go to
        // clients (the budget keeps only a reserve), and under a low open-file limit a burst
        // of clients could leave the control runtime none to start with.
        // Duplicates of the endpoints, for a successor (see `control/upgrade.rs`).
        let dup = |l: &Option<std::net::TcpListener>| {
            l.as_ref()
                .and_then(|l| l.try_clone().ok())
                .map(std::os::fd::OwnedFd::from)
        };
        let (admin_dup, metrics_dup) = (
            dup(&endpoints
                .admin
                .as_ref()
                .map(|(l, _)| l.try_clone())
                .and_then(|r| r.ok())),
            dup(&endpoints.metrics),
        );
        let control = Control::start(state, endpoints)?;
        let inherited_listeners = std::mem::take(&mut inherited.listeners);
        let (handles, offer) = match proxy::start(&config, shared.clone(), inherited_listeners) {
            Ok(h) => h,
            Err(e) => {
                shared.stopping.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        shared.ready.store(true, Ordering::Relaxed);
        let handover = offer_handover(&config, &control, offer, admin_dup, metrics_dup);
        // This process accepts, and offers its own sockets to a successor (its handover
        // socket is bound first, so that the old process never sees a moment without one):
        // the one it replaces may stop.
        if let Err(e) = inherited.ready() {
            // The old process is gone (it crashed, or was killed, after it sent its sockets):
            // this one accepts on them already, so it serves on rather than leave no one.
            tracing::warn!(error = %e, "upgrade: serving on the inherited sockets");
        }
        control.hold_changes(false);
        log_started(&config, workers, limit);
        // Every worker's listener accepts and the control plane serves: tell systemd.
        crate::notify::notify("READY=1\nSTATUS=listening");
        Ok(Server {
            handover,
            access_log,
            shared,
            control,
            shutdown_timeout,
            path,
            workers: handles,
            signals,
        })
    }

    /// Re-reads the config file. Backends that stay keep their connections and counters.
    /// The file is read and validated once (the same validation as `ringlb check`); a file
    /// that fails it, or a panic while applying it, refuses the reload and keeps the running
    /// configuration. Either way the outcome is counted for `/metrics`.
    pub fn reload(&mut self) -> Result<(), String> {
        let result = self.try_reload();
        self.shared.reloads.record(result.is_ok());
        result
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let path = self
            .path
            .as_ref()
            .ok_or("this balancer has no config file to reload")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let shutdown_timeout = config.shutdown_timeout.get();
        let logs = config.logs_access();
        let control = self.control.clone();
        // The last line of defence, not the first: validation is total, so this should never
        // catch anything. If applying does panic, the reload is refused instead of the panic
        // unwinding through the signal loop and taking every connection with it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| control.apply(config))).map_err(
            |p| {
                format!(
                    "applying the new configuration panicked: {}",
                    proxy::panic_text(&*p)
                )
            },
        )??;
        self.shutdown_timeout = shutdown_timeout;
        if self.access_log.is_none() {
            self.access_log = start_access_log(logs, &self.shared, self.workers.len());
        }
        Ok(())
    }

    /// Waits for signals until SIGTERM/SIGINT, then drains and returns.
    pub fn run_until_stopped(mut self) -> Result<(), String> {
        self.wait_for_stop()?;
        let timeout = self.shutdown_timeout;
        self.stop(timeout);
        Ok(())
    }

    /// The graceful stop budget now in force (`shutdown_timeout`, reloadable).
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// Handles SIGHUP (reloads) until SIGTERM or SIGINT arrives; returns without stopping
    /// anything, so that a caller can stop what it runs beside the balancer first.
    pub fn wait_for_stop(&mut self) -> Result<(), String> {
        let mut signals = std::mem::replace(
            &mut self.signals,
            signal_hook::iterator::Signals::new([] as [i32; 0]).map_err(|e| e.to_string())?,
        );
        for sig in signals.forever() {
            if sig == SIGUSR1 {
                // logrotate: reopen the access-log files.
                if let Some(q) = self.shared.access_log.get() {
                    q.reopen.store(true, Ordering::Relaxed);
                }
                continue;
            }
            if sig == SIGHUP {
                if let Some(q) = self.shared.access_log.get() {
                    q.reopen.store(true, Ordering::Relaxed);
                }
                crate::notify::notify("RELOADING=1");
                match self.reload() {
                    Ok(()) => tracing::info!("configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused; the running configuration stays")
                    }
                }
                crate::notify::notify("READY=1");
                continue;
            }
            break;
        }
        Ok(())
    }

    /// Stops accepting and waits up to `timeout` for open connections to finish.
    pub fn stop(self, timeout: Duration) {
        crate::notify::notify("STOPPING=1");
        if let Some(h) = &self.handover {
            // Our duplicates of the listening sockets: closed, so that once the workers
            // close theirs nothing is left listening here (a successor has its own).
            h.close();
        }
        self.shared.stopping.store(true, Ordering::Relaxed);
        let open = self.shared.open_connections();
        tracing::info!(open_connections = open, timeout = ?timeout, "stopping: no new connections; waiting for open ones");
        let started = Instant::now();
        while !self.workers.iter().all(|h| h.is_finished()) {
            if started.elapsed() >= timeout {
                tracing::warn!(
                    open_connections = self.shared.open_connections(),
                    "shutdown_timeout passed: closing the rest"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(q) = self.shared.access_log.get() {
            // The logger writes what the workers left in the queues, then ends; a stalled
            // destination (a full pipe) gets 2 s, not the power to hold the stop.
            q.stop.store(true, Ordering::Relaxed);
            let waited = Instant::now();
            while !q.finished.load(Ordering::Relaxed) && waited.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        tracing::info!("stopped");
    }
}

/// Starts the access log's logger thread if some listener logs and it is not running yet.
fn start_access_log(
    wanted: bool,
    shared: &Arc<Shared>,
    workers: usize,
) -> Option<std::thread::JoinHandle<()>> {
    if !wanted || shared.access_log.get().is_some() {
        return None;
    }
    let q = crate::accesslog::Queues::new(workers);
    let _ = shared.access_log.set(q.clone());
    Some(crate::accesslog::start(q))
}

/// The metrics and admin endpoints: the sockets a predecessor handed over, else bound now
/// (a taken port fails the start cleanly), with the admin API's access rules.
fn bind_endpoints(
    config: &Config,
    inherited: &mut crate::control::upgrade::Inherited,
) -> Result<Endpoints, String> {
    let token = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(f) => Some(crate::config::read_token(f).map_err(|e| format!("admin.token_file {e}"))?),
        None => None,
    };
    Ok(Endpoints {
        metrics: config
            .metrics
            .as_ref()
            .map(|m| match inherited.metrics.take() {
                Some(fd) => Ok(std::net::TcpListener::from(fd)),
                None => bind_endpoint("metrics", m.listen),
            })
            .transpose()?,
        admin: config
            .admin
            .as_ref()
            .map(|a| {
                match inherited.admin.take() {
                    Some(fd) => Ok(std::net::TcpListener::from(fd)),
                    None => bind_endpoint("admin", a.listen),
                }
                .map(|l| {
                    (
                        l,
                        crate::control::admin::Access {
                            token,
                            acl: a.acl(),
                        },
                    )
                })
            })
            .transpose()?,
    })
}

/// Offers this process's sockets to a successor (`ringlb serve --upgrade`) on the upgrade
/// socket, if there is one; a failure to offer is a warning, not a failed start.
fn offer_handover(
    config: &Config,
    control: &Control,
    offer: proxy::Offered,
    admin_dup: Option<std::os::fd::OwnedFd>,
    metrics_dup: Option<std::os::fd::OwnedFd>,
) -> Option<crate::control::upgrade::Handover> {
    match config.upgrade_socket() {
        Some(at) => {
            let (c, h) = (control.clone(), control.clone());
            let offer = crate::control::upgrade::Offer {
                listeners: offer,
                admin: admin_dup,
                metrics: metrics_dup,
            };
            match crate::control::upgrade::Handover::start(
                &at,
                offer,
                move |on| h.hold_changes(on),
                move || c.stop_endpoints(),
            ) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "no zero-downtime upgrade for this process");
                    None
                }
            }
        }
        None => None,
    }
}

/// What a started balancer says once: its listeners, endpoints and an insecure admin API.
fn log_started(config: &Config, workers: usize, open_files_limit: u64) {
    if let Some(a) = config.admin.as_ref().filter(|a| a.insecure_no_token) {
        tracing::warn!(listen = %a.listen, "[admin] insecure_no_token: the admin API takes requests from anyone who can reach it, without a token");
    }
    for l in &config.listeners {
        let pool = l
            .pool
            .as_ref()
            .map(|p| p.get_ref().as_str())
            .unwrap_or("(routes)");
        tracing::info!(listener = %l.name.get_ref(), bind = %l.bind, %pool, workers, "listening");
    }
    if let Some(m) = &config.metrics {
        tracing::info!(url = %format!("http://{}/metrics", m.listen), "metrics");
    }
    if let Some(a) = &config.admin {
        tracing::info!(url = %format!("http://{}/backends", a.listen), "admin API");
    }
    tracing::debug!(open_files_limit, "started");
}

/// `ringlb serve --config FILE`: returns the process exit code.
pub fn serve(path: &Path, upgrade: bool) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlb: config error: {e}");
            return 1;
        }
    };
    match Server::start_with(config, Some(path.to_path_buf()), upgrade)
        .and_then(|s| s.run_until_stopped())
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringlb: {e}");
            1
        }
    }
}
