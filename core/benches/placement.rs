//! Placement throughput at fleet scale, pure (no etcd): N nodes, M pending
//! jobs over 10 queues, placed in passes of at most `BATCH` as the
//! scheduler's leader does (each pass sees the previous passes' placements
//! as active work). Prints placements per second.
//!
//! `cargo bench -p gleaner-core --bench placement [-- NODES JOBS BATCH]`

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use gleaner_core::admission::Amount;
use gleaner_core::fleet::{Gang, NodeInfo, Queue, RoleCapacity};
use gleaner_core::placement::{place, Active, Options, Pending};
use gleaner_core::spec::Resources;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes_n = args.first().copied().unwrap_or(5000);
    let jobs_n = args.get(1).copied().unwrap_or(50_000);
    let batch = args.get(2).copied().unwrap_or(1000);

    let nodes: Vec<NodeInfo> = (0..nodes_n)
        .map(|i| NodeInfo {
            node: format!("node-{i:05}"),
            address: "10.0.0.1".into(),
            agent_url: "http://10.0.0.1:7070".into(),
            version: "bench".into(),
            roles: BTreeMap::from([(
                "batch".into(),
                RoleCapacity {
                    reserved: Resources {
                        cpus: 16.0,
                        mem_mb: 65536.0,
                        disk_mb: 0.0,
                    },
                    allocated: Resources {
                        cpus: 0.0,
                        mem_mb: 0.0,
                        disk_mb: 0.0,
                    },
                },
            )]),
            attributes: BTreeMap::from([("rack".into(), format!("r{}", i % 50))]),
            port_ranges: vec![],
            reported_at: Utc::now(),
        })
        .collect();
    let queues: BTreeMap<String, Queue> = (0..10)
        .map(|q| {
            (
                format!("q{q}"),
                Queue {
                    priority_factor: 1.0 + (q % 3) as f64,
                    ..Queue::default()
                },
            )
        })
        .collect();
    let mut pending: Vec<Pending> = (0..jobs_n)
        .map(|i| {
            let mut constraints = vec![];
            let mut kind = format!("batch\u{1e}job{}", i % 7);
            if i % 10 == 0 {
                // One per node of its kind.
                constraints.push(vec!["hostname".to_string(), "UNIQUE".to_string()]);
                kind = format!("batch\u{1e}unique{}", i % 100);
            } else if i % 10 == 1 {
                constraints.push(vec!["rack".to_string(), "GROUP_BY".to_string()]);
            }
            Pending {
                job: format!("j{i}"),
                queue: format!("q{}", i % 10),
                priority: (i % 3) as i32,
                submitted_ms: i as i64,
                role: "batch".into(),
                need: Amount {
                    cpus: [0.5, 1.0, 2.0][i % 3],
                    mem_mb: [512.0, 1024.0, 2048.0][i % 3],
                    disk_mb: 0.0,
                },
                constraints,
                kind,
                gang: (i % 50 == 0).then(|| Gang {
                    id: format!("g{}", i / 200),
                    cardinality: 4,
                    shared_path: None,
                    network: None,
                }),
                avoid: vec![],
                sidecar: false,
                gang_sidecar: false,
            }
        })
        .collect();
    // Gangs of exactly 4: members i, i+50, i+100, i+150 share g{i/200}.
    let mut active: Vec<Active> = Vec::new();
    let started = Instant::now();
    let mut passes = 0;
    let mut slowest = 0.0f64;
    loop {
        let t = Instant::now();
        let out = place(
            &nodes,
            &queues,
            &pending,
            &active,
            Options {
                max_placements: batch,
                ..Options::default()
            },
        );
        slowest = slowest.max(t.elapsed().as_secs_f64());
        passes += 1;
        if out.units.is_empty() {
            break;
        }
        let placed: BTreeMap<&str, &str> = out
            .units
            .iter()
            .flatten()
            .map(|(j, n)| (j.as_str(), n.as_str()))
            .collect();
        let (now, rest): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| placed.contains_key(p.job.as_str()));
        for p in now {
            active.push(Active {
                job: p.job.clone(),
                queue: p.queue.clone(),
                node: placed[p.job.as_str()].to_string(),
                role: p.role.clone(),
                kind: p.kind.clone(),
                holds: p.need,
                reported: false,
                gang: None,
            });
        }
        pending = rest;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "placement: {nodes_n} nodes, {jobs_n} jobs, batch {batch}: {} placed in {passes} passes, {secs:.2} s, {:.0} placements/s, slowest pass {:.0} ms, {} left waiting",
        active.len(),
        active.len() as f64 / secs,
        slowest * 1000.0,
        pending.len()
    );
}
