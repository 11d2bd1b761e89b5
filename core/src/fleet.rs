//! The fleet's shared vocabulary (FLEET.md): where things live in etcd
//! ([`Keys`]) and the JSON stored there ([`NodeInfo`], [`Placement`],
//! [`TaskRecord`], [`Job`], [`Queue`]). Agents, schedulers and the CLI all
//! read and write these, so they are defined once, here.
//!
//! Ids:
//! * A job id is `[A-Za-z0-9_-]{1,48}` (no `.`), chosen by the scheduler.
//! * Each attempt of a job is one task on one node; its task id is
//!   `<job-id>.<attempt>` ([`task_id`]), attempts counted from 1. It stays
//!   within the TaskSpec id rule `[A-Za-z0-9._-]{1,64}` (48 + 1 + up to 10
//!   digits + room), and [`parse_task_id`] recovers the job and attempt.
//! * A node's `hostname` (what `hostname` constraints match) is its node id:
//!   [`NodeInfo::constraint_attributes`] adds it to the attributes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::group::GroupNetwork;
use crate::spec::{Resources, TaskSpec};
use crate::status::TaskStatus;

pub const DEFAULT_PREFIX: &str = "/gleaner";
/// Longest job id: leaves room for `.<attempt>` within a 64-char task id.
pub const MAX_JOB_ID_LEN: usize = 48;
/// The attribute name that always means the node id in constraints.
pub const HOSTNAME_ATTRIBUTE: &str = "hostname";

/// The etcd key layout under one prefix (default `/gleaner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Without a trailing `/`.
    pub prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

/// What a key under `nodes/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKey<'a> {
    Info { node: &'a str },
    Attribute { node: &'a str, name: &'a str },
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    pub fn node_info(&self, node: &str) -> String {
        format!("{}/nodes/{node}/info", self.prefix)
    }
    /// The prefix of a node's attribute keys (ends with `/`).
    pub fn node_attributes(&self, node: &str) -> String {
        format!("{}/nodes/{node}/attributes/", self.prefix)
    }
    pub fn node_attribute(&self, node: &str, name: &str) -> String {
        format!("{}/nodes/{node}/attributes/{name}", self.prefix)
    }
    pub fn queues_prefix(&self) -> String {
        format!("{}/queues/", self.prefix)
    }
    pub fn queue(&self, queue: &str) -> String {
        format!("{}/queues/{queue}", self.prefix)
    }
    pub fn jobs_prefix(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }
    pub fn job(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.prefix)
    }
    pub fn apps_prefix(&self) -> String {
        format!("{}/apps/", self.prefix)
    }
    pub fn app(&self, id: &str) -> String {
        // Marathon ids are paths (`/group/app`); keep one key segment.
        format!("{}/apps/{}", self.prefix, id.trim_start_matches('/'))
    }
    /// The prefix of every node's placements (ends with `/`).
    pub fn placements_root(&self) -> String {
        format!("{}/placements/", self.prefix)
    }
    /// The prefix an agent watches (ends with `/`).
    pub fn placements_prefix(&self, node: &str) -> String {
        format!("{}/placements/{node}/", self.prefix)
    }
    pub fn placement(&self, node: &str, task_id: &str) -> String {
        format!("{}/placements/{node}/{task_id}", self.prefix)
    }
    pub fn tasks_prefix(&self) -> String {
        format!("{}/tasks/", self.prefix)
    }
    pub fn task(&self, task_id: &str) -> String {
        format!("{}/tasks/{task_id}", self.prefix)
    }
    /// The election name of the scheduler replicas.
    pub fn leader(&self) -> String {
        format!("{}/scheduler/leader", self.prefix)
    }

    /// The rest of `key` after `prefix`, when it is directly under it.
    fn under<'a>(&self, key: &'a str, prefix: &str) -> Option<&'a str> {
        key.strip_prefix(prefix).filter(|rest| !rest.is_empty())
    }

    /// `nodes/<node>/info` or `nodes/<node>/attributes/<name>`.
    pub fn parse_node_key<'a>(&self, key: &'a str) -> Option<NodeKey<'a>> {
        let rest = self.under(key, &self.nodes_prefix())?;
        let (node, rest) = rest.split_once('/')?;
        if node.is_empty() {
            return None;
        }
        if rest == "info" {
            return Some(NodeKey::Info { node });
        }
        let name = rest.strip_prefix("attributes/")?;
        (!name.is_empty() && !name.contains('/')).then_some(NodeKey::Attribute { node, name })
    }

    /// `placements/<node>/<task-id>` → (node, task id).
    pub fn parse_placement<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = self.under(key, &self.placements_root())?;
        let (node, task) = rest.split_once('/')?;
        (!node.is_empty() && !task.is_empty() && !task.contains('/')).then_some((node, task))
    }

    /// The last segment of a key directly under `jobs/`, `queues/`,
    /// `tasks/` (whichever `prefix` is given).
    pub fn leaf<'a>(&self, key: &'a str, prefix: &str) -> Option<&'a str> {
        self.under(key, prefix).filter(|rest| !rest.contains('/'))
    }
}

/// `<job-id>.<attempt>`.
pub fn task_id(job: &str, attempt: u32) -> String {
    format!("{job}.{attempt}")
}

/// (job id, attempt) of a task id made by [`task_id`].
pub fn parse_task_id(task: &str) -> Option<(&str, u32)> {
    let (job, attempt) = task.rsplit_once('.')?;
    if job.is_empty() || attempt.is_empty() || !attempt.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((job, attempt.parse().ok()?))
}

/// Job ids: `[A-Za-z0-9_-]{1,48}`.
pub fn check_job_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_JOB_ID_LEN {
        return Err(format!("job id must be 1 to {MAX_JOB_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!("job id {id:?}: only letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// One role's share of a node, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoleCapacity {
    /// What the role may use on this node.
    pub reserved: Resources,
    /// What the role's admitted tasks hold now.
    pub allocated: Resources,
}

/// `nodes/<node>/info`: written by the agent under its lease (TTL 10 s),
/// rewritten (debounced) on every change. Gone = the node is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id; also its `hostname` for constraints.
    pub node: String,
    /// The host's address (what an operator would ssh to).
    pub address: String,
    /// The agent's HTTP API, e.g. `http://10.0.0.5:7070`.
    pub agent_url: String,
    pub version: String,
    /// Per role: reserved and allocated.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleCapacity>,
    /// The node's attributes as the agent sees them.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Host port ranges tasks may use, inclusive.
    #[serde(default)]
    pub port_ranges: Vec<[u16; 2]>,
    pub reported_at: DateTime<Utc>,
}

impl NodeInfo {
    /// The attributes constraints see: the node's own plus
    /// `hostname` = node id (which wins over an attribute of that name).
    pub fn constraint_attributes(&self) -> BTreeMap<String, String> {
        let mut attrs = self.attributes.clone();
        attrs.insert(HOSTNAME_ATTRIBUTE.to_owned(), self.node.clone());
        attrs
    }
}

/// `placements/<node>/<task-id>`: the scheduler leader asks a node to run
/// one attempt. Present = run it (exactly once); deleted = kill it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// `spec.id` is the task id (the key's last segment); `spec.role` set.
    pub spec: TaskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Which attempt of the job (from 1) this task is.
    pub attempt: u32,
    pub placed_at: DateTime<Utc>,
    /// Set for the members of a gang placed together on this node: the
    /// agent submits them as one task group (`crate::gang`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<PlacedGroup>,
}

/// The task group a placement belongs to: every member's placement on the
/// node carries the same value, written in one transaction.
/// Unknown fields are ignored: a newer scheduler may add one, and an agent
/// refusing the placement over it would refuse the whole group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedGroup {
    /// The agent's group name: `<first member's task id>.pod`
    /// ([`crate::gang::group_id`]), unique per node over time and never a
    /// task id (no digits after its last `.`).
    pub id: String,
    /// The gang it comes from (for people; the agent does not use it).
    pub gang: String,
    /// Task ids placed on this node in the same transaction, in order; the
    /// first one's task dir holds the shared volume.
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GroupNetwork>,
}

/// `tasks/<task-id>`: written by the agent on every state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    #[serde(flatten)]
    pub status: TaskStatus,
    pub node: String,
}

/// A job's place in its life; each attempt is one task (see TaskRecord).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Waiting for a node (new, or to be retried / moved).
    Queued,
    /// Written to a node, not yet reported running.
    Placed,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Placed,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Placed => "PLACED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

/// Jobs with the same gang id start all together or not at all. The
/// members placed on one node are one task group there (a pod: a shared
/// volume, optionally one network; `crate::gang`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gang {
    pub id: String,
    /// How many jobs the gang has; it starts when all of them are known.
    pub cardinality: u32,
    /// Where the members on one node see their shared volume (`/shared`
    /// if absent). The same in every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_path: Option<String>,
    /// `host` (absent: each member's own) or `group`: the members on one
    /// node share one network namespace, only `lo` up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GroupNetwork>,
}

/// `jobs/<job-id>`: what was submitted, plus where it stands. Written by
/// the scheduler API (submit, cancel) and the leader (state changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub queue: String,
    /// Higher first within the queue.
    #[serde(default)]
    pub priority: i32,
    /// `spec.id` is unset: each attempt gets its own task id.
    pub spec: TaskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<Gang>,
    /// Failures (FAILED, LOST) retried this many times; drain and
    /// preemption do not count.
    #[serde(default)]
    pub max_retries: u32,
    pub submitted_at: DateTime<Utc>,
    pub state: JobState,
    /// The latest attempt (0: never placed). Its task id is
    /// `task_id(id, attempt)`.
    #[serde(default)]
    pub attempt: u32,
    /// Failures counted against `max_retries` so far.
    #[serde(default)]
    pub retries: u32,
    /// The node of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it waits, why it moved, why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Nodes the next attempt must not go to (a placement withdrawn there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// The current attempt's placement key was deleted (withdrawn); the job
    /// moves on only once its agent reports the attempt ended, so it never
    /// runs twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawing: bool,
}

impl Job {
    /// The task id of the latest attempt, if it was ever placed.
    pub fn current_task(&self) -> Option<String> {
        (self.attempt > 0).then(|| task_id(&self.id, self.attempt))
    }
}

/// How the scheduler picks among nodes that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fitness {
    /// The fullest node after placement wins (Fenzo's cpuMemBinPacker).
    #[default]
    BinPack,
    /// The emptiest node after placement wins.
    Spread,
}

/// A queue's cap on what it holds at once (placed + running).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<f64>,
}

/// `queues/<queue>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// As Armada: the queue's weight in fair share is `1 / priority_factor`,
    /// so a queue with factor 2 gets half the share of a queue with 1.
    #[serde(default = "one")]
    pub priority_factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Absent: the scheduler's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness: Option<Fitness>,
}

fn one() -> f64 {
    1.0
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            priority_factor: 1.0,
            limits: None,
            fitness: None,
        }
    }
}

impl Queue {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.priority_factor.is_finite() && self.priority_factor > 0.0) {
            return Err(format!(
                "priority_factor must be a positive number, got {}",
                self.priority_factor
            ));
        }
        if let Some(l) = &self.limits {
            for (name, v) in [("limits.cpus", l.cpus), ("limits.mem_mb", l.mem_mb)] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(format!("{name} must be a non-negative number, got {v}"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::TaskState;

    fn spec() -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "id": "j1.1", "role": "batch", "cmd": "sleep 1",
            "resources": {"cpus": 0.5, "mem_mb": 64},
            "constraints": [["hostname", "UNIQUE"]]
        }))
        .unwrap()
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let text = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, v, "{text}");
    }

    #[test]
    fn keys_follow_fleet_md() {
        let k = Keys::new("/gleaner/");
        assert_eq!(k.node_info("n1"), "/gleaner/nodes/n1/info");
        assert_eq!(k.node_attributes("n1"), "/gleaner/nodes/n1/attributes/");
        assert_eq!(
            k.node_attribute("n1", "rack"),
            "/gleaner/nodes/n1/attributes/rack"
        );
        assert_eq!(k.queue("q"), "/gleaner/queues/q");
        assert_eq!(k.job("j"), "/gleaner/jobs/j");
        assert_eq!(k.app("/grp/web"), "/gleaner/apps/grp/web");
        assert_eq!(k.placement("n1", "j.1"), "/gleaner/placements/n1/j.1");
        assert_eq!(k.placements_prefix("n1"), "/gleaner/placements/n1/");
        assert_eq!(k.task("j.1"), "/gleaner/tasks/j.1");
        assert_eq!(k.leader(), "/gleaner/scheduler/leader");
        assert_eq!(Keys::default().prefix, "/gleaner");
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("/p");
        assert_eq!(
            k.parse_node_key("/p/nodes/n1/info"),
            Some(NodeKey::Info { node: "n1" })
        );
        assert_eq!(
            k.parse_node_key("/p/nodes/n1/attributes/rack"),
            Some(NodeKey::Attribute {
                node: "n1",
                name: "rack"
            })
        );
        assert_eq!(k.parse_node_key("/p/nodes/n1/other"), None);
        assert_eq!(k.parse_node_key("/p/nodes//info"), None);
        assert_eq!(k.parse_node_key("/q/nodes/n1/info"), None);
        assert_eq!(
            k.parse_placement("/p/placements/n1/j.2"),
            Some(("n1", "j.2"))
        );
        assert_eq!(k.parse_placement("/p/placements/n1/"), None);
        assert_eq!(k.parse_placement("/p/placements/n1/a/b"), None);
        assert_eq!(k.leaf("/p/jobs/j1", &k.jobs_prefix()), Some("j1"));
        assert_eq!(k.leaf("/p/jobs/", &k.jobs_prefix()), None);
    }

    #[test]
    fn task_ids_carry_job_and_attempt() {
        let id = "a".repeat(MAX_JOB_ID_LEN);
        check_job_id(&id).unwrap();
        let task = task_id(&id, u32::MAX);
        crate::spec::check_name("id", &task).unwrap();
        assert_eq!(parse_task_id(&task), Some((id.as_str(), u32::MAX)));
        assert_eq!(parse_task_id("j-1.3"), Some(("j-1", 3)));
        assert_eq!(parse_task_id("j-1"), None);
        assert_eq!(parse_task_id("j.x"), None);
        assert_eq!(parse_task_id(".1"), None);
        assert!(check_job_id("a.b").is_err());
        assert!(check_job_id("").is_err());
        assert!(check_job_id(&"a".repeat(49)).is_err());
    }

    #[test]
    fn node_info_round_trips_and_hostname_is_the_node() {
        let r = Resources {
            cpus: 2.0,
            mem_mb: 1024.0,
            disk_mb: 0.0,
        };
        let info = NodeInfo {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            agent_url: "http://10.0.0.1:7070".into(),
            version: "0.1.0".into(),
            roles: BTreeMap::from([(
                "batch".into(),
                RoleCapacity {
                    reserved: r,
                    allocated: r,
                },
            )]),
            attributes: BTreeMap::from([
                ("rack".into(), "r1".into()),
                ("hostname".into(), "x".into()),
            ]),
            port_ranges: vec![[31000, 32000]],
            reported_at: Utc::now(),
        };
        round_trip(&info);
        let attrs = info.constraint_attributes();
        assert_eq!(attrs["hostname"], "n1");
        assert_eq!(attrs["rack"], "r1");
        // The minimal form an agent may write.
        let min: NodeInfo = serde_json::from_str(
            r#"{"node":"n","address":"a","agent_url":"u","version":"v","reported_at":"2026-11-22T10:00:00Z"}"#,
        )
        .unwrap();
        assert!(min.roles.is_empty());
    }

    #[test]
    fn placement_task_record_job_queue_round_trip() {
        let p = Placement {
            spec: spec(),
            job: Some("j1".into()),
            app: None,
            attempt: 1,
            placed_at: Utc::now(),
            group: None,
        };
        round_trip(&p);
        let text = serde_json::to_value(&p).unwrap();
        assert!(text.get("app").is_none());
        assert!(text.get("group").is_none(), "absent for a plain task");
        let grouped = Placement {
            group: Some(PlacedGroup {
                id: "j1.1.pod".into(),
                gang: "g".into(),
                members: vec!["j1.1".into(), "j2.1".into()],
                shared_path: None,
                network: Some(GroupNetwork::Group),
            }),
            ..p.clone()
        };
        round_trip(&grouped);
        let v = serde_json::to_value(&grouped).unwrap();
        assert_eq!(v["group"]["network"], "group");
        assert!(v["group"].get("shared_path").is_none());

        let status = TaskStatus {
            id: "j1.1".into(),
            role: "batch".into(),
            state: TaskState::Running,
            reason: None,
            message: None,
            exit_code: None,
            signal: None,
            pid: Some(42),
            cgroup: None,
            sandbox: None,
            resources: spec().resources,
            submitted_at: Utc::now(),
            started_at: Some(Utc::now()),
            finished_at: None,
            restarts: 0,
            ports: Vec::new(),
            health: None,
        };
        let rec = TaskRecord {
            status,
            node: "n1".into(),
        };
        round_trip(&rec);
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["state"], "RUNNING");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["id"], "j1.1");

        let mut job = Job {
            id: "j1".into(),
            queue: "q".into(),
            priority: 3,
            spec: spec(),
            gang: Some(Gang {
                id: "g".into(),
                cardinality: 4,
                shared_path: Some("/data".into()),
                network: None,
            }),
            max_retries: 2,
            submitted_at: Utc::now(),
            state: JobState::Queued,
            attempt: 0,
            retries: 0,
            node: None,
            message: Some("no node satisfies UNIQUE hostname".into()),
            placed_at: None,
            finished_at: None,
            avoid: vec![],
            withdrawing: false,
        };
        round_trip(&job);
        assert_eq!(job.current_task(), None);
        job.attempt = 2;
        job.state = JobState::Placed;
        assert_eq!(job.current_task().as_deref(), Some("j1.2"));
        assert_eq!(serde_json::to_value(&job).unwrap()["state"], "PLACED");

        let q: Queue =
            serde_json::from_str(r#"{"priority_factor": 2, "limits": {"cpus": 4}}"#).unwrap();
        assert_eq!(q.priority_factor, 2.0);
        assert_eq!(q.limits.unwrap().cpus, Some(4.0));
        round_trip(&q);
        let d: Queue = serde_json::from_str("{}").unwrap();
        assert_eq!(d, Queue::default());
        assert!(serde_json::from_str::<Queue>(r#"{"weight": 2}"#).is_err());
        assert!(Queue {
            priority_factor: 0.0,
            ..Queue::default()
        }
        .validate()
        .is_err());
        let q: Queue = serde_json::from_str(r#"{"fitness": "spread"}"#).unwrap();
        assert_eq!(q.fitness, Some(Fitness::Spread));
    }

    #[test]
    fn job_states_parse_case_insensitively() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(JobState::parse("running"), Some(JobState::Running));
        assert_eq!(JobState::parse("nope"), None);
        assert!(JobState::Cancelled.is_final() && !JobState::Placed.is_final());
    }
}
