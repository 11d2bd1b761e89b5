//! Start-up: reload task records, re-adopt live supervisors, learn the exits
//! that happened while the agent was down, and remove what nobody owns.

use std::sync::{Arc, Mutex};

use super::{cgroup_rel, Agent, StartError, Task, TaskRecord, TASK_SCHEMA};
use crate::fsutil::{self, FsError};
use crate::layout::TaskDir;
use crate::procfs_util::is_same_process;
use crate::status::{ExitRecord, TaskState};
use crate::supervisor::SupervisorRecord;

/// What to do with a task found on disk.
enum Plan {
    Keep,
    /// Its supervisor is alive: running, whatever task.json last said.
    Adopt(SupervisorRecord),
    ApplyExit,
    Relaunch,
    Lost(&'static str),
}

impl Agent {
    pub(super) fn recover(self: &Arc<Self>) -> Result<(), StartError> {
        let tasks_dir = self.data.tasks();
        let entries =
            std::fs::read_dir(&tasks_dir).map_err(|e| FsError::io("readdir", &tasks_dir, e))?;
        let mut plans = Vec::new();
        for entry in entries.flatten() {
            let dir = TaskDir::new(entry.path());
            if !dir.task_json().exists() {
                // Created but never acknowledged (crash before the first persist).
                let _ = std::fs::remove_dir_all(dir.root());
                continue;
            }
            let record: TaskRecord = fsutil::read_json(&dir.task_json()).map_err(|e| {
                StartError::State(format!(
                    "{e}; refusing to start (move the file away to discard that task)"
                ))
            })?;
            if record.schema > TASK_SCHEMA {
                return Err(StartError::State(format!(
                    "{}: schema {} is newer than this agent's {TASK_SCHEMA}; refusing to start",
                    dir.task_json().display(),
                    record.schema
                )));
            }
            let plan = self.plan(&record, &dir);
            let mut task = Task {
                record,
                dir,
                pending_stop: None,
            };
            if let Plan::ApplyExit | Plan::Lost(_) = plan {
                // on_exit and mark_lost act on running tasks.
                task.record.status.state = TaskState::Running;
            }
            if let Plan::Adopt(sup) = &plan {
                let st = &mut task.record.status;
                st.state = TaskState::Running;
                st.pid = Some(sup.task_pid);
                st.started_at = Some(sup.started_at);
                st.cgroup = Some(self.cgroups.handle(&cgroup_rel(&task.record.spec)).path);
                task.record.supervisor = Some(sup.clone());
            }
            let id = task.record.status.id.clone();
            let task = Arc::new(Mutex::new(task));
            self.tasks.lock().unwrap().insert(id.clone(), task.clone());
            plans.push((id, task, plan));
        }
        for (id, task, plan) in plans {
            let run = task.lock().unwrap().record.run;
            match plan {
                Plan::Keep | Plan::Adopt(_) => {}
                Plan::ApplyExit => self.on_exit(&id, run),
                Plan::Lost(why) => self.mark_lost(&task, why),
                Plan::Relaunch => {
                    let agent = self.clone();
                    tokio::spawn(async move { agent.launch(&task).await });
                }
            }
        }
        self.remove_orphan_cgroups();
        Ok(())
    }

    fn plan(&self, record: &TaskRecord, dir: &TaskDir) -> Plan {
        let state = record.status.state;
        if state.is_final() {
            return Plan::Keep;
        }
        if state == TaskState::Queued {
            return Plan::Relaunch;
        }
        let exit: Option<ExitRecord> = fsutil::read_json(&dir.exit_json()).ok();
        if exit.is_some_and(|e| e.run == record.run) {
            return Plan::ApplyExit;
        }
        if record.boot_id != self.boot_id {
            return Plan::Lost("the host rebooted while the task was running");
        }
        let sup: Option<SupervisorRecord> = fsutil::read_json(&dir.supervisor_json()).ok();
        match sup.filter(|s| s.run == record.run) {
            Some(s) if is_same_process(s.supervisor_pid, s.supervisor_start_ticks) => {
                Plan::Adopt(s)
            }
            Some(_) => Plan::Lost("supervisor vanished without an exit record"),
            None if state == TaskState::Staging => Plan::Relaunch,
            None => Plan::Lost("no supervisor record"),
        }
    }

    /// Task cgroups that belong to no live task are killed and removed.
    fn remove_orphan_cgroups(&self) {
        let live: std::collections::HashSet<String> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .filter_map(|t| {
                let t = t.lock().unwrap();
                (!t.record.status.state.is_final()).then(|| cgroup_rel(&t.record.spec))
            })
            .collect();
        for role in self.cgroups.children("").unwrap_or_default() {
            for task in self.cgroups.children(&role).unwrap_or_default() {
                let rel = format!("{role}/{task}");
                if !live.contains(&rel) {
                    tracing::warn!(cgroup = %rel, "removing cgroup of an unknown task (its processes are killed)");
                    if let Err(e) = self
                        .cgroups
                        .handle(&rel)
                        .destroy(std::time::Duration::from_secs(2))
                    {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
    }
}
