//! `[pools.NAME.health]`: how a pool's backends are probed (TCP connect or HTTP GET) and
//! how many results in a row flip them.
//!
//! Owns: the health schema, its defaults and ranges, and `validate_health`.

use super::values::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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

/// Checks a pool's health-check settings (whatever the kind: a wrong value is wrong even
/// where it is not used yet).
pub(super) fn validate_health(pname: &str, h: &HealthConfig) -> Result<(), Invalid> {
    if h.port == Some(0) {
        return Err((None, format!("pools.{pname}.health.port: 0 is not a port")));
    }
    if let Some(host) = &h.host
        && (host.is_empty() || host.len() > 255 || host.chars().any(|c| c.is_control() || c == ' '))
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
    Ok(())
}
