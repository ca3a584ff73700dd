//! The webhook target guard (SSRF, CONTRACT §7): a tenant names the URL, so without a guard
//! it could make the worker call the cloud metadata service, the database's admin port or
//! anything else on the private network.
//!
//! The guard sits *inside* the HTTP client as its DNS resolver: the addresses it vets are the
//! only ones the client can connect to, so there is no second lookup an attacker's DNS could
//! answer differently (DNS rebinding). URLs with a literal address never reach a resolver;
//! [`check_literal`] vets those before the request is built. Redirects are never followed, so
//! a vetted public server cannot bounce the request to a private one.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("target address {addr} is {kind}; set notifications.allow_private_targets to allow it")]
    Forbidden { addr: IpAddr, kind: &'static str },
    #[error("target host {0} does not resolve to any address")]
    NoAddress(String),
}

/// Why `ip` may not be a webhook target, or `None` when it may. IPv4-mapped and -compatible
/// IPv6 forms are judged as the IPv4 address they carry.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        // 169.254/16, the cloud metadata service (169.254.169.254) included.
        _ if ip.is_link_local() => "link-local",
        _ if a == 100 && (64..128).contains(&b) => "shared address space (CGNAT)",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        // 0/8 ("this network") and 240/4 (reserved) cannot be a public server either.
        _ if a == 0 || a >= 240 => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let seg = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
    if seg[..6].iter().all(|s| *s == 0) && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_multicast() => "multicast",
        _ if seg[0] & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        _ if seg[0] & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        // NAT64 of an embedded IPv4 address: judge the address it reaches.
        _ if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|s| *s == 0) => {
            return forbidden_v4(Ipv4Addr::new(
                (seg[6] >> 8) as u8,
                seg[6] as u8,
                (seg[7] >> 8) as u8,
                seg[7] as u8,
            ));
        }
        _ => return None,
    })
}

/// What the guard allows.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// `notifications.allow_private_targets`.
    pub allow_private: bool,
}

impl Guard {
    /// Refuses `ip` unless private targets are allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        match forbidden(ip) {
            Some(kind) if !self.allow_private => Err(Refused::Forbidden { addr: ip, kind }),
            _ => Ok(()),
        }
    }

    /// Vets a URL host that is a literal address (`http://10.0.0.1/`, `http://[::1]/`); a host
    /// name is vetted by the resolver when the client connects.
    pub fn check_literal(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and keeps it only if *every* address is allowed: a name that resolves
    /// to a public and a private address is refused, since the client could pick either.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|_| Refused::NoAddress(host.to_owned()))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused::NoAddress(host.to_owned()));
        }
        for a in &addrs {
            self.check(a.ip())?;
        }
        Ok(addrs)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = *self;
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The refusal somewhere in `err`'s source chain, if the guard is why a request failed.
pub fn refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The webhook HTTP client: the guard as its resolver, redirects not followed, `timeout` for
/// the whole exchange.
pub fn client(guard: Guard, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(guard))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("vsm-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        forbidden(s.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_every_non_public_range() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} must be allowed");
        }
    }

    #[test]
    fn allow_private_lets_everything_through() {
        let g = Guard {
            allow_private: true,
        };
        assert!(g.check("127.0.0.1".parse().unwrap()).is_ok());
        let g = Guard {
            allow_private: false,
        };
        assert!(g.check("127.0.0.1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let g = Guard {
            allow_private: false,
        };
        let err = g.resolve("localhost").await.expect_err("refused");
        assert!(matches!(err, Refused::Forbidden { .. }), "{err}");
    }
}
