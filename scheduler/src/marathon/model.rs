//! The Marathon app definition as stored in `apps/<app-id>` (Marathon's
//! field names and defaults), its validation (Marathon's 422 details) and
//! the TaskSpec an instance of it runs.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use gleaner_core::constraints;
use gleaner_core::fetch::FetchSpec;
use gleaner_core::health::{HealthCheck as AgentCheck, Protocol};
use gleaner_core::spec::{
    CpuLimitKind, Network, Resources, RestartSpec, RootfsSpec, TaskSpec, DEFAULT_ROLE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decide::KillSelection;

/// Label: the instance's rootfs image (`GLEANER_ROOTFS_URI`, optional
/// `GLEANER_ROOTFS_SHA256`); `GLEANER_CPU_LIMIT` `cfs` | `shares`;
/// `GLEANER_QUEUE` the fleet queue (default [`APP_QUEUE`]).
pub const LABEL_ROOTFS_URI: &str = "GLEANER_ROOTFS_URI";
pub const LABEL_ROOTFS_SHA256: &str = "GLEANER_ROOTFS_SHA256";
pub const LABEL_CPU_LIMIT: &str = "GLEANER_CPU_LIMIT";
pub const LABEL_QUEUE: &str = "GLEANER_QUEUE";
/// Label `own-group`: instances get `MARATHON_URL` and a `GLEANER_TOKEN`
/// scoped to the app's group ([`gleaner_core::app_token`]).
pub const LABEL_API_ACCESS: &str = "GLEANER_API_ACCESS";
/// What instances of such an app find in their environment.
pub const ENV_MARATHON_URL: &str = "MARATHON_URL";
pub const ENV_TOKEN: &str = "GLEANER_TOKEN";
/// The fleet queue app instances wait in unless a label says otherwise.
pub const APP_QUEUE: &str = "marathon";
/// Env marking a job as an app instance (Marathon sets it too).
pub const ENV_APP_ID: &str = "MARATHON_APP_ID";
pub const ENV_APP_VERSION: &str = "MARATHON_APP_VERSION";

/// Most instances one app may ask for: each is a job in etcd, written by
/// the leader, so an unbounded count filled etcd's quota (NOSPACE) and
/// stopped every write of the fleet.
pub const MAX_INSTANCES: u32 = 10_000;

const ID_RULE: &str = "must fully match regular expression '^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])|(\\.|\\.\\.)$'";

/// Marathon's timestamp: UTC, milliseconds, `Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn d_cpus() -> f64 {
    1.0
}
fn d_mem() -> f64 {
    128.0
}
fn d_one_u32() -> u32 {
    1
}
fn d_backoff() -> f64 {
    1.0
}
fn d_factor() -> f64 {
    1.15
}
fn d_max_delay() -> f64 {
    300.0
}
fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    #[serde(default = "d_one")]
    pub minimum_health_capacity: f64,
    #[serde(default = "d_one")]
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    fn default() -> Self {
        UpgradeStrategy {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetch {
    pub uri: String,
    #[serde(default = "d_true")]
    pub extract: bool,
    #[serde(default)]
    pub executable: bool,
    #[serde(default)]
    pub cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    #[serde(default)]
    pub port: u16,
    #[serde(default = "d_tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Fetch {
    /// An entry of the old `uris` form: archives by name are extracted.
    pub fn from_uri(uri: String) -> Fetch {
        let extract = [
            ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz", ".zip",
        ]
        .iter()
        .any(|s| uri.ends_with(s));
        Fetch {
            uri,
            extract,
            executable: false,
            cache: false,
            output_file: None,
        }
    }

    /// What the agent downloads. Marathon's fetch has no digest, so
    /// `cache` has no effect (the agent caches by sha256 only).
    fn task_fetch(&self) -> FetchSpec {
        FetchSpec {
            uri: self.uri.clone(),
            extract: self.extract,
            executable: self.executable,
            cache: self.cache,
            output_file: self.output_file.clone(),
            sha256: None,
        }
    }
}

fn d_tcp() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default = "d_http")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default = "d_grace")]
    pub grace_period_seconds: u32,
    #[serde(default = "d_interval")]
    pub interval_seconds: u32,
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u32,
    #[serde(default = "d_failures")]
    pub max_consecutive_failures: u32,
    #[serde(default)]
    pub ignore_http1xx: bool,
    #[serde(default = "d_delay")]
    pub delay_seconds: u32,
}

fn d_http() -> String {
    "HTTP".into()
}
fn d_grace() -> u32 {
    300
}
fn d_interval() -> u32 {
    60
}
fn d_timeout() -> u32 {
    20
}
fn d_failures() -> u32 {
    3
}
fn d_delay() -> u32 {
    15
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub last_scaling_at: String,
    pub last_config_change_at: String,
}

/// `apps/<app-id>`: the app as accepted, Marathon's defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub id: String,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "d_one_u32")]
    pub instances: u32,
    #[serde(default = "d_cpus")]
    pub cpus: f64,
    #[serde(default = "d_mem")]
    pub mem: f64,
    #[serde(default)]
    pub disk: f64,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub executor: String,
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    /// Old form of `fetch`; folded into it on acceptance.
    #[serde(default, skip_serializing)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub fetch: Vec<Fetch>,
    #[serde(default)]
    pub store_urls: Vec<String>,
    #[serde(default = "d_backoff")]
    pub backoff_seconds: f64,
    #[serde(default = "d_factor")]
    pub backoff_factor: f64,
    #[serde(default = "d_max_delay")]
    pub max_launch_delay_seconds: f64,
    #[serde(default)]
    pub container: Option<Value>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    #[serde(default)]
    pub readiness_checks: Vec<Value>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub upgrade_strategy: UpgradeStrategy,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub accepted_resource_roles: Option<Vec<String>>,
    #[serde(default)]
    pub port_definitions: Vec<PortDefinition>,
    #[serde(default)]
    pub require_ports: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_kill_grace_period_seconds: Option<f64>,
    #[serde(default = "d_kill_selection")]
    pub kill_selection: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub version_info: Option<VersionInfo>,
}

fn d_kill_selection() -> String {
    "YOUNGEST_FIRST".into()
}

/// One entry of a 422's `details`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub path: String,
    pub errors: Vec<String>,
}

fn violation(path: &str, e: impl Into<String>) -> Violation {
    Violation {
        path: path.into(),
        errors: vec![e.into()],
    }
}

fn segment_ok(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.split('.').all(label_ok)
}

/// Marathon's path rules: relative ids are rooted at `/`; each segment
/// lower-case letters, digits, `-` inside, `.` between labels.
pub fn normalize_id(id: &str) -> Result<String, String> {
    let trimmed = id.trim_end_matches('/');
    let body = trimmed.trim_start_matches('/');
    if body.is_empty() {
        return Err("path must not be empty".into());
    }
    if body.split('/').all(segment_ok) && body.len() <= 200 {
        Ok(format!("/{body}"))
    } else {
        Err(ID_RULE.into())
    }
}

/// The group an app belongs to (`/a/b/c` → `/a/b`; `/c` → `/`).
pub fn group_of(id: &str) -> &str {
    match id.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &id[..i],
    }
}

impl App {
    pub fn kill_selection(&self) -> KillSelection {
        if self.kill_selection == "OLDEST_FIRST" {
            KillSelection::OldestFirst
        } else {
            KillSelection::YoungestFirst
        }
    }

    pub fn role(&self) -> String {
        self.accepted_resource_roles
            .iter()
            .flatten()
            .find(|r| r.as_str() != "*")
            .cloned()
            .unwrap_or_else(|| DEFAULT_ROLE.to_owned())
    }

    pub fn queue(&self) -> String {
        self.labels
            .get(LABEL_QUEUE)
            .cloned()
            .unwrap_or_else(|| APP_QUEUE.to_owned())
    }

    /// Fills what acceptance fills: absolute id, `uris` folded into
    /// `fetch`, version and version info.
    pub fn accept(&mut self, version: DateTime<Utc>, config_change: bool) {
        for uri in std::mem::take(&mut self.uris) {
            self.fetch.push(Fetch::from_uri(uri));
        }
        let v = timestamp(version);
        let last_config = match (&self.version_info, config_change) {
            (Some(vi), false) => vi.last_config_change_at.clone(),
            _ => v.clone(),
        };
        self.version = Some(v.clone());
        self.version_info = Some(VersionInfo {
            last_scaling_at: v,
            last_config_change_at: last_config,
        });
    }

    /// The version instances are compared on: a scale alone does not
    /// replace them.
    pub fn config_version(&self) -> String {
        self.version_info
            .as_ref()
            .map(|v| v.last_config_change_at.clone())
            .or_else(|| self.version.clone())
            .unwrap_or_default()
    }

    /// The TaskSpec's `ports`: host ports from the node's range, 0 = any
    /// free one; a fixed one only with requirePorts (else Marathon's
    /// service port).
    fn task_ports(&self) -> Vec<u16> {
        self.port_definitions
            .iter()
            .map(|p| if self.require_ports { p.port } else { 0 })
            .collect()
    }

    /// Every rule Marathon checks that gleaner honours; `Err` lists them all.
    pub fn validate(&self) -> Result<(), Vec<Violation>> {
        let mut v = Vec::new();
        if let Err(e) = normalize_id(&self.id) {
            v.push(violation("/id", e));
        }
        match (&self.cmd, &self.args) {
            (Some(_), Some(_)) => v.push(violation(
                "/",
                "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
            )),
            (None, None) => v.push(violation(
                "/",
                "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
            )),
            _ => {}
        }
        for (path, val, min) in [
            ("/cpus", self.cpus, 0.0),
            ("/mem", self.mem, 0.0),
            ("/disk", self.disk, 0.0),
            ("/backoffSeconds", self.backoff_seconds, 0.0),
            ("/backoffFactor", self.backoff_factor, 1.0),
            ("/maxLaunchDelaySeconds", self.max_launch_delay_seconds, 0.0),
        ] {
            if !(val.is_finite() && val >= min) {
                v.push(violation(
                    path,
                    format!("got {val}, expected {min} or more"),
                ));
            }
        }
        if self.instances > MAX_INSTANCES {
            v.push(violation(
                "/instances",
                format!("got {}, expected {MAX_INSTANCES} or less", self.instances),
            ));
        }
        let u = self.upgrade_strategy;
        for (path, val) in [
            (
                "/upgradeStrategy/minimumHealthCapacity",
                u.minimum_health_capacity,
            ),
            (
                "/upgradeStrategy/maximumOverCapacity",
                u.maximum_over_capacity,
            ),
        ] {
            if !(0.0..=1.0).contains(&val) {
                v.push(violation(
                    path,
                    format!("got {val}, expected between 0.0 and 1.0"),
                ));
            }
        }
        if !["YOUNGEST_FIRST", "OLDEST_FIRST"].contains(&self.kill_selection.as_str()) {
            v.push(violation(
                "/killSelection",
                "error.expected.validenumvalue: YOUNGEST_FIRST, OLDEST_FIRST",
            ));
        }
        if let Err(e) = constraints::parse(&self.constraints) {
            v.push(violation("/constraints", e.to_string()));
        }
        for (i, h) in self.health_checks.iter().enumerate() {
            let p = format!("/healthChecks({i})");
            if matches!(h.protocol.as_str(), "COMMAND" | "MESOS_COMMAND") && h.command.is_none() {
                v.push(violation(&p, "command must be set for COMMAND checks"));
                continue;
            }
            // The agent's own rules (port index within portDefinitions,
            // timeout within interval, ...): a 422 here, never a refused
            // placement later.
            match h.agent_check() {
                Err(e) => v.push(violation(&format!("{p}/protocol"), e)),
                Ok(c) => {
                    let ports = self.task_ports();
                    let checked = c
                        .validate(0, self.port_definitions.len(), Network::Host)
                        .and_then(|()| {
                            // The node's listen port and range are the agent's to check.
                            gleaner_core::health::check_fixed_ports(&[c], &ports, None, None)
                        });
                    if let Err(e) = checked {
                        v.push(violation(&p, e.reason.trim_start_matches("[0]: ")));
                    }
                }
            }
        }
        if let Some(a) = self.labels.get(LABEL_API_ACCESS) {
            if a != gleaner_core::app_token::OWN_GROUP {
                v.push(violation(
                    &format!("/labels/{LABEL_API_ACCESS}"),
                    format!("{a:?}: expected own-group"),
                ));
            }
        }
        if let Some(CpuLimitParse::Bad(s)) = self.cpu_limit_label() {
            v.push(violation(
                &format!("/labels/{LABEL_CPU_LIMIT}"),
                format!("{s:?}: expected cfs or shares"),
            ));
        }
        if v.is_empty() {
            // What the node will check: the TaskSpec an instance runs.
            if let Err(e) = self.task_spec().validate() {
                let path = match e.field {
                    "resources.cpus" => "/cpus",
                    "resources.mem_mb" => "/mem",
                    "resources.disk_mb" => "/disk",
                    "cmd" | "argv" => "/cmd",
                    "env" => "/env",
                    "user" => "/user",
                    "role" => "/acceptedResourceRoles",
                    "rootfs" | "rootfs.uri" | "rootfs.sha256" => "/labels",
                    "kill_grace_s" => "/taskKillGracePeriodSeconds",
                    "fetch" | "fetch.uri" | "fetch.extract" | "fetch.output_file" => "/fetch",
                    _ => "/",
                };
                v.push(violation(path, e.to_string()));
            }
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(v)
        }
    }

    fn cpu_limit_label(&self) -> Option<CpuLimitParse> {
        let s = self.labels.get(LABEL_CPU_LIMIT)?;
        Some(match s.to_ascii_lowercase().as_str() {
            "cfs" => CpuLimitParse::Ok(CpuLimitKind::Cfs),
            "shares" => CpuLimitParse::Ok(CpuLimitKind::Shares),
            _ => CpuLimitParse::Bad(s.clone()),
        })
    }

    /// The TaskSpec every instance of this version runs (`id` unset: each
    /// attempt gets its own task id).
    pub fn task_spec(&self) -> TaskSpec {
        let mut env = self.env.clone();
        env.insert(ENV_APP_ID.into(), self.id.clone());
        env.insert(ENV_APP_VERSION.into(), self.config_version());
        let rootfs = self.labels.get(LABEL_ROOTFS_URI).map(|uri| RootfsSpec {
            path: None,
            uri: Some(uri.clone()),
            sha256: self.labels.get(LABEL_ROOTFS_SHA256).cloned(),
        });
        let cpu_limit = match self.cpu_limit_label() {
            Some(CpuLimitParse::Ok(k)) => k,
            _ => CpuLimitKind::default(),
        };
        TaskSpec {
            id: None,
            role: self.role(),
            cmd: self.cmd.clone(),
            argv: self.args.clone(),
            rootfs,
            resources: Resources {
                cpus: self.cpus,
                mem_mb: self.mem,
                disk_mb: self.disk,
            },
            cpu_limit,
            env,
            user: self.user.clone(),
            constraints: self.constraints.clone(),
            priority: 0,
            restart: RestartSpec::default(),
            kill_grace_s: self
                .task_kill_grace_period_seconds
                .unwrap_or(gleaner_core::spec::DEFAULT_KILL_GRACE_S),
            network: Default::default(),
            api_access: None,
            ports: self.task_ports(),
            // `uris` are folded into `fetch` on acceptance; validation
            // runs before it.
            fetch: self
                .fetch
                .iter()
                .map(Fetch::task_fetch)
                .chain(
                    self.uris
                        .iter()
                        .map(|u| Fetch::from_uri(u.clone()).task_fetch()),
                )
                .collect(),
            health_checks: self
                .health_checks
                .iter()
                .filter_map(|h| h.agent_check().ok())
                .collect(),
            sidecar: false,
        }
    }
}

impl HealthCheck {
    /// The agent's check for this one (protocols `MESOS_*` as the plain
    /// ones; the agent probes either way), or why there is none.
    pub fn agent_check(&self) -> Result<AgentCheck, String> {
        let protocol = match self.protocol.as_str() {
            "HTTP" | "MESOS_HTTP" => Protocol::Http,
            "TCP" | "MESOS_TCP" => Protocol::Tcp,
            "COMMAND" | "MESOS_COMMAND" => Protocol::Command,
            "HTTPS" | "MESOS_HTTPS" => return Err("HTTPS checks are not supported".into()),
            other => return Err(format!("unknown protocol {other}")),
        };
        let probes_port = protocol != Protocol::Command;
        Ok(AgentCheck {
            protocol,
            port_index: match (probes_port, self.port) {
                (true, None) => Some(self.port_index.unwrap_or(0) as usize),
                _ => None,
            },
            port: self.port.filter(|_| probes_port),
            path: (protocol == Protocol::Http)
                .then(|| self.path.clone().unwrap_or_else(|| "/".into())),
            command: self.command.as_ref().map(|c| c.value.clone()),
            grace_period_s: self.grace_period_seconds as f64,
            interval_s: self.interval_seconds as f64,
            timeout_s: self.timeout_seconds as f64,
            max_consecutive_failures: self.max_consecutive_failures,
            ignore_http_1xx: self.ignore_http1xx,
        })
    }
}

enum CpuLimitParse {
    Ok(CpuLimitKind),
    Bad(String),
}

/// The app id and config version a job runs, if it is an app instance.
pub fn instance_of(spec: &TaskSpec) -> Option<(&str, &str)> {
    Some((
        spec.env.get(ENV_APP_ID)?.as_str(),
        spec.env
            .get(ENV_APP_VERSION)
            .map(String::as_str)
            .unwrap_or(""),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(v: Value) -> App {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn marathon_defaults() {
        let a = app(json!({"id": "/web", "cmd": "sleep 100"}));
        assert_eq!((a.cpus, a.mem, a.disk, a.instances), (1.0, 128.0, 0.0, 1));
        assert_eq!(
            (
                a.backoff_seconds,
                a.backoff_factor,
                a.max_launch_delay_seconds
            ),
            (1.0, 1.15, 300.0)
        );
        assert_eq!(a.upgrade_strategy, UpgradeStrategy::default());
        assert_eq!(a.kill_selection(), KillSelection::YoungestFirst);
        assert_eq!(a.role(), "batch");
        a.validate().unwrap();
        let h: HealthCheck = serde_json::from_value(json!({})).unwrap();
        assert_eq!(
            (
                h.grace_period_seconds,
                h.interval_seconds,
                h.timeout_seconds,
                h.max_consecutive_failures
            ),
            (300, 60, 20, 3)
        );
    }

    #[test]
    fn health_checks_map_to_the_agent_and_bad_ones_are_422() {
        let a = app(json!({
            "id": "/web", "cmd": "httpd", "requirePorts": true,
            "portDefinitions": [{"port": 0}, {"port": 8080}],
            "healthChecks": [
                {"protocol": "MESOS_HTTP", "portIndex": 1, "intervalSeconds": 5,
                 "timeoutSeconds": 2, "gracePeriodSeconds": 10, "maxConsecutiveFailures": 0,
                 "ignoreHttp1xx": true},
                {"protocol": "TCP", "port": 8080},
                {"protocol": "COMMAND", "command": {"value": "test -f /ok"}}
            ]
        }));
        a.validate().unwrap();
        let spec = a.task_spec();
        spec.validate().unwrap();
        let c = &spec.health_checks;
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].protocol, c[0].port_index, c[0].path.as_deref()),
            (Protocol::Http, Some(1), Some("/"))
        );
        assert_eq!(
            (c[0].interval_s, c[0].timeout_s, c[0].grace_period_s),
            (5.0, 2.0, 10.0)
        );
        assert_eq!(c[0].max_consecutive_failures, 0);
        assert!(c[0].ignore_http_1xx);
        assert_eq!(
            (c[1].protocol, c[1].port, c[1].port_index),
            (Protocol::Tcp, Some(8080), None)
        );
        assert_eq!(c[2].protocol, Protocol::Command);
        assert_eq!(c[2].command.as_deref(), Some("test -f /ok"));
        assert_eq!((c[2].port_index, c[2].path.as_deref()), (None, None));
        // Marathon's defaults reach the agent.
        let d = app(
            json!({"id": "/d", "cmd": "x", "portDefinitions": [{"port": 0}],
                           "healthChecks": [{}]}),
        )
        .task_spec();
        assert_eq!(
            (
                d.health_checks[0].grace_period_s,
                d.health_checks[0].interval_s,
                d.health_checks[0].timeout_s,
                d.health_checks[0].max_consecutive_failures
            ),
            (300.0, 60.0, 20.0, 3)
        );
        for (hc, path, want) in [
            (
                json!({"protocol": "HTTP"}),
                "/healthChecks(0)",
                "port_index 0",
            ),
            (
                json!({"protocol": "HTTPS", "portIndex": 0}),
                "/healthChecks(0)/protocol",
                "HTTPS",
            ),
            (
                json!({"protocol": "UDP"}),
                "/healthChecks(0)/protocol",
                "unknown protocol",
            ),
            (
                json!({"protocol": "COMMAND"}),
                "/healthChecks(0)",
                "command must be set",
            ),
            (
                json!({"protocol": "TCP", "port": 80, "intervalSeconds": 5, "timeoutSeconds": 9}),
                "/healthChecks(0)",
                "exceed",
            ),
        ] {
            let a = app(json!({"id": "/x", "cmd": "x", "healthChecks": [hc]}));
            let v = a.validate().unwrap_err();
            assert_eq!(v[0].path, path, "{hc}");
            assert!(format!("{:?}", v[0]).contains(want), "{hc}: {v:?}");
        }
        // A fixed port of an app with ports must be one of them (the agent
        // probes as root from the host: not any loopback port).
        let a = app(
            json!({"id": "/x", "cmd": "x", "portDefinitions": [{"port": 0}],
                           "healthChecks": [{"protocol": "TCP", "port": 22}]}),
        );
        let v = a.validate().unwrap_err();
        assert!(
            format!("{v:?}").contains("not one of the task's ports"),
            "{v:?}"
        );
    }

    #[test]
    fn ids_follow_marathon_path_rules() {
        assert_eq!(normalize_id("web").unwrap(), "/web");
        assert_eq!(normalize_id("/grp/web.v2/").unwrap(), "/grp/web.v2");
        for bad in ["/Web", "/a_b", "/-a", "/a-", "/a//b", "", "/", "/a..b"] {
            assert!(normalize_id(bad).is_err(), "{bad}");
        }
        assert_eq!(group_of("/a/b/c"), "/a/b");
        assert_eq!(group_of("/c"), "/");
    }

    #[test]
    fn validation_lists_every_violation_by_path() {
        let a =
            app(json!({"id": "/Bad", "cpus": -1, "upgradeStrategy": {"minimumHealthCapacity": 2}}));
        let v = a.validate().unwrap_err();
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/id",
                "/",
                "/cpus",
                "/upgradeStrategy/minimumHealthCapacity"
            ]
        );
        let a = app(json!({"id": "/a", "cmd": "x", "mem": 1}));
        assert_eq!(a.validate().unwrap_err()[0].path, "/mem");
        let a = app(json!({"id": "/a", "cmd": "x", "constraints": [["hostname", "NOPE"]]}));
        assert_eq!(a.validate().unwrap_err()[0].path, "/constraints");
        let a = app(json!({"id": "/a", "cmd": "x", "labels": {"GLEANER_CPU_LIMIT": "x"}}));
        assert!(a.validate().is_err());
        let a = app(json!({"id": "/a", "cmd": "x", "instances": MAX_INSTANCES}));
        a.validate().unwrap();
        let a = app(json!({"id": "/a", "cmd": "x", "instances": MAX_INSTANCES + 1}));
        assert_eq!(a.validate().unwrap_err()[0].path, "/instances");
        let a = app(json!({"id": "/a", "cmd": "x", "labels": {"GLEANER_API_ACCESS": "all"}}));
        assert_eq!(
            a.validate().unwrap_err()[0].path,
            "/labels/GLEANER_API_ACCESS"
        );
        let a = app(json!({"id": "/a", "cmd": "x", "labels": {"GLEANER_API_ACCESS": "own-group"}}));
        a.validate().unwrap();
    }

    #[test]
    fn task_spec_carries_labels_roles_and_app_identity() {
        let mut a = app(json!({
            "id": "/g/web", "cmd": "httpd", "cpus": 0.5, "mem": 64, "instances": 3,
            "acceptedResourceRoles": ["*", "web"], "constraints": [["hostname", "UNIQUE"]],
            "labels": {"GLEANER_ROOTFS_URI": "file:///r.tar", "GLEANER_CPU_LIMIT": "Shares",
                "GLEANER_ROOTFS_SHA256": "0000000000000000000000000000000000000000000000000000000000000000"},
            "uris": ["http://x/a.tgz"], "taskKillGracePeriodSeconds": 3
        }));
        a.accept(Utc::now(), true);
        assert_eq!(a.fetch.len(), 1);
        assert!(a.fetch[0].extract);
        let s = a.task_spec();
        s.validate().unwrap();
        assert_eq!(s.role, "web");
        assert_eq!(s.cpu_limit, CpuLimitKind::Shares);
        assert_eq!(s.rootfs.unwrap().uri.as_deref(), Some("file:///r.tar"));
        assert_eq!(s.kill_grace_s, 3.0);
        let s = a.task_spec();
        assert_eq!(
            instance_of(&s),
            Some(("/g/web", a.version.as_deref().unwrap()))
        );
        // A scale keeps the config version.
        let before = a.config_version();
        a.accept(Utc::now() + chrono::Duration::seconds(1), false);
        assert_eq!(a.config_version(), before);
        assert_ne!(a.version.as_deref(), Some(before.as_str()));
        let text = serde_json::to_value(&a).unwrap();
        assert!(text.get("uris").is_none());
        assert!(text["version"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn fetch_and_uris_reach_the_task_spec_and_bad_ones_are_422() {
        let a = app(json!({
            "id": "/f", "cmd": "./run.sh",
            "fetch": [{"uri": "http://h/run.sh", "executable": true},
                      {"uri": "http://h/data.tgz", "outputFile": "d.tar.gz"}],
            "uris": ["http://h/b.tar.gz"]
        }));
        // Before acceptance: `uris` still apart, mapped all the same.
        a.validate().unwrap();
        let s = a.task_spec();
        let uris: Vec<_> = s.fetch.iter().map(|f| f.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["http://h/run.sh", "http://h/data.tgz", "http://h/b.tar.gz"]
        );
        assert!(s.fetch[0].executable && s.fetch[1].extract && s.fetch[2].extract);
        assert_eq!(s.fetch[1].output_file.as_deref(), Some("d.tar.gz"));
        let zip = app(json!({"id": "/z", "cmd": "x", "uris": ["http://h/a.zip"]}));
        assert_eq!(zip.validate().unwrap_err()[0].path, "/fetch");
        let escape = app(json!({"id": "/e", "cmd": "x",
            "fetch": [{"uri": "http://h/a", "outputFile": "../a"}]}));
        assert_eq!(escape.validate().unwrap_err()[0].path, "/fetch");
    }
}
