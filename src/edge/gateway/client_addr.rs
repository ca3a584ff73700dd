//! Which client a request comes from, for the failed-authentication limit (CONTRACT §4).
//!
//! The peer address, unless the peer is one of `server.trusted_proxies`: then the client is the
//! rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
//! are whatever the client sent and are ignored, so a client cannot pick its own bucket.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), 128, self.prefix) == masked(ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The first `prefix` of `bits` bits of `value`.
fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    match bits - prefix.min(bits) {
        0 => value,
        host if host >= 128 => 0,
        host => value >> host,
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<IpNet> for String {
    fn from(n: IpNet) -> String {
        n.to_string()
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client's address: see the module documentation. `None` only without a peer address
/// (not a TCP connection), which the caller buckets together.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Header values in order, each a comma-separated list; read from the right.
    let entries: Vec<&str> = forwarded_for.iter().flat_map(|v| v.split(',')).collect();
    for entry in entries.into_iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            // Garbage where an address should be: nothing left of it can be trusted either.
            return Some(client);
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The name of an address's bucket: IPv4 as is, IPv6 by its /64, since one host usually holds
/// a whole /64 and could otherwise rotate through fresh buckets.
pub fn bucket_name(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("proxy.local".parse::<IpNet>().is_err());
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer_and_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = |v: &'static str| [v];
        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_ip(Some(ip("192.0.2.9")), &xff("203.0.113.1"), &trusted),
            Some(ip("192.0.2.9"))
        );
        // Trusted peer: the rightmost untrusted entry; the spoofed left part is ignored.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.1")),
                &xff("1.1.1.1, 203.0.113.7, 10.0.0.2"),
                &trusted
            ),
            Some(ip("203.0.113.7"))
        );
        // Several header lines read as one list; ports are dropped.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.1")),
                &["1.1.1.1", "203.0.113.7:4711"],
                &trusted
            ),
            Some(ip("203.0.113.7"))
        );
        // No header behind a trusted proxy: the proxy itself.
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &[], &trusted),
            Some(ip("10.0.0.1"))
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.1")),
                &xff("1.1.1.1, junk, 10.0.0.3"),
                &trusted
            ),
            Some(ip("10.0.0.3"))
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        assert_eq!(
            bucket_name(Some(ip("2001:db8:1:2:aaaa::1"))),
            bucket_name(Some(ip("2001:db8:1:2:bbbb::9")))
        );
        assert_eq!(bucket_name(Some(ip("192.0.2.1"))), "192.0.2.1");
    }
}
