//! One worker: a thread with its own io_uring ring and its own SO_REUSEPORT listening socket
//! per listener, running every connection it accepts from accept to close.
//!
//! Per connection: multishot accept → pick a backend → connect with a linked timeout (the
//! next candidate on refusal or timeout, up to `retries`) → optional PROXY header → two
//! multishot recvs from the buffer ring, each feeding one send at a time to the other side
//! → EOF on one side becomes shutdown(SHUT_WR) on the other → close when both are done, on
//! error, or after `idle_timeout`.
//!
//! Owns: its ring, its connections, its listening sockets. Reads the shared snapshot (one
//! lock-free load per new connection) and writes the shared atomic counters.
//! Must not touch: locks, allocation per chunk, or syscalls outside the ring per chunk. Per
//! connection a few plain syscalls remain: socket + setsockopt for the backend side, and
//! shutdown(2), which unlike IORING_OP_SHUTDOWN needs no io-wq thread (see
//! `finish_if_drained`).
//! Hot-path errors are plain `i32` errnos: a boxed error per failed recv would be an
//! allocation on exactly the path that must not have one.

use super::conn::{self, Conn, Dir, NO_BUF, Op, Phase, Recv, TO_BACKEND, TO_CLIENT};
use super::ring::{Cqe, HEADER_MAX, Ring, sys};
use crate::backend::{ConnectError, Shared};
use crate::balance::{Pick, key_hash};
use crate::config::HashKey;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How often a worker wakes on its own: idle timeouts, resumed accepts, shutdown.
pub const TICK: Duration = Duration::from_millis(100);
/// Queued buffers in one direction at which its recv is cancelled (backpressure)...
const HIGH_WATER: u16 = 2;
/// ...and below which it is armed again.
const LOW_WATER: u16 = 1;
/// Fewest and most buffers one arming of a (capped) multishot recv may take.
const RECV_CAP_MIN: u32 = 2;
const RECV_CAP_MAX: u32 = 32;
/// Ticks to wait before accepting again after EMFILE/ENFILE.
const ACCEPT_PAUSE_TICKS: u32 = 2;
/// Bytes a direction relays before they are folded into the backend's shared counters.
const FLUSH_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptState {
    Idle,
    Armed,
    Cancelling,
}

/// One listening socket of this worker.
struct Listening {
    socket: Option<socket2::Socket>,
    state: AcceptState,
    /// No accept before this tick (after EMFILE).
    paused_until: u32,
}

pub struct Worker {
    id: usize,
    ring: Ring,
    shared: Arc<Shared>,
    listening: Vec<Listening>,
    conns: Vec<Option<Conn>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    live: usize,
    /// Per relay buffer: the next buffer in its queue, and how many bytes it holds.
    next: Vec<u16>,
    len: Vec<u32>,
    /// Buffers held in send queues (not in the kernel's ring).
    held: u32,
    /// Connections whose recv ended with ENOBUFS: (slot, gen, dir).
    parked: Vec<(u32, u16, u8)>,
    now: u32,
    rng: u64,
    stopping: bool,
    cqes: Vec<Cqe>,
    /// Warnings of this kind already logged this second.
    accept_warned: u32,
}

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        sockets: Vec<socket2::Socket>,
        buffer_count: u16,
        buffer_size: u32,
    ) -> std::io::Result<Worker> {
        let ring = Ring::new(4096, buffer_count, buffer_size)?;
        Ok(Worker {
            id,
            ring,
            shared,
            listening: sockets
                .into_iter()
                .map(|s| Listening {
                    socket: Some(s),
                    state: AcceptState::Idle,
                    paused_until: 0,
                })
                .collect(),
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            next: vec![NO_BUF; buffer_count as usize],
            len: vec![0; buffer_count as usize],
            held: 0,
            parked: Vec::new(),
            now: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            stopping: false,
            cqes: Vec::with_capacity(1024),
            accept_warned: 0,
        })
    }

    /// Runs until shutdown is requested and every connection has ended.
    pub fn run(mut self) -> std::io::Result<()> {
        tracing::debug!(
            worker = self.id,
            recv_cap = self.ring.recv_capped(),
            "relay ready (recv_cap: multishot recvs bounded per arming; needs Linux 6.17+)"
        );
        self.ring.tick(TICK, conn::user_data(0, 0, Op::Tick));
        self.ring
            .set_busy_poll(self.shared.snapshot.load().busy_poll);
        for i in 0..self.listening.len() {
            self.arm_accept(i);
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            self.ring.submit_and_wait()?;
            self.ring.drain(&mut cqes);
            for c in &cqes {
                self.dispatch(*c);
            }
            self.ring.commit();
            self.wake_parked();
            if self.stopping && self.live == 0 && self.listening.iter().all(|l| l.socket.is_none())
            {
                return Ok(());
            }
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: a tie-breaker, not a secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn dispatch(&mut self, c: Cqe) {
        let (slot, gen_, op) = conn::decode(c.user_data);
        let Some(op) = Op::from_u8(op) else { return };
        match op {
            Op::Tick => self.on_tick(),
            Op::Accept => self.on_accept(slot as usize, c),
            Op::AcceptCancel | Op::Close => {}
            _ => {
                let slot = slot as usize;
                match self.conns.get(slot) {
                    Some(Some(conn)) if conn.gen_ == gen_ => {}
                    _ => {
                        tracing::error!(
                            worker = self.id,
                            slot,
                            ?op,
                            "completion for a released connection"
                        );
                        return;
                    }
                }
                match op {
                    Op::Connect => self.on_connect(slot, c.result),
                    Op::ConnectTimeout | Op::Cancel => self.done_op(slot),
                    Op::Header => self.on_header(slot, c.result),
                    Op::RecvClient => self.on_recv(slot, TO_BACKEND, c),
                    Op::RecvBackend => self.on_recv(slot, TO_CLIENT, c),
                    Op::SendBackend => self.on_send(slot, TO_BACKEND, c.result),
                    Op::SendClient => self.on_send(slot, TO_CLIENT, c.result),
                    _ => {}
                }
                self.release_if_idle(slot);
            }
        }
    }

    fn conn(&mut self, slot: usize) -> &mut Conn {
        self.conns[slot].as_mut().expect("live connection")
    }

    fn ud(&self, slot: usize, op: Op) -> u64 {
        conn::user_data(slot as u32, self.gens[slot], op)
    }

    /// One tracked request finished.
    fn done_op(&mut self, slot: usize) {
        let c = self.conn(slot);
        c.inflight -= 1;
    }

    // ---- listeners ----------------------------------------------------------------------

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listening[i];
        if let Some(s) = &l.socket
            && l.state == AcceptState::Idle
            && !self.stopping
        {
            self.ring
                .accept_multi(s.as_raw_fd(), conn::user_data(i as u32, 0, Op::Accept));
            l.state = AcceptState::Armed;
        }
    }

    fn cancel_accept(&mut self, i: usize) {
        if self.listening[i].state == AcceptState::Armed {
            self.ring.cancel(
                conn::user_data(i as u32, 0, Op::Accept),
                conn::user_data(i as u32, 0, Op::AcceptCancel),
            );
            self.listening[i].state = AcceptState::Cancelling;
        }
    }

    /// Stops accepting on every listener for a couple of ticks (out of descriptors): the
    /// tick re-arms them.
    fn pause_accepting(&mut self) {
        for i in 0..self.listening.len() {
            self.listening[i].paused_until = self.now + ACCEPT_PAUSE_TICKS;
            self.cancel_accept(i);
        }
    }

    fn on_accept(&mut self, li: usize, c: Cqe) {
        if !c.more() {
            self.listening[li].state = AcceptState::Idle;
            if self.stopping {
                // The accept is over: close the socket so the kernel sends new connections
                // to listeners that remain (or refuses them).
                self.listening[li].socket = None;
            }
        }
        if c.result < 0 {
            let err = -c.result;
            if matches!(
                err,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                // Out of descriptors or memory: pause accepting for a couple of ticks rather
                // than spin on an error that only time (closing connections) can cure.
                self.listening[li].paused_until = self.now + ACCEPT_PAUSE_TICKS;
                self.cancel_accept(li);
                if self.accept_warned < 1 {
                    tracing::warn!(worker = self.id, error = %std::io::Error::from_raw_os_error(err), "accept failed: pausing accepts");
                }
                self.accept_warned += 1;
            } else if err != libc::ECANCELED {
                tracing::warn!(worker = self.id, error = %std::io::Error::from_raw_os_error(err), "accept failed");
            }
            if self.listening[li].state == AcceptState::Idle
                && self.now >= self.listening[li].paused_until
            {
                self.arm_accept(li);
            }
            return;
        }
        // Accepted while stopping (the accept's cancel had not landed yet): the kernel
        // completed this handshake and the client may have sent its request already, so it
        // is served like the connections that came before, not closed unanswered.
        let fd = c.result;
        self.new_connection(li, fd);
        if self.listening[li].state == AcceptState::Idle
            && self.now >= self.listening[li].paused_until
        {
            self.arm_accept(li);
        }
    }

    fn new_connection(&mut self, li: usize, fd: RawFd) {
        let snap = self.shared.snapshot.load();
        let listener = snap.listeners[li].clone();
        let pool = snap.pools[listener.pool].clone();
        drop(snap);
        let stats = &listener.stats;
        stats.connections.fetch_add(1, Relaxed);
        let active = stats.active.fetch_add(1, Relaxed) + 1;
        let budget = self.shared.connection_budget.load(Relaxed);
        if self.shared.open_connections() >= budget {
            // As many connections as descriptors allow: refuse this one and pause accepting
            // (a backend socket for it would fail anyway).
            stats.active.fetch_sub(1, Relaxed);
            stats.rejected.fetch_add(1, Relaxed);
            sys::close(fd);
            self.pause_accepting();
            return;
        }
        if listener.max_connections > 0 && active > listener.max_connections as i64 {
            // Over the limit: refuse this one and stop accepting until a slot frees up (the
            // kernel's backlog holds the rest, as HAProxy's maxconn does).
            stats.active.fetch_sub(1, Relaxed);
            stats.rejected.fetch_add(1, Relaxed);
            sys::close(fd);
            self.cancel_accept(li);
            return;
        }
        let key = if pool.needs_client_key() {
            match sys::peer_addr(fd) {
                Some(a) => key_hash(
                    a.ip(),
                    (pool.hash_key == HashKey::ClientIpPort).then_some(a.port()),
                ),
                None => 0,
            }
        } else {
            0
        };
        let slot = match self.free.pop() {
            Some(s) => s as usize,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                self.conns.len() - 1
            }
        };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        self.conns[slot] = Some(Conn {
            gen_: self.gens[slot],
            inflight: 0,
            phase: Phase::Connecting,
            client: fd,
            server: -1,
            listener,
            pool,
            backend: None,
            tried: [0; crate::config::MAX_RETRIES as usize + 1],
            ntried: 0,
            key,
            last_active: self.now,
            dirs: [Dir::new(), Dir::new()],
            header_len: 0,
            header_sent: 0,
            accepted_at: std::time::Instant::now(),
            connect_started: std::time::Instant::now(),
        });
        self.live += 1;
        self.shared.worker_connections[self.id].fetch_add(1, Relaxed);
        self.connect_next(slot);
        self.release_if_idle(slot);
    }

    // ---- connecting ---------------------------------------------------------------------

    /// Picks the next backend not yet tried and connects to it; closes the client when none
    /// is left.
    fn connect_next(&mut self, slot: usize) {
        let rand = self.rand();
        let c = self.conns[slot].as_mut().expect("live connection");
        let attempts_left = c.ntried as u32 <= c.listener.retries;
        let picked = if attempts_left {
            c.pool.balancer.pick(
                &c.pool.backends,
                &Pick {
                    key: c.key,
                    rand,
                    tried: c.tried(),
                },
            )
        } else {
            None
        };
        let Some(i) = picked else {
            if c.ntried == 0 {
                c.listener.stats.no_backend.fetch_add(1, Relaxed);
                tracing::debug!(listener = %c.listener.name, "no routable backend");
            }
            self.teardown(slot);
            return;
        };
        let backend = c.pool.backends[i].clone();
        c.tried[c.ntried as usize] = i as u32;
        c.ntried += 1;
        backend.stats.active.fetch_add(1, Relaxed);
        backend.stats.connections.fetch_add(1, Relaxed);
        let fd = match sys::stream_socket(backend.addr.is_ipv6(), c.pool.tcp_congestion()) {
            Ok(fd) => fd,
            Err(e) => {
                backend.stats.active.fetch_sub(1, Relaxed);
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    // Out of descriptors: stop taking clients we cannot serve; those waiting
                    // stay in the backlog until descriptors free up.
                    self.pause_accepting();
                }
                if self.accept_warned < 1 {
                    tracing::warn!(error = %e, "cannot create a backend socket");
                }
                self.accept_warned += 1;
                self.teardown(slot);
                return;
            }
        };
        c.server = fd;
        c.connect_started = std::time::Instant::now();
        c.inflight += 2;
        let timeout = c.listener.connect_timeout;
        let (cu, tu) = (
            self.ud(slot, Op::Connect),
            self.ud(slot, Op::ConnectTimeout),
        );
        self.ring.connect(fd, &backend.sockaddr, timeout, cu, tu);
        self.conn(slot).backend = Some(backend);
    }

    fn on_connect(&mut self, slot: usize, res: i32) {
        self.done_op(slot);
        let now = self.now;
        let c = self.conn(slot);
        if c.phase == Phase::Closing {
            return;
        }
        let backend = c.backend.clone().expect("connecting to a backend");
        if res == 0 {
            backend.stats.failures_in_row.store(0, Relaxed);
            c.pool
                .connect_duration
                .record(c.connect_started.elapsed().as_secs_f64());
            c.last_active = now;
            let version = c.listener.proxy_protocol;
            if version != crate::config::ProxyProtocol::Off {
                let mut hdr = [0u8; HEADER_MAX];
                let (client, server) = (c.client, c.server);
                let n = match (sys::peer_addr(client), sys::local_addr(client)) {
                    (Some(peer), Some(local)) => conn::proxy_header(version, peer, local, &mut hdr),
                    _ => 0,
                };
                if n > 0 {
                    c.phase = Phase::Header;
                    c.header_len = n as u8;
                    c.inflight += 1;
                    let ud = self.ud(slot, Op::Header);
                    self.ring.send_header(server, slot, &hdr[..n], ud);
                    return;
                }
            }
            self.start_relay(slot);
            return;
        }
        let reason = match -res {
            libc::ECONNREFUSED => ConnectError::Refused,
            libc::ECANCELED | libc::ETIMEDOUT | libc::ETIME => ConnectError::Timeout,
            _ => ConnectError::Other,
        };
        backend.stats.connect_errors[reason as usize].fetch_add(1, Relaxed);
        backend.stats.failures_in_row.fetch_add(1, Relaxed);
        backend.stats.active.fetch_sub(1, Relaxed);
        tracing::debug!(backend = %backend.addr, ?reason, "connect failed");
        let fd = c.server;
        c.server = -1;
        c.backend = None;
        // Nothing else uses this descriptor: the linked timeout is not bound to it.
        self.ring
            .close(fd, conn::user_data(slot as u32, 0, Op::Close));
        self.connect_next(slot);
    }

    /// Sends the rest of the PROXY header, or starts relaying once it is out.
    fn on_header(&mut self, slot: usize, res: i32) {
        self.done_op(slot);
        let c = self.conn(slot);
        if c.phase == Phase::Closing {
            return;
        }
        if res <= 0 {
            self.teardown(slot);
            return;
        }
        c.header_sent += res as u8;
        if c.header_sent < c.header_len {
            // A partial send of a ~100-byte header: resend the rest (rare, but legal).
            let mut hdr = [0u8; HEADER_MAX];
            let version = c.listener.proxy_protocol;
            let (from, to) = (sys::peer_addr(c.client), sys::local_addr(c.client));
            let (Some(from), Some(to)) = (from, to) else {
                return self.teardown(slot);
            };
            let n = conn::proxy_header(version, from, to, &mut hdr);
            let (sent, server) = (c.header_sent as usize, c.server);
            c.inflight += 1;
            let ud = self.ud(slot, Op::Header);
            self.ring.send_header(server, slot, &hdr[sent..n], ud);
            return;
        }
        self.start_relay(slot);
    }

    fn start_relay(&mut self, slot: usize) {
        self.conn(slot).phase = Phase::Relaying;
        self.arm_recv(slot, TO_BACKEND);
        self.arm_recv(slot, TO_CLIENT);
    }

    // ---- relaying -----------------------------------------------------------------------

    fn arm_recv(&mut self, slot: usize, dir: usize) {
        let ud = self.ud(slot, Op::recv(dir));
        // Where the kernel caps multishot recvs: this arming may take an eighth of the
        // buffers free now (2 to 32). Backpressure (the cancel at HIGH_WATER) still paces a
        // stream whose reader keeps up; the cap bounds what lands before the cancel does.
        // Without it one socket with megabytes waiting fills buffer after buffer within a
        // single io_uring_enter. With it a burst leaves at least 7/8 of what was free, so
        // dozens of stalled readers still leave buffers for everyone else, and as the pool
        // fills the bursts shrink to 2 buffers.
        let free = (self.ring.buffer_count() as u32).saturating_sub(self.held);
        let cap = (free / 8).clamp(RECV_CAP_MIN, RECV_CAP_MAX);
        let c = self.conn(slot);
        let fd = c.source(dir);
        c.dirs[dir].recv = Recv::Armed;
        c.inflight += 1;
        self.ring.recv_multi(fd, ud, cap);
    }

    /// Arms a direction's recv again if it is idle, not at EOF, and its queue has room.
    fn rearm_if_ready(&mut self, slot: usize, dir: usize) {
        let c = self.conn(slot);
        let d = &c.dirs[dir];
        if c.phase == Phase::Relaying && d.recv == Recv::Idle && !d.eof && d.queued < LOW_WATER {
            self.arm_recv(slot, dir);
        }
    }

    fn on_recv(&mut self, slot: usize, dir: usize, cqe: Cqe) {
        let more = cqe.more();
        let now = self.now;
        if !more {
            let c = self.conn(slot);
            c.inflight -= 1;
            c.dirs[dir].recv = Recv::Idle;
        }
        if cqe.result > 0 {
            let bid = cqe.buffer().expect("a recv with data names its buffer");
            if self.conn(slot).phase == Phase::Closing {
                self.ring.recycle(bid);
                return;
            }
            self.enqueue(slot, dir, bid, cqe.result as u32);
            let c = self.conn(slot);
            c.last_active = now;
            if !c.dirs[dir].sending {
                self.send_head(slot, dir);
            }
            let c = self.conn(slot);
            if more && c.dirs[dir].recv == Recv::Armed && c.dirs[dir].queued >= HIGH_WATER {
                // Backpressure: the other side is not taking bytes as fast as they come.
                c.dirs[dir].recv = Recv::Cancelling;
                c.inflight += 1;
                let (target, ud) = (self.ud(slot, Op::recv(dir)), self.ud(slot, Op::Cancel));
                self.ring.cancel(target, ud);
            }
            if !more {
                self.rearm_if_ready(slot, dir);
            }
            return;
        }
        if more {
            return;
        }
        if self.conn(slot).phase == Phase::Closing {
            return;
        }
        match -cqe.result {
            0 => {
                // EOF from the source: once its queue is sent, shut the destination's write
                // side (or close, if the other direction is already done).
                self.conn(slot).dirs[dir].eof = true;
                self.finish_if_drained(slot, dir);
            }
            libc::ENOBUFS => {
                self.shared.buffer_ring_exhausted.fetch_add(1, Relaxed);
                self.conn(slot).dirs[dir].recv = Recv::Parked;
                self.parked.push((slot as u32, self.gens[slot], dir as u8));
            }
            libc::ECANCELED => self.rearm_if_ready(slot, dir),
            _ => self.teardown(slot),
        }
    }

    /// Appends buffer `bid` (holding `n` bytes) to a direction's send queue.
    fn enqueue(&mut self, slot: usize, dir: usize, bid: u16, n: u32) {
        self.next[bid as usize] = NO_BUF;
        self.len[bid as usize] = n;
        self.held += 1;
        let next = &mut self.next;
        let d = &mut self.conns[slot].as_mut().expect("live connection").dirs[dir];
        if d.tail == NO_BUF {
            d.head = bid;
        } else {
            next[d.tail as usize] = bid;
        }
        d.tail = bid;
        d.queued += 1;
    }

    fn send_head(&mut self, slot: usize, dir: usize) {
        let ud = self.ud(slot, Op::send(dir));
        let c = self.conns[slot].as_mut().expect("live connection");
        let fd = c.dest(dir);
        let d = &mut c.dirs[dir];
        let bid = d.head;
        debug_assert!(bid != NO_BUF && !d.sending);
        d.sending = true;
        c.inflight += 1;
        let len = self.len[bid as usize] - d.offset;
        let offset = d.offset;
        self.ring.send_buffer(fd, bid, offset, len, ud);
    }

    fn on_send(&mut self, slot: usize, dir: usize, res: i32) {
        let now = self.now;
        let c = self.conns[slot].as_mut().expect("live connection");
        c.inflight -= 1;
        let d = &mut c.dirs[dir];
        d.sending = false;
        if c.phase == Phase::Closing {
            return;
        }
        if res <= 0 {
            // EPIPE/ECONNRESET: the destination is gone.
            return self.teardown(slot);
        }
        c.last_active = now;
        d.offset += res as u32;
        d.unflushed += res as u64;
        let bid = d.head;
        if d.offset == self.len[bid as usize] {
            d.head = self.next[bid as usize];
            if d.head == NO_BUF {
                d.tail = NO_BUF;
            }
            d.queued -= 1;
            d.offset = 0;
            self.held -= 1;
            self.ring.recycle(bid);
        }
        if d.unflushed >= FLUSH_BYTES {
            if let Some(b) = &c.backend {
                b.stats.bytes[dir].fetch_add(d.unflushed, Relaxed);
            }
            d.unflushed = 0;
        }
        if d.head != NO_BUF {
            self.send_head(slot, dir);
        } else {
            self.finish_if_drained(slot, dir);
        }
        self.rearm_if_ready(slot, dir);
    }

    /// A direction whose source hit EOF and whose queue is empty is finished: shut the
    /// destination's write side, or, if the other direction is already finished, close the
    /// connection outright (the close sends the FIN; a second shutdown would be wasted).
    fn finish_if_drained(&mut self, slot: usize, dir: usize) {
        let c = self.conn(slot);
        let d = &c.dirs[dir];
        if !d.eof || d.done || d.head != NO_BUF || d.sending {
            return;
        }
        c.dirs[dir].done = true;
        if c.dirs[1 - dir].done {
            return self.teardown(slot);
        }
        // A plain shutdown(2), not IORING_OP_SHUTDOWN: io_uring always hands that op to an
        // io-wq thread (REQ_F_FORCE_ASYNC), a thread hop per connection; the syscall never
        // blocks. An error (the peer already reset) changes nothing here.
        sys::shutdown_write(c.dest(dir));
    }

    /// Gives buffers back to connections parked on ENOBUFS, oldest first, as many as there
    /// are free buffers (each re-armed recv takes at least one). Waiting for a larger share
    /// to come back could wait for ever: directions whose readers have stalled keep theirs.
    fn wake_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let mut free = (self.ring.buffer_count() as u32).saturating_sub(self.held);
        if free == 0 {
            return;
        }
        let mut parked = std::mem::take(&mut self.parked);
        let mut woken = 0;
        for &(slot, gen_, dir) in &parked {
            if free == 0 {
                break;
            }
            woken += 1;
            let (slot, dir) = (slot as usize, dir as usize);
            let ok = matches!(&self.conns[slot], Some(c) if c.gen_ == gen_ && c.dirs[dir].recv == Recv::Parked);
            if ok {
                self.conn(slot).dirs[dir].recv = Recv::Idle;
                self.rearm_if_ready(slot, dir);
                free -= 1;
            }
        }
        parked.drain(..woken);
        // Anything parked meanwhile (nothing is, in this loop) goes after those still waiting.
        parked.append(&mut self.parked);
        self.parked = parked;
    }

    // ---- closing ------------------------------------------------------------------------

    /// Ends a connection: cancels what is in flight that could wait on a peer. The slot is
    /// released (descriptors closed, buffers recycled) once the last completion is in.
    ///
    /// Cancels go by user data, one per request: the kernel finds each with a hash lookup,
    /// where cancelling everything on a descriptor walks the ring's whole poll table (with
    /// `Connection: close` load that walk was ~1.5-2% of the worker's perf samples).
    fn teardown(&mut self, slot: usize) {
        let c = self.conn(slot);
        if c.phase == Phase::Closing {
            return;
        }
        let phase = c.phase;
        c.phase = Phase::Closing;
        if c.inflight == 0 {
            return;
        }
        let [d0, d1] = &c.dirs;
        // A recv already being cancelled (backpressure) ends by itself; cancelling the
        // connect also ends its linked timeout.
        let pending = [
            (phase == Phase::Connecting, Op::Connect),
            (phase == Phase::Header, Op::Header),
            (d0.recv == Recv::Armed, Op::recv(0)),
            (d0.sending, Op::send(0)),
            (d1.recv == Recv::Armed, Op::recv(1)),
            (d1.sending, Op::send(1)),
        ];
        let cancel = self.ud(slot, Op::Cancel);
        for (_, op) in pending.into_iter().filter(|&(wanted, _)| wanted) {
            let target = self.ud(slot, op);
            self.conn(slot).inflight += 1;
            self.ring.cancel(target, cancel);
        }
    }

    fn release_if_idle(&mut self, slot: usize) {
        let Some(c) = &self.conns[slot] else { return };
        if c.phase != Phase::Closing || c.inflight != 0 {
            return;
        }
        let c = self.conns[slot].take().expect("live connection");
        for (dir, d) in c.dirs.iter().enumerate() {
            let mut bid = d.head;
            while bid != NO_BUF {
                let next = self.next[bid as usize];
                self.ring.recycle(bid);
                self.held -= 1;
                bid = next;
            }
            if let Some(b) = &c.backend {
                b.stats.bytes[dir].fetch_add(d.unflushed, Relaxed);
            }
        }
        let close = conn::user_data(slot as u32, 0, Op::Close);
        self.ring.close(c.client, close);
        if c.server >= 0 {
            self.ring.close(c.server, close);
        }
        if let Some(b) = &c.backend {
            b.stats.active.fetch_sub(1, Relaxed);
        }
        c.listener.stats.active.fetch_sub(1, Relaxed);
        c.listener
            .connection_duration
            .record(c.accepted_at.elapsed().as_secs_f64());
        self.shared.worker_connections[self.id].fetch_sub(1, Relaxed);
        self.free.push(slot as u32);
        self.live -= 1;
    }

    /// The relay's invariant, checked every tick: a live direction is armed, being
    /// cancelled, parked for buffers, held by backpressure (bytes queued or a send in
    /// flight), or finished. One that is none of these would never read again: its peer
    /// would wait for ever while its bytes sit unread in the kernel. A debug build stops on
    /// it; a release build counts it (`ringlb_relay_repairs_total`), logs it, and re-arms.
    fn check_directions(&mut self, slot: usize) {
        let id = self.id;
        for dir in [TO_BACKEND, TO_CLIENT] {
            let d = self.conn(slot).dirs[dir];
            let lost = d.recv == Recv::Idle && d.queued == 0 && !d.sending && !d.eof && !d.done;
            if lost {
                debug_assert!(
                    false,
                    "worker {id}: slot {slot} direction {dir} is neither armed, parked, held nor done: {d:?}"
                );
                tracing::error!(worker = id, slot, dir, state = ?d, "a relay direction was left unarmed: re-arming it");
                self.shared.relay_repairs.fetch_add(1, Relaxed);
                self.arm_recv(slot, dir);
            }
        }
    }

    // ---- timer --------------------------------------------------------------------------

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
                    AcceptState::Cancelling => {}
                }
            }
        }
        // Accepts paused for EMFILE or max_connections resume when they may.
        let snap = self.shared.snapshot.load();
        self.ring.set_busy_poll(snap.busy_poll);
        for i in 0..self.listening.len() {
            let l = &self.listening[i];
            if l.state != AcceptState::Idle || self.now < l.paused_until {
                continue;
            }
            let listener = &snap.listeners[i];
            let max = listener.max_connections as i64;
            if max == 0 || listener.stats.active.load(Relaxed) < max {
                self.arm_accept(i);
            }
        }
        drop(snap);
        // Idle timeouts.
        let tick_ms = TICK.as_millis() as u64;
        for slot in 0..self.conns.len() {
            let Some(c) = &self.conns[slot] else { continue };
            if c.backend.as_ref().is_some_and(|b| b.is_removed()) {
                // Its backend was removed (a drain that timed out): close what remains.
                self.teardown(slot);
                self.release_if_idle(slot);
                continue;
            }
            if c.phase != Phase::Relaying {
                continue;
            }
            self.check_directions(slot);
            let Some(c) = &self.conns[slot] else { continue };
            let idle_ms = (self.now - c.last_active) as u64 * tick_ms;
            if idle_ms >= c.listener.idle_timeout.as_millis() as u64 {
                tracing::debug!(worker = self.id, slot, "idle timeout");
                self.teardown(slot);
                self.release_if_idle(slot);
            }
        }
    }
}
