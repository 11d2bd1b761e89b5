//! What a user asks for: [`TaskSpec`] and its validation.
//!
//! Pure: no I/O here, so every rule is unit-tested without root. Checks that
//! need the file system (does the rootfs exist?) live in `runtime::admit`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const DEFAULT_ROLE: &str = "batch";
pub const DEFAULT_KILL_GRACE_S: f64 = 10.0;
/// Smallest memory limit the kernel handles sensibly for a process tree.
pub const MIN_MEM_MB: f64 = 4.0;
const MAX_ID_LEN: usize = 64;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Absent: the agent's `default_rootfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsSpec>,
    pub resources: Resources,
    #[serde(default)]
    pub cpu_limit: CpuLimitKind,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default = "default_grace")]
    pub kill_grace_s: f64,
    /// `host` (the host's network) or `none` (own namespace, only `lo`).
    #[serde(default, skip_serializing_if = "Network::is_host")]
    pub network: Network,
    /// A credential for the agent's API in the task's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_access: Option<ApiAccess>,
    /// Host ports the task needs, from the node's port range: 0 = any free
    /// one, else that port. Given as `PORT0..n`, `PORTS`, `PORT`, `HOST`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Files downloaded into the sandbox before the command starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetch: Vec<crate::fetch::FetchSpec>,
    /// Run by the agent next to the task (`crate::health`); results in
    /// the status's `health`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<crate::health::HealthCheck>,
    /// A group member that helps the main ones: stopped (TERM, grace,
    /// KILL) once the group's last main member has ended.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sidecar: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Host,
    /// A new network namespace with only the loopback interface up.
    None,
}

impl Network {
    pub fn is_host(&self) -> bool {
        *self == Network::Host
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAccess {
    pub scope: ApiScope,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiScope {
    /// Tasks whose id starts with the task's group prefix, in its role.
    OwnGroup,
}

fn default_role() -> String {
    DEFAULT_ROLE.to_owned()
}

fn default_grace() -> f64 {
    DEFAULT_KILL_GRACE_S
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpus: f64,
    pub mem_mb: f64,
    #[serde(default)]
    pub disk_mb: f64,
}

impl Resources {
    pub fn mem_bytes(&self) -> u64 {
        (self.mem_mb * 1024.0 * 1024.0) as u64
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuLimitKind {
    /// Hard limit: quota = cpus x period.
    #[default]
    Cfs,
    /// Soft weight: shares = cpus x 1024.
    Shares,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

/// Ids, roles and attribute names share one alphabet: safe as a path
/// component and as a cgroup name.
pub fn check_name(field: &'static str, s: &str) -> Result<(), SpecError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(bad(field, format!("must be 1 to {MAX_ID_LEN} characters")));
    }
    if s == "." || s == ".." {
        return Err(bad(field, format!("{s:?} is not allowed")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(
            field,
            format!("character {c:?} is not allowed (use [A-Za-z0-9._-])"),
        ));
    }
    Ok(())
}

fn check_amount(field: &'static str, v: f64, min: f64, inclusive: bool) -> Result<(), SpecError> {
    if !v.is_finite() {
        return Err(bad(field, "must be a finite number"));
    }
    let ok = if inclusive { v >= min } else { v > min };
    if !ok {
        let op = if inclusive { ">=" } else { ">" };
        return Err(bad(field, format!("must be {op} {min}, got {v}")));
    }
    Ok(())
}

impl Resources {
    pub fn validate(&self) -> Result<(), SpecError> {
        check_amount("resources.cpus", self.cpus, 0.0, false)?;
        check_amount("resources.mem_mb", self.mem_mb, MIN_MEM_MB, true)?;
        check_amount("resources.disk_mb", self.disk_mb, 0.0, true)
    }
}

impl TaskSpec {
    /// Checks everything that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(id) = &self.id {
            check_name("id", id)?;
        }
        check_name("role", &self.role)?;
        match (&self.cmd, &self.argv) {
            (Some(_), Some(_)) => {
                return Err(bad("cmd", "give exactly one of cmd and argv, not both"))
            }
            (None, None) => return Err(bad("cmd", "give exactly one of cmd and argv")),
            (Some(c), None) if c.trim().is_empty() => return Err(bad("cmd", "must not be empty")),
            (None, Some(a)) if a.is_empty() || a[0].is_empty() => {
                return Err(bad("argv", "must have a program as first element"))
            }
            _ => {}
        }
        if self
            .cmd
            .iter()
            .chain(self.argv.iter().flatten())
            .any(|s| s.contains('\0'))
        {
            return Err(bad("cmd", "must not contain NUL bytes"));
        }
        if let Some(r) = &self.rootfs {
            r.validate()?;
        }
        crate::fetch::validate_all(&self.fetch)?;
        self.resources.validate()?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(bad("env", format!("invalid variable name or value {k:?}")));
            }
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.contains(['/', ':', '\0']) {
                return Err(bad("user", format!("invalid user {u:?}")));
            }
        }
        for c in &self.constraints {
            if !(2..=3).contains(&c.len()) {
                return Err(bad(
                    "constraints",
                    format!(
                        "{c:?}: expected [attribute, OPERATOR] or [attribute, OPERATOR, value]"
                    ),
                ));
            }
        }
        if !self.kill_grace_s.is_finite() || self.kill_grace_s < 0.0 || self.kill_grace_s > 86400.0
        {
            return Err(bad("kill_grace_s", "must be between 0 and 86400 seconds"));
        }
        if self.api_access.is_some() && self.network == Network::None {
            return Err(bad(
                "api_access",
                "needs network \"host\": the agent is reached over TCP",
            ));
        }
        crate::health::validate_all(&self.health_checks, self.ports.len(), self.network)?;
        Ok(())
    }

    /// The argv that the task's init executes inside the rootfs.
    pub fn command_line(&self) -> Vec<String> {
        match (&self.cmd, &self.argv) {
            (Some(cmd), _) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            (None, Some(argv)) => argv.clone(),
            (None, None) => Vec::new(),
        }
    }
}

impl RootfsSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        match (&self.path, &self.uri) {
            (Some(_), Some(_)) => Err(bad("rootfs", "give exactly one of path and uri")),
            (None, None) => Err(bad("rootfs", "give path or uri")),
            (Some(p), None) => {
                if !p.is_absolute() {
                    return Err(bad(
                        "rootfs.path",
                        format!("must be absolute, got {}", p.display()),
                    ));
                }
                if p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(bad("rootfs.path", "must not contain '..'"));
                }
                // The host's own root would be handed to the task whole
                // (and get mount points made in it).
                if p.parent().is_none() {
                    return Err(bad("rootfs.path", "must not be the host's root /"));
                }
                if self.sha256.is_some() {
                    return Err(bad("rootfs.sha256", "goes with uri, not path"));
                }
                Ok(())
            }
            (None, Some(uri)) => {
                crate::fetch::check_uri("rootfs.uri", uri)?;
                match &self.sha256 {
                    None => Err(bad(
                        "rootfs.sha256",
                        "required with uri (images are verified and cached by digest)",
                    )),
                    Some(h) => crate::fetch::check_sha256("rootfs.sha256", h),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TaskSpec, String> {
        let spec: TaskSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    const OK: &str =
        r#"{"cmd":"true","rootfs":{"path":"/r"},"resources":{"cpus":0.5,"mem_mb":64}}"#;

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse(OK).unwrap();
        assert_eq!(s.role, "batch");
        assert_eq!(s.cpu_limit, CpuLimitKind::Cfs);
        assert_eq!(s.kill_grace_s, 10.0);
        assert_eq!(s.restart.policy, RestartPolicy::Never);
        assert_eq!(s.command_line(), ["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn unknown_field_is_named() {
        let e =
            parse(r#"{"cmd":"true","resources":{"cpus":1,"mem_mb":64},"colour":1}"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse(r#"{"cmd":"true","resources":{"cpus":1,"mem_mb":64,"gpus":1}}"#).unwrap_err();
        assert!(e.contains("gpus"), "{e}");
    }

    #[test]
    fn resources_must_be_positive_and_finite() {
        for (r, field) in [
            (r#"{"cpus":0,"mem_mb":64}"#, "cpus"),
            (r#"{"cpus":-1,"mem_mb":64}"#, "cpus"),
            (r#"{"cpus":1,"mem_mb":2}"#, "mem_mb"),
            (r#"{"cpus":1,"mem_mb":64,"disk_mb":-5}"#, "disk_mb"),
        ] {
            let e = parse(&format!(r#"{{"cmd":"x","resources":{r}}}"#)).unwrap_err();
            assert!(e.contains(field), "{r}: {e}");
        }
        // JSON has no NaN or infinity; out-of-range numbers fail to parse.
        assert!(parse(r#"{"cmd":"x","resources":{"cpus":1e999,"mem_mb":64}}"#).is_err());
        let nan = Resources {
            cpus: f64::NAN,
            mem_mb: 64.0,
            disk_mb: 0.0,
        };
        assert!(nan.validate().unwrap_err().to_string().contains("finite"));
    }

    #[test]
    fn exactly_one_of_cmd_and_argv() {
        assert!(parse(r#"{"cmd":"a","argv":["b"],"resources":{"cpus":1,"mem_mb":64}}"#).is_err());
        assert!(parse(r#"{"resources":{"cpus":1,"mem_mb":64}}"#).is_err());
        assert!(parse(r#"{"argv":[],"resources":{"cpus":1,"mem_mb":64}}"#).is_err());
        let s = parse(r#"{"argv":["/bin/echo","hi"],"resources":{"cpus":1,"mem_mb":64}}"#).unwrap();
        assert_eq!(s.command_line(), ["/bin/echo", "hi"]);
    }

    #[test]
    fn ids_cannot_escape_paths() {
        for id in ["a/b", "..", ".", "", "x y", &"a".repeat(65)] {
            let json = format!(r#"{{"id":{id:?},"cmd":"x","resources":{{"cpus":1,"mem_mb":64}}}}"#);
            assert!(parse(&json).unwrap_err().starts_with("id:"), "{id}");
        }
        assert!(parse(r#"{"id":"a.b_c-1","cmd":"x","resources":{"cpus":1,"mem_mb":64}}"#).is_ok());
    }

    #[test]
    fn rootfs_path_must_be_absolute() {
        let e =
            parse(r#"{"cmd":"x","rootfs":{"path":"rel/dir"},"resources":{"cpus":1,"mem_mb":64}}"#)
                .unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e =
            parse(r#"{"cmd":"x","rootfs":{"path":"/a/../b"},"resources":{"cpus":1,"mem_mb":64}}"#)
                .unwrap_err();
        assert!(e.contains(".."), "{e}");
        let e = parse(r#"{"cmd":"x","rootfs":{"path":"/"},"resources":{"cpus":1,"mem_mb":64}}"#)
            .unwrap_err();
        assert!(e.contains("host's root"), "{e}");
    }

    #[test]
    fn rootfs_uri_needs_a_known_scheme_and_a_digest() {
        let with = |rootfs: &str| {
            parse(&format!(
                r#"{{"cmd":"x","rootfs":{rootfs},"resources":{{"cpus":1,"mem_mb":64}}}}"#
            ))
        };
        let sha = "a".repeat(64);
        assert!(with(&format!(
            r#"{{"uri":"http://10.0.0.1/i.tar.gz","sha256":"{sha}"}}"#
        ))
        .is_ok());
        assert!(with(&format!(
            r#"{{"uri":"file:///srv/i.tar.gz","sha256":"{sha}"}}"#
        ))
        .is_ok());
        let e = with(&format!(r#"{{"uri":"s3://b/i.tar.gz","sha256":"{sha}"}}"#)).unwrap_err();
        assert!(e.contains("rootfs.uri"), "{e}");
        let e = with(&format!(r#"{{"uri":"file://rel","sha256":"{sha}"}}"#)).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let long = format!("http://h/{}", "a".repeat(crate::fetch::MAX_URI_BYTES));
        let e = with(&format!(r#"{{"uri":"{long}","sha256":"{sha}"}}"#)).unwrap_err();
        assert!(e.contains("rootfs.uri") && e.contains("longer than"), "{e}");
        let e = with(r#"{"uri":"http://h/i.tar.gz"}"#).unwrap_err();
        assert!(e.contains("rootfs.sha256: required"), "{e}");
        let e = with(r#"{"uri":"http://h/i.tar.gz","sha256":"abc"}"#).unwrap_err();
        assert!(e.contains("64 hex"), "{e}");
    }

    #[test]
    fn network_and_api_access() {
        let s =
            parse(r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"network":"none"}"#).unwrap();
        assert_eq!(s.network, Network::None);
        assert_eq!(parse(OK).unwrap().network, Network::Host);
        let s = parse(
            r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"api_access":{"scope":"own-group"}}"#,
        )
        .unwrap();
        assert_eq!(
            s.api_access,
            Some(ApiAccess {
                scope: ApiScope::OwnGroup
            })
        );
        assert!(
            parse(r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"network":"bridge"}"#).is_err()
        );
        assert!(parse(
            r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"api_access":{"scope":"all"}}"#
        )
        .is_err());
        let e = parse(r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"network":"none","api_access":{"scope":"own-group"}}"#).unwrap_err();
        assert!(e.starts_with("api_access"), "{e}");
    }

    #[test]
    fn restart_policy_names() {
        let s = parse(r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"restart":{"policy":"on-failure","max_retries":2}}"#).unwrap();
        assert_eq!(s.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(s.restart.max_retries, Some(2));
        assert!(parse(
            r#"{"cmd":"x","resources":{"cpus":1,"mem_mb":64},"restart":{"policy":"sometimes"}}"#
        )
        .is_err());
    }
}
