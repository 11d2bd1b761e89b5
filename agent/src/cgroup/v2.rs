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
    /// The root below the mount (`system.slice/x.service/gleaner`).
    root_rel: String,
    /// The delegated cgroup's directory (the mount itself in the root).
    base: PathBuf,
    controllers: String,
    features: Features,
}

/// The leaf the agent moves itself (and so its supervisors) into when it
/// starts inside a delegated, non-root cgroup: "no internal processes" forbids
/// processes in a cgroup that enables controllers for its children.
pub const AGENT_LEAF: &str = "gleaner-agent";

/// Where the agent's tree goes, from its own cgroup (`/proc/self/cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The delegated cgroup, relative to the mount ("" is the hierarchy root).
    pub base: String,
    /// The agent still sits in `base` itself and must move into [`AGENT_LEAF`].
    pub move_to_leaf: bool,
}

/// Pure: the agent's own v2 cgroup path (the `0::` line) to its placement.
/// In the root it uses the root (the root may hold processes); elsewhere its
/// own cgroup is the delegated one (systemd `Delegate=yes`), unless it is
/// already in its leaf (restarted by hand from there).
pub fn placement(proc_self_cgroup: &str) -> Option<Placement> {
    let own = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .trim_matches('/');
    // A cgroup removed under us reads "/path (deleted)": no placement.
    if own.ends_with("(deleted)") {
        return None;
    }
    Some(match own.rsplit_once('/') {
        _ if own.is_empty() => Placement {
            base: String::new(),
            move_to_leaf: false,
        },
        Some((parent, AGENT_LEAF)) => Placement {
            base: parent.to_owned(),
            move_to_leaf: false,
        },
        None if own == AGENT_LEAF => Placement {
            base: String::new(),
            move_to_leaf: false,
        },
        _ => Placement {
            base: own.to_owned(),
            move_to_leaf: true,
        },
    })
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
        if root.split('/').next() == Some(AGENT_LEAF) {
            return Err(CgroupError::V2Unusable(format!(
                "cgroup_root {root:?} collides with the agent's own leaf {AGENT_LEAF:?}"
            )));
        }
        let self_path = Path::new("/proc/self/cgroup");
        let text = read_file(self_path)?;
        let place = placement(&text).ok_or_else(|| CgroupError::Parse {
            path: self_path.to_owned(),
            content: text.clone(),
        })?;
        let base = join_rel(&mount, &place.base);
        let available = read_file(&base.join("cgroup.controllers"))?;
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        if !has("cpu") || !has("memory") {
            return Err(CgroupError::V2Unusable(format!(
                "{} offers controllers [{}], need cpu and memory (delegate them)",
                base.display(),
                available.trim()
            )));
        }
        if place.move_to_leaf {
            let leaf = base.join(AGENT_LEAF);
            mkdir(&leaf)?;
            write_file(&leaf.join("cgroup.procs"), "0")?;
            tracing::info!(leaf = %leaf.display(), "moved the agent into its leaf cgroup");
        }
        Self::at(base, &place.base, root, has("pids"), disabled)
    }

    /// Builds the manager on a known base: the delegated cgroup's directory
    /// and its path below the mount (also used by tests on a scratch dir).
    pub fn at(
        base: PathBuf,
        base_rel: &str,
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
        write_file(&base.join("cgroup.subtree_control"), &controllers)?;
        mkdir(&base.join(root))?;
        let manager = V2Manager {
            root: root.to_owned(),
            root_rel: rel_display(base_rel, root),
            features: Features {
                pids,
                oom_kill_counter: !off("oom_kill_counter"),
                cpu_idle: !off("cpu_idle") && base.join(root).join("cpu.idle").exists(),
                freezer: !off("freezer") && base.join(root).join("cgroup.freeze").exists(),
                cgroup_kill: !off("cgroup_kill") && base.join(root).join("cgroup.kill").exists(),
            },
            base,
            controllers,
        };
        // Batch work yields to everything else (see the v1 manager).
        let root_dir = manager.base.join(root);
        if manager.features.cpu_idle {
            write_file(&root_dir.join("cpu.idle"), "1")?;
        } else {
            write_file(&root_dir.join("cpu.weight"), "1")?;
        }
        Ok(manager)
    }

    fn dir(&self, rel: &str) -> PathBuf {
        join_rel(&self.base.join(&self.root), rel)
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
            path: rel_display(&self.root_rel, rel),
            dirs: vec![dir.clone()],
            memory_dir: dir,
            oom_kill_counter: true,
            freezer_dir: None,
            v2_freeze: self.features.freezer,
            v2_kill: self.features.cgroup_kill,
            cpu_escape: None,
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
        let m = V2Manager::at(mount.path().to_owned(), "", "gl", true, &[]).unwrap();
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

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn p(base: &str, move_to_leaf: bool) -> Option<Placement> {
        Some(Placement {
            base: base.to_owned(),
            move_to_leaf,
        })
    }

    #[test]
    fn places_the_tree_by_the_agents_own_cgroup() {
        assert_eq!(placement("0::/\n"), p("", false));
        assert_eq!(
            placement("0::/system.slice/gleaner-agent.service\n"),
            p("system.slice/gleaner-agent.service", true)
        );
        // Restarted from its leaf: same base, no second move.
        assert_eq!(
            placement("0::/system.slice/gleaner-agent.service/gleaner-agent\n"),
            p("system.slice/gleaner-agent.service", false)
        );
        assert_eq!(placement("0::/gleaner-agent\n"), p("", false));
        // Hybrid: the v1 lines are skipped, the unified line counts.
        assert_eq!(
            placement("12:memory:/x\n1:name=systemd:/y\n0::/user.slice/s.scope\n"),
            p("user.slice/s.scope", true)
        );
        assert_eq!(placement("4:memory:/\n"), None, "pure v1: no v2 line");
        assert_eq!(placement("0::/gone (deleted)\n"), None);
    }

    /// Under delegation the tree, handles and task paths are below the
    /// delegated cgroup, never at the hierarchy root.
    #[test]
    fn delegated_tree_stays_below_its_base() {
        let mount = tempfile::tempdir().unwrap();
        let base = mount.path().join("system.slice/a.service");
        std::fs::create_dir_all(&base).unwrap();
        let m = V2Manager::at(base.clone(), "system.slice/a.service", "gl", false, &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("gl/cpu.weight")).unwrap(),
            "1"
        );
        m.create("batch").unwrap();
        let h = m.create("batch/t1").unwrap();
        assert_eq!(h.path, "system.slice/a.service/gl/batch/t1");
        assert_eq!(h.dirs, vec![base.join("gl/batch/t1")]);
        assert!(!mount.path().join("cgroup.subtree_control").exists());
    }
}
