//! The download clients' side of `gleaner_core::egress`: a DNS resolver
//! that refuses a name whose addresses the rule refuses (and hands reqwest
//! the very addresses it checked, so nothing is looked up twice), and a
//! redirect policy that checks every hop whose host is an address (reqwest
//! connects to those without a lookup). The first URI is checked by
//! [`check_url`] before the request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gleaner_core::egress::{literal, Egress};

/// Most redirects followed (reqwest's default is 10 as well).
const MAX_REDIRECTS: usize = 10;

/// A download refused by the rule: not transient, never retried.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// Checks a URL whose host is an address (a name is checked when it is
/// resolved).
pub fn check_url(egress: &Egress, url: &reqwest::Url) -> Result<(), Refused> {
    let Some(host) = url.host_str() else {
        return Err(Refused(format!("{url}: no host")));
    };
    match literal(host) {
        Some(ip) => egress
            .check(host, &[ip], url.port_or_known_default())
            .map_err(Refused),
        None => Ok(()),
    }
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
        match check_url(&egress, attempt.url()) {
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
