//! What the agent reports: task states, reasons, [`TaskStatus`], and the pure
//! rules that turn a supervisor's exit record into a final state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::{Resources, RestartPolicy, RestartSpec};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Queued,
    Staging,
    Running,
    Finished,
    Failed,
    Killed,
    Preempted,
    Drained,
    Lost,
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Staging,
        TaskState::Running,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Preempted,
        TaskState::Drained,
        TaskState::Lost,
    ];

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskState::Queued | TaskState::Staging | TaskState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "QUEUED",
            TaskState::Staging => "STAGING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Killed => "KILLED",
            TaskState::Preempted => "PREEMPTED",
            TaskState::Drained => "DRAINED",
            TaskState::Lost => "LOST",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    ExitNonzero,
    MemoryLimit,
    DiskLimit,
    Killed,
    Preempted,
    Drained,
    LaunchFailed,
    RootfsInvalid,
    /// A download of the spec's `fetch` failed (cause in `message`).
    FetchFailed,
    AgentLost,
    /// Killed after `max_consecutive_failures` failed health checks.
    HealthCheckFailed,
}

/// Why the agent asked a task to stop; recorded durably in the task dir so a
/// restarted agent (and the supervisor) still know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Killed,
    Preempted,
    Drained,
    DiskLimit,
    HealthCheckFailed,
}

/// The reason a task keeps when it is asked to stop again: a kill wins
/// (it is never restarted), else the first reason asked stays.
pub fn stronger_stop(asked: Option<StopReason>, new: StopReason) -> StopReason {
    match asked {
        Some(StopReason::Killed) => StopReason::Killed,
        _ if new == StopReason::Killed => StopReason::Killed,
        Some(first) => first,
        None => new,
    }
}

/// Written by the supervisor when the task's init has exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Which launch of the task this is (0 for the first).
    pub run: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// Set when the task never reached exec.
    #[serde(default)]
    pub launch_error: Option<String>,
    pub finished_at: DateTime<Utc>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub id: String,
    pub role: String,
    pub state: TaskState,
    pub reason: Option<Reason>,
    /// Human-readable detail: why it waits, why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Host pid of the task's command.
    pub pid: Option<i32>,
    /// Cgroup path relative to each controller's mount.
    pub cgroup: Option<String>,
    pub sandbox: Option<String>,
    pub resources: Resources,
    pub submitted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub restarts: u32,
    /// Host ports given to the task (TaskSpec `ports`), held until it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Health check results (TaskSpec `health_checks`), while it runs and
    /// as they last were once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::TaskHealth>,
}

/// The end state of a task the agent stopped on purpose.
pub fn stopped(stop: StopReason) -> (TaskState, Option<Reason>) {
    match stop {
        StopReason::Killed => (TaskState::Killed, Some(Reason::Killed)),
        StopReason::Preempted => (TaskState::Preempted, Some(Reason::Preempted)),
        StopReason::Drained => (TaskState::Drained, Some(Reason::Drained)),
        StopReason::DiskLimit => (TaskState::Failed, Some(Reason::DiskLimit)),
        StopReason::HealthCheckFailed => (TaskState::Failed, Some(Reason::HealthCheckFailed)),
    }
}

/// The state and reason an exit record stands for.
pub fn classify(exit: &ExitRecord) -> (TaskState, Option<Reason>) {
    if exit.launch_error.is_some() {
        return (TaskState::Failed, Some(Reason::LaunchFailed));
    }
    if let Some(stop) = exit.stop_reason {
        return stopped(stop);
    }
    if exit.oom_killed {
        return (TaskState::Failed, Some(Reason::MemoryLimit));
    }
    match (exit.exit_code, exit.signal) {
        (Some(0), None) => (TaskState::Finished, None),
        _ => (TaskState::Failed, Some(Reason::ExitNonzero)),
    }
}

/// Whether a task that ended in `state` is launched again. `restarts` is how
/// many times it was relaunched already. Tasks stopped on purpose (killed,
/// drained) are not restarted; preempted ones go back to the queue when they
/// have a policy at all.
pub fn should_restart(
    policy: &RestartSpec,
    state: TaskState,
    reason: Option<Reason>,
    restarts: u32,
) -> bool {
    if policy.max_retries.is_some_and(|max| restarts >= max) {
        return false;
    }
    if matches!(reason, Some(Reason::Killed | Reason::Drained)) {
        return false;
    }
    match policy.policy {
        RestartPolicy::Never => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => state != TaskState::Finished,
    }
}

/// Marathon's launch backoff: 1 s, x1.15 per restart, at most 300 s.
pub fn restart_backoff(restarts: u32) -> std::time::Duration {
    const BASE_S: f64 = 1.0;
    const FACTOR: f64 = 1.15;
    const MAX_S: f64 = 300.0;
    let secs = (BASE_S * FACTOR.powi(restarts.min(1000) as i32)).min(MAX_S);
    std::time::Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_wins_over_every_other_stop_reason() {
        use StopReason::*;
        assert_eq!(stronger_stop(None, Preempted), Preempted);
        assert_eq!(stronger_stop(Some(Killed), Preempted), Killed);
        assert_eq!(stronger_stop(Some(Preempted), Killed), Killed);
        assert_eq!(stronger_stop(Some(Drained), Preempted), Drained);
    }

    fn exit(code: Option<i32>, signal: Option<i32>) -> ExitRecord {
        ExitRecord {
            run: 0,
            exit_code: code,
            signal,
            oom_killed: false,
            stop_reason: None,
            launch_error: None,
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn classify_exits() {
        assert_eq!(classify(&exit(Some(0), None)), (TaskState::Finished, None));
        assert_eq!(
            classify(&exit(Some(3), None)),
            (TaskState::Failed, Some(Reason::ExitNonzero))
        );
        assert_eq!(
            classify(&exit(None, Some(9))),
            (TaskState::Failed, Some(Reason::ExitNonzero))
        );
        let oom = ExitRecord {
            oom_killed: true,
            ..exit(None, Some(9))
        };
        assert_eq!(
            classify(&oom),
            (TaskState::Failed, Some(Reason::MemoryLimit))
        );
        let killed = ExitRecord {
            stop_reason: Some(StopReason::Killed),
            ..exit(Some(0), None)
        };
        assert_eq!(classify(&killed), (TaskState::Killed, Some(Reason::Killed)));
        let launch = ExitRecord {
            launch_error: Some("x".into()),
            ..exit(Some(127), None)
        };
        assert_eq!(
            classify(&launch),
            (TaskState::Failed, Some(Reason::LaunchFailed))
        );
    }

    #[test]
    fn restart_rules() {
        let on_failure = RestartSpec {
            policy: RestartPolicy::OnFailure,
            max_retries: Some(2),
        };
        assert!(should_restart(
            &on_failure,
            TaskState::Failed,
            Some(Reason::ExitNonzero),
            0
        ));
        assert!(should_restart(
            &on_failure,
            TaskState::Failed,
            Some(Reason::ExitNonzero),
            1
        ));
        assert!(!should_restart(
            &on_failure,
            TaskState::Failed,
            Some(Reason::ExitNonzero),
            2
        ));
        assert!(!should_restart(&on_failure, TaskState::Finished, None, 0));
        assert!(!should_restart(
            &on_failure,
            TaskState::Killed,
            Some(Reason::Killed),
            0
        ));
        let always = RestartSpec {
            policy: RestartPolicy::Always,
            max_retries: None,
        };
        assert!(should_restart(&always, TaskState::Finished, None, 500));
        assert!(should_restart(
            &always,
            TaskState::Preempted,
            Some(Reason::Preempted),
            0
        ));
        assert!(!should_restart(
            &RestartSpec::default(),
            TaskState::Failed,
            None,
            0
        ));
    }

    #[test]
    fn backoff_follows_marathon() {
        assert_eq!(restart_backoff(0).as_millis(), 1000);
        assert_eq!(restart_backoff(1).as_millis(), 1150);
        assert_eq!(restart_backoff(2).as_millis(), 1322);
        assert_eq!(restart_backoff(100).as_secs(), 300);
        assert_eq!(restart_backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn states_serialize_as_spec_names() {
        for s in TaskState::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            serde_json::to_string(&Reason::MemoryLimit).unwrap(),
            "\"memory_limit\""
        );
    }
}
