//! Hollow nodes (as Kubernetes' kubemark): N fake agents in one process.
//! Each registers `nodes/<node>/info` under a lease, and answers every
//! placement on it by writing `tasks/<id>` RUNNING at once, then FINISHED
//! after `--run-ms` (KILLED if the placement key is deleted first). Their
//! info's `allocated` follows, like a real agent's (batched every 200 ms).
//! Nothing runs: this measures the scheduler and etcd, not the agents.

#[path = "../auth.rs"]
mod auth;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Parser;
use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use gleaner_core::fleet::{Keys, NodeInfo, Placement, RoleCapacity, TaskRecord};
use gleaner_core::spec::Resources;
use gleaner_core::status::{TaskState, TaskStatus};

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    #[arg(long, default_value = "/gleaner")]
    etcd_prefix: String,
    #[command(flatten)]
    auth: auth::EtcdAuth,
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Node ids are `<name-prefix><n>`.
    #[arg(long, default_value = "hollow-")]
    name_prefix: String,
    #[arg(long, default_value_t = 8.0)]
    cpus: f64,
    #[arg(long, default_value_t = 32768.0)]
    mem_mb: f64,
    /// `rack` attribute values: node n is in rack n % racks.
    #[arg(long, default_value_t = 10)]
    racks: usize,
    /// How long a task "runs" before FINISHED.
    #[arg(long, default_value_t = 5000)]
    run_ms: u64,
}

const OPS_PER_TXN: usize = 100;
const NODES_PER_LEASE: usize = 250;

struct Node {
    info: NodeInfo,
    lease: i64,
    dirty: bool,
}

struct Running {
    node: String,
    resources: Resources,
    record: TaskRecord,
}

fn status(id: &str, role: &str, resources: Resources, state: TaskState) -> TaskStatus {
    let now = Utc::now();
    TaskStatus {
        id: id.to_owned(),
        role: role.to_owned(),
        state,
        reason: match state {
            TaskState::Killed => Some(gleaner_core::status::Reason::Killed),
            _ => None,
        },
        message: None,
        exit_code: state.is_final().then_some(0),
        signal: None,
        pid: None,
        cgroup: None,
        sandbox: None,
        resources,
        submitted_at: now,
        started_at: Some(now),
        finished_at: state.is_final().then_some(now),
        restarts: 0,
        ports: Vec::new(),
        health: None,
    }
}

fn add(a: &mut Resources, b: Resources, sign: f64) {
    a.cpus = (a.cpus + sign * b.cpus).max(0.0);
    a.mem_mb = (a.mem_mb + sign * b.mem_mb).max(0.0);
    a.disk_mb = (a.disk_mb + sign * b.disk_mb).max(0.0);
}

async fn write_batch(client: &mut Client, ops: Vec<TxnOp>) -> Result<()> {
    for chunk in ops.chunks(OPS_PER_TXN) {
        client
            .txn(Txn::new().and_then(chunk.to_vec()))
            .await
            .context("txn")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let keys = Keys::new(&args.etcd_prefix);
    let mut client = args.auth.connect(&args.etcd).await?;

    // Register: leases for groups of nodes, infos in batched transactions.
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut ops = Vec::new();
    let mut leases = Vec::new();
    for n in 0..args.nodes {
        if n % NODES_PER_LEASE == 0 {
            leases.push(client.lease_grant(10, None).await?.id());
        }
        let lease = *leases.last().unwrap();
        let node = format!("{}{n}", args.name_prefix);
        let zero = Resources {
            cpus: 0.0,
            mem_mb: 0.0,
            disk_mb: 0.0,
        };
        let info = NodeInfo {
            node: node.clone(),
            address: "127.0.0.1".into(),
            agent_url: "http://127.0.0.1:1".into(),
            version: "hollow".into(),
            roles: BTreeMap::from([(
                "batch".to_owned(),
                RoleCapacity {
                    reserved: Resources {
                        cpus: args.cpus,
                        mem_mb: args.mem_mb,
                        disk_mb: 0.0,
                    },
                    allocated: zero,
                },
            )]),
            attributes: BTreeMap::from([("rack".to_owned(), format!("r{}", n % args.racks))]),
            port_ranges: Vec::new(),
            reported_at: Utc::now(),
        };
        ops.push(TxnOp::put(
            keys.node_info(&node),
            serde_json::to_vec(&info)?,
            Some(PutOptions::new().with_lease(lease)),
        ));
        nodes.insert(
            node,
            Node {
                info,
                lease,
                dirty: false,
            },
        );
    }
    let started = Instant::now();
    write_batch(&mut client, ops).await?;
    eprintln!(
        "hollow-nodes: {} nodes registered in {:.2}s under {} leases",
        args.nodes,
        started.elapsed().as_secs_f64(),
        leases.len()
    );

    // Keep the leases alive.
    {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut keepers = Vec::new();
            for l in &leases {
                if let Ok(k) = client.lease_keep_alive(*l).await {
                    keepers.push(k);
                }
            }
            loop {
                for (keeper, stream) in keepers.iter_mut() {
                    let _ = keeper.keep_alive().await;
                    let _ = stream.message().await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
    }

    let root = keys.placements_root();
    let mut watch = client
        .watch(root.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut deadlines: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    // Latest record per task: one transaction may not put a key twice.
    let mut outbox: HashMap<String, Vec<u8>> = HashMap::new();
    let mut flush = tokio::time::interval(Duration::from_millis(5));
    let mut info_tick = tokio::time::interval(Duration::from_millis(200));
    let (mut placed, mut finished) = (0u64, 0u64);
    let mut report = Instant::now();
    loop {
        tokio::select! {
            msg = watch.message() => {
                let Some(resp) = msg? else { anyhow::bail!("watch closed") };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let Some((node, task)) = keys.parse_placement(key) else { continue };
                    let Some(n) = nodes.get_mut(node) else { continue };
                    match ev.event_type() {
                        EventType::Put => {
                            if running.contains_key(task) {
                                continue;
                            }
                            let Ok(p) = serde_json::from_slice::<Placement>(kv.value()) else { continue };
                            let res = p.spec.resources;
                            if let Some(role) = n.info.roles.get_mut(&p.spec.role) {
                                add(&mut role.allocated, res, 1.0);
                            }
                            n.dirty = true;
                            let record = TaskRecord {
                                status: status(task, &p.spec.role, res, TaskState::Running),
                                node: node.to_owned(),
                            };
                            outbox.insert(keys.task(task), serde_json::to_vec(&record)?);
                            deadlines.push(Reverse((Instant::now() + Duration::from_millis(args.run_ms), task.to_owned())));
                            running.insert(task.to_owned(), Running { node: node.to_owned(), resources: res, record });
                            placed += 1;
                        }
                        EventType::Delete => {
                            if let Some(r) = running.remove(task) {
                                end(&keys, &mut nodes, &mut outbox, r, TaskState::Killed)?;
                            }
                        }
                    }
                }
            }
            _ = flush.tick() => {
                let now = Instant::now();
                while let Some(Reverse((at, _))) = deadlines.peek() {
                    if *at > now {
                        break;
                    }
                    let Reverse((_, id)) = deadlines.pop().unwrap();
                    if let Some(r) = running.remove(&id) {
                        end(&keys, &mut nodes, &mut outbox, r, TaskState::Finished)?;
                        finished += 1;
                    }
                }
                if !outbox.is_empty() {
                    let ops = std::mem::take(&mut outbox)
                        .into_iter()
                        .map(|(k, v)| TxnOp::put(k, v, None))
                        .collect();
                    if let Err(e) = write_batch(&mut client, ops).await {
                        eprintln!("hollow-nodes: {e:#}");
                    }
                }
                if report.elapsed() > Duration::from_secs(5) {
                    eprintln!("hollow-nodes: placed {placed}, finished {finished}, running {}", running.len());
                    report = Instant::now();
                }
            }
            _ = info_tick.tick() => {
                let mut ops = Vec::new();
                for n in nodes.values_mut().filter(|n| n.dirty) {
                    n.dirty = false;
                    n.info.reported_at = Utc::now();
                    ops.push(TxnOp::put(
                        keys.node_info(&n.info.node),
                        serde_json::to_vec(&n.info)?,
                        Some(PutOptions::new().with_lease(n.lease)),
                    ));
                }
                if let Err(e) = write_batch(&mut client, ops).await {
                    eprintln!("hollow-nodes: {e:#}");
                }
            }
        }
    }
}

fn end(
    keys: &Keys,
    nodes: &mut HashMap<String, Node>,
    outbox: &mut HashMap<String, Vec<u8>>,
    r: Running,
    state: TaskState,
) -> Result<()> {
    if let Some(n) = nodes.get_mut(&r.node) {
        if let Some(role) = n.info.roles.get_mut(&r.record.status.role) {
            add(&mut role.allocated, r.resources, -1.0);
        }
        n.dirty = true;
    }
    let mut record = r.record;
    let fin = status(&record.status.id, &record.status.role, r.resources, state);
    record.status.state = fin.state;
    record.status.reason = fin.reason;
    record.status.exit_code = fin.exit_code;
    record.status.finished_at = fin.finished_at;
    outbox.insert(keys.task(&record.status.id), serde_json::to_vec(&record)?);
    Ok(())
}
