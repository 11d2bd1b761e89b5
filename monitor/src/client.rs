//! The monitor's client of the agent's reservation API. A reservation is
//! kept whole as the agent sent it: the monitor moves cpus and memory and
//! sends every other field (disk_mb, ...) back unchanged.

use std::time::Duration;

use crate::policy::Amount;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent at {0} unreachable: {1}")]
    Unreachable(String, String),
    #[error("agent refused: {0}")]
    Refused(String),
}

pub struct AgentClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// For a PUT: the agent answers once preempted tasks are gone (their
    /// kill grace + 5 s), so this must be longer than that.
    reserve_timeout: Duration,
}

/// Reads: the agent answers at once.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A role's reservation, every field as the agent reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservation(pub serde_json::Map<String, serde_json::Value>);

impl Reservation {
    /// What the monitor moves.
    pub fn amount(&self) -> Amount {
        let f = |k: &str| self.0.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
        Amount {
            cpus: f("cpus"),
            mem_mb: f("mem_mb"),
        }
    }

    /// The same reservation with cpus and memory replaced.
    pub fn with(&self, a: Amount) -> Reservation {
        let mut m = self.0.clone();
        m.insert("cpus".into(), a.cpus.into());
        m.insert("mem_mb".into(), a.mem_mb.into());
        Reservation(m)
    }
}

impl AgentClient {
    /// Over the agent's Unix socket: the agent knows the monitor (root) by
    /// its peer credentials, no token needed.
    pub fn unix(socket: &std::path::Path, reserve_timeout: Duration) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(READ_TIMEOUT)
            // The agent speaks plain HTTP: no trust roots are loaded, so a
            // host without a CA store starts the monitor.
            .tls_certs_only(Vec::new())
            .unix_socket(socket.to_owned())
            .build()
            .expect("http client");
        AgentClient {
            base: "http://localhost".into(),
            token: None,
            http,
            reserve_timeout,
        }
    }

    pub fn new(base: &str, token: Option<String>, reserve_timeout: Duration) -> Self {
        // The static binary has no NSS: localhost is resolved here.
        let base = base
            .trim_end_matches('/')
            .replacen("://localhost", "://127.0.0.1", 1);
        // reqwest has rustls without a provider in this workspace (see
        // gleaner_agent::client::install_tls_provider).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(READ_TIMEOUT)
            // The agent speaks plain HTTP: no trust roots are loaded, so a
            // host without a CA store starts the monitor.
            .tls_certs_only(Vec::new())
            .build()
            .expect("http client");
        AgentClient {
            base,
            token,
            http,
            reserve_timeout,
        }
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .auth(req)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = resp.status();
        // A success whose body is cut short (the agent restarting) or is
        // not JSON says nothing: never read it as an empty answer.
        let bytes = resp.bytes().await.map_err(|e| {
            ClientError::Unreachable(self.base.clone(), format!("answer cut short: {e}"))
        })?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Unreachable(self.base.clone(), format!("answer is not JSON: {e}"))
            })
        } else {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Err(ClientError::Refused(format!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("")
            )))
        }
    }

    /// The role's current reservation (None: the role has none).
    pub async fn reservation(&self, role: &str) -> Result<Option<Reservation>, ClientError> {
        let v = self
            .send(
                self.http
                    .get(format!("{}/v1/reservations", self.base))
                    .timeout(READ_TIMEOUT),
            )
            .await?;
        if !v.is_object() {
            return Err(ClientError::Unreachable(
                self.base.clone(),
                format!("reservations answer is not an object: {v}"),
            ));
        }
        Ok(match v.get(role).map(|r| &r["reserved"]) {
            Some(serde_json::Value::Object(m)) => Some(Reservation(m.clone())),
            _ => None,
        })
    }

    /// Sets the reservation (every field of `r`); returns it as the agent
    /// applied it, and the ids the agent preempted.
    pub async fn reserve(
        &self,
        role: &str,
        r: &Reservation,
    ) -> Result<(Reservation, Vec<String>), ClientError> {
        let v = self
            .send(
                self.http
                    .put(format!("{}/v1/reservations/{role}", self.base))
                    .timeout(self.reserve_timeout)
                    .json(&r.0),
            )
            .await?;
        let applied = match &v["reserved"] {
            serde_json::Value::Object(m) => Reservation(m.clone()),
            _ => r.clone(),
        };
        let preempted = v["preempted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        Ok((applied, preempted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_keeps_every_other_field() {
        let got: serde_json::Value =
            serde_json::from_str(r#"{"cpus": 2.0, "mem_mb": 512.0, "disk_mb": 1000.0}"#).unwrap();
        let r = Reservation(got.as_object().unwrap().clone());
        assert_eq!(
            r.amount(),
            Amount {
                cpus: 2.0,
                mem_mb: 512.0
            }
        );
        let sent = r.with(Amount {
            cpus: 1.0,
            mem_mb: 256.0,
        });
        assert_eq!(
            serde_json::Value::Object(sent.0),
            serde_json::json!({"cpus": 1.0, "mem_mb": 256.0, "disk_mb": 1000.0})
        );
    }

    /// Review of issue 21: a 200 whose body was cut short (the agent
    /// restarting mid-answer) or was not JSON read as "no reservation":
    /// the monitor then wrote one from nothing, dropping disk_mb again.
    #[tokio::test]
    async fn a_cut_or_garbled_answer_is_an_error_not_no_reservation() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for body in [
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"batch\": {\"reserved\"",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                conn.write_all(body.as_bytes()).await.unwrap();
                // Closed: a cut answer.
            });
            let client = AgentClient::new(
                &format!("http://{addr}"),
                None,
                Duration::from_secs(5),
            );
            let got = client.reservation("batch").await;
            assert!(got.is_err(), "{body:?}: {got:?}");
            server.await.unwrap();
        }
    }
}
