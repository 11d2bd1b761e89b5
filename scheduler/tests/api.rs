//! The scheduler's native API against a real etcd and the real binary.
//! Agents are simulated with etcdctl writes (node info, task records): the
//! multi-process fleet tests with real agents live in `fleet*.rs`.

mod sim;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim::*;

fn spec() -> Value {
    json!({"cmd": "sleep 100", "resources": {"cpus": 1, "mem_mb": 64}})
}

fn job(s: &Scheduler, id: &str) -> Value {
    let (code, v) = s.call("GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(code, 200, "{v}");
    v
}

fn wait_state(s: &Scheduler, id: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let last = job(s, id);
        if last["state"] == state {
            return last;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job {id} never {state}: {last}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn submit(s: &Scheduler, queue: &str, jobs: Value) -> Vec<String> {
    let (code, v) = s.call(
        "POST",
        "/v1/jobs",
        Some(json!({"queue": queue, "jobs": jobs})),
    );
    assert_eq!(code, 201, "{v}");
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn bad_input_to_every_endpoint_is_refused_and_nothing_is_stored() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    // No token, wrong token.
    assert_eq!(s.call_raw("GET", "/v1/jobs", None, None).0, 401);
    assert_eq!(s.call_raw("GET", "/v1/queues", None, Some("nope")).0, 401);
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("POST", "/v1/jobs", Some("{".into()), 400, "invalid JSON"),
        ("POST", "/v1/jobs", Some(json!({"queue": "q", "jobs": [{"spec": spec()}], "x": 1}).to_string()), 400, "unknown field"),
        ("POST", "/v1/jobs", Some(json!({"queue": "q", "jobs": [{"spec": spec()}]}).to_string()), 400, "does not exist"),
        ("POST", "/v1/jobs", Some(json!({"queue": "q", "jobs": []}).to_string()), 400, "jobs"),
        ("POST", "/v1/jobs", Some(json!({"queue": "q", "jobs": [{"spec": {"cmd": "x", "resources": {"cpus": 0, "mem_mb": 64}}}]}).to_string()), 400, "jobs[0].spec.resources.cpus"),
        ("POST", "/v1/jobs", Some(json!({"queue": "q", "jobs": [{"spec": {"cmd": "x", "resources": {"cpus": 1, "mem_mb": 64}, "constraints": [["rack", "SOMETIMES"]]}}]}).to_string()), 400, "constraints[0]"),
        ("GET", "/v1/jobs?state=NOPE", None, 400, "state"),
        ("GET", "/v1/jobs?colour=red", None, 400, "colour"),
        ("GET", "/v1/jobs/bad.id", None, 400, "job id"),
        ("GET", "/v1/jobs/nosuchjob", None, 404, "no job"),
        ("DELETE", "/v1/jobs/nosuchjob", None, 404, "no job"),
        ("PUT", "/v1/queues/q", Some(json!({"priority_factor": 0}).to_string()), 400, "priority_factor"),
        ("PUT", "/v1/queues/q", Some(json!({"weight": 2}).to_string()), 400, "unknown field"),
        ("PUT", "/v1/queues/q", Some(json!({"limits": {"cpus": -1}}).to_string()), 400, "limits.cpus"),
        ("PUT", "/v1/queues/bad%20name", Some("{}".into()), 400, "queue"),
        ("GET", "/v1/queues/nosuch", None, 404, "no queue"),
        ("DELETE", "/v1/queues/nosuch", None, 404, "no queue"),
        ("GET", "/v1/nowhere", None, 404, "no such endpoint"),
        ("POST", "/v1/nodes", None, 405, "method not allowed"),
    ];
    for (method, path, body, want, text) in cases {
        let (code, v) = s.call_raw(method, path, body.clone(), Some(&s.token));
        assert_eq!(code, want, "{method} {path} {body:?}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error field: {v}"));
        assert!(msg.contains(text), "{method} {path}: {msg}");
    }
    // Nothing stored but the election key.
    let keys = etcd.keys("/gleaner/");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("/gleaner/scheduler/leader")),
        "{keys:?}"
    );
    // A queue in use cannot go; a gang larger than allowed is refused whole.
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    let ids = submit(&s, "q", json!([{"spec": spec()}]));
    let (code, v) = s.call("DELETE", "/v1/queues/q", None);
    assert_eq!(code, 409, "{v}");
    let (code, _) = s.call(
        "POST",
        "/v1/jobs",
        Some(json!({"queue": "q", "jobs": [{"spec": spec()}, {"spec": spec(), "gang": {"id": "g", "cardinality": 0}}]})),
    );
    assert_eq!(code, 400);
    assert_eq!(etcd.keys("/gleaner/jobs/").len(), 1);
    assert_eq!(
        s.call("DELETE", &format!("/v1/jobs/{}", ids[0]), None).0,
        200
    );
    let (code, v) = s.call("DELETE", &format!("/v1/jobs/{}", ids[0]), None);
    assert_eq!(code, 409, "{v}");
    assert_eq!(s.call("DELETE", "/v1/queues/q", None).0, 200);
}

#[test]
fn job_lifecycle_placement_running_success_loss_retry_and_cancel() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "solo", "");
    wait_for(Duration::from_secs(10), "leads", || {
        s.call("GET", "/v1/leader", None).1["self"] == true
    });
    assert_eq!(
        s.call("PUT", "/v1/queues/q", Some(json!({"priority_factor": 1})))
            .0,
        201
    );
    let ids = submit(&s, "q", json!([{"spec": spec(), "max_retries": 1}]));
    let id = &ids[0];
    // No node yet: waits, with a reason.
    wait_for(Duration::from_secs(10), "reason", || {
        job(&s, id)["message"] == "no live node"
    });
    assert_eq!(job(&s, id)["state"], "QUEUED");

    etcd.put(
        "/gleaner/nodes/n1/info",
        &node_info("n1", 4.0, json!({"rack": "r1"})),
    );
    let placed = wait_state(&s, id, "PLACED");
    assert_eq!(placed["node"], "n1");
    assert_eq!(placed["attempt"], 1);
    let task = format!("{id}.1");
    assert_eq!(placed["task"], task);
    let p = etcd
        .get(&format!("/gleaner/placements/n1/{task}"))
        .expect("placement key");
    assert_eq!(p["spec"]["id"], task);
    assert_eq!(p["spec"]["role"], "batch");
    assert_eq!(p["job"], id.as_str());
    assert_eq!(p["attempt"], 1);

    // The agent reports it running, then done.
    etcd.put(
        &format!("/gleaner/tasks/{task}"),
        &task_record(&task, "n1", "RUNNING"),
    );
    let running = wait_state(&s, id, "RUNNING");
    assert_eq!(running["task_status"]["state"], "RUNNING");
    let (_, queues) = s.call("GET", "/v1/queues", None);
    assert_eq!(queues[0]["running"], 1, "{queues}");
    assert!(queues[0]["share"].as_f64().unwrap() > 0.2, "{queues}");
    etcd.put(
        &format!("/gleaner/tasks/{task}"),
        &task_record(&task, "n1", "FINISHED"),
    );
    wait_state(&s, id, "SUCCEEDED");
    wait_for(Duration::from_secs(5), "placement removed", || {
        etcd.get(&format!("/gleaner/placements/n1/{task}"))
            .is_none()
    });

    // Lost node: retried elsewhere as attempt 2; the old key goes.
    let id = &submit(&s, "q", json!([{"spec": spec(), "max_retries": 1}]))[0];
    wait_state(&s, id, "PLACED");
    let t1 = format!("{id}.1");
    etcd.put(
        &format!("/gleaner/tasks/{t1}"),
        &task_record(&t1, "n1", "RUNNING"),
    );
    wait_state(&s, id, "RUNNING");
    etcd.put("/gleaner/nodes/n2/info", &node_info("n2", 4.0, json!({})));
    etcd.del("/gleaner/nodes/n1/info");
    let moved = wait_state(&s, id, "PLACED");
    assert_eq!(
        (
            moved["node"].as_str(),
            moved["attempt"].as_u64(),
            moved["retries"].as_u64()
        ),
        (Some("n2"), Some(2), Some(1)),
        "{moved}"
    );
    assert!(etcd.get(&format!("/gleaner/placements/n1/{t1}")).is_none());
    assert!(etcd
        .get(&format!("/gleaner/placements/n2/{id}.2"))
        .is_some());

    // Cancel while placed: CANCELLED and the placement key deleted.
    let (code, v) = s.call("DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "CANCELLED");
    assert!(etcd
        .get(&format!("/gleaner/placements/n2/{id}.2"))
        .is_none());

    // Listing filters; nodes and metrics answer.
    let (_, all) = s.call("GET", "/v1/jobs?queue=q&state=succeeded", None);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let (_, nodes) = s.call("GET", "/v1/nodes", None);
    assert_eq!(nodes[0]["node"], "n2", "{nodes}");
    let (code, m) = s.call("GET", "/metrics", None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap().to_owned();
    assert!(m.contains("gleaner_scheduler_leader 1"), "{m}");
    assert!(m.contains("gleaner_scheduler_placements_total 3"), "{m}");
}

#[test]
fn failures_retry_drains_move_and_unstarted_placements_are_withdrawn() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "solo", "placement_timeout_s = 2\n");
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    etcd.put(
        "/gleaner/nodes/n1/info",
        &node_info("n1", 4.0, json!({"rack": "r1"})),
    );
    let id = &submit(&s, "q", json!([{"spec": spec(), "max_retries": 1}]))[0];
    let first = wait_state(&s, id, "PLACED");
    assert_eq!(first["node"], "n1");
    // n1 keeps it queued (cannot admit it): after 2 s its key is deleted,
    // and once n1 reports the attempt killed it goes to n2.
    let t1 = format!("{id}.1");
    etcd.put(
        &format!("/gleaner/tasks/{t1}"),
        &task_record(&t1, "n1", "QUEUED"),
    );
    etcd.put(
        "/gleaner/nodes/n2/info",
        &node_info("n2", 4.0, json!({"rack": "r2"})),
    );
    let start = Instant::now();
    wait_for(Duration::from_secs(10), "key withdrawn", || {
        etcd.get(&format!("/gleaner/placements/n1/{t1}")).is_none()
    });
    assert!(start.elapsed() >= Duration::from_millis(500));
    let j = job(&s, id);
    assert_eq!(
        (j["state"].as_str(), j["withdrawing"].as_bool()),
        (Some("PLACED"), Some(true)),
        "{j}"
    );
    // Not moved before the agent's word: never two attempts.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(job(&s, id)["attempt"], 1);
    etcd.put(
        &format!("/gleaner/tasks/{t1}"),
        &task_record(&t1, "n1", "KILLED"),
    );
    wait_for(Duration::from_secs(10), "moved", || {
        job(&s, id)["node"] == "n2"
    });
    let j = job(&s, id);
    assert_eq!(
        (j["attempt"].as_u64(), j["retries"].as_u64()),
        (Some(2), Some(0)),
        "{j}"
    );
    assert!(etcd
        .get(&format!("/gleaner/placements/n1/{id}.1"))
        .is_none());

    // Drained on n2: placed again without a retry counted, not on n2.
    let t2 = format!("{id}.2");
    etcd.put(
        &format!("/gleaner/tasks/{t2}"),
        &task_record(&t2, "n2", "RUNNING"),
    );
    wait_state(&s, id, "RUNNING");
    etcd.put(
        &format!("/gleaner/tasks/{t2}"),
        &task_record(&t2, "n2", "DRAINED"),
    );
    wait_for(Duration::from_secs(10), "re-placed", || {
        job(&s, id)["attempt"] == 3
    });
    let j = job(&s, id);
    assert_eq!(
        (j["node"].as_str(), j["retries"].as_u64()),
        (Some("n1"), Some(0)),
        "{j}"
    );

    // Failed: one retry, then FAILED.
    let t3 = format!("{id}.3");
    etcd.put(
        &format!("/gleaner/tasks/{t3}"),
        &task_record(&t3, "n1", "FAILED"),
    );
    wait_for(Duration::from_secs(10), "retried", || {
        job(&s, id)["attempt"] == 4
    });
    assert_eq!(job(&s, id)["retries"], 1);
    let t4 = format!("{id}.4");
    let node = job(&s, id)["node"].as_str().unwrap().to_owned();
    etcd.put(
        &format!("/gleaner/tasks/{t4}"),
        &task_record(&t4, &node, "FAILED"),
    );
    let failed = wait_state(&s, id, "FAILED");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("no retries left"),
        "{failed}"
    );
}

#[test]
fn constraints_and_gangs_through_the_api() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "solo", "");
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    for n in ["n1", "n2", "n3"] {
        etcd.put(
            &format!("/gleaner/nodes/{n}/info"),
            &node_info(n, 2.0, json!({})),
        );
    }
    let unique = json!({"cmd": "u", "resources": {"cpus": 0.5, "mem_mb": 64}, "constraints": [["hostname", "UNIQUE"]]});
    let ids = submit(
        &s,
        "q",
        json!([{"spec": unique}, {"spec": unique}, {"spec": unique}, {"spec": unique}]),
    );
    wait_for(Duration::from_secs(10), "three placed", || {
        ids.iter()
            .filter(|id| job(&s, id)["state"] == "PLACED")
            .count()
            == 3
    });
    let waiting: Vec<Value> = ids
        .iter()
        .map(|id| job(&s, id))
        .filter(|j| j["state"] == "QUEUED")
        .collect();
    assert_eq!(waiting.len(), 1);
    wait_for(Duration::from_secs(10), "reason", || {
        job(&s, waiting[0]["id"].as_str().unwrap())["message"]
            .as_str()
            .is_some_and(|m| m.contains("hostname UNIQUE"))
    });
    // A gang of 4 needing 1 cpu each with 1.5 cpus free per node: waits.
    let big = json!({"cmd": "g", "resources": {"cpus": 1, "mem_mb": 64}});
    let gang: Vec<Value> = (0..4)
        .map(|_| json!({"spec": big, "gang": {"id": "g1", "cardinality": 4}}))
        .collect();
    let gids = submit(&s, "q", Value::Array(gang));
    std::thread::sleep(Duration::from_millis(500));
    assert!(gids.iter().all(|id| job(&s, id)["state"] == "QUEUED"));
    // Room appears: all 4 placed together.
    etcd.put("/gleaner/nodes/n4/info", &node_info("n4", 2.0, json!({})));
    wait_for(Duration::from_secs(10), "gang placed", || {
        gids.iter().all(|id| job(&s, id)["state"] == "PLACED")
    });
}

#[test]
fn two_replicas_one_leads_and_sigterm_hands_over_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = Scheduler::start(&etcd, "a", "leader_ttl_s = 30\n");
    wait_for(Duration::from_secs(10), "a leads", || {
        a.call("GET", "/v1/leader", None).1["self"] == true
    });
    let b = Scheduler::start(&etcd, "b", "leader_ttl_s = 30\n");
    let (_, v) = b.call("GET", "/v1/leader", None);
    assert_eq!(
        (v["leader"].as_str(), v["self"].as_bool()),
        (Some("a"), Some(false)),
        "{v}"
    );
    // The follower serves the API too.
    assert_eq!(b.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    let status = a.sigterm();
    assert!(status.success(), "{status:?}");
    // Resigned: b leads long before a's 30 s lease would expire.
    let start = Instant::now();
    wait_for(Duration::from_secs(5), "b leads", || {
        b.call("GET", "/v1/leader", None).1["self"] == true
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    etcd.put("/gleaner/nodes/n1/info", &node_info("n1", 2.0, json!({})));
    let id = &submit(&b, "q", json!([{"spec": spec()}]))[0];
    wait_state(&b, id, "PLACED");
}

/// Issue 22: a gang placed on one node is a task group there. Bad pod
/// settings are refused at submission; the placements of a gang placed
/// whole carry one group per node; a member placed again alone does not;
/// a sidecar stopped by its group succeeds.
#[test]
fn gangs_as_pods_bad_settings_groups_per_node_and_a_lone_retry() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "solo", "");
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    let on = |node: &str, cmd: &str, sidecar: bool| {
        json!({"cmd": cmd, "sidecar": sidecar, "resources": {"cpus": 0.5, "mem_mb": 64},
               "constraints": [["hostname", "CLUSTER", node]]})
    };
    let gang = |extra: Value| {
        let mut g = json!({"id": "pod", "cardinality": 3});
        g.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        g
    };
    let three = |g: Value, specs: [Value; 3]| json!({"queue": "q", "jobs": specs.iter().map(|s| json!({"spec": s, "gang": g, "max_retries": 1})).collect::<Vec<_>>()});
    let main = on("n1", "main", false);
    for (body, want) in [
        (
            three(
                gang(json!({"shared_path": "/usr/lib"})),
                [main.clone(), main.clone(), main.clone()],
            ),
            "jobs[0].gang.shared_path",
        ),
        (
            three(
                gang(json!({"network": "bridge"})),
                [main.clone(), main.clone(), main.clone()],
            ),
            "network",
        ),
        (
            three(
                gang(json!({})),
                [
                    on("n1", "s", true),
                    on("n1", "s", true),
                    on("n1", "s", true),
                ],
            ),
            "not a sidecar",
        ),
        (
            three(
                gang(json!({"network": "group"})),
                [
                    main.clone(),
                    main.clone(),
                    json!({"cmd": "p", "ports": [0], "resources": {"cpus": 0.5, "mem_mb": 64}}),
                ],
            ),
            "jobs[2].spec.ports",
        ),
        (
            json!({"queue": "q", "jobs": [{"spec": on("n1", "s", true)}]}),
            "only a member of a gang",
        ),
    ] {
        let (code, v) = s.call("POST", "/v1/jobs", Some(body.clone()));
        assert_eq!(code, 400, "{body}: {v}");
        let msg = v["message"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(v.to_string().contains(want), "want {want:?} in {v} ({msg})");
    }
    assert!(etcd.keys("/gleaner/jobs/").is_empty(), "nothing stored");

    for n in ["n1", "n2"] {
        etcd.put(
            &format!("/gleaner/nodes/{n}/info"),
            &node_info(n, 2.0, json!({})),
        );
    }
    let ids = submit(
        &s,
        "q",
        json!([
            {"spec": on("n1", "main", false), "gang": gang(json!({"network": "group", "shared_path": "//data/"})), "max_retries": 1},
            {"spec": on("n2", "other", false), "gang": gang(json!({"network": "group", "shared_path": "//data/"})), "max_retries": 1},
            {"spec": on("n1", "helper", false), "gang": gang(json!({"network": "group", "shared_path": "//data/"})), "max_retries": 1},
        ]),
    );
    for id in &ids {
        wait_state(&s, id, "PLACED");
    }
    let placement = |node: &str, task: &str| {
        etcd.get(&format!("/gleaner/placements/{node}/{task}"))
            .unwrap_or_else(|| panic!("no placement {node}/{task}"))
    };
    let (m, o, helper) = (
        format!("{}.1", ids[0]),
        format!("{}.1", ids[1]),
        format!("{}.1", ids[2]),
    );
    let g1 = &placement("n1", &m)["group"];
    assert_eq!(g1, &placement("n1", &helper)["group"]);
    // Members in the unit's order (priority, submission, job id); the
    // first names the group.
    let members: Vec<String> = serde_json::from_value(g1["members"].clone()).unwrap();
    let mut sorted = members.clone();
    sorted.sort();
    let mut want = vec![m.clone(), helper.clone()];
    want.sort();
    assert_eq!(sorted, want, "{g1}");
    assert_eq!(g1["id"], format!("{}.pod", members[0]));
    assert_eq!(g1["gang"], "pod");
    assert_eq!(
        (g1["network"].as_str(), g1["shared_path"].as_str()),
        (Some("group"), Some("/data"))
    );
    let g2 = &placement("n2", &o)["group"];
    assert_eq!(
        (g2["id"].clone(), g2["members"].clone()),
        (json!(format!("{o}.pod")), json!([o]))
    );

    // The n2 member fails and is retried alone: a plain task, no group.
    etcd.put(
        &format!("/gleaner/tasks/{o}"),
        &task_record(&o, "n2", "FAILED"),
    );
    let o2 = format!("{}.2", ids[1]);
    wait_for(Duration::from_secs(10), "the retry placed", || {
        etcd.get(&format!("/gleaner/placements/n2/{o2}")).is_some()
    });
    let retry = placement("n2", &o2);
    assert!(retry.get("group").is_none(), "{retry}");
    // Review: alone it ran on the host network; its gang asked for a
    // group network, so it gets none at all.
    assert_eq!(retry["spec"]["network"], "none", "{retry}");

    // A gang with a sidecar goes on one node: apart by constraint, it
    // waits and says why; free of them, both land in one group.
    let pair = |cmd: &str, sidecar: bool, node: Option<&str>, id: &str| {
        let mut spec =
            json!({"cmd": cmd, "sidecar": sidecar, "resources": {"cpus": 0.5, "mem_mb": 64}});
        if let Some(n) = node {
            spec["constraints"] = json!([["hostname", "CLUSTER", n]]);
        }
        json!({"spec": spec, "gang": {"id": id, "cardinality": 2}})
    };
    let apart = submit(
        &s,
        "q",
        json!([
            pair("m", false, Some("n1"), "apart"),
            pair("s", true, Some("n2"), "apart")
        ]),
    );
    wait_for(Duration::from_secs(10), "the reason", || {
        job(&s, &apart[0])["message"]
            .as_str()
            .is_some_and(|m| m.contains("goes on one node"))
    });
    assert_eq!(job(&s, &apart[1])["state"], "QUEUED");
    let ids = submit(
        &s,
        "q",
        json!([
            pair("m", false, None, "side"),
            pair("s", true, None, "side")
        ]),
    );
    let j0 = wait_state(&s, &ids[0], "PLACED");
    let j1 = wait_state(&s, &ids[1], "PLACED");
    assert_eq!(j0["node"], j1["node"], "{j0} {j1}");
    let node = j0["node"].as_str().unwrap().to_owned();
    let (m, side) = (format!("{}.1", ids[0]), format!("{}.1", ids[1]));
    assert_eq!(
        placement(&node, &m)["group"]["members"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // The main ends; its group stops the sidecar (KILLED): both succeed.
    etcd.put(
        &format!("/gleaner/tasks/{m}"),
        &task_record(&m, &node, "FINISHED"),
    );
    let mut killed = task_record(&side, &node, "KILLED");
    killed["message"] = json!("stopped: the group's main members have ended");
    etcd.put(&format!("/gleaner/tasks/{side}"), &killed);
    wait_state(&s, &ids[0], "SUCCEEDED");
    let j = wait_state(&s, &ids[1], "SUCCEEDED");
    assert_eq!(j["attempt"], 1, "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("main members"),
        "{j}"
    );

    // Review: a main that fails (a retry left) had its sidecar end
    // SUCCEEDED, and the main's retry then waited for ever for its gang.
    // Now the sidecar goes back with it: both placed again, one group.
    let again = submit(
        &s,
        "q",
        json!([
            {"spec": {"cmd": "m", "resources": {"cpus": 0.5, "mem_mb": 64}},
             "gang": {"id": "again", "cardinality": 2}, "max_retries": 1},
            {"spec": {"cmd": "s", "sidecar": true, "resources": {"cpus": 0.5, "mem_mb": 64}},
             "gang": {"id": "again", "cardinality": 2}, "max_retries": 1}
        ]),
    );
    let j0 = wait_state(&s, &again[0], "PLACED");
    let node = j0["node"].as_str().unwrap().to_owned();
    wait_state(&s, &again[1], "PLACED");
    let (m1, s1) = (format!("{}.1", again[0]), format!("{}.1", again[1]));
    etcd.put(
        &format!("/gleaner/tasks/{m1}"),
        &task_record(&m1, &node, "FAILED"),
    );
    let mut killed = task_record(&s1, &node, "KILLED");
    killed["message"] = json!("stopped: the group's main members have ended");
    etcd.put(&format!("/gleaner/tasks/{s1}"), &killed);
    let (m2, s2) = (format!("{}.2", again[0]), format!("{}.2", again[1]));
    wait_for(Duration::from_secs(15), "both placed again", || {
        let placed = |t: &str| {
            ["n1", "n2"]
                .iter()
                .any(|n| etcd.get(&format!("/gleaner/placements/{n}/{t}")).is_some())
        };
        placed(&m2) && placed(&s2)
    });
    let j0 = job(&s, &again[0]);
    let n2 = j0["node"].as_str().unwrap().to_owned();
    let members = placement(&n2, &m2)["group"]["members"].clone();
    let mut got: Vec<String> = serde_json::from_value(members).unwrap();
    got.sort();
    let mut want = vec![m2.clone(), s2.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        job(&s, &again[1])["retries"],
        0,
        "a sidecar sent back is no retry"
    );
}
