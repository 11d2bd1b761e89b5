//! etcd credentials for the fleet (review of issue 13): with auth on
//! (`scripts/etcd-auth-setup.sh`), agents and schedulers work with their
//! own users, and nothing without a password (a task on the host) can
//! write placements; the agent's user cannot place either. One host per
//! node id: a second agent with a live node's id is refused at start.
//! Root only; real etcd, agents and schedulers (`cargo build --workspace`
//! first).

mod common;
#[allow(dead_code)]
mod sim;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// etcdctl as someone other than root: `user` None = no credentials.
fn ctl_as(
    fleet: &Fleet,
    user: Option<(&str, &std::path::Path)>,
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", &fleet.etcd.endpoints_csv()])
        .args(["--command-timeout=3s", "--dial-timeout=2s"]);
    if let Some((name, file)) = user {
        let password = std::fs::read_to_string(file).unwrap();
        cmd.arg(format!("--user={name}:{}", password.trim()));
    }
    let out = cmd.args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn final_state(fleet: &Fleet, id: &str) -> String {
    let mut state = String::new();
    wait_until(LONG, &format!("job {id} ends"), || {
        state = job(fleet, id)["state"].as_str().unwrap_or("").to_owned();
        matches!(state.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED")
    });
    state
}

#[test]
fn a_fleet_on_an_authenticated_etcd_places_and_a_task_cannot_write_placements() {
    if !require_root("a_fleet_on_an_authenticated_etcd_places_and_a_task_cannot_write_placements") {
        return;
    }
    let names = ["n1"];
    let Some(mut fleet) = Fleet::start_with_auth(&agents(&names, 2.0, |_| vec![])) else {
        return;
    };
    fleet.wait_registered();
    fleet.add_scheduler("");
    wait_until(LONG, "a leader", || leader(&fleet).is_some());
    put_queue(&fleet, "q", 1.0);

    // A job placed and run through the agent's and scheduler's users.
    let ids = submit(&fleet, "q", vec![sleeper(0.5, 30, json!([]))]);
    wait_until(LONG, "the job runs on n1", || {
        running_by_job(&fleet).contains_key(&ids[0])
    });

    // A real task on that agent tries etcd's HTTP gateway without a
    // password: it reaches etcd (/version answers) and its put is refused.
    let etcd = fleet.etcd.endpoints()[0].clone();
    let key_b64 = "L2dsZWFuZXIvcGxhY2VtZW50cy9uMS9ldmls"; // /gleaner/placements/n1/evil
    let cmd = format!(
        "busybox wget -q -O /tmp/v {etcd}/version || exit 3; \
         busybox wget -q -O /tmp/put --post-data '{{\"key\":\"{key_b64}\",\"value\":\"e30=\"}}' {etcd}/v3/kv/put; \
         cat /tmp/put; exit 0"
    );
    let task = json!({"priority": 0, "spec": {
        "cmd": cmd, "kill_grace_s": 1, "resources": {"cpus": 0.1, "mem_mb": 16}
    }});
    let ids2 = submit(&fleet, "q", vec![task]);
    assert_eq!(
        final_state(&fleet, &ids2[0]),
        "SUCCEEDED",
        "the task reached etcd (exit 3 = it could not): {}",
        job(&fleet, &ids2[0])
    );
    assert_eq!(fleet.etcd.get("/gleaner/placements/n1/evil"), None);

    // Anything without the password: every read and write refused.
    let placement = r#"{"spec":{"cmd":"touch /tmp/pwned"}}"#;
    let err = ctl_as(
        &fleet,
        None,
        &["put", "/gleaner/placements/n1/evil", placement],
    )
    .unwrap_err();
    assert!(err.contains("user name is empty"), "{err}");
    let err = ctl_as(&fleet, None, &["get", "--prefix", "/gleaner/"]).unwrap_err();
    assert!(err.contains("user name is empty"), "{err}");
    let err = ctl_as(&fleet, None, &["del", "--prefix", "/gleaner/scheduler/"]).unwrap_err();
    assert!(err.contains("user name is empty"), "{err}");

    // The agent's user writes what agents write, and places nothing.
    let auth = fleet.etcd.auth.clone().unwrap();
    let agent = Some(("gleaner-agent", auth.agent_password_file.as_path()));
    for (args, what) in [
        (
            vec!["put", "/gleaner/placements/n1/evil", placement],
            "a placement",
        ),
        (vec!["put", "/gleaner/jobs/evil", "{}"], "a job"),
        (
            vec!["del", "--prefix", "/gleaner/scheduler/"],
            "the leader key",
        ),
        (
            vec!["del", &format!("/gleaner/placements/n1/{}", ids[0])],
            "a placement's deletion",
        ),
    ] {
        let err = ctl_as(&fleet, agent, &args).expect_err(what);
        assert!(err.contains("permission denied"), "{what}: {err}");
    }
    ctl_as(
        &fleet,
        agent,
        &["get", "--prefix", "/gleaner/placements/n1/"],
    )
    .unwrap();
    ctl_as(
        &fleet,
        agent,
        &["put", "/gleaner/nodes/n1/attributes/rack", "r1"],
    )
    .unwrap();
    assert_eq!(fleet.etcd.get("/gleaner/placements/n1/evil"), None);
    assert!(
        job(&fleet, &ids[0])["state"] == "RUNNING",
        "{}",
        job(&fleet, &ids[0])
    );
    let _ = fleet.schedulers.pop();
}

#[test]
fn bad_etcd_credentials_stop_agent_and_scheduler_at_start() {
    if !require_root("bad_etcd_credentials_stop_agent_and_scheduler_at_start") {
        return;
    }
    let Some(fleet) = Fleet::start_with_auth(&[]) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let readable = dir.path().join("readable");
    std::fs::write(&readable, "whatever\n").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = dir.path().join("missing");
    let toml = |p: &std::path::Path| {
        format!(
            "etcd_username = \"gleaner-agent\"\netcd_password_file = {:?}\n",
            p.display().to_string()
        )
    };
    for (file, want) in [
        (&readable, "chmod 600"),
        (&missing, "No such file"),
        (&wrong, "authentication failed"),
    ] {
        let Err((code, log)) = FleetAgent::try_start(
            "bad",
            &fleet.etcd.endpoints(),
            &fleet.rootfs,
            &[],
            &toml(file),
        ) else {
            panic!("the agent started with {}", file.display());
        };
        assert_eq!(code, Some(1), "{log}");
        let last = log.lines().last().unwrap_or("");
        assert!(
            last.starts_with("gleaner-agent: ") && last.contains(want),
            "{}: want {want:?} in the last line of\n{log}",
            file.display()
        );
    }
    // The scheduler: a password file others may read is refused.
    let config = dir.path().join("scheduler.toml");
    std::fs::write(
        &config,
        format!(
            "etcd_username = \"gleaner-scheduler\"\netcd_password_file = {:?}\n",
            readable.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gleaner-scheduler"))
        .args(["--etcd", &fleet.etcd.endpoints_csv(), "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("etcd_password_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn a_second_agent_cannot_take_a_live_node_id() {
    if !require_root("a_second_agent_cannot_take_a_live_node_id") {
        return;
    }
    let Some(mut fleet) = Fleet::start(&agents(&["n1"], 1.0, |_| vec![])) else {
        return;
    };
    fleet.wait_registered();
    let etcd = fleet.etcd.endpoints();
    let start_second =
        |fleet: &Fleet| FleetAgent::try_start("n1", &etcd, &fleet.rootfs, &[], &reservation(1.0));
    let Err((code, log)) = start_second(&fleet) else {
        panic!("a second agent took node id n1");
    };
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(r#"node id "n1" is taken"#) && log.contains("wait 10 s"),
        "{log}"
    );
    // The first agent itself, restarted at once (its lease still lives):
    // its data dir knows the lease, so it takes its id back.
    fleet.agent_mut("n1").kill(Signal::SIGKILL);
    fleet
        .agent_mut("n1")
        .try_spawn()
        .expect("the restarted agent was refused its own id");
    // Once the first is gone for good and its lease expired, another
    // agent may take the id.
    fleet.agent_mut("n1").kill(Signal::SIGKILL);
    wait_until(Duration::from_secs(20), "n1's lease expires", || {
        fleet.etcd.get("/gleaner/nodes/n1/info").is_none()
    });
    let second = start_second(&fleet).unwrap_or_else(|(c, log)| panic!("{c:?}: {log}"));
    wait_until(
        Duration::from_secs(10),
        "the second agent registers n1",
        || fleet.etcd.get("/gleaner/nodes/n1/info").is_some(),
    );
    // And now the first one is the one refused.
    let first = fleet.agent_mut("n1");
    let err = first
        .try_spawn()
        .expect_err("the first agent came back over the second");
    assert!(err.contains(r#"node id "n1" is taken"#), "{err}");
    drop(second);
}

/// Re-registration after an etcd outage: a second agent with n1's id
/// started while etcd was down (it cannot check then) registers nothing
/// once etcd is back: the first agent keeps the id.
#[test]
fn an_agent_started_during_an_etcd_outage_does_not_take_a_live_node_id() {
    if !require_root("an_agent_started_during_an_etcd_outage_does_not_take_a_live_node_id") {
        return;
    }
    let Some(mut fleet) = Fleet::start(&agents(&["n1"], 1.0, |_| vec![])) else {
        return;
    };
    fleet.wait_registered();
    let info_lease = |fleet: &Fleet| {
        let out = fleet
            .etcd
            .ctl(&["get", "/gleaner/nodes/n1/info", "-w", "json"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["kvs"][0]["lease"].as_i64()
    };
    fleet.etcd.kill_all();
    let etcd = fleet.etcd.endpoints();
    let second = FleetAgent::try_start("n1", &etcd, &fleet.rootfs, &[], &reservation(1.0))
        .unwrap_or_else(|(c, log)| panic!("{c:?}: {log}"));
    fleet.etcd.restart_all();
    wait_until(LONG, "the second agent refuses n1", || {
        std::fs::read_to_string(&second.log_path)
            .unwrap_or_default()
            .contains(r#"node id "n1" is taken"#)
    });
    // The first agent holds the info key (under its own new lease).
    // Read each time: the first agent re-registers under a new lease.
    // The lease file lists the last few leases a data dir claimed the id
    // with, newest last (each remembered before its claim is written).
    let leases = |dir: &std::path::Path| -> Vec<i64> {
        std::fs::read_to_string(dir.join("etcd-lease"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let first_lease = || leases(&fleet.agent("n1").data_dir).last().copied();
    let start = std::time::Instant::now();
    while info_lease(&fleet).is_none() || info_lease(&fleet) != first_lease() {
        assert!(
            start.elapsed() < LONG,
            "n1's info is under lease {:?}, the first agent's is {:?}",
            info_lease(&fleet),
            first_lease()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The second agent tried (its leases are remembered before each
    // claim) but holds nothing.
    let held = info_lease(&fleet).expect("n1's info has a lease");
    assert!(!leases(&second.data_dir).contains(&held));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(info_lease(&fleet), first_lease());
    assert!(!leases(&second.data_dir).contains(&held));
    drop(second);
}

/// The API replicas on an auth-enabled etcd (tests/sim harness): with the
/// scheduler's user every write works; a replica without credentials
/// stores nothing (503), and nothing is half-applied.
#[test]
fn the_api_works_with_the_scheduler_user_and_not_without_one() {
    let Some(etcd) = sim::Etcd::start_with_auth() else {
        return;
    };
    let with = sim::Scheduler::start(&etcd, "with", &etcd.scheduler_toml());
    let without = sim::Scheduler::start(&etcd, "without", "");
    let body = json!({"queue": "q", "jobs": [{"priority": 0, "spec": {
        "cmd": "true", "resources": {"cpus": 0.1, "mem_mb": 16}}}]});
    let queue = json!({"priority_factor": 1.0});
    let (code, reply) = with.call("PUT", "/v1/queues/q", Some(queue.clone()));
    assert!((200..300).contains(&code), "{code} {reply}");
    let (code, reply) = without.call("PUT", "/v1/queues/q2", Some(queue));
    assert_eq!(code, 503, "{reply}");
    let (code, reply) = with.call("POST", "/v1/jobs", Some(body.clone()));
    assert_eq!(code, 201, "{reply}");
    assert_eq!(etcd.keys("/gleaner/jobs/").len(), 1);
    let (code, reply) = without.call("POST", "/v1/jobs", Some(body));
    assert_eq!(code, 503, "{reply}");
    assert_eq!(etcd.keys("/gleaner/jobs/").len(), 1);
    assert_eq!(etcd.keys("/gleaner/queues/"), vec!["/gleaner/queues/q"]);
    // The credentialed replica leads; the other cannot even campaign.
    sim::wait_for(Duration::from_secs(20), "a leader", || {
        with.call("GET", "/v1/leader", None).1["self"] == true
    });
    assert!(
        without.log().contains("user name is empty"),
        "{}",
        without.log()
    );
}
