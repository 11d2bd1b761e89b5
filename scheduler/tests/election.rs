//! Leader election against a real etcd and two real scheduler replicas:
//! a follower's session (its lease and election key) stays put while it
//! waits, and after `kill -9` of the leader the follower places work well
//! inside 5 s (the lease TTL is 3 s).

mod sim;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sim::*;

const ELECTION: &str = "/gleaner/scheduler/leader/";

/// The election keys (`<election>/<lease hex>`): one per campaigning
/// replica, named after its lease.
fn election_keys(etcd: &Etcd) -> BTreeSet<String> {
    etcd.keys(ELECTION).into_iter().collect()
}

#[test]
fn a_followers_session_is_stable_while_it_campaigns() {
    let Some(etcd) = Etcd::start() else { return };
    let a = Scheduler::start(&etcd, "a", "");
    let b = Scheduler::start(&etcd, "b", "");
    wait_for(Duration::from_secs(10), "both replicas campaigning", || {
        election_keys(&etcd).len() == 2
    });
    let first = election_keys(&etcd);
    // etcd's keepalive enforcement (5 s minimum between pings) closed a
    // blocked campaign's connection after three pings: ~9 s per session.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        let now = election_keys(&etcd);
        assert_eq!(
            now,
            first,
            "election keys (leases) changed after {:.1} s\n--- a ---\n{}\n--- b ---\n{}",
            start.elapsed().as_secs_f64(),
            a.log(),
            b.log()
        );
    }
    for s in [&a, &b] {
        assert!(
            !s.log().contains("campaigning again"),
            "a session ended:\n{}",
            s.log()
        );
    }
}

#[test]
fn kill_9_of_the_leader_moves_placement_within_5_s() {
    let Some(etcd) = Etcd::start() else { return };
    etcd.put("/gleaner/nodes/h1/info", &node_info("h1", 64.0, json!({})));
    let mut replicas = vec![
        Scheduler::start(&etcd, "a", ""),
        Scheduler::start(&etcd, "b", ""),
    ];
    assert_eq!(
        replicas[0].call("PUT", "/v1/queues/q", Some(json!({}))).0,
        201
    );
    wait_for(Duration::from_secs(10), "both replicas campaigning", || {
        election_keys(&etcd).len() == 2
    });
    let leading = |s: &Scheduler| s.call("GET", "/v1/leader", None).1["self"] == true;
    wait_for(Duration::from_secs(10), "a leader", || {
        replicas.iter().any(leading)
    });
    // Let the follower settle into its campaign, as in production.
    std::thread::sleep(Duration::from_secs(2));
    let old = if leading(&replicas[0]) { 0 } else { 1 };
    let pid = replicas[old].child.as_ref().unwrap().id();
    let t0 = Instant::now();
    nix_kill(pid, "KILL").unwrap();
    let survivor = &replicas[1 - old];
    let body = json!({"queue": "q", "jobs": [{"spec": {"cmd": "sleep 100", "resources": {"cpus": 1, "mem_mb": 64}}}]});
    let (code, reply) = survivor.call("POST", "/v1/jobs", Some(body));
    assert_eq!(code, 201, "{reply}");
    let id = reply["jobs"][0].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(20),
        "the new leader's placement",
        || {
            etcd.keys("/gleaner/placements/h1/")
                .iter()
                .any(|k| k.contains(&id))
        },
    );
    let took = t0.elapsed();
    eprintln!("kill -9 of the leader -> first placement: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "failover took {took:?}\n{}",
        survivor.log()
    );
    let _ = replicas.remove(old);
}

/// A fleet bigger than one gRPC message (the client's limit is 4 MiB): a
/// new leader reads it in pages and places, and the API lists it whole.
#[test]
fn a_new_leader_reads_a_fleet_larger_than_one_message() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = Scheduler::start(&etcd, "a", "");
    assert_eq!(a.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    let pad = "x".repeat(1000);
    let (batches, per) = (60, 100);
    for _ in 0..batches {
        let jobs: Vec<_> = (0..per)
            .map(|_| {
                json!({"spec": {"cmd": "sleep 100", "env": {"PAD": pad},
                "resources": {"cpus": 1, "mem_mb": 64}}})
            })
            .collect();
        let (code, reply) = a.call(
            "POST",
            "/v1/jobs",
            Some(json!({"queue": "q", "jobs": jobs})),
        );
        assert_eq!(code, 201, "{reply}");
    }
    // b takes over from scratch: its view is one read of > 6 MB.
    let b = Scheduler::start(&etcd, "b", "");
    a.sigterm();
    wait_for(Duration::from_secs(20), "b leads", || {
        b.call("GET", "/v1/leader", None).1["self"] == true
    });
    etcd.put("/gleaner/nodes/h1/info", &node_info("h1", 2.0, json!({})));
    wait_for(Duration::from_secs(30), "two jobs placed by b", || {
        etcd.keys("/gleaner/placements/h1/").len() == 2
    });
    let (code, jobs) = b.call("GET", "/v1/jobs", None);
    assert_eq!(code, 200, "{jobs}");
    assert_eq!(jobs.as_array().map(Vec::len), Some(batches * per));
    assert!(!b.log().contains("campaigning again"), "{}", b.log());
}
