//! Health checks: what a TaskSpec asks for ([`HealthCheck`]), what the
//! task status reports ([`TaskHealth`]), and the pure rules between them
//! (Marathon's: grace period, consecutive failures, HTTP status classes).
//!
//! No I/O and no clock: the agent's prober passes results and times in, so
//! every rule is unit-tested here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::{Network, SpecError};

/// Marathon's defaults.
pub const DEFAULT_GRACE_S: f64 = 300.0;
pub const DEFAULT_INTERVAL_S: f64 = 60.0;
pub const DEFAULT_TIMEOUT_S: f64 = 20.0;
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// At most this many checks per task (one tokio task each).
pub const MAX_CHECKS: usize = 16;
/// Shortest interval of a COMMAND check (each probe is an exec).
pub const MIN_COMMAND_INTERVAL_S: f64 = 1.0;
/// Longest failure message kept in the status.
pub const MAX_MESSAGE: usize = 256;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// GET `path` on the port: 200-399 healthy.
    Http,
    /// A TCP connection to the port is accepted.
    Tcp,
    /// `command` run with `/bin/sh -c` inside the task exits 0.
    Command,
}

/// One check of a TaskSpec's `health_checks`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub protocol: Protocol,
    /// Index into the task's `ports` (HTTP, TCP); default 0 unless `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_index: Option<usize>,
    /// A fixed port instead of `port_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the path to GET (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// COMMAND: the shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Failures in this time after the start are ignored until the first
    /// success.
    #[serde(default = "d_grace")]
    pub grace_period_s: f64,
    #[serde(default = "d_interval")]
    pub interval_s: f64,
    /// A check that has not answered by then failed.
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Killed after this many consecutive failures past the grace period;
    /// 0 never kills.
    #[serde(default = "d_failures")]
    pub max_consecutive_failures: u32,
    /// HTTP: a 1xx answer is neither success nor failure.
    #[serde(default)]
    pub ignore_http_1xx: bool,
}

fn d_grace() -> f64 {
    DEFAULT_GRACE_S
}
fn d_interval() -> f64 {
    DEFAULT_INTERVAL_S
}
fn d_timeout() -> f64 {
    DEFAULT_TIMEOUT_S
}
fn d_failures() -> u32 {
    DEFAULT_MAX_FAILURES
}

fn bad(reason: String) -> SpecError {
    SpecError {
        field: "health_checks",
        reason,
    }
}

impl HealthCheck {
    /// The port to probe among the task's allocated `ports` (HTTP, TCP).
    pub fn target_port(&self, ports: &[u16]) -> Option<u16> {
        match self.port {
            Some(p) => Some(p),
            None => ports.get(self.port_index.unwrap_or(0)).copied(),
        }
    }

    /// Checks one entry; `i` names it in the error. `ports` is the number
    /// of ports the task asks for.
    pub fn validate(&self, i: usize, ports: usize, network: Network) -> Result<(), SpecError> {
        let at = |r: &str| bad(format!("[{i}]: {r}"));
        for (name, v, min) in [
            ("grace_period_s", self.grace_period_s, 0.0),
            ("interval_s", self.interval_s, 0.1),
            ("timeout_s", self.timeout_s, 0.1),
        ] {
            if !v.is_finite() || v < min || v > 86400.0 {
                return Err(at(&format!(
                    "{name} must be between {min} and 86400 seconds"
                )));
            }
        }
        if self.timeout_s > self.interval_s {
            return Err(at("timeout_s must not exceed interval_s"));
        }
        match self.protocol {
            Protocol::Command => {
                // Each probe forks an exec helper and makes a cgroup: a
                // storm of them (16 checks at 0.1 s) would take the host.
                if self.interval_s < MIN_COMMAND_INTERVAL_S {
                    return Err(at(&format!(
                        "COMMAND checks run at most every {MIN_COMMAND_INTERVAL_S} s (interval_s)"
                    )));
                }
                match &self.command {
                    Some(c) if !c.trim().is_empty() && !c.contains('\0') => {}
                    _ => return Err(at("COMMAND needs a non-empty command")),
                }
                if self.port.is_some() || self.port_index.is_some() || self.path.is_some() {
                    return Err(at("COMMAND takes no port, port_index or path"));
                }
            }
            Protocol::Http | Protocol::Tcp => {
                if self.command.is_some() {
                    return Err(at("command goes with COMMAND checks only"));
                }
                if network == Network::None {
                    // The agent probes from the host's network namespace.
                    return Err(at(
                        "HTTP and TCP checks need network \"host\" (use a COMMAND check)",
                    ));
                }
                match (self.port, self.port_index) {
                    (Some(_), Some(_)) => return Err(at("give port or port_index, not both")),
                    (Some(0), None) => return Err(at("port must not be 0")),
                    (Some(_), None) => {}
                    (None, idx) => {
                        let idx = idx.unwrap_or(0);
                        if idx >= ports {
                            return Err(at(&format!(
                                "port_index {idx} but the task has {ports} port(s)"
                            )));
                        }
                    }
                }
                if self.protocol == Protocol::Tcp && self.path.is_some() {
                    return Err(at("path goes with HTTP checks only"));
                }
                if let Some(p) = &self.path {
                    if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        return Err(at("path must start with / and have no spaces or controls"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks a TaskSpec's whole list.
pub fn validate_all(
    checks: &[HealthCheck],
    ports: usize,
    network: Network,
) -> Result<(), SpecError> {
    if checks.len() > MAX_CHECKS {
        return Err(bad(format!("at most {MAX_CHECKS} checks")));
    }
    for (i, c) in checks.iter().enumerate() {
        c.validate(i, ports, network)?;
    }
    Ok(())
}

/// Where a fixed `port` of an HTTP/TCP check may point: the agent probes
/// from the host's network as root, so a free choice would let a task's
/// checks report on any loopback service (the agent's API, another
/// tenant's task). With ports of its own (`task_ports`, as asked: 0 is
/// "any") a fixed port must be one of them (else `port_index`); without,
/// never the agent's API (`agent_port`) nor the node's `port_range`,
/// where other tasks' ports are.
pub fn check_fixed_ports(
    checks: &[HealthCheck],
    task_ports: &[u16],
    agent_port: Option<u16>,
    port_range: Option<[u16; 2]>,
) -> Result<(), SpecError> {
    for (i, c) in checks.iter().enumerate() {
        let Some(p) = c.port.filter(|_| c.protocol != Protocol::Command) else {
            continue;
        };
        let at = |r: String| bad(format!("[{i}]: port {p}: {r}"));
        if !task_ports.is_empty() {
            if !task_ports.contains(&p) {
                return Err(at(format!(
                    "not one of the task's ports {task_ports:?} (use port_index for an allocated one)"
                )));
            }
        } else if Some(p) == agent_port {
            return Err(at("the agent's own API is not a task's to check".into()));
        } else if let Some([lo, hi]) = port_range.filter(|[lo, hi]| (*lo..=*hi).contains(&p)) {
            return Err(at(format!(
                "in the node's port_range {lo}-{hi}, where other tasks' ports are (give the task ports and use port_index)"
            )));
        }
    }
    Ok(())
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Neither (an HTTP 1xx with `ignore_http_1xx`).
    Ignored,
    /// Not run: the previous probe of this check has not finished. That
    /// one was counted once already (it failed when it passed its
    /// timeout); counting each interval it overlaps as well would let one
    /// slow exec on a busy host kill a healthy task.
    Skipped,
}

/// What the next probe of a check is, given whether the previous one is
/// still running (a COMMAND probe past its timeout is still being killed
/// and cleaned up): `None` runs it, `Some(Skipped)` does not.
pub fn before_probe(previous_running: bool) -> Option<Outcome> {
    previous_running.then_some(Outcome::Skipped)
}

/// Marathon's HTTP rule: 200-399 healthy, 1xx ignored if asked, else failed.
pub fn classify_http(status: u16, ignore_1xx: bool) -> Outcome {
    match status {
        200..=399 => Outcome::Pass,
        100..=199 if ignore_1xx => Outcome::Ignored,
        s => Outcome::Fail(format!("HTTP status {s}")),
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(line: &str) -> Option<u16> {
    let mut it = line.split_whitespace();
    if !it.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = it.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Healthy,
    Unhealthy,
    /// No result that counts yet.
    Unknown,
}

/// One check's results.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckHealth {
    pub state: HealthState,
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_success: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<DateTime<Utc>>,
    /// Why the last failure failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
}

/// TaskStatus `health`: the task's state (healthy when every check is,
/// unhealthy when one is) and each check's results, in spec order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHealth {
    pub state: HealthState,
    pub checks: Vec<CheckHealth>,
}

impl CheckHealth {
    pub fn new() -> Self {
        CheckHealth {
            state: HealthState::Unknown,
            consecutive_failures: 0,
            first_success: None,
            last_success: None,
            last_failure: None,
            last_message: None,
        }
    }

    /// Applies one outcome at `now` for a task started at `started`.
    /// Returns true when the task must be killed: `max_consecutive_failures`
    /// counted failures in a row. A failure counts once the grace period is
    /// over or the check has passed once (Marathon's rule).
    pub fn record(
        &mut self,
        check: &HealthCheck,
        outcome: Outcome,
        now: DateTime<Utc>,
        started: DateTime<Utc>,
    ) -> bool {
        match outcome {
            Outcome::Ignored | Outcome::Skipped => false,
            Outcome::Pass => {
                self.state = HealthState::Healthy;
                self.consecutive_failures = 0;
                self.first_success.get_or_insert(now);
                self.last_success = Some(now);
                false
            }
            Outcome::Fail(msg) => {
                let mut msg = msg;
                if msg.len() > MAX_MESSAGE {
                    let mut end = MAX_MESSAGE;
                    while !msg.is_char_boundary(end) {
                        end -= 1;
                    }
                    msg.truncate(end);
                }
                self.last_message = Some(msg);
                let since_start_ms = (now - started).num_milliseconds() as f64;
                let in_grace = since_start_ms < check.grace_period_s * 1000.0;
                if in_grace && self.first_success.is_none() {
                    return false;
                }
                self.state = HealthState::Unhealthy;
                self.last_failure = Some(now);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                check.max_consecutive_failures > 0
                    && self.consecutive_failures >= check.max_consecutive_failures
            }
        }
    }
}

impl Default for CheckHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskHealth {
    pub fn new(checks: usize) -> Self {
        TaskHealth {
            state: HealthState::Unknown,
            checks: vec![CheckHealth::new(); checks],
        }
    }

    /// Recomputes the task's state from its checks.
    pub fn refresh(&mut self) {
        self.state = overall(self.checks.iter().map(|c| c.state));
    }
}

/// Unhealthy if one is, healthy if all are, else unknown.
pub fn overall(states: impl Iterator<Item = HealthState>) -> HealthState {
    let mut all_healthy = true;
    let mut any = false;
    for s in states {
        any = true;
        match s {
            HealthState::Unhealthy => return HealthState::Unhealthy,
            HealthState::Unknown => all_healthy = false,
            HealthState::Healthy => {}
        }
    }
    if any && all_healthy {
        HealthState::Healthy
    } else {
        HealthState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn check(json: &str) -> Result<HealthCheck, String> {
        let c: HealthCheck = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate(0, 1, Network::Host).map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn marathon_defaults() {
        let c = check(r#"{"protocol":"HTTP"}"#).unwrap();
        assert_eq!(c.grace_period_s, 300.0);
        assert_eq!(c.interval_s, 60.0);
        assert_eq!(c.timeout_s, 20.0);
        assert_eq!(c.max_consecutive_failures, 3);
        assert_eq!(c.target_port(&[31005]), Some(31005));
        assert_eq!(c.path, None);
    }

    #[test]
    fn bad_checks_are_refused_with_a_reason() {
        for (json, want) in [
            (r#"{"protocol":"UDP"}"#, "unknown variant"),
            (r#"{"protocol":"HTTP","colour":1}"#, "colour"),
            (r#"{"protocol":"COMMAND"}"#, "command"),
            (r#"{"protocol":"COMMAND","command":"  "}"#, "command"),
            (
                r#"{"protocol":"COMMAND","command":"x","port_index":0}"#,
                "no port",
            ),
            (r#"{"protocol":"TCP","command":"x"}"#, "COMMAND checks only"),
            (r#"{"protocol":"HTTP","port_index":1}"#, "port_index 1"),
            (
                r#"{"protocol":"HTTP","port":80,"port_index":0}"#,
                "not both",
            ),
            (r#"{"protocol":"HTTP","port":0}"#, "not be 0"),
            (r#"{"protocol":"HTTP","path":"x"}"#, "path must"),
            (r#"{"protocol":"HTTP","path":"/a b"}"#, "path must"),
            (r#"{"protocol":"TCP","path":"/"}"#, "HTTP checks only"),
            (r#"{"protocol":"TCP","interval_s":0}"#, "interval_s"),
            (
                r#"{"protocol":"COMMAND","command":"true","interval_s":0.5,"timeout_s":0.2}"#,
                "at most every",
            ),
            (r#"{"protocol":"TCP","timeout_s":-1}"#, "timeout_s"),
            (
                r#"{"protocol":"TCP","grace_period_s":1e9}"#,
                "grace_period_s",
            ),
            (
                r#"{"protocol":"TCP","interval_s":5,"timeout_s":6}"#,
                "exceed",
            ),
        ] {
            let e = check(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
        let c = check(r#"{"protocol":"TCP","port":8080}"#).unwrap();
        assert_eq!(c.target_port(&[]), Some(8080));
        let e = c.validate(2, 0, Network::None).unwrap_err().to_string();
        assert!(e.starts_with("health_checks: [2]: "), "{e}");
        assert!(e.contains("network"), "{e}");
        let cmd = check(r#"{"protocol":"COMMAND","command":"true"}"#).unwrap();
        assert!(cmd.validate(0, 0, Network::None).is_ok());
        let many = vec![cmd; MAX_CHECKS + 1];
        assert!(validate_all(&many, 0, Network::Host).is_err());
    }

    /// Review (issue 14): a fixed port could name any loopback port.
    #[test]
    fn a_fixed_port_is_the_tasks_own_or_not_the_agents() {
        let c = |p: u16| check(&format!(r#"{{"protocol":"TCP","port":{p}}}"#)).unwrap();
        let range = Some([31000, 32000]);
        // The task's own requested port: fine; another: refused.
        assert!(check_fixed_ports(&[c(8080)], &[8080, 0], Some(5051), range).is_ok());
        let e = check_fixed_ports(&[c(22)], &[8080], Some(5051), range).unwrap_err();
        assert!(e.to_string().contains("not one of the task's ports"), "{e}");
        // No ports: not the agent's API, not another task's range.
        let e = check_fixed_ports(&[c(5051)], &[], Some(5051), range).unwrap_err();
        assert!(e.to_string().contains("agent's own API"), "{e}");
        let e = check_fixed_ports(&[c(31005)], &[], Some(5051), range).unwrap_err();
        assert!(e.to_string().contains("port_range"), "{e}");
        assert!(check_fixed_ports(&[c(8080)], &[], Some(5051), range).is_ok());
        // port_index and COMMAND are not concerned.
        let idx = check(r#"{"protocol":"HTTP"}"#).unwrap();
        assert!(check_fixed_ports(&[idx], &[0], Some(5051), range).is_ok());
        // Where the node is not known (the scheduler's check): the task's
        // own ports only.
        assert!(check_fixed_ports(&[c(31005)], &[], None, None).is_ok());
        assert!(check_fixed_ports(&[c(22)], &[0], None, None).is_err());
    }

    #[test]
    fn http_classes() {
        assert_eq!(classify_http(200, false), Outcome::Pass);
        assert_eq!(classify_http(302, false), Outcome::Pass);
        assert_eq!(classify_http(399, false), Outcome::Pass);
        assert!(matches!(classify_http(404, false), Outcome::Fail(_)));
        assert!(matches!(classify_http(500, true), Outcome::Fail(_)));
        assert!(matches!(classify_http(101, false), Outcome::Fail(_)));
        assert_eq!(classify_http(101, true), Outcome::Ignored);
        assert_eq!(parse_status_line("HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status_line("HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status_line("SSH-2.0-x"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(""), None);
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn failures_in_the_grace_period_do_not_count_until_a_success() {
        let c = check(r#"{"protocol":"TCP","grace_period_s":10,"max_consecutive_failures":2}"#)
            .unwrap();
        let mut h = CheckHealth::new();
        let start = t0();
        for s in [1, 2, 3, 4] {
            assert!(!h.record(
                &c,
                Outcome::Fail("refused".into()),
                start + Duration::seconds(s),
                start
            ));
        }
        assert_eq!(h.state, HealthState::Unknown);
        assert_eq!(h.consecutive_failures, 0);
        assert_eq!(h.last_message.as_deref(), Some("refused"));
        // A success, then failures count even inside the grace period.
        assert!(!h.record(&c, Outcome::Pass, start + Duration::seconds(5), start));
        assert_eq!(h.state, HealthState::Healthy);
        assert!(!h.record(
            &c,
            Outcome::Fail("500".into()),
            start + Duration::seconds(6),
            start
        ));
        assert_eq!(h.state, HealthState::Unhealthy);
        assert!(h.record(
            &c,
            Outcome::Fail("500".into()),
            start + Duration::seconds(7),
            start
        ));
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.first_success, Some(start + Duration::seconds(5)));
    }

    #[test]
    fn past_the_grace_period_failures_count_and_a_success_resets() {
        let c = check(r#"{"protocol":"TCP","grace_period_s":1}"#).unwrap();
        let mut h = CheckHealth::new();
        let start = t0();
        let at = |s| start + Duration::seconds(s);
        assert!(!h.record(&c, Outcome::Fail("x".into()), at(2), start));
        assert!(!h.record(&c, Outcome::Fail("x".into()), at(3), start));
        assert!(!h.record(&c, Outcome::Ignored, at(4), start));
        assert_eq!(h.consecutive_failures, 2);
        assert!(!h.record(&c, Outcome::Pass, at(5), start));
        assert_eq!(h.consecutive_failures, 0);
        assert!(!h.record(&c, Outcome::Fail("x".into()), at(6), start));
        assert!(!h.record(&c, Outcome::Fail("x".into()), at(7), start));
        assert!(h.record(&c, Outcome::Fail("x".into()), at(8), start));
        // max 0: never kills.
        let never =
            check(r#"{"protocol":"TCP","grace_period_s":0,"max_consecutive_failures":0}"#).unwrap();
        let mut h = CheckHealth::new();
        for s in 0..100 {
            assert!(!h.record(&never, Outcome::Fail("x".into()), at(s), start));
        }
        let mut h = CheckHealth::new();
        h.record(&never, Outcome::Fail("é".repeat(300)), at(1), start);
        assert!(h.last_message.unwrap().len() <= MAX_MESSAGE);
    }

    /// Review (issue 14): "the previous probe is still running" counted
    /// as a failure each interval, on top of the timeout of that probe.
    #[test]
    fn a_probe_still_running_is_skipped_not_counted_its_timeout_is() {
        let c = check(
            r#"{"protocol":"COMMAND","command":"x","grace_period_s":0,"interval_s":1,"timeout_s":1,"max_consecutive_failures":2}"#,
        )
        .unwrap();
        let (mut h, start) = (CheckHealth::new(), t0());
        let at = |s| start + Duration::seconds(s);
        assert_eq!(before_probe(false), None);
        // The probe passes its timeout: one failure.
        assert!(!h.record(
            &c,
            Outcome::Fail("no answer within 1.0s".into()),
            at(1),
            start
        ));
        // It is still being killed for the next intervals: skipped.
        for s in 2..10 {
            let skipped = before_probe(true).unwrap();
            assert_eq!(skipped, Outcome::Skipped);
            assert!(!h.record(&c, skipped, at(s), start), "killed at {s}s");
        }
        assert_eq!(h.consecutive_failures, 1);
        assert_eq!(h.last_message.as_deref(), Some("no answer within 1.0s"));
        assert_eq!(h.state, HealthState::Unhealthy);
        // A second probe past its timeout counts: the kill.
        assert!(h.record(
            &c,
            Outcome::Fail("no answer within 1.0s".into()),
            at(10),
            start
        ));
        // A skip before any result leaves the check unknown.
        let mut fresh = CheckHealth::new();
        assert!(!fresh.record(&c, Outcome::Skipped, at(1), start));
        assert_eq!(fresh, CheckHealth::new());
    }

    #[test]
    fn overall_state() {
        use HealthState::*;
        assert_eq!(overall([].into_iter()), Unknown);
        assert_eq!(overall([Healthy, Healthy].into_iter()), Healthy);
        assert_eq!(overall([Healthy, Unknown].into_iter()), Unknown);
        assert_eq!(
            overall([Unknown, Unhealthy, Healthy].into_iter()),
            Unhealthy
        );
        let mut t = TaskHealth::new(2);
        t.checks[0].state = Healthy;
        t.refresh();
        assert_eq!(t.state, Unknown);
        t.checks[1].state = Healthy;
        t.refresh();
        assert_eq!(t.state, Healthy);
    }
}
