//! DNS-discovered backends: `{ name = "web.svc", port = 8080 }` entries are resolved every
//! `resolve_interval`, and every A/AAAA answer is a backend, as HAProxy's `server-template`
//! with `resolvers`, Envoy's STRICT_DNS and NGINX's `resolve` do.
//!
//! Owns: the resolvers (hickory-resolver on the control runtime; the system's configuration,
//! or the pool's `resolvers`) and the lookup loop. Changes go through `state.rs` like a
//! reload: new addresses start `starting` and are up after `rise` checks; vanished ones drain
//! (up to the default drain timeout) and leave. A failed or empty answer keeps the last known
//! set and is logged and counted (`ringlb_dns_lookups_total{result}`): a DNS outage never
//! empties a pool.
//! Must not touch: the data plane.

use super::{Control, DEFAULT_DRAIN_TIMEOUT};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// One name to resolve.
struct Target {
    pool: String,
    name: String,
    port: u16,
    resolvers: Vec<SocketAddr>,
    interval: Duration,
}

fn targets(c: &Control) -> Vec<Target> {
    let s = c.lock();
    s.config
        .pools
        .iter()
        .flat_map(|(pool, pc)| {
            pc.named().map(move |(name, port, _, _)| Target {
                pool: pool.clone(),
                name: name.to_string(),
                port,
                resolvers: pc.resolvers.clone(),
                interval: pc.resolve_interval.get(),
            })
        })
        .collect()
}

fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let group: NameServerConfigGroup = servers
            .iter()
            .map(|a| NameServerConfig::new(*a, Protocol::Udp))
            .collect::<Vec<_>>()
            .into();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        )
    };
    let o = builder.options_mut();
    // Every round asks the servers: a cached answer would hide a change until its TTL.
    o.cache_size = 0;
    o.timeout = Duration::from_secs(2);
    o.attempts = 1;
    Ok(builder.build())
}

impl Control {
    /// The lookup loop (one task for every named backend of every pool; reloads are seen at
    /// the next round).
    pub(super) async fn discovery_loop(self) {
        let mut resolvers: HashMap<Vec<SocketAddr>, TokioResolver> = HashMap::new();
        let mut next: HashMap<(String, String, u16), Instant> = HashMap::new();
        let mut failing: HashMap<(String, String, u16), bool> = HashMap::new();
        loop {
            let now = Instant::now();
            for t in targets(&self) {
                let key = (t.pool.clone(), t.name.clone(), t.port);
                if next.get(&key).is_some_and(|at| *at > now) {
                    continue;
                }
                next.insert(key.clone(), now + t.interval);
                let r = match resolvers.get(&t.resolvers) {
                    Some(r) => r,
                    None => match resolver(&t.resolvers) {
                        Ok(r) => resolvers.entry(t.resolvers.clone()).or_insert(r),
                        Err(e) => {
                            tracing::error!(pool = %t.pool, name = %t.name, error = %e, "DNS: no resolver");
                            continue;
                        }
                    },
                };
                let answer =
                    tokio::time::timeout(LOOKUP_TIMEOUT, r.lookup_ip(t.name.as_str())).await;
                let addrs: Result<Vec<SocketAddr>, String> = match answer {
                    Ok(Ok(l)) => Ok(l.iter().map(|ip| SocketAddr::new(ip, t.port)).collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                };
                let addrs = addrs.and_then(|a| {
                    if a.is_empty() {
                        Err("an empty answer".into())
                    } else {
                        Ok(a)
                    }
                });
                let result = if addrs.is_ok() { "ok" } else { "failure" };
                metrics::counter!("ringlb_dns_lookups_total", "pool" => t.pool.clone(), "name" => t.name.clone(), "result" => result).increment(1);
                match addrs {
                    Ok(a) => {
                        if failing.remove(&key).is_some() {
                            tracing::info!(pool = %t.pool, name = %t.name, "DNS answers again");
                        }
                        let changed = self.lock().set_resolved(&t.pool, &t.name, t.port, a);
                        match changed {
                            Ok((joined, left)) => {
                                for b in joined {
                                    self.watch(b);
                                }
                                for (b, d) in left {
                                    self.remove_after_drain(b, d, DEFAULT_DRAIN_TIMEOUT);
                                }
                            }
                            Err(e) => {
                                tracing::error!(pool = %t.pool, name = %t.name, error = %e, "DNS answer not applied")
                            }
                        }
                    }
                    Err(e) => {
                        if !failing.contains_key(&key) {
                            tracing::warn!(pool = %t.pool, name = %t.name, error = %e, "DNS lookup failed: keeping the last known backends");
                        }
                        failing.insert(key, true);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
