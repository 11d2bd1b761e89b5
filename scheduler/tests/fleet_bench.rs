//! bench/fleet with real agents (ignored by default; figures in
//! bench/RESULTS.md):
//! `cargo test --release -p gleaner-scheduler --test fleet_bench -- --ignored --nocapture`
//! * submit → RUNNING through etcd on 3 agents, p50/p99 (one job at a time);
//! * drain (`etcdctl del` of an attribute) → the replacement RUNNING on
//!   another node (its `started_at`), p50/p99, and where the time goes;
//! * leader kill -9 → the first placement written by the new leader.
//! Times come from etcd watches (RUNNING = the agent's `tasks/<id>` record).
//! Sizes: FLEET_BENCH_SUBMITS (100), FLEET_BENCH_DRAINS (20),
//! FLEET_BENCH_FAILOVERS (5).

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use serde_json::{json, Value};

fn n(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits on `watch` for a put whose key and value satisfy `pred`.
async fn next_put(
    watch: &mut WatchStream,
    limit: Duration,
    mut pred: impl FnMut(&str, &Value) -> bool,
) -> Instant {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("timed out waiting for a watch event")
            .expect("watch")
            .expect("watch closed");
        let now = Instant::now();
        for ev in msg.events() {
            if ev.event_type() != EventType::Put {
                continue;
            }
            let Some(kv) = ev.kv() else { continue };
            let key = kv.key_str().unwrap_or_default();
            let value: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
            if pred(key, &value) {
                return now;
            }
        }
    }
}

async fn watch(client: &mut Client, prefix: &str) -> WatchStream {
    client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap()
}

fn job_of(task_key: &str) -> &str {
    let task = task_key.rsplit('/').next().unwrap_or_default();
    task.rsplit_once('.').map(|(j, _)| j).unwrap_or(task)
}

#[test]
#[ignore]
fn fleet_bench_real_agents() {
    if !require_root("fleet_bench_real_agents") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(mut fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    for node in ["n1", "n2"] {
        fleet
            .etcd
            .put(&format!("/gleaner/nodes/{node}/attributes/ssd"), "true");
    }
    put_queue(&fleet, "q", 1.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt
        .block_on(Client::connect(fleet.etcd.endpoints(), None))
        .unwrap();

    // Submit -> RUNNING, one job at a time.
    let mut lat = Vec::new();
    let mut tasks = rt.block_on(watch(&mut client, "/gleaner/tasks/"));
    for _ in 0..n("FLEET_BENCH_SUBMITS", 100) {
        let t0 = Instant::now();
        let id = submit(&fleet, "q", vec![sleeper(0.1, 1, json!([]))]).remove(0);
        let t1 = rt.block_on(next_put(&mut tasks, LONG, |k, v| {
            job_of(k) == id && v["state"] == "RUNNING"
        }));
        lat.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    eprintln!(
        "submit -> RUNNING (3 agents, {} jobs): p50 {p50:.1} ms, p99 {p99:.1} ms",
        lat.len()
    );

    // Drain -> replacement RUNNING elsewhere.
    let id = submit(
        &fleet,
        "q",
        vec![sleeper(0.1, 3600, json!([["ssd", "IS", "true"]]))],
    )
    .remove(0);
    rt.block_on(next_put(&mut tasks, LONG, |k, v| {
        job_of(k) == id && v["state"] == "RUNNING"
    }));
    let (d50, d99, n_drains, breakdown) = drains(
        &fleet,
        &rt,
        &mut client,
        &id,
        n("FLEET_BENCH_DRAINS", 20),
        "job",
    );

    // The same for an app instance: it is replaced as soon as the leader
    // sees the attribute go, not after the old instance ended.
    let app = json!({"id": "/bench/drain", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16,
        "instances": 1, "taskKillGracePeriodSeconds": 1,
        "constraints": [["ssd", "IS", "true"]]});
    let (code, reply) = fleet.schedulers[0].request("POST", "/v2/apps", Some(&app));
    assert_eq!(code, 201, "{reply}");
    let app_job = rt.block_on(async {
        let mut job = String::new();
        next_put(&mut tasks, LONG, |k, v| {
            let hit = v["state"] == "RUNNING" && k.contains("bench_drain");
            if hit {
                job = job_of(k).to_owned();
            }
            hit
        })
        .await;
        job
    });
    let (a50, a99, n_app_drains, app_breakdown) = drains(
        &fleet,
        &rt,
        &mut client,
        &app_job,
        n("FLEET_BENCH_DRAINS", 20),
        "app instance",
    );

    // Leader kill -9 -> the first placement by the new leader.
    let mut failovers = Vec::new();
    for _ in 0..n("FLEET_BENCH_FAILOVERS", 5) {
        let old = leader(&fleet).expect("a leader");
        let other = 1 - old;
        let mut placements = rt.block_on(watch(&mut client, "/gleaner/placements/"));
        let t0 = Instant::now();
        fleet.schedulers[old].kill(Signal::SIGKILL);
        // Submitted through the survivor right after the kill.
        let body = json!({"queue": "q", "jobs": [sleeper(0.1, 1, json!([]))]});
        let (code, reply) = fleet.schedulers[other].request("POST", "/v1/jobs", Some(&body));
        assert_eq!(code, 201, "{reply}");
        let id = reply["jobs"][0].as_str().unwrap().to_owned();
        let t1 = rt.block_on(next_put(
            &mut placements,
            Duration::from_secs(60),
            |k, _| job_of(k) == id,
        ));
        failovers.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        fleet.schedulers[old].spawn();
        wait_until(LONG, "a leader again", || leader(&fleet).is_some());
    }
    let worst = failovers.iter().cloned().fold(0.0, f64::max);
    eprintln!("leader kill -9 -> first placement: {failovers:.0?} ms (max {worst:.0} ms)");
    println!(
        "{}",
        json!({"submit_to_running_ms": {"p50": p50, "p99": p99, "n": lat.len()},
               "drain_to_replacement_running_ms": {"p50": d50, "p99": d99, "n": n_drains},
               "drain_steps_ms": breakdown,
               "app_drain_to_replacement_running_ms": {"p50": a50, "p99": a99, "n": n_app_drains},
               "app_drain_steps_ms": app_breakdown,
               "leader_failover_to_first_placement_ms": failovers})
    );
}

/// `count` drains of `id` (an `etcdctl del` of the attribute its
/// constraint needs, on its node): p50, p99, how many, and each step's
/// p50/p99 since the del.
fn drains(
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
    client: &mut Client,
    id: &str,
    count: usize,
    what: &str,
) -> (f64, f64, usize, serde_json::Map<String, Value>) {
    let mut drains = Vec::new();
    // Where a drain's time goes: each step's first sight on a watch of the
    // whole prefix, in ms since the `etcdctl del`.
    let mut steps: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
    for _ in 0..count {
        let node = wait_node(fleet, id);
        let other = if node == "n1" { "n2" } else { "n1" };
        fleet
            .etcd
            .put(&format!("/gleaner/nodes/{other}/attributes/ssd"), "true");
        // The other node must have reported the attribute first.
        wait_until(LONG, "the attribute in the other node's info", || {
            fleet
                .etcd
                .get_json(&format!("/gleaner/nodes/{other}/info"))
                .is_some_and(|i| i["attributes"]["ssd"] == "true")
        });
        let mut all = rt.block_on(watch(client, "/gleaner/"));
        let t0 = Utc::now();
        fleet
            .etcd
            .del(&format!("/gleaner/nodes/{node}/attributes/ssd"));
        let seen = rt.block_on(drain_steps(&mut all, id, &node, other));
        let ms = |t: &DateTime<Utc>| (*t - t0).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        for (i, t) in seen.iter().enumerate() {
            if let Some(t) = t {
                steps[i].push(ms(t));
            }
        }
        // The drain ends when the agent marks the new attempt RUNNING.
        drains.push(ms(seen[4].as_ref().expect("started_at")));
    }
    let (d50, d99) = (pct(&mut drains, 0.5), pct(&mut drains, 0.99));
    eprintln!(
        "{what}: drain -> replacement RUNNING ({} drains): p50 {d50:.1} ms, p99 {d99:.1} ms",
        drains.len()
    );
    let mut breakdown = serde_json::Map::new();
    for (name, v) in STEPS.iter().zip(steps.iter_mut()) {
        if v.is_empty() {
            continue;
        }
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        eprintln!("  {name:<50} p50 {p50:7.1} ms  p99 {p99:7.1} ms (since the del)");
        breakdown.insert(name.to_string(), json!({"p50": p50, "p99": p99}));
    }

    (d50, d99, drains.len(), breakdown)
}

/// The steps of a drain, from the records' own timestamps (one host
/// clock): a watcher's receive times lag under load and arrive in bursts.
const STEPS: [&str; 6] = [
    "old attempt ended (its finished_at)",
    "DRAINED record seen by the bench",
    "new attempt placed (job placed_at)",
    "new attempt accepted by its agent (submitted_at)",
    "new attempt RUNNING (started_at)",
    "RUNNING record seen by the bench",
];

fn at(v: &Value, field: &str) -> Option<DateTime<Utc>> {
    v[field].as_str()?.parse().ok()
}

/// Watches every key under the prefix until the job's new attempt is
/// RUNNING on `other`; returns each step's time.
async fn drain_steps(
    watch: &mut WatchStream,
    job: &str,
    old: &str,
    other: &str,
) -> Vec<Option<DateTime<Utc>>> {
    let mut seen = vec![None; STEPS.len()];
    let deadline = tokio::time::Instant::now() + LONG;
    while seen[STEPS.len() - 1].is_none() {
        let msg = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("timed out waiting for the drain")
            .expect("watch")
            .expect("watch closed");
        let now = Utc::now();
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            if ev.event_type() != EventType::Put {
                continue;
            }
            let key = kv.key_str().unwrap_or_default();
            let v: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
            if key.starts_with("/gleaner/tasks/") && job_of(key) == job {
                if v["node"] == old && (v["state"] == "DRAINED" || v["state"] == "KILLED") {
                    seen[0] = at(&v, "finished_at");
                    seen[1].get_or_insert(now);
                } else if v["node"] == other && v["state"] == "RUNNING" {
                    seen[3] = at(&v, "submitted_at");
                    seen[4] = at(&v, "started_at");
                    seen[5] = Some(now);
                }
            } else if key == format!("/gleaner/jobs/{job}") && v["state"] == "PLACED" {
                seen[2] = at(&v, "placed_at");
            }
        }
    }
    seen
}

/// The node the job runs on now (the agents' truth).
fn wait_node(fleet: &Fleet, id: &str) -> String {
    let mut node = String::new();
    wait_until(LONG, "the job running", || {
        match running_by_job(fleet).get(id) {
            Some(n) if n.len() == 1 => {
                node = n[0].clone();
                true
            }
            _ => false,
        }
    });
    node
}
