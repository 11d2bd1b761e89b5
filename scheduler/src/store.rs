//! etcd access shared by the API and the leader: connecting (with the
//! endpoint rules of the agent), typed reads, and the error type.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on a connection with a stream open. etcd (grpc-go) counts
/// a ping less than `--grpc-keepalive-min-time` (default 5 s) after the
/// previous one as a strike unless it sent data since, and closes the
/// connection at the third: pings every 2 s killed a blocked campaign (no
/// data until elected) every ~9 s, and a follower's session with it.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(6);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per read of a prefix. One read of a whole prefix is one gRPC
/// message, and the client refuses messages over 4 MiB: a fleet past
/// ~10,000 jobs could not be read at once (a new leader never led again).
const PAGE: i64 = 2_000;
/// Largest message the leader's watch accepts. Watch responses are sent
/// fragmented (at most etcd's `--max-request-bytes` each, 1.5 MiB by
/// default); this only leaves room for an operator's larger setting.
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd {endpoints}: {reason}")]
    Unavailable { endpoints: String, reason: String },
    #[error("etcd key {key}: {reason}")]
    Decode { key: String, reason: String },
}

/// `localhost` becomes 127.0.0.1 (the static binary has no NSS); a bare
/// `host:port` is fine for etcd-client.
pub fn endpoint(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.replace("://localhost", "://127.0.0.1");
    match url.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => url,
    }
}

/// An etcd user and its password (etcd RBAC); Debug never shows the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdCredentials({}, <password>)", self.user)
    }
}

/// A client made on first use and remade after a failure.
pub struct Store {
    endpoints: Vec<String>,
    credentials: Option<EtcdCredentials>,
    client: Mutex<Option<Client>>,
}

impl Store {
    pub fn new(endpoints: &[String], credentials: Option<EtcdCredentials>) -> Store {
        Store {
            endpoints: endpoints.iter().map(|e| endpoint(e)).collect(),
            credentials,
            client: Mutex::new(None),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.endpoints.join(","),
            reason: e.to_string(),
        }
    }

    pub async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(
            &self.endpoints,
            self.credentials.as_ref(),
            Some(REQUEST_TIMEOUT),
        )
        .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client after an error, so the next call reconnects.
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// Every value under `prefix`, decoded; undecodable values are skipped
    /// with a warning (an operator's stray key must not break listing).
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T, i64)>, StoreError> {
        let mut c = self.client().await?;
        let kvs = match get_prefix(&mut c, prefix).await {
            Ok((kvs, _)) => kvs,
            Err(e) => {
                self.reset().await;
                return Err(self.unavailable(e));
            }
        };
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match serde_json::from_slice(kv.value()) {
                Ok(v) => out.push((key, v, kv.mod_revision())),
                Err(e) => tracing::warn!(%key, error = %e, "skipping undecodable value"),
            }
        }
        Ok(out)
    }

    /// One value and its mod revision.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, StoreError> {
        let mut c = self.client().await?;
        let resp = match c.get(key, None).await {
            Ok(r) => r,
            Err(e) => {
                self.reset().await;
                return Err(self.unavailable(e));
            }
        };
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let v = serde_json::from_slice(kv.value()).map_err(|e| StoreError::Decode {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Some((v, kv.mod_revision())))
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key under `prefix` at one revision, read in pages of `PAGE`
/// keys; returns them and that revision (a watch continues from the next).
pub async fn get_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<KeyValue>, i64), etcd_client::Error> {
    let mut out = Vec::new();
    let rev = for_each_in_prefix(client, prefix, |kv| out.push(kv)).await?;
    Ok((out, rev))
}

/// Hands every key under `prefix` to `f`, in key order, at one revision,
/// a page of `PAGE` keys at a time; returns that revision. Only one page
/// is held at once: a whole fleet read into memory first (100 MB of JSON
/// at 50,000 jobs) set the process's peak.
pub async fn for_each_in_prefix(
    client: &mut Client,
    prefix: &str,
    mut f: impl FnMut(KeyValue),
) -> Result<i64, etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut rev = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if rev > 0 {
            options = options.with_revision(rev);
        }
        let mut resp = client.get(from.clone(), Some(options)).await?;
        if rev == 0 {
            rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let next = kvs.last().map(|last| {
            let mut k = last.key().to_vec();
            k.push(0);
            k
        });
        kvs.into_iter().for_each(&mut f);
        match next {
            Some(k) if more => from = k,
            _ => return Ok(rev),
        }
    }
}

/// `timeout`: per request; none for the election's campaign, which blocks
/// until this replica leads.
///
/// One member per client, taken in turn and probed first: a client balanced
/// over every endpoint keeps sending part of its requests to a dead member,
/// so with one member of three down every session failed within seconds
/// and no replica could lead (the agent does the same, runtime/etcd.rs).
pub async fn connect(
    endpoints: &[String],
    credentials: Option<&EtcdCredentials>,
    timeout: Option<Duration>,
) -> Result<Client, StoreError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static TURN: AtomicUsize = AtomicUsize::new(0);
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_EVERY, KEEPALIVE_TIMEOUT);
    if let Some(t) = timeout {
        options = options.with_timeout(t);
    }
    if let Some(c) = credentials {
        // The token is fetched at connect and fetched again when etcd
        // says it expired (simple tokens live 5 minutes by default).
        options = options
            .with_user(c.user.clone(), c.password.clone())
            .with_auto_token_refresh(true);
    }
    let mut last = String::from("no endpoint");
    for _ in 0..endpoints.len().max(1) {
        let Some(member) = endpoints
            .get(TURN.fetch_add(1, Ordering::Relaxed) % endpoints.len().max(1))
            .cloned()
        else {
            break;
        };
        let probe = async {
            let mut c = Client::connect([member.as_str()], Some(options.clone())).await?;
            tokio::time::timeout(CONNECT_TIMEOUT, c.status())
                .await
                .map_err(|_| etcd_client::Error::InvalidArgs("status timed out".into()))??;
            Ok::<Client, etcd_client::Error>(c)
        };
        match probe.await {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("{member}: {e}"),
        }
    }
    Err(StoreError::Unavailable {
        endpoints: endpoints.join(","),
        reason: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_the_next_key() {
        assert_eq!(prefix_end(b"/gleaner/"), b"/gleaner0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
