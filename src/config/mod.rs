//! The TOML configuration: schema, defaults and validation.
//!
//! Owns: parsing a config file into [`Config`], filling defaults, and rejecting anything
//! doubtful with an error that names the key and the line (unknown keys are errors).
//! One file per section, each with its schema, its ranges as named constants and its own
//! `validate_*`: `listener.rs`, `pool.rs`, `health.rs`; `values.rs` holds what every config
//! file shares (durations, bounded numbers, located errors), the scaler's included.
//! Must not touch: sockets, threads or any runtime state; a `Config` is plain data.

mod health;
mod listener;
mod pool;
pub mod values;

pub use health::*;
pub use listener::*;
pub use pool::*;
pub use values::*;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads; 0 means one per CPU the process may run on.
    #[serde(default)]
    pub workers: Num<0, MAX_WORKERS>,
    /// Pin worker `i` to the `i`-th CPU of the process's affinity set.
    #[serde(default = "default_true")]
    pub pin_workers: bool,
    /// On SIGTERM: stop accepting, let connections finish for up to this long.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Where runtime backend changes are persisted (control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Where this process offers its listening sockets to `ringlb serve --upgrade` (default:
    /// `ringlb-upgrade.sock` beside `state_file`; without either, no upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<PathBuf>,
    /// Size of one relay buffer, in bytes (the kernel fills it on recv).
    #[serde(default = "default_buffer_size")]
    pub buffer_size: Spanned<u32>,
    /// Relay buffers per worker (a power of two, at most 32768).
    #[serde(default = "default_buffer_count")]
    pub buffer_count: Spanned<u32>,
    /// After each loop turn, a worker spins this long for more completions before it sleeps
    /// (0: sleep at once). Like HAProxy's `busy-polling`, but bounded: an idle worker sleeps.
    #[serde(default = "default_busy_poll")]
    pub busy_poll: Dur<0, MAX_BUSY_POLL_US>,
    /// The process's own log (tracing) as "text" or "json" (also RINGLB_LOG_FORMAT); read at
    /// start.
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Every request but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Lets a non-loopback `listen` go without a token (logged as a warning at every start).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_token: bool,
    /// Source CIDRs that may reach the admin API at all (empty: everyone), as listeners'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Spanned<String>>,
}

/// The admin token in `path`: the file's text without surrounding whitespace, never empty.
/// `serve` and `ringlb ctl` read it alike.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(t.to_string())
}

impl AdminConfig {
    /// The `allow` rules as a lookup set (already validated).
    pub fn acl(&self) -> crate::routes::SourceAcl {
        let nets: Vec<ipnet::IpNet> = self
            .allow
            .iter()
            .filter_map(|c| crate::routes::parse_cidr(c.get_ref()).ok())
            .collect();
        crate::routes::SourceAcl {
            allow: crate::routes::CidrSet::new(&nets),
            deny: Default::default(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
/// 64 KiB: iperf3 through the proxy measured 0.59 CPU-s/GB with 64 KiB buffers against 0.70
/// with 16 KiB, with no change in request/response cost (benches/e2e.rs). Where buffers are
/// consumed incrementally and neither key is given, [`Config::relay_buffers`] picks
/// [`INCREMENTAL_BUFFERS`] instead.
fn default_buffer_size() -> Spanned<u32> {
    Spanned::new(0..0, 64 * 1024)
}
fn default_buffer_count() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
/// Off: spinning costs the proxy's own CPU for the load side's and the latency's gain; see
/// "Busy polling" in README.md for when that is worth it.
fn default_busy_poll() -> Dur<0, MAX_BUSY_POLL_US> {
    Dur(Duration::ZERO)
}

/// Longest `busy_poll`, in µs: past a millisecond a spin is a busy loop, not a wait for an
/// event already on its way.
pub const MAX_BUSY_POLL_US: u64 = 1_000;
/// Most worker threads (a worker per core; more would only share cores).
pub const MAX_WORKERS: u64 = 1024;
/// Most relay buffer memory per worker (`buffer_size × buffer_count`), pre-faulted at start.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;
/// The relay buffers `(count, size)` when neither key is given and the kernel consumes
/// buffers incrementally: the same 16 MiB as 256 × 64 KiB, in 64 buffers of 256 KiB. A small
/// recv no longer takes a whole buffer, so big buffers cost no connections (the capacity
/// benchmark holds 8192 stalled connections either way), and a stream moves up to 256 KiB
/// per recv and per send: iperf3 measured 25% less CPU per GB and 25% more throughput.
/// Where every recv takes a whole buffer, 64 buffers would hold only 64 connections' bytes.
pub const INCREMENTAL_BUFFERS: (u16, u32) = (64, 256 * 1024);

impl Config {
    /// The relay buffers each worker gets, `(count, size)`: as configured, or, with neither
    /// `buffer_size` nor `buffer_count` in the file, by the kernel's buffer mode
    /// (`incremental`: see [`INCREMENTAL_BUFFERS`]; else 256 × 64 KiB).
    pub fn relay_buffers(&self, incremental: bool) -> (u16, u32) {
        let given = span_of(&self.buffer_size).is_some() || span_of(&self.buffer_count).is_some();
        if incremental && !given {
            return INCREMENTAL_BUFFERS;
        }
        (
            *self.buffer_count.get_ref() as u16,
            *self.buffer_size.get_ref(),
        )
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            column: None,
            source_line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` only names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            locate(file, text, span, message)
        };
        let cfg: Config =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        cfg.validate().map_err(|(span, msg)| match span {
            Some(_) => at(span, msg),
            None => locate_key(file, text, msg),
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(a) = &self.admin {
            if !a.listen.ip().is_loopback() && a.token_file.is_none() && !a.insecure_no_token {
                return Err((
                    None,
                    format!(
                        "admin.listen: {} is reachable from other hosts and [admin] has no token_file: anyone who can reach it could drain, add or remove backends. Set token_file, listen on 127.0.0.1, or set insecure_no_token = true",
                        a.listen
                    ),
                ));
            }
            for c in &a.allow {
                crate::routes::parse_cidr(c.get_ref())
                    .map_err(|m| (span_of(c), format!("admin.allow: {m}")))?;
            }
        }
        if self.listeners.is_empty() {
            return Err((
                None,
                "listeners: at least one [[listeners]] is needed".into(),
            ));
        }
        let count = *self.buffer_count.get_ref();
        if !(count.is_power_of_two() && (2..=32768).contains(&count)) {
            return Err((
                span_of(&self.buffer_count),
                format!("{count} is not a power of two from 2 to 32768"),
            ));
        }
        let size = *self.buffer_size.get_ref();
        if !(1024..=(1 << 20)).contains(&size) {
            return Err((
                span_of(&self.buffer_size),
                format!("{size} is not from 1024 to 1048576 bytes"),
            ));
        }
        if size as u64 * count as u64 > MAX_BUFFER_BYTES {
            return Err((
                span_of(&self.buffer_size),
                format!(
                    "buffer_size {size} x buffer_count {count} is {} MiB per worker, more than the {} MiB allowed",
                    (size as u64 * count as u64) >> 20,
                    MAX_BUFFER_BYTES >> 20
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for l in &self.listeners {
            let name = l.name.get_ref();
            if name.is_empty() {
                return Err((span_of(&l.name), "listeners.name: must not be empty".into()));
            }
            if !names.insert(name.clone()) {
                return Err((
                    span_of(&l.name),
                    format!("listeners.name: duplicate listener name {name:?}"),
                ));
            }
            if !binds.insert(l.bind) {
                return Err((
                    span_of(&l.name),
                    format!(
                        "listeners.bind: {} is bound by two listeners (listener {name:?})",
                        l.bind
                    ),
                ));
            }
            listener::validate_listener(l, &self.pools)?;
        }
        for (pname, p) in &self.pools {
            pool::validate_pool(pname, p)?;
        }
        Ok(())
    }

    /// Whether two listener definitions agree on what only a restart can apply: the
    /// listening socket itself (name, address, backlog, congestion control, keepalive).
    pub fn same_socket(a: &ListenerConfig, b: &ListenerConfig) -> bool {
        // `Spanned` compares values, not positions in the file.
        a.name == b.name
            && a.bind == b.bind
            && a.backlog == b.backlog
            && a.tcp_congestion == b.tcp_congestion
            && a.tcp_keepalive == b.tcp_keepalive
    }

    /// The first setting outside the listeners that differs between `a` and `b` and is
    /// read only at start, so that a reload would silently not apply it.
    pub fn needs_restart(a: &Config, b: &Config) -> Option<&'static str> {
        let addr = |c: &Config| {
            c.admin.as_ref().map(|x| {
                let allow: Vec<&String> = x.allow.iter().map(|a| a.get_ref()).collect();
                (
                    x.listen,
                    x.token_file.clone(),
                    x.insecure_no_token,
                    allow.into_iter().cloned().collect::<Vec<_>>(),
                )
            })
        };
        [
            (a.workers != b.workers, "workers"),
            (a.pin_workers != b.pin_workers, "pin_workers"),
            (a.buffer_size != b.buffer_size, "buffer_size"),
            (a.buffer_count != b.buffer_count, "buffer_count"),
            (a.log_format != b.log_format, "log_format"),
            (a.upgrade_socket != b.upgrade_socket, "upgrade_socket"),
            (a.state_file != b.state_file, "state_file"),
            (
                a.metrics.as_ref().map(|m| m.listen) != b.metrics.as_ref().map(|m| m.listen),
                "[metrics] listen",
            ),
            (
                addr(a) != addr(b),
                "[admin] listen, token_file, insecure_no_token or allow",
            ),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }

    /// The effective configuration (defaults filled in), as TOML.
    /// The upgrade socket in force: `upgrade_socket`, or beside `state_file`.
    pub fn upgrade_socket(&self) -> Option<PathBuf> {
        self.upgrade_socket.clone().or_else(|| {
            self.state_file
                .as_ref()
                .and_then(|f| f.parent())
                .map(|d| d.join("ringlb-upgrade.sock"))
        })
    }

    /// Whether some listener writes an access log.
    pub fn logs_access(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| l.access_log.get_ref() != "off")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The SNI route tables, as TOML comments (what `ringlb check` prints first): in the
    /// order they are tried, exact names, then wildcards from the longest suffix.
    pub fn route_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for l in self.listeners.iter().filter(|l| !l.routes.is_empty()) {
            let _ = writeln!(
                out,
                "# SNI routes of listener {:?} ({}), inspect_timeout {}:",
                l.name.get_ref(),
                l.bind,
                format_duration(l.inspect_timeout.get())
            );
            let mut routes: Vec<&RouteConfig> = l.routes.iter().collect();
            routes.sort_by_key(|r| {
                let p = r.sni.get_ref();
                (p.starts_with('*'), std::cmp::Reverse(p.len()))
            });
            for r in routes {
                let _ = writeln!(
                    out,
                    "#   {:<40} -> pool {}",
                    r.sni.get_ref(),
                    r.pool.get_ref()
                );
            }
            let fallback = match &l.pool {
                Some(p) => format!("pool {} (default)", p.get_ref()),
                None => "close (no default pool)".into(),
            };
            let _ = writeln!(
                out,
                "#   {:<40} -> {fallback}",
                "(no SNI, not TLS, unknown name)"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8000"
pool = "web"

[pools.web]
backends = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", weight = 2 }]
"#;

    #[test]
    fn listener_socket_settings_need_a_restart_the_rest_does_not() {
        let base = Config::parse("t", GOOD).unwrap();
        let same = |text: &str| {
            let c = Config::parse("t", text).unwrap();
            Config::same_socket(&base.listeners[0], &c.listeners[0])
        };
        let with =
            |extra: &str| GOOD.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{extra}\n"));
        assert!(same(GOOD));
        assert!(
            same(&with("idle_timeout = \"1m\"")),
            "timeouts apply on reload"
        );
        assert!(!same(&with("backlog = 16")));
        assert!(!same(&with("tcp_congestion = \"reno\"")));
        assert!(!same(&GOOD.replace("8000", "8001")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "2", "2x", "ms", "-1s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(2),
            Duration::from_secs(300),
            Duration::from_micros(5),
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn a_duration_without_a_unit_says_what_to_write() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "super::values::duration_serde::deserialize")]
            #[allow(dead_code)]
            d: Duration,
        }
        for (text, needle) in [
            (
                "d = 30",
                "duration 30 has no unit: write \"30s\" or \"30ms\"",
            ),
            ("d = 1.5", "duration 1.5 has no unit"),
            ("d = -2", "duration -2 has no unit"),
            ("d = true", "expected a duration with a unit, like \"30s\""),
            ("d = [1]", "expected a duration with a unit"),
        ] {
            let e = toml::from_str::<T>(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(toml::from_str::<T>("d = \"30s\"").is_ok());
    }

    #[test]
    fn huge_and_overflowing_durations_are_errors_not_panics() {
        // Each of these once panicked ("overflow when adding durations") or went through.
        for s in [
            "18446744073709551615s18446744073709551615s",
            "9999999999999999999999h",
            "584942417355y",
            "31d",
            "720h1s",
            "99999999999999999999999999999999999999ms",
            "1e9s",
            "..s",
            ".s",
            "1..5s",
            "1.5.5s",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert_eq!(parse_duration("30d").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
        assert_eq!(
            parse_duration("123456789us").unwrap(),
            Duration::from_micros(123_456_789),
            "exact, no floating point"
        );
        let e = Dur::<US_MS, { 5 * US_MIN }>::parse("6m").unwrap_err();
        assert!(e.contains("from 1ms to 5m"), "{e}");
        let long = "9".repeat(10_000) + "s";
        let e = parse_duration(&long).unwrap_err();
        assert!(e.len() < 200, "the message quotes a bounded prefix: {e}");
    }

    #[test]
    fn ranges_are_checked_at_parse_time_with_a_line() {
        let with =
            |extra: &str| GOOD.replace("pool = \"web\"\n", &format!("pool = \"web\"\n{extra}\n"));
        for (extra, key) in [
            ("connect_timeout = \"6m\"", "connect_timeout"),
            ("connect_timeout = \"0s\"", "connect_timeout"),
            ("idle_timeout = \"31d\"", "idle_timeout"),
            ("backlog = 0", "backlog"),
            ("backlog = 70000", "backlog"),
        ] {
            let e = Config::parse("t", &with(extra)).unwrap_err();
            assert_eq!(e.line, Some(6), "{extra}: {e}");
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
        for (top, key) in [
            ("workers = 5000", "workers"),
            (
                "shutdown_timeout = \"400000000000000s\"",
                "shutdown_timeout",
            ),
            ("buffer_size = 1048576\nbuffer_count = 32768", "buffer_size"),
        ] {
            let e = Config::parse("t", &format!("{top}\n{GOOD}")).unwrap_err();
            assert_eq!(e.line, Some(1), "{top}: {e}");
            assert!(e.to_string().contains(key), "{top}: {e}");
        }
        let health = |h: &str| format!("{GOOD}\n[pools.web.health]\n{h}\n");
        for (h, key) in [
            ("rise = 0", "rise"),
            ("fall = 100000", "fall"),
            ("interval = \"1us\"", "interval"),
            ("timeout = \"1h\"", "timeout"),
            ("kind = \"http\"\npath = \"/a b\"", "path"),
            ("host = \"a\\r\\nX-Injected: 1\"", "host"),
        ] {
            let e = Config::parse("t", &health(h)).unwrap_err();
            assert!(e.line.is_some(), "{h}: {e}");
            assert!(e.to_string().contains(key), "{h}: {e}");
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Total: any string gives a value or an error, never a panic, never past the limit.
            #[test]
            fn parse_duration_never_panics(s in "\\PC{0,40}") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            /// Strings made of the parser's own alphabet reach its deeper branches.
            #[test]
            fn parse_duration_never_panics_on_its_alphabet(s in "[0-9.]{0,25}(us|ms|s|m|h|d|x)?([0-9.]{0,25}(us|ms|s|m|h|d))?") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            /// Every value in range, to the microsecond, reads back as itself.
            #[test]
            fn every_duration_in_range_round_trips(us in 0..=MAX_DURATION_US) {
                let d = Duration::from_micros(us);
                prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
            }

            #[test]
            fn round_numbers_round_trip(n in 0u64..=720, unit in 0usize..4) {
                let d = Duration::from_secs(n * [1, 60, 3600, 1][unit]) / [1, 1, 1, 1000][unit];
                prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
            }

            #[test]
            fn bounded_numbers_are_checked(v in any::<i64>()) {
                let text = format!("v = {v}");
                #[derive(serde::Deserialize)]
                struct T { #[allow(dead_code)] v: Num<1, 1000> }
                let r: Result<T, _> = toml::from_str(&text);
                prop_assert_eq!(r.is_ok(), (1..=1000).contains(&v));
            }
        }
    }

    /// Found by tests/fuzz.rs: an error span inside a multi-byte character panicked while
    /// the error was being located (a reload of such a file killed the balancer).
    #[test]
    fn errors_in_files_with_multibyte_characters_are_located_without_a_panic() {
        for text in [
            "\u{fffd}B",
            "j\u{fffd}\u{fffd}\u{fffd}B",
            "workers = \"é\"",
            "é = 1",
            "[pools.é]\nx = 1",
            "é\u{fffd}= 1 2",
            "x\u{fffd} = \u{fffd}",
        ] {
            let e = Config::parse("t", text).unwrap_err();
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.connect_timeout.get(), Duration::from_secs(2));
        assert_eq!(*l.retries.get_ref(), 2);
        assert_eq!(c.pools["web"].algorithm, Algorithm::RoundRobin);
        assert_eq!(*c.pools["web"].backends.get_ref()[1].weight.get_ref(), 2);
        // The effective config reads back as the same config.
        let again = Config::parse("t.toml", &c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }

    #[test]
    fn errors_name_key_and_line() {
        let e =
            Config::parse("t.toml", &GOOD.replace("pool = \"web\"", "pool = \"api\"")).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("listeners.pool"), "{e}");
        let e = Config::parse("t.toml", &format!("wrokers = 2\n{GOOD}")).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("wrokers"), "{e}");
        let e = Config::parse(
            "t.toml",
            &GOOD.replace(
                "pool = \"web\"",
                "pool = \"web\"\nidle_timeout = \"5 minutes\"",
            ),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(6));
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        assert!(parse_status_range("200-399").is_ok());
        assert!(parse_status_range("399-200").is_err());
    }
}
