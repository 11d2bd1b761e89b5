//! Attribute changes (HTTP or etcd) and their consequence: running tasks
//! whose constraints stop holding are drained (SIGTERM, grace, SIGKILL;
//! DRAINED), and queued ones are admitted or told why they wait.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::attributes::{Source, Sourced};
use super::{Agent, AgentError, TaskRef};
use crate::constraints;
use crate::spec::check_name;
use crate::status::{StopReason, TaskState};

const MAX_VALUE_LEN: usize = 1024;

impl Agent {
    pub fn attributes(&self) -> BTreeMap<String, String> {
        self.attributes.lock().unwrap().effective()
    }

    /// What constraints see: the attributes plus `hostname` = the node id
    /// (FLEET.md), as the scheduler evaluates them.
    pub fn constraint_attributes(&self) -> BTreeMap<String, String> {
        let mut attrs = self.attributes();
        attrs.insert(
            gleaner_core::fleet::HOSTNAME_ATTRIBUTE.to_owned(),
            self.node_id.clone(),
        );
        attrs
    }

    pub fn attributes_with_sources(&self) -> BTreeMap<String, Sourced> {
        self.attributes.lock().unwrap().with_sources()
    }

    /// Sets an attribute: through etcd when configured (the watch brings it
    /// back), locally otherwise. Applied before this returns.
    pub async fn set_attribute(
        self: &Arc<Self>,
        name: &str,
        value: &str,
    ) -> Result<Sourced, AgentError> {
        check_name("attribute", name).map_err(|e| AgentError::Invalid(e.to_string()))?;
        if value.len() > MAX_VALUE_LEN || value.contains('\0') {
            return Err(AgentError::Invalid(format!(
                "value: at most {MAX_VALUE_LEN} bytes, no NUL"
            )));
        }
        let source = match &self.etcd {
            Some(link) => {
                link.put_attribute(name, value)
                    .await
                    .map_err(AgentError::Unavailable)?;
                Source::Etcd
            }
            None => Source::Http,
        };
        let changed = self.attributes.lock().unwrap().set(name, value, source)?;
        if changed {
            self.attributes_changed();
        }
        Ok(Sourced {
            value: value.to_owned(),
            source,
        })
    }

    pub async fn remove_attribute(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        check_name("attribute", name).map_err(|e| AgentError::Invalid(e.to_string()))?;
        {
            let attrs = self.attributes.lock().unwrap();
            if !attrs.contains(name) {
                return Err(AgentError::NotFound(format!(
                    "attribute {name:?} is not set"
                )));
            }
            if attrs.is_static_only(name) {
                return Err(AgentError::Conflict(format!(
                    "attribute {name:?} is static (config or --attribute); change it there"
                )));
            }
        }
        if let Some(link) = &self.etcd {
            link.delete_attribute(name)
                .await
                .map_err(AgentError::Unavailable)?;
        }
        let changed = self.attributes.lock().unwrap().remove(name)?;
        if changed {
            self.attributes_changed();
        }
        Ok(())
    }

    /// Drains running tasks whose constraints no longer hold, then lets the
    /// queue look again.
    pub(crate) fn attributes_changed(self: &Arc<Self>) {
        self.touched();
        let attrs = self.constraint_attributes();
        let tasks: Vec<TaskRef> = self.tasks.lock().unwrap().values().cloned().collect();
        for task in tasks {
            let verdict = {
                let t = task.lock().unwrap();
                let running = matches!(
                    t.record.status.state,
                    TaskState::Staging | TaskState::Running
                );
                if !running || t.stopping.is_some() || t.record.spec.constraints.is_empty() {
                    continue;
                }
                // Counting operators (MAX_PER, UNIQUE) were settled at
                // admission; here only the attributes are checked again.
                match constraints::parse(&t.record.spec.constraints) {
                    Ok(cs) => constraints::check(&cs, &attrs, 0)
                        .err()
                        .map(|why| (t.record.status.id.clone(), why)),
                    Err(_) => None,
                }
            };
            if let Some((id, why)) = verdict {
                tracing::info!(task = %id, "draining: {why}");
                task.lock().unwrap().stop_note = Some(format!("drained: {why}"));
                let _ = self.stop(&id, StopReason::Drained);
            }
        }
        self.schedule();
    }
}
