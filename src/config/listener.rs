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
    /// TCP keepalive on client connections, set on the listening socket (accepted sockets
    /// inherit it: nothing per connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Keepalive>,
    /// The backend has ended its side (its EOF was passed on): the client may stay silent
    /// this long before the connection is closed (HAProxy's `timeout client-fin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_fin_timeout: Option<Dur<US_MS>>,
    /// The client has ended its side: the backend may stay silent this long (HAProxy's
    /// `timeout server-fin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_fin_timeout: Option<Dur<US_MS>>,
    /// Connections older than this are closed once idle for `max_connection_age_idle`
    /// (Envoy's `max_downstream_connection_duration`, without cutting bytes in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<Dur<US_S>>,
    #[serde(default = "default_age_idle")]
    pub max_connection_age_idle: Dur<{ 100 * US_MS }, US_H>,
    /// Read a PROXY protocol header before anything else: its source address becomes the
    /// client's (allow/deny, hashing, per-source limits, the access log, the header sent on).
    #[serde(default)]
    pub accept_proxy_protocol: AcceptProxy,
    /// The senders a PROXY header is taken from (CIDRs; required with accept_proxy_protocol:
    /// `["0.0.0.0/0", "::/0"]` trusts everyone). Others are closed and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    /// Most connections open at once from one source address (0: no limit).
    #[serde(default)]
    pub max_connections_per_source: Num<0, 1_000_000>,
    /// New connections per source address: `"20/s"` or `"600/m"` (a token bucket, refilled
    /// evenly), with `connection_rate_burst` at once (default: the per-second rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_per_source: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_burst: Option<Num<1, 1_000_000>>,
    /// Sources tracked at once for the per-source limits (memory: 24 bytes each).
    #[serde(default = "default_source_table_size")]
    pub source_table_size: Num<1024, { 1 << 24 }>,
}

fn default_age_idle() -> Dur<{ 100 * US_MS }, US_H> {
    Dur(Duration::from_secs(1))
}
fn default_source_table_size() -> Num<1024, { 1 << 24 }> {
    Num(65536)
}

/// Which PROXY protocol versions a listener reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptProxy {
    #[default]
    Off,
    V1,
    V2,
    Any,
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
    LogTarget::parse(l.access_log.get_ref())
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
    if l.accept_proxy_protocol == AcceptProxy::Off && !l.proxy_protocol_from.is_empty() {
        return Err((
            span_of(&l.proxy_protocol_from[0]),
            format!(
                "listeners.proxy_protocol_from: listener {name:?} does not accept_proxy_protocol"
            ),
        ));
    }
    if l.accept_proxy_protocol != AcceptProxy::Off && l.proxy_protocol_from.is_empty() {
        return Err((
            span_of(&l.name),
            format!(
                "listeners.proxy_protocol_from: listener {name:?} accepts PROXY headers, so it must say from whom (the front balancer's CIDRs; [\"0.0.0.0/0\", \"::/0\"] trusts anyone who can connect)"
            ),
        ));
    }
    if l.proxy_protocol_from.len() > MAX_ACL_RULES {
        return Err((
            span_of(&l.name),
            format!("listeners.proxy_protocol_from: at most {MAX_ACL_RULES} rules"),
        ));
    }
    for c in &l.proxy_protocol_from {
        crate::routes::parse_cidr(c.get_ref())
            .map_err(|m| (span_of(c), format!("listeners.proxy_protocol_from: {m}")))?;
    }
    if let Some(r) = &l.connection_rate_per_source {
        parse_rate(r.get_ref()).map_err(|m| {
            (
                span_of(r),
                format!("listeners.connection_rate_per_source: {m}"),
            )
        })?;
    } else if l.connection_rate_burst.is_some() {
        return Err((
            span_of(&l.name),
            format!(
                "listeners.connection_rate_burst: listener {name:?} has no connection_rate_per_source"
            ),
        ));
    }
    if *l.relay.get_ref() == Relay::Splice {
        return Err((
            span_of(&l.relay),
            "listeners.relay: \"splice\" is not available in this version; use \"recv_send\" (io_uring runs splice on kernel worker threads and measured slower on loopback)".into(),
        ));
    }
    Ok(())
}

/// Where a listener's access log goes (`access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stderr,
    File(std::path::PathBuf),
}

impl LogTarget {
    pub fn parse(s: &str) -> Result<LogTarget, String> {
        match s {
            "off" => Ok(LogTarget::Off),
            "stderr" => Ok(LogTarget::Stderr),
            "" => Err("access_log: \"\" is neither \"off\", \"stderr\" nor a path".into()),
            p if p.starts_with('/') || p.starts_with('.') => Ok(LogTarget::File(p.into())),
            p => Err(format!(
                "access_log: {p:?} is neither \"off\", \"stderr\" nor a path (a path starts with / or .)"
            )),
        }
    }
}
