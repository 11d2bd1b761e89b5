//! Where things live under the data dir. One place, so the agent, the
//! supervisor and recovery agree on every path.
//!
//! ```text
//! <data-dir>/
//!   agent.lock               flock held by the one agent of this dir; its pid
//!   reservations.json        per-role reservations           (agent writes)
//!   attributes.json          last dynamic attributes seen    (agent writes)
//!   run/notify.sock          supervisors report exits here (datagram)
//!   run/netns/<home>         a task group's network namespace, held by a
//!                            bind mount (`<home>`: the group's first member)
//!   images/<sha256>/rootfs/  a fetched image, shared read-only (see `images`)
//!   tasks/<id>/task.json     spec + agent-side status        (agent writes)
//!   tasks/<id>/launch.json   what the supervisor executes    (agent writes)
//!   tasks/<id>/stop.json     why the agent asked it to stop  (agent writes)
//!   tasks/<id>/supervisor.json  pids and start time          (supervisor writes)
//!   tasks/<id>/supervisor.lock  flock held while a supervisor lives
//!   tasks/<id>/exit.json     exit status                     (supervisor writes)
//!   tasks/<id>/supervisor.log
//!   tasks/<id>/stdout, stderr  the task's output, capped   (supervisor writes)
//!   tasks/<id>/tmp/          the task's private /tmp         (task writes)
//!   tasks/<id>/sandbox/      working dir (/sandbox)          (task writes)
//!   tasks/<home>/shared/     a task group's shared volume, in its first
//!                            member's dir                    (members write)
//! ```
//!
//! A task can write only below `sandbox/` and `tmp/` (bind-mounted into its
//! root). Everything the agent or a supervisor reads back or appends to sits
//! beside them, where the task has no name to plant a link or a FIFO.

use std::path::{Path, PathBuf};

/// Mount point of the sandbox inside the task's rootfs; its working dir.
pub const SANDBOX_IN_ROOTFS: &str = "/sandbox";
/// Directories every rootfs needs as mount points.
pub const MOUNT_POINTS: [&str; 4] = ["proc", "dev", "tmp", "sandbox"];

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn attributes_json(&self) -> PathBuf {
        self.root.join("attributes.json")
    }
    /// The lease id of the node's last etcd registration.
    pub fn etcd_lease(&self) -> PathBuf {
        self.root.join("etcd-lease")
    }

    pub fn reservations_json(&self) -> PathBuf {
        self.root.join("reservations.json")
    }
    /// The rootfs image cache (see `images`).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn notify_socket(&self) -> PathBuf {
        self.run().join("notify.sock")
    }
    /// Where the network namespaces of task groups are held.
    pub fn netns_dir(&self) -> PathBuf {
        self.run().join("netns")
    }
    /// The network namespace of the group whose first member is `home`.
    pub fn netns(&self, home: &str) -> PathBuf {
        self.netns_dir().join(home)
    }
    pub fn task(&self, id: &str) -> TaskDir {
        TaskDir::new(self.tasks().join(id))
    }
}

#[derive(Debug, Clone)]
pub struct TaskDir {
    root: PathBuf,
}

impl TaskDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TaskDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn task_json(&self) -> PathBuf {
        self.root.join("task.json")
    }
    pub fn launch_json(&self) -> PathBuf {
        self.root.join("launch.json")
    }
    pub fn stop_json(&self) -> PathBuf {
        self.root.join("stop.json")
    }
    pub fn supervisor_json(&self) -> PathBuf {
        self.root.join("supervisor.json")
    }
    pub fn exit_json(&self) -> PathBuf {
        self.root.join("exit.json")
    }
    /// flock held by the task's supervisor for its whole life, taken by the
    /// zygote before the fork: "a supervisor of this task exists".
    pub fn supervisor_lock(&self) -> PathBuf {
        self.root.join("supervisor.lock")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn sandbox(&self) -> PathBuf {
        self.root.join("sandbox")
    }
    /// Root-only staging of the task's `fetch` downloads, on the sandbox's
    /// file system (moved in by rename), outside anything the task sees.
    pub fn fetch_staging(&self) -> PathBuf {
        self.root.join("fetch.tmp")
    }
    /// The shared volume of the group this task is the first member of.
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }
    /// The task's captured output, outside what the task can write.
    pub fn stdout(&self) -> PathBuf {
        self.root.join("stdout")
    }
    pub fn stderr(&self) -> PathBuf {
        self.root.join("stderr")
    }
}
