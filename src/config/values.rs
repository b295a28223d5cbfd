//! What every config file of ringlb shares, the balancer's and the scaler's: durations
//! (`Dur`, exact, with their range in the type), bounded numbers (`Num`), TOML parsing with
//! errors that give file:line:column and the key.
//!
//! Owns: value types and error location, and the values several sections share (a rate
//! like "20/s", a congestion-control name, TCP keepalive timers), so that the listener and
//! pool schemas each import them from here and not from each other. Must not touch: any
//! section's schema.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;
use toml::Spanned;

/// A validation error: where (a span into the file, if known) and what.
pub type Invalid = (Option<std::ops::Range<usize>>, String);

/// The span of a value, if it came from the file (defaults have none).
pub fn span_of<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    let r = s.span();
    if r.is_empty() { None } else { Some(r) }
}

/// Bounds of durations, in microseconds (the unit of [`Dur`]'s range parameters).
pub const US_MS: u64 = 1_000;
pub const US_S: u64 = 1_000_000;
pub const US_MIN: u64 = 60 * US_S;
pub const US_H: u64 = 60 * US_MIN;
pub const US_DAY: u64 = 24 * US_H;
/// The longest duration any setting or request may name: 30 days. Every `Instant +
/// Duration` ringlb computes from a setting stays far from overflowing with it.
pub const MAX_DURATION_US: u64 = 30 * US_DAY;
pub const MAX_DURATION: Duration = Duration::from_micros(MAX_DURATION_US);

/// A duration written as `"250ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"` (also `"us"`, and
/// `"1m30s"`), within `MIN_US..=MAX_US` microseconds. The range is part of the type, so a
/// value out of range fails while the file is parsed and the error carries its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur<const MIN_US: u64 = 0, const MAX_US: u64 = MAX_DURATION_US>(pub Duration);

impl<const MIN_US: u64, const MAX_US: u64> Dur<MIN_US, MAX_US> {
    pub fn get(self) -> Duration {
        self.0
    }
    /// Parses and range-checks, with a message that gives the range.
    pub fn parse(s: &str) -> Result<Self, String> {
        let d = parse_duration(s)?;
        check_range(d, MIN_US, MAX_US).map(Dur)
    }
}

/// `d` if it lies within `min_us..=max_us` microseconds, else an error that says the range.
pub fn check_range(d: Duration, min_us: u64, max_us: u64) -> Result<Duration, String> {
    let (lo, hi) = (Duration::from_micros(min_us), Duration::from_micros(max_us));
    if d < lo || d > hi {
        return Err(format!(
            "{} is out of range: from {} to {}",
            format_duration(d),
            format_duration(lo),
            format_duration(hi)
        ));
    }
    Ok(d)
}

/// At most `max` characters of `s` for a message, with "..." where it was cut: a value
/// read from outside (a file, a peer, a command) may be any size.
pub fn clip(s: &str, max: usize) -> String {
    let mut shown: String = s.chars().take(max).collect();
    if shown.len() < s.len() {
        shown.push_str("...");
    }
    shown
}

/// Parses `"250ms"`, `"2s"`, `"1m30s"`, `"1.5s"`; a bare number is refused (which unit would
/// it be?). Exact to the nanosecond (no floating point), total: it returns an error for
/// every string it cannot read, and for anything over [`MAX_DURATION`], never a panic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let shown = clip(s, 40);
    let err = || {
        format!(
            "invalid duration {shown:?}: expected a number with a unit (us, ms, s, m, h, d), like \"250ms\" or \"2s\""
        )
    };
    let too_long = || {
        format!(
            "duration {shown:?} is longer than the {} allowed",
            format_duration(MAX_DURATION)
        )
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let max_ns = MAX_DURATION.as_nanos();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: u128 = match &rest[..unit_len] {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(err());
        }
        // Digits past what could matter are refused rather than overflowed: any whole part
        // longer than 20 digits is over the limit, any fraction past 15 digits is below a ns.
        if whole.len() > 20 {
            return Err(too_long());
        }
        let whole_v: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        let frac = &frac[..frac.len().min(15)];
        let frac_ns: u128 = if frac.is_empty() {
            0
        } else {
            let v: u128 = frac.parse().map_err(|_| err())?;
            v * unit_ns / 10u128.pow(frac.len() as u32)
        };
        let part = whole_v
            .checked_mul(unit_ns)
            .and_then(|w| w.checked_add(frac_ns))
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > max_ns {
            return Err(too_long());
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Writes a duration the way the config reads it back (exact to the microsecond).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `#[serde(with = "crate::config::duration_serde")]` for a plain `Duration` field written
/// as `"250ms"`, `"2s"`, `"5m"` (the scaler's config), up to [`MAX_DURATION`]. For a tighter
/// range, `deserialize_with = "crate::config::duration_serde::within::<MIN_US, MAX_US, _>"`.
pub mod duration_serde {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&text(d)?).map_err(serde::de::Error::custom)
    }
    pub fn within<'de, const MIN_US: u64, const MAX_US: u64, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        super::Dur::<MIN_US, MAX_US>::parse(&text(d)?)
            .map(|d| d.0)
            .map_err(serde::de::Error::custom)
    }

    /// A duration's text. A bare number gets an error that says what to write: serde's own
    /// ("invalid type: integer `30`, expected a string") names neither the unit nor, inside
    /// a tagged table such as the scaler's `[actuator]`, the key.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        struct Text;
        fn no_unit<E: serde::de::Error>(v: impl std::fmt::Display) -> E {
            E::custom(format!(
                "duration {v} has no unit: write \"{v}s\" or \"{v}ms\" (units: us, ms, s, m, h, d)"
            ))
        }
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration with a unit, like \"30s\" or \"250ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
                Err(no_unit(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
                Err(no_unit(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
                Err(no_unit(v))
            }
        }
        d.deserialize_any(Text)
    }
}

impl<'de, const MIN_US: u64, const MAX_US: u64> Deserialize<'de> for Dur<MIN_US, MAX_US> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&duration_serde::text(d)?).map_err(serde::de::Error::custom)
    }
}

impl<const MIN_US: u64, const MAX_US: u64> Serialize for Dur<MIN_US, MAX_US> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A whole number within `MIN..=MAX`, checked while the file is parsed (so the error
/// carries its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Num<const MIN: u64, const MAX: u64>(pub u32);

impl<const MIN: u64, const MAX: u64> fmt::Display for Num<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MIN: u64, const MAX: u64> Num<MIN, MAX> {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Num<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < MIN as i64 || v > MAX as i64 {
            return Err(serde::de::Error::custom(format!(
                "{v} is out of range: from {MIN} to {MAX}"
            )));
        }
        Ok(Num(v as u32))
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Num<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

/// A config error: what is wrong, and where (line and column when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The offending source line, shown under the message.
    pub source_line: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let (Some(line), Some(src)) = (self.line, &self.source_line) {
            write!(f, "\n {line:>4} | {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses any TOML document into `T`, with errors that give the line and the key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| locate(file, text, e.span(), e.message().to_string()))
}

pub(crate) fn locate(
    file: &str,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: String,
) -> ConfigError {
    let (line, column, source_line) = match span {
        Some(r) if r.start <= text.len() => {
            let before = &text[..floor_char_boundary(text, r.start)];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line_end = text[line_start..]
                .find('\n')
                .map(|i| line_start + i)
                .unwrap_or(text.len());
            (
                Some(line),
                Some(before.len() - line_start + 1),
                Some(text[line_start..line_end].trim_end().to_string()),
            )
        }
        _ => (None, None, None),
    };
    // Name the key when the message does not: the last `key =` before the error's column.
    let message = match (&source_line, column) {
        (Some(src), Some(col)) => match key_before(src, col) {
            Some(key)
                if !message.contains(&format!("`{key}`"))
                    && !message
                        .split(':')
                        .next()
                        .is_some_and(|path| path.ends_with(key)) =>
            {
                format!("{key}: {message}")
            }
            _ => message,
        },
        _ => message,
    };
    ConfigError {
        file: file.to_string(),
        line,
        column,
        source_line,
        message,
    }
}

/// An error found after parsing, whose message starts with the key it is about (`key: ...`
/// or `section.key: ...`): located at the first line that sets that key, so that checks
/// which see the whole document still give a line.
pub fn locate_key(file: &str, text: &str, message: String) -> ConfigError {
    let path = message.split([':', ' ']).next().unwrap_or("");
    let key = path.rsplit('.').next().unwrap_or("");
    let span = (!key.is_empty())
        .then(|| {
            let mut at = 0;
            text.split_inclusive('\n').find_map(|line| {
                let start = at;
                at += line.len();
                let t = line.trim_start();
                let rest = t.strip_prefix(key)?;
                rest.trim_start()
                    .starts_with('=')
                    .then(|| start + (line.len() - t.len()))
                    .map(|s| s..s + key.len())
            })
        })
        .flatten();
    locate(file, text, span, message)
}

/// The largest index at most `i` that starts a character of `s` (an error's span can point
/// into a multi-byte character; slicing there would panic: found by tests/fuzz.rs).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The last `key =` on `line` before `column` (1-based), if any.
fn key_before(line: &str, column: usize) -> Option<&str> {
    let upto = &line[..floor_char_boundary(line, column.saturating_sub(1))];
    let eq = upto.rfind('=')?;
    let before = upto[..eq].trim_end();
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let key = &before[start..];
    (!key.is_empty()).then_some(key)
}

/// TCP keepalive: after `idle` without traffic, a probe every `interval`; `count`
/// unanswered probes end the connection. Whole seconds (the kernel's unit). A timer left out
/// keeps the system's (`net.ipv4.tcp_keepalive_time`, `_intvl`, `_probes`), as Envoy and
/// HAProxy do; each one given costs a setsockopt per backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur<US_S, { 32767 * US_S }>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur<US_S, { 32767 * US_S }>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Num<1, 127>>,
}

impl Keepalive {
    pub fn kernel(&self) -> crate::sys::KeepaliveTimers {
        crate::sys::KeepaliveTimers {
            idle: self.idle.map(|d| d.get().as_secs() as u32),
            interval: self.interval.map(|d| d.get().as_secs() as u32),
            count: self.count.map(|n| n.get()),
        }
    }
}

/// Parses `"20/s"` or `"600/m"` into connections per second (fractional for `/m`).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?}: expected a rate like \"20/s\" or \"600/m\"");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000 {
        return Err(format!("{s:?}: the count must be 1 to 1000000"));
    }
    Ok(n as f64 / per)
}

/// Checks that this kernel lets ringlb use congestion control `name`, by setting it on a
/// throwaway socket: the same call the listener and backend sockets will make, so a config
/// that passes here cannot fail there for this reason.
pub fn check_congestion(name: &str) -> Result<(), String> {
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
