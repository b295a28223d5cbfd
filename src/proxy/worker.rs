//! One worker: a thread with its own io_uring ring and its own SO_REUSEPORT listening socket
//! per listener, running every connection it accepts from accept to close.
//!
//! A connection's stages, one file each (`impl Worker` blocks over the same state):
//! - `accept.rs`: multishot accept, admission (descriptor budget, `max_connections`, source
//!   allow/deny, per-source limits), the pool's queue when every backend is at its limit;
//! - `accept_proxy.rs`: reads the PROXY header a front balancer sends, whose address then
//!   goes through the same admission;
//! - `inspect.rs`: waits for the TLS ClientHello and picks the pool by SNI;
//! - `connect.rs`: picks a backend, connects with a linked timeout (the next candidate on
//!   refusal or timeout, up to `retries`), sends the PROXY header;
//! - `relay.rs`: two multishot recvs from the buffer ring, each feeding one send at a time to
//!   the other side; EOF on one side becomes shutdown(SHUT_WR) on the other;
//! - `close.rs`: teardown (cancel what is in flight) and release, the one place a
//!   connection ends.
//!
//! This file holds the loop, the dispatch of completions, and the tick (timeouts: idle,
//! fin, age; backends removed or marked down).
//!
//! Owns: its ring, its connections, its listening sockets. Reads the shared snapshot (one
//! lock-free load per new connection) and writes the shared atomic counters.
//! Must not touch: locks, allocation per chunk, or syscalls outside the ring per chunk. Per
//! connection a few plain syscalls remain: socket + setsockopt for the backend side, and
//! shutdown(2), which unlike IORING_OP_SHUTDOWN needs no io-wq thread (see
//! `finish_if_drained`).
//! Hot-path errors are plain `i32` errnos: a boxed error per failed recv would be an
//! allocation on exactly the path that must not have one.

use super::bufqueue::BufLinks;
use super::conn::{Phase, Side};
use super::op::{self, Op};
use super::ring::{Cqe, Ring};
use super::table::ConnTable;
use crate::accesslog::End;
use crate::snapshot::Shared;
use crate::sys;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The largest registered file table a ring mirrors its sockets into; descriptors numbered
/// above it take the plain path.
const FIXED_FILES_MAX: u64 = 1 << 16;

/// How often a worker wakes on its own: idle timeouts, resumed accepts, shutdown.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AcceptState {
    Idle,
    Armed,
    Cancelling,
    /// Stopping: one accept that never waits is in flight, taking what is already queued
    /// before the socket is closed (see `accept.rs`, `on_last_accept`).
    Draining,
}

/// One listening socket of this worker.
pub(super) struct Listening {
    /// Index into the snapshot's listeners (a worker may hold several sockets of one
    /// listener: those an upgrade inherited from an old process with more workers).
    pub listener: usize,
    pub socket: Option<socket2::Socket>,
    pub state: AcceptState,
    /// No accept before this tick (after EMFILE).
    pub paused_until: u32,
    /// Connections taken while draining at a stop.
    pub drained: u32,
}

pub struct Worker {
    pub(super) id: usize,
    pub(super) ring: Ring,
    pub(super) shared: Arc<Shared>,
    pub(super) listening: Vec<Listening>,
    pub(super) conns: ConnTable,
    pub(super) links: BufLinks,
    /// Connections whose recv ended with ENOBUFS: (slot, gen, side).
    pub(super) parked: Vec<(u32, u16, Side)>,
    /// Connections waiting in a pool's queue, oldest first (see `accept.rs`).
    pub(super) queued: super::waiters::Waiting,
    pub(super) now: u32,
    /// Access-log details by slot, for connections of listeners that log.
    pub(super) logs: Vec<super::conn::LogInfo>,
    /// Inspection scratch: the bytes a client has sent (peeked), and its joined handshake.
    pub(super) peek: Box<[u8; super::clienthello::MAX_HELLO]>,
    pub(super) hello: Box<[u8; super::clienthello::MAX_HELLO]>,
    rng: u64,
    pub(super) stopping: bool,
    cqes: Vec<Cqe>,
    /// Warnings of this kind already logged this second.
    pub(super) accept_warned: u32,
    /// The tick's finds for rebalancing: (accept tick, slot), kept to reuse its memory.
    rebalance: Vec<(u32, u32)>,
}

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        sockets: Vec<(usize, socket2::Socket)>,
        buffer_count: u16,
        buffer_size: u32,
    ) -> std::io::Result<Worker> {
        // Every descriptor number the process can hold has a slot in the ring's file table,
        // up to FIXED_FILES_MAX (a slot costs the kernel 8 bytes per ring).
        let files = sys::nofile_limit().min(FIXED_FILES_MAX) as u32;
        let ring = Ring::new(4096, buffer_count, buffer_size, files)?;
        Ok(Worker {
            id,
            ring,
            shared,
            listening: sockets
                .into_iter()
                .map(|(listener, s)| Listening {
                    listener,
                    socket: Some(s),
                    state: AcceptState::Idle,
                    paused_until: 0,
                    drained: 0,
                })
                .collect(),
            conns: ConnTable::default(),
            links: BufLinks::new(buffer_count),
            parked: Vec::new(),
            queued: Default::default(),
            now: 0,
            logs: Vec::new(),
            peek: Box::new([0; super::clienthello::MAX_HELLO]),
            hello: Box::new([0; super::clienthello::MAX_HELLO]),
            rng: 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            stopping: false,
            cqes: Vec::with_capacity(1024),
            accept_warned: 0,
            rebalance: Vec::new(),
        })
    }

    /// Runs until shutdown is requested and every connection has ended.
    pub fn run(mut self) -> std::io::Result<()> {
        tracing::debug!(
            worker = self.id,
            recv_cap = self.ring.recv_capped(),
            buf_inc = self.ring.incremental(),
            fixed_files = self.ring.fixed_files(),
            "relay ready (recv_cap: multishot recvs bounded per arming, Linux 6.17+; buf_inc: buffers consumed incrementally, 6.12+; fixed_files: sockets mirrored in a registered file table, 5.19+)"
        );
        let f = &self.shared.io_uring_features;
        f.recv_cap.store(self.ring.recv_capped(), Relaxed);
        f.buf_inc.store(self.ring.incremental(), Relaxed);
        f.fixed_files.store(self.ring.fixed_files(), Relaxed);
        self.ring.tick(TICK, op::user_data(0, 0, Op::Tick));
        self.arm_doorbell();
        self.ring
            .set_busy_poll(self.shared.snapshot.load().busy_poll);
        for i in 0..self.listening.len() {
            self.arm_accept(i);
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            if let Err(e) = self.ring.submit_and_wait() {
                self.ring.submit_all();
                return Err(e);
            }
            self.ring.drain(&mut cqes);
            for c in &cqes {
                self.dispatch(*c);
            }
            self.serve_queued();
            self.ring.commit();
            self.wake_parked();
            if self.stopping
                && self.conns.live() == 0
                && self.listening.iter().all(|l| l.socket.is_none())
            {
                // What the last turn pushed (the last connection's closes, above all) goes
                // to the kernel before the worker leaves: an SQE left in the queue is never
                // run, so its descriptors would stay open, and their peers would wait for
                // the EOF, until the whole process exits (after its other workers).
                self.ring.submit_all();
                return Ok(());
            }
        }
    }

    pub(super) fn rand(&mut self) -> u64 {
        // xorshift64*: a tie-breaker, not a secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn dispatch(&mut self, c: Cqe) {
        let (slot, gen_, op) = op::decode(c.user_data);
        let Some(op) = Op::from_u8(op) else { return };
        match op {
            Op::Tick => self.on_tick(),
            Op::Accept => self.on_accept(slot as usize, c),
            Op::Doorbell => self.on_doorbell(c),
            Op::AcceptCancel | Op::Close => {}
            _ => {
                let slot = slot as usize;
                if !self.conns.lookup(slot, gen_) {
                    tracing::error!(
                        worker = self.id,
                        slot,
                        ?op,
                        "completion for a released connection"
                    );
                    return;
                }
                if !c.more() {
                    self.conns.complete(slot);
                }
                match op {
                    Op::Inspect
                        if matches!(self.conns.get(slot).phase, Phase::ProxyHeader { .. }) =>
                    {
                        self.on_proxy_header(slot, c.result)
                    }
                    Op::Inspect => self.on_inspect(slot, c.result),
                    Op::Connect => self.on_connect(slot, c.result),
                    Op::Header => self.on_header(slot, c.result),
                    Op::RecvClient => self.on_recv(slot, Side::ToBackend, c),
                    Op::RecvBackend => self.on_recv(slot, Side::ToClient, c),
                    Op::SendBackend => self.on_send(slot, Side::ToBackend, c.result),
                    Op::SendClient => self.on_send(slot, Side::ToClient, c.result),
                    // Timeouts and cancels only end: what they ended reports for itself.
                    _ => {}
                }
                self.release_if_idle(slot);
            }
        }
    }

    fn on_tick(&mut self) {
        self.now += 1;
        // Fault injection for the tests of what a worker's death does (debug builds only).
        #[cfg(debug_assertions)]
        if self.now == 3 && std::env::var_os("RINGLB_FAULT_WORKER_PANIC").is_some() {
            panic!("injected fault: RINGLB_FAULT_WORKER_PANIC");
        }
        if self.now.is_multiple_of(10) {
            self.accept_warned = 0;
        }
        if !self.stopping && self.shared.stopping.load(Relaxed) {
            self.stopping = true;
            for i in 0..self.listening.len() {
                match self.listening[i].state {
                    AcceptState::Armed => self.cancel_accept(i),
                    AcceptState::Idle => self.listening[i].socket = None,
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
                tracing::warn!(worker = self.id, ms, "injected fault: the stop stalls");
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        let busy_poll = self.shared.snapshot.load().busy_poll;
        self.ring.set_busy_poll(busy_poll);
        self.resume_accepts();
        self.expire_queued();
        // Timeouts, backends removed or marked down, and the relay's invariant.
        let tick_ms = TICK.as_millis() as u64;
        for slot in 0..self.conns.capacity() {
            let Some(c) = self.conns.try_get(slot) else {
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
                    self.close(slot, End::DrainTimeout);
                    continue;
                }
                if b.closes_now() {
                    // Marked down in a pool that says `on_backend_down = "close"`.
                    b.stats.closed_on_down.fetch_add(1, Relaxed);
                    self.close(slot, End::BackendDown);
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
            if self.ring.fixed_files() {
                let (client, server) = (c.client, c.server);
                let ud = self.conns.ud(slot, Op::Close);
                self.ring.adopt(client, ud);
                self.ring.adopt(server, ud);
            }
            self.check_directions(slot);
            let c = self.conns.get(slot);
            let idle = self.now - c.last_active;
            if idle as u64 * tick_ms >= c.listener.idle_timeout.as_millis() as u64 {
                tracing::debug!(worker = self.id, slot, "idle timeout");
                self.close(slot, End::IdleTimeout);
                continue;
            }
            if let Some(end) = self.lifetime_end(slot, idle as u64 * tick_ms) {
                self.close(slot, end);
                continue;
            }
            let c = self.conns.get(slot);
            if let Some(b) = &c.backend
                && let Some(idle_for) = b.rebalance_wanted()
                && idle as u64 * tick_ms >= idle_for as u64
                && c.dirs
                    .iter()
                    .all(|d| d.queue.is_empty() && !d.sending && !d.eof)
            {
                self.rebalance.push((c.born, slot as u32));
            }
        }
        self.close_for_rebalance();
    }

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
