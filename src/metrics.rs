//! Metric names, the Prometheus recorder, and the scrape.
//!
//! Owns: installing `metrics-exporter-prometheus` as the recorder, HELP texts, histogram
//! buckets, and copying the data plane's atomics into the exporter at scrape time.
//! Why at scrape time: workers count in plain cache-padded atomics that least_conn also
//! reads; turning those into labelled series once per scrape costs nothing per connection,
//! whereas a labelled `metrics` call per event would. The two histograms recorded per
//! connection use handles cached in the snapshot (no label lookup on the hot path).
//! Must not touch: the hot path itself.

use crate::backend::BackendState;
use crate::snapshot::Shared;
use metrics::{Unit, counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// `process_*` series (CPU seconds, resident memory, open descriptors, threads, start
/// time), read from /proc at each scrape by the metrics-process crate.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Latency buckets for connects and probes, in seconds (100 µs to 5 s).
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Connection lifetimes, in seconds (1 ms to 1 h).
const LIFETIME: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Histograms whose buckets are not the exporter's default summary: latencies and lifetimes.
const BUCKETS: &[(&str, &[f64])] = &[
    ("ringlb_backend_connect_duration_seconds", LATENCY),
    ("ringlb_health_check_duration_seconds", LATENCY),
    ("ringlb_pool_queue_wait_seconds", LATENCY),
    ("ringlb_connection_duration_seconds", LIFETIME),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}
use Kind::*;

/// Every `ringlb_*` series the balancer exports, with its kind and HELP text; the unit is
/// the name's (Prometheus names end in theirs: `_seconds`, `_bytes_total`).
/// `docs/observability.md` documents the same list; a test holds the two together.
#[rustfmt::skip]
const METRICS: &[(Kind, &str, &str)] = &[
    (Counter, "ringlb_listener_connections_total", "Connections accepted by the listener."),
    (Gauge, "ringlb_listener_active_connections", "Connections open on the listener now."),
    (Counter, "ringlb_listener_no_backend_total",
        "Connections closed because no backend was routable."),
    (Counter, "ringlb_listener_rejected_total",
        "Connections closed at once because max_connections was reached."),
    (Counter, "ringlb_listener_denied_total",
        "Connections refused by the listener's allow/deny rules."),
    (Counter, "ringlb_listener_no_route_total",
        "Connections no SNI route matched (sent to the default pool, or closed without one), by reason."),
    (Gauge, "ringlb_pool_queue_length", "Clients waiting for a backend below its max_connections."),
    (Histogram, "ringlb_pool_queue_wait_seconds",
        "Time clients waited in the pool's queue before a backend took them."),
    (Counter, "ringlb_pool_queue_timeouts_total", "Queued clients closed after queue_timeout."),
    (Counter, "ringlb_pool_queue_overflows_total",
        "Clients closed at once because the pool's queue was full."),
    (Gauge, "ringlb_backend_effective_weight",
        "The backend's weight in force now (below its weight during slow start)."),
    (Gauge, "ringlb_backend_max_connections", "The backend's connection limit (0: none)."),
    (Counter, "ringlb_backend_connections_total",
        "Connections (connect attempts) sent to the backend."),
    (Gauge, "ringlb_backend_active_connections", "Connections open to the backend now."),
    (Counter, "ringlb_backend_connect_errors_total", "Failed connects to the backend, by reason."),
    (Counter, "ringlb_backend_bytes_total", "Bytes relayed, by direction."),
    (Gauge, "ringlb_backend_up", "1 when the backend takes new connections."),
    (Gauge, "ringlb_backend_state", "1 for the backend's current state."),
    (Gauge, "ringlb_backend_weight", "The backend's weight."),
    (Gauge, "ringlb_backend_protected",
        "1 while the backend has scale-in protection (admin API, ECS task protection semantics)."),
    (Gauge, "ringlb_backend_backup",
        "1 for a backup backend (takes connections only while no non-backup backend of its pool is up)."),
    (Counter, "ringlb_backend_rebalanced_total",
        "Idle connections closed because the backend held more than its share of the pool (rebalance)."),
    (Counter, "ringlb_backend_closed_on_down_total",
        "Connections closed because the backend was marked down (on_backend_down = \"close\")."),
    (Counter, "ringlb_listener_proxy_header_errors_total",
        "Connections closed for their PROXY header, by reason (untrusted sender, malformed, timeout, version)."),
    (Counter, "ringlb_listener_source_limited_total",
        "Connections refused by the per-source limits, by reason (connections, rate, table_full)."),
    (Counter, "ringlb_listener_fin_timeouts_total",
        "Half-closed connections closed by client_fin_timeout or server_fin_timeout."),
    (Counter, "ringlb_listener_max_age_closed_total",
        "Connections closed, while idle, for being older than max_connection_age."),
    (Counter, "ringlb_health_checks_total", "Health probes, by result."),
    (Histogram, "ringlb_health_check_duration_seconds", "Health probe duration."),
    (Histogram, "ringlb_backend_connect_duration_seconds", "Time to connect to a backend."),
    (Gauge, "ringlb_config_last_reload_successful",
        "1 if the last reload applied (or none was tried), 0 if it was refused."),
    (Gauge, "ringlb_config_last_reload_success_timestamp_seconds",
        "When the configuration in force was loaded (start or last good reload)."),
    (Gauge, "ringlb_config_last_reload_timestamp_seconds",
        "When the last reload was tried, applied or refused (start time before any)."),
    (Counter, "ringlb_config_reload_failures_total",
        "Reloads refused (a broken file, or one that needs a restart)."),
    (Counter, "ringlb_config_reloads_total", "Reloads that applied."),
    (Counter, "ringlb_buffer_ring_exhausted_total",
        "Recvs parked because the worker's relay buffers were all in use."),
    (Counter, "ringlb_relay_repairs_total",
        "Relay directions found unarmed and re-armed (should stay 0)."),
    (Gauge, "ringlb_build_info", "1, labelled with the version."),
    (Gauge, "ringlb_io_uring_features",
        "1 for each io_uring feature the workers use (recv_cap: capped multishot recvs, Linux 6.17+; buf_inc: incremental buffer consumption, 6.12+; fixed_files: long connections' sockets in a registered file table, 5.19+); 0 where the kernel lacks it or RINGLB_IO_URING_OFF turns it off."),
    (Counter, "ringlb_access_log_dropped_total",
        "Access-log records dropped: a worker's queue was full (the logger fell behind) or the destination could not be written."),
    (Counter, "ringlb_access_log_records_total", "Access-log records written."),
    (Histogram, "ringlb_connection_duration_seconds", "Lifetime of proxied connections."),
];

/// The unit a series' name ends in.
fn unit_of(name: &str) -> Option<Unit> {
    if name.ends_with("_seconds") {
        Some(Unit::Seconds)
    } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") {
        Some(Unit::Bytes)
    } else {
        None
    }
}

/// Installs the recorder (once per process). Series of removed backends expire after 10
/// minutes without an update.
pub fn install() -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let mut builder = PrometheusBuilder::new();
    for &(name, buckets) in BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    }
    let handle = builder
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::GAUGE,
            Some(Duration::from_secs(600)),
        )
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let _ = HANDLE.set(handle);
    let process = metrics_process::Collector::default();
    process.describe();
    let _ = PROCESS.set(process);
    metrics::with_recorder(|r| {
        for &(kind, name, help) in METRICS {
            let unit = unit_of(name);
            let (name, help) = (metrics::KeyName::from_const_str(name), help.into());
            match kind {
                Counter => r.describe_counter(name, unit, help),
                Gauge => r.describe_gauge(name, unit, help),
                Histogram => r.describe_histogram(name, unit, help),
            }
        }
    });
    Ok(())
}

/// Copies the shared counters into the exporter and renders the text format.
pub fn render(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    for l in &snap.listeners {
        let name = l.name.clone();
        let s = &l.stats;
        use std::sync::atomic::Ordering::Relaxed;
        counter!("ringlb_listener_connections_total", "listener" => name.clone())
            .absolute(s.connections.load(Relaxed));
        gauge!("ringlb_listener_active_connections", "listener" => name.clone())
            .set(s.active.load(Relaxed).max(0) as f64);
        counter!("ringlb_listener_no_backend_total", "listener" => name.clone())
            .absolute(s.no_backend.load(Relaxed));
        counter!("ringlb_listener_rejected_total", "listener" => name.clone())
            .absolute(s.rejected.load(Relaxed));
        counter!("ringlb_listener_denied_total", "listener" => name.clone())
            .absolute(s.denied.load(Relaxed));
        if l.accept_proxy != crate::config::AcceptProxy::Off {
            for why in crate::proxy::ProxyHeaderError::ALL {
                counter!("ringlb_listener_proxy_header_errors_total", "listener" => name.clone(), "reason" => why.as_str())
                    .absolute(s.proxy_header_errors[why as usize].load(Relaxed));
            }
        }
        if l.sources.is_some() {
            for why in crate::sources::Limited::ALL {
                counter!("ringlb_listener_source_limited_total", "listener" => name.clone(), "reason" => why.as_str())
                    .absolute(s.source_limited[why as usize].load(Relaxed));
            }
        }
        if l.fin_timeout != [Duration::ZERO; 2] {
            counter!("ringlb_listener_fin_timeouts_total", "listener" => name.clone())
                .absolute(s.fin_timeouts.load(Relaxed));
        }
        if !l.max_age.is_zero() {
            counter!("ringlb_listener_max_age_closed_total", "listener" => name.clone())
                .absolute(s.aged_out.load(Relaxed));
        }
        if !l.routes.is_empty() {
            for why in crate::routes::NoRoute::ALL {
                counter!("ringlb_listener_no_route_total", "listener" => name.clone(), "reason" => why.as_str())
                    .absolute(s.no_route[why as usize].load(Relaxed));
            }
        }
    }
    for p in &snap.pools {
        {
            use std::sync::atomic::Ordering::Relaxed;
            let q = &p.queue;
            gauge!("ringlb_pool_queue_length", "pool" => p.name.clone())
                .set(q.length.load(Relaxed).max(0) as f64);
            counter!("ringlb_pool_queue_timeouts_total", "pool" => p.name.clone())
                .absolute(q.timeouts.load(Relaxed));
            counter!("ringlb_pool_queue_overflows_total", "pool" => p.name.clone())
                .absolute(q.overflows.load(Relaxed));
        }
        for b in &p.backends {
            use std::sync::atomic::Ordering::Relaxed;
            let (pool, addr) = (p.name.clone(), b.addr.to_string());
            let s = &b.stats;
            counter!("ringlb_backend_connections_total", "pool" => pool.clone(), "backend" => addr.clone()).absolute(s.connections.load(Relaxed));
            gauge!("ringlb_backend_active_connections", "pool" => pool.clone(), "backend" => addr.clone()).set(b.active().max(0) as f64);
            for (reason, i) in [("refused", 0), ("timeout", 1), ("other", 2)] {
                counter!("ringlb_backend_connect_errors_total", "pool" => pool.clone(), "backend" => addr.clone(), "reason" => reason)
                    .absolute(s.connect_errors[i].load(Relaxed));
            }
            for (direction, i) in [("to_backend", 0), ("to_client", 1)] {
                counter!("ringlb_backend_bytes_total", "pool" => pool.clone(), "backend" => addr.clone(), "direction" => direction)
                    .absolute(s.bytes[i].load(Relaxed));
            }
            let state = b.state();
            gauge!("ringlb_backend_up", "pool" => pool.clone(), "backend" => addr.clone())
                .set(if b.is_routable() { 1.0 } else { 0.0 });
            for st in BackendState::ALL {
                gauge!("ringlb_backend_state", "pool" => pool.clone(), "backend" => addr.clone(), "state" => st.as_str())
                    .set(if st == state { 1.0 } else { 0.0 });
            }
            gauge!("ringlb_backend_protected", "pool" => pool.clone(), "backend" => addr.clone())
                .set(if b.protection_left().is_some() {
                    1.0
                } else {
                    0.0
                });
            gauge!("ringlb_backend_backup", "pool" => pool.clone(), "backend" => addr.clone())
                .set(if b.is_backup() { 1.0 } else { 0.0 });
            counter!("ringlb_backend_closed_on_down_total", "pool" => pool.clone(), "backend" => addr.clone())
                .absolute(s.closed_on_down.load(Relaxed));
            counter!("ringlb_backend_rebalanced_total", "pool" => pool.clone(), "backend" => addr.clone())
                .absolute(s.rebalanced.load(Relaxed));
            gauge!("ringlb_backend_effective_weight", "pool" => pool.clone(), "backend" => addr.clone())
                .set(b.effective_weight());
            gauge!("ringlb_backend_max_connections", "pool" => pool.clone(), "backend" => addr.clone())
                .set(b.max_connections() as f64);
            gauge!("ringlb_backend_weight", "pool" => pool, "backend" => addr)
                .set(b.weight() as f64);
        }
    }
    {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &shared.reloads;
        gauge!("ringlb_config_last_reload_successful").set(if r.last_successful.load(Relaxed) {
            1.0
        } else {
            0.0
        });
        gauge!("ringlb_config_last_reload_success_timestamp_seconds")
            .set(r.last_success_time.load(Relaxed) as f64);
        gauge!("ringlb_config_last_reload_timestamp_seconds")
            .set(r.last_attempt_time.load(Relaxed) as f64);
        counter!("ringlb_config_reload_failures_total").absolute(r.failures.load(Relaxed));
        counter!("ringlb_config_reloads_total").absolute(r.successes.load(Relaxed));
        counter!("ringlb_buffer_ring_exhausted_total")
            .absolute(shared.buffer_ring_exhausted.load(Relaxed));
        counter!("ringlb_relay_repairs_total").absolute(shared.relay_repairs.load(Relaxed));
        for (feature, on) in shared.io_uring_features.list() {
            gauge!("ringlb_io_uring_features", "feature" => feature).set(if on {
                1.0
            } else {
                0.0
            });
        }
        gauge!("ringlb_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        if let Some(q) = shared.access_log.get() {
            counter!("ringlb_access_log_dropped_total").absolute(q.dropped.load(Relaxed));
            counter!("ringlb_access_log_records_total").absolute(q.written.load(Relaxed));
        }
    }
    if let Some(p) = PROCESS.get() {
        p.collect();
    }
    match HANDLE.get() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Runs the exporter's upkeep (drains histogram samples into buckets) without a scrape.
pub fn upkeep() -> Option<()> {
    HANDLE.get().map(|h| h.run_upkeep())
}

/// Renders whatever the recorder holds (the scaler's own metrics).
pub fn render_registry() -> String {
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/observability.md`'s metric table: (name, kind) for every `ringlb_*` row (a row
    /// may name several series of one kind, comma-separated).
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../docs/observability.md");
        let mut out = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| ringlb_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let kind = cells[2].split_whitespace().next().unwrap_or("").to_string();
            for name in cells[1].split(',').map(str::trim) {
                out.push((name.to_string(), kind.clone()));
            }
        }
        out
    }

    #[test]
    fn every_described_metric_is_documented_with_its_kind() {
        let doc = documented();
        assert!(doc.len() > 30, "the table was not found: {doc:?}");
        for &(kind, name, _) in METRICS {
            let want = format!("{kind:?}").to_lowercase();
            let found: Vec<_> = doc.iter().filter(|(n, _)| n == name).collect();
            assert_eq!(found.len(), 1, "{name}: documented {} times", found.len());
            assert_eq!(found[0].1, want, "{name}: documented as another kind");
        }
    }

    #[test]
    fn units_come_from_the_name() {
        assert_eq!(
            unit_of("ringlb_pool_queue_wait_seconds"),
            Some(Unit::Seconds)
        );
        assert_eq!(unit_of("ringlb_backend_bytes_total"), Some(Unit::Bytes));
        assert_eq!(unit_of("ringlb_backend_connections_total"), None);
        assert_eq!(unit_of("ringlb_seconds_total"), None);
    }

    #[test]
    fn names_are_unique_and_histograms_with_buckets_are_described() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.1).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a metric is described twice");
        for (name, buckets) in BUCKETS {
            assert!(
                METRICS.iter().any(|m| m.0 == Histogram && m.1 == *name),
                "{name} has buckets but is no described histogram"
            );
            assert!(
                buckets.windows(2).all(|w| w[0] < w[1]),
                "{name}: buckets out of order"
            );
        }
        for m in METRICS {
            assert!(m.1.starts_with("ringlb_") && !m.2.is_empty(), "{}", m.1);
        }
    }
}
