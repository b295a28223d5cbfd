//! One proxied connection: its stage, its two relay directions, and the PROXY header.
//!
//! Owns: the per-connection data (phase, in-flight count, the two [`Dir`]ections with their
//! buffer queues, what inspection and the queue need). The transitions run in the stage
//! files (`accept.rs`, `inspect.rs`, `connect.rs`, `relay.rs`, `close.rs`), which own the
//! ring through the worker.
//! Must not touch: the ring, or anything shared but the `Arc`s it holds.

use super::bufqueue::BufQueue;
use super::op::Op;
use crate::backend::Backend;
use crate::config::{MAX_RETRIES, ProxyProtocol};
use crate::snapshot::{Listener, Pool};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

/// A relay direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client bytes to the backend.
    ToBackend = 0,
    /// Backend bytes to the client.
    ToClient = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::ToBackend, Side::ToClient];
    pub fn other(self) -> Side {
        match self {
            Side::ToBackend => Side::ToClient,
            Side::ToClient => Side::ToBackend,
        }
    }
    /// The recv that feeds this direction.
    pub fn recv_op(self) -> Op {
        match self {
            Side::ToBackend => Op::RecvClient,
            Side::ToClient => Op::RecvBackend,
        }
    }
    /// How the connection ended if the side this direction reads from fails.
    pub fn source_end_error(self) -> crate::accesslog::End {
        match self {
            Side::ToBackend => crate::accesslog::End::ClientError,
            Side::ToClient => crate::accesslog::End::BackendError,
        }
    }
    /// The send that empties this direction.
    pub fn send_op(self) -> Op {
        match self {
            Side::ToBackend => Op::SendBackend,
            Side::ToClient => Op::SendClient,
        }
    }
}

/// The state of a multishot recv on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Not armed (not yet, backpressure, or EOF).
    Idle,
    Armed,
    /// Cancelled for backpressure; completions keep coming until the final one.
    Cancelling,
    /// Ended with ENOBUFS: waiting for buffers to come back to the ring.
    Parked,
}

/// One relay direction: a recv on the source side, sends to the other side, and the queue of
/// received buffers between them.
#[derive(Debug, Clone, Copy)]
pub struct Dir {
    pub recv: Recv,
    /// A send is in flight (at most one per direction, so bytes keep their order).
    pub sending: bool,
    /// The source sent EOF.
    pub eof: bool,
    /// All bytes relayed and the destination's write side shut (or the connection closing).
    pub done: bool,
    pub queue: BufQueue,
    /// Bytes sent and not yet folded into the backend's counters.
    pub unflushed: u64,
}

impl Default for Dir {
    fn default() -> Self {
        Self::new()
    }
}

impl Dir {
    pub const fn new() -> Dir {
        Dir {
            recv: Recv::Idle,
            sending: false,
            eof: false,
            done: false,
            queue: BufQueue::new(),
            unflushed: 0,
        }
    }
}

/// A connection's stage, with what only that stage needs: a field of one stage cannot be
/// read or left behind in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the PROXY header a front balancer sends first; `peeked`: the bytes the
    /// client had sent at the last look.
    ProxyHeader {
        peeked: u16,
    },
    /// Waiting for the client's first bytes to pick a pool by SNI; `peeked` as above.
    Inspecting {
        peeked: u16,
    },
    /// Every candidate backend is at its `max_connections`: waiting in the pool's queue
    /// with this ticket (see `queue.rs`).
    Queued {
        ticket: u64,
    },
    /// Connecting to a backend (maybe a retry).
    Connecting,
    /// Connected; sending the PROXY header (`len` bytes, `sent` so far) before relaying.
    Header {
        len: u8,
        sent: u8,
    },
    Relaying,
    /// Cancelling what is in flight; released when nothing is.
    Closing,
}

pub struct Conn {
    pub gen_: u16,
    /// Requests in flight that name this connection (see `table.rs`).
    pub inflight: u16,
    pub phase: Phase,
    pub client: RawFd,
    /// -1 until a backend socket exists.
    pub server: RawFd,
    pub listener: Arc<Listener>,
    pub pool: Arc<Pool>,
    pub backend: Option<Arc<Backend>>,
    pub tried: [u32; MAX_RETRIES as usize + 1],
    pub ntried: u8,
    pub key: u64,
    /// Worker tick of the last relayed bytes (idle timeout), or of the accept.
    pub last_active: u32,
    pub dirs: [Dir; 2],
    /// Why it ended (the first reason given wins), for the access log.
    pub end: Option<crate::accesslog::End>,
    /// One side failed (reset, or an error) while relaying: the other is reset at the
    /// close too (see `close.rs`, [`Worker::abort`](super::worker::Worker)).
    pub reset: bool,
    /// Its listener writes an access log: the worker keeps a [`LogInfo`] for this slot.
    pub logged: bool,
    /// The (client, destination) a PROXY header gave (boxed: only listeners that accept
    /// PROXY pay for it).
    pub proxied: Option<Box<(SocketAddr, SocketAddr)>>,
    /// Its entry in the listener's per-source table ([`NO_SOURCE`]: not counted there).
    pub source_slot: u32,
    /// Worker tick of the accept (`max_connection_age`).
    pub born: u32,
    /// When the client was accepted, and when the current connect attempt (or the wait in
    /// the queue) began.
    pub accepted_at: std::time::Instant,
    pub connect_started: std::time::Instant,
}

/// What the access log needs beyond the connection itself, kept only for the connections
/// of listeners that log (a side table indexed by slot, so connections of listeners that do
/// not log cost nothing for it).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogInfo {
    pub client: Option<SocketAddr>,
    /// Bytes `[to backend, to client]`.
    pub bytes: [u64; 2],
    pub connect_us: u32,
}

/// `source_slot` of a connection the per-source table does not count.
pub const NO_SOURCE: u32 = u32::MAX;

impl Conn {
    /// The client's address: the PROXY header's, else the socket's peer (a syscall).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        match &self.proxied {
            Some(p) => Some(p.0),
            None => crate::sys::peer_addr(self.client),
        }
    }
    pub fn tried(&self) -> &[u32] {
        &self.tried[..self.ntried as usize]
    }
    pub fn dir(&mut self, side: Side) -> &mut Dir {
        &mut self.dirs[side as usize]
    }
    /// The descriptor a direction reads from.
    pub fn source(&self, side: Side) -> RawFd {
        match side {
            Side::ToBackend => self.client,
            Side::ToClient => self.server,
        }
    }
    /// The descriptor a direction writes to.
    pub fn dest(&self, side: Side) -> RawFd {
        match side {
            Side::ToBackend => self.server,
            Side::ToClient => self.client,
        }
    }
}

/// Builds the PROXY protocol header (v1 text or v2 binary) for a connection from `client`
/// to `local`; returns its length in `out`.
pub fn proxy_header(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    out: &mut [u8; crate::proxy::ring::HEADER_MAX],
) -> usize {
    use std::io::Write;
    // Mixed families (a v4 client on a v6 listener) are written as v6.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(l),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
        ),
        pair => pair,
    };
    match version {
        ProxyProtocol::Off => 0,
        ProxyProtocol::V1 => {
            let fam = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut cur = std::io::Cursor::new(&mut out[..]);
            let _ = write!(
                cur,
                "PROXY {fam} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            );
            cur.position() as usize
        }
        ProxyProtocol::V2 => {
            const SIG: [u8; 12] = [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            ];
            out[..12].copy_from_slice(&SIG);
            out[12] = 0x21; // version 2, PROXY command
            let mut n = 16;
            match (client, local) {
                (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                    out[13] = 0x11; // AF_INET, STREAM
                    out[n..n + 4].copy_from_slice(&c.ip().octets());
                    out[n + 4..n + 8].copy_from_slice(&l.ip().octets());
                    n += 8;
                }
                (SocketAddr::V6(c), SocketAddr::V6(l)) => {
                    out[13] = 0x21; // AF_INET6, STREAM
                    out[n..n + 16].copy_from_slice(&c.ip().octets());
                    out[n + 16..n + 32].copy_from_slice(&l.ip().octets());
                    n += 32;
                }
                _ => unreachable!("families were matched above"),
            }
            out[n..n + 2].copy_from_slice(&client.port().to_be_bytes());
            out[n + 2..n + 4].copy_from_slice(&local.port().to_be_bytes());
            n += 4;
            out[14..16].copy_from_slice(&((n - 16) as u16).to_be_bytes());
            n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers() {
        let mut buf = [0u8; crate::proxy::ring::HEADER_MAX];
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let n = proxy_header(ProxyProtocol::V1, c, l, &mut buf);
        assert_eq!(&buf[..n], b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 8000\r\n");
        let n = proxy_header(ProxyProtocol::V2, c, l, &mut buf);
        assert_eq!(n, 28);
        assert_eq!(&buf[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&buf[16..20], &[192, 0, 2, 1]);
        assert_eq!(&buf[24..26], &5000u16.to_be_bytes());
        let c6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let n = proxy_header(ProxyProtocol::V1, c6, l, &mut buf);
        assert_eq!(
            &buf[..n],
            b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 5000 8000\r\n"
        );
        assert!(n <= 107);
    }
}
