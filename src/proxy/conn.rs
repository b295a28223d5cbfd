//! One proxied connection: its state, its two relay directions, and how operations on it
//! are named in io_uring user data.
//!
//! Owns: the per-connection state machine's data (phase, in-flight count, the two
//! [`Dir`]ections with their send queues) and the PROXY protocol header. The transitions
//! themselves run in `worker.rs`, which owns the ring.
//! Must not touch: the ring, or anything shared but the `Arc`s it holds.

use crate::backend::{Backend, Listener, Pool};
use crate::config::{MAX_RETRIES, ProxyProtocol};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

/// "No buffer" in the intrusive buffer queues.
pub const NO_BUF: u16 = u16::MAX;

/// Direction 0 carries client bytes to the backend; direction 1 backend bytes to the client.
pub const TO_BACKEND: usize = 0;
pub const TO_CLIENT: usize = 1;

/// What a completion is about: the low byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Tick = 2,
    /// recv on the client (direction 0's source)
    RecvClient = 3,
    /// recv on the backend (direction 1's source)
    RecvBackend = 4,
    /// send to the backend (direction 0)
    SendBackend = 5,
    /// send to the client (direction 1)
    SendClient = 6,
    Connect = 9,
    ConnectTimeout = 10,
    Cancel = 11,
    /// close of a connection's descriptor: not tracked
    Close = 12,
    /// the PROXY protocol header sent to the backend
    Header = 13,
    /// cancel of a listener's accept: not tracked
    AcceptCancel = 14,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        Some(match v {
            1 => Accept,
            2 => Tick,
            3 => RecvClient,
            4 => RecvBackend,
            5 => SendBackend,
            6 => SendClient,
            9 => Connect,
            10 => ConnectTimeout,
            11 => Cancel,
            12 => Close,
            13 => Header,
            14 => AcceptCancel,
            _ => return None,
        })
    }
    pub fn recv(dir: usize) -> Op {
        if dir == TO_BACKEND {
            Op::RecvClient
        } else {
            Op::RecvBackend
        }
    }
    pub fn send(dir: usize) -> Op {
        if dir == TO_BACKEND {
            Op::SendBackend
        } else {
            Op::SendClient
        }
    }
}

/// User data: slot (32 bits) | generation (16 bits) | unused (8) | op (8).
#[inline]
pub fn user_data(slot: u32, gen_: u16, op: Op) -> u64 {
    (slot as u64) << 32 | (gen_ as u64) << 16 | op as u64
}

#[inline]
pub fn decode(ud: u64) -> (u32, u16, u8) {
    ((ud >> 32) as u32, (ud >> 16) as u16, ud as u8)
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
/// received buffers between them (an intrusive FIFO threaded through the worker's per-buffer
/// `next` array, so it costs no allocation and grows as far as the ring has buffers).
#[derive(Debug, Clone, Copy)]
pub struct Dir {
    pub recv: Recv,
    /// A send is in flight (at most one per direction, so bytes keep their order).
    pub sending: bool,
    /// The source sent EOF.
    pub eof: bool,
    /// All bytes relayed and the destination's write side shut (or the connection closing).
    pub done: bool,
    pub head: u16,
    pub tail: u16,
    pub queued: u16,
    /// Bytes of the head buffer already sent (partial sends).
    pub offset: u32,
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
            head: NO_BUF,
            tail: NO_BUF,
            queued: 0,
            offset: 0,
            unflushed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to a backend (maybe a retry).
    Connecting,
    /// Connected; sending the PROXY header before relaying.
    Header,
    Relaying,
    /// Cancelling what is in flight; released when nothing is.
    Closing,
}

pub struct Conn {
    pub gen_: u16,
    /// Requests in flight that name this connection; the slot is released only at zero, so
    /// no completion ever finds its slot reused.
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
    /// Worker tick of the last relayed bytes (idle timeout).
    pub last_active: u32,
    pub dirs: [Dir; 2],
    /// PROXY header: total length and bytes sent so far.
    pub header_len: u8,
    pub header_sent: u8,
    /// When the client was accepted, and when the current connect attempt began.
    pub accepted_at: std::time::Instant,
    pub connect_started: std::time::Instant,
}

impl Conn {
    pub fn tried(&self) -> &[u32] {
        &self.tried[..self.ntried as usize]
    }
    /// The descriptor a direction reads from.
    pub fn source(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.client
        } else {
            self.server
        }
    }
    /// The descriptor a direction writes to.
    pub fn dest(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.server
        } else {
            self.client
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
    fn user_data_round_trips() {
        let ud = user_data(123_456, 65_000, Op::SendClient);
        assert_eq!(decode(ud), (123_456, 65_000, Op::SendClient as u8));
        assert_eq!(Op::from_u8(Op::Header as u8), Some(Op::Header));
    }

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
