//! Issue 14 against real agents: a 3-member etcd, two scheduler replicas
//! with an admin token, three `gleaner-agent` processes running the
//! instances for real. Root only.
//!
//! The strangler test is a team's deploy script, unchanged but for the
//! host name: the same Marathon calls with the same JSON (POST the app,
//! wait until its deployment is gone, read its tasks' hosts and ports,
//! scale, PUT a new version and wait for the rolling restart, DELETE).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "fleet-admin-secret";

struct Marathon<'a> {
    fleet: &'a Fleet,
}

impl Marathon<'_> {
    /// One call as `curl -H "Authorization: Bearer $TOKEN"` makes it, to
    /// any replica (a 503 while etcd elects is retried, as a script would).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(TOKEN, method, path, body)
    }

    fn call_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let start = Instant::now();
        loop {
            let s = self.fleet.any_scheduler();
            let (code, text) = http(
                method,
                &format!("{}{path}", s.url),
                body.as_ref(),
                Some(token),
            )
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            if code != 503 || start.elapsed() > Duration::from_secs(15) {
                return (
                    code,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `until [ "$(curl /v2/deployments)" = "[]" ]; do sleep 1; done`
    fn wait_deployments_gone(&self, what: &str) -> Duration {
        wait_until(LONG, what, || {
            self.call("GET", "/v2/deployments", None).1 == json!([])
        })
    }

    fn tasks(&self, app: &str) -> Vec<Value> {
        let (code, v) = self.call("GET", &format!("/v2/apps{app}/tasks"), None);
        assert_eq!(code, 200, "{v}");
        v["tasks"].as_array().unwrap().clone()
    }
}

/// Task id → node, for tasks RUNNING on the agents now (ground truth).
fn running_on_agents(fleet: &Fleet) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in fleet.agents.iter().filter(|a| a.is_running()) {
        for t in a.running() {
            out.push((t["id"].as_str().unwrap().to_owned(), a.node.clone()));
        }
    }
    out
}

/// Every Marathon task of `app` is RUNNING on the agent its `host` names,
/// with one host port each; returns the task ids.
fn check_tasks_run_where_marathon_says(
    fleet: &Fleet,
    tasks: &[Value],
    ports: usize,
) -> BTreeSet<String> {
    let truth = running_on_agents(fleet);
    let mut ids = BTreeSet::new();
    for t in tasks {
        let id = t["id"].as_str().unwrap();
        let host = t["host"].as_str().unwrap();
        assert_eq!(t["state"], "TASK_RUNNING", "{t}");
        assert_eq!(t["slaveId"], t["host"], "{t}");
        assert!(
            truth.contains(&(id.to_owned(), host.to_owned())),
            "{id} is not RUNNING on {host}: {truth:?}"
        );
        let given = t["ports"].as_array().unwrap();
        assert_eq!(given.len(), ports, "{t}");
        for p in given {
            assert!((31000..=32000).contains(&p.as_u64().unwrap()), "{t}");
        }
        ids.insert(id.to_owned());
    }
    ids
}

fn fleet_with_token(names: &[&str]) -> Option<(Fleet, tempfile::TempDir)> {
    let mut specs = agents(names, 2.0, |_| vec![]);
    // The fetch test's file server is on loopback, refused unless allowed.
    // The agents share one host: each its own port range, or their
    // instances get the same (lowest free) port and all but one httpd
    // fail to bind (the health test then saw 2 healthy of 6 mid-restart).
    for (i, s) in specs.iter_mut().enumerate() {
        let lo = 31000 + 300 * i as u16;
        s.extra = format!(
            "fetch_allow_hosts = [\"127.0.0.1\"]\nport_range = [{lo}, {}]\n{}",
            lo + 299,
            s.extra
        );
    }
    let mut f = Fleet::start(&specs)?;
    f.wait_registered();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // A token file others may read is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!("token_file = {:?}\n", token_file.display().to_string());
    f.add_scheduler(&config);
    f.add_scheduler(&config);
    wait_until(LONG, "a leader", || {
        f.schedulers.iter().any(|s| {
            http("GET", &format!("{}/v1/leader", s.url), None, Some(TOKEN))
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["self"] == true)
        })
    });
    Some((f, dir))
}

#[test]
fn strangler_deploy_script_scoped_token_and_drain_on_real_agents() {
    if !require_root("strangler_deploy_script_scoped_token_and_drain_on_real_agents") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some((fleet, _token_dir)) = fleet_with_token(&names) else {
        return;
    };
    let m = Marathon { fleet: &fleet };

    // 1. The deploy script: POST the app.
    let app = json!({
        "id": "/team/web", "cmd": "sleep 1000", "cpus": 0.2, "mem": 32,
        "instances": 3, "portDefinitions": [{"port": 0, "protocol": "tcp"}],
        "taskKillGracePeriodSeconds": 1,
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0}
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(app));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["deployments"].as_array().unwrap().len(), 1, "{v}");
    let took = m.wait_deployments_gone("the start deployment gone");
    eprintln!("POST /v2/apps (3 instances) -> deployment gone: {took:?}");
    let tasks = m.tasks("/team/web");
    assert_eq!(tasks.len(), 3);
    let first = check_tasks_run_where_marathon_says(&fleet, &tasks, 1);
    let (_, v) = m.call("GET", "/v2/apps/team/web", None);
    assert_eq!(
        (
            v["app"]["tasksRunning"].as_u64(),
            v["app"]["instances"].as_u64()
        ),
        (Some(3), Some(3)),
        "{v}"
    );

    // Scale to 5: the 3 stay, 2 more.
    let (code, v) = m.call("PUT", "/v2/apps/team/web", Some(json!({"instances": 5})));
    assert_eq!(code, 200, "{v}");
    assert!(
        v["deploymentId"].is_string() && v["version"].is_string(),
        "{v}"
    );
    m.wait_deployments_gone("the scale deployment gone");
    let tasks = m.tasks("/team/web");
    assert_eq!(tasks.len(), 5);
    let scaled = check_tasks_run_where_marathon_says(&fleet, &tasks, 1);
    assert!(first.is_subset(&scaled), "a scale replaced instances");

    // A new version: a rolling restart, every instance replaced.
    let (code, v) = m.call(
        "PUT",
        "/v2/apps/team/web",
        Some(json!({"cmd": "sleep 2000"})),
    );
    assert_eq!(code, 200, "{v}");
    let version = v["version"].as_str().unwrap().to_owned();
    let took = m.wait_deployments_gone("the restart deployment gone");
    eprintln!("PUT new version (5 instances) -> deployment gone: {took:?}");
    let tasks = m.tasks("/team/web");
    assert_eq!(tasks.len(), 5);
    assert!(
        tasks.iter().all(|t| t["version"] == version.as_str()),
        "{tasks:?}"
    );
    let rolled = check_tasks_run_where_marathon_says(&fleet, &tasks, 1);
    assert!(
        rolled.is_disjoint(&scaled),
        "old instances survived the restart"
    );
    wait_until(LONG, "old instances gone from the agents", || {
        running_on_agents(&fleet)
            .iter()
            .all(|(id, _)| !scaled.contains(id))
    });

    // 2. A drain: an ssd-only app of 2 on distinct hosts; the ssd
    // attribute deleted on one of them moves that instance to the third.
    let db = json!({
        "id": "/team/db", "cmd": "sleep 1000", "cpus": 0.2, "mem": 32, "instances": 2,
        "constraints": [["ssd", "IS", "true"], ["hostname", "UNIQUE"]],
        "taskKillGracePeriodSeconds": 1
    });
    // Attributes through etcd (what an operator deletes to drain).
    for n in names {
        fleet
            .etcd
            .put(&format!("/gleaner/nodes/{n}/attributes/ssd"), "true");
    }
    wait_until(LONG, "ssd in every node's info", || {
        names.iter().all(|n| {
            fleet
                .etcd
                .get_json(&format!("/gleaner/nodes/{n}/info"))
                .is_some_and(|i| i["attributes"]["ssd"] == "true")
        })
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(db));
    assert_eq!(code, 201, "{v}");
    m.wait_deployments_gone("the db deployment gone");
    let tasks = m.tasks("/team/db");
    let hosts: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["host"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts.len(), 2, "{tasks:?}");
    let drained = hosts.iter().next().unwrap().clone();
    let third = names
        .iter()
        .find(|n| !hosts.contains(**n))
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    fleet
        .etcd
        .del(&format!("/gleaner/nodes/{drained}/attributes/ssd"));
    let mut below = Duration::ZERO;
    let mut last = Instant::now();
    wait_until(
        LONG,
        "the drained instance replaced on the third node",
        || {
            let running: Vec<String> = running_on_agents(&fleet)
                .into_iter()
                .filter(|(id, _)| id.starts_with("team_db_"))
                .map(|(_, n)| n)
                .collect();
            if running.len() < 2 {
                below += last.elapsed();
            }
            last = Instant::now();
            running.len() == 2 && running.contains(&third) && !running.contains(&drained)
        },
    );
    eprintln!(
        "drain of {drained}: replaced on {third} after {:?} (below 2 running for ~{below:?})",
        t0.elapsed()
    );
    // Marathon's view follows the agents' records through etcd.
    wait_until(
        Duration::from_secs(10),
        "both db tasks TASK_RUNNING",
        || {
            let t = m.tasks("/team/db");
            t.len() == 2 && t.iter().all(|t| t["state"] == "TASK_RUNNING")
        },
    );
    let tasks = m.tasks("/team/db");
    check_tasks_run_where_marathon_says(&fleet, &tasks, 0);

    // 3. A task that calls Marathon from inside with what it was given:
    // busybox wget POSTs a worker app of 3 into its own group.
    let worker =
        r#"{"id": "/team/workers", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 3}"#;
    let script = format!(
        "busybox wget -q -O /dev/null --header \"Authorization: Bearer $GLEANER_TOKEN\" \
         --header 'Content-Type: application/json' --post-data '{worker}' \"$MARATHON_URL/v2/apps\" \
         && exec sleep 1000"
    );
    let sched = json!({
        "id": "/team/sched", "cmd": script, "cpus": 0.1, "mem": 16,
        "labels": {"GLEANER_API_ACCESS": "own-group"}, "taskKillGracePeriodSeconds": 1
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(sched));
    assert_eq!(code, 201, "{v}");
    assert!(
        v.get("env")
            .is_some_and(|e| e.get("GLEANER_TOKEN").is_none()),
        "token rendered: {v}"
    );
    wait_until(LONG, "the workers started by the task running", || {
        let (code, v) = m.call("GET", "/v2/apps/team/workers", None);
        code == 200 && v["app"]["tasksRunning"] == 3
    });
    // Marathon's tasks and the agents' agree (the records reach etcd a
    // moment after the agents' own state).
    wait_until(
        Duration::from_secs(10),
        "workers running where Marathon says",
        || {
            let truth = running_on_agents(&fleet);
            let tasks = m.tasks("/team/workers");
            tasks.len() == 3
                && tasks.iter().all(|t| {
                    truth.contains(&(
                        t["id"].as_str().unwrap_or_default().to_owned(),
                        t["host"].as_str().unwrap_or_default().to_owned(),
                    ))
                })
        },
    );
    // The same token, as the task holds it (read from its job in etcd).
    let token = fleet
        .etcd
        .get_prefix("/gleaner/jobs/")
        .into_iter()
        .find_map(|(_, j)| {
            (j["spec"]["env"]["MARATHON_APP_ID"] == "/team/sched")
                .then(|| {
                    j["spec"]["env"]["GLEANER_TOKEN"]
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        })
        .expect("the instance's token");
    assert_ne!(token, TOKEN);
    let (code, v) = m.call_as(&token, "GET", "/v2/apps", None);
    assert_eq!(code, 200);
    let ids: BTreeSet<&str> = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["/team/db", "/team/sched", "/team/web", "/team/workers"])
    );
    let outside = json!({"id": "/other/x", "cmd": "sleep 1", "cpus": 0.1, "mem": 16});
    let (code, v) = m.call_as(&token, "POST", "/v2/apps", Some(outside));
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("outside the scope"),
        "{v}"
    );
    let (code, _) = m.call_as(&token, "GET", "/v1/jobs", None);
    assert_eq!(code, 403);
    m.wait_deployments_gone("the workers' deployment gone");
    // Scaling its own workers: allowed.
    let (code, _) = m.call_as(
        &token,
        "PUT",
        "/v2/apps/team/workers",
        Some(json!({"instances": 1})),
    );
    assert_eq!(code, 200);
    assert!(fleet.etcd.get_prefix("/gleaner/apps/other").is_empty());

    // DELETE: instances gone from the agents; the token ends with its app.
    for app in ["/team/workers", "/team/db", "/team/web", "/team/sched"] {
        let (code, v) = m.call("DELETE", &format!("/v2/apps{app}?force=true"), None);
        assert_eq!(code, 200, "{v}");
    }
    m.wait_deployments_gone("the stop deployments gone");
    wait_until(LONG, "no instance left on the agents", || {
        running_on_agents(&fleet).is_empty()
    });
    let (code, _) = m.call_as(&token, "GET", "/v2/apps", None);
    assert_eq!(code, 401, "a deleted app's token still works");
}

/// Marathon's `fetch` (and the old `uris`) on real agents: the instances'
/// files come from the test's own HTTP server into each sandbox before the
/// command starts; an app whose fetch fails gets FAILED `fetch_failed`
/// records and is retried with its backoff, never running.
#[test]
fn marathon_fetch_on_real_agents() {
    if !require_root("marathon_fetch_on_real_agents") {
        return;
    }
    let Some((fleet, token_dir)) = fleet_with_token(&["n1", "n2", "n3"]) else {
        return;
    };
    let m = Marathon { fleet: &fleet };
    let server = common::files::Server::start();
    let hello = server.serve_bytes("hello.sh", b"#!/bin/sh\necho fetched-and-run > ran.txt\n");
    let src = token_dir.path().join("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::fs::write(src.join("conf/app.conf"), "answer=42\n").unwrap();
    let tgz = token_dir.path().join("conf.tgz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .arg("conf")
        .status()
        .unwrap();
    assert!(st.success());
    let conf = server.serve("conf.tgz", &tgz);
    let app = json!({
        "id": "/fetch/app", "cmd": "./hello.sh && grep -q answer=42 conf/app.conf && exec sleep 1000",
        "cpus": 0.1, "mem": 16, "instances": 3, "taskKillGracePeriodSeconds": 1,
        "fetch": [{"uri": hello, "executable": true}],
        "uris": [conf]
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(app));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["fetch"].as_array().map(Vec::len), Some(2), "{v}");
    m.wait_deployments_gone("the fetch app deployed");
    let tasks = m.tasks("/fetch/app");
    assert_eq!(tasks.len(), 3);
    check_tasks_run_where_marathon_says(&fleet, &tasks, 0);
    for t in &tasks {
        let (id, host) = (t["id"].as_str().unwrap(), t["host"].as_str().unwrap());
        let agent = fleet.agents.iter().find(|a| a.node == host).unwrap();
        let status = agent.get_json(&format!("/v1/tasks/{id}"));
        let sandbox = std::path::PathBuf::from(status["sandbox"].as_str().unwrap());
        // RUNNING is the exec of the command: the script runs a moment later.
        wait_until(LONG, "the fetched script ran", || {
            std::fs::read_to_string(sandbox.join("ran.txt")).is_ok_and(|r| r == "fetched-and-run\n")
        });
        assert!(sandbox.join("conf.tgz").is_file(), "{id}: the archive kept");
    }
    assert_eq!(server.hits("hello.sh"), 3);

    // A fetch that fails: the instance never runs; its records say why.
    let broken = json!({
        "id": "/fetch/broken", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
        "fetch": [{"uri": format!("http://127.0.0.1:{}/missing.sh", server.port)}],
        "backoffSeconds": 1
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(broken));
    assert_eq!(code, 201, "{v}");
    wait_until(LONG, "a broken instance failed with fetch_failed", || {
        server.hits("missing.sh") >= 1
            && fleet.agents.iter().any(|a| {
                a.tasks().iter().any(|t| {
                    t["id"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("fetch_broken"))
                        && t["state"] == "FAILED"
                        && t["reason"] == "fetch_failed"
                        && t["message"].as_str().is_some_and(|m| m.contains("404"))
                })
            })
    });
    let (_, v) = m.call("GET", "/v2/apps/fetch/broken", None);
    assert_eq!(v["app"]["tasksRunning"], 0, "{v}");
    // A zip to extract is refused with Marathon's 422.
    let zip = json!({"id": "/fetch/zip", "cmd": "true", "uris": ["http://127.0.0.1/a.zip"]});
    let (code, v) = m.call("POST", "/v2/apps", Some(zip));
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["details"][0]["path"], "/fetch", "{v}");
    // The broken app's start deployment never ends: force.
    for app in ["/fetch/app", "/fetch/broken"] {
        let (code, v) = m.call("DELETE", &format!("/v2/apps{app}?force=true"), None);
        assert_eq!(code, 200, "{v}");
    }
}

/// Issue 14's figures on real agents (bench/marathon does them on hollow
/// nodes): 3 agents, one scheduler, `bench/marathon/client.py` (an app of
/// INSTANCES to all running, its rolling restart, SSE events delivered to
/// SUBSCRIBERS clients during it). Run with
/// `cargo test -p gleaner-scheduler --test marathon_fleet -- --ignored bench_marathon_on_real_agents --nocapture`
/// (`APP_HEALTH=COMMAND` or `HTTP`: the app has that health check, and
/// the figures wait for every instance healthy too).
#[test]
#[ignore]
fn bench_marathon_on_real_agents() {
    if !require_root("bench_marathon_on_real_agents") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, subs) = (env("INSTANCES", 100), env("SUBSCRIBERS", 10));
    let mut specs = agents(&["n1", "n2", "n3"], 2.0, |_| vec![]);
    // Three agents on one host: each its own port range, or two instances
    // given one port bind-fail (APP_HEALTH=HTTP runs httpd on $PORT0).
    for (i, s) in specs.iter_mut().enumerate() {
        let lo = 31000 + 300 * i as u16;
        s.extra = format!("port_range = [{lo}, {}]\n{}", lo + 299, s.extra);
    }
    let Some(mut fleet) = Fleet::start(&specs) else {
        return;
    };
    fleet.wait_registered();
    fleet.add_scheduler("");
    let url = fleet.schedulers[0].url.clone();
    wait_until(LONG, "a leader", || {
        http("GET", &format!("{url}/v1/leader"), None, None)
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .is_some_and(|v| v["self"] == true)
    });
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/marathon/client.py");
    let out = std::process::Command::new("python3")
        .args([client, &url, &n.to_string(), &subs.to_string()])
        .env("APP_CPUS", "0.01")
        .env("APP_MEM", "8")
        .env(
            "APP_HEALTH",
            std::env::var("APP_HEALTH").unwrap_or_default(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("real agents: {}", text.trim());
    // The figure counts only if the agents really run them all.
    wait_until(
        Duration::from_secs(30),
        "all instances running on the agents",
        || {
            running_on_agents(&fleet)
                .iter()
                .filter(|(id, _)| id.starts_with("bench_big_"))
                .count()
                == n
        },
    );
}

/// `(event name, data)` of `/v2/events{query}`, read on a thread.
fn subscribe(fleet: &Fleet, query: &str) -> std::sync::mpsc::Receiver<(String, Value)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{}/v2/events{query}", fleet.any_scheduler().url))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in std::io::BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if tx.send((name.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Health-checked instances on a loaded machine.
const SLOW: Duration = Duration::from_secs(240);

/// `(tasksRunning, tasksHealthy, tasksUnhealthy)` of an app.
fn health_counts(m: &Marathon, app: &str) -> (u64, u64, u64) {
    let (code, v) = m.call("GET", &format!("/v2/apps{app}"), None);
    assert_eq!(code, 200, "{v}");
    let n = |k: &str| v["app"][k].as_u64().unwrap();
    (n("tasksRunning"), n("tasksHealthy"), n("tasksUnhealthy"))
}

#[test]
fn health_checked_app_failing_instance_replaced_and_rolling_restart_keeps_half_healthy() {
    if !require_root(
        "health_checked_app_failing_instance_replaced_and_rolling_restart_keeps_half_healthy",
    ) {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some((fleet, _token_dir)) = fleet_with_token(&names) else {
        return;
    };
    let m = Marathon { fleet: &fleet };
    let events = subscribe(&fleet, "?event_type=health_status_changed_event");

    // busybox httpd on $PORT0; the check GETs /ok from the task's sandbox.
    let app = json!({
        "id": "/hc/web",
        "cmd": "mkdir -p /sandbox/www && echo ok > /sandbox/www/ok && exec httpd -f -p $PORT0 -h /sandbox/www",
        "cpus": 0.1, "mem": 16, "instances": 6,
        "portDefinitions": [{"port": 0, "protocol": "tcp"}],
        "taskKillGracePeriodSeconds": 1,
        "healthChecks": [{
            "protocol": "MESOS_HTTP", "path": "/ok", "portIndex": 0,
            "gracePeriodSeconds": 120, "intervalSeconds": 3, "timeoutSeconds": 3,
            "maxConsecutiveFailures": 3
        }],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0}
    });
    let (code, v) = m.call("POST", "/v2/apps", Some(app));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["healthChecks"][0]["protocol"], "MESOS_HTTP", "{v}");
    // The start deployment ends once all 6 are healthy, not just running
    // (tasks are SCHED_IDLE: slow to answer on a loaded machine).
    let t0 = Instant::now();
    while m.call("GET", "/v2/deployments", None).1 != json!([]) {
        if t0.elapsed() > SLOW {
            let health: Vec<Value> = fleet
                .agents
                .iter()
                .flat_map(|a| a.tasks())
                .map(|t| json!([t["id"], t["state"], t["health"]]))
                .collect();
            panic!(
                "start deployment not done after {SLOW:?}: counts {:?}, agents' tasks {health:?}",
                health_counts(&m, "/hc/web")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(health_counts(&m, "/hc/web"), (6, 6, 0));
    let tasks = m.tasks("/hc/web");
    check_tasks_run_where_marathon_says(&fleet, &tasks, 1);
    for t in &tasks {
        let r = &t["healthCheckResults"][0];
        assert_eq!(r["alive"], true, "{t}");
        assert_eq!(r["consecutiveFailures"], 0, "{t}");
        assert!(r["lastSuccess"].as_str().unwrap().ends_with('Z'), "{t}");
        assert_eq!(r["taskId"], t["id"], "{t}");
    }

    // One instance's page goes away: unhealthy, killed, replaced.
    let victim = tasks[0]["id"].as_str().unwrap().to_owned();
    let host = tasks[0]["host"].as_str().unwrap().to_owned();
    let agent = fleet.agents.iter().find(|a| a.node == host).unwrap();
    let sandbox = agent
        .tasks()
        .into_iter()
        .find(|t| t["id"] == victim.as_str())
        .and_then(|t| t["sandbox"].as_str().map(str::to_owned))
        .unwrap();
    std::fs::remove_file(format!("{sandbox}/www/ok")).unwrap();
    let mut seen_unhealthy = false;
    wait_until(
        SLOW,
        "the failing instance replaced and all healthy",
        || {
            let (running, healthy, unhealthy) = health_counts(&m, "/hc/web");
            assert!(
                healthy + unhealthy <= running,
                "{running} {healthy} {unhealthy}"
            );
            seen_unhealthy |= unhealthy >= 1;
            std::thread::sleep(Duration::from_millis(100));
            let ids: BTreeSet<String> = m
                .tasks("/hc/web")
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect();
            healthy == 6 && !ids.contains(&victim)
        },
    );
    assert!(seen_unhealthy, "the unhealthy instance was never counted");
    let end = agent
        .tasks()
        .into_iter()
        .find(|t| t["id"] == victim.as_str())
        .unwrap();
    assert_eq!(end["reason"], "health_check_failed", "{end}");
    assert_eq!(
        end["health"]["checks"][0]["last_message"],
        "HTTP status 404"
    );
    let (_, v) = m.call("GET", "/v2/apps/hc/web?embed=apps.lastTaskFailure", None);
    assert_eq!(v["app"]["tasksHealthy"], 6, "{v}");
    // Events: the victim went unhealthy (and every instance healthy once).
    let mut alive_false = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alive_false && Instant::now() < deadline {
        if let Ok((name, e)) = events.recv_timeout(Duration::from_millis(500)) {
            if name == "event_stream_attached" {
                continue;
            }
            assert_eq!(name, "health_status_changed_event", "{e}");
            assert_eq!(e["appId"], "/hc/web", "{e}");
            alive_false |= e["taskId"] == victim.as_str() && e["alive"] == false;
        }
    }
    assert!(
        alive_false,
        "no health_status_changed_event alive=false for {victim}"
    );

    // A rolling restart of 6 with minimumHealthCapacity 0.5: sampled every
    // 100 ms, never fewer than 3 healthy.
    let before: BTreeSet<String> = m
        .tasks("/hc/web")
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let (code, v) = m.call("POST", "/v2/apps/hc/web/restart", None);
    assert_eq!(code, 200, "{v}");
    let mut lowest = u64::MAX;
    let mut samples = 0;
    let t0 = Instant::now();
    loop {
        let (_, healthy, _) = health_counts(&m, "/hc/web");
        lowest = lowest.min(healthy);
        samples += 1;
        assert!(healthy >= 3, "{healthy} healthy during the restart");
        if m.call("GET", "/v2/deployments", None).1 == json!([]) {
            break;
        }
        assert!(t0.elapsed() < SLOW, "restart not done");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "rolling restart of 6 health-checked instances: {:?}, {samples} samples, lowest healthy {lowest}",
        t0.elapsed()
    );
    assert_eq!(health_counts(&m, "/hc/web"), (6, 6, 0));
    let after: BTreeSet<String> = m
        .tasks("/hc/web")
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(after.is_disjoint(&before), "instances survived the restart");

    let (code, _) = m.call("DELETE", "/v2/apps/hc/web?force=true", None);
    assert_eq!(code, 200);
    m.wait_deployments_gone("the stop deployment gone");
    wait_until(LONG, "no instance left on the agents", || {
        running_on_agents(&fleet).is_empty()
    });
}
