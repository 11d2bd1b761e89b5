//! Host ports for new tasks (spec `ports`), from the node's `port_range`,
//! never one held by a task that is not final ([`crate::ports`]).

use std::collections::BTreeSet;

use super::{Agent, AgentError, TaskRecord, TaskRef};

impl Agent {
    /// Fills `status.ports` of the records that ask for ports. The caller
    /// holds `ports::ALLOCATION` until the records are in the task map.
    pub(super) fn give_ports(&self, records: &mut [TaskRecord]) -> Result<(), AgentError> {
        if records.iter().all(|r| r.spec.ports.is_empty()) {
            return Ok(());
        }
        let tasks: Vec<TaskRef> = self.unfinished();
        let mut in_use: BTreeSet<u16> = BTreeSet::new();
        for t in &tasks {
            let t = t.lock().unwrap();
            if !t.record.status.state.is_final() {
                in_use.extend(t.record.status.ports.iter().copied());
            }
        }
        for r in records.iter_mut().filter(|r| !r.spec.ports.is_empty()) {
            let got = crate::ports::allocate(self.cfg.port_range, &in_use, &r.spec.ports)
                .map_err(|e| AgentError::Invalid(format!("ports: {e}")))?;
            in_use.extend(got.iter().copied());
            r.status.ports = got;
        }
        Ok(())
    }
}
