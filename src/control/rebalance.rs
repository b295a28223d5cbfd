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
            excess.sort_by_key(|e| std::cmp::Reverse(e.1));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::snapshot::{Members, Snapshot};
    use proptest::prelude::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// Pool `p` over backends of `weights`, with `rebalance` as given (the real config
    /// path: parsed, validated, assembled into a snapshot).
    fn pool(weights: &[u32], rebalance: &str) -> Arc<Pool> {
        let list: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{ addr = \"127.0.0.1:{}\", weight = {w} }}", 9000 + i))
            .collect();
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\nalgorithm = \"least_conn\"\nbackends = [{}]\n{rebalance}\n",
            list.join(", ")
        );
        let cfg = crate::config::Config::parse("t.toml", &text).expect("valid");
        let members: Members = [(
            "p".to_string(),
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let a = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
                    Arc::new(Backend::new("p", a, w, BackendState::Up))
                })
                .collect(),
        )]
        .into_iter()
        .collect();
        Snapshot::assemble(&cfg, &members, None)
            .pool("p")
            .unwrap()
            .clone()
    }

    /// What the workers may close now, per backend (taken, as workers that found idle
    /// connections for all of it would).
    fn take_grants(p: &Pool) -> Vec<u32> {
        p.backends.iter().map(|b| b.revoke_rebalance()).collect()
    }

    #[test]
    fn a_pool_without_the_key_is_left_alone_until_a_run_is_asked_for() {
        let p = pool(&[1, 1], "");
        p.backends[0].stats.active.store(20, Relaxed);
        let mut r = Rebalancer::default();
        let t = Instant::now();
        for i in 0..10 {
            r.tick(std::slice::from_ref(&p), t + PERIOD * i);
        }
        assert_eq!(take_grants(&p), vec![0, 0]);
        let found = r.start(&p, t);
        assert!(found[0].over && !found[1].over, "{found:?}");
        r.tick(std::slice::from_ref(&p), t + PERIOD);
        // The default pace, 20/s: 2 closes per 100 ms, all from the hot backend.
        assert_eq!(take_grants(&p), vec![2, 0]);
        // Balanced: the run ends, and grants stop even with connections over the share.
        p.backends[0].stats.active.store(10, Relaxed);
        p.backends[1].stats.active.store(10, Relaxed);
        r.tick(std::slice::from_ref(&p), t + PERIOD * 2);
        p.backends[0].stats.active.store(13, Relaxed);
        r.tick(std::slice::from_ref(&p), t + PERIOD * 3);
        assert_eq!(take_grants(&p), vec![0, 0]);
    }

    #[test]
    fn draining_and_protected_backends_lose_nothing() {
        let p = pool(
            &[1, 1, 1],
            "rebalance = { tolerance = 0.0, rate = \"1000/s\" }",
        );
        for (b, n) in p.backends.iter().zip([30, 30, 0]) {
            b.stats.active.store(n, Relaxed);
        }
        p.backends[0].set_state(BackendState::Draining);
        p.backends[1].set_protected_until(crate::backend::unix_now() + 3600);
        let mut r = Rebalancer::default();
        r.tick(std::slice::from_ref(&p), Instant::now());
        assert_eq!(take_grants(&p), vec![0, 0, 0]);
    }

    proptest! {
        /// Any loads, weights, tolerance and rate: only backends over their share get
        /// closes, never more than bring them down to it, and the pool's closes over any
        /// run of periods stay within the rate (plus the one-period cap).
        #[test]
        fn grants_stay_within_the_share_and_the_rate(
            load in proptest::collection::vec((1u32..5, 0i64..200), 2..6),
            tolerance in 0.0f64..2.0,
            rate in 1u32..200,
            periods in 1u32..30,
        ) {
            let weights: Vec<u32> = load.iter().map(|l| l.0).collect();
            let p = pool(&weights, &format!("rebalance = {{ tolerance = {tolerance}, rate = \"{rate}/s\" }}"));
            for (b, l) in p.backends.iter().zip(&load) {
                b.stats.active.store(l.1, Relaxed);
            }
            let wsum: u32 = weights.iter().sum();
            let mut r = Rebalancer::default();
            let t = Instant::now();
            let mut closed = 0u64;
            for i in 1..=periods {
                // Shares of the connections open now (closed ones are not back yet).
                let total: i64 = p.backends.iter().map(|b| b.active()).sum();
                r.tick(std::slice::from_ref(&p), t + PERIOD * i);
                for ((b, w), n) in p.backends.iter().zip(&weights).zip(take_grants(&p)) {
                    let share = total as f64 * *w as f64 / wsum as f64;
                    let active = b.active();
                    prop_assert!(
                        n as i64 <= (active - share.ceil() as i64).max(0),
                        "{} granted {n} with {active} open, share {share}", b.addr
                    );
                    if n > 0 {
                        // As the workers would: closed (and the clients not back yet).
                        b.stats.active.fetch_sub(n as i64, Relaxed);
                    }
                    closed += n as u64;
                }
            }
            let cap = (rate as f64 * PERIOD.as_secs_f64()).max(1.0);
            prop_assert!(
                closed as f64 <= rate as f64 * PERIOD.as_secs_f64() * periods as f64 + cap,
                "{closed} closes in {periods} periods at {rate}/s"
            );
        }
    }
}
