//! The control plane: a small tokio runtime on its own thread running the health checks,
//! the admin API and the Prometheus endpoint.
//!
//! Owns: the [`state::State`] behind one mutex (held briefly, never across an await), starting
//! a health watch per backend (the loop itself is `health::background`), and the drains that
//! end in removal.
//! Must not touch: the data plane, except through the snapshot swap and backend atomics that
//! `State` publishes.

pub(crate) mod admin;
mod discovery;
pub(crate) mod rebalance;
pub mod state;
pub(crate) mod upgrade;
pub(crate) mod views;

use crate::backend::Backend;
use crate::health;
use state::State;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default time a removed backend's connections get to finish.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How often passive failures and drains are looked at.
const POLL: Duration = Duration::from_millis(100);

/// A handle on the control plane, cheap to clone.
#[derive(Clone)]
pub struct Control {
    state: Arc<Mutex<State>>,
    runtime: tokio::runtime::Handle,
    /// The admin and metrics servers, stopped when a successor takes their sockets.
    endpoints: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// When this process's control plane started (Unix seconds, and for uptime).
    pub started: (u64, Instant),
    /// Rebalancing of pools over their backends (ticked by its own loop).
    rebalancer: Arc<Mutex<rebalance::Rebalancer>>,
}

/// Listeners bound before anything starts, so a taken port fails the start cleanly.
pub struct Endpoints {
    pub metrics: Option<std::net::TcpListener>,
    pub admin: Option<(std::net::TcpListener, admin::Access)>,
}

impl Control {
    /// Stops serving the admin and metrics endpoints (a successor serves them now).
    pub fn stop_endpoints(&self) {
        for t in self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Starts the control thread: health checks for every member, and the endpoints.
    pub fn start(state: State, endpoints: Endpoints) -> Result<Control, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the control runtime: {e}"))?;
        let control = Control {
            state: Arc::new(Mutex::new(state)),
            runtime: runtime.handle().clone(),
            endpoints: Arc::new(Mutex::new(Vec::new())),
            started: (crate::backend::unix_now(), Instant::now()),
            rebalancer: Arc::new(Mutex::new(rebalance::Rebalancer::default())),
        };
        let c = control.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("ringlb-control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let members: Vec<Arc<Backend>> =
                        c.lock().members.values().flatten().cloned().collect();
                    for b in members {
                        c.watch(b);
                    }
                    // Always running (a reload may add named backends); idle, it only looks at
                    // the config every 100 ms.
                    tokio::spawn(c.clone().discovery_loop());
                    let shared = c.lock().shared.clone();
                    tokio::spawn(c.clone().rebalance_loop(shared.clone()));
                    let mut result = Ok(());
                    if let Some(l) = endpoints.metrics {
                        match serve(l, admin::metrics_router(shared.clone())) {
                            Ok(task) => {
                                c.endpoints
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(task);
                                // Histograms are drained into their buckets here, scraped or not.
                                tokio::spawn(async {
                                    loop {
                                        tokio::time::sleep(Duration::from_secs(5)).await;
                                        let _ = crate::metrics::upkeep();
                                    }
                                });
                            }
                            Err(e) => result = Err(e),
                        }
                    }
                    if let Some((l, access)) = endpoints.admin {
                        match serve(l, admin::router(c.clone(), access)) {
                            Ok(task) => c
                                .endpoints
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(task),
                            Err(e) => result = Err(e),
                        }
                    }
                    let _ = ready_tx.send(result);
                    std::future::pending::<()>().await
                })
            })
            .map_err(|e| format!("cannot start the control thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the control thread died".to_string())??;
        Ok(control)
    }

    /// Compares shares and grants rebalancing closes, every [`rebalance::PERIOD`].
    async fn rebalance_loop(self, shared: Arc<crate::snapshot::Shared>) {
        let mut every = tokio::time::interval(rebalance::PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let snapshot = shared.snapshot.load_full();
            self.rebalancer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tick(&snapshot.pools, Instant::now());
        }
    }

    /// Starts rebalancing `pool` now (see [`rebalance::Rebalancer::start`]); None: no
    /// such pool.
    pub fn rebalance_now(&self, pool: &str) -> Option<Vec<views::RebalanceShare>> {
        let shared = self.lock().shared.clone();
        let snapshot = shared.snapshot.load_full();
        let p = snapshot.pool(pool)?;
        Some(
            self.rebalancer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start(p, Instant::now()),
        )
    }

    /// While an upgrade hands the sockets over, changes are refused (503) rather than made
    /// where the successor, which has read the state file, would never see them. Taking the
    /// state's lock orders this after every change already under way: each one is on disk
    /// before the successor gets the sockets.
    pub fn hold_changes(&self, on: bool) {
        self.lock().handing_over = on;
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state itself is still whole
        // (every change is validated before it is applied), so carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts health-checking a backend until it is removed (see
    /// [`health::background`]): its settings are read from the snapshot at each probe, and
    /// a changed verdict goes to the state, which publishes it.
    pub fn watch(&self, backend: Arc<Backend>) {
        let c = self.clone();
        let shared = self.lock().shared.clone();
        let settings = move |b: &Backend| {
            shared
                .snapshot
                .load()
                .pool(&b.pool)
                .map(|p| p.health.clone())
        };
        let verdict = move |b: &Arc<Backend>, healthy: bool, reason: &str| {
            c.lock().health_changed(b, healthy, reason)
        };
        self.runtime
            .spawn(health::background::watch(backend, settings, verdict));
    }

    /// Drains `backend`, then takes it out of its pool once it has no connections or
    /// `timeout` has passed (its remaining connections are then closed), unless removal `d`
    /// is called off meanwhile (a reload lists it again, or a DELETE replaces it).
    pub fn remove_after_drain(
        &self,
        backend: Arc<Backend>,
        d: state::Departure,
        timeout: Duration,
    ) {
        let c = self.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            while backend.active() > 0 && started.elapsed() < timeout {
                if !c.lock().still_leaving(&backend, d) {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
            let mut s = c.lock();
            if !s.still_leaving(&backend, d) {
                return;
            }
            if backend.active() > 0 {
                tracing::warn!(pool = %backend.pool, backend = %backend.addr, connections = backend.active(), "drain timeout passed: closing the remaining connections");
            }
            s.finish_removal(&backend, d);
        });
    }

    /// Applies a config that has passed validation (see [`State::reload`]).
    pub fn apply(&self, config: crate::config::Config) -> Result<(), String> {
        // Fault injection for the test of the reload's last line of defence (debug only).
        #[cfg(debug_assertions)]
        if std::env::var_os("RINGLB_FAULT_RELOAD_PANIC").is_some() {
            panic!("injected fault: RINGLB_FAULT_RELOAD_PANIC");
        }
        let (joined, left) = self.lock().reload(config)?;
        for b in joined {
            self.watch(b);
        }
        for (b, d) in left {
            self.remove_after_drain(b, d, DEFAULT_DRAIN_TIMEOUT);
        }
        Ok(())
    }
}

/// Serves `router` on an already bound listener, on the current runtime.
fn serve(
    listener: std::net::TcpListener,
    router: axum::Router,
) -> Result<tokio::task::AbortHandle, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(task.abort_handle())
}
