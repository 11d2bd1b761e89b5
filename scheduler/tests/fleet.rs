//! Issue 13, the fleet end to end: a 3-member etcd cluster, two scheduler
//! replicas and real agents (separate processes, real tasks), as FLEET.md
//! describes. Root only. One fleet at a time (the harness serialises them).
//! `FLEET_OUTAGE_S` sets the whole-etcd outage (default 30 s).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Per queue: running jobs (the agents' truth).
fn running_per_queue(fleet: &Fleet) -> BTreeMap<String, usize> {
    let jobs = stored_jobs(fleet);
    let mut out = BTreeMap::new();
    for job in running_by_job(fleet).keys() {
        if let Some(q) = jobs.get(job).and_then(|j| j["queue"].as_str()) {
            *out.entry(q.to_owned()).or_default() += 1;
        }
    }
    out
}

#[test]
fn fair_share_of_two_queues_converges_to_their_factors() {
    if !require_root("fair_share_of_two_queues_converges_to_their_factors") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "qa", 1.0);
    put_queue(&fleet, "qb", 2.0);
    // 6 cpus = 12 slots of 0.5; 60 short jobs each, qa first: the first
    // wave is all qa, and as jobs end the shares converge.
    for q in ["qa", "qb"] {
        let jobs: Vec<Value> = (0..60).map(|_| sleeper(0.5, 2, json!([]))).collect();
        submit(&fleet, q, jobs);
    }
    wait_until(LONG, "12 jobs running", || {
        running_by_job(&fleet).len() >= 12
    });
    std::thread::sleep(Duration::from_secs(5));
    let (mut a, mut b) = (0usize, 0usize);
    for _ in 0..10 {
        let per = running_per_queue(&fleet);
        a += per.get("qa").copied().unwrap_or(0);
        b += per.get("qb").copied().unwrap_or(0);
        assert_never_twice(&fleet);
        std::thread::sleep(Duration::from_millis(500));
    }
    let total = (a + b) as f64;
    eprintln!(
        "queue  factor  running(avg)  share\nqa     1       {:>12.1}  {:.2}\nqb     2       {:>12.1}  {:.2}",
        a as f64 / 10.0,
        a as f64 / total,
        b as f64 / 10.0,
        b as f64 / total
    );
    // FLEET.md (Armada): a queue's share is divided by its weight
    // 1/priority_factor, so factor 2 holds half what factor 1 holds.
    let share_a = a as f64 / total;
    assert!(
        (share_a - 2.0 / 3.0).abs() <= 0.10,
        "qa holds {share_a:.2} of the running work, want 0.67 ± 0.10 (qa {a}, qb {b})"
    );
    assert_never_twice(&fleet);
}

/// (key, create revision) of every placement.
fn placement_revisions(fleet: &Fleet) -> BTreeMap<String, i64> {
    let out = fleet
        .etcd
        .ctl(&[
            "get",
            "--prefix",
            "/gleaner/placements/",
            "--keys-only",
            "-w",
            "json",
        ])
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or_default().to_owned(),
                kv["create_revision"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_gang_of_four_waits_whole_and_starts_together() {
    if !require_root("a_gang_of_four_waits_whole_and_starts_together") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(mut fleet) = fleet(&agents(&names, 1.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    let members: Vec<Value> = (0..4)
        .map(|_| {
            let mut j = sleeper(1.0, 600, json!([]));
            j["gang"] = json!({"id": "g1", "cardinality": 4});
            j
        })
        .collect();
    let ids = submit(&fleet, "q", members);
    // Only 3 fit: nothing starts, nothing is half placed.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert!(running_by_job(&fleet).is_empty(), "a member started alone");
        assert!(
            placement_revisions(&fleet).is_empty(),
            "a member was placed alone"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        assert_eq!(job(&fleet, id)["state"], "QUEUED");
    }
    // Room appears: all four, in one transaction.
    fleet.add_agent(&AgentSpec {
        node: "n4",
        attributes: vec![],
        extra: reservation(1.0),
    });
    let took = wait_until(LONG, "the gang running", || {
        running_by_job(&fleet).len() == 4
    });
    eprintln!("gang of 4 running {took:?} after the 4th node joined");
    let revs: BTreeSet<i64> = placement_revisions(&fleet).into_values().collect();
    assert_eq!(
        revs.len(),
        1,
        "members placed in different transactions: {revs:?}"
    );
    let nodes: BTreeSet<String> = running_by_job(&fleet).into_values().flatten().collect();
    assert_eq!(nodes.len(), 4);
}

#[test]
fn unique_hostname_queues_the_fourth_and_group_by_rack_spreads() {
    if !require_root("unique_hostname_queues_the_fourth_and_group_by_rack_spreads") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let racks = ["r1", "r2", "r2"];
    let Some(fleet) = fleet(&agents(&names, 2.0, |i| vec![("rack", racks[i])]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    let ids = submit(
        &fleet,
        "q",
        (0..4)
            .map(|_| sleeper(0.1, 600, json!([["hostname", "UNIQUE"]])))
            .collect(),
    );
    wait_until(Duration::from_secs(20), "3 unique jobs running", || {
        running_by_job(&fleet).len() == 3
    });
    std::thread::sleep(Duration::from_secs(1));
    let running = running_by_job(&fleet);
    let nodes: BTreeSet<&String> = running.values().flatten().collect();
    assert_eq!((running.len(), nodes.len()), (3, 3), "{running:?}");
    let waiting: Vec<&String> = ids.iter().filter(|id| !running.contains_key(*id)).collect();
    assert_eq!(waiting.len(), 1);
    let j = job(&fleet, waiting[0]);
    assert_eq!(j["state"], "QUEUED", "{j}");
    let why = j["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("UNIQUE"),
        "the reason should name the constraint: {j}"
    );

    // GROUP_BY rack: 4 of another kind spread 2 + 2 over r1 and r2 (bin
    // packing alone would stack them).
    let grouped = submit(
        &fleet,
        "q",
        (0..4)
            .map(|_| sleeper(0.1, 601, json!([["rack", "GROUP_BY"]])))
            .collect(),
    );
    wait_until(LONG, "4 grouped jobs running", || {
        let r = running_by_job(&fleet);
        grouped.iter().all(|id| r.contains_key(id))
    });
    let r = running_by_job(&fleet);
    let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &grouped {
        let node = &r[id][0];
        let i = names.iter().position(|n| n == node).unwrap();
        *per_rack.entry(racks[i]).or_default() += 1;
    }
    assert_eq!(per_rack, BTreeMap::from([("r1", 2), ("r2", 2)]));
}

#[test]
fn deleting_an_attribute_moves_the_task_to_another_matching_node() {
    if !require_root("deleting_an_attribute_moves_the_task_to_another_matching_node") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    for n in ["n1", "n2"] {
        fleet
            .etcd
            .put(&format!("/gleaner/nodes/{n}/attributes/ssd"), "true");
    }
    put_queue(&fleet, "q", 1.0);
    let id = submit(
        &fleet,
        "q",
        vec![sleeper(0.5, 600, json!([["ssd", "IS", "true"]]))],
    )
    .remove(0);
    wait_until(LONG, "the job running", || {
        running_by_job(&fleet).contains_key(&id)
    });
    let first = running_by_job(&fleet)[&id][0].clone();
    let other = if first == "n1" { "n2" } else { "n1" };

    let t0 = Instant::now();
    fleet
        .etcd
        .del(&format!("/gleaner/nodes/{first}/attributes/ssd"));
    let moved = wait_until(LONG, "the job running on the other ssd node", || {
        assert_never_twice(&fleet);
        running_by_job(&fleet)
            .get(&id)
            .is_some_and(|n| n == &[other.to_owned()])
    });
    eprintln!("etcdctl del -> RUNNING on {other}: {moved:?}");
    let old = fleet
        .agent(&first)
        .tasks()
        .into_iter()
        .find(|t| t["id"].as_str().unwrap().starts_with(&format!("{id}.")))
        .unwrap();
    assert_eq!(old["state"], "DRAINED", "{old}");
    // The job's state follows the agent's task record through etcd: it may
    // still say PLACED for a moment after the task is RUNNING on the node.
    wait_until(
        Duration::from_secs(10),
        "the job RUNNING on the other node",
        || {
            let j = job(&fleet, &id);
            (j["state"].as_str(), j["node"].as_str()) == (Some("RUNNING"), Some(other))
        },
    );
    assert!(t0.elapsed() < LONG);
}

#[test]
fn a_lost_agent_s_jobs_run_elsewhere_and_its_old_attempts_die_when_it_returns() {
    if !require_root("a_lost_agent_s_jobs_run_elsewhere_and_its_old_attempts_die_when_it_returns") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(mut fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    let ids = submit(
        &fleet,
        "q",
        (0..3).map(|_| sleeper(1.0, 600, json!([]))).collect(),
    );
    wait_until(LONG, "3 jobs running", || running_by_job(&fleet).len() == 3);
    // The node with the most work goes.
    let per_node = running_by_job(&fleet);
    let victim = names
        .iter()
        .max_by_key(|n| {
            per_node
                .values()
                .filter(|v| v.contains(&n.to_string()))
                .count()
        })
        .unwrap()
        .to_string();
    let moved: Vec<String> = per_node
        .iter()
        .filter(|(_, n)| n.contains(&victim))
        .map(|(j, _)| j.clone())
        .collect();
    let old_tasks: Vec<String> = fleet
        .agent(&victim)
        .running()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let t0 = Instant::now();
    fleet.agent_mut(&victim).kill(Signal::SIGKILL);
    let took = wait_until(
        Duration::from_secs(90),
        "the lost jobs running elsewhere",
        || {
            let r = running_by_job(&fleet);
            moved
                .iter()
                .all(|j| r.get(j).is_some_and(|n| !n.contains(&victim)))
        },
    );
    eprintln!(
        "{victim} kill -9 -> its {} jobs running elsewhere after {took:?}",
        moved.len()
    );
    for j in &moved {
        let v = job(&fleet, j);
        assert!(v["attempt"].as_u64().unwrap() >= 2, "{v}");
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "moved before the lease could expire"
    );

    // Back with the old attempts still running: they are killed.
    fleet.agent_mut(&victim).spawn();
    wait_until(LONG, "old attempts killed", || {
        let tasks = fleet.agent(&victim).tasks();
        old_tasks.iter().all(|id| {
            tasks
                .iter()
                .any(|t| t["id"] == id.as_str() && t["state"] != "RUNNING")
        })
    });
    for _ in 0..10 {
        assert_never_twice(&fleet);
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = running_by_job(&fleet);
    assert!(ids.iter().all(|id| r.contains_key(id)), "{r:?}");
}

/// Every job's task records: (task id, state).
fn records_by_job(fleet: &Fleet) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (task, rec) in fleet.task_records() {
        let job = task
            .rsplit_once('.')
            .map(|(j, _)| j)
            .unwrap_or(&task)
            .to_owned();
        out.entry(job).or_default().push((
            task.clone(),
            rec["state"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

/// Every job ran exactly once: one task record, FINISHED.
fn assert_each_ran_once(fleet: &Fleet, ids: &[String]) {
    let recs = records_by_job(fleet);
    for id in ids {
        let r = recs.get(id).cloned().unwrap_or_default();
        assert!(
            r.len() == 1 && r[0].1 == "FINISHED",
            "job {id} should have run exactly once: {r:?}"
        );
    }
}

#[test]
fn killing_the_leader_during_a_burst_runs_every_job_exactly_once() {
    if !require_root("killing_the_leader_during_a_burst_runs_every_job_exactly_once") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(mut fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    let n = std::env::var("FLEET_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut ids = Vec::new();
    for _ in 0..n / 50 {
        ids.extend(submit(
            &fleet,
            "q",
            (0..50)
                .map(|_| json!({"priority": 0, "spec": {"cmd": "true", "resources": {"cpus": 0.1, "mem_mb": 16}}}))
                .collect(),
        ));
    }
    wait_until(LONG, "the burst under way", || {
        jobs_in(&fleet, "SUCCEEDED").len() >= n / 10
    });
    let old = leader(&fleet).expect("a leader");
    let t0 = Instant::now();
    fleet.schedulers[old].kill(Signal::SIGKILL);
    let took = wait_until(LONG, "the other replica leads", || {
        leader(&fleet).is_some_and(|l| l != old)
    });
    eprintln!("leader kill -9 -> new leader after {took:?}");
    wait_until(Duration::from_secs(300), "every job SUCCEEDED", || {
        jobs_in(&fleet, "SUCCEEDED").len() == n
    });
    eprintln!("{n} jobs done {:?} after the leader died", t0.elapsed());
    assert_each_ran_once(&fleet, &ids);
}

#[test]
fn etcd_member_and_whole_cluster_outages_lose_nothing() {
    if !require_root("etcd_member_and_whole_cluster_outages_lose_nothing") {
        return;
    }
    let names = ["n1", "n2", "n3"];
    let Some(mut fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    let outage = std::env::var("FLEET_OUTAGE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let sleeper = |secs: u64| json!({"priority": 0, "spec": {"cmd": format!("sleep {secs}"), "kill_grace_s": 1, "resources": {"cpus": 0.1, "mem_mb": 16}}});
    let mut ids = submit(&fleet, "q", (0..10).map(|_| sleeper(outage / 2)).collect());
    wait_until(LONG, "10 jobs running", || {
        running_by_job(&fleet).len() == 10
    });

    // One member down: work still flows.
    fleet.etcd.kill_member(1);
    let more = submit(&fleet, "q", (0..10).map(|_| sleeper(outage / 2)).collect());
    let took = wait_until(LONG, "10 more jobs started with a member down", || {
        let jobs = stored_jobs(&fleet);
        more.iter().all(|id| {
            jobs.get(id)
                .is_some_and(|j| j["state"] == "RUNNING" || j["state"] == "SUCCEEDED")
        })
    });
    eprintln!("one etcd member down: 10 jobs RUNNING {took:?} after submission");
    ids.extend(more);
    fleet.etcd.restart_member(1);
    fleet.etcd.wait_healthy(LONG);

    // All of etcd down: the tasks run on and end meanwhile.
    fleet.etcd.kill_all();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(outage) {
        assert_never_twice(&fleet);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        running_by_job(&fleet).is_empty(),
        "the sleeps should be over"
    );
    fleet.etcd.restart_all();
    let took = wait_until(Duration::from_secs(120), "every job SUCCEEDED", || {
        jobs_in(&fleet, "SUCCEEDED").len() == ids.len()
    });
    eprintln!(
        "etcd back after {outage}s: all {} jobs SUCCEEDED {took:?} later",
        ids.len()
    );
    assert_each_ran_once(&fleet, &ids);
}
