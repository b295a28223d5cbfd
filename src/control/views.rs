//! What the admin API sends and accepts, as types: each derives `ToSchema`, so the OpenAPI
//! document (`GET /openapi.json`) is generated from the very structs the handlers serialize
//! and cannot drift from them.
//!
//! Owns: the JSON shapes of backends, pools, protection, probes, errors and `/stats`, and
//! building them from `Backend`s and the snapshot. Must not touch: state (read only).

use crate::backend::{Backend, BackendState};
use crate::snapshot::Shared;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use utoipa::ToSchema;

/// A backend's state.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum StateView {
    /// Healthy: takes new connections.
    Up,
    /// Its health checks failed: no new connections.
    Down,
    /// Being drained: no new connections; open ones continue until they end.
    Draining,
    /// Added at runtime, waiting for `rise` passing checks.
    Starting,
}

impl From<BackendState> for StateView {
    fn from(s: BackendState) -> StateView {
        match s {
            BackendState::Up => StateView::Up,
            BackendState::Down => StateView::Down,
            BackendState::Draining => StateView::Draining,
            BackendState::Starting => StateView::Starting,
        }
    }
}

/// One backend of a pool.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct BackendView {
    pub pool: String,
    /// `ip:port` (IPv6 as `[ip]:port`).
    #[schema(example = "127.0.0.1:9001")]
    pub addr: String,
    #[schema(maximum = 256)]
    pub weight: u32,
    /// Below `weight` while the backend is in slow start (rounded to 0.01).
    #[schema(minimum = 0.0)]
    pub effective_weight: f64,
    /// Most connections at once (0: no limit).
    pub max_connections: u32,
    pub state: StateView,
    pub active_connections: u64,
    /// Connections handed to this backend (connect attempts) since it joined.
    pub connections_total: u64,
    /// When the current drain began (Unix seconds), or null.
    pub draining_since: Option<u64>,
    /// Scale-in protection is on.
    pub protected: bool,
    /// Seconds of protection left (null: no protection).
    pub protection_expires_in: Option<u64>,
    /// A backup: takes connections only while no non-backup backend of its pool is up.
    #[serde(default)]
    pub backup: bool,
    /// Connections closed because the backend was marked down (`on_backend_down = "close"`).
    #[serde(default)]
    pub closed_on_down_total: u64,
    /// Idle connections closed because the backend held more than its share (`rebalance`).
    #[serde(default)]
    pub rebalanced_total: u64,
}

impl BackendView {
    pub fn of(b: &Backend) -> BackendView {
        BackendView {
            pool: b.pool.clone(),
            addr: b.addr.to_string(),
            weight: b.weight(),
            effective_weight: (b.effective_weight() * 100.0).round() / 100.0,
            max_connections: b.max_connections(),
            state: b.state().into(),
            active_connections: b.active().max(0) as u64,
            connections_total: b.stats.connections.load(Relaxed),
            draining_since: b.draining_since(),
            protected: b.protection_left().is_some(),
            protection_expires_in: b.protection_left(),
            backup: b.is_backup(),
            closed_on_down_total: b.stats.closed_on_down.load(Relaxed),
            rebalanced_total: b.stats.rebalanced.load(Relaxed),
        }
    }
}

/// A backend being deleted: drained, then removed.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RemovalView {
    #[serde(flatten)]
    pub backend: BackendView,
    /// How long its connections get before they are closed (absent if `already_removing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// It was already being deleted: that removal and its drain timeout go on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_removing: Option<bool>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PoolView {
    pub name: String,
    /// As the config spells it: `round_robin`, `least_conn`, `ring_hash`, `maglev`.
    pub algorithm: String,
    pub backends: Vec<BackendView>,
}

/// `GET /backends`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct BackendsView {
    pub pools: Vec<PoolView>,
}

/// A backend's scale-in protection.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ProtectionView {
    pub pool: String,
    pub addr: String,
    pub enabled: bool,
    /// Time left, as a duration string (`"5m"`), or null.
    pub expires_in: Option<String>,
    /// When it expires (Unix seconds), or null.
    pub expires_at: Option<u64>,
}

impl ProtectionView {
    pub fn of(b: &Backend) -> ProtectionView {
        let left = b.protection_left();
        ProtectionView {
            pool: b.pool.clone(),
            addr: b.addr.to_string(),
            enabled: left.is_some(),
            expires_in: left
                .map(|s| crate::config::format_duration(std::time::Duration::from_secs(s))),
            expires_at: left.and(Some(b.protected_until())),
        }
    }
}

/// Every refusal: a 4xx (or 5xx) with what went wrong.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ErrorBody {
    #[schema(example = "no backend 127.0.0.1:1 in pool web")]
    pub error: String,
}

/// `POST /pools/{pool}/backends`.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// `ip:port` (IPv6 as `[ip]:port`), a port from 1, not an unspecified address
    /// (0.0.0.0/8, `::`).
    #[schema(
        example = "127.0.0.1:9004",
        pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]?)(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[(?![0:]*\])((([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:(:[0-9a-fA-F]{1,4}){1,7}))\]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
    )]
    pub addr: String,
    /// Default 1.
    #[schema(minimum = 1, maximum = 256)]
    #[serde(default, deserialize_with = "integral_opt")]
    pub weight: Option<u32>,
    /// A backup server: takes connections only while no non-backup backend of the pool is
    /// up. Default false.
    #[serde(default)]
    pub backup: bool,
}

/// A u32 given as a JSON number: `15` or `15.0` (JSON Schema counts both as the integer
/// 15), not `15.5`, a negative or one past u32.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return u32::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is too large")));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&f) => Ok(f as u32),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number from 0 to {}, not {n}",
            u32::MAX
        ))),
    }
}

fn integral_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => integral(n).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `PUT .../weight`.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct WeightBody {
    #[schema(minimum = 1, maximum = 256)]
    #[serde(deserialize_with = "integral")]
    pub weight: u32,
}

/// `PUT .../protection`.
#[derive(Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProtectionBody {
    pub enabled: bool,
    /// How long (`"10m"`, from 1s to 48h); absent: 2h.
    #[schema(
        example = "10m",
        pattern = r"^([1-9][0-9]{0,4}s|[1-9][0-9]{0,2}m|([1-9]|[1-3][0-9]|4[0-8])h)$"
    )]
    pub expires_in: Option<String>,
}

/// `GET /readyz`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ReadyView {
    /// `ready`, `starting` or `stopping`.
    pub status: String,
    pub listeners: u64,
}

/// `GET /healthz`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct HealthView {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Which pools have no routable backend (only when unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /stats`: what the status page draws, one call per second. Counters are totals
/// since start; the page takes rates from their differences over `now`.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Stats {
    pub version: String,
    /// When this process started (Unix seconds).
    pub started_at: u64,
    pub uptime_seconds: f64,
    /// This answer's time (Unix seconds, ms precision).
    pub now: f64,
    pub workers: u64,
    /// The process is draining (SIGTERM).
    pub stopping: bool,
    pub listeners: Vec<ListenerStatsView>,
    pub pools: Vec<PoolStatsView>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ListenerStatsView {
    pub name: String,
    pub bind: String,
    /// Its default pool (null: SNI routes only).
    pub pool: Option<String>,
    pub active_connections: u64,
    pub connections_total: u64,
    /// Closed at once: listener `max_connections` reached.
    pub rejected_total: u64,
    /// Refused by the listener's allow/deny rules.
    pub denied_total: u64,
    /// Closed: no backend could take them.
    pub no_backend_total: u64,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct PoolStatsView {
    pub name: String,
    pub algorithm: String,
    pub queue: QueueView,
    pub backends: Vec<BackendStatsView>,
}

/// A pool's queue (clients waiting for a backend below its `max_connections`).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct QueueView {
    pub waiting: u64,
    /// `queue_size` in force.
    pub size: u64,
    pub timeouts_total: u64,
    pub overflows_total: u64,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct BackendStatsView {
    #[serde(flatten)]
    pub backend: BackendView,
    /// Connects that failed (refused, timed out, other).
    pub connect_errors_total: u64,
    /// Bytes relayed client → backend.
    pub bytes_to_backend_total: u64,
    /// Bytes relayed backend → client.
    pub bytes_to_client_total: u64,
    /// The last health check (null: none yet).
    pub last_check: Option<CheckView>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct CheckView {
    pub ok: bool,
    pub latency_ms: f64,
    /// When it ended (Unix seconds, ms precision).
    pub at: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// `RoundRobin` → `round_robin`, as the config spells it.
pub fn toml_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn count(v: i64) -> u64 {
    v.max(0) as u64
}

impl Stats {
    /// Reads the counters: `members` is the control plane's membership (every backend,
    /// draining ones included), `shared` the data plane's snapshot and atomics.
    pub fn gather(
        members: &crate::snapshot::Members,
        algorithm: impl Fn(&str) -> String,
        shared: &Arc<Shared>,
        started: (u64, std::time::Instant),
        workers: usize,
    ) -> Stats {
        let snapshot = shared.snapshot.load();
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| ListenerStatsView {
                name: l.name.clone(),
                bind: l.bind.to_string(),
                pool: l.pool.map(|i| snapshot.pools[i].name.clone()),
                active_connections: count(l.stats.active.load(Relaxed)),
                connections_total: l.stats.connections.load(Relaxed),
                rejected_total: l.stats.rejected.load(Relaxed),
                denied_total: l.stats.denied.load(Relaxed),
                no_backend_total: l.stats.no_backend.load(Relaxed),
            })
            .collect();
        let pools = members
            .iter()
            .map(|(name, list)| {
                let queue = snapshot.pool(name).map(|p| p.queue.clone());
                PoolStatsView {
                    name: name.clone(),
                    algorithm: algorithm(name),
                    queue: QueueView {
                        waiting: queue.as_ref().map_or(0, |q| count(q.length.load(Relaxed))),
                        size: queue.as_ref().map_or(0, |q| q.size.load(Relaxed)),
                        timeouts_total: queue.as_ref().map_or(0, |q| q.timeouts.load(Relaxed)),
                        overflows_total: queue.as_ref().map_or(0, |q| q.overflows.load(Relaxed)),
                    },
                    backends: list
                        .iter()
                        .map(|b| BackendStatsView {
                            backend: BackendView::of(b),
                            connect_errors_total: b
                                .stats
                                .connect_errors
                                .iter()
                                .map(|c| c.load(Relaxed))
                                .sum(),
                            bytes_to_backend_total: b.stats.bytes[0].load(Relaxed),
                            bytes_to_client_total: b.stats.bytes[1].load(Relaxed),
                            last_check: b.last_check().map(|c| CheckView {
                                ok: c.ok,
                                latency_ms: (c.latency.as_secs_f64() * 1e5).round() / 100.0,
                                at: c.at_ms as f64 / 1000.0,
                                error: c.error,
                            }),
                        })
                        .collect(),
                }
            })
            .collect();
        Stats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started.0,
            uptime_seconds: (started.1.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            now: crate::backend::unix_now_ms() as f64 / 1000.0,
            workers: workers as u64,
            stopping: shared.stopping.load(Relaxed),
            listeners,
            pools,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WeightBody;

    #[test]
    fn weights_are_whole_numbers() {
        let w = |t: &str| serde_json::from_str::<WeightBody>(t).map(|b| b.weight);
        assert_eq!(w(r#"{"weight": 15}"#).unwrap(), 15);
        assert_eq!(w(r#"{"weight": 15.0}"#).unwrap(), 15);
        assert_eq!(w(r#"{"weight": 1e2}"#).unwrap(), 100);
        for bad in [
            r#"{"weight": 15.5}"#,
            r#"{"weight": -1}"#,
            r#"{"weight": 4294967296}"#,
            r#"{"weight": 1e300}"#,
            r#"{"weight": "2"}"#,
            r#"{"weight": null}"#,
        ] {
            assert!(w(bad).is_err(), "{bad}");
        }
        let a = |t: &str| serde_json::from_str::<super::AddBody>(t).map(|b| b.weight);
        assert_eq!(a(r#"{"addr": "x"}"#).unwrap(), None);
        assert_eq!(a(r#"{"addr": "x", "weight": 2.0}"#).unwrap(), Some(2));
        assert_eq!(a(r#"{"addr": "x", "weight": null}"#).unwrap(), None);
        assert!(a(r#"{"addr": "x", "weight": 2.5}"#).is_err());
    }
}

/// A backend as a rebalance saw it when it started.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct RebalanceShare {
    pub addr: String,
    pub active_connections: i64,
    /// Its weighted share of the serving backends' connections.
    pub share: f64,
    /// Above (1 + tolerance) × share (and not protected): some of its idle connections
    /// will close.
    pub over: bool,
}

/// What `POST /pools/{pool}/rebalance` found when it started.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RebalanceView {
    pub pool: String,
    /// The run ends when every backend is at its share, or after this many seconds.
    pub ends_within_seconds: u64,
    /// The backends that take part: the serving tier, up (draining ones are left alone).
    pub backends: Vec<RebalanceShare>,
}
