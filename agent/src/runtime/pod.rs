//! Task groups as pods, the agent's side (the rules are pure, in
//! `gleaner_core::group`): a group's shared volume and network namespace,
//! made before its members launch and removed with the group (or by the
//! recovery of a finished one); sidecars stopped once the last main member
//! has ended; the group's disk use.
//!
//! The shared volume is `shared/` in the first member's task dir (unique
//! while the group's records exist, under the `nosuid,nodev` tasks mount,
//! and removed by retention with that dir at the latest), mode 1777 like
//! /tmp: every member's user can write, only an owner removes. The network
//! namespace is held by a bind mount at `run/netns/<first member>`
//! (`supervisor::netns`).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError, TaskRef};
use crate::fsutil;
use crate::status::{StopReason, TaskState, TaskStatus};
use crate::supervisor::netns;
use gleaner_core::group::{self, GroupNetwork, Member};

/// What a group gives its members, as submitted (`POST /v1/groups`).
#[derive(Debug, Clone, Default)]
pub struct GroupOptions {
    /// Where members see the shared volume; `/shared` if absent.
    pub shared_path: Option<String>,
    pub network: GroupNetwork,
}

/// What every member's record says of its group (the same in each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The first member: its task dir holds the shared volume, its id
    /// names the network namespace.
    pub home: String,
    /// Where members see the shared volume (checked, normalised).
    pub shared_path: String,
    #[serde(default, skip_serializing_if = "GroupNetwork::is_host")]
    pub network: GroupNetwork,
}

/// A group as `GET /v1/groups/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupStatus {
    pub id: String,
    pub role: String,
    /// From its main (non-sidecar) members only (`gleaner_core::group::group_state`).
    pub state: Option<TaskState>,
    pub shared_path: Option<String>,
    pub network: GroupNetwork,
    pub tasks: Vec<TaskStatus>,
}

impl GroupOptions {
    /// Checks the options against the members and the host; returns the
    /// normalised shared path.
    pub(super) fn check(
        &self,
        specs: &[crate::spec::TaskSpec],
        net_namespace: bool,
    ) -> Result<String, AgentError> {
        let invalid = |e: group::GroupError| AgentError::Invalid(e.to_string());
        let path = group::check_shared_path(
            self.shared_path
                .as_deref()
                .unwrap_or(group::DEFAULT_SHARED_PATH),
        )
        .map_err(invalid)?;
        group::check_members(self.network, specs).map_err(invalid)?;
        if self.network == GroupNetwork::Group && !net_namespace {
            return Err(AgentError::Invalid(
                "network: \"group\" needs network namespaces, which this host does not offer"
                    .into(),
            ));
        }
        Ok(path)
    }
}

impl Agent {
    /// Every record of `group`, in id order.
    fn members(&self, group: &str) -> Vec<TaskRef> {
        self.tasks
            .lock()
            .unwrap()
            .values()
            .filter(|t| t.lock().unwrap().record.group.as_deref() == Some(group))
            .cloned()
            .collect()
    }

    /// Makes the group's shared volume and network before its members
    /// launch (kept if there already: a relaunch after a restart).
    pub(super) fn prepare_pod(&self, pod: &PodRecord) -> Result<(), String> {
        let shared = self.data.task(&pod.home).shared();
        fsutil::create_dir_all(&shared).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod {}: {e}", shared.display()))?;
        if pod.network == GroupNetwork::Group {
            netns::create_held(&self.data.netns(&pod.home)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Removes the group's network namespace and shared volume. Members
    /// still in the namespace keep it until they end; the volume's removal
    /// runs off the runtime.
    pub(super) fn release_pod(&self, pod: &PodRecord) {
        if let Err(e) = netns::release(&self.data.netns(&pod.home)) {
            tracing::warn!(home = %pod.home, "{e}");
        }
        let shared = self.data.task(&pod.home).shared();
        let work = move || match std::fs::remove_dir_all(&shared) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("remove {}: {e}", shared.display())
            }
            _ => {}
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// After a member of `group` ended: stops its sidecars once the last
    /// main member has, and releases the group (cgroup, volume, network)
    /// once no member is left unfinished.
    pub(crate) fn group_member_ended(self: &Arc<Self>, role: &str, group: &str) {
        let members: Vec<(String, bool, TaskState, bool)> = self
            .members(group)
            .iter()
            .map(|t| {
                let t = t.lock().unwrap();
                let r = &t.record;
                (
                    r.status.id.clone(),
                    r.spec.sidecar,
                    r.status.state,
                    t.stopping.is_some(),
                )
            })
            .collect();
        let view: Vec<Member> = members
            .iter()
            .map(|(id, sidecar, state, _)| Member {
                id,
                sidecar: *sidecar,
                state: *state,
            })
            .collect();
        for id in group::sidecars_to_stop(&view) {
            if members.iter().any(|m| m.0 == id && m.3) {
                continue; // already told to stop
            }
            tracing::info!(task = %id, group, "stopping sidecar: the group's main members have ended");
            if let Ok(task) = self.task(id) {
                task.lock().unwrap().stop_note =
                    Some("stopped: the group's main members have ended".into());
            }
            if let Err(e) = self.stop(id, StopReason::Killed) {
                tracing::warn!(task = %id, "stop sidecar: {e}");
            }
        }
        self.release_group(role, group);
    }

    /// The group's pod record, from any member.
    pub(super) fn pod_of(&self, group: &str) -> Option<PodRecord> {
        self.members(group)
            .iter()
            .find_map(|t| t.lock().unwrap().record.pod.clone())
    }

    /// `GET /v1/groups/{id}`.
    pub fn group_status(&self, group: &str) -> Result<GroupStatus, AgentError> {
        let members = self.members(group);
        if members.is_empty() {
            return Err(AgentError::NotFound(format!("group {group:?} not found")));
        }
        let records: Vec<super::TaskRecord> = members
            .iter()
            .map(|t| t.lock().unwrap().record.clone())
            .collect();
        let view: Vec<Member> = records
            .iter()
            .map(|r| Member {
                id: &r.status.id,
                sidecar: r.spec.sidecar,
                state: r.status.state,
            })
            .collect();
        let pod = records.iter().find_map(|r| r.pod.clone());
        Ok(GroupStatus {
            id: group.to_owned(),
            role: records[0].spec.role.clone(),
            state: group::group_state(&view),
            shared_path: pod.as_ref().map(|p| p.shared_path.clone()),
            network: pod.map(|p| p.network).unwrap_or_default(),
            tasks: records.into_iter().map(|r| r.status).collect(),
        })
    }

    /// At start, once every recovered task is resolved: sidecars whose main
    /// members ended while the agent was down are stopped, finished groups
    /// released, and namespaces of groups no record names any more removed.
    pub(super) fn recover_pods(self: &Arc<Self>) {
        let mut groups = std::collections::BTreeSet::new();
        let mut live_homes = std::collections::HashSet::new();
        for t in self.tasks.lock().unwrap().values() {
            let t = t.lock().unwrap();
            if let Some(g) = &t.record.group {
                groups.insert((t.record.spec.role.clone(), g.clone()));
            }
            if let Some(pod) = &t.record.pod {
                if !t.record.status.state.is_final() {
                    live_homes.insert(pod.home.clone());
                }
            }
        }
        for (role, group) in groups {
            self.group_member_ended(&role, &group);
        }
        let dir = self.data.netns_dir();
        // An older agent's dir (no mount of its own) is made one now.
        if dir.exists() {
            if let Err(e) = netns::private_dir(&dir) {
                tracing::warn!("{e}");
            }
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live_homes.contains(&name) {
                tracing::warn!(netns = %name, "removing the network namespace of a group that has ended");
                if let Err(e) = netns::release(&entry.path()) {
                    tracing::warn!("{e}");
                }
            }
        }
    }

    /// Groups over their disk limit (the sum of their members' `disk_mb`,
    /// none if a member has none): the shared volume and every member's
    /// sandbox and /tmp, within one bound. Returns the running members to
    /// stop, with the use.
    pub(super) fn measure_group_disk(&self) -> Vec<(String, super::disk::DiskUse)> {
        // By role too: a group's name is unique within its role only.
        let mut groups: std::collections::BTreeMap<(String, String), Vec<TaskRef>> =
            Default::default();
        for t in self.tasks.lock().unwrap().values() {
            let key = {
                let t = t.lock().unwrap();
                t.record
                    .group
                    .clone()
                    .map(|g| (t.record.spec.role.clone(), g))
            };
            if let Some(key) = key {
                groups.entry(key).or_default().push(t.clone());
            }
        }
        let mut over = Vec::new();
        for members in groups.values() {
            let mut limit = 0.0;
            let mut dirs = Vec::new();
            let mut running = Vec::new();
            let mut home = None;
            for m in members {
                let t = m.lock().unwrap();
                let r = &t.record;
                limit = if r.spec.resources.disk_mb > 0.0 && limit >= 0.0 {
                    limit + r.spec.resources.disk_mb
                } else {
                    -1.0
                };
                home = home.or(r.pod.as_ref().map(|p| p.home.clone()));
                if r.status.state == TaskState::Running && t.stopping.is_none() {
                    running.push(r.status.id.clone());
                }
                dirs.push(t.dir.clone());
            }
            let Some(home) = home else { continue };
            if limit <= 0.0 || running.is_empty() {
                continue;
            }
            let mut trees = vec![self.data.task(&home).shared()];
            for d in &dirs {
                trees.extend([d.sandbox(), d.tmp()]);
            }
            // Each member may write as many entries as a task alone.
            let entries = self
                .cfg
                .disk_check_max_entries
                .saturating_mul(members.len() as u64);
            let used = super::disk::measure(&trees, entries);
            if used.map_or(true, |b| b > (limit * 1024.0 * 1024.0) as u64) {
                over.extend(running.into_iter().map(|id| (id, used)));
            }
        }
        over
    }
}
