//! A small W3C WebDriver client over Debian's `chromedriver` and headless
//! `chromium` (no crate: the protocol is JSON over HTTP). The driver runs
//! in its own process group, killed with its browsers on drop.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Browser {
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _driver: Driver,
}

/// The driver's process group and the browser profile: killed and removed
/// on drop, also when the session never started.
struct Driver {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        // chrome_crashpad_handler leaves the group; it names our profile.
        // Wait until every process is gone, or the profile's removal races
        // with their last writes.
        let profile = self.profile.path().to_string_lossy().into_owned();
        let start = Instant::now();
        loop {
            let mut left = 0;
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&profile) {
                    left += 1;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if left == 0 || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(self.profile.path());
    }
}

fn which(name: &str) -> Option<String> {
    ["/usr/bin/", "/usr/local/bin/", "/usr/lib/chromium/"]
        .iter()
        .map(|d| format!("{d}{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

impl Browser {
    /// None (with a SKIP line) when chromium or chromedriver is missing.
    pub fn start(width: u32, height: u32) -> Option<Browser> {
        let (Some(driver_bin), Some(chromium)) = (which("chromedriver"), which("chromium")) else {
            eprintln!("SKIP: chromium and chromedriver are not installed (scripts/setup.sh)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::Builder::new()
            .prefix("gleaner-chromium-")
            .tempdir()
            .unwrap();
        let child = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let driver = Driver { child, profile };
        // reqwest is unified with the agent's rustls-no-provider in a
        // workspace build: a provider must be installed first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", driver.profile.path().display())]
            }
        }}});
        let mut b = Browser {
            base,
            session: String::new(),
            http,
            _driver: driver,
        };
        let v = b.cmd("POST", "/session", caps);
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a session id: {v}"))
            .to_owned();
        b.set_viewport(width, height);
        Some(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(60));
        if method != "GET" && method != "DELETE" {
            req = req.json(&body);
        }
        let r = req.send().expect("webdriver answers");
        let v: Value = r.json().expect("webdriver JSON");
        if v["value"]["error"].is_string() {
            panic!("webdriver {method} {path}: {}", v["value"]);
        }
        v
    }

    /// Resizes the window so that the viewport is width × height.
    pub fn set_viewport(&self, width: u32, height: u32) {
        let chrome = self.js(
            "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
        );
        let extra = |i: usize| chrome[i].as_u64().unwrap_or(0) as u32;
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width + extra(0), "height": height + extra(1)}),
        );
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` as WebDriver gives them).
    pub fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )["value"]
            .take()
    }

    /// Polls `script` until it returns something other than null/false.
    pub fn wait_js(&self, limit: Duration, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting in the browser: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn screenshot_png(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", Value::Null);
        base64_decode(v["value"].as_str().expect("base64 png"))
    }

    /// The browser console since the last call (chromedriver's log).
    pub fn console(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", json!({"type": "browser"}))["value"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn new_window(&self) -> String {
        self.cmd("POST", "/window/new", json!({"type": "window"}))["value"]["handle"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn switch_to(&self, handle: &str) {
        self.cmd("POST", "/window", json!({ "handle": handle }));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .timeout(Duration::from_secs(10))
                .send();
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
