//! The leader's in-memory view of the fleet: built from one read of the
//! whole prefix, then kept by a watch from the next revision. It holds
//! nothing etcd does not: a new leader rebuilds it from scratch.
//!
//! Only work that can still change is held whole: a finished job (unless
//! an app instance the controller has yet to consume) is kept as its id
//! and revision alone, and only the current attempt's task record of a
//! held job is kept. A fleet's history grows without bound in etcd (until
//! removed); the leader's memory must not grow with it (50,000 finished
//! jobs held whole were most of the leader's 202 MB).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gleaner_core::fleet::{
    parse_task_id, task_id, Job, JobState, Keys, NodeInfo, NodeKey, Queue, TaskRecord,
};
use gleaner_core::placement::{self, Active, Pending};
use gleaner_core::status::TaskState;

use crate::marathon::model::instance_of;

#[derive(Debug, Default)]
pub struct View {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub queues: BTreeMap<String, Queue>,
    /// job id → (job, mod revision): jobs not final, and final app
    /// instances until the controller consumes them. Change through
    /// [`View::set_job`] / [`View::remove_job`].
    pub jobs: BTreeMap<String, (Job, i64)>,
    /// Finished jobs let go: id → the revision of their final write (an
    /// older event of the key delivered late must not bring them back).
    done: HashMap<String, i64>,
    /// (node, task id)
    pub placements: BTreeMap<(String, String), i64>,
    /// The current attempt's record of each job in `jobs`.
    pub tasks: HashMap<String, TaskRecord>,
    /// Attribute changes written to etcd (`nodes/<n>/attributes/<a>`) that
    /// the node's info does not show yet: node → name → new value (`None`:
    /// deleted). The agent reports them a moment later (debounced).
    attr_changes: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// Nodes whose attributes changed since the last [`View::take_changed_nodes`].
    changed_nodes: BTreeSet<String>,
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
                self.set_info(node, info);
            }
        } else if let Some(NodeKey::Attribute { node, name }) = keys.parse_node_key(key) {
            let v = String::from_utf8_lossy(value).into_owned();
            self.attribute_changed(node, name, Some(v));
        } else if let Some(q) = keys.leaf(key, &keys.queues_prefix()) {
            if let Some(v) = decode::<Queue>(key, value) {
                self.queues.insert(q.to_owned(), v);
            }
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            if self.newer_than(id, rev) {
                return;
            }
            if let Some(v) = decode::<Job>(key, value) {
                if v.id == id {
                    self.set_job(v, rev);
                }
            }
        } else if let Some((node, task)) = keys.parse_placement(key) {
            self.placements
                .insert((node.to_owned(), task.to_owned()), rev);
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            if self.is_current_attempt(id) {
                if let Some(v) = decode::<TaskRecord>(key, value) {
                    self.tasks.insert(id.to_owned(), v);
                }
            }
        }
    }

    /// The view has this job at a later revision than `rev`: the leader
    /// applies its own writes at once, and the watch may still deliver
    /// older events for the same key.
    fn newer_than(&self, id: &str, rev: i64) -> bool {
        self.jobs.get(id).is_some_and(|(_, have)| *have > rev)
            || self.done.get(id).is_some_and(|have| *have > rev)
    }

    /// Is `task` the current attempt of a job the view holds?
    fn is_current_attempt(&self, task: &str) -> bool {
        parse_task_id(task).is_some_and(|(job, attempt)| {
            self.jobs
                .get(job)
                .is_some_and(|(j, _)| j.attempt == attempt)
        })
    }

    /// A job's new state (from the watch or the leader's own write at
    /// revision `rev`). A finished job that is not an app instance is let
    /// go with its record; a new attempt drops the old attempt's record.
    pub fn set_job(&mut self, job: Job, rev: i64) {
        if self.newer_than(&job.id, rev) {
            return;
        }
        let old = self.jobs.get(&job.id).map(|(j, _)| j.attempt);
        if old.is_some_and(|a| a != job.attempt) {
            self.tasks
                .remove(&task_id(&job.id, old.unwrap_or_default()));
        }
        if job.state.is_final() && instance_of(&job.spec).is_none() {
            self.remove_job(&job.id);
            self.done.insert(job.id, rev);
            return;
        }
        self.done.remove(&job.id);
        self.jobs.insert(job.id.clone(), (job, rev));
    }

    /// The job's key is gone (or consumed): forget it and its record.
    pub fn remove_job(&mut self, id: &str) {
        self.done.remove(id);
        if let Some((j, _)) = self.jobs.remove(id) {
            if let Some(t) = j.current_task() {
                self.tasks.remove(&t);
            }
        }
    }

    pub fn delete(&mut self, keys: &Keys, key: &str) {
        if let Some(NodeKey::Info { node }) = keys.parse_node_key(key) {
            self.nodes.remove(node);
            self.attr_changes.remove(node);
        } else if let Some(NodeKey::Attribute { node, name }) = keys.parse_node_key(key) {
            self.attribute_changed(node, name, None);
        } else if let Some(q) = keys.leaf(key, &keys.queues_prefix()) {
            self.queues.remove(q);
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            self.remove_job(id);
        } else if let Some((node, task)) = keys.parse_placement(key) {
            self.placements.remove(&(node.to_owned(), task.to_owned()));
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            self.tasks.remove(id);
        }
    }

    fn set_info(&mut self, node: &str, info: NodeInfo) {
        let before = self.nodes.get(node).map(|i| &i.attributes);
        if before != Some(&info.attributes) {
            self.changed_nodes.insert(node.to_owned());
        }
        // What the agent reports now needs no overlay.
        if let Some(changes) = self.attr_changes.get_mut(node) {
            changes.retain(|name, v| info.attributes.get(name) != v.as_ref());
            if changes.is_empty() {
                self.attr_changes.remove(node);
            }
        }
        self.nodes.insert(node.to_owned(), info);
    }

    fn attribute_changed(&mut self, node: &str, name: &str, value: Option<String>) {
        let reported = self.nodes.get(node).map(|i| i.attributes.get(name));
        if reported == Some(value.as_ref()) {
            if let Some(c) = self.attr_changes.get_mut(node) {
                c.remove(name);
            }
            return;
        }
        self.attr_changes
            .entry(node.to_owned())
            .or_default()
            .insert(name.to_owned(), value);
        self.changed_nodes.insert(node.to_owned());
    }

    /// Nodes whose attributes changed since the last call.
    pub fn take_changed_nodes(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed_nodes)
    }

    /// What constraints see on a live node now: its reported attributes
    /// (with `hostname`), and the changes written to etcd that it has not
    /// reported yet.
    pub fn node_attributes(&self, node: &str) -> Option<BTreeMap<String, String>> {
        let mut attrs = self.nodes.get(node)?.constraint_attributes();
        for (name, v) in self.attr_changes.get(node).into_iter().flatten() {
            if name == gleaner_core::fleet::HOSTNAME_ATTRIBUTE {
                continue;
            }
            match v {
                Some(v) => attrs.insert(name.clone(), v.clone()),
                None => attrs.remove(name),
            };
        }
        Some(attrs)
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
        let gangs_with_sidecar: std::collections::BTreeSet<&str> = self
            .jobs
            .values()
            .filter(|(j, _)| j.spec.sidecar)
            .filter_map(|(j, _)| j.gang.as_ref().map(|g| g.id.as_str()))
            .collect();
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
                    sidecar: job.spec.sidecar,
                    gang_sidecar: job
                        .gang
                        .as_ref()
                        .is_some_and(|g| gangs_with_sidecar.contains(g.id.as_str())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: &str, state: &str, attempt: u32, env: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": id, "queue": "q", "spec": {"cmd": "true",
                "resources": {"cpus": 0.1, "mem_mb": 16}, "env": env},
            "submitted_at": "2026-12-01T00:00:00Z", "state": state, "attempt": attempt,
            "node": "n1"
        }))
        .unwrap()
    }

    fn record(task: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": task, "role": "batch", "state": "RUNNING", "reason": null,
            "exit_code": null, "signal": null, "pid": null, "cgroup": null, "sandbox": null,
            "resources": {"cpus": 0.1, "mem_mb": 16}, "submitted_at": "2026-12-01T00:00:00Z",
            "started_at": null, "finished_at": null, "restarts": 0, "node": "n1"
        }))
        .unwrap()
    }

    #[test]
    fn finished_jobs_are_let_go_and_stay_gone() {
        let k = Keys::new("/g");
        let mut v = View::default();
        v.put(&k, "/g/jobs/a", &job("a", "RUNNING", 1, json!({})), 10);
        v.put(&k, "/g/tasks/a.1", &record("a.1"), 11);
        assert_eq!(v.tasks.len(), 1);
        v.put(&k, "/g/jobs/a", &job("a", "SUCCEEDED", 1, json!({})), 12);
        assert!(v.jobs.is_empty() && v.tasks.is_empty());
        // An older event of the key delivered late does not bring it back.
        v.put(&k, "/g/jobs/a", &job("a", "RUNNING", 1, json!({})), 10);
        assert!(v.jobs.is_empty());
        // Its record written after the end is not kept either.
        v.put(&k, "/g/tasks/a.1", &record("a.1"), 13);
        assert!(v.tasks.is_empty());
        // The key deleted, then written again: a new job.
        v.delete(&k, "/g/jobs/a");
        v.put(&k, "/g/jobs/a", &job("a", "QUEUED", 0, json!({})), 14);
        assert_eq!(v.jobs.len(), 1);
    }

    #[test]
    fn only_the_current_attempt_record_is_kept() {
        let k = Keys::new("/g");
        let mut v = View::default();
        v.put(&k, "/g/jobs/a", &job("a", "RUNNING", 2, json!({})), 10);
        v.put(&k, "/g/tasks/a.1", &record("a.1"), 11);
        v.put(&k, "/g/tasks/a.2", &record("a.2"), 12);
        v.put(&k, "/g/tasks/b.1", &record("b.1"), 13);
        assert_eq!(v.tasks.keys().collect::<Vec<_>>(), vec!["a.2"]);
        // A new attempt lets the old record go.
        v.put(&k, "/g/jobs/a", &job("a", "PLACED", 3, json!({})), 14);
        assert!(v.tasks.is_empty());
    }

    #[test]
    fn finished_app_instances_stay_until_consumed() {
        let k = Keys::new("/g");
        let mut v = View::default();
        let env = json!({"MARATHON_APP_ID": "/web", "MARATHON_APP_VERSION": "v"});
        v.put(&k, "/g/jobs/w", &job("w", "RUNNING", 1, env.clone()), 10);
        v.put(&k, "/g/tasks/w.1", &record("w.1"), 11);
        v.put(&k, "/g/jobs/w", &job("w", "FAILED", 1, env), 12);
        assert_eq!((v.jobs.len(), v.tasks.len()), (1, 1));
        v.remove_job("w");
        assert!(v.jobs.is_empty() && v.tasks.is_empty());
    }

    fn info(node: &str, attrs: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "node": node, "address": "h", "agent_url": "http://h:1", "version": "0",
            "attributes": attrs, "reported_at": "2026-12-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn attribute_changes_count_before_the_node_reports_them() {
        let k = Keys::new("/g");
        let mut v = View::default();
        v.put(&k, "/g/nodes/n1/attributes/ssd", b"true", 1);
        v.put(
            &k,
            "/g/nodes/n1/info",
            &info("n1", json!({"ssd": "true"})),
            2,
        );
        assert!(v.take_changed_nodes().contains("n1"));
        let a = v.node_attributes("n1").unwrap();
        assert_eq!((a["ssd"].as_str(), a["hostname"].as_str()), ("true", "n1"));
        assert!(v.take_changed_nodes().is_empty());
        // Deleted in etcd, not yet reported: gone already for constraints.
        v.delete(&k, "/g/nodes/n1/attributes/ssd");
        assert!(v.take_changed_nodes().contains("n1"));
        assert!(!v.node_attributes("n1").unwrap().contains_key("ssd"));
        // An info written before the agent saw the change keeps the overlay.
        v.put(
            &k,
            "/g/nodes/n1/info",
            &info("n1", json!({"ssd": "true"})),
            4,
        );
        assert!(!v.node_attributes("n1").unwrap().contains_key("ssd"));
        // Reported: the overlay goes.
        v.put(&k, "/g/nodes/n1/info", &info("n1", json!({})), 5);
        assert!(v.attr_changes.is_empty());
        assert!(v.node_attributes("n2").is_none());
        // `hostname` is always the node id.
        v.put(&k, "/g/nodes/n1/attributes/hostname", b"x", 6);
        assert_eq!(v.node_attributes("n1").unwrap()["hostname"], "n1");
    }
}
