//! Drain latency: etcd delete of an attribute to SIGTERM delivered to the
//! task that needed it (the task's TERM trap writes a file), p50/p99 over
//! 100 trials; then attribute propagation with 100 attributes and 500
//! constrained tasks. Needs root, etcd. Run: `cargo bench --bench drain`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::*;
use gleaner_agent::status::{TaskState, TaskStatus};
use serde_json::{json, Value};

fn main() {
    if !require_root("bench drain") {
        return;
    }
    let trials: usize = env_usize("TRIALS", 100);
    let tasks: usize = env_usize("TASKS", 500);
    let Some(etcd) = Etcd::start() else { return };
    let agent = TestAgent::start_with(&format!("node_id = \"b1\"\netcd = [{:?}]", etcd.endpoint));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt
        .block_on(etcd_client::Client::connect([etcd.endpoint.as_str()], None))
        .unwrap();
    let key = |n: &str| format!("/gleaner/nodes/b1/attributes/{n}");

    let mut ms = Vec::new();
    for i in 0..trials {
        rt.block_on(client.put(key("ssd"), "true", None)).unwrap();
        wait_until(Duration::from_secs(10), "the agent", || {
            agent
                .client
                .get::<Value>("/v1/attributes")
                .unwrap()
                .get("ssd")
                .is_some()
        });
        let id = format!("d{i}");
        // `wait` is interrupted by a trapped signal at once (a foreground
        // sleep would delay the trap until it ends).
        let cmd = "trap 'echo T > /sandbox/term; exit 0' TERM; echo ready; sleep 600 & wait $!";
        agent
            .submit(json!({"id": id, "cmd": cmd, "constraints": [["ssd", "IS", "true"]], "cpu_limit": "shares",
                           "resources": {"cpus": 0.01, "mem_mb": 16}}))
            .unwrap();
        agent.wait_output(&id, "ready");
        let term = agent.data_dir.join("tasks").join(&id).join("sandbox/term");
        let t = Instant::now();
        rt.block_on(client.delete(key("ssd"), None)).unwrap();
        wait_until(Duration::from_secs(10), "the agent", || {
            Path::new(&term).exists()
        });
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        agent.wait_final(&id, Duration::from_secs(10));
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("== drain latency: etcd delete -> SIGTERM handled by the task, {trials} trials");
    println!(
        "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );

    // 500 running tasks, each constrained on one of 100 attributes.
    for a in 0..100 {
        rt.block_on(client.put(key(&format!("a{a}")), "on", None))
            .unwrap();
    }
    wait_until(Duration::from_secs(30), "the agent", || {
        agent
            .client
            .get::<Value>("/v1/attributes")
            .unwrap()
            .as_object()
            .unwrap()
            .len()
            >= 100
    });
    for i in 0..tasks {
        let st = agent
            .submit(
                json!({"id": format!("p{i}"), "argv": ["sleep", "600"], "cpu_limit": "shares",
                           "constraints": [[format!("a{}", i % 100), "IS", "on"]],
                           "resources": {"cpus": 0.001, "mem_mb": 8}}),
            )
            .unwrap();
        assert_eq!(st.state, TaskState::Running, "{st:?}");
    }
    let t = Instant::now();
    for a in 0..100 {
        rt.block_on(client.put(key(&format!("a{a}")), "changed", None))
            .unwrap();
    }
    let puts = t.elapsed();
    let seen = wait_until(Duration::from_secs(60), "the agent", || {
        let attrs: Value = agent.client.get("/v1/attributes").unwrap();
        (0..100).all(|a| attrs[format!("a{a}")] == "changed")
    });
    let all_drained = wait_until(Duration::from_secs(120), "the agent", || {
        let list: Vec<TaskStatus> = agent.client.get("/v1/tasks").unwrap();
        list.iter()
            .filter(|s| s.id.starts_with('p') && s.state == TaskState::Drained)
            .count()
            == tasks
    });
    println!("\n== propagation: 100 attributes changed in etcd, {tasks} running tasks constrained on them");
    println!(
        "100 puts took {:.0} ms; all 100 visible in the agent {:.0} ms after the first put; all {tasks} tasks DRAINED after {:.2} s",
        puts.as_secs_f64() * 1e3,
        (puts + seen).as_secs_f64() * 1e3,
        (puts + seen + all_drained).as_secs_f64()
    );
}
