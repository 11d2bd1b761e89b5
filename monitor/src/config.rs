//! Monitor configuration: defaults, then TOML, then flags. One-line errors
//! naming the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::PolicyConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// The agent's API over TCP (needs `token_file`).
    pub agent: String,
    /// The agent's Unix socket: used when it exists (same host), else
    /// `agent`.
    pub agent_socket: PathBuf,
    /// The role whose reservation the monitor moves.
    pub role: String,
    pub interval_s: f64,
    /// /metrics listen address (loopback).
    pub listen: String,
    /// The agent's cgroup root name, whose use is not business use.
    pub cgroup_root: String,
    pub token_file: Option<PathBuf>,
    /// How long a reservation change may take: the agent answers once the
    /// tasks it preempts are gone (their kill_grace_s + 5 s), so this must
    /// be longer than the largest kill_grace_s of the role's tasks.
    pub reserve_timeout_s: f64,
    /// Decide and log, but do not change the reservation.
    pub dry_run: bool,
    /// Use PSI where the kernel has it (false: the 3.10 fallback).
    pub use_psi: bool,
    pub policy: PolicyConfig,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            agent: "http://127.0.0.1:5051".into(),
            agent_socket: PathBuf::from("/var/lib/gleaner/run/api.sock"),
            role: "batch".into(),
            interval_s: 1.0,
            listen: "127.0.0.1:5052".into(),
            cgroup_root: "gleaner".into(),
            token_file: None,
            reserve_timeout_s: 120.0,
            dry_run: false,
            use_psi: true,
            policy: PolicyConfig::default(),
        }
    }
}

impl MonitorConfig {
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let Some(path) = file else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {}", path.display(), e.message()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.interval_s.is_finite() && self.interval_s >= 0.05) {
            return Err(format!(
                "interval: must be at least 50ms, got {}s",
                self.interval_s
            ));
        }
        if !(self.reserve_timeout_s.is_finite() && self.reserve_timeout_s >= 1.0) {
            return Err(format!(
                "reserve_timeout_s: must be at least 1, got {}",
                self.reserve_timeout_s
            ));
        }
        let addr: std::net::SocketAddr = self
            .listen
            .parse()
            .map_err(|_| format!("listen: {:?} is not ADDR:PORT", self.listen))?;
        if !addr.ip().is_loopback() {
            return Err(format!("listen: {addr} is not a loopback address"));
        }
        if self.role.is_empty()
            || !self
                .role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(format!("role: {:?} is not a role name", self.role));
        }
        self.policy.validate().map_err(|e| format!("policy.{e}"))
    }
}

/// `1s`, `500ms`, `2` (seconds).
pub fn parse_interval(s: &str) -> Result<f64, String> {
    let bad = || format!("interval: {s:?} is not a duration like 1s or 500ms");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<f64>()
            .map(|v| v / 1000.0)
            .map_err(|_| bad());
    }
    s.trim_end_matches('s')
        .trim()
        .parse::<f64>()
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tarball's monitor.toml shows every key; uncommented, its values
    /// are the defaults.
    #[test]
    fn the_shipped_config_lists_every_key_at_its_default() {
        let text = include_str!("../../packaging/etc/monitor.toml.in");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| !r.starts_with(' ') && !r.is_empty())
                    .unwrap_or(l)
            })
            .filter(|l| {
                !l.starts_with("max =")
                    && !l.starts_with("token_file =")
                    && !l.starts_with("agent_socket =")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: MonitorConfig = toml::from_str(&uncommented).unwrap();
        let d = MonitorConfig::default();
        assert_eq!(
            toml::Value::try_from(&parsed).unwrap(),
            toml::Value::try_from(&d).unwrap(),
            "uncommented monitor.toml.in differs from the defaults"
        );
        for key in ["token_file", "max =", "agent_socket ="] {
            assert!(text.contains(key), "monitor.toml.in lacks {key}");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s"), Ok(1.0));
        assert_eq!(parse_interval("250ms"), Ok(0.25));
        assert_eq!(parse_interval("2"), Ok(2.0));
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "role = \"batch\"\n[policy]\ncpu_margin = 0.2\nbogus = 1\n",
        )
        .unwrap();
        assert!(MonitorConfig::load(Some(&p)).unwrap_err().contains("bogus"));
        std::fs::write(&p, "[policy]\ncpu_margin = 2.0\n").unwrap();
        assert!(MonitorConfig::load(Some(&p))
            .unwrap()
            .validate()
            .unwrap_err()
            .starts_with("policy.cpu_margin"));
        let public = MonitorConfig {
            listen: "0.0.0.0:5052".into(),
            ..Default::default()
        };
        assert!(public.validate().unwrap_err().starts_with("listen"));
    }
}
