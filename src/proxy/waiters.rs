//! This worker's waiters: the connections it holds in their pools' queues, per pool (by the
//! pool's shared queue, which outlives reloads), in arrival order. A plain list; what is
//! done with it (serving, expiring, the doorbell) is `queue.rs`.
//!
//! Owns: the lists. Must not touch: connections, the ring or the shared queue's counters.

use crate::snapshot::PoolQueue;
use std::collections::VecDeque;
use std::sync::Arc;

/// One queued connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiter {
    pub slot: u32,
    pub gen_: u16,
    pub ticket: u64,
}

/// The connections of one worker waiting in their pools' queues: per pool (by its shared
/// queue, which outlives reloads), in arrival order.
#[derive(Default)]
pub struct Waiting {
    pub(super) pools: Vec<(Arc<PoolQueue>, VecDeque<Waiter>)>,
    /// A slot may have freed up since the last look.
    pub(super) dirty: bool,
}

impl Waiting {
    /// The waiters of the pool whose queue is `q` (an empty list the first time).
    pub(super) fn of(&mut self, q: &Arc<PoolQueue>) -> &mut VecDeque<Waiter> {
        let i = match self.pools.iter().position(|(p, _)| Arc::ptr_eq(p, q)) {
            Some(i) => i,
            None => {
                self.pools.push((q.clone(), VecDeque::new()));
                self.pools.len() - 1
            }
        };
        &mut self.pools[i].1
    }
}
