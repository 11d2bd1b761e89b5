//! A real etcd and real scheduler replicas with agents simulated by etcd
//! writes, for the Marathon API tests (shared by tests/api.rs and tests/marathon.rs).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on free ports, killed and removed on drop.
pub struct Etcd {
    pub endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
    /// With auth on: root's password (what `ctl` uses) and the scheduler
    /// user's password file, made by `scripts/etcd-auth-setup.sh`.
    pub root_password: Option<String>,
    pub scheduler_password_file: Option<std::path::PathBuf>,
}

impl Etcd {
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("SKIP: etcd is not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("gleaner-sched-etcd-")
            .tempdir()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let etcd = Etcd {
            endpoint,
            child,
            _dir: dir,
            root_password: None,
            scheduler_password_file: None,
        };
        let start = Instant::now();
        while etcd.ctl(&["endpoint", "health"]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(etcd)
    }

    /// As `start`, then auth on (root, gleaner-agent, gleaner-scheduler
    /// users); `ctl` acts as root. `FakeAgents` do not log in: they are for
    /// etcd without auth.
    pub fn start_with_auth() -> Option<Etcd> {
        let mut etcd = Self::start()?;
        let out = etcd._dir.path().join("auth");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd-auth-setup.sh");
        let run = Command::new("sh")
            .arg(&script)
            .args(["--prefix", "/gleaner", "--out"])
            .arg(&out)
            .env("ETCDCTL_ENDPOINTS", &etcd.endpoint)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let root = std::fs::read_to_string(out.join("etcd-root-password")).unwrap();
        etcd.root_password = Some(root.trim().to_owned());
        etcd.scheduler_password_file = Some(out.join("etcd-scheduler-password"));
        Some(etcd)
    }

    /// Scheduler TOML naming its etcd user (empty without auth).
    pub fn scheduler_toml(&self) -> String {
        match &self.scheduler_password_file {
            Some(f) => format!(
                "etcd_username = \"gleaner-scheduler\"\netcd_password_file = {:?}\n",
                f.display().to_string()
            ),
            None => String::new(),
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout=3s"]);
        if let Some(pw) = &self.root_password {
            cmd.arg(format!("--user=root:{pw}"));
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn put(&self, key: &str, value: &Value) {
        self.ctl(&["put", key, &value.to_string()]).unwrap();
    }

    pub fn del(&self, key: &str) {
        self.ctl(&["del", key]).unwrap();
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        let out = self.ctl(&["get", key, "--print-value-only"]).unwrap();
        (!out.trim().is_empty()).then(|| serde_json::from_str(out.trim()).unwrap())
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", prefix, "--prefix", "--keys-only"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scheduler replica; SIGTERM then kill on drop.
pub struct Scheduler {
    pub url: String,
    pub child: Option<Child>,
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Scheduler {
    pub fn start(etcd: &Etcd, name: &str, extra_config: &str) -> Scheduler {
        Self::start_bin(
            env!("CARGO_BIN_EXE_gleaner-scheduler"),
            etcd,
            name,
            extra_config,
        )
    }

    /// A replica from another build of the binary (before/after figures).
    pub fn start_bin(bin: &str, etcd: &Etcd, name: &str, extra_config: &str) -> Scheduler {
        Self::start_opts(bin, etcd, name, extra_config, true)
    }

    /// A replica without `--token-file`: its API takes any request (the
    /// default configuration). `token` stays empty.
    #[allow(dead_code)]
    pub fn start_without_token(etcd: &Etcd, name: &str) -> Scheduler {
        Self::start_opts(
            env!("CARGO_BIN_EXE_gleaner-scheduler"),
            etcd,
            name,
            "",
            false,
        )
    }

    fn start_opts(
        bin: &str,
        etcd: &Etcd,
        name: &str,
        extra_config: &str,
        with_token: bool,
    ) -> Scheduler {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("t-{name}-secret");
        std::fs::write(dir.path().join("token"), &token).unwrap();
        // A token file others may read is refused.
        std::fs::set_permissions(
            dir.path().join("token"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let port = free_port();
        let config = dir.path().join("scheduler.toml");
        std::fs::write(
            &config,
            format!("name = \"{name}\"\npass_interval_ms = 20\n{extra_config}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--etcd",
            &etcd.endpoint,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        if with_token {
            cmd.arg("--token-file").arg(dir.path().join("token"));
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Scheduler {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            token: if with_token { token } else { String::new() },
            _dir: dir,
        };
        wait_for(Duration::from_secs(10), "scheduler answers", || {
            s.call("GET", "/v1/health", None).0 == 200
        });
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_raw(method, path, body.map(|b| b.to_string()), Some(&self.token))
    }

    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let client = http_client();
        let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        match req.timeout(Duration::from_secs(10)).send() {
            Ok(r) => {
                let code = r.status().as_u16();
                let text = r.text().unwrap_or_default();
                (
                    code,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = nix_kill(c.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "scheduler ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn nix_kill(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn node_info(node: &str, cpus: f64, attrs: Value) -> Value {
    json!({
        "node": node, "address": "127.0.0.1", "agent_url": "http://127.0.0.1:1",
        "version": "test",
        "roles": {"batch": {"reserved": {"cpus": cpus, "mem_mb": 4096}, "allocated": {"cpus": 0, "mem_mb": 0}}},
        "attributes": attrs, "port_ranges": [[31000, 32000]],
        "reported_at": "2026-11-22T10:00:00Z"
    })
}

pub fn task_record(task: &str, node: &str, state: &str) -> Value {
    json!({
        "id": task, "role": "batch", "state": state, "reason": null,
        "exit_code": null, "signal": null, "pid": null, "cgroup": null, "sandbox": null,
        "resources": {"cpus": 1, "mem_mb": 64},
        "submitted_at": "2026-11-22T10:00:00Z", "started_at": null, "finished_at": null,
        "restarts": 0, "node": node
    })
}

impl Scheduler {
    /// Status, headers (lower-case names) and body (JSON, or the text).
    pub fn call_full(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, std::collections::BTreeMap<String, String>, Value) {
        let client = http_client();
        let mut req = client
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let r = req.timeout(Duration::from_secs(10)).send().unwrap();
        let code = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = r.text().unwrap_or_default();
        (
            code,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Agents simulated through etcd: a placement becomes a RUNNING task
/// record after `start_delay`; a record whose placement went becomes
/// KILLED; task ids in `fail` are reported FAILED, those in `drain`
/// DRAINED. Stops on drop.
pub struct FakeAgents {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub fail: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pub drain: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgents {
    pub fn start(endpoint: &str, start_delay: Duration) -> FakeAgents {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fail = std::sync::Arc::new(std::sync::Mutex::new(
            std::collections::HashSet::<String>::new(),
        ));
        let drain = std::sync::Arc::new(std::sync::Mutex::new(
            std::collections::HashSet::<String>::new(),
        ));
        let (s, f, d) = (stop.clone(), fail.clone(), drain.clone());
        let endpoint = endpoint.to_owned();
        let thread = std::thread::spawn(move || {
            let ctl = |args: &[&str]| -> String {
                let out = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &endpoint, "--command-timeout=3s"])
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let mut seen: std::collections::HashMap<String, Instant> = Default::default();
            while !s.load(Ordering::Relaxed) {
                let placed: Vec<(String, String)> =
                    ctl(&["get", "/gleaner/placements/", "--prefix", "--keys-only"])
                        .lines()
                        .filter_map(|l| {
                            let rest = l.strip_prefix("/gleaner/placements/")?;
                            let (n, t) = rest.split_once('/')?;
                            Some((n.to_owned(), t.to_owned()))
                        })
                        .collect();
                let records: std::collections::HashMap<String, Value> =
                    ctl(&["get", "/gleaner/tasks/", "--prefix", "--print-value-only"])
                        .lines()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .map(|v| (v["id"].as_str().unwrap_or("").to_owned(), v))
                        .collect();
                let failing = f.lock().unwrap().clone();
                let draining = d.lock().unwrap().clone();
                for (node, task) in &placed {
                    let state = records
                        .get(task)
                        .map(|r| r["state"].as_str().unwrap_or("").to_owned());
                    let first = *seen.entry(task.clone()).or_insert_with(Instant::now);
                    let want = if failing.contains(task) {
                        "FAILED"
                    } else if draining.contains(task) {
                        "DRAINED"
                    } else if first.elapsed() >= start_delay {
                        "RUNNING"
                    } else {
                        "STAGING"
                    };
                    if state.as_deref() != Some(want)
                        && !matches!(state.as_deref(), Some("FAILED" | "KILLED" | "DRAINED"))
                    {
                        let mut rec = task_record(task, node, want);
                        rec["started_at"] = json!("2026-11-22T10:00:01Z");
                        ctl(&["put", &format!("/gleaner/tasks/{task}"), &rec.to_string()]);
                    }
                }
                for (task, rec) in &records {
                    let node = rec["node"].as_str().unwrap_or("");
                    let live = matches!(rec["state"].as_str(), Some("RUNNING" | "STAGING"));
                    if live && !placed.iter().any(|(n, t)| n == node && t == task) {
                        let rec = task_record(task, node, "KILLED");
                        ctl(&["put", &format!("/gleaner/tasks/{task}"), &rec.to_string()]);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        FakeAgents {
            stop,
            fail,
            drain,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeAgents {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP client. In a workspace build reqwest's features are unified with
/// the agent's `rustls-no-provider`, so a process must install a crypto
/// provider before the first client (it panics otherwise).
pub fn http_client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::new()
}
