//! Fleet mode, the inbound half: what the scheduler places on this node.
//!
//! `placements/<node>/<task-id>` present = run it, exactly once; deleted =
//! kill it. The etcd session hands every full read (on each (re)connect) and
//! every watch event to one worker, in order, so a put and a later delete of
//! the same key are applied in that order: a delete finds the task
//! recorded (the worker returns once a placement's record is durable; its
//! launch runs beside the worker, and a kill during it is the same stop as
//! any API stop of a STAGING task). A placement seen again (resync, agent restart) is the same task:
//! its id is the key's last segment, and an id the agent already knows is
//! left alone. The agent's own admission (reservations, queue) decides when
//! a placed task starts.
//!
//! A placement with `group` (members of a gang placed together here) waits
//! in `gather` until every listed member has been seen, then all are
//! submitted at once as a task group (`submit_group`'s path: all or none
//! admitted, shared volume, network, sidecars); a member that never comes
//! refuses the others. A sidecar placed alone is refused, as on the API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use std::time::{Duration, Instant};

use super::gather::{Gather, Members, Offer};
use super::{Agent, AgentError, GroupOptions};
use crate::status::{Reason, StopReason, TaskState, TaskStatus};
use gleaner_core::fleet::{PlacedGroup, Placement};

/// Where a fleet task came from: kept in task.json so a restarted agent
/// still knows which tasks the scheduler owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default)]
    pub attempt: u32,
}

/// One change seen in etcd, in the order seen.
#[derive(Debug)]
pub(crate) enum Event {
    /// A full read of the prefix: every placement that exists now.
    Snapshot(Vec<(String, Result<Placement, String>)>),
    Put(String, Result<Placement, String>),
    Delete(String),
}

/// Placements the agent could not take (bad spec, rootfs missing...): the
/// scheduler learns it through `tasks/<id>` like any other end.
#[derive(Default)]
pub(crate) struct Rejected(Mutex<BTreeMap<String, TaskStatus>>);

impl Rejected {
    pub(crate) fn all(&self) -> Vec<TaskStatus> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

/// The task id a key under `prefix` stands for; nested or odd keys are not
/// placements.
pub(crate) fn task_id_of(prefix: &str, key: &str) -> Option<String> {
    let id = key.strip_prefix(prefix)?;
    crate::spec::check_name("id", id).ok()?;
    Some(id.to_owned())
}

/// Parses a placement's value; the error names the key.
pub(crate) fn parse(key: &str, value: &[u8]) -> Result<Placement, String> {
    serde_json::from_slice(value).map_err(|e| format!("placement {key}: invalid JSON: {e}"))
}

/// What a full read means for the tasks the scheduler placed here: the ids
/// to submit (unknown ones) and the ids to kill (placed here, not final, and
/// their key is gone: deleted while etcd was unreachable or the agent down).
pub(crate) fn reconcile(
    snapshot: &BTreeSet<String>,
    known: &BTreeSet<String>,
    placed_unfinished: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let submit = snapshot.difference(known).cloned().collect();
    let kill = placed_unfinished.difference(snapshot).cloned().collect();
    (submit, kill)
}

/// How long the members of a placed group wait for each other. They are
/// written in one transaction and arrive together; this only bounds a
/// member that never comes (see `gather`).
const GROUP_WAIT: Duration = Duration::from_secs(10);

/// Starts the worker; the returned sender is what the etcd session feeds.
pub(crate) fn spawn(agent: Arc<Agent>) -> mpsc::UnboundedSender<Event> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut gather = Gather::default();
        loop {
            let ev = match gather.deadline(GROUP_WAIT) {
                None => rx.recv().await,
                // Events first: members sent in the same watch response are
                // all in the channel before the bound is looked at.
                Some(at) => tokio::select! {
                    biased;
                    ev = rx.recv() => ev,
                    _ = tokio::time::sleep_until(at.into()) => {
                        for (members, why) in gather.expire(Instant::now(), GROUP_WAIT) {
                            agent.reject_all(members, &why);
                        }
                        agent.touched();
                        continue;
                    }
                },
            };
            let Some(ev) = ev else { break };
            // A steady stream of events keeps the select above on its
            // first branch: the bound is looked at after each one too.
            if gather
                .deadline(GROUP_WAIT)
                .is_some_and(|at| at <= Instant::now())
            {
                for (members, why) in gather.expire(Instant::now(), GROUP_WAIT) {
                    agent.reject_all(members, &why);
                }
            }
            match ev {
                Event::Snapshot(all) => {
                    let present: BTreeSet<String> = all.iter().map(|(id, _)| id.clone()).collect();
                    agent.placements_present(&present);
                    let (known, placed) = agent.fleet_task_ids();
                    let (submit, kill) = reconcile(&present, &known, &placed);
                    for id in kill {
                        tracing::info!(task = %id, "placement gone while disconnected: killing");
                        let _ = agent.stop(&id, StopReason::Killed);
                    }
                    // Everything present is in this read: groups still
                    // waiting from an earlier session are offered again.
                    gather.clear();
                    let submit: BTreeSet<String> = submit.into_iter().collect();
                    for (id, placement) in all {
                        if submit.contains(&id) {
                            agent.offer(&mut gather, id, placement).await;
                        }
                    }
                    for (members, why) in gather.take_all() {
                        agent.reject_all(members, &why);
                    }
                }
                Event::Put(id, placement) => {
                    if !agent.knows(&id) {
                        agent.offer(&mut gather, id, placement).await;
                    }
                }
                Event::Delete(id) => {
                    if let Some((rest, why)) = gather.remove(&id) {
                        agent.reject_all(rest, &why);
                    }
                    agent.placement_gone(&id);
                    match agent.stop(&id, StopReason::Killed) {
                        Ok(s) => {
                            tracing::info!(task = %id, state = ?s.state, "placement deleted: killing")
                        }
                        Err(_) => {
                            agent.rejected.0.lock().unwrap().remove(&id);
                        }
                    }
                }
            }
            agent.touched();
        }
    });
    tx
}

impl Agent {
    /// (every task id known here, the placed ones not yet final).
    fn fleet_task_ids(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().values().cloned().collect();
        let mut known = BTreeSet::new();
        let mut placed = BTreeSet::new();
        for t in tasks {
            let t = t.lock().unwrap();
            let id = t.record.status.id.clone();
            if t.record.placed_by.is_some() && !t.record.status.state.is_final() {
                placed.insert(id.clone());
            }
            known.insert(id);
        }
        known.extend(self.rejected.0.lock().unwrap().keys().cloned());
        (known, placed)
    }

    /// A full read: placed tasks whose key is missing are no longer the
    /// scheduler's (retention may remove them once final).
    fn placements_present(&self, present: &BTreeSet<String>) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().values().cloned().collect();
        for t in tasks {
            let mut t = t.lock().unwrap();
            if t.record.placed_by.is_some() {
                t.placement_gone = !present.contains(&t.record.status.id);
            }
        }
    }

    /// Its placement key was deleted (see [`Self::placements_present`]).
    fn placement_gone(&self, id: &str) {
        let task = self.tasks.lock().unwrap().get(id).cloned();
        if let Some(t) = task {
            t.lock().unwrap().placement_gone = true;
        }
    }

    fn knows(&self, id: &str) -> bool {
        self.tasks.lock().unwrap().contains_key(id)
            || self.rejected.0.lock().unwrap().contains_key(id)
            || self.data.task(id).root().exists()
    }

    /// A placement in: a group member is gathered with the others, and the
    /// group submitted once whole; anything else is placed alone.
    async fn offer(
        self: &Arc<Self>,
        gather: &mut Gather,
        id: String,
        placement: Result<Placement, String>,
    ) {
        let p = match placement {
            Ok(p) if p.group.is_some() => p,
            other => return self.place(&id, other).await,
        };
        match gather.offer(id, p, Instant::now()) {
            Offer::Wait => {}
            Offer::Reject(members, why) => self.reject_all(members, &why),
            Offer::Ready(group, members) => self.place_group(group, members).await,
        }
    }

    /// Submits a whole placed group as `POST /v1/groups` would (all or
    /// none admitted, shared volume, network, sidecars); a refusal refuses
    /// every member.
    async fn place_group(self: &Arc<Self>, group: PlacedGroup, members: Members) {
        let options = GroupOptions {
            shared_path: group.shared_path.clone(),
            network: group.network.unwrap_or_default(),
        };
        let mut specs = Vec::with_capacity(members.len());
        let mut by = Vec::with_capacity(members.len());
        for (id, p) in &members {
            let mut spec = p.spec.clone();
            spec.id = Some(id.clone());
            specs.push(spec);
            by.push(PlacedBy {
                job: p.job.clone(),
                app: p.app.clone(),
                attempt: p.attempt,
            });
        }
        match self
            .submit_group_placed(&group.id, specs, options, by)
            .await
        {
            Ok(statuses) => {
                tracing::info!(group = %group.id, members = statuses.len(), "placed group")
            }
            Err(e) => {
                let why = format!("group {}: {e}", group.id);
                self.reject_all(members, &why);
            }
        }
    }

    /// Refuses placements (a group that cannot be admitted whole).
    fn reject_all(&self, members: Members, why: &str) {
        for (id, p) in members {
            self.reject(&id, p.spec.role.clone(), why.to_owned());
        }
    }

    /// Submits one placement; a refusal is recorded as a FAILED status so
    /// the scheduler hears of it.
    async fn place(self: &Arc<Self>, id: &str, placement: Result<Placement, String>) {
        let result = match placement {
            Ok(p) => {
                let mut spec = p.spec;
                let role = spec.role.clone();
                spec.id = Some(id.to_owned());
                let by = PlacedBy {
                    job: p.job,
                    app: p.app,
                    attempt: p.attempt,
                };
                self.submit_placed(spec, by)
                    .await
                    .map(|s| tracing::info!(task = %id, state = ?s.state, "placed"))
                    .map_err(|e| (role, e.to_string()))
            }
            Err(e) => Err((crate::spec::DEFAULT_ROLE.to_owned(), e)),
        };
        match result {
            Ok(()) => {}
            Err((role, why)) => self.reject(id, role, why),
        }
    }

    /// Records a refused placement as FAILED (the scheduler reads it from
    /// `tasks/<id>`), unless the task is here already (a racing resync:
    /// the same task, nothing to do).
    fn reject(&self, id: &str, role: String, why: String) {
        if self.tasks.lock().unwrap().contains_key(id) {
            return;
        }
        tracing::warn!(task = %id, "placement refused: {why}");
        let now = Utc::now();
        let status = TaskStatus {
            id: id.to_owned(),
            role,
            state: TaskState::Failed,
            reason: Some(Reason::LaunchFailed),
            message: Some(why),
            exit_code: None,
            signal: None,
            pid: None,
            cgroup: None,
            sandbox: None,
            resources: crate::spec::Resources {
                cpus: 0.0,
                mem_mb: 0.0,
                disk_mb: 0.0,
            },
            submitted_at: now,
            started_at: None,
            finished_at: Some(now),
            restarts: 0,
            ports: Vec::new(),
            health: None,
        };
        self.rejected
            .0
            .lock()
            .unwrap()
            .insert(id.to_owned(), status);
    }

    /// Statuses of every task the scheduler placed here (and of placements
    /// refused), for `tasks/<id>`.
    pub(crate) fn fleet_statuses(&self) -> Vec<TaskStatus> {
        let tasks: Vec<_> = self.tasks.lock().unwrap().values().cloned().collect();
        let mut out: Vec<TaskStatus> = tasks
            .iter()
            .filter_map(|t| {
                let t = t.lock().unwrap();
                t.record
                    .placed_by
                    .is_some()
                    .then(|| t.record.status.clone())
            })
            .collect();
        out.extend(self.rejected.all());
        out
    }

    /// Submits a task the scheduler placed; like `submit`, plus its origin,
    /// but returns once the record is durable, before the launch.
    pub(crate) async fn submit_placed(
        self: &Arc<Self>,
        spec: crate::spec::TaskSpec,
        by: PlacedBy,
    ) -> Result<TaskStatus, AgentError> {
        let mut record = self.new_record(spec, None)?;
        record.placed_by = Some(by);
        self.submit_record(record, super::Reply::WhenRecorded).await
    }

    /// Submits a placed group: `submit_group`'s path, each member with its
    /// origin, returning once the records are durable.
    async fn submit_group_placed(
        self: &Arc<Self>,
        group: &str,
        specs: Vec<crate::spec::TaskSpec>,
        options: GroupOptions,
        by: Vec<PlacedBy>,
    ) -> Result<Vec<TaskStatus>, AgentError> {
        self.submit_group_inner(group, specs, options, Some(by))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_resync_submits_the_unknown_and_kills_the_vanished() {
        let (submit, kill) = reconcile(
            &set(&["a", "b", "c"]),
            &set(&["a", "x", "y", "local"]),
            &set(&["a", "x"]),
        );
        assert_eq!(submit, vec!["b", "c"]);
        // y is final or not placed; local was never placed: left alone.
        assert_eq!(kill, vec!["x"]);
    }

    #[test]
    fn keys_map_to_task_ids() {
        let p = "/gleaner/placements/h1/";
        assert_eq!(
            task_id_of(p, "/gleaner/placements/h1/j-1.0"),
            Some("j-1.0".into())
        );
        assert_eq!(task_id_of(p, "/gleaner/placements/h1/a/b"), None);
        assert_eq!(task_id_of(p, "/gleaner/placements/h2/x"), None);
    }
}
