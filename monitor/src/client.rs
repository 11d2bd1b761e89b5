//! The monitor's client of the agent's reservation API.

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
}

impl AgentClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        // The static binary has no NSS: localhost is resolved here.
        let base = base
            .trim_end_matches('/')
            .replacen("://localhost", "://127.0.0.1", 1);
        // reqwest has rustls without a provider in this workspace (see
        // gleaner_agent::client::install_tls_provider).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        AgentClient { base, token, http }
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
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Refused(format!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("")
            )))
        }
    }

    /// The role's current reservation (None: the role has none).
    pub async fn reservation(&self, role: &str) -> Result<Option<Amount>, ClientError> {
        let v = self
            .send(self.http.get(format!("{}/v1/reservations", self.base)))
            .await?;
        Ok(v.get(role)
            .and_then(|r| serde_json::from_value(r["reserved"].clone()).ok())
            .map(|r: serde_json::Value| Amount {
                cpus: r["cpus"].as_f64().unwrap_or(0.0),
                mem_mb: r["mem_mb"].as_f64().unwrap_or(0.0),
            }))
    }

    /// Sets the reservation; returns the ids the agent preempted.
    pub async fn reserve(&self, role: &str, a: Amount) -> Result<Vec<String>, ClientError> {
        let body = serde_json::json!({"cpus": a.cpus, "mem_mb": a.mem_mb});
        let v = self
            .send(
                self.http
                    .put(format!("{}/v1/reservations/{role}", self.base))
                    .json(&body),
            )
            .await?;
        Ok(v["preempted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect())
    }
}
