//! Inspection: before connecting, waits for the client's TLS ClientHello and picks the pool
//! by its server_name (SNI), without terminating TLS.
//!
//! The bytes are looked at, not taken: a poll (with a linked timeout, the rest of
//! `inspect_timeout`) waits for the socket to be readable, a `recv(MSG_PEEK)` copies what
//! waits into the worker's scratch, and the parser says whether the hello is complete. If
//! not, SO_RCVLOWAT is raised to one byte more than is there, so the next poll wakes only
//! when more has come (or at EOF), and the worker polls again. The relay later reads the
//! same bytes from the socket and forwards them unchanged, as Envoy's tls_inspector does;
//! nothing is copied to the backend by hand. Two syscalls per routed connection in the
//! common case (one peek; SO_RCVLOWAT only when the hello came in pieces).
//!
//! Owns: the inspection's poll and its timeout, the route decision and its counters.
//! Must not touch: backends (the pool chosen goes on to `accept.rs`'s `enter_pool`).

use super::clienthello::{self, Hello, MAX_HELLO};
use super::conn::Phase;
use super::op::Op;
use super::worker::Worker;
use crate::accesslog::End;
use crate::routes::NoRoute;
use crate::sys;

/// The client sent bytes (or the inspection timed out): parse its ClientHello and route by
/// SNI, or wait for more of it.
pub(super) fn on_inspect(w: &mut Worker, slot: usize, res: i32) {
    let c = w.conns.get(slot);
    if c.phase == Phase::Closing {
        return;
    }
    if res < 0 {
        // -ECANCELED: the linked timeout fired first.
        return w.no_route(slot, NoRoute::Timeout);
    }
    let fd = c.client;
    let n = sys::peek(fd, &mut w.peek[..]);
    if n == -(libc::EAGAIN as isize) {
        // Woken with nothing to read after all: wait again.
        return w.inspect(slot);
    }
    if n <= 0 {
        // EOF or a reset before a whole hello: nobody to serve.
        return w.no_route(slot, NoRoute::Timeout);
    }
    let n = n as usize;
    let verdict = clienthello::parse(&w.peek[..n], &mut w.hello);
    let c = w.conns.get(slot);
    let Phase::Inspecting { peeked } = c.phase else {
        return;
    };
    let found = match verdict {
        Hello::Incomplete if n <= peeked as usize => {
            // Woken with no new bytes: only an EOF wakes a poll below SO_RCVLOWAT, so
            // the client half-closed mid-hello. Polling again would spin.
            return w.no_route(slot, NoRoute::Timeout);
        }
        Hello::Incomplete if n < MAX_HELLO => {
            sys::set_rcvlowat(fd, n as i32 + 1);
            c.phase = Phase::Inspecting { peeked: n as u16 };
            return w.inspect(slot);
        }
        Hello::Incomplete | Hello::Malformed => Err(NoRoute::Malformed),
        Hello::NotTls => Err(NoRoute::NotTls),
        Hello::NoSni => Err(NoRoute::NoSni),
        Hello::Sni(name) => c.listener.routes.lookup(name).ok_or(NoRoute::UnknownName),
    };
    if peeked > 0 {
        // Readable at one byte again, for the relay's recvs.
        sys::set_rcvlowat(fd, 1);
    }
    match found {
        Ok(pool) => w.route_to(slot, pool),
        Err(why) => w.no_route(slot, why),
    }
}

impl Worker {
    /// Starts (or continues) waiting for the client's first bytes.
    pub(super) fn inspect(&mut self, slot: usize) {
        let c = self.conns.get(slot);
        if !matches!(c.phase, Phase::Inspecting { .. }) {
            c.phase = Phase::Inspecting { peeked: 0 };
        }
        if !self.poll_client(slot) {
            self.no_route(slot, NoRoute::Timeout);
        }
    }

    /// Polls the client for (more) bytes, under what is left of the listener's
    /// `inspect_timeout` (counted from the accept); false when nothing is left of it. What
    /// both the SNI inspection and the PROXY header wait with.
    pub(super) fn poll_client(&mut self, slot: usize) -> bool {
        let c = self.conns.get(slot);
        let left = c
            .listener
            .inspect_timeout
            .saturating_sub(c.accepted_at.elapsed());
        if left.is_zero() {
            return false;
        }
        let fd = c.client;
        let pu = self.conns.submit(slot, Op::Inspect);
        let tu = self.conns.submit(slot, Op::InspectTimeout);
        self.ring.poll_readable(fd, left, pu, tu);
        true
    }

    /// No route matched: the listener's default pool, or a close if it has none.
    fn no_route(&mut self, slot: usize, why: NoRoute) {
        let c = self.conns.get(slot);
        c.listener.no_route(why);
        tracing::debug!(listener = %c.listener.name, reason = why.as_str(), "no SNI route");
        match c.listener.pool {
            Some(pool) if why != NoRoute::Timeout => self.route_to(slot, pool),
            _ => self.teardown(slot, End::NoRoute),
        }
    }

    fn route_to(&mut self, slot: usize, pool: usize) {
        let snap = self.shared.snapshot.load();
        let c = self.conns.get(slot);
        // A reload may have come between the accept and the hello: the pool is looked up
        // by name in the snapshot in force now.
        let name = &c.listener.pool_names[pool];
        let chosen = match snap.pools.get(pool) {
            Some(p) if &p.name == name => Some(p.clone()),
            _ => snap.pool(name).cloned(),
        };
        drop(snap);
        match chosen {
            Some(p) => {
                c.pool = p;
                c.phase = Phase::Connecting;
                self.enter_pool(slot);
            }
            // The pool was removed by that reload.
            None => self.teardown(slot, End::NoRoute),
        }
    }
}
