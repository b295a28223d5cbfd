//! The event loop of one worker: wait for completions, hand each to the stage it belongs to,
//! then the chores of a turn (serve the queue, commit the ring, wake parked directions).
//!
//! A connection's stages, one room each, in the order of its life (`dispatch` names them so):
//! - `accept.rs`: multishot accept and admission (descriptor budget, `max_connections`,
//!   source allow/deny, per-source limits);
//! - `accept_proxy.rs`: reads the PROXY header a front balancer sends, whose address then
//!   goes through the same admission;
//! - `inspect.rs`: waits for the TLS ClientHello and picks the pool by SNI;
//! - `queue.rs`: the pool's queue when every backend is at its limit, and the doorbell that
//!   tells a worker one of its queued clients may go;
//! - `connect.rs`: picks a backend, connects with a linked timeout (the next candidate on
//!   refusal or timeout, up to `retries`), sends the PROXY header;
//! - `relay.rs`: two multishot recvs from the buffer ring, each feeding one send at a time to
//!   the other side; EOF on one side becomes shutdown(SHUT_WR) on the other;
//! - `close.rs`: teardown (cancel what is in flight) and release, the one place a
//!   connection ends; every stage ends a connection there.
//!
//! Beside them `tick.rs` wakes the worker on its own (timeouts, backends removed or marked
//! down, rebalancing) and `worker.rs` holds the state they all share.
//!
//! Owns: the order of events. Must not touch: what a stage does with its completion.

use super::conn::{Phase, Side};
use super::op::{self, Op};
use super::ring::Cqe;
use super::tick::TICK;
use super::worker::Worker;
use super::{accept, accept_proxy, connect, inspect, queue, relay, tick};
use std::sync::atomic::Ordering::Relaxed;

/// Runs worker `w` until shutdown is requested and every connection has ended.
pub fn run(mut w: Worker) -> std::io::Result<()> {
    tracing::debug!(
        worker = w.id,
        recv_cap = w.ring.recv_capped(),
        buf_inc = w.ring.incremental(),
        fixed_files = w.ring.fixed_files(),
        "relay ready (recv_cap: multishot recvs bounded per arming, Linux 6.17+; buf_inc: buffers consumed incrementally, 6.12+; fixed_files: sockets mirrored in a registered file table, 5.19+)"
    );
    let f = &w.shared.io_uring_features;
    f.recv_cap.store(w.ring.recv_capped(), Relaxed);
    f.buf_inc.store(w.ring.incremental(), Relaxed);
    f.fixed_files.store(w.ring.fixed_files(), Relaxed);
    w.ring.tick(TICK, op::user_data(0, 0, Op::Tick));
    w.arm_doorbell();
    w.ring.set_busy_poll(w.shared.snapshot.load().busy_poll);
    for i in 0..w.listening.len() {
        w.arm_accept(i);
    }
    let mut cqes = Vec::with_capacity(1024);
    loop {
        if let Err(e) = w.ring.submit_and_wait() {
            w.ring.submit_all();
            return Err(e);
        }
        w.ring.drain(&mut cqes);
        for c in &cqes {
            dispatch(&mut w, *c);
        }
        w.serve_queued();
        w.ring.commit();
        w.wake_parked();
        if w.stopping && w.conns.live() == 0 && w.listening.iter().all(|l| l.socket.is_none()) {
            // What the last turn pushed (the last connection's closes, above all) goes
            // to the kernel before the worker leaves: an SQE left in the queue is never
            // run, so its descriptors would stay open, and their peers would wait for
            // the EOF, until the whole process exits (after its other workers).
            w.ring.submit_all();
            return Ok(());
        }
    }
}

/// Hands one completion to its stage. The arms follow a connection's life; a completion of
/// a connection's request first settles its count of requests in flight, and, once the
/// stage is done, releases the connection if it ended and nothing names its slot any more.
fn dispatch(w: &mut Worker, c: Cqe) {
    let (slot, gen_, op) = op::decode(c.user_data);
    let Some(op) = Op::from_u8(op) else { return };
    let slot = slot as usize;
    let tracked = op.tracked();
    if tracked {
        if !w.conns.lookup(slot, gen_) {
            tracing::error!(
                worker = w.id,
                slot,
                ?op,
                "completion for a released connection"
            );
            return;
        }
        if !c.more() {
            w.conns.complete(slot);
        }
    }
    match op {
        Op::Tick => tick::on_tick(w),
        // An accept's slot field is the index of the listening socket.
        Op::Accept => accept::on_accept(w, slot, c),
        Op::Inspect if matches!(w.conns.get(slot).phase, Phase::ProxyHeader { .. }) => {
            accept_proxy::on_proxy_header(w, slot, c.result)
        }
        Op::Inspect => inspect::on_inspect(w, slot, c.result),
        Op::Doorbell => queue::on_doorbell(w, c),
        Op::Connect => connect::on_connect(w, slot, c.result),
        Op::Header => connect::on_header(w, slot, c.result),
        Op::RecvClient => relay::on_recv(w, slot, Side::ToBackend, c),
        Op::RecvBackend => relay::on_recv(w, slot, Side::ToClient, c),
        Op::SendBackend => relay::on_send(w, slot, Side::ToBackend, c.result),
        Op::SendClient => relay::on_send(w, slot, Side::ToClient, c.result),
        // Timeouts and cancels only end: what they ended reports for itself. Closes and
        // the cancel of an accept are not tracked.
        Op::InspectTimeout | Op::ConnectTimeout | Op::Cancel | Op::Close | Op::AcceptCancel => {}
    }
    if tracked {
        w.release_if_idle(slot);
    }
}
