//! Moving work, pure: from a job, its current attempt's task record and
//! its node's liveness, what the job becomes (FLEET.md "Moving work").
//! The leader writes the result in one transaction guarded by the job's
//! revision.
//!
//! * task STAGING/RUNNING → job RUNNING;
//! * FINISHED → SUCCEEDED; a sidecar (a gang's) KILLED → SUCCEEDED too: its
//!   group stops it once the main members have ended;
//! * FAILED, KILLED (not by a cancel), LOST, or the node's info key gone →
//!   retried (attempt + 1) while `retries < max_retries`, else FAILED;
//! * DRAINED / PREEMPTED → placed again, no retry counted (a drained node
//!   is avoided: its report of the attribute change may lag);
//! * placed and reported QUEUED by its agent (it cannot admit it) for
//!   `placement_timeout` → withdrawn: its placement key is deleted and the
//!   job waits (`withdrawing`) until the agent reports the attempt ended;
//!   KILLED → placed elsewhere (the node avoided), no retry counted;
//!   FINISHED (it started before the delete reached the agent) →
//!   SUCCEEDED. Without any report the placement stays: a slow agent must
//!   not make a job run twice.
//!
//! Every change away from the node deletes the attempt's placement key, so
//! a node that comes back kills the old attempt: a job never runs twice.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gleaner_core::constraints;
use gleaner_core::fleet::{parse_task_id, Job, JobState, TaskRecord};
use gleaner_core::status::TaskState;

/// What one job's attempt looks like now.
pub struct World<'a> {
    pub job: &'a Job,
    /// The record of the job's current attempt, as its node wrote it.
    pub task: Option<&'a TaskRecord>,
    /// The node of the current attempt has its info key (lease alive).
    pub node_live: bool,
    pub now: DateTime<Utc>,
    pub placement_timeout: Duration,
    /// A main (non-sidecar) member of the job's gang is still queued,
    /// placed or running: a sidecar its group stopped goes back with it.
    pub gang_main_pending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub job: Job,
    /// (node, task id) whose placement key goes.
    pub delete_placement: Option<(String, String)>,
}

pub fn reconcile(w: &World<'_>) -> Option<Change> {
    let job = w.job;
    if !matches!(job.state, JobState::Placed | JobState::Running) {
        return None;
    }
    let node = job.node.clone().unwrap_or_default();
    let task_id = job.current_task()?;
    // A record from another node (an older placement of the same id
    // cannot exist: ids carry the attempt) is ignored.
    let state = w.task.filter(|t| t.node == node).map(|t| t.status.state);
    let mut next = job.clone();
    next.withdrawing = false;
    if job.withdrawing {
        // The key is gone already; wait for the attempt to end.
        match state {
            Some(TaskState::Finished) => {}
            Some(TaskState::Killed | TaskState::Drained | TaskState::Preempted) => {
                let mut next = next;
                requeue(&mut next, job.message.clone().unwrap_or_default());
                next.avoid = vec![node.clone()];
                return Some(Change {
                    job: next,
                    delete_placement: None,
                });
            }
            _ if !w.node_live => {
                let mut next = next;
                requeue(&mut next, format!("withdrawn from {node}, which is gone"));
                return Some(Change {
                    job: next,
                    delete_placement: None,
                });
            }
            Some(TaskState::Failed | TaskState::Lost) => {}
            _ => return None,
        }
    }
    let away = |next: Job| {
        Some(Change {
            job: next,
            delete_placement: Some((node.clone(), task_id.clone())),
        })
    };
    match state {
        Some(TaskState::Staging | TaskState::Running) if w.node_live => {
            if job.state == JobState::Running {
                return None;
            }
            next.state = JobState::Running;
            next.message = None;
            Some(Change {
                job: next,
                delete_placement: None,
            })
        }
        Some(TaskState::Finished) => {
            next.state = JobState::Succeeded;
            next.message = None;
            next.finished_at = Some(w.now);
            away(next)
        }
        // A sidecar is stopped when its group's main members end: its job
        // is done, not failed (retrying it would place it alone, which the
        // agent refuses: a sidecar serves a group).
        // Unless a main member is still to run (it failed and is retried,
        // or was moved): then the sidecar goes back to the queue and is
        // placed again with it, a new group (no retry counted).
        Some(TaskState::Killed) if job.spec.sidecar && w.gang_main_pending => {
            requeue(
                &mut next,
                format!(
                    "attempt {} stopped with its group on {node}; placed again with its gang's main member",
                    job.attempt
                ),
            );
            away(next)
        }
        Some(TaskState::Killed) if job.spec.sidecar => {
            next.state = JobState::Succeeded;
            next.message = Some(
                w.task
                    .and_then(|t| t.status.message.clone())
                    .map(|m| format!("sidecar {m}"))
                    .unwrap_or_else(|| "sidecar stopped".into()),
            );
            next.finished_at = Some(w.now);
            away(next)
        }
        Some(s @ (TaskState::Drained | TaskState::Preempted)) => {
            requeue(
                &mut next,
                format!(
                    "attempt {} {} on {node}; placed again",
                    job.attempt,
                    s.as_str()
                ),
            );
            if s == TaskState::Drained {
                next.avoid = vec![node.clone()];
            }
            away(next)
        }
        Some(s @ (TaskState::Failed | TaskState::Killed | TaskState::Lost)) => {
            let why = w
                .task
                .and_then(|t| t.status.message.clone())
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            retry_or_fail(
                &mut next,
                format!("attempt {} {} on {node}{why}", job.attempt, s.as_str()),
                w.now,
            );
            away(next)
        }
        _ if !w.node_live => {
            retry_or_fail(
                &mut next,
                format!("attempt {} LOST: node {node} is gone", job.attempt),
                w.now,
            );
            away(next)
        }
        // Queued by the agent (it cannot admit it). No record at all is
        // not a reason: the agent may only be slow to report, and
        // withdrawing then would run the job twice; a dead node is
        // handled by its lease.
        Some(TaskState::Queued) if job.state == JobState::Placed => {
            let placed = job.placed_at.unwrap_or(job.submitted_at);
            let waited = (w.now - placed).to_std().unwrap_or_default();
            if waited < w.placement_timeout {
                return None;
            }
            // Delete the key, then wait for the agent to confirm.
            next.withdrawing = true;
            next.message = Some(format!(
                "withdrawn from {node}: not admitted within {} s",
                w.placement_timeout.as_secs()
            ));
            away(next)
        }
        _ => None,
    }
}

/// A gang's sidecar waiting in the queue after it ran (attempt >= 1) when
/// no main member of its gang is left to run: its job is done (it served
/// its gang), not left queued for ever.
pub fn orphan_sidecar(job: &Job, gang_main_pending: bool, now: DateTime<Utc>) -> Option<Change> {
    if job.state != JobState::Queued
        || !job.spec.sidecar
        || job.gang.is_none()
        || job.attempt == 0
        || gang_main_pending
    {
        return None;
    }
    let mut next = job.clone();
    next.state = JobState::Succeeded;
    next.finished_at = Some(now);
    next.message = Some("sidecar: its gang's main members have ended (none left to run)".into());
    Some(Change {
        job: next,
        delete_placement: None,
    })
}

fn requeue(job: &mut Job, message: String) {
    job.state = JobState::Queued;
    job.node = None;
    job.placed_at = None;
    job.message = Some(message);
}

fn retry_or_fail(job: &mut Job, what: String, now: DateTime<Utc>) {
    if job.retries < job.max_retries {
        job.retries += 1;
        requeue(
            job,
            format!("{what}; retry {} of {}", job.retries, job.max_retries),
        );
    } else {
        job.state = JobState::Failed;
        job.finished_at = Some(now);
        job.message = Some(format!("{what}; no retries left"));
    }
}

/// An app instance whose node no longer satisfies its constraints (an
/// attribute changed in etcd, or the node reported a change) is replaced
/// at once: its placement key goes (its agent kills it, if its own drain
/// has not) and it is placed again elsewhere, no retry counted. Marathon
/// replaces instances so; the old one may still be ending while the new
/// one starts. A job is never replaced early: it waits for its attempt's
/// end (DRAINED), so it never runs twice. Only the attributes count here
/// (`MAX_PER`/`UNIQUE` were settled at placement), as on the agent.
pub fn replace_drained_instance(
    job: &Job,
    is_instance: bool,
    attributes: &BTreeMap<String, String>,
) -> Option<Change> {
    if !is_instance
        || job.withdrawing
        || job.spec.constraints.is_empty()
        || !matches!(job.state, JobState::Placed | JobState::Running)
    {
        return None;
    }
    let node = job.node.clone()?;
    let task = job.current_task()?;
    let parsed = constraints::parse(&job.spec.constraints).ok()?;
    let why = constraints::check(&parsed, attributes, 0).err()?;
    let mut next = job.clone();
    requeue(
        &mut next,
        format!(
            "attempt {} on {node}: {why}; replaced before it ended",
            job.attempt
        ),
    );
    next.avoid = vec![node.clone()];
    Some(Change {
        job: next,
        delete_placement: Some((node, task)),
    })
}

/// A placement key that must go: its job is gone or done, or it is not the
/// job's current attempt (an old attempt on a node that came back).
pub fn stale_placement(task_id: &str, job: Option<&Job>) -> bool {
    let Some((_, attempt)) = parse_task_id(task_id) else {
        return true;
    };
    match job {
        None => true,
        Some(j) => j.state.is_final() || j.state == JobState::Queued || j.attempt != attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gleaner_core::spec::{Resources, TaskSpec};
    use gleaner_core::status::TaskStatus;

    fn job(state: JobState) -> Job {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "cmd": "true", "resources": {"cpus": 1, "mem_mb": 64}
        }))
        .unwrap();
        Job {
            id: "j".into(),
            queue: "q".into(),
            priority: 0,
            spec,
            gang: None,
            max_retries: 1,
            submitted_at: Utc::now(),
            state,
            attempt: 1,
            retries: 0,
            node: Some("n1".into()),
            message: None,
            placed_at: Some(Utc::now()),
            finished_at: None,
            avoid: vec![],
            withdrawing: false,
        }
    }

    fn record(state: TaskState, node: &str) -> TaskRecord {
        TaskRecord {
            status: TaskStatus {
                id: "j.1".into(),
                role: "batch".into(),
                state,
                reason: None,
                message: None,
                exit_code: None,
                signal: None,
                pid: None,
                cgroup: None,
                sandbox: None,
                resources: Resources {
                    cpus: 1.0,
                    mem_mb: 64.0,
                    disk_mb: 0.0,
                },
                submitted_at: Utc::now(),
                started_at: None,
                finished_at: None,
                restarts: 0,
                ports: Vec::new(),
                health: None,
            },
            node: node.into(),
        }
    }

    fn world<'a>(job: &'a Job, task: Option<&'a TaskRecord>, live: bool) -> World<'a> {
        World {
            job,
            task,
            node_live: live,
            now: Utc::now(),
            placement_timeout: Duration::from_secs(30),
            gang_main_pending: false,
        }
    }

    #[test]
    fn a_sidecar_stopped_by_its_group_succeeds_and_a_failed_one_is_retried() {
        let mut j = job(JobState::Running);
        j.spec.sidecar = true;
        let mut r = record(TaskState::Killed, "n1");
        r.status.message = Some("stopped: the group's main members have ended".into());
        let c = reconcile(&world(&j, Some(&r), true)).unwrap();
        assert_eq!(c.job.state, JobState::Succeeded);
        assert_eq!(c.job.retries, 0);
        assert!(c.job.message.unwrap().contains("main members"));
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
        // A main member killed is a failure as before.
        j.spec.sidecar = false;
        let c = reconcile(&world(&j, Some(&r), true)).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 1));
        // A sidecar that failed on its own is retried like any job.
        j.spec.sidecar = true;
        let failed = record(TaskState::Failed, "n1");
        let c = reconcile(&world(&j, Some(&failed), true)).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 1));
    }

    /// Review: a main that failed (and is retried) had its sidecar end
    /// SUCCEEDED, so the main's retry waited for ever for its gang (or ran
    /// alone); a sidecar left queued after its mains ended waited for ever.
    #[test]
    fn a_sidecar_goes_back_with_a_retried_main_and_ends_when_no_main_is_left() {
        let mut j = job(JobState::Running);
        j.spec.sidecar = true;
        j.gang = Some(gleaner_core::fleet::Gang {
            id: "g".into(),
            cardinality: 2,
            shared_path: None,
            network: None,
        });
        let r = record(TaskState::Killed, "n1");
        let mut w = world(&j, Some(&r), true);
        w.gang_main_pending = true;
        let c = reconcile(&w).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 0));
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
        // Queued with its mains gone: done.
        let queued = c.job;
        assert!(orphan_sidecar(&queued, true, Utc::now()).is_none());
        let done = orphan_sidecar(&queued, false, Utc::now()).unwrap();
        assert_eq!(done.job.state, JobState::Succeeded);
        // Never placed yet (its gang still being submitted): it waits.
        let mut fresh = queued.clone();
        fresh.attempt = 0;
        assert!(orphan_sidecar(&fresh, false, Utc::now()).is_none());
    }

    #[test]
    fn running_then_succeeded() {
        let j = job(JobState::Placed);
        let r = record(TaskState::Running, "n1");
        let c = reconcile(&world(&j, Some(&r), true)).unwrap();
        assert_eq!(c.job.state, JobState::Running);
        assert_eq!(c.delete_placement, None);
        assert_eq!(reconcile(&world(&c.job, Some(&r), true)), None);
        let done = record(TaskState::Finished, "n1");
        let c = reconcile(&world(&c.job, Some(&done), true)).unwrap();
        assert_eq!(c.job.state, JobState::Succeeded);
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
        // A record from another node is not this attempt's.
        let other = record(TaskState::Finished, "n2");
        assert_eq!(reconcile(&world(&j, Some(&other), true)), None);
    }

    #[test]
    fn failures_retry_then_fail() {
        let j = job(JobState::Running);
        let r = record(TaskState::Failed, "n1");
        let c = reconcile(&world(&j, Some(&r), true)).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 1));
        assert!(c.job.message.unwrap().contains("retry 1 of 1"));
        let mut spent = j.clone();
        spent.retries = 1;
        let c = reconcile(&world(&spent, Some(&r), true)).unwrap();
        assert_eq!(c.job.state, JobState::Failed);
        assert!(c.job.finished_at.is_some());
    }

    #[test]
    fn lost_node_retries_and_deletes_the_placement() {
        let j = job(JobState::Running);
        let r = record(TaskState::Running, "n1");
        let c = reconcile(&world(&j, Some(&r), false)).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 1));
        assert!(c.job.message.as_ref().unwrap().contains("node n1 is gone"));
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
    }

    #[test]
    fn drain_and_preemption_do_not_count() {
        let j = job(JobState::Running);
        for (s, avoid) in [(TaskState::Drained, true), (TaskState::Preempted, false)] {
            let r = record(s, "n1");
            let c = reconcile(&world(&j, Some(&r), true)).unwrap();
            assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 0));
            assert_eq!(c.job.avoid.contains(&"n1".to_string()), avoid);
        }
    }

    #[test]
    fn placements_queued_by_the_agent_are_withdrawn_after_the_timeout() {
        let mut j = job(JobState::Placed);
        let queued = record(TaskState::Queued, "n1");
        assert_eq!(reconcile(&world(&j, Some(&queued), true)), None);
        j.placed_at = Some(Utc::now() - chrono::Duration::seconds(31));
        let c = reconcile(&world(&j, Some(&queued), true)).unwrap();
        // The key goes; the job waits for the agent's word.
        assert_eq!((c.job.state, c.job.withdrawing), (JobState::Placed, true));
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
        let w = c.job;
        assert_eq!(reconcile(&world(&w, Some(&queued), true)), None);
        // Killed by the delete: placed elsewhere, no retry counted.
        let killed = record(TaskState::Killed, "n1");
        let c = reconcile(&world(&w, Some(&killed), true)).unwrap();
        assert_eq!(
            (c.job.state, c.job.retries, c.job.withdrawing),
            (JobState::Queued, 0, false)
        );
        assert_eq!(c.job.avoid, vec!["n1".to_string()]);
        assert!(c.job.message.unwrap().contains("withdrawn from n1"));
        // It started before the delete arrived and finished: done, once.
        let done = record(TaskState::Finished, "n1");
        let c = reconcile(&world(&w, Some(&done), true)).unwrap();
        assert_eq!(c.job.state, JobState::Succeeded);
        // Running: wait for the kill.
        let running = record(TaskState::Running, "n1");
        assert_eq!(reconcile(&world(&w, Some(&running), true)), None);
        // No report at all: a slow agent, not a refusal.
        assert_eq!(reconcile(&world(&j, None, true)), None);
    }

    #[test]
    fn drained_instances_are_replaced_at_once_and_jobs_are_not() {
        let mut j = job(JobState::Running);
        j.spec.constraints = vec![vec!["ssd".into(), "IS".into(), "true".into()]];
        let attrs = |ssd: Option<&str>| -> BTreeMap<String, String> {
            let mut a = BTreeMap::from([("hostname".to_string(), "n1".to_string())]);
            if let Some(v) = ssd {
                a.insert("ssd".into(), v.into());
            }
            a
        };
        // Still holds: nothing.
        assert_eq!(
            replace_drained_instance(&j, true, &attrs(Some("true"))),
            None
        );
        // Gone: an instance moves now, its key deleted, the node avoided.
        let c = replace_drained_instance(&j, true, &attrs(None)).unwrap();
        assert_eq!((c.job.state, c.job.retries), (JobState::Queued, 0));
        assert_eq!(c.job.avoid, vec!["n1".to_string()]);
        assert_eq!(c.delete_placement, Some(("n1".into(), "j.1".into())));
        assert!(c.job.message.unwrap().contains("ssd"));
        let c = replace_drained_instance(&j, true, &attrs(Some("false"))).unwrap();
        assert_eq!(c.job.state, JobState::Queued);
        // A job waits for its attempt's end (it must never run twice).
        assert_eq!(replace_drained_instance(&j, false, &attrs(None)), None);
        // Placed counts too; queued, finished or withdrawing do not.
        let mut p = j.clone();
        p.state = JobState::Placed;
        assert!(replace_drained_instance(&p, true, &attrs(None)).is_some());
        for st in [JobState::Queued, JobState::Succeeded, JobState::Cancelled] {
            let mut q = j.clone();
            q.state = st;
            assert_eq!(replace_drained_instance(&q, true, &attrs(None)), None);
        }
        let mut w = j.clone();
        w.withdrawing = true;
        assert_eq!(replace_drained_instance(&w, true, &attrs(None)), None);
        // Counting constraints were settled at placement.
        let mut u = j.clone();
        u.spec.constraints = vec![vec!["hostname".into(), "UNIQUE".into()]];
        assert_eq!(replace_drained_instance(&u, true, &attrs(None)), None);
    }

    #[test]
    fn stale_placements() {
        let j = job(JobState::Running);
        assert!(!stale_placement("j.1", Some(&j)));
        assert!(stale_placement("j.0", Some(&j)));
        assert!(stale_placement("j.1", None));
        assert!(stale_placement("junk", Some(&j)));
        assert!(stale_placement("j.1", Some(&job(JobState::Cancelled))));
    }
}
