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
    // Both limits are written even if the first fails: a memory limit left
    // at its old value because the CPU write failed would be a half-applied
    // change nobody reports. The first error is returned.
    let cpu = cgroups.set_limits(
        role,
        &Limits {
            memory_bytes: None,
            ..limits
        },
    );
    let memory = loop {
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
            other => break other,
        }
    };
    cpu.and(memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{CgroupHandle, CgroupVersion, Features, V1Manager};

    /// The real v1 manager, except that every CPU write fails.
    struct CpuFails(V1Manager);

    impl CgroupManager for CpuFails {
        fn version(&self) -> CgroupVersion {
            self.0.version()
        }
        fn features(&self) -> Features {
            self.0.features()
        }
        fn root_name(&self) -> &str {
            self.0.root_name()
        }
        fn create(&self, rel: &str) -> Result<CgroupHandle, CgroupError> {
            self.0.create(rel)
        }
        fn set_limits(&self, rel: &str, limits: &Limits) -> Result<(), CgroupError> {
            if limits.cpu.is_some() {
                return Err(CgroupError::Io {
                    op: "write",
                    path: format!("{rel}/cpu.cfs_quota_us").into(),
                    err: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            self.0.set_limits(rel, limits)
        }
        fn handle(&self, rel: &str) -> CgroupHandle {
            self.0.handle(rel)
        }
        fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
            self.0.children(rel)
        }
    }

    /// Issue 20 point 4: a failed CPU write no longer skips the memory
    /// limit, and the failure is reported.
    #[tokio::test]
    async fn a_failed_cpu_write_still_writes_memory_and_says_so() {
        let Some(m) = crate::cgroup::v1_test_manager("apply") else {
            return;
        };
        let m = CpuFails(m);
        let amount = Amount {
            cpus: 0.5,
            mem_mb: 96.0,
            disk_mb: 0.0,
        };
        let got = apply(&m, "batch", amount, Instant::now()).await;
        let limit =
            std::fs::read_to_string(m.handle("batch").memory_dir.join("memory.limit_in_bytes"));
        m.handle("").destroy(Duration::from_secs(1)).unwrap();
        let err = got.expect_err("the CPU write failed").to_string();
        assert!(err.contains("cpu.cfs_quota_us"), "{err}");
        assert_eq!(limit.unwrap().trim(), (96u64 << 20).to_string());
    }
}
