//! Accept and admission: the listeners' multishot accepts, and what a new connection must
//! pass before any backend work (the descriptor budget, the listener's `max_connections`,
//! its source allow/deny and per-source limits). An admitted connection goes on to its pool
//! (`queue.rs`), through `accept_proxy.rs` and `inspect.rs` first where its listener asks.
//!
//! Owns: the accept state of each listening socket, pausing and resuming accepts, and the
//! creation of a connection's slot.
//! Must not touch: backend sockets (that begins in `connect.rs`); a queued client has
//! nothing in flight and nothing read.

use super::accept_proxy::ProxyHeaderError;
use super::conn::{Conn, Dir, LogInfo, NO_SOURCE, Phase};
use super::op::{Op, user_data};
use super::ring::Cqe;
use super::worker::{AcceptState, Worker};
use crate::accesslog::End;
use crate::sys;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Ticks to wait before accepting again after EMFILE/ENFILE.
const ACCEPT_PAUSE_TICKS: u32 = 2;

/// An accept on listening socket `li` completed: admit the connection (or pause accepting
/// when out of descriptors), and re-arm the accept if it ended.
pub(super) fn on_accept(w: &mut Worker, li: usize, c: Cqe) {
    if w.stopping && !c.more() {
        return w.on_last_accept(li, c.result);
    }
    if !c.more() {
        w.listening[li].state = AcceptState::Idle;
    }
    if c.result < 0 {
        let err = -c.result;
        if matches!(
            err,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            // Out of descriptors or memory: pause accepting for a couple of ticks rather
            // than spin on an error that only time (closing connections) can cure.
            w.listening[li].paused_until = w.now + ACCEPT_PAUSE_TICKS;
            w.cancel_accept(li);
            if w.accept_warned < 1 {
                tracing::warn!(worker = w.id, error = %std::io::Error::from_raw_os_error(err), "accept failed: pausing accepts");
            }
            w.accept_warned += 1;
        } else if err != libc::ECANCELED {
            tracing::warn!(worker = w.id, error = %std::io::Error::from_raw_os_error(err), "accept failed");
        }
        if w.listening[li].state == AcceptState::Idle && w.now >= w.listening[li].paused_until {
            w.arm_accept(li);
        }
        return;
    }
    // Accepted while stopping (the accept's cancel had not landed yet): the kernel
    // completed this handshake and the client may have sent its request already, so it
    // is served like the connections that came before, not closed unanswered.
    w.admit(li, w.listening[li].listener, c.result);
    if w.listening[li].state == AcceptState::Idle && w.now >= w.listening[li].paused_until {
        w.arm_accept(li);
    }
}

impl Worker {
    pub(super) fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listening[i];
        if let Some(s) = &l.socket
            && l.state == AcceptState::Idle
            && !self.stopping
        {
            self.ring
                .accept_multi(s.as_raw_fd(), user_data(i as u32, 0, Op::Accept));
            l.state = AcceptState::Armed;
        }
    }

    pub(super) fn cancel_accept(&mut self, i: usize) {
        if self.listening[i].state == AcceptState::Armed {
            self.ring.cancel(
                user_data(i as u32, 0, Op::Accept),
                user_data(i as u32, 0, Op::AcceptCancel),
            );
            self.listening[i].state = AcceptState::Cancelling;
        }
    }

    /// Stops accepting on every listener for a couple of ticks (out of descriptors): the
    /// tick re-arms them.
    pub(super) fn pause_accepting(&mut self) {
        for i in 0..self.listening.len() {
            self.listening[i].paused_until = self.now + ACCEPT_PAUSE_TICKS;
            self.cancel_accept(i);
        }
    }

    /// Accepts paused for EMFILE or max_connections resume when they may (every tick).
    pub(super) fn resume_accepts(&mut self) {
        let snap = self.shared.snapshot.load();
        for i in 0..self.listening.len() {
            let l = &self.listening[i];
            if l.state != AcceptState::Idle || self.now < l.paused_until {
                continue;
            }
            if below_max(&snap.listeners[l.listener]) {
                self.arm_accept(i);
            }
        }
    }

    /// Stopping, and an accept on listening socket `li` ended: its armed accept (cancelled),
    /// or one of the drain's accepts that never wait. What the socket's queue already holds
    /// is taken before the socket is closed, one accept at a time, until the queue is empty
    /// (-EAGAIN), `backlog` are taken, or the listener is full.
    ///
    /// Why: a listening socket wakes one of the accepts waiting on it (io_uring arms accepts
    /// as exclusive waiters, as EPOLLEXCLUSIVE). When an upgrade hands the sockets over, the
    /// old and the new process both wait on each one; if a client arrives just before the
    /// old process's cancel lands, the wakeup goes to the old process, the cancel discards
    /// it, and the new process is never woken: that client would wait in the queue until
    /// the next one arrives. The drain takes it instead. Its accepts never wait, so they
    /// never take a wakeup from the new process.
    fn on_last_accept(&mut self, li: usize, result: i32) {
        let draining = self.listening[li].state == AcceptState::Draining;
        if result >= 0 {
            self.admit(li, self.listening[li].listener, result);
        } else if draining && !matches!(-result, libc::EAGAIN | libc::ECONNABORTED) {
            // -EINVAL: a kernel before 6.10 (no IORING_ACCEPT_DONTWAIT); the socket closes
            // as it did before the drain existed.
            tracing::debug!(worker = self.id, error = %std::io::Error::from_raw_os_error(-result), "stop: cannot drain the accept queue");
        }
        // A client that reset while queued (ECONNABORTED) ends no drain: others may follow it.
        let go_on =
            (result >= 0 || !draining || result == -libc::ECONNABORTED) && self.has_room(li);
        let l = &mut self.listening[li];
        match &l.socket {
            Some(s)
                if go_on
                    && l.drained < self.shared.snapshot.load().listeners[l.listener].backlog =>
            {
                l.drained += 1;
                l.state = AcceptState::Draining;
                self.ring
                    .accept_now(s.as_raw_fd(), user_data(li as u32, 0, Op::Accept));
            }
            _ => {
                // Close the socket, so the kernel sends new connections to listeners that
                // remain (a successor's, on these very sockets), or refuses them.
                l.state = AcceptState::Idle;
                l.socket = None;
            }
        }
    }

    /// Whether listener socket `li` may take one more connection: below the listener's
    /// `max_connections` and the descriptor budget.
    fn has_room(&self, li: usize) -> bool {
        below_max(&self.shared.snapshot.load().listeners[self.listening[li].listener])
            && self.shared.open_connections() < self.shared.connection_budget.load(Relaxed)
    }

    /// Admission of an accepted client: refused at once (closed, counted) when over a
    /// limit or not allowed; otherwise given a slot and sent on to inspection or connect.
    fn admit(&mut self, li: usize, listener: usize, fd: RawFd) {
        let snap = self.shared.snapshot.load();
        let listener = snap.listeners[listener].clone();
        // Without a default pool, an inspected connection holds the first pool until its
        // route is known (it is never used to connect: no route closes the connection).
        let pool = snap.pools[listener.pool.unwrap_or(0)].clone();
        drop(snap);
        let stats = &listener.stats;
        stats.connections.fetch_add(1, Relaxed);
        let active = stats.active.fetch_add(1, Relaxed) + 1;
        // The client's address: for the allow/deny rules, the per-source limits, the
        // PROXY senders' check and the access log (one getpeername, only when one of them
        // is configured).
        let logs = listener.logs();
        let proxied = listener.accept_proxy != crate::config::AcceptProxy::Off;
        let peer = if logs || !listener.acl.is_empty() || listener.sources.is_some() || proxied {
            sys::peer_addr(fd)
        } else {
            None
        };
        let budget = self.shared.connection_budget.load(Relaxed);
        if self.shared.open_connections() >= budget {
            // As many connections as descriptors allow: refuse this one and pause accepting
            // (a backend socket for it would fail anyway).
            stats.active.fetch_sub(1, Relaxed);
            stats.rejected.fetch_add(1, Relaxed);
            sys::close(fd);
            self.log_refused(&listener, peer, End::Rejected);
            self.pause_accepting();
            return;
        }
        if listener.max_connections > 0 && active > listener.max_connections as i64 {
            // Over the limit: refuse this one and stop accepting until a slot frees up (the
            // kernel's backlog holds the rest, as HAProxy's maxconn does).
            stats.active.fetch_sub(1, Relaxed);
            stats.rejected.fetch_add(1, Relaxed);
            sys::close(fd);
            self.log_refused(&listener, peer, End::Rejected);
            self.cancel_accept(li);
            return;
        }
        let mut source_slot = NO_SOURCE;
        if proxied {
            // Only the front balancers may say who the client is.
            if !peer.is_some_and(|a| listener.proxy_from.contains(a.ip())) {
                stats.active.fetch_sub(1, Relaxed);
                stats.proxy_header_errors[ProxyHeaderError::Untrusted as usize]
                    .fetch_add(1, Relaxed);
                sys::close(fd);
                self.log_refused(&listener, peer, End::ProxyHeader);
                return;
            }
        } else {
            match source_check(&listener, peer) {
                Ok(s) => source_slot = s,
                Err(end) => {
                    stats.active.fetch_sub(1, Relaxed);
                    sys::close(fd);
                    self.log_refused(&listener, peer, end);
                    return;
                }
            }
        }
        let inspect = !listener.routes.is_empty();
        let now = self.now;
        let slot = self.conns.insert(|gen_| Conn {
            gen_,
            inflight: 0,
            phase: if proxied {
                Phase::ProxyHeader { peeked: 0 }
            } else if inspect {
                Phase::Inspecting { peeked: 0 }
            } else {
                Phase::Connecting
            },
            client: fd,
            server: -1,
            listener,
            pool,
            backend: None,
            tried: [0; crate::config::MAX_RETRIES as usize + 1],
            ntried: 0,
            key: 0,
            last_active: now,
            dirs: [Dir::new(), Dir::new()],
            end: None,
            reset: false,
            logged: logs,
            proxied: None,
            source_slot,
            born: now,
            accepted_at: std::time::Instant::now(),
            connect_started: std::time::Instant::now(),
        });
        self.shared.worker_connections[self.id].fetch_add(1, Relaxed);
        if logs {
            if self.logs.len() <= slot {
                self.logs.resize(slot + 1, LogInfo::default());
            }
            self.logs[slot] = LogInfo {
                client: peer,
                ..LogInfo::default()
            };
        }
        if proxied {
            self.read_proxy_header(slot);
        } else {
            self.route(slot);
        }
        self.release_if_idle(slot);
    }

    /// Admitted: to inspection when the listener routes by SNI, else to its pool.
    fn route(&mut self, slot: usize) {
        if self.conns.get(slot).listener.routes.is_empty() {
            self.enter_pool(slot);
        } else {
            self.inspect(slot);
        }
    }

    /// The PROXY header named the client: the allow/deny rules and the per-source limits
    /// apply to that address, then the connection goes on as any other.
    pub(super) fn admit_source(&mut self, slot: usize) {
        let c = self.conns.get(slot);
        let client = c.client_addr();
        match source_check(&c.listener, client) {
            Ok(s) => {
                c.source_slot = s;
                self.route(slot);
            }
            Err(end) => self.teardown(slot, end),
        }
    }

    /// A client refused before it had a slot, in the access log.
    #[cold]
    fn log_refused(
        &mut self,
        listener: &Arc<crate::snapshot::Listener>,
        client: Option<std::net::SocketAddr>,
        end: End,
    ) {
        if !listener.logs() {
            return;
        }
        if let Some(q) = self.shared.access_log.get() {
            q.push(
                self.id,
                crate::accesslog::Record {
                    start_ms: crate::backend::unix_now_ms(),
                    log: listener.log.clone(),
                    client,
                    pool: None,
                    backend: None,
                    attempts: 0,
                    connect_us: 0,
                    duration_us: 0,
                    bytes: [0, 0],
                    end,
                },
            );
        }
    }
}

/// Whether `listener` is below its `max_connections` (0: no limit).
fn below_max(listener: &crate::snapshot::Listener) -> bool {
    let max = listener.max_connections as i64;
    max == 0 || listener.stats.active.load(Relaxed) < max
}

/// The allow/deny rules and the per-source limits for a client at `addr` (None: its address
/// could not be read, as when it reset already: refused wherever a rule needs it). Counts
/// what it refuses; on success, the per-source entry to release at close.
fn source_check(
    listener: &crate::snapshot::Listener,
    addr: Option<std::net::SocketAddr>,
) -> Result<u32, End> {
    let stats = &listener.stats;
    if !listener.acl.is_empty() && !addr.is_some_and(|a| listener.acl.admits(a.ip())) {
        stats.denied.fetch_add(1, Relaxed);
        return Err(End::Denied);
    }
    let Some(table) = &listener.sources else {
        return Ok(NO_SOURCE);
    };
    let Some(addr) = addr else {
        stats.denied.fetch_add(1, Relaxed);
        return Err(End::Denied);
    };
    table.acquire(addr.ip(), table.now_us()).map_err(|why| {
        stats.source_limited[why as usize].fetch_add(1, Relaxed);
        End::SourceLimited
    })
}
