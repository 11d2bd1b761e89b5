//! Launch latency, side by side with runc; then 1000 long tasks: total time,
//! agent RSS, agent idle CPU. Needs root. Run: `cargo bench --bench launch`
//! (or `bench/launch`). Prints figures; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::status::TaskState;
use serde_json::json;

fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&ms, 0.50), percentile(&ms, 0.99));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{name:<34} n={:<5} p50={p50:>7.2} ms  p99={p99:>7.2} ms  mean={mean:>7.2} ms",
        ms.len()
    );
    (p50, p99)
}

fn main() {
    if !require_root("bench launch") {
        return;
    }
    let n: usize = env_usize("LAUNCHES", 200);
    let long: usize = env_usize("LONG_TASKS", 1000);
    // AGENT_EXTRA: more agent config (e.g. `disable_features = ["seccomp"]`
    // to price the filter); NETWORK=none: tasks in their own network ns.
    let extra = std::env::var("AGENT_EXTRA").unwrap_or_default();
    let agent = TestAgent::start_with(&format!("liveness_interval_s = 5\n{extra}"));
    let network = std::env::var("NETWORK").unwrap_or_else(|_| "host".into());
    let spec = json!({"argv": ["/bin/true"], "network": network, "resources": {"cpus": 0.5, "mem_mb": 64}});

    // Warm the page cache and the agent.
    for _ in 0..5 {
        agent.submit(spec.clone()).unwrap();
    }
    let mut gleaner = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = agent.submit(spec.clone()).unwrap();
        gleaner.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(
            matches!(st.state, TaskState::Running | TaskState::Finished),
            "{st:?}"
        );
    }
    let runc = if std::env::var("RUNC").as_deref() == Ok("0") {
        None
    } else {
        runc_launches(&agent.rootfs, n)
    };

    println!("\n== submit-to-RUNNING, /bin/true, busybox rootfs, 0.5 cpu (CFS) + 64 MB");
    if std::env::var("DRIFT").is_ok() {
        for (i, chunk) in gleaner.chunks(50).enumerate() {
            let mut c = chunk.to_vec();
            c.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "launches {}..{}: p50 {:.2} ms",
                i * 50,
                i * 50 + c.len(),
                c[c.len() / 2]
            );
        }
    }
    let (g50, _) = summary("gleaner (POST /v1/tasks -> RUNNING)", gleaner);
    match runc {
        Some(r) => {
            let (r50, _) = summary("runc run (create+start+wait+delete)", r);
            println!("{:<34} {:.1}x", "gleaner speed-up at p50", r50 / g50);
        }
        None => println!("runc: skipped (RUNC=0) or not installed (apt-get install runc)"),
    }

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

/// `runc run` of the same rootfs with the same limits, n times.
fn runc_launches(rootfs: &Path, n: usize) -> Option<Vec<f64>> {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let bundle = tempfile::tempdir().ok()?;
    let status = Command::new(runc)
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
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let t = Instant::now();
        let st = Command::new(runc)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(format!("gleaner-bench-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        if !st.status.success() {
            eprintln!("runc run failed: {}", String::from_utf8_lossy(&st.stderr));
            return None;
        }
        if i >= 5 {
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Some(out)
}
