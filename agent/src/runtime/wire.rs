//! TEMPORARY stand-in for gleaner_core::fleet until core lands on main.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::{Resources, TaskSpec};
use crate::status::TaskStatus;

#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }
    pub fn node_info(&self, node: &str) -> String {
        format!("{}/nodes/{node}/info", self.prefix)
    }
    pub fn placements_prefix(&self, node: &str) -> String {
        format!("{}/placements/{node}/", self.prefix)
    }
    pub fn placement(&self, node: &str, task: &str) -> String {
        format!("{}/placements/{node}/{task}", self.prefix)
    }
    pub fn task(&self, task: &str) -> String {
        format!("{}/tasks/{task}", self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleResources {
    pub reserved: Resources,
    pub allocated: Resources,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub address: String,
    pub agent_url: String,
    pub version: String,
    pub roles: BTreeMap<String, RoleResources>,
    pub attributes: BTreeMap<String, String>,
    pub port_ranges: Vec<[u16; 2]>,
    pub reported_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub spec: TaskSpec,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    pub placed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    #[serde(flatten)]
    pub status: TaskStatus,
    pub node: String,
}
