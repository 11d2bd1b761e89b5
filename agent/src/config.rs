//! Agent configuration: embedded defaults, then the TOML file, then flags.
//! Every error is one line that names the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::VersionChoice;
use crate::spec::check_name;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{key}: {reason}")]
    Key { key: &'static str, reason: String },
}

fn key(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        reason: reason.into(),
    }
}

/// Features that can be forced off to exercise the fallbacks of old kernels.
pub const KNOWN_FEATURES: [&str; 10] = [
    "pids_cgroup",
    "oom_kill_counter",
    "cpu_idle",
    "freezer",
    "cgroup_kill",
    "pivot_root",
    "seccomp",
    "net_namespace",
    "openat2",
    "mount_setattr",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// HTTP listen address. Every request on it needs the bearer token.
    pub listen: String,
    pub data_dir: PathBuf,
    /// Name of gleaner's cgroup under each controller's root.
    pub cgroup_root: String,
    /// Defaults to the host name.
    pub node_id: Option<String>,
    pub etcd: Vec<String>,
    /// Key prefix in etcd: `<prefix>/nodes/<node-id>/...`.
    pub etcd_prefix: String,
    /// etcd user (RBAC) and the file holding its password (root-only: a
    /// file group or others may read or write is refused). Both or neither.
    pub etcd_username: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub attributes: BTreeMap<String, String>,
    /// File holding the bearer token every TCP request must carry.
    /// Absent: `<data_dir>/api.token`, created (0600, 256 bits) at first start.
    pub token_file: Option<PathBuf>,
    /// Besides uid 0, callers on the Unix socket (`<data_dir>/run/api.sock`)
    /// with one of these uids or gids are admins. Empty: the socket is 0600.
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
    /// TCP connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// A request's head and body must arrive within this (slow clients are
    /// dropped).
    pub request_read_timeout_s: f64,
    pub cgroup_version: VersionChoice,
    /// Force fallbacks: any of `KNOWN_FEATURES`.
    pub disable_features: Vec<String>,
    /// Process limit per task (pids cgroup, or RLIMIT_NPROC as fallback).
    pub pids_limit: u64,
    /// Host ports tasks may be given (`ports` in the spec), inclusive.
    pub port_range: [u16; 2],
    pub default_user: String,
    /// Roles whose tasks may run as root (uid 0).
    pub root_roles: Vec<String>,
    /// rootfs of tasks that name none.
    pub default_rootfs: Option<PathBuf>,
    /// Host directories whose subdirectories may be a task's `rootfs.path`
    /// (the image cache always may; `/` and the data dir never).
    pub rootfs_dirs: Vec<PathBuf>,
    /// Roles whose tasks see a read-only /sys (others have none).
    pub sys_roles: Vec<String>,
    /// Cap of each of a task's stdout and stderr files; past it the oldest
    /// half is dropped (noted in the file).
    pub log_max_mb: u64,
    /// oom_score_adj of task processes (-1000..=1000): 1000 makes the host
    /// OOM killer take batch tasks before anything else.
    pub task_oom_score_adj: i32,
    /// Reservation of the `batch` role on first start (default: the host).
    pub initial_reservation: Option<crate::scheduler::Amount>,
    /// How often supervisors are checked for life (exit reports arrive at
    /// once by datagram; this only catches a supervisor that was killed).
    pub liveness_interval_s: f64,
    /// Fetched rootfs images kept unpacked; least recently used ones past
    /// this are removed once no unfinished task names them.
    pub image_cache_mb: u64,
    /// Largest image archive fetched.
    pub image_max_mb: u64,
    /// Per fetch attempt, from connecting to the last byte.
    pub image_fetch_timeout_s: f64,
    /// Further attempts after a transient failure (network, HTTP 5xx).
    pub image_fetch_retries: u32,
    /// Most bytes and entries one image may unpack to: a decompression
    /// bomb fails the task with rootfs_invalid instead of filling the disk.
    pub image_unpack_max_mb: u64,
    pub image_unpack_max_entries: u64,
    /// CA bundle for https:// images; default: $SSL_CERT_FILE, then the
    /// usual bundle paths, then the bundled Mozilla set (see `tls`).
    pub ca_file: Option<PathBuf>,
    /// Addresses, networks (`ADDR/BITS`) or host names that http(s)
    /// downloads (fetch, images) may reach although they are loopback,
    /// link-local, unspecified, multicast or broadcast (refused otherwise).
    pub fetch_allow_hosts: Vec<String>,
    /// Directories whose files a rootfs image's `file://` URI may name
    /// (default none: `file://` is refused with 400). The agent reads them
    /// as root for any submitter; only regular files, no symlink out.
    pub image_file_dirs: Vec<PathBuf>,
    /// How often each task's sandbox and /tmp are measured against disk_mb.
    pub disk_check_interval_s: f64,
    /// Most entries one measurement walks (a task's sandbox and /tmp, or a
    /// group's volume and members' dirs): past it the task or group counts
    /// as over its disk_mb, so millions of files cannot stall the sweep.
    pub disk_check_max_entries: u64,
    /// Finished tasks (records, logs, task dirs) are removed this many
    /// hours after they ended...
    pub finished_retention_h: f64,
    /// ... or sooner, oldest first, once more than this many are kept.
    pub finished_max: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: "127.0.0.1:5051".into(),
            data_dir: PathBuf::from("/var/lib/gleaner"),
            cgroup_root: "gleaner".into(),
            node_id: None,
            etcd: Vec::new(),
            etcd_prefix: "/gleaner".into(),
            etcd_username: None,
            etcd_password_file: None,
            attributes: BTreeMap::new(),
            token_file: None,
            admin_uids: Vec::new(),
            admin_gids: Vec::new(),
            max_connections: 2048,
            request_read_timeout_s: 10.0,
            cgroup_version: VersionChoice::Auto,
            disable_features: Vec::new(),
            pids_limit: 1024,
            port_range: [31000, 32000],
            default_user: "nobody".into(),
            root_roles: Vec::new(),
            default_rootfs: None,
            rootfs_dirs: vec![PathBuf::from("/var/lib/gleaner/rootfs")],
            sys_roles: Vec::new(),
            log_max_mb: 100,
            liveness_interval_s: 5.0,
            initial_reservation: None,
            task_oom_score_adj: 1000,
            image_cache_mb: 10240,
            image_max_mb: 4096,
            image_fetch_timeout_s: 300.0,
            image_fetch_retries: 3,
            image_unpack_max_mb: 16384,
            image_unpack_max_entries: 1_000_000,
            ca_file: None,
            fetch_allow_hosts: Vec::new(),
            image_file_dirs: Vec::new(),
            disk_check_interval_s: 5.0,
            disk_check_max_entries: 1_000_000,
            finished_retention_h: 24.0,
            finished_max: 10_000,
        }
    }
}

/// Command-line overrides (all optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cgroup_root: Option<String>,
    pub node_id: Option<String>,
    pub etcd: Option<String>,
    pub attributes: Vec<String>,
}

impl AgentConfig {
    /// Defaults, then `file` if given, then `over`; validated.
    pub fn load(file: Option<&Path>, over: &Overrides) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => Self::from_file(path)?,
            None => AgentConfig::default(),
        };
        cfg.apply(over)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })
    }

    fn apply(&mut self, over: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &over.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &over.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &over.cgroup_root {
            self.cgroup_root = v.clone();
        }
        if let Some(v) = &over.node_id {
            self.node_id = Some(v.clone());
        }
        if let Some(v) = &over.etcd {
            self.etcd = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        for kv in &over.attributes {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| key("attribute", format!("{kv:?} is not K=V")))?;
            self.attributes.insert(k.to_owned(), v.to_owned());
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.max_connections == 0 {
            return Err(key("max_connections", "must be > 0"));
        }
        check_name("cgroup_root", &self.cgroup_root).map_err(|e| key("cgroup_root", e.reason))?;
        if !self.data_dir.is_absolute() {
            return Err(key(
                "data_dir",
                format!("must be absolute, got {}", self.data_dir.display()),
            ));
        }
        if let Some(id) = &self.node_id {
            check_name("node_id", id).map_err(|e| key("node_id", e.reason))?;
        }
        match (&self.etcd_username, &self.etcd_password_file) {
            (Some(u), Some(_)) if u.trim().is_empty() => {
                return Err(key("etcd_username", "must not be empty"));
            }
            (Some(_), None) => {
                return Err(key("etcd_password_file", "etcd_username needs it"));
            }
            (None, Some(_)) => {
                return Err(key("etcd_username", "etcd_password_file needs it"));
            }
            _ => {}
        }
        for name in self.attributes.keys() {
            check_name("attributes", name)
                .map_err(|e| key("attribute", format!("{name:?}: {}", e.reason)))?;
        }
        for f in &self.disable_features {
            if !KNOWN_FEATURES.contains(&f.as_str()) {
                return Err(key(
                    "disable_features",
                    format!("unknown feature {f:?} (known: {KNOWN_FEATURES:?})"),
                ));
            }
        }
        if !(-1000..=1000).contains(&self.task_oom_score_adj) {
            return Err(key("task_oom_score_adj", "must be between -1000 and 1000"));
        }
        if self.pids_limit == 0 {
            return Err(key("pids_limit", "must be > 0"));
        }
        if self.port_range[0] == 0 || self.port_range[0] > self.port_range[1] {
            return Err(key(
                "port_range",
                "must be [first, last] with 0 < first <= last",
            ));
        }
        if !(self.liveness_interval_s.is_finite() && self.liveness_interval_s > 0.0) {
            return Err(key("liveness_interval_s", "must be > 0"));
        }
        for (name, v) in [
            ("image_fetch_timeout_s", self.image_fetch_timeout_s),
            ("disk_check_interval_s", self.disk_check_interval_s),
            ("request_read_timeout_s", self.request_read_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(key(name, "must be > 0"));
            }
        }
        if !(self.finished_retention_h.is_finite() && self.finished_retention_h >= 0.0) {
            return Err(key("finished_retention_h", "must be a number >= 0"));
        }
        if self.log_max_mb == 0 {
            return Err(key("log_max_mb", "must be > 0"));
        }
        if let Some(d) = self.rootfs_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(key(
                "rootfs_dirs",
                format!("{} is not absolute", d.display()),
            ));
        }
        // "/" would make every host directory a possible task root.
        if let Some(d) = self.rootfs_dirs.iter().find(|d| d.parent().is_none()) {
            return Err(key(
                "rootfs_dirs",
                format!("{} would allow any host directory", d.display()),
            ));
        }
        if self.image_max_mb == 0 {
            return Err(key("image_max_mb", "must be > 0"));
        }
        if self.image_unpack_max_mb == 0 {
            return Err(key("image_unpack_max_mb", "must be > 0"));
        }
        if self.disk_check_max_entries == 0 {
            return Err(key("disk_check_max_entries", "must be > 0"));
        }
        if self.image_unpack_max_entries == 0 {
            return Err(key("image_unpack_max_entries", "must be > 0"));
        }
        if let Some(p) = &self.default_rootfs {
            if !p.is_absolute() {
                return Err(key("default_rootfs", "must be absolute"));
            }
        }
        self.egress()?;
        Ok(())
    }

    /// Where downloads may connect: `fetch_allow_hosts`, and never the
    /// agent's own listen address.
    pub fn egress(&self) -> Result<gleaner_core::egress::Egress, ConfigError> {
        gleaner_core::egress::Egress::parse(&self.fetch_allow_hosts, self.listen_addr().ok())
            .map_err(|e| key("fetch_allow_hosts", e))?
            .with_file_dirs(&self.image_file_dirs)
            .map_err(|e| key("image_file_dirs", e))
            .and_then(|egress| {
                self.check_image_file_dirs()
                    .map_err(|e| key("image_file_dirs", e))?;
                Ok(egress.with_private_dir(self.data_dir.clone()))
            })
    }

    /// `image_file_dirs` in the data dir (its api.token, task files), and
    /// each entry as it resolves now (a symlink to / or /etc), are
    /// refused; the agent checks the resolved dir again, with its owner and
    /// mode, at each open.
    fn check_image_file_dirs(&self) -> Result<(), String> {
        let data = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        for dir in &self.image_file_dirs {
            let real = std::fs::canonicalize(dir).ok();
            for d in std::iter::once(dir).chain(real.as_ref()) {
                if let Some(why) = gleaner_core::egress::file_dir_refusal(d) {
                    return Err(format!(
                        "{} (resolves to {}): {why}",
                        dir.display(),
                        d.display()
                    ));
                }
                // Above the data dir is allowed (a test's or a demo's
                // scratch dir holds both): a file inside the data dir is
                // refused when it is opened.
                if d.starts_with(&data) || d.starts_with(&self.data_dir) {
                    return Err(format!(
                        "{}: is the data dir or inside it ({})",
                        dir.display(),
                        self.data_dir.display()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn fetch_limits(&self) -> crate::images::FetchLimits {
        crate::images::FetchLimits {
            max_bytes: self.image_max_mb << 20,
            timeout: std::time::Duration::from_secs_f64(self.image_fetch_timeout_s),
            retries: self.image_fetch_retries,
            cache_bytes: self.image_cache_mb << 20,
            unpack: gleaner_rootfs::Budget {
                max_bytes: self.image_unpack_max_mb << 20,
                max_entries: self.image_unpack_max_entries,
                entry_bytes: 0,
            },
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let text = self.listen.replace("localhost:", "127.0.0.1:");
        text.parse().map_err(|_| {
            key(
                "listen",
                format!("{:?} is not ADDR:PORT with a numeric address", self.listen),
            )
        })
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        })
    }

    pub fn feature_disabled(&self, name: &str) -> bool {
        self.disable_features.iter().any(|f| f == name)
    }

    /// Where the admin token is: `token_file`, else `<data_dir>/api.token`.
    pub fn token_path(&self) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api.token"))
    }

    /// The Unix socket of the API.
    pub fn api_socket(&self) -> PathBuf {
        self.data_dir.join("run").join("api.sock")
    }

    /// Reads the admin token; without `token_file`, creates
    /// `<data_dir>/api.token` (0600, 256 random bits) the first time.
    pub fn read_or_create_token(&self) -> Result<String, ConfigError> {
        let path = self.token_path();
        if self.token_file.is_none() && !path.exists() {
            create_token_file(&path).map_err(|e| key("token_file", e))?;
        }
        read_token_file(&path)
    }

    /// The etcd user and password, read once at start; None without
    /// `etcd_username`.
    pub fn etcd_credentials(&self) -> Result<Option<EtcdCredentials>, ConfigError> {
        let (Some(user), Some(path)) = (&self.etcd_username, &self.etcd_password_file) else {
            return Ok(None);
        };
        let password = read_secret_file(path).map_err(|e| key("etcd_password_file", e))?;
        Ok(Some(EtcdCredentials {
            user: user.clone(),
            password,
        }))
    }

    /// Reads the admin token (for clients: never creates one).
    pub fn read_token(&self) -> Result<String, ConfigError> {
        read_token_file(&self.token_path())
    }
}

/// An etcd user and its password; Debug never shows the password.
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

impl EtcdCredentials {
    /// `etcd_client`'s options with the user set (the token is fetched at
    /// connect and refreshed when etcd says it expired).
    pub fn apply(
        creds: Option<&EtcdCredentials>,
        options: etcd_client::ConnectOptions,
    ) -> etcd_client::ConnectOptions {
        match creds {
            Some(c) => options
                .with_user(c.user.clone(), c.password.clone())
                .with_auto_token_refresh(true),
            None => options,
        }
    }
}

/// A secret file: not group/other-accessible, not empty; trimmed.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    // Tasks share the host: a password they could read protects nothing.
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:03o}): chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    // Like ssh with its keys: a secret others may read or replace is none.
    let meta = std::fs::metadata(path)
        .map_err(|e| key("token_file", format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o026 != 0 {
        return Err(key(
            "token_file",
            format!(
                "{} is readable or writable by others (mode {mode:03o}): chmod 600 it",
                path.display()
            ),
        ));
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| key("token_file", format!("{}: {e}", path.display())))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(key("token_file", format!("{} is empty", path.display())));
    }
    Ok(token)
}

/// Writes a fresh token, 0600 from the first byte (created exclusively: a
/// file someone else put there is never taken over).
fn create_token_file(path: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| format!("random token: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(format!("{}\n", crate::auth::new_token(random)).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tarball's agent.toml shows every key, and parses once its
    /// commented defaults are uncommented (so they are right).
    #[test]
    fn the_shipped_config_lists_every_key_at_its_default() {
        let text =
            include_str!("../../packaging/etc/agent.toml.in").replace("@PREFIX@", "/opt/gleaner");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| !r.starts_with(' ') && !r.is_empty())
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: AgentConfig = toml::from_str(&uncommented).unwrap();
        let all = toml::Value::try_from(AgentConfig::default()).unwrap();
        for key in all.as_table().unwrap().keys() {
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} =")) || l == format!("[{key}]")),
                "packaging/etc/agent.toml.in lacks {key}"
            );
        }
        let d = AgentConfig::default();
        assert_eq!(parsed.listen, d.listen);
        assert_eq!(parsed.image_cache_mb, d.image_cache_mb);
        assert_eq!(parsed.disk_check_interval_s, d.disk_check_interval_s);
        assert_eq!(parsed.data_dir, PathBuf::from("/opt/gleaner/var/lib"));
    }

    #[test]
    fn a_bad_fetch_allow_entry_names_the_key() {
        let cfg = AgentConfig {
            fetch_allow_hosts: vec!["10.0.0.0/40".into()],
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with("fetch_allow_hosts: \"10.0.0.0/40\""), "{e}");
    }

    /// The etcd password: both keys or neither, and a file group or others
    /// may read is refused at start, naming the key and the path.
    #[test]
    fn etcd_credentials_need_both_keys_and_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("etcd-password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let only_user = AgentConfig {
            etcd_username: Some("agent".into()),
            ..Default::default()
        };
        assert!(only_user
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("etcd_password_file"));
        let cfg = AgentConfig {
            etcd_username: Some("agent".into()),
            etcd_password_file: Some(pw.clone()),
            ..Default::default()
        };
        cfg.validate().unwrap();
        let err = cfg.etcd_credentials().unwrap_err().to_string();
        assert!(
            err.starts_with("etcd_password_file") && err.contains("mode 640"),
            "{err}"
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = cfg.etcd_credentials().unwrap().unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.as_str()),
            ("agent", "s3cret")
        );
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert_eq!(AgentConfig::default().etcd_credentials().unwrap(), None);
    }

    #[test]
    fn a_token_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        let t1 = cfg.read_or_create_token().unwrap();
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(cfg.token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(cfg.read_or_create_token().unwrap(), t1);
        assert_eq!(cfg.read_token().unwrap(), t1);
        let given = AgentConfig {
            token_file: Some(dir.path().join("missing")),
            ..Default::default()
        };
        assert!(given
            .read_or_create_token()
            .unwrap_err()
            .to_string()
            .starts_with("token_file"));
    }

    /// A token others can read (or replace) is no secret: the agent does
    /// not start on it, whether the operator's `token_file` or its own
    /// `api.token` loosened by hand.
    #[test]
    fn a_token_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("given.token");
        std::fs::write(&given, "s3cret\n").unwrap();
        let cfg = AgentConfig {
            data_dir: dir.path().join("data"),
            token_file: Some(given.clone()),
            ..Default::default()
        };
        for mode in [0o644, 0o606, 0o620] {
            std::fs::set_permissions(&given, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = cfg.read_or_create_token().unwrap_err().to_string();
            assert!(
                err.starts_with("token_file") && err.contains("given.token"),
                "{mode:o}: {err}"
            );
        }
        for mode in [0o600, 0o640, 0o400] {
            std::fs::set_permissions(&given, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(cfg.read_or_create_token().unwrap(), "s3cret", "{mode:o}");
        }
        let own = AgentConfig {
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        own.read_or_create_token().unwrap();
        std::fs::set_permissions(own.token_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(own.read_or_create_token().is_err());
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = AgentConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5051");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/gleaner"));
        assert_eq!(c.cgroup_root, "gleaner");
        assert!(c.etcd.is_empty());
    }

    /// Review: `rootfs_dirs = ["/"]` was accepted, making any host
    /// directory (`/root`, `/etc`) a task's root.
    #[test]
    fn rootfs_dirs_refuses_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        for bad in ["/", "//"] {
            std::fs::write(&p, format!("rootfs_dirs = [\"/srv/rootfs\", {bad:?}]\n")).unwrap();
            let e = AgentConfig::load(Some(&p), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("rootfs_dirs"), "{bad}: {e}");
        }
    }

    #[test]
    fn image_file_dirs_may_not_be_system_trees_the_data_dir_or_lead_there_when_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("to-etc")).unwrap();
        let load = |dirs: &[PathBuf]| {
            let p = dir.path().join("a.toml");
            let list: Vec<String> = dirs
                .iter()
                .map(|d| format!("{:?}", d.display().to_string()))
                .collect();
            std::fs::write(
                &p,
                format!(
                    "data_dir = {:?}\nimage_file_dirs = [{}]\n",
                    data.display().to_string(),
                    list.join(", ")
                ),
            )
            .unwrap();
            AgentConfig::load(Some(&p), &Overrides::default()).map_err(|e| e.to_string())
        };
        assert!(load(&[images.clone()]).is_ok());
        for bad in [
            PathBuf::from("/etc"),
            PathBuf::from("/proc/1/root"),
            dir.path().join("to-etc"),
            data.clone(),
            data.join("images"),
        ] {
            let e = load(&[images.clone(), bad.clone()]).unwrap_err();
            assert!(e.starts_with("image_file_dirs"), "{}: {e}", bad.display());
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let e = AgentConfig::load(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn flags_override_file_and_are_checked() {
        let over = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            attributes: vec!["zone=east".into()],
            etcd: Some("http://127.0.0.1:2379, http://127.0.0.1:2380".into()),
            ..Default::default()
        };
        let c = AgentConfig::load(None, &over).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.attributes["zone"], "east");
        assert_eq!(c.etcd.len(), 2);

        let bad = Overrides {
            attributes: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(AgentConfig::load(None, &bad)
            .unwrap_err()
            .to_string()
            .starts_with("attribute:"));
        let public = Overrides {
            listen: Some("0.0.0.0:5051".into()),
            ..Default::default()
        };
        // Every TCP request needs the token now, so any address is fine.
        assert!(AgentConfig::load(None, &public).is_ok());
        let root = Overrides {
            cgroup_root: Some("../x".into()),
            ..Default::default()
        };
        assert!(AgentConfig::load(None, &root)
            .unwrap_err()
            .to_string()
            .starts_with("cgroup_root"));
        let port = Overrides {
            listen: Some("127.0.0.1:http".into()),
            ..Default::default()
        };
        assert!(AgentConfig::load(None, &port)
            .unwrap_err()
            .to_string()
            .starts_with("listen"));
    }
}
