//! Relay: bytes both ways between client and backend, and the half-close.
//!
//! Per direction: a multishot recv from the buffer ring on the source, a queue of received
//! buffers ([`BufQueue`](super::bufqueue::BufQueue)), one send at a time to the destination,
//! backpressure by cancelling the recv when the queue grows, and, at the source's EOF once
//! the queue is sent, shutdown(SHUT_WR) on the destination.
//!
//! Owns: the directions' recv states, queues and the parked list (recvs that ran out of
//! buffers).
//! Must not touch: allocation, locks, or any syscall per chunk outside the ring.

use super::conn::{Phase, Recv, Side};
use super::op::Op;
use super::ring::Cqe;
use super::worker::Worker;
use crate::accesslog::End;
use crate::sys;
use std::sync::atomic::Ordering::Relaxed;

/// Queued buffers in one direction at which its recv is cancelled (backpressure)...
const HIGH_WATER: u16 = 2;
/// ...and below which it is armed again.
const LOW_WATER: u16 = 1;
/// Fewest and most buffers one arming of a (capped) multishot recv may take.
const RECV_CAP_MIN: u32 = 2;
const RECV_CAP_MAX: u32 = 32;
/// Bytes a direction relays before they are folded into the backend's shared counters.
const FLUSH_BYTES: u64 = 64 * 1024;

/// A recv on `side`'s source completed: queue its bytes for the other side, or take its
/// EOF, error or want of buffers.
pub(super) fn on_recv(w: &mut Worker, slot: usize, side: Side, cqe: Cqe) {
    let more = cqe.more();
    let now = w.now;
    if !more {
        w.conns.get(slot).dir(side).recv = Recv::Idle;
    }
    if cqe.result > 0 {
        let bid = cqe.buffer().expect("a recv with data names its buffer");
        let (n, keeps) = (cqe.result as u32, cqe.buf_more());
        let c = w.conns.get(slot);
        if c.phase == Phase::Closing {
            if let Some(bid) = w.links.discard(bid, n, keeps) {
                w.ring.recycle(bid);
            }
            return;
        }
        c.last_active = now;
        let d = c.dir(side);
        d.queue.push(&mut w.links, bid, n, keeps);
        if !d.sending {
            w.send_head(slot, side);
        }
        let d = w.conns.get(slot).dir(side);
        if more && d.recv == Recv::Armed && d.queue.len() >= HIGH_WATER {
            // Backpressure: the other side is not taking bytes as fast as they come.
            d.recv = Recv::Cancelling;
            let target = w.conns.ud(slot, side.recv_op());
            let cancel = w.conns.submit(slot, Op::Cancel);
            w.ring.cancel(target, cancel);
        }
        if !more {
            w.rearm_if_ready(slot, side);
        }
        return;
    }
    if more || w.conns.get(slot).phase == Phase::Closing {
        return;
    }
    match -cqe.result {
        0 => {
            // EOF from the source: once its queue is sent, shut the destination's write
            // side (or close, if the other direction is already done).
            let c = w.conns.get(slot);
            c.dir(side).eof = true;
            // Whoever sent the first EOF closed the connection, for the access log.
            c.end.get_or_insert(match side {
                Side::ToBackend => End::ClientClosed,
                Side::ToClient => End::BackendClosed,
            });
            w.finish_if_drained(slot, side);
        }
        libc::ENOBUFS => {
            w.shared.buffer_ring_exhausted.fetch_add(1, Relaxed);
            let c = w.conns.get(slot);
            let gen_ = c.gen_;
            c.dir(side).recv = Recv::Parked;
            w.parked.push((slot as u32, gen_, side));
        }
        libc::ECANCELED => w.rearm_if_ready(slot, side),
        // A reset or error on the side this direction reads from.
        _ => w.abort(slot, side.source_end_error()),
    }
}

/// A send to `side`'s destination completed: advance its queue, and send on, finish the
/// direction, or re-arm its recv.
pub(super) fn on_send(w: &mut Worker, slot: usize, side: Side, res: i32) {
    let now = w.now;
    let c = w.conns.get(slot);
    c.dir(side).sending = false;
    if c.phase == Phase::Closing {
        return;
    }
    if res <= 0 {
        // EPIPE/ECONNRESET: the destination is gone.
        return w.abort(slot, side.other().source_end_error());
    }
    c.last_active = now;
    if c.logged
        && let Some(info) = w.logs.get_mut(slot)
    {
        info.bytes[side as usize] += res as u64;
    }
    let backend = c.backend.clone();
    let d = c.dir(side);
    d.unflushed += res as u64;
    if let Some(bid) = d.queue.advance(&mut w.links, res as u32) {
        w.ring.recycle(bid);
    }
    if d.unflushed >= FLUSH_BYTES {
        if let Some(b) = &backend {
            b.stats.bytes[side as usize].fetch_add(d.unflushed, Relaxed);
        }
        d.unflushed = 0;
    }
    if !d.queue.is_empty() {
        w.send_head(slot, side);
    } else {
        w.finish_if_drained(slot, side);
    }
    w.rearm_if_ready(slot, side);
}

impl Worker {
    pub(super) fn arm_recv(&mut self, slot: usize, side: Side) {
        // Where the kernel caps multishot recvs: this arming may take an eighth of the
        // buffers free now (2 to 32). Backpressure (the cancel at HIGH_WATER) still paces a
        // stream whose reader keeps up; the cap bounds what lands before the cancel does.
        // Without it one socket with megabytes waiting fills buffer after buffer within a
        // single io_uring_enter. With it a burst leaves at least 7/8 of what was free, so
        // dozens of stalled readers still leave buffers for everyone else, and as the pool
        // fills the bursts shrink to 2 buffers.
        let free = (self.ring.buffer_count() as u32).saturating_sub(self.links.held());
        let cap = (free / 8).clamp(RECV_CAP_MIN, RECV_CAP_MAX);
        let ud = self.conns.submit(slot, side.recv_op());
        let c = self.conns.get(slot);
        let fd = c.source(side);
        c.dir(side).recv = Recv::Armed;
        self.ring.recv_multi(fd, ud, cap);
    }

    /// Arms a direction's recv again if it is idle, not at EOF, and its queue has room.
    fn rearm_if_ready(&mut self, slot: usize, side: Side) {
        let c = self.conns.get(slot);
        let relaying = c.phase == Phase::Relaying;
        let d = c.dir(side);
        if relaying && d.recv == Recv::Idle && !d.eof && d.queue.len() < LOW_WATER {
            self.arm_recv(slot, side);
        }
    }

    fn send_head(&mut self, slot: usize, side: Side) {
        let c = self.conns.get(slot);
        let fd = c.dest(side);
        let d = c.dir(side);
        let (bid, offset, len) = d.queue.front(&self.links).expect("a buffer to send");
        debug_assert!(!d.sending);
        d.sending = true;
        let ud = self.conns.submit(slot, side.send_op());
        self.ring.send_buffer(fd, bid, offset, len, ud);
    }

    /// A direction whose source hit EOF and whose queue is empty is finished: shut the
    /// destination's write side, or, if the other direction is already finished, close the
    /// connection outright (the close sends the FIN; a second shutdown would be wasted).
    fn finish_if_drained(&mut self, slot: usize, side: Side) {
        let c = self.conns.get(slot);
        let d = c.dir(side);
        if !d.eof || d.done || !d.queue.is_empty() || d.sending {
            return;
        }
        d.done = true;
        if c.dir(side.other()).done {
            return self.teardown(slot, End::ClientClosed);
        }
        // A plain shutdown(2), not IORING_OP_SHUTDOWN: io_uring always hands that op to an
        // io-wq thread (REQ_F_FORCE_ASYNC), a thread hop per connection; the syscall never
        // blocks. An error (the peer already reset) changes nothing here.
        sys::shutdown_write(c.dest(side));
    }

    /// Gives buffers back to connections parked on ENOBUFS, oldest first, as many as there
    /// are free buffers (each re-armed recv takes at least one). Waiting for a larger share
    /// to come back could wait for ever: directions whose readers have stalled keep theirs.
    pub(super) fn wake_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let mut free = (self.ring.buffer_count() as u32).saturating_sub(self.links.held());
        if free == 0 {
            return;
        }
        let mut parked = std::mem::take(&mut self.parked);
        let mut woken = 0;
        for &(slot, gen_, side) in &parked {
            if free == 0 {
                break;
            }
            woken += 1;
            let slot = slot as usize;
            if !self.conns.lookup(slot, gen_) {
                continue;
            }
            let d = self.conns.get(slot).dir(side);
            if d.recv == Recv::Parked {
                d.recv = Recv::Idle;
                self.rearm_if_ready(slot, side);
                free -= 1;
            }
        }
        parked.drain(..woken);
        // Anything parked meanwhile (nothing is, in this loop) goes after those still waiting.
        parked.append(&mut self.parked);
        self.parked = parked;
    }

    /// The relay's invariant, checked every tick: a live direction is armed, being
    /// cancelled, parked for buffers, held by backpressure (bytes queued or a send in
    /// flight), or finished. One that is none of these would never read again: its peer
    /// would wait for ever while its bytes sit unread in the kernel. A debug build stops on
    /// it; a release build counts it (`ringlb_relay_repairs_total`), logs it, and re-arms.
    pub(super) fn check_directions(&mut self, slot: usize) {
        let id = self.id;
        for side in Side::BOTH {
            let d = *self.conns.get(slot).dir(side);
            let lost =
                d.recv == Recv::Idle && d.queue.is_empty() && !d.sending && !d.eof && !d.done;
            if lost {
                debug_assert!(
                    false,
                    "worker {id}: slot {slot} direction {side:?} is neither armed, parked, held nor done: {d:?}"
                );
                tracing::error!(worker = id, slot, ?side, state = ?d, "a relay direction was left unarmed: re-arming it");
                self.shared.relay_repairs.fetch_add(1, Relaxed);
                self.arm_recv(slot, side);
            }
        }
    }
}
