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
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
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

/// Installs the recorder (once per process). Series of removed backends expire after 10
/// minutes without an update.
pub fn install() -> Result<(), String> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ringlb_backend_connect_duration_seconds".into()),
            LATENCY,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("ringlb_health_check_duration_seconds".into()),
                LATENCY,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("ringlb_pool_queue_wait_seconds".into()),
                LATENCY,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("ringlb_connection_duration_seconds".into()),
                LIFETIME,
            )
        })
        .map(|b| {
            b.idle_timeout(
                MetricKindMask::COUNTER | MetricKindMask::GAUGE,
                Some(Duration::from_secs(600)),
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let _ = HANDLE.set(handle);
    let process = metrics_process::Collector::default();
    process.describe();
    let _ = PROCESS.set(process);
    describe_counter!(
        "ringlb_listener_connections_total",
        "Connections accepted by the listener."
    );
    describe_gauge!(
        "ringlb_listener_active_connections",
        "Connections open on the listener now."
    );
    describe_counter!(
        "ringlb_listener_no_backend_total",
        "Connections closed because no backend was routable."
    );
    describe_counter!(
        "ringlb_listener_rejected_total",
        "Connections closed at once because max_connections was reached."
    );
    describe_counter!(
        "ringlb_listener_denied_total",
        "Connections refused by the listener's allow/deny rules."
    );
    describe_counter!(
        "ringlb_listener_no_route_total",
        "Connections no SNI route matched (sent to the default pool, or closed without one), by reason."
    );
    describe_gauge!(
        "ringlb_pool_queue_length",
        "Clients waiting for a backend below its max_connections."
    );
    describe_histogram!(
        "ringlb_pool_queue_wait_seconds",
        Unit::Seconds,
        "Time clients waited in the pool's queue before a backend took them."
    );
    describe_counter!(
        "ringlb_pool_queue_timeouts_total",
        "Queued clients closed after queue_timeout."
    );
    describe_counter!(
        "ringlb_pool_queue_overflows_total",
        "Clients closed at once because the pool's queue was full."
    );
    describe_gauge!(
        "ringlb_backend_effective_weight",
        "The backend's weight in force now (below its weight during slow start)."
    );
    describe_gauge!(
        "ringlb_backend_max_connections",
        "The backend's connection limit (0: none)."
    );
    describe_counter!(
        "ringlb_backend_connections_total",
        "Connections (connect attempts) sent to the backend."
    );
    describe_gauge!(
        "ringlb_backend_active_connections",
        "Connections open to the backend now."
    );
    describe_counter!(
        "ringlb_backend_connect_errors_total",
        "Failed connects to the backend, by reason."
    );
    describe_counter!(
        "ringlb_backend_bytes_total",
        Unit::Bytes,
        "Bytes relayed, by direction."
    );
    describe_gauge!(
        "ringlb_backend_up",
        "1 when the backend takes new connections."
    );
    describe_gauge!("ringlb_backend_state", "1 for the backend's current state.");
    describe_gauge!("ringlb_backend_weight", "The backend's weight.");
    describe_gauge!(
        "ringlb_backend_protected",
        "1 while the backend has scale-in protection (admin API, ECS task protection semantics)."
    );
    describe_gauge!(
        "ringlb_backend_backup",
        "1 for a backup backend (takes connections only while no non-backup backend of its pool is up)."
    );
    describe_counter!(
        "ringlb_backend_rebalanced_total",
        "Idle connections closed because the backend held more than its share of the pool (rebalance)."
    );
    describe_counter!(
        "ringlb_backend_closed_on_down_total",
        "Connections closed because the backend was marked down (on_backend_down = \"close\")."
    );
    describe_counter!(
        "ringlb_listener_proxy_header_errors_total",
        "Connections closed for their PROXY header, by reason (untrusted sender, malformed, timeout, version)."
    );
    describe_counter!(
        "ringlb_listener_source_limited_total",
        "Connections refused by the per-source limits, by reason (connections, rate, table_full)."
    );
    describe_counter!(
        "ringlb_listener_fin_timeouts_total",
        "Half-closed connections closed by client_fin_timeout or server_fin_timeout."
    );
    describe_counter!(
        "ringlb_listener_max_age_closed_total",
        "Connections closed, while idle, for being older than max_connection_age."
    );
    describe_counter!("ringlb_health_checks_total", "Health probes, by result.");
    describe_histogram!(
        "ringlb_health_check_duration_seconds",
        Unit::Seconds,
        "Health probe duration."
    );
    describe_histogram!(
        "ringlb_backend_connect_duration_seconds",
        Unit::Seconds,
        "Time to connect to a backend."
    );
    describe_gauge!(
        "ringlb_config_last_reload_successful",
        "1 if the last reload applied (or none was tried), 0 if it was refused."
    );
    describe_gauge!(
        "ringlb_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "When the configuration in force was loaded (start or last good reload)."
    );
    describe_gauge!(
        "ringlb_config_last_reload_timestamp_seconds",
        Unit::Seconds,
        "When the last reload was tried, applied or refused (start time before any)."
    );
    describe_counter!(
        "ringlb_config_reload_failures_total",
        "Reloads refused (a broken file, or one that needs a restart)."
    );
    describe_counter!("ringlb_config_reloads_total", "Reloads that applied.");
    describe_counter!(
        "ringlb_buffer_ring_exhausted_total",
        "Recvs parked because the worker's relay buffers were all in use."
    );
    describe_counter!(
        "ringlb_relay_repairs_total",
        "Relay directions found unarmed and re-armed (should stay 0)."
    );
    describe_gauge!("ringlb_build_info", "1, labelled with the version.");
    describe_gauge!(
        "ringlb_io_uring_features",
        "1 for each io_uring feature the workers use (recv_cap: capped multishot recvs, Linux 6.17+; buf_inc: incremental buffer consumption, 6.12+; fixed_files: long connections' sockets in a registered file table, 5.19+); 0 where the kernel lacks it or RINGLB_IO_URING_OFF turns it off."
    );
    describe_counter!(
        "ringlb_access_log_dropped_total",
        "Access-log records dropped: a worker's queue was full (the logger fell behind) or the destination could not be written."
    );
    describe_counter!(
        "ringlb_access_log_records_total",
        "Access-log records written."
    );
    describe_histogram!(
        "ringlb_connection_duration_seconds",
        Unit::Seconds,
        "Lifetime of proxied connections."
    );
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
