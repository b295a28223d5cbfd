//! `[pools.NAME.health]`: how a pool's backends are probed (a TCP connect, an HTTP GET, a
//! send/expect dialogue, or a Redis, PostgreSQL or MySQL handshake) and how many results in
//! a row flip them.
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
    /// `steps`: bytes to send and what the answer must hold (HAProxy's `tcp-check`).
    SendExpect,
    /// `PING` answered `+PONG`; with `role`, `INFO replication` must name that role.
    Redis,
    /// An SSLRequest answered `S` or `N`; with `username`, a StartupMessage answered with an
    /// authentication request (not an error such as "the database system is starting up").
    Postgres,
    /// The server's greeting: a protocol-10 handshake, not an error packet.
    Mysql,
}

impl HealthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::SendExpect => "send_expect",
            HealthKind::Redis => "redis",
            HealthKind::Postgres => "postgres",
            HealthKind::Mysql => "mysql",
        }
    }
}

/// The replication role a `redis` check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisRole {
    /// `role:master` (the primary, which takes writes).
    Master,
    /// `role:slave` (a replica).
    Replica,
}

/// One step of a `send_expect` check: something to send, something the answer must hold,
/// or both (sent first, then awaited). Text is taken as written (TOML's own escapes, such
/// as `\r\n`, give control bytes); `*_hex` give raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_hex: Option<String>,
    /// The answer must contain these bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_hex: Option<String>,
    /// The answer's bytes must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_regex: Option<String>,
}

/// What a step sends and waits for, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Bytes(Vec<u8>),
    Regex(String),
}

impl StepConfig {
    /// The bytes to send (decoded from hex if need be) and what to wait for.
    pub fn decode(&self) -> Result<(Option<Vec<u8>>, Option<Expect>), String> {
        let send = match (&self.send, &self.send_hex) {
            (Some(_), Some(_)) => return Err("give send or send_hex, not both".into()),
            (Some(t), None) => Some(t.as_bytes().to_vec()),
            (None, Some(h)) => Some(decode_hex(h).map_err(|e| format!("send_hex: {e}"))?),
            (None, None) => None,
        };
        let expect = match (&self.expect, &self.expect_hex, &self.expect_regex) {
            (Some(t), None, None) => Some(Expect::Bytes(t.as_bytes().to_vec())),
            (None, Some(h), None) => Some(Expect::Bytes(
                decode_hex(h).map_err(|e| format!("expect_hex: {e}"))?,
            )),
            (None, None, Some(r)) => Some(Expect::Regex(r.clone())),
            (None, None, None) => None,
            _ => return Err("give one of expect, expect_hex and expect_regex".into()),
        };
        if send.as_ref().is_some_and(|s| s.is_empty()) {
            return Err("an empty send sends nothing; leave it out".into());
        }
        if send.as_ref().is_some_and(|s| s.len() > MAX_SEND) {
            return Err(format!("at most {MAX_SEND} bytes per send"));
        }
        match &expect {
            Some(Expect::Bytes(b)) if b.is_empty() => {
                return Err("an empty expect matches anything; leave it out".into());
            }
            Some(Expect::Bytes(b)) if b.len() > MAX_EXPECT => {
                return Err(format!("at most {MAX_EXPECT} bytes per expect"));
            }
            Some(Expect::Regex(r)) => {
                regex::bytes::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("expect_regex {r:?}: {e}"))?;
            }
            _ => {}
        }
        if send.is_none() && expect.is_none() {
            return Err(
                "a step needs send (or send_hex), expect (or expect_hex, expect_regex), or both"
                    .into(),
            );
        }
        Ok((send, expect))
    }
}

/// Hex digits, optionally separated by spaces: `"2a 31 0d 0a"` or `"2a310d0a"`.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{s:?} has an odd number of hex digits"));
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not hex (pairs of 0-9a-f, spaces allowed)"))
        })
        .collect()
}

/// Most steps in a `send_expect` check, and the sizes of one step's send and expect.
pub const MAX_STEPS: usize = 32;
pub const MAX_SEND: usize = 64 * 1024;
pub const MAX_EXPECT: usize = 4096;

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
    /// send_expect: the dialogue, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepConfig>,
    /// Most bytes one expect reads before it gives up (what a peer can make a check hold).
    #[serde(default = "default_max_read")]
    pub max_read: Num<1, { 1 << 20 }>,
    /// redis: the replication role a backend must have to pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RedisRole>,
    /// redis: `AUTH` with the password in this file (read at each check, so a rotated
    /// password is picked up); with `username`, `AUTH username password` (Redis 6 ACLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// redis: the ACL user; postgres: the user of the StartupMessage; mysql: a user that may
    /// log in without a password (the check then logs in and quits, which MySQL does not
    /// count against `max_connect_errors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// postgres: the database of the StartupMessage (default: the user's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
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
            steps: Vec::new(),
            max_read: default_max_read(),
            role: None,
            password_file: None,
            username: None,
            database: None,
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
fn default_max_read() -> Num<1, { 1 << 20 }> {
    Num(16 * 1024)
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
    // The keys of one kind are refused with another: a `role` that no check reads would
    // leave a replica routable while the operator believes only the primary is.
    let kind = h.kind;
    let only = |key: &str, set: bool, kinds: &[HealthKind]| -> Result<(), Invalid> {
        if set && !kinds.contains(&kind) {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err((
                None,
                format!(
                    "pools.{pname}.health.{key}: only for kind = {} (this check is {:?})",
                    names.join(" or "),
                    kind.as_str()
                ),
            ));
        }
        Ok(())
    };
    only("steps", !h.steps.is_empty(), &[HealthKind::SendExpect])?;
    only("role", h.role.is_some(), &[HealthKind::Redis])?;
    only(
        "password_file",
        h.password_file.is_some(),
        &[HealthKind::Redis],
    )?;
    only(
        "username",
        h.username.is_some(),
        &[HealthKind::Redis, HealthKind::Postgres, HealthKind::Mysql],
    )?;
    only("database", h.database.is_some(), &[HealthKind::Postgres])?;
    if kind == HealthKind::SendExpect && h.steps.is_empty() {
        return Err((
            None,
            format!(
                "pools.{pname}.health.steps: kind = \"send_expect\" needs steps, e.g. steps = [{{ send = \"PING\\r\\n\", expect = \"+PONG\" }}]"
            ),
        ));
    }
    if h.steps.len() > MAX_STEPS {
        return Err((
            None,
            format!("pools.{pname}.health.steps: at most {MAX_STEPS} steps"),
        ));
    }
    for (i, step) in h.steps.iter().enumerate() {
        step.decode()
            .map_err(|e| (None, format!("pools.{pname}.health.steps[{i}]: {e}")))?;
    }
    for (key, v) in [("username", &h.username), ("database", &h.database)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 63 || v.bytes().any(|b| b == 0 || b.is_ascii_control()))
        {
            return Err((
                None,
                format!(
                    "pools.{pname}.health.{key}: {v:?} must be 1 to 63 bytes, without control characters"
                ),
            ));
        }
    }
    if let Some(f) = &h.password_file {
        read_secret(f).map_err(|e| (None, format!("pools.{pname}.health.password_file: {e}")))?;
    }
    Ok(())
}

/// Reads a password file: its first line, without the line end. Empty, unreadable or over
/// 4 KiB is an error.
pub fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if line.len() > 4096 {
        return Err(format!("{}: longer than 4096 bytes", path.display()));
    }
    Ok(line)
}
