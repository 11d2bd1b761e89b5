//! The task manager: admission, launch, exits, restarts, kills, recovery.
//!
//! **Every task change is persisted before it is acknowledged**: in
//! task.json (agent), except the RUNNING transition, which the supervisor
//! records in supervisor.json and recovery reads from there. Each task has
//! its own lock; the map lock is held only to find or insert a task, never
//! across I/O.

mod launcher;
mod recovery;
mod spawner;
mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupManager};
use crate::config::AgentConfig;
use crate::fsutil::{self, FsError};
use crate::layout::{DataDir, TaskDir};
use crate::spec::{RootfsSpec, TaskSpec};
use crate::status::{self, ExitRecord, Reason, StopReason, TaskState, TaskStatus};
use crate::supervisor::{StopRequest, SupervisorRecord};

/// Version of task.json; a newer one is refused, not guessed at.
pub const TASK_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<FsError> for AgentError {
    fn from(e: FsError) -> Self {
        AgentError::Internal(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cgroups: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{0}")]
    State(String),
}

/// What task.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub schema: u32,
    /// Spec with id and rootfs filled in.
    pub spec: TaskSpec,
    pub status: TaskStatus,
    /// Launch number: 0 for the first, +1 per restart.
    pub run: u32,
    #[serde(default)]
    pub supervisor: Option<SupervisorRecord>,
    /// Boot of the host the current run started in.
    #[serde(default)]
    pub boot_id: String,
}

pub(crate) struct Task {
    record: TaskRecord,
    dir: TaskDir,
    /// A kill that arrived while the task was being launched.
    pending_stop: Option<StopReason>,
}

impl Task {
    /// Durable write of task.json: what was acknowledged survives a power cut.
    fn persist(&self) -> Result<(), FsError> {
        fsutil::write_json_atomic(&self.dir.task_json(), &self.record)
    }

    /// Atomic write of a state that recovery can derive again from durable
    /// facts (exit.json, supervisor.json, the boot id): no fsync needed.
    fn persist_derived(&self) -> Result<(), FsError> {
        fsutil::replace_json(&self.dir.task_json(), &self.record)
    }
}

type TaskRef = Arc<Mutex<Task>>;

#[derive(Debug, Default)]
pub struct Counters {
    pub launches: AtomicU64,
    pub launch_failures: AtomicU64,
    pub restarts: AtomicU64,
}

pub struct Agent {
    cfg: AgentConfig,
    node_id: String,
    data: DataDir,
    cgroups: Box<dyn CgroupManager>,
    tasks: Mutex<BTreeMap<String, TaskRef>>,
    boot_id: String,
    next_id: AtomicU64,
    spawner: spawner::Spawner,
    /// Role cgroups known to exist.
    roles: Mutex<std::collections::HashSet<String>>,
    pub counters: Counters,
}

/// The node's view, for `/v1/state`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub node_id: String,
    pub version: &'static str,
    pub cgroup_version: &'static str,
    pub cgroup_features: cgroup::Features,
    pub total: Totals,
    pub attributes: BTreeMap<String, String>,
    pub tasks: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub cpus: f64,
    pub mem_mb: f64,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Agent {
    /// Sets up cgroups and the data dir, recovers tasks from disk, and starts
    /// the exit watcher. Needs a tokio runtime.
    pub async fn start(cfg: AgentConfig) -> Result<Arc<Agent>, StartError> {
        let cgroups = cgroup::detect(&cfg.cgroup_root, cfg.cgroup_version, &cfg.disable_features)?;
        let data = DataDir::new(&cfg.data_dir);
        fsutil::create_dir_all(&data.tasks())?;
        fsutil::create_dir_all(&data.run())?;
        let agent = Arc::new(Agent {
            node_id: cfg.node_id(),
            cfg,
            data,
            cgroups,
            tasks: Mutex::new(BTreeMap::new()),
            boot_id: crate::procfs_util::boot_id(),
            next_id: AtomicU64::new(0),
            spawner: spawner::Spawner::new(),
            roles: Mutex::default(),
            counters: Counters::default(),
        });
        let socket = watcher::bind(&agent.data.notify_socket())?;
        agent.recover()?;
        watcher::spawn(agent.clone(), socket);
        tracing::info!(
            node = %agent.node_id,
            cgroup = agent.cgroups.version().as_str(),
            features = ?agent.cgroups.features(),
            tasks = agent.tasks.lock().unwrap().len(),
            "agent started"
        );
        Ok(agent)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    pub fn cgroups(&self) -> &dyn CgroupManager {
        self.cgroups.as_ref()
    }

    fn task(&self, id: &str) -> Result<TaskRef, AgentError> {
        self.tasks
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("task {id:?} not found")))
    }

    pub fn get(&self, id: &str) -> Result<TaskStatus, AgentError> {
        Ok(self.task(id)?.lock().unwrap().record.status.clone())
    }

    pub fn list(&self) -> Vec<TaskStatus> {
        let tasks: Vec<TaskRef> = self.tasks.lock().unwrap().values().cloned().collect();
        tasks
            .iter()
            .map(|t| t.lock().unwrap().record.status.clone())
            .collect()
    }

    pub fn counts_by_state(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for s in self.list() {
            *counts.entry(s.state.as_str()).or_default() += 1;
        }
        counts
    }

    pub fn node_state(&self) -> NodeState {
        NodeState {
            node_id: self.node_id.clone(),
            version: VERSION,
            cgroup_version: self.cgroups.version().as_str(),
            cgroup_features: self.cgroups.features(),
            total: host_totals(),
            attributes: self.cfg.attributes.clone(),
            tasks: self.counts_by_state(),
        }
    }

    pub fn task_dir(&self, id: &str) -> Result<TaskDir, AgentError> {
        self.task(id)?;
        Ok(self.data.task(id))
    }

    /// Validates, records and launches a task. Bad input creates nothing.
    pub async fn submit(self: &Arc<Self>, mut spec: TaskSpec) -> Result<TaskStatus, AgentError> {
        spec.validate()
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let rootfs = self.check_rootfs(&spec)?;
        spec.rootfs = Some(RootfsSpec {
            path: Some(rootfs.clone()),
            uri: None,
            sha256: None,
        });
        let user = spec
            .user
            .clone()
            .unwrap_or_else(|| self.cfg.default_user.clone());
        let (uid, _) = crate::userdb::resolve(&rootfs, &user)
            .map_err(|e| AgentError::Invalid(format!("user: {e}")))?;
        if uid == 0 && !self.cfg.root_roles.contains(&spec.role) {
            return Err(AgentError::Invalid(format!(
                "user: role {:?} may not run tasks as root (config root_roles)",
                spec.role
            )));
        }
        let id = spec.id.clone().unwrap_or_else(|| self.generate_id());
        spec.id = Some(id.clone());
        let dir = self.data.task(&id);
        let now = Utc::now();
        let record = TaskRecord {
            schema: TASK_SCHEMA,
            status: TaskStatus {
                id: id.clone(),
                role: spec.role.clone(),
                state: TaskState::Staging,
                reason: None,
                message: None,
                exit_code: None,
                signal: None,
                pid: None,
                cgroup: None,
                sandbox: Some(dir.sandbox().display().to_string()),
                resources: spec.resources,
                submitted_at: now,
                started_at: None,
                finished_at: None,
                restarts: 0,
            },
            spec,
            run: 0,
            supervisor: None,
            boot_id: self.boot_id.clone(),
        };
        let task = Arc::new(Mutex::new(Task {
            record,
            dir: dir.clone(),
            pending_stop: None,
        }));
        {
            let mut tasks = self.tasks.lock().unwrap();
            if tasks.contains_key(&id) || dir.root().exists() {
                return Err(AgentError::Conflict(format!("task {id:?} already exists")));
            }
            tasks.insert(id.clone(), task.clone());
        }
        // The acknowledgement needs the record on disk; the launch does not,
        // so the two run side by side and the 201 waits for both.
        if let Err(e) = fsutil::create_dir_all(dir.root()) {
            self.tasks.lock().unwrap().remove(&id);
            return Err(e.into());
        }
        let snapshot = task.lock().unwrap().record.clone();
        let path = dir.task_json();
        let durable =
            tokio::task::spawn_blocking(move || fsutil::write_json_atomic(&path, &snapshot));
        self.launch_after(&task, Some(durable)).await?;
        let status = task.lock().unwrap().record.status.clone();
        Ok(status)
    }

    fn generate_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("t-{}-{n}", Utc::now().format("%Y%m%d%H%M%S%3f"))
    }

    fn check_rootfs(&self, spec: &TaskSpec) -> Result<PathBuf, AgentError> {
        let path = match spec.rootfs.as_ref().and_then(|r| r.path.clone()) {
            Some(p) => p,
            None => self.cfg.default_rootfs.clone().ok_or_else(|| {
                AgentError::Invalid("rootfs: required (the agent has no default_rootfs)".into())
            })?,
        };
        if !path.is_dir() {
            return Err(AgentError::Invalid(format!(
                "rootfs.path: {} does not exist or is not a directory",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Asks a task to stop: SIGTERM now, SIGKILL after its grace (enforced
    /// by the supervisor, so it holds across agent restarts). Idempotent.
    pub fn stop(&self, id: &str, reason: StopReason) -> Result<TaskStatus, AgentError> {
        let task = self.task(id)?;
        let mut t = task.lock().unwrap();
        match t.record.status.state {
            s if s.is_final() => {}
            TaskState::Queued => {
                let (state, reason) = status::classify(&ExitRecord {
                    run: t.record.run,
                    exit_code: None,
                    signal: None,
                    oom_killed: false,
                    stop_reason: Some(reason),
                    launch_error: None,
                    finished_at: Utc::now(),
                });
                let st = &mut t.record.status;
                st.state = state;
                st.reason = reason;
                st.message = None;
                st.finished_at = Some(Utc::now());
                t.persist()?;
            }
            TaskState::Staging => t.pending_stop = Some(reason),
            TaskState::Running => {
                let request = StopRequest {
                    run: t.record.run,
                    reason,
                    grace_s: t.record.spec.kill_grace_s,
                };
                fsutil::write_json_atomic(&t.dir.stop_json(), &request)?;
                if let Some(sup) = &t.record.supervisor {
                    if crate::procfs_util::is_same_process(
                        sup.supervisor_pid,
                        sup.supervisor_start_ticks,
                    ) {
                        // SAFETY: kill(2) on a pid whose identity we just checked.
                        unsafe { libc::kill(sup.supervisor_pid, libc::SIGTERM) };
                    }
                }
                t.record.status.message =
                    Some(format!("stopping ({reason:?}), grace {}s", request.grace_s));
            }
            _ => {}
        }
        Ok(t.record.status.clone())
    }

    /// Applies the exit record of `run` of task `id`, if it is the current
    /// run and not applied yet; restarts per policy.
    pub(crate) fn on_exit(self: &Arc<Self>, id: &str, run: u32) {
        let Ok(task) = self.task(id) else { return };
        let mut t = task.lock().unwrap();
        if t.record.run != run || t.record.status.state != TaskState::Running {
            return;
        }
        let exit: ExitRecord = match fsutil::read_json(&t.dir.exit_json()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(task = id, "exit report without record: {e}");
                return;
            }
        };
        if exit.run != run {
            return;
        }
        let (state, reason) = status::classify(&exit);
        let st = &mut t.record.status;
        st.exit_code = exit.exit_code;
        st.signal = exit.signal;
        st.finished_at = Some(exit.finished_at);
        st.message = exit.launch_error.clone();
        if exit.launch_error.is_some() {
            self.counters
                .launch_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(task = id, run, ?state, ?reason, code = ?exit.exit_code, signal = ?exit.signal, "task ended");
        self.finish_run(&task, &mut t, state, reason);
    }

    /// Sets the end state of the current run, or queues a restart.
    fn finish_run(
        self: &Arc<Self>,
        task: &TaskRef,
        t: &mut Task,
        state: TaskState,
        reason: Option<Reason>,
    ) {
        let restarts = t.record.status.restarts;
        if status::should_restart(&t.record.spec.restart, state, reason, restarts) {
            let delay = status::restart_backoff(restarts);
            let st = &mut t.record.status;
            st.state = TaskState::Queued;
            st.reason = reason;
            st.message = Some(format!(
                "restart {} in {:.2}s after {}",
                restarts + 1,
                delay.as_secs_f64(),
                match reason {
                    Some(r) => serde_json::to_string(&r)
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_owned(),
                    None => "exit 0".into(),
                }
            ));
            st.restarts += 1;
            t.record.run += 1;
            t.record.supervisor = None;
            let run = t.record.run;
            let agent = self.clone();
            let task = task.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let still_waiting = {
                    let t = task.lock().unwrap();
                    t.record.run == run && t.record.status.state == TaskState::Queued
                };
                if still_waiting {
                    agent.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    agent.launch(&task).await;
                }
            });
        } else {
            let st = &mut t.record.status;
            st.state = state;
            st.reason = reason;
        }
        // Atomic, not durable: the durable facts are the supervisor's
        // exit.json or its absence, from which recovery derives this again.
        if let Err(e) = t.persist_derived() {
            tracing::error!(task = %t.record.status.id, "persist: {e}");
        }
    }

    /// Checks that supervisors of running tasks are alive; a vanished one
    /// with no exit record means the task is lost.
    pub(crate) fn check_liveness(self: &Arc<Self>) {
        let tasks: Vec<(String, TaskRef)> = self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, task) in tasks {
            let (run, alive) = {
                let t = task.lock().unwrap();
                if t.record.status.state != TaskState::Running {
                    continue;
                }
                let alive = t.record.supervisor.as_ref().is_some_and(|s| {
                    crate::procfs_util::is_same_process(s.supervisor_pid, s.supervisor_start_ticks)
                });
                (t.record.run, alive)
            };
            if alive {
                continue;
            }
            if task.lock().unwrap().dir.exit_json().exists() {
                self.on_exit(&id, run);
            } else {
                self.mark_lost(&task, "supervisor vanished without an exit record");
            }
        }
    }

    fn mark_lost(self: &Arc<Self>, task: &TaskRef, why: &str) {
        let mut t = task.lock().unwrap();
        if t.record.status.state.is_final() {
            return;
        }
        tracing::warn!(task = %t.record.status.id, "task lost: {why}");
        let handle = self.cgroups.handle(&cgroup_rel(&t.record.spec));
        if let Err(e) = handle.destroy(std::time::Duration::from_secs(2)) {
            tracing::warn!("{e}");
        }
        t.record.status.message = Some(why.to_owned());
        t.record.status.finished_at = Some(Utc::now());
        self.finish_run(task, &mut t, TaskState::Lost, Some(Reason::AgentLost));
    }

    pub fn data_dir(&self) -> &Path {
        self.data.root()
    }
}

/// The task's cgroup below the root: `<role>/<id>`.
pub(crate) fn cgroup_rel(spec: &TaskSpec) -> String {
    format!("{}/{}", spec.role, spec.id.as_deref().unwrap_or_default())
}

fn host_totals() -> Totals {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .unwrap_or(0.0);
    Totals {
        cpus,
        mem_mb: (mem_kb / 1024.0).floor(),
    }
}
