//! Launching one run of a task: sandbox, cgroup, launch.json, supervisor.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;

use super::stages::Stages;
use super::{cgroup_rel, hooks, Agent, Task, TaskRef};
use crate::cgroup::{CpuLimit, Limits};
use crate::fsutil;
use crate::layout::SANDBOX_IN_ROOTFS;
use crate::spec::{CpuLimitKind, RootfsSpec};
use crate::status::{Reason, TaskState};
use crate::supervisor::{ensure_mount_points, LaunchConfig, SharedMount, SupervisorRecord};

/// Replaces `path` with `bytes`, readable by root alone.
pub(super) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Longest wait for the previous run's supervisor to exit.
const PREVIOUS_SUPERVISOR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the previous run's supervisor has exited: it reports the
/// exit before it removes the cgroup (up to 5 s when the host is busy) and
/// holds the task's lock until it is done, so a new run is never created
/// in a cgroup about to be removed. After the bound the zygote refuses the
/// launch (the lock is still held): a launch failure, not a race.
async fn previous_supervisor_gone(dir: &crate::layout::TaskDir) {
    let start = std::time::Instant::now();
    while crate::supervisor::zygote::supervisor_alive(dir)
        && start.elapsed() < PREVIOUS_SUPERVISOR_WAIT
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

impl Agent {
    /// The URL a task reaches the API at (the TCP listener; a wildcard
    /// address is reached on loopback).
    fn agent_url(&self) -> String {
        match self.cfg.listen_addr() {
            Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
            Ok(a) => format!("http://{a}"),
            Err(_) => format!("http://{}", self.cfg.listen),
        }
    }

    /// Launches the task's current run; on return the task is RUNNING or
    /// has ended (launch failure, or an exit that raced the launch).
    pub(crate) async fn launch(self: &Arc<Self>, task: &TaskRef) {
        let mut stages = Stages::start();
        let (image, in_cache, stop) = {
            let mut t = task.lock().unwrap();
            t.record.status.state = TaskState::Staging;
            t.staging_stop = Arc::default();
            let stop = t.staging_stop.clone();
            if t.record.pending_stop.is_some() {
                stop.notify_one();
            }
            let spec = &t.record.spec;
            let image = spec
                .rootfs
                .as_ref()
                .and_then(|r| r.uri.clone().zip(r.sha256.clone()))
                .map(|(uri, sha)| (uri, sha, spec.role.clone()));
            // An earlier agent accepted an image's rootfs by path; a run of
            // such a record would skip the proof that its (role, URI)
            // fetched the image.
            let in_cache = spec
                .rootfs
                .as_ref()
                .and_then(|r| r.path.as_ref())
                .filter(|p| self.images.holds(p))
                .cloned();
            (image, in_cache, stop)
        };
        if let Some(path) = in_cache {
            let msg = format!(
                "rootfs.path: {} is in the image cache (accepted by an earlier agent): \
                 name the image by rootfs.uri and rootfs.sha256",
                path.display()
            );
            return self.run_failed(task, Reason::RootfsInvalid, msg);
        }
        if let Some((uri, sha256, role)) = image {
            let cached = self.images.is_cached(&sha256);
            // A stop ends the wait (and the download, when this task is
            // the one fetching: its work dir goes with it). The role is
            // the tenant: a cached image serves a (role, URI) that fetched it.
            let fetched = tokio::select! {
                r = self.images.ensure(&uri, &sha256, &role) => Some(r),
                () = stop.notified() => None,
            };
            // The cache grows only by a fetch: only then can it be over.
            // Removing an image is file-system work, off the runtime.
            if !cached {
                let (agent, in_use) = (self.clone(), self.images_in_use());
                let _ = tokio::task::spawn_blocking(move || agent.images.evict(&in_use)).await;
            }
            match fetched {
                Some(Err(e)) if !self.stop_pending(task) => {
                    return self.run_failed(task, Reason::RootfsInvalid, e.to_string())
                }
                Some(Ok(_)) => {}
                _ => return self.end_stopped_staging(task),
            }
        }
        let (rel, dir) = {
            let t = task.lock().unwrap();
            (cgroup_rel(&t.record), t.dir.clone())
        };
        self.cgroup_settled(&rel).await;
        previous_supervisor_gone(&dir).await;
        // After the previous run is gone: nothing of it sees the sandbox change.
        let fetch = task.lock().unwrap().record.spec.fetch.clone();
        if !fetch.is_empty() {
            if let Err(msg) = self.fetch_files(task, &fetch, &stop).await {
                if self.stop_pending(task) {
                    return self.end_stopped_staging(task);
                }
                return self.run_failed(task, Reason::FetchFailed, msg);
            }
        }
        // Image, fetch, cgroup and previous run settled (wall: it may wait).
        stages.mark_wall("settle");
        let (id, run, dir, prepared) = {
            let mut t = task.lock().unwrap();
            if t.record.pending_stop.is_some() {
                drop(t);
                return self.end_stopped_staging(task);
            }
            let prepared = self.prepare(&mut t, &mut stages);
            (
                t.record.status.id.clone(),
                t.record.run,
                t.dir.clone(),
                prepared,
            )
        };
        let launched = match prepared {
            Ok(()) => {
                hooks::pause("launch").await;
                // A stop while the launch waits for a start slot ends it
                // here: the command never starts.
                let turn = tokio::select! {
                    turn = self.spawner.turn() => Some(turn),
                    () = stop.notified() => None,
                };
                hooks::pause("start_slot").await;
                match turn {
                    Some(Ok(turn)) if !self.stop_pending(task) => {
                        stages.mark_wall("to_zygote");
                        let r = self.spawner.launch(dir.root(), turn).await;
                        // Zygote fork, supervisor, init, mounts, pivot, exec, report.
                        stages.mark_wall("supervisor");
                        r
                    }
                    Some(Err(e)) => Err(e),
                    _ => {
                        self.destroy_task_cgroup(&task.lock().unwrap().record);
                        return self.end_stopped_staging(task);
                    }
                }
            }
            Err(msg) => Err(msg),
        };
        match launched {
            Ok(task_pid) => {
                let pending = {
                    let mut t = task.lock().unwrap();
                    let mut sup: Option<SupervisorRecord> =
                        fsutil::read_json(&dir.supervisor_json()).ok();
                    if let Some(s) = sup.as_mut() {
                        stages.supervisor_steps = std::mem::take(&mut s.launch_steps);
                    }
                    let st = &mut t.record.status;
                    st.state = TaskState::Running;
                    st.pid = Some(task_pid);
                    st.started_at =
                        Some(sup.as_ref().map(|s| s.started_at).unwrap_or_else(Utc::now));
                    st.message = None;
                    st.reason = None;
                    st.exit_code = None;
                    st.signal = None;
                    st.finished_at = None;
                    t.record.supervisor = sup;
                    t.record.boot_id = self.boot_id.clone();
                    self.counters.launches.fetch_add(1, Ordering::Relaxed);
                    t.record.pending_stop.take()
                };
                stages.mark("running");
                self.touched();
                self.start_health_checks(task);
                if let Some(reason) = pending {
                    let _ = self.stop(&id, reason);
                }
                // A short task may have ended before it was marked running.
                if dir.exit_json().exists() {
                    self.on_exit(&id, run);
                }
                stages.mark("after_running");
                tracing::debug!(task = %id, %stages, "launch stages");
            }
            Err(msg) => self.launch_failed(task, msg),
        }
    }

    fn stop_pending(&self, task: &TaskRef) -> bool {
        task.lock().unwrap().record.pending_stop.is_some()
    }

    /// Stopped while STAGING (its image or files being fetched): it never
    /// started, and ends as a queued task does (KILLED for a kill).
    fn end_stopped_staging(self: &Arc<Self>, task: &TaskRef) {
        let mut t = task.lock().unwrap();
        let Some(reason) = t.record.pending_stop.take() else {
            return;
        };
        let (state, reason) = crate::status::stopped(reason);
        t.record.status.finished_at = Some(Utc::now());
        self.finish_run(task, &mut t, state, reason)
    }

    /// The spec's `fetch` into the sandbox, owned by the task's user; a
    /// stop (`stop`) ends it with what it had fetched removed.
    async fn fetch_files(
        self: &Arc<Self>,
        task: &TaskRef,
        fetch: &[gleaner_core::fetch::FetchSpec],
        stop: &tokio::sync::Notify,
    ) -> Result<(), String> {
        let (dir, user, disk_mb, role) = {
            let t = task.lock().unwrap();
            let spec = &t.record.spec;
            let user = self.task_user(spec);
            (
                t.dir.clone(),
                user,
                spec.resources.disk_mb,
                spec.role.clone(),
            )
        };
        let (_, _, uid, gid) = user?;
        let fetch_for = super::fetch::For {
            owner: super::fetch::Owner { uid, gid },
            role: &role,
            cap: super::fetch::TotalCap::for_task(disk_mb, self.cfg.image_max_mb),
            stop,
        };
        let result = super::fetch::fetch_all(&self.images, fetch, &dir, fetch_for).await;
        if fetch.iter().any(|f| f.cached_digest().is_some()) {
            let (agent, in_use) = (self.clone(), self.images_in_use());
            let _ = tokio::task::spawn_blocking(move || agent.images.evict(&in_use)).await;
        }
        result.map_err(|e| e.to_string())
    }

    /// The task's rootfs, user name, uid and gid; root only for roles
    /// allowed it.
    fn task_user(
        &self,
        spec: &crate::spec::TaskSpec,
    ) -> Result<(std::path::PathBuf, String, u32, u32), String> {
        let rootfs = match spec.rootfs.as_ref() {
            // Checked again as it resolves now: a dir of rootfs_dirs its
            // owner swapped for a link (to /, into the data dir) after the
            // submission is refused, and this run mounts what was checked.
            Some(RootfsSpec { path: Some(_), .. }) => self
                .check_rootfs(spec)
                .map_err(|e| format!("{e} (checked again at launch)"))?,
            Some(RootfsSpec {
                sha256: Some(sha256),
                ..
            }) => self.images.rootfs(sha256),
            _ => return Err("task has no rootfs".into()),
        };
        let user = spec
            .user
            .clone()
            .unwrap_or_else(|| self.cfg.default_user.clone());
        let (uid, gid) = crate::userdb::resolve(&rootfs, &user).map_err(|e| e.to_string())?;
        // Checked at submission for a rootfs by path; an image's users are
        // known only once it is unpacked.
        self.check_root(uid, &spec.role)
            .map_err(|e| format!("user {user:?} is root in the image: {e}"))?;
        Ok((rootfs, user, uid, gid))
    }

    pub(crate) fn launch_failed(self: &Arc<Self>, task: &TaskRef, msg: String) {
        self.run_failed(task, Reason::LaunchFailed, msg)
    }

    /// The current run ended before its command started.
    fn run_failed(self: &Arc<Self>, task: &TaskRef, reason: Reason, msg: String) {
        let mut t = task.lock().unwrap();
        tracing::warn!(task = %t.record.status.id, ?reason, "launch failed: {msg}");
        self.counters
            .launch_failures
            .fetch_add(1, Ordering::Relaxed);
        self.destroy_task_cgroup(&t.record);
        let st = &mut t.record.status;
        st.message = Some(msg);
        st.exit_code = None;
        st.signal = None;
        st.pid = None;
        st.finished_at = Some(Utc::now());
        self.finish_run(task, &mut t, TaskState::Failed, Some(reason));
    }

    /// Everything before the supervisor: sandbox, cgroup, launch.json.
    fn prepare(&self, t: &mut Task, stages: &mut Stages) -> Result<(), String> {
        let spec = &t.record.spec;
        let (rootfs, user, uid, gid) = self.task_user(spec)?;
        let sys = self.cfg.sys_roles.iter().any(|r| r == &spec.role);
        ensure_mount_points(&rootfs, sys).map_err(|e| e.to_string())?;
        let pod = t.record.pod.clone();
        let shared = match &pod {
            Some(p) => {
                // Checked here for a clear launch failure (the rules too: a
                // record may predate them); the init makes a missing mount
                // point in its own namespace, never in the (shared) rootfs.
                crate::supervisor::shared::check(&rootfs, &p.shared_path)
                    .map_err(|e| e.to_string())?;
                Some(SharedMount {
                    source: self.data.task(&p.home).shared(),
                    path: p.shared_path.clone(),
                })
            }
            None => None,
        };
        let group_netns = pod
            .filter(|p| p.network == gleaner_core::group::GroupNetwork::Group)
            .map(|p| self.data.netns(&p.home));
        stages.mark("user_rootfs");

        let dir = &t.dir;
        for stale in [dir.exit_json(), dir.supervisor_json(), dir.stop_json()] {
            fsutil::remove_file_if_exists(&stale).map_err(|e| e.to_string())?;
        }
        // Never the task dir itself: one that vanished fails the launch.
        for d in [dir.sandbox(), dir.tmp()] {
            fsutil::create_dir_in(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        nix::unistd::chown(&dir.sandbox(), Some(uid.into()), Some(gid.into()))
            .map_err(|e| format!("chown {}: {e}", dir.sandbox().display()))?;
        std::fs::set_permissions(dir.tmp(), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod {}: {e}", dir.tmp().display()))?;
        stages.mark("dirs");

        let rel = cgroup_rel(&t.record);
        let features = self.cgroups.features();
        if !self.role_cgroups.lock().unwrap().contains(&spec.role) {
            self.cgroups.create(&spec.role).map_err(|e| e.to_string())?;
            self.role_cgroups.lock().unwrap().insert(spec.role.clone());
        }
        let handle = self.cgroups.create(&rel).map_err(|e| e.to_string())?;
        let cpus = spec.resources.cpus;
        let limits = Limits {
            cpu: Some(match spec.cpu_limit {
                CpuLimitKind::Cfs => CpuLimit::Quota { cpus },
                CpuLimitKind::Shares => CpuLimit::Shares { cpus },
            }),
            memory_bytes: Some(spec.resources.mem_bytes()),
            pids: features.pids.then_some(self.cfg.pids_limit),
        };
        if let Err(e) = self.cgroups.set_limits(&rel, &limits) {
            // Empty (nothing launched in it yet): no wait.
            self.destroy_cgroup(rel);
            return Err(e.to_string());
        }
        stages.mark("cgroup");

        let id = t.record.status.id.clone();
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            format!("HOME={SANDBOX_IN_ROOTFS}"),
            format!("USER={user}"),
            format!("GLEANER_TASK_ID={id}"),
            format!("GLEANER_SANDBOX={SANDBOX_IN_ROOTFS}"),
            format!("GLEANER_ROLE={}", spec.role),
        ];
        for (k, v) in &spec.env {
            env.retain(|e| !e.starts_with(&format!("{k}=")));
            env.push(format!("{k}={v}"));
        }
        // Marathon's port variables win over the spec's own.
        for var in crate::ports::env(&t.record.status.ports, &self.node_id) {
            let name = var.split('=').next().unwrap_or("").to_owned();
            env.retain(|e| !e.starts_with(&format!("{name}=")));
            env.push(var);
        }
        // Set last: a spec's own env cannot replace the agent's credential.
        if let Some(token) = &t.record.api_token {
            env.retain(|e| {
                !e.starts_with("GLEANER_TOKEN=") && !e.starts_with("GLEANER_AGENT_URL=")
            });
            env.push(format!("GLEANER_TOKEN={token}"));
            env.push(format!("GLEANER_AGENT_URL={}", self.agent_url()));
        }
        let launch = LaunchConfig {
            task_id: id,
            run: t.record.run,
            rootfs,
            sandbox: dir.sandbox(),
            tmp: dir.tmp(),
            argv: spec.command_line(),
            env,
            uid,
            gid,
            cgroup: handle.clone(),
            nproc_rlimit: (!features.pids).then_some(self.cfg.pids_limit),
            root_switch: self.sandbox.root_switch,
            sys,
            mount_setattr: self.sandbox.mount_setattr,
            log_max_bytes: self.cfg.log_max_mb << 20,
            kill_grace_s: spec.kill_grace_s,
            notify_socket: self.data.notify_socket(),
            oom_score_adj: self.cfg.task_oom_score_adj,
            seccomp: self.security.seccomp,
            network_none: spec.network == crate::spec::Network::None,
            group_netns,
            shared,
            netns_dir: Some(self.data.netns_dir()),
        };
        // Input of one supervisor start: no fsync needed, it is rewritten on
        // every launch and never read during recovery. 0600: it may hold the
        // task's token.
        let json = serde_json::to_vec(&launch).map_err(|e| e.to_string())?;
        write_private(&dir.launch_json(), &json)
            .map_err(|e| format!("write {}: {e}", dir.launch_json().display()))?;
        t.record.status.cgroup = Some(handle.path);
        stages.mark("launch_json");
        Ok(())
    }
}
