//! Pure app decisions, no I/O, no clock: Marathon's launch backoff, and
//! for one app and its live instances what to start and what to kill now
//! (scale, kill selection, rolling replacement within the upgrade
//! strategy), and whether the app's deployment is done.

use std::time::Duration;

/// Marathon's launch delay after `failures` consecutive failures:
/// `backoff × factor^(failures-1)`, capped at `max`; none before the first.
pub fn launch_delay(failures: u32, backoff_s: f64, factor: f64, max_s: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = (failures - 1).min(10_000) as f64;
    let d = (backoff_s.max(0.0) * factor.max(1.0).powf(exp)).min(max_s.max(0.0));
    let d = if d.is_finite() { d } else { max_s.max(0.0) };
    Duration::from_secs_f64(d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSelection {
    YoungestFirst,
    OldestFirst,
}

/// One live (not finished) instance as the controller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    /// Runs the app's current version.
    pub current: bool,
    /// Placed on a node (not waiting in the queue).
    pub placed: bool,
    /// Running (and healthy, where the app has health checks): counts
    /// toward `minimumHealthCapacity`.
    pub ready: bool,
    /// When it was created (ms); the age order of kill selection.
    pub since_ms: i64,
}

/// What the app wants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub instances: u32,
    pub minimum_health_capacity: f64,
    pub maximum_over_capacity: f64,
    pub kill_selection: KillSelection,
    /// Launching is held back by the backoff delay.
    pub delayed: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// New instances (current version) to create.
    pub start: u32,
    /// Instances to kill, by id.
    pub kill: Vec<String>,
    /// Every instance runs the current version, there are exactly
    /// `instances` of them and all are ready.
    pub done: bool,
}

/// `ceil(n × minimumHealthCapacity)` and `floor(n × (1 + maximumOverCapacity))`,
/// the latter at least `n + 1` when the former is `n` so a rolling
/// replacement can always move (Marathon refuses 1 / 0 at validation).
pub fn bounds(t: &Target) -> (u32, u32) {
    let n = t.instances as f64;
    let min = (n * t.minimum_health_capacity.clamp(0.0, 1.0) - 1e-9)
        .ceil()
        .max(0.0) as u32;
    let mut max = (n * (1.0 + t.maximum_over_capacity.clamp(0.0, 1.0)) + 1e-9).floor() as u32;
    max = max.max(t.instances);
    if min >= t.instances && max == t.instances && t.instances > 0 {
        max += 1;
    }
    (min.min(t.instances), max)
}

/// Orders instances so that the first are the ones to kill first:
/// not placed, then not ready, then by kill selection on age.
fn kill_order(mut v: Vec<&Instance>, sel: KillSelection) -> Vec<&Instance> {
    v.sort_by(|a, b| {
        a.placed
            .cmp(&b.placed)
            .then(a.ready.cmp(&b.ready))
            .then(match sel {
                KillSelection::YoungestFirst => b.since_ms.cmp(&a.since_ms),
                KillSelection::OldestFirst => a.since_ms.cmp(&b.since_ms),
            })
            .then(a.id.cmp(&b.id))
    });
    v
}

/// One step towards the target: never below `minimumHealthCapacity` ready
/// instances through its own kills, never above `maximumOverCapacity`
/// instances through its own starts.
pub fn step(t: &Target, live: &[Instance]) -> Step {
    let (min_ready, max_total) = bounds(t);
    let n = t.instances;
    let new: Vec<&Instance> = live.iter().filter(|i| i.current).collect();
    let old: Vec<&Instance> = live.iter().filter(|i| !i.current).collect();
    let mut kill = Vec::new();

    // Surplus of the current version: scale down by kill selection.
    let new_count = new.len() as u32;
    let mut new_kept = new_count;
    if new_count > n {
        for i in kill_order(new.clone(), t.kill_selection)
            .into_iter()
            .take((new_count - n) as usize)
        {
            kill.push(i.id.clone());
        }
        new_kept = n;
    }
    let ready_new_kept = {
        let killed: Vec<&String> = kill.iter().collect();
        new.iter()
            .filter(|i| i.ready && !killed.contains(&&i.id))
            .count() as u32
    };

    // Old instances: the not-ready ones go at once; ready ones only while
    // enough stay ready, and only as many as new ones could take over.
    let mut ready = ready_new_kept + old.iter().filter(|i| i.ready).count() as u32;
    let mut old_kept = old.len() as u32;
    for i in kill_order(old, t.kill_selection) {
        if !i.ready {
            kill.push(i.id.clone());
            old_kept -= 1;
        } else if ready > min_ready {
            // Keep the total ready at or above the floor.
            kill.push(i.id.clone());
            ready -= 1;
            old_kept -= 1;
        }
    }

    // Start what the current version lacks, within the ceiling.
    let total = new_kept + old_kept;
    let room = max_total.saturating_sub(total);
    let start = if t.delayed {
        0
    } else {
        n.saturating_sub(new_kept).min(room)
    };
    let done = old_kept == 0
        && kill.is_empty()
        && new_count == n
        && new.iter().all(|i| i.ready)
        && start == 0;
    Step { start, kill, done }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inst(id: usize, current: bool, ready: bool) -> Instance {
        Instance {
            id: format!("i{id}"),
            current,
            placed: true,
            ready,
            since_ms: id as i64,
        }
    }

    fn target(n: u32, min: f64, over: f64) -> Target {
        Target {
            instances: n,
            minimum_health_capacity: min,
            maximum_over_capacity: over,
            kill_selection: KillSelection::YoungestFirst,
            delayed: false,
        }
    }

    #[test]
    fn backoff_follows_marathon() {
        assert_eq!(launch_delay(0, 1.0, 1.15, 300.0), Duration::ZERO);
        assert_eq!(launch_delay(1, 1.0, 1.15, 300.0).as_millis(), 1000);
        assert_eq!(launch_delay(2, 1.0, 1.15, 300.0).as_millis(), 1150);
        assert_eq!(launch_delay(3, 1.0, 1.15, 300.0).as_millis(), 1322);
        assert_eq!(launch_delay(200, 1.0, 1.15, 300.0).as_secs(), 300);
        assert_eq!(launch_delay(u32::MAX, 2.0, 2.0, 60.0).as_secs(), 60);
    }

    #[test]
    fn start_scale_up_and_down() {
        let t = target(3, 1.0, 1.0);
        assert_eq!(step(&t, &[]).start, 3);
        let live = [
            inst(1, true, true),
            inst(2, true, true),
            inst(3, true, false),
        ];
        let s = step(&t, &live);
        assert_eq!((s.start, s.kill.len(), s.done), (0, 0, false));
        let live = [
            inst(1, true, true),
            inst(2, true, true),
            inst(3, true, true),
        ];
        assert!(step(&t, &live).done);
        // Scale down: youngest first, unless OLDEST_FIRST.
        let t1 = target(1, 1.0, 1.0);
        assert_eq!(step(&t1, &live).kill, vec!["i3", "i2"]);
        let t1 = Target {
            kill_selection: KillSelection::OldestFirst,
            ..t1
        };
        assert_eq!(step(&t1, &live).kill, vec!["i1", "i2"]);
        // Unplaced (queued) instances go before running ones.
        let mut q = live.to_vec();
        q[0].placed = false;
        q[0].ready = false;
        assert_eq!(step(&target(2, 1.0, 1.0), &q).kill, vec!["i1"]);
        // Delayed: nothing starts.
        let d = Target {
            delayed: true,
            ..target(3, 1.0, 1.0)
        };
        assert_eq!(step(&d, &[]).start, 0);
    }

    #[test]
    fn rolling_restart_half_capacity() {
        // 6 old ready, min 0.5, over 0: kill 3 old first, start 3.
        let t = target(6, 0.5, 0.0);
        let live: Vec<Instance> = (0..6).map(|i| inst(i, false, true)).collect();
        let s = step(&t, &live);
        assert_eq!(s.kill.len(), 3);
        assert_eq!(s.start, 3);
        assert!(!s.done);
    }

    #[test]
    fn rolling_restart_full_capacity_goes_over_first() {
        // min 1, over 0 → one extra allowed, no ready old killed first.
        let t = target(2, 1.0, 0.0);
        let live = [inst(1, false, true), inst(2, false, true)];
        let s = step(&t, &live);
        assert!(s.kill.is_empty());
        assert_eq!(s.start, 1);
        // The new one is ready: one old may go, another new start.
        let live = [
            inst(1, false, true),
            inst(2, false, true),
            inst(3, true, true),
        ];
        let s = step(&t, &live);
        assert_eq!(s.kill.len(), 1);
        assert_eq!(s.start, 1);
    }

    fn arb_live() -> impl Strategy<Value = Vec<Instance>> {
        prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 0..20).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (current, placed, ready))| Instance {
                    id: format!("i{i}"),
                    current,
                    placed,
                    ready: ready && placed,
                    since_ms: i as i64,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_below_min_ready_nor_above_max_total(
            live in arb_live(),
            n in 0u32..12,
            min in 0.0f64..=1.0,
            over in 0.0f64..=1.0,
            delayed in any::<bool>(),
        ) {
            let t = Target { instances: n, minimum_health_capacity: min, maximum_over_capacity: over,
                kill_selection: KillSelection::YoungestFirst, delayed };
            let (min_ready, max_total) = bounds(&t);
            let s = step(&t, &live);
            let ready_before = live.iter().filter(|i| i.ready).count() as u32;
            let ready_after = live.iter().filter(|i| i.ready && !s.kill.contains(&i.id)).count() as u32;
            // Its own kills never take the ready count below the floor
            // (unless it was already below, then it kills no ready one).
            prop_assert!(ready_after >= min_ready.min(ready_before));
            let total_after = live.len() as u32 - s.kill.len() as u32 + s.start;
            let total_before = live.len() as u32;
            prop_assert!(total_after <= max_total.max(total_before));
            // Kills are distinct and real.
            let mut k = s.kill.clone();
            k.sort();
            k.dedup();
            prop_assert_eq!(k.len(), s.kill.len());
            prop_assert!(s.kill.iter().all(|id| live.iter().any(|i| &i.id == id)));
            // Current instances are never killed below the target.
            let cur_after = live.iter().filter(|i| i.current && !s.kill.contains(&i.id)).count() as u32;
            let cur_before = live.iter().filter(|i| i.current).count() as u32;
            prop_assert!(cur_after >= n.min(cur_before));
            if delayed { prop_assert_eq!(s.start, 0); }
            if s.done {
                prop_assert!(live.iter().all(|i| i.current && i.ready));
                prop_assert_eq!(live.len() as u32, n);
            }
        }

        #[test]
        fn repeated_steps_converge(n in 0u32..10, old in 0usize..10, min in 0.0f64..=1.0, over in 0.0f64..=1.0) {
            // Instances become ready the step after they start.
            let t = Target { instances: n, minimum_health_capacity: min, maximum_over_capacity: over,
                kill_selection: KillSelection::OldestFirst, delayed: false };
            let (min_ready, _) = bounds(&t);
            let mut live: Vec<Instance> = (0..old).map(|i| inst(i, false, true)).collect();
            let mut next = old;
            for _ in 0..100 {
                let s = step(&t, &live);
                if s.done { break; }
                live.retain(|i| !s.kill.contains(&i.id));
                let ready = live.iter().filter(|i| i.ready).count() as u32;
                prop_assert!(ready >= min_ready.min(old as u32));
                for i in live.iter_mut() { i.ready = true; }
                for _ in 0..s.start { live.push(inst(next, true, false)); next += 1; }
            }
            prop_assert!(step(&t, &live).done || n == 0 && live.is_empty() && step(&t, &live).done);
        }
    }
}
