//! Placements of one group, gathered before they are submitted together
//! (pure: the placement worker feeds it and acts on what it returns).
//!
//! The scheduler writes every member of a group in one transaction, so
//! they arrive together: in one full read, or in one watch response. A
//! member that never comes (its key deleted before this agent saw it)
//! would hold the others for ever, so a group waits at most a bound, and
//! a full read (everything present, at one revision) settles every group
//! at once. A group is admitted whole or not at all: the members present
//! are then refused, and the scheduler learns it through `tasks/<id>`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gleaner_core::fleet::{PlacedGroup, Placement};

/// Most members a placed group may list (a gang has at most 50).
pub(crate) const MAX_MEMBERS: usize = 64;

/// Placements of members, in the group's order.
pub(crate) type Members = Vec<(String, Placement)>;

#[derive(Debug)]
pub(crate) enum Offer {
    /// More members to come.
    Wait,
    /// Every member is here: submit them together.
    Ready(PlacedGroup, Members),
    /// These cannot be admitted, and why.
    Reject(Members, String),
}

struct Waiting {
    group: PlacedGroup,
    have: BTreeMap<String, Placement>,
    since: Instant,
}

impl Waiting {
    fn missing(&self) -> Vec<&str> {
        self.group
            .members
            .iter()
            .filter(|m| !self.have.contains_key(*m))
            .map(String::as_str)
            .collect()
    }
}

#[derive(Default)]
pub(crate) struct Gather {
    waiting: BTreeMap<String, Waiting>,
}

/// What is wrong with a placement's group on its own.
fn check(id: &str, g: &PlacedGroup) -> Result<(), String> {
    crate::spec::check_name("group.id", &g.id).map_err(|e| e.to_string())?;
    if g.members.is_empty() || g.members.len() > MAX_MEMBERS {
        return Err(format!(
            "group {}: 1 to {MAX_MEMBERS} members, got {}",
            g.id,
            g.members.len()
        ));
    }
    if !g.members.iter().any(|m| m == id) {
        return Err(format!("group {}: does not list {id} as a member", g.id));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = g.members.iter().find(|m| !seen.insert(m.as_str())) {
        return Err(format!("group {}: member {dup} listed twice", g.id));
    }
    Ok(())
}

impl Gather {
    /// A placement that names a group (`p.group` is `Some`).
    pub(crate) fn offer(&mut self, id: String, p: Placement, now: Instant) -> Offer {
        let Some(group) = p.group.clone() else {
            return Offer::Reject(vec![(id, p)], "not a group member".into());
        };
        if let Err(why) = check(&id, &group) {
            return Offer::Reject(vec![(id, p)], why);
        }
        if let Some(w) = self.waiting.get(&group.id) {
            if w.group != group {
                let w = self.waiting.remove(&group.id).expect("present");
                let mut all: Members = w.have.into_iter().collect();
                all.push((id, p));
                return Offer::Reject(
                    all,
                    format!("group {}: its members' placements disagree", group.id),
                );
            }
        }
        let w = self
            .waiting
            .entry(group.id.clone())
            .or_insert_with(|| Waiting {
                group: group.clone(),
                have: BTreeMap::new(),
                since: now,
            });
        w.have.insert(id, p);
        if !w.missing().is_empty() {
            return Offer::Wait;
        }
        let mut w = self.waiting.remove(&group.id).expect("present");
        let members = group
            .members
            .iter()
            .map(|m| (m.clone(), w.have.remove(m).expect("not missing")))
            .collect();
        Offer::Ready(group, members)
    }

    /// A member's key was deleted: if it was waiting, its group can never
    /// be whole; the others are returned to be refused.
    pub(crate) fn remove(&mut self, id: &str) -> Option<(Members, String)> {
        let gid = self
            .waiting
            .iter()
            .find(|(_, w)| w.have.contains_key(id))
            .map(|(g, _)| g.clone())?;
        let w = self.waiting.remove(&gid)?;
        let rest: Members = w.have.into_iter().filter(|(m, _)| m != id).collect();
        let why = format!("group {gid}: member {id}'s placement was deleted before the group was whole; a group is admitted whole");
        Some((rest, why))
    }

    /// Groups that waited `bound` or more, to be refused.
    pub(crate) fn expire(&mut self, now: Instant, bound: Duration) -> Vec<(Members, String)> {
        let old: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.since) >= bound)
            .map(|(g, _)| g.clone())
            .collect();
        old.into_iter()
            .filter_map(|g| self.waiting.remove(&g).map(|w| (g, w)))
            .map(|(g, w)| {
                let why = format!(
                    "group {g}: members {} never arrived within {} s; a group is admitted whole",
                    w.missing().join(", "),
                    bound.as_secs()
                );
                (w.have.into_iter().collect(), why)
            })
            .collect()
    }

    /// Every group still waiting, to be refused: after a full read, what is
    /// missing is not coming.
    pub(crate) fn take_all(&mut self) -> Vec<(Members, String)> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(g, w)| {
                let why = format!(
                    "group {g}: members {} are not among this node's placements; a group is admitted whole",
                    w.missing().join(", ")
                );
                (w.have.into_iter().collect(), why)
            })
            .collect()
    }

    /// Forgets every waiting group (a full read follows and offers again
    /// whatever is still present).
    pub(crate) fn clear(&mut self) {
        self.waiting.clear();
    }

    /// When the oldest waiting group runs out of time.
    pub(crate) fn deadline(&self, bound: Duration) -> Option<Instant> {
        self.waiting.values().map(|w| w.since + bound).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(id: &str, group: Option<(&str, &[&str])>) -> (String, Placement) {
        let mut v = serde_json::json!({
            "spec": {"id": id, "cmd": "true", "resources": {"cpus": 0.1, "mem_mb": 16}},
            "job": id.split('.').next().unwrap(), "attempt": 1,
            "placed_at": "2026-12-07T10:00:00Z"
        });
        if let Some((gid, members)) = group {
            v["group"] = serde_json::json!({"id": gid, "gang": "g", "members": members});
        }
        (id.to_owned(), serde_json::from_value(v).unwrap())
    }

    fn ids(m: &Members) -> Vec<&str> {
        m.iter().map(|(id, _)| id.as_str()).collect()
    }

    const B: Duration = Duration::from_secs(10);

    #[test]
    fn a_group_is_ready_once_every_member_is_here_in_its_order() {
        let mut g = Gather::default();
        let t = Instant::now();
        let members: &[&str] = &["a.1", "b.1"];
        let (id, p) = placement("b.1", Some(("a.1.pod", members)));
        assert!(matches!(g.offer(id, p, t), Offer::Wait));
        assert_eq!(g.deadline(B), Some(t + B));
        let (id, p) = placement("a.1", Some(("a.1.pod", members)));
        match g.offer(id, p, t) {
            Offer::Ready(group, m) => {
                assert_eq!(group.id, "a.1.pod");
                assert_eq!(ids(&m), ["a.1", "b.1"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.deadline(B), None);
        // A group of one is ready at once.
        let (id, p) = placement("c.1", Some(("c.1.pod", &["c.1"])));
        assert!(matches!(g.offer(id, p, t), Offer::Ready(..)));
    }

    #[test]
    fn a_member_that_never_comes_refuses_the_others() {
        let mut g = Gather::default();
        let t = Instant::now();
        let members: &[&str] = &["a.1", "b.1", "c.1"];
        let (id, p) = placement("a.1", Some(("a.1.pod", members)));
        g.offer(id, p, t);
        assert!(g.expire(t + B / 2, B).is_empty());
        let out = g.expire(t + B, B);
        assert_eq!(out.len(), 1);
        assert_eq!(ids(&out[0].0), ["a.1"]);
        assert!(out[0].1.contains("b.1, c.1 never arrived"), "{}", out[0].1);
        // After a full read: refused at once.
        let (id, p) = placement("b.1", Some(("a.1.pod", members)));
        g.offer(id, p, t);
        let out = g.take_all();
        assert_eq!(ids(&out[0].0), ["b.1"]);
        assert!(out[0].1.contains("a.1, c.1 are not among"), "{}", out[0].1);
        assert_eq!(g.deadline(B), None);
    }

    #[test]
    fn a_deleted_member_refuses_the_others_now() {
        let mut g = Gather::default();
        let t = Instant::now();
        let members: &[&str] = &["a.1", "b.1", "c.1"];
        for id in ["a.1", "b.1"] {
            let (id, p) = placement(id, Some(("a.1.pod", members)));
            g.offer(id, p, t);
        }
        assert!(g.remove("x.1").is_none());
        let (rest, why) = g.remove("b.1").unwrap();
        assert_eq!(ids(&rest), ["a.1"]);
        assert!(why.contains("b.1's placement was deleted"), "{why}");
        assert_eq!(g.deadline(B), None);
    }

    #[test]
    fn odd_groups_are_refused() {
        let mut g = Gather::default();
        let t = Instant::now();
        let (id, p) = placement("a.1", Some(("a.1.pod", &["b.1"])));
        assert!(
            matches!(g.offer(id, p, t), Offer::Reject(_, why) if why.contains("does not list a.1"))
        );
        let (id, p) = placement("a.1", Some(("bad/name", &["a.1"])));
        assert!(matches!(g.offer(id, p, t), Offer::Reject(..)));
        let (id, p) = placement("a.1", Some(("a.1.pod", &["a.1", "a.1"])));
        assert!(matches!(g.offer(id, p, t), Offer::Reject(_, why) if why.contains("twice")));
        // Two members that name the same group differently: both refused.
        let (id, p) = placement("a.1", Some(("a.1.pod", &["a.1", "b.1"])));
        g.offer(id, p, t);
        let (id, p) = placement("b.1", Some(("a.1.pod", &["a.1", "b.1", "c.1"])));
        match g.offer(id, p, t) {
            Offer::Reject(m, why) => {
                assert_eq!(ids(&m), ["a.1", "b.1"]);
                assert!(why.contains("disagree"));
            }
            other => panic!("{other:?}"),
        }
    }
}
