//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights.
//!
//! A lookup table of prime size M (65537 by default) is filled by letting each member claim
//! slots in the order of its own permutation (offset + j × skip mod M, both from xxh3 of its
//! address); a member of weight w takes a turn w/max_weight as often (Envoy's rule). A
//! lookup is one table read. When the owner cannot take the connection, the walk goes on to
//! the following slots, whose owners are spread like the table itself.

use super::{Balancer, Bound, Pick};
use crate::backend::Backend;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub struct Maglev {
    table: Vec<u32>,
    members: Vec<u32>,
    bound: Option<Bound>,
}

impl Maglev {
    pub fn new(
        backends: &[Arc<Backend>],
        members: &[u32],
        size: u32,
        bound: Option<Bound>,
    ) -> Maglev {
        let m = size as u64;
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size as usize];
        if members.is_empty() {
            return Maglev {
                table: Vec::new(),
                members: Vec::new(),
                bound,
            };
        }
        struct Entry {
            backend: u32,
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let max_weight = members
            .iter()
            .map(|&i| backends[i as usize].weight().max(1) as u64)
            .max()
            .unwrap_or(1);
        let mut entries: Vec<Entry> = members
            .iter()
            .map(|&i| {
                let name = backends[i as usize].addr.to_string();
                Entry {
                    backend: i,
                    offset: xxh3_64_with_seed(name.as_bytes(), 0x4d41_474c) % m,
                    skip: xxh3_64_with_seed(name.as_bytes(), 0x534b_4950) % (m - 1) + 1,
                    next: 0,
                    weight: backends[i as usize].weight().max(1) as u64,
                    target: 0,
                }
            })
            .collect();
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < m {
            for e in entries.iter_mut() {
                if filled == m {
                    break;
                }
                // A backend of max weight claims a slot every round; one of a third of it,
                // every third round.
                if iteration * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut c = (e.offset + e.skip * e.next) % m;
                while table[c as usize] != EMPTY {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % m;
                }
                table[c as usize] = e.backend;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev {
            table,
            members: members.to_vec(),
            bound,
        }
    }
}

impl Balancer for Maglev {
    fn pick(&self, backends: &[Arc<Backend>], pick: &Pick) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let start = (pick.key % n as u64) as usize;
        let ok = |i: usize| {
            pick.admits(backends, i)
                && self
                    .bound
                    .is_none_or(|b| b.allows(backends, &self.members, i))
        };
        let first = self.table[start] as usize;
        if ok(first) {
            return Some(first);
        }
        // A few slots on: as random a spread as the table, without a full scan.
        for k in 1..n.min(4 * self.members.len() + 64) {
            let i = self.table[(start + k) % n] as usize;
            if i != first && ok(i) {
                return Some(i);
            }
        }
        pick.any(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testutil::{backends, keys, owner};

    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        let b = backends(&[1; 5]);
        let all = Maglev::new(&b, &[0, 1, 2, 3, 4], 65537, None);
        let without = Maglev::new(&b, &[0, 1, 3, 4], 65537, None);
        let ks = keys();
        let moved = ks
            .iter()
            .filter(|&&k| owner(&all, &b, k) != owner(&without, &b, k))
            .count();
        let share = ks.len() / 5;
        assert!(
            moved as f64 <= 1.5 * share as f64,
            "moved {moved}, share {share}"
        );
        assert!(
            moved >= share * 8 / 10,
            "moved {moved}: the removed backend's keys must move"
        );
    }

    #[test]
    fn balanced_with_ten_equal_backends() {
        let b = backends(&[1; 10]);
        let t = Maglev::new(&b, &(0..10).collect::<Vec<_>>(), 65537, None);
        let mut counts = [0usize; 10];
        for k in keys() {
            counts[owner(&t, &b, k)] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        assert!(max / 1000.0 <= 1.10, "{counts:?}");
        // The table itself is near-perfect.
        let mut slots = [0usize; 10];
        for &s in &t.table {
            slots[s as usize] += 1;
        }
        let (lo, hi) = (*slots.iter().min().unwrap(), *slots.iter().max().unwrap());
        assert!(hi - lo <= 1, "{slots:?}");
    }

    #[test]
    fn weights_share_the_table() {
        let b = backends(&[1, 1, 2]);
        let t = Maglev::new(&b, &[0, 1, 2], 65537, None);
        let heavy = t.table.iter().filter(|&&s| s == 2).count() as f64 / 65537.0;
        assert!((heavy - 0.5).abs() < 0.01, "{heavy}");
    }
}
