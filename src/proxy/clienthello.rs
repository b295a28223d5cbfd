//! A TLS ClientHello reader: finds the server_name (SNI) a client asks for, without
//! allocating, from the first bytes it sent (RFC 8446 §4.1.2 and §5.1, RFC 6066 §3).
//!
//! Owns: parsing bytes into a [`Hello`] verdict. The ClientHello may be split over several
//! TLS records (and those over any number of TCP segments): record payloads are joined in a
//! caller-given scratch buffer, so the parser reads only within the slices it is handed.
//! Must not touch: sockets. It is total: every input gives a verdict, never a panic (see the
//! property tests below and in tests/fuzz.rs).

/// Most bytes of a ClientHello ringlb waits for (records included). Real ones are a few
/// hundred bytes; with post-quantum key shares about 1.8 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

/// Longest host name an SNI may carry (a DNS name; defined with the route table that
/// matches it).
pub use crate::routes::MAX_SNI_NAME as MAX_NAME;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello<'a> {
    /// So far a ClientHello, but not all of it yet.
    Incomplete,
    /// Not a TLS handshake (plaintext, another protocol).
    NotTls,
    /// TLS that breaks the format (a bad length, a record of another kind mid-hello).
    Malformed,
    /// A whole ClientHello without a server_name.
    NoSni,
    /// The host name asked for, as sent (case not folded).
    Sni(&'a [u8]),
}

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// A TLS record's payload may not exceed 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;

/// Reads `data` (the bytes the client has sent, from the first) using `scratch` to join the
/// handshake's fragments.
pub fn parse<'s>(data: &[u8], scratch: &'s mut [u8; MAX_HELLO]) -> Hello<'s> {
    // The first byte decides "TLS or not" at once, so a plaintext client waits for nothing.
    match data.first() {
        None => return Hello::Incomplete,
        Some(&t) if t != CONTENT_HANDSHAKE => return Hello::NotTls,
        _ => {}
    }
    if data.len() >= 2 && data[1] != 3 {
        return Hello::NotTls;
    }
    let mut joined = 0usize;
    let mut rest = data;
    loop {
        if rest.is_empty() {
            return Hello::Incomplete;
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return Hello::Malformed;
        }
        if rest.len() < 5 {
            return Hello::Incomplete;
        }
        if rest[1] != 3 {
            return Hello::Malformed;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len > MAX_RECORD {
            return Hello::Malformed;
        }
        if rest.len() < 5 + len {
            return Hello::Incomplete;
        }
        let payload = &rest[5..5 + len];
        rest = &rest[5 + len..];
        if joined + payload.len() > MAX_HELLO {
            return Hello::Malformed;
        }
        scratch[joined..joined + payload.len()].copy_from_slice(payload);
        joined += payload.len();
        if joined >= 1 && scratch[0] != HANDSHAKE_CLIENT_HELLO {
            return Hello::Malformed;
        }
        if joined < 4 {
            continue;
        }
        let body_len = u32::from_be_bytes([0, scratch[1], scratch[2], scratch[3]]) as usize;
        if body_len + 4 > MAX_HELLO {
            return Hello::Malformed;
        }
        if joined < 4 + body_len {
            continue;
        }
        return client_hello(&scratch[4..4 + body_len]);
    }
}

/// A reader over one slice that fails (None) instead of reading past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = match width {
            1 => self.u8()? as usize,
            _ => self.u16()? as usize,
        };
        self.take(n)
    }
}

/// The ClientHello's body (after the 4-byte handshake header).
fn client_hello(body: &[u8]) -> Hello<'_> {
    let mut r = Reader(body);
    let parsed = (|| {
        r.take(2 + 32)?; // legacy_version, random
        r.vec(1)?; // legacy_session_id
        r.vec(2)?; // cipher_suites
        r.vec(1)?; // legacy_compression_methods
        Some(())
    })();
    if parsed.is_none() {
        return Hello::Malformed;
    }
    if r.0.is_empty() {
        // SSL 3.0-style hello without extensions.
        return Hello::NoSni;
    }
    let Some(exts) = r.vec(2) else {
        return Hello::Malformed;
    };
    let mut exts = Reader(exts);
    while !exts.0.is_empty() {
        let (Some(kind), Some(data)) = (exts.u16(), exts.vec(2)) else {
            return Hello::Malformed;
        };
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut sn = Reader(data);
        let Some(list) = sn.vec(2) else {
            return Hello::Malformed;
        };
        let mut list = Reader(list);
        while !list.0.is_empty() {
            let (Some(t), Some(name)) = (list.u8(), list.vec(2)) else {
                return Hello::Malformed;
            };
            if t == NAME_TYPE_HOST {
                return if name.is_empty() {
                    Hello::Malformed
                } else {
                    Hello::Sni(name)
                };
            }
        }
        return Hello::NoSni;
    }
    Hello::NoSni
}

/// The tests' ClientHello builder, shared with the integration tests and benchmarks (one
/// copy, in tests/common; not part of the crate).
#[cfg(test)]
#[path = "../../tests/common/hello.rs"]
mod hello;

#[cfg(test)]
mod tests {
    use super::hello::build_hello;
    use super::*;
    use proptest::prelude::*;

    fn verdict(data: &[u8]) -> String {
        let mut s = Box::new([0u8; MAX_HELLO]);
        format!("{:?}", parse(data, &mut s))
    }

    #[test]
    fn finds_the_name() {
        let mut s = Box::new([0u8; MAX_HELLO]);
        let h = build_hello(Some("API.Example.com"), 16384);
        assert_eq!(parse(&h, &mut s), Hello::Sni(b"API.Example.com"));
        let h = build_hello(None, 16384);
        assert_eq!(parse(&h, &mut s), Hello::NoSni);
    }

    #[test]
    fn split_over_records_and_segments() {
        let h = build_hello(Some("a.test"), 7);
        let mut s = Box::new([0u8; MAX_HELLO]);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut], &mut s), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(&h, &mut s), Hello::Sni(b"a.test"));
    }

    #[test]
    fn not_tls() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n"), "NotTls");
        assert_eq!(verdict(b"\x16\x02"), "NotTls");
        assert_eq!(verdict(b"\x16"), "Incomplete");
        assert_eq!(verdict(b"\x16\x03\x01\xff\xff"), "Malformed");
        // An alert record where the hello should continue.
        let mut h = build_hello(Some("a.test"), 20);
        h.truncate(25);
        h.extend_from_slice(b"\x15\x03\x01\x00\x02\x02\x28");
        assert_eq!(verdict(&h), "Malformed");
    }

    proptest! {
        #[test]
        fn total_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = verdict(&data);
        }

        #[test]
        fn total_on_mutated_hellos(
            name in "[a-z0-9.-]{1,60}",
            record in 1usize..400,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut h = build_hello(Some(&name), record);
            let mut s = Box::new([0u8; MAX_HELLO]);
            prop_assert_eq!(parse(&h, &mut s), Hello::Sni(name.as_bytes()));
            for (at, v) in flips {
                let n = h.len();
                h[at % n] = v;
            }
            let cut = cut % (h.len() + 1);
            let _ = verdict(&h[..cut]);
            let _ = verdict(&h);
        }
    }
}
