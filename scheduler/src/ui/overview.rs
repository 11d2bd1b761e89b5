//! The console's one read: nodes, queues with fair share, job counts and
//! the jobs worth showing, built from one snapshot of etcd. `build` is
//! pure; `Cache` makes every open console share one read per
//! [`CACHE_TTL`] so ten consoles cost about what one does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gleaner_core::admission::Amount;
use gleaner_core::fleet::{Job, JobState, Keys, NodeInfo, NodeKey, Queue};
use gleaner_core::placement::amount;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{ApiError, AppState};

/// How long one read of etcd serves every console (they poll each second).
pub const CACHE_TTL: Duration = Duration::from_millis(500);
/// Jobs listed: every unfinished one up to this many, then the latest
/// finished ones up to the same total.
pub const MAX_LISTED_JOBS: usize = 300;

/// What etcd holds, as read for one overview.
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    /// Node of every placement key (a node with placements and no info
    /// key is lost).
    pub placement_nodes: Vec<String>,
    pub queues: Vec<(String, Queue)>,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct QueueView {
    pub name: String,
    pub priority_factor: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    pub pending: u64,
    pub running: u64,
    /// Dominant share of the fleet's reservation held now (as `/v1/queues`).
    pub share: f64,
    /// What max-min fairness aims at: this queue's weight over the weights
    /// of the queues with work (pending or running); 0 when idle.
    pub fair_share: f64,
}

/// Weighted fair share among active queues: `weight / Σ active weights`
/// (weight = `1 / priority_factor`, as Armada). Inactive queues get 0.
pub fn fair_shares(queues: &[(f64, bool)]) -> Vec<f64> {
    let weight = |pf: f64| if pf > 0.0 { 1.0 / pf } else { 0.0 };
    let total: f64 = queues
        .iter()
        .filter(|(_, active)| *active)
        .map(|(pf, _)| weight(*pf))
        .sum();
    queues
        .iter()
        .map(|(pf, active)| {
            if *active && total > 0.0 {
                weight(*pf) / total
            } else {
                0.0
            }
        })
        .collect()
}

/// A job as the console lists it (no spec but its resources and role).
fn job_row(j: &Job) -> Value {
    json!({
        "id": j.id,
        "queue": j.queue,
        "state": j.state,
        "priority": j.priority,
        "attempt": j.attempt,
        "retries": j.retries,
        "node": j.node,
        "message": j.message,
        "submitted_at": j.submitted_at,
        "placed_at": j.placed_at,
        "finished_at": j.finished_at,
        "role": j.spec.role,
        "resources": j.spec.resources,
        "gang": j.gang.as_ref().map(|g| &g.id),
    })
}

pub fn build(snap: &Snapshot, now: DateTime<Utc>) -> Value {
    let total = snap
        .nodes
        .iter()
        .flat_map(|n| n.roles.values())
        .fold(Amount::default(), |a, r| a.add(amount(r.reserved)));
    // Per node: placement count (as /v1/nodes' `tasks`).
    let mut tasks: BTreeMap<&str, u64> = BTreeMap::new();
    for n in &snap.placement_nodes {
        *tasks.entry(n.as_str()).or_default() += 1;
    }
    let live: BTreeSet<&str> = snap.nodes.iter().map(|n| n.node.as_str()).collect();
    let nodes: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "address": n.address,
                "version": n.version,
                "roles": n.roles,
                "attributes": n.attributes,
                "tasks": tasks.get(n.node.as_str()).copied().unwrap_or(0),
                "last_seen": n.reported_at,
            })
        })
        .collect();
    // Lost: still named by placements or unfinished jobs, info key gone.
    let mut lost: BTreeSet<&str> = snap
        .placement_nodes
        .iter()
        .map(String::as_str)
        .filter(|n| !live.contains(n))
        .collect();
    for j in &snap.jobs {
        if let (Some(n), JobState::Placed | JobState::Running) = (&j.node, j.state) {
            if !live.contains(n.as_str()) {
                lost.insert(n.as_str());
            }
        }
    }
    let mut counts: BTreeMap<&str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut per_queue: BTreeMap<&str, (u64, u64, Amount)> = BTreeMap::new();
    for j in &snap.jobs {
        *counts
            .entry(j.queue.as_str())
            .or_default()
            .entry(j.state.as_str())
            .or_default() += 1;
        let q = per_queue.entry(j.queue.as_str()).or_default();
        match j.state {
            JobState::Queued => q.0 += 1,
            JobState::Placed | JobState::Running => {
                q.1 += 1;
                q.2 = q.2.add(amount(j.spec.resources));
            }
            _ => {}
        }
    }
    let activity: Vec<(f64, bool)> = snap
        .queues
        .iter()
        .map(|(name, q)| {
            let (p, r, _) = per_queue.get(name.as_str()).copied().unwrap_or_default();
            (q.priority_factor, p + r > 0)
        })
        .collect();
    let fair = fair_shares(&activity);
    let queues: Vec<QueueView> = snap
        .queues
        .iter()
        .zip(fair)
        .map(|((name, q), fair_share)| {
            let (pending, running, held) =
                per_queue.get(name.as_str()).copied().unwrap_or_default();
            QueueView {
                name: name.clone(),
                priority_factor: q.priority_factor,
                limits: q.limits.as_ref().map(|l| json!(l)),
                pending,
                running,
                share: held.dominant_share(total),
                fair_share,
            }
        })
        .collect();
    // Unfinished first (newest first), then the latest finished.
    let mut open: Vec<&Job> = snap.jobs.iter().filter(|j| !j.state.is_final()).collect();
    let mut done: Vec<&Job> = snap.jobs.iter().filter(|j| j.state.is_final()).collect();
    open.sort_by(|a, b| b.submitted_at.cmp(&a.submitted_at).then(b.id.cmp(&a.id)));
    done.sort_by(|a, b| {
        b.finished_at
            .cmp(&a.finished_at)
            .then(b.submitted_at.cmp(&a.submitted_at))
    });
    let listed: Vec<Value> = open
        .iter()
        .chain(done.iter())
        .take(MAX_LISTED_JOBS)
        .map(|j| job_row(j))
        .collect();
    json!({
        "generated_at": now,
        "totals": {"cpus": total.cpus, "mem_mb": total.mem_mb},
        "nodes": nodes,
        "lost_nodes": lost,
        "queues": queues,
        "job_counts": counts,
        "jobs_total": snap.jobs.len(),
        "jobs": listed,
    })
}

async fn read(st: &AppState) -> Result<Snapshot, ApiError> {
    let keys: &Keys = &st.keys;
    let infos: Vec<(String, NodeInfo, i64)> = st.store.list(&keys.nodes_prefix()).await?;
    let nodes = infos
        .into_iter()
        .filter(|(k, _, _)| matches!(keys.parse_node_key(k), Some(NodeKey::Info { .. })))
        .map(|(_, n, _)| n)
        .collect();
    let placements: Vec<(String, serde::de::IgnoredAny, i64)> =
        st.store.list(&keys.placements_root()).await?;
    let placement_nodes = placements
        .iter()
        .filter_map(|(k, _, _)| keys.parse_placement(k).map(|(n, _)| n.to_owned()))
        .collect();
    let queues: Vec<(String, Queue, i64)> = st.store.list(&keys.queues_prefix()).await?;
    let queues = queues
        .into_iter()
        .filter_map(|(k, q, _)| {
            keys.leaf(&k, &keys.queues_prefix())
                .map(|n| (n.to_owned(), q))
        })
        .collect();
    let jobs: Vec<(String, Job, i64)> = st.store.list(&keys.jobs_prefix()).await?;
    Ok(Snapshot {
        nodes,
        placement_nodes,
        queues,
        jobs: jobs.into_iter().map(|(_, j, _)| j).collect(),
    })
}

/// One rendered overview shared by every console for [`CACHE_TTL`].
#[derive(Default)]
pub struct Cache {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<Vec<u8>>)>>,
}

impl Cache {
    /// The cached body, or a fresh one. The lock is held across the read so
    /// that consoles polling together cause one read, not one each.
    pub async fn get(&self, st: &AppState) -> Result<Arc<Vec<u8>>, ApiError> {
        let mut slot = self.slot.lock().await;
        if let Some((at, body)) = slot.as_ref() {
            if at.elapsed() < CACHE_TTL {
                return Ok(body.clone());
            }
        }
        let snap = read(st).await?;
        let body = Arc::new(build(&snap, Utc::now()).to_string().into_bytes());
        *slot = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gleaner_core::fleet::RoleCapacity;
    use gleaner_core::spec::Resources;
    use proptest::prelude::*;

    fn node(name: &str, cpus: f64, mem: f64) -> NodeInfo {
        let r = Resources {
            cpus,
            mem_mb: mem,
            disk_mb: 0.0,
        };
        NodeInfo {
            node: name.into(),
            address: "127.0.0.1".into(),
            agent_url: "http://127.0.0.1:1".into(),
            version: "t".into(),
            roles: [(
                "batch".to_owned(),
                RoleCapacity {
                    reserved: r,
                    allocated: r,
                },
            )]
            .into(),
            attributes: Default::default(),
            port_ranges: vec![],
            reported_at: Utc::now(),
        }
    }

    fn job(id: &str, queue: &str, state: JobState, node: Option<&str>) -> Job {
        let spec: gleaner_core::spec::TaskSpec = serde_json::from_value(json!({
            "cmd": "true", "role": "batch", "resources": {"cpus": 1.0, "mem_mb": 100}
        }))
        .unwrap();
        Job {
            id: id.into(),
            queue: queue.into(),
            priority: 0,
            spec,
            gang: None,
            max_retries: 0,
            submitted_at: Utc::now(),
            state,
            attempt: 1,
            retries: 0,
            node: node.map(Into::into),
            message: None,
            placed_at: None,
            finished_at: None,
            avoid: vec![],
            withdrawing: false,
        }
    }

    #[test]
    fn counts_shares_and_lost_nodes() {
        let q = |pf: f64| Queue {
            priority_factor: pf,
            limits: None,
            fitness: None,
        };
        let snap = Snapshot {
            nodes: vec![node("a", 2.0, 1000.0), node("b", 2.0, 1000.0)],
            placement_nodes: vec!["a".into(), "a".into(), "gone".into()],
            queues: vec![
                ("x".into(), q(1.0)),
                ("y".into(), q(2.0)),
                ("z".into(), q(1.0)),
            ],
            jobs: vec![
                job("1", "x", JobState::Running, Some("a")),
                job("2", "x", JobState::Queued, None),
                job("3", "y", JobState::Running, Some("dead")),
                job("4", "z", JobState::Succeeded, Some("b")),
            ],
        };
        let v = build(&snap, Utc::now());
        assert_eq!(v["nodes"][0]["tasks"], 2);
        assert_eq!(v["nodes"][1]["tasks"], 0);
        assert_eq!(v["lost_nodes"], json!(["dead", "gone"]));
        let qs = v["queues"].as_array().unwrap();
        assert_eq!(qs[0]["pending"], 1);
        assert_eq!(qs[0]["running"], 1);
        // 1 cpu of 4 reserved.
        assert_eq!(qs[0]["share"], 0.25);
        // x weight 1, y weight 0.5, z idle.
        assert!((qs[0]["fair_share"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((qs[1]["fair_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(qs[2]["fair_share"], 0.0);
        assert_eq!(v["job_counts"]["z"]["SUCCEEDED"], 1);
        // Unfinished first.
        let listed: Vec<&str> = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["state"].as_str().unwrap())
            .collect();
        assert_eq!(listed.last(), Some(&"SUCCEEDED"));
        assert_eq!(v["jobs_total"], 4);
    }

    #[test]
    fn lists_at_most_the_cap() {
        let jobs = (0..MAX_LISTED_JOBS + 50)
            .map(|i| job(&i.to_string(), "x", JobState::Queued, None))
            .collect();
        let snap = Snapshot {
            nodes: vec![],
            placement_nodes: vec![],
            queues: vec![],
            jobs,
        };
        let v = build(&snap, Utc::now());
        assert_eq!(v["jobs"].as_array().unwrap().len(), MAX_LISTED_JOBS);
        assert_eq!(v["jobs_total"], MAX_LISTED_JOBS + 50);
    }

    proptest! {
        #[test]
        fn fair_shares_split_one_among_active_queues(
            qs in proptest::collection::vec((0.1f64..10.0, any::<bool>()), 0..12)
        ) {
            let f = fair_shares(&qs);
            prop_assert_eq!(f.len(), qs.len());
            let sum: f64 = f.iter().sum();
            if qs.iter().any(|(_, a)| *a) {
                prop_assert!((sum - 1.0).abs() < 1e-9);
            } else {
                prop_assert_eq!(sum, 0.0);
            }
            for ((pf, active), s) in qs.iter().zip(&f) {
                prop_assert!((0.0..=1.0).contains(s));
                if !active { prop_assert_eq!(*s, 0.0); }
                // A lower factor never gets less than a higher one.
                for ((pf2, a2), s2) in qs.iter().zip(&f) {
                    if *active && *a2 && pf < pf2 { prop_assert!(s >= s2); }
                }
            }
        }
    }
}
