//! The access log: one record per connection, written at close, as HAProxy's `option
//! tcplog`, NGINX stream's `access_log` and Envoy's tcp_proxy access log do.
//!
//! Owns: [`Record`] (fixed-size, filled by a worker at close), the per-worker bounded queues
//! ([`Queues`], lock-free `ArrayQueue`s: a push is a few atomics, no lock, no allocation),
//! and the one logger thread that drains them, formats each record (text or JSON) and
//! writes it with buffered I/O to the listener's destination (stderr or a file, reopened on
//! SIGHUP/SIGUSR1 for logrotate). A full queue drops the record and counts it
//! (`ringlb_access_log_dropped_total`): the data plane never waits for the log.
//! Must not touch: sockets or the ring; a worker only pushes.

use crate::backend::Backend;
use crate::config::LogTarget;
use crossbeam_queue::ArrayQueue;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Records a worker may have waiting for the logger before it drops them.
pub const QUEUE_RECORDS: usize = 8192;
/// How long the logger sleeps when every queue is empty.
const IDLE: Duration = Duration::from_millis(20);

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum End {
    /// Both sides finished; the client sent its EOF first.
    #[default]
    ClientClosed,
    /// Both sides finished; the backend sent its EOF first.
    BackendClosed,
    /// The client reset or a send to it failed.
    ClientError,
    /// The backend reset or a send to it failed.
    BackendError,
    IdleTimeout,
    /// Every connect attempt was refused.
    ConnectRefused,
    /// The last connect attempt timed out (or failed otherwise).
    ConnectTimeout,
    /// No routable backend.
    NoBackend,
    /// Refused by the listener's allow/deny rules.
    Denied,
    /// Waited `queue_timeout` in the pool's queue.
    QueueTimeout,
    /// The pool's queue was full.
    QueueFull,
    /// SNI: no route and no default pool, or no ClientHello within `inspect_timeout`.
    NoRoute,
    /// Closed at the end of `shutdown_timeout`.
    Shutdown,
    /// Its backend was removed at the end of its drain timeout.
    DrainTimeout,
    /// Out of descriptors or the listener's `max_connections`.
    Rejected,
    /// Its backend was marked down and its pool says `on_backend_down = "close"`.
    BackendDown,
    /// Half-closed longer than `client_fin_timeout` or `server_fin_timeout`.
    FinTimeout,
    /// Older than `max_connection_age`, closed while idle.
    MaxAge,
    /// A PROXY header that was malformed, late, or from a sender not in
    /// `proxy_protocol_from`.
    ProxyHeader,
    /// Over `max_connections_per_source` or `connection_rate_per_source`.
    SourceLimited,
    /// Closed while idle because its backend held more than its share (`rebalance`).
    Rebalanced,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::IdleTimeout => "idle_timeout",
            End::ConnectRefused => "connect_refused",
            End::ConnectTimeout => "connect_timeout",
            End::NoBackend => "no_backend",
            End::Denied => "denied",
            End::QueueTimeout => "queue_timeout",
            End::QueueFull => "queue_full",
            End::NoRoute => "no_route",
            End::Shutdown => "shutdown",
            End::DrainTimeout => "drain_timeout",
            End::Rejected => "rejected",
            End::BackendDown => "backend_down",
            End::FinTimeout => "fin_timeout",
            End::MaxAge => "max_age",
            End::ProxyHeader => "proxy_header",
            End::SourceLimited => "source_limited",
            End::Rebalanced => "rebalanced",
        }
    }
}

/// One connection, as the log shows it. Built by a worker at close from what the
/// connection already holds; the `Arc`s are clones (an atomic add), not allocations.
pub struct Record {
    /// When the client was accepted (Unix ms).
    pub start_ms: u64,
    pub log: Arc<Destination>,
    pub client: Option<SocketAddr>,
    /// The pool (`None` before one was chosen), and the backend of the last attempt.
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<Backend>>,
    pub attempts: u8,
    /// Time to connect (µs; 0 if never connected), and the connection's whole life (µs).
    pub connect_us: u32,
    pub duration_us: u64,
    /// Bytes `[client to backend, backend to client]`.
    pub bytes: [u64; 2],
    pub end: End,
}

/// Where a listener's records go, and how: built once per listener and snapshot, held by
/// each record (an `Arc` clone, no allocation at close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The listener's name, as the record shows it.
    pub listener: String,
    pub target: LogTarget,
    pub json: bool,
}

impl Destination {
    /// Whether records of this destination are written at all.
    #[inline]
    pub fn on(&self) -> bool {
        self.target != LogTarget::Off
    }
}

/// The workers' queues and the logger's counters, shared.
pub struct Queues {
    pub per_worker: Vec<ArrayQueue<Record>>,
    /// Records dropped because a queue was full.
    pub dropped: AtomicU64,
    /// Records written.
    pub written: AtomicU64,
    /// Set on SIGHUP/SIGUSR1: the logger reopens its files.
    pub reopen: AtomicBool,
    pub stop: AtomicBool,
    /// The logger has written what was queued at the stop and ended.
    pub finished: AtomicBool,
}

impl Queues {
    pub fn new(workers: usize) -> Arc<Queues> {
        // RINGLB_ACCESS_LOG_QUEUE: records per worker queue (tuning, and the tests' way to
        // make a stalled destination overflow quickly).
        let records = std::env::var("RINGLB_ACCESS_LOG_QUEUE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(QUEUE_RECORDS)
            .clamp(1, 1 << 20);
        Arc::new(Queues {
            per_worker: (0..workers.max(1))
                .map(|_| ArrayQueue::new(records))
                .collect(),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        })
    }

    /// A worker's push: never waits; a full queue drops the record and counts it.
    #[inline]
    pub fn push(&self, worker: usize, r: Record) {
        let q = &self.per_worker[worker % self.per_worker.len()];
        if q.push(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Open destinations, by target.
struct Sinks {
    open: Vec<(LogTarget, Box<dyn Write + Send>)>,
}

impl Sinks {
    fn get(&mut self, t: &LogTarget) -> Option<&mut Box<dyn Write + Send>> {
        if let Some(i) = self.open.iter().position(|(k, _)| k == t) {
            return Some(&mut self.open[i].1);
        }
        let w: Box<dyn Write + Send> = match t {
            LogTarget::Off => return None,
            LogTarget::Stderr => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            )),
            LogTarget::File(p) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                Ok(f) => Box::new(std::io::BufWriter::with_capacity(64 * 1024, f)),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot open the access log; its records are dropped until it can be opened (SIGHUP retries)");
                    return None;
                }
            },
        };
        self.open.push((t.clone(), w));
        self.open.last_mut().map(|(_, w)| w)
    }
    fn flush(&mut self) {
        for (_, w) in &mut self.open {
            let _ = w.flush();
        }
    }
}

/// Starts the logger thread.
pub fn start(queues: Arc<Queues>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("ringlb-log".into())
        .spawn(move || run(&queues))
        .expect("start the access-log thread")
}

fn run(q: &Queues) {
    let mut sinks = Sinks { open: Vec::new() };
    let mut line = String::with_capacity(512);
    loop {
        if q.reopen.swap(false, Ordering::Relaxed) {
            sinks.flush();
            sinks.open.clear();
        }
        let mut any = false;
        for wq in &q.per_worker {
            while let Some(r) = wq.pop() {
                any = true;
                let target = &r.log.target;
                let json = r.log.json;
                line.clear();
                format_record(&r, json, &mut line);
                if let Some(w) = sinks.get(target)
                    && w.write_all(line.as_bytes()).is_ok()
                {
                    q.written.fetch_add(1, Ordering::Relaxed);
                } else {
                    q.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !any {
            sinks.flush();
            if q.stop.load(Ordering::Relaxed) {
                q.finished.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(IDLE);
        }
    }
}

/// One line: `text` (fields by position, as HAProxy's tcplog), or one JSON object. Written
/// straight into `out` (no intermediate strings or JSON values: the logger's CPU is the
/// process's CPU).
pub fn format_record(r: &Record, json: bool, out: &mut String) {
    use std::fmt::Write;
    let start = chrono::DateTime::from_timestamp_millis(r.start_ms as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let connect_ms = r.connect_us as f64 / 1000.0;
    let duration_ms = r.duration_us as f64 / 1000.0;
    let pool = r.pool.as_deref();
    let backend = r.backend.as_ref().map(|b| b.addr);
    if json {
        let _ = write!(out, "{{\"start\":\"{start}\",\"listener\":");
        json_str(out, &r.log.listener);
        match r.client {
            Some(a) => {
                let _ = write!(out, ",\"client\":\"{a}\"");
            }
            None => out.push_str(",\"client\":null"),
        }
        out.push_str(",\"pool\":");
        match pool {
            Some(p) => json_str(out, p),
            None => out.push_str("null"),
        }
        match backend {
            Some(a) => {
                let _ = write!(out, ",\"backend\":\"{a}\"");
            }
            None => out.push_str(",\"backend\":null"),
        }
        let _ = writeln!(
            out,
            ",\"attempts\":{},\"connect_ms\":{connect_ms:.3},\"duration_ms\":{duration_ms:.3},\"bytes_to_backend\":{},\"bytes_to_client\":{},\"end\":\"{}\"}}",
            r.attempts,
            r.bytes[0],
            r.bytes[1],
            r.end.as_str()
        );
    } else {
        let _ = write!(out, "{start} {} ", r.log.listener);
        match r.client {
            Some(a) => {
                let _ = write!(out, "{a} ");
            }
            None => out.push_str("- "),
        }
        let _ = write!(out, "{}/", pool.unwrap_or("-"));
        match backend {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => out.push('-'),
        }
        let _ = writeln!(
            out,
            " attempts={} connect_ms={connect_ms:.3} duration_ms={duration_ms:.3} bytes_to_backend={} bytes_to_client={} end={}",
            r.attempts,
            r.bytes[0],
            r.bytes[1],
            r.end.as_str()
        );
    }
}

/// A JSON string (quoted and escaped) onto `out`.
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::json_str;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }
}
