//! Per-source limits (NGINX's `limit_conn`, HAProxy's stick tables): connections open at
//! once and new connections per second from one client address, counted across workers.
//!
//! Owns: [`SourceTable`], a fixed-size open-addressing table of atomics, one per listener
//! with limits. No lock and no allocation after it is built: each worker claims and counts
//! entries with atomic operations. Memory is bounded by `source_table_size` (24 bytes an
//! entry, rounded up to a power of two).
//! Must not touch: sockets or the snapshot; it imports only the config it is built from.
//!
//! - The rate is a GCRA token bucket (one atomic per source: the theoretical arrival
//!   time): `burst` connections at once, then one every `1/rate`.
//! - An entry is free when no connection of its source is open and its bucket has
//!   refilled: it then holds nothing worth remembering, and a new source may take it over.
//!   So nothing needs sweeping: entries expire by themselves, exactly when forgetting them
//!   changes no decision.
//! - A source is looked for in [`PROBES`] neighbouring entries. If none of them is its own
//!   or free, the table is full there and the connection is refused (reason `table_full`,
//!   as NGINX answers when its zone is exhausted): failing open would let a flood of
//!   sources switch the limits off.
//! - Two workers that meet a new source at the same instant may each claim an entry for
//!   it; its limits then count in two halves until those entries free up. The error is at
//!   most one entry per worker, for as long as that source stays busy.

use crate::config::{ListenerConfig, parse_rate};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Entries looked at for one source.
pub const PROBES: usize = 16;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Connections = 0,
    Rate = 1,
    TableFull = 2,
}

impl Limited {
    pub const ALL: [Limited; 3] = [Limited::Connections, Limited::Rate, Limited::TableFull];
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Connections => "connections",
            Limited::Rate => "rate",
            Limited::TableFull => "table_full",
        }
    }
}

/// A listener's per-source limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most open connections per source (0: none).
    pub max_connections: u32,
    /// Microseconds between connections at the steady rate (0: no rate limit).
    pub interval_us: u64,
    /// Connections a source may open at once before the rate applies.
    pub burst: u32,
}

impl Limits {
    /// The limits `lc` sets, if any (it has been validated).
    pub fn of(lc: &ListenerConfig) -> Option<Limits> {
        let rate = lc
            .connection_rate_per_source
            .as_ref()
            .and_then(|r| parse_rate(r.get_ref()).ok());
        let max = lc.max_connections_per_source.get();
        if max == 0 && rate.is_none() {
            return None;
        }
        Some(Limits {
            max_connections: max,
            interval_us: rate.map(|r| (1e6 / r).ceil() as u64).unwrap_or(0),
            burst: lc
                .connection_rate_burst
                .map(|b| b.get())
                .unwrap_or_else(|| rate.map(|r| r.ceil() as u32).unwrap_or(1))
                .max(1),
        })
    }
}

#[derive(Default)]
struct Entry {
    /// The source's hash (0: never used).
    key: AtomicU64,
    active: AtomicU32,
    /// GCRA: when the bucket is full again, in µs since the table's epoch.
    tat_us: AtomicU64,
}

pub struct SourceTable {
    entries: Box<[Entry]>,
    mask: usize,
    /// The configured size (the table is the next power of two).
    size: usize,
    max_connections: AtomicU32,
    interval_us: AtomicU64,
    burst: AtomicU32,
    epoch: Instant,
}

impl SourceTable {
    pub fn new(size: usize, limits: Limits) -> SourceTable {
        let n = size.max(PROBES).next_power_of_two();
        let t = SourceTable {
            entries: (0..n).map(|_| Entry::default()).collect(),
            mask: n - 1,
            size,
            max_connections: AtomicU32::new(0),
            interval_us: AtomicU64::new(0),
            burst: AtomicU32::new(1),
            epoch: Instant::now(),
        };
        t.set_limits(limits);
        t
    }

    /// The size it was built for (a reload that changes it builds a new table).
    pub fn capacity(&self) -> usize {
        self.size
    }

    /// New limits (a reload); open connections stay counted.
    pub fn set_limits(&self, l: Limits) {
        self.max_connections.store(l.max_connections, Relaxed);
        self.interval_us.store(l.interval_us, Relaxed);
        self.burst.store(l.burst, Relaxed);
    }

    /// Microseconds since the table was built (the clock of the rate limit).
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Admits one connection from `ip` at `now_us`: the entry to [`release`](Self::release)
    /// when it closes, or why it is refused.
    pub fn acquire(&self, ip: IpAddr, now_us: u64) -> Result<u32, Limited> {
        let h = hash(ip);
        // A second round only when another worker moved an entry under us.
        for _ in 0..2 {
            let start = h as usize & self.mask;
            let mut free = None;
            let mut own = None;
            for i in 0..PROBES {
                let idx = (start + i) & self.mask;
                let e = &self.entries[idx];
                let k = e.key.load(Relaxed);
                if k == h {
                    own = Some(idx);
                    break;
                }
                if free.is_none()
                    && (k == 0 || (e.active.load(Relaxed) == 0 && e.tat_us.load(Relaxed) <= now_us))
                {
                    free = Some((idx, k));
                }
            }
            let idx = match (own, free) {
                (Some(idx), _) => idx,
                (None, Some((idx, k))) => {
                    // Take over the free entry; its old bucket had refilled, which is what a
                    // new source starts with.
                    if self.entries[idx]
                        .key
                        .compare_exchange(k, h, Relaxed, Relaxed)
                        .is_err()
                    {
                        continue;
                    }
                    idx
                }
                (None, None) => return Err(Limited::TableFull),
            };
            match self.take(idx, h, now_us) {
                Some(r) => return r,
                None => continue,
            }
        }
        Err(Limited::TableFull)
    }

    /// Counts a connection on entry `idx` (which holds `h`); `None` if another worker
    /// handed the entry to another source meanwhile.
    fn take(&self, idx: usize, h: u64, now_us: u64) -> Option<Result<u32, Limited>> {
        let e = &self.entries[idx];
        let before = e.active.fetch_add(1, Relaxed);
        if e.key.load(Relaxed) != h {
            e.active.fetch_sub(1, Relaxed);
            return None;
        }
        let max = self.max_connections.load(Relaxed);
        if max > 0 && before >= max {
            e.active.fetch_sub(1, Relaxed);
            return Some(Err(Limited::Connections));
        }
        let interval = self.interval_us.load(Relaxed);
        if interval > 0 {
            let tolerance = interval.saturating_mul(self.burst.load(Relaxed) as u64);
            let mut tat = e.tat_us.load(Relaxed);
            loop {
                let next = tat.max(now_us).saturating_add(interval);
                if next - now_us > tolerance {
                    e.active.fetch_sub(1, Relaxed);
                    return Some(Err(Limited::Rate));
                }
                match e.tat_us.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                    Ok(_) => break,
                    Err(t) => tat = t,
                }
            }
        }
        Some(Ok(idx as u32))
    }

    /// A connection admitted on entry `idx` closed.
    pub fn release(&self, idx: u32) {
        if let Some(e) = self.entries.get(idx as usize) {
            e.active.fetch_sub(1, Relaxed);
        }
    }

    /// Sources with open connections now (for tests and the status of the table).
    pub fn busy(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.active.load(Relaxed) > 0)
            .count()
    }
}

/// Never 0 (0 marks an unused entry).
fn hash(ip: IpAddr) -> u64 {
    let v6 = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    xxhash_rust::xxh3::xxh3_64(&v6.octets()) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(i: u32) -> IpAddr {
        std::net::Ipv4Addr::from(0x0a00_0000 + i).into()
    }

    #[test]
    fn connections_per_source() {
        let t = SourceTable::new(
            1024,
            Limits {
                max_connections: 2,
                interval_us: 0,
                burst: 1,
            },
        );
        let a = t.acquire(ip(1), 0).unwrap();
        let b = t.acquire(ip(1), 0).unwrap();
        assert_eq!(t.acquire(ip(1), 0), Err(Limited::Connections));
        assert!(t.acquire(ip(2), 0).is_ok(), "another source is served");
        t.release(a);
        assert!(t.acquire(ip(1), 0).is_ok(), "room again after a close");
        t.release(b);
    }

    #[test]
    fn rate_and_burst() {
        // 10/s, burst 3: three at once, then one per 100 ms.
        let t = SourceTable::new(
            1024,
            Limits {
                max_connections: 0,
                interval_us: 100_000,
                burst: 3,
            },
        );
        for _ in 0..3 {
            t.release(t.acquire(ip(1), 0).unwrap());
        }
        assert_eq!(t.acquire(ip(1), 0), Err(Limited::Rate));
        assert_eq!(t.acquire(ip(1), 99_999), Err(Limited::Rate));
        t.release(t.acquire(ip(1), 100_000).unwrap());
        assert_eq!(t.acquire(ip(1), 150_000), Err(Limited::Rate));
    }

    #[test]
    fn full_table_refuses_then_frees() {
        let t = SourceTable::new(
            16,
            Limits {
                max_connections: 5,
                interval_us: 0,
                burst: 1,
            },
        );
        let held: Vec<u32> = (0..16).map(|i| t.acquire(ip(i), 0).unwrap()).collect();
        assert_eq!(t.acquire(ip(99), 0), Err(Limited::TableFull));
        for h in held {
            t.release(h);
        }
        assert!(
            t.acquire(ip(99), 0).is_ok(),
            "closed sources' entries are free again"
        );
    }

    proptest! {
        /// Any interleaving of opens and closes over a few sources: a source never holds more
        /// than the limit, every admitted connection is counted once, and when all close the
        /// table holds no busy entry.
        #[test]
        fn counts_stay_exact(ops in proptest::collection::vec((0u32..6, any::<bool>()), 0..300)) {
            let t = SourceTable::new(1024, Limits { max_connections: 3, interval_us: 0, burst: 1 });
            let mut open: Vec<Vec<u32>> = vec![Vec::new(); 6];
            for (src, close) in ops {
                if close {
                    if let Some(e) = open[src as usize].pop() { t.release(e); }
                } else {
                    match t.acquire(ip(src), 0) {
                        Ok(e) => open[src as usize].push(e),
                        Err(Limited::Connections) => prop_assert_eq!(open[src as usize].len(), 3),
                        Err(other) => prop_assert!(false, "{:?}", other),
                    }
                }
                prop_assert!(open[src as usize].len() <= 3);
            }
            for list in &open { for &e in list { t.release(e); } }
            prop_assert_eq!(t.busy(), 0);
        }
    }
}
