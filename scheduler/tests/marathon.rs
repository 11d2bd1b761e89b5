//! Marathon's REST API on the scheduler, against a real etcd and the real
//! scheduler binary; agents are simulated through etcd (tests/sim): a
//! placement turns into a RUNNING task record, a removed one into KILLED.
//! Request/response cases follow Marathon's REST docs (status, headers,
//! body fields).

mod sim;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim::*;

const WAIT: Duration = Duration::from_secs(20);

fn nodes(etcd: &Etcd, n: usize, cpus: f64) {
    for i in 1..=n {
        etcd.put(
            &format!("/gleaner/nodes/n{i}/info"),
            &node_info(&format!("n{i}"), cpus, json!({"rack": format!("r{i}")})),
        );
    }
}

fn app(s: &Scheduler, id: &str) -> Value {
    let (code, _, v) = s.call_full("GET", &format!("/v2/apps{id}"), None);
    assert_eq!(code, 200, "{v}");
    v["app"].clone()
}

fn deployments(s: &Scheduler) -> Vec<Value> {
    let (code, _, v) = s.call_full("GET", "/v2/deployments", None);
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn settled(s: &Scheduler, id: &str, running: u64) {
    let start = Instant::now();
    loop {
        let a = app(s, id);
        if a["tasksRunning"] == running && deployments(s).is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "app {id} never settled at {running}: {a}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn apps_endpoints_follow_marathon_shapes() {
    let Some(etcd) = Etcd::start() else { return };
    nodes(&etcd, 3, 4.0);
    let s = Scheduler::start(&etcd, "a", "");
    let _agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(100));

    // /ping, /v2/info, /v2/leader.
    let (code, h, body) = s.call_full("GET", "/ping", None);
    assert_eq!((code, body), (200, json!("pong")));
    assert!(h["content-type"].starts_with("text/plain"));
    wait_for(WAIT, "a leader", || {
        s.call_full("GET", "/v2/leader", None).0 == 200
    });
    let (_, _, info) = s.call_full("GET", "/v2/info", None);
    assert_eq!(info["name"], "marathon");
    assert_eq!(info["elected"], true);

    // Bad input: 400 Invalid JSON, 422 with details by path, nothing stored.
    let (code, _, v) = s.call_full("POST", "/v2/apps", Some("{nope"));
    assert_eq!((code, v["message"].as_str()), (400, Some("Invalid JSON")));
    let (code, _, v) = s.call_full(
        "POST",
        "/v2/apps",
        Some(r#"{"id": "/a", "cmd": "x", "cpus": "many"}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["details"][0]["path"], "/cpus");
    let (code, _, v) = s.call_full("POST", "/v2/apps", Some(r#"{"id": "/Bad_Id", "cpus": -1}"#));
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["message"], "Object is not valid");
    let paths: Vec<&str> = v["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/id") && paths.contains(&"/cpus"), "{v}");
    assert!(etcd.keys("/gleaner/apps/").is_empty());

    // Create: 201, Location, Marathon-Deployment-Id, defaults, counts.
    let (code, h, v) = s.call_full(
        "POST",
        "/v2/apps",
        Some(r#"{"id": "web", "cmd": "sleep 1000", "cpus": 0.1, "instances": 2}"#),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(h["location"], "/v2/apps/web");
    let dep = h["marathon-deployment-id"].clone();
    assert_eq!(v["id"], "/web");
    assert_eq!(v["mem"], 128.0);
    assert_eq!(v["backoffSeconds"], 1.0);
    assert_eq!(v["backoffFactor"], 1.15);
    assert_eq!(v["maxLaunchDelaySeconds"], 300.0);
    assert_eq!(v["upgradeStrategy"]["minimumHealthCapacity"], 1.0);
    assert_eq!(v["killSelection"], "YOUNGEST_FIRST");
    assert_eq!(v["tasksStaged"], 0);
    assert_eq!(v["tasksRunning"], 0);
    assert_eq!(v["deployments"], json!([{"id": dep}]));
    let version = v["version"].as_str().unwrap();
    assert!(version.ends_with('Z') && version.len() == 24, "{version}");
    assert!(v.get("uris").is_none() && v.get("gleaner").is_none());
    // Duplicate: 409 with Marathon's message.
    let (code, _, v) = s.call_full("POST", "/v2/apps", Some(r#"{"id": "/web", "cmd": "x"}"#));
    assert_eq!(code, 409);
    assert_eq!(v["message"], "An app with id [/web] already exists.");
    // The deployment, as Marathon lists it (a bare array).
    let d = deployments(&s);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["id"], dep.as_str());
    assert_eq!(d[0]["affectedApps"], json!(["/web"]));
    assert_eq!(d[0]["steps"][0]["actions"][0]["action"], "StartApplication");
    settled(&s, "/web", 2);

    // GET one: tasks embedded with Marathon's task fields.
    let a = app(&s, "/web");
    let tasks = a["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(t["appId"], "/web");
        assert_eq!(t["state"], "TASK_RUNNING");
        assert_eq!(t["host"], t["slaveId"]);
        assert!(t["stagedAt"].as_str().unwrap().ends_with('Z'));
        assert_eq!(t["version"], a["version"]);
        assert_eq!(t["healthCheckResults"], json!([]));
    }
    let (code, _, v) = s.call_full("GET", "/v2/apps/nope", None);
    assert_eq!(
        (code, v),
        (404, json!({"message": "App '/nope' does not exist"}))
    );
    let (_, _, list) = s.call_full("GET", "/v2/apps?embed=apps.tasks", None);
    assert_eq!(list["apps"].as_array().unwrap().len(), 1);
    assert_eq!(list["apps"][0]["tasks"].as_array().unwrap().len(), 2);
    let (_, _, t) = s.call_full("GET", "/v2/apps/web/tasks", None);
    assert_eq!(t["tasks"].as_array().unwrap().len(), 2);
    let (_, _, t) = s.call_full("GET", "/v2/tasks?status=running", None);
    assert_eq!(t["tasks"].as_array().unwrap().len(), 2);

    // Scale (PUT, partial): 200, deploymentId + version + header; the
    // running instances stay (a scale is no restart).
    let before: Vec<Value> = tasks.iter().map(|t| t["id"].clone()).collect();
    let (code, h, v) = s.call_full("PUT", "/v2/apps/web", Some(r#"{"instances": 3}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        h["marathon-deployment-id"],
        v["deploymentId"].as_str().unwrap()
    );
    assert!(v["version"].as_str().unwrap().ends_with('Z'));
    // Locked while it runs, unless force (case-insensitive).
    let (code, _, v2) = s.call_full("PUT", "/v2/apps/web", Some(r#"{"instances": 4}"#));
    if code == 409 {
        assert!(v2["message"]
            .as_str()
            .unwrap()
            .starts_with("App is locked by one or more deployments."));
        let (code, _, _) = s.call_full(
            "PUT",
            "/v2/apps/web?force=True",
            Some(r#"{"instances": 3}"#),
        );
        assert_eq!(code, 200);
    }
    settled(&s, "/web", 3);
    let after: Vec<Value> = app(&s, "/web")["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert!(
        before.iter().all(|t| after.contains(t)),
        "{before:?} {after:?}"
    );
    let (code, _, v) = s.call_full("PUT", "/v2/apps/web?force=maybe", Some("{}"));
    assert_eq!(code, 400, "{v}");

    // Kill one task without scale: replaced; with scale=true: gone.
    let victim = after[0].as_str().unwrap().to_owned();
    let (code, _, v) = s.call_full("DELETE", &format!("/v2/apps/web/tasks/{victim}"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["task"]["id"], victim.as_str());
    wait_for(WAIT, "replacement", || {
        let a = app(&s, "/web");
        a["tasksRunning"] == 3
            && !a["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["id"] == victim.as_str())
    });
    let victim = app(&s, "/web")["tasks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, h, v) = s.call_full(
        "DELETE",
        &format!("/v2/apps/web/tasks/{victim}?scale=TRUE"),
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert!(h.contains_key("marathon-deployment-id"));
    settled(&s, "/web", 2);
    assert_eq!(app(&s, "/web")["instances"], 2);
    let (code, _, v) = s.call_full("DELETE", "/v2/apps/web/tasks/nope.1", None);
    assert_eq!(code, 404, "{v}");
    // POST /v2/tasks/delete.
    let ids: Vec<Value> = app(&s, "/web")["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    let (code, _, v) = s.call_full(
        "POST",
        "/v2/tasks/delete?scale=true",
        Some(&json!({ "ids": [ids[0]] }).to_string()),
    );
    assert_eq!(code, 200, "{v}");
    settled(&s, "/web", 1);
    let (code, _, _) = s.call_full("POST", "/v2/tasks/delete", Some(r#"{"ids": 3}"#));
    assert_eq!(code, 400);

    // Restart: a new version, every instance replaced.
    let old = app(&s, "/web")["tasks"][0]["id"].clone();
    let (code, h, v) = s.call_full("POST", "/v2/apps/web/restart", None);
    assert_eq!(code, 200, "{v}");
    assert!(h.contains_key("marathon-deployment-id"));
    settled(&s, "/web", 1);
    let a = app(&s, "/web");
    assert_ne!(a["tasks"][0]["id"], old);
    assert_eq!(a["tasks"][0]["version"], a["version"]);

    // Delete: 200 with a deployment; instances go; then 404.
    let (code, _, v) = s.call_full("DELETE", "/v2/apps/web", None);
    assert_eq!(code, 200, "{v}");
    assert!(v["deploymentId"].is_string());
    wait_for(WAIT, "stop", || {
        deployments(&s).is_empty() && etcd.keys("/gleaner/placements/").is_empty()
    });
    assert_eq!(s.call_full("GET", "/v2/apps/web", None).0, 404);
    assert_eq!(s.call_full("DELETE", "/v2/apps/web", None).0, 404);
}

#[test]
fn unique_hostname_waits_in_the_queue_and_scaling_down_settles() {
    let Some(etcd) = Etcd::start() else { return };
    nodes(&etcd, 3, 4.0);
    let s = Scheduler::start(&etcd, "a", "");
    let _agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(50));
    let (code, _, v) = s.call_full(
        "POST",
        "/v2/apps",
        Some(
            &json!({"id": "/grp/u", "cmd": "sleep 1000", "cpus": 0.1, "instances": 6,
                "constraints": [["hostname", "UNIQUE"]]})
            .to_string(),
        ),
    );
    assert_eq!(code, 201, "{v}");
    wait_for(WAIT, "3 running, 3 queued", || {
        let (_, _, q) = s.call_full("GET", "/v2/queue", None);
        app(&s, "/grp/u")["tasksRunning"] == 3 && q["queue"][0]["count"] == 3
    });
    let (_, _, q) = s.call_full("GET", "/v2/queue", None);
    assert_eq!(q["queue"][0]["app"]["id"], "/grp/u");
    assert_eq!(q["queue"][0]["delay"]["overdue"], true);
    let hosts: std::collections::BTreeSet<String> = app(&s, "/grp/u")["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts.len(), 3);
    assert_eq!(deployments(&s).len(), 1, "the deployment waits");
    let (code, _, _) = s.call_full(
        "PUT",
        "/v2/apps/grp/u?force=true",
        Some(r#"{"instances": 3}"#),
    );
    assert_eq!(code, 200);
    settled(&s, "/grp/u", 3);
    let (_, _, q) = s.call_full("GET", "/v2/queue", None);
    assert_eq!(q["queue"], json!([]));
}

/// Samples every 100 ms during a rolling restart of 6 with
/// minimumHealthCapacity 0.5: never fewer than 3 running.
#[test]
fn rolling_restart_keeps_minimum_health_capacity_and_survives_leader_failover() {
    let Some(etcd) = Etcd::start() else { return };
    nodes(&etcd, 3, 8.0);
    let mut a = Scheduler::start(&etcd, "a", "");
    wait_for(WAIT, "a leads", || {
        a.call_full("GET", "/v2/info", None).2["elected"] == true
    });
    let b = Scheduler::start(&etcd, "b", "");
    let _agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(600));
    let (code, _, v) = b.call_full(
        "POST",
        "/v2/apps",
        Some(
            &json!({"id": "/roll", "cmd": "sleep 1000", "cpus": 0.1, "instances": 6,
                "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}})
            .to_string(),
        ),
    );
    assert_eq!(code, 201, "{v}");
    settled(&b, "/roll", 6);
    let (code, _, _) = b.call_full("POST", "/v2/apps/roll/restart", None);
    assert_eq!(code, 200);
    let version = app(&b, "/roll")["version"].clone();
    let start = Instant::now();
    let mut min_seen = u64::MAX;
    let mut failed_over = false;
    loop {
        let x = app(&b, "/roll");
        let running = x["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .count() as u64;
        min_seen = min_seen.min(running);
        let total = x["tasks"].as_array().unwrap().len();
        assert!(total <= 6, "maximumOverCapacity 0: {total} tasks");
        if !failed_over
            && x["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["version"] == version)
        {
            // Kill the leader mid-deployment; b resumes from etcd.
            a.sigterm();
            failed_over = true;
        }
        if failed_over
            && deployments(&b).is_empty()
            && x["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["version"] == version && t["state"] == "TASK_RUNNING")
                .count()
                == 6
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "rolling restart stuck: {x}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(min_seen >= 3, "fell to {min_seen} running");
}

#[test]
fn failed_instances_are_replaced_with_backoff_and_reported() {
    let Some(etcd) = Etcd::start() else { return };
    nodes(&etcd, 1, 4.0);
    let s = Scheduler::start(&etcd, "a", "");
    let agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(50));
    let (code, _, _) = s.call_full(
        "POST",
        "/v2/apps",
        Some(
            r#"{"id": "/f", "cmd": "false", "cpus": 0.1, "backoffSeconds": 2, "backoffFactor": 2}"#,
        ),
    );
    assert_eq!(code, 201);
    settled(&s, "/f", 1);
    let first = app(&s, "/f")["tasks"][0]["id"].as_str().unwrap().to_owned();
    agents.fail.lock().unwrap().insert(first.clone());
    let failed_at = Instant::now();
    // lastTaskFailure appears; the replacement waits the backoff (2 s).
    wait_for(WAIT, "lastTaskFailure", || {
        app(&s, "/f")["lastTaskFailure"]["taskId"] == first.as_str()
    });
    let f = app(&s, "/f")["lastTaskFailure"].clone();
    assert_eq!(f["state"], "TASK_FAILED");
    assert_eq!(f["appId"], "/f");
    wait_for(WAIT, "replacement", || {
        let a = app(&s, "/f");
        a["tasksRunning"] == 1 && a["tasks"][0]["id"] != first.as_str()
    });
    let took = failed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "replaced after {took:?}, backoff is 2 s"
    );
}

/// Event names of an SSE stream, read on a thread until the stream ends.
fn subscribe(s: &Scheduler, query: &str) -> std::sync::mpsc::Receiver<(String, Value)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    http_client(); // installs the crypto provider
    let resp = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{}/v2/events{query}", s.url))
        .bearer_auth(&s.token)
        .header("accept", "text/event-stream")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in std::io::BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                let v: Value = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if tx.send((name.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn events_stream_attach_first_then_app_task_and_deployment_events() {
    let Some(etcd) = Etcd::start() else { return };
    nodes(&etcd, 1, 4.0);
    let s = Scheduler::start(&etcd, "a", "");
    let _agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(50));
    let all = subscribe(&s, "");
    let only = subscribe(&s, "?event_type=deployment_success");
    let (first, v) = all.recv_timeout(WAIT).unwrap();
    assert_eq!(first, "event_stream_attached");
    assert_eq!(v["eventType"], "event_stream_attached");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    let (code, h, _) = s.call_full(
        "POST",
        "/v2/apps",
        Some(r#"{"id": "/ev", "cmd": "sleep 1000", "cpus": 0.1}"#),
    );
    assert_eq!(code, 201);
    let dep = h["marathon-deployment-id"].clone();
    let mut seen = Vec::new();
    let start = Instant::now();
    while !seen
        .iter()
        .any(|(n, _): &(String, Value)| n == "deployment_success")
    {
        assert!(start.elapsed() < WAIT, "events so far: {seen:?}");
        if let Ok(e) = all.recv_timeout(Duration::from_millis(200)) {
            seen.push(e);
        }
    }
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"api_post_event"), "{names:?}");
    assert!(names.contains(&"deployment_info"), "{names:?}");
    let running = seen
        .iter()
        .find(|(n, v)| n == "status_update_event" && v["taskStatus"] == "TASK_RUNNING")
        .expect("a TASK_RUNNING status update");
    assert_eq!(running.1["appId"], "/ev");
    let success = seen
        .iter()
        .find(|(n, _)| n == "deployment_success")
        .unwrap();
    assert_eq!(success.1["id"], dep.as_str());
    // The filtered stream: attach, then only deployment_success.
    let (n, _) = only.recv_timeout(WAIT).unwrap();
    assert_eq!(n, "event_stream_attached");
    let (n, v) = only.recv_timeout(WAIT).unwrap();
    assert_eq!((n.as_str(), &v["id"]), ("deployment_success", &json!(dep)));
}

/// Figure (bench/RESULTS.md): `GET /v2/apps` latency with 1,000 apps of one
/// instance each (1,000 instance jobs waiting: no nodes). With
/// `BASELINE_SCHEDULER=<path to another build>` a replica of that build
/// serves the same etcd and requests alternate between the two (A, B, A,
/// B...), so a loaded machine slows both alike. Run with
/// `cargo test --release -p gleaner-scheduler --test marathon -- --ignored bench_get_apps --nocapture`.
#[test]
#[ignore]
fn bench_get_apps_p99_with_1000_apps() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    let apps: usize = std::env::var("APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for i in 0..apps {
        let body =
            json!({"id": format!("/bench/app-{i}"), "cmd": "sleep 1000", "cpus": 0.01, "mem": 16});
        let (code, _, v) = s.call_full("POST", "/v2/apps", Some(&body.to_string()));
        assert_eq!(code, 201, "{v}");
    }
    wait_for(Duration::from_secs(120), "instances queued", || {
        let (_, _, q) = s.call_full("GET", "/v2/queue", None);
        q["queue"].as_array().map(|a| a.len()) == Some(apps)
    });
    let baseline = std::env::var("BASELINE_SCHEDULER")
        .ok()
        .map(|bin| Scheduler::start_bin(&bin, &etcd, "b", ""));
    let mut replicas = vec![("this build", &s, Vec::new())];
    if let Some(b) = &baseline {
        replicas.push(("baseline", b, Vec::new()));
    }
    let client = http_client();
    for _ in 0..rounds {
        for (_, r, ms) in replicas.iter_mut() {
            let t = Instant::now();
            let resp = client
                .get(format!("{}/v2/apps", r.url))
                .bearer_auth(&r.token)
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            // Timed to the last byte; parsed after (a debug-built client
            // parses 1.5 MB slower than the server renders it).
            let body = resp.bytes().unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["apps"].as_array().unwrap().len(), apps);
        }
    }
    // The same read with nothing to render: what reading costs alone.
    for (name, r, _) in &replicas {
        let mut empty = Vec::new();
        for _ in 0..rounds.min(50) {
            let t = Instant::now();
            let resp = client
                .get(format!("{}/v2/apps?id=no-such-app", r.url))
                .bearer_auth(&r.token)
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().unwrap();
            empty.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        empty.sort_by(f64::total_cmp);
        println!(
            "GET /v2/apps?id=no-such-app (read, nothing rendered), {name}: p50 {:.1} ms, p99 {:.1} ms",
            empty[empty.len() / 2],
            empty[((empty.len() as f64 - 1.0) * 0.99).round() as usize]
        );
    }
    let bypassed = s.log().matches("reading etcd directly").count();
    println!("requests that bypassed the cache: {bypassed}");
    for (name, _, ms) in replicas.iter_mut() {
        ms.sort_by(f64::total_cmp);
        let p = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "GET /v2/apps with {apps} apps, {name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            p(0.5),
            p(0.99),
            ms[ms.len() - 1]
        );
    }
}
