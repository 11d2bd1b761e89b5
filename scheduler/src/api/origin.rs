//! Browsers are clients too: a page from anywhere can make the operator's
//! browser send requests to the scheduler. The bearer token stops that
//! (a browser never adds it on its own), but a scheduler without a token
//! (the default, on loopback) took a cross-site form post as a job: a
//! `text/plain` body is read as JSON, and no CORS preflight guards a form.
//! Pure: which browser requests are refused, and why.

use axum::http::{header, HeaderMap};

/// Why a request is refused (403), if it is. `token` is whether the API
/// requires one.
pub fn refusal(headers: &HeaderMap, token: bool) -> Option<String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = get(header::HOST.as_str()).unwrap_or("");
    // Fetch metadata: every current browser sends it on every request.
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Some(format!(
                "cross-site browser request refused (Sec-Fetch-Site: {site}): the API takes requests from its own console and from non-browser clients"
            ));
        }
    }
    // Older browsers: the Origin of a cross-origin request.
    if let Some(origin) = get(header::ORIGIN.as_str()) {
        let own = [format!("http://{host}"), format!("https://{host}")];
        if !own.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Some(format!(
                "cross-origin browser request refused (Origin: {origin}, Host: {host})"
            ));
        }
    }
    // DNS rebinding: a page whose name now points at the scheduler is
    // "same-origin" to the browser. Only a token stops it; without one, a
    // browser may reach the API by address or `localhost` only.
    let browser = get("sec-fetch-site").is_some() || get(header::ORIGIN.as_str()).is_some();
    if !token && browser && !is_address_or_localhost(host) {
        return Some(format!(
            "browser request for host {host:?} refused: without a token (token_file) the console is served by IP address or localhost only"
        ));
    }
    None
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost`: not a name DNS can repoint.
fn is_address_or_localhost(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn non_browser_clients_and_the_console_pass() {
        let host = ("host", "127.0.0.1:8080");
        for token in [false, true] {
            assert_eq!(refusal(&h(&[host]), token), None);
            assert_eq!(
                refusal(&h(&[host, ("sec-fetch-site", "same-origin")]), token),
                None
            );
            assert_eq!(
                refusal(&h(&[host, ("sec-fetch-site", "none")]), token),
                None
            );
            let same = ("origin", "http://127.0.0.1:8080");
            assert_eq!(
                refusal(&h(&[host, same, ("sec-fetch-site", "same-origin")]), token),
                None
            );
        }
        // A CLI or an app instance by name, without a token: no browser.
        assert_eq!(refusal(&h(&[("host", "sched.example:8080")]), false), None);
        // A browser by name with a token: the token guards it.
        let by_name = [("host", "sched.example"), ("sec-fetch-site", "same-origin")];
        assert_eq!(refusal(&h(&by_name), true), None);
        assert_eq!(
            refusal(
                &h(&[("host", "[::1]:80"), ("origin", "http://[::1]:80")]),
                false
            ),
            None
        );
        assert_eq!(
            refusal(
                &h(&[("host", "LocalHost:1"), ("sec-fetch-site", "same-origin")]),
                false
            ),
            None
        );
    }

    #[test]
    fn cross_site_and_rebound_browser_requests_are_refused() {
        let host = ("host", "127.0.0.1:8080");
        for token in [false, true] {
            for site in ["cross-site", "same-site"] {
                let m = h(&[host, ("sec-fetch-site", site)]);
                assert!(refusal(&m, token).unwrap().contains(site));
            }
            for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
                let m = h(&[host, ("origin", origin)]);
                assert!(refusal(&m, token).unwrap().contains(origin));
            }
        }
        let rebound = [
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(refusal(&h(&rebound), false)
            .unwrap()
            .contains("evil.example"));
        assert_eq!(refusal(&h(&rebound), true), None);
        assert!(!is_address_or_localhost("[::1"));
        assert!(!is_address_or_localhost("127.0.0.1.evil.example"));
    }
}
