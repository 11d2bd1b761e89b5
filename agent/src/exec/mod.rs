//! `gleaner exec`: a command run inside a running task, as the task runs:
//! its pid, mount and network namespaces, its root, its cgroup (a child
//! cgroup of the task's, so its limits bind and the session can be killed
//! as a whole), its user, rlimits and seccomp filter.
//!
//! ```text
//! client ──POST /v1/tasks/{id}/exec, Upgrade──> agent (runtime/exec.rs)
//!                                                 └─ gleaner-agent nsexec (helper.rs)
//!                                                     joins the exec cgroup, setns
//!                                                     └─ command (task's pid ns,
//!                                                        root, user, filter)
//! ```
//!
//! The byte stream after the upgrade is [`proto`]. **An exec ends with its
//! connection**: the agent kills the exec cgroup when the client goes, and
//! when the command exits (its background children with it).

pub mod client;
pub mod helper;
pub mod proto;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupHandle;

/// The body of `POST /v1/tasks/{id}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments; the program is looked up in the
    /// task's `PATH`.
    pub argv: Vec<String>,
    /// Run it on a terminal (stdout and stderr merged, as `docker exec -t`).
    #[serde(default)]
    pub tty: bool,
    /// Added to (and overriding) the task's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Terminal size, with `tty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

const MAX_ARGS: usize = 1024;
const MAX_ARGV_BYTES: usize = 128 << 10;

impl ExecRequest {
    /// Why the agent refuses it (400), if it does.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("argv: needs a command".into());
        }
        if self.argv.len() > MAX_ARGS {
            return Err(format!("argv: more than {MAX_ARGS} arguments"));
        }
        let bytes: usize = self.argv.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > MAX_ARGV_BYTES {
            return Err(format!("argv and env: more than {MAX_ARGV_BYTES} bytes"));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv: NUL byte".into());
        }
        for (k, v) in &self.env {
            let name_ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!("env: {k:?} is not a variable name"));
            }
            if v.contains('\0') {
                return Err(format!("env: {k}: NUL byte"));
            }
        }
        if !self.tty && (self.rows.is_some() || self.cols.is_some()) {
            return Err("rows/cols: only with tty".into());
        }
        Ok(())
    }
}

/// What the agent tells its helper (a file in the task dir, 0600, read and
/// removed by the helper: the task's environment may hold secrets, argv
/// would show them in `ps`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NsExecConfig {
    /// The task's init (pid 1 of its pid namespace) and its identity.
    pub init_pid: i32,
    pub init_start_ticks: u64,
    /// The exec's own cgroup, a child of the task's.
    pub cgroup: CgroupHandle,
    pub argv: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub nproc_rlimit: Option<u64>,
    pub oom_score_adj: i32,
    pub seccomp: bool,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            tty: false,
            env: BTreeMap::new(),
            rows: None,
            cols: None,
        }
    }

    #[test]
    fn refuses_what_cannot_be_executed() {
        assert!(req(&["ps"]).validate().is_ok());
        assert!(req(&[]).validate().is_err());
        assert!(req(&[""]).validate().is_err());
        assert!(req(&["a\0b"]).validate().is_err());
        let mut r = req(&["env"]);
        r.env.insert("A=B".into(), "x".into());
        assert!(r.validate().is_err());
        let mut r = req(&["env"]);
        r.rows = Some(24);
        assert!(r.validate().is_err());
        assert!(req(&vec!["x"; 2000]).validate().is_err());
    }
}
