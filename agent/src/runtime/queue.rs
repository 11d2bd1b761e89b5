//! The glue between the pure scheduler and the tasks: scheduling passes,
//! reservation changes with preemption, task groups.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{cgroup_rel, reservations, Agent, AgentError, TaskRef};
use crate::cgroup::{CpuLimit, Limits};
use crate::constraints;
use crate::scheduler::{self, Amount, Queued, Running};
use crate::spec::check_name;
use crate::status::{StopReason, TaskState};

/// What a reservation change did, for the PUT/DELETE reply.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationChange {
    pub role: String,
    pub requested: Amount,
    pub reserved: Amount,
    /// The request was larger than the host and was capped to it.
    pub capped: bool,
    pub preempted: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A role's view, for GET /v1/reservations.
#[derive(Debug, Clone, Serialize)]
pub struct RoleUsage {
    pub reserved: Amount,
    pub allocated: Amount,
    pub free: Amount,
    pub running: usize,
    pub queued: usize,
}

pub(crate) fn amount_of(r: &crate::spec::Resources) -> Amount {
    Amount {
        cpus: r.cpus,
        mem_mb: r.mem_mb,
        disk_mb: r.disk_mb,
    }
}

fn nanos(t: &chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

const GROUP_KEY: &str = "group:";

/// Tasks of the same kind (for MAX_PER and UNIQUE): same role and command.
type Kind = (String, Vec<String>);

fn kind(record: &super::TaskRecord) -> Kind {
    (record.spec.role.clone(), record.spec.command_line())
}

/// The tightest MAX_PER (UNIQUE is MAX_PER 1) among constraints.
fn max_per(cs: &[constraints::Constraint]) -> Option<usize> {
    cs.iter()
        .filter_map(|c| match c.op {
            constraints::Op::MaxPer(n) => Some(n),
            _ => None,
        })
        .min()
}

impl Agent {
    /// One scheduling pass: marks what may start as STAGING, says on every
    /// other queued task why it waits, and returns the units to launch.
    pub(crate) fn schedule_pass(&self) -> Vec<Vec<TaskRef>> {
        let _pass = self.sched.lock().unwrap();
        if self.recovering.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let started = Instant::now();
        let tasks: Vec<TaskRef> = self.unfinished();
        let now = Instant::now();
        let walked = tasks.len() as u64;
        let mut singles: Vec<Queued> = Vec::new();
        let mut groups: BTreeMap<String, (Queued, bool)> = BTreeMap::new();
        let mut running: Vec<Running> = Vec::new();
        let mut units: HashMap<String, Vec<TaskRef>> = HashMap::new();
        // Group units with a main (non-sidecar) member not yet ended,
        // whatever its state: the rule of `group::sidecars_to_stop`.
        let mut with_main: std::collections::HashSet<String> = Default::default();
        // Constraints are checked once the running tasks are counted by kind.
        let mut constrained: Vec<(String, TaskRef)> = Vec::new();
        let mut kinds: HashMap<Kind, usize> = HashMap::new();
        for task in &tasks {
            let t = task.lock().unwrap();
            let (rec, st) = (&t.record, &t.record.status);
            if let Some(g) = rec.group.as_ref().filter(|_| !rec.spec.sidecar) {
                if !st.state.is_final() {
                    with_main.insert(format!("{GROUP_KEY}{g}"));
                }
            }
            match st.state {
                TaskState::Queued if t.not_before.is_none_or(|nb| nb <= now) => {
                    let unit = Queued {
                        key: st.id.clone(),
                        role: st.role.clone(),
                        priority: rec.spec.priority,
                        seq: nanos(&st.submitted_at),
                        need: amount_of(&st.resources),
                    };
                    let key = match &rec.group {
                        None => unit.key.clone(),
                        Some(g) => format!("{GROUP_KEY}{g}"),
                    };
                    units.entry(key.clone()).or_default().push(task.clone());
                    if !rec.spec.constraints.is_empty() {
                        constrained.push((key.clone(), task.clone()));
                    }
                    if rec.group.is_none() {
                        singles.push(unit);
                        continue;
                    }
                    let whole = Queued {
                        key: key.clone(),
                        need: Amount::default(),
                        ..unit.clone()
                    };
                    let entry = groups.entry(key).or_insert((whole, true));
                    entry.0.need = entry.0.need.add(unit.need);
                    entry.0.priority = entry.0.priority.max(unit.priority);
                    entry.0.seq = entry.0.seq.min(unit.seq);
                }
                TaskState::Staging | TaskState::Running => {
                    *kinds.entry(kind(rec)).or_default() += 1;
                    running.push(Running {
                        key: st.id.clone(),
                        role: st.role.clone(),
                        priority: rec.spec.priority,
                        started_seq: st.started_at.as_ref().map(nanos).unwrap_or(u64::MAX),
                        holds: amount_of(&st.resources),
                        elastic_cpu: rec.spec.cpu_limit == crate::spec::CpuLimitKind::Shares,
                    });
                    if let Some(g) = &rec.group {
                        // A group starts as a whole: a member already running
                        // means the rest are not a new unit.
                        if let Some(e) = groups.get_mut(&format!("{GROUP_KEY}{g}")) {
                            e.1 = false;
                        }
                    }
                }
                _ => {}
            }
        }
        // Units whose constraints do not hold on this node wait, saying why.
        let attrs = self.constraint_attributes();
        let mut blocked: BTreeMap<String, String> = BTreeMap::new();
        let mut limits: HashMap<String, (Kind, usize)> = HashMap::new();
        for (key, task) in &constrained {
            let t = task.lock().unwrap();
            let Ok(cs) = constraints::parse(&t.record.spec.constraints) else {
                continue;
            };
            let k = kind(&t.record);
            match constraints::check(&cs, &attrs, kinds.get(&k).copied().unwrap_or(0)) {
                Err(why) => {
                    blocked.insert(key.clone(), format!("waiting: {why}"));
                }
                Ok(()) => {
                    if let Some(n) = max_per(&cs) {
                        limits.insert(key.clone(), (k, n));
                    }
                }
            }
        }
        // A group whose main members all ended while it waited (killed in
        // the queue) leaves only sidecars: never launch them, stop them.
        let orphans: Vec<String> = groups
            .keys()
            .filter(|k| !with_main.contains(*k))
            .cloned()
            .collect();
        let mut orphan_sidecars = Vec::new();
        for key in &orphans {
            groups.remove(key);
            for task in units.remove(key).into_iter().flatten() {
                orphan_sidecars.push(task.lock().unwrap().record.status.id.clone());
            }
        }
        for id in orphan_sidecars {
            tracing::info!(task = %id, "stopping a queued sidecar: its group's main members ended before the group started");
            let _ = self.stop(&id, StopReason::Killed);
        }
        let mut queue = singles;
        queue.extend(
            groups
                .into_values()
                .filter(|(_, whole)| *whole)
                .map(|(q, _)| q),
        );
        queue.retain(|q| !blocked.contains_key(&q.key));
        let reservations = self.reservations.lock().unwrap().clone();
        let mut decision = scheduler::admit(&queue, &running, &reservations, self.host);
        // MAX_PER counts what this very pass starts too.
        decision.start.retain(|key| {
            let Some((k, n)) = limits.get(key) else {
                return true;
            };
            let count = kinds.entry(k.clone()).or_default();
            if *count >= *n {
                blocked.insert(
                    key.clone(),
                    format!("waiting: at most {n} running task(s) of its kind on this node"),
                );
                return false;
            }
            *count += 1;
            true
        });
        let reasons = decision
            .waiting
            .iter()
            .map(|(k, w)| (k.clone(), w.to_string()))
            .chain(blocked);
        for (key, why) in reasons {
            for task in units.get(&key).into_iter().flatten() {
                task.lock().unwrap().record.status.message = Some(why.clone());
            }
        }
        self.touched();
        let c = &self.counters;
        c.sched_pass_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        c.sched_pass_tasks.store(walked, Ordering::Relaxed);
        decision
            .start
            .iter()
            .filter_map(|key| units.remove(key))
            .inspect(|members| {
                for task in members {
                    let mut t = task.lock().unwrap();
                    t.record.status.state = TaskState::Staging;
                    t.record.status.message = None;
                }
            })
            .collect()
    }

    /// A pass, launching everything it admits in the background.
    pub(crate) fn schedule(self: &Arc<Self>) {
        for unit in self.schedule_pass() {
            let agent = self.clone();
            tokio::spawn(async move { agent.launch_unit(unit).await });
        }
    }

    /// [`schedule`](Self::schedule), from places that hold a task lock.
    pub(crate) fn schedule_soon(self: &Arc<Self>) {
        let agent = self.clone();
        tokio::spawn(async move { agent.schedule() });
    }

    /// Launches a single task, or a group all-or-nothing: if one member
    /// fails to launch, the others are stopped.
    pub(crate) async fn launch_unit(self: &Arc<Self>, unit: Vec<TaskRef>) {
        if unit.len() == 1 && unit[0].lock().unwrap().record.group.is_none() {
            return self.launch(&unit[0]).await;
        }
        let total = unit.iter().fold(Amount::default(), |a, m| {
            a.add(amount_of(&m.lock().unwrap().record.spec.resources))
        });
        let group_rel = {
            let t = unit[0].lock().unwrap();
            format!(
                "{}/{}",
                t.record.spec.role,
                t.record.group.clone().unwrap_or_default()
            )
        };
        let limits = Limits {
            cpu: Some(CpuLimit::Quota { cpus: total.cpus }),
            memory_bytes: Some((total.mem_mb * 1024.0 * 1024.0) as u64),
            pids: None,
        };
        self.cgroup_settled(&group_rel).await;
        let made = self
            .cgroups
            .create(&group_rel)
            .and_then(|_| self.cgroups.set_limits(&group_rel, &limits));
        if let Err(e) = made {
            for m in &unit {
                self.launch_failed(m, format!("group cgroup {group_rel}: {e}"));
            }
            return;
        }
        let pod = unit[0].lock().unwrap().record.pod.clone();
        if let Some(Err(e)) = pod.map(|p| self.prepare_pod(&p)) {
            for m in &unit {
                self.launch_failed(m, format!("group {group_rel}: {e}"));
            }
            return;
        }
        futures_util::future::join_all(unit.iter().map(|m| self.launch(m))).await;
        let failed: Vec<String> = unit
            .iter()
            .filter_map(|m| {
                let t = m.lock().unwrap();
                (t.record.status.state == TaskState::Failed).then(|| t.record.status.id.clone())
            })
            .collect();
        if let Some(first) = failed.first() {
            for m in &unit {
                let id = m.lock().unwrap().record.status.id.clone();
                if !failed.contains(&id) {
                    tracing::warn!(task = %id, group = %group_rel, "stopping: member {first} of its group failed to launch");
                    m.lock().unwrap().stop_note = Some(format!(
                        "stopped: task {first} of its group failed to launch"
                    ));
                    let _ = self.stop(&id, StopReason::Killed);
                }
            }
        }
    }

    /// Removes a group's cgroup, shared volume and network once none of
    /// its members is left unfinished.
    pub(crate) fn release_group(&self, role: &str, group: &str) {
        let members_alive = self.tasks.lock().unwrap().values().any(|t| {
            let t = t.lock().unwrap();
            t.record.group.as_deref() == Some(group) && !t.record.status.state.is_final()
        });
        if !members_alive {
            self.destroy_cgroup(format!("{role}/{group}"));
            if let Some(pod) = self.pod_of(group) {
                self.release_pod(&pod);
            }
        }
    }

    pub fn reservations(&self) -> BTreeMap<String, RoleUsage> {
        let reserved = self.reservations.lock().unwrap().clone();
        let mut usage: BTreeMap<String, RoleUsage> = reserved
            .iter()
            .map(|(role, r)| {
                (
                    role.clone(),
                    RoleUsage {
                        reserved: *r,
                        allocated: Amount::default(),
                        free: *r,
                        running: 0,
                        queued: 0,
                    },
                )
            })
            .collect();
        for status in self.list() {
            let Some(u) = usage.get_mut(&status.role) else {
                continue;
            };
            match status.state {
                TaskState::Staging | TaskState::Running => {
                    u.allocated = u.allocated.add(amount_of(&status.resources));
                    u.running += 1;
                }
                TaskState::Queued => u.queued += 1,
                _ => {}
            }
        }
        for u in usage.values_mut() {
            u.free = u.reserved.sub(u.allocated);
        }
        usage
    }

    /// Sets a role's reservation: the role's cgroup is written before this
    /// returns, after preempting what no longer fits. Detached from the
    /// caller: a client that goes away cannot leave it half-applied.
    pub async fn set_reservation(
        self: &Arc<Self>,
        role: &str,
        requested: Amount,
    ) -> Result<ReservationChange, AgentError> {
        let (agent, role) = (self.clone(), role.to_owned());
        super::detached(async move { agent.set_reservation_inner(&role, requested).await }).await
    }

    async fn set_reservation_inner(
        self: &Arc<Self>,
        role: &str,
        requested: Amount,
    ) -> Result<ReservationChange, AgentError> {
        check_name("role", role).map_err(|e| AgentError::Invalid(e.to_string()))?;
        for (name, v) in [
            ("cpus", requested.cpus),
            ("mem_mb", requested.mem_mb),
            ("disk_mb", requested.disk_mb),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(AgentError::Invalid(format!(
                    "{name}: must be a finite number >= 0, got {v}"
                )));
            }
        }
        let reserved = requested.clamp_to(self.host);
        let capped = reserved != requested;
        let mut change = self.change_reservation(role, Some(reserved)).await?;
        change.requested = requested;
        change.capped = capped;
        if capped {
            change.message = Some(format!(
                "capped at the host's total ({} cpus, {} MB)",
                self.host.cpus, self.host.mem_mb
            ));
        }
        Ok(change)
    }

    /// Removes a role's reservation; its tasks are preempted.
    pub async fn remove_reservation(
        self: &Arc<Self>,
        role: &str,
    ) -> Result<ReservationChange, AgentError> {
        if !self.reservations.lock().unwrap().contains_key(role) {
            return Err(AgentError::NotFound(format!(
                "role {role:?} has no reservation"
            )));
        }
        let (agent, role) = (self.clone(), role.to_owned());
        super::detached(async move { agent.change_reservation(&role, None).await }).await
    }

    async fn change_reservation(
        self: &Arc<Self>,
        role: &str,
        new: Option<Amount>,
    ) -> Result<ReservationChange, AgentError> {
        let _one_at_a_time = self.reserving.lock().await;
        let target = new.unwrap_or_default();
        let previous = self.reservations.lock().unwrap().get(role).copied();
        // From here on admission sees the new amount; the victims are chosen
        // under the same lock, so nothing new slips in between.
        let victims: Vec<TaskRef> = {
            let _pass = self.sched.lock().unwrap();
            {
                let mut r = self.reservations.lock().unwrap();
                match new {
                    Some(a) => r.insert(role.to_owned(), a),
                    None => r.remove(role),
                };
            }
            let tasks: Vec<TaskRef> = self.unfinished();
            let mut running = Vec::new();
            let mut by_id = HashMap::new();
            for task in tasks {
                let t = task.lock().unwrap();
                let st = &t.record.status;
                if st.role == role
                    && matches!(st.state, TaskState::Staging | TaskState::Running)
                    && t.stopping.is_none()
                {
                    running.push(Running {
                        key: st.id.clone(),
                        role: st.role.clone(),
                        priority: t.record.spec.priority,
                        started_seq: st.started_at.as_ref().map(nanos).unwrap_or(u64::MAX),
                        holds: amount_of(&st.resources),
                        elastic_cpu: t.record.spec.cpu_limit == crate::spec::CpuLimitKind::Shares,
                    });
                    by_id.insert(st.id.clone(), task.clone());
                }
            }
            scheduler::preempt(&running, role, target)
                .into_iter()
                .filter_map(|id| by_id.remove(&id))
                .collect()
        };
        let save = |roles: &BTreeMap<String, Amount>| {
            reservations::save(&self.data.reservations_json(), roles)
        };
        let snapshot = self.reservations.lock().unwrap().clone();
        if let Err(e) = save(&snapshot) {
            self.restore_reservation(role, previous);
            return Err(AgentError::Internal(format!("record reservation: {e}")));
        }
        let mut preempted = Vec::new();
        let mut grace: f64 = 0.0;
        for task in &victims {
            let (id, rel, g, cpus) = {
                let t = task.lock().unwrap();
                let r = &t.record;
                (
                    r.status.id.clone(),
                    cgroup_rel(r),
                    r.spec.kill_grace_s,
                    r.spec.resources.cpus,
                )
            };
            // v1 refuses a parent quota below a child's: bring the victim
            // down to the new parent quota first (no lower: it still needs
            // CPU to handle SIGTERM and exit).
            let squeezed = Limits {
                cpu: Some(CpuLimit::Quota {
                    cpus: target.cpus.min(cpus),
                }),
                ..Default::default()
            };
            let _ = self.cgroups.set_limits(&rel, &squeezed);
            if self.stop(&id, StopReason::Preempted).is_ok() {
                preempted.push(id);
                grace = grace.max(g);
            }
        }
        self.counters
            .preemptions
            .fetch_add(preempted.len() as u64, Ordering::Relaxed);
        super::hooks::pause("reservation_apply").await;
        let deadline = Instant::now() + Duration::from_secs_f64(grace + 5.0);
        let applied = reservations::apply(self.cgroups.as_ref(), role, target, deadline).await;
        if let Err(e) = applied {
            tracing::error!(role, "apply reservation: {e}");
            return Err(AgentError::Internal(format!("reservation of {role}: {e}")));
        }
        if new.is_none() {
            // Awaited (a new reservation of the role must find its cgroup),
            // off the runtime's workers.
            let handle = self.cgroups.handle(role);
            let _ =
                tokio::task::spawn_blocking(move || handle.destroy(Duration::from_secs(1))).await;
            self.role_cgroups.lock().unwrap().remove(role);
        } else {
            self.role_cgroups.lock().unwrap().insert(role.to_owned());
        }
        tracing::info!(role, reserved = ?new, preempted = preempted.len(), "reservation changed");
        self.schedule();
        Ok(ReservationChange {
            role: role.to_owned(),
            requested: target,
            reserved: target,
            capped: false,
            preempted,
            message: None,
        })
    }

    fn restore_reservation(&self, role: &str, previous: Option<Amount>) {
        let mut r = self.reservations.lock().unwrap();
        match previous {
            Some(a) => r.insert(role.to_owned(), a),
            None => r.remove(role),
        };
    }

    /// Loads the reservations (or creates the initial one) and writes every
    /// role's cgroup. At start-up, before tasks are recovered.
    pub(crate) async fn restore_reservations(&self) -> Result<(), super::StartError> {
        let path = self.data.reservations_json();
        let roles = match reservations::load(&path).map_err(super::StartError::State)? {
            Some(roles) => roles,
            None => {
                let initial = self
                    .cfg
                    .initial_reservation
                    .unwrap_or(self.host)
                    .clamp_to(self.host);
                let roles = BTreeMap::from([(crate::spec::DEFAULT_ROLE.to_owned(), initial)]);
                reservations::save(&path, &roles)?;
                roles
            }
        };
        for (role, amount) in &roles {
            if let Err(e) =
                reservations::apply(self.cgroups.as_ref(), role, *amount, Instant::now()).await
            {
                tracing::warn!(role, "reservation not applied yet: {e}");
            }
            self.role_cgroups.lock().unwrap().insert(role.clone());
        }
        *self.reservations.lock().unwrap() = roles;
        Ok(())
    }
}
