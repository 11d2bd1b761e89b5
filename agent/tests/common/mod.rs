//! Test harness: a real agent process on a free loopback port, with its own
//! data dir, its own cgroup root and a busybox rootfs. Everything it made is
//! removed on drop: processes, cgroups, files.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod files;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gleaner_agent::client::{Client, ClientError};
use gleaner_agent::status::{TaskState, TaskStatus};
use serde_json::Value;

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_gleaner-agent");
pub const CLI_BIN: &str = env!("CARGO_BIN_EXE_gleaner");

/// Tests that need root call this first and return when it says false.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP {test}: needs root (real cgroups, namespaces and chroot)");
    false
}

/// Polls `ready` every 200 µs until it holds; panics after `limit`.
/// Returns how long it took.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    start.elapsed()
}

/// A number from the environment (benchmark sizes), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal rootfs: static busybox and its applet links.
pub fn make_busybox_rootfs(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed (apt-get install busybox-static)");
    for d in ["bin", "etc", "proc", "dev", "tmp", "sandbox"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestAgent {
    pub base: String,
    /// Over TCP with the admin token (the agent makes it at first start).
    pub client: Client,
    /// The admin bearer token.
    pub token: String,
    pub token_path: PathBuf,
    pub cgroup_root: String,
    pub rootfs: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Set on the agent process at each (re)start (test hooks, say).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    tmp: tempfile::TempDir,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        Self::start_with("")
    }

    /// Starts an agent; `extra` is appended to its TOML config.
    pub fn start_with(extra: &str) -> TestAgent {
        Self::start_with_env(extra, &[])
    }

    /// [`Self::start_with`], with `env` set on the agent process.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> TestAgent {
        let tmp = tempfile::Builder::new()
            .prefix("gleaner-test-")
            .tempdir()
            .unwrap();
        // `{tmp}` in the extra config is this agent's temporary dir.
        let extra = &extra.replace("{tmp}", &tmp.path().display().to_string());
        let rootfs = tmp.path().join("rootfs");
        make_busybox_rootfs(&rootfs);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup_root = format!("gleaner-test-{}-{n}", std::process::id());
        let port = free_port();
        let data_dir = tmp.path().join("data");
        let config_path = tmp.path().join("agent.toml");
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ncgroup_root = {cgroup_root:?}\ndefault_rootfs = {:?}\nrootfs_dirs = [{:?}]\n{extra}\n",
            data_dir.display().to_string(),
            rootfs.display().to_string(),
            tmp.path().display().to_string(),
        );
        fs::write(&config_path, config).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let token_path = match extra.strip_prefix("token_file = ") {
            Some(path) => PathBuf::from(path.trim().trim_matches('"')),
            None => data_dir.join("api.token"),
        };
        let mut agent = TestAgent {
            client: Client::new(&base, None),
            token: String::new(),
            token_path,
            base,
            cgroup_root,
            rootfs,
            data_dir,
            log_path: tmp.path().join("agent.log"),
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            tmp,
        };
        agent.spawn();
        agent
    }

    /// An agent that demands `Authorization: Bearer <token in file>`.
    pub fn start_with_token(token_file: &Path) -> TestAgent {
        Self::start_with(&format!(
            "token_file = {:?}",
            token_file.display().to_string()
        ))
    }

    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// (Re)starts the agent process and waits for /v1/health.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        // A bench may run another build in place of this one (its A/B).
        let bin = std::env::var_os("GLEANER_TEST_AGENT_BIN").unwrap_or_else(|| AGENT_BIN.into());
        let child = Command::new(bin)
            .arg("--config")
            .arg(&self.config_path)
            .env("GLEANER_LOG", "info,gleaner_agent=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.token.is_empty() {
                if let Ok(t) = fs::read_to_string(&self.token_path) {
                    self.token = t.trim().to_owned();
                    self.client = Client::new(&self.base, Some(self.token.clone()));
                }
            }
            if !self.token.is_empty() && self.client.get::<Value>("/v1/health").is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {status}:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not become healthy:\n{}", self.log_tail());
    }

    /// Runs the agent expecting it to refuse to start; returns its exit code
    /// and stderr. Panics if it keeps running.
    pub fn start_expecting_failure(&self) -> (Option<i32>, String) {
        let mut child = Command::new(AGENT_BIN)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), err);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent started although it should have refused");
    }

    pub fn task_json(&self, id: &str) -> PathBuf {
        self.data_dir.join("tasks").join(id).join("task.json")
    }

    pub fn agent_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Stops the agent process with `signal` and reaps it.
    pub fn stop_agent(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A value of the agent's /metrics, by its name; panics with the whole
    /// text when it is not there.
    pub fn metric<T: std::str::FromStr>(&self, name: &str) -> T {
        let text = self.client.get_text("/metrics").unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    pub fn submit(&self, spec: Value) -> Result<TaskStatus, ClientError> {
        self.client.post("/v1/tasks", &spec)
    }

    pub fn status(&self, id: &str) -> TaskStatus {
        self.client.get(&format!("/v1/tasks/{id}")).unwrap()
    }

    pub fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&TaskStatus) -> bool,
    ) -> TaskStatus {
        let start = Instant::now();
        loop {
            let s = self.status(id);
            if pred(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "task {id} did not reach the expected state in {timeout:?}: {s:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_final(&self, id: &str, timeout: Duration) -> TaskStatus {
        self.wait_for(id, timeout, |s| s.state.is_final())
    }

    pub fn wait_state(&self, id: &str, state: TaskState, timeout: Duration) -> TaskStatus {
        self.wait_for(id, timeout, |s| s.state == state)
    }

    /// Runs the `gleaner` CLI against this agent, found through its config
    /// (so over its Unix socket, as root).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(CLI_BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .unwrap()
    }

    /// The agent's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("run/api.sock")
    }

    /// A client over the Unix socket.
    pub fn socket_client(&self) -> Client {
        Client::unix(&self.socket())
    }

    /// DELETE /v1/tasks/{id}, then its final status.
    pub fn kill(&self, id: &str) -> TaskStatus {
        self.client
            .delete::<Value>(&format!("/v1/tasks/{id}"))
            .unwrap();
        self.wait_final(id, Duration::from_secs(30))
    }

    /// Waits until the task's stdout contains `needle`.
    pub fn wait_output(&self, id: &str, needle: &str) {
        let start = Instant::now();
        while !self.logs(id, "stdout").contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} never printed {needle:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self, id: &str, stream: &str) -> String {
        self.client
            .get_text(&format!("/v1/tasks/{id}/logs?stream={stream}"))
            .unwrap()
    }

    /// The task's cgroup dir in `controller`.
    pub fn cgroup_dir(&self, controller: &str, rel: &str) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/cgroup/{controller}/{}/{rel}",
            self.cgroup_root
        ))
    }

    pub fn read_cgroup(&self, controller: &str, rel: &str, file: &str) -> String {
        fs::read_to_string(self.cgroup_dir(controller, rel).join(file))
            .unwrap_or_else(|e| panic!("{controller}/{rel}/{file}: {e}"))
            .trim()
            .to_owned()
    }

    /// Task cgroups left under the root, in any hierarchy.
    pub fn leftover_task_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            let root = PathBuf::from(format!("/sys/fs/cgroup/{c}/{}", self.cgroup_root));
            for role in subdirs(&root) {
                out.extend(subdirs(&role));
            }
        }
        out
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in the cgroup tree and removes it, deepest first.
pub fn destroy_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let start = Instant::now();
    while dir.exists() && start.elapsed() < Duration::from_secs(10) {
        kill_tree(dir);
        remove_tree(dir);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_tree(dir: &Path) {
    // A frozen cgroup's processes take no signal until thawed.
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for d in subdirs(dir) {
        kill_tree(&d);
    }
}

fn remove_tree(dir: &Path) {
    for d in subdirs(dir) {
        remove_tree(&d);
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("{}.agent.log", self.cgroup_root));
            let _ = fs::copy(&self.log_path, &keep);
            eprintln!(
                "--- agent log (all of it: {}) ---\n{}",
                keep.display(),
                self.log_tail()
            );
        }
        self.stop_agent(libc::SIGKILL);
        for c in ["cpu", "cpuacct", "memory", "pids", "cpu,cpuacct", "freezer"] {
            destroy_cgroup_tree(&PathBuf::from(format!(
                "/sys/fs/cgroup/{c}/{}",
                self.cgroup_root
            )));
        }
        // Supervisors whose cgroup is gone end on their own; give them a moment
        // so that nothing writes into the data dir while it is removed.
        kill_supervisors(&self.data_dir);
        // The agent makes its tasks dir a nosuid,nodev bind mount.
        unmount_tasks_dir(&self.data_dir);
        cluster::unmount_netns_dir(&self.data_dir);
    }
}

/// Removes the agent's nosuid,nodev bind of `<data_dir>/tasks` (every
/// layer, if several agents ran on this data dir).
pub fn unmount_tasks_dir(data_dir: &Path) {
    let tasks = data_dir.join("tasks");
    for _ in 0..8 {
        if nix::mount::umount2(&tasks, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Pids of this agent's supervisors (and inits): their stderr is a
/// `supervisor.log` under the data dir.
pub fn supervisor_pids(data_dir: &Path) -> Vec<i32> {
    let needle = data_dir.display().to_string();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/fd/2"))
                .map(|p| {
                    let p = p.to_string_lossy();
                    p.starts_with(&needle) && p.contains("supervisor.log")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Supervisors are outside the task cgroups: kill them by their log fd.
pub fn kill_supervisors(data_dir: &Path) {
    for _ in 0..50 {
        let pids = supervisor_pids(data_dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another binary of the workspace, built beside the agent by
/// `cargo build --workspace`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let bin = PathBuf::from(AGENT_BIN).parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

pub fn spec(cmd: &str) -> Value {
    serde_json::json!({"cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 64}})
}
