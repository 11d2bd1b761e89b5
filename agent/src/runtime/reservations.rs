//! Per-role reservations: persisted in `reservations.json`, enforced by each
//! role's parent cgroup (CPU quota and memory limit), changed live.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupError, CgroupManager, CpuLimit, Limits};
use crate::fsutil::{self, FsError};
use crate::scheduler::Amount;

pub const RESERVATIONS_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReservationFile {
    pub schema: u32,
    pub roles: BTreeMap<String, Amount>,
}

pub fn load(path: &Path) -> Result<Option<BTreeMap<String, Amount>>, String> {
    match fsutil::read_json::<serde_json::Value>(path) {
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("{e}; refusing to start")),
        Ok(v) => {
            let schema = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(0);
            if schema > RESERVATIONS_SCHEMA as u64 {
                return Err(format!(
                    "{}: schema {schema} is newer than this agent's {RESERVATIONS_SCHEMA}; refusing to start",
                    path.display()
                ));
            }
            let file: ReservationFile = serde_json::from_value(v).map_err(|e| {
                format!(
                    "{}: invalid content: {e}; refusing to start",
                    path.display()
                )
            })?;
            Ok(Some(file.roles))
        }
    }
}

pub fn save(path: &Path, roles: &BTreeMap<String, Amount>) -> Result<(), FsError> {
    fsutil::write_json_atomic(
        path,
        &ReservationFile {
            schema: RESERVATIONS_SCHEMA,
            roles: roles.clone(),
        },
    )
}

/// Limits of a role's parent cgroup for a reservation.
pub fn role_limits(amount: Amount) -> Limits {
    Limits {
        cpu: Some(CpuLimit::Quota { cpus: amount.cpus }),
        // The kernel needs a few pages even for an empty reservation.
        memory_bytes: Some(((amount.mem_mb.max(4.0)) * 1024.0 * 1024.0) as u64),
        pids: None,
    }
}

/// Writes a role's limits. Lowering memory below what the role's tasks use
/// is refused by the kernel (EBUSY): retried until the preempted tasks are
/// gone or `deadline` passes.
pub async fn apply(
    cgroups: &dyn CgroupManager,
    role: &str,
    amount: Amount,
    deadline: Instant,
) -> Result<(), CgroupError> {
    cgroups.create(role)?;
    let limits = role_limits(amount);
    cgroups.set_limits(
        role,
        &Limits {
            memory_bytes: None,
            ..limits
        },
    )?;
    loop {
        match cgroups.set_limits(
            role,
            &Limits {
                cpu: None,
                ..limits
            },
        ) {
            Err(CgroupError::Io { err, .. })
                if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
