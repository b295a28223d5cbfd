//! A TLS ClientHello for tests and benchmarks: with or without an SNI, cut into records of
//! any size. Included by the unit tests of `src/proxy/clienthello.rs` (`#[path]`), the
//! integration tests (`common::hello`) and `benches/sni.rs`.
#![allow(dead_code)]

/// Builds a ClientHello with `sni` (if any), split into records of at most `record` payload
/// bytes: for tests and benchmarks.
pub fn build_hello(sni: Option<&str>, record: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.len() as u16;
        ext.extend_from_slice(&0u16.to_be_bytes() /* server_name */);
        ext.extend_from_slice(&(n + 5).to_be_bytes());
        ext.extend_from_slice(&(n + 3).to_be_bytes());
        ext.push(0); // host_name
        ext.extend_from_slice(&n.to_be_bytes());
        ext.extend_from_slice(name.as_bytes());
    }
    // supported_versions (TLS 1.3) so the hello looks like a modern one.
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8] /* client_hello */;
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in hs.chunks(record.max(1)) {
        out.extend_from_slice(&[22, 3, 1] /* handshake, TLS 1.0 record */);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
