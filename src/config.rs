//! The TOML configuration: schema, defaults and validation.
//!
//! Owns: parsing a config file into [`Config`], filling defaults, and rejecting anything
//! doubtful with an error that names the key and the line (unknown keys are errors).
//! Must not touch: sockets, threads or any runtime state; a `Config` is plain data.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads; 0 means one per CPU the process may run on.
    #[serde(default)]
    pub workers: Num<0, MAX_WORKERS>,
    /// Pin worker `i` to the `i`-th CPU of the process's affinity set.
    #[serde(default = "default_true")]
    pub pin_workers: bool,
    /// On SIGTERM: stop accepting, let connections finish for up to this long.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Where runtime backend changes are persisted (control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Size of one relay buffer, in bytes (the kernel fills it on recv).
    #[serde(default = "default_buffer_size")]
    pub buffer_size: Spanned<u32>,
    /// Relay buffers per worker (a power of two, at most 32768).
    #[serde(default = "default_buffer_count")]
    pub buffer_count: Spanned<u32>,
    /// After each loop turn, a worker spins this long for more completions before it sleeps
    /// (0: sleep at once). Like HAProxy's `busy-polling`, but bounded: an idle worker sleeps.
    #[serde(default = "default_busy_poll")]
    pub busy_poll: Dur<0, MAX_BUSY_POLL_US>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Spanned<String>,
    pub bind: SocketAddr,
    /// The pool connections go to (with `routes`: when no route matches; without one, such
    /// connections are closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Spanned<String>>,
    /// SNI routes: the TLS ClientHello's server_name picks the pool (exact names first, then
    /// the longest `*.suffix`), read before connecting, TLS not terminated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// With `routes`: how long a client may take to send its ClientHello.
    #[serde(default = "default_inspect_timeout")]
    pub inspect_timeout: Dur<US_MS, { 5 * US_MIN }>,
    /// Source CIDRs that may connect (empty: everyone), checked right after accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Spanned<String>>,
    /// Source CIDRs refused (deny wins over allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Spanned<String>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur<US_MS, { 5 * US_MIN }>,
    /// Other backends tried when a connect fails.
    #[serde(default = "default_retries")]
    pub retries: Spanned<u32>,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur<US_MS>,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_connections: u32,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    #[serde(default = "default_relay")]
    pub relay: Spanned<Relay>,
    /// Listen backlog (like HAProxy's `backlog`).
    #[serde(default = "default_backlog")]
    pub backlog: Num<1, 65535>,
    /// TCP congestion control for client connections (e.g. "cubic"), set on the listening
    /// socket, which accepted connections inherit; unset = the system default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_congestion: Option<Spanned<String>>,
}

/// One SNI route of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A host name (`api.example.com`) or a wildcard (`*.example.com`: any name under it).
    pub sni: Spanned<String>,
    pub pool: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relay {
    #[default]
    RecvSend,
    Splice,
}

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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub addr: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
    /// This backend's own limit (0: none), over the pool's `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Num<0, MAX_BACKEND_CONNECTIONS>>,
}

impl BackendConfig {
    /// The limit in force for this backend in pool `pool` (0: none).
    pub fn limit(&self, pool: &PoolConfig) -> u32 {
        self.max_connections.unwrap_or(pool.max_connections).get()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    #[default]
    Tcp,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub kind: HealthKind,
    #[serde(default = "default_health_interval")]
    pub interval: Dur<{ 10 * US_MS }, US_DAY>,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur<US_MS, { 5 * US_MIN }>,
    #[serde(default = "default_rise")]
    pub rise: Num<1, 1000>,
    #[serde(default = "default_fall")]
    pub fall: Num<1, 1000>,
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Tcp,
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            path: default_health_path(),
            port: None,
            host: None,
            expect_status: default_expect_status(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
/// 64 KiB: iperf3 through the proxy measured 0.59 CPU-s/GB with 64 KiB buffers against 0.70
/// with 16 KiB, with no change in request/response cost (benches/e2e.rs).
fn default_buffer_size() -> Spanned<u32> {
    Spanned::new(0..0, 64 * 1024)
}
fn default_buffer_count() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
/// Off: spinning costs the proxy's own CPU for the load side's and the latency's gain; see
/// "Busy polling" in README.md for when that is worth it.
fn default_busy_poll() -> Dur<0, MAX_BUSY_POLL_US> {
    Dur(Duration::ZERO)
}
fn default_inspect_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
    Dur(Duration::from_secs(5))
}
fn default_queue_size() -> Num<0, MAX_QUEUE_SIZE> {
    Num(1024)
}
fn default_queue_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
    Dur(Duration::from_secs(5))
}
fn default_connect_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
    Dur(Duration::from_secs(2))
}
fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
fn default_relay() -> Spanned<Relay> {
    Spanned::new(0..0, Relay::RecvSend)
}
fn default_idle_timeout() -> Dur<US_MS> {
    Dur(Duration::from_secs(300))
}

/// Checks that this kernel lets ringlb use congestion control `name`, by setting it on a
/// throwaway socket: the same call the listener and backend sockets will make, so a config
/// that passes here cannot fail there for this reason.
fn check_congestion(name: &str) -> Result<(), String> {
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{name:?} is not a congestion control name (this kernel has: {available})"
        ));
    }
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot create a socket to check {name:?}: {e}"))?;
    s.set_tcp_congestion(name.as_bytes()).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => {
            format!("{name:?} is not available in this kernel (it has: {available})")
        }
        Some(libc::EPERM) => format!(
            "{name:?} is not in net.ipv4.tcp_allowed_congestion_control and ringlb lacks CAP_NET_ADMIN (this kernel has: {available})"
        ),
        _ => format!("cannot use {name:?}: {e}"),
    })
}

fn default_backlog() -> Num<1, 65535> {
    Num(1024)
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
fn default_health_interval() -> Dur<{ 10 * US_MS }, US_DAY> {
    Dur(Duration::from_secs(2))
}
fn default_health_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
    Dur(Duration::from_secs(1))
}
fn default_rise() -> Num<1, 1000> {
    Num(2)
}
fn default_fall() -> Num<1, 1000> {
    Num(3)
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_expect_status() -> String {
    "200-399".into()
}

/// Most retries a listener may ask for (bounds the per-connection "tried" list).
pub const MAX_RETRIES: u32 = 7;
/// Largest per-backend `max_connections`.
pub const MAX_BACKEND_CONNECTIONS: u64 = 1_000_000;
/// Largest pool `queue_size`.
pub const MAX_QUEUE_SIZE: u64 = 1_000_000;
/// Most SNI routes and allow/deny rules per listener.
pub const MAX_ROUTES: usize = 10_000;
pub const MAX_ACL_RULES: usize = 100_000;
/// Largest weight: keeps round-robin schedules and hash rings small.
pub const MAX_WEIGHT: u32 = 256;
/// Longest `busy_poll`, in µs: past a millisecond a spin is a busy loop, not a wait for an
/// event already on its way.
pub const MAX_BUSY_POLL_US: u64 = 1_000;
/// Most worker threads (a worker per core; more would only share cores).
pub const MAX_WORKERS: u64 = 1024;
/// Most relay buffer memory per worker (`buffer_size × buffer_count`), pre-faulted at start.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;
/// Largest `balance_factor`: beyond it the bound on loads no longer bounds anything.
pub const MAX_BALANCE_FACTOR: f64 = 100.0;

/// Bounds of durations, in microseconds (the unit of [`Dur`]'s range parameters).
pub const US_MS: u64 = 1_000;
pub const US_S: u64 = 1_000_000;
pub const US_MIN: u64 = 60 * US_S;
pub const US_H: u64 = 60 * US_MIN;
pub const US_DAY: u64 = 24 * US_H;
/// The longest duration any setting or request may name: 30 days. Every `Instant +
/// Duration` ringlb computes from a setting stays far from overflowing with it.
pub const MAX_DURATION_US: u64 = 30 * US_DAY;
pub const MAX_DURATION: Duration = Duration::from_micros(MAX_DURATION_US);

/// A duration written as `"250ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"` (also `"us"`, and
/// `"1m30s"`), within `MIN_US..=MAX_US` microseconds. The range is part of the type, so a
/// value out of range fails while the file is parsed and the error carries its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur<const MIN_US: u64 = 0, const MAX_US: u64 = MAX_DURATION_US>(pub Duration);

impl<const MIN_US: u64, const MAX_US: u64> Dur<MIN_US, MAX_US> {
    pub fn get(self) -> Duration {
        self.0
    }
    /// Parses and range-checks, with a message that gives the range.
    pub fn parse(s: &str) -> Result<Self, String> {
        let d = parse_duration(s)?;
        check_range(d, MIN_US, MAX_US).map(Dur)
    }
}

/// `d` if it lies within `min_us..=max_us` microseconds, else an error that says the range.
pub fn check_range(d: Duration, min_us: u64, max_us: u64) -> Result<Duration, String> {
    let (lo, hi) = (Duration::from_micros(min_us), Duration::from_micros(max_us));
    if d < lo || d > hi {
        return Err(format!(
            "{} is out of range: from {} to {}",
            format_duration(d),
            format_duration(lo),
            format_duration(hi)
        ));
    }
    Ok(d)
}

/// Parses `"250ms"`, `"2s"`, `"1m30s"`, `"1.5s"`; a bare number is refused (which unit would
/// it be?). Exact to the nanosecond (no floating point), total: it returns an error for
/// every string it cannot read, and for anything over [`MAX_DURATION`], never a panic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let shown: String = s.chars().take(40).collect();
    let shown = if shown.len() < s.len() {
        format!("{shown}...")
    } else {
        shown
    };
    let err = || {
        format!(
            "invalid duration {shown:?}: expected a number with a unit (us, ms, s, m, h, d), like \"250ms\" or \"2s\""
        )
    };
    let too_long = || {
        format!(
            "duration {shown:?} is longer than the {} allowed",
            format_duration(MAX_DURATION)
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let max_ns = MAX_DURATION.as_nanos();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: u128 = match &rest[..unit_len] {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(err());
        }
        // Digits past what could matter are refused rather than overflowed: any whole part
        // longer than 20 digits is over the limit, any fraction past 15 digits is below a ns.
        if whole.len() > 20 {
            return Err(too_long());
        }
        let whole_v: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        let frac = &frac[..frac.len().min(15)];
        let frac_ns: u128 = if frac.is_empty() {
            0
        } else {
            let v: u128 = frac.parse().map_err(|_| err())?;
            v * unit_ns / 10u128.pow(frac.len() as u32)
        };
        let part = whole_v
            .checked_mul(unit_ns)
            .and_then(|w| w.checked_add(frac_ns))
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > max_ns {
            return Err(too_long());
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Writes a duration the way the config reads it back (exact to the microsecond).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `#[serde(with = "crate::config::duration_serde")]` for a plain `Duration` field written
/// as `"250ms"`, `"2s"`, `"5m"` (the scaler's config), up to [`MAX_DURATION`]. For a tighter
/// range, `deserialize_with = "crate::config::duration_serde::within::<MIN_US, MAX_US, _>"`.
pub mod duration_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
    pub fn within<'de, const MIN_US: u64, const MAX_US: u64, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        super::Dur::<MIN_US, MAX_US>::parse(&String::deserialize(d)?)
            .map(|d| d.0)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de, const MIN_US: u64, const MAX_US: u64> Deserialize<'de> for Dur<MIN_US, MAX_US> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<const MIN_US: u64, const MAX_US: u64> Serialize for Dur<MIN_US, MAX_US> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A whole number within `MIN..=MAX`, checked while the file is parsed (so the error
/// carries its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Num<const MIN: u64, const MAX: u64>(pub u32);

impl<const MIN: u64, const MAX: u64> fmt::Display for Num<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MIN: u64, const MAX: u64> Num<MIN, MAX> {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Num<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < MIN as i64 || v > MAX as i64 {
            return Err(serde::de::Error::custom(format!(
                "{v} is out of range: from {MIN} to {MAX}"
            )));
        }
        Ok(Num(v as u32))
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Num<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// A config error: what is wrong, and where (line and column when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The offending source line, shown under the message.
    pub source_line: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let (Some(line), Some(src)) = (self.line, &self.source_line) {
            write!(f, "\n {line:>4} | {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses any TOML document into `T`, with errors that give the line and the key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| locate(file, text, e.span(), e.message().to_string()))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            source_line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` only names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            locate(file, text, span, message)
        };
        let cfg: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        cfg.validate().map_err(|(span, msg)| match span {
            Some(_) => at(span, msg),
            None => locate_key(file, text, msg),
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        fn span<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
            let r = s.span();
            if r.is_empty() { None } else { Some(r) }
        }
        if self.listeners.is_empty() {
            return Err((
                None,
                "listeners: at least one [[listeners]] is needed".into(),
            ));
        }
        let count = *self.buffer_count.get_ref();
        if !(count.is_power_of_two() && (2..=32768).contains(&count)) {
            return Err((
                span(&self.buffer_count),
                format!("{count} is not a power of two from 2 to 32768"),
            ));
        }
        let size = *self.buffer_size.get_ref();
        if !(1024..=(1 << 20)).contains(&size) {
            return Err((
                span(&self.buffer_size),
                format!("{size} is not from 1024 to 1048576 bytes"),
            ));
        }
        if size as u64 * count as u64 > MAX_BUFFER_BYTES {
            return Err((
                span(&self.buffer_size),
                format!(
                    "buffer_size {size} x buffer_count {count} is {} MiB per worker, more than the {} MiB allowed",
                    (size as u64 * count as u64) >> 20,
                    MAX_BUFFER_BYTES >> 20
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for l in &self.listeners {
            let name = l.name.get_ref();
            if name.is_empty() {
                return Err((span(&l.name), "listeners.name: must not be empty".into()));
            }
            if !names.insert(name.clone()) {
                return Err((
                    span(&l.name),
                    format!("listeners.name: duplicate listener name {name:?}"),
                ));
            }
            if !binds.insert(l.bind) {
                return Err((
                    span(&l.name),
                    format!(
                        "listeners.bind: {} is bound by two listeners (listener {name:?})",
                        l.bind
                    ),
                ));
            }
            let known_pool = |key: &str, p: &Spanned<String>| {
                if self.pools.contains_key(p.get_ref()) {
                    return Ok(());
                }
                let known: Vec<&str> = self.pools.keys().map(|s| s.as_str()).collect();
                Err((
                    span(p),
                    format!(
                        "listeners.{key}: listener {name:?} names pool {:?}, which is not defined (pools: {})",
                        p.get_ref(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ))
            };
            match &l.pool {
                Some(p) => known_pool("pool", p)?,
                None if l.routes.is_empty() => {
                    return Err((
                        span(&l.name),
                        format!(
                            "listeners.pool: listener {name:?} needs a pool (or routes, with or without a default pool)"
                        ),
                    ));
                }
                None => {}
            }
            if l.routes.len() > MAX_ROUTES {
                return Err((
                    span(&l.name),
                    format!("listeners.routes: at most {MAX_ROUTES} routes per listener"),
                ));
            }
            let mut patterns = HashSet::new();
            for r in &l.routes {
                known_pool("routes.pool", &r.pool)?;
                crate::routes::check_sni_pattern(r.sni.get_ref())
                    .map_err(|m| (span(&r.sni), format!("listeners.routes.sni: {m}")))?;
                if !patterns.insert(r.sni.get_ref().to_ascii_lowercase()) {
                    return Err((
                        span(&r.sni),
                        format!(
                            "listeners.routes.sni: {:?} is routed twice",
                            r.sni.get_ref()
                        ),
                    ));
                }
            }
            for (key, list) in [("allow", &l.allow), ("deny", &l.deny)] {
                if list.len() > MAX_ACL_RULES {
                    return Err((
                        span(&l.name),
                        format!("listeners.{key}: at most {MAX_ACL_RULES} rules"),
                    ));
                }
                for c in list {
                    crate::routes::parse_cidr(c.get_ref())
                        .map_err(|m| (span(c), format!("listeners.{key}: {m}")))?;
                }
            }
            if *l.retries.get_ref() > MAX_RETRIES {
                return Err((
                    span(&l.retries),
                    format!("listeners.retries: at most {MAX_RETRIES}"),
                ));
            }
            if let Some(cc) = &l.tcp_congestion {
                check_congestion(cc.get_ref())
                    .map_err(|m| (span(cc), format!("listeners.tcp_congestion: {m}")))?;
            }
            if *l.relay.get_ref() == Relay::Splice {
                return Err((
                    span(&l.relay),
                    "listeners.relay: \"splice\" is not available in this version; use \"recv_send\" (io_uring runs splice on kernel worker threads and measured slower on loopback)".into(),
                ));
            }
        }
        for (pname, p) in &self.pools {
            if p.backends.get_ref().is_empty() {
                return Err((
                    span(&p.backends),
                    format!("pools.{pname}.backends: a pool needs at least one backend"),
                ));
            }
            let mut seen = HashSet::new();
            for b in p.backends.get_ref() {
                if !seen.insert(b.addr) {
                    return Err((
                        span(&p.backends),
                        format!("pools.{pname}.backends: {} is listed twice", b.addr),
                    ));
                }
                let w = *b.weight.get_ref();
                if w == 0 || w > MAX_WEIGHT {
                    return Err((
                        span(&b.weight),
                        format!(
                            "pools.{pname}.backends.weight: {w} for {} is out of range 1..={MAX_WEIGHT}",
                            b.addr
                        ),
                    ));
                }
                if b.addr.port() == 0 {
                    return Err((
                        span(&p.backends),
                        format!("pools.{pname}.backends.addr: {} has no port", b.addr),
                    ));
                }
            }
            if let Some(ss) = &p.slow_start
                && matches!(p.algorithm, Algorithm::RingHash | Algorithm::Maglev)
            {
                return Err((
                    span(ss),
                    format!(
                        "pools.{pname}.slow_start: {:?} does not ramp weights (consistent hashing must not move keys); slow_start is for round_robin and least_conn",
                        p.algorithm
                    ),
                ));
            }
            let points = *p.ring_points.get_ref();
            if points == 0 || points > 10_000 {
                return Err((
                    span(&p.ring_points),
                    format!("pools.{pname}.ring_points: {points} is out of range 1..=10000"),
                ));
            }
            let m = *p.maglev_table_size.get_ref();
            if !is_prime(m as u64) || !(7..=5_000_011).contains(&m) {
                return Err((
                    span(&p.maglev_table_size),
                    format!(
                        "pools.{pname}.maglev_table_size: {m} must be a prime from 7 to 5000011 (e.g. 65537)"
                    ),
                ));
            }
            if let Some(f) = &p.balance_factor {
                let v = *f.get_ref();
                if !(v > 1.0 && v <= MAX_BALANCE_FACTOR) {
                    return Err((
                        span(f),
                        format!(
                            "pools.{pname}.balance_factor: {v} must be above 1.0 and at most {MAX_BALANCE_FACTOR} (e.g. 1.25)"
                        ),
                    ));
                }
            }
            if let Some(cc) = &p.tcp_congestion {
                check_congestion(cc.get_ref())
                    .map_err(|m| (span(cc), format!("pools.{pname}.tcp_congestion: {m}")))?;
            }
            let h = &p.health;
            if h.port == Some(0) {
                return Err((None, format!("pools.{pname}.health.port: 0 is not a port")));
            }
            if let Some(host) = &h.host
                && (host.is_empty()
                    || host.len() > 255
                    || host.chars().any(|c| c.is_control() || c == ' '))
            {
                return Err((
                    None,
                    format!(
                        "pools.{pname}.health.host: {host:?} is not a host name (1 to 255 characters, no spaces or control characters)"
                    ),
                ));
            }
            // Checked whatever the kind: a wrong value is wrong even where it is not used yet.
            {
                if !h.path.starts_with('/')
                    || h.path.len() > 2048
                    || h.path.chars().any(|c| c.is_control() || c == ' ')
                {
                    return Err((
                        None,
                        format!(
                            "pools.{pname}.health.path: {:?} must start with '/', hold no spaces or control characters, and be at most 2048 bytes",
                            h.path
                        ),
                    ));
                }
                parse_status_range(&h.expect_status)
                    .map_err(|e| (None, format!("pools.{pname}.health.expect_status: {e}")))?;
            }
        }
        Ok(())
    }

    /// Whether two listener definitions agree on what only a restart can apply: the
    /// listening socket itself (name, address, backlog, congestion control).
    pub fn same_socket(a: &ListenerConfig, b: &ListenerConfig) -> bool {
        // `Spanned` compares values, not positions in the file.
        a.name == b.name
            && a.bind == b.bind
            && a.backlog == b.backlog
            && a.tcp_congestion == b.tcp_congestion
    }

    /// The first setting outside the listeners that differs between `a` and `b` and is
    /// read only at start, so that a reload would silently not apply it.
    pub fn needs_restart(a: &Config, b: &Config) -> Option<&'static str> {
        let addr = |c: &Config| c.admin.as_ref().map(|x| (x.listen, x.token_file.clone()));
        [
            (a.workers != b.workers, "workers"),
            (a.pin_workers != b.pin_workers, "pin_workers"),
            (a.buffer_size != b.buffer_size, "buffer_size"),
            (a.buffer_count != b.buffer_count, "buffer_count"),
            (a.state_file != b.state_file, "state_file"),
            (
                a.metrics.as_ref().map(|m| m.listen) != b.metrics.as_ref().map(|m| m.listen),
                "[metrics] listen",
            ),
            (addr(a) != addr(b), "[admin] listen or token_file"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }

    /// The effective configuration (defaults filled in), as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The SNI route tables, as TOML comments (what `ringlb check` prints first): in the
    /// order they are tried, exact names, then wildcards from the longest suffix.
    pub fn route_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for l in self.listeners.iter().filter(|l| !l.routes.is_empty()) {
            let _ = writeln!(
                out,
                "# SNI routes of listener {:?} ({}), inspect_timeout {}:",
                l.name.get_ref(),
                l.bind,
                format_duration(l.inspect_timeout.get())
            );
            let mut routes: Vec<&RouteConfig> = l.routes.iter().collect();
            routes.sort_by_key(|r| {
                let p = r.sni.get_ref();
                (p.starts_with('*'), std::cmp::Reverse(p.len()))
            });
            for r in routes {
                let _ = writeln!(
                    out,
                    "#   {:<40} -> pool {}",
                    r.sni.get_ref(),
                    r.pool.get_ref()
                );
            }
            let fallback = match &l.pool {
                Some(p) => format!("pool {} (default)", p.get_ref()),
                None => "close (no default pool)".into(),
            };
            let _ = writeln!(
                out,
                "#   {:<40} -> {fallback}",
                "(no SNI, not TLS, unknown name)"
            );
        }
        out
    }
}

/// Parses `"200-399"` or `"200"` (also `"200,204"`) into inclusive ranges.
pub fn parse_status_range(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let bad = || format!("{s:?}: expected statuses like \"200\", \"200-399\" or \"200,204\"");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u16>().map_err(|_| bad())?,
                b.trim().parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let v = part.parse::<u16>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        out.push((lo, hi));
    }
    Ok(out)
}

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

fn locate(
    file: &str,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: String,
) -> ConfigError {
    let (line, column, source_line) = match span {
        Some(r) if r.start <= text.len() => {
            let before = &text[..floor_char_boundary(text, r.start)];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_end = text[line_start..]
                .find('\n')
                .map(|i| line_start + i)
                .unwrap_or(text.len());
            (
                Some(line),
                Some(before.len() - line_start + 1),
                Some(text[line_start..line_end].trim_end().to_string()),
            )
        }
        _ => (None, None, None),
    };
    // Name the key when the message does not: the last `key =` before the error's column.
    let message = match (&source_line, column) {
        (Some(src), Some(col)) => match key_before(src, col) {
            Some(key)
                if !message.contains(&format!("`{key}`"))
                    && !message
                        .split(':')
                        .next()
                        .is_some_and(|path| path.ends_with(key)) =>
            {
                format!("{key}: {message}")
            }
            _ => message,
        },
        _ => message,
    };
    ConfigError {
        file: file.to_string(),
        line,
        column,
        source_line,
        message,
    }
}

/// An error found after parsing, whose message starts with the key it is about (`key: ...`
/// or `section.key: ...`): located at the first line that sets that key, so that checks
/// which see the whole document still give a line.
pub fn locate_key(file: &str, text: &str, message: String) -> ConfigError {
    let path = message.split([':', ' ']).next().unwrap_or("");
    let key = path.rsplit('.').next().unwrap_or("");
    let span = (!key.is_empty())
        .then(|| {
            let mut at = 0;
            text.split_inclusive('\n').find_map(|line| {
                let start = at;
                at += line.len();
                let t = line.trim_start();
                let rest = t.strip_prefix(key)?;
                rest.trim_start()
                    .starts_with('=')
                    .then(|| start + (line.len() - t.len()))
                    .map(|s| s..s + key.len())
            })
        })
        .flatten();
    locate(file, text, span, message)
}

/// The largest index at most `i` that starts a character of `s` (an error's span can point
/// into a multi-byte character; slicing there would panic: found by tests/fuzz.rs).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The last `key =` on `line` before `column` (1-based), if any.
fn key_before(line: &str, column: usize) -> Option<&str> {
    let upto = &line[..floor_char_boundary(line, column.saturating_sub(1))];
    let eq = upto.rfind('=')?;
    let before = upto[..eq].trim_end();
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let key = &before[start..];
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8000"
pool = "web"

[pools.web]
backends = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", weight = 2 }]
"#;

    #[test]
    fn listener_socket_settings_need_a_restart_the_rest_does_not() {
        let base = Config::parse("t", GOOD).unwrap();
        let same = |text: &str| {
            let c = Config::parse("t", text).unwrap();
            Config::same_socket(&base.listeners[0], &c.listeners[0])
        };
        let with =
            |extra: &str| GOOD.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{extra}\n"));
        assert!(same(GOOD));
        assert!(
            same(&with("idle_timeout = \"1m\"")),
            "timeouts apply on reload"
        );
        assert!(!same(&with("backlog = 16")));
        assert!(!same(&with("tcp_congestion = \"reno\"")));
        assert!(!same(&GOOD.replace("8000", "8001")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "2", "2x", "ms", "-1s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(2),
            Duration::from_secs(300),
            Duration::from_micros(5),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn huge_and_overflowing_durations_are_errors_not_panics() {
        // Each of these once panicked ("overflow when adding durations") or went through.
        for s in [
            "18446744073709551615s18446744073709551615s",
            "9999999999999999999999h",
            "584942417355y",
            "31d",
            "720h1s",
            "99999999999999999999999999999999999999ms",
            "1e9s",
            "..s",
            ".s",
            "1..5s",
            "1.5.5s",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert_eq!(parse_duration("30d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
        assert_eq!(
            parse_duration("123456789us").unwrap(),
            Duration::from_micros(123_456_789),
            "exact, no floating point"
        );
        let e = Dur::<US_MS, { 5 * US_MIN }>::parse("6m").unwrap_err();
        assert!(e.contains("from 1ms to 5m"), "{e}");
        let long = "9".repeat(10_000) + "s";
        let e = parse_duration(&long).unwrap_err();
        assert!(e.len() < 200, "the message quotes a bounded prefix: {e}");
    }

    #[test]
    fn ranges_are_checked_at_parse_time_with_a_line() {
        let with =
            |extra: &str| GOOD.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{extra}\n"));
        for (extra, key) in [
            ("connect_timeout = \"6m\"", "connect_timeout"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
            ("idle_timeout = \"31d\"", "idle_timeout"),
            ("backlog = 0", "backlog"),
            ("backlog = 70000", "backlog"),
        ] {
            let e = Config::parse("t", &with(extra)).unwrap_err();
            assert_eq!(e.line, Some(6), "{extra}: {e}");
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
        for (top, key) in [
            ("workers = 5000", "workers"),
            (
                "shutdown_timeout = \"400000000000000s\"",
                "shutdown_timeout",
            ),
            ("buffer_size = 1048576\nbuffer_count = 32768", "buffer_size"),
        ] {
            let e = Config::parse("t", &format!("{top}\n{GOOD}")).unwrap_err();
            assert_eq!(e.line, Some(1), "{top}: {e}");
            assert!(e.to_string().contains(key), "{top}: {e}");
        }
        let health = |h: &str| format!("{GOOD}\n[pools.web.health]\n{h}\n");
        for (h, key) in [
            ("rise = 0", "rise"),
            ("fall = 100000", "fall"),
            ("interval = \"1us\"", "interval"),
            ("timeout = \"1h\"", "timeout"),
            ("kind = \"http\"\npath = \"/a b\"", "path"),
            ("host = \"a\\r\\nX-Injected: 1\"", "host"),
        ] {
            let e = Config::parse("t", &health(h)).unwrap_err();
            assert!(e.line.is_some(), "{h}: {e}");
            assert!(e.to_string().contains(key), "{h}: {e}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Total: any string gives a value or an error, never a panic, never past the limit.
            #[test]
            fn parse_duration_never_panics(s in "\\PC{0,40}") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            /// Strings made of the parser's own alphabet reach its deeper branches.
            #[test]
            fn parse_duration_never_panics_on_its_alphabet(s in "[0-9.]{0,25}(us|ms|s|m|h|d|x)?([0-9.]{0,25}(us|ms|s|m|h|d))?") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            /// Every value in range, to the microsecond, reads back as itself.
            #[test]
            fn every_duration_in_range_round_trips(us in 0..=MAX_DURATION_US) {
                let d = Duration::from_micros(us);
                prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
            }

            #[test]
            fn round_numbers_round_trip(n in 0u64..=720, unit in 0usize..4) {
                let d = Duration::from_secs(n * [1, 60, 3600, 1][unit]) / [1, 1, 1, 1000][unit];
                prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
            }

            #[test]
            fn bounded_numbers_are_checked(v in any::<i64>()) {
                let text = format!("v = {v}");
                #[derive(serde::Deserialize)]
                struct T { #[allow(dead_code)] v: Num<1, 1000> }
                let r: Result<T, _> = toml::from_str(&text);
                prop_assert_eq!(r.is_ok(), (1..=1000).contains(&v));
            }
        }
    }

    /// Found by tests/fuzz.rs: an error span inside a multi-byte character panicked while
    /// the error was being located (a reload of such a file killed the balancer).
    #[test]
    fn errors_in_files_with_multibyte_characters_are_located_without_a_panic() {
        for text in [
            "\u{fffd}B",
            "j\u{fffd}\u{fffd}\u{fffd}B",
            "workers = \"é\"",
            "é = 1",
            "[pools.é]\nx = 1",
            "é\u{fffd}= 1 2",
            "x\u{fffd} = \u{fffd}",
        ] {
            let e = Config::parse("t", text).unwrap_err();
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.connect_timeout.get(), Duration::from_secs(2));
        assert_eq!(*l.retries.get_ref(), 2);
        assert_eq!(c.pools["web"].algorithm, Algorithm::RoundRobin);
        assert_eq!(*c.pools["web"].backends.get_ref()[1].weight.get_ref(), 2);
        // The effective config reads back as the same config.
        let again = Config::parse("t.toml", &c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn errors_name_key_and_line() {
        let e =
            Config::parse("t.toml", &GOOD.replace("pool = \"web\"", "pool = \"api\"")).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("listeners.pool"), "{e}");
        let e = Config::parse("t.toml", &format!("wrokers = 2\n{GOOD}")).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("wrokers"), "{e}");
        let e = Config::parse(
            "t.toml",
            &GOOD.replace(
                "pool = \"web\"",
                "pool = \"web\"\nidle_timeout = \"5 minutes\"",
            ),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(6));
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        assert!(parse_status_range("200-399").is_ok());
        assert!(parse_status_range("399-200").is_err());
    }
}
