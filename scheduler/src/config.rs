//! `SchedulerConfig`: defaults, TOML file, flag overrides, validation.
//! Every key is listed at its default in `packaging/etc/scheduler.toml`.

use std::path::{Path, PathBuf};

use gleaner_core::fleet::{Fitness, DEFAULT_PREFIX};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// Key prefix of the fleet in etcd.
    pub etcd_prefix: String,
    /// etcd user (RBAC) and the file holding its password (a file group
    /// or others may read or write is refused). Both or neither.
    pub etcd_username: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    /// Read from `etcd_password_file` at start; never in the file.
    #[serde(skip)]
    pub etcd_credentials: Option<crate::store::EtcdCredentials>,
    /// Address of the API (every replica serves it).
    pub listen: String,
    /// File holding the bearer token the API requires; absent: no token.
    pub token_file: Option<PathBuf>,
    /// This replica's name in the election (what `GET /v1/leader` shows);
    /// empty: `<hostname>:<listen port>`.
    pub name: String,
    /// TTL of the leader's lease: a dead leader is replaced this long after
    /// (kept alive every TTL/3).
    pub leader_ttl_s: i64,
    /// A placement its agent reports QUEUED (cannot admit it) this long
    /// after placement is withdrawn and placed on another node.
    pub placement_timeout_s: u64,
    /// Default fitness among nodes that fit: "bin-pack" or "spread"
    /// (a queue may override).
    pub fitness: Fitness,
    /// At most this many jobs placed per pass.
    pub max_placements_per_pass: usize,
    /// Passes run on changes, at most this often (ms), and at least every
    /// second.
    pub pass_interval_ms: u64,
    /// Retries of a failed or lost job when its submission does not say.
    pub default_max_retries: u32,
    /// `MARATHON_URL` of app instances that get a scoped token; empty:
    /// `http://<listen>`.
    pub marathon_url: String,
    /// API connections served at once; past it a new one is closed at once.
    pub max_connections: usize,
    /// A request's head, and then its body, must arrive within this (s):
    /// idle or trickling clients (slowloris) are dropped.
    pub request_read_timeout_s: f64,
    /// `GET /v2/events` subscribers at once (each holds an etcd watch);
    /// past it 503.
    pub max_event_streams: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            etcd_prefix: DEFAULT_PREFIX.into(),
            etcd_username: None,
            etcd_password_file: None,
            etcd_credentials: None,
            listen: "127.0.0.1:8080".into(),
            token_file: None,
            name: String::new(),
            leader_ttl_s: 3,
            placement_timeout_s: 30,
            fitness: Fitness::BinPack,
            max_placements_per_pass: 1000,
            pass_interval_ms: 50,
            default_max_retries: 3,
            marathon_url: String::new(),
            max_connections: 4096,
            request_read_timeout_s: 10.0,
            max_event_streams: 64,
        }
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<SchedulerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.into(),
            reason: e.to_string().to_lowercase(),
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::File {
            path: path.into(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<SchedulerConfig, String> {
        let c: SchedulerConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.etcd.is_empty() || self.etcd.iter().any(|e| e.trim().is_empty()) {
            return Err("etcd: give at least one URL".into());
        }
        if !self.etcd_prefix.starts_with('/') {
            return Err(format!(
                "etcd_prefix: must start with '/', got {:?}",
                self.etcd_prefix
            ));
        }
        match (&self.etcd_username, &self.etcd_password_file) {
            (Some(u), Some(_)) if u.trim().is_empty() => {
                return Err("etcd_username: must not be empty".into());
            }
            (Some(_), None) => return Err("etcd_password_file: etcd_username needs it".into()),
            (None, Some(_)) => return Err("etcd_username: etcd_password_file needs it".into()),
            _ => {}
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("listen: not an address:port: {:?}", self.listen));
        }
        if !(1..=600).contains(&self.leader_ttl_s) {
            return Err("leader_ttl_s: must be 1 to 600".into());
        }
        if self.placement_timeout_s == 0 {
            return Err("placement_timeout_s: must be at least 1".into());
        }
        if !(self.marathon_url.is_empty()
            || self.marathon_url.starts_with("http://")
            || self.marathon_url.starts_with("https://"))
        {
            return Err(format!(
                "marathon_url: must start with http:// or https://, got {:?}",
                self.marathon_url
            ));
        }
        if self.max_placements_per_pass == 0 {
            return Err("max_placements_per_pass: must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be at least 1".into());
        }
        if !(self.request_read_timeout_s.is_finite()
            && (0.1..=3600.0).contains(&self.request_read_timeout_s))
        {
            return Err("request_read_timeout_s: must be 0.1 to 3600".into());
        }
        Ok(())
    }

    /// The etcd user and password, read once at start.
    pub fn read_etcd_credentials(
        &self,
    ) -> Result<Option<crate::store::EtcdCredentials>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let (Some(user), Some(path)) = (&self.etcd_username, &self.etcd_password_file) else {
            return Ok(None);
        };
        let fail = |reason: String| ConfigError::File {
            path: path.clone(),
            reason: format!("etcd_password_file: {reason}"),
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "accessible by group or others (mode {mode:03o}): chmod 600 it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        let password = text.trim().to_owned();
        if password.is_empty() {
            return Err(fail("empty".into()));
        }
        Ok(Some(crate::store::EtcdCredentials {
            user: user.clone(),
            password,
        }))
    }

    /// What instances are told to call: `marathon_url`, else the listener.
    pub fn http_limits(&self) -> gleaner_core::serve::Limits {
        gleaner_core::serve::Limits {
            max_connections: self.max_connections,
            read_timeout: std::time::Duration::from_secs_f64(self.request_read_timeout_s),
        }
    }

    pub fn advertised_url(&self) -> String {
        if self.marathon_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.marathon_url.trim_end_matches('/').to_owned()
        }
    }

    /// The token, read once at start. A `token_file` that does not exist
    /// yet is created (0600, 256 random bits), as the agent does with its
    /// own: the shipped config names one, so an installed scheduler is
    /// never open to every local process (tasks share the host network).
    /// Like ssh with its keys, a token file others may read or write is
    /// refused.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let fail = |reason: String| ConfigError::File {
            path: path.clone(),
            reason,
        };
        if std::fs::symlink_metadata(path).is_err() {
            create_token_file(path).map_err(fail)?;
            tracing::info!(path = %path.display(), "created the API token");
        }
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o026 != 0 {
            return Err(fail(format!(
                "token_file is readable or writable by others (mode {mode:03o}): chmod 600 it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string().to_lowercase()))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(fail("token file is empty".into()));
        }
        Ok(Some(token))
    }
}

/// A fresh token, 0600 from the first byte, created exclusively (a file
/// someone else put there meanwhile is never taken over).
fn create_token_file(path: &Path) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("random token: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("creating the token file: {e}").to_lowercase())?;
    f.write_all(format!("{}\n", gleaner_core::auth::new_token(random)).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing the token file: {e}").to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            SchedulerConfig::parse("").unwrap(),
            SchedulerConfig::default()
        );
        let c = SchedulerConfig::parse("placement_timeout_s = 5\nfitness = \"spread\"").unwrap();
        assert_eq!(c.placement_timeout_s, 5);
        assert_eq!(c.fitness, Fitness::Spread);
        for (text, want) in [
            ("nope = 1", "unknown field"),
            ("listen = \"x\"", "listen"),
            ("etcd = []", "etcd"),
            ("etcd_prefix = \"g\"", "etcd_prefix"),
            ("fitness = \"best\"", "unknown variant"),
            ("placement_timeout_s = 0", "placement_timeout_s"),
            ("etcd_username = \"s\"", "etcd_password_file"),
            ("etcd_password_file = \"/p\"", "etcd_username"),
            ("marathon_url = \"ftp://x\"", "marathon_url"),
            ("max_connections = 0", "max_connections"),
            ("request_read_timeout_s = 0.0", "request_read_timeout_s"),
            ("request_read_timeout_s = -1.0", "request_read_timeout_s"),
        ] {
            let e = SchedulerConfig::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    /// The shipped config lists every key, and parses once its commented
    /// defaults are uncommented (so they are right).
    #[test]
    fn shipped_config_lists_every_key_at_its_default() {
        let text = include_str!("../../packaging/etc/scheduler.toml.in")
            .replace("@PREFIX@", "/opt/gleaner");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| !r.starts_with(' ') && !r.is_empty())
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = SchedulerConfig::parse(&uncommented).unwrap();
        let want = SchedulerConfig {
            token_file: Some("/opt/gleaner/etc/scheduler-token".into()),
            etcd_username: Some("gleaner-scheduler".into()),
            etcd_password_file: Some("/opt/gleaner/etc/etcd-scheduler-password".into()),
            ..SchedulerConfig::default()
        };
        assert_eq!(parsed, want);
        let all = toml::Value::try_from(SchedulerConfig::default()).unwrap();
        let keys = all.as_table().unwrap().keys().cloned();
        let optional = ["token_file", "etcd_username", "etcd_password_file"];
        for key in keys.chain(optional.map(String::from)) {
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} ="))),
                "packaging/etc/scheduler.toml.in lacks {key}"
            );
        }
    }
}
