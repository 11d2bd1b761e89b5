//! `gleaner-monitor`: trace init, config, /metrics on loopback, then every
//! interval: sample, decide, move the reservation. Agent unreachable: keep
//! sampling, log the outage once, apply the latest decision when it is back.
//! The monitor dying changes nothing on the agent: the last reservation
//! stays enforced (see README, "When the monitor stops").

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use gleaner_monitor::client::{AgentClient, Reservation};
use gleaner_monitor::config::{parse_interval, MonitorConfig};
use gleaner_monitor::policy::{Amount, Observation, Policy};
use gleaner_monitor::sample::{Sample, Sampler};

#[derive(Parser, Debug)]
#[command(
    name = "gleaner-monitor",
    version,
    about = "gleaner monitor: harvests idle capacity for batch work"
)]
struct Cli {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Agent URL (default http://127.0.0.1:5051).
    #[arg(long)]
    agent: Option<String>,
    /// Role whose reservation is moved (default batch).
    #[arg(long)]
    role: Option<String>,
    /// Sampling interval: 1s, 500ms (default 1s).
    #[arg(long)]
    interval: Option<String>,
    /// /metrics address (default 127.0.0.1:5052).
    #[arg(long)]
    listen: Option<String>,
    /// The agent's cgroup root (default gleaner).
    #[arg(long)]
    cgroup_root: Option<String>,
    /// Decide and log only.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Default)]
struct Status {
    sample: Sample,
    harvestable: Amount,
    reservation: Option<Amount>,
    agent_reachable: bool,
    changes: u64,
    errors: u64,
    preempted: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match configure(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gleaner-monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLEANER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gleaner-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn configure(cli: Cli) -> Result<MonitorConfig, String> {
    let mut cfg = MonitorConfig::load(cli.config.as_deref())?;
    if let Some(v) = cli.agent {
        cfg.agent = v;
    }
    if let Some(v) = cli.role {
        cfg.role = v;
    }
    if let Some(v) = cli.interval {
        cfg.interval_s = parse_interval(&v)?;
    }
    if let Some(v) = cli.listen {
        cfg.listen = v;
    }
    if let Some(v) = cli.cgroup_root {
        cfg.cgroup_root = v;
    }
    cfg.dry_run |= cli.dry_run;
    cfg.validate()?;
    Ok(cfg)
}

async fn run(cfg: MonitorConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let token = match &cfg.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("token_file {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let status = Arc::new(Mutex::new(Status::default()));
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listen {}", cfg.listen))?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(status.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    tracing::info!(agent = %cfg.agent, role = %cfg.role, interval_s = cfg.interval_s, dry_run = cfg.dry_run, "monitor started");

    let reserve_timeout = Duration::from_secs_f64(cfg.reserve_timeout_s);
    let client = if cfg.agent_socket.exists() {
        tracing::info!(socket = %cfg.agent_socket.display(), "agent over its unix socket");
        AgentClient::unix(&cfg.agent_socket, reserve_timeout)
    } else {
        AgentClient::new(&cfg.agent, token, reserve_timeout)
    };
    let mut sampler = Sampler::new(&cfg.cgroup_root);
    if cfg.use_psi && !sampler.psi_available() {
        tracing::warn!("PSI unavailable (no /proc/pressure): the policy goes by usage alone");
    }
    let mut policy: Option<Policy> = None;
    // The reservation as last read from (or applied by) the agent.
    let mut seen: Option<Reservation> = None;
    let mut outage: Option<Instant> = None;
    let mut sample_error: Option<String> = None;
    let mut dry_logged: Option<Amount> = None;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(cfg.interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => {
                tracing::info!("monitor stopping; the agent keeps the last reservation");
                return Ok(());
            }
        }
        let sample = match sampler.sample(cfg.use_psi) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                // Skipped, never read as 0; logged when the cause changes.
                let e = e.to_string();
                if sample_error.as_ref() != Some(&e) {
                    tracing::warn!("sample skipped: {e}");
                    sample_error = Some(e);
                }
                continue;
            }
        };
        sample_error = None;
        let obs = Observation {
            t_s: start.elapsed().as_secs_f64(),
            total: Amount {
                cpus: sample.host_cpus,
                mem_mb: sample.mem_total_mb,
            },
            business: Amount {
                cpus: sample.business_cpus(),
                mem_mb: sample.business_mem_mb(),
            },
            psi_cpu: sample.psi_cpu,
            psi_mem: sample.psi_mem,
        };
        tracing::debug!(
            busy = sample.host_busy_cpus,
            agent = sample.agent_cpus,
            business = obs.business.cpus,
            mem_used = sample.mem_used_mb,
            agent_mem = sample.agent_mem_mb,
            "sample"
        );
        status.lock().unwrap().sample = sample;
        // Every cycle: what the agent has now. An operator's change becomes
        // the policy's new starting point.
        let current = match client.reservation(&cfg.role).await {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                let mut st = status.lock().unwrap();
                st.errors += 1;
                st.agent_reachable = false;
                note_outage(&mut outage, &e.to_string());
                continue;
            }
        };
        if let Some(since) = outage.take() {
            tracing::info!(
                "agent reachable again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
        let changed_outside = seen
            .as_ref()
            .is_some_and(|s| s.amount() != current.amount());
        if policy.is_none() || changed_outside {
            if changed_outside {
                let a = current.amount();
                tracing::info!(
                    cpus = a.cpus,
                    mem_mb = a.mem_mb,
                    "reservation changed outside the monitor; starting from it"
                );
            }
            policy = Some(Policy::new(cfg.policy.clone(), current.amount()));
        }
        seen = Some(current.clone());
        let Some(p) = policy.as_mut() else { continue };
        p.decide(&obs);
        let desired = p.current();
        {
            let mut st = status.lock().unwrap();
            st.harvestable = p.harvestable(&obs);
            st.reservation = Some(current.amount());
            st.agent_reachable = true;
        }
        if current.amount().same(&desired) {
            continue;
        }
        if cfg.dry_run {
            if dry_logged != Some(desired) {
                tracing::info!(?desired, "would set the reservation (dry run)");
                dry_logged = Some(desired);
            }
            continue;
        }
        match client.reserve(&cfg.role, &current.with(desired)).await {
            Ok((applied, preempted)) => {
                tracing::info!(
                    cpus = desired.cpus,
                    mem_mb = desired.mem_mb,
                    business_cpus = obs.business.cpus,
                    business_mem_mb = obs.business.mem_mb,
                    preempted = preempted.len(),
                    "reservation moved"
                );
                let mut st = status.lock().unwrap();
                st.reservation = Some(applied.amount());
                st.changes += 1;
                st.preempted += preempted.len() as u64;
                p.applied(applied.amount());
                seen = Some(applied);
            }
            Err(e) => {
                // It may still be applied (a timeout): not an operator's.
                seen = None;
                let mut st = status.lock().unwrap();
                st.errors += 1;
                st.agent_reachable = false;
                note_outage(&mut outage, &e.to_string());
            }
        }
    }
}

/// Logs an outage once, when it starts.
fn note_outage(outage: &mut Option<Instant>, why: &str) {
    if outage.is_none() {
        tracing::warn!("{why}; still sampling, retrying every interval");
        *outage = Some(Instant::now());
    }
}

async fn metrics(State(status): State<Arc<Mutex<Status>>>) -> String {
    let st = status.lock().unwrap();
    let s = &st.sample;
    let r = st.reservation.unwrap_or_default();
    let mut out = String::new();
    for (name, v) in [
        ("gleaner_monitor_host_cpus", s.host_cpus),
        ("gleaner_monitor_host_busy_cpus", s.host_busy_cpus),
        ("gleaner_monitor_agent_cpus", s.agent_cpus),
        ("gleaner_monitor_business_cpus", s.business_cpus()),
        ("gleaner_monitor_mem_total_mb", s.mem_total_mb),
        ("gleaner_monitor_agent_mem_mb", s.agent_mem_mb),
        ("gleaner_monitor_business_mem_mb", s.business_mem_mb()),
        ("gleaner_monitor_load1", s.load1),
        (
            "gleaner_monitor_psi_cpu_some_avg10",
            s.psi_cpu.unwrap_or(0.0),
        ),
        (
            "gleaner_monitor_psi_memory_some_avg10",
            s.psi_mem.unwrap_or(0.0),
        ),
        ("gleaner_monitor_harvestable_cpus", st.harvestable.cpus),
        ("gleaner_monitor_harvestable_mem_mb", st.harvestable.mem_mb),
        ("gleaner_monitor_reservation_cpus", r.cpus),
        ("gleaner_monitor_reservation_mem_mb", r.mem_mb),
        (
            "gleaner_monitor_agent_reachable",
            if st.agent_reachable { 1.0 } else { 0.0 },
        ),
    ] {
        out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
    }
    for (name, v) in [
        ("gleaner_monitor_reservation_changes_total", st.changes),
        ("gleaner_monitor_agent_errors_total", st.errors),
        ("gleaner_monitor_preempted_total", st.preempted),
    ] {
        out.push_str(&format!("# TYPE {name} counter\n{name} {v}\n"));
    }
    out
}
