//! Helpers of the fleet tests: the process harness (shared with the agent's
//! tests) plus the scheduler API and the checks every test makes.
#![allow(dead_code)]

#[path = "../../../agent/tests/common/cluster.rs"]
pub mod cluster;
#[path = "../../../agent/tests/common/files.rs"]
pub mod files;

use std::collections::BTreeMap;
use std::time::Duration;

pub use cluster::*;
use serde_json::{json, Value};

pub const LONG: Duration = Duration::from_secs(60);

/// Tests that need root call this first and return when it says false.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP {test}: needs root (real agents: cgroups, namespaces, chroot)");
    false
}

/// Agent TOML: a `batch` reservation of `cpus` and 1 GiB on first start.
pub fn reservation(cpus: f64) -> String {
    format!("[initial_reservation]\ncpus = {cpus:?}\nmem_mb = 1024.0\n")
}

/// Agents `n1..=n<count>`, each with `cpus` reserved and `attrs(i)`.
pub fn agents<'a>(
    names: &'a [&'a str],
    cpus: f64,
    attrs: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
) -> Vec<AgentSpec<'a>> {
    names
        .iter()
        .enumerate()
        .map(|(i, node)| AgentSpec {
            node,
            attributes: attrs(i),
            extra: reservation(cpus),
        })
        .collect()
}

/// A fleet of these agents on a 3-member etcd with two scheduler replicas.
pub fn fleet(specs: &[AgentSpec], scheduler_config: &str) -> Option<Fleet> {
    let mut f = Fleet::start(specs)?;
    f.wait_registered();
    f.add_scheduler(scheduler_config);
    f.add_scheduler(scheduler_config);
    wait_until(LONG, "a leader", || leader(&f).is_some());
    Some(f)
}

/// The replica that leads now (index into `fleet.schedulers`).
pub fn leader(fleet: &Fleet) -> Option<usize> {
    fleet.schedulers.iter().position(|s| {
        s.is_running()
            && http("GET", &format!("{}/v1/leader", s.url), None, None)
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["self"] == true)
    })
}

pub fn put_queue(fleet: &Fleet, name: &str, priority_factor: f64) {
    let (code, body) = fleet.any_scheduler().request(
        "PUT",
        &format!("/v1/queues/{name}"),
        Some(&json!({"priority_factor": priority_factor})),
    );
    assert!(
        (200..300).contains(&code),
        "PUT queue {name}: {code} {body}"
    );
}

/// `POST /v1/jobs`; the job ids.
/// A 503 (etcd electing a leader after a member died) is retried for a
/// while, as a client would.
pub fn submit(fleet: &Fleet, queue: &str, jobs: Vec<Value>) -> Vec<String> {
    let body = json!({"queue": queue, "jobs": jobs});
    let start = std::time::Instant::now();
    let (code, body) = loop {
        let (code, reply) = fleet
            .any_scheduler()
            .request("POST", "/v1/jobs", Some(&body));
        if code != 503 || start.elapsed() > Duration::from_secs(15) {
            break (code, reply);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 201, "POST /v1/jobs: {body}");
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// A job of `cpus` that sleeps `secs` (the same command = the same kind
/// for UNIQUE / GROUP_BY).
pub fn sleeper(cpus: f64, secs: u32, constraints: Value) -> Value {
    json!({"priority": 0, "spec": {
        "cmd": format!("sleep {secs}"), "kill_grace_s": 1,
        "resources": {"cpus": cpus, "mem_mb": 16}, "constraints": constraints
    }})
}

pub fn job(fleet: &Fleet, id: &str) -> Value {
    let (code, body) = fleet
        .any_scheduler()
        .request("GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(code, 200, "GET /v1/jobs/{id}: {body}");
    body
}

/// The jobs as stored in etcd (`jobs/<id>`), by id.
pub fn stored_jobs(fleet: &Fleet) -> BTreeMap<String, Value> {
    fleet
        .etcd
        .get_prefix("/gleaner/jobs/")
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("/gleaner/jobs/").to_owned(), v))
        .collect()
}

/// Ground truth from the agents themselves: job id → nodes where one of
/// its attempts is RUNNING now. Agents that are down are skipped.
pub fn running_by_job(fleet: &Fleet) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in fleet.agents.iter().filter(|a| a.is_running()) {
        let Ok((200, body)) = a.get("/v1/tasks") else {
            continue;
        };
        let tasks: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        for t in tasks.iter().filter(|t| t["state"] == "RUNNING") {
            let id = t["id"].as_str().unwrap_or_default();
            let job = id.rsplit_once('.').map(|(j, _)| j).unwrap_or(id);
            out.entry(job.to_owned()).or_default().push(a.node.clone());
        }
    }
    out
}

/// Panics if any job runs on two nodes (or twice on one) right now.
pub fn assert_never_twice(fleet: &Fleet) {
    for (job, nodes) in running_by_job(fleet) {
        assert!(
            nodes.len() <= 1,
            "job {job} RUNNING {} times: {nodes:?}",
            nodes.len()
        );
    }
}

/// Job ids in `state` according to etcd.
pub fn jobs_in(fleet: &Fleet, state: &str) -> Vec<String> {
    stored_jobs(fleet)
        .into_iter()
        .filter(|(_, j)| j["state"] == state)
        .map(|(id, _)| id)
        .collect()
}
