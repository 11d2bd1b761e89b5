//! Issue 13: the fleet harness itself (3-member etcd cluster, 3 agents as
//! separate processes), and the agent side against it: registration,
//! placements through the cluster, one member lost, all of etcd lost and
//! back (nothing killed, statuses catch up), an agent's lease expiring
//! after kill -9. Root only.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::require_root;
use serde_json::{json, Value};

fn placement(cmd: &str) -> String {
    json!({"spec": {"cmd": cmd, "resources": {"cpus": 0.1, "mem_mb": 16}, "kill_grace_s": 1},
           "job": "j", "attempt": 1, "placed_at": "2026-11-22T10:00:00Z"})
    .to_string()
}

fn task_state(fleet: &Fleet, id: &str) -> Option<String> {
    fleet
        .etcd
        .get_json(&format!("/gleaner/tasks/{id}"))
        .and_then(|v| v["state"].as_str().map(str::to_owned))
}

fn wait_state(fleet: &Fleet, id: &str, state: &str, limit: Duration) -> Duration {
    wait_until(limit, &format!("tasks/{id} {state}"), || {
        task_state(fleet, id).as_deref() == Some(state)
    })
}

#[test]
fn three_agents_on_a_three_member_etcd_survive_member_and_cluster_loss() {
    if !require_root("three_agents_on_a_three_member_etcd_survive_member_and_cluster_loss") {
        return;
    }
    let specs: Vec<AgentSpec> = ["a1", "a2", "a3"]
        .iter()
        .enumerate()
        .map(|(i, node)| AgentSpec {
            node,
            attributes: vec![("rack", ["r1", "r2", "r2"][i])],
            extra: String::new(),
        })
        .collect();
    let Some(mut fleet) = Fleet::start(&specs) else {
        return;
    };
    fleet.wait_registered();
    let info = fleet.etcd.get_json("/gleaner/nodes/a2/info").unwrap();
    assert_eq!(info["attributes"]["rack"], "r2");

    // One placement per node, through the cluster.
    for a in ["a1", "a2", "a3"] {
        fleet.etcd.put(
            &format!("/gleaner/placements/{a}/{a}-long"),
            &placement("sleep 600"),
        );
    }
    for a in ["a1", "a2", "a3"] {
        wait_state(
            &fleet,
            &format!("{a}-long"),
            "RUNNING",
            Duration::from_secs(30),
        );
        let rec = fleet
            .etcd
            .get_json(&format!("/gleaner/tasks/{a}-long"))
            .unwrap();
        assert_eq!(rec["node"], a);
    }

    // One member down: the quorum holds; placements still flow.
    fleet.etcd.kill_member(0);
    fleet.etcd.put(
        "/gleaner/placements/a1/after-member",
        &placement("sleep 600"),
    );
    let took = wait_state(&fleet, "after-member", "RUNNING", Duration::from_secs(30));
    eprintln!("one member down: placement -> RUNNING in {took:?}");
    fleet.etcd.restart_member(0);
    fleet.etcd.wait_healthy(Duration::from_secs(30));

    // All of etcd down for a while: nothing is killed, tasks that end
    // meanwhile are published once etcd is back.
    fleet
        .etcd
        .put("/gleaner/placements/a2/short", &placement("sleep 2"));
    wait_state(&fleet, "short", "RUNNING", Duration::from_secs(30));
    fleet.etcd.kill_all();
    let outage = Duration::from_secs(
        std::env::var("FLEET_OUTAGE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12),
    );
    std::thread::sleep(outage);
    for a in ["a1", "a2", "a3"] {
        let running: Vec<String> = fleet
            .agent(a)
            .running()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(running.contains(&format!("{a}-long")), "{a}: {running:?}");
    }
    let finished = fleet
        .agent("a2")
        .tasks()
        .into_iter()
        .find(|t| t["id"] == "short")
        .unwrap();
    assert_eq!(finished["state"], "FINISHED");
    let back = Instant::now();
    fleet.etcd.restart_all();
    wait_state(&fleet, "short", "FINISHED", Duration::from_secs(30));
    eprintln!(
        "etcd back: FINISHED published {:?} after restart",
        back.elapsed()
    );
    fleet.wait_registered();
    for a in ["a1", "a2", "a3"] {
        assert_eq!(
            task_state(&fleet, &format!("{a}-long")).as_deref(),
            Some("RUNNING")
        );
    }

    // kill -9 of an agent: its info key goes with the lease, its task keeps
    // running; restarted, it registers again and adopts the task (one run).
    let pid_before = fleet.agent("a3").running()[0]["pid"].clone();
    fleet.agent_mut("a3").kill(Signal::SIGKILL);
    let gone = wait_until(Duration::from_secs(20), "a3's info key expires", || {
        fleet.etcd.get("/gleaner/nodes/a3/info").is_none()
    });
    eprintln!("a3 info key gone {gone:?} after kill -9");
    fleet.agent_mut("a3").spawn();
    fleet.wait_registered();
    let running: Vec<Value> = fleet.agent("a3").running();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["pid"], pid_before);
}
