//! Health checks: the rise/fall state machine and the probes, one file per protocol.
//!
//! - `dialogue`: a connection to a backend with a bounded read buffer: send, and wait for
//!   bytes or a pattern (HAProxy's `tcp-check send/expect`); `send_expect` runs its steps;
//! - `http`: a GET and the status line;
//! - `redis`: `AUTH`, `PING`, and `INFO replication`'s role;
//! - `postgres`: an SSLRequest, or a StartupMessage, as a PostgreSQL client begins;
//! - `mysql`: the server's greeting, and optionally a login without password.
//!
//! - `background`: one backend's check loop (jittered waits, passive failures, probes).
//!
//! Owns: deciding whether a backend is healthy. [`Health`] is a small pure type (consecutive
//! successes and failures against `rise`/`fall`) tested on its own; the loops run on the
//! control plane's tokio runtime, one task per backend, spread with jitter.
//! Must not touch: the data plane. A verdict reaches workers only as a backend state change
//! published by the control state (`control::state`).

pub mod background;
mod dialogue;
mod http;
mod mysql;
mod postgres;
mod redis;

pub use dialogue::Dialogue;

use crate::config::{HealthConfig, HealthKind};
use std::net::SocketAddr;
use std::time::Duration;

/// Consecutive-threshold health: `rise` successes in a row make a backend healthy, `fall`
/// failures in a row make it unhealthy. Anything else keeps the current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl Health {
    pub fn new(healthy: bool) -> Health {
        Health {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// Counts failures that happened elsewhere (connects the data plane saw fail).
    pub fn record_failures(&mut self, n: u32, rise: u32, fall: u32) -> Option<bool> {
        let mut change = None;
        for _ in 0..n {
            change = self.record(false, rise, fall).or(change);
        }
        change
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail(String),
}

/// Probes `addr` once as the pool's health settings say, within `timeout` (the whole
/// check: connect and every exchange).
pub async fn probe(addr: SocketAddr, cfg: &HealthConfig) -> Outcome {
    let target = match cfg.port {
        Some(p) => SocketAddr::new(addr.ip(), p),
        None => addr,
    };
    let work = async {
        let stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect to {target}: {e}"))?;
        let mut d = Dialogue::new(stream, cfg.max_read.get() as usize);
        match cfg.kind {
            HealthKind::Tcp => Ok(()),
            HealthKind::Http => http::check(&mut d, target, cfg).await,
            HealthKind::SendExpect => dialogue::run_steps(&mut d, &cfg.steps).await,
            HealthKind::Redis => redis::check(&mut d, cfg).await,
            HealthKind::Postgres => postgres::check(&mut d, cfg).await,
            HealthKind::Mysql => mysql::check(&mut d, cfg).await,
        }
    };
    match tokio::time::timeout(cfg.timeout.get(), work).await {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Fail(e),
        Err(_) => Outcome::Fail(format!(
            "no answer within {}",
            crate::config::format_duration(cfg.timeout.get())
        )),
    }
}

/// An offset in `[0, period)` spread by `seed` (a hash of the backend's address), so that
/// checks of many backends do not fire at once.
pub fn jitter(period: Duration, seed: u64) -> Duration {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let nanos = period.as_nanos().max(1) as u64;
    Duration::from_nanos(x % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_runs_in_a_row() {
        let mut h = Health::new(true);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(true, 2, 3),
            None,
            "a success breaks the run of failures"
        );
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(false, 2, 3), None, "already down");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert!(h.healthy);
    }

    #[test]
    fn starting_backends_come_up_after_rise() {
        let mut h = Health::new(false);
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), Some(true));
        assert_eq!(h.record(false, 3, 1), Some(false), "fall = 1 drops at once");
    }

    #[test]
    fn passive_failures_count_toward_fall() {
        let mut h = Health::new(true);
        assert_eq!(h.record_failures(2, 2, 3), None);
        assert_eq!(h.record_failures(1, 2, 3), Some(false));
    }

    #[test]
    fn jitter_stays_in_the_period() {
        let offsets: Vec<Duration> = (0..100)
            .map(|s| jitter(Duration::from_secs(2), s))
            .collect();
        assert!(offsets.iter().all(|&d| d < Duration::from_secs(2)));
        // Spread, not bunched: the 100 offsets cover most of the period.
        let (lo, hi) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_millis(1500), "{lo:?}..{hi:?}");
    }
}
