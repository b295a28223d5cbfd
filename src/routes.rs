//! What a listener admits and where it routes: source allow/deny lists and the SNI route
//! table, built once per snapshot and read by the workers without locks or allocation.
//!
//! Owns: [`SourceAcl`] (CIDRs merged into sorted, disjoint ranges of 128-bit addresses, IPv4
//! as IPv4-mapped IPv6, looked up by binary search: hundreds of rules cost a few compares)
//! and [`SniRoutes`] (exact names, then the longest `*.suffix` wildcard, case-insensitive).
//! Must not touch: sockets, or the pools themselves (routes name pools by index).

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Longest host name an SNI may carry (a DNS name).
pub const MAX_SNI_NAME: usize = 255;

/// An address on one scale for both families: IPv4 as IPv4-mapped IPv6, so an IPv4 rule and
/// an IPv4-mapped client (a v4 client of a `[::]` listener) meet on the same number.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A set of CIDRs as sorted, disjoint, inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    ranges: Vec<(u128, u128)>,
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut ranges: Vec<(u128, u128)> = nets
            .iter()
            .map(|n| {
                let (lo, hi) = (key(n.network()), key(n.broadcast()));
                (lo, hi)
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        CidrSet { ranges: merged }
    }
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        // The last range starting at or below k.
        let i = self.ranges.partition_point(|&(lo, _)| lo <= k);
        i > 0 && self.ranges[i - 1].1 >= k
    }
}

/// A listener's source rules: deny wins; an empty allow list allows everyone.
#[derive(Debug, Clone, Default)]
pub struct SourceAcl {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl SourceAcl {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        if n.trunc() != n {
            return Err(format!(
                "{s:?} has host bits set: did you mean {}?",
                n.trunc()
            ));
        }
        return Ok(n);
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("{s:?} is not a CIDR (like \"10.0.0.0/8\" or \"2001:db8::/32\") or an address")
    })
}

/// Why a connection found no route (the `reason` label of `ringlb_listener_no_route_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// Not TLS: plaintext or another protocol.
    NotTls = 0,
    /// A ClientHello without server_name.
    NoSni = 1,
    /// A name no route matches.
    UnknownName = 2,
    /// The bytes broke the TLS format, or the hello was larger than ringlb reads.
    Malformed = 3,
    /// The client sent no complete ClientHello within `inspect_timeout` (or closed first).
    Timeout = 4,
}

impl NoRoute {
    pub const ALL: [NoRoute; 5] = [
        NoRoute::NotTls,
        NoRoute::NoSni,
        NoRoute::UnknownName,
        NoRoute::Malformed,
        NoRoute::Timeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            NoRoute::NotTls => "not_tls",
            NoRoute::NoSni => "no_sni",
            NoRoute::UnknownName => "unknown_name",
            NoRoute::Malformed => "malformed",
            NoRoute::Timeout => "timeout",
        }
    }
}

/// SNI routes to pool indices.
#[derive(Debug, Clone, Default)]
pub struct SniRoutes {
    /// Lower-case name → pool.
    exact: HashMap<Box<[u8]>, usize>,
    /// Lower-case suffix including its leading dot (`.example.com` for `*.example.com`).
    wildcard: HashMap<Box<[u8]>, usize>,
}

impl SniRoutes {
    /// `routes`: (pattern, pool index), patterns already validated.
    pub fn new(routes: &[(String, usize)]) -> SniRoutes {
        let mut r = SniRoutes::default();
        for (pattern, pool) in routes {
            let p = pattern.to_ascii_lowercase();
            match p.strip_prefix('*') {
                Some(suffix) => r.wildcard.insert(suffix.as_bytes().into(), *pool),
                None => r.exact.insert(p.as_bytes().into(), *pool),
            };
        }
        r
    }
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
    /// The pool for `name`: an exact match first, then the longest wildcard suffix (so
    /// `*.b.example.com` wins over `*.example.com` for `x.b.example.com`; a wildcard never
    /// matches the bare suffix: `*.example.com` does not take `example.com`).
    pub fn lookup(&self, name: &[u8]) -> Option<usize> {
        if name.len() > MAX_SNI_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_SNI_NAME];
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        // A trailing dot (a fully qualified name) names the same host.
        let lower: &[u8] = lower.strip_suffix(b".").unwrap_or(lower);
        if let Some(&p) = self.exact.get(lower) {
            return Some(p);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Leftmost dot first: the longest suffix. Position 0 is skipped so that the label
        // before the dot is never empty.
        (1..lower.len())
            .filter(|&i| lower[i] == b'.')
            .find_map(|i| self.wildcard.get(&lower[i..]).copied())
    }
}

/// Checks an SNI pattern: a host name, or `*.` and a host name.
pub fn check_sni_pattern(p: &str) -> Result<(), String> {
    let name = p.strip_prefix("*.").unwrap_or(p);
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(ok_label) {
        return Err(format!(
            "{p:?} is not a host name or a wildcard like \"*.example.com\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(list: &[&str]) -> CidrSet {
        CidrSet::new(
            &list
                .iter()
                .map(|s| parse_cidr(s).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn cidr_lookup() {
        let s = set(&["10.0.0.0/8", "127.0.0.2", "2001:db8::/32", "10.1.0.0/16"]);
        assert!(s.contains("10.200.3.4".parse().unwrap()));
        assert!(s.contains("127.0.0.2".parse().unwrap()));
        assert!(!s.contains("127.0.0.3".parse().unwrap()));
        assert!(s.contains("2001:db8:1::9".parse().unwrap()));
        assert!(!s.contains("2001:db9::".parse().unwrap()));
        // IPv4-mapped IPv6 clients match IPv4 rules.
        assert!(s.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!s.contains("11.0.0.0".parse().unwrap()));
        assert!(parse_cidr("10.0.0.1/8").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("").is_err());
    }

    #[test]
    fn deny_wins() {
        let acl = SourceAcl {
            allow: set(&["127.0.0.0/8"]),
            deny: set(&["127.0.0.3"]),
        };
        assert!(acl.admits("127.0.0.2".parse().unwrap()));
        assert!(!acl.admits("127.0.0.3".parse().unwrap()));
        assert!(!acl.admits("192.0.2.1".parse().unwrap()));
        assert!(SourceAcl::default().admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn sni_lookup() {
        let r = SniRoutes::new(&[
            ("a.test".into(), 0),
            ("*.b.test".into(), 1),
            ("*.x.b.test".into(), 2),
            ("API.Example.com".into(), 3),
        ]);
        assert_eq!(r.lookup(b"a.test"), Some(0));
        assert_eq!(r.lookup(b"A.TEST."), Some(0));
        assert_eq!(r.lookup(b"x.b.test"), Some(1));
        assert_eq!(r.lookup(b"deep.y.b.test"), Some(1));
        assert_eq!(r.lookup(b"y.x.b.test"), Some(2));
        assert_eq!(r.lookup(b"b.test"), None);
        assert_eq!(r.lookup(b".b.test"), None);
        assert_eq!(r.lookup(b"api.example.com"), Some(3));
        assert_eq!(r.lookup(&[b'a'; 300]), None);
        assert!(check_sni_pattern("*.example.com").is_ok());
        assert!(check_sni_pattern("*").is_err());
        assert!(check_sni_pattern("a..b").is_err());
        assert!(check_sni_pattern("a.*.b").is_err());
    }

    proptest! {
        /// The merged ranges answer exactly as checking every rule would.
        #[test]
        fn merged_ranges_match_the_rules(
            rules in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..60),
        ) {
            let nets: Vec<IpNet> = rules
                .iter()
                .map(|&(a, len)| IpNet::new(std::net::Ipv4Addr::from(a).into(), len).unwrap().trunc())
                .collect();
            let s = CidrSet::new(&nets);
            for p in probes.into_iter().chain(rules.iter().map(|r| r.0)) {
                let ip: IpAddr = std::net::Ipv4Addr::from(p).into();
                prop_assert_eq!(s.contains(ip), nets.iter().any(|n| n.contains(&ip)));
            }
        }
    }
}
