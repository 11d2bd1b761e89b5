//! Issue 4: live reservations enforced by cgroups, the queue, preemption,
//! task groups. Root only: real cgroups and processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::{Reason, TaskState, TaskStatus};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn reserve(agent: &TestAgent, role: &str, cpus: f64, mem_mb: f64) -> Value {
    agent
        .client
        .put(
            &format!("/v1/reservations/{role}"),
            &json!({"cpus": cpus, "mem_mb": mem_mb}),
        )
        .unwrap()
}

fn task(id: &str, cpus: f64, mem_mb: f64) -> Value {
    json!({"id": id, "argv": ["sleep", "600"], "resources": {"cpus": cpus, "mem_mb": mem_mb}, "kill_grace_s": 2})
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn reservation_shrinks_preempts_grows_and_survives_a_restart() {
    if !require_root("reservation_shrinks_preempts_grows_and_survives_a_restart") {
        return;
    }
    let mut agent = TestAgent::start();
    let r = reserve(&agent, "batch", 1.0, 256.0);
    assert_eq!(r["preempted"], json!([]));
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "100000"
    );
    assert_eq!(
        agent.read_cgroup("memory", "batch", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );

    let a = agent.submit(task("a", 0.5, 64.0)).unwrap();
    let b = agent.submit(task("b", 0.5, 64.0)).unwrap();
    let c = agent.submit(task("c", 0.5, 64.0)).unwrap();
    assert_eq!(
        (a.state, b.state, c.state),
        (TaskState::Running, TaskState::Running, TaskState::Queued)
    );
    assert!(
        c.message
            .as_deref()
            .unwrap_or("")
            .contains("room in its role"),
        "{c:?}"
    );
    // Tasks are children of the role's cgroup.
    assert!(agent.cgroup_dir("cpu", "batch/a").is_dir());
    let usage: Value = agent.client.get("/v1/reservations").unwrap();
    assert_eq!(usage["batch"]["allocated"]["cpus"], json!(1.0));
    assert_eq!(usage["batch"]["queued"], json!(1));

    // Shrink: the most recently started of equal priority goes.
    let r = reserve(&agent, "batch", 0.5, 256.0);
    assert_eq!(ids(&r["preempted"]), ["b"]);
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "50000"
    );
    let b = agent.wait_final("b", LONG);
    assert_eq!(
        (b.state, b.reason),
        (TaskState::Preempted, Some(Reason::Preempted))
    );
    assert_eq!(agent.status("c").state, TaskState::Queued);

    // Grow: the queued task starts at once.
    let start = Instant::now();
    reserve(&agent, "batch", 2.0, 512.0);
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "200000"
    );
    agent.wait_state("c", TaskState::Running, LONG);
    eprintln!(
        "queued task running {:?} after the reservation grew",
        start.elapsed()
    );

    // A task larger than what is free waits; the reservation and the queue
    // survive an agent restart.
    let metrics = agent.client.get_text("/metrics").unwrap();
    assert!(
        metrics.contains("gleaner_role_reserved_cpus{role=\"batch\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("gleaner_preemptions_total 1"), "{metrics}");

    let d = agent.submit(task("d", 1.5, 64.0)).unwrap();
    assert_eq!(d.state, TaskState::Queued);
    agent.stop_agent(libc::SIGTERM);
    agent.spawn();
    let usage: Value = agent.client.get("/v1/reservations").unwrap();
    assert_eq!(usage["batch"]["reserved"]["cpus"], json!(2.0));
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "200000"
    );
    assert_eq!(agent.status("d").state, TaskState::Queued);
    assert_eq!(agent.status("a").state, TaskState::Running);
    agent.client.delete::<Value>("/v1/tasks/a").unwrap();
    agent.wait_state("d", TaskState::Running, LONG);
}

#[test]
fn a_task_larger_than_the_reservation_is_queued_with_a_reason() {
    if !require_root("a_task_larger_than_the_reservation_is_queued_with_a_reason") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 0.5, 128.0);
    let big = agent.submit(task("big", 64.0, 64.0)).unwrap();
    assert_eq!(big.state, TaskState::Queued);
    assert!(big.message.unwrap().contains("whole reservation"));
    // It does not block smaller work behind it.
    assert_eq!(
        agent.submit(task("small", 0.25, 16.0)).unwrap().state,
        TaskState::Running
    );
    // A role without a reservation waits too, and says so.
    let mut other = task("other", 0.1, 16.0);
    other["role"] = json!("analytics");
    let other = agent.submit(other).unwrap();
    assert_eq!(other.state, TaskState::Queued);
    assert!(other.message.unwrap().contains("no reservation"));
    reserve(&agent, "analytics", 0.5, 64.0);
    agent.wait_state("other", TaskState::Running, LONG);
    assert!(agent.cgroup_dir("memory", "analytics/other").is_dir());
}

#[test]
fn shrinking_memory_below_usage_preempts_first() {
    if !require_root("shrinking_memory_below_usage_preempts_first") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.0, 512.0);
    // Holds ~40 MB of anonymous memory in a shell variable (the last
    // command uses it, so the shell is not replaced by an exec of sleep).
    let hold = "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo held; sleep 600; echo ${#x}";
    agent
        .submit(json!({"id": "holder", "cmd": hold, "resources": {"cpus": 0.5, "mem_mb": 200}}))
        .unwrap();
    agent.wait_output("holder", "held");
    let used: u64 = agent
        .read_cgroup("memory", "batch", "memory.usage_in_bytes")
        .parse()
        .unwrap();
    assert!(used > 32 << 20, "usage {used}");
    let r = reserve(&agent, "batch", 1.0, 24.0);
    assert_eq!(ids(&r["preempted"]), ["holder"]);
    assert_eq!(
        agent.read_cgroup("memory", "batch", "memory.limit_in_bytes"),
        (24u64 << 20).to_string()
    );
    let st = agent.wait_final("holder", LONG);
    assert_eq!(st.state, TaskState::Preempted);
}

#[test]
fn preempted_tasks_with_a_restart_policy_go_back_to_the_queue() {
    if !require_root("preempted_tasks_with_a_restart_policy_go_back_to_the_queue") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.0, 256.0);
    let mut keep = task("keep", 1.0, 64.0);
    keep["restart"] = json!({"policy": "always"});
    agent.submit(keep).unwrap();
    reserve(&agent, "batch", 0.5, 256.0);
    let queued = agent.wait_for("keep", LONG, |s| {
        s.state == TaskState::Queued && s.restarts == 1
    });
    assert_eq!(queued.reason, Some(Reason::Preempted));
    reserve(&agent, "batch", 1.0, 256.0);
    agent.wait_for("keep", LONG, |s| s.state == TaskState::Running);
}

#[test]
fn task_groups_start_together_or_not_at_all() {
    if !require_root("task_groups_start_together_or_not_at_all") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.0, 512.0);
    let group = |id: &str, third: Value| json!({"id": id, "tasks": [task(&format!("{id}-a"), 0.5, 32.0), task(&format!("{id}-b"), 0.5, 32.0), third]});
    // Too big for the reservation as a whole: all three wait.
    let reply: Value = agent
        .client
        .post("/v1/groups", &group("g1", task("g1-c", 0.5, 32.0)))
        .unwrap();
    let states: Vec<&str> = reply["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["QUEUED", "QUEUED", "QUEUED"]);
    reserve(&agent, "batch", 1.5, 512.0);
    for id in ["g1-a", "g1-b", "g1-c"] {
        agent.wait_state(id, TaskState::Running, LONG);
        assert!(agent.cgroup_dir("cpu", &format!("batch/g1/{id}")).is_dir());
    }
    assert_eq!(
        agent.read_cgroup("cpu", "batch/g1", "cpu.cfs_quota_us"),
        "150000"
    );
    for id in ["g1-a", "g1-b", "g1-c"] {
        assert_eq!(agent.kill(id).state, TaskState::Killed);
    }

    // One member cannot launch: none is left running.
    let broken = json!({"id": "g2-c", "argv": ["/no/such/program"], "resources": {"cpus": 0.5, "mem_mb": 32}});
    agent
        .client
        .post::<_, Value>("/v1/groups", &group("g2", broken))
        .unwrap();
    let c = agent.wait_final("g2-c", LONG);
    assert_eq!(
        (c.state, c.reason),
        (TaskState::Failed, Some(Reason::LaunchFailed)),
        "{c:?}"
    );
    for id in ["g2-a", "g2-b"] {
        let st = agent.wait_final(id, LONG);
        assert!(
            st.message.as_deref().unwrap_or("").contains("g2-c"),
            "{st:?}"
        );
    }
    let start = Instant::now();
    while agent.cgroup_dir("memory", "batch/g2").exists() && start.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !agent.cgroup_dir("memory", "batch/g2").exists(),
        "group cgroup left behind"
    );
    assert!(agent
        .leftover_task_cgroups()
        .iter()
        .all(|p| !p.to_string_lossy().contains("g2")));

    // Bad groups are refused whole.
    let mut other_role = task("g3-b", 0.1, 16.0);
    other_role["role"] = json!("elsewhere");
    match agent.client.post::<_, Value>(
        "/v1/groups",
        &json!({"id": "g3", "tasks": [task("g3-a", 0.1, 16.0), other_role]}),
    ) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("same role"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(agent.client.get::<TaskStatus>("/v1/tasks/g3-a").is_err());
}

#[test]
fn bad_reservations_are_refused_and_oversized_ones_capped() {
    if !require_root("bad_reservations_are_refused_and_oversized_ones_capped") {
        return;
    }
    let agent = TestAgent::start();
    let before: Value = agent.client.get("/v1/reservations").unwrap();
    for (role, body, needle) in [
        ("batch", json!({"cpus": -1, "mem_mb": 64}), "cpus"),
        ("batch", json!({"cpus": 1, "mem_mb": -64}), "mem_mb"),
        ("batch", json!({"cpus": "many", "mem_mb": 64}), "cpus"),
        ("batch", json!({"cpus": 1, "mem_mb": 64, "gpus": 1}), "gpus"),
        ("bad%20role", json!({"cpus": 1, "mem_mb": 64}), "role"),
    ] {
        match agent
            .client
            .put::<_, Value>(&format!("/v1/reservations/{role}"), &body)
        {
            Err(ClientError::Api {
                status: 400,
                message,
            }) => assert!(message.contains(needle), "{body}: {message}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    let after: Value = agent.client.get("/v1/reservations").unwrap();
    assert_eq!(before, after, "a refused change must change nothing");
    match agent.client.delete::<Value>("/v1/reservations/nobody-here") {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    let r = reserve(&agent, "batch", 10_000.0, 1e9);
    assert_eq!(r["capped"], json!(true));
    assert!(r["message"].as_str().unwrap().contains("capped"));
    let state: Value = agent.client.get("/v1/state").unwrap();
    assert_eq!(r["reserved"]["cpus"], state["total"]["cpus"]);

    // CLI: reserve, list, unreserve.
    let cli = |args: &[&str]| agent.cli(args);
    let out = cli(&["reserve", "web", "--cpus", "0.5", "--mem", "128"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["reservations"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web") && text.contains("0.500"), "{text}");
    assert!(cli(&["unreserve", "web"]).status.success());
    assert!(!agent.cgroup_dir("cpu", "web").exists());
}

#[test]
fn shrinking_cpu_below_a_running_tasks_quota_preempts_it_and_applies() {
    // CI (VM v1 profiles): a 0.5-cpu task under a 1.5-cpu role, reserve
    // 0.25: v1 refused the role's quota with EINVAL (a child's quota may not
    // exceed its parent's) and the reservation was left half-applied.
    if !require_root("shrinking_cpu_below_a_running_tasks_quota_preempts_it_and_applies") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.5, 384.0);
    let a = agent.submit(task("a", 0.5, 64.0)).unwrap();
    assert_eq!(a.state, TaskState::Running);
    let r = reserve(&agent, "batch", 0.25, 128.0);
    assert_eq!(ids(&r["preempted"]), ["a"], "{r}");
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "25000"
    );
    let a = agent.wait_final("a", LONG);
    assert_eq!(a.reason, Some(Reason::Preempted));
    reserve(&agent, "batch", 1.5, 384.0);
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "150000"
    );
}

/// Issue 20 point 4: on v1 the kernel refuses a role's quota below its
/// group cgroup's; the shrink must succeed, both limits written.
#[test]
fn a_role_shrinks_below_a_running_group() {
    if !require_root("a_role_shrinks_below_a_running_group") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.5, 512.0);
    let members = json!({"id": "gs", "tasks": [task("gs-a", 0.5, 32.0), task("gs-b", 0.5, 32.0), task("gs-c", 0.5, 32.0)]});
    agent
        .client
        .post::<_, Value>("/v1/groups", &members)
        .unwrap();
    for id in ["gs-a", "gs-b", "gs-c"] {
        agent.wait_state(id, TaskState::Running, LONG);
    }
    assert_eq!(
        agent.read_cgroup("cpu", "batch/gs", "cpu.cfs_quota_us"),
        "150000"
    );
    let r: Result<Value, _> = agent.client.put(
        "/v1/reservations/batch",
        &json!({"cpus": 0.25, "mem_mb": 128}),
    );
    let r = r.expect("shrinking below a running group");
    assert_eq!(ids(&r["preempted"]).len(), 3, "{r}");
    assert_eq!(
        agent.read_cgroup("cpu", "batch", "cpu.cfs_quota_us"),
        "25000"
    );
    assert_eq!(
        agent.read_cgroup("memory", "batch", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    for id in ["gs-a", "gs-b", "gs-c"] {
        agent.wait_final(id, LONG);
    }
    let group_dir = agent.cgroup_dir("memory", "batch/gs");
    wait_until(LONG, "group cgroup removed", || !group_dir.exists());
}

/// Issue 20 point 4: a task and a group of one role share `<role>/<name>`:
/// the second of the two is refused (409), whichever comes first.
#[test]
fn a_task_and_a_group_cannot_share_a_name() {
    if !require_root("a_task_and_a_group_cannot_share_a_name") {
        return;
    }
    let agent = TestAgent::start();
    reserve(&agent, "batch", 1.0, 256.0);
    agent.submit(task("same", 0.1, 16.0)).unwrap();
    match agent.client.post::<_, Value>(
        "/v1/groups",
        &json!({"id": "same", "tasks": [task("same-a", 0.1, 16.0)]}),
    ) {
        Err(ClientError::Api {
            status: 409,
            message,
        }) => assert!(message.contains("same"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(agent.client.get::<TaskStatus>("/v1/tasks/same-a").is_err());
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "grp", "tasks": [task("grp-a", 0.1, 16.0)]}),
        )
        .unwrap();
    match agent.submit(task("grp", 0.1, 16.0)) {
        Err(ClientError::Api {
            status: 409,
            message,
        }) => assert!(message.contains("grp"), "{message}"),
        other => panic!("{other:?}"),
    }
    agent.wait_state("grp-a", TaskState::Running, LONG);
    assert_eq!(agent.status("same").state, TaskState::Running);
    for id in ["same", "grp-a"] {
        agent.kill(id);
    }
}
