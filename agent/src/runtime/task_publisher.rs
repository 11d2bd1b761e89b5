//! Fleet mode, the outbound half: every state change of a task the
//! scheduler placed here goes to `tasks/<id>` (its TaskStatus + `node`).
//!
//! The outbox is the difference between the tasks' current statuses and
//! what was last written successfully: while etcd is away nothing is
//! written and the difference grows; when it is back the latest status of
//! each changed task is written (a task that changed twice meanwhile is
//! written once). After an agent restart nothing counts as written, so every
//! placed task is published again from its recovered state: nothing is
//! lost across restarts, and no file is needed for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp};

use super::etcd::EtcdLink;
use super::Agent;
use crate::status::TaskStatus;
use gleaner_core::fleet::TaskRecord;

/// Changes closer together than this go out in one write.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Safety net for changes nothing announced (e.g. a queued task's message).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// etcd's default limit is 128 operations per transaction.
const OPS_PER_TXN: usize = 64;

/// The statuses in `current` that differ from what was last written.
pub(crate) fn outbox<'a>(
    current: &'a [TaskStatus],
    written: &HashMap<String, TaskStatus>,
) -> Vec<&'a TaskStatus> {
    current
        .iter()
        .filter(|s| written.get(&s.id) != Some(*s))
        .collect()
}

pub(crate) async fn run(agent: Arc<Agent>, link: Arc<EtcdLink>) {
    let mut changes = agent.subscribe_changes();
    let mut written: HashMap<String, TaskStatus> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = sweep.tick() => {}
        }
        let Some(mut client) = link.client().await else {
            continue;
        };
        let current = agent.fleet_statuses();
        let ids: std::collections::HashSet<&str> = current.iter().map(|s| s.id.as_str()).collect();
        written.retain(|id, _| ids.contains(id.as_str()));
        let pending = outbox(&current, &written);
        for chunk in pending.chunks(OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|s| {
                    let record = TaskRecord {
                        status: (*s).clone(),
                        node: agent.node_id.clone(),
                    };
                    TxnOp::put(
                        link.keys.task(&s.id),
                        serde_json::to_vec(&record).unwrap_or_default(),
                        None,
                    )
                })
                .collect();
            match client.txn(Txn::new().and_then(ops)).await {
                Ok(_) => {
                    for s in chunk {
                        written.insert(s.id.clone(), (*s).clone());
                    }
                }
                Err(e) => {
                    // Kept in the outbox: written when etcd answers again.
                    tracing::debug!("publish task states: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::TaskState;

    fn status(id: &str, state: TaskState) -> TaskStatus {
        serde_json::from_value(serde_json::json!({
            "id": id, "role": "batch", "state": state, "reason": null,
            "exit_code": null, "signal": null, "pid": null, "cgroup": null,
            "sandbox": null, "resources": {"cpus": 1.0, "mem_mb": 64.0},
            "submitted_at": "2026-11-22T10:00:00Z", "started_at": null,
            "finished_at": null, "restarts": 0
        }))
        .unwrap()
    }

    #[test]
    fn the_outbox_holds_the_latest_unwritten_state_per_task() {
        let mut written = HashMap::new();
        let now = vec![
            status("a", TaskState::Running),
            status("b", TaskState::Queued),
        ];
        assert_eq!(outbox(&now, &written).len(), 2);
        written.insert("a".into(), status("a", TaskState::Running));
        written.insert("b".into(), status("b", TaskState::Staging));
        // b moved on twice while etcd was away: only its latest goes out.
        let later = vec![
            status("a", TaskState::Running),
            status("b", TaskState::Finished),
        ];
        let out = outbox(&later, &written);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].id.as_str(), out[0].state),
            ("b", TaskState::Finished)
        );
    }
}
