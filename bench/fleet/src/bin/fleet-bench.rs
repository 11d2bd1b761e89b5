//! The fleet benchmark driver: creates queues, submits jobs to a scheduler
//! (`POST /v1/jobs`), and watches `tasks/` in etcd for each job's first
//! RUNNING (or later) record: submit→RUNNING latency per job, sustained
//! placements per second, and at the end the scheduler's peak RSS and CPU
//! time and etcd's database size. Prints one JSON object.

#[path = "../auth.rs"]
mod auth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use etcd_client::WatchOptions;
use gleaner_core::fleet::{parse_task_id, Keys, TaskRecord};
use gleaner_core::status::TaskState;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    #[arg(long, default_value = "/gleaner")]
    etcd_prefix: String,
    #[command(flatten)]
    auth: auth::EtcdAuth,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    scheduler: String,
    /// For RSS and CPU time (from /proc).
    #[arg(long)]
    scheduler_pid: Option<u32>,
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    #[arg(long, default_value_t = 10)]
    queues: usize,
    /// Jobs per POST.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Jobs per second; 0 = as fast as the API takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 1.0)]
    cpus: f64,
    #[arg(long, default_value_t = 256.0)]
    mem_mb: f64,
    /// Give up after this long.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Job ids in a `POST /v1/jobs` reply, whatever its exact shape.
fn job_ids(reply: &Value) -> Vec<String> {
    let list = match reply {
        Value::Array(a) => a.clone(),
        Value::Object(o) => ["ids", "jobs", "job_ids"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|v| v.as_array()).cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    list.iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("id").and_then(|i| i.as_str()).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// (peak RSS MB, CPU seconds) of a process.
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc_sysconf_clk_tck() };
    Some((hwm_kb / 1024.0, ticks / hz))
}

unsafe fn libc_sysconf_clk_tck() -> f64 {
    extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    // _SC_CLK_TCK is 2 on Linux.
    sysconf(2) as f64
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let keys = Keys::new(&args.etcd_prefix);
    // reqwest is unified with the agent's rustls-no-provider in the workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut client = args.auth.connect(&args.etcd).await?;

    for q in 0..args.queues {
        let r = http
            .put(format!("{}/v1/queues/q{q}", args.scheduler))
            .json(&json!({"priority_factor": 1.0}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("PUT /v1/queues/q{q}: {} {}", r.status(), r.text().await?);
        }
    }

    // Each job's submission time, and its first RUNNING (or later) report.
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watch = client
        .watch(
            keys.tasks_prefix().as_str(),
            Some(WatchOptions::new().with_prefix()),
        )
        .await?;
    {
        let started = started.clone();
        let prefix = keys.tasks_prefix();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = watch.message().await {
                let now = Instant::now();
                let mut s = started.lock().unwrap();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let Some(task) = key.strip_prefix(prefix.as_str()) else {
                        continue;
                    };
                    let Some((job, _)) = parse_task_id(task) else {
                        continue;
                    };
                    let Ok(rec) = serde_json::from_slice::<TaskRecord>(kv.value()) else {
                        continue;
                    };
                    if matches!(rec.status.state, TaskState::Running | TaskState::Finished) {
                        s.entry(job.to_owned()).or_insert(now);
                    }
                }
            }
        });
    }

    let t0 = Instant::now();
    let spec = json!({"cmd": "true", "resources": {"cpus": args.cpus, "mem_mb": args.mem_mb}});
    let mut sent = 0usize;
    let mut batch_no = 0usize;
    while sent < args.jobs {
        let n = args.batch.min(args.jobs - sent);
        if args.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(sent as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let queue = format!("q{}", batch_no % args.queues);
        let jobs: Vec<Value> = (0..n)
            .map(|_| json!({"priority": 0, "spec": spec}))
            .collect();
        let at = Instant::now();
        let r = http
            .post(format!("{}/v1/jobs", args.scheduler))
            .json(&json!({"queue": queue, "jobs": jobs}))
            .send()
            .await?;
        let code = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !code.is_success() {
            bail!("POST /v1/jobs: {code} {body}");
        }
        let ids = job_ids(&body);
        if ids.len() != n {
            bail!(
                "POST /v1/jobs answered {} ids for {n} jobs: {body}",
                ids.len()
            );
        }
        let mut s = submitted.lock().unwrap();
        for id in ids {
            s.insert(id, at);
        }
        sent += n;
        batch_no += 1;
    }
    let submit_s = t0.elapsed().as_secs_f64();
    eprintln!("fleet-bench: {sent} jobs submitted in {submit_s:.1}s");

    // Wait for every job's RUNNING; keep the running count over time.
    let mut series: Vec<(f64, usize)> = Vec::new();
    loop {
        let done = {
            let sub = submitted.lock().unwrap();
            let st = started.lock().unwrap();
            sub.keys().filter(|k| st.contains_key(*k)).count()
        };
        series.push((t0.elapsed().as_secs_f64(), done));
        if done >= args.jobs {
            break;
        }
        if t0.elapsed() > Duration::from_secs(args.timeout_s) {
            eprintln!("fleet-bench: timed out with {done}/{} running", args.jobs);
            break;
        }
        if series.len() % 50 == 0 {
            eprintln!("fleet-bench: {done}/{} started", args.jobs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total_s = t0.elapsed().as_secs_f64();

    let (sub, st) = (submitted.lock().unwrap(), started.lock().unwrap());
    let mut lat: Vec<f64> = sub
        .iter()
        .filter_map(|(k, at)| Some(st.get(k)?.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Sustained: between 10 % and 90 % of the jobs started.
    let when = |frac: f64| {
        series
            .iter()
            .find(|(_, n)| *n as f64 >= frac * args.jobs as f64)
            .map(|(t, _)| *t)
    };
    let sustained = match (when(0.1), when(0.9)) {
        (Some(a), Some(b)) if b > a => 0.8 * args.jobs as f64 / (b - a),
        _ => f64::NAN,
    };
    let usage = args.scheduler_pid.and_then(proc_usage);
    let status = client.status().await.ok();
    let out = json!({
        "jobs": args.jobs,
        "queues": args.queues,
        "rate": args.rate,
        "started": lat.len(),
        "submit_s": submit_s,
        "total_s": total_s,
        "placements_per_s_sustained": sustained,
        "placements_per_s_overall": lat.len() as f64 / total_s,
        "submit_to_running_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": lat.last().copied()},
        "scheduler_peak_rss_mb": usage.map(|u| u.0),
        "scheduler_cpu_s": usage.map(|u| u.1),
        "etcd_db_size_mb": status.map(|s| s.db_size() as f64 / 1048576.0),
    });
    println!("{out}");
    Ok(())
}
