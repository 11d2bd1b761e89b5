//! Task groups as pods (issue 22) on a real agent with a busybox rootfs:
//! the shared volume, the group network, sidecars, and what is left after
//! the group; a kill -9 of the agent in the middle of a group's life.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{require_root, wait_until, TestAgent};
use gleaner_agent::client::ClientError;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

fn shared_dir(agent: &TestAgent, home: &str) -> PathBuf {
    agent.data_dir.join("tasks").join(home).join("shared")
}

fn netns_file(agent: &TestAgent, home: &str) -> PathBuf {
    agent.data_dir.join("run/netns").join(home)
}

/// Is anything mounted at `path` (in the test's, i.e. the agent's, view)?
fn mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.display().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

fn member(id: &str, cmd: &str, sidecar: bool) -> Value {
    json!({"id": id, "cmd": cmd, "sidecar": sidecar, "kill_grace_s": 1,
           "resources": {"cpus": 0.2, "mem_mb": 32}})
}

fn group_state(agent: &TestAgent, id: &str) -> Value {
    agent
        .client
        .get::<Value>(&format!("/v1/groups/{id}"))
        .unwrap()
}

fn assert_gone(agent: &TestAgent, home: &str) {
    let (shared, ns) = (shared_dir(agent, home), netns_file(agent, home));
    wait_until(
        Duration::from_secs(10),
        "shared dir and netns removed",
        || !shared.exists() && !ns.exists(),
    );
    assert!(!mounted(&ns), "{} still mounted", ns.display());
}

#[test]
fn members_share_a_volume_and_localhost_and_the_sidecar_stops_with_the_main() {
    if !require_root("members_share_a_volume_and_localhost_and_the_sidecar_stops_with_the_main") {
        return;
    }
    let agent = TestAgent::start();
    // A listener on the host's loopback: out of the group's reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let main = format!(
        "echo hello > /shared/msg; until [ -s /sandbox/got ]; do nc -l -p 7000 > /sandbox/got; done; \
         touch /shared/ack; cat /sandbox/got; \
         cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         nc -w 2 127.0.0.1 {host_port} </dev/null && echo REACHED-HOST; echo DONE"
    );
    let side = "while [ ! -f /shared/msg ]; do sleep 0.1; done; cat /shared/msg; \
                until [ -f /shared/ack ]; do echo from-sidecar | nc -w 1 127.0.0.1 7000; sleep 0.2; done; \
                echo SENT; sleep 1000";
    let reply: Value = agent
        .client
        .post(
            "/v1/groups",
            &json!({"id": "pod1", "network": "group", "tasks": [
                member("pod1-main", &main, false), member("pod1-side", side, true)]}),
        )
        .unwrap();
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 2, "{reply}");
    let g = group_state(&agent, "pod1");
    assert_eq!(
        (g["shared_path"].as_str(), g["network"].as_str()),
        (Some("/shared"), Some("group")),
        "{g}"
    );

    let st = agent.wait_final("pod1-main", LONG);
    let out = agent.logs("pod1-main", "stdout");
    assert_eq!(
        st.state,
        TaskState::Finished,
        "{st:?} {out} {}",
        agent.logs("pod1-main", "stderr")
    );
    assert!(
        out.contains("from-sidecar"),
        "the sidecar reached the main on localhost: {out}"
    );
    assert!(
        !out.contains("REACHED-HOST"),
        "the host's loopback is out of reach: {out}"
    );
    let ifaces: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "from-sidecar")
        .skip(1)
        .take_while(|l| *l != "DONE")
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(matches!(host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));

    // The sidecar is stopped once the main has ended; the group is FINISHED.
    let side_st = agent.wait_final("pod1-side", Duration::from_secs(20));
    assert_eq!(side_st.state, TaskState::Killed, "{side_st:?}");
    assert!(
        side_st
            .message
            .as_deref()
            .unwrap_or("")
            .contains("main members"),
        "{side_st:?}"
    );
    let side_out = agent.logs("pod1-side", "stdout");
    // (It may be stopped before it sees the main's acknowledgement.)
    assert!(side_out.contains("hello"), "{side_out}");
    let g = group_state(&agent, "pod1");
    assert_eq!(g["state"], "FINISHED", "{g}");
    assert_gone(&agent, "pod1-main");

    // A main that fails makes the group FAILED, whatever the sidecar did.
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod2", "shared_path": "/data/x", "tasks": [
                member("pod2-side", "sleep 1000", true),
                member("pod2-main", "test -d /data/x && echo SEEN > /data/x/f && exit 3", false)]}),
        )
        .unwrap();
    let st = agent.wait_final("pod2-main", LONG);
    assert_eq!(
        (st.state, st.exit_code),
        (TaskState::Failed, Some(3)),
        "{st:?} {}",
        agent.logs("pod2-main", "stderr")
    );
    assert_eq!(
        agent.wait_final("pod2-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_eq!(group_state(&agent, "pod2")["state"], "FAILED");
    // The first member given holds the volume; no namespace for a host network.
    assert_gone(&agent, "pod2-side");
    // Each supervisor removes its task's cgroup after reporting the exit:
    // the group's goes once they are done.
    wait_until(
        Duration::from_secs(15),
        "no task or group cgroup left",
        || agent.leftover_task_cgroups().is_empty(),
    );
}

#[test]
fn bad_group_options_are_refused_and_create_nothing() {
    if !require_root("bad_group_options_are_refused_and_create_nothing") {
        return;
    }
    let agent = TestAgent::start();
    let refused =
        |body: Value, needle: &str| match agent.client.post::<_, Value>("/v1/groups", &body) {
            Err(ClientError::Api {
                status: 400,
                message,
            }) => {
                assert!(message.contains(needle), "{needle:?} not in {message:?}")
            }
            other => panic!("{body}: {other:?}"),
        };
    let main = member("m", "true", false);
    let side = member("s", "true", true);
    refused(json!({"id": "g", "tasks": [side.clone()]}), "not a sidecar");
    for path in ["/proc/x", "relative", "/a/../b", "/", "/tmp", "/sandbox/s"] {
        refused(
            json!({"id": "g", "shared_path": path, "tasks": [main.clone()]}),
            "shared_path",
        );
    }
    let mut none = main.clone();
    none["network"] = json!("none");
    refused(
        json!({"id": "g", "network": "group", "tasks": [none]}),
        "tasks[0].network",
    );
    refused(
        json!({"id": "g", "network": "bridge", "tasks": [main.clone()]}),
        "network",
    );
    match agent.submit(side) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("sidecar"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(agent.data_dir.join("tasks"))
            .unwrap()
            .count(),
        0
    );
    assert!(!agent.data_dir.join("run/netns").exists());

    // Without network namespaces, the same rule as "network": "none".
    let old = TestAgent::start_with("disable_features = [\"net_namespace\"]");
    match old.client.post::<_, Value>(
        "/v1/groups",
        &json!({"id": "g", "network": "group", "tasks": [main]}),
    ) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => {
            assert!(message.contains("namespace"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_group_survives_an_agent_kill_and_is_cleaned_up_after() {
    if !require_root("a_group_survives_an_agent_kill_and_is_cleaned_up_after") {
        return;
    }
    let mut agent = TestAgent::start();
    let main = "until echo before | nc -w 2 127.0.0.1 7001; do sleep 0.2; done; \
                while [ ! -f /shared/go ]; do sleep 0.1; done; \
                until echo after | nc -w 2 127.0.0.1 7001; do sleep 0.2; done; \
                sleep 0.5; cat /shared/heard";
    let side = "while true; do nc -l -p 7001 >> /shared/heard; done";
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod3", "network": "group", "tasks": [
                member("pod3-main", main, false), member("pod3-side", side, true)]}),
        )
        .unwrap();
    let shared = shared_dir(&agent, "pod3-main");
    wait_until(LONG, "the sidecar heard 'before'", || {
        std::fs::read_to_string(shared.join("heard")).is_ok_and(|t| t.contains("before"))
    });

    agent.stop_agent(libc::SIGKILL);
    let ns = netns_file(&agent, "pod3-main");
    assert!(mounted(&ns), "the namespace is held without the agent");
    agent.spawn();
    for id in ["pod3-main", "pod3-side"] {
        assert_eq!(agent.status(id).state, TaskState::Running, "{id}");
    }
    std::fs::write(shared.join("go"), "").unwrap();
    let st = agent.wait_final("pod3-main", LONG);
    let out = agent.logs("pod3-main", "stdout");
    assert_eq!(st.state, TaskState::Finished, "{st:?} {out}");
    assert!(out.contains("before") && out.contains("after"), "{out}");
    assert_eq!(
        agent.wait_final("pod3-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_eq!(group_state(&agent, "pod3")["state"], "FINISHED");
    assert_gone(&agent, "pod3-main");

    // Main ended while the agent was down: the restarted agent stops the
    // sidecar and removes the group's volume and namespace.
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod4", "network": "group", "tasks": [
                member("pod4-main", "while [ ! -f /shared/go ]; do sleep 0.1; done", false),
                member("pod4-side", "sleep 1000", true)]}),
        )
        .unwrap();
    agent.wait_state("pod4-side", TaskState::Running, LONG);
    agent.stop_agent(libc::SIGKILL);
    std::fs::write(shared_dir(&agent, "pod4-main").join("go"), "").unwrap();
    let exit = agent.data_dir.join("tasks/pod4-main/exit.json");
    wait_until(LONG, "main exited", || exit.exists());
    agent.spawn();
    assert_eq!(
        agent.wait_final("pod4-main", LONG).state,
        TaskState::Finished
    );
    assert_eq!(
        agent.wait_final("pod4-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_gone(&agent, "pod4-main");
}

#[test]
fn the_shared_volume_counts_against_the_groups_disk_limit() {
    if !require_root("the_shared_volume_counts_against_the_groups_disk_limit") {
        return;
    }
    let agent = TestAgent::start_with("disk_check_interval_s = 0.5");
    let sized = |id: &str, cmd: &str, sidecar: bool| {
        let mut m = member(id, cmd, sidecar);
        m["resources"]["disk_mb"] = json!(2);
        m
    };
    // 2 + 2 MB for the group; 3 MB in /shared is within it, 5 MB is not
    // (and no member's own sandbox is over its 2 MB).
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod5", "tasks": [
                sized("pod5-main", "dd if=/dev/zero of=/shared/a bs=1M count=3 2>/dev/null; \
                                    while [ ! -f /shared/go ]; do sleep 0.1; done; \
                                    dd if=/dev/zero of=/shared/b bs=1M count=2 2>/dev/null; sleep 1000", false),
                sized("pod5-side", "sleep 1000", true)]}),
        )
        .unwrap();
    let shared = shared_dir(&agent, "pod5-main");
    wait_until(LONG, "3 MB written", || {
        std::fs::metadata(shared.join("a")).is_ok_and(|m| m.len() == 3 << 20)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.status("pod5-main").state,
        TaskState::Running,
        "within the limit"
    );
    std::fs::write(shared.join("go"), "").unwrap();
    let st = agent.wait_final("pod5-main", LONG);
    assert_eq!(
        st.reason,
        Some(gleaner_agent::status::Reason::DiskLimit),
        "{st:?}"
    );
    let side = agent.wait_final("pod5-side", LONG);
    assert!(side.state.is_final(), "{side:?}");
    assert_gone(&agent, "pod5-main");
}

/// A group waiting in the queue whose main member is killed there leaves
/// only its sidecar: it is stopped, never launched (it would run forever,
/// with no main left to end; found by review).
#[test]
fn a_sidecar_whose_main_was_killed_in_the_queue_never_runs() {
    if !require_root("a_sidecar_whose_main_was_killed_in_the_queue_never_runs") {
        return;
    }
    let agent = TestAgent::start();
    let reserve = |cpus: f64| {
        agent
            .client
            .put::<_, Value>(
                "/v1/reservations/batch",
                &json!({"cpus": cpus, "mem_mb": 512}),
            )
            .unwrap()
    };
    reserve(0.1); // the group (0.4 CPU) waits
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "q", "tasks": [member("q-main", "sleep 1000", false),
                                         member("q-side", "sleep 1000", true)]}),
        )
        .unwrap();
    assert_eq!(agent.status("q-main").state, TaskState::Queued);
    agent.client.delete::<Value>("/v1/tasks/q-main").unwrap();
    reserve(1.5); // room now: a pass runs
    let side = agent.wait_final("q-side", Duration::from_secs(20));
    assert_eq!(side.state, TaskState::Killed, "{side:?}");
    assert!(side.started_at.is_none(), "the sidecar ran: {side:?}");
}
