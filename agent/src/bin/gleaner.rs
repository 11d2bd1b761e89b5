//! `gleaner`: the command-line client of the agent's HTTP API.
//! Exit codes: 0 ok, 1 the agent refused or failed, 2 bad usage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[path = "gleaner/exec.rs"]
mod exec_cmd;
#[path = "gleaner/fleet.rs"]
mod fleet_cmd;
use gleaner_agent::client::Client;
use gleaner_agent::config::AgentConfig;
use gleaner_agent::status::TaskStatus;
use serde_json::json;

#[derive(Parser)]
#[command(name = "gleaner", version, about = "gleaner command-line client")]
struct Cli {
    /// Agent URL (TCP, needs the token) [default: the agent's Unix socket
    /// when this user may use it, else its `listen` address].
    #[arg(long, env = "GLEANER_AGENT", global = true)]
    agent: Option<String>,
    /// File with the agent's bearer token [default: the agent's token file].
    #[arg(long, env = "GLEANER_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The agent's config file: its data dir, `listen` and `token_file` say
    /// where and how to reach it [default: ../etc/agent.toml beside this
    /// binary if it exists, else the agent's built-in defaults].
    #[arg(long, env = "GLEANER_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    fleet: fleet_cmd::SchedulerArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit a task. One word after `--` runs under /bin/sh -c; several are an argv.
    Run {
        #[arg(long, default_value_t = 0.5)]
        cpus: f64,
        #[arg(long, default_value_t = 64.0)]
        mem: f64,
        #[arg(long, default_value_t = 0.0)]
        disk: f64,
        /// rootfs directory (default: the agent's default_rootfs).
        #[arg(long, conflicts_with = "image")]
        rootfs: Option<PathBuf>,
        /// rootfs image URI (file://, http://, https://), fetched and cached.
        #[arg(long, requires = "sha256")]
        image: Option<String>,
        /// sha256 of the image.
        #[arg(long, requires = "image")]
        sha256: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// cfs (hard limit) or shares (weight).
        #[arg(long)]
        cpu_limit: Option<String>,
        /// never, on-failure or always.
        #[arg(long)]
        restart: Option<String>,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Wait until the task ends; exit with its exit code.
        #[arg(long)]
        wait: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List tasks.
    Ps {
        /// Only tasks that have not ended (queued, staging, running).
        #[arg(long)]
        unfinished: bool,
        /// Ids only, one per line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Wait until the agent answers /v1/health (exit 1 after the timeout).
    WaitHealthy {
        /// Seconds; 0 checks once.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Show one task's status (JSON).
    Status { id: String },
    /// Kill a task (SIGTERM, then SIGKILL after its grace) and wait for the end.
    Kill {
        id: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Print a task's output.
    Logs {
        id: String,
        #[arg(long, default_value = "stdout")]
        stream: String,
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Run a command inside a running task (its namespaces, root, cgroup,
    /// user, seccomp filter); exits with the command's exit code. Admins only.
    Exec {
        id: String,
        /// On a terminal (stdout and stderr merged).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show the node's state (JSON).
    State,
    /// Set a role's reservation (applied at once; prints preempted tasks).
    Reserve {
        role: String,
        #[arg(long)]
        cpus: f64,
        #[arg(long)]
        mem: f64,
        #[arg(long, default_value_t = 0.0)]
        disk: f64,
    },
    /// Remove a role's reservation (its tasks are preempted).
    Unreserve { role: String },
    /// List reservations: reserved, allocated, free per role.
    Reservations,
    /// Node attributes: `attr ls`, `attr set K V`, `attr rm K`.
    Attr {
        #[command(subcommand)]
        op: AttrOp,
    },
    /// The fleet as registered in etcd: node, attributes, resources, tasks, last seen.
    Nodes {
        /// etcd endpoints, comma separated (IPs or localhost).
        #[arg(long, env = "GLEANER_ETCD")]
        etcd: String,
        #[arg(long, default_value = "/gleaner")]
        prefix: String,
        /// etcd user (with auth on; the agent's user can read nodes/).
        #[arg(long, env = "GLEANER_ETCD_USER")]
        etcd_user: Option<String>,
        /// File holding that user's password (0600).
        #[arg(long, env = "GLEANER_ETCD_PASSWORD_FILE", requires = "etcd_user")]
        etcd_password_file: Option<std::path::PathBuf>,
    },
    /// Fleet jobs through the scheduler (`--scheduler`): submit, ls, status, cancel.
    Job {
        #[command(subcommand)]
        op: fleet_cmd::JobOp,
    },
    /// Fleet queues through the scheduler (`--scheduler`): ls, set, rm.
    Queue {
        #[command(subcommand)]
        op: fleet_cmd::QueueOp,
    },
}

#[derive(Subcommand)]
enum AttrOp {
    Ls,
    Set { name: String, value: String },
    Rm { name: String },
}

fn main() -> ExitCode {
    // `gleaner ps | head`: a closed pipe ends the CLI quietly, as it does
    // any Unix tool, instead of a panic in println!.
    // SAFETY: restoring the default disposition of one signal at start-up.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gleaner: {e}");
            ExitCode::from(1)
        }
    }
}

/// The agent's config: `--config`, else the tarball's `../etc/agent.toml`
/// beside this binary, else the built-in defaults.
fn agent_config(path: Option<&std::path::Path>) -> Result<AgentConfig, String> {
    if let Some(p) = path {
        return AgentConfig::from_file(p).map_err(|e| e.to_string());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("etc/agent.toml")))
        .filter(|p| p.is_file());
    match beside {
        Some(p) => AgentConfig::from_file(&p).map_err(|e| e.to_string()),
        None => Ok(AgentConfig::default()),
    }
}

fn read_token(p: &std::path::Path) -> Result<String, String> {
    Ok(std::fs::read_to_string(p)
        .map_err(|e| format!("token file {}: {e}", p.display()))?
        .trim()
        .to_owned())
}

/// `--agent`/`--token-file` when given (TCP); else the socket or TCP of
/// the agent's config.
fn connect(cli: &Cli) -> Result<Client, String> {
    let cfg = agent_config(cli.config.as_deref())?;
    let token = match &cli.token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    match (&cli.agent, token) {
        (None, None) => Ok(Client::for_agent(&cfg)),
        (agent, token) => {
            let url = match agent {
                Some(a) => a.clone(),
                None => format!("http://{}", cfg.listen_addr().map_err(|e| e.to_string())?),
            };
            let token = token.or_else(|| cfg.read_token().ok());
            Ok(Client::new(&url, token))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    // The fleet verbs talk to a scheduler, not to the agent.
    let cli = match cli.cmd {
        Cmd::Job { op } => return fleet_cmd::job(&cli.fleet, op),
        Cmd::Queue { op } => return fleet_cmd::queue(&cli.fleet, op),
        cmd => Cli { cmd, ..cli },
    };
    let client = connect(&cli)?;
    let err = |e: gleaner_agent::client::ClientError| e.to_string();
    match cli.cmd {
        Cmd::Run {
            cpus,
            mem,
            disk,
            rootfs,
            image,
            sha256,
            id,
            role,
            user,
            cpu_limit,
            restart,
            env,
            wait,
            command,
        } => {
            let mut spec = base_spec(cpus, mem, disk, &command);
            if let Some(r) = rootfs {
                let abs = std::path::absolute(&r)
                    .map_err(|e| format!("--rootfs {}: {e}", r.display()))?;
                spec["rootfs"] = json!({"path": abs});
            }
            if let (Some(uri), Some(sha256)) = (image, sha256) {
                spec["rootfs"] = json!({"uri": uri, "sha256": sha256});
            }
            for (key, v) in [
                ("id", id),
                ("role", role),
                ("user", user),
                ("cpu_limit", cpu_limit),
            ] {
                if let Some(v) = v {
                    spec[key] = json!(v);
                }
            }
            if let Some(p) = restart {
                spec["restart"] = json!({"policy": p});
            }
            spec["env"] = json!(env_map(&env)?);
            let status: TaskStatus = client.post("/v1/tasks", &spec).map_err(err)?;
            println!("{} {}", status.id, status.state.as_str());
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let done = wait_final(&client, &status.id, None)?;
            print_line(&done);
            Ok(ExitCode::from(
                done.exit_code
                    .unwrap_or(if done.state.as_str() == "FINISHED" {
                        0
                    } else {
                        1
                    }) as u8,
            ))
        }
        Cmd::Ps { unfinished, quiet } => {
            let mut tasks: Vec<TaskStatus> = client.get("/v1/tasks").map_err(err)?;
            if unfinished {
                tasks.retain(|t| !t.state.is_final());
            }
            if quiet {
                for t in tasks {
                    println!("{}", t.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<28} {:<10} {:<10} {:<14} {:>8} {:>6} {:>8}",
                "ID", "ROLE", "STATE", "REASON", "PID", "CPUS", "MEM_MB"
            );
            for t in tasks {
                print_line(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WaitHealthy { timeout } => {
            if !(timeout.is_finite() && timeout >= 0.0) {
                return Err(format!("--timeout {timeout}: must be >= 0"));
            }
            let start = Instant::now();
            loop {
                match client.get::<serde_json::Value>("/v1/health") {
                    Ok(_) => {
                        println!("healthy after {:.2} s", start.elapsed().as_secs_f64());
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) if start.elapsed().as_secs_f64() >= timeout => {
                        return Err(format!("agent not healthy after {timeout} s: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Cmd::Status { id } => {
            let v: serde_json::Value = client.get(&format!("/v1/tasks/{id}")).map_err(err)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kill { id, no_wait } => {
            let status: TaskStatus = client.delete(&format!("/v1/tasks/{id}")).map_err(err)?;
            let status = if no_wait {
                status
            } else {
                wait_final(&client, &id, Some(Duration::from_secs(600)))?
            };
            print_line(&status);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec {
            id,
            tty,
            env,
            command,
        } => exec_cmd::exec(&client, &id, tty, &env, command),
        Cmd::Logs { id, stream, tail } => {
            let mut path = format!("/v1/tasks/{id}/logs?stream={stream}");
            if let Some(n) = tail {
                path.push_str(&format!("&tail={n}"));
            }
            print!("{}", client.get_text(&path).map_err(err)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reserve {
            role,
            cpus,
            mem,
            disk,
        } => {
            let body = json!({"cpus": cpus, "mem_mb": mem, "disk_mb": disk});
            let v: serde_json::Value = client
                .put(&format!("/v1/reservations/{role}"), &body)
                .map_err(err)?;
            print_change(&v);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unreserve { role } => {
            let v: serde_json::Value = client
                .delete(&format!("/v1/reservations/{role}"))
                .map_err(err)?;
            print_change(&v);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reservations => {
            let v: BTreeMap<String, serde_json::Value> =
                client.get("/v1/reservations").map_err(err)?;
            println!(
                "{:<12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8} {:>7}",
                "ROLE",
                "CPUS",
                "ALLOC",
                "FREE",
                "MEM_MB",
                "ALLOC_MB",
                "FREE_MB",
                "RUNNING",
                "QUEUED"
            );
            for (role, u) in v {
                let f = |k: &str, r: &str| u[k][r].as_f64().unwrap_or(0.0);
                println!(
                    "{:<12} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>10.0} {:>10.0} {:>8} {:>7}",
                    role,
                    f("reserved", "cpus"),
                    f("allocated", "cpus"),
                    f("free", "cpus"),
                    f("reserved", "mem_mb"),
                    f("allocated", "mem_mb"),
                    f("free", "mem_mb"),
                    u["running"].as_u64().unwrap_or(0),
                    u["queued"].as_u64().unwrap_or(0)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attr { op: AttrOp::Ls } => {
            let v: BTreeMap<String, serde_json::Value> =
                client.get("/v1/attributes?sources=true").map_err(err)?;
            println!("{:<24} {:<8} VALUE", "NAME", "SOURCE");
            for (name, a) in v {
                println!(
                    "{:<24} {:<8} {}",
                    name,
                    a["source"].as_str().unwrap_or("?"),
                    a["value"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attr {
            op: AttrOp::Set { name, value },
        } => {
            let v: serde_json::Value = client
                .put(&format!("/v1/attributes/{name}"), &json!({"value": value}))
                .map_err(err)?;
            println!(
                "{name}={} ({})",
                v["value"].as_str().unwrap_or(""),
                v["source"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attr {
            op: AttrOp::Rm { name },
        } => {
            let _: serde_json::Value = client
                .delete(&format!("/v1/attributes/{name}"))
                .map_err(err)?;
            println!("{name} removed");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Nodes {
            etcd,
            prefix,
            etcd_user,
            etcd_password_file,
        } => {
            let credentials = match (etcd_user, etcd_password_file) {
                (Some(user), Some(path)) => Some(gleaner_agent::config::EtcdCredentials {
                    user,
                    password: gleaner_agent::config::read_secret_file(&path)
                        .map_err(|e| format!("--etcd-password-file: {e}"))?,
                }),
                (Some(_), None) => return Err("--etcd-user needs --etcd-password-file".into()),
                _ => None,
            };
            let endpoints: Vec<String> = etcd
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect();
            let nodes = gleaner_agent::fleet::list(&endpoints, &prefix, credentials.as_ref())
                .map_err(|e| format!("etcd {etcd}: {e}"))?;
            println!(
                "{:<20} {:>6} {:>9} {:>8} {:>8} {:<20} ATTRIBUTES",
                "NODE", "CPUS", "MEM_MB", "RUNNING", "QUEUED", "LAST SEEN"
            );
            for n in nodes {
                println!(
                    "{:<20} {:>6} {:>9} {:>8} {:>8} {:<20} {}",
                    n.node, n.cpus, n.mem_mb, n.running, n.queued, n.last_seen, n.attributes
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Job { .. } | Cmd::Queue { .. } => unreachable!("handled above"),
        Cmd::State => {
            let v: serde_json::Value = client.get("/v1/state").map_err(err)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_change(v: &serde_json::Value) {
    let r = &v["reserved"];
    println!(
        "{} reserved {} cpus, {} MB",
        v["role"].as_str().unwrap_or("?"),
        r["cpus"],
        r["mem_mb"]
    );
    if let Some(m) = v["message"].as_str() {
        println!("{m}");
    }
    for id in v["preempted"].as_array().into_iter().flatten() {
        println!("preempted {}", id.as_str().unwrap_or("?"));
    }
}

fn print_line(t: &TaskStatus) {
    let reason = t.reason.map(|r| {
        serde_json::to_string(&r)
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    });
    println!(
        "{:<28} {:<10} {:<10} {:<14} {:>8} {:>6} {:>8}",
        t.id,
        t.role,
        t.state.as_str(),
        reason.unwrap_or_else(|| "-".into()),
        t.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        t.resources.cpus,
        t.resources.mem_mb
    );
}

fn wait_final(client: &Client, id: &str, limit: Option<Duration>) -> Result<TaskStatus, String> {
    let start = Instant::now();
    loop {
        let s: TaskStatus = client
            .get(&format!("/v1/tasks/{id}"))
            .map_err(|e| e.to_string())?;
        if s.state.is_final() {
            return Ok(s);
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            return Err(format!(
                "task {id} still {} after {:?}",
                s.state.as_str(),
                limit.unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The TaskSpec part `gleaner run` and `gleaner job submit` share:
/// resources, and one word as a shell command or several as an argv.
fn base_spec(cpus: f64, mem: f64, disk: f64, command: &[String]) -> serde_json::Value {
    let mut spec = json!({"resources": {"cpus": cpus, "mem_mb": mem, "disk_mb": disk}});
    if command.len() == 1 {
        spec["cmd"] = json!(command[0]);
    } else {
        spec["argv"] = json!(command);
    }
    spec
}

/// `--env K=V` flags as a map; one line naming the bad flag otherwise.
fn env_map(env: &[String]) -> Result<BTreeMap<String, String>, String> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--env {kv:?} is not K=V"))
        })
        .collect()
}
