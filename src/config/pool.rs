//! `[pools.NAME]`: backends, the algorithm over them and its settings, connection limits
//! and the queue, slow start.
//!
//! Owns: the pool schema, its defaults and ranges, and `validate_pool`.

use super::health::HealthConfig;
use super::values::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConn,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    #[default]
    ClientIp,
    ClientIpPort,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub hash_key: HashKey,
    /// ring_hash: points per unit of weight.
    #[serde(default = "default_ring_points")]
    pub ring_points: Spanned<u32>,
    /// ring_hash / maglev: bounded loads (> 1.0), optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_factor: Option<Spanned<f64>>,
    /// maglev: lookup table size, a prime.
    #[serde(default = "default_maglev_table_size")]
    pub maglev_table_size: Spanned<u32>,
    pub backends: Spanned<Vec<BackendConfig>>,
    /// Most connections per backend (0: no limit), unless a backend entry sets its own.
    #[serde(default)]
    pub max_connections: Num<0, MAX_BACKEND_CONNECTIONS>,
    /// Clients that may wait for a backend with room when every one is at its limit (0: none
    /// wait; they are closed at once).
    #[serde(default = "default_queue_size")]
    pub queue_size: Num<0, MAX_QUEUE_SIZE>,
    /// How long a client may wait in the queue before it is closed.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur<US_MS, { 5 * US_MIN }>,
    /// round_robin and least_conn: a backend that comes up ramps its weight from 5% to all
    /// of it over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Spanned<Dur<US_MS, US_H>>>,
    #[serde(default)]
    pub health: HealthConfig,
    /// TCP congestion control for connections to this pool's backends; unset = the system
    /// default. Costs one setsockopt per backend connection when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_congestion: Option<Spanned<String>>,
    /// How often DNS-named backends are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur<{ 100 * US_MS }, US_H>,
    /// DNS servers for named backends ("IP:53"); empty: the system's (/etc/resolv.conf).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<SocketAddr>,
    /// What happens to the connections of a backend its health checks mark down.
    #[serde(default)]
    pub on_backend_down: OnBackendDown,
    /// TCP keepalive on the sockets to this pool's backends (unset: the system's, off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Keepalive>,
    /// Closes idle connections of backends holding more than their share (off when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
}

/// `rebalance = { tolerance, idle_for, rate }`: when a backend holds more than
/// (1 + `tolerance`) × its weighted share of the pool's connections, its connections idle
/// for `idle_for` are closed (a FIN both ways, oldest first), at most `rate` per second
/// for the pool, until it is back at its share; clients that reconnect land on the others.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rebalance {
    #[serde(default = "default_tolerance")]
    pub tolerance: Spanned<f64>,
    #[serde(default = "default_idle_for")]
    pub idle_for: Dur<{ 100 * US_MS }, US_H>,
    #[serde(default = "default_rebalance_rate")]
    pub rate: Spanned<String>,
}

fn default_tolerance() -> Spanned<f64> {
    Spanned::new(0..0, RebalanceSettings::default().tolerance)
}
fn default_idle_for() -> Dur<{ 100 * US_MS }, US_H> {
    Dur(RebalanceSettings::default().idle_for)
}
fn default_rebalance_rate() -> Spanned<String> {
    Spanned::new(0..0, "20/s".into())
}

/// Most `rebalance.tolerance`: past 10 (eleven times its share) there is nothing to balance.
pub const MAX_REBALANCE_TOLERANCE: f64 = 10.0;

/// `rebalance`, resolved: what the control plane's rebalancer works with (also the
/// settings of a rebalance asked for through the admin API in a pool without the key).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceSettings {
    pub tolerance: f64,
    pub idle_for: Duration,
    /// Closes per second, for the whole pool.
    pub rate: f64,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            tolerance: 0.2,
            idle_for: Duration::from_secs(1),
            rate: 20.0,
        }
    }
}

impl Rebalance {
    /// The settings (valid once the config validated).
    pub fn settings(&self) -> RebalanceSettings {
        RebalanceSettings {
            tolerance: *self.tolerance.get_ref(),
            idle_for: self.idle_for.get(),
            rate: parse_rate(self.rate.get_ref()).unwrap_or(20.0),
        }
    }
}

/// `on_backend_down`: HAProxy's `on-marked-down shutdown-sessions`, Envoy's
/// `close_connections_on_host_health_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendDown {
    /// Open connections go on (they may still work: a check can fail for reasons a live
    /// session does not see).
    #[default]
    Keep,
    /// Open connections are closed both ways (a primary demoted to a replica must not
    /// keep taking writes).
    Close,
}

fn default_resolve_interval() -> Dur<{ 100 * US_MS }, US_H> {
    Dur(Duration::from_secs(5))
}

impl PoolConfig {
    /// The DNS-named backend entries: (name, port, weight).
    pub fn named(&self) -> impl Iterator<Item = (&str, u16, u32, bool)> {
        self.backends.get_ref().iter().filter_map(|b| {
            Some((
                b.name.as_ref()?.get_ref().as_str(),
                b.port?,
                *b.weight.get_ref(),
                b.backup,
            ))
        })
    }
    /// Whether `addr` is one of this pool's fixed addresses.
    pub fn lists(&self, addr: SocketAddr) -> bool {
        self.backends.get_ref().iter().any(|b| b.addr == Some(addr))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A fixed address, or:
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// a DNS name and port: every A/AAAA answer is a backend (re-resolved every
    /// `resolve_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
    /// This backend's own limit (0: none), over the pool's `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Num<0, MAX_BACKEND_CONNECTIONS>>,
    /// A backup: takes new connections only while no non-backup backend of the pool is up
    /// (HAProxy's `backup`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

impl BackendConfig {
    /// The limit in force for this backend in pool `pool` (0: none).
    pub fn limit(&self, pool: &PoolConfig) -> u32 {
        self.max_connections.unwrap_or(pool.max_connections).get()
    }
}

fn default_queue_size() -> Num<0, MAX_QUEUE_SIZE> {
    Num(1024)
}
fn default_queue_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
    Dur(Duration::from_secs(5))
}

/// Points per unit of weight on a hash ring. 160 (ketama's number) left 10 equal backends at
/// max/mean 1.12 over 10,000 keys; 1024 keeps them within 1.10 (see ring_hash's tests).
pub const DEFAULT_RING_POINTS: u32 = 1024;
fn default_ring_points() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_RING_POINTS)
}
fn default_maglev_table_size() -> Spanned<u32> {
    Spanned::new(0..0, 65537)
}
fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// Largest per-backend `max_connections`.
pub const MAX_BACKEND_CONNECTIONS: u64 = 1_000_000;
/// Largest pool `queue_size`.
pub const MAX_QUEUE_SIZE: u64 = 1_000_000;

/// Largest weight: keeps round-robin schedules and hash rings small.
pub const MAX_WEIGHT: u32 = 256;

/// Largest `balance_factor`: beyond it the bound on loads no longer bounds anything.
pub const MAX_BALANCE_FACTOR: f64 = 100.0;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

/// Checks one pool: its backends, its algorithm's settings, its health checks.
pub(super) fn validate_pool(pname: &str, p: &PoolConfig) -> Result<(), Invalid> {
    if p.backends.get_ref().is_empty() {
        return Err((
            span_of(&p.backends),
            format!("pools.{pname}.backends: a pool needs at least one backend"),
        ));
    }
    let mut seen = HashSet::new();
    for b in p.backends.get_ref() {
        let shown = match (&b.addr, &b.name, b.port) {
            (Some(a), None, None) => a.to_string(),
            (None, Some(n), Some(port)) => {
                let name = n.get_ref();
                let ok_label = |l: &str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                };
                let bare = name.strip_suffix('.').unwrap_or(name);
                if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(ok_label) {
                    return Err((
                        span_of(n),
                        format!("pools.{pname}.backends.name: {name:?} is not a DNS name"),
                    ));
                }
                if port == 0 {
                    return Err((
                        span_of(n),
                        format!("pools.{pname}.backends.port: 0 is not a port (for {name:?})"),
                    ));
                }
                format!("{name}:{port}")
            }
            _ => {
                return Err((
                    span_of(&p.backends),
                    format!(
                        "pools.{pname}.backends: each backend needs either addr = \"IP:PORT\" or name = \"dns.name\" with port = N"
                    ),
                ));
            }
        };
        if !seen.insert(shown.clone()) {
            return Err((
                span_of(&p.backends),
                format!("pools.{pname}.backends: {shown} is listed twice"),
            ));
        }
        let w = *b.weight.get_ref();
        if w == 0 || w > MAX_WEIGHT {
            return Err((
                span_of(&b.weight),
                format!(
                    "pools.{pname}.backends.weight: {w} for {shown} is out of range 1..={MAX_WEIGHT}"
                ),
            ));
        }
        if b.addr.is_some_and(|a| a.port() == 0) {
            return Err((
                span_of(&p.backends),
                format!("pools.{pname}.backends.addr: {shown} has no port"),
            ));
        }
    }
    if let Some(ss) = &p.slow_start
        && matches!(p.algorithm, Algorithm::RingHash | Algorithm::Maglev)
    {
        return Err((
            span_of(ss),
            format!(
                "pools.{pname}.slow_start: {:?} does not ramp weights (consistent hashing must not move keys); slow_start is for round_robin and least_conn",
                p.algorithm
            ),
        ));
    }
    let points = *p.ring_points.get_ref();
    if points == 0 || points > 10_000 {
        return Err((
            span_of(&p.ring_points),
            format!("pools.{pname}.ring_points: {points} is out of range 1..=10000"),
        ));
    }
    let m = *p.maglev_table_size.get_ref();
    if !is_prime(m as u64) || !(7..=5_000_011).contains(&m) {
        return Err((
            span_of(&p.maglev_table_size),
            format!(
                "pools.{pname}.maglev_table_size: {m} must be a prime from 7 to 5000011 (e.g. 65537)"
            ),
        ));
    }
    if let Some(f) = &p.balance_factor {
        let v = *f.get_ref();
        if !(v > 1.0 && v <= MAX_BALANCE_FACTOR) {
            return Err((
                span_of(f),
                format!(
                    "pools.{pname}.balance_factor: {v} must be above 1.0 and at most {MAX_BALANCE_FACTOR} (e.g. 1.25)"
                ),
            ));
        }
    }
    if let Some(r) = &p.rebalance {
        let t = *r.tolerance.get_ref();
        if !(0.0..=MAX_REBALANCE_TOLERANCE).contains(&t) {
            return Err((
                span_of(&r.tolerance),
                format!(
                    "pools.{pname}.rebalance.tolerance: {t} must be from 0 to {MAX_REBALANCE_TOLERANCE} (0.2: act above 1.2 times the share)"
                ),
            ));
        }
        parse_rate(r.rate.get_ref()).map_err(|m| {
            (
                span_of(&r.rate),
                format!("pools.{pname}.rebalance.rate: {m}"),
            )
        })?;
        if matches!(p.algorithm, Algorithm::RingHash | Algorithm::Maglev)
            && p.hash_key == HashKey::ClientIp
        {
            return Err((
                span_of(&r.tolerance).or(span_of(&p.backends)),
                format!(
                    "pools.{pname}.rebalance: {:?} on client_ip sends a client back to the backend its address hashes to, so closing it moves nothing; use round_robin, least_conn or hash_key = \"client_ip_port\"",
                    p.algorithm
                ),
            ));
        }
    }
    if let Some(cc) = &p.tcp_congestion {
        check_congestion(cc.get_ref())
            .map_err(|m| (span_of(cc), format!("pools.{pname}.tcp_congestion: {m}")))?;
    }
    super::health::validate_health(pname, &p.health)?;
    Ok(())
}
