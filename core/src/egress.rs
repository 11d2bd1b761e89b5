//! Where the agent's downloads (a task's `fetch`, rootfs images) may
//! connect, pure. The agent downloads as root from the host's network on
//! behalf of any submitter, a `network: none` task's scoped token
//! included: without a rule, a URI (or a redirect) naming loopback, a
//! link-local metadata service (169.254.169.254) or the agent's own API
//! hands the submitter what only the host can reach.
//!
//! Refused unless allowed by `fetch_allow_hosts`: loopback, link-local,
//! unspecified (`0.0.0.0/8`, `::`), multicast and broadcast addresses,
//! IPv4-mapped IPv6 forms of these included. The agent's own listen
//! address is refused even when allowed. The agent checks every hop of a
//! redirect and every address a name resolves to (the addresses it then
//! connects to: no second lookup to rebind).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One entry of `fetch_allow_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// An address or a network (`127.0.0.1`, `10.0.0.0/8`, `::1/128`).
    Net { net: IpAddr, prefix: u8 },
    /// A host name, as written in URIs (lower case).
    Name(String),
}

/// The allow list and the agent's own address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    allow: Vec<Allow>,
    /// The agent's API: never a download's target.
    own: Option<SocketAddr>,
}

/// Why an address is refused by default, if it is.
pub fn denied_class(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8: Linux connects 0.0.0.0 to the local host.
                Some("unspecified")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        (IpAddr::V6(a), IpAddr::V4(_)) => match a.to_ipv4_mapped() {
            Some(v4) => return in_net(IpAddr::V4(v4), net, prefix),
            None => return false,
        },
        _ => return false,
    };
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

impl Egress {
    /// Parses `fetch_allow_hosts`: addresses, networks (`ADDR/BITS`) or
    /// host names. The error names the entry.
    pub fn parse(entries: &[String], own: Option<SocketAddr>) -> Result<Egress, String> {
        let mut allow = Vec::new();
        for e in entries {
            let e = e.trim();
            let (addr, prefix) = match e.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (e, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            match addr.parse::<IpAddr>() {
                Ok(net) => {
                    let max = if net.is_ipv4() { 32 } else { 128 };
                    let prefix = match prefix {
                        None => max,
                        Some(p) => match p.parse::<u8>() {
                            Ok(p) if p <= max => p,
                            _ => return Err(format!("{e:?}: the prefix must be 0 to {max}")),
                        },
                    };
                    allow.push(Allow::Net { net, prefix });
                }
                Err(_) => {
                    let ok = prefix.is_none()
                        && !e.is_empty()
                        && e.len() <= 253
                        && e.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !ok {
                        return Err(format!(
                            "{e:?}: not an address, a network (ADDR/BITS) or a host name"
                        ));
                    }
                    allow.push(Allow::Name(e.to_ascii_lowercase()));
                }
            }
        }
        Ok(Egress { allow, own })
    }

    fn name_allowed(&self, host: &str) -> bool {
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Name(n) if n.eq_ignore_ascii_case(host)))
    }

    fn addr_allowed(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Net { net, prefix } if in_net(ip, *net, *prefix)))
    }

    fn is_own(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let (Some(own), Some(port)) = (self.own, port) else {
            return false;
        };
        if port != own.port() {
            return false;
        }
        // A wildcard listener answers on loopback too.
        own.ip() == ip || (own.ip().is_unspecified() && denied_class(ip) == Some("loopback"))
    }

    /// May a download connect to `host` (as written in the URI), which is
    /// or resolved to `addrs`, on `port` (None when a resolver does not
    /// know it)? Every address must pass: a name is refused if one of its
    /// addresses would be.
    pub fn check(&self, host: &str, addrs: &[IpAddr], port: Option<u16>) -> Result<(), String> {
        let by_name = self.name_allowed(host);
        for &ip in addrs {
            if self.is_own(ip, port) {
                return Err(format!(
                    "{host} ({ip}) port {}: the agent's own API is never fetched from",
                    port.unwrap_or_default()
                ));
            }
            if let Some(class) = denied_class(ip) {
                if !by_name && !self.addr_allowed(ip) {
                    return Err(format!(
                        "{host} ({ip}) is a {class} address: downloads are refused there unless fetch_allow_hosts lists it"
                    ));
                }
            }
        }
        if addrs.is_empty() {
            return Err(format!("{host}: no address"));
        }
        Ok(())
    }
}

/// An address written in a URI's host (brackets of IPv6 dropped).
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn e(entries: &[&str]) -> Egress {
        let v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        Egress::parse(&v, None).unwrap()
    }

    #[test]
    fn the_default_refuses_local_and_metadata_addresses() {
        let d = Egress::default();
        for (a, class) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let err = d.check("h", &[ip(a)], Some(80)).unwrap_err();
            assert!(err.contains(class), "{a}: {err}");
            assert!(err.contains("fetch_allow_hosts"), "{a}: {err}");
        }
        for a in ["10.0.0.5", "192.168.1.1", "8.8.8.8", "2001:db8::1"] {
            assert!(d.check("h", &[ip(a)], Some(80)).is_ok(), "{a}");
        }
        // One bad address among good ones refuses the name.
        assert!(d
            .check("h", &[ip("10.0.0.5"), ip("127.0.0.1")], None)
            .is_err());
        assert!(d.check("h", &[], None).is_err());
    }

    #[test]
    fn allowed_addresses_networks_and_names() {
        let a = e(&["127.0.0.1", "169.254.0.0/16", "Files.Local", "::1"]);
        assert!(a.check("127.0.0.1", &[ip("127.0.0.1")], Some(8080)).is_ok());
        assert!(a.check("127.0.0.2", &[ip("127.0.0.2")], None).is_err());
        assert!(a.check("x", &[ip("169.254.169.254")], None).is_ok());
        assert!(a.check("files.local", &[ip("127.0.0.5")], None).is_ok());
        assert!(a.check("FILES.LOCAL", &[ip("127.0.0.5")], None).is_ok());
        assert!(a.check("x", &[ip("::1")], None).is_ok());
        assert!(a.check("x", &[ip("::ffff:127.0.0.1")], None).is_ok());
        let all = e(&["0.0.0.0/0"]);
        assert!(all.check("x", &[ip("127.0.0.1")], None).is_ok());
        assert!(all.check("x", &[ip("::1")], None).is_err(), "v4 net, v6 addr");
    }

    #[test]
    fn the_agents_own_api_is_refused_even_when_allowed() {
        let v = vec!["127.0.0.0/8".to_string()];
        let own = Egress::parse(&v, Some("127.0.0.1:5051".parse().unwrap())).unwrap();
        let err = own
            .check("127.0.0.1", &[ip("127.0.0.1")], Some(5051))
            .unwrap_err();
        assert!(err.contains("own API"), "{err}");
        assert!(own.check("127.0.0.1", &[ip("127.0.0.1")], Some(8080)).is_ok());
        let wild = Egress::parse(&v, Some("0.0.0.0:5051".parse().unwrap())).unwrap();
        assert!(wild.check("x", &[ip("127.0.0.7")], Some(5051)).is_err());
        let public = Egress::parse(&[], Some("10.1.1.1:5051".parse().unwrap())).unwrap();
        assert!(public.check("x", &[ip("10.1.1.1")], Some(5051)).is_err());
        assert!(public.check("x", &[ip("10.1.1.2")], Some(5051)).is_ok());
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in ["10.0.0.0/33", "::/129", "a b", "", "x/8", "10.0.0.0/x"] {
            let err = Egress::parse(&[bad.to_string()], None).unwrap_err();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
        assert_eq!(literal("[::1]"), Some(ip("::1")));
        assert_eq!(literal("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(literal("example.com"), None);
    }
}
