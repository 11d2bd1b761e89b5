//! Cgroups behind one trait, [`CgroupManager`], with a v1 and a v2
//! implementation chosen once at start-up ([`detect`]).
//!
//! Layout: everything lives under `<root>` in each hierarchy the agent uses
//! (v1: `/sys/fs/cgroup/<controller>/<root>/<role>/<task>`; v2: one tree).
//! Paths given to the manager are relative to `<root>`.
//!
//! A [`CgroupHandle`] is the serialisable view of one cgroup that the
//! supervisor needs without the agent: join it, read OOM kills, remove it.
//! A thin layer over the cgroup files rather than cgroups-rs: see
//! ARCHITECTURE.md ("Why not cgroups-rs").

pub mod mountinfo;
mod v1;
mod v2;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) use v1::tests::test_manager as v1_test_manager;
pub use v1::V1Manager;
pub use v2::V2Manager;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("cgroup controller {0} is not mounted")]
    MissingController(&'static str),
    #[error("cgroup v2 is not usable here: {0}")]
    V2Unusable(String),
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cgroup {path} still has processes after {waited_ms} ms")]
    Busy { path: PathBuf, waited_ms: u128 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |err| CgroupError::Io {
        op,
        path: path.to_owned(),
        err,
    }
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("mkdir", path)(e)),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// Which version to use: `auto` picks v2 where it is usable, v1 otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionChoice {
    #[default]
    Auto,
    V1,
    V2,
}

/// Kernel features detected at start-up. Each can be forced off (config
/// `disable_features`) so that tests run the fallback on a new kernel too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Features {
    /// A pids controller (kernel >= 4.3). Fallback: RLIMIT_NPROC.
    pub pids: bool,
    /// An `oom_kill` counter (v1 >= 4.13, v2). Fallback: failcnt + SIGKILL.
    pub oom_kill_counter: bool,
    /// `cpu.idle` (>= 5.15). Fallback: lowest cpu.shares only.
    pub cpu_idle: bool,
    /// Freezing a cgroup before signalling it, so that no pid read from it
    /// can exit and be reused before the signal lands: v1's freezer
    /// hierarchy (mounted), v2's `cgroup.freeze` (>= 5.2). Fallback: pids
    /// are signalled one by one as read.
    pub freezer: bool,
    /// v2 `cgroup.kill` (>= 5.14): SIGKILL to the whole cgroup at once.
    /// Fallback: the freezer, else one by one.
    pub cgroup_kill: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuLimit {
    /// Hard ceiling: quota = cpus x period.
    Quota { cpus: f64 },
    /// Relative weight: cpus x 1024 shares.
    Shares { cpus: f64 },
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub cpu: Option<CpuLimit>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// v1 default CFS period; also used for v2's `cpu.max`.
pub const CFS_PERIOD_US: u64 = 100_000;
/// The kernel's smallest accepted quota.
const MIN_QUOTA_US: u64 = 1_000;

pub fn quota_us(cpus: f64, period_us: u64) -> u64 {
    ((cpus * period_us as f64).round() as u64).max(MIN_QUOTA_US)
}

/// The kernel's smallest cpu.shares: the weight of gleaner's root cgroup.
pub const MIN_SHARES: u64 = 2;

pub fn shares(cpus: f64) -> u64 {
    ((cpus * 1024.0).round() as u64).clamp(MIN_SHARES, 262_144)
}

/// v1 shares to v2 weight, the conversion runc and systemd use.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

pub trait CgroupManager: Send + Sync {
    fn version(&self) -> CgroupVersion;
    fn features(&self) -> Features;
    /// Name of the root, as configured.
    fn root_name(&self) -> &str;
    /// Creates `rel` (below the root) in every hierarchy; existing is fine.
    /// The parent must exist.
    fn create(&self, rel: &str) -> Result<CgroupHandle, CgroupError>;
    fn set_limits(&self, rel: &str, limits: &Limits) -> Result<(), CgroupError>;
    /// The handle of `rel`, whether it exists or not.
    fn handle(&self, rel: &str) -> CgroupHandle;
    /// Names of the child cgroups of `rel` ("" is the root).
    fn children(&self, rel: &str) -> Result<Vec<String>, CgroupError>;
}

/// Picks and initialises the manager: creates the root in every hierarchy.
pub fn detect(
    root: &str,
    choice: VersionChoice,
    disabled: &[String],
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    let mounts = mountinfo::cgroup_mounts()?;
    let manager: Box<dyn CgroupManager> = match choice {
        VersionChoice::V1 => Box::new(V1Manager::new(&mounts, root, disabled)?),
        VersionChoice::V2 => Box::new(V2Manager::new(&mounts, root, disabled)?),
        VersionChoice::Auto => match V2Manager::new(&mounts, root, disabled) {
            Ok(m) => Box::new(m),
            Err(v2_err) => {
                tracing::debug!("cgroup v2 not used: {v2_err}");
                Box::new(V1Manager::new(&mounts, root, disabled)?)
            }
        },
    };
    Ok(manager)
}

/// How close to the limit the peak must come to count as "hit the limit".
const OOM_PEAK_SLACK: u64 = 256 << 10;

/// One cgroup, as the supervisor sees it: plain paths, no manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupHandle {
    pub version: CgroupVersion,
    /// Path relative to each hierarchy's mount, e.g. `gleaner/batch/t1`.
    pub path: String,
    /// The cgroup's directory in every hierarchy used (one for v2).
    pub dirs: Vec<PathBuf>,
    pub memory_dir: PathBuf,
    pub oom_kill_counter: bool,
    /// v1: the cgroup's directory in the freezer hierarchy (one of `dirs`).
    #[serde(default)]
    pub freezer_dir: Option<PathBuf>,
    /// v2: `cgroup.freeze` is usable.
    #[serde(default)]
    pub v2_freeze: bool,
    /// v2: `cgroup.kill` is usable.
    #[serde(default)]
    pub v2_kill: bool,
    /// v1: the task's directory in the cpu hierarchy, and the agent's own
    /// cgroup there (outside the SCHED_IDLE root), where dying processes
    /// go to get the CPU their exit needs ([`escape_dying`](Self::escape_dying)).
    #[serde(default)]
    pub cpu_escape: Option<(PathBuf, PathBuf)>,
}

/// Thaws a cgroup when dropped: a signal path never leaves it frozen.
struct Thaw {
    file: PathBuf,
    value: &'static str,
}

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.file, self.value) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(file = %self.file.display(), "thaw: {e}");
            }
        }
    }
}

/// Longest wait for a cgroup to freeze; a task in uninterruptible sleep
/// can hold it off. After it the pids are signalled anyway.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

impl CgroupHandle {
    /// Opens the join file in every hierarchy, so that a single-threaded
    /// process can join later, after its root changed and /sys is out of
    /// sight. v1 uses `tasks`: moving one thread skips the global
    /// threadgroup lock whose writer waits for an RCU grace period (5-20 ms
    /// on 4.x+ kernels, on every launch).
    pub fn open_procs(&self) -> Result<Vec<(PathBuf, fs::File)>, CgroupError> {
        let file = match self.version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.procs",
        };
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join(file);
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                Ok((path, f))
            })
            .collect()
    }

    /// Moves the calling process into the cgroup through files from
    /// [`open_procs`](Self::open_procs).
    pub fn join_self(procs: &mut [(PathBuf, fs::File)]) -> Result<(), CgroupError> {
        use std::io::Write;
        for (path, f) in procs {
            f.write_all(b"0").map_err(io_err("write", path))?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.memory_dir.is_dir()
    }

    /// Moves this cgroup's dying processes (SIGKILL pending, or already in
    /// their exit), and `also` (the task's init: our code, which must
    /// forward a stop promptly), out of the SCHED_IDLE root in the cpu
    /// hierarchy, into the agent's own cgroup there. On a busy host an
    /// idle-class process waits seconds for the CPU its exit needs; a dying
    /// process runs no code of its own again, so it takes nothing from the
    /// business. Memory and the rest stay charged where they were. v1 only
    /// (v2 is one hierarchy: leaving the cgroup would leave its memory
    /// limit). Returns how many moved.
    pub fn escape_dying(&self, also: Option<i32>) -> usize {
        let Some((cpu_dir, escape)) = &self.cpu_escape else {
            return 0;
        };
        let Ok(procs) = fs::read_to_string(cpu_dir.join("cgroup.procs")) else {
            return 0;
        };
        let target = escape.join("cgroup.procs");
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&pid| Some(pid) == also || dying(pid))
            .filter(|pid| fs::write(&target, pid.to_string()).is_ok())
            .count()
    }

    /// v1: no CPU quota on this cgroup any more, so that while it is being
    /// removed it never bounds its parent's quota from below (v1 refuses a
    /// parent quota under a child's). v2 has no such rule (nor the file).
    pub fn lift_cpu_quota(&self) {
        for dir in &self.dirs {
            let quota = dir.join("cpu.cfs_quota_us");
            if quota.exists() {
                let _ = fs::write(&quota, "-1");
            }
        }
    }

    /// No process in the cgroup and no child cgroup (in the memory
    /// hierarchy, where every task process is); false when unreadable.
    pub(crate) fn is_empty_leaf(&self) -> bool {
        let no_children = match fs::read_dir(&self.memory_dir) {
            Ok(mut entries) => {
                !entries.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            }
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        no_children && self.pids().is_ok_and(|p| p.is_empty())
    }

    /// Processes in the cgroup (host pids).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let path = self.memory_dir.join("cgroup.procs");
        let text = match fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.map_err(io_err("read", &path))?,
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `signal` to every process in the cgroup. v2 SIGKILL:
    /// `cgroup.kill`. Otherwise the cgroup is frozen first where it can be,
    /// so that no process read from it exits (its pid reused by another
    /// process) or forks before the signal lands; it is thawed after. The
    /// fallback (no freezer) is racy against forks and exits: callers loop
    /// until [`pids`](Self::pids) is empty.
    pub fn signal_all(&self, signal: i32) -> Result<usize, CgroupError> {
        if signal == libc::SIGKILL && self.v2_kill {
            let n = self.pids()?.len();
            let kill = self.memory_dir.join("cgroup.kill");
            return match write_file(&kill, "1") {
                Err(CgroupError::Io { err, .. }) if err.kind() == io::ErrorKind::NotFound => Ok(0),
                other => other.map(|()| n),
            };
        }
        let _thaw = self.freeze();
        let pids = self.pids()?;
        for &pid in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(pids.len())
    }

    /// Freezes the cgroup and waits (up to [`FREEZE_WAIT`]) until it is;
    /// `None` without a freezer or when the cgroup is gone.
    fn freeze(&self) -> Option<Thaw> {
        let (file, frozen, thawed, state, done): (PathBuf, &str, &str, PathBuf, &str) =
            match (&self.freezer_dir, self.v2_freeze) {
                (Some(dir), _) => (
                    dir.join("freezer.state"),
                    "FROZEN",
                    "THAWED",
                    dir.join("freezer.state"),
                    "FROZEN",
                ),
                (None, true) => (
                    self.memory_dir.join("cgroup.freeze"),
                    "1",
                    "0",
                    self.memory_dir.join("cgroup.events"),
                    "frozen 1",
                ),
                (None, false) => return None,
            };
        fs::write(&file, frozen).ok()?;
        let thaw = Thaw {
            file,
            value: thawed,
        };
        let start = Instant::now();
        loop {
            match fs::read_to_string(&state) {
                Ok(s) if s.lines().any(|l| l.trim() == done) => break,
                Ok(_) if start.elapsed() < FREEZE_WAIT => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => {
                    tracing::warn!(cgroup = %self.path, "not frozen after {FREEZE_WAIT:?}; signalling anyway");
                    break;
                }
            }
        }
        Some(thaw)
    }

    /// Whether the kernel OOM-killed a process in this cgroup.
    /// `died_by_sigkill` feeds the fallback for kernels without a counter.
    pub fn oom_killed(&self, died_by_sigkill: bool) -> bool {
        let kv = |file: &str, key: &str| -> Option<u64> {
            let text = fs::read_to_string(self.memory_dir.join(file)).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        };
        match (self.version, self.oom_kill_counter) {
            (CgroupVersion::V2, _) => kv("memory.events", "oom_kill").unwrap_or(0) > 0,
            (CgroupVersion::V1, true) => kv("memory.oom_control", "oom_kill").unwrap_or(0) > 0,
            (CgroupVersion::V1, false) => {
                // No counter (3.10): the task died by a SIGKILL we did not
                // send, and usage reached the limit (failcnt on 3.10; newer
                // kernels leave failcnt at 0, so also look at the peak).
                let num = |file: &str| {
                    fs::read_to_string(self.memory_dir.join(file))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let failed = num("memory.failcnt") + num("memory.memsw.failcnt") > 0;
                let limit = num("memory.limit_in_bytes");
                let peaked =
                    limit > 0 && num("memory.max_usage_in_bytes") + OOM_PEAK_SLACK >= limit;
                died_by_sigkill && (failed || peaked)
            }
        }
    }

    /// Kills what is left and removes the cgroup in every hierarchy. Missing
    /// is fine; idempotent.
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        loop {
            // An empty leaf (the usual case: the task's init has exited
            // and the kernel took its pid namespace) is removed as it is:
            // freezing it flips a kernel-wide static key twice, IPIs to
            // every CPU, for nothing. Nothing can enter an empty task
            // cgroup but through the agent, which launches no run here. A
            // cgroup with children (a group's, a role's, a task's with an
            // exec helper's) is killed as a whole as before: v2 lists no
            // process in an inner node.
            if !self.is_empty_leaf() {
                let _ = self.signal_all(libc::SIGKILL);
            }
            match self.remove_dirs() {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(match e {
                        CgroupError::Io { err, path, .. }
                            if err.raw_os_error() == Some(libc::EBUSY) =>
                        {
                            CgroupError::Busy {
                                path,
                                waited_ms: start.elapsed().as_millis(),
                            }
                        }
                        other => other,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn remove_dirs(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            remove_tree(dir)?;
        }
        Ok(())
    }
}

/// Whether process `pid` is dying: every one of its threads is (see
/// [`thread_dying`]), its thread list read again after the check and
/// unchanged (a thread born meanwhile came from a live one). The leader
/// alone says nothing: a main thread that called exit(2), not
/// exit_group(2), is a zombie in its exit while the other threads run on,
/// and writing the pid to `cgroup.procs` moves all of them.
fn dying(pid: i32) -> bool {
    let threads = |pid: i32| -> Option<Vec<i32>> {
        let mut t: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        t.sort_unstable();
        Some(t)
    };
    let Some(before) = threads(pid) else {
        return false;
    };
    !before.is_empty()
        && before.iter().all(|&tid| thread_dying(pid, tid))
        && threads(pid).is_some_and(|after| after == before)
}

/// Whether one thread runs no code of its own again: SIGKILL pending (sent
/// to the process or a fatal signal's default turned into one: always the
/// whole group's exit), or in its exit (`PF_EXITING`).
fn thread_dying(pid: i32, tid: i32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    const PF_EXITING: u64 = 0x4;
    let base = format!("/proc/{pid}/task/{tid}");
    let pending = fs::read_to_string(format!("{base}/status")).is_ok_and(|s| {
        s.lines().any(|l| {
            let Some((k, v)) = l.split_once(':') else {
                return false;
            };
            matches!(k, "SigPnd" | "ShdPnd")
                && u64::from_str_radix(v.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
        })
    });
    pending
        || fs::read_to_string(format!("{base}/stat")).is_ok_and(|s| {
            // Fields after the command: state is the 1st, flags the 7th.
            s.rfind(')').is_some_and(|i| {
                s[i + 1..]
                    .split_whitespace()
                    .nth(6)
                    .and_then(|f| f.parse::<u64>().ok())
                    .is_some_and(|f| f & PF_EXITING != 0)
            })
        })
}

/// rmdir of a cgroup and its descendants, deepest first.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err("readdir", dir))?,
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // v1: an rmdir'ed cgroup lives on, unseen, until the kernel releases it
    // (seconds on 6.1), and its quota still bounds its parent's from below:
    // a role could not shrink under a task that just ended (EINVAL). An
    // unlimited child never does. v2 has no such file.
    let quota = dir.join("cpu.cfs_quota_us");
    if quota.exists() {
        let _ = fs::write(&quota, "-1");
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("rmdir", dir)(e)),
        _ => Ok(()),
    }
}

fn child_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(io_err("readdir", dir))?,
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        base.to_owned()
    } else {
        base.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_conversions() {
        assert_eq!(quota_us(0.5, 100_000), 50_000);
        assert_eq!(quota_us(2.0, 100_000), 200_000);
        assert_eq!(quota_us(0.001, 100_000), 1_000);
        assert_eq!(shares(0.5), 512);
        assert_eq!(shares(0.0001), 2);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
