//! Consistent hashing over a ring of xxh3 points (ketama-style), with optional bounded loads.
//!
//! Each member gets `ring_points × weight` points, hashed from its address and the point's
//! number. A key goes to the owner of the first point at or after its hash; when that owner
//! is not routable (or already tried, or over its bound) the walk goes on to the next point,
//! so only the keys of a missing backend move.

use super::{Balancer, Bound, Pick};
use crate::backend::Backend;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// At most this many points in one ring (like Envoy's maximum_ring_size): large pools with
/// large weights get fewer points per unit of weight rather than an unbounded table.
pub const MAX_RING_POINTS: u64 = 1 << 21;

/// Bits of the hash that index the acceleration table.
const INDEX_BITS: u32 = 16;

pub struct RingHash {
    /// (point hash, backend index), sorted by hash.
    points: Vec<(u64, u32)>,
    /// `index[t]`: the first point whose hash's top bits are >= t, so a lookup binary-searches
    /// only the few points of its own bucket (a whole-ring search is ~18 dependent cache misses).
    index: Vec<u32>,
    members: Vec<u32>,
    bound: Option<Bound>,
}

impl RingHash {
    pub fn new(
        backends: &[Arc<Backend>],
        members: &[u32],
        ring_points: u32,
        bound: Option<Bound>,
    ) -> RingHash {
        let total_weight: u64 = members
            .iter()
            .map(|&m| backends[m as usize].weight().max(1) as u64)
            .sum();
        let per_weight = (ring_points as u64).min((MAX_RING_POINTS / total_weight.max(1)).max(1));
        let mut points = Vec::with_capacity((per_weight * total_weight) as usize);
        for &m in members {
            let b = &backends[m as usize];
            let name = b.addr.to_string();
            for p in 0..(per_weight * b.weight().max(1) as u64) {
                points.push((xxh3_64_with_seed(name.as_bytes(), p), m));
            }
        }
        points.sort_unstable();
        let mut index = Vec::with_capacity((1 << INDEX_BITS) + 1);
        let mut pos = 0usize;
        for t in 0..=(1u64 << INDEX_BITS) {
            while pos < points.len() && (points[pos].0 >> (64 - INDEX_BITS)) < t {
                pos += 1;
            }
            index.push(pos as u32);
        }
        RingHash {
            points,
            index,
            members: members.to_vec(),
            bound,
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl Balancer for RingHash {
    fn pick(&self, backends: &[Arc<Backend>], pick: &Pick) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let t = (pick.key >> (64 - INDEX_BITS)) as usize;
        let (lo, hi) = (self.index[t] as usize, self.index[t + 1] as usize);
        let start = lo + self.points[lo..hi].partition_point(|&(h, _)| h < pick.key);
        let first = self.points[start % n].1 as usize;
        let ok = |i: usize| {
            pick.admits(backends, i)
                && self
                    .bound
                    .is_none_or(|b| b.allows(backends, &self.members, i))
        };
        if ok(first) {
            return Some(first);
        }
        // Walk on, checking each backend once per run of equal owners.
        let mut last = first;
        for k in 1..n {
            let i = self.points[(start + k) % n].1 as usize;
            if i != last && ok(i) {
                return Some(i);
            }
            last = i;
        }
        pick.any(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::balance::testutil::{backends, keys, owner};

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let b = backends(&[1; 5]);
        let all = RingHash::new(&b, &[0, 1, 2, 3, 4], 160, None);
        let without = RingHash::new(&b, &[0, 1, 3, 4], 160, None);
        let mut moved = 0;
        for k in keys() {
            let before = owner(&all, &b, k);
            let after = owner(&without, &b, k);
            if before != after {
                assert_eq!(before, 2, "a key of backend {before} moved to {after}");
                moved += 1;
            }
        }
        assert!(moved > 1000, "backend 2 owned only {moved} keys");
        // Marking it down (without a rebuild) moves exactly the same keys to the same places.
        b[2].set_state(BackendState::Down);
        for k in keys() {
            assert_eq!(owner(&all, &b, k), owner(&without, &b, k));
        }
    }

    #[test]
    fn balanced_with_ten_equal_backends() {
        let b = backends(&[1; 10]);
        let points = crate::config::DEFAULT_RING_POINTS;
        let r = RingHash::new(&b, &(0..10).collect::<Vec<_>>(), points, None);
        let mut counts = [0usize; 10];
        for k in keys() {
            counts[owner(&r, &b, k)] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        let ratio = max / 1000.0;
        assert!(ratio <= 1.10, "max/mean {ratio:.3}: {counts:?}");
    }

    #[test]
    fn weights_scale_points() {
        let b = backends(&[1, 3]);
        let r = RingHash::new(&b, &[0, 1], 160, None);
        assert_eq!(r.len(), 640);
        let whole =
            |k: u64| r.points[r.points.partition_point(|&(h, _)| h < k) % r.len()].1 as usize;
        for k in keys() {
            assert_eq!(
                owner(&r, &b, k),
                whole(k),
                "the index must not change the owner"
            );
        }
        let heavy = keys()
            .into_iter()
            .filter(|&k| owner(&r, &b, k) == 1)
            .count();
        assert!((6800..8200).contains(&heavy), "{heavy}");
    }

    #[test]
    fn bounded_loads_cap_a_hot_backend() {
        let b = backends(&[1; 4]);
        let r = RingHash::new(&b, &[0, 1, 2, 3], 160, Some(Bound { factor: 1.25 }));
        // One key, many connections held open: the owner fills to its bound, then spills.
        let key = keys()[0];
        for _ in 0..100 {
            let i = r
                .pick(
                    &b,
                    &Pick {
                        key,
                        rand: 0,
                        tried: &[],
                        backup: false,
                    },
                )
                .unwrap();
            b[i].stats
                .active
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let max = b.iter().map(|b| b.active()).max().unwrap();
        assert!(max <= 32, "a backend took {max} of 100 (bound 1.25 x 25)");
    }
}
