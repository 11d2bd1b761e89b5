//! Disk quota: every `disk_check_interval_s`, each running task's writable
//! space (its sandbox and private /tmp; the rootfs is read-only) is
//! measured, and a task over its `disk_mb` is stopped with `disk_limit`. A
//! task group with a shared volume is measured whole too (`pod.rs`): over
//! the sum of its members' `disk_mb`, every running member is stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Agent;
use crate::status::{StopReason, TaskState};

pub(super) fn spawn(agent: Arc<Agent>) {
    let interval = Duration::from_secs_f64(agent.cfg.disk_check_interval_s);
    tokio::spawn(async move {
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
            for (id, used) in over {
                tracing::warn!(task = %id, used_mb = used >> 20, "over its disk_mb: stopping");
                let _ = agent.stop(&id, StopReason::DiskLimit);
            }
        }
    });
}

impl Agent {
    /// Measures every running task with a disk limit; returns those over it
    /// with their use in bytes.
    pub(crate) fn measure_disk(&self) -> Vec<(String, u64)> {
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
            let used = crate::images::du(&dir.sandbox()) + crate::images::du(&dir.tmp());
            measured += 1;
            if used > limit {
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
