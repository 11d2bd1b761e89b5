//! A real etcd for tests: free loopback ports, a temp data dir, killed and
//! removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    pub endpoint: String,
    peer: String,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd, or returns None with a message when it is not installed.
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("SKIP: etcd is not installed (apt-get install etcd-server etcd-client)");
            return None;
        }
        let data = tempfile::Builder::new()
            .prefix("gleaner-etcd-")
            .tempdir()
            .unwrap();
        let mut etcd = Etcd {
            endpoint: format!("http://127.0.0.1:{}", super::free_port()),
            peer: format!("http://127.0.0.1:{}", super::free_port()),
            data,
            child: None,
        };
        etcd.spawn();
        Some(etcd)
    }

    fn dir(&self) -> PathBuf {
        self.data.path().join("member-data")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir())
            .args([
                "--listen-client-urls",
                &self.endpoint,
                "--advertise-client-urls",
                &self.endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
            ])
            .args(["--initial-cluster", &format!("test={}", self.peer)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.ctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become healthy");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs etcdctl (API v3) against this etcd; stdout on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout=3s"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]).unwrap();
    }

    pub fn del(&self, key: &str) {
        self.ctl(&["del", key]).unwrap();
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", key, "--print-value-only"]).unwrap();
        let v = out.trim_end_matches('\n');
        (!out.is_empty()).then(|| v.to_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
