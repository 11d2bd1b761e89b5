//! Fleet test harness: a 3-member etcd cluster, agents and scheduler
//! replicas, each a separate process on free loopback ports with its own
//! data dir (agents: own node id, cgroup root, attributes). Members can be
//! killed and restarted one by one or all at once. Everything is killed and
//! removed on drop: processes, task supervisors, cgroups, files.
//!
//! Self-contained (no `CARGO_BIN_EXE_*`), so other crates' tests include it
//! with `#[path]`; binaries are found beside the test executable
//! (`cargo build --workspace` first).
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `target/<profile>/<name>`, built by `cargo build --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub fn have_etcd() -> bool {
    if Command::new("etcd").arg("--version").output().is_ok() {
        return true;
    }
    eprintln!("SKIP: etcd is not installed (apt-get install etcd-server etcd-client)");
    false
}

/// Polls `ready` every 10 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn log_file(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub use nix::sys::signal::Signal;

fn signal(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn kill_child(child: &mut Option<Child>, sig: Signal) {
    if let Some(mut c) = child.take() {
        signal(c.id() as i32, sig);
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------- etcd

struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

/// A real etcd cluster of `n` members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    tmp: tempfile::TempDir,
    /// With auth on: the password files `scripts/etcd-auth-setup.sh` made.
    pub auth: Option<EtcdAuth>,
}

/// etcd users made by `scripts/etcd-auth-setup.sh` (prefix /gleaner).
#[derive(Clone)]
pub struct EtcdAuth {
    pub root_password: String,
    pub agent_password_file: PathBuf,
    pub scheduler_password_file: PathBuf,
}

impl EtcdAuth {
    /// Agent TOML lines naming the agent's user and password file.
    pub fn agent_toml(&self) -> String {
        format!(
            "etcd_username = \"gleaner-agent\"\netcd_password_file = {:?}\n",
            self.agent_password_file.display().to_string()
        )
    }

    pub fn scheduler_toml(&self) -> String {
        format!(
            "etcd_username = \"gleaner-scheduler\"\netcd_password_file = {:?}\n",
            self.scheduler_password_file.display().to_string()
        )
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits for a healthy cluster; None (with a
    /// message) when etcd is not installed.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        if !have_etcd() {
            return None;
        }
        // On tmpfs when there is one: etcd fsyncs its WAL on every write,
        // and on this shared, busy disk an fsync took seconds (a watch
        // event 3.6 s after its put). A dedicated etcd disk is the
        // production setup; tmpfs stands in for it.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("gleaner-etcd-cluster-")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new()
                .prefix("gleaner-etcd-cluster-")
                .tempdir()
        }
        .unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            tmp,
            auth: None,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        Some(cluster)
    }

    /// As `start`, then auth on through `scripts/etcd-auth-setup.sh`: root,
    /// gleaner-agent and gleaner-scheduler users; `ctl` acts as root.
    pub fn start_with_auth(n: usize) -> Option<EtcdCluster> {
        let mut cluster = Self::start(n)?;
        let out = cluster.tmp.path().join("auth");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd-auth-setup.sh");
        let run = Command::new("sh")
            .arg(&script)
            .args(["--prefix", "/gleaner", "--out"])
            .arg(&out)
            .env("ETCDCTL_ENDPOINTS", cluster.endpoints_csv())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        cluster.auth = Some(EtcdAuth {
            root_password: fs::read_to_string(out.join("etcd-root-password"))
                .unwrap()
                .trim()
                .to_owned(),
            agent_password_file: out.join("etcd-agent-password"),
            scheduler_password_file: out.join("etcd-scheduler-password"),
        });
        cluster.wait_healthy(Duration::from_secs(30));
        Some(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let dir = self.tmp.path().join(&self.members[i].name);
        let log = log_file(
            &self
                .tmp
                .path()
                .join(format!("{}.log", self.members[i].name)),
        );
        let m = &mut self.members[i];
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &m.client])
            .args(["--advertise-client-urls", &m.client])
            .args(["--listen-peer-urls", &m.peer])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "gleaner-test"])
            // Loopback: short heartbeats make elections fast after a kill.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--quota-backend-bytes", &(4u64 << 30).to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    pub fn wait_healthy(&self, limit: Duration) -> Duration {
        wait_until(limit, "a healthy etcd cluster", || {
            self.ctl(&["put", "/gleaner-test/health", "ok"]).is_ok()
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Endpoints of the members that run now.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client.clone())
            .collect()
    }

    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    pub fn kill_member(&mut self, i: usize) {
        kill_child(&mut self.members[i].child, Signal::SIGKILL);
    }

    pub fn restart_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} runs");
        self.spawn(i);
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Restarts every stopped member and waits for quorum.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// etcdctl (API v3) against the live members; stdout on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.live_endpoints().join(",")])
            .args(["--command-timeout=3s", "--dial-timeout=2s"]);
        if let Some(a) = &self.auth {
            cmd.arg(format!("--user=root:{}", a.root_password));
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// etcdctl, retried for up to 10 s (a leader election after a member
    /// was killed fails requests for a moment).
    pub fn ctl_retry(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            match self.ctl(args) {
                Ok(out) => return out,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!("etcdctl {args:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl_retry(&["put", key, value]);
    }

    pub fn del(&self, key: &str) {
        self.ctl_retry(&["del", key]);
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"]).ok()?;
        (!out.is_empty()).then(|| out.trim_end_matches('\n').to_owned())
    }

    pub fn get_json(&self, key: &str) -> Option<Value> {
        self.get(key).and_then(|v| serde_json::from_str(&v).ok())
    }

    /// Every key under `prefix` with its JSON value (others skipped).
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, Value)> {
        let out = self
            .ctl(&["get", "--prefix", prefix, "-w", "json"])
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        let b64 = |s: &str| {
            use base64_lite::decode;
            decode(s)
        };
        v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                let key = String::from_utf8(b64(kv["key"].as_str()?)).ok()?;
                let value = serde_json::from_slice(&b64(kv["value"].as_str()?)).ok()?;
                Some((key, value))
            })
            .collect()
    }

    /// Keys under `prefix` (values not read).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", prefix, "--keys-only"])
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn log_tail(&self, i: usize) -> String {
        tail(
            &self
                .tmp
                .path()
                .join(format!("{}.log", self.members[i].name)),
            20,
        )
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// etcdctl's JSON output has base64 keys and values.
mod base64_lite {
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter_map(val) {
            acc = (acc << 6) | c;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}

// ---------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 client (one request per connection): the harness
/// talks to agents and schedulers without depending on either crate.
pub fn http(
    method: &str,
    url: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("http:// only")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------- agents

/// A static busybox rootfs that every agent of a fleet uses.
pub fn make_busybox_rootfs(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed (apt-get install busybox-static)");
    for d in ["bin", "etc", "proc", "dev", "tmp", "sandbox"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "echo", "cat", "true", "false", "hostname"] {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
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

/// One `gleaner-agent --etcd` process: own node id, data dir, cgroup root,
/// port and attributes.
pub struct FleetAgent {
    pub node: String,
    pub url: String,
    pub data_dir: PathBuf,
    pub cgroup_root: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Set when the process exited at start.
    pub exit_code: Option<i32>,
    _tmp: tempfile::TempDir,
}

impl FleetAgent {
    /// Starts an agent in fleet mode; `extra` is appended to its TOML
    /// (e.g. `initial_reservation`).
    pub fn start(
        node: &str,
        etcd: &[String],
        rootfs: &Path,
        attributes: &[(&str, &str)],
        extra: &str,
    ) -> FleetAgent {
        let mut agent = Self::prepare(node, etcd, rootfs, attributes, extra);
        if let Err(e) = agent.try_spawn() {
            panic!("agent {node}: {e}");
        }
        agent
    }

    /// As `start`, but an agent that exits at start is an Err with its
    /// exit code and log (cleaned up on return).
    pub fn try_start(
        node: &str,
        etcd: &[String],
        rootfs: &Path,
        attributes: &[(&str, &str)],
        extra: &str,
    ) -> Result<FleetAgent, (Option<i32>, String)> {
        let mut agent = Self::prepare(node, etcd, rootfs, attributes, extra);
        match agent.try_spawn() {
            Ok(()) => Ok(agent),
            Err(_) => Err((
                agent.exit_code,
                fs::read_to_string(&agent.log_path).unwrap_or_default(),
            )),
        }
    }

    fn prepare(
        node: &str,
        etcd: &[String],
        rootfs: &Path,
        attributes: &[(&str, &str)],
        extra: &str,
    ) -> FleetAgent {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("gleaner-fleet-{node}-"))
            .tempdir()
            .unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup_root = format!("gleaner-test-{}-f{n}", std::process::id());
        let port = free_port();
        let data_dir = tmp.path().join("data");
        let attrs: String = attributes
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ncgroup_root = {cgroup_root:?}\n\
             default_rootfs = {:?}\nnode_id = {node:?}\netcd = {etcd:?}\n{extra}\n[attributes]\n{attrs}",
            data_dir.display().to_string(),
            rootfs.display().to_string(),
        );
        let config_path = tmp.path().join("agent.toml");
        fs::write(&config_path, config).unwrap();
        FleetAgent {
            node: node.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
            cgroup_root,
            log_path: tmp.path().join("agent.log"),
            config_path,
            child: None,
            exit_code: None,
            _tmp: tmp,
        }
    }

    /// (Re)starts the process and waits until its API answers.
    pub fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("agent {}: {e}", self.node);
        }
    }

    /// Starts the process; Err if it exits before its API answers.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        let log = log_file(&self.log_path);
        let child = Command::new(bin("gleaner-agent"))
            .arg("--config")
            .arg(&self.config_path)
            .env("GLEANER_LOG", "info,gleaner_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if matches!(self.get("/v1/health"), Ok((200, _))) {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.exit_code = st.code();
                return Err(format!("exited with {st}:\n{}", self.log_tail()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent {} did not become healthy:\n{}",
                self.node,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's API token, if it made or was given one.
    fn token(&self) -> Option<String> {
        fs::read_to_string(self.data_dir.join("api.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http(
            "GET",
            &format!("{}{path}", self.url),
            None,
            self.token().as_deref(),
        )
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path).unwrap();
        assert_eq!(code, 200, "GET {path} on {}: {body}", self.node);
        serde_json::from_str(&body).unwrap()
    }

    /// The agent's tasks (GET /v1/tasks).
    pub fn tasks(&self) -> Vec<Value> {
        serde_json::from_value(self.get_json("/v1/tasks")).unwrap_or_default()
    }

    pub fn running(&self) -> Vec<Value> {
        self.tasks()
            .into_iter()
            .filter(|t| t["state"] == "RUNNING")
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the agent process alone (its tasks keep running).
    pub fn kill(&mut self, sig: Signal) {
        kill_child(&mut self.child, sig);
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 40)
    }
}

impl Drop for FleetAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.node, self.log_tail());
        }
        self.kill(Signal::SIGKILL);
        for c in ["cpu", "cpuacct", "memory", "pids", "cpu,cpuacct", "freezer"] {
            destroy_cgroup_tree(&PathBuf::from(format!(
                "/sys/fs/cgroup/{c}/{}",
                self.cgroup_root
            )));
        }
        kill_supervisors(&self.data_dir);
        // The agent makes its tasks dir a nosuid,nodev bind mount.
        let tasks = self.data_dir.join("tasks");
        while nix::mount::umount2(&tasks, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        unmount_netns_dir(&self.data_dir);
    }
}

/// Network namespaces of task groups are held by bind mounts, in
/// `<data_dir>/run/netns`, a private bind mount of itself (layers of both,
/// if an old agent's were hidden below): all unmounted.
pub fn unmount_netns_dir(data_dir: &Path) {
    let netns = data_dir.join("run/netns");
    for _ in 0..8 {
        for e in fs::read_dir(&netns).into_iter().flatten().flatten() {
            while nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        }
        if nix::mount::umount2(&netns, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
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
    fn kill_tree(dir: &Path) {
        // A frozen cgroup's processes take no signal until thawed.
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                signal(pid, Signal::SIGKILL);
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
    let start = Instant::now();
    while dir.exists() && start.elapsed() < Duration::from_secs(10) {
        kill_tree(dir);
        remove_tree(dir);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Supervisors (outside task cgroups) found by their stderr, a
/// `supervisor.log` under the data dir.
pub fn kill_supervisors(data_dir: &Path) {
    let needle = data_dir.display().to_string();
    for _ in 0..50 {
        let pids: Vec<i32> = fs::read_dir("/proc")
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
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- schedulers

/// One `gleaner-scheduler` replica.
pub struct SchedulerProc {
    pub url: String,
    pub port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl SchedulerProc {
    /// Starts a replica against `etcd`; `config` (TOML) is passed with
    /// `--config` when not empty.
    pub fn start(etcd: &[String], config: &str) -> SchedulerProc {
        let tmp = tempfile::Builder::new()
            .prefix("gleaner-scheduler-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut args = vec![
            "--etcd".to_owned(),
            etcd.join(","),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        if !config.is_empty() {
            let path = tmp.path().join("scheduler.toml");
            fs::write(&path, config).unwrap();
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let mut s = SchedulerProc {
            url: format!("http://127.0.0.1:{port}"),
            port,
            args,
            log_path: tmp.path().join("scheduler.log"),
            child: None,
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = log_file(&self.log_path);
        let child = Command::new(bin("gleaner-scheduler"))
            .args(&self.args)
            .env("GLEANER_LOG", "info,gleaner_scheduler=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while http("GET", &format!("{}/v1/leader", self.url), None, None).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("scheduler exited with {st}:\n{}", self.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "scheduler did not answer:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = http(method, &format!("{}{path}", self.url), body, None)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self, sig: Signal) {
        kill_child(&mut self.child, sig);
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 40)
    }
}

impl Drop for SchedulerProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- scheduler {} log ---\n{}", self.url, self.log_tail());
        }
        self.kill(Signal::SIGKILL);
    }
}

// ---------------------------------------------------------------- the fleet

/// etcd, agents and schedulers together. Dropped in reverse order of
/// dependency: schedulers, agents (and their tasks), then etcd.
pub struct Fleet {
    pub schedulers: Vec<SchedulerProc>,
    pub agents: Vec<FleetAgent>,
    pub etcd: EtcdCluster,
    pub rootfs: PathBuf,
    _tmp: tempfile::TempDir,
    /// One fleet at a time per test binary: each is a dozen processes on a
    /// small machine. Dropped last.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct AgentSpec<'a> {
    pub node: &'a str,
    pub attributes: Vec<(&'a str, &'a str)>,
    /// Extra agent TOML (e.g. a smaller `initial_reservation`).
    pub extra: String,
}

impl Fleet {
    /// A 3-member etcd cluster and the agents; no scheduler yet.
    pub fn start(agents: &[AgentSpec]) -> Option<Fleet> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let etcd = EtcdCluster::start(3)?;
        Some(Self::on(etcd, serial, agents))
    }

    /// As `start`, with etcd auth on: agents and schedulers use their own
    /// users (`scripts/etcd-auth-setup.sh`), the harness's etcdctl root.
    pub fn start_with_auth(agents: &[AgentSpec]) -> Option<Fleet> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let etcd = EtcdCluster::start_with_auth(3)?;
        Some(Self::on(etcd, serial, agents))
    }

    /// Agent TOML for this fleet's etcd (its user when auth is on).
    pub fn agent_extra(&self, extra: &str) -> String {
        let auth = self.etcd.auth.as_ref().map(|a| a.agent_toml());
        format!("{}{extra}", auth.unwrap_or_default())
    }

    fn on(
        etcd: EtcdCluster,
        serial: std::sync::MutexGuard<'static, ()>,
        agents: &[AgentSpec],
    ) -> Fleet {
        let tmp = tempfile::Builder::new()
            .prefix("gleaner-fleet-")
            .tempdir()
            .unwrap();
        let rootfs = tmp.path().join("rootfs");
        make_busybox_rootfs(&rootfs);
        let mut fleet = Fleet {
            schedulers: Vec::new(),
            agents: Vec::new(),
            etcd,
            rootfs,
            _tmp: tmp,
            _serial: serial,
        };
        for a in agents {
            fleet.add_agent(a);
        }
        fleet
    }

    /// Starts one more agent.
    pub fn add_agent(&mut self, a: &AgentSpec) -> &FleetAgent {
        let agent = FleetAgent::start(
            a.node,
            &self.etcd.endpoints(),
            &self.rootfs,
            &a.attributes,
            &self.agent_extra(&a.extra),
        );
        self.agents.push(agent);
        self.agents.last().unwrap()
    }

    pub fn add_scheduler(&mut self, config: &str) -> &SchedulerProc {
        let auth = self.etcd.auth.as_ref().map(|a| a.scheduler_toml());
        let config = format!("{}{config}", auth.unwrap_or_default());
        let s = SchedulerProc::start(&self.etcd.endpoints(), &config);
        self.schedulers.push(s);
        self.schedulers.last().unwrap()
    }

    pub fn agent(&self, node: &str) -> &FleetAgent {
        self.agents.iter().find(|a| a.node == node).unwrap()
    }

    pub fn agent_mut(&mut self, node: &str) -> &mut FleetAgent {
        self.agents.iter_mut().find(|a| a.node == node).unwrap()
    }

    /// Waits until every agent's `nodes/<node>/info` is in etcd.
    pub fn wait_registered(&self) {
        for a in &self.agents {
            wait_until(
                Duration::from_secs(30),
                &format!("{} registered", a.node),
                || {
                    self.etcd
                        .get(&format!("/gleaner/nodes/{}/info", a.node))
                        .is_some()
                },
            );
        }
    }

    /// `tasks/<id>` records, by id.
    pub fn task_records(&self) -> std::collections::BTreeMap<String, Value> {
        self.etcd
            .get_prefix("/gleaner/tasks/")
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("/gleaner/tasks/").to_owned(), v))
            .collect()
    }

    /// A scheduler replica that answers, preferring the leader.
    pub fn any_scheduler(&self) -> &SchedulerProc {
        self.schedulers
            .iter()
            .find(|s| s.is_running())
            .expect("no scheduler runs")
    }
}
