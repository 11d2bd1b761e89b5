//! Sustained throughput of short tasks (issue 16.3): SUBMITTERS (4)
//! threads submit back to back for DURATION_S (30) seconds, `/bin/true`
//! then `sleep 0.1` (WORKLOADS=true,sleep), each on a fresh agent. Prints
//! tasks/s that reached FINISHED inside the window, submit->RUNNING (the
//! reply, sent after the task's own launch) and submit->FINISHED, and CPU
//! per launch of the agent, of the zygote and of the whole host. Root.
//! ROUNDS (1) repeats each workload; AGENT_BIN_B (a path to another
//! agent binary, e.g. an older build) alternates with this build, A, B,
//! A, B, and prints each arm's means and the A/B ratio with intervals.
//! Run: `bench/throughput` (= `cargo bench --bench throughput`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats.rs"]
mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use gleaner_agent::client::Client;
use gleaner_agent::status::{TaskState, TaskStatus};
use serde_json::json;
use stats::{fmt_interval, mean_interval};

fn main() {
    if !require_root("bench throughput") {
        return;
    }
    let secs = env_usize("DURATION_S", 30) as u64;
    let submitters = env_usize("SUBMITTERS", 4).max(1);
    let workloads = std::env::var("WORKLOADS").unwrap_or_else(|_| "true,sleep".into());
    for w in workloads.split(',') {
        let (label, argv) = match w.trim() {
            "true" => ("/bin/true", json!(["/bin/true"])),
            "sleep" => ("sleep 0.1", json!(["sleep", "0.1"])),
            other => {
                eprintln!("WORKLOADS: unknown {other:?} (true, sleep)");
                std::process::exit(2);
            }
        };
        // AGENT_BIN_B: another agent binary (an older build) takes every
        // other turn, for ROUNDS rounds (A, B, A, B ...).
        let bin_b = std::env::var("AGENT_BIN_B").ok();
        let rounds = env_usize("ROUNDS", 1).max(1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            println!("\n-- round {} of {rounds}", round + 1);
            a.push(run(
                &format!("{label} (A: this build)"),
                argv.clone(),
                secs,
                submitters,
            ));
            if let Some(bin) = &bin_b {
                std::env::set_var("GLEANER_TEST_AGENT_BIN", bin);
                b.push(run(
                    &format!("{label} (B: {bin})"),
                    argv.clone(),
                    secs,
                    submitters,
                ));
                std::env::remove_var("GLEANER_TEST_AGENT_BIN");
            }
        }
        if rounds > 1 || bin_b.is_some() {
            summarize(label, "A", &a);
            if !b.is_empty() {
                summarize(label, "B", &b);
                let ratio: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x.per_s / y.per_s).collect();
                println!(
                    "{label}: tasks/s A/B round by round {}",
                    fmt_interval(mean_interval(&ratio), 2)
                );
            }
        }
    }
}

/// What one run measured.
struct Run {
    per_s: f64,
    agent_ms: f64,
    host_ms: f64,
    reply_p50: f64,
    reply_p99: f64,
}

fn summarize(label: &str, arm: &str, runs: &[Run]) {
    let col = |f: fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    println!(
        "{label} {arm}, {} runs (mean, 95 % t interval): tasks/s {}, agent CPU/launch {} ms, host CPU/launch {} ms, reply p50 {} ms, p99 {} ms",
        runs.len(),
        fmt_interval(mean_interval(&col(|r| r.per_s)), 0),
        fmt_interval(mean_interval(&col(|r| r.agent_ms)), 2),
        fmt_interval(mean_interval(&col(|r| r.host_ms)), 2),
        fmt_interval(mean_interval(&col(|r| r.reply_p50)), 1),
        fmt_interval(mean_interval(&col(|r| r.reply_p99)), 1),
    );
}

/// One submitter's record of a submission: reply latency (ms) and task id.
type Sent = (f64, String);

fn run(label: &str, argv: serde_json::Value, secs: u64, submitters: usize) -> Run {
    // The product's log level (the harness logs at debug).
    let agent = TestAgent::start_with_env("liveness_interval_s = 5", &[("GLEANER_LOG", "info")]);
    // A tiny CPU share so that admission never queues: this measures the
    // launch path, not the reservation.
    let spec =
        json!({"argv": argv, "cpu_limit": "shares", "resources": {"cpus": 0.01, "mem_mb": 16}});
    for _ in 0..5 {
        agent.submit(spec.clone()).unwrap();
    }
    let agent_pid = agent.agent_pid();
    let zygote = zygote_pid(agent_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (cpu_a0, cpu_z0, host0) = (
        proc_cpu_s(agent_pid),
        zygote.map_or(0.0, proc_cpu_s),
        host_busy_s(),
    );
    let t0 = Instant::now();
    let wall0 = now_us();
    let threads: Vec<_> = (0..submitters)
        .map(|_| {
            let client = Client::new(&agent.base, Some(agent.token.clone()));
            let (stop, sent, errors, spec) =
                (stop.clone(), sent.clone(), errors.clone(), spec.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match client.post::<_, TaskStatus>("/v1/tasks", &spec) {
                        Ok(st) if matches!(st.state, TaskState::Running | TaskState::Finished) => {
                            mine.push((t.elapsed().as_secs_f64() * 1e3, st.id))
                        }
                        Ok(st) => errors.lock().unwrap().push(format!("reply {:?}", st.state)),
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
                sent.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let (cpu_a, cpu_z, host) = (
        proc_cpu_s(agent_pid) - cpu_a0,
        zygote.map_or(0.0, proc_cpu_s) - cpu_z0,
        host_busy_s() - host0,
    );
    for t in threads {
        t.join().unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let errors = errors.lock().unwrap().clone();
    let wall_end = wall0 + (window * 1e6) as i64;

    // Every submitted task must end; then read their times from the agent.
    let ids: std::collections::HashSet<&str> = sent.iter().map(|(_, id)| id.as_str()).collect();
    let mut tasks: Vec<TaskStatus> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        tasks = agent.client.get("/v1/tasks").unwrap();
        tasks.retain(|t| ids.contains(t.id.as_str()));
        if tasks.iter().all(|t| t.state.is_final()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let unfinished = tasks.iter().filter(|t| !t.state.is_final()).count();
    let failed = tasks
        .iter()
        .filter(|t| t.state.is_final() && t.state != TaskState::Finished)
        .count();
    let finished_in: Vec<i64> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Finished)
        .filter_map(|t| t.finished_at.map(|f| f.timestamp_micros()))
        .filter(|f| *f <= wall_end)
        .collect();
    // Tasks finished per second of the window: mean and interval.
    let mut per_s = vec![0f64; window.floor().max(1.0) as usize];
    for f in &finished_in {
        let s = ((f - wall0) as f64 / 1e6).floor();
        if s >= 0.0 && (s as usize) < per_s.len() {
            per_s[s as usize] += 1.0;
        }
    }
    let mut reply: Vec<f64> = sent.iter().map(|(ms, _)| *ms).collect();
    reply.sort_by(|a, b| a.total_cmp(b));
    let mut to_end: Vec<f64> = tasks
        .iter()
        .filter_map(|t| {
            let f = t.finished_at?.timestamp_micros();
            Some((f - t.submitted_at.timestamp_micros()) as f64 / 1e3)
        })
        .collect();
    to_end.sort_by(|a, b| a.total_cmp(b));
    let launches = sent.len().max(1) as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n== {label}: {submitters} submitters for {window:.1} s (load {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "submitted {} ({:.0}/s), FINISHED inside the window {} ({:.0}/s; per second {}), failed {failed}, unfinished after 120 s {unfinished}, submit errors {}",
        sent.len(),
        sent.len() as f64 / window,
        finished_in.len(),
        finished_in.len() as f64 / window,
        fmt_interval(mean_interval(&per_s), 0),
        errors.len()
    );
    if let Some(e) = errors.first() {
        println!("first submit error: {e}");
    }
    if !reply.is_empty() {
        println!(
            "submit->RUNNING (reply): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&reply, 0.5),
            percentile(&reply, 0.99),
            reply[reply.len() - 1]
        );
    }
    if !to_end.is_empty() {
        println!(
            "submit->FINISHED (agent's timestamps): p50 {:.2} ms, p99 {:.2} ms",
            percentile(&to_end, 0.5),
            percentile(&to_end, 0.99)
        );
    }
    if zygote.is_none() {
        println!("zygote not found among the agent's children: its CPU is not counted");
    }
    println!(
        "CPU per launch: agent {:.2} ms, zygote {:.2} ms, whole host {:.2} ms (every process: supervisors, tasks, the kernel, this bench, and anything else running)",
        cpu_a * 1e3 / launches,
        cpu_z * 1e3 / launches,
        host * 1e3 / launches
    );
    let pct = |p: f64| {
        if reply.is_empty() {
            f64::NAN
        } else {
            percentile(&reply, p)
        }
    };
    Run {
        per_s: finished_in.len() as f64 / window,
        agent_ms: cpu_a * 1e3 / launches,
        host_ms: host * 1e3 / launches,
        reply_p50: pct(0.5),
        reply_p99: pct(0.99),
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// user + system CPU seconds of a process.
fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Busy CPU seconds of the whole host (all but idle and iowait).
fn host_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The agent's zygote: its child process running the same binary.
fn zygote_pid(agent: u32) -> Option<u32> {
    let exe = std::fs::read_link(format!("/proc/{agent}/exe")).ok()?;
    for t in std::fs::read_dir(format!("/proc/{agent}/task"))
        .ok()?
        .flatten()
    {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if std::fs::read_link(format!("/proc/{c}/exe")).ok().as_ref() == Some(&exe) {
                return Some(c);
            }
        }
    }
    None
}
