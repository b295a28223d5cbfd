//! One backend server and the atomics every worker shares about it.
//!
//! Owns: [`Backend`] (an address plus cache-padded atomics: state, weight, active
//! connections, counters) and its states.
//! Must not touch: anything else of ours (it imports nothing from the crate), sockets or
//! io_uring. Changing a backend's state is one atomic store that workers see at once.

use crossbeam_utils::CachePadded;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};

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
    /// Connections closed because the backend was marked down (`on_backend_down = "close"`).
    pub closed_on_down: AtomicU64,
    /// Connections closed to rebalance the pool (`ringlb_backend_rebalanced_total`).
    pub rebalanced: AtomicU64,
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
    /// A backup: takes connections only while no non-backup backend of its pool is up.
    backup: AtomicBool,
    /// Its pool says `on_backend_down = "close"`: once marked down, workers close its
    /// connections (set with the pool, so a reload changes it for open connections too).
    close_on_down: AtomicBool,
    /// The health checks' last verdict, kept while the state says draining, so that undoing
    /// a drain restores what the checks see.
    healthy: AtomicBool,
    /// Scale-in protection asked for through the admin API: until this Unix time (seconds;
    /// 0 = none). Read by the scaler through `GET /backends`; routing ignores it.
    protected_until: AtomicU64,
    /// Most connections at once (0: no limit): a pick skips a backend at its limit.
    max_connections: AtomicU32,
    /// Slow start: the ramp's length in ms (0: off), and when the backend last came up
    /// (Unix ms; 0: up since the process started, which does not ramp).
    slow_start_ms: AtomicU64,
    up_since_ms: AtomicU64,
    /// When the current drain began (Unix seconds; 0: not draining).
    draining_since: AtomicU64,
    /// Idle connections the rebalancer lets the workers close now (granted at its pace,
    /// taken one by one as the workers close them), and how long one must have been idle
    /// (ms). See `control/rebalance.rs`.
    rebalance_quota: AtomicU32,
    rebalance_idle_ms: AtomicU32,
    pub stats: CachePadded<BackendStats>,
    /// The last health check, as the status page shows it. Written by the control plane's
    /// check loop once per interval and read by `GET /stats`; the data plane never takes it.
    pub last_check: std::sync::Mutex<Option<CheckReport>>,
}

/// One health check's outcome.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub ok: bool,
    /// How long the probe took.
    pub latency: std::time::Duration,
    /// When it ended (Unix ms).
    pub at_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The share of its weight a slow-starting backend begins with.
pub const SLOW_START_FLOOR: f64 = 0.05;

impl Backend {
    pub fn new(pool: &str, addr: SocketAddr, weight: u32, state: BackendState) -> Backend {
        Backend {
            pool: pool.to_string(),
            addr,
            sockaddr: socket2::SockAddr::from(addr),
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            removed: AtomicBool::new(false),
            backup: AtomicBool::new(false),
            close_on_down: AtomicBool::new(false),
            healthy: AtomicBool::new(state == BackendState::Up),
            protected_until: AtomicU64::new(0),
            max_connections: AtomicU32::new(0),
            slow_start_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            draining_since: AtomicU64::new(if state == BackendState::Draining {
                unix_now().max(1)
            } else {
                0
            }),
            rebalance_quota: AtomicU32::new(0),
            rebalance_idle_ms: AtomicU32::new(0),
            stats: CachePadded::new(BackendStats::default()),
            last_check: std::sync::Mutex::new(None),
        }
    }
    /// Keeps the last health check's outcome (see `last_check`).
    pub fn record_check(&self, report: CheckReport) {
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
    pub fn last_check(&self) -> Option<CheckReport> {
        self.last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }
    /// Sets the state; a backend that comes up (from down, starting or draining) starts its
    /// slow-start ramp.
    pub fn set_state(&self, s: BackendState) {
        let old = self.state.swap(s as u8, Ordering::Relaxed);
        if s == BackendState::Up && old != BackendState::Up as u8 {
            self.up_since_ms
                .store(unix_now_ms().max(1), Ordering::Relaxed);
        }
        if s == BackendState::Draining && old != BackendState::Draining as u8 {
            self.draining_since
                .store(unix_now().max(1), Ordering::Relaxed);
        } else if s != BackendState::Draining {
            self.draining_since.store(0, Ordering::Relaxed);
        }
    }
    /// When the current drain began (Unix seconds), if it is draining.
    pub fn draining_since(&self) -> Option<u64> {
        let t = self.draining_since.load(Ordering::Relaxed);
        (t > 0).then_some(t)
    }
    /// Limits the backend to `n` connections at once (0: none).
    pub fn set_max_connections(&self, n: u32) {
        self.max_connections.store(n, Ordering::Relaxed);
    }
    pub fn max_connections(&self) -> u32 {
        self.max_connections.load(Ordering::Relaxed)
    }
    /// Whether the backend is below its connection limit.
    #[inline]
    pub fn has_room(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        max == 0 || self.active() < max as i64
    }
    /// Takes one connection of the limit, if there is room (the check and the count in one
    /// atomic step, so workers racing for the last slot cannot both get it).
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed) as i64;
        let before = self.stats.active.fetch_add(1, Ordering::Relaxed);
        if max > 0 && before >= max {
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
    /// Sets the slow-start ramp (zero: off).
    pub fn set_slow_start(&self, d: std::time::Duration) {
        self.slow_start_ms.store(
            d.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
    /// The share of its weight the backend takes now: 1.0, or during slow start a share
    /// growing linearly from [`SLOW_START_FLOOR`] to 1.0.
    #[inline]
    pub fn weight_share(&self) -> f64 {
        let ramp = self.slow_start_ms.load(Ordering::Relaxed);
        if ramp == 0 {
            return 1.0;
        }
        let since = self.up_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let elapsed = unix_now_ms().saturating_sub(since);
        if elapsed >= ramp {
            return 1.0;
        }
        (elapsed as f64 / ramp as f64).max(SLOW_START_FLOOR)
    }
    /// The weight in force now (slow start applied), as `GET /backends` and
    /// `ringlb_backend_effective_weight` show it.
    pub fn effective_weight(&self) -> f64 {
        self.weight() as f64 * self.weight_share()
    }
    /// Up, so it may take new connections.
    #[inline]
    pub fn is_routable(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BackendState::Up as u8
    }
    pub fn set_backup(&self, v: bool) {
        self.backup.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }
    pub fn set_close_on_down(&self, v: bool) {
        self.close_on_down.store(v, Ordering::Relaxed);
    }
    /// Marked down, and its pool closes the connections of a backend marked down.
    #[inline]
    pub fn closes_now(&self) -> bool {
        self.close_on_down.load(Ordering::Relaxed)
            && self.state.load(Ordering::Relaxed) == BackendState::Down as u8
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
    /// The Unix second scale-in protection ends at (0: never set).
    pub fn protected_until(&self) -> u64 {
        self.protected_until.load(Ordering::Relaxed)
    }
    /// Whole seconds of scale-in protection left, if any (see [`protection_left`]).
    pub fn protection_left(&self) -> Option<u64> {
        protection_left(self.protected_until.load(Ordering::Relaxed), unix_now_ms())
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
    /// Lets the workers close `n` more idle connections (idle at least `idle_ms`).
    pub fn grant_rebalance(&self, n: u32, idle_ms: u32) {
        self.rebalance_idle_ms.store(idle_ms, Ordering::Relaxed);
        self.rebalance_quota.fetch_add(n, Ordering::Relaxed);
    }
    /// Takes back what was granted and not used (the backend is back at its share).
    pub fn revoke_rebalance(&self) -> u32 {
        self.rebalance_quota.swap(0, Ordering::Relaxed)
    }
    /// How long a connection must have been idle to be closed for rebalancing, if the
    /// rebalancer wants some of this backend's closed now.
    #[inline]
    pub fn rebalance_wanted(&self) -> Option<u32> {
        (self.rebalance_quota.load(Ordering::Relaxed) > 0)
            .then(|| self.rebalance_idle_ms.load(Ordering::Relaxed))
    }
    /// Takes one close from the quota; false when another worker took the last one.
    pub fn take_rebalance(&self) -> bool {
        self.rebalance_quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_sub(1))
            .is_ok()
    }
    #[inline]
    pub fn active(&self) -> i64 {
        self.stats.active.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the epoch (the slow-start clock: a vDSO read, no syscall).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whole seconds of protection left at `now_ms` (Unix milliseconds) for a protection that
/// ends at `until` (Unix seconds); `None` once it has ended (`Some(0)` in its last second).
///
/// The end is whole seconds (so the state file keeps its format) and is rounded up when it
/// is set (see [`protection_end`]); the clock it is compared with is read in milliseconds.
/// So a protection never ends before the `expires_in` it was asked for: at most a second
/// after. (Whole seconds both ways made a 5 s protection end after 4.1 s.)
pub fn protection_left(until: u64, now_ms: u64) -> Option<u64> {
    let end_ms = until.saturating_mul(1000);
    (end_ms > now_ms).then(|| (end_ms - now_ms) / 1000)
}

/// When a protection of `d` asked for at `now_ms` ends, in whole Unix seconds, rounded up.
pub fn protection_end(now_ms: u64, d: std::time::Duration) -> u64 {
    now_ms
        .saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
        .div_ceil(1000)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        /// A protection asked for `d` at any millisecond never ends before `d` has passed,
        /// reports the whole seconds left, and is over at most 1 s after.
        #[test]
        fn protection_never_ends_early(
            now in 1_000_000_000_000u64..4_000_000_000_000,
            d_ms in 1_000u64..48 * 3_600_000,
            at in 0.0f64..1.0,
        ) {
            let end = protection_end(now, Duration::from_millis(d_ms));
            let t = now + (d_ms as f64 * at) as u64;
            let left = protection_left(end, t);
            prop_assert!(left.is_some(), "ended at {} of {d_ms} ms", t - now);
            let end_ms = end * 1000;
            prop_assert!(end_ms >= now + d_ms);
            prop_assert_eq!(left.unwrap(), (end_ms - t) / 1000);
            prop_assert!(protection_left(end, now + d_ms + 1000).is_none());
        }
    }

    #[test]
    fn the_reported_case_holds_five_seconds() {
        // Asked 900 ms into a second: whole seconds truncated made this end after 4.1 s.
        let now = 1_700_000_000_900;
        let end = protection_end(now, Duration::from_secs(5));
        assert!(protection_left(end, now + 4_999).is_some());
        // Asked for 5 s, it says 5 s (it lasts 5.1 s: the end is rounded up to the second).
        assert_eq!(protection_left(end, now), Some(5));
        assert_eq!(protection_left(0, now), None);
    }
}
