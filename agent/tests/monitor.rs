//! Issue 6: the monitor moves the reservation with the business's use.
//! Root only; real processes: batch tasks that want all CPUs, and "business"
//! CPU hogs and memory outside gleaner's cgroups.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

fn monitor_bin() -> PathBuf {
    workspace_bin("gleaner-monitor")
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn reserved(agent: &TestAgent) -> (f64, f64) {
    let v: Value = agent.client.get("/v1/reservations").unwrap();
    (
        v["batch"]["reserved"]["cpus"].as_f64().unwrap(),
        v["batch"]["reserved"]["mem_mb"].as_f64().unwrap(),
    )
}

fn wait_reserved(agent: &TestAgent, what: &str, pred: impl Fn(f64, f64) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let (c, m) = reserved(agent);
        if pred(c, m) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "reservation never {what}: {c} cpus, {m} MB\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_reservation_follows_the_business_both_ways() {
    if !require_root("the_reservation_follows_the_business_both_ways") {
        return;
    }
    let agent = TestAgent::start();
    let policy = "[policy]\ncpu_margin = 0.1\nmem_margin = 0.9\ngrow_delay_s = 2.0\ngrow_step = { cpus = 2.0, mem_mb = 4096.0 }\n\
                  min = { cpus = 0.1, mem_mb = 64.0 }\ndeadband = { cpus = 0.05, mem_mb = 32.0 }\n";
    let cfg = agent.tmp().join("monitor.toml");
    std::fs::write(&cfg, format!("agent = {:?}\nagent_socket = {:?}\ncgroup_root = {:?}\nlisten = \"127.0.0.1:{}\"\ninterval_s = 0.2\n{policy}", agent.base, agent.socket().display().to_string(), agent.cgroup_root, free_port())).unwrap();
    let mut procs = Reaper(Vec::new());
    let log = std::fs::File::create(agent.tmp().join("monitor.log")).unwrap();
    procs.0.push(
        Command::new(monitor_bin())
            .arg("--config")
            .arg(&cfg)
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Batch work that wants all CPUs, back in the queue when preempted.
    wait_reserved(&agent, "set by the monitor", |c, _| c < 2.0);
    for i in 0..3 {
        agent
            .submit(json!({"id": format!("burn{i}"), "cmd": "while :; do :; done", "restart": {"policy": "always"},
                           "kill_grace_s": 1, "resources": {"cpus": 0.5, "mem_mb": 16}}))
            .unwrap();
    }
    // With the business idle, the reservation leaves room for the batch.
    wait_reserved(&agent, "room for the batch", |c, _| c >= 1.5);
    for i in 0..3 {
        agent.wait_state(
            &format!("burn{i}"),
            TaskState::Running,
            Duration::from_secs(30),
        );
    }

    // The business wakes up: two CPU hogs outside gleaner.
    for _ in 0..2 {
        procs.0.push(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let shrink = wait_reserved(&agent, "shrunk", |c, _| c <= 0.5);
    eprintln!("CPU: reservation shrunk {shrink:?} after the business hogs started");
    // Dying victims run throttled and at idle weight against the hogs:
    // their exit takes a moment.
    let start = Instant::now();
    let preempted = wait_until(Duration::from_secs(20), "batch tasks preempted", || {
        let tasks: Vec<Value> = agent.client.get("/v1/tasks").unwrap();
        tasks.iter().filter(|t| t["state"] == "RUNNING").count() == 0
    });
    eprintln!(
        "CPU: all batch tasks preempted {:?} after the shrink",
        preempted.max(start.elapsed())
    );

    // The business goes quiet: it grows back after the delay.
    for mut c in procs.0.drain(1..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let grow = wait_reserved(&agent, "grown back", |c, _| c >= 1.5);
    eprintln!("CPU: reservation back {grow:?} after the hogs stopped");
    assert!(
        grow >= Duration::from_millis(1500),
        "grew before the grow delay: {grow:?}"
    );
    for i in 0..3 {
        agent.wait_state(
            &format!("burn{i}"),
            TaskState::Running,
            Duration::from_secs(30),
        );
    }

    // Memory: batch holds memory, then the business needs it.
    for i in 0..3 {
        agent.kill(&format!("burn{i}"));
    }
    let (_, mem_before) = reserved(&agent);
    let hold = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo held; sleep 600; echo ${#x}";
    agent
        .submit(json!({"id": "holder", "cmd": hold, "resources": {"cpus": 0.1, "mem_mb": 400}}))
        .unwrap();
    agent.wait_output("holder", "held");
    let business: Vec<u8> = vec![1u8; (mem_before as usize + 256) << 20];
    let start = Instant::now();
    let done = agent.wait_final("holder", Duration::from_secs(30));
    eprintln!(
        "memory: batch holder {:?} {:?} after the business took {} MB",
        done.state,
        start.elapsed(),
        business.len() >> 20
    );
    assert_eq!(done.state, TaskState::Preempted);
    let (_, mem_after) = reserved(&agent);
    assert!(mem_after < mem_before, "{mem_after} >= {mem_before}");
    drop(business);

    let log = std::fs::read_to_string(agent.tmp().join("monitor.log")).unwrap();
    assert!(log.contains("reservation moved"), "{log}");
}

fn reserved_disk(agent: &TestAgent) -> f64 {
    let v: Value = agent.client.get("/v1/reservations").unwrap();
    v["batch"]["reserved"]["disk_mb"].as_f64().unwrap_or(0.0)
}

fn set_reservation(agent: &TestAgent, cpus: f64, mem_mb: f64, disk_mb: f64) {
    let _: Value = agent
        .client
        .put(
            "/v1/reservations/batch",
            &json!({"cpus": cpus, "mem_mb": mem_mb, "disk_mb": disk_mb}),
        )
        .unwrap();
}

/// Issue 21: the monitor used to send cpus and memory only (the agent read
/// disk_mb as 0: no disk limit), read the reservation only at start (an
/// operator's change was never seen), and read a missing cgroup as 0
/// batch use. Its policy here is pinned at 0.5 cpus / 300 MB, and grows
/// only after an hour.
#[test]
fn the_monitor_keeps_disk_mb_follows_an_operators_change_and_skips_bad_samples() {
    if !require_root("the_monitor_keeps_disk_mb_follows_an_operators_change_and_skips_bad_samples")
    {
        return;
    }
    let agent = TestAgent::start();
    set_reservation(&agent, 1.5, 900.0, 1000.0);
    let policy = "[policy]\nmin = { cpus = 0.5, mem_mb = 300.0 }\nmax = { cpus = 0.5, mem_mb = 300.0 }\n\
                  grow_delay_s = 3600.0\ncpu_grow_delay_s = 3600.0\ndeadband = { cpus = 0.01, mem_mb = 1.0 }\n";
    let start_monitor = |name: &str, cgroup_root: &str| {
        let cfg = agent.tmp().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "agent = {:?}\nagent_socket = {:?}\ncgroup_root = {cgroup_root:?}\nlisten = \"127.0.0.1:{}\"\ninterval_s = 0.1\n{policy}",
                agent.base,
                agent.socket().display().to_string(),
                free_port()
            ),
        )
        .unwrap();
        let log = agent.tmp().join(format!("{name}.log"));
        let child = Command::new(monitor_bin())
            .arg("--config")
            .arg(&cfg)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (Reaper(vec![child]), log)
    };

    // A cgroup_root that is not the agent's: no sample, no change.
    let (wrong, log) = start_monitor("wrong-root", "gleaner-no-such-root");
    std::thread::sleep(Duration::from_millis(1500));
    drop(wrong);
    assert_eq!(reserved(&agent), (1.5, 900.0), "moved on failed samples");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("sample skipped") && text.contains("gleaner-no-such-root"),
        "{text}"
    );

    let (_monitor, log) = start_monitor("monitor", &agent.cgroup_root);
    wait_reserved(&agent, "shrunk by the monitor", |c, m| {
        c == 0.5 && m == 300.0
    });
    assert_eq!(reserved_disk(&agent), 1000.0, "disk_mb lost");

    // An operator raises it: the monitor sees it and shrinks at once,
    // keeping the operator's disk_mb.
    set_reservation(&agent, 1.2, 800.0, 2000.0);
    wait_reserved(&agent, "shrunk again", |c, m| c == 0.5 && m == 300.0);
    assert_eq!(reserved_disk(&agent), 2000.0);
    // An operator lowers it: kept (growing waits an hour).
    set_reservation(&agent, 0.2, 100.0, 3000.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reserved(&agent), (0.2, 100.0));
    assert_eq!(reserved_disk(&agent), 3000.0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("changed outside the monitor"), "{text}");
}
