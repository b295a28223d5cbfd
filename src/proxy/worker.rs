//! One worker's state: a thread with its own io_uring ring and its own SO_REUSEPORT
//! listening socket per listener, running every connection it accepts from accept to close.
//! The loop that drives it is `event_loop.rs`, which names the stage rooms in the order of a
//! connection's life; each stage is a room of its own over this state.
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
use super::conn::Side;
use super::ring::Ring;
use super::table::ConnTable;
use crate::snapshot::Shared;
use crate::sys;
use std::sync::Arc;

/// The largest registered file table a ring mirrors its sockets into; descriptors numbered
/// above it take the plain path.
const FIXED_FILES_MAX: u64 = 1 << 16;

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
    /// Warnings of this kind already logged this second.
    pub(super) accept_warned: u32,
    /// The tick's finds for rebalancing: (accept tick, slot), kept to reuse its memory.
    pub(super) rebalance: Vec<(u32, u32)>,
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
            accept_warned: 0,
            rebalance: Vec::new(),
        })
    }

    pub(super) fn rand(&mut self) -> u64 {
        // xorshift64*: a tie-breaker, not a secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
