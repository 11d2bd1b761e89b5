//! Marathon's JSON shapes built from what etcd holds (apps, deployments,
//! app states, instance jobs and task records, as the replica's cache has
//! them: [`Snapshot`]), rendered as Marathon renders apps, tasks and the
//! queue.

use std::sync::Arc;

use chrono::Utc;
use gleaner_core::fleet::{Job, JobState, TaskRecord};
use gleaner_core::health::HealthState;
use gleaner_core::status::TaskState;
use serde_json::{json, Value};

pub use super::cache::Data;
use super::decide;
use super::model::{instance_of, timestamp, App};
use super::state::Deployment;
use crate::api::{ApiError, AppState};

/// What one request renders from: the replica's cache at (at least)
/// etcd's revision when the request came ([`super::cache`]).
pub struct Snapshot(Arc<Data>);

impl std::ops::Deref for Snapshot {
    type Target = Data;
    fn deref(&self) -> &Data {
        &self.0
    }
}

impl Snapshot {
    pub async fn load(st: &AppState) -> Result<Snapshot, ApiError> {
        Ok(Snapshot(st.marathon.read(st).await?))
    }
}

impl Data {
    pub fn deployments_of(&self, app: &str) -> Vec<&Deployment> {
        self.deployments
            .values()
            .map(|(d, _)| d)
            .filter(|d| d.app == app)
            .collect()
    }

    /// Instances placed or running (what Marathon calls tasks).
    pub fn tasks_of(&self, app: &str) -> Vec<&Job> {
        self.jobs
            .get(app)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|(j, _)| j)
            .filter(|j| matches!(j.state, JobState::Placed | JobState::Running))
            .collect()
    }

    pub fn queued_of(&self, app: &str) -> Vec<&Job> {
        self.jobs
            .get(app)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|(j, _)| j)
            .filter(|j| j.state == JobState::Queued)
            .collect()
    }

    pub fn task(&self, job: &Job) -> Value {
        render_task(job, job.current_task().and_then(|t| self.tasks.get(&t)))
    }

    /// The app with Marathon's embedded parts: counts and deployments
    /// always; `tasks` and `lastTaskFailure` when asked.
    pub fn app(&self, app: &App, tasks: bool, last_failure: bool) -> Value {
        let mut v = serde_json::to_value(app).expect("app serializes");
        let t = self.tasks_of(&app.id);
        let staged = t.iter().filter(|j| j.state == JobState::Placed).count();
        let running = t.iter().filter(|j| j.state == JobState::Running).count();
        // Marathon counts neither before a task's first result.
        let health_of = |want: HealthState| {
            t.iter()
                .filter(|j| j.state == JobState::Running)
                .filter(|j| {
                    let rec = j.current_task().and_then(|id| self.tasks.get(&id));
                    task_health(rec) == Some(want)
                })
                .count()
        };
        let (healthy, unhealthy) = if app.health_checks.is_empty() {
            (0, 0)
        } else {
            (
                health_of(HealthState::Healthy),
                health_of(HealthState::Unhealthy),
            )
        };
        v["tasksStaged"] = json!(staged);
        v["tasksRunning"] = json!(running);
        v["tasksHealthy"] = json!(healthy);
        v["tasksUnhealthy"] = json!(unhealthy);
        v["deployments"] = json!(self
            .deployments_of(&app.id)
            .iter()
            .map(|d| json!({"id": d.id}))
            .collect::<Vec<_>>());
        if tasks {
            v["tasks"] = json!(t.iter().map(|j| self.task(j)).collect::<Vec<_>>());
        }
        if last_failure {
            if let Some(f) = self
                .states
                .get(&app.id)
                .and_then(|s| s.last_task_failure.clone())
            {
                v["lastTaskFailure"] = f;
            }
        }
        v
    }

    /// `GET /v2/queue`: apps with instances waiting for a node.
    pub fn queue(&self) -> Value {
        let now = Utc::now();
        let mut out = Vec::new();
        for (id, (app, _)) in &self.apps {
            let q = self.queued_of(id);
            if q.is_empty() {
                continue;
            }
            let since = q.iter().map(|j| j.submitted_at).min().unwrap_or(now);
            let (left, overdue) = match self.states.get(id) {
                Some(s) if s.version == app.config_version() => {
                    let d = decide::launch_delay(
                        s.failures,
                        app.backoff_seconds,
                        app.backoff_factor,
                        app.max_launch_delay_seconds,
                    );
                    let until = s.last_failure_at.unwrap_or(now)
                        + chrono::Duration::from_std(d).unwrap_or_default();
                    let left = (until - now).num_milliseconds().max(0) as f64 / 1000.0;
                    (left.ceil() as i64, left <= 0.0)
                }
                _ => (0, true),
            };
            out.push(json!({
                "app": self.app(app, false, false),
                "count": q.len(),
                "delay": {"timeLeftSeconds": left, "overdue": overdue},
                "since": timestamp(since),
            }));
        }
        json!({ "queue": out })
    }
}

/// Mesos task states as Marathon shows them.
pub fn mesos_state(job: &Job, rec: Option<&TaskRecord>) -> &'static str {
    match rec.map(|r| r.status.state) {
        Some(TaskState::Running) => "TASK_RUNNING",
        Some(TaskState::Finished) => "TASK_FINISHED",
        Some(TaskState::Failed) => "TASK_FAILED",
        Some(TaskState::Killed | TaskState::Drained | TaskState::Preempted) => "TASK_KILLED",
        Some(TaskState::Lost) => "TASK_LOST",
        Some(TaskState::Queued | TaskState::Staging) | None => match job.state {
            JobState::Failed => "TASK_FAILED",
            JobState::Cancelled => "TASK_KILLED",
            JobState::Succeeded => "TASK_FINISHED",
            _ => "TASK_STAGING",
        },
    }
}

pub fn render_task(job: &Job, rec: Option<&TaskRecord>) -> Value {
    let (app, version) = instance_of(&job.spec).unwrap_or(("", ""));
    let node = job.node.clone().unwrap_or_default();
    json!({
        "id": job.current_task().unwrap_or_default(),
        "appId": app,
        "host": node,
        "slaveId": node,
        "state": mesos_state(job, rec),
        "stagedAt": job.placed_at.map(timestamp),
        "startedAt": rec.and_then(|r| r.status.started_at).map(timestamp),
        "ports": rec.map(|r| r.status.ports.clone()).unwrap_or_default(),
        "servicePorts": [],
        "ipAddresses": [],
        "version": version,
        "healthCheckResults": health_check_results(rec),
        "localVolumes": [],
    })
}

/// A running task's overall health as its agent last reported it.
pub fn task_health(rec: Option<&TaskRecord>) -> Option<HealthState> {
    let rec = rec?;
    if rec.status.state != TaskState::Running {
        return None;
    }
    rec.status.health.as_ref().map(|h| h.state)
}

/// Marathon's `healthCheckResults`: one entry per check that has a result
/// (failures ignored in the grace period are none).
pub fn health_check_results(rec: Option<&TaskRecord>) -> Vec<Value> {
    let Some(rec) = rec else { return Vec::new() };
    let Some(h) = &rec.status.health else {
        return Vec::new();
    };
    h.checks
        .iter()
        .filter(|c| c.state != HealthState::Unknown)
        .map(|c| {
            json!({
                "alive": c.state == HealthState::Healthy,
                "consecutiveFailures": c.consecutive_failures,
                "firstSuccess": c.first_success.map(timestamp),
                "lastFailure": c.last_failure.map(timestamp),
                "lastSuccess": c.last_success.map(timestamp),
                "lastFailureCause": c.last_failure.and(c.last_message.clone()),
                "taskId": rec.status.id,
                "instanceId": rec.status.id,
            })
        })
        .collect()
}
