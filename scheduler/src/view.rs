//! The leader's in-memory view of the fleet: built from one read of the
//! whole prefix, then kept by a watch from the next revision. It holds
//! nothing etcd does not: a new leader rebuilds it from scratch.

use std::collections::{BTreeMap, HashMap};

use gleaner_core::fleet::{Job, JobState, Keys, NodeInfo, NodeKey, Queue, TaskRecord};
use gleaner_core::placement::{self, Active, Pending};
use gleaner_core::status::TaskState;

#[derive(Debug, Default)]
pub struct View {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub queues: BTreeMap<String, Queue>,
    /// job id → (job, mod revision)
    pub jobs: BTreeMap<String, (Job, i64)>,
    /// (node, task id)
    pub placements: BTreeMap<(String, String), i64>,
    pub tasks: HashMap<String, TaskRecord>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring undecodable value");
            None
        }
    }
}

impl View {
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8], rev: i64) {
        if let Some(NodeKey::Info { node }) = keys.parse_node_key(key) {
            if let Some(info) = decode::<NodeInfo>(key, value) {
                self.nodes.insert(node.to_owned(), info);
            }
        } else if let Some(q) = keys.leaf(key, &keys.queues_prefix()) {
            if let Some(v) = decode::<Queue>(key, value) {
                self.queues.insert(q.to_owned(), v);
            }
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            // The leader applies its own writes at once; the watch may
            // still deliver older events for the same key.
            if self.jobs.get(id).is_some_and(|(_, have)| *have > rev) {
                return;
            }
            if let Some(v) = decode::<Job>(key, value) {
                self.jobs.insert(id.to_owned(), (v, rev));
            }
        } else if let Some((node, task)) = keys.parse_placement(key) {
            self.placements
                .insert((node.to_owned(), task.to_owned()), rev);
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            if let Some(v) = decode::<TaskRecord>(key, value) {
                self.tasks.insert(id.to_owned(), v);
            }
        }
    }

    pub fn delete(&mut self, keys: &Keys, key: &str) {
        if let Some(NodeKey::Info { node }) = keys.parse_node_key(key) {
            self.nodes.remove(node);
        } else if let Some(q) = keys.leaf(key, &keys.queues_prefix()) {
            self.queues.remove(q);
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            self.jobs.remove(id);
        } else if let Some((node, task)) = keys.parse_placement(key) {
            self.placements.remove(&(node.to_owned(), task.to_owned()));
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            self.tasks.remove(id);
        }
    }

    /// The record of the job's current attempt.
    pub fn current_task(&self, job: &Job) -> Option<&TaskRecord> {
        self.tasks.get(&job.current_task()?)
    }

    /// The input of a placement pass.
    pub fn snapshot(&self) -> (Vec<NodeInfo>, Vec<Pending>, Vec<Active>) {
        let nodes: Vec<NodeInfo> = self.nodes.values().cloned().collect();
        let mut pending = Vec::new();
        let mut active = Vec::new();
        for (job, _) in self.jobs.values() {
            match job.state {
                JobState::Queued => pending.push(Pending {
                    job: job.id.clone(),
                    queue: job.queue.clone(),
                    priority: job.priority,
                    submitted_ms: job.submitted_at.timestamp_millis(),
                    role: job.spec.role.clone(),
                    need: placement::amount(job.spec.resources),
                    constraints: job.spec.constraints.clone(),
                    kind: placement::kind(&job.spec),
                    gang: job.gang.clone(),
                    avoid: job.avoid.clone(),
                }),
                JobState::Placed | JobState::Running => {
                    let reported = self.current_task(job).is_some_and(|t| {
                        matches!(t.status.state, TaskState::Staging | TaskState::Running)
                    });
                    active.push(Active {
                        job: job.id.clone(),
                        queue: job.queue.clone(),
                        node: job.node.clone().unwrap_or_default(),
                        role: job.spec.role.clone(),
                        kind: placement::kind(&job.spec),
                        holds: placement::amount(job.spec.resources),
                        reported,
                        gang: job.gang.as_ref().map(|g| g.id.clone()),
                    });
                }
                _ => {}
            }
        }
        (nodes, pending, active)
    }
}
