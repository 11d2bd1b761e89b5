//! Retention of finished tasks: their records, logs and task dirs are
//! removed after `finished_retention_h`, or oldest first past
//! `finished_max`, so that memory, disk and every scheduling pass stay
//! bounded. The decision ([`to_prune`]) is pure; [`spawn`] applies it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Agent;
use crate::supervisor::zygote::supervisor_alive;

/// What the decision needs to know of one task.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: String,
    /// When it ended; `None` while it has not.
    pub finished_at: Option<DateTime<Utc>>,
    pub group: Option<String>,
    /// Placed by the fleet scheduler and its placement key still there: it
    /// owns the record (a placement seen again must find the id known, or
    /// the task would run twice). Once the key is gone it is kept like any
    /// other task.
    pub placed: bool,
}

/// Ids of the finished tasks to remove: those that ended more than
/// `keep_for` before `now`, then the oldest of the rest past `max`. Never an
/// unfinished task, a placed one, or a member of a group that still has an
/// unfinished member (the group's name stays taken while it runs).
pub(crate) fn to_prune(
    entries: &[Entry],
    now: DateTime<Utc>,
    keep_for: Duration,
    max: usize,
) -> Vec<String> {
    let live_groups: HashSet<&str> = entries
        .iter()
        .filter(|e| e.finished_at.is_none())
        .filter_map(|e| e.group.as_deref())
        .collect();
    let keep_for = chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
    let cutoff = now.checked_sub_signed(keep_for);
    let mut kept: Vec<(DateTime<Utc>, &str)> = Vec::new();
    let mut out = Vec::new();
    for e in entries {
        let Some(at) = e.finished_at else { continue };
        if e.placed || e.group.as_deref().is_some_and(|g| live_groups.contains(g)) {
            continue;
        }
        if cutoff.is_some_and(|c| at < c) {
            out.push(e.id.clone());
        } else {
            kept.push((at, &e.id));
        }
    }
    if kept.len() > max {
        kept.sort();
        let over = kept.len() - max;
        out.extend(kept[..over].iter().map(|(_, id)| id.to_string()));
    }
    out
}

/// How often the sweep runs: often enough for short retentions (tests),
/// at most once a minute.
pub(crate) fn interval(retention_h: f64) -> Duration {
    Duration::from_secs_f64((retention_h * 3600.0 / 4.0).clamp(0.05, 60.0))
}

pub(crate) fn spawn(agent: Arc<Agent>) {
    let every = interval(agent.cfg.finished_retention_h);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let agent = agent.clone();
            // Walks every task and removes directories: off the workers.
            let _ = tokio::task::spawn_blocking(move || agent.prune_finished()).await;
        }
    });
}

impl Agent {
    /// Removes the finished tasks [`to_prune`] picks: from the map first
    /// (lock order: no task lock held), then their token and directory.
    /// Returns how many went.
    pub(crate) fn prune_finished(&self) -> usize {
        let tasks: Vec<super::TaskRef> = self.tasks.lock().unwrap().values().cloned().collect();
        let entries: Vec<Entry> = tasks
            .iter()
            .map(|t| {
                let t = t.lock().unwrap();
                let st = &t.record.status;
                Entry {
                    id: st.id.clone(),
                    finished_at: st
                        .state
                        .is_final()
                        .then(|| st.finished_at.unwrap_or(st.submitted_at)),
                    group: t.record.group.clone(),
                    placed: t.record.placed_by.is_some() && !t.placement_gone,
                }
            })
            .collect();
        drop(tasks);
        let ids = to_prune(
            &entries,
            Utc::now(),
            Duration::from_secs_f64(self.cfg.finished_retention_h * 3600.0),
            self.cfg.finished_max,
        );
        // A final task's supervisor may still be removing its cgroup (the
        // exit is reported first) and holds the lock file in the task dir:
        // the dir, and with it the id, stays until it is done, or a new run
        // of the id would take a new lock instead of waiting for it.
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| !supervisor_alive(&self.data.task(id)))
            .collect();
        if ids.is_empty() {
            return 0;
        }
        let removed: Vec<super::TaskRef> = {
            let mut map = self.tasks.lock().unwrap();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for task in &removed {
            // A final task never changes again: what was decided holds.
            let (token, root) = {
                let t = task.lock().unwrap();
                (t.record.api_token.clone(), t.dir.root().to_owned())
            };
            if let Some(token) = token {
                self.tokens.lock().unwrap().remove_scoped(&token);
            }
            if let Err(e) = std::fs::remove_dir_all(&root) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %root.display(), "remove finished task: {e}");
                }
            }
        }
        tracing::info!(
            removed = removed.len(),
            "finished tasks removed (retention)"
        );
        self.touched();
        removed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn entry(id: &str, finished: Option<i64>, group: Option<&str>, placed: bool) -> Entry {
        Entry {
            id: id.into(),
            finished_at: finished.map(at),
            group: group.map(Into::into),
            placed,
        }
    }

    #[test]
    fn old_ones_go_then_the_oldest_past_the_cap() {
        let e = vec![
            entry("old", Some(0), None, false),
            entry("a", Some(900), None, false),
            entry("b", Some(950), None, false),
            entry("c", Some(990), None, false),
            entry("running", None, None, false),
            entry("placed", Some(0), None, true),
            entry("g.0", Some(0), Some("g"), false),
            entry("g.1", None, Some("g"), false),
            entry("h.0", Some(0), Some("h"), false),
        ];
        let got = to_prune(&e, at(1000), Duration::from_secs(500), 2);
        assert_eq!(got, ["old", "h.0", "a"]);
        let none = to_prune(&e, at(1000), Duration::from_secs(5000), 10);
        assert!(none.is_empty());
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(
            (
                prop::option::of(0i64..1000),
                prop::option::of(0u8..3),
                any::<bool>(),
            ),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (f, g, p))| Entry {
                    id: format!("t{i}"),
                    finished_at: f.map(at),
                    group: g.map(|g| format!("g{g}")),
                    placed: p && i % 3 == 0,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_an_unfinished_placed_or_live_group_task_and_the_cap_holds(
            entries in arb_entries(),
            keep in 0u64..1200,
            max in 0usize..20,
        ) {
            let now = at(1000);
            let got: HashSet<String> =
                to_prune(&entries, now, Duration::from_secs(keep), max).into_iter().collect();
            let live: HashSet<&str> = entries.iter()
                .filter(|e| e.finished_at.is_none())
                .filter_map(|e| e.group.as_deref()).collect();
            let prunable = |e: &Entry| e.finished_at.is_some() && !e.placed
                && !e.group.as_deref().is_some_and(|g| live.contains(g));
            for e in &entries {
                if got.contains(&e.id) {
                    prop_assert!(prunable(e), "{e:?}");
                }
            }
            let left: Vec<&Entry> = entries.iter().filter(|e| prunable(e) && !got.contains(&e.id)).collect();
            prop_assert!(left.len() <= max);
            for e in &left {
                // Kept ones are within the retention and newer than any
                // removed for the cap.
                prop_assert!(e.finished_at.unwrap() >= now - chrono::Duration::seconds(keep as i64));
                for r in entries.iter().filter(|r| got.contains(&r.id)) {
                    if r.finished_at.unwrap() >= now - chrono::Duration::seconds(keep as i64) {
                        prop_assert!(e.finished_at >= r.finished_at);
                    }
                }
            }
        }
    }
}
