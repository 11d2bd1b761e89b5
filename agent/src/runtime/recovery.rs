//! Start-up: reload task records, re-adopt live supervisors, learn the exits
//! that happened while the agent was down, and remove what nobody owns.
//!
//! Policy for what the agent finds:
//! * exit.json of the current run: the exit is applied (state, code, reason),
//!   then the restart policy.
//! * a live supervisor (same pid and start time): adopted, RUNNING.
//! * a supervisor still starting (its lock is held, no record yet): waited
//!   for (30 s), then adopted or applied; if it has still written nothing,
//!   every process holding its lock (the supervisor, its init) is killed
//!   with the task's cgroup, and the task goes back to the queue (a new run
//!   number) or, if the lock cannot be freed, is `LOST`. Never waited for
//!   again.
//! * STAGING or QUEUED, no supervisor: launched (again), with a new run
//!   number so a late report of an earlier attempt is ignored.
//! * RUNNING, supervisor gone, no exit record, or the host rebooted: LOST
//!   with reason `agent_lost` (restarted if its policy says so).
//! * task cgroups of no known unfinished task (data dir wiped, say): their
//!   processes are killed and the cgroups removed; each one is logged. Their
//!   supervisors then end on their own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cgroup_rel, hooks, Agent, StartError, Task, TaskRecord, TaskRef, TASK_SCHEMA};
use crate::fsutil::{self, FsError};
use crate::layout::TaskDir;
use crate::procfs_util::is_same_process;
use crate::status::{ExitRecord, TaskState};
use crate::supervisor::zygote::supervisor_alive;
use crate::supervisor::SupervisorRecord;

/// How long a supervisor that was starting when the agent died may take to
/// write its record.
const STARTING_SUPERVISOR_WAIT: Duration = Duration::from_secs(30);

/// The most a starting supervisor that is still getting on (runnable, or
/// using CPU) is waited for before it is killed all the same.
const STARTING_SUPERVISOR_MAX: Duration = Duration::from_secs(600);

/// Whether the holders of a supervisor's lock are getting on: one of them
/// is runnable, or their CPU time grows over a short look. A hung or
/// stopped supervisor (sleeping, no CPU) is not. Blocking (scans /proc).
fn holders_get_on(lock: &std::path::Path) -> bool {
    let sample = || -> Option<(u64, bool)> {
        let holders = crate::procfs_util::holders_of(lock);
        if holders.is_empty() {
            return None;
        }
        let mut cpu = 0;
        let mut runnable = false;
        for pid in holders {
            if let Some((c, r)) = crate::procfs_util::cpu_and_runnable(pid) {
                cpu += c;
                runnable |= r;
            }
        }
        Some((cpu, runnable))
    };
    let Some((before, runnable)) = sample() else {
        return false;
    };
    if runnable {
        return true;
    }
    std::thread::sleep(Duration::from_secs(2));
    sample().is_some_and(|(after, runnable)| runnable || after > before)
}

/// How long the killed holders of a stuck supervisor's lock may take to
/// let go of it (their exit needs CPU, scarce for SCHED_IDLE on a busy host).
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// What to do with a task found on disk.
enum Plan {
    Keep,
    /// Its supervisor is alive: running, whatever task.json last said.
    Adopt(SupervisorRecord),
    ApplyExit,
    /// A supervisor holds the lock but has not written its record yet.
    AwaitSupervisor,
    Relaunch,
    Lost(&'static str),
}

impl Agent {
    pub(super) fn recover(self: &Arc<Self>) -> Result<(), StartError> {
        let tasks_dir = self.data.tasks();
        let entries =
            std::fs::read_dir(&tasks_dir).map_err(|e| FsError::io("readdir", &tasks_dir, e))?;
        let mut loaded = Vec::new();
        for entry in entries.flatten() {
            let dir = TaskDir::new(entry.path());
            if !dir.task_json().exists() {
                // Created but never acknowledged (crash before the first write).
                if let Some(name) = entry.file_name().to_str() {
                    self.remove_unacknowledged(name, &dir);
                }
                continue;
            }
            loaded.push((load_record(&dir)?, dir));
        }
        let partial = partial_groups(loaded.iter().map(|(r, _)| r));
        let mut found = Vec::new();
        for (record, dir) in loaded {
            if let Some(g) = record.group.as_ref().filter(|g| partial.contains(*g)) {
                tracing::warn!(task = %record.status.id, group = %g, "member of a group whose records were not all written (never acknowledged); removed");
                self.remove_unacknowledged(&record.status.id, &dir);
                continue;
            }
            let id = record.status.id.clone();
            if !record.status.state.is_final() {
                self.register_token(&record);
            }
            let task = Arc::new(Mutex::new(Task::new(record, dir)));
            self.tasks.lock().unwrap().insert(id.clone(), task.clone());
            self.unfinished
                .lock()
                .unwrap()
                .insert(id.clone(), task.clone());
            found.push(task);
        }
        self.remove_orphan_cgroups();
        for task in found {
            self.resolve(&task);
        }
        self.recover_pods();
        Ok(())
    }

    /// A task dir without task.json: its submission never got a 201.
    fn remove_unacknowledged(&self, name: &str, dir: &TaskDir) {
        if supervisor_alive(dir) {
            tracing::warn!(
                task = name,
                "unacknowledged task has a live supervisor; killing it"
            );
        }
        for role in self.cgroups.children("").unwrap_or_default() {
            let _ = self
                .cgroups
                .handle(&format!("{role}/{name}"))
                .destroy(Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(dir.root());
    }

    /// Decides and applies the plan of one recovered task.
    fn resolve(self: &Arc<Self>, task: &TaskRef) {
        let (plan, id, run) = {
            let t = task.lock().unwrap();
            (
                self.plan(&t.record, &t.dir),
                t.record.status.id.clone(),
                t.record.run,
            )
        };
        self.apply_plan(task, plan, id, run);
    }

    fn apply_plan(self: &Arc<Self>, task: &TaskRef, plan: Plan, id: String, run: u32) {
        match plan {
            Plan::Keep => {}
            Plan::Adopt(sup) => {
                let pending = {
                    let mut t = task.lock().unwrap();
                    tracing::info!(task = %id, pid = sup.task_pid, "re-adopted running task");
                    let cgroup = self.cgroups.handle(&cgroup_rel(&t.record)).path;
                    let st = &mut t.record.status;
                    st.state = TaskState::Running;
                    st.pid = Some(sup.task_pid);
                    st.started_at = Some(sup.started_at);
                    st.cgroup = Some(cgroup);
                    t.record.supervisor = Some(sup);
                    // Asked to stop before the restart: still stopping, so
                    // preemption and drains do not count it again.
                    let run = t.record.run;
                    t.stopping =
                        fsutil::read_json::<crate::supervisor::StopRequest>(&t.dir.stop_json())
                            .ok()
                            .filter(|s| s.run == run)
                            .map(|s| s.reason);
                    // A kill that came while we waited for the supervisor.
                    t.record.pending_stop.take()
                };
                self.start_health_checks(task);
                if let Some(reason) = pending {
                    let _ = self.stop(&id, reason);
                }
            }
            Plan::ApplyExit => {
                // on_exit acts on running tasks.
                task.lock().unwrap().record.status.state = TaskState::Running;
                self.on_exit(&id, run);
            }
            Plan::Lost(why) => {
                task.lock().unwrap().record.status.state = TaskState::Running;
                self.mark_lost(task, why);
            }
            Plan::AwaitSupervisor => {
                // Holds its resources and is not admitted while we wait.
                task.lock().unwrap().record.status.state = TaskState::Staging;
                let agent = self.clone();
                let task = task.clone();
                let bound = hooks::limit("starting_supervisor_wait", STARTING_SUPERVISOR_WAIT);
                tokio::spawn(async move {
                    let first = Instant::now();
                    let mut start = first;
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let waiting = {
                            let t = task.lock().unwrap();
                            matches!(agent.plan(&t.record, &t.dir), Plan::AwaitSupervisor)
                        };
                        if !waiting {
                            break;
                        }
                        if start.elapsed() > bound {
                            // A starved supervisor may already have exec'd
                            // the command (its record comes after): killing
                            // it would run the command twice. Wait on while
                            // it gets on, up to STARTING_SUPERVISOR_MAX.
                            let lock = task.lock().unwrap().dir.supervisor_lock();
                            let getting_on =
                                tokio::task::spawn_blocking(move || holders_get_on(&lock))
                                    .await
                                    .unwrap_or(false);
                            if getting_on && first.elapsed() < STARTING_SUPERVISOR_MAX {
                                tracing::warn!(task = %task.lock().unwrap().record.status.id,
                                    "starting supervisor slow but running; waiting on");
                                start = Instant::now();
                                continue;
                            }
                            break;
                        }
                    }
                    // Scans /proc and sleeps: off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || agent.resolve_or_kill(&task)).await;
                });
            }
            Plan::Relaunch => {
                let mut t = task.lock().unwrap();
                if let Some(reason) = t.record.pending_stop {
                    // Killed (acknowledged) before it started: it never runs.
                    self.destroy_task_cgroup(&t.record);
                    let (state, reason) = crate::status::stopped(reason);
                    t.record.status.finished_at = Some(chrono::Utc::now());
                    tracing::info!(task = %id, "killed before its launch; not launched again");
                    return self.finish_run(task, &mut t, state, reason);
                }
                if t.record.status.state == TaskState::Staging {
                    // Admitted but maybe half-launched: clear any trace, and
                    // take a new run number so late reports are ignored.
                    self.destroy_task_cgroup(&t.record);
                    t.record.run += 1;
                }
                t.record.status.state = TaskState::Queued;
                tracing::info!(task = %id, "accepted task back in the queue");
                // A no-op while recovery runs; the pass after it admits it.
                self.schedule_soon();
            }
        }
    }

    /// After waiting for a starting supervisor: apply what it left, or, if
    /// it is still not done, kill it (every holder of its lock: the
    /// supervisor, its init) and the task's cgroup, and decide again, once:
    /// requeued if the lock is free now, else `LOST`. Blocking.
    fn resolve_or_kill(self: &Arc<Self>, task: &TaskRef) {
        let (stuck, lock, id, run) = {
            let t = task.lock().unwrap();
            (
                matches!(self.plan(&t.record, &t.dir), Plan::AwaitSupervisor),
                t.dir.supervisor_lock(),
                t.record.status.id.clone(),
                t.record.run,
            )
        };
        if stuck {
            let holders = crate::procfs_util::holders_of(&lock);
            tracing::warn!(task = %id, ?holders, "supervisor did not write its record in time; killing it and its task");
            for &pid in &holders {
                // SAFETY: kill(2) has no memory-safety preconditions. These
                // hold the task's lock file open: its supervisor and init.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let cgroup = self
                .cgroups
                .handle(&cgroup_rel(&task.lock().unwrap().record));
            if let Err(e) = cgroup.destroy(Duration::from_secs(2)) {
                tracing::warn!("{e}");
            }
            let start = Instant::now();
            while supervisor_alive(&task.lock().unwrap().dir) && start.elapsed() < LOCK_RELEASE_WAIT
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let plan = {
            let t = task.lock().unwrap();
            match self.plan(&t.record, &t.dir) {
                Plan::AwaitSupervisor => {
                    Plan::Lost("supervisor did not write its record and could not be killed")
                }
                other => other,
            }
        };
        self.apply_plan(task, plan, id, run);
    }

    fn plan(&self, record: &TaskRecord, dir: &TaskDir) -> Plan {
        let state = record.status.state;
        if state.is_final() {
            return Plan::Keep;
        }
        let exit: Option<ExitRecord> = fsutil::read_json(&dir.exit_json()).ok();
        if exit.is_some_and(|e| e.run == record.run) {
            return Plan::ApplyExit;
        }
        // The supervisor's record, not task.json, says whether this run started.
        let sup: Option<SupervisorRecord> = fsutil::read_json(&dir.supervisor_json()).ok();
        match sup.filter(|s| s.run == record.run) {
            Some(s) => {
                let boot = if s.boot_id.is_empty() {
                    &record.boot_id
                } else {
                    &s.boot_id
                };
                if *boot != self.boot_id {
                    Plan::Lost("the host rebooted while the task was running")
                } else if is_same_process(s.supervisor_pid, s.supervisor_start_ticks) {
                    Plan::Adopt(s)
                } else {
                    Plan::Lost("supervisor vanished without an exit record")
                }
            }
            None if supervisor_alive(dir) => Plan::AwaitSupervisor,
            None if matches!(state, TaskState::Queued | TaskState::Staging) => Plan::Relaunch,
            None => Plan::Lost("no supervisor record"),
        }
    }

    /// Task cgroups that belong to no known unfinished task are killed and
    /// removed.
    fn remove_orphan_cgroups(&self) {
        let live: std::collections::HashSet<String> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .flat_map(|t| {
                let t = t.lock().unwrap();
                let unfinished = !t.record.status.state.is_final();
                let group = t
                    .record
                    .group
                    .as_ref()
                    .map(|g| format!("{}/{g}", t.record.spec.role));
                let rels = [Some(cgroup_rel(&t.record)), group];
                rels.into_iter()
                    .flatten()
                    .filter(|_| unfinished)
                    .collect::<Vec<_>>()
            })
            .collect();
        // No exec session outlives its agent: what an earlier agent's
        // sessions left (the helper ends its command when the agent goes;
        // a command's children may have left its process group) is killed.
        for rel in &live {
            for name in self.cgroups.children(rel).unwrap_or_default() {
                let exec = format!("{rel}/{name}");
                // A group's member may be named exec-* too.
                if name.starts_with("exec-") && !live.contains(&exec) {
                    tracing::warn!(cgroup = %exec, "removing an exec session of an earlier agent (its processes are killed)");
                    if let Err(e) = self.cgroups.handle(&exec).destroy(Duration::from_secs(2)) {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
        for role in self.cgroups.children("").unwrap_or_default() {
            let below = |rel: &str| -> Vec<String> {
                let names = self.cgroups.children(rel).unwrap_or_default();
                names.into_iter().map(|c| format!("{rel}/{c}")).collect()
            };
            let children = below(&role);
            // Group cgroups hold their members one level down; deepest first.
            let mut candidates: Vec<String> = children.iter().flat_map(|c| below(c)).collect();
            candidates.extend(children);
            for rel in candidates {
                if !live.contains(&rel) && self.cgroups.handle(&rel).exists() {
                    tracing::warn!(cgroup = %rel, "removing cgroup of an unknown task (its processes are killed)");
                    if let Err(e) = self.cgroups.handle(&rel).destroy(Duration::from_secs(2)) {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
    }
}

/// Groups found with fewer records than their size and no member ended: the
/// agent died while writing them, before the group was acknowledged. (A
/// group with an ended member was acknowledged; retention may have removed
/// some of its records.)
fn partial_groups<'a>(
    records: impl Iterator<Item = &'a TaskRecord>,
) -> std::collections::HashSet<String> {
    let mut seen: std::collections::HashMap<&str, (usize, usize, bool)> = Default::default();
    for r in records {
        let (Some(g), Some(size)) = (r.group.as_deref(), r.group_size) else {
            continue;
        };
        let e = seen.entry(g).or_insert((size, 0, false));
        e.1 += 1;
        e.2 |= r.status.state.is_final();
    }
    seen.into_iter()
        .filter(|(_, (size, n, ended))| n < size && !ended)
        .map(|(g, _)| g.to_owned())
        .collect()
}

/// Reads task.json; a corrupt or newer one stops the agent with a message
/// instead of being guessed at or reset.
fn load_record(dir: &TaskDir) -> Result<TaskRecord, StartError> {
    let path = dir.task_json();
    let value: serde_json::Value = fsutil::read_json(&path).map_err(|e| {
        StartError::State(format!(
            "{e}; refusing to start (move {} away to discard the task)",
            dir.root().display()
        ))
    })?;
    let schema = value.get("schema").and_then(|v| v.as_u64()).unwrap_or(0);
    if schema > TASK_SCHEMA as u64 {
        return Err(StartError::State(format!(
            "{}: schema {schema} is newer than this agent's {TASK_SCHEMA}; refusing to start (upgrade the agent)",
            path.display()
        )));
    }
    serde_json::from_value(value).map_err(|e| {
        StartError::State(format!(
            "{}: invalid content: {e}; refusing to start",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::partial_groups;
    use crate::runtime::tests::record;

    #[test]
    fn a_group_with_missing_records_is_partial_unless_a_member_ended() {
        let half = [record("g.0", "QUEUED", Some(("g", 2)))];
        assert!(partial_groups(half.iter()).contains("g"));
        let whole = [
            record("g.0", "QUEUED", Some(("g", 2))),
            record("g.1", "STAGING", Some(("g", 2))),
        ];
        assert!(partial_groups(whole.iter()).is_empty());
        // Acknowledged long ago; a record of an ended member may be pruned.
        let pruned = [record("g.0", "FINISHED", Some(("g", 2)))];
        assert!(partial_groups(pruned.iter()).is_empty());
        // Written before group_size existed: trusted.
        let mut old = record("h.0", "QUEUED", None);
        old.group = Some("h".into());
        assert!(partial_groups([old].iter()).is_empty());
    }
}
