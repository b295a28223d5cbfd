//! The health loop of one backend, in a room of its own (as pingora's `background.rs`):
//! wait with jitter, fold in the connects the data plane saw fail, probe, record the result
//! on the backend and in the metrics, and report a changed verdict.
//!
//! Owns: the timing of one backend's checks and its [`Health`] counter. Must not touch: the
//! control state or the snapshot; it reads its settings and reports its verdicts through
//! the two functions its caller gives it.

use super::{Health, Outcome};
use crate::backend::{Backend, BackendState};
use crate::config::HealthConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the data plane's connect failures (and the backend's removal) are looked at
/// between probes.
const POLL: Duration = Duration::from_millis(100);

/// Checks `backend` until it is removed or `settings` finds no pool for it. `settings` gives
/// the pool's health settings as they are now (a reload may change them between probes);
/// `verdict` is told each change: healthy or not, and why.
pub async fn watch(
    backend: Arc<Backend>,
    settings: impl Fn(&Backend) -> Option<HealthConfig>,
    verdict: impl Fn(&Arc<Backend>, bool, &str),
) {
    let mut health = Health::new(backend.state() == BackendState::Up);
    let Some(first) = settings(&backend) else {
        return;
    };
    let seed = xxhash_rust::xxh3::xxh3_64(backend.addr.to_string().as_bytes());
    let mut wait = super::jitter(first.interval.get(), seed);
    let label = backend.addr.to_string();
    loop {
        // Wait for the next probe, looking at the data plane's connect failures meanwhile.
        let until = Instant::now() + wait;
        loop {
            if backend.is_removed() {
                return;
            }
            let Some(cfg) = settings(&backend) else {
                return;
            };
            let failures = backend
                .stats
                .failures_in_row
                .swap(0, std::sync::atomic::Ordering::Relaxed);
            if failures > 0
                && let Some(v) = health.record_failures(failures, cfg.rise.get(), cfg.fall.get())
            {
                let reason = format!("{failures} connects in a row failed in the data plane");
                verdict(&backend, v, &reason);
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep(POLL.min(until - now)).await;
        }
        let Some(cfg) = settings(&backend) else {
            return;
        };
        let started = Instant::now();
        let outcome = super::probe(backend.addr, &cfg).await;
        let latency = started.elapsed();
        backend.record_check(crate::backend::CheckReport {
            ok: outcome == Outcome::Ok,
            latency,
            at_ms: crate::backend::unix_now_ms(),
            error: match &outcome {
                Outcome::Ok => None,
                Outcome::Fail(why) => Some(why.to_string()),
            },
        });
        let pool = backend.pool.clone();
        metrics::histogram!("ringlb_health_check_duration_seconds", "pool" => pool.clone())
            .record(latency.as_secs_f64());
        let result = if outcome == Outcome::Ok { "ok" } else { "fail" };
        metrics::counter!("ringlb_health_checks_total", "pool" => pool, "backend" => label.clone(), "result" => result).increment(1);
        let ok = outcome == Outcome::Ok;
        if let Some(v) = health.record(ok, cfg.rise.get(), cfg.fall.get()) {
            let reason = match &outcome {
                Outcome::Ok => format!("{} checks in a row passed", cfg.rise),
                Outcome::Fail(why) => {
                    format!("{} checks in a row failed, last: {why}", cfg.fall)
                }
            };
            verdict(&backend, v, &reason);
        } else if let Outcome::Fail(why) = &outcome {
            tracing::debug!(pool = %backend.pool, backend = %backend.addr, why, "check failed");
        }
        wait = cfg.interval.get();
    }
}
