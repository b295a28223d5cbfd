//! Scaling decisions: target tracking, step and simple policies, as pure functions of time,
//! a reading and the pool's size.
//!
//! Owns: the arithmetic (HPA's tolerance and scale-in stabilization, AWS step bounds and
//! adjustment types, simple thresholds with consecutive periods), cooldowns, min/max, and
//! pending capacity (backends still starting count as capacity, so one breach gives one action).
//! Must not touch: HTTP, processes or clocks: `now` is passed in, which is what makes every
//! rule testable on its own.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The policy section of the scaler's config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// desired = ceil(in_service × value / target), like Kubernetes' HPA.
    TargetTracking {
        target: f64,
        #[serde(default = "default_tolerance")]
        tolerance: f64,
        /// Scale in only to the highest recommendation of this window.
        #[serde(
            default = "default_stabilization",
            serialize_with = "crate::config::values::duration_serde::serialize",
            deserialize_with = "crate::config::values::duration_serde::within::<0, { crate::config::values::US_DAY }, _>"
        )]
        scale_in_stabilization: Duration,
    },
    /// Bands of the metric (relative to `threshold`) with adjustments, like AWS step scaling.
    Step {
        #[serde(default)]
        threshold: f64,
        #[serde(default)]
        adjustment_type: AdjustmentType,
        /// PercentChangeInCapacity: move by at least this many backends.
        #[serde(default)]
        min_adjustment_magnitude: u32,
        steps: Vec<StepConfig>,
    },
    /// One threshold each way, held for `periods` evaluations, then a fixed adjustment.
    Simple {
        scale_out: Option<SimpleRule>,
        scale_in: Option<SimpleRule>,
    },
}

/// Largest step adjustment either way (backends, or percent for
/// `percent_change_in_capacity`).
pub const MAX_ADJUSTMENT: u64 = 10_000;

fn default_tolerance() -> f64 {
    0.1
}
fn default_stabilization() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // AWS step scaling's own names
pub enum AdjustmentType {
    #[default]
    ChangeInCapacity,
    ExactCapacity,
    PercentChangeInCapacity,
}

/// One band: applies when `lower <= value - threshold < upper` above the threshold, or
/// `lower < value - threshold <= upper` below it (AWS's rule); a missing bound is infinite.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub adjustment: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimpleRule {
    pub threshold: f64,
    /// Consecutive evaluations beyond the threshold before acting.
    #[serde(default = "one")]
    pub periods: u32,
    /// Backends to add (scale_out) or remove (scale_in): a positive number.
    #[serde(default = "one_i64")]
    pub adjustment: i64,
}

fn one() -> u32 {
    1
}
fn one_i64() -> i64 {
    1
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PolicyConfig::TargetTracking {
                target, tolerance, ..
            } => {
                if !(target.is_finite() && *target > 0.0) {
                    return Err(format!("policy.target: {target} must be a number above 0"));
                }
                if !(0.0..1.0).contains(tolerance) {
                    return Err("policy.tolerance must be in [0, 1)".into());
                }
            }
            PolicyConfig::Step {
                steps,
                threshold,
                min_adjustment_magnitude,
                ..
            } => {
                if steps.is_empty() {
                    return Err("policy.steps: at least one step is needed".into());
                }
                if !threshold.is_finite() {
                    return Err(format!(
                        "policy.threshold: {threshold} is not a finite number"
                    ));
                }
                if *min_adjustment_magnitude > super::MAX_BACKENDS {
                    return Err(format!(
                        "policy.min_adjustment_magnitude: {min_adjustment_magnitude} is out of range: from 0 to {}",
                        super::MAX_BACKENDS
                    ));
                }
                for s in steps {
                    if s.lower.is_some_and(|v| v.is_nan()) || s.upper.is_some_and(|v| v.is_nan()) {
                        return Err("policy.steps: lower and upper must be numbers".into());
                    }
                    if s.adjustment.unsigned_abs() > MAX_ADJUSTMENT {
                        return Err(format!(
                            "policy.steps.adjustment: {} is out of range: from -{MAX_ADJUSTMENT} to {MAX_ADJUSTMENT}",
                            s.adjustment
                        ));
                    }
                    let (lo, hi) = (
                        s.lower.unwrap_or(f64::NEG_INFINITY),
                        s.upper.unwrap_or(f64::INFINITY),
                    );
                    if lo >= hi {
                        return Err(format!("policy.steps: lower {lo} must be below upper {hi}"));
                    }
                    if lo < 0.0 && hi > 0.0 {
                        return Err(
                            "policy.steps: a step may not span the threshold (split it at 0)"
                                .into(),
                        );
                    }
                }
            }
            PolicyConfig::Simple {
                scale_out,
                scale_in,
            } => {
                if scale_out.is_none() && scale_in.is_none() {
                    return Err("policy: a simple policy needs scale_out, scale_in or both".into());
                }
                for r in scale_out.iter().chain(scale_in.iter()) {
                    if !r.threshold.is_finite() {
                        return Err(format!(
                            "policy.threshold: {} is not a finite number",
                            r.threshold
                        ));
                    }
                    if r.periods == 0 || r.periods > 1000 {
                        return Err(format!(
                            "policy.periods: {} is out of range: from 1 to 1000",
                            r.periods
                        ));
                    }
                    if r.adjustment <= 0 || r.adjustment > super::MAX_BACKENDS as i64 {
                        return Err(format!(
                            "policy.adjustment: {} is out of range: from 1 to {}",
                            r.adjustment,
                            super::MAX_BACKENDS
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The pool as the scaler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Backends up and taking traffic.
    pub in_service: u32,
    /// Backends added but not yet up: counted as capacity already on its way.
    pub pending: u32,
}

impl Capacity {
    pub fn total(&self) -> u32 {
        self.in_service + self.pending
    }
}

/// What a policy decided, with the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub reason: String,
}

/// Limits and cooldowns common to every policy.
#[derive(Debug, Clone)]
pub struct Limits {
    pub min: u32,
    pub max: u32,
    pub scale_out_cooldown: Duration,
    pub scale_in_cooldown: Duration,
}

/// A policy with the memory its kind needs (recommendation history, consecutive breaches).
/// [`Policy::recommend`] gives the kind's raw wish; [`Governor::settle`], shared by every
/// policy of a pool, applies `min`/`max` and the cooldowns.
pub struct Policy {
    cfg: PolicyConfig,
    limits: Limits,
    history: VecDeque<(Instant, u32)>,
    out_streak: u32,
    in_streak: u32,
    /// For [`Policy::decide`], a policy on its own.
    governor: Governor,
}

/// Limits and cooldowns applied once per evaluation to what the policies wished, with the
/// memory of the last actions.
pub struct Governor {
    limits: Limits,
    last_out: Option<Instant>,
    last_in: Option<Instant>,
}

impl Governor {
    pub fn new(limits: Limits) -> Governor {
        Governor {
            limits,
            last_out: None,
            last_in: None,
        }
    }

    /// New `min`/`max` (a schedule started or ended); cooldowns carry on.
    pub fn set_bounds(&mut self, min: u32, max: u32) {
        self.limits.min = min;
        self.limits.max = max;
    }

    /// Clamps `raw` to `[min, max]`, holds it during a cooldown, and records the action.
    pub fn settle(&mut self, now: Instant, raw: i64, current: u32, mut reason: String) -> Decision {
        let mut desired = raw.clamp(self.limits.min as i64, self.limits.max as i64) as u32;
        if desired as i64 != raw {
            reason.push_str(&format!(
                "; clamped to [{}, {}]",
                self.limits.min, self.limits.max
            ));
        }
        // Cooldowns: after an action, the same direction waits.
        if desired > current {
            if let Some(t) = self.last_out
                && now.duration_since(t) < self.limits.scale_out_cooldown
            {
                reason.push_str("; in scale-out cooldown");
                desired = current.max(self.limits.min);
            }
        } else if desired < current {
            let blocked = [self.last_in, self.last_out]
                .into_iter()
                .flatten()
                .any(|t| now.duration_since(t) < self.limits.scale_in_cooldown);
            if blocked {
                reason.push_str("; in scale-in cooldown");
                desired = current.min(self.limits.max);
            }
        }
        if desired > current {
            self.last_out = Some(now);
        } else if desired < current {
            self.last_in = Some(now);
        }
        Decision { desired, reason }
    }
}

/// One policy's say in an evaluation: its reading and what it wishes for.
#[derive(Debug, Clone, PartialEq)]
pub struct Wish {
    pub name: String,
    /// The reading; `None` when the source failed (then it wishes nothing, and blocks
    /// scale-in for the pool).
    pub value: Option<f64>,
    /// The desired count this policy asks for, if it asks for one.
    pub wish: Option<i64>,
    pub reason: String,
}

/// Combines the policies' wishes as AWS and the HPA do: the largest wins, and with no wish
/// the count stays. A policy with `scale_in = false` wishes only for more than `current`;
/// a missing reading of any policy blocks scale-in (it is never read as zero) but does not
/// stop the others from scaling out.
pub fn combine(wishes: &[Wish], current: u32) -> (i64, String) {
    let mut raw = wishes
        .iter()
        .filter_map(|w| w.wish)
        .max()
        .unwrap_or(current as i64);
    let missing: Vec<&str> = wishes
        .iter()
        .filter(|w| w.value.is_none())
        .map(|w| w.name.as_str())
        .collect();
    let mut reason: Vec<String> = wishes
        .iter()
        .map(|w| match (w.value, w.wish) {
            (Some(v), Some(d)) => format!("{}: value {v:.2}, wish {d} ({})", w.name, w.reason),
            (Some(v), None) => format!("{}: value {v:.2}, no wish ({})", w.name, w.reason),
            (None, _) => format!("{}: no reading ({})", w.name, w.reason),
        })
        .collect();
    if !missing.is_empty() && raw < current as i64 {
        raw = current as i64;
        reason.push(format!(
            "no scale-in: no reading from {}",
            missing.join(", ")
        ));
    }
    (raw, reason.join("; "))
}

impl Policy {
    pub fn new(cfg: PolicyConfig, limits: Limits) -> Policy {
        Policy {
            cfg,
            governor: Governor::new(limits.clone()),
            limits,
            history: VecDeque::new(),
            out_streak: 0,
            in_streak: 0,
        }
    }

    /// Decides the desired count for one evaluation of this policy alone (the tests' way to
    /// drive one policy; the scaler combines several and governs the result once). `value`
    /// is the metric (e.g. active connections per in-service backend).
    #[cfg(test)]
    pub fn decide(&mut self, now: Instant, value: f64, cap: Capacity) -> Decision {
        let current = cap.total();
        let (raw, reason) = self.recommend(now, value, cap);
        let d = self.governor.settle(now, raw, current, reason);
        self.acted(d.desired, current);
        d
    }

    /// What this policy's kind asks for, before limits and cooldowns.
    pub fn recommend(&mut self, now: Instant, value: f64, cap: Capacity) -> (i64, String) {
        match self.cfg.clone() {
            PolicyConfig::TargetTracking {
                target,
                tolerance,
                scale_in_stabilization,
            } => self.target_tracking(now, value, cap, target, tolerance, scale_in_stabilization),
            PolicyConfig::Step {
                threshold,
                adjustment_type,
                min_adjustment_magnitude,
                steps,
            } => step(
                value,
                cap.total(),
                threshold,
                adjustment_type,
                min_adjustment_magnitude,
                &steps,
            ),
            PolicyConfig::Simple {
                scale_out,
                scale_in,
            } => self.simple(value, cap.total(), scale_out.as_ref(), scale_in.as_ref()),
        }
    }

    /// New `min`/`max` (a schedule started or ended).
    pub fn set_bounds(&mut self, min: u32, max: u32) {
        self.limits.min = min;
        self.limits.max = max;
        self.governor.set_bounds(min, max);
    }

    /// After an evaluation moved the count: a simple policy's streak starts again.
    pub fn acted(&mut self, desired: u32, current: u32) {
        if desired > current {
            self.out_streak = 0;
        } else if desired < current {
            self.in_streak = 0;
        }
    }

    /// desired = ceil(in_service × value / target), out at once, in only as far as the
    /// scale-in window's highest recommendation allows (the HPA's rule).
    fn target_tracking(
        &mut self,
        now: Instant,
        value: f64,
        cap: Capacity,
        target: f64,
        tolerance: f64,
        scale_in_stabilization: Duration,
    ) -> (i64, String) {
        let current = cap.total();
        let ratio = value / target;
        // Load is carried by the backends in service; pending ones are on their way.
        let recommended = if (ratio - 1.0).abs() <= tolerance {
            current
        } else {
            (cap.in_service.max(1) as f64 * ratio).ceil().max(0.0) as u32
        };
        let unclamped = recommended;
        let recommended = recommended.clamp(self.limits.min, self.limits.max);
        self.history.push_back((now, recommended));
        while let Some(&(t, _)) = self.history.front() {
            if now.duration_since(t) > scale_in_stabilization {
                self.history.pop_front();
            } else {
                break;
            }
        }
        let stabilized = self
            .history
            .iter()
            .map(|&(_, r)| r)
            .max()
            .unwrap_or(recommended);
        let desired = if recommended >= current {
            recommended
        } else {
            stabilized.min(current)
        };
        let why = if (ratio - 1.0).abs() <= tolerance {
            format!(
                "value {value:.2} within {:.0}% of target {target}",
                tolerance * 100.0
            )
        } else if desired > recommended {
            format!(
                "value {value:.2}, target {target}: {recommended} recommended, held at {desired} by the scale-in window"
            )
        } else {
            format!(
                "value {value:.2}, target {target}: ceil({} x {ratio:.3}) = {unclamped}",
                cap.in_service.max(1)
            )
        };
        let why = if unclamped != recommended {
            format!(
                "{why}; clamped to [{}, {}]",
                self.limits.min, self.limits.max
            )
        } else {
            why
        };
        (desired as i64, why)
    }

    /// A threshold held for `periods` evaluations, then a fixed adjustment (the EC2 lab).
    fn simple(
        &mut self,
        value: f64,
        current: u32,
        scale_out: Option<&SimpleRule>,
        scale_in: Option<&SimpleRule>,
    ) -> (i64, String) {
        let out = scale_out.filter(|r| value > r.threshold);
        let inn = scale_in.filter(|r| value < r.threshold);
        self.out_streak = if out.is_some() {
            self.out_streak + 1
        } else {
            0
        };
        self.in_streak = if inn.is_some() { self.in_streak + 1 } else { 0 };
        match (out, inn) {
            (Some(r), _) if self.out_streak >= r.periods => (
                current as i64 + r.adjustment,
                format!(
                    "value {value:.2} > {} for {} periods",
                    r.threshold, self.out_streak
                ),
            ),
            (_, Some(r)) if self.in_streak >= r.periods => (
                current as i64 - r.adjustment,
                format!(
                    "value {value:.2} < {} for {} periods",
                    r.threshold, self.in_streak
                ),
            ),
            (Some(r), _) => (
                current as i64,
                format!(
                    "value {value:.2} > {}: period {} of {}",
                    r.threshold, self.out_streak, r.periods
                ),
            ),
            (_, Some(r)) => (
                current as i64,
                format!(
                    "value {value:.2} < {}: period {} of {}",
                    r.threshold, self.in_streak, r.periods
                ),
            ),
            _ => (
                current as i64,
                format!("value {value:.2} within thresholds"),
            ),
        }
    }
}

/// Bands of the metric relative to a threshold, with adjustments (AWS step scaling, with its
/// inclusive/exclusive bounds).
fn step(
    value: f64,
    current: u32,
    threshold: f64,
    adjustment_type: AdjustmentType,
    min_adjustment_magnitude: u32,
    steps: &[StepConfig],
) -> (i64, String) {
    let breach = value - threshold;
    let step = steps.iter().find(|s| {
        let (lo, hi) = (
            s.lower.unwrap_or(f64::NEG_INFINITY),
            s.upper.unwrap_or(f64::INFINITY),
        );
        if lo >= 0.0 {
            lo <= breach && breach < hi
        } else {
            lo < breach && breach <= hi
        }
    });
    match step {
        None => (
            current as i64,
            format!("value {value:.2}: no step matches (threshold {threshold})"),
        ),
        Some(s) => (
            apply_adjustment(
                adjustment_type,
                s.adjustment,
                current,
                min_adjustment_magnitude,
            ),
            format!(
                "value {value:.2}: step [{:?}, {:?}) of threshold {threshold}, {:?} {}",
                s.lower, s.upper, adjustment_type, s.adjustment
            ),
        ),
    }
}

/// AWS's adjustment types. Percent changes round toward zero, with at least
/// `min_magnitude` backends (and at least 1) when the percentage is non-zero.
pub fn apply_adjustment(
    kind: AdjustmentType,
    adjustment: i64,
    current: u32,
    min_magnitude: u32,
) -> i64 {
    match kind {
        AdjustmentType::ChangeInCapacity => current as i64 + adjustment,
        AdjustmentType::ExactCapacity => adjustment,
        AdjustmentType::PercentChangeInCapacity => {
            let exact = current as f64 * adjustment as f64 / 100.0;
            let mut delta = exact.trunc() as i64;
            if adjustment != 0 {
                let floor = (min_magnitude.max(1)) as i64;
                if delta.abs() < floor {
                    delta = floor * adjustment.signum();
                }
            }
            current as i64 + delta
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min: u32, max: u32) -> Limits {
        Limits {
            min,
            max,
            scale_out_cooldown: Duration::ZERO,
            scale_in_cooldown: Duration::ZERO,
        }
    }
    fn tt(target: f64, window: u64) -> PolicyConfig {
        PolicyConfig::TargetTracking {
            target,
            tolerance: 0.1,
            scale_in_stabilization: Duration::from_secs(window),
        }
    }
    fn cap(in_service: u32, pending: u32) -> Capacity {
        Capacity {
            in_service,
            pending,
        }
    }

    fn wish(name: &str, value: Option<f64>, wish: Option<i64>) -> Wish {
        Wish {
            name: name.into(),
            value,
            wish,
            reason: String::new(),
        }
    }

    #[test]
    fn the_largest_wish_wins_and_a_missing_reading_blocks_only_scale_in() {
        // CPU (out only) wants 5, the rate wants 2: out to 5.
        let (raw, why) = combine(
            &[
                wish("cpu", Some(80.0), Some(5)),
                wish("rate", Some(100.0), Some(2)),
            ],
            3,
        );
        assert_eq!(raw, 5, "{why}");
        // CPU abstains (out only, not above the count), the rate wants 2: in to 2.
        let (raw, _) = combine(
            &[
                wish("cpu", Some(10.0), None),
                wish("rate", Some(100.0), Some(2)),
            ],
            3,
        );
        assert_eq!(raw, 2);
        // No wish at all: the count stays.
        assert_eq!(combine(&[wish("cpu", Some(10.0), None)], 3).0, 3);
        // A missing reading blocks scale-in...
        let (raw, why) = combine(
            &[wish("cpu", None, None), wish("rate", Some(10.0), Some(1))],
            3,
        );
        assert_eq!(raw, 3);
        assert!(why.contains("no scale-in: no reading from cpu"), "{why}");
        // ...but not the others' scale-out.
        assert_eq!(
            combine(
                &[wish("cpu", None, None), wish("rate", Some(900.0), Some(6))],
                3
            )
            .0,
            6
        );
    }

    #[test]
    fn the_shared_tail_clamps_and_cools_down_once_for_all_policies() {
        let t0 = Instant::now();
        let mut g = Governor::new(Limits {
            min: 1,
            max: 4,
            scale_out_cooldown: Duration::from_secs(60),
            scale_in_cooldown: Duration::from_secs(60),
        });
        assert_eq!(
            g.settle(t0, 9, 2, String::new()).desired,
            4,
            "clamped to max"
        );
        let d = g.settle(t0 + Duration::from_secs(10), 6, 4, String::new());
        assert_eq!(d.desired, 4, "{}", d.reason);
        let d = g.settle(t0 + Duration::from_secs(30), 1, 4, String::new());
        assert_eq!(
            d.desired, 4,
            "scale-in waits for the cooldown: {}",
            d.reason
        );
        assert_eq!(
            g.settle(t0 + Duration::from_secs(61), 0, 4, String::new())
                .desired,
            1,
            "clamped to min"
        );
    }

    #[test]
    fn target_tracking_is_hpa() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Policy::new(tt(10.0, 0), limits(1, 20));
        // 2 backends at 25 per backend: ceil(2 × 2.5) = 5.
        assert_eq!(p.decide(at(1), 25.0, cap(2, 0)).desired, 5);
        // Within tolerance: 10.9 / 10 = 1.09 → no change; 11.1 → change.
        assert_eq!(p.decide(at(2), 10.9, cap(4, 0)).desired, 4);
        assert_eq!(p.decide(at(3), 11.1, cap(4, 0)).desired, 5);
        assert_eq!(p.decide(at(4), 9.1, cap(4, 0)).desired, 4);
        assert_eq!(p.decide(at(5), 2.0, cap(4, 0)).desired, 1);
    }

    #[test]
    fn pending_capacity_makes_one_breach_one_action() {
        let t0 = Instant::now();
        let mut p = Policy::new(tt(10.0, 300), limits(1, 20));
        assert_eq!(p.decide(t0, 30.0, cap(1, 0)).desired, 3);
        // Next evaluation: two are still starting; the same load gives the same desired
        // count, so nothing more is launched.
        assert_eq!(
            p.decide(t0 + Duration::from_secs(5), 30.0, cap(1, 2))
                .desired,
            3
        );
    }

    #[test]
    fn scale_in_waits_for_the_stabilization_window() {
        let t0 = Instant::now();
        let mut p = Policy::new(tt(10.0, 60), limits(1, 20));
        assert_eq!(p.decide(t0, 40.0, cap(1, 0)).desired, 4);
        // Load drops: the recommendation is 1, but 4 was recommended within the window.
        assert_eq!(
            p.decide(t0 + Duration::from_secs(30), 2.5, cap(4, 0))
                .desired,
            4
        );
        assert_eq!(
            p.decide(t0 + Duration::from_secs(59), 2.5, cap(4, 0))
                .desired,
            4
        );
        // The high recommendation has left the window.
        assert_eq!(
            p.decide(t0 + Duration::from_secs(61), 2.5, cap(4, 0))
                .desired,
            1
        );
    }

    #[test]
    fn min_and_max_clamp() {
        let t0 = Instant::now();
        let mut p = Policy::new(tt(10.0, 0), limits(2, 5));
        let d = p.decide(t0, 100.0, cap(2, 0));
        assert_eq!(d.desired, 5);
        assert!(d.reason.contains("clamped"), "{}", d.reason);
        assert_eq!(
            p.decide(t0 + Duration::from_secs(1), 0.0, cap(5, 0))
                .desired,
            2
        );
    }

    fn aws_steps() -> PolicyConfig {
        // "> 600 new connections/min per backend: add 1; > 700: add 3"; below 300: remove 1.
        PolicyConfig::Step {
            threshold: 600.0,
            adjustment_type: AdjustmentType::ChangeInCapacity,
            min_adjustment_magnitude: 0,
            steps: vec![
                StepConfig {
                    lower: Some(0.0),
                    upper: Some(100.0),
                    adjustment: 1,
                },
                StepConfig {
                    lower: Some(100.0),
                    upper: None,
                    adjustment: 3,
                },
                StepConfig {
                    lower: None,
                    upper: Some(-300.0),
                    adjustment: -1,
                },
            ],
        }
    }

    #[test]
    fn step_bounds_at_their_edges() {
        let t0 = Instant::now();
        let mut p = Policy::new(aws_steps(), limits(1, 50));
        assert_eq!(
            p.decide(t0, 600.0, cap(4, 0)).desired,
            5,
            "lower bound inclusive above the threshold"
        );
        assert_eq!(p.decide(t0, 699.9, cap(4, 0)).desired, 5);
        assert_eq!(
            p.decide(t0, 700.0, cap(4, 0)).desired,
            7,
            "upper bound exclusive: 700 is the next step"
        );
        assert_eq!(
            p.decide(t0, 300.0, cap(4, 0)).desired,
            3,
            "upper bound inclusive below the threshold"
        );
        assert_eq!(
            p.decide(t0, 300.1, cap(4, 0)).desired,
            4,
            "between the bands: no step"
        );
        assert_eq!(p.decide(t0, 599.0, cap(4, 0)).desired, 4);
        assert!(aws_steps().validate().is_ok());
    }

    #[test]
    fn percent_rounding_and_exact_capacity() {
        use AdjustmentType::*;
        assert_eq!(
            apply_adjustment(PercentChangeInCapacity, 50, 5, 0),
            7,
            "2.5 rounds toward zero to 2"
        );
        assert_eq!(apply_adjustment(PercentChangeInCapacity, -50, 5, 0), 3);
        assert_eq!(
            apply_adjustment(PercentChangeInCapacity, 10, 4, 0),
            5,
            "0.4 becomes at least 1"
        );
        assert_eq!(
            apply_adjustment(PercentChangeInCapacity, 10, 4, 2),
            6,
            "min_adjustment_magnitude"
        );
        assert_eq!(apply_adjustment(PercentChangeInCapacity, -10, 4, 2), 2);
        assert_eq!(apply_adjustment(ExactCapacity, 6, 2, 0), 6);
        assert_eq!(apply_adjustment(ChangeInCapacity, -2, 3, 0), 1);
    }

    #[test]
    fn simple_policy_like_the_ec2_lab() {
        // +1 when CPU > 20% for 2 periods, -1 when < 10% for 2 periods, cooldown 120 s.
        let cfg = PolicyConfig::Simple {
            scale_out: Some(SimpleRule {
                threshold: 20.0,
                periods: 2,
                adjustment: 1,
            }),
            scale_in: Some(SimpleRule {
                threshold: 10.0,
                periods: 2,
                adjustment: 1,
            }),
        };
        assert!(cfg.validate().is_ok());
        let lim = Limits {
            min: 1,
            max: 4,
            scale_out_cooldown: Duration::from_secs(120),
            scale_in_cooldown: Duration::from_secs(120),
        };
        let mut p = Policy::new(cfg, lim);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            p.decide(at(0), 50.0, cap(1, 0)).desired,
            1,
            "one period is not enough"
        );
        assert_eq!(p.decide(at(60), 50.0, cap(1, 0)).desired, 2);
        assert_eq!(
            p.decide(at(120), 50.0, cap(2, 0)).desired,
            2,
            "streak restarted after acting"
        );
        let d = p.decide(at(170), 50.0, cap(2, 0));
        assert_eq!(d.desired, 2, "cooldown: {}", d.reason);
        assert!(d.reason.contains("cooldown"));
        assert_eq!(
            p.decide(at(200), 50.0, cap(2, 0)).desired,
            3,
            "cooldown over"
        );
        assert_eq!(p.decide(at(400), 5.0, cap(3, 0)).desired, 3);
        assert_eq!(p.decide(at(460), 5.0, cap(3, 0)).desired, 2);
        assert_eq!(p.decide(at(470), 5.0, cap(2, 0)).desired, 2);
        let d = p.decide(at(480), 5.0, cap(2, 0));
        assert_eq!(d.desired, 2, "scale-in cooldown: {}", d.reason);
        assert_eq!(p.decide(at(600), 5.0, cap(2, 0)).desired, 1);
    }
}
