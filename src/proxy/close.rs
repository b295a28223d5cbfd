//! Close: the one place a connection ends.
//!
//! Owns: [`Worker::teardown`] (cancel what is in flight that could wait on a peer) and
//! [`Worker::release_if_idle`] (once nothing names the slot: buffers back to the ring,
//! descriptors closed, counters settled, the slot freed).
//! Must not touch: anything that would start new work for the connection.

use super::conn::{Phase, Recv, Side};
use super::op::Op;
use super::worker::Worker;
use crate::accesslog::{End, Record};
use crate::sys;
use std::sync::atomic::Ordering::Relaxed;

impl Worker {
    /// Ends a connection now: teardown, and release if nothing is in flight.
    pub(super) fn close(&mut self, slot: usize, why: End) {
        self.teardown(slot, why);
        self.release_if_idle(slot);
    }

    /// Ends a relayed connection one of whose sides failed (a reset, or an error): the
    /// other side is reset too, at the close (SO_LINGER 0), rather than shut with a FIN.
    ///
    /// Why: a FIN says the stream ended where the sender meant it to. After a failure that
    /// is not true, bytes may be missing, and a peer that reads a clean EOF would take a
    /// truncated reply or request for a whole one. A reset tells it the stream broke, as
    /// it would have seen without a balancer in between (Envoy's tcp_proxy does the same).
    pub(super) fn abort(&mut self, slot: usize, why: End) {
        self.conns.get(slot).reset = true;
        self.teardown(slot, why);
    }

    /// Ends a connection: cancels what is in flight that could wait on a peer. The slot is
    /// released (descriptors closed, buffers recycled) once the last completion is in.
    ///
    /// Cancels go by user data, one per request: the kernel finds each with a hash lookup,
    /// where cancelling everything on a descriptor walks the ring's whole poll table (with
    /// `Connection: close` load that walk was ~1.5-2% of the worker's perf samples).
    pub(super) fn teardown(&mut self, slot: usize, why: End) {
        let c = self.conns.get(slot);
        if c.phase == Phase::Closing {
            return;
        }
        c.end.get_or_insert(why);
        let phase = c.phase;
        c.phase = Phase::Closing;
        if let Phase::Queued { .. } = phase {
            // Closed while queued: it no longer waits (its entry is dropped at the next look
            // at the queue).
            c.pool.queue.length.fetch_sub(1, Relaxed);
            self.queued_changed();
        }
        let c = self.conns.get(slot);
        if c.inflight == 0 {
            return;
        }
        let [d0, d1] = &c.dirs;
        // A recv already being cancelled (backpressure) ends by itself; cancelling the
        // connect (or the inspection's poll) also ends its linked timeout.
        let pending = [
            (
                matches!(phase, Phase::Inspecting { .. } | Phase::ProxyHeader { .. }),
                Op::Inspect,
            ),
            (phase == Phase::Connecting, Op::Connect),
            (matches!(phase, Phase::Header { .. }), Op::Header),
            (d0.recv == Recv::Armed, Side::ToBackend.recv_op()),
            (d0.sending, Side::ToBackend.send_op()),
            (d1.recv == Recv::Armed, Side::ToClient.recv_op()),
            (d1.sending, Side::ToClient.send_op()),
        ];
        for (_, op) in pending.into_iter().filter(|&(wanted, _)| wanted) {
            let target = self.conns.ud(slot, op);
            let cancel = self.conns.submit(slot, Op::Cancel);
            self.ring.cancel(target, cancel);
        }
    }

    pub(super) fn release_if_idle(&mut self, slot: usize) {
        let Some(c) = self.conns.try_get(slot) else {
            return;
        };
        if c.phase != Phase::Closing || c.inflight != 0 {
            return;
        }
        let mut c = self.conns.remove(slot);
        for (dir, d) in c.dirs.iter_mut().enumerate() {
            let ring = &mut self.ring;
            d.queue.clear(&mut self.links, |bid| ring.recycle(bid));
            if let Some(b) = &c.backend {
                b.stats.bytes[dir].fetch_add(d.unflushed, Relaxed);
            }
        }
        let close = self.conns.ud(slot, Op::Close);
        if c.reset {
            // One side failed: both closes below send a reset instead of a FIN (see
            // `abort`). Only on this error path, so a plain syscall each.
            sys::reset_on_close(c.client);
            if c.server >= 0 {
                sys::reset_on_close(c.server);
            }
        }
        self.ring.close(c.client, close);
        if c.server >= 0 {
            self.ring.close(c.server, close);
        }
        if let Some(b) = &c.backend {
            b.stats.active.fetch_sub(1, Relaxed);
        }
        c.listener.stats.active.fetch_sub(1, Relaxed);
        if c.source_slot != super::conn::NO_SOURCE
            && let Some(t) = &c.listener.sources
        {
            t.release(c.source_slot);
        }
        c.listener
            .connection_duration
            .record(c.accepted_at.elapsed().as_secs_f64());
        self.shared.worker_connections[self.id].fetch_sub(1, Relaxed);
        if c.logged {
            self.log_connection(slot, &c);
        }
        if c.backend.is_some() {
            self.pool_freed(&c.pool);
        }
    }

    /// Hands the connection's record to the logger (never waits: a full queue drops it).
    fn log_connection(&mut self, slot: usize, c: &super::conn::Conn) {
        let Some(q) = self.shared.access_log.get() else {
            return;
        };
        let info = self.logs.get(slot).copied().unwrap_or_default();
        let started = std::time::SystemTime::now() - c.accepted_at.elapsed();
        let record = Record {
            start_ms: started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            log: c.listener.log.clone(),
            client: info.client,
            pool: (c.ntried > 0 || c.backend.is_some()).then(|| c.pool.name_arc.clone()),
            backend: c.backend.clone().or_else(|| {
                c.tried()
                    .last()
                    .and_then(|&i| c.pool.backends.get(i as usize).cloned())
            }),
            attempts: c.ntried,
            connect_us: info.connect_us,
            duration_us: c.accepted_at.elapsed().as_micros().min(u64::MAX as u128) as u64,
            bytes: info.bytes,
            end: c.end.unwrap_or_default(),
        };
        q.push(self.id, record);
    }
}
