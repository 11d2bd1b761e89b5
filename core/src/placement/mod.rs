//! Fleet placement, pure: from a snapshot (live nodes, queues, pending
//! jobs, placed and running work) to the jobs to place and where, and a
//! reason for every job left waiting. No I/O, no clock.
//!
//! * Order (Armada): across queues, max-min fairness on dominant resource
//!   share of the fleet's reservation, weighted by `1 / priority_factor`:
//!   the queue whose share would stay lowest after its next unit goes next.
//!   Within a queue: priority (higher first), then submission time. A
//!   queue's `limits` cap what it holds (placed + running) at once.
//! * A unit is one job, or a whole gang (all members or none; a gang waits
//!   until all `cardinality` members are submitted). A gang with a sidecar
//!   goes on one node (a sidecar serves the members of its node's group).
//! * Fit (`fit.rs`): the role's free room on the node (reserved − reported
//!   allocated − placed but not yet reported) and every hard constraint,
//!   evaluated across the fleet. Fitness: bin-packing (default) or spread.

mod fit;
#[cfg(test)]
mod tests;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::admission::Amount;
use crate::constraints::{self, Constraint, Op};
use crate::fleet::{Fitness, Gang, NodeInfo, Queue};
use crate::spec::TaskSpec;

pub use fit::Fleet;

/// A job waiting for a node.
#[derive(Debug, Clone)]
pub struct Pending {
    pub job: String,
    pub queue: String,
    /// Higher first within the queue.
    pub priority: i32,
    /// Submission time (ms since the epoch); ties broken by job id.
    pub submitted_ms: i64,
    pub role: String,
    pub need: Amount,
    pub constraints: Vec<Vec<String>>,
    /// Tasks of one kind count together for UNIQUE, MAX_PER, GROUP_BY,
    /// CLUSTER (see [`kind`]).
    pub kind: String,
    pub gang: Option<Gang>,
    /// Nodes this attempt must not go to (where it was withdrawn from).
    pub avoid: Vec<String>,
    /// A gang's sidecar: it serves the members on its node, so a gang with
    /// one goes on one node whole.
    pub sidecar: bool,
    /// Its gang has a sidecar (this job or another, pending or running):
    /// such a gang is placed whole only, a member never alone while the
    /// others still hold their places (it would serve, or be served by,
    /// no group).
    pub gang_sidecar: bool,
}

/// Work placed on or running on a node.
#[derive(Debug, Clone)]
pub struct Active {
    pub job: String,
    pub queue: String,
    pub node: String,
    pub role: String,
    pub kind: String,
    pub holds: Amount,
    /// The agent reported it started: the node's `allocated` includes it.
    pub reported: bool,
    /// Its gang, if any: members already placed count towards a gang's
    /// cardinality (a member moved after a drain goes alone).
    pub gang: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub fitness: Fitness,
    /// At most this many jobs placed per pass.
    pub max_placements: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fitness: Fitness::BinPack,
            max_placements: usize::MAX,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Each inner list is one unit (a job, or a whole gang), to be written
    /// in one transaction: (job, node).
    pub units: Vec<Vec<(String, String)>>,
    /// Why each other pending job waits.
    pub waiting: BTreeMap<String, String>,
}

/// The kind of a task for counting constraints: same role and command line
/// (as the agent counts them on one node).
pub fn kind(spec: &TaskSpec) -> String {
    let cmd = match (&spec.cmd, &spec.argv) {
        (Some(c), _) => c.clone(),
        (None, Some(argv)) => argv.join("\u{1f}"),
        (None, None) => String::new(),
    };
    format!("{}\u{1e}{cmd}", spec.role)
}

pub fn amount(r: crate::spec::Resources) -> Amount {
    Amount {
        cpus: r.cpus,
        mem_mb: r.mem_mb,
        disk_mb: r.disk_mb,
    }
}

/// Totally ordered f64 for the queue heap.
#[derive(PartialEq)]
struct Share(f64);
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Share {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

struct Unit<'a> {
    jobs: Vec<(&'a Pending, Vec<Constraint>)>,
    need: Amount,
    /// A gang still missing members: (have, want).
    incomplete: Option<(usize, u32)>,
    /// Why a gang's members cannot go together.
    conflict: Option<String>,
}

/// One placement pass.
pub fn place(
    nodes: &[NodeInfo],
    queues: &BTreeMap<String, Queue>,
    pending: &[Pending],
    active: &[Active],
    options: Options,
) -> Outcome {
    let mut out = Outcome::default();
    // Parse constraints; a job whose constraints do not parse waits with
    // the parse error (the API rejects those, so this is defence).
    let mut parsed: Vec<(&Pending, Vec<Constraint>)> = Vec::with_capacity(pending.len());
    for p in pending {
        match constraints::parse(&p.constraints) {
            Ok(c) => parsed.push((p, c)),
            Err(e) => {
                out.waiting.insert(p.job.clone(), e.to_string());
            }
        }
    }
    // Which (kind, attribute) pairs need counting.
    let mut counted: Vec<(String, String)> = Vec::new();
    for (p, cs) in &parsed {
        for c in cs {
            if matches!(c.op, Op::MaxPer(_) | Op::GroupBy | Op::Cluster(None)) {
                let pair = (p.kind.clone(), c.attribute.clone());
                if !counted.contains(&pair) {
                    counted.push(pair);
                }
            }
        }
    }
    let holdings: Vec<fit::Holding<'_>> = active
        .iter()
        .map(|a| fit::Holding {
            node: &a.node,
            role: &a.role,
            kind: &a.kind,
            holds: a.holds,
            reported: a.reported,
        })
        .collect();
    let mut fleet = Fleet::new(nodes, &holdings, &counted);
    let total = fleet.total();

    // Units per queue, in queue order.
    parsed.sort_by(|(a, _), (b, _)| {
        b.priority
            .cmp(&a.priority)
            .then(a.submitted_ms.cmp(&b.submitted_ms))
            .then(a.job.cmp(&b.job))
    });
    let mut all: Vec<Unit<'_>> = Vec::new();
    let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut gang_slot: HashMap<&str, usize> = HashMap::new();
    for (p, cs) in parsed {
        if let Some(g) = &p.gang {
            if let Some(&i) = gang_slot.get(g.id.as_str()) {
                // Members submitted apart may disagree (one request is
                // checked whole): the gang cannot be one group per node.
                let first = all[i].jobs[0].0;
                let pod = crate::gang::is_pod(g, first.sidecar || p.sidecar);
                if all[i].conflict.is_none()
                    && (first.gang.as_ref() != Some(g) || (pod && first.role != p.role))
                {
                    all[i].conflict = Some(format!(
                        "gang {}: members {} and {} differ in role or gang settings (cardinality, shared_path, network); cancel and submit again",
                        g.id, first.job, p.job
                    ));
                }
                all[i].need = all[i].need.add(p.need);
                all[i].jobs.push((p, cs));
                continue;
            }
            gang_slot.insert(&g.id, all.len());
        }
        by_queue
            .entry(p.queue.as_str())
            .or_default()
            .push(all.len());
        all.push(Unit {
            need: p.need,
            jobs: vec![(p, cs)],
            incomplete: None,
            conflict: None,
        });
    }
    let mut gang_active: HashMap<&str, usize> = HashMap::new();
    for a in active {
        if let Some(g) = &a.gang {
            *gang_active.entry(g.as_str()).or_default() += 1;
        }
    }
    for u in all.iter_mut() {
        if let Some(g) = &u.jobs[0].0.gang {
            let have = u.jobs.len() + gang_active.get(g.id.as_str()).copied().unwrap_or(0);
            if have < g.cardinality as usize {
                u.incomplete = Some((have, g.cardinality));
            } else if u.conflict.is_none()
                && u.jobs.len() < g.cardinality as usize
                && u.jobs.iter().any(|(p, _)| p.gang_sidecar)
            {
                // A main retried while its sidecar still runs (its group
                // stops it when the main ends), or a sidecar while its
                // main runs: the gang goes whole again, a new group.
                u.conflict = Some(format!(
                    "gang {}: a gang with a sidecar is placed whole; waiting for its other members to end",
                    g.id
                ));
            } else if u.conflict.is_none() && u.jobs.iter().all(|(p, _)| p.sidecar) {
                // A sidecar placed alone would be refused by its agent (it
                // serves a group): it waits to go with a main member.
                u.conflict = Some(format!(
                    "gang {}: a sidecar is placed only with a main member of its gang",
                    g.id
                ));
            }
        }
    }

    let mut usage: HashMap<&str, Amount> = HashMap::new();
    for a in active {
        let u = usage.entry(a.queue.as_str()).or_default();
        *u = u.add(a.holds);
    }
    let default_queue = Queue::default();
    let queue_of = |q: &str| queues.get(q).unwrap_or(&default_queue);
    let share = |q: &str, usage: &HashMap<&str, Amount>, extra: Amount| {
        let used = usage.get(q).copied().unwrap_or_default().add(extra);
        used.dominant_share(total) * queue_of(q).priority_factor
    };

    let mut cursor: HashMap<&str, usize> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(Share, &str)>> = BinaryHeap::new();
    for (q, units) in &by_queue {
        heap.push(Reverse((Share(share(q, &usage, all[units[0]].need)), *q)));
    }
    // Failures that can only stay failures in this pass (room only shrinks
    // and counting constraints only tighten, GROUP_BY aside).
    let mut memo: HashMap<(String, String, u64, u64, u64), String> = HashMap::new();
    let mut placed = 0usize;
    while let Some(Reverse((_, q))) = heap.pop() {
        let units = &by_queue[q];
        let i = cursor.entry(q).or_default();
        let Some(unit) = units.get(*i).map(|&u| &all[u]) else {
            continue;
        };
        *i += 1;
        let next = units.get(*i).map(|&u| all[u].need);
        let qdef = queue_of(q);
        let why = if let Some(conflict) = &unit.conflict {
            Some(conflict.clone())
        } else if placed + unit.jobs.len() > options.max_placements {
            Some("placement pass full; next pass".to_string())
        } else if let Some((have, want)) = unit.incomplete {
            Some(format!(
                "gang {}: {have} of {want} members submitted",
                unit.jobs[0]
                    .0
                    .gang
                    .as_ref()
                    .map(|g| g.id.as_str())
                    .unwrap_or("")
            ))
        } else if let Some(reason) = over_limit(q, qdef, &usage, unit.need) {
            Some(reason)
        } else {
            let fitness = qdef.fitness.unwrap_or(options.fitness);
            match try_unit(&mut fleet, unit, fitness, &mut memo) {
                Ok(assigned) => {
                    let u = usage.entry(q).or_default();
                    *u = u.add(unit.need);
                    placed += assigned.len();
                    out.units.push(assigned);
                    None
                }
                Err(reason) => Some(reason),
            }
        };
        if let Some(why) = why {
            for (p, _) in &unit.jobs {
                out.waiting.insert(p.job.clone(), why.clone());
            }
        }
        if let Some(need) = next {
            heap.push(Reverse((Share(share(q, &usage, need)), q)));
        }
    }
    out
}

fn over_limit(
    q: &str,
    queue: &Queue,
    usage: &HashMap<&str, Amount>,
    need: Amount,
) -> Option<String> {
    let limits = queue.limits?;
    let held = usage.get(q).copied().unwrap_or_default();
    let after = held.add(need);
    let over = |limit: Option<f64>, v: f64| limit.is_some_and(|l| v > l + 1e-9);
    if over(limits.cpus, after.cpus) || over(limits.mem_mb, after.mem_mb) {
        return Some(format!(
            "queue {q} over its limit (holds {} cpus, {} MB)",
            held.cpus, held.mem_mb
        ));
    }
    None
}

/// Places every job of the unit or none.
fn try_unit(
    fleet: &mut Fleet<'_>,
    unit: &Unit<'_>,
    fitness: Fitness,
    memo: &mut HashMap<(String, String, u64, u64, u64), String>,
) -> Result<Vec<(String, String)>, String> {
    let gang = unit.jobs.len() > 1 || unit.jobs[0].0.gang.is_some();
    // A gang with a sidecar: the first member takes a node with room for
    // the whole unit, the others are held to it.
    let colocate = gang && unit.jobs.iter().any(|(p, _)| p.sidecar);
    let mut others: Option<Vec<String>> = None;
    let mut applied = Vec::new();
    let mut assigned = Vec::new();
    for (p, cs) in &unit.jobs {
        let memo_key = (!gang
            && p.avoid.is_empty()
            && !cs.iter().any(|c| matches!(c.op, Op::GroupBy)))
        .then(|| {
            (
                p.kind.clone(),
                p.constraints.concat().join("\u{1f}"),
                p.need.cpus.to_bits(),
                p.need.mem_mb.to_bits(),
                p.need.disk_mb.to_bits(),
            )
        });
        if let Some(reason) = memo_key.as_ref().and_then(|k| memo.get(k)) {
            return Err(reason.clone());
        }
        let pinned: Vec<String>;
        let avoid = match &others {
            Some(o) => {
                pinned = o.iter().chain(&p.avoid).cloned().collect();
                &pinned
            }
            None => &p.avoid,
        };
        let whole = colocate && others.is_none();
        // The node the whole gang goes on must suit every member: the
        // others' attribute constraints (a GPU, a zone) join the first's.
        let joined: Vec<Constraint>;
        let constraints = if whole {
            joined = cs
                .iter()
                .cloned()
                .chain(unit.jobs.iter().skip(1).flat_map(|(_, c)| {
                    c.iter()
                        .filter(|c| {
                            matches!(
                                c.op,
                                Op::Is(_) | Op::Like(_) | Op::Unlike(_) | Op::Cluster(Some(_))
                            )
                        })
                        .cloned()
                }))
                .collect();
            &joined
        } else {
            cs
        };
        let ask = fit::Ask {
            role: &p.role,
            kind: &p.kind,
            need: if whole { unit.need } else { p.need },
            constraints,
            avoid,
            fitness,
        };
        match fleet.find(&ask) {
            Ok(n) => {
                let own = fit::Ask {
                    need: p.need,
                    ..ask
                };
                applied.push(fleet.apply(n, &own));
                let node = fleet.nodes[n].node.clone();
                if whole {
                    others = Some(
                        fleet
                            .nodes
                            .iter()
                            .filter(|x| x.node != node)
                            .map(|x| x.node.clone())
                            .collect(),
                    );
                }
                assigned.push((p.job.clone(), node));
            }
            Err(reason) => {
                for a in applied.into_iter().rev() {
                    fleet.undo(a);
                }
                if let Some(k) = memo_key {
                    memo.insert(k, reason.clone());
                }
                return Err(if colocate {
                    format!(
                        "gang member {} (a gang with a sidecar goes on one node): {reason}",
                        p.job
                    )
                } else if gang {
                    format!("gang member {}: {reason}", p.job)
                } else {
                    reason
                });
            }
        }
    }
    Ok(assigned)
}
