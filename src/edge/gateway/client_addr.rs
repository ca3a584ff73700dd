//! Which client a request comes from, for the failed-authentication limit (CONTRACT §4).
//!
//! The peer address, unless the peer is one of `server.trusted_proxies`: then the client is the
//! rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Entries left of that
//! are whatever the client sent and are ignored, so a client cannot pick its own bucket.

use std::net::{IpAddr, SocketAddr};

use crate::config::TrustedProxy;

/// The client's address: see the module documentation. `None` only without a peer address
/// (not a TCP connection), which the caller buckets together.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: &[TrustedProxy],
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

/// The client of `req`: [`client_ip`] of its peer and its `X-Forwarded-For` headers.
pub fn of_request(req: &actix_web::HttpRequest, trusted: &[TrustedProxy]) -> Option<IpAddr> {
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    client_ip(req.peer_addr().map(|a| a.ip()), &forwarded, trusted)
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

    fn nets(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_contain_their_addresses() {
        let net: TrustedProxy = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let one: TrustedProxy = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: TrustedProxy = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: TrustedProxy = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("proxy.local".parse::<TrustedProxy>().is_err());
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
