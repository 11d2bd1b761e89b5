//! Marathon's JSON shapes built from what etcd holds: one read of the
//! apps, deployments, app states, instance jobs and task records
//! ([`Snapshot`]), rendered as Marathon renders apps, tasks and the queue.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use gleaner_core::fleet::{Job, JobState, TaskRecord};
use gleaner_core::status::TaskState;
use serde_json::{json, Value};

use super::decide;
use super::model::{instance_of, timestamp, App};
use super::state::{appstate_prefix, deployments_prefix, AppStatus, Deployment};
use crate::api::{ApiError, AppState};

pub struct Snapshot {
    pub apps: BTreeMap<String, (App, i64)>,
    pub deployments: Vec<(Deployment, i64)>,
    pub states: HashMap<String, AppStatus>,
    /// Instance jobs by app id, with their mod revisions.
    pub jobs: BTreeMap<String, Vec<(Job, i64)>>,
    pub tasks: HashMap<String, TaskRecord>,
}

impl Snapshot {
    /// `with_tasks`: also read `tasks/` (task lists need start times).
    pub async fn load(st: &AppState, with_tasks: bool) -> Result<Snapshot, ApiError> {
        let apps: Vec<(String, App, i64)> = st.store.list(&st.keys.apps_prefix()).await?;
        let deps: Vec<(String, Deployment, i64)> =
            st.store.list(&deployments_prefix(&st.keys)).await?;
        let states: Vec<(String, AppStatus, i64)> =
            st.store.list(&appstate_prefix(&st.keys)).await?;
        let jobs: Vec<(String, Job, i64)> = st.store.list(&st.keys.jobs_prefix()).await?;
        let tasks: Vec<(String, TaskRecord, i64)> = if with_tasks {
            st.store.list(&st.keys.tasks_prefix()).await?
        } else {
            Vec::new()
        };
        let mut by_app: BTreeMap<String, Vec<(Job, i64)>> = BTreeMap::new();
        for (_, j, rev) in jobs {
            if let Some((a, _)) = instance_of(&j.spec) {
                let a = a.to_owned();
                by_app.entry(a).or_default().push((j, rev));
            }
        }
        let prefix = appstate_prefix(&st.keys);
        Ok(Snapshot {
            apps: apps
                .into_iter()
                .map(|(_, a, rev)| (a.id.clone(), (a, rev)))
                .collect(),
            deployments: deps.into_iter().map(|(_, d, rev)| (d, rev)).collect(),
            states: states
                .into_iter()
                .map(|(k, s, _)| (format!("/{}", k.trim_start_matches(&prefix)), s))
                .collect(),
            jobs: by_app,
            tasks: tasks
                .into_iter()
                .map(|(_, t, _)| (t.status.id.clone(), t))
                .collect(),
        })
    }

    pub fn deployments_of(&self, app: &str) -> Vec<&Deployment> {
        self.deployments
            .iter()
            .map(|(d, _)| d)
            .filter(|d| d.app == app)
            .collect()
    }

    /// Instances placed or running (what Marathon calls tasks).
    pub fn tasks_of(&self, app: &str) -> Vec<&Job> {
        self.jobs
            .get(app)
            .into_iter()
            .flatten()
            .map(|(j, _)| j)
            .filter(|j| matches!(j.state, JobState::Placed | JobState::Running))
            .collect()
    }

    pub fn queued_of(&self, app: &str) -> Vec<&Job> {
        self.jobs
            .get(app)
            .into_iter()
            .flatten()
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
        let healthy = if app.health_checks.is_empty() {
            0
        } else {
            running
        };
        v["tasksStaged"] = json!(staged);
        v["tasksRunning"] = json!(running);
        v["tasksHealthy"] = json!(healthy);
        v["tasksUnhealthy"] = json!(0);
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
        "healthCheckResults": [],
        "localVolumes": [],
    })
}
