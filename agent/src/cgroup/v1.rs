//! cgroup v1: one hierarchy per controller (or co-mounted ones), the layout
//! of CentOS 7 and of this project's test machines.

use std::path::{Path, PathBuf};

use super::mountinfo::CgroupMount;
use super::{
    child_names, join_rel, mkdir, quota_us, read_file, shares, write_file, CgroupError,
    CgroupHandle, CgroupManager, CgroupVersion, CpuLimit, Features, Limits, CFS_PERIOD_US,
};

#[derive(Debug)]
pub struct V1Manager {
    root: String,
    cpu: PathBuf,
    memory: PathBuf,
    pids: Option<PathBuf>,
    freezer: Option<PathBuf>,
    /// The agent's own cgroup in the cpu hierarchy when it is outside the
    /// root: where dying task processes are moved (`escape_dying`).
    escape: Option<PathBuf>,
    /// Distinct mount points the agent creates its cgroups in.
    hierarchies: Vec<PathBuf>,
    features: Features,
}

fn find(mounts: &[CgroupMount], controller: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.controllers.iter().any(|c| c == controller))
        .map(|m| m.mount_point.clone())
}

impl V1Manager {
    pub fn new(
        mounts: &[CgroupMount],
        root: &str,
        disabled: &[String],
    ) -> Result<Self, CgroupError> {
        let off = |name: &str| disabled.iter().any(|d| d == name);
        let cpu = find(mounts, "cpu").ok_or(CgroupError::MissingController("cpu"))?;
        let memory = find(mounts, "memory").ok_or(CgroupError::MissingController("memory"))?;
        let cpuacct = find(mounts, "cpuacct");
        let pids = find(mounts, "pids").filter(|_| !off("pids_cgroup"));
        // Not mounted on every host (nor needed: a fallback exists).
        let freezer = find(mounts, "freezer").filter(|_| !off("freezer"));
        let mut hierarchies = vec![cpu.clone(), memory.clone()];
        hierarchies.extend(cpuacct.iter().cloned());
        hierarchies.extend(pids.iter().cloned());
        hierarchies.extend(freezer.iter().cloned());
        hierarchies.dedup();
        hierarchies.sort();
        hierarchies.dedup();

        for h in &hierarchies {
            mkdir(&h.join(root))?;
        }
        // 3.10 defaults to a flat memory hierarchy; limits on a role's parent
        // only bind its tasks when use_hierarchy is on. Newer kernels ignore it.
        let use_hierarchy = memory.join(root).join("memory.use_hierarchy");
        if read_file(&use_hierarchy)
            .map(|s| s.trim() != "1")
            .unwrap_or(false)
        {
            write_file(&use_hierarchy, "1")?;
        }
        let oom_control =
            read_file(&memory.join(root).join("memory.oom_control")).unwrap_or_default();
        let features = Features {
            pids: pids.is_some(),
            oom_kill_counter: !off("oom_kill_counter")
                && oom_control.lines().any(|l| l.starts_with("oom_kill ")),
            cpu_idle: !off("cpu_idle") && cpu.join(root).join("cpu.idle").exists(),
            freezer: freezer.is_some(),
            cgroup_kill: false,
        };
        // Batch work yields to everything else between the monitor's
        // samples: SCHED_IDLE where the kernel has it, else the lowest
        // weight. An idle group refuses a shares write.
        let idle = cpu.join(root).join("cpu.idle");
        if features.cpu_idle {
            write_file(&idle, "1")?;
        } else {
            if idle.exists() {
                write_file(&idle, "0")?;
            }
            write_file(
                &cpu.join(root).join("cpu.shares"),
                &super::MIN_SHARES.to_string(),
            )?;
        }
        let escape = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_cpu_cgroup(&text))
            .map(|rel| cpu.join(rel.trim_start_matches('/')))
            .filter(|d| d.is_dir() && !d.starts_with(cpu.join(root)));
        Ok(V1Manager {
            root: root.to_owned(),
            escape,
            cpu,
            memory,
            pids,
            freezer,
            hierarchies,
            features,
        })
    }

    fn dir(&self, mount: &Path, rel: &str) -> PathBuf {
        join_rel(&mount.join(&self.root), rel)
    }

    fn rel_path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{rel}", self.root)
        }
    }
}

/// This process's cgroup in the v1 cpu hierarchy, from /proc/self/cgroup
/// (`N:cpu,cpuacct:/path`).
fn own_cpu_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.to_owned())
    })
}

/// Lowers every quota under `dir` above `cpus` CPUs to `cpus`, deepest
/// first so that each write satisfies the kernel's parent >= child rule.
fn clamp_descendants(dir: &Path, cpus: f64) -> Result<(), CgroupError> {
    for name in child_names(dir)? {
        let child = dir.join(&name);
        clamp_descendants(&child, cpus)?;
        let path = child.join("cpu.cfs_quota_us");
        let quota: i64 = match read_file(&path).map(|s| s.trim().parse()) {
            Ok(Ok(q)) => q,
            // Gone meanwhile, or unreadable: the retry will tell.
            _ => continue,
        };
        let period: u64 = read_file(&child.join("cpu.cfs_period_us"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CFS_PERIOD_US);
        let limit = quota_us(cpus, period);
        if quota > 0 && quota as u64 > limit {
            tracing::warn!(cgroup = %child.display(), quota, limit, "lowering a child's cpu quota to its parent's new one");
            match write_file(&path, &limit.to_string()) {
                Err(CgroupError::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

impl CgroupManager for V1Manager {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn features(&self) -> Features {
        self.features
    }

    fn root_name(&self) -> &str {
        &self.root
    }

    fn create(&self, rel: &str) -> Result<CgroupHandle, CgroupError> {
        for h in &self.hierarchies {
            mkdir(&self.dir(h, rel))?;
        }
        Ok(self.handle(rel))
    }

    fn set_limits(&self, rel: &str, limits: &Limits) -> Result<(), CgroupError> {
        let cpu = self.dir(&self.cpu, rel);
        match limits.cpu {
            Some(CpuLimit::Quota { cpus }) => {
                let period = read_file(&cpu.join("cpu.cfs_period_us"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(CFS_PERIOD_US);
                let path = cpu.join("cpu.cfs_quota_us");
                let quota = quota_us(cpus, period).to_string();
                match write_file(&path, &quota) {
                    Err(CgroupError::Io { err, .. })
                        if err.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        // v1 refuses a parent's quota below a child's (the
                        // kernel's tg_cfs_schedulable_down): a task being
                        // preempted, or one whose cgroup is still going away,
                        // may hold more. Bring the subtree down, then retry.
                        clamp_descendants(&cpu, cpus)?;
                        write_file(&path, &quota)?;
                    }
                    other => other?,
                }
            }
            Some(CpuLimit::Shares { cpus }) => {
                write_file(&cpu.join("cpu.shares"), &shares(cpus).to_string())?;
                write_file(&cpu.join("cpu.cfs_quota_us"), "-1")?;
            }
            None => {}
        }
        if let Some(bytes) = limits.memory_bytes {
            let mem = self.dir(&self.memory, rel);
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            let limit = mem.join("memory.limit_in_bytes");
            // memsw must stay >= the memory limit at every step.
            let current: u64 = read_file(&limit)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX);
            let value = bytes.to_string();
            if memsw.exists() && bytes > current {
                write_file(&memsw, &value)?;
                write_file(&limit, &value)?;
            } else {
                write_file(&limit, &value)?;
                if memsw.exists() {
                    write_file(&memsw, &value)?;
                }
            }
        }
        if let (Some(max), Some(pids)) = (limits.pids, &self.pids) {
            write_file(&self.dir(pids, rel).join("pids.max"), &max.to_string())?;
        }
        Ok(())
    }

    fn handle(&self, rel: &str) -> CgroupHandle {
        CgroupHandle {
            version: CgroupVersion::V1,
            path: self.rel_path(rel),
            dirs: self.hierarchies.iter().map(|h| self.dir(h, rel)).collect(),
            memory_dir: self.dir(&self.memory, rel),
            oom_kill_counter: self.features.oom_kill_counter,
            freezer_dir: self.freezer.as_ref().map(|f| self.dir(f, rel)),
            v2_freeze: false,
            v2_kill: false,
            cpu_escape: self
                .escape
                .as_ref()
                .map(|e| (self.dir(&self.cpu, rel), e.clone())),
        }
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        child_names(&self.dir(&self.memory, rel))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manager under `gleaner-unit-<name>-<pid>` for a test that needs
    /// root and the v1 cpu and memory hierarchies; None (said on stderr)
    /// when this host has not.
    pub(crate) fn test_manager(name: &str) -> Option<V1Manager> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let mounts = super::super::mountinfo::cgroup_mounts().ok()?;
        let root = format!("gleaner-unit-{name}-{}", std::process::id());
        let m = V1Manager::new(&mounts, &root, &[]).ok();
        if m.is_none() {
            eprintln!("skipped: no cgroup v1 cpu/memory hierarchies");
        }
        m
    }

    /// A `sleep 60` that first joins every hierarchy of `h` itself.
    fn spawn_joined(h: &CgroupHandle) -> std::process::Child {
        let join: Vec<String> = h
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"for f in "$@"; do echo $$ > "$f"; done; exec sleep 60"#)
            .arg("sh")
            .args(&join)
            .spawn()
            .unwrap()
    }

    #[test]
    fn own_cpu_cgroup_finds_the_cpu_line() {
        let text = "12:pids:/a\n4:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/s\n";
        assert_eq!(
            own_cpu_cgroup(text).as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(own_cpu_cgroup("3:cpuacct:/a\n2:cpuset:/b\n0::/c\n"), None);
    }

    /// `destroy` skips the freeze and kill only for an empty leaf: a child
    /// cgroup (v2 lists no process in an inner node) or a process makes
    /// it kill first; an empty leaf goes at once.
    #[test]
    fn only_an_empty_leaf_is_removed_without_a_kill() {
        let Some(m) = test_manager("v1leaf") else {
            return;
        };
        m.create("p").unwrap();
        m.create("p/c").unwrap();
        m.create("leaf").unwrap();
        let (p, c, leaf) = (m.handle("p"), m.handle("p/c"), m.handle("leaf"));
        let parent_is_leaf = p.is_empty_leaf();
        let empty_is_leaf = c.is_empty_leaf();
        let mut child = spawn_joined(&leaf);
        let t0 = std::time::Instant::now();
        while leaf.pids().unwrap_or_default().is_empty() && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let busy_is_leaf = leaf.is_empty_leaf();
        let destroyed = leaf.destroy(std::time::Duration::from_secs(10));
        let _ = child.wait();
        m.handle("")
            .destroy(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            (parent_is_leaf, empty_is_leaf, busy_is_leaf),
            (false, true, false)
        );
        destroyed.expect("the busy leaf is killed and removed");
    }

    /// A SIGKILLed process that has not run its exit yet (held frozen here,
    /// as the idle class holds it on a busy host) leaves the idle root in
    /// the cpu hierarchy; a live one stays.
    #[test]
    fn escape_dying_moves_only_dying_processes() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Ok(mounts) = super::super::mountinfo::cgroup_mounts() else {
            return;
        };
        if find(&mounts, "freezer").is_none() {
            eprintln!("skipped: no v1 freezer hierarchy");
            return;
        }
        let root = format!("gleaner-unit-v1escape-{}", std::process::id());
        let Ok(m) = V1Manager::new(&mounts, &root, &[]) else {
            eprintln!("skipped: no cgroup v1 cpu/memory hierarchies");
            return;
        };
        m.create("t").unwrap();
        let h = m.handle("t");
        let (task_cpu, escape) = h
            .cpu_escape
            .clone()
            .expect("the test runs outside the root");
        let (mut live, mut doomed) = (spawn_joined(&h), spawn_joined(&h));
        let in_cpu = |dir: &Path, pid: u32| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        };
        let t0 = std::time::Instant::now();
        while !(in_cpu(&task_cpu, live.id()) && in_cpu(&task_cpu, doomed.id()))
            && t0.elapsed().as_secs() < 20
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let freezer = h.freezer_dir.clone().unwrap().join("freezer.state");
        std::fs::write(&freezer, "FROZEN").unwrap();
        while std::fs::read_to_string(&freezer).unwrap().trim() != "FROZEN"
            && t0.elapsed().as_secs() < 30
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        unsafe { libc::kill(doomed.id() as i32, libc::SIGKILL) };
        let moved = h.escape_dying(None);
        let result = (
            moved,
            in_cpu(&escape, doomed.id()),
            in_cpu(&task_cpu, live.id()),
        );
        std::fs::write(&freezer, "THAWED").unwrap();
        let _ = live.kill();
        let _ = (live.wait(), doomed.wait());
        m.handle("")
            .destroy(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(result, (1, true, true));
    }

    /// A task cannot pass for dying: a process whose main thread exited
    /// (its leader a zombie, PF_EXITING) while another thread still runs
    /// code is live; moving it would take every live thread out of the
    /// idle root and its CPU limit for the whole grace of a stop.
    #[test]
    fn a_process_whose_main_thread_exited_is_not_dying() {
        let Some(m) = test_manager("v1zombie") else {
            return;
        };
        m.create("t").unwrap();
        let h = m.handle("t");
        let (task_cpu, escape) = h
            .cpu_escape
            .clone()
            .expect("the test runs outside the root");
        extern "C" fn live_thread(_: *mut libc::c_void) -> libc::c_int {
            loop {
                // SAFETY: pause(2) has no preconditions.
                unsafe { libc::pause() };
            }
        }
        let mut stack = vec![0u8; 64 * 1024];
        let mut go = [0i32; 2];
        // SAFETY: pipe(2) into a 2-int array.
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
        // SAFETY: the child makes only raw system calls (no allocation) until
        // its main thread exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let mut b = 0u8;
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                let top = stack.as_mut_ptr().add(stack.len() - 64).cast();
                let flags = libc::CLONE_VM
                    | libc::CLONE_FS
                    | libc::CLONE_FILES
                    | libc::CLONE_SIGHAND
                    | libc::CLONE_THREAD
                    | libc::CLONE_SYSVSEM;
                libc::clone(live_thread, top, flags, std::ptr::null_mut());
                // The main thread alone exits (not exit_group).
                libc::syscall(libc::SYS_exit, 0);
            }
            unreachable!();
        }
        for d in &h.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
        }
        unsafe { libc::write(go[1], b"x".as_ptr().cast(), 1) };
        // Wait for the leader to be a zombie with a second thread alive.
        let t0 = std::time::Instant::now();
        let ready = || {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
            let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count())
                .unwrap_or(0);
            zombie && threads == 2
        };
        while !ready() && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let was_ready = ready();
        let moved = h.escape_dying(None);
        let escaped = std::fs::read_to_string(escape.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == pid.to_string());
        let stayed = std::fs::read_to_string(task_cpu.join("tasks"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() != pid.to_string());
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(go[0]);
            libc::close(go[1]);
        }
        m.handle("")
            .destroy(std::time::Duration::from_secs(10))
            .unwrap();
        assert!(was_ready, "the test process never reached its state");
        assert_eq!((moved, escaped, stayed), (0, false, true));
    }

    /// Real v1 hierarchies (root only): the kernel refuses a parent's quota
    /// below a child's; set_limits brings the child down first. CI's 6.1
    /// guests hit this while a preempted task's cgroup was still there.
    #[test]
    fn a_parent_quota_below_a_childs_lowers_the_child() {
        let Some(m) = test_manager("v1clamp") else {
            return;
        };
        let quota = |cpus: f64| Limits {
            cpu: Some(CpuLimit::Quota { cpus }),
            ..Default::default()
        };
        m.create("batch").unwrap();
        m.create("batch/t1").unwrap();
        m.create("batch/t1/inner").unwrap();
        m.set_limits("batch", &quota(1.0)).unwrap();
        m.set_limits("batch/t1", &quota(0.5)).unwrap();
        m.set_limits("batch/t1/inner", &quota(0.4)).unwrap();
        let read = |rel: &str| {
            read_file(&m.dir(&m.cpu, rel).join("cpu.cfs_quota_us"))
                .unwrap()
                .trim()
                .to_owned()
        };
        let shrunk = m.set_limits("batch", &quota(0.25));
        let got = (read("batch"), read("batch/t1"), read("batch/t1/inner"));
        // Growing back leaves the children where they are (they are being
        // preempted when this happens in the agent).
        let grown = m.set_limits("batch", &quota(1.5)).map(|_| read("batch"));
        m.handle("")
            .destroy(std::time::Duration::from_secs(1))
            .unwrap();
        shrunk.unwrap();
        assert_eq!(got, ("25000".into(), "25000".into(), "25000".into()));
        assert_eq!(grown.unwrap(), "150000");
    }

    /// Processes that each start the next and exit ("hoppers"): a pid read
    /// from cgroup.procs is gone, or reused, by the time it is signalled.
    fn start_hoppers(m: &V1Manager, rel: &str, dir: &Path) -> std::process::Child {
        use std::os::unix::fs::PermissionsExt;
        let hop = dir.join("hop");
        std::fs::write(&hop, "#!/bin/sh\n\"$0\" &\nexit 0\n").unwrap();
        std::fs::set_permissions(&hop, std::fs::Permissions::from_mode(0o755)).unwrap();
        let join: Vec<String> = m
            .handle(rel)
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"h=$1; shift; for f in "$@"; do echo $$ > "$f"; done; for i in 1 2 3 4; do "$h" & done; wait"#)
            .arg("sh")
            .arg(&hop)
            .args(&join)
            .spawn()
            .unwrap()
    }

    /// Issue 20 point 7: frozen first, one signal_all reaches every process
    /// of a cgroup whose processes keep replacing themselves; with the
    /// freezer forced off, the fallback needs the caller's loop (destroy).
    #[test]
    fn one_signal_reaches_every_process_when_the_cgroup_is_frozen_first() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Ok(mounts) = super::super::mountinfo::cgroup_mounts() else {
            return;
        };
        if find(&mounts, "freezer").is_none() {
            eprintln!("skipped: no v1 freezer hierarchy");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for off in [false, true] {
            let root = format!("gleaner-unit-v1freeze-{}-{off}", std::process::id());
            let disabled: Vec<String> = if off { vec!["freezer".into()] } else { vec![] };
            let Ok(m) = V1Manager::new(&mounts, &root, &disabled) else {
                eprintln!("skipped: no cgroup v1 cpu/memory hierarchies");
                return;
            };
            assert_eq!(m.features().freezer, !off);
            m.create("t").unwrap();
            let h = m.handle("t");
            assert_eq!(h.freezer_dir.is_some(), !off);
            let mut starter = start_hoppers(&m, "t", dir.path());
            let t0 = std::time::Instant::now();
            while h.pids().unwrap().len() < 4 && t0.elapsed().as_secs() < 5 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            let signalled = h.signal_all(libc::SIGKILL).unwrap();
            // A killed process still needs CPU to exit, which a loaded
            // machine may not give it for seconds; a process the signal
            // missed never leaves (hoppers replace themselves forever), so
            // a long bound still fails on a miss.
            let t1 = std::time::Instant::now();
            while !h.pids().unwrap().is_empty() && t1.elapsed().as_secs() < 30 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let left = h.pids().unwrap();
            let destroyed = m.handle("").destroy(std::time::Duration::from_secs(5));
            let _ = starter.wait();
            destroyed.unwrap();
            assert!(signalled > 0);
            if !off {
                assert!(left.is_empty(), "survived one frozen signal_all: {left:?}");
            }
        }
    }
}
