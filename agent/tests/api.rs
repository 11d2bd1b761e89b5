//! Issue 2: the HTTP API refuses bad input with a reason and creates nothing;
//! the CLI and the agent's flags behave.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

fn refused(agent: &TestAgent, body: Value) -> (u16, String) {
    match agent.submit(body.clone()) {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("{body} was accepted: {other:?}"),
    }
}

#[test]
fn bad_input_is_refused_and_creates_nothing() {
    if !require_root("bad_input_is_refused_and_creates_nothing") {
        return;
    }
    let agent = TestAgent::start();
    let rootfs = agent.rootfs.display().to_string();
    let r = json!({"cpus": 0.5, "mem_mb": 64});
    let cases = [
        (
            json!({"cmd": "x", "resources": {"cpus": 0, "mem_mb": 64}}),
            "cpus",
        ),
        (
            json!({"cmd": "x", "resources": {"cpus": -1, "mem_mb": 64}}),
            "cpus",
        ),
        (
            json!({"cmd": "x", "resources": {"cpus": 1, "mem_mb": 1}}),
            "mem_mb",
        ),
        (
            json!({"cmd": "x", "resources": {"cpus": "NaN", "mem_mb": 64}}),
            "cpus",
        ),
        (json!({"cmd": "x", "argv": ["y"], "resources": r}), "cmd"),
        (json!({"resources": r}), "cmd"),
        (json!({"id": "a/b", "cmd": "x", "resources": r}), "id"),
        (json!({"id": "..", "cmd": "x", "resources": r}), "id"),
        (json!({"cmd": "x", "resources": r, "bogus": 1}), "bogus"),
        (
            json!({"cmd": "x", "resources": r, "rootfs": {"path": "relative/dir"}}),
            "absolute",
        ),
        (
            json!({"cmd": "x", "resources": r, "rootfs": {"path": "/nonexistent/rootfs"}}),
            "does not exist",
        ),
        (
            json!({"cmd": "x", "resources": r, "rootfs": {"path": rootfs, "sha256": "ab"}}),
            "sha256",
        ),
        (
            json!({"cmd": "x", "resources": r, "user": "ghost"}),
            "ghost",
        ),
        (json!({"cmd": "x", "resources": r, "user": "root"}), "root"),
        (
            json!({"cmd": "x", "resources": r, "cpu_limit": "turbo"}),
            "turbo",
        ),
        (
            json!({"cmd": "x", "resources": r, "kill_grace_s": -1}),
            "kill_grace_s",
        ),
    ];
    for (body, needle) in cases {
        let (status, message) = refused(&agent, body.clone());
        assert_eq!(status, 400, "{body}: {message}");
        assert!(
            message.contains(needle),
            "{body}: {message:?} should mention {needle}"
        );
    }
    // Not JSON at all, and a body over 1 MiB.
    let http = reqwest::blocking::Client::new();
    let resp = http
        .post(format!("{}/v1/tasks", agent.base))
        .bearer_auth(&agent.token)
        .body("{nope")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big = format!(
        "{{\"cmd\": \"{}\", \"resources\": {{\"cpus\": 1, \"mem_mb\": 64}}}}",
        "x".repeat(1 << 20)
    );
    let resp = http
        .post(format!("{}/v1/tasks", agent.base))
        .bearer_auth(&agent.token)
        .body(big)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.json::<Value>().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("larger"));

    let tasks: Vec<Value> = agent.client.get("/v1/tasks").unwrap();
    assert!(tasks.is_empty(), "{tasks:?}");
    assert_eq!(
        std::fs::read_dir(agent.data_dir.join("tasks"))
            .unwrap()
            .count(),
        0
    );
    assert!(agent.leftover_task_cgroups().is_empty());

    // Duplicate ids conflict; unknown ids are 404.
    agent
        .submit(json!({"id": "dup", "cmd": "true", "resources": r}))
        .unwrap();
    assert_eq!(
        refused(&agent, json!({"id": "dup", "cmd": "true", "resources": r})).0,
        409
    );
    match agent.client.get::<Value>("/v1/tasks/nope") {
        Err(ClientError::Api {
            status: 404,
            message,
        }) => assert!(message.contains("nope")),
        other => panic!("{other:?}"),
    }
    let resp = http
        .get(format!("{}/v1/tasks/dup/logs?stream=stdin", agent.base))
        .bearer_auth(&agent.token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[test]
fn state_health_and_metrics() {
    if !require_root("state_health_and_metrics") {
        return;
    }
    let agent = TestAgent::start();
    let health: Value = agent.client.get("/v1/health").unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let st = agent.submit(spec("echo hi")).unwrap();
    agent.wait_final(&st.id, Duration::from_secs(10));
    let state: Value = agent.client.get("/v1/state").unwrap();
    assert_eq!(state["cgroup_version"], "v1");
    assert_eq!(state["tasks"]["FINISHED"], 1);
    assert!(state["total"]["cpus"].as_f64().unwrap() >= 1.0);
    let metrics = agent.client.get_text("/metrics").unwrap();
    assert!(
        metrics.contains("gleaner_tasks{state=\"FINISHED\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gleaner_task_launches_total 1"),
        "{metrics}"
    );
    assert_eq!(agent.logs(&st.id, "stdout"), "hi\n");
}

/// Issue 16: the scheduling pass (and the port and image bookkeeping)
/// walks the tasks that have not ended, not every finished one kept.
#[test]
fn a_scheduling_pass_walks_only_unfinished_tasks() {
    if !require_root("a_scheduling_pass_walks_only_unfinished_tasks") {
        return;
    }
    let agent = TestAgent::start();
    let ids: Vec<String> = (0..25)
        .map(|_| agent.submit(spec("true")).unwrap().id)
        .collect();
    for id in &ids {
        agent.wait_final(id, Duration::from_secs(20));
    }
    let long = agent.submit(spec("sleep 30")).unwrap();
    agent.wait_state(&long.id, TaskState::Running, Duration::from_secs(10));
    // One more pass, with 25 finished tasks kept, one running, one new.
    let second = agent.submit(spec("sleep 30")).unwrap();
    let walked: f64 = agent.metric("gleaner_sched_pass_tasks ");
    assert!(walked <= 2.0, "the last pass walked {walked} tasks");
    let state: Value = agent.client.get("/v1/state").unwrap();
    assert_eq!(state["tasks"]["FINISHED"], 25);
    agent.kill(&long.id);
    agent.kill(&second.id);
}

#[test]
fn token_is_required_when_configured() {
    if !require_root("token_is_required_when_configured") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    // The agent refuses a token others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent = TestAgent::start_with_token(&token);
    let http = reqwest::blocking::Client::new();
    let resp = http.get(format!("{}/v1/state", agent.base)).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(format!("{}/v1/state", agent.base))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn agent_flags_and_config_errors_are_one_line() {
    let out = Command::new(AGENT_BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gleaner-agent 0."));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\nfrobnicate = true\n").unwrap();
    for (args, needle) in [
        (
            vec!["--config".to_owned(), cfg.display().to_string()],
            "frobnicate",
        ),
        (vec!["--listen".into(), "nonsense".into()], "listen"),
        (vec!["--cgroup-root".into(), "a/b".into()], "cgroup_root"),
        (vec!["--attribute".into(), "novalue".into()], "attribute"),
        (
            vec!["--config".into(), "/nonexistent.toml".into()],
            "nonexistent.toml",
        ),
    ] {
        let out = Command::new(AGENT_BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn cli_runs_lists_kills_and_reads_logs() {
    if !require_root("cli_runs_lists_kills_and_reads_logs") {
        return;
    }
    let agent = TestAgent::start();
    let cli = |args: &[&str]| agent.cli(args);

    let out = cli(&["run", "--id", "c1", "--wait", "--", "echo hello; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("c1"));
    let out = cli(&["logs", "c1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = cli(&[
        "run", "--id", "c2", "--cpus", "0.25", "--mem", "32", "--", "sleep", "60",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c2 RUNNING");
    assert_eq!(agent.status("c2").resources.cpus, 0.25);
    let out = cli(&["ps"]);
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(
        ps.contains("c1") && ps.contains("c2") && ps.contains("RUNNING"),
        "{ps}"
    );
    let out = cli(&["kill", "c2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("KILLED"));
    assert_eq!(agent.status("c2").state, TaskState::Killed);

    let out = cli(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let out = cli(&["run", "--cpus=-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpus"));
    let out = Command::new(CLI_BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_stops_the_agent_but_not_its_tasks() {
    if !require_root("sigterm_stops_the_agent_but_not_its_tasks") {
        return;
    }
    let mut agent = TestAgent::start();
    let st = agent.submit(spec("sleep 60")).unwrap();
    let pid = st.pid.unwrap();
    agent.stop_agent(libc::SIGTERM);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "task died with the agent"
    );
    agent.spawn();
    let again = agent.status(&st.id);
    assert_eq!((again.state, again.pid), (TaskState::Running, Some(pid)));
    agent
        .client
        .delete::<Value>(&format!("/v1/tasks/{}", st.id))
        .unwrap();
    assert_eq!(
        agent.wait_final(&st.id, Duration::from_secs(20)).state,
        TaskState::Killed
    );
}

#[test]
fn the_served_openapi_document_is_the_kept_one() {
    if !require_root("the_served_openapi_document_is_the_kept_one") {
        return;
    }
    let agent = TestAgent::start();
    let served = agent.client.get_text("/v1/openapi.json").unwrap();
    let kept =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    assert!(
        served == kept,
        "GET /v1/openapi.json differs from docs/openapi.json"
    );
}
