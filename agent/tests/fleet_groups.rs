//! Issue 22, the agent side: placements that name a group (a fleet gang's
//! members placed together on this node) are gathered and submitted as one
//! task group; a member that never comes, or whose key goes first, refuses
//! the others; a sidecar placed alone is refused. Root only; a real etcd,
//! placements written with etcdctl as the scheduler would.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn placement(id: &str, cmd: &str, sidecar: bool, group: Option<(&str, &[&str])>) -> String {
    let mut p = json!({
        "spec": {"cmd": cmd, "sidecar": sidecar, "kill_grace_s": 1,
                 "resources": {"cpus": 0.1, "mem_mb": 16}},
        "job": id.split('.').next().unwrap(), "attempt": 1,
        "placed_at": "2026-12-07T10:00:00Z"
    });
    if let Some((gid, members)) = group {
        p["group"] = json!({"id": gid, "gang": "g", "members": members, "network": "group"});
    }
    p.to_string()
}

/// `tasks/<id>` once `pred` holds for it.
fn wait_task_key(etcd: &Etcd, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let key = format!("/gleaner/tasks/{id}");
    let start = Instant::now();
    loop {
        let v = etcd
            .get(&key)
            .map(|v| serde_json::from_str::<Value>(&v).unwrap());
        if let Some(v) = v.as_ref().filter(|v| pred(v)) {
            return v.clone();
        }
        assert!(start.elapsed() < LONG, "{key} never {what}: {v:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put(etcd: &Etcd, id: &str, value: &str) {
    etcd.put(&format!("/gleaner/placements/n1/{id}"), value);
}

#[test]
fn placed_groups_are_gathered_whole_and_refused_when_a_member_never_comes() {
    if !require_root("placed_groups_are_gathered_whole_and_refused_when_a_member_never_comes") {
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    let agent = TestAgent::start_with(&format!("node_id = \"n1\"\netcd = [{:?}]", etcd.endpoint));
    let start = Instant::now();
    while etcd.get("/gleaner/nodes/n1/info").is_none() {
        assert!(start.elapsed() < LONG, "no info key");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two members in two revisions (the scheduler writes one; the worker
    // must not depend on it): the first waits for the second, then both
    // run as one group with one network.
    let members: &[&str] = &["a.1", "b.1"];
    put(
        &etcd,
        "b.1",
        &placement("b.1", "sleep 600", true, Some(("a.1.pod", members))),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.client.get::<Value>("/v1/tasks/b.1").is_err(),
        "a member was submitted before its group was whole"
    );
    put(
        &etcd,
        "a.1",
        &placement("a.1", "sleep 600", false, Some(("a.1.pod", members))),
    );
    for id in members {
        wait_task_key(&etcd, id, "RUNNING", |v| v["state"] == "RUNNING");
    }
    let g: Value = agent.client.get("/v1/groups/a.1.pod").unwrap();
    assert_eq!(
        (g["network"].as_str(), g["tasks"].as_array().map(Vec::len)),
        (Some("group"), Some(2)),
        "{g}"
    );

    // A sidecar placed alone: refused, as on the API.
    put(&etcd, "s.1", &placement("s.1", "sleep 600", true, None));
    let s = wait_task_key(&etcd, "s.1", "FAILED", |v| v["state"] == "FAILED");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sidecar"),
        "{s}"
    );

    // A member whose key goes before the group is whole: the others are
    // refused at once, naming it.
    let three: &[&str] = &["e.1", "f.1", "h.1"];
    put(
        &etcd,
        "e.1",
        &placement("e.1", "sleep 600", false, Some(("e.1.pod", three))),
    );
    put(
        &etcd,
        "f.1",
        &placement("f.1", "sleep 600", false, Some(("e.1.pod", three))),
    );
    let deleted = Instant::now();
    etcd.del("/gleaner/placements/n1/f.1");
    let e = wait_task_key(&etcd, "e.1", "FAILED", |v| v["state"] == "FAILED");
    assert!(
        deleted.elapsed() < Duration::from_secs(8),
        "not at once: {:?}",
        deleted.elapsed()
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("f.1's placement was deleted"),
        "{e}"
    );
    assert_eq!(e["reason"], "launch_failed");

    // A member that never comes: the present one is refused after the
    // bound (10 s), and nothing of the group ran.
    let put_at = Instant::now();
    put(
        &etcd,
        "c.1",
        &placement(
            "c.1",
            "sleep 600",
            false,
            Some(("c.1.pod", &["c.1", "d.1"])),
        ),
    );
    let c = wait_task_key(&etcd, "c.1", "FAILED", |v| v["state"] == "FAILED");
    let waited = put_at.elapsed();
    assert!(waited >= Duration::from_secs(9), "refused after {waited:?}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("d.1 never arrived"),
        "{c}"
    );
    assert!(agent.client.get::<Value>("/v1/groups/c.1.pod").is_err());

    // The main member's key goes: it is killed, and the group stops its
    // sidecar (the main members have ended).
    etcd.del("/gleaner/placements/n1/a.1");
    assert_eq!(agent.wait_final("a.1", LONG).state, TaskState::Killed);
    let side = agent.wait_final("b.1", LONG);
    assert_eq!(side.state, TaskState::Killed, "{side:?}");
    assert!(
        side.message
            .as_deref()
            .unwrap_or("")
            .contains("main members"),
        "{side:?}"
    );
    wait_task_key(&etcd, "b.1", "KILLED", |v| v["state"] == "KILLED");
}
