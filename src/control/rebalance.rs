//! The rebalancer: after a scale-out, long-lived connections stay where they are and the new
//! backends sit idle. Every [`PERIOD`] it compares each backend's open connections with its
//! weighted share of its pool's, and lets the workers close some idle connections of the
//! backends over their share, at a bounded rate; clients that reconnect land on the others.
//!
//! Owns: when a backend is over its share, how many of its connections may close now (a
//! quota on the backend, which the workers take from at their tick; `proxy/worker.rs`
//! chooses which: idle ones, oldest first), the pace, and the runs asked for through the
//! admin API. Must not touch: connections (only the workers close them) or membership.
//!
//! Which backends take part: those of the tier that serves now (the primaries, or the
//! backups while no primary is up), in state up. A draining backend is left alone: a drain
//! already lets its connections end on their own terms, and its share of new ones is none.
//! A protected backend (scale-in protection) takes new connections but none of its own are
//! closed: the protection says its work must not be disturbed.

use super::views::RebalanceShare as Share;
use crate::backend::Backend;
use crate::config::RebalanceSettings;
use crate::snapshot::Pool;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often shares are compared and closes granted.
pub const PERIOD: Duration = Duration::from_millis(100);
/// How long a rebalance asked for through the admin API may go on.
pub const MANUAL_LIMIT: Duration = Duration::from_secs(30);

/// One pool's rebalancing.
#[derive(Default)]
struct Run {
    /// Closes the pace allows now (fractional; capped, so idle time saves up no burst).
    tokens: f64,
    /// Backends over (1 + tolerance) × share, closing until they are at their share.
    over: HashSet<SocketAddr>,
    /// A run asked for through the admin API: until when, and with what settings.
    manual: Option<(Instant, RebalanceSettings)>,
}

/// Every pool's rebalancing (kept by the control plane, ticked by its loop).
#[derive(Default)]
pub struct Rebalancer {
    runs: BTreeMap<String, Run>,
}

/// The connections of `serving` and each one's share: (backend, active, share).
fn shares(serving: &[&Arc<Backend>]) -> Vec<(Arc<Backend>, i64, f64)> {
    let total: i64 = serving.iter().map(|b| b.active().max(0)).sum();
    let wsum: f64 = serving.iter().map(|b| b.effective_weight()).sum();
    serving
        .iter()
        .map(|b| {
            let share = if wsum > 0.0 {
                total as f64 * b.effective_weight() / wsum
            } else {
                0.0
            };
            ((*b).clone(), b.active().max(0), share)
        })
        .collect()
}

/// The backends that take part in `pool`'s balance now.
fn serving(pool: &Pool) -> Vec<&Arc<Backend>> {
    let backups = pool.serving_backups();
    pool.backends
        .iter()
        .filter(|b| b.is_routable() && b.is_backup() == backups)
        .collect()
}

impl Rebalancer {
    /// Starts a run of `pool` now (`POST /pools/{pool}/rebalance`), with its `rebalance`
    /// settings or the defaults, for at most [`MANUAL_LIMIT`] or until it is balanced.
    /// Returns what it found.
    pub fn start(&mut self, pool: &Pool, now: Instant) -> Vec<Share> {
        let settings = pool.rebalance.unwrap_or_default();
        let run = self.runs.entry(pool.name.clone()).or_default();
        run.manual = Some((now + MANUAL_LIMIT, settings));
        let serving = serving(pool);
        shares(&serving)
            .into_iter()
            .map(|(b, active, share)| Share {
                addr: b.addr.to_string(),
                active_connections: active,
                share: (share * 100.0).round() / 100.0,
                over: active as f64 > (1.0 + settings.tolerance) * share
                    && b.protection_left().is_none(),
            })
            .collect()
    }

    /// One period: for every pool that rebalances (by config, or a run asked for), takes
    /// back what the workers did not use of the last grants and grants again, at the pace.
    pub fn tick(&mut self, pools: &[Arc<Pool>], now: Instant) {
        self.runs
            .retain(|name, _| pools.iter().any(|p| &p.name == name));
        for pool in pools {
            let run = self.runs.entry(pool.name.clone()).or_default();
            // Unused grants come back (a grant lives one period, so the closes of any
            // second stay within the rate however the workers' ticks fall).
            let mut returned = 0u32;
            for b in &pool.backends {
                returned += b.revoke_rebalance();
            }
            if run.manual.is_some_and(|(until, _)| now >= until) {
                run.manual = None;
            }
            let Some(settings) = pool.rebalance.or(run.manual.map(|(_, s)| s)) else {
                run.over.clear();
                run.tokens = 0.0;
                continue;
            };
            let cap = (settings.rate * PERIOD.as_secs_f64()).max(1.0);
            run.tokens =
                (run.tokens + returned as f64 + settings.rate * PERIOD.as_secs_f64()).min(cap);
            let serving = serving(pool);
            let mut excess: Vec<(Arc<Backend>, u32)> = Vec::new();
            let present: HashSet<SocketAddr> = serving.iter().map(|b| b.addr).collect();
            run.over.retain(|a| present.contains(a));
            for (b, active, share) in shares(&serving) {
                let target = share.ceil() as i64;
                if b.protection_left().is_some() || active <= target {
                    run.over.remove(&b.addr);
                    continue;
                }
                if active as f64 > (1.0 + settings.tolerance) * share {
                    run.over.insert(b.addr);
                }
                if run.over.contains(&b.addr) {
                    excess.push((b, (active - target) as u32));
                }
            }
            if excess.is_empty() {
                // Balanced: a run asked for ends here.
                run.manual = None;
                continue;
            }
            // The most loaded first, one close at a time round the list, as far as the
            // pace allows.
            excess.sort_by(|a, b| b.1.cmp(&a.1));
            let idle_ms = settings.idle_for.as_millis().min(u32::MAX as u128) as u32;
            let mut grants = vec![0u32; excess.len()];
            let mut left = run.tokens.floor() as u32;
            while left > 0 {
                let mut gave = false;
                for (i, (_, want)) in excess.iter().enumerate() {
                    if left > 0 && grants[i] < *want {
                        grants[i] += 1;
                        left -= 1;
                        gave = true;
                    }
                }
                if !gave {
                    break;
                }
            }
            for ((b, _), n) in excess.iter().zip(grants) {
                if n > 0 {
                    b.grant_rebalance(n, idle_ms);
                    run.tokens -= n as f64;
                }
            }
        }
    }
}
