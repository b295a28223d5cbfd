//! The snapshot the workers read: pools, listeners, and what the control plane and the
//! workers hold in common.
//!
//! Owns: [`Pool`] (backends + the balancer built over them, with its settings resolved),
//! [`Listener`] (a listener's settings as the workers use them), [`Snapshot`] (all pools and
//! listeners, immutable, swapped whole through arc-swap) and [`Shared`].
//! Must not touch: sockets or io_uring. Changing membership or weights means building a new
//! snapshot.

use crate::backend::Backend;
use crate::balance::{self, Balancer};
use crate::config::{AcceptProxy, Algorithm, Config, HashKey, ProxyProtocol};
use crate::routes::{CidrSet, NoRoute, SniRoutes, SourceAcl};
use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::unix_now;

/// A pool's queue: clients waiting for a backend with room, on any worker. Kept across
/// reloads (by pool name), like the listeners' counters.
///
/// Each worker keeps its own waiters in arrival order and publishes the ticket of its
/// oldest in `heads`; a worker serves its oldest only if no other worker has an older one,
/// so the pool's queue is served in arrival order across workers.
pub struct PoolQueue {
    /// Clients waiting now, all workers.
    pub length: AtomicI64,
    /// The next arrival's ticket.
    pub next_ticket: AtomicU64,
    /// Per worker: the ticket of its oldest waiter (u64::MAX: none).
    pub heads: Vec<CachePadded<AtomicU64>>,
    /// Closed after `queue_timeout`.
    pub timeouts: AtomicU64,
    /// Closed at once because the queue was full (or `queue_size` is 0).
    pub overflows: AtomicU64,
    /// Settings in force (reloadable): `queue_size`, `queue_timeout` in ms.
    pub size: AtomicU64,
    pub timeout_ms: AtomicU64,
    /// Cached handle for `ringlb_pool_queue_wait_seconds`.
    pub wait: metrics::Histogram,
}

impl PoolQueue {
    fn new(pool: &str, workers: usize) -> PoolQueue {
        PoolQueue {
            length: AtomicI64::new(0),
            next_ticket: AtomicU64::new(1),
            heads: (0..workers.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(u64::MAX)))
                .collect(),
            timeouts: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            size: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(0),
            wait: metrics::histogram!("ringlb_pool_queue_wait_seconds", "pool" => pool.to_string()),
        }
    }
    /// Whether some worker other than `me` has a waiter older than `ticket`.
    pub fn older_elsewhere(&self, me: usize, ticket: u64) -> bool {
        self.heads
            .iter()
            .enumerate()
            .any(|(w, h)| w != me && h.load(Ordering::Relaxed) < ticket)
    }
}

/// A set of backends and the balancer built over them, with the pool's settings resolved
/// for the workers. Immutable: a change builds a new one.
pub struct Pool {
    pub name: String,
    /// The name again, shared: an access-log record takes a clone, not an allocation.
    pub name_arc: Arc<str>,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub backends: Vec<Arc<Backend>>,
    pub balancer: Box<dyn Balancer>,
    /// Congestion control for backend sockets (None: the system default, no setsockopt).
    pub tcp_congestion: Option<String>,
    /// Some backend has a `max_connections`: a full pool queues its clients.
    pub limited: bool,
    /// Some backend is a backup (picks then look at which tier serves).
    pub has_backups: bool,
    /// TCP keepalive for backend sockets.
    pub tcp_keepalive: Option<crate::sys::KeepaliveTimers>,
    pub queue: Arc<PoolQueue>,
    /// The health checks' settings (read by the control plane's check loop).
    pub health: crate::config::HealthConfig,
    /// Cached handle for `ringlb_backend_connect_duration_seconds`.
    pub connect_duration: metrics::Histogram,
    /// `rebalance`, resolved (read by the control plane's rebalancer; None: off).
    pub rebalance: Option<crate::config::RebalanceSettings>,
}

impl Pool {
    /// Builds a pool over `backends`, with the balancer that `algorithm` names. The balancer
    /// spreads over the backends that are up now (all of them if none is): a snapshot is
    /// rebuilt whenever a backend changes state, so weights stay exact among the routable.
    /// Backend limits and slow start are set on the backends themselves (atomics the
    /// workers read at each pick).
    pub fn new(
        name: &str,
        cfg: &crate::config::PoolConfig,
        backends: Vec<Arc<Backend>>,
        queue: Arc<PoolQueue>,
    ) -> Pool {
        let slow_start = cfg.slow_start.as_ref().map(|d| d.get_ref().get());
        let mut limited = false;
        for b in &backends {
            let max = cfg
                .backends
                .get_ref()
                .iter()
                .find(|bc| bc.addr == Some(b.addr))
                .map(|bc| bc.limit(cfg))
                .unwrap_or(cfg.max_connections.get());
            b.set_max_connections(max);
            limited |= max > 0;
            b.set_slow_start(slow_start.unwrap_or_default());
            b.set_close_on_down(cfg.on_backend_down == crate::config::OnBackendDown::Close);
        }
        let has_backups = backends.iter().any(|b| b.is_backup());
        queue
            .size
            .store(cfg.queue_size.get() as u64, Ordering::Relaxed);
        queue.timeout_ms.store(
            cfg.queue_timeout.get().as_millis() as u64,
            Ordering::Relaxed,
        );
        let balancer = balance::build(choice(cfg), &backends);
        Pool {
            name: name.to_string(),
            name_arc: Arc::from(name),
            algorithm: cfg.algorithm,
            hash_key: cfg.hash_key,
            backends,
            balancer,
            tcp_congestion: cfg.tcp_congestion.as_ref().map(|c| c.get_ref().clone()),
            limited,
            has_backups,
            tcp_keepalive: cfg.tcp_keepalive.map(|k| k.kernel()),
            queue,
            health: cfg.health.clone(),
            connect_duration: metrics::histogram!("ringlb_backend_connect_duration_seconds", "pool" => name.to_string()),
            rebalance: cfg.rebalance.as_ref().map(|r| r.settings()),
        }
    }

    /// Congestion control for backend sockets (None: the system default, no setsockopt).
    pub fn tcp_congestion(&self) -> Option<&str> {
        self.tcp_congestion.as_deref()
    }

    /// Whether new connections go to the backups: the pool has some, and no non-backup
    /// backend is up (HAProxy's rule: a full primary queues its clients; only a down one
    /// hands them to the backups).
    #[inline]
    pub fn serving_backups(&self) -> bool {
        self.has_backups
            && !self
                .backends
                .iter()
                .any(|b| !b.is_backup() && b.is_routable())
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
    /// Connections refused by the listener's allow/deny rules.
    pub denied: AtomicU64,
    /// Connections routed to the default pool (or closed, without one) by
    /// [`NoRoute`] reason.
    pub no_route: [AtomicU64; 5],
    /// PROXY headers refused, by [`crate::proxy::ProxyHeaderError`] reason.
    pub proxy_header_errors: [AtomicU64; 4],
    /// Connections refused by the per-source limits, by [`crate::sources::Limited`] reason.
    pub source_limited: [AtomicU64; 3],
    /// Connections closed by the fin timeouts and by `max_connection_age`.
    pub fin_timeouts: AtomicU64,
    pub aged_out: AtomicU64,
}

/// The balancer a pool's settings name, resolved for [`balance::build`].
fn choice(cfg: &crate::config::PoolConfig) -> balance::Choice {
    let bound = cfg.balance_factor.as_ref().map(|f| balance::Bound {
        factor: *f.get_ref(),
    });
    match cfg.algorithm {
        Algorithm::RoundRobin => balance::Choice::RoundRobin,
        Algorithm::LeastConn => balance::Choice::LeastConn,
        Algorithm::RingHash => balance::Choice::RingHash {
            points: *cfg.ring_points.get_ref(),
            bound,
        },
        Algorithm::Maglev => balance::Choice::Maglev {
            table_size: *cfg.maglev_table_size.get_ref(),
            bound,
        },
    }
}

/// A listener's settings as the workers use them.
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub backlog: u32,
    /// Index into [`Snapshot::pools`] of the default pool (None: only routes).
    pub pool: Option<usize>,
    /// SNI routes (empty: no inspection).
    pub routes: SniRoutes,
    /// The names of [`Snapshot::pools`] when this listener was built, by index (an
    /// inspected connection may outlive its snapshot: its pool is found again by name).
    pub pool_names: Arc<[String]>,
    pub inspect_timeout: Duration,
    /// Source allow/deny (empty: everyone).
    pub acl: SourceAcl,
    /// Where this listener's access log goes, and whether as JSON.
    pub log: Arc<crate::accesslog::Destination>,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    pub proxy_protocol: ProxyProtocol,
    /// Congestion control set on the listening socket (accepted sockets inherit it).
    pub tcp_congestion: Option<String>,
    /// TCP keepalive set on the listening socket (accepted sockets inherit it).
    pub tcp_keepalive: Option<crate::sys::KeepaliveTimers>,
    /// How long a half-closed connection may stay silent, by which side ended first:
    /// `[client ended (server_fin_timeout), backend ended (client_fin_timeout)]`; zero: the
    /// idle timeout applies.
    pub fin_timeout: [Duration; 2],
    /// `max_connection_age` (zero: none), and how long an aged connection must be idle
    /// before it is closed.
    pub max_age: Duration,
    pub max_age_idle: Duration,
    /// PROXY headers read from clients, and from whom.
    pub accept_proxy: AcceptProxy,
    pub proxy_from: CidrSet,
    /// Per-source limits (None: none configured).
    pub sources: Option<Arc<crate::sources::SourceTable>>,
    pub stats: Arc<CachePadded<ListenerStats>>,
    /// Cached handle: recording is a few atomic adds, no label lookup.
    pub connection_duration: metrics::Histogram,
}

impl Listener {
    /// Whether this listener writes an access log.
    #[inline]
    pub fn logs(&self) -> bool {
        self.log.on()
    }

    /// Counts a connection without a route.
    pub fn no_route(&self, why: NoRoute) {
        self.stats.no_route[why as usize].fetch_add(1, Ordering::Relaxed);
    }
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
    /// A snapshot of `cfg`'s listeners and pool settings over `members`. Listener counters and
    /// pool queues of `prev` carry on.
    pub fn assemble(cfg: &Config, members: &Members, prev: Option<&Snapshot>) -> Snapshot {
        let workers = crate::cpus::worker_count(cfg.workers.get());
        let pools: Vec<Arc<Pool>> = cfg
            .pools
            .iter()
            .map(|(name, pc)| {
                let queue = prev
                    .and_then(|p| p.pool(name))
                    .map(|p| p.queue.clone())
                    .unwrap_or_else(|| Arc::new(PoolQueue::new(name, workers)));
                Arc::new(Pool::new(
                    name,
                    pc,
                    members.get(name).cloned().unwrap_or_default(),
                    queue,
                ))
            })
            .collect();
        let index = |name: &str| pools.iter().position(|p| p.name == name);
        let pool_names: Arc<[String]> = pools.iter().map(|p| p.name.clone()).collect();
        let listeners = cfg
            .listeners
            .iter()
            .map(|lc| {
                let name = lc.name.get_ref().clone();
                let stats = prev
                    .and_then(|p| p.listeners.iter().find(|l| l.name == name))
                    .map(|l| l.stats.clone())
                    .unwrap_or_default();
                let routes: Vec<(String, usize)> = lc
                    .routes
                    .iter()
                    .filter_map(|r| Some((r.sni.get_ref().clone(), index(r.pool.get_ref())?)))
                    .collect();
                // Validated already: a rule that does not parse cannot reach here.
                let cidrs = |list: &[toml::Spanned<String>]| {
                    let nets: Vec<ipnet::IpNet> = list
                        .iter()
                        .filter_map(|c| crate::routes::parse_cidr(c.get_ref()).ok())
                        .collect();
                    CidrSet::new(&nets)
                };
                let limits = crate::sources::Limits::of(lc);
                let sources = limits.map(|limits| {
                    // Kept across reloads while its size stays: open connections stay counted.
                    let old = prev
                        .and_then(|p| p.listeners.iter().find(|l| l.name == name))
                        .and_then(|l| l.sources.clone())
                        .filter(|t| t.capacity() == lc.source_table_size.get() as usize);
                    match old {
                        Some(t) => {
                            t.set_limits(limits);
                            t
                        }
                        None => Arc::new(crate::sources::SourceTable::new(
                            lc.source_table_size.get() as usize,
                            limits,
                        )),
                    }
                });
                Arc::new(Listener {
                    tcp_keepalive: lc.tcp_keepalive.map(|k| k.kernel()),
                    fin_timeout: [
                        lc.server_fin_timeout.map(|d| d.get()).unwrap_or_default(),
                        lc.client_fin_timeout.map(|d| d.get()).unwrap_or_default(),
                    ],
                    max_age: lc.max_connection_age.map(|d| d.get()).unwrap_or_default(),
                    max_age_idle: lc.max_connection_age_idle.get(),
                    accept_proxy: lc.accept_proxy_protocol,
                    proxy_from: cidrs(&lc.proxy_protocol_from),
                    sources,
                    pool: lc.pool.as_ref().and_then(|p| index(p.get_ref())),
                    routes: SniRoutes::new(&routes),
                    pool_names: pool_names.clone(),
                    inspect_timeout: lc.inspect_timeout.get(),
                    log: Arc::new(crate::accesslog::Destination {
                        listener: name.clone(),
                        target: crate::config::LogTarget::parse(lc.access_log.get_ref())
                            .unwrap_or(crate::config::LogTarget::Off),
                        json: lc.access_log_format == crate::config::LogFormat::Json,
                    }),
                    acl: SourceAcl {
                        allow: cidrs(&lc.allow),
                        deny: cidrs(&lc.deny),
                    },
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
    /// One doorbell (an eventfd) per worker, set by the data plane when it starts: a worker
    /// that frees a slot owed to a client queued on another rings that one's.
    pub doorbells: std::sync::OnceLock<Box<[std::os::fd::OwnedFd]>>,
    /// Every worker's listeners accept (`/readyz`).
    pub ready: AtomicBool,
    /// The access log's queues, once some listener logs (see `accesslog.rs`).
    pub access_log: std::sync::OnceLock<Arc<crate::accesslog::Queues>>,
    /// The io_uring features the workers' rings use (each worker probes its own; they agree).
    pub io_uring_features: IoUringFeatures,
}

/// The io_uring features in use (`ringlb_io_uring_features`).
#[derive(Default)]
pub struct IoUringFeatures {
    /// Multishot recvs capped per arming (Linux 6.17+).
    pub recv_cap: AtomicBool,
    /// Buffers consumed incrementally (IOU_PBUF_RING_INC, Linux 6.12+).
    pub buf_inc: AtomicBool,
    /// Sockets mirrored into a registered file table (sparse tables, Linux 5.19+).
    pub fixed_files: AtomicBool,
}

impl IoUringFeatures {
    /// (name, in use), as the metric labels them.
    pub fn list(&self) -> [(&'static str, bool); 3] {
        [
            ("recv_cap", self.recv_cap.load(Ordering::Relaxed)),
            ("buf_inc", self.buf_inc.load(Ordering::Relaxed)),
            ("fixed_files", self.fixed_files.load(Ordering::Relaxed)),
        ]
    }
}

/// The outcome of the last reload, as Prometheus' own `_config_last_reload_*` series put it.
pub struct ReloadStatus {
    /// 1 if the last reload applied (or none was tried).
    pub last_successful: AtomicBool,
    /// When the configuration in force was loaded (start, or the last good reload), in
    /// seconds since the epoch.
    pub last_success_time: AtomicU64,
    /// When the last reload was tried, applied or refused (the start, before any).
    pub last_attempt_time: AtomicU64,
    pub failures: AtomicU64,
    pub successes: AtomicU64,
}

impl ReloadStatus {
    pub fn record(&self, ok: bool) {
        self.last_successful.store(ok, Ordering::Relaxed);
        self.last_attempt_time.store(unix_now(), Ordering::Relaxed);
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
            doorbells: std::sync::OnceLock::new(),
            ready: AtomicBool::new(false),
            access_log: std::sync::OnceLock::new(),
            io_uring_features: IoUringFeatures::default(),
            reloads: ReloadStatus {
                last_successful: AtomicBool::new(true),
                last_success_time: AtomicU64::new(unix_now()),
                last_attempt_time: AtomicU64::new(unix_now()),
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
