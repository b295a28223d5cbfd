//! Smooth weighted round robin, as NGINX does it, shared by all workers.
//!
//! The smooth schedule for one period (the weights' sum, reduced by their gcd) is computed at
//! build time; workers share one atomic cursor into it, so the spread is exact by weight
//! across all workers (a per-worker schedule would drift with SO_REUSEPORT's uneven split)
//! and a pick costs one `fetch_add`.

use super::{Balancer, Pick};
use crate::backend::Backend;
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct RoundRobin {
    schedule: Vec<u32>,
    cursor: CachePadded<AtomicUsize>,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl RoundRobin {
    pub fn new(backends: &[Arc<Backend>], members: &[u32]) -> RoundRobin {
        let weights: Vec<i64> = members
            .iter()
            .map(|&m| backends[m as usize].weight().max(1) as i64)
            .collect();
        let g = weights.iter().fold(0u32, |g, &w| gcd(g, w as u32)).max(1) as i64;
        let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
        let total: i64 = weights.iter().sum();
        // NGINX's smooth WRR: every step adds each weight to its current value, picks the
        // largest, and takes the total off the one picked.
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for j in 0..weights.len() {
                current[j] += weights[j];
                if current[j] > current[best] {
                    best = j;
                }
            }
            current[best] -= total;
            schedule.push(members[best]);
        }
        RoundRobin {
            schedule,
            cursor: CachePadded::new(AtomicUsize::new(0)),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], pick: &Pick) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // Walk on from the cursor's slot; a full period visits every member. A backend in
        // slow start takes its turn only with the probability of its weight share (the rest
        // pass on to the next in the schedule); the second walk takes any admitted backend,
        // so a pool whose only routable backend is ramping still gets it.
        let mut rand = pick.rand;
        (0..len)
            .map(|k| self.schedule[(start + k) % len] as usize)
            .find(|&i| {
                if !pick.admits(backends, i) {
                    return false;
                }
                let share = backends[i].weight_share();
                if share >= 1.0 {
                    return true;
                }
                rand = rand.rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                ((rand >> 11) as f64 / (1u64 << 53) as f64) < share
            })
            .or_else(|| {
                (0..len)
                    .map(|k| self.schedule[(start + k) % len] as usize)
                    .find(|&i| pick.admits(backends, i))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::balance::testutil::backends;

    fn pick(rr: &RoundRobin, b: &[Arc<Backend>], tried: &[u32]) -> Option<usize> {
        rr.pick(
            b,
            &Pick {
                key: 0,
                rand: 0,
                tried,
                backup: false,
            },
        )
    }

    #[test]
    fn exact_by_weight_and_smooth() {
        let b = backends(&[1, 1, 2]);
        let rr = RoundRobin::new(&b, &[0, 1, 2]);
        let seq: Vec<usize> = (0..8).map(|_| pick(&rr, &b, &[]).unwrap()).collect();
        // Smooth: the heavy backend never gets two in a row here.
        assert_eq!(seq, vec![2, 0, 1, 2, 2, 0, 1, 2]);
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[pick(&rr, &b, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 200]);
    }

    #[test]
    fn slow_start_takes_a_growing_share() {
        let b = backends(&[1, 1]);
        let rr = RoundRobin::new(&b, &[0, 1]);
        b[1].set_slow_start(std::time::Duration::from_secs(3600));
        b[1].set_state(BackendState::Down);
        b[1].set_state(BackendState::Up);
        let mut got = [0; 2];
        for n in 0..4000u64 {
            let p = Pick {
                key: 0,
                rand: n.wrapping_mul(0x2545_f491_4f6c_dd1d),
                tried: &[],
                backup: false,
            };
            got[rr.pick(&b, &p).unwrap()] += 1;
        }
        // At the start of its ramp backend 1 takes about 5% of its weight: ~2.5% of picks.
        assert!(got[1] > 20 && got[1] < 250, "ramping backend got {got:?}");
        // Alone, it takes everything.
        b[0].set_state(BackendState::Down);
        assert_eq!(pick(&rr, &b, &[]), Some(1));
    }

    #[test]
    fn skips_down_and_tried() {
        let b = backends(&[1, 1, 2]);
        let rr = RoundRobin::new(&b, &[0, 1, 2]);
        b[2].set_state(BackendState::Down);
        for _ in 0..10 {
            let i = pick(&rr, &b, &[0]).unwrap();
            assert_eq!(i, 1);
        }
        b[1].set_state(BackendState::Draining);
        assert_eq!(pick(&rr, &b, &[0]), None);
    }
}
