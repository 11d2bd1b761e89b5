//! Issue 13, the agent side of the fleet: capacity in `nodes/<node>/info`,
//! placements run exactly once and killed when their key goes, every state
//! change in `tasks/<id>`, an outbox while etcd is away, resync after an
//! agent restart. Root only; a real etcd started here, placements written
//! with etcdctl as the scheduler would.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn placement(cmd: &str, job: &str) -> String {
    json!({
        "spec": {"cmd": cmd, "resources": {"cpus": 0.1, "mem_mb": 16}, "kill_grace_s": 1},
        "job": job, "attempt": 1, "placed_at": "2026-11-22T10:00:00Z"
    })
    .to_string()
}

/// `tasks/<id>` as JSON, once `pred` holds for it.
fn wait_task_key(etcd: &Etcd, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let key = format!("/gleaner/tasks/{id}");
    let start = Instant::now();
    loop {
        if let Some(v) = etcd.get(&key) {
            let v: Value = serde_json::from_str(&v).unwrap();
            if pred(&v) {
                return v;
            }
            assert!(start.elapsed() < LONG, "{key} never {what}: {v}");
        } else {
            assert!(start.elapsed() < LONG, "{key} never written ({what})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["state"] == state
}

fn info(etcd: &Etcd, node: &str) -> Value {
    serde_json::from_str(
        &etcd
            .get(&format!("/gleaner/nodes/{node}/info"))
            .expect("info key"),
    )
    .unwrap()
}

#[test]
fn placements_run_once_publish_states_and_die_with_their_key() {
    if !require_root("placements_run_once_publish_states_and_die_with_their_key") {
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    let mut agent = TestAgent::start_with(&format!(
        "node_id = \"n1\"\netcd = [{:?}]\n[attributes]\nrack = \"r1\"",
        etcd.endpoint
    ));

    // Capacity: NodeInfo over the /v1/state shape, under the lease.
    let start = Instant::now();
    while etcd.get("/gleaner/nodes/n1/info").is_none() {
        assert!(start.elapsed() < LONG, "no info key");
        std::thread::sleep(Duration::from_millis(20));
    }
    let i = info(&etcd, "n1");
    assert_eq!(
        (i["node"].as_str(), i["node_id"].as_str()),
        (Some("n1"), Some("n1"))
    );
    assert!(
        i["roles"]["batch"]["reserved"]["cpus"].as_f64().unwrap() > 0.0,
        "{i}"
    );
    assert_eq!(i["roles"]["batch"]["allocated"]["cpus"], 0.0);
    assert_eq!(i["attributes"]["rack"], "r1");
    assert_eq!(i["agent_url"].as_str(), Some(agent.base.as_str()));

    // A placement runs; its states reach tasks/<id> with the node; the
    // allocation shows in the info (debounced, not at the 3 s refresh).
    let placed = Instant::now();
    etcd.put("/gleaner/placements/n1/j1.0", &placement("sleep 600", "j1"));
    let rec = wait_task_key(&etcd, "j1.0", "RUNNING", state_is("RUNNING"));
    eprintln!(
        "placement put -> RUNNING in tasks/<id>: {:?}",
        placed.elapsed()
    );
    assert_eq!(rec["node"], "n1");
    assert_eq!(rec["id"], "j1.0");
    let pid = agent.status("j1.0").pid;
    let start = Instant::now();
    while info(&etcd, "n1")["roles"]["batch"]["allocated"]["cpus"] != 0.1 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "allocation not published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Seen again (a rewrite of its key): the same task, not a second run.
    etcd.put("/gleaner/placements/n1/j1.0", &placement("sleep 600", "j1"));
    std::thread::sleep(Duration::from_millis(300));
    let tasks: Vec<Value> = agent.client.get("/v1/tasks").unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(agent.status("j1.0").pid, pid);

    // A placement the agent refuses: FAILED with the reason, nothing runs.
    etcd.put("/gleaner/placements/n1/bad.0", "{\"spec\": {\"cmd\": 1}}");
    let bad = wait_task_key(&etcd, "bad.0", "FAILED", state_is("FAILED"));
    assert_eq!(bad["reason"], "launch_failed");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("placements/n1/bad.0"),
        "{bad}"
    );

    // Key deleted: the task is killed, and that is published.
    etcd.del("/gleaner/placements/n1/j1.0");
    wait_task_key(&etcd, "j1.0", "KILLED", state_is("KILLED"));
    assert_eq!(agent.status("j1.0").state, TaskState::Killed);

    // Outbox: etcd away while a task ends; the end is published when etcd
    // is back.
    etcd.put("/gleaner/placements/n1/j2.0", &placement("sleep 3", "j2"));
    wait_task_key(&etcd, "j2.0", "RUNNING", state_is("RUNNING"));
    let mut etcd = etcd;
    etcd.kill();
    agent.wait_state("j2.0", TaskState::Finished, LONG);
    std::thread::sleep(Duration::from_millis(500));
    etcd.spawn();
    let back = Instant::now();
    wait_task_key(&etcd, "j2.0", "FINISHED", state_is("FINISHED"));
    eprintln!(
        "FINISHED published {:?} after etcd came back",
        back.elapsed()
    );

    // Agent restart: a placement still present is not run again; one
    // deleted while the agent was down is killed at resync; one added
    // meanwhile starts.
    etcd.put("/gleaner/placements/n1/j3.0", &placement("sleep 600", "j3"));
    etcd.put("/gleaner/placements/n1/j4.0", &placement("sleep 600", "j4"));
    wait_task_key(&etcd, "j3.0", "RUNNING", state_is("RUNNING"));
    wait_task_key(&etcd, "j4.0", "RUNNING", state_is("RUNNING"));
    let pid3 = agent.status("j3.0").pid;
    agent.stop_agent(libc::SIGKILL);
    etcd.del("/gleaner/placements/n1/j4.0");
    etcd.put("/gleaner/placements/n1/j5.0", &placement("sleep 600", "j5"));
    agent.spawn();
    wait_task_key(&etcd, "j4.0", "KILLED", state_is("KILLED"));
    wait_task_key(&etcd, "j5.0", "RUNNING", state_is("RUNNING"));
    let s3 = agent.status("j3.0");
    assert_eq!(
        (s3.state, s3.pid, s3.restarts),
        (TaskState::Running, pid3, 0)
    );
    let tasks: Vec<Value> = agent.client.get("/v1/tasks").unwrap();
    let running = tasks.iter().filter(|t| t["state"] == "RUNNING").count();
    assert_eq!(running, 2, "{tasks:?}");

    for id in ["j3.0", "j5.0"] {
        etcd.del(&format!("/gleaner/placements/n1/{id}"));
        wait_task_key(&etcd, id, "KILLED", state_is("KILLED"));
    }
}

/// Review of issue 20 point 8: retention keeps a finished placed task while
/// its placement key exists (the scheduler owns it), and removes it like
/// any other once the key is gone. Before, a placed task was never
/// removed: on a fleet node (every task placed) finished tasks piled up in
/// memory, on disk and in every pass and publisher sweep.
#[test]
fn finished_placed_tasks_are_removed_once_their_key_is_gone() {
    if !require_root("finished_placed_tasks_are_removed_once_their_key_is_gone") {
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    // 0.001 h = 3.6 s, swept every 0.9 s.
    let agent = TestAgent::start_with(&format!(
        "node_id = \"n1\"\netcd = [{:?}]\nfinished_retention_h = 0.001",
        etcd.endpoint
    ));
    for id in ["r1.0", "r2.0"] {
        etcd.put(
            &format!("/gleaner/placements/n1/{id}"),
            &placement("echo hi", "r"),
        );
    }
    for id in ["r1.0", "r2.0"] {
        wait_task_key(&etcd, id, "FINISHED", state_is("FINISHED"));
    }
    let dir = |id: &str| agent.data_dir.join("tasks").join(id);
    // Past the retention, both keys there: both kept.
    std::thread::sleep(Duration::from_secs(6));
    for id in ["r1.0", "r2.0"] {
        assert_eq!(agent.status(id).state, TaskState::Finished, "{id}");
        assert!(dir(id).exists(), "{id}");
    }
    etcd.del("/gleaner/placements/n1/r1.0");
    let start = Instant::now();
    while agent.client.get::<Value>("/v1/tasks/r1.0").is_ok() || dir("r1.0").exists() {
        assert!(
            start.elapsed() < LONG,
            "r1.0 kept after its key was deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.status("r2.0").state, TaskState::Finished);
    assert!(dir("r2.0").exists());
}
