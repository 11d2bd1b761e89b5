//! Issue 20 points 1-3 and issue 16 point 1: work that outlives its
//! request, ordered record writes, acknowledged means durable, and a submit
//! reply that means "launched". Each test widens its race window with a
//! test hook (`GLEANER_TEST_HOOKS`, debug builds only). Root only.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use gleaner_agent::status::{TaskState, TaskStatus};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

/// The hooks file, removed with the test (even a failed one).
struct Hooks {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

/// An agent whose test hooks are read from a file the test rewrites.
fn agent_with_hooks(hooks: &str) -> (TestAgent, Hooks) {
    agent_with_hooks_cfg("", hooks)
}

fn agent_with_hooks_cfg(config: &str, hooks: &str) -> (TestAgent, Hooks) {
    let dir = tempfile::Builder::new()
        .prefix("gleaner-hooks-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("hooks");
    std::fs::write(&file, hooks).unwrap();
    let agent =
        TestAgent::start_with_env(config, &[("GLEANER_TEST_HOOKS", file.to_str().unwrap())]);
    (agent, Hooks { _dir: dir, file })
}

fn set_hooks(hooks: &Hooks, text: &str) {
    std::fs::write(&hooks.file, text).unwrap();
}

/// Sends a whole request, waits `after`, and closes the connection without
/// reading the reply: the client that went away.
fn hang_up(agent: &TestAgent, method: &str, path: &str, body: &Value, after: Duration) {
    let addr = agent.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        agent.token,
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
    drop(s);
}

fn long_task(id: &str) -> Value {
    json!({"id": id, "argv": ["sleep", "600"], "resources": {"cpus": 0.05, "mem_mb": 16}})
}

/// Issue 20.1: a client that disconnects while its task is being launched
/// does not leave the task STAGING with its resources held.
#[test]
fn a_dropped_submit_still_launches_its_task() {
    if !require_root("a_dropped_submit_still_launches_its_task") {
        return;
    }
    let (agent, hooks) = agent_with_hooks("delay launch 1500\n");
    hang_up(
        &agent,
        "POST",
        "/v1/tasks",
        &long_task("dropped"),
        Duration::from_millis(400),
    );
    set_hooks(&hooks, "");
    let st = agent.wait_for("dropped", Duration::from_secs(15), |s| {
        s.state != TaskState::Staging && s.state != TaskState::Queued
    });
    assert_eq!(st.state, TaskState::Running, "{st:?}");
    agent.kill("dropped");
}

/// Issue 20.1: a reservation change whose client went away still reaches
/// the role's cgroup.
#[test]
fn a_dropped_reservation_change_still_reaches_the_cgroup() {
    if !require_root("a_dropped_reservation_change_still_reaches_the_cgroup") {
        return;
    }
    let (agent, _hooks) = agent_with_hooks("delay reservation_apply 1500\n");
    hang_up(
        &agent,
        "PUT",
        "/v1/reservations/dropped",
        &json!({"cpus": 0.5, "mem_mb": 100}),
        Duration::from_millis(400),
    );
    let want = (100u64 << 20).to_string();
    wait_until(Duration::from_secs(15), "the memory limit", || {
        std::fs::read_to_string(
            agent
                .cgroup_dir("memory", "dropped")
                .join("memory.limit_in_bytes"),
        )
        .map(|v| v.trim() == want)
        .unwrap_or(false)
    });
}

/// Issue 20.2: the accepted record's durable write, slower than the task,
/// never replaces the final state on disk.
#[test]
fn a_slow_accept_write_never_overwrites_a_newer_state() {
    if !require_root("a_slow_accept_write_never_overwrites_a_newer_state") {
        return;
    }
    // Longer than the launch and the exit report, even on a loaded host.
    let (agent, _hooks) = agent_with_hooks("delay record_write 8000\n");
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit = std::thread::spawn(move || {
        client.post::<_, TaskStatus>(
            "/v1/tasks",
            &json!({"id": "quick", "argv": ["true"], "resources": {"cpus": 0.05, "mem_mb": 16}}),
        )
    });
    wait_until(LONG, "the task in the map", || {
        agent.client.get::<TaskStatus>("/v1/tasks/quick").is_ok()
    });
    agent.wait_final("quick", LONG);
    // The reply waits for the accepted record's durable write.
    submit.join().unwrap().unwrap();
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(agent.task_json("quick")).unwrap()).unwrap();
    assert_eq!(on_disk["status"]["state"], "FINISHED", "{on_disk:#}");
}

/// Issue 20.3: a DELETE of a STAGING task is on disk before its reply; a
/// restarted agent does not launch the task.
#[test]
fn a_kill_of_a_staging_task_survives_kill_9() {
    if !require_root("a_kill_of_a_staging_task_survives_kill_9") {
        return;
    }
    let (mut agent, hooks) = agent_with_hooks("delay launch 4000\n");
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit = std::thread::spawn(move || {
        let _ = client.post::<_, TaskStatus>("/v1/tasks", &long_task("staged"));
    });
    wait_until(LONG, "STAGING", || {
        agent
            .client
            .get::<TaskStatus>("/v1/tasks/staged")
            .is_ok_and(|s| s.state == TaskState::Staging)
    });
    // The record is durable before the launch ends (the reply waits for both).
    wait_until(LONG, "task.json", || agent.task_json("staged").exists());
    let killed: TaskStatus = agent.client.delete("/v1/tasks/staged").unwrap();
    assert_eq!(killed.state, TaskState::Staging);
    agent.stop_agent(libc::SIGKILL);
    let _ = submit.join();
    set_hooks(&hooks, "");
    agent.spawn();
    let st = agent.wait_final("staged", LONG);
    assert_eq!(st.state, TaskState::Killed, "{st:?}");
    assert!(st.started_at.is_none(), "launched after its kill: {st:?}");
    wait_until(Duration::from_secs(10), "no supervisor", || {
        supervisor_pids(&agent.data_dir).is_empty()
    });
}

/// Issue 20.3: a group whose records were half written when the agent died
/// was never acknowledged: it is not recovered, nothing of it runs.
#[test]
fn a_half_written_group_is_discarded_by_recovery() {
    if !require_root("a_half_written_group_is_discarded_by_recovery") {
        return;
    }
    let (mut agent, hooks) = agent_with_hooks("delay group_write 4000\n");
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit = std::thread::spawn(move || {
        let body = json!({"id": "half", "tasks": [long_task("half.0"), long_task("half.1")]});
        client.post::<_, Value>("/v1/groups", &body)
    });
    wait_until(LONG, "the first member's record", || {
        agent.task_json("half.0").exists()
    });
    assert!(!agent.task_json("half.1").exists());
    agent.stop_agent(libc::SIGKILL);
    assert!(
        submit.join().unwrap().is_err(),
        "the group was acknowledged"
    );
    set_hooks(&hooks, "");
    agent.spawn();
    for id in ["half.0", "half.1"] {
        let got = agent.client.get::<TaskStatus>(&format!("/v1/tasks/{id}"));
        assert!(got.is_err(), "{id} recovered: {got:?}");
        assert!(!agent.data_dir.join("tasks").join(id).exists());
    }
    wait_until(Duration::from_secs(10), "nothing left", || {
        agent.leftover_task_cgroups().is_empty() && supervisor_pids(&agent.data_dir).is_empty()
    });
}

/// Issue 20.3: a stop whose stop.json could not be written does not mark
/// the task stopping (preemption would skip it forever).
#[test]
fn a_failed_stop_does_not_mark_the_task_stopping() {
    if !require_root("a_failed_stop_does_not_mark_the_task_stopping") {
        return;
    }
    let (agent, hooks) = agent_with_hooks("");
    agent
        .client
        .put::<_, Value>("/v1/reservations/r", &json!({"cpus": 1.0, "mem_mb": 256}))
        .unwrap();
    let st = agent
        .submit(json!({"id": "victim", "role": "r", "argv": ["sleep", "600"], "resources": {"cpus": 0.5, "mem_mb": 64}}))
        .unwrap();
    assert_eq!(st.state, TaskState::Running);
    set_hooks(&hooks, "fail stop_json\n");
    let refused = agent.client.delete::<TaskStatus>("/v1/tasks/victim");
    assert!(refused.is_err(), "{refused:?}");
    set_hooks(&hooks, "");
    let change: Value = agent
        .client
        .put("/v1/reservations/r", &json!({"cpus": 0.1, "mem_mb": 256}))
        .unwrap();
    assert_eq!(change["preempted"], json!(["victim"]), "{change}");
    let st = agent.wait_final("victim", LONG);
    assert_eq!(st.state, TaskState::Preempted, "{st:?}");
}

/// Issue 16.1: when another pass (here: a reservation change's) admits a
/// new task first, the submission still replies once that launch is done.
#[test]
fn a_submit_replies_running_whichever_pass_launched_it() {
    if !require_root("a_submit_replies_running_whichever_pass_launched_it") {
        return;
    }
    let (agent, hooks) = agent_with_hooks("delay submit_pass 1500\ndelay launch 3000\n");
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit =
        std::thread::spawn(move || client.post::<_, TaskStatus>("/v1/tasks", &long_task("second")));
    // While the submission waits before its own pass, another pass admits
    // the task and launches it (slowly).
    std::thread::sleep(Duration::from_millis(300));
    agent
        .client
        .put::<_, Value>(
            "/v1/reservations/other",
            &json!({"cpus": 0.1, "mem_mb": 16}),
        )
        .unwrap();
    let st = submit.join().unwrap().unwrap();
    assert_eq!(st.state, TaskState::Running, "{st:?}");
    set_hooks(&hooks, "");
    agent.kill("second");
}

/// Issue 20 follow-up: the exit is reported before the task's cgroup is
/// removed. A removal that takes seconds (held here by a hook; on a busy
/// host the task's last processes, SCHED_IDLE, are slow to die) does not
/// hold back the final state, and a restart, which must wait for the
/// previous supervisor to finish that removal, launches cleanly.
#[test]
fn a_slow_cgroup_removal_does_not_delay_the_exit() {
    if !require_root("a_slow_cgroup_removal_does_not_delay_the_exit") {
        return;
    }
    let (agent, _hooks) = agent_with_hooks("delay cgroup_remove 8000\n");
    let res = json!({"cpus": 0.05, "mem_mb": 16});
    let st = agent
        .submit(json!({"id": "quick", "argv": ["sleep", "0.2"], "resources": res}))
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(st.state, TaskState::Running, "{st:?}");
    let st = agent.wait_final("quick", LONG);
    let took = started.elapsed();
    assert_eq!(st.state, TaskState::Finished, "{st:?}");
    // The old code reported after the removal: 8 s and more.
    assert!(
        took < Duration::from_secs(6),
        "exit reported {took:?} after the launch"
    );
    agent
        .submit(json!({"id": "again", "argv": ["false"], "resources": res,
                       "restart": {"policy": "on-failure", "max_retries": 1}}))
        .unwrap();
    let st = agent.wait_for("again", Duration::from_secs(60), |s| {
        s.state.is_final() && s.restarts == 1
    });
    assert_eq!(st.state, TaskState::Failed, "{st:?}");
    assert_eq!(st.exit_code, Some(1), "the second run ran: {st:?}");
    wait_until(LONG, "cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

/// Issue 20 follow-up: recovery does not wait forever for a supervisor
/// that never writes its record (hung between starting the command and
/// the record; a hook here). After the bound (shortened by a hook from
/// 30 s) the supervisor and its init are killed with the task's cgroup,
/// A supervisor that is slow but getting on (here: busy before its record,
/// as a starved one on a loaded host) is not killed at the bound: its
/// command may already run, and killing it would run the command twice.
#[test]
fn recovery_waits_on_for_a_slow_supervisor_that_gets_on() {
    if !require_root("recovery_waits_on_for_a_slow_supervisor_that_gets_on") {
        return;
    }
    let hooks_text = "spin supervisor_record 8000\nlimit starting_supervisor_wait 1000\n";
    let (mut agent, _hooks) = agent_with_hooks(hooks_text);
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit = std::thread::spawn(move || {
        let _ = client.post::<_, TaskStatus>("/v1/tasks", &long_task("slow"));
    });
    wait_until(LONG, "the command exec'd", || {
        std::fs::read_to_string(
            agent
                .cgroup_dir("memory", "batch/slow")
                .join("cgroup.procs"),
        )
        .is_ok_and(|p| p.split_whitespace().count() >= 2)
    });
    assert!(!agent.data_dir.join("tasks/slow/supervisor.json").exists());
    let before = supervisor_pids(&agent.data_dir);
    assert_eq!(agent.status("slow").state, TaskState::Staging);
    agent.stop_agent(libc::SIGKILL);
    let _ = submit.join();
    agent.spawn();
    let st = agent.wait_state("slow", TaskState::Running, Duration::from_secs(60));
    assert_eq!(st.restarts, 0, "{st:?}");
    let now = supervisor_pids(&agent.data_dir);
    // The supervisor (the first forked) lives on: it was never killed.
    let sup = *before.iter().min().unwrap();
    assert!(
        now.contains(&sup),
        "the slow supervisor was killed: {before:?} -> {now:?}"
    );
    let procs = agent.read_cgroup("memory", "batch/slow", "cgroup.procs");
    assert!(
        procs.split_whitespace().count() <= 2,
        "one run only: {procs:?}"
    );
    agent.kill("slow");
}

/// and the task, never reported running, is queued again and runs once.
#[test]
fn recovery_does_not_wait_forever_for_a_supervisor_without_a_record() {
    if !require_root("recovery_does_not_wait_forever_for_a_supervisor_without_a_record") {
        return;
    }
    let limit = "limit starting_supervisor_wait 2000\n";
    let (mut agent, hooks) = agent_with_hooks(&format!("delay supervisor_record 600000\n{limit}"));
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let submit = std::thread::spawn(move || {
        let _ = client.post::<_, TaskStatus>("/v1/tasks", &long_task("hung"));
    });
    // The command runs in its cgroup; its supervisor sleeps before its record.
    wait_until(LONG, "the command in its cgroup", || {
        std::fs::read_to_string(
            agent
                .cgroup_dir("memory", "batch/hung")
                .join("cgroup.procs"),
        )
        .is_ok_and(|p| !p.trim().is_empty())
    });
    // The init joins the cgroup before its command's exec, and only then
    // does the supervisor reach its record: wait for the command (a second
    // process) and a moment more, or the hooks rewritten below could let it
    // write the record after all (seen: re-adopted, "lives on").
    wait_until(LONG, "the command exec'd", || {
        std::fs::read_to_string(
            agent
                .cgroup_dir("memory", "batch/hung")
                .join("cgroup.procs"),
        )
        .is_ok_and(|p| p.split_whitespace().count() >= 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    let record = agent.data_dir.join("tasks/hung/supervisor.json");
    assert!(
        !record.exists(),
        "the hook did not hold the supervisor's record"
    );
    let hung = supervisor_pids(&agent.data_dir);
    assert!(!hung.is_empty());
    assert_eq!(agent.status("hung").state, TaskState::Staging);
    agent.stop_agent(libc::SIGKILL);
    let _ = submit.join();
    set_hooks(&hooks, limit);
    agent.spawn();
    let st = agent.wait_state("hung", TaskState::Running, Duration::from_secs(60));
    assert_eq!(st.restarts, 0, "{st:?}");
    let now = supervisor_pids(&agent.data_dir);
    assert!(
        hung.iter().all(|p| !now.contains(p)),
        "the hung supervisor lives on: {hung:?} in {now:?}"
    );
    // One run: the cgroup holds the new run's init and command only.
    let procs = agent.read_cgroup("memory", "batch/hung", "cgroup.procs");
    assert!(procs.split_whitespace().count() <= 2, "{procs:?}");
    agent.kill("hung");
}

/// Review of issue 20 (retention x exit before removal): a finished task
/// whose supervisor still holds its lock (it reports the exit, then
/// removes the cgroup: held here by a hook) is not removed by retention.
/// Removing its dir took the lock file with it: the id, free again, could
/// be submitted anew, and the new run's supervisor took a new lock instead
/// of waiting for the old one, whose removal of `<role>/<id>` raced it.
#[test]
fn retention_keeps_a_task_whose_supervisor_still_removes_its_cgroup() {
    if !require_root("retention_keeps_a_task_whose_supervisor_still_removes_its_cgroup") {
        return;
    }
    // Swept every 0.9 s; no finished task is kept past its supervisor.
    let (agent, _hooks) = agent_with_hooks_cfg(
        "finished_max = 0\nfinished_retention_h = 0.001",
        "delay cgroup_remove 8000\n",
    );
    let res = json!({"cpus": 0.05, "mem_mb": 16});
    let task = json!({"id": "slow", "argv": ["true"], "resources": res});
    agent.submit(task.clone()).unwrap();
    agent.wait_final("slow", LONG);
    let dir = agent.data_dir.join("tasks").join("slow");
    std::thread::sleep(Duration::from_secs(3));
    assert!(dir.exists(), "removed while its supervisor still runs");
    assert!(
        agent.submit(task).is_err(),
        "the id was free again while its old supervisor still ran"
    );
    wait_until(LONG, "removed once its supervisor is done", || {
        !dir.exists()
    });
}

/// Review of 1f813df: a task stopped while its launch waits for a start
/// slot (every slot held by other launches) ends KILLED and its command
/// never starts. `start_slot` holds each slot for a while once taken.
#[test]
fn a_task_stopped_while_waiting_for_a_start_slot_never_starts() {
    if !require_root("a_task_stopped_while_waiting_for_a_start_slot_never_starts") {
        return;
    }
    let (agent, _hooks) = agent_with_hooks("delay start_slot 3000\n");
    // The agent's bound: 4 starting supervisors per CPU.
    let slots = 4 * std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for i in 0..slots {
            let agent = &agent;
            s.spawn(move || agent.submit(long_task(&format!("holder-{i}"))).unwrap());
        }
        std::thread::sleep(Duration::from_millis(800));
        let victim = s.spawn(|| agent.submit(long_task("victim")));
        wait_until(LONG, "the victim waits for a slot", || {
            agent
                .client
                .get::<TaskStatus>("/v1/tasks/victim")
                .is_ok_and(|st| st.state == TaskState::Staging)
        });
        std::thread::sleep(Duration::from_millis(300));
        let st = agent.kill("victim");
        assert_eq!(st.state, TaskState::Killed, "{st:?}");
        assert!(st.pid.is_none() && st.started_at.is_none(), "{st:?}");
        let _ = victim.join();
    });
    for i in 0..slots {
        agent.kill(&format!("holder-{i}"));
    }
}

/// Issue 16 (review): a submission whose record cannot be written is
/// undone whole: its task is gone from the map and from the index the
/// scheduling passes walk, so no pass counts (or admits, or preempts) it.
#[test]
fn an_unwritten_submission_leaves_nothing_for_the_passes() {
    if !require_root("an_unwritten_submission_leaves_nothing_for_the_passes") {
        return;
    }
    let (agent, hooks) = agent_with_hooks("fail record_write\n");
    let err = agent.submit(long_task("ghost")).unwrap_err();
    assert!(!err.to_string().is_empty());
    assert!(agent.client.get::<TaskStatus>("/v1/tasks/ghost").is_err());
    set_hooks(&hooks, "");
    let st = agent.submit(long_task("real")).unwrap();
    agent.wait_state(&st.id, TaskState::Running, LONG);
    let walked: f64 = agent.metric("gleaner_sched_pass_tasks ");
    assert_eq!(walked, 1.0, "the pass walked the abandoned task too");
    agent.kill("real");
}
