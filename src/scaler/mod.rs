//! `ringlb scale`: the companion autoscaler.
//!
//! Every `interval`: apply the schedule in force (min/max), reap backend processes that died
//! (deregister them), read the pool from every balancer's admin API, replace backends stuck
//! `starting` past `startup_timeout`, take each policy's reading and wish, combine them (the
//! largest wins; a missing reading blocks scale-in), then reconcile: launch and register
//! backends to grow; to shrink, pick our unprotected backends with the fewest active
//! connections, DELETE them with `drain_timeout` (each balancer removes it once its last
//! connection ends, or at the timeout) and stop the process only after no balancer lists it.
//! A failed or missing reading is never read as zero. With `state_file`, what was launched
//! is written down, and a restarted scaler adopts it; with `events_file`, every evaluation is
//! a JSON line.
//!
//! Owns: the loop and the reconciliation. Talks to the balancer only over HTTP (admin API and
//! /metrics), so it can run on another host. Must not touch: the balancer's internals.

pub(crate) mod actuator;
pub mod plot;
pub(crate) mod policy;
pub(crate) mod schedule;
pub(crate) mod source;

use crate::config::values::{US_DAY, US_H, US_MS, US_S};
use actuator::{Actuator, ActuatorConfig};
use policy::{Capacity, Limits, Policy, PolicyConfig};
use serde::{Deserialize, Serialize};
use source::{BackendView, Source, SourceConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What one evaluation decided, and from what.
struct Decided {
    desired: u32,
    /// Backends up or starting.
    observed: u32,
    in_service: u32,
    pending: u32,
    wishes: Vec<policy::Wish>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerConfig {
    /// The balancer pool to scale.
    pub pool: String,
    /// The balancer's admin API, e.g. "http://127.0.0.1:9101".
    pub admin_url: Option<String>,
    /// Several balancer instances (behind ECMP or DNS): a backend is registered on every one,
    /// removed from every one, and stopped only once none lists it. One that cannot be
    /// reached holds the scaler (no scale-in, no scale-out) until it can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    #[serde(
        default = "default_interval",
        serialize_with = "crate::config::values::duration_serde::serialize",
        deserialize_with = "crate::config::values::duration_serde::within::<{ 50 * US_MS }, { US_H }, _>"
    )]
    pub interval: Duration,
    /// Where the scaler serves its own /metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    pub min: u32,
    pub max: u32,
    #[serde(
        default,
        serialize_with = "crate::config::values::duration_serde::serialize",
        deserialize_with = "crate::config::values::duration_serde::within::<{ 0 }, { US_DAY }, _>"
    )]
    pub scale_out_cooldown: Duration,
    #[serde(
        default,
        serialize_with = "crate::config::values::duration_serde::serialize",
        deserialize_with = "crate::config::values::duration_serde::within::<{ 0 }, { US_DAY }, _>"
    )]
    pub scale_in_cooldown: Duration,
    /// How long a backend being scaled in may keep its connections.
    #[serde(
        default = "default_drain",
        with = "crate::config::values::duration_serde"
    )]
    pub drain_timeout: Duration,
    /// Stop the backends this scaler launched when it exits (the demo does; by default they
    /// keep serving, so a scaler restart never cuts a connection).
    #[serde(default)]
    pub stop_backends_on_exit: bool,
    /// Where the scaler keeps what it launched (address, pid, start time, draining), so that
    /// a restarted scaler adopts those backends instead of launching duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// A backend still `starting` after this long is deregistered, stopped and replaced
    /// (after repeated failures, launches back off).
    #[serde(
        default = "default_startup_timeout",
        serialize_with = "crate::config::values::duration_serde::serialize",
        deserialize_with = "crate::config::values::duration_serde::within::<{ US_S }, US_DAY, _>"
    )]
    pub startup_timeout: Duration,
    /// Once backends this scaler launched come up, ask the balancer to rebalance the pool
    /// (`POST /pools/{pool}/rebalance`), so that long-lived connections of clients that
    /// reconnect move to them (the pool's `rebalance` settings, or the defaults, apply).
    #[serde(default)]
    pub rebalance_on_scale_out: bool,
    /// Which of our backends goes first on scale-in: the one with the fewest active
    /// connections (default), or the newest (for a StatefulSet, whose scale-down always
    /// removes the highest ordinal).
    #[serde(default)]
    pub scale_in_order: ScaleInOrder,
    /// One policy: `[policy]` with its `[source]` (kept for older files)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// ...or several, each with its own source: the largest wish wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyEntry>,
    /// Every evaluation as a JSON line (time, each policy's value and wish, desired, in
    /// service, starting, draining, protected): `ringlb scale --plot` draws it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_file: Option<PathBuf>,
    /// Scheduled actions (AWS scheduled scaling): `min`/`max` from a time on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<schedule::ScheduleConfig>,
    pub actuator: ActuatorConfig,
}

/// One of `[[policies]]`: a policy kind with its parameters, its own `[policies.source]`,
/// and whether it may ask for fewer backends.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PolicyEntry {
    /// Names it in logs and events (default: its kind and position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `false`: out only. It wishes only for more than the current count and abstains
    /// otherwise (CPU and memory in the Blu Insights setup never scale in).
    #[serde(default = "yes")]
    pub scale_in: bool,
    pub source: SourceConfig,
    #[serde(flatten)]
    pub policy: PolicyConfig,
}

fn yes() -> bool {
    true
}

impl ScalerConfig {
    /// Every balancer instance's admin API: `admin_url` and `admin_urls`.
    pub fn admins(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in self.admin_url.iter().chain(self.admin_urls.iter()) {
            let u = u.trim_end_matches('/').to_string();
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }

    /// The `[[schedule]]` entries, checked against `min`/`max`.
    pub fn schedules(&self) -> Result<Vec<schedule::Schedule>, String> {
        if self.schedule.len() > 64 {
            return Err(format!(
                "schedule: {} entries is more than the 64 allowed",
                self.schedule.len()
            ));
        }
        self.schedule
            .iter()
            .enumerate()
            .map(|(i, c)| schedule::Schedule::new(i, c, (self.min, self.max), MAX_BACKENDS))
            .collect()
    }

    /// The policies in force: `[[policies]]`, or `[policy]` + `[source]` as a list of one.
    pub fn policy_list(&self) -> Vec<PolicyEntry> {
        if !self.policies.is_empty() {
            return self.policies.clone();
        }
        match (&self.policy, &self.source) {
            (Some(p), Some(s)) => vec![PolicyEntry {
                name: None,
                scale_in: true,
                source: s.clone(),
                policy: p.clone(),
            }],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleInOrder {
    #[default]
    FewestConnections,
    Newest,
}

/// Most backends one scaler may run for a pool (a bound on `max`).
pub const MAX_BACKENDS: u32 = 1000;

fn default_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_drain() -> Duration {
    Duration::from_secs(300)
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(300)
}
/// Longest wait between launches after startup failures in a row (doubling from `interval`).
const MAX_LAUNCH_BACKOFF: Duration = Duration::from_secs(300);

impl ScalerConfig {
    pub fn load(path: &std::path::Path) -> Result<ScalerConfig, String> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
        ScalerConfig::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<ScalerConfig, String> {
        let cfg: ScalerConfig =
            crate::config::values::parse_toml(file, text).map_err(|e| e.to_string())?;
        let err = |m: String| crate::config::values::locate_key(file, text, m).to_string();
        if cfg.min > cfg.max {
            return Err(err(format!("min: {} is above max ({})", cfg.min, cfg.max)));
        }
        if cfg.max == 0 || cfg.max > MAX_BACKENDS {
            return Err(err(format!(
                "max: {} is out of range: from 1 to {MAX_BACKENDS}",
                cfg.max
            )));
        }
        if cfg.admins().is_empty() {
            return Err(err(
                "admin_url: give admin_url or admin_urls (the balancer's admin API)".into(),
            ));
        }
        if let Some(u) = cfg.admins().iter().find(|u| !u.starts_with("http://")) {
            return Err(err(format!("admin_url: {u:?} must start with http://")));
        }
        match (cfg.policies.is_empty(), &cfg.policy, &cfg.source) {
            (true, Some(_), Some(_)) => {}
            (true, None, _) | (true, _, None) => {
                return Err(err(
                    "policies: give [[policies]] (each with its [policies.source]), or one [policy] with a [source]".into(),
                ));
            }
            (false, None, None) => {}
            (false, _, _) => {
                return Err(err(
                    "policies: give [[policies]] or [policy] + [source], not both".into(),
                ));
            }
        }
        if cfg.policies.len() > 16 {
            return Err(err(format!(
                "policies: {} is more than the 16 allowed",
                cfg.policies.len()
            )));
        }
        for p in cfg.policy_list() {
            p.policy.validate().map_err(err)?;
            if let SourceConfig::Lb {
                metrics_url: None,
                metrics_urls,
                ..
            } = &p.source
                && metrics_urls.is_empty()
            {
                return Err(err(
                    "metrics_url: a source of kind \"lb\" needs metrics_url or metrics_urls".into(),
                ));
            }
        }
        cfg.schedules().map_err(err)?;
        Actuator::new(cfg.actuator.clone()).map_err(err)?;
        if cfg.stop_backends_on_exit && matches!(cfg.actuator, ActuatorConfig::Exec { .. }) {
            // It would have been ignored: `down` runs only once a backend has drained, and
            // an exit does not wait for drains.
            return Err(err("stop_backends_on_exit: applies to a \"process\" actuator only; an exec actuator's backends are stopped by its down command after a drain, which an exit does not wait for".into()));
        }
        Ok(cfg)
    }
}

/// One policy of the pool, with its own source and its memory.
struct Rule {
    name: String,
    scale_in: bool,
    policy: Policy,
    source: Source,
}

/// The running scaler.
pub struct Scaler {
    cfg: ScalerConfig,
    token: Option<String>,
    /// Every policy with its source, and the limits and cooldowns they share.
    rules: Vec<Rule>,
    governor: policy::Governor,
    schedules: Vec<schedule::Schedule>,
    /// `min`/`max` in force now, and the schedule that set them.
    bounds: (u32, u32),
    active_schedule: Option<String>,
    actuator: Actuator,
    /// What the scaler is steering to; `None` until the first look at the pool.
    desired: Option<u32>,
    /// Backends deleted with a drain: stopped once the balancer no longer lists them.
    draining: Vec<SocketAddr>,
    /// When each backend we launched was registered (for `startup_timeout`).
    registered_at: std::collections::HashMap<SocketAddr, Instant>,
    /// Startup failures in a row, and no launch before this (backoff).
    startup_failures: u32,
    launch_not_before: Option<Instant>,
    /// What the state file holds now (written when it changes).
    saved: Vec<actuator::Launched>,
    /// Backends of ours already seen up (a new one coming up asks for a rebalance).
    seen_up: std::collections::HashSet<SocketAddr>,
}

impl Scaler {
    pub fn new(cfg: ScalerConfig) -> Result<Scaler, String> {
        let token = match &cfg.admin_token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("admin_token_file {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let limits = Limits {
            min: cfg.min,
            max: cfg.max,
            scale_out_cooldown: cfg.scale_out_cooldown,
            scale_in_cooldown: cfg.scale_in_cooldown,
        };
        let mut actuator = Actuator::new(cfg.actuator.clone())?;
        let mut draining = Vec::new();
        let mut saved = Vec::new();
        if let Some(path) = &cfg.state_file {
            let list = actuator::load_launched(path)?;
            let taken = actuator.adopt(&list);
            draining = taken
                .iter()
                .filter(|l| l.draining)
                .map(|l| l.addr)
                .collect();
            saved = list;
        }
        let now = Instant::now();
        let registered_at: std::collections::HashMap<SocketAddr, Instant> =
            actuator.owned().into_iter().map(|a| (a, now)).collect();
        let mut scaler = Scaler {
            rules: cfg
                .policy_list()
                .into_iter()
                .enumerate()
                .map(|(i, p)| Rule {
                    name: p
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}#{}", policy_name(&p.policy), i + 1)),
                    scale_in: p.scale_in,
                    policy: Policy::new(p.policy.clone(), limits.clone()),
                    source: Source::new(p.source.clone()),
                })
                .collect(),
            governor: policy::Governor::new(limits.clone()),
            schedules: cfg.schedules()?,
            bounds: (cfg.min, cfg.max),
            active_schedule: None,
            actuator,
            token,
            desired: None,
            draining,
            registered_at: registered_at.clone(),
            startup_failures: 0,
            launch_not_before: None,
            saved,
            // Adopted at a restart: up before this scaler ran, no scale-out of its own.
            seen_up: registered_at.keys().copied().collect(),
            cfg,
        };
        scaler.save_state();
        Ok(scaler)
    }

    /// Writes what we launched to the state file, if it changed.
    fn save_state(&mut self) {
        let Some(path) = self.cfg.state_file.clone() else {
            return;
        };
        let now = self.actuator.launched(&self.draining);
        if now == self.saved {
            return;
        }
        match actuator::save_launched(&path, &now) {
            Ok(()) => self.saved = now,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the scaler's state file: a restart would not adopt the newest backends")
            }
        }
    }

    /// The same admin call on every balancer instance, each one tried even if an earlier
    /// one refused: the first answer that is not the success (or the first error), else that
    /// success. A DELETE that finds the backend gone (404), or a POST that finds it there
    /// already, counts as done there.
    async fn admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let ok = match method {
            "POST" if path.ends_with("/rebalance") => 202,
            "POST" => 201,
            "DELETE" => 202,
            _ => 200,
        };
        let mut outcome: Option<Result<(u16, String), String>> = None;
        let mut last = (ok, String::new());
        for base in self.cfg.admins() {
            let answer = crate::http_client::admin_http(
                &format!("{base}{path}"),
                method,
                body,
                self.token.as_deref(),
                Duration::from_secs(5),
            )
            .await;
            match answer {
                Ok((status, text))
                    if status == ok
                        || (method == "DELETE" && status == 404)
                        || (method == "POST" && status == 409 && text.contains("already has")) =>
                {
                    last = (ok, text)
                }
                Ok((status, text)) => {
                    outcome.get_or_insert(Ok((status, format!("{base}: {text}"))));
                }
                Err(e) => {
                    outcome.get_or_insert(Err(format!("{base}: {e}")));
                }
            }
        }
        outcome.unwrap_or(Ok(last))
    }

    /// Takes a backend out of every instance at once, without a drain: one whose process
    /// died or never became healthy, or one that only some instances took.
    async fn deregister(&self, pool: &str, addr: SocketAddr) {
        let _ = self
            .admin_call(
                "DELETE",
                &format!("/pools/{pool}/backends/{addr}?drain_timeout=0s"),
                None,
            )
            .await;
    }

    fn export(&self, current: u32, desired: u32) {
        let pool = self.cfg.pool.clone();
        metrics::gauge!("ringlb_scaler_backends", "pool" => pool.clone()).set(current as f64);
        metrics::gauge!("ringlb_scaler_desired_backends", "pool" => pool).set(desired as f64);
    }

    fn count_decision(&self, direction: &'static str) {
        metrics::counter!("ringlb_scaler_decisions_total", "pool" => self.cfg.pool.clone(), "direction" => direction).increment(1);
    }

    /// Applies the schedule in force now: new `min`/`max` for every policy, logged.
    fn apply_schedules(&mut self) {
        let ((min, max), active) = schedule::limits_at(
            &self.schedules,
            (self.cfg.min, self.cfg.max),
            chrono::Utc::now(),
        );
        let name = active.map(|s| s.name.clone());
        let pool = self.cfg.pool.clone();
        for s in &self.schedules {
            let on = name.as_deref() == Some(s.name.as_str());
            metrics::gauge!("ringlb_scaler_schedule_active", "pool" => pool.clone(), "schedule" => s.name.clone()).set(if on { 1.0 } else { 0.0 });
        }
        metrics::gauge!("ringlb_scaler_min_backends", "pool" => pool.clone()).set(min as f64);
        metrics::gauge!("ringlb_scaler_max_backends", "pool" => pool.clone()).set(max as f64);
        if (min, max) == self.bounds && name == self.active_schedule {
            return;
        }
        match &name {
            Some(n) => tracing::info!(pool = %pool, schedule = %n, min, max, "schedule in force"),
            None => {
                tracing::info!(pool = %pool, min, max, "no schedule in force: back to the configured limits")
            }
        }
        self.bounds = (min, max);
        self.active_schedule = name;
        self.governor.set_bounds(min, max);
        for r in &mut self.rules {
            r.policy.set_bounds(min, max);
        }
    }

    /// One evaluation, in phases, each its own method:
    /// 1. schedules: the min/max in force now ([`Self::apply_schedules`]);
    /// 2. the dead: backends whose process died leave the pool ([`Self::reap_dead`]);
    /// 3. the pool as every balancer sees it (none: hold, and stop here);
    /// 4. drained backends the balancers let go of are stopped ([`Self::stop_drained`]);
    /// 5. ours but not listed everywhere are registered ([`Self::register_missing`]);
    /// 6. backends stuck `starting` past `startup_timeout` are replaced
    ///    ([`Self::replace_stuck`]);
    /// 7. with `rebalance_on_scale_out`, new backends that came up get their share
    ///    ([`Self::rebalance_after_scale_out`]);
    /// 8. the decision: every policy's wish from its reading, combined and governed
    ///    ([`Self::decide`]);
    /// 9. the pool is brought to it, and the outcome exported, saved and recorded.
    pub async fn step(&mut self) {
        self.apply_schedules();
        let pool = self.cfg.pool.clone();
        self.reap_dead(&pool).await;
        let backends = match source::pool_backends_all(
            &self.cfg.admins(),
            self.token.clone().as_deref(),
            &pool,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                self.count_decision("hold");
                tracing::warn!(pool = %pool, reason = %e, "holding: cannot read the pool from the admin API");
                return;
            }
        };
        self.stop_drained(&backends).await;
        self.register_missing(&pool, &backends).await;
        let stuck = self.replace_stuck(&pool, &backends).await;
        let rebalanced_after = self.rebalance_after_scale_out(&pool, &backends).await;
        let backends: Vec<BackendView> = backends
            .into_iter()
            .filter(|b| !b.addr.parse().is_ok_and(|a: SocketAddr| stuck.contains(&a)))
            .collect();
        let d = self.decide(&pool, &backends).await;
        self.desired = Some(d.desired);
        self.reconcile(&backends, d.observed, d.desired).await;
        self.export(d.observed, d.desired);
        self.save_state();
        self.record_event(&backends, &d, rebalanced_after);
    }

    /// Backends whose process died: out of the pool at once (replaced by the decision).
    async fn reap_dead(&mut self, pool: &str) {
        for dead in self.actuator.tick() {
            self.deregister(pool, dead).await;
            tracing::warn!(pool = %pool, backend = %dead, "backend process died: deregistered; it will be replaced");
        }
    }

    /// Drained backends the balancers have let go of are stopped now.
    async fn stop_drained(&mut self, backends: &[BackendView]) {
        let listed = |a: &SocketAddr| backends.iter().any(|b| b.addr == a.to_string());
        let gone: Vec<SocketAddr> = self
            .draining
            .iter()
            .copied()
            .filter(|a| !listed(a))
            .collect();
        for a in gone {
            self.draining.retain(|x| *x != a);
            self.registered_at.remove(&a);
            let count = self.desired.unwrap_or(0);
            self.stop_backend(a, count).await;
        }
    }

    /// Ours but not listed by every balancer (adopted after a balancer restart without
    /// state, or an instance that was down when we registered): registered where missing.
    async fn register_missing(&mut self, pool: &str, backends: &[BackendView]) {
        let instances = self.cfg.admins().len();
        let everywhere = |a: &SocketAddr| {
            backends
                .iter()
                .any(|b| b.addr == a.to_string() && b.listed_on == instances)
        };
        for a in self.actuator.owned() {
            if !everywhere(&a) && !self.draining.contains(&a) {
                let body = format!("{{\"addr\": \"{a}\", \"weight\": 1}}");
                match self
                    .admin_call("POST", &format!("/pools/{pool}/backends"), Some(&body))
                    .await
                {
                    Ok((201, _)) => {
                        tracing::info!(pool = %pool, backend = %a, "registered a backend of ours the balancer did not list")
                    }
                    Ok((status, body)) => {
                        tracing::warn!(pool = %pool, backend = %a, status, body = %body.trim(), "cannot register a backend of ours")
                    }
                    Err(e) => {
                        tracing::warn!(pool = %pool, backend = %a, error = %e, "cannot register a backend of ours")
                    }
                }
                self.registered_at.insert(a, Instant::now());
            }
        }
    }

    /// Backends still `starting` past `startup_timeout`: deregistered and stopped (the
    /// decision replaces them, after a backoff). Returns them.
    async fn replace_stuck(&mut self, pool: &str, backends: &[BackendView]) -> Vec<SocketAddr> {
        let now = Instant::now();
        let stuck: Vec<SocketAddr> = backends
            .iter()
            .filter(|b| b.state == "starting")
            .filter_map(|b| b.addr.parse().ok())
            .filter(|a| {
                self.registered_at
                    .get(a)
                    .is_some_and(|t| now.duration_since(*t) >= self.cfg.startup_timeout)
            })
            .collect();
        for a in &stuck {
            self.deregister(pool, *a).await;
            self.registered_at.remove(a);
            self.stop_backend(*a, self.desired.unwrap_or(0)).await;
            self.startup_failures += 1;
            let backoff = (self.cfg.interval * 2u32.saturating_pow(self.startup_failures.min(16)))
                .min(MAX_LAUNCH_BACKOFF);
            self.launch_not_before = Some(now + backoff);
            metrics::counter!("ringlb_scaler_startup_failures_total", "pool" => pool.to_string())
                .increment(1);
            tracing::warn!(pool = %pool, backend = %a, startup_timeout = %crate::config::values::format_duration(self.cfg.startup_timeout), failures_in_a_row = self.startup_failures, next_launch_in = ?backoff, "backend never became healthy: deregistered and stopped; it will be replaced");
        }
        // A backend of ours that came up ends the run of startup failures.
        if backends.iter().any(|b| {
            b.state == "up"
                && b.addr
                    .parse()
                    .is_ok_and(|a| self.registered_at.contains_key(&a))
        }) && stuck.is_empty()
        {
            self.startup_failures = 0;
        }
        stuck
    }

    /// Every policy's wish from its own reading, combined (the largest wins) and governed
    /// (bounds, cooldowns); without any reading, a hold that never scales in.
    async fn decide(&mut self, pool: &str, backends: &[BackendView]) -> Decided {
        let in_service = backends.iter().filter(|b| b.state == "up").count() as u32;
        let pending = backends.iter().filter(|b| b.state == "starting").count() as u32;
        let observed = in_service + pending;
        let mut desired = self
            .desired
            .unwrap_or(observed.clamp(self.bounds.0, self.bounds.1));
        let pids = self.actuator.pids();
        // Backends on their way (starting, or a replacement still to launch) count as
        // capacity: one breach, one action.
        let cap = Capacity {
            in_service,
            pending: desired.max(observed) - in_service,
        };
        let now = Instant::now();
        let mut wishes = Vec::with_capacity(self.rules.len());
        for r in &mut self.rules {
            let w = match r.source.read(pool, in_service, &pids).await {
                Ok(value) => {
                    let (raw, reason) = r.policy.recommend(now, value, cap);
                    // Out only: a wish for more, or none at all.
                    let wish = (r.scale_in || raw > cap.total() as i64).then_some(raw);
                    policy::Wish {
                        name: r.name.clone(),
                        value: Some(value),
                        wish,
                        reason,
                    }
                }
                Err(e) => policy::Wish {
                    name: r.name.clone(),
                    value: None,
                    wish: None,
                    reason: e,
                },
            };
            wishes.push(w);
        }
        if wishes.iter().all(|w| w.value.is_none()) {
            self.count_decision("hold");
            desired = desired.max(observed).max(self.bounds.0);
            let reason = wishes
                .iter()
                .map(|w| format!("{}: {}", w.name, w.reason))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(pool = %pool, in_service, pending, desired, reason = %reason, "holding: no reading, so no scale-in");
        } else {
            let (raw, reason) = policy::combine(&wishes, cap.total());
            let d = self.governor.settle(now, raw, cap.total(), reason);
            for r in &mut self.rules {
                r.policy.acted(d.desired, cap.total());
            }
            let direction = match d.desired.cmp(&cap.total()) {
                std::cmp::Ordering::Greater => "out",
                std::cmp::Ordering::Less => "in",
                std::cmp::Ordering::Equal => "none",
            };
            self.count_decision(direction);
            // Changes at info; evaluations that change nothing at debug (RINGLB_LOG=debug).
            macro_rules! log_decision {
                ($level:ident) => {
                    tracing::$level!(
                        pool = %pool, in_service, pending, current = cap.total(), desired = d.desired,
                        policies = self.rules.len(), reason = %d.reason, "decision: {direction}"
                    )
                };
            }
            if direction != "none" {
                log_decision!(info);
            } else if wishes.iter().any(|w| w.value.is_none()) {
                // A missing reading holds the pool: say so every time, as a hold does.
                log_decision!(warn);
            } else {
                log_decision!(debug);
            }
            desired = d.desired;
        }
        Decided {
            desired,
            observed,
            in_service,
            pending,
            wishes,
        }
    }

    /// One line of the events file (`events_file`): what was read, wished and decided.
    fn record_event(
        &mut self,
        backends: &[BackendView],
        d: &Decided,
        rebalanced_after: Vec<String>,
    ) {
        let count = |st: &str| backends.iter().filter(|b| b.state == st).count() as u32;
        self.write_event(plot::Event {
            time: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            policies: d
                .wishes
                .iter()
                .map(|w| plot::PolicyPoint {
                    name: w.name.clone(),
                    value: w.value,
                    wish: w.wish,
                })
                .collect(),
            desired: d.desired,
            in_service: d.in_service,
            starting: d.pending,
            draining: count("draining"),
            protected: backends.iter().filter(|b| b.protected).count() as u32,
            min: self.bounds.0,
            max: self.bounds.1,
            rebalanced_after,
        });
    }

    /// With `rebalance_on_scale_out`: once backends we launched come up, asks every
    /// balancer to rebalance the pool. Returns those backends (for the events file) if it
    /// asked.
    async fn rebalance_after_scale_out(
        &mut self,
        pool: &str,
        backends: &[BackendView],
    ) -> Vec<String> {
        let came_up: Vec<SocketAddr> = backends
            .iter()
            .filter(|b| b.state == "up")
            .filter_map(|b| b.addr.parse().ok())
            .filter(|a| self.registered_at.contains_key(a) && !self.seen_up.contains(a))
            .collect();
        self.seen_up.retain(|a| self.registered_at.contains_key(a));
        self.seen_up.extend(came_up.iter().copied());
        if came_up.is_empty() || !self.cfg.rebalance_on_scale_out {
            return Vec::new();
        }
        let shown: Vec<String> = came_up.iter().map(|a| a.to_string()).collect();
        match self
            .admin_call("POST", &format!("/pools/{pool}/rebalance"), None)
            .await
        {
            Ok((202, _)) => {
                tracing::info!(pool = %pool, came_up = ?shown, "new backends are up: the balancer rebalances the pool");
                shown
            }
            Ok((status, text)) => {
                tracing::warn!(pool = %pool, status, body = %text.trim(), "cannot start a rebalance");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(pool = %pool, error = %e, "cannot start a rebalance");
                Vec::new()
            }
        }
    }

    /// Appends one evaluation to `events_file` (a failure is logged, never fatal).
    fn write_event(&mut self, e: plot::Event) {
        use std::io::Write;
        let Some(path) = &self.cfg.events_file else {
            return;
        };
        let line = match serde_json::to_string(&e) {
            Ok(l) => l,
            Err(_) => return,
        };
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(err) = r {
            tracing::warn!(file = %path.display(), error = %err, "cannot write the events file");
        }
    }

    /// Stops a backend that is out of the balancer. If that fails (an exec `down` that
    /// failed or timed out), it stays ours and is kept with the drained ones, which are
    /// stopped once they are out of the balancer: the next evaluation tries again (and so
    /// does a restarted scaler, from the state file). Forgetting it would leave it running,
    /// paid for and unknown to anyone.
    async fn stop_backend(&mut self, addr: SocketAddr, count: u32) {
        if !self.actuator.stop(addr, count).await && !self.draining.contains(&addr) {
            self.draining.push(addr);
        }
    }

    async fn reconcile(&mut self, backends: &[BackendView], observed: u32, desired: u32) {
        let pool = self.cfg.pool.clone();
        if observed < desired {
            if let Some(t) = self.launch_not_before
                && Instant::now() < t
            {
                tracing::warn!(pool = %pool, observed, desired, failures_in_a_row = self.startup_failures, "holding launches: backing off after backends that never became healthy");
                return;
            }
            let present: Vec<SocketAddr> = backends
                .iter()
                .filter_map(|b| b.addr.parse().ok())
                .collect();
            for _ in observed..desired {
                let addr = match self.actuator.launch(desired, &present).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(pool = %pool, error = %e, "cannot launch a backend");
                        return;
                    }
                };
                let body = format!("{{\"addr\": \"{addr}\", \"weight\": 1}}");
                match self
                    .admin_call("POST", &format!("/pools/{pool}/backends"), Some(&body))
                    .await
                {
                    Ok((201, _)) => {
                        self.registered_at.insert(addr, Instant::now());
                        tracing::info!(pool = %pool, backend = %addr, "registered (starting until its checks pass)")
                    }
                    Ok((status, body)) => {
                        tracing::error!(pool = %pool, backend = %addr, status, body = %body.trim(), "the balancer refused the new backend; stopping it");
                        self.deregister(&pool, addr).await;
                        self.stop_backend(addr, desired).await;
                    }
                    Err(e) => {
                        tracing::error!(pool = %pool, backend = %addr, error = %e, "cannot register the new backend; stopping it");
                        self.deregister(&pool, addr).await;
                        self.stop_backend(addr, desired).await;
                    }
                }
            }
        } else if observed > desired {
            // Scale-in protection: only our own backends, fewest active connections first;
            // drained, not cut.
            let owned = self.actuator.owned();
            let ours: Vec<&BackendView> = backends
                .iter()
                .filter(|b| {
                    (b.state == "up" || b.state == "starting")
                        && b.addr.parse().map(|a| owned.contains(&a)).unwrap_or(false)
                })
                .collect();
            // Protected backends (ECS task scale-in protection semantics) are never chosen.
            let protected = ours.iter().filter(|b| b.protected).count();
            let mut candidates: Vec<&BackendView> =
                ours.into_iter().filter(|b| !b.protected).collect();
            match self.cfg.scale_in_order {
                ScaleInOrder::FewestConnections => {
                    candidates.sort_by_key(|b| (b.state == "up", b.active_connections))
                }
                ScaleInOrder::Newest => candidates.sort_by_key(|b| {
                    std::cmp::Reverse(owned.iter().position(|a| a.to_string() == b.addr))
                }),
            }
            let n = (observed - desired) as usize;
            if candidates.len() < n && protected > 0 {
                tracing::warn!(pool = %pool, want = n, candidates = candidates.len(), protected, "waiting: backends of ours are protected from scale-in; they go when their protection ends");
            } else if candidates.len() < n {
                tracing::warn!(pool = %pool, want = n, ours = candidates.len(), "cannot scale in that far: the other backends were not launched by this scaler");
            }
            let timeout = crate::config::values::format_duration(self.cfg.drain_timeout);
            for b in candidates.into_iter().take(n) {
                let path = format!("/pools/{pool}/backends/{}?drain_timeout={timeout}", b.addr);
                match self.admin_call("DELETE", &path, None).await {
                    Ok((202, _)) => {
                        tracing::info!(pool = %pool, backend = %b.addr, active_connections = b.active_connections, drain_timeout = %timeout, "scaling in: draining, stopped once its connections end");
                        if let Ok(a) = b.addr.parse() {
                            self.draining.push(a);
                        }
                    }
                    Ok((status, body)) => {
                        tracing::error!(pool = %pool, backend = %b.addr, status, body = %body.trim(), "the balancer refused the removal")
                    }
                    Err(e) => {
                        tracing::error!(pool = %pool, backend = %b.addr, error = %e, "cannot remove the backend")
                    }
                }
            }
        }
    }

    /// Runs until SIGTERM/SIGINT (or `stop` resolves); gives itself back, so that a caller
    /// can stop the backends later (the demo does, after the balancer has drained).
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> Scaler {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let canceller = self.actuator.canceller();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A stop during an evaluation cancels a launch in progress (an exec `up`
                    // may wait minutes for its pod) and lets the rest of the evaluation end:
                    // the evaluation is never dropped halfway, so what it did is known.
                    let step = self.step();
                    tokio::pin!(step);
                    let stopped = tokio::select! {
                        _ = &mut step => false,
                        _ = &mut stop => true,
                    };
                    if stopped {
                        tracing::info!("stopping: cancelling the launch in progress, if any");
                        canceller.cancel();
                        step.await;
                        break;
                    }
                    EVALUATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ = &mut stop => break,
            }
        }
        if self.cfg.stop_backends_on_exit {
            self.stop_backends();
        } else if !self.actuator.owned().is_empty() {
            self.save_state();
            tracing::info!(backends = ?self.actuator.owned(), state_file = ?self.cfg.state_file, "leaving launched backends running (their own process groups: the signal did not reach them)");
        }
        self
    }

    /// Stops every backend this scaler launched (and forgets them in the state file).
    pub fn stop_backends(&mut self) {
        tracing::info!("stopping the backends this scaler launched");
        self.actuator.shutdown();
        self.draining.clear();
        self.save_state();
    }
}

fn policy_name(p: &PolicyConfig) -> &'static str {
    match p {
        PolicyConfig::TargetTracking { .. } => "target_tracking",
        PolicyConfig::Step { .. } => "step",
        PolicyConfig::Simple { .. } => "simple",
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `ringlb scale --config FILE`: returns the exit code.
pub fn main(path: &std::path::Path) -> i32 {
    let cfg = match ScalerConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlb scale: config error: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringlb scale: {e}");
            return 1;
        }
    };
    let listener = match cfg.listen.map(std::net::TcpListener::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringlb scale: cannot bind the metrics endpoint: {e}");
            return 1;
        }
    };
    let scaler = match Scaler::new(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringlb scale: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        if let Some(l) = listener
            && let Err(e) = crate::metrics::install().and_then(|_| serve_metrics(l))
        {
            eprintln!("ringlb scale: {e}");
            return 1;
        }
        crate::notify::notify("READY=1");
        let _ = scaler.run(terminated()).await;
        crate::notify::notify("STOPPING=1");
        0
    })
}

/// Evaluations finished since start, for `/readyz`.
static EVALUATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Serves the scaler's own /metrics, and its probes (no token, nothing secret): `/healthz`
/// answers while the runtime runs (a liveness probe: the evaluation loop shares its one
/// thread, so a loop wedged in blocking code stops the answers too; exec commands are
/// awaited, not blocked on, and end at their timeout), `/readyz` once the first evaluation
/// finished.
pub fn serve_metrics(l: std::net::TcpListener) -> Result<(), String> {
    metrics::describe_gauge!(
        "ringlb_scaler_backends",
        "Backends in the pool (up or starting), as the scaler sees them."
    );
    metrics::describe_gauge!(
        "ringlb_scaler_desired_backends",
        "Backends the scaler is steering to."
    );
    metrics::describe_counter!(
        "ringlb_scaler_decisions_total",
        "Evaluations, by direction (out, in, none, hold)."
    );
    metrics::describe_gauge!(
        "ringlb_scaler_schedule_active",
        "1 for the scheduled action in force."
    );
    metrics::describe_gauge!(
        "ringlb_scaler_min_backends",
        "min in force (the config's, or a schedule's)."
    );
    metrics::describe_gauge!(
        "ringlb_scaler_max_backends",
        "max in force (the config's, or a schedule's)."
    );
    metrics::describe_counter!(
        "ringlb_scaler_startup_failures_total",
        "Backends removed because they were still starting after startup_timeout."
    );
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    crate::metrics::render_registry(),
                )
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            axum::routing::get(|| async {
                let n = EVALUATIONS.load(std::sync::atomic::Ordering::Relaxed);
                let code = if n > 0 {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                let status = if n > 0 { "ready" } else { "starting" };
                (
                    code,
                    axum::Json(serde_json::json!({ "status": status, "evaluations": n })),
                )
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_examples_parse() {
        for f in [
            "scaler.toml",
            "scaler-step.toml",
            "scaler-simple.toml",
            "scaler-blu.toml",
            "scaler-ecs.toml",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(f);
            if let Err(e) = super::ScalerConfig::load(&path) {
                panic!("{f}: {e}");
            }
        }
    }
}
