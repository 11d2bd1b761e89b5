//! Issue 17, the agent side of the console's harvest chart: a fleet agent
//! publishes `harvest/<node>` under its lease (FLEET.md): the monitor's
//! measurement (business, batch) and the reservation, a bounded ring.
//! Root only; a real etcd and a real agent running a CPU-bound task.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use serde_json::{json, Value};

#[test]
fn a_fleet_agent_publishes_its_harvest_ring_under_its_lease() {
    if !require_root("a_fleet_agent_publishes_its_harvest_ring_under_its_lease") {
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    let agent = TestAgent::start_with(&format!("node_id = \"h1\"\netcd = [{:?}]", etcd.endpoint));
    // Batch burns half a CPU (its limit) from the start.
    let burn = json!({
        "spec": {"cmd": "while :; do :; done", "resources": {"cpus": 0.5, "mem_mb": 16}, "kill_grace_s": 1},
        "job": "burn", "attempt": 1, "placed_at": "2026-11-22T10:00:00Z"
    });
    etcd.put("/gleaner/placements/h1/burn.1", &burn.to_string());
    let start = Instant::now();
    loop {
        let rec = etcd.get("/gleaner/tasks/burn.1").unwrap_or_default();
        if rec.contains("\"RUNNING\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "burn.1 not running: {rec}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The first write follows the second sample (rates need two): ~15 s.
    let start = Instant::now();
    let ring: Value = loop {
        if let Some(v) = etcd.get("/gleaner/harvest/h1") {
            break serde_json::from_str(&v).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no harvest/h1 key"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("harvest/h1 after {:?}: {ring}", start.elapsed());
    assert_eq!(ring["node"], "h1");
    assert_eq!(ring["every_s"], 15);
    assert_eq!(ring["columns"][5], "business_cpus");
    let s = &ring["samples"][0];
    let info: Value = serde_json::from_str(&etcd.get("/gleaner/nodes/h1/info").unwrap()).unwrap();
    let reserved: f64 = info["roles"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["reserved"]["cpus"].as_f64().unwrap())
        .sum();
    assert_eq!(s[1].as_f64().unwrap(), reserved, "{s}");
    // The burner's use shows in gleaner's root cgroup (a sample is only
    // written when that cgroup was read). How much it got depends on the
    // business: gleaner runs SCHED_IDLE, and a machine busy compiling
    // leaves it little.
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let (batch, business) = (s[3].as_f64().unwrap(), s[5].as_f64().unwrap());
    assert!(batch > 0.0 && batch <= 0.5 + 0.05, "batch cpus: {s}");
    assert!(business >= 0.0 && batch + business <= cores + 0.1, "{s}");
    assert!(
        s[4].as_f64().unwrap() > 0.0 && s[6].as_f64().unwrap() > 0.0,
        "{s}"
    );
    // Under the node's lease: it goes with the node.
    let lease = etcd
        .ctl(&["get", "/gleaner/harvest/h1", "-w", "json"])
        .unwrap();
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert!(
        lease["kvs"][0]["lease"].as_i64().unwrap_or(0) != 0,
        "{lease}"
    );
    // The burner is killed with its key.
    etcd.del("/gleaner/placements/h1/burn.1");
    agent.wait_state(
        "burn.1",
        gleaner_agent::status::TaskState::Killed,
        Duration::from_secs(30),
    );
}
