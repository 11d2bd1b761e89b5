//! A small blocking HTTP client for the agent's API, used by the `gleaner`
//! CLI and the tests. Errors are one line: the agent's `error` text when it
//! sent one.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected reply from {url}: {reason}")]
    Decode { url: String, reason: String },
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    /// The agent's Unix socket, for a client made by [`Client::unix`].
    socket: Option<std::path::PathBuf>,
}

/// The static binary has no NSS: `localhost` is resolved here, not by
/// getaddrinfo. Other names must be IP addresses.
pub fn normalize_base(url: &str) -> String {
    url.trim_end_matches('/')
        .replacen("://localhost", "://127.0.0.1", 1)
}

/// reqwest is built with rustls but no crypto provider of its own (the
/// default, aws-lc, needs cmake for the static build): ring is installed
/// once, before any client is made.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client of the agent's Unix socket: the kernel tells the agent who
    /// we are, no token needed.
    pub fn unix(socket: &std::path::Path) -> Self {
        install_tls_provider();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_certs_only(Vec::new())
            .unix_socket(socket.to_owned())
            .build()
            .expect("http client");
        Client {
            base: "http://localhost".into(),
            token: None,
            http,
            socket: Some(socket.to_owned()),
        }
    }

    /// Where and how to reach the agent whose config is `cfg`: its Unix
    /// socket when this process may use it, else its TCP listener with the
    /// admin token (if this process can read it).
    pub fn for_agent(cfg: &crate::config::AgentConfig) -> Self {
        let socket = cfg.api_socket();
        // Root is always an admin on the socket (even before it exists: an
        // agent that is starting gets waited for there).
        if nix::unistd::geteuid().is_root()
            || nix::unistd::access(&socket, nix::unistd::AccessFlags::W_OK).is_ok()
        {
            return Client::unix(&socket);
        }
        let base = match cfg.listen_addr() {
            Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
            Ok(a) => format!("http://{a}"),
            Err(_) => format!("http://{}", cfg.listen),
        };
        Client::new(&base, cfg.read_token().ok())
    }

    pub fn new(base: &str, token: Option<String>) -> Self {
        install_tls_provider();
        // Trust roots as the image fetch finds them, never the platform
        // verifier's (it fails a host without a CA store, even for http://).
        let roots = crate::tls::host_roots(None)
            .map(|(certs, _)| certs)
            .unwrap_or_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_certs_only(roots)
            .build()
            .expect("http client");
        Client {
            base: normalize_base(base),
            token,
            http,
            socket: None,
        }
    }

    /// Opens an exec session in task `id` (`crate::exec::client`).
    pub fn exec(
        &self,
        id: &str,
        req: &crate::exec::ExecRequest,
    ) -> Result<crate::exec::client::ExecConn, ClientError> {
        let target = match &self.socket {
            Some(path) => crate::exec::client::Target::Unix(path.clone()),
            None => crate::exec::client::Target::Tcp {
                base: self.base.clone(),
                token: self.token.clone(),
            },
        };
        crate::exec::client::connect(&target, id, req)
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn decode<T: DeserializeOwned>(
        resp: reqwest::blocking::Response,
        url: &str,
    ) -> Result<T, ClientError> {
        resp.json().map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(self.http.get(&url), &url)?;
        Self::decode(resp, &url)
    }

    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(self.http.get(&url), &url)?;
        resp.text().map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(self.http.post(&url).json(body), &url)?;
        Self::decode(resp, &url)
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(self.http.put(&url).json(body), &url)?;
        Self::decode(resp, &url)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.send(self.http.delete(&url), &url)?;
        Self::decode(resp, &url)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn localhost_becomes_loopback_ip() {
        assert_eq!(
            super::normalize_base("http://localhost:5051/"),
            "http://127.0.0.1:5051"
        );
        assert_eq!(
            super::normalize_base("http://10.0.0.1:1"),
            "http://10.0.0.1:1"
        );
    }
}
