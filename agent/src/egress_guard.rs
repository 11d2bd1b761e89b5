//! The download clients' side of `gleaner_core::egress`: a DNS resolver
//! that refuses a name whose addresses the rule refuses (and hands reqwest
//! the very addresses it checked, so nothing is looked up twice), and a
//! redirect policy that checks every hop whose host is an address (reqwest
//! connects to those without a lookup). The first URI is checked by
//! [`check_url`] before the request, and when it names a host on the
//! agent's API port, where that name leads ([`check_own_by_name`]): the
//! agent's own API in any form (mapped, a wildcard listener's interface
//! addresses) is never a download's target. Nor, unless listed in
//! `fetch_allow_hosts`, is any address of this host: it reaches what
//! loopback would through a wildcard listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gleaner_core::egress::{literal, Egress};

/// Most redirects followed (reqwest's default is 10 as well).
const MAX_REDIRECTS: usize = 10;

/// A download refused by the rule: not transient, never retried.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// Checks a URL whose host is an address, and the port of one whose host
/// is a name (its addresses are checked when it is resolved).
pub fn check_url(egress: &Egress, url: &reqwest::Url) -> Result<(), Refused> {
    let Some(host) = url.host_str() else {
        return Err(Refused(format!("{url}: no host")));
    };
    let port = url.port_or_known_default();
    let on_own_port = port.is_some() && port == egress.own_port();
    match literal(host) {
        Some(ip) => {
            let local = local_addrs()?;
            if on_own_port {
                egress
                    .check_own(host, &[ip], port, &local)
                    .map_err(Refused)?;
            }
            egress.check(host, &[ip], port).map_err(Refused)?;
            egress
                .check_local(host, &[ip], port, &local)
                .map_err(Refused)
        }

        // Its addresses are checked when it is resolved; a name listed
        // with a port only is checked for the port here.
        None => egress
            .check_name_port(host, url.port_or_known_default())
            .map_err(Refused),
    }
}

/// A redirect hop: [`check_url`], and a name on the agent's API port is
/// refused (where it leads is checked for the first URI by
/// [`check_own_by_name`]; a redirect policy cannot wait for a lookup).
pub fn check_hop(egress: &Egress, url: &reqwest::Url) -> Result<(), Refused> {
    check_url(egress, url)?;
    let port = url.port_or_known_default();
    match url.host_str() {
        Some(host) if literal(host).is_none() && port.is_some() && port == egress.own_port() => {
            Err(Refused(format!(
                "{host} port {}: a redirect to a name on the agent's API port",
                port.unwrap_or_default()
            )))
        }
        _ => Ok(()),
    }
}

/// The first URI, when it names a host on the agent's API port: each of
/// its addresses is checked against the agent's own (the resolver does
/// not know the port).
pub async fn check_own_by_name(egress: &Egress, url: &reqwest::Url) -> Result<(), Refused> {
    let (Some(host), port) = (url.host_str(), url.port_or_known_default()) else {
        return Ok(());
    };
    if literal(host).is_some() || port.is_none() || port != egress.own_port() {
        return Ok(());
    }
    let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| Refused(format!("{host}: {e}")))?
            .map(|a| a.ip())
            .collect()
    };
    egress
        .check_own(host, &ips, port, &local_addrs()?)
        .map_err(Refused)
}

/// The host's interface addresses (getifaddrs): what a wildcard listener
/// answers on. An error refuses the download (an empty list would let
/// every address of the host pass).
pub fn local_addrs() -> Result<Vec<IpAddr>, Refused> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: on success `head` is a list we only read, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Refused(format!(
            "the host's addresses could not be read (getifaddrs: {})",
            std::io::Error::last_os_error()
        )));
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of its family's size.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, not used after.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Resolves names as the default resolver does (getaddrinfo: the static
/// build has no NSS, so /etc/hosts and IPs), then applies the rule.
pub struct GuardedResolver(pub Arc<Egress>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // As the client module does: `localhost` without a lookup.
            let addrs: Vec<SocketAddr> = if host.eq_ignore_ascii_case("localhost") {
                vec![SocketAddr::from(([127, 0, 0, 1], 0))]
            } else {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            };
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            egress.check(&host, &ips, None).map_err(Refused)?;
            // The host's own addresses, where the connection goes: a name
            // rebound to the host's LAN address after an earlier lookup
            // (check_own_by_name) is caught here.
            egress
                .check_local(&host, &ips, None, &local_addrs()?)
                .map_err(Refused)?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Follows at most [`MAX_REDIRECTS`] redirects, each checked.
pub fn redirect_policy(egress: Arc<Egress>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
        }
        match check_hop(&egress, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(e) => {
                let e = Refused(format!("redirect to {}: {}", attempt.url(), e.0));
                attempt.error(e)
            }
        }
    })
}

/// Whether a reqwest error came from the rule (then not worth a retry).
pub fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // A boxed error may be the Box itself in a source chain.
        if err.downcast_ref::<Refused>().is_some() || err.to_string().starts_with("refused: ") {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_addresses_include_loopback() {
        assert!(local_addrs()
            .unwrap()
            .contains(&IpAddr::from([127, 0, 0, 1])));
    }

    /// A wildcard listener: the host's own LAN address, a mapped form and
    /// a name for it are all the agent's API on its port.
    #[tokio::test]
    async fn the_own_api_by_lan_address_mapped_form_and_name() {
        let egress = Egress::parse(
            &["0.0.0.0/0".into(), "::/0".into()],
            Some("0.0.0.0:5051".parse().unwrap()),
        )
        .unwrap();
        let lan = local_addrs()
            .unwrap()
            .into_iter()
            .find(|ip| ip.is_ipv4() && !ip.is_loopback());
        let mut urls = vec![
            "http://[::ffff:127.0.0.1]:5051/metrics".to_owned(),
            "http://0.0.0.0:5051/".to_owned(),
        ];
        if let Some(ip) = lan {
            urls.push(format!("http://{ip}:5051/metrics"));
        }
        for u in &urls {
            let url = reqwest::Url::parse(u).unwrap();
            let e = check_url(&egress, &url).unwrap_err();
            assert!(e.0.contains("own API"), "{u}: {e}");
            assert!(
                check_url(
                    &egress,
                    &reqwest::Url::parse(&u.replace("5051", "5052")).unwrap()
                )
                .is_ok(),
                "{u}"
            );
        }
        let named = reqwest::Url::parse("http://localhost:5051/metrics").unwrap();
        let e = check_own_by_name(&egress, &named).await.unwrap_err();
        assert!(e.0.contains("own API"), "{e}");
        assert!(
            check_url(&egress, &named).is_ok(),
            "checked by name instead"
        );
        assert!(check_hop(&egress, &named).is_err(), "a redirect to it");
        let other = reqwest::Url::parse("http://localhost:5052/").unwrap();
        assert!(check_own_by_name(&egress, &other).await.is_ok());
    }
}
