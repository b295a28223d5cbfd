//! Health checks: the rise/fall state machine, TCP and HTTP probes, and the checker loop.
//!
//! Owns: deciding whether a backend is healthy. [`Health`] is a small pure type (consecutive
//! successes and failures against `rise`/`fall`) tested on its own; probes run on the control
//! plane's tokio runtime, one task per backend, spread with jitter.
//! Must not touch: the data plane. A verdict reaches workers only as a backend state change
//! published by the control state (`control::state`).

use crate::config::{HealthConfig, HealthKind, parse_status_range};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Probes `addr` once as the pool's health settings say, within `timeout`.
pub async fn probe(addr: SocketAddr, cfg: &HealthConfig) -> Outcome {
    let target = match cfg.port {
        Some(p) => SocketAddr::new(addr.ip(), p),
        None => addr,
    };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect to {target}: {e}"))?;
        if cfg.kind == HealthKind::Tcp {
            return Ok(());
        }
        let host = cfg.host.clone().unwrap_or_else(|| target.to_string());
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nConnection: close\r\n\r\n",
            cfg.path
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send request: {e}"))?;
        // The status line is all a verdict needs.
        let mut buf = [0u8; 256];
        let mut have = 0;
        while !buf[..have].contains(&b'\n') && have < buf.len() {
            let n = stream
                .read(&mut buf[have..])
                .await
                .map_err(|e| format!("read response: {e}"))?;
            if n == 0 {
                break;
            }
            have += n;
        }
        let line = String::from_utf8_lossy(&buf[..have]);
        let line = line.lines().next().unwrap_or("");
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
        let ranges = parse_status_range(&cfg.expect_status).unwrap_or_else(|_| vec![(200, 399)]);
        if ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
            Ok(())
        } else {
            Err(format!(
                "{} answered {status}, expected {}",
                cfg.path, cfg.expect_status
            ))
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
