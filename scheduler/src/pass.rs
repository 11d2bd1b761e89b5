//! One leader pass: move work (reconcile), remove stale placements, place
//! pending jobs, note why jobs wait. Every write is a transaction guarded
//! by the leader's election key (a deposed leader writes nothing) and by
//! the job's mod revision (a cancel through the API is never overwritten).
//! Writes are batched into few transactions; a batch that fails is retried
//! one unit at a time so one changed job does not hold back the others.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use gleaner_core::fleet::{task_id, Fitness, Job, JobState, Keys, Placement};
use gleaner_core::gang;
use gleaner_core::placement::{self, Options};
use gleaner_core::status::TaskState;

use crate::config::SchedulerConfig;
use crate::marathon::model::instance_of;
use crate::metrics::Metrics;
use crate::reconcile::{
    orphan_sidecar, reconcile, replace_drained_instance, stale_placement, World,
};
use crate::view::View;

/// etcd refuses transactions of more than 128 operations by default.
const MAX_TXN_OPS: usize = 120;
/// Waiting reasons written per pass (they are advice, not state).
const MAX_REASON_WRITES: usize = 200;

pub struct Pass<'a> {
    keys: &'a Keys,
    guard: Vec<u8>,
    metrics: &'a Metrics,
    timeout: Duration,
    fitness: Fitness,
    max_placements: usize,
}

/// One unit's writes: all or none.
struct Write {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
}

impl<'a> Pass<'a> {
    pub fn new(
        config: &SchedulerConfig,
        keys: &'a Keys,
        guard: Vec<u8>,
        metrics: &'a Metrics,
    ) -> Pass<'a> {
        Pass {
            keys,
            guard,
            metrics,
            timeout: Duration::from_secs(config.placement_timeout_s),
            fitness: config.fitness,
            max_placements: config.max_placements_per_pass,
        }
    }

    fn job_put(&self, job: &Job, rev: i64) -> (Compare, TxnOp) {
        let key = self.keys.job(&job.id);
        let value = serde_json::to_vec(job).expect("job serializes");
        (
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
            TxnOp::put(key, value, None),
        )
    }

    /// Commits the writes, batched; returns which succeeded and at which
    /// revision.
    async fn commit(
        &self,
        client: &mut Client,
        writes: Vec<Write>,
    ) -> Result<Vec<Option<i64>>, String> {
        let mut done = vec![None; writes.len()];
        let mut start = 0;
        while start < writes.len() {
            let mut end = start;
            let mut ops = 0;
            while end < writes.len() && (end == start || ops + writes[end].ops.len() <= MAX_TXN_OPS)
            {
                ops += writes[end].ops.len();
                end += 1;
            }
            let batch = &writes[start..end];
            match self.txn(client, batch).await? {
                Some(rev) => done[start..end].iter_mut().for_each(|d| *d = Some(rev)),
                None if batch.len() > 1 => {
                    for (i, w) in batch.iter().enumerate() {
                        done[start + i] = self.txn(client, std::slice::from_ref(w)).await?;
                    }
                }
                None => {}
            }
            start = end;
        }
        Ok(done)
    }

    async fn txn(&self, client: &mut Client, batch: &[Write]) -> Result<Option<i64>, String> {
        let mut compares = vec![Compare::version(self.guard.clone(), CompareOp::Greater, 0)];
        let mut ops = Vec::new();
        for w in batch {
            compares.extend(w.compares.iter().cloned());
            ops.extend(w.ops.iter().cloned());
        }
        let resp = client
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    pub async fn run(&mut self, client: &mut Client, view: &mut View) -> Result<(), String> {
        let started = Instant::now();
        self.reconcile(client, view).await?;
        self.sweep(client, view).await?;
        self.place(client, view).await?;
        *self.metrics.last_pass_s.lock().unwrap() = started.elapsed().as_secs_f64();
        self.metrics.passes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn reconcile(&self, client: &mut Client, view: &mut View) -> Result<(), String> {
        let now = Utc::now();
        let mut changes = Vec::new();
        let changed_nodes = view.take_changed_nodes();
        // Gangs with a main member still to run (queued, placed, running).
        let gang_main_pending: std::collections::BTreeSet<&str> = view
            .jobs
            .values()
            .filter(|(j, _)| {
                // A main whose attempt ended with no retry to come is not
                // pending, though its job's own change is in this pass.
                let ended_for_good = view.current_task(j).is_some_and(|t| match t.status.state {
                    TaskState::Finished => true,
                    TaskState::Failed | TaskState::Lost | TaskState::Killed => {
                        j.retries >= j.max_retries
                    }
                    _ => false,
                });
                !j.spec.sidecar
                    && !(j.state != JobState::Queued && ended_for_good)
                    && matches!(
                        j.state,
                        JobState::Queued | JobState::Placed | JobState::Running
                    )
            })
            .filter_map(|(j, _)| j.gang.as_ref().map(|g| g.id.as_str()))
            .collect();
        let main_pending = |job: &Job| {
            job.gang
                .as_ref()
                .is_some_and(|g| gang_main_pending.contains(g.id.as_str()))
        };
        for (job, rev) in view.jobs.values() {
            if job.state == JobState::Queued {
                if let Some(c) = orphan_sidecar(job, main_pending(job), now) {
                    changes.push((c, *rev));
                }
                continue;
            }
            if !matches!(job.state, JobState::Placed | JobState::Running) {
                continue;
            }
            let world = World {
                job,
                task: view.current_task(job),
                node_live: job
                    .node
                    .as_ref()
                    .is_some_and(|n| view.nodes.contains_key(n)),
                now,
                placement_timeout: self.timeout,
                gang_main_pending: main_pending(job),
            };
            if let Some(c) = reconcile(&world) {
                changes.push((c, *rev));
                continue;
            }
            // An attribute change on its node: an app instance moves now.
            let Some(node) = job.node.as_ref().filter(|n| changed_nodes.contains(*n)) else {
                continue;
            };
            if let Some(attrs) = view.node_attributes(node) {
                let instance = instance_of(&job.spec).is_some();
                if let Some(c) = replace_drained_instance(job, instance, &attrs) {
                    changes.push((c, *rev));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let writes = changes
            .iter()
            .map(|(c, rev)| {
                let (cmp, put) = self.job_put(&c.job, *rev);
                let mut ops = vec![put];
                if let Some((node, task)) = &c.delete_placement {
                    ops.push(TxnOp::delete(self.keys.placement(node, task), None));
                }
                Write {
                    compares: vec![cmp],
                    ops,
                }
            })
            .collect();
        let done = self.commit(client, writes).await?;
        for ((c, _), rev) in changes.into_iter().zip(done) {
            let Some(rev) = rev else { continue };
            if c.job.state == JobState::Queued {
                self.metrics.moved.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = %c.job.id, why = c.job.message.as_deref().unwrap_or(""), "job requeued");
            }
            if let Some(p) = &c.delete_placement {
                view.placements.remove(p);
            }
            view.set_job(c.job, rev);
        }
        Ok(())
    }

    /// Placement keys of old attempts or of finished/cancelled/unknown
    /// jobs go: their agents kill what still runs.
    async fn sweep(&self, client: &mut Client, view: &mut View) -> Result<(), String> {
        let stale: Vec<(String, String)> = view
            .placements
            .keys()
            .filter(|(_, task)| {
                let job = gleaner_core::fleet::parse_task_id(task)
                    .and_then(|(j, _)| view.jobs.get(j))
                    .map(|(j, _)| j);
                stale_placement(task, job)
            })
            .cloned()
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let writes = stale
            .iter()
            .map(|(n, t)| Write {
                compares: vec![],
                ops: vec![TxnOp::delete(self.keys.placement(n, t), None)],
            })
            .collect();
        let done = self.commit(client, writes).await?;
        for (p, rev) in stale.into_iter().zip(done) {
            if rev.is_some() {
                tracing::info!(node = %p.0, task = %p.1, "stale placement removed");
                view.placements.remove(&p);
            }
        }
        Ok(())
    }

    async fn place(&self, client: &mut Client, view: &mut View) -> Result<(), String> {
        let (nodes, pending, active) = view.snapshot();
        let mut counts: BTreeMap<String, u64> =
            view.queues.keys().map(|q| (q.clone(), 0)).collect();
        if pending.is_empty() {
            *self.metrics.pending.lock().unwrap() = counts;
            return Ok(());
        }
        let out = placement::place(
            &nodes,
            &view.queues,
            &pending,
            &active,
            Options {
                fitness: self.fitness,
                max_placements: self.max_placements,
            },
        );
        let now = Utc::now();
        let mut units = Vec::new();
        let mut writes = Vec::new();
        for unit in &out.units {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut jobs = Vec::new();
            // The unit's gang members on one node are one task group there.
            type Member<'g> = (String, &'g str, Option<&'g gleaner_core::fleet::Gang>, bool);
            let placed: Vec<Member<'_>> = unit
                .iter()
                .filter_map(|(id, node)| {
                    let (job, _) = view.jobs.get(id)?;
                    Some((
                        task_id(id, job.attempt + 1),
                        node.as_str(),
                        job.gang.as_ref(),
                        job.spec.sidecar,
                    ))
                })
                .collect();
            let mut groups = gang::groups_by_node(
                &placed
                    .iter()
                    .map(|(task, node, gang, sidecar)| gang::Placed {
                        task,
                        node,
                        gang: *gang,
                        sidecar: *sidecar,
                    })
                    .collect::<Vec<_>>(),
            );
            for (id, node) in unit {
                let Some((job, rev)) = view.jobs.get(id) else {
                    continue;
                };
                let mut next = job.clone();
                next.attempt += 1;
                next.state = JobState::Placed;
                next.node = Some(node.clone());
                next.placed_at = Some(now);
                next.message = None;
                next.avoid.clear();
                next.withdrawing = false;
                let task = task_id(&job.id, next.attempt);
                let mut spec = job.spec.clone();
                spec.id = Some(task.clone());
                let group = groups.remove(&task);
                // A member of a `group`-network gang placed without its
                // group (a retry while the others run) gets no network at
                // all rather than the host's (its loopback: the agent's
                // API, etcd).
                let wants_group_net = job
                    .gang
                    .as_ref()
                    .and_then(|g| g.network)
                    .is_some_and(|n| n == gleaner_core::group::GroupNetwork::Group);
                if group.is_none() && wants_group_net {
                    spec.network = gleaner_core::spec::Network::None;
                }
                let placement = Placement {
                    spec,
                    job: Some(job.id.clone()),
                    app: None,
                    attempt: next.attempt,
                    placed_at: now,
                    group,
                };
                let (cmp, put) = self.job_put(&next, *rev);
                compares.push(cmp);
                ops.push(put);
                ops.push(TxnOp::put(
                    self.keys.placement(node, &task),
                    serde_json::to_vec(&placement).expect("placement serializes"),
                    None,
                ));
                jobs.push((next, node.clone(), task));
            }
            units.push(jobs);
            writes.push(Write { compares, ops });
        }
        let done = self.commit(client, writes).await?;
        let mut placed = 0;
        for (jobs, rev) in units.into_iter().zip(done) {
            let Some(rev) = rev else { continue };
            for (job, node, task) in jobs {
                placed += 1;
                view.placements.insert((node, task), rev);
                view.set_job(job, rev);
            }
        }
        self.metrics.placements.fetch_add(placed, Ordering::Relaxed);

        // Why the others wait: written when it changed, a few per pass.
        let mut writes = Vec::new();
        let mut noted = Vec::new();
        for (id, why) in &out.waiting {
            let Some((job, rev)) = view.jobs.get(id) else {
                continue;
            };
            *counts.entry(job.queue.clone()).or_default() += 1;
            if why.starts_with("placement pass full")
                || job.message.as_deref() == Some(why.as_str())
                || writes.len() >= MAX_REASON_WRITES
            {
                continue;
            }
            let mut next = job.clone();
            next.message = Some(why.clone());
            let (cmp, put) = self.job_put(&next, *rev);
            writes.push(Write {
                compares: vec![cmp],
                ops: vec![put],
            });
            noted.push(next);
        }
        *self.metrics.pending.lock().unwrap() = counts;
        let done = self.commit(client, writes).await?;
        for (job, rev) in noted.into_iter().zip(done) {
            if let Some(rev) = rev {
                view.set_job(job, rev);
            }
        }
        Ok(())
    }
}
