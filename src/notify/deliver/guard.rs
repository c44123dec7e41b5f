//! The SSRF guard of webhooks: a tenant's URL must not make the daemon call into its own
//! network. Addresses in loopback, private (RFC 1918, unique local), link-local (which holds the
//! cloud metadata service, 169.254.169.254 and fd00:ec2::254), carrier-grade NAT, unspecified,
//! multicast, broadcast and reserved ranges are refused — whether the URL names them as a
//! literal or a name resolves to them. The check runs in the HTTP client's resolver, on the
//! addresses it then connects to, so a name that resolves to a public address when checked and
//! to a private one when connecting (DNS rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why an address is refused, or `None` when it is public.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return refused_v4(v4);
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private (unique local, incl. the metadata service fd00:ec2::254)")
            } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (incl. the metadata service 169.254.169.254)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT")
    } else if o[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking (198.18.0.0/15)")
    } else {
        None
    }
}

/// A resolver for the webhook client that resolves with the system's resolver and keeps only
/// public addresses (all of them with `allow_private`).
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || refused(a.ip()).is_none())
                .collect();
            if kept.is_empty() {
                let why = addrs
                    .first()
                    .and_then(|a| refused(a.ip()))
                    .unwrap_or("no address");
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver's refusal, found again in a request error's chain.
#[derive(Debug)]
pub struct Refused(pub &'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused by the SSRF guard: every address of the webhook's host is {} (notify.webhook.allow_private_targets is off)",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// Checks the host of `url` before a request: a literal address directly (the client's
/// resolver never sees literals), a name through the system's resolver.
pub async fn check(url: &url::Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let why = match url.host() {
        Some(url::Host::Ipv4(ip)) => refused(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => refused(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            match tokio::net::lookup_host((name, port)).await {
                Ok(addrs) => {
                    let addrs: Vec<SocketAddr> = addrs.collect();
                    match addrs.iter().find_map(|a| refused(a.ip())) {
                        // Refused when every address is: the client connects only to the
                        // public ones.
                        Some(why) if addrs.iter().all(|a| refused(a.ip()).is_some()) => Some(why),
                        _ => None,
                    }
                }
                // Not resolvable now: the request fails as a connection error and is retried.
                Err(_) => None,
            }
        }
        None => Some("no host"),
    };
    match why {
        Some(why) => Err(Refused(why).to_string()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_ranges_are_refused_and_public_ones_pass() {
        for refused_ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "ff02::1",
        ] {
            let ip: IpAddr = refused_ip.parse().unwrap();
            assert!(refused(ip).is_some(), "{refused_ip} must be refused");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(refused(ip), None, "{public} is public");
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_hosts_are_checked() {
        let check_url = |u: &str| url::Url::parse(u).unwrap();
        assert!(
            check(&check_url("https://127.0.0.1:8443/hook"), false)
                .await
                .unwrap_err()
                .contains("SSRF guard")
        );
        assert!(
            check(&check_url("https://[::1]/hook"), false)
                .await
                .is_err()
        );
        assert!(
            check(&check_url("http://localhost:9/hook"), false)
                .await
                .unwrap_err()
                .contains("loopback")
        );
        assert!(
            check(&check_url("https://127.0.0.1/hook"), true)
                .await
                .is_ok()
        );
    }
}
