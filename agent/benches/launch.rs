//! Launch latency, interleaved with runc (or with a second agent config);
//! then 1000 long tasks: total time, agent RSS, agent idle CPU. Needs root.
//! Run: `cargo bench --bench launch` (or `bench/launch`). Prints figures;
//! asserts nothing but that every reply is RUNNING or FINISHED.
//!
//! This VM drifts by +-20 % between runs, so A and B take turns: ROUNDS
//! rounds (default 20) of PER_ROUND launches each (default 10), A then B.
//! Each round's median is one sample; the figures are the median of the
//! round medians with a distribution-free 95 % interval (stats.rs), and
//! the same for B/A computed round by round (drift cancels within a round).
//!
//! `FOUR_WAY=1`: the price of the seccomp filter and of `network: none`
//! instead: two agents (filter on, filter off) and each of the four
//! (filter, network) arms PER_ROUND times a round, the arms taking turns
//! launch by launch (the first arm rotates each round); the per-round
//! differences of the arms' medians, with 95 % intervals.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats.rs"]
mod stats;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};
use stats::{fmt_interval, mean_interval, median_interval};

fn summary(name: &str, rounds: &[Vec<f64>]) -> Vec<f64> {
    let mut all: Vec<f64> = rounds.iter().flatten().copied().collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&all, 0.50), percentile(&all, 0.99));
    let medians: Vec<f64> = rounds.iter().map(|r| median(r)).collect();
    println!(
        "{name:<36} median of round medians {} ms; all n={}: p50 {p50:.2} p99 {p99:.2} ms",
        fmt_interval(median_interval(&medians), 2),
        all.len()
    );
    medians
}

fn median(xs: &[f64]) -> f64 {
    median_interval(xs).0
}

/// One side of the comparison: launches one `/bin/true`, returns ms.
enum Side {
    Agent(TestAgent, Value),
    Runc(Runc),
}

impl Side {
    fn launch(&mut self) -> f64 {
        match self {
            Side::Agent(agent, spec) => {
                let t = Instant::now();
                let st = agent.submit(spec.clone()).unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert!(
                    matches!(st.state, TaskState::Running | TaskState::Finished),
                    "{st:?}"
                );
                // One launch at a time: on a busy host the earlier `true`s
                // exit slowly in the SCHED_IDLE root, and four of them fill
                // the default reservation (0.5 cpu each); the next reply
                // would then rightly say QUEUED, timing the queue, not a
                // launch (run 1 of session 5 stopped on it at load 20).
                agent.wait_final(&st.id, Duration::from_secs(120));
                ms
            }
            Side::Runc(r) => r.run(),
        }
    }
}

fn main() {
    if !require_root("bench launch") {
        return;
    }
    let rounds: usize = env_usize("ROUNDS", 20).max(1);
    let per_round: usize = env_usize("PER_ROUND", 10).max(1);
    if std::env::var("FOUR_WAY").as_deref() == Ok("1") {
        four_way(rounds, per_round);
        return;
    }
    let long: usize = env_usize("LONG_TASKS", 1000);
    // AGENT_EXTRA: more agent config (e.g. `disable_features = ["seccomp"]`
    // to price the filter); AGENT_EXTRA_B: B is a second agent with this
    // config instead of runc (an A/B of a config switch); NETWORK=none:
    // tasks in their own network ns.
    let extra = std::env::var("AGENT_EXTRA").unwrap_or_default();
    let extra_b = std::env::var("AGENT_EXTRA_B").ok();
    let agent = TestAgent::start_with(&format!("liveness_interval_s = 5\n{extra}"));
    let network = std::env::var("NETWORK").unwrap_or_else(|_| "host".into());
    let spec = json!({"argv": ["/bin/true"], "network": network, "resources": {"cpus": 0.5, "mem_mb": 64}});
    let mut a = Side::Agent(agent, spec.clone());
    // AGENT_BIN_B: B is another agent binary (an older build) with this
    // build's config: a before/after of a code change in one run.
    let bin_b = std::env::var("AGENT_BIN_B").ok();
    let (mut b, b_name) = match (&extra_b, &bin_b) {
        (None, Some(bin)) => {
            std::env::set_var("GLEANER_TEST_AGENT_BIN", bin);
            let b = TestAgent::start_with(&format!("liveness_interval_s = 5\n{extra}"));
            std::env::remove_var("GLEANER_TEST_AGENT_BIN");
            (Some(Side::Agent(b, spec.clone())), format!("gleaner {bin}"))
        }
        (Some(e), _) => {
            let b = TestAgent::start_with(&format!("liveness_interval_s = 5\n{e}"));
            (
                Some(Side::Agent(b, spec.clone())),
                format!("gleaner with {e:?}"),
            )
        }
        (None, None) if std::env::var("RUNC").as_deref() == Ok("0") => (None, String::new()),
        (None, None) => {
            let Side::Agent(agent, _) = &a else {
                unreachable!()
            };
            (
                Runc::new(&agent.rootfs).map(Side::Runc),
                "runc run (create+start+wait+delete)".to_owned(),
            )
        }
    };

    // THREE_WAY=1 with AGENT_EXTRA_B or AGENT_BIN_B: runc takes its turn too, so the two
    // agent configs are compared beside another runtime's disk work.
    let mut c = match (&b, std::env::var("THREE_WAY").as_deref()) {
        (Some(_), Ok("1")) => {
            let Side::Agent(agent, _) = &a else {
                unreachable!()
            };
            Runc::new(&agent.rootfs).map(Side::Runc)
        }
        _ => None,
    };

    // Warm the page cache, the agent and runc.
    for _ in 0..5 {
        a.launch();
        for side in [b.as_mut(), c.as_mut()].into_iter().flatten() {
            side.launch();
        }
    }
    let (mut ra, mut rb, mut rc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ra.push((0..per_round).map(|_| a.launch()).collect::<Vec<_>>());
        if let Some(b) = b.as_mut() {
            rb.push((0..per_round).map(|_| b.launch()).collect::<Vec<_>>());
        }
        if let Some(c) = c.as_mut() {
            rc.push((0..per_round).map(|_| c.launch()).collect::<Vec<_>>());
        }
    }

    println!(
        "\n== submit-to-RUNNING, /bin/true, busybox rootfs, 0.5 cpu (CFS) + 64 MB; \
         {rounds} interleaved rounds of {per_round} launches, 95 % intervals"
    );
    if std::env::var("DRIFT").is_ok() {
        let m: Vec<String> = ra.iter().map(|r| format!("{:.2}", median(r))).collect();
        println!("round medians (gleaner): {}", m.join(" "));
    }
    let ma = summary("gleaner (POST /v1/tasks -> RUNNING)", &ra);
    if b.is_some() {
        let mb = summary(&b_name, &rb);
        let ratios: Vec<f64> = mb.iter().zip(&ma).map(|(b, a)| b / a).collect();
        println!(
            "{:<36} {}x (B / gleaner, round by round)",
            "ratio at the median",
            fmt_interval(median_interval(&ratios), 2)
        );
        if c.is_some() {
            let mc = summary("runc run (create+start+wait+delete)", &rc);
            for (name, m) in [("gleaner", &ma), ("B", &mb)] {
                let r: Vec<f64> = mc.iter().zip(m).map(|(c, m)| c / m).collect();
                println!(
                    "{:<36} {}x (runc / {name}, round by round)",
                    "ratio at the median",
                    fmt_interval(median_interval(&r), 2)
                );
            }
        }
    } else {
        println!("runc: skipped (RUNC=0) or not installed (apt-get install runc)");
    }
    let Side::Agent(agent, _) = a else {
        unreachable!()
    };
    println!(
        "A (gleaner{}):",
        if extra.is_empty() {
            String::new()
        } else {
            format!(" with {extra:?}")
        }
    );
    stage_breakdown(&agent.log_path);
    if let Some(Side::Agent(b_agent, _)) = &b {
        println!("B ({b_name}):");
        stage_breakdown(&b_agent.log_path);
    }
    drop(b);

    if long == 0 {
        return;
    }
    println!("\n== {long} launches of `sleep 600`");
    // 1000 x 0.001 cpu fits the default reservation (the host).
    let sleep = json!({"argv": ["sleep", "600"], "cpu_limit": "shares", "resources": {"cpus": 0.001, "mem_mb": 16}});
    let t = Instant::now();
    for _ in 0..long {
        let st = agent.submit(sleep.clone()).unwrap();
        assert_eq!(st.state, TaskState::Running, "{st:?}");
    }
    let total = t.elapsed();
    println!(
        "total {:.2} s ({:.2} ms per launch)",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / long as f64
    );
    std::thread::sleep(Duration::from_secs(1));
    let pid = agent.agent_pid();
    println!("agent RSS after: {:.1} MB", rss_kb(pid) as f64 / 1024.0);
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let ticks = cpu_ticks(pid) - cpu0;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "agent CPU while idle for {:.0} s with {long} running tasks: {:.2} % of a core",
        t0.elapsed().as_secs_f64(),
        ticks as f64 / hz / t0.elapsed().as_secs_f64() * 100.0
    );
    let sup_pss = supervisor_pss_kb(&agent.data_dir);
    if let Some((n, avg)) = sup_pss {
        println!("supervisor PSS: {avg:.0} kB average over {n} supervisors");
    }

    println!("\n== recovery: kill -9 the agent with {long} running tasks, start it again");
    let mut agent = agent;
    agent.stop_agent(libc::SIGKILL);
    let t = Instant::now();
    agent.spawn();
    let healthy = t.elapsed();
    let tasks: Vec<gleaner_agent::status::TaskStatus> = agent.client.get("/v1/tasks").unwrap();
    let running = tasks
        .iter()
        .filter(|s| s.state == TaskState::Running)
        .count();
    println!(
        "agent start to API up with all tasks re-adopted: {:.0} ms ({running} of {} RUNNING)",
        healthy.as_secs_f64() * 1e3,
        tasks.len()
    );
    println!(
        "agent RSS after recovery: {:.1} MB",
        rss_kb(agent.agent_pid()) as f64 / 1024.0
    );
}

/// Medians of the agent's `launch stages` debug lines (runtime/stages.rs):
/// wall and thread CPU per step of the agent's side of a launch.
fn stage_breakdown(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut steps: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("launch stages") || l.contains("submit waited"))
    {
        let line = strip_ansi(line);
        // `submit waited record_us=.. launch_us=..`: the two sides of a
        // reply (the durable record, the launch), each from the start.
        let parts: Vec<String> = if line.contains("submit waited") {
            line.split_whitespace()
                .filter_map(|w| w.split_once("_us="))
                .map(|(k, v)| format!("reply_{k}={v}/-"))
                .collect()
        } else {
            let Some(rest) = line.split("stages=").nth(1) else {
                continue;
            };
            let stages = rest.split_whitespace().next().unwrap_or("");
            stages.split(',').map(str::to_owned).collect()
        };
        for part in &parts {
            let Some((step, times)) = part.split_once('=') else {
                continue;
            };
            let (wall, cpu) = times.split_once('/').unwrap_or((times, "-"));
            let i = match steps.iter().position(|s| s.0 == step) {
                Some(i) => i,
                None => {
                    steps.push((step.to_owned(), Vec::new(), Vec::new()));
                    steps.len() - 1
                }
            };
            if let Ok(w) = wall.parse::<f64>() {
                steps[i].1.push(w / 1e3);
            }
            if let Ok(c) = cpu.parse::<f64>() {
                steps[i].2.push(c / 1e3);
            }
        }
    }
    if steps.is_empty() {
        println!("(no `launch stages` lines in the agent's log)");
        return;
    }
    println!(
        "agent side of a launch, medians over {} launches (wall / thread CPU, ms):",
        steps[0].1.len()
    );
    for (step, wall, cpu) in &steps {
        let cpu = if cpu.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.3}", median(cpu))
        };
        println!("  {step:<16} {:>9.3} / {cpu}", median(wall));
    }
}

/// The log's field names come wrapped in terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Submit-to-RUNNING with the filter on and off, network host and none,
/// interleaved launch by launch: drift hits the four alike, and each round
/// gives a paired difference of medians.
fn four_way(rounds: usize, per_round: usize) {
    let on = TestAgent::start_with("liveness_interval_s = 5\n");
    let off = TestAgent::start_with("liveness_interval_s = 5\ndisable_features = [\"seccomp\"]\n");
    let arms = [
        ("filter on, network host", &on, "host"),
        ("filter off, network host", &off, "host"),
        ("filter on, network none", &on, "none"),
        ("filter off, network none", &off, "none"),
    ];
    let launch = |(_, agent, network): (&str, &TestAgent, &str)| -> f64 {
        let spec = json!({"argv": ["/bin/true"], "network": network, "resources": {"cpus": 0.5, "mem_mb": 64}});
        let t = Instant::now();
        let st = agent.submit(spec).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            matches!(st.state, TaskState::Running | TaskState::Finished),
            "{st:?}"
        );
        ms
    };
    let load = || fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for _ in 0..5 {
        arms.iter().for_each(|&a| {
            launch(a);
        });
    }
    println!("load before: {}", load().trim());
    // medians[arm][round]
    let mut medians = vec![Vec::with_capacity(rounds); arms.len()];
    let mut all = vec![Vec::new(); arms.len()];
    for round in 0..rounds {
        let mut ms = vec![Vec::with_capacity(per_round); arms.len()];
        for _ in 0..per_round {
            for k in 0..arms.len() {
                let i = (round + k) % arms.len();
                ms[i].push(launch(arms[i]));
            }
        }
        for (i, m) in ms.into_iter().enumerate() {
            medians[i].push(median(&m));
            all[i].extend(m);
        }
    }
    println!("load after: {}", load().trim());
    println!(
        "\n== submit-to-RUNNING, /bin/true; {rounds} rounds of {per_round} launches of each arm, \
         interleaved; ms, 95 % intervals"
    );
    println!("| arm | median of round medians | p50 of all | p90 of all |");
    println!("| --- | --- | --- | --- |");
    for (i, (name, _, _)) in arms.iter().enumerate() {
        let mut s = all[i].clone();
        s.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {:.2} | {:.2} |",
            fmt_interval(median_interval(&medians[i]), 2),
            percentile(&s, 0.5),
            percentile(&s, 0.9)
        );
    }
    println!("\n| paired difference of round medians | median | mean |");
    println!("| --- | --- | --- |");
    for (name, a, b) in [
        ("filter on - off, network host", 0, 1),
        ("filter on - off, network none", 2, 3),
        ("network none - host, filter on", 2, 0),
        ("network none - host, filter off", 3, 1),
    ] {
        let d: Vec<f64> = medians[a]
            .iter()
            .zip(&medians[b])
            .map(|(x, y)| x - y)
            .collect();
        println!(
            "| {name} | {} | {} |",
            fmt_interval(median_interval(&d), 3),
            fmt_interval(mean_interval(&d), 3)
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').unwrap_or(0) + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Average PSS of the supervisors of this agent (smaps_rollup, >= 4.14).
fn supervisor_pss_kb(data_dir: &Path) -> Option<(usize, f64)> {
    let mut total = 0u64;
    let mut n = 0usize;
    for pid in supervisor_pids(data_dir) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "gleaner-sup" {
            continue;
        }
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let pss: u64 = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        total += pss;
        n += 1;
    }
    (n > 0).then(|| (n, total as f64 / n as f64))
}

/// `runc run` of the same rootfs with the same limits.
struct Runc {
    bin: &'static str,
    bundle: tempfile::TempDir,
    n: usize,
}

impl Runc {
    fn new(rootfs: &Path) -> Option<Runc> {
        let bin = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let bundle = tempfile::tempdir().ok()?;
        let status = Command::new(bin)
            .args(["spec", "--bundle"])
            .arg(bundle.path())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let cfg_path = bundle.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&cfg_path).ok()?).ok()?;
        cfg["root"] = json!({"path": rootfs, "readonly": true});
        cfg["process"]["terminal"] = json!(false);
        cfg["process"]["args"] = json!(["/bin/true"]);
        cfg["process"]["user"] = json!({"uid": 65534, "gid": 65534});
        cfg["linux"]["resources"] = json!({
            "cpu": {"quota": 50000, "period": 100000},
            "memory": {"limit": 64u64 << 20},
            "pids": {"limit": 1024}
        });
        fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).ok()?).ok()?;
        Some(Runc { bin, bundle, n: 0 })
    }

    fn run(&mut self) -> f64 {
        self.n += 1;
        let t = Instant::now();
        let st = Command::new(self.bin)
            .args(["run", "--bundle"])
            .arg(self.bundle.path())
            .arg(format!("gleaner-bench-{}-{}", std::process::id(), self.n))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("runc");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            st.status.success(),
            "runc run failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        ms
    }
}
