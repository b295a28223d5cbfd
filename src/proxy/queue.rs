//! The pools' queues, this worker's side: clients that found every backend of their pool at
//! its `max_connections` wait here, first come first served across all workers, as
//! HAProxy's per-backend queue (`maxconn` + `timeout queue`) does.
//!
//! Owns: what this worker does with its waiters (kept in [`super::waiters`]): taking a ticket
//! from the pool's shared [`PoolQueue`] (length, next ticket, each worker's oldest ticket),
//! serving the oldest waiter when a backend frees up, expiring waiters past
//! `queue_timeout`, and the doorbell: an eventfd per worker that the worker that freed a
//! slot rings when the oldest waiter for it is elsewhere.
//! Must not touch: backend sockets (a served waiter goes on to `connect.rs`); a queued client
//! has nothing in flight and nothing read.

use super::conn::Phase;
use super::op::{Op, user_data};
use super::ring::Cqe;
use super::waiters::Waiter;
use super::worker::Worker;
use crate::accesslog::End;
use crate::balance::key_hash;
use crate::config::HashKey;
use crate::snapshot::Pool;
use crate::sys;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The doorbell rang: a worker freed a slot owed to one of the clients queued here.
pub(super) fn on_doorbell(w: &mut Worker, c: Cqe) {
    if let Some(bell) = w.shared.doorbells.get().and_then(|b| b.get(w.id)) {
        sys::reset_doorbell(bell.as_raw_fd());
    }
    w.queued.dirty = true;
    if !c.more() && !w.stopping {
        w.arm_doorbell();
    }
}

impl Worker {
    /// The connection's pool is known: connect, or wait behind those already queued.
    pub(super) fn enter_pool(&mut self, slot: usize) {
        let c = self.conns.get(slot);
        if c.pool.needs_client_key() {
            c.key = match c.client_addr() {
                Some(a) => key_hash(
                    a.ip(),
                    (c.pool.hash_key == HashKey::ClientIpPort).then_some(a.port()),
                ),
                None => 0,
            };
        }
        // First come, first served: while anyone waits for this pool, a newcomer waits too,
        // or it could take the slot that the oldest waiter is owed.
        if c.pool.limited && c.pool.queue.length.load(Relaxed) > 0 {
            return self.enqueue(slot);
        }
        self.connect_next(slot);
    }

    /// Every candidate of the connection's pool is at its limit: wait in the pool's queue,
    /// or close if it is full.
    pub(super) fn enqueue(&mut self, slot: usize) {
        let c = self.conns.get(slot);
        let q = c.pool.queue.clone();
        let size = q.size.load(Relaxed) as i64;
        if q.length.fetch_add(1, Relaxed) >= size {
            q.length.fetch_sub(1, Relaxed);
            q.overflows.fetch_add(1, Relaxed);
            tracing::debug!(pool = %c.pool.name, "queue full: closing");
            return self.teardown(slot, End::QueueFull);
        }
        let ticket = q.next_ticket.fetch_add(1, Relaxed);
        c.phase = Phase::Queued { ticket };
        c.connect_started = std::time::Instant::now();
        let gen_ = c.gen_;
        let waiters = self.queued.of(&q);
        if waiters.is_empty() {
            q.heads[self.id % q.heads.len()].store(ticket, Relaxed);
        }
        waiters.push_back(Waiter {
            slot: slot as u32,
            gen_,
            ticket,
        });
    }

    /// The queue holds a stale entry to drop at the next look.
    pub(super) fn queued_changed(&mut self) {
        self.queued.dirty = true;
    }

    /// A connection to one of `pool`'s backends ended: its queue may move. If the oldest
    /// client waiting for that pool is on another worker, that worker's doorbell is rung, so
    /// it serves its client now rather than at its next tick.
    pub(super) fn pool_freed(&mut self, pool: &Arc<Pool>) {
        if !pool.limited {
            return;
        }
        self.queued.dirty = true;
        let q = &pool.queue;
        if q.length.load(Relaxed) == 0 {
            return;
        }
        let me = self.id % q.heads.len();
        let mine = q.heads[me].load(Relaxed);
        let oldest = q
            .heads
            .iter()
            .enumerate()
            .filter(|&(w, _)| w != me)
            .map(|(w, h)| (h.load(Relaxed), w))
            .min();
        if let Some((ticket, w)) = oldest
            && ticket < mine
            && let Some(bells) = self.shared.doorbells.get()
            && let Some(bell) = bells.get(w)
        {
            sys::ring_doorbell(bell.as_raw_fd());
        }
    }

    /// Listens for this worker's doorbell.
    pub(super) fn arm_doorbell(&mut self) {
        if let Some(bell) = self.shared.doorbells.get().and_then(|b| b.get(self.id)) {
            self.ring
                .poll_multi(bell.as_raw_fd(), user_data(0, 0, Op::Doorbell));
        }
    }

    /// Serves queued connections, oldest first, while their pool has a backend with room
    /// and no other worker holds an older waiter. Runs after every batch of completions in
    /// which a slot was freed here, and every tick for slots freed on other workers.
    pub(super) fn serve_queued(&mut self) {
        if !self.queued.dirty {
            return;
        }
        self.queued.dirty = false;
        let me = self.id;
        for qi in 0..self.queued.pools.len() {
            loop {
                let (q, front) = {
                    let (q, w) = &self.queued.pools[qi];
                    (q.clone(), w.front().copied())
                };
                let head = &q.heads[me % q.heads.len()];
                let Some(w) = front else {
                    head.store(u64::MAX, Relaxed);
                    break;
                };
                let slot = w.slot as usize;
                let live = self.conns.lookup(slot, w.gen_)
                    && self.conns.get(slot).phase == Phase::Queued { ticket: w.ticket };
                if !live {
                    self.queued.pools[qi].1.pop_front();
                    continue;
                }
                head.store(w.ticket, Relaxed);
                if q.older_elsewhere(me, w.ticket) {
                    break;
                }
                // The pool as it is now (a reload may have rebuilt it since the client came).
                let c = self.conns.get(slot);
                let current = self.shared.snapshot.load().pool(&c.pool.name).cloned();
                let Some(pool) = current else {
                    self.queued.pools[qi].1.pop_front();
                    self.close(slot, End::NoBackend);
                    continue;
                };
                if crate::balance::all_full(&pool.backends, c.tried(), pool.serving_backups()) {
                    break;
                }
                self.queued.pools[qi].1.pop_front();
                q.length.fetch_sub(1, Relaxed);
                q.wait.record(c.connect_started.elapsed().as_secs_f64());
                c.pool = pool;
                self.connect_next(slot);
                self.release_if_idle(slot);
            }
        }
        // Pools whose queues emptied are forgotten (a reload may have dropped them).
        self.queued.pools.retain(|(_, w)| !w.is_empty());
    }

    /// Queued connections past their pool's `queue_timeout` are closed (every tick); slots
    /// freed on other workers are looked for.
    pub(super) fn expire_queued(&mut self) {
        if self.queued.pools.is_empty() {
            return;
        }
        self.queued.dirty = true;
        for qi in 0..self.queued.pools.len() {
            let q = self.queued.pools[qi].0.clone();
            let timeout = std::time::Duration::from_millis(q.timeout_ms.load(Relaxed));
            while let Some(&w) = self.queued.pools[qi].1.front() {
                let slot = w.slot as usize;
                let live = self.conns.lookup(slot, w.gen_)
                    && self.conns.get(slot).phase == Phase::Queued { ticket: w.ticket };
                if live && self.conns.get(slot).connect_started.elapsed() < timeout {
                    break;
                }
                self.queued.pools[qi].1.pop_front();
                if live {
                    q.timeouts.fetch_add(1, Relaxed);
                    tracing::debug!(worker = self.id, slot, "queue timeout");
                    self.close(slot, End::QueueTimeout);
                }
            }
        }
    }
}
