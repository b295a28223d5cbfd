//! Reading a PROXY protocol header (v1 or v2) that a front balancer (an AWS NLB, HAProxy's
//! `send-proxy-v2`) puts before the client's bytes.
//!
//! Done as inspection is (see `inspect.rs`): a poll with a linked timeout (the listener's
//! `inspect_timeout`), a peek at what waits, the parse by the `ppp` crate, SO_RCVLOWAT raised
//! when the header came in pieces. Once it is whole, exactly its bytes are taken off the
//! socket (one recv), so the relay and the SNI inspection after it see the client's own
//! bytes. The header's source address becomes the connection's client; only then do the
//! allow/deny rules and the per-source limits run (`accept.rs`, `admit_source`).
//!
//! Owns: the header's parse, its errors and their counters.
//! Must not touch: backends.

use super::conn::Phase;
use super::worker::Worker;
use crate::accesslog::End;
use crate::config::AcceptProxy;
use crate::sys;
use ppp::PartialResult;
use std::net::{IpAddr, SocketAddr};

/// Why a PROXY header was refused (a label of `ringlb_listener_proxy_header_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The sender is not in `proxy_protocol_from`.
    Untrusted = 0,
    /// Not a PROXY header, or a broken one.
    Malformed = 1,
    /// Not whole within `inspect_timeout`, or the sender closed first.
    Timeout = 2,
    /// A version the listener does not accept.
    Version = 3,
}

impl ProxyHeaderError {
    pub const ALL: [ProxyHeaderError; 4] = [
        ProxyHeaderError::Untrusted,
        ProxyHeaderError::Malformed,
        ProxyHeaderError::Timeout,
        ProxyHeaderError::Version,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyHeaderError::Untrusted => "untrusted",
            ProxyHeaderError::Malformed => "malformed",
            ProxyHeaderError::Timeout => "timeout",
            ProxyHeaderError::Version => "version",
        }
    }
}

/// What the bytes at the start of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Bad(ProxyHeaderError),
    /// A header of `len` bytes; `addrs` are (source, destination), `None` for `LOCAL` (a
    /// health check of the front balancer) or `UNKNOWN`: the connection's own are used.
    Header {
        len: usize,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
}

/// The longest header taken: v1 is at most 107 bytes; v2 is 16 plus its length, and this
/// bound leaves room for the TLVs an NLB or HAProxy adds.
pub const MAX_HEADER: usize = 4096;

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Parses the header at the start of `b`, accepting the versions `accept` names.
pub fn parse(b: &[u8], accept: AcceptProxy) -> Parsed {
    let v2 = V2_SIG.starts_with(&b[..b.len().min(12)]);
    let v1 = b"PROXY ".starts_with(&b[..b.len().min(6)]);
    if b.is_empty() {
        return Parsed::Incomplete;
    }
    if !v1 && !v2 {
        return Parsed::Bad(ProxyHeaderError::Malformed);
    }
    let allowed = match accept {
        AcceptProxy::Off => false,
        AcceptProxy::Any => true,
        AcceptProxy::V1 => v1,
        AcceptProxy::V2 => v2,
    };
    if !allowed {
        return Parsed::Bad(ProxyHeaderError::Version);
    }
    if v2 {
        let r = ppp::v2::Header::try_from(b);
        if r.is_incomplete() {
            return incomplete(b);
        }
        return match r {
            Ok(h) => {
                let addrs = match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => Some((
                        SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                    )),
                    (_, ppp::v2::Addresses::IPv6(a)) => Some((
                        SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                        SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                    )),
                    _ => None,
                };
                Parsed::Header {
                    len: h.len(),
                    addrs,
                }
            }
            Err(_) => Parsed::Bad(ProxyHeaderError::Malformed),
        };
    }
    // v1: the line ends at the first CRLF; ppp wants exactly the line.
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= 107 {
            Parsed::Bad(ProxyHeaderError::Malformed)
        } else {
            Parsed::Incomplete
        };
    };
    match ppp::v1::Header::try_from(&b[..end + 2]) {
        Ok(h) => {
            let addrs = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: end + 2,
                addrs,
            }
        }
        Err(_) => Parsed::Bad(ProxyHeaderError::Malformed),
    }
}

fn incomplete(b: &[u8]) -> Parsed {
    if b.len() >= MAX_HEADER {
        Parsed::Bad(ProxyHeaderError::Malformed)
    } else {
        Parsed::Incomplete
    }
}

/// The client sent bytes (or the wait timed out) while its PROXY header is awaited: parse
/// it, then admit by the address it carries and go on to inspection or the pool.
pub(super) fn on_proxy_header(w: &mut Worker, slot: usize, res: i32) {
    if w.conns.get(slot).phase == Phase::Closing {
        // Closed meanwhile (a stop's deadline): the cancelled poll says nothing more.
        return;
    }
    if res < 0 {
        return w.proxy_header_failed(slot, ProxyHeaderError::Timeout);
    }
    let c = w.conns.get(slot);
    let fd = c.client;
    let want = MAX_HEADER.min(w.peek.len());
    let n = sys::peek(fd, &mut w.peek[..want]);
    if n == -(libc::EAGAIN as isize) {
        return w.read_proxy_header(slot);
    }
    if n <= 0 {
        return w.proxy_header_failed(slot, ProxyHeaderError::Timeout);
    }
    let n = n as usize;
    let c = w.conns.get(slot);
    let Phase::ProxyHeader { peeked } = c.phase else {
        return;
    };
    match parse(&w.peek[..n], c.listener.accept_proxy) {
        Parsed::Incomplete if n <= peeked as usize => {
            // Woken with nothing new: the sender half-closed mid-header.
            w.proxy_header_failed(slot, ProxyHeaderError::Timeout)
        }
        Parsed::Incomplete => {
            sys::set_rcvlowat(fd, n as i32 + 1);
            c.phase = Phase::ProxyHeader { peeked: n as u16 };
            w.read_proxy_header(slot)
        }
        Parsed::Bad(why) => w.proxy_header_failed(slot, why),
        Parsed::Header { len, addrs } => {
            // Take exactly the header: the client's own bytes stay for what follows.
            let took = sys::recv_now(fd, &mut w.peek[..len]);
            if took != len as isize {
                return w.proxy_header_failed(slot, ProxyHeaderError::Timeout);
            }
            if peeked > 0 {
                sys::set_rcvlowat(fd, 1);
                c.phase = Phase::ProxyHeader { peeked: 0 };
            }
            if let Some(a) = addrs {
                c.proxied = Some(Box::new(a));
                if c.logged
                    && let Some(info) = w.logs.get_mut(slot)
                {
                    info.client = Some(a.0);
                }
            }
            w.admit_source(slot);
        }
    }
}

impl Worker {
    /// Starts (or continues) waiting for the PROXY header.
    pub(super) fn read_proxy_header(&mut self, slot: usize) {
        let c = self.conns.get(slot);
        if !matches!(c.phase, Phase::ProxyHeader { .. }) {
            c.phase = Phase::ProxyHeader { peeked: 0 };
        }
        if !self.poll_client(slot) {
            self.proxy_header_failed(slot, ProxyHeaderError::Timeout);
        }
    }

    fn proxy_header_failed(&mut self, slot: usize, why: ProxyHeaderError) {
        let c = self.conns.get(slot);
        c.listener.stats.proxy_header_errors[why as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(listener = %c.listener.name, reason = why.as_str(), "PROXY header refused");
        self.teardown(slot, End::ProxyHeader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versions_and_pieces() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nhello";
        let want = Some((
            "192.0.2.7:5555".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        ));
        assert_eq!(
            parse(v1, AcceptProxy::Any),
            Parsed::Header {
                len: 39,
                addrs: want
            }
        );
        assert_eq!(
            parse(v1, AcceptProxy::V2),
            Parsed::Bad(ProxyHeaderError::Version)
        );
        for cut in 1..39 {
            assert_eq!(
                parse(&v1[..cut], AcceptProxy::V1),
                Parsed::Incomplete,
                "{cut}"
            );
        }
        let mut v2 = [0u8; crate::proxy::ring::HEADER_MAX];
        let n = crate::proxy::conn::proxy_header(
            crate::config::ProxyProtocol::V2,
            "192.0.2.7:5555".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
            &mut v2,
        );
        assert_eq!(
            parse(&v2[..n], AcceptProxy::V2),
            Parsed::Header {
                len: n,
                addrs: want
            }
        );
        for cut in 1..n {
            assert_eq!(
                parse(&v2[..cut], AcceptProxy::Any),
                Parsed::Incomplete,
                "{cut}"
            );
        }
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", AcceptProxy::Any),
            Parsed::Bad(ProxyHeaderError::Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 nonsense\r\n", AcceptProxy::Any),
            Parsed::Bad(ProxyHeaderError::Malformed)
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", AcceptProxy::Any),
            Parsed::Header {
                len: 15,
                addrs: None
            }
        );
    }

    proptest! {
        /// Any bytes: a verdict without panic; a header never claims more bytes than given.
        #[test]
        fn any_bytes(b in proptest::collection::vec(any::<u8>(), 0..300), v2 in any::<bool>()) {
            let mut input = b.clone();
            if v2 { let mut x = V2_SIG.to_vec(); x.extend(b); input = x; }
            if let Parsed::Header { len, .. } = parse(&input, AcceptProxy::Any) {
                prop_assert!(len <= input.len());
            }
        }

        /// A valid header followed by anything parses to the same header.
        #[test]
        fn header_then_payload(a in any::<[u8; 4]>(), p in any::<u16>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let src = SocketAddr::new(std::net::Ipv4Addr::from(a).into(), p);
            let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
            for version in [crate::config::ProxyProtocol::V1, crate::config::ProxyProtocol::V2] {
                let mut buf = [0u8; crate::proxy::ring::HEADER_MAX];
                let n = crate::proxy::conn::proxy_header(version, src, dst, &mut buf);
                let mut input = buf[..n].to_vec();
                input.extend(&tail);
                prop_assert_eq!(parse(&input, AcceptProxy::Any), Parsed::Header { len: n, addrs: Some((src, dst)) });
            }
        }
    }
}
