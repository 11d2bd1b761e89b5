//! Issue 5: node attributes from config, HTTP and etcd; constraints; drain
//! when an attribute goes away. Root only; a real etcd started here.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::{Reason, TaskState};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn constrained(id: &str, constraint: Value) -> Value {
    json!({"id": id, "argv": ["sleep", "600"], "constraints": [constraint], "kill_grace_s": 2,
           "resources": {"cpus": 0.05, "mem_mb": 16}})
}

fn attrs(agent: &TestAgent) -> Value {
    agent.client.get("/v1/attributes").unwrap()
}

fn wait_attr(agent: &TestAgent, name: &str, value: Option<&str>) -> Duration {
    let start = Instant::now();
    loop {
        if attrs(agent).get(name).and_then(|v| v.as_str()) == value {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < LONG,
            "attribute {name} never became {value:?}: {}",
            attrs(agent)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn attributes_from_config_and_http_persist_and_drain() {
    if !require_root("attributes_from_config_and_http_persist_and_drain") {
        return;
    }
    let mut agent = TestAgent::start_with("[attributes]\nzone = \"east-1\"");
    assert_eq!(attrs(&agent), json!({"zone": "east-1"}));

    // Constraints at admission: waits with a reason, starts when it holds.
    let st = agent
        .submit(constrained("fast", json!(["ssd", "IS", "true"])))
        .unwrap();
    assert_eq!(st.state, TaskState::Queued);
    assert!(st.message.unwrap().contains("ssd is not set"));
    let zoned = agent
        .submit(constrained("zoned", json!(["zone", "LIKE", "east-.*"])))
        .unwrap();
    assert_eq!(zoned.state, TaskState::Running);
    let set: Value = agent
        .client
        .put("/v1/attributes/ssd", &json!({"value": "true"}))
        .unwrap();
    assert_eq!(set["source"], "http");
    agent.wait_state("fast", TaskState::Running, LONG);

    // Sources, persistence across a restart.
    let with_sources: Value = agent.client.get("/v1/attributes?sources=true").unwrap();
    assert_eq!(with_sources["zone"]["source"], "static");
    assert_eq!(with_sources["ssd"]["source"], "http");
    agent.stop_agent(libc::SIGTERM);
    agent.spawn();
    assert_eq!(attrs(&agent)["ssd"], "true");
    assert_eq!(agent.status("fast").state, TaskState::Running);

    // Removing the attribute drains the task that needs it, and only it.
    let _: Value = agent.client.delete("/v1/attributes/ssd").unwrap();
    let drained = agent.wait_final("fast", LONG);
    assert_eq!(
        (drained.state, drained.reason),
        (TaskState::Drained, Some(Reason::Drained))
    );
    assert!(drained.message.unwrap().contains("ssd IS true"));
    assert_eq!(agent.status("zoned").state, TaskState::Running);
    // Matching again later does not resurrect it.
    let _: Value = agent
        .client
        .put("/v1/attributes/ssd", &json!({"value": "true"}))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.status("fast").state, TaskState::Drained);

    // Bad input.
    for (method, path, body, code) in [
        (
            "PUT",
            "/v1/attributes/bad%20name",
            json!({"value": "x"}),
            400,
        ),
        ("PUT", "/v1/attributes/ok", json!({"val": "x"}), 400),
        ("DELETE", "/v1/attributes/zone", json!(null), 409),
        ("DELETE", "/v1/attributes/nothing", json!(null), 404),
    ] {
        let r = match method {
            "PUT" => agent.client.put::<_, Value>(path, &body),
            _ => agent.client.delete::<Value>(path),
        };
        match r {
            Err(ClientError::Api { status, .. }) => assert_eq!(status, code, "{method} {path}"),
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    match agent.submit(constrained("bad", json!(["zone", "NEAR", "x"]))) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("unknown operator"), "{message}"),
        other => panic!("{other:?}"),
    }

    // CLI.
    let cli = |args: &[&str]| agent.cli(args);
    assert!(cli(&["attr", "set", "rack", "r7"]).status.success());
    let ls = String::from_utf8_lossy(&cli(&["attr", "ls"]).stdout).into_owned();
    assert!(
        ls.contains("rack") && ls.contains("r7") && ls.contains("static"),
        "{ls}"
    );
    assert!(cli(&["attr", "rm", "rack"]).status.success());
    assert!(attrs(&agent).get("rack").is_none());
}

#[test]
fn unique_and_max_per_count_tasks_of_the_same_kind() {
    if !require_root("unique_and_max_per_count_tasks_of_the_same_kind") {
        return;
    }
    let agent = TestAgent::start_with("[attributes]\nrack = \"r1\"");
    let one = |id: &str| json!({"id": id, "argv": ["sleep", "600"], "constraints": [["rack", "UNIQUE"]], "resources": {"cpus": 0.05, "mem_mb": 16}});
    assert_eq!(agent.submit(one("u1")).unwrap().state, TaskState::Running);
    let second = agent.submit(one("u2")).unwrap();
    assert_eq!(second.state, TaskState::Queued);
    assert!(second.message.unwrap().contains("UNIQUE"));
    agent.kill("u1");
    agent.wait_state("u2", TaskState::Running, LONG);
}

#[test]
fn etcd_attributes_watch_drain_lease_and_write_through() {
    if !require_root("etcd_attributes_watch_drain_lease_and_write_through") {
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    let mut agent =
        TestAgent::start_with(&format!("node_id = \"h1\"\netcd = [{:?}]", etcd.endpoint));
    let key = |name: &str| format!("/gleaner/nodes/h1/attributes/{name}");

    etcd.put(&key("ssd"), "true");
    let took = wait_attr(&agent, "ssd", Some("true"));
    eprintln!("etcdctl put visible in the agent after {took:?}");
    let with_sources: Value = agent.client.get("/v1/attributes?sources=true").unwrap();
    assert_eq!(with_sources["ssd"]["source"], "etcd");

    agent
        .submit(constrained("needs-ssd", json!(["ssd", "IS", "true"])))
        .unwrap();
    agent.wait_state("needs-ssd", TaskState::Running, LONG);
    etcd.del(&key("ssd"));
    let drained = agent.wait_final("needs-ssd", LONG);
    assert_eq!(drained.state, TaskState::Drained);

    // HTTP writes go through etcd.
    let _: Value = agent
        .client
        .put("/v1/attributes/zone", &json!({"value": "west"}))
        .unwrap();
    assert_eq!(etcd.get(&key("zone")).as_deref(), Some("west"));
    let _: Value = agent.client.delete("/v1/attributes/zone").unwrap();
    assert_eq!(etcd.get(&key("zone")), None);

    // Registration under a lease: gone after kill -9 within the TTL, back on restart.
    let info = etcd.get("/gleaner/nodes/h1/info").expect("info key");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["node_id"], "h1");
    let nodes = std::process::Command::new(CLI_BIN)
        .args(["nodes", "--etcd", &etcd.endpoint])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains("h1"),
        "{nodes:?}"
    );
    agent.stop_agent(libc::SIGKILL);
    let start = Instant::now();
    while etcd.get("/gleaner/nodes/h1/info").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(14),
            "info key outlived the lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("info key vanished {:?} after kill -9", start.elapsed());
    agent.spawn();
    let start = Instant::now();
    while etcd.get("/gleaner/nodes/h1/info").is_none() {
        assert!(start.elapsed() < LONG, "info key did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn etcd_outages_lose_nothing_and_never_drain_by_themselves() {
    if !require_root("etcd_outages_lose_nothing_and_never_drain_by_themselves") {
        return;
    }
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let key = |name: &str| format!("/gleaner/nodes/h2/attributes/{name}");
    etcd.put(&key("ssd"), "true");
    let mut agent =
        TestAgent::start_with(&format!("node_id = \"h2\"\netcd = [{:?}]", etcd.endpoint));
    wait_attr(&agent, "ssd", Some("true"));
    agent
        .submit(constrained("steady", json!(["ssd", "IS", "true"])))
        .unwrap();
    agent.wait_state("steady", TaskState::Running, LONG);

    for round in 0..5 {
        etcd.kill();
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            agent.status("steady").state,
            TaskState::Running,
            "round {round}: drained while etcd was down"
        );
        assert_eq!(attrs(&agent)["ssd"], "true");
        // Writes while etcd is down are refused, not half-applied.
        match agent
            .client
            .put::<_, Value>("/v1/attributes/x", &json!({"value": "1"}))
        {
            Err(ClientError::Api { status: 503, .. }) => {}
            other => panic!("round {round}: {other:?}"),
        }
        etcd.spawn();
        etcd.put(&key(&format!("round{round}")), "done");
        wait_attr(&agent, &format!("round{round}"), Some("done"));
    }
    assert!(attrs(&agent).get("x").is_none());

    // The agent restarts while etcd is down: it keeps the last attributes.
    etcd.kill();
    agent.stop_agent(libc::SIGTERM);
    agent.spawn();
    assert_eq!(attrs(&agent)["ssd"], "true");
    assert_eq!(agent.status("steady").state, TaskState::Running);

    // Deleted while the agent could not see it: drained on resync.
    etcd.spawn();
    wait_attr(&agent, "round4", Some("done"));
    agent.stop_agent(libc::SIGTERM);
    etcd.del(&key("ssd"));
    agent.spawn();
    assert_eq!(agent.wait_final("steady", LONG).state, TaskState::Drained);
    let log = std::fs::read_to_string(&agent.log_path).unwrap();
    let outages = log.matches("etcd unreachable").count();
    assert!(
        outages <= 12,
        "the outage should be logged once per outage, got {outages} lines"
    );
}
