//! Issue 2: tasks run isolated in a chroot rootfs with real cgroup limits.
//! Root only: real cgroups, namespaces, processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::{Reason, TaskState};
use serde_json::json;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn limits_files_hold_the_requested_numbers() {
    if !require_root("limits_files_hold_the_requested_numbers") {
        return;
    }
    let agent = TestAgent::start();
    let cfs = agent
        .submit(json!({"id": "cfs", "cmd": "sleep 30", "resources": {"cpus": 0.5, "mem_mb": 48}}))
        .unwrap();
    assert_eq!(cfs.state, TaskState::Running);
    assert_eq!(
        cfs.cgroup.as_deref(),
        Some(format!("{}/batch/cfs", agent.cgroup_root).as_str())
    );
    assert_eq!(
        agent.read_cgroup("cpu", "batch/cfs", "cpu.cfs_quota_us"),
        "50000"
    );
    assert_eq!(
        agent.read_cgroup("memory", "batch/cfs", "memory.limit_in_bytes"),
        (48u64 << 20).to_string()
    );
    assert_eq!(agent.read_cgroup("pids", "batch/cfs", "pids.max"), "1024");
    // The whole of gleaner yields to the business services between samples.
    // cpu.idle (5.15+) makes the group SCHED_IDLE; the kernel then shows
    // its idle weight (3) as shares.
    if agent.cgroup_dir("cpu", "").join("cpu.idle").exists() {
        assert_eq!(agent.read_cgroup("cpu", "", "cpu.idle"), "1");
        assert_eq!(agent.read_cgroup("cpu", "", "cpu.shares"), "3");
    } else {
        assert_eq!(agent.read_cgroup("cpu", "", "cpu.shares"), "2");
    }
    let procs = agent.read_cgroup("memory", "batch/cfs", "cgroup.procs");
    // Where the v1 freezer is mounted, tasks are in it (signals freeze first).
    if std::path::Path::new("/sys/fs/cgroup/freezer").is_dir() {
        assert_eq!(
            agent.read_cgroup("freezer", "batch/cfs", "cgroup.procs"),
            procs.trim()
        );
    }
    assert!(
        procs.lines().any(|p| p.parse::<i32>().ok() == cfs.pid),
        "task pid {:?} not in {procs}",
        cfs.pid
    );

    let shares = agent
        .submit(json!({"id": "shares", "cmd": "sleep 30", "cpu_limit": "shares", "resources": {"cpus": 0.25, "mem_mb": 16}}))
        .unwrap();
    assert_eq!(shares.state, TaskState::Running);
    assert_eq!(
        agent.read_cgroup("cpu", "batch/shares", "cpu.shares"),
        "256"
    );
    assert_eq!(
        agent.read_cgroup("cpu", "batch/shares", "cpu.cfs_quota_us"),
        "-1"
    );

    for id in ["cfs", "shares"] {
        assert_eq!(agent.kill(id).state, TaskState::Killed);
    }
    // Removed by the supervisor right after it reported the exit.
    wait_until(LONG, "task cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

#[test]
fn task_sees_only_its_rootfs_and_runs_unprivileged() {
    if !require_root("task_sees_only_its_rootfs_and_runs_unprivileged") {
        return;
    }
    check_task_view(&TestAgent::start());
}

/// The RAM-root mode (issue 18): MS_MOVE + chroot instead of pivot_root,
/// forced here; the task's view is the same and the host's mounts stay
/// out of it.
#[test]
fn task_view_is_the_same_with_move_and_chroot() {
    if !require_root("task_view_is_the_same_with_move_and_chroot") {
        return;
    }
    let agent = TestAgent::start_with("disable_features = [\"pivot_root\"]");
    let state: serde_json::Value = agent.client.get("/v1/state").unwrap();
    assert_eq!(state["cgroup_features"]["root_switch"], "move_chroot");
    check_task_view(&agent);
    let st = agent
        .submit(
            json!({"id": "mounts", "cmd": "cat /proc/self/mountinfo; ls /proc/1/root/ 2>&1; true",
                       "resources": {"cpus": 0.5, "mem_mb": 32}}),
        )
        .unwrap();
    assert_eq!(agent.wait_final(&st.id, LONG).state, TaskState::Finished);
    let out = agent.logs("mounts", "stdout");
    assert!(
        !out.contains("/sys/fs/cgroup") && !out.contains(" /boot") && !out.contains("/work"),
        "host mounts visible in the task: {out}"
    );
    assert!(out.contains("sandbox"), "{out}");
}

fn check_task_view(agent: &TestAgent) {
    let cmd = "ls /; echo uid=$(id -u) gid=$(id -g); grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs)' /proc/self/status; \
               echo pid1=$(cat /proc/1/comm); echo oom=$(cat /proc/self/oom_score_adj); pwd; touch /bin/x 2>&1 || echo ro-ok; ls /dev | tr '\\n' ' '";
    let st = agent
        .submit(json!({"id": "look", "cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let out = agent.logs("look", "stdout");
    let listing: Vec<&str> = out.lines().take_while(|l| !l.starts_with("uid=")).collect();
    assert_eq!(
        listing,
        ["bin", "dev", "etc", "proc", "sandbox", "tmp"],
        "{out}"
    );
    assert!(out.contains("uid=65534 gid=65534"), "{out}");
    for cap in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(out.contains(cap), "missing {cap:?} in {out}");
    }
    assert!(out.contains("/sandbox\n"), "working dir: {out}");
    assert!(
        out.contains("oom=1000"),
        "batch tasks go first under host OOM: {out}"
    );
    assert!(out.contains("ro-ok"), "rootfs must be read-only: {out}");
    assert!(
        out.contains("null") && out.contains("urandom") && out.contains("tty"),
        "{out}"
    );
    assert!(
        !out.contains("sda") && !out.contains("vda"),
        "host devices leaked: {out}"
    );
}

#[test]
fn memory_hog_is_reported_as_memory_limit() {
    if !require_root("memory_hog_is_reported_as_memory_limit") {
        return;
    }
    let agent = TestAgent::start();
    let st = agent
        .submit(json!({"id": "hog", "cmd": "dd if=/dev/zero of=/dev/null bs=128M count=4", "resources": {"cpus": 1, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(
        (done.state, done.reason),
        (TaskState::Failed, Some(Reason::MemoryLimit)),
        "{done:?}"
    );
    wait_until(LONG, "task cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

#[test]
fn fork_bomb_stays_within_the_pids_limit() {
    if !require_root("fork_bomb_stays_within_the_pids_limit") {
        return;
    }
    let agent = TestAgent::start_with("pids_limit = 40");
    start_fork_bomb(&agent, "bomb", None);
    let current: u32 = agent
        .read_cgroup("pids", "batch/bomb", "pids.current")
        .parse()
        .unwrap();
    assert!(current <= 40, "pids.current = {current}");
    assert!(
        current >= 30,
        "the bomb should have filled its limit, pids.current = {current}"
    );
    assert_eq!(agent.kill("bomb").state, TaskState::Killed);
    wait_until(LONG, "task cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

/// Forks sleepers until fork fails, then keeps the task alive without forking.
fn start_fork_bomb(agent: &TestAgent, id: &str, user: Option<&str>) {
    let bomb = "(i=0; while [ $i -lt 300 ]; do sleep 60 & i=$((i+1)); done) 2>/sandbox/err; echo forked; exec sleep 60";
    let mut spec = json!({"id": id, "cmd": bomb, "resources": {"cpus": 0.5, "mem_mb": 64}});
    if let Some(u) = user {
        spec["user"] = json!(u);
    }
    assert_eq!(agent.submit(spec).unwrap().state, TaskState::Running);
    agent.wait_output(id, "forked");
    let err =
        std::fs::read_to_string(agent.data_dir.join(format!("tasks/{id}/sandbox/err"))).unwrap();
    assert!(
        err.contains("fork"),
        "the bomb should have hit its limit: {err}"
    );
}

#[test]
fn kill_sends_sigterm_then_sigkill_after_grace() {
    if !require_root("kill_sends_sigterm_then_sigkill_after_grace") {
        return;
    }
    let agent = TestAgent::start();
    let polite = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done";
    agent
        .submit(json!({"id": "polite", "cmd": polite, "resources": {"cpus": 0.2, "mem_mb": 16}}))
        .unwrap();
    let stubborn = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
    agent
        .submit(json!({"id": "stubborn", "cmd": stubborn, "kill_grace_s": 1.0, "resources": {"cpus": 0.2, "mem_mb": 16}}))
        .unwrap();
    for id in ["polite", "stubborn"] {
        agent.wait_output(id, "ready");
    }

    let start = Instant::now();
    agent
        .client
        .delete::<serde_json::Value>("/v1/tasks/polite")
        .unwrap();
    let polite = agent.wait_final("polite", LONG);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "polite took {:?}",
        start.elapsed()
    );
    assert_eq!(
        (polite.state, polite.reason, polite.exit_code),
        (TaskState::Killed, Some(Reason::Killed), Some(3))
    );
    assert!(agent.logs("polite", "stdout").contains("got-term"));

    let start = Instant::now();
    agent
        .client
        .delete::<serde_json::Value>("/v1/tasks/stubborn")
        .unwrap();
    let stubborn = agent.wait_final("stubborn", LONG);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "stubborn took {took:?}"
    );
    assert_eq!(
        (stubborn.state, stubborn.signal),
        (TaskState::Killed, Some(9))
    );

    // Killing again is harmless and says the same.
    let again: gleaner_agent::status::TaskStatus =
        agent.client.delete("/v1/tasks/stubborn").unwrap();
    assert_eq!(again.state, TaskState::Killed);
}

#[test]
fn restart_policy_restarts_with_backoff() {
    if !require_root("restart_policy_restarts_with_backoff") {
        return;
    }
    let agent = TestAgent::start();
    let start = Instant::now();
    let st = agent
        .submit(
            json!({"id": "flaky", "cmd": "cut -d' ' -f1 /proc/uptime >> /sandbox/runs; exit 4",
                       "restart": {"policy": "on-failure", "max_retries": 2},
                       "resources": {"cpus": 0.2, "mem_mb": 16}}),
        )
        .unwrap();
    let done = agent.wait_for(&st.id, LONG, |s| s.state.is_final());
    let took = start.elapsed();
    assert_eq!(
        (done.state, done.reason, done.exit_code, done.restarts),
        (TaskState::Failed, Some(Reason::ExitNonzero), Some(4), 2)
    );
    let runs = std::fs::read_to_string(agent.data_dir.join("tasks/flaky/sandbox/runs")).unwrap();
    let times: Vec<f64> = runs.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(times.len(), 3, "{runs}");
    // Marathon's backoff: 1 s, then 1.15 s.
    assert!(times[1] - times[0] >= 0.95, "{times:?}");
    assert!(times[2] - times[1] >= 1.10, "{times:?}");
    assert!(took >= Duration::from_millis(2100), "{took:?}");

    // `always` restarts after success too; a kill during backoff ends it.
    agent
        .submit(json!({"id": "loop", "cmd": "true", "restart": {"policy": "always"}, "resources": {"cpus": 0.2, "mem_mb": 16}}))
        .unwrap();
    agent.wait_for("loop", LONG, |s| s.restarts >= 1);
    agent
        .client
        .delete::<serde_json::Value>("/v1/tasks/loop")
        .unwrap();
    let killed = agent.wait_final("loop", LONG);
    assert_eq!(killed.state, TaskState::Killed);
    let restarts = killed.restarts;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        agent.status("loop").restarts,
        restarts,
        "a killed task must not restart"
    );
}

#[test]
fn fallbacks_for_old_kernels_work_when_forced() {
    if !require_root("fallbacks_for_old_kernels_work_when_forced") {
        return;
    }
    // What CentOS 7 lacks: no pids cgroup, no oom_kill counter, no openat2,
    // no mount_setattr; and the MS_MOVE + chroot root of a RAM-root host.
    let agent = TestAgent::start_with(
        "pids_limit = 30\ndisable_features = [\"pids_cgroup\", \"oom_kill_counter\", \"pivot_root\", \"cpu_idle\", \"openat2\", \"mount_setattr\", \"freezer\", \"cgroup_kill\"]",
    );
    let state: serde_json::Value = agent.client.get("/v1/state").unwrap();
    assert_eq!(
        state["cgroup_features"],
        json!({"pids": false, "oom_kill_counter": false, "cpu_idle": false,
               "freezer": false, "cgroup_kill": false,
               "root_switch": "move_chroot", "openat2": false, "mount_setattr": false})
    );

    // RLIMIT_NPROC counts per user across the host: every task here has a
    // uid of its own, away from other tests' `nobody` processes.
    let hog = agent
        .submit(json!({"cmd": "dd if=/dev/zero of=/dev/null bs=128M count=4", "user": "4241", "resources": {"cpus": 1, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&hog.id, LONG);
    assert_eq!(
        (done.state, done.reason),
        (TaskState::Failed, Some(Reason::MemoryLimit)),
        "{done:?}"
    );

    start_fork_bomb(&agent, "bomb", Some("4242"));
    let procs = agent
        .read_cgroup("memory", "batch/bomb", "cgroup.procs")
        .lines()
        .count();
    assert!(procs <= 31, "processes in the task: {procs}");
    assert_eq!(agent.kill("bomb").state, TaskState::Killed);

    let look = agent
        .submit(json!({"cmd": "ls /", "user": "4243", "resources": {"cpus": 0.5, "mem_mb": 16}}))
        .unwrap();
    assert_eq!(agent.wait_final(&look.id, LONG).state, TaskState::Finished);
    assert_eq!(
        agent.logs(&look.id, "stdout"),
        "bin\ndev\netc\nproc\nsandbox\ntmp\n"
    );
}
