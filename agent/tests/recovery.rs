//! Issue 3: tasks survive the agent: restart, kill -9, crash-safe state, no
//! orphans. Root only: real processes, cgroups, supervisors.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::{Reason, TaskState, TaskStatus};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_all(agent: &TestAgent) {
    let tasks: Vec<TaskStatus> = agent.client.get("/v1/tasks").unwrap();
    for t in &tasks {
        if !t.state.is_final() {
            agent
                .client
                .delete::<Value>(&format!("/v1/tasks/{}", t.id))
                .unwrap();
        }
    }
    for t in &tasks {
        agent.wait_final(&t.id, LONG);
    }
}

fn assert_nothing_left(agent: &TestAgent) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if agent.leftover_task_cgroups().is_empty() && supervisor_pids(&agent.data_dir).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "left behind: cgroups {:?}, supervisors {:?}",
        agent.leftover_task_cgroups(),
        supervisor_pids(&agent.data_dir)
    );
}

#[test]
fn restart_readopts_running_tasks_and_learns_exits_that_happened_while_down() {
    if !require_root("restart_readopts_running_tasks_and_learns_exits_that_happened_while_down") {
        return;
    }
    let mut agent = TestAgent::start();
    let mut running = HashMap::new();
    for i in 0..50 {
        let st = agent
            .submit(json!({"id": format!("run{i}"), "argv": ["sleep", "600"], "resources": {"cpus": 0.01, "mem_mb": 16}}))
            .unwrap();
        assert_eq!(st.state, TaskState::Running);
        running.insert(st.id.clone(), st.pid.unwrap());
    }
    // Ten tasks that end while the agent is down, each differently.
    let mut enders: Vec<(String, Value)> = (0..8)
        .map(|code| {
            (
                format!("end{code}"),
                json!(format!("sleep 1.5; exit {code}")),
            )
        })
        .collect();
    enders.push((
        "end-oom".into(),
        json!("sleep 1.5; dd if=/dev/zero of=/dev/null bs=128M count=4"),
    ));
    enders.push(("end-sig".into(), json!("sleep 1.5; kill -9 $$")));
    for (id, cmd) in &enders {
        agent
            .submit(json!({"id": id, "cmd": cmd, "resources": {"cpus": 0.2, "mem_mb": 32}}))
            .unwrap();
    }
    agent.stop_agent(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(3000));
    agent.spawn();

    for (id, pid) in &running {
        let st = agent.status(id);
        assert_eq!(
            (st.state, st.pid),
            (TaskState::Running, Some(*pid)),
            "{id}: {st:?}"
        );
        assert!(alive(*pid), "{id} pid {pid} is gone");
    }
    for code in 0..8 {
        let st = agent.wait_final(&format!("end{code}"), LONG);
        let expected = if code == 0 {
            TaskState::Finished
        } else {
            TaskState::Failed
        };
        assert_eq!((st.state, st.exit_code), (expected, Some(code)), "{st:?}");
    }
    let oom = agent.wait_final("end-oom", LONG);
    assert_eq!(
        (oom.state, oom.reason),
        (TaskState::Failed, Some(Reason::MemoryLimit)),
        "{oom:?}"
    );
    let sig = agent.wait_final("end-sig", LONG);
    assert_eq!(
        (sig.state, sig.signal, sig.reason),
        (TaskState::Failed, Some(9), Some(Reason::ExitNonzero)),
        "{sig:?}"
    );

    // Re-adopted tasks are fully controllable.
    assert_eq!(agent.kill("run0").state, TaskState::Killed);
    kill_all(&agent);
    assert_nothing_left(&agent);
}

/// A tiny deterministic generator: no dependency for a few random delays.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn kill_9_during_a_submission_burst_loses_no_accepted_task() {
    if !require_root("kill_9_during_a_submission_burst_loses_no_accepted_task") {
        return;
    }
    let mut seed = 0x5eed_u64;
    let (mut accepted_total, mut unacknowledged_total) = (0usize, 0usize);
    for round in 0..10 {
        let mut agent = TestAgent::start();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let accepted = accepted.clone();
                let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let id = format!("r{round}-{t}-{i}");
                        let spec = json!({"id": id, "argv": ["sleep", "120"], "resources": {"cpus": 0.005, "mem_mb": 8}});
                        match client.post::<_, TaskStatus>("/v1/tasks", &spec) {
                            Ok(_) => accepted.lock().unwrap().push(id),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + lcg(&mut seed) % 900));
        agent.stop_agent(libc::SIGKILL);
        for t in threads {
            t.join().unwrap();
        }
        agent.spawn();
        let accepted = accepted.lock().unwrap().clone();
        for id in &accepted {
            let st = agent.wait_for(id, LONG, |s| {
                s.state != TaskState::Queued && s.state != TaskState::Staging
            });
            assert_eq!(st.state, TaskState::Running, "round {round}: {st:?}");
            // Exactly one launch: the init and the command, nothing more.
            let procs = agent.read_cgroup("memory", &format!("batch/{id}"), "cgroup.procs");
            assert_eq!(
                procs.lines().count(),
                2,
                "round {round}: {id} runs twice? procs {procs}"
            );
        }
        let all: Vec<TaskStatus> = agent.client.get("/v1/tasks").unwrap();
        accepted_total += accepted.len();
        unacknowledged_total += all.len() - accepted.len();
        eprintln!(
            "round {round}: accepted {}, known after restart {}",
            accepted.len(),
            all.len()
        );
        assert!(all.len() >= accepted.len());
        kill_all(&agent);
        assert_nothing_left(&agent);
    }
    eprintln!("accepted {accepted_total}, all accounted for; {unacknowledged_total} unacknowledged submissions ran too");
}

#[test]
fn corrupt_or_newer_state_is_refused_with_a_clear_message() {
    if !require_root("corrupt_or_newer_state_is_refused_with_a_clear_message") {
        return;
    }
    let mut agent = TestAgent::start();
    let st = agent.submit(spec("true")).unwrap();
    agent.wait_final(&st.id, LONG);
    agent.stop_agent(libc::SIGTERM);
    let path = agent.task_json(&st.id);
    let good = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let (code, err) = agent.start_expecting_failure();
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&path.display().to_string()) && err.contains("refusing to start"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut newer: Value = serde_json::from_str(&good).unwrap();
    newer["schema"] = json!(99);
    std::fs::write(&path, newer.to_string()).unwrap();
    let (_, err) = agent.start_expecting_failure();
    assert!(err.contains("schema 99 is newer"), "{err}");
    // Nothing was reset: the file is as we left it.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer.to_string());

    std::fs::write(&path, good).unwrap();
    agent.spawn();
    assert_eq!(agent.status(&st.id).state, TaskState::Finished);
}

#[test]
fn tasks_running_across_a_host_reboot_are_lost_and_restarted_by_policy() {
    if !require_root("tasks_running_across_a_host_reboot_are_lost_and_restarted_by_policy") {
        return;
    }
    let mut agent = TestAgent::start();
    agent.submit(json!({"id": "once", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}})).unwrap();
    agent
        .submit(
            json!({"id": "again", "argv": ["sleep", "600"], "restart": {"policy": "always"},
                       "resources": {"cpus": 0.1, "mem_mb": 16}}),
        )
        .unwrap();
    // A reboot: every process and cgroup gone, and another boot id.
    agent.stop_agent(libc::SIGKILL);
    kill_supervisors(&agent.data_dir);
    for id in ["once", "again"] {
        let path = agent.task_json(id);
        let mut record: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        record["boot_id"] = json!("an-earlier-boot");
        std::fs::write(&path, record.to_string()).unwrap();
    }
    agent.spawn();
    let once = agent.status("once");
    assert_eq!(
        (once.state, once.reason),
        (TaskState::Lost, Some(Reason::AgentLost)),
        "{once:?}"
    );
    let again = agent.wait_for("again", LONG, |s| {
        s.state == TaskState::Running && s.restarts == 1
    });
    assert!(alive(again.pid.unwrap()));
    kill_all(&agent);
    assert_nothing_left(&agent);
}

#[test]
fn unknown_supervisors_and_cgroups_are_removed_at_start() {
    if !require_root("unknown_supervisors_and_cgroups_are_removed_at_start") {
        return;
    }
    let mut agent = TestAgent::start();
    let pids: Vec<i32> = (0..3)
        .map(|_| agent.submit(spec("sleep 600")).unwrap().pid.unwrap())
        .collect();
    agent.stop_agent(libc::SIGKILL);
    // Every record gone (the tasks dir itself is the agent's mount point).
    for e in std::fs::read_dir(agent.data_dir.join("tasks")).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    agent.spawn();
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) && start.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "tasks of unknown supervisors still run"
    );
    assert_nothing_left(&agent);
    let tasks: Vec<Value> = agent.client.get("/v1/tasks").unwrap();
    assert!(tasks.is_empty());
}

#[test]
fn a_reused_pid_is_not_mistaken_for_the_supervisor() {
    if !require_root("a_reused_pid_is_not_mistaken_for_the_supervisor") {
        return;
    }
    let mut agent = TestAgent::start();
    let st = agent.submit(spec("sleep 600")).unwrap();
    agent.stop_agent(libc::SIGKILL);
    let sup_path = agent
        .data_dir
        .join("tasks")
        .join(&st.id)
        .join("supervisor.json");
    let mut sup: Value =
        serde_json::from_str(&std::fs::read_to_string(&sup_path).unwrap()).unwrap();
    // The supervisor dies, and its pid now belongs to a process of ours.
    unsafe {
        libc::kill(
            sup["supervisor_pid"].as_i64().unwrap() as i32,
            libc::SIGKILL,
        )
    };
    let start = Instant::now();
    while alive(st.pid.unwrap()) && start.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut impostor = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    sup["supervisor_pid"] = json!(impostor.id());
    std::fs::write(&sup_path, sup.to_string()).unwrap();
    agent.spawn();
    let lost = agent.status(&st.id);
    assert_eq!(
        (lost.state, lost.reason),
        (TaskState::Lost, Some(Reason::AgentLost)),
        "{lost:?}"
    );
    assert!(
        impostor.try_wait().unwrap().is_none(),
        "the impostor was signalled"
    );
    impostor.kill().unwrap();
    impostor.wait().unwrap();
    assert_nothing_left(&agent);
}

/// Issue 21: a second agent on a live agent's data dir (an operator's
/// mistake, uninstall's temporary agent) refuses at once, naming the
/// holder, and touches nothing: not the image downloads in progress, not
/// the notify socket, not a task dir still being created.
#[test]
fn a_second_agent_on_a_live_data_dir_refuses_and_touches_nothing() {
    if !require_root("a_second_agent_on_a_live_data_dir_refuses_and_touches_nothing") {
        return;
    }
    let agent = TestAgent::start();
    let st = agent.submit(spec("sleep 600")).unwrap();
    agent.wait_for(&st.id, LONG, |s| s.state == TaskState::Running);
    let download = agent.data_dir.join("images/.tmp/in-progress");
    std::fs::write(&download, b"partial").unwrap();
    let half = agent.data_dir.join("tasks/being-created");
    std::fs::create_dir(&half).unwrap();
    use std::os::unix::fs::MetadataExt;
    let sock = agent.data_dir.join("run/notify.sock");
    let sock_ino = std::fs::metadata(&sock).unwrap().ino();

    // Another port, so that only the data dir is shared.
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let other = config.replace(
        &agent.base.trim_start_matches("http://").to_string(),
        &format!("127.0.0.1:{}", free_port()),
    );
    assert_ne!(config, other);
    let second = agent.tmp().join("second.toml");
    std::fs::write(&second, other).unwrap();
    let mut child = std::process::Command::new(AGENT_BIN)
        .arg("--config")
        .arg(&second)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second agent kept running beside the first");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("pid {}", agent.agent_pid())),
        "names the holder: {err}"
    );
    assert!(download.exists(), "images/.tmp was emptied");
    assert!(half.is_dir(), "a task dir being created was removed");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        sock_ino,
        "notify.sock taken over"
    );
    // The live agent still hears its supervisors: the task's exit arrives.
    agent
        .client
        .delete::<Value>(&format!("/v1/tasks/{}", st.id))
        .unwrap();
    agent.wait_final(&st.id, LONG);
    assert_nothing_left(&agent);
}

/// Issue 20 point 6: removing a lost task's cgroup waits for its processes
/// to die (up to 2 s). That wait ran on one of the runtime's workers while
/// holding the task's lock, and the API stalled behind it.
#[test]
fn removing_a_stuck_cgroup_does_not_stall_the_api() {
    if !require_root("removing_a_stuck_cgroup_does_not_stall_the_api") {
        return;
    }
    let agent = TestAgent::start_with("liveness_interval_s = 0.2");
    agent
        .submit(json!({"id": "stuck", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 32}}))
        .unwrap();
    agent.wait_state("stuck", TaskState::Running, LONG);
    // A process in a cgroup below the task's, in the memory hierarchy: the
    // agent kills what is in the task's cgroup itself, so this one lives on
    // and the task cgroup's rmdir fails (EBUSY) for as long as it does.
    let task_dir = agent.cgroup_dir("memory", "batch/stuck");
    let held = task_dir.join("held");
    std::fs::create_dir(&held).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(held.join("cgroup.procs"), child.id().to_string()).unwrap();
    kill_supervisors(&agent.data_dir);
    let (start, mut worst, mut lost) = (Instant::now(), Duration::ZERO, false);
    while start.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        lost |= agent.status("stuck").state == TaskState::Lost;
        worst = worst.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    destroy_cgroup_tree(&task_dir);
    assert!(lost, "the task should be LOST once its supervisor is gone");
    assert!(
        worst < Duration::from_millis(500),
        "a GET waited {worst:?} behind the cgroup's removal"
    );
}

/// Issue 20 point 8: finished tasks do not pile up. Past `finished_max`
/// the oldest go, after `finished_retention_h` all of them, each with its
/// logs and task dir; an unfinished task stays; a removed id is free again.
#[test]
fn finished_tasks_are_removed_past_the_cap_and_after_the_retention() {
    if !require_root("finished_tasks_are_removed_past_the_cap_and_after_the_retention") {
        return;
    }
    // 0.001 h = 3.6 s, swept every 0.9 s.
    let agent = TestAgent::start_with("finished_max = 2\nfinished_retention_h = 0.001");
    agent
        .submit(json!({"id": "keep", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}}))
        .unwrap();
    let quick = |id: &str| json!({"id": id, "argv": ["echo", "hi"], "resources": {"cpus": 0.1, "mem_mb": 16}});
    for i in 0..5 {
        let id = format!("done{i}");
        agent.submit(quick(&id)).unwrap();
        agent.wait_final(&id, LONG);
    }
    let finished = || -> Vec<String> {
        let all: Vec<TaskStatus> = agent.client.get("/v1/tasks").unwrap();
        all.into_iter()
            .filter(|t| t.state.is_final())
            .map(|t| t.id)
            .collect()
    };
    wait_until(LONG, "at most finished_max finished tasks", || {
        finished().len() <= 2
    });
    let left = finished();
    assert!(
        left.iter().all(|id| id == "done3" || id == "done4"),
        "the newest should be kept: {left:?}"
    );
    let dir = |id: &str| agent.data_dir.join("tasks").join(id);
    wait_until(LONG, "the task dir (and its logs) removed", || {
        !dir("done0").exists()
    });
    assert!(agent.client.get::<TaskStatus>("/v1/tasks/done0").is_err());
    wait_until(LONG, "every finished task removed", || {
        finished().is_empty() && !dir("done4").exists()
    });
    assert_eq!(agent.status("keep").state, TaskState::Running);
    assert!(dir("keep").exists());
    // A removed id may be used again.
    agent.submit(quick("done0")).unwrap();
    agent.wait_final("done0", LONG);
    agent.kill("keep");
}
