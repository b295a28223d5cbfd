//! Backends, pools and the snapshot the workers read.
//!
//! Owns: [`Backend`] (an address plus cache-padded atomics that every worker shares: state,
//! active connections, counters), [`Pool`] (backends + the balancer built over them),
//! [`Snapshot`] (all pools and listeners, immutable, swapped whole through arc-swap) and
//! [`Shared`] (what the control plane and the workers hold in common).
//! Must not touch: sockets or io_uring. Changing membership or weights means building a new
//! snapshot; changing a backend's state is one atomic store that workers see at once.

use crate::balance::{self, Balancer};
use crate::config::{Algorithm, Config, HashKey, ProxyProtocol};
use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Where a backend stands. Only `Up` is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Healthy: takes new connections.
    Up = 0,
    /// Health checks failed: no new connections; existing ones continue.
    Down = 1,
    /// Being drained: no new connections; existing ones continue until they end.
    Draining = 2,
    /// Added at runtime, waiting for `rise` passing checks.
    Starting = 3,
}

impl BackendState {
    fn from_u8(v: u8) -> BackendState {
        match v {
            0 => BackendState::Up,
            1 => BackendState::Down,
            2 => BackendState::Draining,
            _ => BackendState::Starting,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Draining => "draining",
            BackendState::Starting => "starting",
        }
    }
    pub const ALL: [BackendState; 4] = [
        BackendState::Up,
        BackendState::Down,
        BackendState::Draining,
        BackendState::Starting,
    ];
}

/// Why a connect to a backend failed (a label of `ringlb_backend_connect_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    Refused = 0,
    Timeout = 1,
    Other = 2,
}

/// Counters of one backend, written by every worker. Kept apart from the read-mostly fields
/// and padded so that two backends' counters never share a cache line.
#[derive(Default)]
pub struct BackendStats {
    /// Connections open now (or being connected): least_conn reads this.
    pub active: AtomicI64,
    /// Connections handed to this backend (connect attempts).
    pub connections: AtomicU64,
    /// Connect failures by [`ConnectError`].
    pub connect_errors: [AtomicU64; 3],
    /// Bytes relayed: `[to_backend, to_client]`, folded in every few KiB and at close.
    pub bytes: [AtomicU64; 2],
    /// Connect failures in a row seen by the data plane (passive health); reset on success.
    pub failures_in_row: AtomicU32,
}

/// One backend server. Shared by all snapshots that list it, so its counters survive
/// reloads and runtime changes.
pub struct Backend {
    pub pool: String,
    pub addr: SocketAddr,
    /// The address in the kernel's form, kept here so that an in-flight io_uring connect
    /// can point at it for as long as the connection holds this `Arc<Backend>`.
    pub sockaddr: socket2::SockAddr,
    weight: AtomicU32,
    state: AtomicU8,
    /// Removed from its pool: workers close the connections it still has.
    removed: AtomicBool,
    /// The health checks' last verdict, kept while the state says draining, so that undoing
    /// a drain restores what the checks see.
    healthy: AtomicBool,
    /// Scale-in protection asked for through the admin API: until this Unix time (seconds;
    /// 0 = none). Read by the scaler through `GET /backends`; routing ignores it.
    protected_until: AtomicU64,
    pub stats: CachePadded<BackendStats>,
}

impl Backend {
    pub fn new(pool: &str, addr: SocketAddr, weight: u32, state: BackendState) -> Backend {
        Backend {
            pool: pool.to_string(),
            addr,
            sockaddr: socket2::SockAddr::from(addr),
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            removed: AtomicBool::new(false),
            healthy: AtomicBool::new(state == BackendState::Up),
            protected_until: AtomicU64::new(0),
            stats: CachePadded::new(BackendStats::default()),
        }
    }
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }
    pub fn set_state(&self, s: BackendState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    /// Up, so it may take new connections.
    #[inline]
    pub fn is_routable(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BackendState::Up as u8
    }
    /// Marks the backend as gone from its pool; workers close what it still carries.
    pub fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }
    #[inline]
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
    /// Protected from scale-in until this Unix time (0: not protected).
    pub fn set_protected_until(&self, t: u64) {
        self.protected_until.store(t, Ordering::Relaxed);
    }
    /// Seconds of scale-in protection left, if any.
    pub fn protection_left(&self) -> Option<u64> {
        let until = self.protected_until.load(Ordering::Relaxed);
        let now = unix_now();
        (until > now).then(|| until - now)
    }
    pub fn set_healthy(&self, v: bool) {
        self.healthy.store(v, Ordering::Relaxed);
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed);
    }
    #[inline]
    pub fn active(&self) -> i64 {
        self.stats.active.load(Ordering::Relaxed)
    }
}

/// A set of backends and the balancer built over them. Immutable: a change builds a new one.
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub backends: Vec<Arc<Backend>>,
    pub balancer: Box<dyn Balancer>,
    /// The settings it was built from, to build it again after a change.
    pub settings: crate::config::PoolConfig,
    /// Cached handle for `ringlb_backend_connect_duration_seconds`.
    pub connect_duration: metrics::Histogram,
}

impl Pool {
    /// Builds a pool over `backends`, with the balancer that `algorithm` names. The balancer
    /// spreads over the backends that are up now (all of them if none is): a snapshot is
    /// rebuilt whenever a backend changes state, so weights stay exact among the routable.
    pub fn new(name: &str, cfg: &crate::config::PoolConfig, backends: Vec<Arc<Backend>>) -> Pool {
        let balancer = balance::build(cfg, &backends);
        Pool {
            name: name.to_string(),
            algorithm: cfg.algorithm,
            hash_key: cfg.hash_key,
            backends,
            balancer,
            settings: cfg.clone(),
            connect_duration: metrics::histogram!("ringlb_backend_connect_duration_seconds", "pool" => name.to_string()),
        }
    }

    /// Congestion control for backend sockets (None: the system default, no setsockopt).
    pub fn tcp_congestion(&self) -> Option<&str> {
        self.settings
            .tcp_congestion
            .as_ref()
            .map(|c| c.get_ref().as_str())
    }

    /// Whether picking needs the client's address (hash-based algorithms).
    pub fn needs_client_key(&self) -> bool {
        matches!(self.algorithm, Algorithm::RingHash | Algorithm::Maglev)
    }
}

/// Counters of one listener, shared by its workers and kept across reloads.
#[derive(Default)]
pub struct ListenerStats {
    pub connections: AtomicU64,
    pub active: AtomicI64,
    pub no_backend: AtomicU64,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected: AtomicU64,
}

/// A listener's settings as the workers use them.
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub backlog: u32,
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    pub proxy_protocol: ProxyProtocol,
    /// Congestion control set on the listening socket (accepted sockets inherit it).
    pub tcp_congestion: Option<String>,
    pub stats: Arc<CachePadded<ListenerStats>>,
    /// Cached handle: recording is a few atomic adds, no label lookup.
    pub connection_duration: metrics::Histogram,
}

/// Everything the workers route by, swapped whole.
pub struct Snapshot {
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<Arc<Listener>>,
    /// How long a worker spins for completions before sleeping (`busy_poll`; reloadable).
    pub busy_poll: Duration,
}

/// Backends per pool name: who is a member right now (draining ones included).
pub type Members = BTreeMap<String, Vec<Arc<Backend>>>;

impl Snapshot {
    /// The members a config names, reusing `prev`'s `Backend`s (same `Arc`) where the config
    /// still names them, so their counters and connections carry on.
    pub fn members_from_config(cfg: &Config, prev: Option<&Snapshot>) -> Members {
        cfg.pools
            .iter()
            .map(|(name, pc)| {
                let old = prev.and_then(|p| p.pool(name));
                let backends = pc
                    .backends
                    .get_ref()
                    .iter()
                    .map(|bc| {
                        let w = *bc.weight.get_ref();
                        match old.and_then(|o| o.backends.iter().find(|b| b.addr == bc.addr)) {
                            Some(b) => {
                                b.set_weight(w);
                                b.clone()
                            }
                            None => Arc::new(Backend::new(name, bc.addr, w, BackendState::Up)),
                        }
                    })
                    .collect();
                (name.clone(), backends)
            })
            .collect()
    }

    /// A snapshot of a config alone (no runtime changes).
    pub fn build(cfg: &Config, prev: Option<&Snapshot>) -> Snapshot {
        Snapshot::assemble(cfg, &Snapshot::members_from_config(cfg, prev), prev)
    }

    /// A snapshot of `cfg`'s listeners and pool settings over `members`. Listener counters of
    /// `prev` carry on.
    pub fn assemble(cfg: &Config, members: &Members, prev: Option<&Snapshot>) -> Snapshot {
        let pools: Vec<Arc<Pool>> = cfg
            .pools
            .iter()
            .map(|(name, pc)| {
                Arc::new(Pool::new(
                    name,
                    pc,
                    members.get(name).cloned().unwrap_or_default(),
                ))
            })
            .collect();
        let listeners = cfg
            .listeners
            .iter()
            .map(|lc| {
                let name = lc.name.get_ref().clone();
                let stats = prev
                    .and_then(|p| p.listeners.iter().find(|l| l.name == name))
                    .map(|l| l.stats.clone())
                    .unwrap_or_default();
                Arc::new(Listener {
                    pool: pools.iter().position(|p| &p.name == lc.pool.get_ref()).unwrap_or(0),
                    connection_duration: metrics::histogram!("ringlb_connection_duration_seconds", "listener" => name.clone()),
                    name,
                    bind: lc.bind,
                    backlog: lc.backlog.get(),
                    connect_timeout: lc.connect_timeout.get(),
                    retries: *lc.retries.get_ref(),
                    idle_timeout: lc.idle_timeout.get(),
                    max_connections: lc.max_connections,
                    proxy_protocol: lc.proxy_protocol,
                    tcp_congestion: lc.tcp_congestion.as_ref().map(|c| c.get_ref().clone()),
                    stats,
                })
            })
            .collect();
        Snapshot {
            pools,
            listeners,
            busy_poll: cfg.busy_poll.get(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// What the control plane and the workers hold in common.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Set on SIGTERM/SIGINT: workers stop accepting and finish their connections.
    pub stopping: AtomicBool,
    /// Connections each worker holds, for the shutdown wait.
    pub worker_connections: Vec<CachePadded<AtomicI64>>,
    /// Most connections the process can hold with its open-file limit (two descriptors
    /// each, some kept for everything else), like HAProxy's maxconn derived from ulimit -n.
    pub connection_budget: AtomicI64,
    /// How the last reload went (for `/metrics`).
    pub reloads: ReloadStatus,
    /// Recvs that ended because the worker's buffer ring was empty (parked until buffers
    /// come back).
    pub buffer_ring_exhausted: AtomicU64,
    /// Relay directions found unarmed by the tick's check and re-armed (a bug if ever > 0).
    pub relay_repairs: AtomicU64,
}

/// The outcome of the last reload, as Prometheus' own `_config_last_reload_*` series put it.
pub struct ReloadStatus {
    /// 1 if the last reload applied (or none was tried).
    pub last_successful: AtomicBool,
    /// When the configuration in force was loaded (start, or the last good reload), in
    /// seconds since the epoch.
    pub last_success_time: AtomicU64,
    pub failures: AtomicU64,
    pub successes: AtomicU64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ReloadStatus {
    pub fn record(&self, ok: bool) {
        self.last_successful.store(ok, Ordering::Relaxed);
        if ok {
            self.last_success_time.store(unix_now(), Ordering::Relaxed);
            self.successes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    pub fn new(snapshot: Snapshot, workers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stopping: AtomicBool::new(false),
            worker_connections: (0..workers)
                .map(|_| CachePadded::new(AtomicI64::new(0)))
                .collect(),
            connection_budget: AtomicI64::new(i64::MAX),
            buffer_ring_exhausted: AtomicU64::new(0),
            relay_repairs: AtomicU64::new(0),
            reloads: ReloadStatus {
                last_successful: AtomicBool::new(true),
                last_success_time: AtomicU64::new(unix_now()),
                failures: AtomicU64::new(0),
                successes: AtomicU64::new(0),
            },
        })
    }

    /// Sets the connection budget from the open-file limit: (limit - reserve) / 2.
    pub fn set_descriptor_limit(&self, limit: u64) {
        let reserve = (limit / 4).min(256);
        let budget = (limit.saturating_sub(reserve) / 2).max(1);
        self.connection_budget
            .store(budget.min(i64::MAX as u64) as i64, Ordering::Relaxed);
    }

    /// Connections open across all workers.
    pub fn open_connections(&self) -> i64 {
        self.worker_connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}
