//! Weighted least connections over the active counts every worker shares.
//!
//! Picks the backend with the lowest `active / weight` (compared by cross-multiplying, no
//! division). The scan starts at a random member so that ties are broken at random: workers
//! that see the same counts at the same moment do not all herd onto the first backend.

use super::{Balancer, Pick};
use crate::backend::Backend;
use std::sync::Arc;

pub struct LeastConn {
    members: Vec<u32>,
}

impl LeastConn {
    pub fn new(_backends: &[Arc<Backend>], members: &[u32]) -> LeastConn {
        LeastConn {
            members: members.to_vec(),
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], pick: &Pick) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = (pick.rand % n as u64) as usize;
        let mut best: Option<(usize, i64, i64)> = None;
        for k in 0..n {
            let i = self.members[(start + k) % n] as usize;
            if !pick.admits(backends, i) {
                continue;
            }
            let b = &backends[i];
            // Weights in thousandths, so that a slow-start share scales them exactly enough.
            let share = b.weight_share();
            let weight = ((b.weight().max(1) as f64 * share * 1000.0) as i64).max(1);
            let active = b.active().max(0);
            match best {
                // active/weight < best_active/best_weight
                Some((_, ba, bw)) if active * bw >= ba * weight => {}
                _ => best = Some((i, active, weight)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testutil::backends;
    use std::sync::atomic::Ordering;

    #[test]
    fn fewest_per_weight_wins() {
        let b = backends(&[1, 1, 2]);
        let lc = LeastConn::new(&b, &[0, 1, 2]);
        // Hold every picked connection open: counts must follow the weights 1:1:2.
        for n in 0..40u64 {
            let i = lc
                .pick(
                    &b,
                    &Pick {
                        key: 0,
                        rand: n * 7,
                        tried: &[],
                        backup: false,
                    },
                )
                .unwrap();
            let ratio = |j: usize| b[j].active() as f64 / b[j].weight() as f64;
            for j in 0..3 {
                assert!(ratio(i) <= ratio(j), "pick {n}: {i} is not least loaded");
            }
            b[i].stats.active.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!([b[0].active(), b[1].active(), b[2].active()], [10, 10, 20]);
    }

    #[test]
    fn slow_start_lowers_the_share() {
        use crate::backend::BackendState;
        let b = backends(&[1, 1]);
        let lc = LeastConn::new(&b, &[0, 1]);
        b[1].set_slow_start(std::time::Duration::from_secs(3600));
        b[1].set_state(BackendState::Down);
        b[1].set_state(BackendState::Up);
        // Held connections: the ramping backend (5% of its weight) gets about 1 in 20.
        for n in 0..210u64 {
            let p = Pick {
                key: 0,
                rand: n,
                tried: &[],
                backup: false,
            };
            let i = lc.pick(&b, &p).unwrap();
            b[i].stats.active.fetch_add(1, Ordering::Relaxed);
        }
        assert!(
            (8..=14).contains(&b[1].active()),
            "ramping backend holds {} of 210",
            b[1].active()
        );
    }

    #[test]
    fn ties_are_spread() {
        let b = backends(&[1, 1, 1, 1]);
        let lc = LeastConn::new(&b, &[0, 1, 2, 3]);
        let mut seen = [0; 4];
        for r in 0..400u64 {
            seen[lc
                .pick(
                    &b,
                    &Pick {
                        key: 0,
                        rand: r.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7,
                        tried: &[],
                        backup: false,
                    },
                )
                .unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "ties herded: {seen:?}");
    }
}
