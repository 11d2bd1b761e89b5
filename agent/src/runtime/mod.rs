//! The task manager: admission, launch, exits, restarts, kills, recovery.
//!
//! **Every task change is persisted before it is acknowledged**: in
//! task.json (agent), except the RUNNING transition, which the supervisor
//! records in supervisor.json and recovery reads from there. Each task has
//! its own lock; the map lock is held only to find or insert a task, never
//! across I/O.

pub use attributes::{Source, Sourced};
pub use queue::{ReservationChange, RoleUsage};

mod attributes;
mod disk;
mod drain;
pub(crate) mod etcd;
mod exec;
mod fetch;
mod gather;
mod harvest;
mod health;
pub(crate) mod hooks;
pub mod hostfs;
mod launcher;
pub mod placements;
pub mod pod;
mod queue;
mod recovery;
mod reservations;
mod retention;
mod spawner;
mod stages;
mod task_ports;
mod task_publisher;
mod watcher;
pub use exec::ExecSession;
pub use pod::{GroupOptions, GroupStatus, PodRecord};

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
use crate::scheduler::Amount;
use crate::spec::{check_name, RootfsSpec, TaskSpec};
use crate::status::{self, ExitRecord, Reason, StopReason, TaskState, TaskStatus};
use crate::supervisor::{StopRequest, SupervisorRecord};

/// Version of task.json; a newer one is refused, not guessed at.
pub const TASK_SCHEMA: u32 = 1;

/// Tries (of up to 2 s each, 0.5 s apart) at removing a task's cgroup
/// before it is left for the next start's orphan sweep: ~25 s in all.
const DESTROY_ATTEMPTS: u32 = 10;

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
    /// A dependency (etcd) is down; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<FsError> for AgentError {
    fn from(e: FsError) -> Self {
        AgentError::Internal(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Lock(#[from] crate::datalock::LockError),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    HostFs(#[from] hostfs::HostFsError),
    #[error(transparent)]
    Register(#[from] etcd::RegisterError),
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
    /// The task group it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Set for a task the fleet scheduler placed here (fleet mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<placements::PlacedBy>,
    /// Its scoped API token (`api_access`), valid while it is not final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// A kill acknowledged while the task was being launched: recorded so
    /// that a restarted agent applies it instead of launching again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_stop: Option<StopReason>,
    /// Members of its group: recovery discards a group found with fewer
    /// records (a crash while they were being written; never acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// Its group's shared volume and network (`runtime::pod`); absent in
    /// records written before groups had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRecord>,
}

pub(crate) struct Task {
    record: TaskRecord,
    dir: TaskDir,
    /// Asked to stop; it holds its resources until it has exited.
    stopping: Option<StopReason>,
    /// Restart backoff: not admitted before this.
    not_before: Option<std::time::Instant>,
    /// Why the agent stopped it, when that says more than the reason
    /// (e.g. another member of its group failed): the final message.
    stop_note: Option<String>,
    /// Generation of the last snapshot taken for disk (see [`RecordWrite`]).
    generation: u64,
    /// Generation of the record on disk; its lock orders the writes.
    on_disk: Arc<Mutex<u64>>,
    /// Placed, and its placement key is gone (deleted, or missing from a
    /// full read): the scheduler no longer owns it, retention may remove it
    /// once final. In memory only: after a restart the first full read
    /// says it again.
    placement_gone: bool,
    /// The current run's health check loops, aborted when it ends.
    checks: Vec<tokio::task::AbortHandle>,
    /// Told when a STAGING run is stopped: its downloads end at once
    /// (made afresh for each run, so a stop never carries over).
    staging_stop: Arc<tokio::sync::Notify>,
}

impl Task {
    fn new(record: TaskRecord, dir: TaskDir) -> Self {
        Task {
            record,
            dir,
            stopping: None,
            not_before: None,
            stop_note: None,
            generation: 0,
            on_disk: Arc::default(),
            placement_gone: false,
            checks: Vec::new(),
            staging_stop: Arc::default(),
        }
    }

    /// A snapshot of the record for disk, newer than every earlier one.
    /// Taken under the task lock, so generations follow the state's order.
    fn snapshot(&mut self, durable: bool) -> RecordWrite {
        self.generation += 1;
        RecordWrite {
            path: self.dir.task_json(),
            record: self.record.clone(),
            generation: self.generation,
            on_disk: self.on_disk.clone(),
            durable,
        }
    }

    /// Durable write of task.json: what was acknowledged survives a power cut.
    fn persist(&mut self) -> Result<(), FsError> {
        self.snapshot(true).write()
    }

    /// Atomic write of a state that recovery can derive again from durable
    /// facts (exit.json, supervisor.json, the boot id): no fsync needed.
    fn persist_derived(&mut self) -> Result<(), FsError> {
        self.snapshot(false).write()
    }
}

/// One write of task.json. Every record write goes through here: a snapshot
/// older than the one on disk is never written over it (a slow durable
/// write of the accepted record would otherwise replace a fast exit's state).
pub(crate) struct RecordWrite {
    path: PathBuf,
    record: TaskRecord,
    generation: u64,
    on_disk: Arc<Mutex<u64>>,
    durable: bool,
}

impl RecordWrite {
    fn write(self) -> Result<(), FsError> {
        let mut on_disk = self.on_disk.lock().unwrap_or_else(|e| e.into_inner());
        if *on_disk >= self.generation {
            // A newer state is there already; it includes this one, so a
            // durable write makes that one durable instead.
            if self.durable {
                fsutil::sync_file(&self.path)?;
                fsutil::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
            }
            return Ok(());
        }
        if self.durable {
            fsutil::write_json_atomic(&self.path, &self.record)?;
        } else {
            fsutil::replace_json(&self.path, &self.record)?;
        }
        *on_disk = self.generation;
        Ok(())
    }
}

type TaskRef = Arc<Mutex<Task>>;

/// Runs `work` on its own tokio task and waits for it: dropping the waiter
/// (an HTTP handler whose client went away) does not stop the work.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::spawn(work)
        .await
        .map_err(|e| AgentError::Internal(format!("request task ended abnormally: {e}")))?
}
type DurableWrite = tokio::task::JoinHandle<Result<(), FsError>>;

/// When a submission returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reply {
    /// After its own launch, if admitted (the API: a reply never says
    /// STAGING for a task that needs no fetch).
    AfterLaunch,
    /// Once its record is durable; the launch runs beside the caller (the
    /// fleet's placement worker: one placement per launch would make a
    /// node take a burst one launch at a time).
    WhenRecorded,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub launches: AtomicU64,
    pub launch_failures: AtomicU64,
    pub restarts: AtomicU64,
    pub preemptions: AtomicU64,
    /// The last disk quota sweep: its cost and how many tasks it measured.
    pub disk_scan_us: AtomicU64,
    pub disk_scanned: AtomicU64,
    /// The last scheduling pass: its cost and how many tasks it walked.
    pub sched_pass_us: AtomicU64,
    pub sched_pass_tasks: AtomicU64,
}

pub struct Agent {
    cfg: AgentConfig,
    node_id: String,
    data: DataDir,
    cgroups: Box<dyn CgroupManager>,
    tasks: Mutex<BTreeMap<String, TaskRef>>,
    /// The tasks of `tasks` that may not have ended: every one not final
    /// is here (added with it to `tasks`; a task never leaves a final
    /// state), ended ones are dropped by [`Agent::unfinished`]. What
    /// scheduling passes, port and image bookkeeping walk, so that their
    /// cost follows the live tasks, not the up to `finished_max` kept.
    unfinished: Mutex<BTreeMap<String, TaskRef>>,
    boot_id: String,
    next_id: AtomicU64,
    spawner: spawner::Spawner,
    /// Role cgroups known to exist.
    role_cgroups: Mutex<std::collections::HashSet<String>>,
    /// Task and group cgroups being removed off the runtime (a removal
    /// waits for killed processes to go): a launch into one waits for it.
    going: Arc<Mutex<std::collections::HashSet<String>>>,
    reservations: Mutex<BTreeMap<String, Amount>>,
    /// Host capacity, read once at start.
    host: Amount,
    /// Serialises scheduling passes (and victim choice with them).
    sched: Mutex<()>,
    /// Serialises reservation changes.
    reserving: tokio::sync::Mutex<()>,
    /// No scheduling until every recovered task is resolved: a task still
    /// showing its on-disk state must not be admitted a second time.
    recovering: std::sync::atomic::AtomicBool,
    attributes: Mutex<attributes::AttributeStore>,
    etcd: Option<Arc<etcd::EtcdLink>>,
    images: crate::images::ImageCache,
    /// The admin token and every task's scoped token.
    tokens: Mutex<crate::auth::Tokens>,
    /// Task sandboxing the kernel offers (detected once, `disable_features`).
    pub security: crate::supervisor::SecurityFeatures,
    pub counters: Counters,
    /// One agent per data dir, for this agent's life.
    _data_lock: crate::datalock::DataDirLock,
    /// Bumped on every task, reservation or attribute change: fleet mode
    /// publishes what changed (node info, `tasks/<id>`).
    changed: tokio::sync::watch::Sender<u64>,
    /// Placements this node refused (fleet mode).
    rejected: placements::Rejected,
    /// How task roots are built on this kernel.
    pub sandbox: hostfs::SandboxFeatures,
}

/// The node's view, for `/v1/state`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub node_id: String,
    pub version: &'static str,
    pub cgroup_version: &'static str,
    pub cgroup_features: FeatureReport,
    pub total: Amount,
    pub reservations: BTreeMap<String, Amount>,
    pub attributes: BTreeMap<String, String>,
    pub tasks: BTreeMap<&'static str, usize>,
    /// When this view was taken (the etcd registration's "last seen").
    pub reported_at: chrono::DateTime<Utc>,
}

/// `cgroup_features` of `/v1/state`: the cgroup features and those the task
/// init uses to build the task's root, one flat object.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FeatureReport {
    #[serde(flatten)]
    pub cgroup: cgroup::Features,
    #[serde(flatten)]
    pub sandbox: hostfs::SandboxFeatures,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Agent {
    /// Sets up cgroups and the data dir, recovers tasks from disk, and starts
    /// the exit watcher. Needs a tokio runtime.
    pub async fn start(cfg: AgentConfig) -> Result<Arc<Agent>, StartError> {
        // First: nothing under the data dir is touched while another agent
        // holds it.
        let data_lock = crate::datalock::DataDirLock::acquire(&cfg.data_dir)?;
        let cgroups = cgroup::detect(&cfg.cgroup_root, cfg.cgroup_version, &cfg.disable_features)?;
        let data = DataDir::new(&cfg.data_dir);
        let etcd_link = if cfg.etcd.is_empty() {
            None
        } else {
            let credentials = cfg
                .etcd_credentials()
                .map_err(|e| StartError::State(e.to_string()))?;
            let link = etcd::EtcdLink::new(
                &cfg.etcd,
                &cfg.etcd_prefix,
                &cfg.node_id(),
                credentials,
                data.etcd_lease(),
            );
            // One host per node id: refused before anything runs.
            link.check_node_id().await?;
            Some(Arc::new(link))
        };
        let attribute_store =
            attributes::AttributeStore::load(&data.attributes_json(), cfg.attributes.clone())
                .map_err(StartError::State)?;
        fsutil::create_dir_all(&data.tasks())?;
        hostfs::secure_tasks_dir(&data.tasks())?;
        fsutil::create_dir_all(&data.run())?;
        let sandbox = hostfs::detect(&cfg);
        let egress = cfg.egress().map_err(|e| StartError::State(e.to_string()))?;
        let images = crate::images::ImageCache::open(
            data.images(),
            cfg.fetch_limits(),
            cfg.ca_file.clone(),
            egress,
        )
        .map_err(|e| StartError::State(e.to_string()))?;
        let admin_token = cfg
            .read_or_create_token()
            .map_err(|e| StartError::State(e.to_string()))?;
        let security = crate::supervisor::SecurityFeatures::detect(&cfg.disable_features);
        let agent = Arc::new(Agent {
            node_id: cfg.node_id(),
            cfg,
            data,
            cgroups,
            tasks: Mutex::new(BTreeMap::new()),
            unfinished: Mutex::default(),
            boot_id: crate::procfs_util::boot_id(),
            next_id: AtomicU64::new(0),
            spawner: spawner::Spawner::new(),
            role_cgroups: Mutex::default(),
            going: Arc::default(),
            reservations: Mutex::default(),
            host: host_totals(),
            sched: Mutex::new(()),
            reserving: tokio::sync::Mutex::new(()),
            recovering: std::sync::atomic::AtomicBool::new(true),
            attributes: Mutex::new(attribute_store),
            etcd: etcd_link,
            images,
            tokens: Mutex::new(crate::auth::Tokens::new(Some(admin_token))),
            security,
            counters: Counters::default(),
            _data_lock: data_lock,
            changed: tokio::sync::watch::channel(0).0,
            rejected: placements::Rejected::default(),
            sandbox,
        });
        let socket = watcher::bind(&agent.data.notify_socket())?;
        agent.restore_reservations().await?;
        agent.recover()?;
        agent.recovering.store(false, Ordering::SeqCst);
        watcher::spawn(agent.clone(), socket);
        disk::spawn(agent.clone());
        retention::spawn(agent.clone());
        if let Some(link) = agent.etcd.clone() {
            let placed = placements::spawn(agent.clone());
            tokio::spawn(task_publisher::run(agent.clone(), link.clone()));
            tokio::spawn(etcd::run(agent.clone(), link, placed));
        }
        agent.schedule();
        if hostfs::ext4_without_journal(&agent.cfg.data_dir) == Some(true) {
            tracing::warn!(
                data_dir = %agent.cfg.data_dir.display(),
                "the data dir is on ext4 without a journal: each file created there steps over \
                 every inode deleted in the last minutes, so launches slow down as short tasks \
                 come and go (a journaled file system does not; README \"Data dir\")"
            );
        }
        tracing::info!(
            node = %agent.node_id,
            cgroup = agent.cgroups.version().as_str(),
            features = ?agent.cgroups.features(),
            security = ?agent.security,
            sandbox = ?agent.sandbox,
            tasks = agent.tasks.lock().unwrap().len(),
            "agent started"
        );
        Ok(agent)
    }

    /// (fetches, evictions, proofs) of the image cache.
    pub fn image_counters(&self) -> (&AtomicU64, &AtomicU64, &AtomicU64) {
        (
            &self.images.fetches,
            &self.images.evictions,
            &self.images.proofs,
        )
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
            cgroup_features: FeatureReport {
                cgroup: self.cgroups.features(),
                sandbox: self.sandbox,
            },
            total: self.host,
            reservations: self.reservations.lock().unwrap().clone(),
            attributes: self.attributes(),
            tasks: self.counts_by_state(),
            reported_at: Utc::now(),
        }
    }

    pub fn task_dir(&self, id: &str) -> Result<TaskDir, AgentError> {
        self.task(id)?;
        Ok(self.data.task(id))
    }

    /// Validates, records and launches (or queues) a task. Bad input
    /// creates nothing.
    /// Runs on its own tokio task: a caller that goes away (a client that
    /// disconnects drops its handler) cannot stop it half-way.
    pub async fn submit(self: &Arc<Self>, spec: TaskSpec) -> Result<TaskStatus, AgentError> {
        let agent = self.clone();
        detached(async move {
            let record = agent.new_record(spec, None)?;
            agent.submit_record(record, Reply::AfterLaunch).await
        })
        .await
    }

    async fn submit_record(
        self: &Arc<Self>,
        record: TaskRecord,
        reply: Reply,
    ) -> Result<TaskStatus, AgentError> {
        let (mut tasks, durable) = self.accept(vec![record])?;
        let task = tasks.remove(0);
        self.start_admitted(&[task.clone()], durable, reply).await?;
        let status = task.lock().unwrap().record.status.clone();
        Ok(status)
    }

    /// Validates, records and launches (or queues) a task group: all of it
    /// starts or none does. Detached from the caller, like [`Self::submit`].
    pub async fn submit_group(
        self: &Arc<Self>,
        group: &str,
        specs: Vec<TaskSpec>,
        options: GroupOptions,
    ) -> Result<Vec<TaskStatus>, AgentError> {
        let (agent, group) = (self.clone(), group.to_owned());
        detached(async move { agent.submit_group_inner(&group, specs, options, None).await }).await
    }

    /// `placed`: the members' origins when the fleet placed the group (one
    /// per spec); the reply then comes once the records are durable.
    async fn submit_group_inner(
        self: &Arc<Self>,
        group: &str,
        specs: Vec<TaskSpec>,
        options: GroupOptions,
        placed: Option<Vec<placements::PlacedBy>>,
    ) -> Result<Vec<TaskStatus>, AgentError> {
        check_name("id", group).map_err(|e| AgentError::Invalid(e.to_string()))?;
        if specs.is_empty() {
            return Err(AgentError::Invalid(
                "tasks: a group needs at least one task".into(),
            ));
        }
        let shared_path = options.check(&specs, self.security.net_namespace)?;
        let role = specs[0].role.clone();
        let mut records = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            if spec.role != role {
                return Err(AgentError::Invalid(format!(
                    "tasks[{i}].role: every task of a group has the same role ({role:?})"
                )));
            }
            if spec.restart.policy != crate::spec::RestartPolicy::Never {
                return Err(AgentError::Invalid(format!(
                    "tasks[{i}].restart: tasks of a group are not restarted one by one"
                )));
            }
            let mut spec = spec;
            if spec.id.is_none() {
                spec.id = Some(format!("{group}.{i}"));
            }
            let mut record = self.new_record(spec, Some(group)).map_err(|e| match e {
                AgentError::Invalid(m) => AgentError::Invalid(format!("tasks[{i}]: {m}")),
                other => other,
            })?;
            record.placed_by = placed.as_ref().and_then(|by| by.get(i).cloned());
            if records
                .iter()
                .any(|r: &TaskRecord| r.status.id == record.status.id)
            {
                return Err(AgentError::Invalid(format!(
                    "tasks[{i}].id: {:?} appears twice",
                    record.status.id
                )));
            }
            records.push(record);
        }
        let size = records.len();
        let pod = PodRecord {
            home: records[0].status.id.clone(),
            shared_path,
            network: options.network,
        };
        for r in &mut records {
            r.group_size = Some(size);
            r.pod = Some(pod.clone());
        }
        if self
            .tasks
            .lock()
            .unwrap()
            .values()
            .any(|t| t.lock().unwrap().record.group.as_deref() == Some(group))
        {
            return Err(AgentError::Conflict(format!(
                "group {group:?} already exists"
            )));
        }
        let (tasks, durable) = self.accept(records)?;
        let reply = if placed.is_some() {
            Reply::WhenRecorded
        } else {
            Reply::AfterLaunch
        };
        self.start_admitted(&tasks, durable, reply).await?;
        Ok(tasks
            .iter()
            .map(|t| t.lock().unwrap().record.status.clone())
            .collect())
    }

    /// Checks a spec against the host (rootfs, user) and builds its record.
    fn new_record(
        &self,
        mut spec: TaskSpec,
        group: Option<&str>,
    ) -> Result<TaskRecord, AgentError> {
        spec.validate()
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        crate::constraints::parse(&spec.constraints)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        gleaner_core::health::check_fixed_ports(
            &spec.health_checks,
            &spec.ports,
            self.cfg.listen_addr().ok().map(|a| a.port()),
            Some(self.cfg.port_range),
        )
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
        let user = spec
            .user
            .clone()
            .unwrap_or_else(|| self.cfg.default_user.clone());
        let uid = match spec.rootfs.as_mut() {
            // An image: fetched when admitted; its users are checked then.
            Some(RootfsSpec {
                uri: Some(uri),
                sha256: Some(sha256),
                ..
            }) => {
                if let Some(path) = uri.strip_prefix("file://") {
                    self.images
                        .downloader()
                        .egress()
                        .check_file(path)
                        .map_err(|e| AgentError::Invalid(format!("rootfs.uri: {e}")))?;
                }
                sha256.make_ascii_lowercase();
                (user == "root").then_some(0)
            }
            _ => {
                let rootfs = self.check_rootfs(&spec)?;
                spec.rootfs = Some(RootfsSpec {
                    path: Some(rootfs.clone()),
                    uri: None,
                    sha256: None,
                });
                let (uid, _) = crate::userdb::resolve(&rootfs, &user)
                    .map_err(|e| AgentError::Invalid(format!("user: {e}")))?;
                Some(uid)
            }
        };
        if let Some(uid) = uid {
            self.check_root(uid, &spec.role)
                .map_err(|e| AgentError::Invalid(format!("user: {e}")))?;
        }
        if spec.network == crate::spec::Network::None && !self.security.net_namespace {
            return Err(AgentError::Invalid(
                "network: \"none\" needs network namespaces, which this host does not offer".into(),
            ));
        }
        if spec.sidecar && group.is_none() {
            return Err(AgentError::Invalid(
                "sidecar: only a member of a task group can be a sidecar".into(),
            ));
        }
        let id = spec.id.clone().unwrap_or_else(|| self.generate_id());
        spec.id = Some(id.clone());
        let api_token = spec.api_access.map(|_| {
            let mut random = [0u8; 32];
            getrandom::getrandom(&mut random).expect("kernel random source");
            crate::auth::new_token(random)
        });
        Ok(TaskRecord {
            schema: TASK_SCHEMA,
            status: TaskStatus {
                id: id.clone(),
                role: spec.role.clone(),
                state: TaskState::Queued,
                reason: None,
                message: None,
                exit_code: None,
                signal: None,
                pid: None,
                cgroup: None,
                sandbox: Some(self.data.task(&id).sandbox().display().to_string()),
                resources: spec.resources,
                submitted_at: Utc::now(),
                started_at: None,
                finished_at: None,
                restarts: 0,
                ports: Vec::new(),
                health: None,
            },
            spec,
            run: 0,
            supervisor: None,
            boot_id: self.boot_id.clone(),
            group: group.map(str::to_owned),
            placed_by: None,
            api_token,
            pending_stop: None,
            group_size: None,
            pod: None,
        })
    }

    /// Inserts the records (all or none) and starts writing them durably.
    fn accept(
        &self,
        mut records: Vec<TaskRecord>,
    ) -> Result<(Vec<TaskRef>, DurableWrite), AgentError> {
        // Held until the records are in the map: no port given twice.
        let _ports = crate::ports::ALLOCATION
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.give_ports(&mut records)?;
        let tasks: Vec<TaskRef> = records
            .into_iter()
            .map(|r| {
                let dir = self.data.task(&r.status.id);
                Arc::new(Mutex::new(Task::new(r, dir)))
            })
            .collect();
        // Each task's dir is made before the task is in the map (a pass of
        // another submission may launch it from there on, and a launch
        // never makes a task dir: one that vanished fails the run), and
        // made new: one that exists means the id is taken.
        let made = make_task_dirs(&tasks)?;
        let undo = |e: AgentError| {
            for dir in &made {
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(e)
        };
        {
            let mut map = self.tasks.lock().unwrap();
            for t in &tasks {
                let t = t.lock().unwrap();
                if map.contains_key(&t.record.status.id) {
                    return undo(AgentError::Conflict(format!(
                        "task {:?} already exists",
                        t.record.status.id
                    )));
                }
            }
            let new: Vec<TaskRecord> = tasks
                .iter()
                .map(|t| t.lock().unwrap().record.clone())
                .collect();
            for existing in map.values() {
                let e = existing.lock().unwrap();
                for r in &new {
                    if let Some(clash) = name_clash(&e.record, r) {
                        drop(e);
                        return undo(AgentError::Conflict(clash));
                    }
                }
            }
            let mut unfinished = self.unfinished.lock().unwrap();
            for t in &tasks {
                let t2 = t.lock().unwrap();
                self.register_token(&t2.record);
                map.insert(t2.record.status.id.clone(), t.clone());
                unfinished.insert(t2.record.status.id.clone(), t.clone());
            }
        }
        let writes: Vec<RecordWrite> = tasks
            .iter()
            .map(|t| t.lock().unwrap().snapshot(true))
            .collect();
        // The acknowledgement needs the records on disk; a launch does not,
        // so the two run side by side and the reply waits for both. A group
        // is whole only once its last record is written (`group_size`).
        let durable = tokio::task::spawn_blocking(move || {
            let last = writes.len().saturating_sub(1);
            for (i, write) in writes.into_iter().enumerate() {
                hooks::pause_blocking("record_write");
                if hooks::fails("record_write") {
                    return Err(FsError::io(
                        "write",
                        &write.path,
                        std::io::Error::from_raw_os_error(libc::ENOSPC),
                    ));
                }
                write.write()?;
                if i < last {
                    hooks::pause_blocking("group_write");
                }
            }
            Ok(())
        });
        Ok((tasks, durable))
    }

    /// Runs a scheduling pass; launches the admitted units, `mine` (the new
    /// tasks) inline, the rest in the background. Returns once `mine` are
    /// recorded durably and, with [`Reply::AfterLaunch`], launched if
    /// admitted.
    async fn start_admitted(
        self: &Arc<Self>,
        mine: &[TaskRef],
        durable: DurableWrite,
        reply: Reply,
    ) -> Result<(), AgentError> {
        hooks::pause("submit_pass").await;
        let pass_start = std::time::Instant::now();
        let (mut own_unit, mut after_record) = (None, None);
        // Before the pass: a launch by another pass is seen below.
        let mut changes = self.subscribe_changes();
        for unit in self.schedule_pass() {
            if unit.iter().any(|t| mine.iter().any(|m| Arc::ptr_eq(t, m))) {
                // A fetch can take minutes: the reply says STAGING, and the
                // fetch starts once the record is durable.
                if unit.iter().any(|t| self.needs_fetch(t)) || reply == Reply::WhenRecorded {
                    after_record = Some(unit);
                } else {
                    own_unit = Some(unit);
                }
            } else {
                let agent = self.clone();
                tokio::spawn(async move { agent.launch_unit(unit).await });
            }
        }
        // Each side's time from here, logged for bench/launch: the reply
        // waits for the slower one.
        let (t0, inline) = (std::time::Instant::now(), own_unit.is_some());
        let pass_t = t0 - pass_start;
        let durable = async { (durable.await, t0.elapsed()) };
        let launched = async {
            if let Some(unit) = own_unit {
                self.launch_unit(unit).await;
            }
            t0.elapsed()
        };
        let ((written, record_t), launch_t) = tokio::join!(durable, launched);
        if inline {
            tracing::debug!(
                pass_us = pass_t.as_micros() as u64,
                record_us = record_t.as_micros() as u64,
                launch_us = launch_t.as_micros() as u64,
                "submit waited"
            );
        }
        if let Err(e) = written
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            self.abandon(mine);
            return Err(AgentError::Internal(format!("record task: {e}")));
        }
        if let Some(unit) = after_record {
            let agent = self.clone();
            tokio::spawn(async move { agent.launch_unit(unit).await });
        }
        // Another pass (started by an exit, say) may have admitted ours
        // first: the reply still waits for that launch, so a task that
        // needs no fetch is never acknowledged STAGING.
        while reply == Reply::AfterLaunch
            && mine.iter().any(|t| {
                let staging = t.lock().unwrap().record.status.state == TaskState::Staging;
                staging && !self.needs_fetch(t)
            })
        {
            if changes.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Undoes a submission whose record could not be written: nothing
    /// unacknowledged keeps running.
    fn abandon(&self, tasks: &[TaskRef]) {
        for task in tasks {
            // Lock order (ARCHITECTURE.md): the map lock is never taken
            // while a task lock is held.
            let (record, root) = {
                let t = task.lock().unwrap();
                (t.record.clone(), t.dir.root().to_owned())
            };
            self.tasks.lock().unwrap().remove(&record.status.id);
            // Out of the index too, or passes would count (and admit, and
            // preempt) a task nobody can see; only this very task, not a
            // later one that took the id.
            let mut index = self.unfinished.lock().unwrap();
            if index
                .get(&record.status.id)
                .is_some_and(|t| Arc::ptr_eq(t, task))
            {
                index.remove(&record.status.id);
            }
            drop(index);
            self.destroy_task_cgroup(&record);
            let _ = std::fs::remove_dir_all(root);
        }
    }

    /// Root (uid 0) only for the roles the config allows.
    fn check_root(&self, uid: u32, role: &str) -> Result<(), String> {
        if uid == 0 && !self.cfg.root_roles.iter().any(|r| r == role) {
            return Err(format!(
                "role {role:?} may not run tasks as root (config root_roles)"
            ));
        }
        Ok(())
    }

    fn needs_fetch(&self, task: &TaskRef) -> bool {
        let t = task.lock().unwrap();
        let spec = &t.record.spec;
        // A cached image its (role, URI) never fetched is proven first.
        spec.rootfs
            .as_ref()
            .and_then(|r| r.sha256.as_deref().zip(r.uri.as_deref()))
            .is_some_and(|(sha, uri)| !self.images.is_ready(sha, &spec.role, uri))
            || !spec.fetch.is_empty()
    }

    /// The tasks not yet ended (and maybe some that just did): drops the
    /// ended ones from the index on the way.
    pub(crate) fn unfinished(&self) -> Vec<TaskRef> {
        let mut index = self.unfinished.lock().unwrap();
        index.retain(|_, t| !t.lock().unwrap().record.status.state.is_final());
        index.values().cloned().collect()
    }

    /// Digests of the images that unfinished tasks name: never evicted.
    fn images_in_use(&self) -> std::collections::HashSet<String> {
        let tasks = self.unfinished();
        tasks
            .iter()
            .filter_map(|t| {
                let t = t.lock().unwrap();
                if t.record.status.state.is_final() {
                    return None;
                }
                t.record.spec.rootfs.as_ref()?.sha256.clone()
            })
            .collect()
    }

    /// Makes a task's scoped token known (at submission and recovery).
    pub(crate) fn register_token(&self, record: &TaskRecord) {
        if let Some(token) = &record.api_token {
            let scope = crate::auth::TaskScope::for_task(&record.status.id, &record.spec.role);
            self.tokens.lock().unwrap().add_scoped(token, scope);
        }
    }

    /// The caller a bearer token stands for; a task's token only while the
    /// task has not ended.
    pub fn identify(&self, bearer: &str) -> Option<crate::auth::Caller> {
        let caller = self.tokens.lock().unwrap().identify(bearer)?;
        if let crate::auth::Caller::Task(scope) = &caller {
            let live = self
                .get(&scope.task_id)
                .map(|s| !s.state.is_final())
                .unwrap_or(false);
            if !live {
                self.tokens.lock().unwrap().remove_scoped(bearer);
                return None;
            }
        }
        Some(caller)
    }

    /// The reservation of `role`, if it has one.
    pub fn reservation_of(&self, role: &str) -> Option<Amount> {
        self.reservations.lock().unwrap().get(role).copied()
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
        // Resolved, so `/tmp/..` or a link to `/` is seen for what it is.
        let real = std::fs::canonicalize(&path)
            .map_err(|e| AgentError::Invalid(format!("rootfs.path: {}: {e}", path.display())))?;
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let mut dirs: Vec<PathBuf> = self.cfg.rootfs_dirs.iter().map(|d| canon(d)).collect();
        // The operator's default rootfs is allowed as such.
        if self.cfg.default_rootfs.as_deref().map(canon).as_ref() == Some(&real) {
            dirs.extend(real.parent().map(Path::to_owned));
        }
        let data = canon(self.data.root());
        let own: Vec<PathBuf> = [self.data.images(), self.data.tasks(), self.data.run()]
            .iter()
            .map(|d| canon(d))
            .collect();
        // A bind of the data dir (or of one of its dirs) elsewhere is the
        // data dir too.
        let anchors: Vec<PathBuf> = std::iter::once(data.clone())
            .chain(own.iter().cloned())
            .collect();
        let seen = hostfs::through_binds(&real, &anchors);
        hostfs::rootfs_allowed(&seen, &dirs, &data, &own).map_err(AgentError::Invalid)?;
        // The resolved path is what every run mounts: the one given may pass
        // through a link its owner can repoint after this check.
        Ok(real)
    }

    /// Asks a task to stop: SIGTERM now, SIGKILL after its grace (enforced
    /// by the supervisor, so it holds across agent restarts). Idempotent.
    pub fn stop(&self, id: &str, reason: StopReason) -> Result<TaskStatus, AgentError> {
        let task = self.task(id)?;
        let mut t = task.lock().unwrap();
        match t.record.status.state {
            s if s.is_final() => {}
            TaskState::Queued => {
                let before = t.record.status.clone();
                let (state, reason) = status::stopped(reason);
                let st = &mut t.record.status;
                st.state = state;
                st.reason = reason;
                st.message = None;
                st.finished_at = Some(Utc::now());
                if let Err(e) = t.persist() {
                    t.record.status = before;
                    return Err(e.into());
                }
            }
            TaskState::Staging => {
                // Durable before the reply: a restarted agent must not
                // launch what was killed.
                let reason = status::stronger_stop(t.record.pending_stop, reason);
                let before = t.record.pending_stop.replace(reason);
                if let Err(e) = t.persist() {
                    t.record.pending_stop = before;
                    return Err(e.into());
                }
                // A download in progress ends now, not when it is done.
                t.staging_stop.notify_one();
            }
            TaskState::Running => {
                // A stop already asked of this run (perhaps by an agent
                // since restarted) keeps its reason if it is a kill: a kill
                // must not turn into a preemption that the policy restarts.
                let asked = fsutil::read_json::<StopRequest>(&t.dir.stop_json())
                    .ok()
                    .filter(|s| s.run == t.record.run)
                    .map(|s| s.reason);
                let reason = status::stronger_stop(asked.or(t.stopping), reason);
                let request = StopRequest {
                    run: t.record.run,
                    reason,
                    grace_s: t.record.spec.kill_grace_s,
                };
                if hooks::fails("stop_json") {
                    return Err(AgentError::Internal(format!(
                        "write {}: test hook",
                        t.dir.stop_json().display()
                    )));
                }
                fsutil::write_json_atomic(&t.dir.stop_json(), &request)?;
                // Only now: a task marked stopping is skipped by preemption
                // and drains, so it must have been told to stop.
                t.stopping = Some(reason);
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
        self.touched();
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

    /// Sets the end state of the current run, or queues a restart; the
    /// resources it held go to the queue.
    fn finish_run(
        self: &Arc<Self>,
        task: &TaskRef,
        t: &mut Task,
        state: TaskState,
        reason: Option<Reason>,
    ) {
        let _ = task;
        // No check outlives its run.
        for h in t.checks.drain(..) {
            h.abort();
        }
        let restarts = t.record.status.restarts;
        t.stopping = None;
        t.record.pending_stop = None;
        if let Some(note) = t.stop_note.take() {
            t.record.status.message = Some(note);
        }
        if t.record.group.is_none()
            && status::should_restart(&t.record.spec.restart, state, reason, restarts)
        {
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
            t.not_before = Some(std::time::Instant::now() + delay);
            self.counters.restarts.fetch_add(1, Ordering::Relaxed);
            let agent = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                agent.schedule();
            });
        } else {
            let st = &mut t.record.status;
            st.state = state;
            st.reason = reason;
            if let Some(group) = t.record.group.clone() {
                // Stops, persists and unmounts: blocking work, off the
                // runtime's workers (and after this task's lock is let go).
                let (agent, role) = (self.clone(), t.record.spec.role.clone());
                let work = move || agent.group_member_ended(&role, &group);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => drop(rt.spawn_blocking(work)),
                    Err(_) => drop(std::thread::spawn(work)),
                }
            }
        }
        // Atomic, not durable: the durable facts are the supervisor's
        // exit.json or its absence, from which recovery derives this again.
        if let Err(e) = t.persist_derived() {
            tracing::error!(task = %t.record.status.id, "persist: {e}");
        }
        self.touched();
        self.schedule_soon();
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
        self.destroy_task_cgroup(&t.record);
        t.record.status.message = Some(why.to_owned());
        t.record.status.finished_at = Some(Utc::now());
        self.finish_run(task, &mut t, TaskState::Lost, Some(Reason::AgentLost));
    }

    /// Kills what is left in a task's cgroup and removes it; a failure is
    /// logged (recovery removes leftovers at the next start).
    pub(crate) fn destroy_task_cgroup(&self, record: &TaskRecord) {
        self.destroy_cgroup(cgroup_rel(record));
    }

    /// Kills and removes cgroup `rel` on a blocking thread: the removal
    /// sleeps until the killed processes are gone (up to 2 s), which must
    /// neither stall the runtime's workers nor run under a task lock.
    /// Returns at once; [`cgroup_settled`](Self::cgroup_settled) waits.
    pub(crate) fn destroy_cgroup(&self, rel: String) {
        if !self.going.lock().unwrap().insert(rel.clone()) {
            return; // already under way
        }
        let (handle, going) = (self.cgroups.handle(&rel), self.going.clone());
        let work = move || {
            // Killed processes of the SCHED_IDLE root may take long to die
            // on a busy host: keep at it for a while rather than leave the
            // cgroup behind (it would stay until the next agent start).
            for attempt in 1..=DESTROY_ATTEMPTS {
                match handle.destroy(std::time::Duration::from_secs(2)) {
                    Ok(()) => break,
                    Err(e) if attempt == DESTROY_ATTEMPTS => {
                        tracing::warn!(cgroup = %rel, "{e}")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
                }
            }
            going.lock().unwrap().remove(&rel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// Waits until no removal of `rel` or of a cgroup above it is under
    /// way: a new run must not be created in a cgroup about to be removed.
    pub(crate) async fn cgroup_settled(&self, rel: &str) {
        let busy = || {
            self.going
                .lock()
                .unwrap()
                .iter()
                .any(|g| rel == g || rel.starts_with(&format!("{g}/")))
        };
        while busy() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data.root()
    }

    /// Something fleet mode publishes may have changed.
    pub(crate) fn touched(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Makes each task's dir, new; an existing one is a 409 (the id is
/// taken), any other failure an error; either way the dirs made here are
/// removed again.
fn make_task_dirs(tasks: &[TaskRef]) -> Result<Vec<std::path::PathBuf>, AgentError> {
    let mut made = Vec::new();
    for t in tasks {
        let (id, root) = {
            let t = t.lock().unwrap();
            (t.record.status.id.clone(), t.dir.root().to_owned())
        };
        if let Err(e) = std::fs::create_dir(&root) {
            for dir in &made {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    AgentError::Conflict(format!("task {id:?} already exists"))
                }
                _ => AgentError::Internal(format!("mkdir {}: {e}", root.display())),
            });
        }
        made.push(root);
    }
    Ok(made)
}

/// A task and a group of one role would share the cgroup `<role>/<name>`
/// (a group's release would kill the task): the newer of the two is refused.
fn name_clash(existing: &TaskRecord, new: &TaskRecord) -> Option<String> {
    // The common case, first and without a string compare: plain tasks
    // (ids are unique in the map already).
    if existing.group.is_none() && new.group.is_none() {
        return None;
    }
    // In any role, as `create_group` checks before: checked again here,
    // under the map's lock, for two submissions of one group at once.
    if let (Some(a), Some(b)) = (&existing.group, &new.group) {
        if a == b {
            return Some(format!("group {b:?} already exists"));
        }
    }
    if existing.spec.role != new.spec.role {
        return None;
    }
    let (e_id, n_id) = (&existing.status.id, &new.status.id);
    match (&existing.group, &new.group) {
        (Some(g), None) if g == n_id => Some(format!(
            "task {n_id:?}: a group of that name exists in role {:?}",
            new.spec.role
        )),
        (None, Some(g)) if g == e_id => Some(format!(
            "group {g:?}: a task of that name exists in role {:?}",
            new.spec.role
        )),
        _ => None,
    }
}

/// The task's cgroup below the root: `<role>/<id>`, or
/// `<role>/<group>/<id>` for a member of a task group.
pub(crate) fn cgroup_rel(record: &TaskRecord) -> String {
    let (role, id) = (&record.spec.role, &record.status.id);
    match &record.group {
        Some(g) => format!("{role}/{g}/{id}"),
        None => format!("{role}/{id}"),
    }
}

fn host_totals() -> Amount {
    // Online CPUs of the host, not the agent's own affinity or quota.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0);
    Amount {
        cpus,
        mem_mb: (mem_kb / 1024.0).floor(),
        disk_mb: 0.0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of task `id` in `state` (a JSON state name).
    pub(crate) fn record(id: &str, state: &str, group: Option<(&str, usize)>) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "schema": TASK_SCHEMA,
            "spec": {"id": id, "argv": ["true"], "resources": {"cpus": 0.1, "mem_mb": 16}},
            "status": {"id": id, "role": "batch", "state": state, "reason": null,
                "exit_code": null, "signal": null, "pid": null, "cgroup": null,
                "sandbox": null, "resources": {"cpus": 0.1, "mem_mb": 16},
                "submitted_at": "2026-01-01T00:00:00Z", "started_at": null,
                "finished_at": null, "restarts": 0},
            "run": 0,
            "group": group.map(|g| g.0),
            "group_size": group.map(|g| g.1),
        }))
        .unwrap()
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = Task::new(record("t", "QUEUED", None), TaskDir::new(dir.path()));
        let accepted = task.snapshot(true);
        task.record.status.state = TaskState::Finished;
        task.persist_derived().unwrap();
        // The accepted record's durable write lands last: skipped.
        accepted.write().unwrap();
        let on_disk: TaskRecord = fsutil::read_json(&task.dir.task_json()).unwrap();
        assert_eq!(on_disk.status.state, TaskState::Finished);
        task.record.status.state = TaskState::Killed;
        task.persist().unwrap();
        let on_disk: TaskRecord = fsutil::read_json(&task.dir.task_json()).unwrap();
        assert_eq!(on_disk.status.state, TaskState::Killed);
    }
}
