//! Issue 14: health checks run by the agent next to the task (HTTP, TCP,
//! COMMAND), their results in the status, the grace period, timeouts, and
//! the kill with reason `health_check_failed`. Real agent, real tasks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::{TaskState, TaskStatus};
use gleaner_core::health::HealthState;
use gleaner_core::status::Reason;
use serde_json::{json, Value};

fn health_state(s: &TaskStatus) -> Option<HealthState> {
    s.health.as_ref().map(|h| h.state)
}

/// busybox httpd serving `/sandbox/www` on `$PORT0`, with `/sandbox/www/ok`.
fn httpd_spec(checks: Value) -> Value {
    let mut s = spec(
        "mkdir -p /sandbox/www && echo hi > /sandbox/www/ok && exec httpd -f -p $PORT0 -h /sandbox/www",
    );
    s["ports"] = json!([0]);
    s["health_checks"] = checks;
    s["kill_grace_s"] = json!(1);
    s
}

#[test]
fn http_check_healthy_then_killed_after_consecutive_failures() {
    if !require_root("http_check_healthy_then_killed_after_consecutive_failures") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [29100, 29110]\n");
    let st = agent
        .submit(httpd_spec(json!([{
            "protocol": "HTTP", "path": "/ok", "grace_period_s": 60,
            "interval_s": 2, "timeout_s": 2, "max_consecutive_failures": 3
        }])))
        .unwrap();
    // Tasks are SCHED_IDLE: on a loaded machine httpd answers slowly.
    let healthy = agent.wait_for(&st.id, Duration::from_secs(90), |s| {
        health_state(s) == Some(HealthState::Healthy)
    });
    let c = &healthy.health.as_ref().unwrap().checks[0];
    assert_eq!(c.consecutive_failures, 0);
    assert!(c.first_success.is_some() && c.last_success.is_some());
    assert_eq!(healthy.state, TaskState::Running);

    // The page goes away: 404s, counted, then the kill.
    let sandbox = healthy.sandbox.clone().unwrap();
    std::fs::remove_file(format!("{sandbox}/www/ok")).unwrap();
    let unhealthy = agent.wait_for(&st.id, Duration::from_secs(60), |s| {
        health_state(s) == Some(HealthState::Unhealthy) || s.state.is_final()
    });
    if !unhealthy.state.is_final() {
        let c = &unhealthy.health.as_ref().unwrap().checks[0];
        assert!(c.consecutive_failures >= 1);
        assert_eq!(c.last_message.as_deref(), Some("HTTP status 404"));
    }
    let end = agent.wait_final(&st.id, Duration::from_secs(60));
    assert_eq!(end.state, TaskState::Failed, "{end:?}");
    assert_eq!(end.reason, Some(Reason::HealthCheckFailed), "{end:?}");
    let c = &end.health.as_ref().unwrap().checks[0];
    assert_eq!(c.consecutive_failures, 3, "{end:?}");
    assert_eq!(c.last_message.as_deref(), Some("HTTP status 404"));
    let v: Value = agent.client.get(&format!("/v1/tasks/{}", st.id)).unwrap();
    assert_eq!(v["reason"], "health_check_failed");
    assert_eq!(v["health"]["state"], "unhealthy");
    assert!(agent.leftover_task_cgroups().is_empty());
}

#[test]
fn tcp_checks_per_port_and_the_overall_state() {
    if !require_root("tcp_checks_per_port_and_the_overall_state") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [29120, 29130]\n");
    let mut s = httpd_spec(json!([
        {"protocol": "TCP", "port_index": 0, "grace_period_s": 60, "interval_s": 0.3, "timeout_s": 0.3},
        // Nothing listens on the second port; 0 failures never kill.
        {"protocol": "TCP", "port_index": 1, "grace_period_s": 0, "interval_s": 0.3, "timeout_s": 0.3,
         "max_consecutive_failures": 0}
    ]));
    s["ports"] = json!([0, 0]);
    let st = agent.submit(s).unwrap();
    let s = agent.wait_for(&st.id, Duration::from_secs(20), |s| {
        s.health.as_ref().is_some_and(|h| {
            h.checks[0].state == HealthState::Healthy && h.checks[1].consecutive_failures >= 3
        })
    });
    let h = s.health.unwrap();
    assert_eq!(h.state, HealthState::Unhealthy);
    assert_eq!(h.checks[1].state, HealthState::Unhealthy);
    let msg = h.checks[1].last_message.clone().unwrap();
    assert!(msg.contains(&format!("port {}", st.ports[1])), "{msg}");
    assert_eq!(s.state, TaskState::Running, "max 0 never kills");
    agent.kill(&st.id);
    let end = agent.wait_final(&st.id, Duration::from_secs(20));
    assert_eq!(end.reason, Some(Reason::Killed));
}

#[test]
fn failures_in_the_grace_period_are_not_counted() {
    if !require_root("failures_in_the_grace_period_are_not_counted") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [29140, 29150]\n");
    let mut s = spec("sleep 100");
    s["ports"] = json!([0]);
    s["kill_grace_s"] = json!(1);
    s["health_checks"] = json!([{
        "protocol": "TCP", "grace_period_s": 3, "interval_s": 0.25, "timeout_s": 0.25,
        "max_consecutive_failures": 1
    }]);
    let st = agent.submit(s).unwrap();
    let run = agent.wait_state(&st.id, TaskState::Running, Duration::from_secs(20));
    let started = run.started_at.unwrap();
    // Inside the grace period: refused every time, still unknown, alive.
    std::thread::sleep(Duration::from_millis(1500));
    let mid = agent.status(&st.id);
    assert_eq!(mid.state, TaskState::Running, "{mid:?}");
    let c = &mid.health.as_ref().unwrap().checks[0];
    assert_eq!(c.state, HealthState::Unknown);
    assert_eq!(c.consecutive_failures, 0);
    assert!(
        c.last_message.as_deref().unwrap_or("").contains("connect"),
        "{c:?}"
    );
    let end = agent.wait_final(&st.id, Duration::from_secs(20));
    assert_eq!(end.reason, Some(Reason::HealthCheckFailed), "{end:?}");
    let failed_at = end.health.as_ref().unwrap().checks[0].last_failure.unwrap();
    let after = (failed_at - started).num_milliseconds();
    assert!(
        after >= 3000,
        "counted {after} ms after the start, inside the grace"
    );
    assert!(after < 6000, "killed only {after} ms after the start");
}

#[test]
fn a_hanging_check_times_out_and_never_blocks_the_agent() {
    if !require_root("a_hanging_check_times_out_and_never_blocks_the_agent") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [29160, 29170]\n");
    // An HTTP server that accepts and never answers, and a command that
    // never ends.
    let mut s = spec("exec nc -ll -p $PORT0 -e sleep 1000");
    s["ports"] = json!([0]);
    s["kill_grace_s"] = json!(1);
    s["health_checks"] = json!([
        {"protocol": "HTTP", "grace_period_s": 0, "interval_s": 0.5, "timeout_s": 0.4,
         "max_consecutive_failures": 0},
        {"protocol": "COMMAND", "command": "sleep 1000", "grace_period_s": 0,
         "interval_s": 1, "timeout_s": 0.4, "max_consecutive_failures": 3}
    ]);
    let st = agent.submit(s).unwrap();
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    loop {
        let q = Instant::now();
        let s = agent.status(&st.id);
        worst = worst.max(q.elapsed());
        if s.state.is_final() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        worst < Duration::from_secs(1),
        "a status read took {worst:?}"
    );
    let end = agent.status(&st.id);
    assert_eq!(end.reason, Some(Reason::HealthCheckFailed), "{end:?}");
    let h = end.health.unwrap();
    // The server accepts and never answers (or drops the connection).
    assert!(h.checks[0].consecutive_failures >= 1, "{h:?}");
    // A command past its timeout may still be being killed when the next
    // is due: that one is skipped, not counted (nor its message kept).
    assert_eq!(
        h.checks[1].last_message.as_deref(),
        Some("no answer within 0.4s"),
        "{h:?}"
    );
    assert_eq!(h.checks[1].consecutive_failures, 3);
    // The exec's cgroups went with the checks; nothing of the task is left.
    wait_until(Duration::from_secs(60), "task cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

#[test]
fn a_command_check_runs_inside_the_task() {
    if !require_root("a_command_check_runs_inside_the_task") {
        return;
    }
    let agent = TestAgent::start();
    // Only the task's rootfs has this file; only its sandbox gets `ready`,
    // 3 s after the start; the check runs as the task's user.
    std::fs::write(agent.rootfs.join("etc/health-marker"), "x").unwrap();
    let mut s = spec("sleep 3; touch /sandbox/ready; sleep 100");
    s["user"] = json!("nobody");
    s["kill_grace_s"] = json!(1);
    s["health_checks"] = json!([{
        "protocol": "COMMAND",
        "command": "test -f /etc/health-marker && test -f /sandbox/ready && [ \"$(id -u)\" = 65534 ] && pidof sleep",
        "grace_period_s": 120, "interval_s": 5, "timeout_s": 5
    }]);
    let st = agent.submit(s).unwrap();
    // The helper that enters the task is SCHED_IDLE there too: slow under load.
    let ok = agent.wait_for(&st.id, Duration::from_secs(120), |s| {
        health_state(s) == Some(HealthState::Healthy)
    });
    let c = &ok.health.as_ref().unwrap().checks[0];
    // The first probes failed (no `ready` yet): the grace period hid them.
    assert_eq!(c.consecutive_failures, 0);
    assert!(c.last_message.is_some(), "{c:?}");
    assert!(!std::path::Path::new("/sandbox/ready").exists());
    agent.kill(&st.id);
    agent.wait_final(&st.id, Duration::from_secs(20));
}

#[test]
fn bad_check_specs_are_refused_with_400() {
    if !require_root("bad_check_specs_are_refused_with_400") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [29180, 29190]\n");
    for (ports, network, check, want) in [
        (
            json!([]),
            "host",
            json!({"protocol": "HTTP"}),
            "port_index 0 but the task has 0 port(s)",
        ),
        (
            json!([0]),
            "none",
            json!({"protocol": "TCP"}),
            "need network \"host\"",
        ),
        (
            json!([]),
            "host",
            json!({"protocol": "COMMAND"}),
            "COMMAND needs a non-empty command",
        ),
        (
            json!([]),
            "host",
            json!({"protocol": "UDP"}),
            "unknown variant",
        ),
        (
            json!([0]),
            "host",
            json!({"protocol": "HTTP", "interval_s": 1, "timeout_s": 2}),
            "exceed",
        ),
        (
            json!([0]),
            "host",
            json!({"protocol": "HTTP", "path": "no-slash"}),
            "path must",
        ),
    ] {
        let mut s = spec("sleep 100");
        s["id"] = json!("bad-check");
        s["ports"] = ports;
        s["network"] = json!(network);
        s["health_checks"] = json!([check]);
        match agent.submit(s) {
            Err(ClientError::Api { status, message }) => {
                assert_eq!(status, 400, "{message}");
                assert!(message.contains(want), "{check}: {message}");
            }
            other => panic!("{check} accepted: {other:?}"),
        }
        assert!(!agent.data_dir.join("tasks/bad-check").exists());
    }
    // Review (issue 14): a fixed port could name any loopback port, the
    // agent's own API or another task's port among them.
    let api_port: u16 = agent.base.rsplit(':').next().unwrap().parse().unwrap();
    for (ports, port, want) in [
        (json!([]), api_port, "the agent's own API"),
        (json!([]), 29185, "port_range"),
        (json!([0]), 22, "not one of the task's ports"),
    ] {
        let mut s = spec("sleep 100");
        s["id"] = json!("bad-port");
        s["ports"] = ports;
        s["health_checks"] = json!([{"protocol": "TCP", "port": port}]);
        match agent.submit(s) {
            Err(ClientError::Api { status, message }) => {
                assert_eq!(status, 400, "{message}");
                assert!(message.contains(want), "{port}: {message}");
            }
            other => panic!("port {port} accepted: {other:?}"),
        }
        assert!(!agent.data_dir.join("tasks/bad-port").exists());
    }
}

/// Review (issue 14): a COMMAND check ended on its output's EOF, so a
/// command that left a background child holding stdout "hung" until its
/// timeout, every time: a healthy task was killed. It ends on the
/// command's exit; the child goes with the exec's cgroup.
#[test]
fn a_command_check_that_leaves_a_background_child_passes_on_its_exit() {
    if !require_root("a_command_check_that_leaves_a_background_child_passes_on_its_exit") {
        return;
    }
    let agent = TestAgent::start();
    let mut s = spec("exec sleep 1000");
    s["kill_grace_s"] = json!(1);
    s["health_checks"] = json!([{
        "protocol": "COMMAND", "command": "sleep 1000 & echo started",
        "grace_period_s": 0, "interval_s": 5, "timeout_s": 4, "max_consecutive_failures": 3
    }]);
    let st = agent.submit(s).unwrap();
    let seen = agent.wait_for(&st.id, Duration::from_secs(90), |s| {
        health_state(s) == Some(HealthState::Healthy) || s.state.is_final()
    });
    assert_eq!(seen.state, TaskState::Running, "{seen:?}");
    let c = &seen.health.as_ref().unwrap().checks[0];
    assert_eq!(c.consecutive_failures, 0, "{c:?}");
    // The next probes pass too, and no `sleep 1000` of a probe is left
    // besides the task's own.
    let later = agent.wait_for(&st.id, Duration::from_secs(60), |s| {
        s.health.as_ref().and_then(|h| h.checks[0].last_success) > c.last_success
    });
    assert_eq!(later.state, TaskState::Running, "{later:?}");
    let cg = agent.cgroup_dir("memory", &format!("batch/{}", st.id));
    wait_until(Duration::from_secs(20), "the probes' children gone", || {
        let mut pids = 0;
        for e in walk(&cg) {
            if e.ends_with("cgroup.procs") {
                pids += std::fs::read_to_string(&e)
                    .unwrap_or_default()
                    .lines()
                    .count();
            }
        }
        pids <= 2
    });
    agent.kill(&st.id);
    wait_until(Duration::from_secs(60), "task cgroups removed", || {
        agent.leftover_task_cgroups().is_empty()
    });
}

/// Every path below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
