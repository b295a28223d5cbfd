//! Scheduled actions, as AWS scheduled scaling: `[[schedule]]` entries that set `min`
//! and/or `max` from a time on, recurring (a cron expression, UTC) or once (`at`, RFC 3339),
//! for `duration` or until another schedule takes over.
//!
//! Owns: which schedule is in force at a given time and the limits it gives. Pure: the time
//! is passed in. Must not touch: the policies (they only see the limits) or HTTP.

use crate::config::values::{Dur, US_S};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Names it in logs and metrics (default: its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Recurring: a cron expression in UTC (5 fields, or 6 with seconds first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Once: an RFC 3339 time, e.g. "2026-12-24T18:00:00Z".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long each occurrence holds; unset: until another schedule starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur<US_S>>,
}

/// A schedule ready to evaluate.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    when: When,
    pub min: Option<u32>,
    pub max: Option<u32>,
    duration: Option<chrono::Duration>,
}

#[derive(Debug, Clone)]
enum When {
    Cron(Box<croner::Cron>),
    At(DateTime<Utc>),
}

impl Schedule {
    /// Checks one entry against the pool's `min`/`max` (`max_backends` bounds both).
    pub fn new(
        i: usize,
        c: &ScheduleConfig,
        base: (u32, u32),
        max_backends: u32,
    ) -> Result<Schedule, String> {
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("schedule#{}", i + 1));
        let err = |m: String| format!("schedule {name:?}: {m}");
        let when = match (&c.cron, &c.at) {
            (Some(expr), None) => {
                let parser = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build();
                When::Cron(Box::new(
                    parser
                        .parse(expr)
                        .map_err(|e| err(format!("cron {expr:?}: {e}")))?,
                ))
            }
            (None, Some(at)) => When::At(
                DateTime::parse_from_rfc3339(at)
                    .map_err(|e| {
                        err(format!(
                            "at {at:?}: {e} (RFC 3339, e.g. \"2026-12-24T18:00:00Z\")"
                        ))
                    })?
                    .with_timezone(&Utc),
            ),
            _ => return Err(err("give exactly one of cron and at".into())),
        };
        if c.min.is_none() && c.max.is_none() {
            return Err(err("it sets neither min nor max".into()));
        }
        let (min, max) = (c.min.unwrap_or(base.0), c.max.unwrap_or(base.1));
        if max == 0 || max > max_backends {
            return Err(err(format!(
                "max {max} is out of range: from 1 to {max_backends}"
            )));
        }
        if min > max {
            return Err(err(format!("min {min} is above max {max}")));
        }
        let duration = c
            .duration
            .map(|d| chrono::Duration::from_std(d.get()).map_err(|e| err(e.to_string())))
            .transpose()?;
        Ok(Schedule {
            name,
            when,
            min: c.min,
            max: c.max,
            duration,
        })
    }

    /// When the occurrence in force at `now` started, if one is.
    pub fn started(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = match &self.when {
            When::At(t) => (*t <= now).then_some(*t)?,
            When::Cron(c) => c.find_previous_occurrence(&now, true).ok()?,
        };
        match self.duration {
            Some(d) if now >= start + d => None,
            _ => Some(start),
        }
    }
}

/// The limits in force at `now`: the base `(min, max)`, overridden by the schedule that
/// started last among those in force (each of `min`/`max` it sets). Returns its name too.
pub fn limits_at(
    schedules: &[Schedule],
    base: (u32, u32),
    now: DateTime<Utc>,
) -> ((u32, u32), Option<&Schedule>) {
    let active = schedules
        .iter()
        .filter_map(|s| s.started(now).map(|t| (t, s)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, s)| s);
    match active {
        Some(s) => {
            let (min, max) = (s.min.unwrap_or(base.0), s.max.unwrap_or(base.1));
            // A schedule that sets only one bound may cross the base's other: the bound it
            // sets wins.
            let (min, max) = if s.min.is_some() {
                (min, max.max(min))
            } else {
                (min.min(max), max)
            };
            ((min, max), Some(s))
        }
        None => (base, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(
        cron: Option<&str>,
        at: Option<&str>,
        min: Option<u32>,
        max: Option<u32>,
        duration: Option<&str>,
    ) -> Result<Schedule, String> {
        let c = ScheduleConfig {
            name: None,
            cron: cron.map(String::from),
            at: at.map(String::from),
            min,
            max,
            duration: duration.map(|d| Dur::parse(d).unwrap()),
        };
        Schedule::new(0, &c, (1, 4), 1000)
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_one_time_action_holds_for_its_duration() {
        let s = sched(
            None,
            Some("2026-12-01T10:00:00Z"),
            Some(3),
            None,
            Some("1h"),
        )
        .unwrap();
        let all = [s];
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-01T09:59:59Z")).0, (1, 4));
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-01T10:00:00Z")).0, (3, 4));
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-01T10:59:59Z")).0, (3, 4));
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-01T11:00:00Z")).0, (1, 4));
    }

    #[test]
    fn recurring_actions_and_the_latest_one_wins() {
        // Weekdays 08:00 UTC: min 4; every day 20:00: max 2, until the next morning's.
        let morning = sched(Some("0 8 * * 1-5"), None, Some(4), None, None).unwrap();
        let evening = sched(Some("0 20 * * *"), None, None, Some(2), None).unwrap();
        let all = [morning, evening];
        // Tuesday 2026-12-01 09:00: the morning's min 4.
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-01T09:00:00Z")).0, (4, 4));
        // 21:00: the evening's max 2 started later; min follows it down.
        let ((min, max), s) = limits_at(&all, (1, 4), t("2026-12-01T21:00:00Z"));
        assert_eq!((min, max), (1, 2));
        assert_eq!(s.unwrap().max, Some(2));
        // Saturday morning: no weekday action, the evening's holds.
        assert_eq!(limits_at(&all, (1, 4), t("2026-12-05T09:00:00Z")).0, (1, 2));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for (cron, at, min, max) in [
            (Some("not a cron"), None, Some(2), None),
            (None, Some("tomorrow"), Some(2), None),
            (
                Some("0 8 * * *"),
                Some("2026-12-01T10:00:00Z"),
                Some(2),
                None,
            ),
            (None, None, Some(2), None),
            (Some("0 8 * * *"), None, None, None),
            (Some("0 8 * * *"), None, Some(5), Some(3)),
            (Some("0 8 * * *"), None, None, Some(0)),
            (Some("0 8 * * *"), None, None, Some(5000)),
        ] {
            assert!(
                sched(cron, at, min, max, None).is_err(),
                "{cron:?} {at:?} {min:?} {max:?}"
            );
        }
    }
}
