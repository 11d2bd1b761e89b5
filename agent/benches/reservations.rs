//! Reservation changes: PUT latency (request to reply, cgroup written) over
//! 1000 changes; time from a reservation growing to 500 queued tasks
//! RUNNING. Needs root. Run: `cargo bench --bench reservations`
//! (or `bench/reservations`). Prints figures; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::{TaskState, TaskStatus};
use serde_json::{json, Value};

fn main() {
    if !require_root("bench reservations") {
        return;
    }
    let changes: usize = env_usize("CHANGES", 1000);
    let queued: usize = env_usize("QUEUED", 500);
    let agent = TestAgent::start();

    // Two running tasks, so that every change rewrites a role with children.
    agent
        .client
        .put::<_, Value>(
            "/v1/reservations/batch",
            &json!({"cpus": 1.0, "mem_mb": 1024}),
        )
        .unwrap();
    for i in 0..2 {
        agent.submit(json!({"id": format!("base{i}"), "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}})).unwrap();
    }
    let mut ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let (cpus, mem) = if i % 2 == 0 {
            (1.5, 1536.0)
        } else {
            (1.0, 1024.0)
        };
        let t = Instant::now();
        let _: Value = agent
            .client
            .put(
                "/v1/reservations/batch",
                &json!({"cpus": cpus, "mem_mb": mem}),
            )
            .unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| percentile(&ms, p);
    println!("== PUT /v1/reservations/batch, {changes} changes (grow/shrink, 2 running tasks, no preemption)");
    println!(
        "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(0.5),
        pct(0.99),
        ms[ms.len() - 1]
    );

    // 500 queued tasks, then one PUT that makes room for all of them.
    agent
        .client
        .put::<_, Value>(
            "/v1/reservations/batch",
            &json!({"cpus": 0.2, "mem_mb": 64}),
        )
        .unwrap();
    for i in 0..queued {
        let st = agent
            .submit(json!({"id": format!("q{i}"), "argv": ["sleep", "600"], "resources": {"cpus": 0.002, "mem_mb": 8}}))
            .unwrap();
        assert_eq!(st.state, TaskState::Queued, "{st:?}");
    }
    let t = Instant::now();
    let _: Value = agent
        .client
        .put(
            "/v1/reservations/batch",
            &json!({"cpus": 2.0, "mem_mb": 8192}),
        )
        .unwrap();
    let reply = t.elapsed();
    loop {
        let tasks: Vec<TaskStatus> = agent.client.get("/v1/tasks").unwrap();
        if tasks
            .iter()
            .filter(|s| s.state == TaskState::Running)
            .count()
            == queued + 2
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "queued tasks did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("\n== {queued} queued tasks, reservation grows to fit them all");
    println!(
        "PUT reply {:.1} ms; all {queued} RUNNING after {:.2} s ({:.2} ms per task)",
        reply.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e3 / queued as f64
    );
}
