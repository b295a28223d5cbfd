//! The tick: a worker wakes on its own every [`TICK`] to do what no completion asks for.
//! Idle, fin and age timeouts; connections of backends removed or marked down
//! (`on_backend_down = "close"`); long-lived connections moved to the ring's file table;
//! idle connections closed to rebalance a scale-out; the stop's cancel of accepts.
//!
//! Owns: time-driven ends of connections. Must not touch: the bytes of a connection (it
//! closes only connections with nothing in flight, or that must end regardless).

use super::conn::Phase;
use super::op::Op;
use super::worker::{AcceptState, Worker};
use crate::accesslog::End;
use crate::sys;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How often a worker wakes on its own: idle timeouts, resumed accepts, shutdown.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// One tick: counts time, starts the stop if the process is stopping, and looks at every
/// connection once.
pub(super) fn on_tick(w: &mut Worker) {
    w.now += 1;
    // Fault injection for the tests of what a worker's death does (debug builds only).
    #[cfg(debug_assertions)]
    if w.now == 3 && std::env::var_os("RINGLB_FAULT_WORKER_PANIC").is_some() {
        panic!("injected fault: RINGLB_FAULT_WORKER_PANIC");
    }
    if w.now.is_multiple_of(10) {
        w.accept_warned = 0;
    }
    if !w.stopping && w.shared.stopping.load(Relaxed) {
        w.stopping = true;
        for i in 0..w.listening.len() {
            match w.listening[i].state {
                AcceptState::Armed => w.cancel_accept(i),
                AcceptState::Idle => w.listening[i].socket = None,
                AcceptState::Cancelling | AcceptState::Draining => {}
            }
        }
        // Fault injection (debug builds): the worker stalls with its cancels queued but not
        // yet submitted, so that a client arriving now wakes this worker's accept, which
        // the cancel then discards (the race the stop's drain is for; tests/upgrade.rs).
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var("RINGLB_FAULT_STOP_STALL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tracing::warn!(worker = w.id, ms, "injected fault: the stop stalls");
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let busy_poll = w.shared.snapshot.load().busy_poll;
    w.ring.set_busy_poll(busy_poll);
    w.resume_accepts();
    w.expire_queued();
    // Timeouts, backends removed or marked down, and the relay's invariant.
    let tick_ms = TICK.as_millis() as u64;
    for slot in 0..w.conns.capacity() {
        let Some(c) = w.conns.try_get(slot) else {
            continue;
        };
        if c.phase == Phase::Closing {
            // Ending already, waiting for its cancels: nothing more to decide (and
            // nothing to count again at every tick until it is released).
            continue;
        }
        if let Some(b) = &c.backend {
            if b.is_removed() {
                // Its backend was removed (a drain that timed out): close what remains.
                w.close(slot, End::DrainTimeout);
                continue;
            }
            if b.closes_now() {
                // Marked down in a pool that says `on_backend_down = "close"`.
                b.stats.closed_on_down.fetch_add(1, Relaxed);
                w.close(slot, End::BackendDown);
                continue;
            }
        }
        if c.phase != Phase::Relaying {
            continue;
        }
        // Relaying for a tick already: a connection that lasts. Its sockets move to the
        // ring's file table (once), so its requests from now on take no file
        // references. Short connections never get here: for them the two updates and the
        // two closes of the mirror would cost more than they save (measured: +2% CPU per
        // connection when every socket was adopted at once).
        if w.ring.fixed_files() {
            let (client, server) = (c.client, c.server);
            let ud = w.conns.ud(slot, Op::Close);
            w.ring.adopt(client, ud);
            w.ring.adopt(server, ud);
        }
        w.check_directions(slot);
        let c = w.conns.get(slot);
        let idle = w.now - c.last_active;
        if idle as u64 * tick_ms >= c.listener.idle_timeout.as_millis() as u64 {
            tracing::debug!(worker = w.id, slot, "idle timeout");
            w.close(slot, End::IdleTimeout);
            continue;
        }
        if let Some(end) = w.lifetime_end(slot, idle as u64 * tick_ms) {
            w.close(slot, end);
            continue;
        }
        let c = w.conns.get(slot);
        if let Some(b) = &c.backend
            && let Some(idle_for) = b.rebalance_wanted()
            && idle as u64 * tick_ms >= idle_for as u64
            && c.dirs
                .iter()
                .all(|d| d.queue.is_empty() && !d.sending && !d.eof)
        {
            w.rebalance.push((c.born, slot as u32));
        }
    }
    w.close_for_rebalance();
}

impl Worker {
    /// Closes the idle connections the tick found on backends over their share, oldest
    /// first, as far as each backend's quota goes (shared by the workers; see
    /// `control/rebalance.rs`). Like an idle timeout: a FIN both ways, with nothing
    /// received and not yet sent, so no bytes in flight are cut.
    fn close_for_rebalance(&mut self) {
        if self.rebalance.is_empty() {
            return;
        }
        let mut found = std::mem::take(&mut self.rebalance);
        found.sort_unstable();
        for &(_, slot) in &found {
            let slot = slot as usize;
            let c = self.conns.get(slot);
            let Some(b) = &c.backend else {
                continue;
            };
            // The quota is used up (by this worker's earlier finds or another worker's):
            // the rest stay, and cost no syscall. A hot backend may have thousands of idle
            // connections found; only the few its quota allows are looked at further.
            if b.rebalance_wanted().is_none() {
                continue;
            }
            // Bytes the kernel holds for us and the ring has not taken yet: a request on
            // its way is not idle (and closing on unread bytes would send a reset).
            // A syscall per side, only for connections the quota may close.
            if sys::unread_bytes(c.client) != 0 || sys::unread_bytes(c.server) != 0 {
                continue;
            }
            if !b.take_rebalance() {
                continue;
            }
            b.stats.rebalanced.fetch_add(1, Relaxed);
            self.close(slot, End::Rebalanced);
        }
        found.clear();
        self.rebalance = found;
    }

    /// The fin timeouts and `max_connection_age`: whether a relaying connection, idle for
    /// `idle_ms`, must end now.
    fn lifetime_end(&mut self, slot: usize, idle_ms: u64) -> Option<End> {
        let c = self.conns.get(slot);
        let l = &c.listener;
        let [to_backend, to_client] = &c.dirs;
        // Half-closed: one side sent its EOF, the other has not. The timeout of the side
        // still open applies (the client ended: the server's; the backend ended: the
        // client's), counted from the last bytes relayed, as HAProxy's `timeout *-fin`.
        let half = match (to_backend.eof, to_client.eof) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        };
        if let Some(h) = half {
            let limit = l.fin_timeout[h].as_millis() as u64;
            if limit > 0 && idle_ms >= limit {
                l.stats.fin_timeouts.fetch_add(1, Relaxed);
                return Some(End::FinTimeout);
            }
        }
        // Aged: only between exchanges, with nothing received and not yet sent, so that
        // the close cuts no bytes in flight (what was sent the kernel still delivers
        // before the FIN).
        let age_ms = (self.now - c.born) as u64 * TICK.as_millis() as u64;
        if !l.max_age.is_zero()
            && age_ms >= l.max_age.as_millis() as u64
            && idle_ms >= l.max_age_idle.as_millis() as u64
            && c.dirs.iter().all(|d| d.queue.is_empty() && !d.sending)
        {
            l.stats.aged_out.fetch_add(1, Relaxed);
            return Some(End::MaxAge);
        }
        None
    }
}
