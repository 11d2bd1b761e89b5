//! Disk quota: every `disk_check_interval_s`, each running task's writable
//! space (its sandbox and private /tmp; the rootfs is read-only) is
//! measured, and a task over its `disk_mb` is stopped with `disk_limit`. A
//! task group with a shared volume is measured whole too (`pod.rs`): over
//! the sum of its members' `disk_mb`, every running member is stopped.
//! Each measurement is bounded (`disk_check_max_entries`, `du::MAX_DEPTH`,
//! `WALK_MAX_TIME`): past the entry or depth bound, or at an entry it cannot
//! read, the tree counts as over its limit, the rule for a task's sandbox
//! and a group's volume alike. Past the time bound it is only not measured
//! (a neighbour's IO can slow anyone's walk): stopped after `MAX_TIMEOUTS`
//! sweeps in a row, so that a task cannot slow its own walk out of the
//! quota.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Agent;
use crate::du::{du_within, Budget, OverBudget};
use crate::status::{StopReason, TaskState};

/// Longest one measurement may walk; past it, not measured.
pub(super) const WALK_MAX_TIME: Duration = Duration::from_secs(30);
/// Sweeps in a row whose walk ran out of time before a task is stopped.
pub(super) const MAX_TIMEOUTS: u32 = 3;

/// A measurement over its limit: the bytes counted, or why it stopped.
pub(crate) type DiskUse = Result<u64, OverBudget>;

/// The use of `dirs` together within one budget.
pub(super) fn measure(dirs: &[std::path::PathBuf], max_entries: u64) -> DiskUse {
    let mut budget = Budget::new(max_entries, WALK_MAX_TIME);
    dirs.iter().map(|d| du_within(d, &mut budget)).sum()
}

/// Which of a sweep's over-limit tasks to stop: all but those whose walk
/// ran out of time fewer than `MAX_TIMEOUTS` sweeps in a row. `timeouts`
/// carries the count from sweep to sweep (a task measured, or gone, drops
/// out of it).
pub(super) fn to_stop(
    over: Vec<(String, DiskUse)>,
    timeouts: &mut HashMap<String, u32>,
) -> Vec<(String, DiskUse)> {
    let mut counted = HashMap::new();
    let mut stop = Vec::new();
    for (id, used) in over {
        if let Err(OverBudget::Time(_)) = used {
            let n = timeouts.get(&id).copied().unwrap_or(0) + 1;
            counted.insert(id.clone(), n);
            if n < MAX_TIMEOUTS {
                tracing::info!(task = %id, "disk use not measured ({}): retried next sweep ({n} of {MAX_TIMEOUTS})", used.unwrap_err());
                continue;
            }
        }
        stop.push((id, used));
    }
    *timeouts = counted;
    stop
}

pub(super) fn spawn(agent: Arc<Agent>) {
    let interval = Duration::from_secs_f64(agent.cfg.disk_check_interval_s);
    tokio::spawn(async move {
        let mut timeouts = HashMap::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let a = agent.clone();
            let over = tokio::task::spawn_blocking(move || {
                let mut over = a.measure_disk();
                over.extend(a.measure_group_disk());
                over
            })
            .await
            .unwrap_or_default();
            for (id, used) in to_stop(over, &mut timeouts) {
                match used {
                    Ok(b) => {
                        tracing::warn!(task = %id, used_mb = b >> 20, "over its disk_mb: stopping")
                    }
                    Err(e) => {
                        tracing::warn!(task = %id, "disk use not measured ({e}): counted over its disk_mb, stopping")
                    }
                }
                let _ = agent.stop(&id, StopReason::DiskLimit);
            }
        }
    });
}

impl Agent {
    /// Measures every running task with a disk limit; returns those over it
    /// with their use in bytes (or why the walk stopped).
    pub(crate) fn measure_disk(&self) -> Vec<(String, DiskUse)> {
        let started = Instant::now();
        let tasks: Vec<_> = self.tasks.lock().unwrap().values().cloned().collect();
        let mut over = Vec::new();
        let mut measured = 0u64;
        for task in tasks {
            let (id, dir, limit) = {
                let t = task.lock().unwrap();
                let limit = t.record.spec.resources.disk_mb;
                if t.record.status.state != TaskState::Running
                    || t.stopping.is_some()
                    || limit <= 0.0
                {
                    continue;
                }
                (
                    t.record.status.id.clone(),
                    t.dir.clone(),
                    (limit * 1024.0 * 1024.0) as u64,
                )
            };
            let used = measure(&[dir.sandbox(), dir.tmp()], self.cfg.disk_check_max_entries);
            measured += 1;
            if used.map_or(true, |b| b > limit) {
                over.push((id, used));
            }
        }
        let cost = started.elapsed();
        self.counters
            .disk_scan_us
            .store(cost.as_micros() as u64, Ordering::Relaxed);
        self.counters
            .disk_scanned
            .store(measured, Ordering::Relaxed);
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review: a walk slowed past its time bound (by a neighbour's IO, say)
    /// counted as over the limit and the task was stopped at once.
    #[test]
    fn a_timed_out_walk_stops_a_task_only_after_several_sweeps_in_a_row() {
        let late = || Err(OverBudget::Time(WALK_MAX_TIME));
        let mut timeouts = HashMap::new();
        let sweep = |over: Vec<(&str, DiskUse)>, t: &mut HashMap<String, u32>| -> Vec<String> {
            to_stop(
                over.into_iter().map(|(i, u)| (i.to_owned(), u)).collect(),
                t,
            )
            .into_iter()
            .map(|(i, _)| i)
            .collect()
        };
        // Bytes, entries or depth: at once.
        let now = sweep(
            vec![
                ("big", Ok(1 << 30)),
                ("many", Err(OverBudget::Entries(9))),
                ("deep", Err(OverBudget::Depth(512))),
            ],
            &mut timeouts,
        );
        assert_eq!(now, ["big", "many", "deep"]);
        for _ in 1..MAX_TIMEOUTS {
            assert!(sweep(vec![("slow", late()), ("once", late())], &mut timeouts).is_empty());
        }
        // The third in a row stops "slow"; "once" was measured meanwhile.
        assert_eq!(
            sweep(vec![("slow", late()), ("other", Ok(1))], &mut timeouts),
            ["slow", "other"]
        );
        // Its count started again.
        assert!(sweep(vec![("once", late())], &mut timeouts).is_empty());
        assert_eq!(timeouts.get("once"), Some(&1));
    }
}
