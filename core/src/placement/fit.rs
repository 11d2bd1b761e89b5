//! The fleet as one placement pass sees it: free room per node and role,
//! and the counts that fleet-wide constraints need; `find` picks the best
//! node for one task. Indexed for speed: roles are small integers, room is
//! a dense array per role, and attribute-only constraint checks are
//! computed once per pass as a mask over the nodes.

use std::collections::HashMap;

use crate::admission::Amount;
use crate::constraints::{Constraint, Op};
use crate::fleet::{Fitness, NodeInfo, HOSTNAME_ATTRIBUTE};

/// One task to fit, as `find` needs it.
pub struct Ask<'a> {
    pub role: &'a str,
    pub kind: &'a str,
    pub need: Amount,
    pub constraints: &'a [Constraint],
    pub avoid: &'a [String],
    pub fitness: Fitness,
}

/// What a tentative placement changed, to undo it (gangs).
pub struct Applied {
    node: usize,
    role: usize,
    need: Amount,
    /// (kind, attribute, value) counters bumped.
    counted: Vec<(String, String, String)>,
}

pub struct Fleet<'a> {
    pub nodes: &'a [NodeInfo],
    index: HashMap<&'a str, usize>,
    roles: HashMap<String, usize>,
    /// [role][node]
    reserved: Vec<Vec<Amount>>,
    free: Vec<Vec<Amount>>,
    /// kind → attribute → value → tasks of that kind on nodes with that
    /// value (placed or running). Only for attributes that pending
    /// constraints count on.
    counts: HashMap<String, HashMap<String, HashMap<String, usize>>>,
    /// constraint text → which nodes pass its attribute-only part.
    masks: HashMap<String, Vec<bool>>,
}

/// An active task, for building the view.
pub struct Holding<'a> {
    pub node: &'a str,
    pub role: &'a str,
    pub kind: &'a str,
    pub holds: Amount,
    pub reported: bool,
}

fn amount(r: crate::spec::Resources) -> Amount {
    Amount {
        cpus: r.cpus,
        mem_mb: r.mem_mb,
        disk_mb: r.disk_mb,
    }
}

fn attr<'n>(node: &'n NodeInfo, name: &str) -> Option<&'n str> {
    if name == HOSTNAME_ATTRIBUTE {
        return Some(&node.node);
    }
    node.attributes.get(name).map(String::as_str)
}

impl<'a> Fleet<'a> {
    /// `counted`: (kind, attribute) pairs that pending constraints count.
    pub fn new(
        nodes: &'a [NodeInfo],
        active: &[Holding<'_>],
        counted: &[(String, String)],
    ) -> Fleet<'a> {
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.as_str(), i))
            .collect();
        let mut roles: HashMap<String, usize> = HashMap::new();
        for n in nodes {
            for role in n.roles.keys() {
                let next = roles.len();
                roles.entry(role.clone()).or_insert(next);
            }
        }
        let zero = vec![Amount::default(); nodes.len()];
        let mut reserved = vec![zero.clone(); roles.len()];
        let mut allocated = vec![zero.clone(); roles.len()];
        for (i, n) in nodes.iter().enumerate() {
            for (role, cap) in &n.roles {
                let r = roles[role];
                reserved[r][i] = amount(cap.reserved);
                allocated[r][i] = amount(cap.allocated);
            }
        }
        // Room = reserved − what the node reports − what is placed but not
        // yet reported; never less than what etcd says is placed there in
        // all (the node's report may lag behind a start).
        let mut unreported = vec![zero.clone(); roles.len()];
        let mut all = vec![zero; roles.len()];
        for h in active {
            let (Some(&n), Some(&r)) = (index.get(h.node), roles.get(h.role)) else {
                continue;
            };
            all[r][n] = all[r][n].add(h.holds);
            if !h.reported {
                unreported[r][n] = unreported[r][n].add(h.holds);
            }
        }
        let mut free = reserved.clone();
        for r in 0..roles.len() {
            for n in 0..nodes.len() {
                let a = allocated[r][n].add(unreported[r][n]);
                let b = all[r][n];
                let used = Amount {
                    cpus: a.cpus.max(b.cpus),
                    mem_mb: a.mem_mb.max(b.mem_mb),
                    disk_mb: a.disk_mb.max(b.disk_mb),
                };
                free[r][n] = reserved[r][n].sub(used);
            }
        }
        let mut fleet = Fleet {
            nodes,
            index,
            roles,
            reserved,
            free,
            counts: HashMap::new(),
            masks: HashMap::new(),
        };
        for (kind, attribute) in counted {
            fleet
                .counts
                .entry(kind.clone())
                .or_default()
                .entry(attribute.clone())
                .or_default();
        }
        for h in active {
            if let Some(&n) = fleet.index.get(h.node) {
                fleet.count(h.kind, n, 1);
            }
        }
        fleet
    }

    /// The fleet's whole reservation (all roles), for shares.
    pub fn total(&self) -> Amount {
        self.reserved
            .iter()
            .flatten()
            .fold(Amount::default(), |a, b| a.add(*b))
    }

    pub fn node_index(&self, node: &str) -> Option<usize> {
        self.index.get(node).copied()
    }

    /// Bumps (or lowers) the counters of `kind` for node `n`'s values.
    fn count(&mut self, kind: &str, n: usize, delta: isize) -> Vec<(String, String, String)> {
        let node = &self.nodes[n];
        let mut bumped = Vec::new();
        if let Some(by_attr) = self.counts.get_mut(kind) {
            for (attribute, values) in by_attr.iter_mut() {
                if let Some(v) = attr(node, attribute) {
                    let c = values.entry(v.to_owned()).or_default();
                    *c = c.saturating_add_signed(delta);
                    bumped.push((kind.to_owned(), attribute.clone(), v.to_owned()));
                }
            }
        }
        bumped
    }

    pub fn apply(&mut self, n: usize, ask: &Ask<'_>) -> Applied {
        let r = self.roles[ask.role];
        self.free[r][n] = self.free[r][n].sub(ask.need);
        let counted = self.count(ask.kind, n, 1);
        Applied {
            node: n,
            role: r,
            need: ask.need,
            counted,
        }
    }

    pub fn undo(&mut self, a: Applied) {
        self.free[a.role][a.node] = self.free[a.role][a.node].add(a.need);
        for (kind, attribute, value) in a.counted {
            if let Some(c) = self
                .counts
                .get_mut(&kind)
                .and_then(|m| m.get_mut(&attribute))
                .and_then(|m| m.get_mut(&value))
            {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Which nodes pass the part of `c` that depends only on attributes.
    fn mask(&mut self, c: &Constraint) -> &[bool] {
        let nodes = self.nodes;
        self.masks.entry(c.text.clone()).or_insert_with(|| {
            nodes
                .iter()
                .map(|node| {
                    let v = attr(node, &c.attribute);
                    match (&c.op, v) {
                        (Op::Unlike(re), Some(v)) => !re.is_match(v),
                        (Op::Unlike(_), None) => true,
                        (_, None) => false,
                        (Op::Is(want), Some(v)) => v == want,
                        (Op::Like(re), Some(v)) => re.is_match(v),
                        (Op::Cluster(Some(want)), Some(v)) => v == want,
                        (Op::Cluster(None) | Op::GroupBy | Op::MaxPer(_), Some(_)) => true,
                    }
                })
                .collect()
        })
    }

    /// The best node for `ask`, or why none fits.
    pub fn find(&mut self, ask: &Ask<'_>) -> Result<usize, String> {
        if self.nodes.is_empty() {
            return Err("no live node".into());
        }
        let Some(&r) = self.roles.get(ask.role) else {
            return Err(format!("no node reserves role {}", ask.role));
        };
        // Attribute-only masks first (computed once per pass).
        for c in ask.constraints {
            self.mask(c);
        }
        let masks: Vec<&[bool]> = ask
            .constraints
            .iter()
            .map(|c| self.masks[&c.text].as_slice())
            .collect();
        let avoid: Vec<usize> = ask
            .avoid
            .iter()
            .filter_map(|a| self.node_index(a))
            .collect();
        let empty = HashMap::new();
        let values = |attribute: &str| {
            self.counts
                .get(ask.kind)
                .and_then(|m| m.get(attribute))
                .unwrap_or(&empty)
        };
        // CLUSTER without a value: every task of the kind on one value,
        // the one the first took.
        let cluster_value = |attribute: &str| {
            values(attribute)
                .iter()
                .find(|(_, c)| **c > 0)
                .map(|(v, _)| v.clone())
        };
        let dynamic: Vec<(usize, &Constraint, Option<String>)> = ask
            .constraints
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.op, Op::MaxPer(_) | Op::Cluster(None)))
            .map(|(i, c)| (i, c, cluster_value(&c.attribute)))
            .collect();
        let group_by: Vec<&Constraint> = ask
            .constraints
            .iter()
            .filter(|c| matches!(c.op, Op::GroupBy))
            .collect();

        let reserved = &self.reserved[r];
        let free = &self.free[r];
        let mut failed = vec![0usize; ask.constraints.len()];
        let (mut no_room, mut avoided) = (0usize, 0usize);
        let mut best: Option<(f64, usize)> = None;
        let mut candidates: Vec<(usize, f64)> = Vec::new();
        'nodes: for n in 0..self.nodes.len() {
            let res = reserved[n];
            if !ask.need.fits(free[n]) || (res.cpus <= 0.0 && res.mem_mb <= 0.0) {
                no_room += 1;
                continue;
            }
            for (i, m) in masks.iter().enumerate() {
                if !m[n] {
                    failed[i] += 1;
                    continue 'nodes;
                }
            }
            for (i, c, chosen) in &dynamic {
                let v = attr(&self.nodes[n], &c.attribute).unwrap_or_default();
                let ok = match &c.op {
                    Op::MaxPer(max) => values(&c.attribute).get(v).copied().unwrap_or(0) < *max,
                    _ => chosen.as_deref().is_none_or(|want| want == v),
                };
                if !ok {
                    failed[*i] += 1;
                    continue 'nodes;
                }
            }
            if avoid.contains(&n) {
                avoided += 1;
                continue;
            }
            let score = fitness(res, free[n], ask.need, ask.fitness);
            if group_by.is_empty() {
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, n));
                }
            } else {
                candidates.push((n, score));
            }
        }
        if !group_by.is_empty() && !candidates.is_empty() {
            // Spread evenly: only candidates whose value holds the fewest
            // tasks of the kind (among the values candidates offer).
            for c in &group_by {
                let vals = values(&c.attribute);
                let held = |n: usize| {
                    let v = attr(&self.nodes[n], &c.attribute).unwrap_or_default();
                    vals.get(v).copied().unwrap_or(0)
                };
                let least = candidates.iter().map(|(n, _)| held(*n)).min().unwrap_or(0);
                candidates.retain(|(n, _)| held(*n) == least);
            }
            for (n, score) in candidates {
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, n));
                }
            }
        }
        if let Some((_, n)) = best {
            return Ok(n);
        }
        Err(explain(ask, self.nodes.len(), no_room, avoided, &failed))
    }
}

/// Higher is better. Bin-packing: the node's fullness after placement on
/// CPU and memory, averaged (Fenzo's cpuMemBinPacker); spread: emptiness.
fn fitness(reserved: Amount, free: Amount, need: Amount, kind: Fitness) -> f64 {
    let part = |res: f64, free: f64, need: f64| {
        if res > 0.0 {
            ((res - free + need) / res).clamp(0.0, 1.0)
        } else {
            1.0
        }
    };
    let full = (part(reserved.cpus, free.cpus, need.cpus)
        + part(reserved.mem_mb, free.mem_mb, need.mem_mb))
        / 2.0;
    match kind {
        Fitness::BinPack => full,
        Fitness::Spread => 1.0 - full,
    }
}

fn explain(
    ask: &Ask<'_>,
    nodes: usize,
    no_room: usize,
    avoided: usize,
    failed: &[usize],
) -> String {
    let worst = failed
        .iter()
        .enumerate()
        .filter(|(_, f)| **f > 0)
        .max_by_key(|(i, f)| (**f, std::cmp::Reverse(*i)));
    if let Some((i, f)) = worst {
        return format!(
            "no node satisfies {} ({f} of {nodes} nodes with room fail it)",
            ask.constraints[i].text
        );
    }
    if avoided > 0 {
        return "only the node it was withdrawn from fits".into();
    }
    let _ = no_room;
    format!(
        "no node has room in role {} for {} cpus, {} MB",
        ask.role, ask.need.cpus, ask.need.mem_mb
    )
}
