//! The fleet verbs of `gleaner`: `job submit|ls|status|cancel` and
//! `queue ls|set|rm`, against a scheduler's native API (FLEET.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use gleaner_agent::client::Client;
use serde_json::{json, Value};

/// Where the scheduler is.
#[derive(Args)]
pub struct SchedulerArgs {
    /// Scheduler URL.
    #[arg(
        long,
        env = "GLEANER_SCHEDULER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub scheduler: String,
    /// File with the scheduler's bearer token.
    #[arg(long, env = "GLEANER_SCHEDULER_TOKEN_FILE", global = true)]
    pub scheduler_token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum JobOp {
    /// Submit jobs to a queue; prints their ids. One word after `--` runs
    /// under /bin/sh -c; several are an argv.
    Submit {
        #[arg(long, short)]
        queue: String,
        #[arg(long, default_value_t = 0.5)]
        cpus: f64,
        #[arg(long, default_value_t = 64.0)]
        mem: f64,
        #[arg(long, default_value_t = 0.0)]
        disk: f64,
        #[arg(long)]
        role: Option<String>,
        /// Higher first within the queue.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long)]
        max_retries: Option<u32>,
        /// Marathon constraint `attr:OP[:value]`, e.g. `hostname:UNIQUE`.
        #[arg(long = "constraint", short = 'c')]
        constraints: Vec<String>,
        /// This many identical jobs (at most 100 per call).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Submit the jobs as one gang of this id (all start or none).
        #[arg(long)]
        gang: Option<String>,
        /// rootfs image URI, fetched and cached by the agent.
        #[arg(long, requires = "sha256")]
        image: Option<String>,
        #[arg(long, requires = "image")]
        sha256: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List jobs.
    Ls {
        #[arg(long, short)]
        queue: Option<String>,
        /// QUEUED, PLACED, RUNNING, SUCCEEDED, FAILED or CANCELLED.
        #[arg(long, short)]
        state: Option<String>,
        /// Ids only.
        #[arg(long = "ids")]
        quiet: bool,
    },
    /// One job with its current task's status (JSON).
    Status { id: String },
    /// Cancel a job (its task, if any, is killed).
    Cancel { id: String },
}

#[derive(Subcommand)]
pub enum QueueOp {
    /// Queues with pending and running jobs and their share of the fleet.
    Ls,
    /// Create or change a queue.
    Set {
        name: String,
        /// Fair-share weight is 1 / factor: 2 gets half the share of 1.
        #[arg(long, default_value_t = 1.0)]
        priority_factor: f64,
        #[arg(long)]
        cpus_limit: Option<f64>,
        #[arg(long)]
        mem_limit: Option<f64>,
        /// bin-pack or spread (default: the scheduler's).
        #[arg(long)]
        fitness: Option<String>,
    },
    /// Remove a queue (refused while it has unfinished jobs).
    Rm { name: String },
}

fn client(args: &SchedulerArgs) -> Result<Client, String> {
    let token = match &args.scheduler_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("token file {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Client::new(&args.scheduler, token))
}

fn err(e: gleaner_agent::client::ClientError) -> String {
    e.to_string()
}

/// `attr:OP[:value]` → `[attr, OP, value?]`.
fn constraint(s: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = s.splitn(3, ':').map(str::to_owned).collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "--constraint {s:?}: expected attr:OPERATOR[:value]"
        ));
    }
    Ok(parts)
}

pub fn job(args: &SchedulerArgs, op: JobOp) -> Result<ExitCode, String> {
    let c = client(args)?;
    match op {
        JobOp::Submit {
            queue,
            cpus,
            mem,
            disk,
            role,
            priority,
            max_retries,
            constraints,
            count,
            gang,
            image,
            sha256,
            user,
            env,
            command,
        } => {
            let mut spec = super::base_spec(cpus, mem, disk, &command);
            if let Some(r) = role {
                spec["role"] = json!(r);
            }
            if let Some(u) = user {
                spec["user"] = json!(u);
            }
            if let (Some(uri), Some(sha256)) = (image, sha256) {
                spec["rootfs"] = json!({"uri": uri, "sha256": sha256});
            }
            let cs: Vec<Vec<String>> = constraints
                .iter()
                .map(|s| constraint(s))
                .collect::<Result<_, _>>()?;
            spec["constraints"] = json!(cs);
            spec["env"] = json!(super::env_map(&env)?);
            let mut one = json!({"priority": priority, "spec": spec});
            if let Some(r) = max_retries {
                one["max_retries"] = json!(r);
            }
            if let Some(g) = gang {
                one["gang"] = json!({"id": g, "cardinality": count});
            }
            let jobs: Vec<Value> = (0..count).map(|_| one.clone()).collect();
            let v: Value = c
                .post("/v1/jobs", &json!({"queue": queue, "jobs": jobs}))
                .map_err(err)?;
            for id in v["jobs"].as_array().into_iter().flatten() {
                println!("{}", id.as_str().unwrap_or("?"));
            }
        }
        JobOp::Ls {
            queue,
            state,
            quiet,
        } => {
            let mut query = Vec::new();
            if let Some(q) = queue {
                query.push(format!("queue={q}"));
            }
            if let Some(s) = state {
                query.push(format!("state={s}"));
            }
            let path = if query.is_empty() {
                "/v1/jobs".to_owned()
            } else {
                format!("/v1/jobs?{}", query.join("&"))
            };
            let jobs: Vec<Value> = c.get(&path).map_err(err)?;
            if !quiet {
                println!(
                    "{:<22} {:<12} {:<10} {:>7} {:<16} MESSAGE",
                    "JOB", "QUEUE", "STATE", "ATTEMPT", "NODE"
                );
            }
            for j in jobs {
                let s = |k: &str| j[k].as_str().unwrap_or("-").to_owned();
                if quiet {
                    println!("{}", s("id"));
                    continue;
                }
                println!(
                    "{:<22} {:<12} {:<10} {:>7} {:<16} {}",
                    s("id"),
                    s("queue"),
                    s("state"),
                    j["attempt"].to_string(),
                    s("node"),
                    j["message"].as_str().unwrap_or("")
                );
            }
        }
        JobOp::Status { id } => {
            let v: Value = c.get(&format!("/v1/jobs/{id}")).map_err(err)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        JobOp::Cancel { id } => {
            let v: Value = c.delete(&format!("/v1/jobs/{id}")).map_err(err)?;
            println!("{id} {}", v["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn queue(args: &SchedulerArgs, op: QueueOp) -> Result<ExitCode, String> {
    let c = client(args)?;
    match op {
        QueueOp::Ls => {
            let queues: Vec<Value> = c.get("/v1/queues").map_err(err)?;
            println!(
                "{:<16} {:>7} {:>8} {:>8} {:>6}",
                "QUEUE", "FACTOR", "PENDING", "RUNNING", "SHARE"
            );
            for q in queues {
                println!(
                    "{:<16} {:>7} {:>8} {:>8} {:>6.3}",
                    q["name"].as_str().unwrap_or("?"),
                    q["priority_factor"].to_string(),
                    q["pending"].to_string(),
                    q["running"].to_string(),
                    q["share"].as_f64().unwrap_or(0.0)
                );
            }
        }
        QueueOp::Set {
            name,
            priority_factor,
            cpus_limit,
            mem_limit,
            fitness,
        } => {
            let mut body = json!({"priority_factor": priority_factor});
            if cpus_limit.is_some() || mem_limit.is_some() {
                let mut limits = json!({});
                if let Some(v) = cpus_limit {
                    limits["cpus"] = json!(v);
                }
                if let Some(v) = mem_limit {
                    limits["mem_mb"] = json!(v);
                }
                body["limits"] = limits;
            }
            if let Some(f) = fitness {
                body["fitness"] = json!(f);
            }
            let _: Value = c.put(&format!("/v1/queues/{name}"), &body).map_err(err)?;
            println!("queue {name} set");
        }
        QueueOp::Rm { name } => {
            let _: Value = c.delete(&format!("/v1/queues/{name}")).map_err(err)?;
            println!("queue {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn constraints_parse_from_colons() {
        assert_eq!(
            super::constraint("hostname:UNIQUE").unwrap(),
            ["hostname", "UNIQUE"]
        );
        assert_eq!(
            super::constraint("rack:LIKE:r[1-2]:x").unwrap(),
            ["rack", "LIKE", "r[1-2]:x"]
        );
        assert!(super::constraint("hostname").is_err());
        assert!(super::constraint(":UNIQUE").is_err());
    }
}
