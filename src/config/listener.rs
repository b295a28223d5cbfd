//! `[[listeners]]`: a listening socket, where it sends connections (a pool, SNI routes), who
//! may connect, and its timeouts.
//!
//! Owns: the listener schema, its defaults and ranges, and `validate_listener`.

use super::pool::PoolConfig;
use super::values::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

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
    /// One line per connection at close: "off", "stderr" or a file path (reopened on SIGHUP
    /// and SIGUSR1, for logrotate).
    #[serde(default = "default_access_log")]
    pub access_log: Spanned<String>,
    #[serde(default)]
    pub access_log_format: LogFormat,
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

/// How a log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_access_log() -> Spanned<String> {
    Spanned::new(0..0, "off".into())
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

fn default_inspect_timeout() -> Dur<US_MS, { 5 * US_MIN }> {
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
pub(super) fn check_congestion(name: &str) -> Result<(), String> {
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

/// Most retries a listener may ask for (bounds the per-connection "tried" list).
pub const MAX_RETRIES: u32 = 7;

/// Most SNI routes and allow/deny rules per listener.
pub const MAX_ROUTES: usize = 10_000;
pub const MAX_ACL_RULES: usize = 100_000;

/// Checks one listener's own settings (names and binds across listeners are checked by the
/// caller): its pools exist, its routes and allow/deny rules parse.
pub(super) fn validate_listener(
    l: &ListenerConfig,
    pools: &BTreeMap<String, PoolConfig>,
) -> Result<(), Invalid> {
    let name = l.name.get_ref();
    let known_pool = |key: &str, p: &Spanned<String>| {
        if pools.contains_key(p.get_ref()) {
            return Ok(());
        }
        let known: Vec<&str> = pools.keys().map(|s| s.as_str()).collect();
        Err((
            span_of(p),
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
                span_of(&l.name),
                format!(
                    "listeners.pool: listener {name:?} needs a pool (or routes, with or without a default pool)"
                ),
            ));
        }
        None => {}
    }
    crate::accesslog::Target::parse(l.access_log.get_ref())
        .map_err(|m| (span_of(&l.access_log), format!("listeners.{m}")))?;
    if l.routes.len() > MAX_ROUTES {
        return Err((
            span_of(&l.name),
            format!("listeners.routes: at most {MAX_ROUTES} routes per listener"),
        ));
    }
    let mut patterns = HashSet::new();
    for r in &l.routes {
        known_pool("routes.pool", &r.pool)?;
        crate::routes::check_sni_pattern(r.sni.get_ref())
            .map_err(|m| (span_of(&r.sni), format!("listeners.routes.sni: {m}")))?;
        if !patterns.insert(r.sni.get_ref().to_ascii_lowercase()) {
            return Err((
                span_of(&r.sni),
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
                span_of(&l.name),
                format!("listeners.{key}: at most {MAX_ACL_RULES} rules"),
            ));
        }
        for c in list {
            crate::routes::parse_cidr(c.get_ref())
                .map_err(|m| (span_of(c), format!("listeners.{key}: {m}")))?;
        }
    }
    if *l.retries.get_ref() > MAX_RETRIES {
        return Err((
            span_of(&l.retries),
            format!("listeners.retries: at most {MAX_RETRIES}"),
        ));
    }
    if let Some(cc) = &l.tcp_congestion {
        check_congestion(cc.get_ref())
            .map_err(|m| (span_of(cc), format!("listeners.tcp_congestion: {m}")))?;
    }
    if *l.relay.get_ref() == Relay::Splice {
        return Err((
            span_of(&l.relay),
            "listeners.relay: \"splice\" is not available in this version; use \"recv_send\" (io_uring runs splice on kernel worker threads and measured slower on loopback)".into(),
        ));
    }
    Ok(())
}
