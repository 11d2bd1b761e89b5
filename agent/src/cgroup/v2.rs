//! cgroup v2: one unified tree. Used where the kernel offers it with the cpu
//! and memory controllers (not on CentOS 7, not on this project's CI).

use std::path::{Path, PathBuf};

use super::mountinfo::CgroupMount;
use super::{
    child_names, join_rel, mkdir, quota_us, read_file, shares, shares_to_weight, write_file,
    CgroupError, CgroupHandle, CgroupManager, CgroupVersion, CpuLimit, Features, Limits,
    CFS_PERIOD_US,
};

#[derive(Debug)]
pub struct V2Manager {
    root: String,
    mount: PathBuf,
    controllers: String,
    features: Features,
}

impl V2Manager {
    pub fn new(
        mounts: &[CgroupMount],
        root: &str,
        disabled: &[String],
    ) -> Result<Self, CgroupError> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.mount_point.clone())
            .ok_or_else(|| CgroupError::V2Unusable("no cgroup2 mount".into()))?;
        let available = read_file(&mount.join("cgroup.controllers"))?;
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        if !has("cpu") || !has("memory") {
            return Err(CgroupError::V2Unusable(format!(
                "{} offers controllers [{}], need cpu and memory",
                mount.display(),
                available.trim()
            )));
        }
        Self::at(mount, root, has("pids"), disabled)
    }

    /// Builds the manager on a known mount (also used by tests on a scratch dir).
    pub fn at(
        mount: PathBuf,
        root: &str,
        pids: bool,
        disabled: &[String],
    ) -> Result<Self, CgroupError> {
        let off = |name: &str| disabled.iter().any(|d| d == name);
        let pids = pids && !off("pids_cgroup");
        let controllers = if pids {
            "+cpu +memory +pids"
        } else {
            "+cpu +memory"
        }
        .to_owned();
        write_file(&mount.join("cgroup.subtree_control"), &controllers)?;
        mkdir(&mount.join(root))?;
        let manager = V2Manager {
            root: root.to_owned(),
            features: Features {
                pids,
                oom_kill_counter: !off("oom_kill_counter"),
                cpu_idle: !off("cpu_idle") && mount.join(root).join("cpu.idle").exists(),
            },
            mount,
            controllers,
        };
        // Batch work yields to everything else (see the v1 manager).
        let root_dir = manager.mount.join(root);
        if manager.features.cpu_idle {
            write_file(&root_dir.join("cpu.idle"), "1")?;
        } else {
            write_file(&root_dir.join("cpu.weight"), "1")?;
        }
        Ok(manager)
    }

    fn dir(&self, rel: &str) -> PathBuf {
        join_rel(&self.mount.join(&self.root), rel)
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn features(&self) -> Features {
        self.features
    }

    fn root_name(&self) -> &str {
        &self.root
    }

    fn create(&self, rel: &str) -> Result<CgroupHandle, CgroupError> {
        let dir = self.dir(rel);
        // "No internal processes": controllers are enabled on inner nodes
        // only, and a child's files appear once its parent delegates them.
        if let Some(parent) = dir.parent() {
            write_file(&parent.join("cgroup.subtree_control"), &self.controllers)?;
        }
        mkdir(&dir)?;
        Ok(self.handle(rel))
    }

    fn set_limits(&self, rel: &str, limits: &Limits) -> Result<(), CgroupError> {
        let dir = self.dir(rel);
        match limits.cpu {
            Some(CpuLimit::Quota { cpus }) => write_file(
                &dir.join("cpu.max"),
                &format!("{} {CFS_PERIOD_US}", quota_us(cpus, CFS_PERIOD_US)),
            )?,
            Some(CpuLimit::Shares { cpus }) => {
                write_file(
                    &dir.join("cpu.weight"),
                    &shares_to_weight(shares(cpus)).to_string(),
                )?;
                write_file(&dir.join("cpu.max"), &format!("max {CFS_PERIOD_US}"))?;
            }
            None => {}
        }
        if let Some(bytes) = limits.memory_bytes {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
        }
        if let (Some(max), true) = (limits.pids, self.features.pids) {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        Ok(())
    }

    fn handle(&self, rel: &str) -> CgroupHandle {
        let dir = self.dir(rel);
        CgroupHandle {
            version: CgroupVersion::V2,
            path: rel_display(&self.root, rel),
            dirs: vec![dir.clone()],
            memory_dir: dir,
            oom_kill_counter: true,
        }
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        child_names(&self.dir(rel))
    }
}

fn rel_display(root: &str, rel: &str) -> String {
    Path::new(root)
        .join(rel)
        .to_string_lossy()
        .trim_end_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The v2 file formats, written into a scratch directory standing for a
    /// cgroup2 mount (no v2 controllers on the test hosts).
    #[test]
    fn writes_v2_formats() {
        let mount = tempfile::tempdir().unwrap();
        let m = V2Manager::at(mount.path().to_owned(), "gl", true, &[]).unwrap();
        m.create("batch").unwrap();
        let h = m.create("batch/t1").unwrap();
        m.set_limits(
            "batch/t1",
            &Limits {
                cpu: Some(CpuLimit::Quota { cpus: 0.5 }),
                memory_bytes: Some(64 << 20),
                pids: Some(100),
            },
        )
        .unwrap();
        let dir = mount.path().join("gl/batch/t1");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "100");
        assert_eq!(
            fs::read_to_string(mount.path().join("gl/batch/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        assert_eq!(h.path, "gl/batch/t1");
        m.set_limits(
            "batch/t1",
            &Limits {
                cpu: Some(CpuLimit::Shares { cpus: 1.0 }),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("cpu.weight")).unwrap(), "39");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "max 100000"
        );
    }
}
