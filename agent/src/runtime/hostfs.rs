//! What the host file system lets tasks reach: the kernel features the task
//! init uses to build its root (detected once), the `nosuid,nodev` mount
//! of the task dirs, and which host directories may be a task's rootfs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroup::mountinfo::{parse_all, MountEntry};
use crate::config::AgentConfig;
use crate::supervisor::RootSwitch;

/// Detected at start-up; each can be forced off with `disable_features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SandboxFeatures {
    /// `pivot_root`, or `move_chroot` where the root is a RAM file system
    /// (initramfs: the kernel refuses pivot_root) or `pivot_root` is disabled.
    pub root_switch: RootSwitch,
    /// openat2 with RESOLVE_BENEATH (5.6+). Fallback: an O_NOFOLLOW walk.
    pub openat2: bool,
    /// mount_setattr(AT_RECURSIVE) (5.12+). Fallback: a remount per mount.
    pub mount_setattr: bool,
}

pub fn detect(cfg: &AgentConfig) -> SandboxFeatures {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root_switch = if cfg.feature_disabled("pivot_root") || !pivot_root_possible(&mountinfo) {
        RootSwitch::MoveChroot
    } else {
        RootSwitch::PivotRoot
    };
    SandboxFeatures {
        root_switch,
        openat2: crate::safeopen::init(cfg.feature_disabled("openat2")),
        mount_setattr: !cfg.feature_disabled("mount_setattr")
            && crate::supervisor::mount_setattr_available(),
    }
}

/// pivot_root needs the current root to be a mount point that is not the
/// initial RAM file system (`rootfs`, or `ramfs`): the kernel answers
/// EINVAL otherwise, as on diskless hosts that never leave the initramfs
/// or inside a plain chroot.
pub fn pivot_root_possible(mountinfo: &str) -> bool {
    parse_all(mountinfo)
        .iter()
        .filter(|m| m.mount_point == Path::new("/"))
        .last()
        .is_some_and(|m| m.fstype != "rootfs" && m.fstype != "ramfs")
}

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {err}")]
pub struct HostFsError {
    what: &'static str,
    path: PathBuf,
    err: String,
}

/// Makes `tasks` (the parent of every sandbox and task /tmp) a `nosuid,nodev`
/// mount on the host, so a setuid file or a device node a task leaves in its
/// sandbox means nothing outside the task. A bind of the directory onto
/// itself, made once; a restarted agent finds it in place.
pub fn secure_tasks_dir(tasks: &Path) -> Result<(), HostFsError> {
    use nix::mount::{mount, MsFlags};
    let err = |what, e: nix::Error| HostFsError {
        what,
        path: tasks.to_owned(),
        err: e.to_string(),
    };
    let canonical = std::fs::canonicalize(tasks).map_err(|e| HostFsError {
        what: "resolve",
        path: tasks.to_owned(),
        err: e.to_string(),
    })?;
    let top = |canonical: &Path| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        parse_all(&mountinfo)
            .into_iter()
            .filter(|m| m.mount_point == canonical)
            .last()
    };
    let none: Option<&str> = None;
    let m = match top(&canonical) {
        Some(m) if is_nosuid_nodev(&m) => return Ok(()),
        Some(m) => m,
        None => {
            mount(Some(&canonical), &canonical, none, MsFlags::MS_BIND, none)
                .map_err(|e| err("bind", e))?;
            top(&canonical).ok_or_else(|| HostFsError {
                what: "find the bind of",
                path: tasks.to_owned(),
                err: "not in /proc/self/mountinfo".into(),
            })?
        }
    };
    // A bind remount sets every per-mount flag: keep the operator's.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (opt, flag) in [
        ("ro", MsFlags::MS_RDONLY),
        ("noexec", MsFlags::MS_NOEXEC),
        ("noatime", MsFlags::MS_NOATIME),
        ("nodiratime", MsFlags::MS_NODIRATIME),
    ] {
        if m.mount_opts.split(',').any(|o| o == opt) {
            flags |= flag;
        }
    }
    mount(none, &canonical, none, flags, none).map_err(|e| err("remount nosuid,nodev", e))
}

fn is_nosuid_nodev(m: &MountEntry) -> bool {
    let has = |o: &str| m.mount_opts.split(',').any(|x| x == o);
    has("nosuid") && has("nodev")
}

/// Whether a (canonical) rootfs path may be used. Pure: the caller
/// resolves the path (and binds: [`through_binds`]). Allowed: under one of
/// `dirs`. Never `/`, the data dir or anything holding it; inside the data
/// dir only below an operator's `rootfs_dirs` entry there (the defaults:
/// /var/lib/gleaner/rootfs in /var/lib/gleaner), and never below the
/// agent's `own` dirs (images, tasks, run), whatever entry covers them: a
/// cached image by path would skip the proof that the task's (role, URI)
/// fetched it (`images::meta`), a sandbox is task-writable.
pub fn rootfs_allowed(
    path: &Path,
    dirs: &[PathBuf],
    data_dir: &Path,
    own: &[PathBuf],
) -> Result<(), String> {
    if path == Path::new("/") || data_dir.starts_with(path) {
        return Err(format!(
            "rootfs.path: {} holds the host's root or the agent's data dir",
            path.display()
        ));
    }
    if path.starts_with(data_dir) {
        if let Some(o) = own.iter().find(|o| path.starts_with(o)) {
            let hint = match o.file_name().and_then(|n| n.to_str()) {
                Some("images") => ": name an image by rootfs.uri and rootfs.sha256",
                _ => "",
            };
            return Err(format!(
                "rootfs.path: {} is inside the agent's data dir ({}){hint}",
                path.display(),
                o.display()
            ));
        }
        let operators = |d: &PathBuf| {
            d.starts_with(data_dir) && d != data_dir && path.starts_with(d) && path != d
        };
        if !dirs.iter().any(operators) {
            return Err(format!(
                "rootfs.path: {} is inside the agent's data dir",
                path.display()
            ));
        }
    }
    if !dirs.iter().any(|d| path.starts_with(d) && path != d) {
        return Err(format!(
            "rootfs.path: {} is not under a directory of rootfs_dirs ({})",
            path.display(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// `path` (canonical) spelled below the anchor it passes through, if one of
/// its ancestors (itself included) is one of `anchors` by identity (device
/// and inode): a bind mount of the data dir or of one of its dirs
/// elsewhere is seen for what it is. Symlinks and `..` are the caller's
/// (canonicalize). Else `path` as it is.
pub fn through_binds(path: &Path, anchors: &[PathBuf]) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let ids: Vec<_> = anchors.iter().filter_map(|a| Some((id(a)?, a))).collect();
    for up in path.ancestors() {
        let Some(here) = id(up) else { continue };
        if let Some((_, anchor)) = ids.iter().find(|(i, _)| *i == here) {
            return match path.strip_prefix(up) {
                Ok(rel) if !rel.as_os_str().is_empty() => anchor.join(rel),
                _ => anchor.to_path_buf(),
            };
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_paths() {
        let dirs = [PathBuf::from("/srv/rootfs"), PathBuf::from("/opt/g/var")];
        let data = Path::new("/opt/g/var/lib");
        let own = own_dirs(data);
        let ok = |p: &str| rootfs_allowed(Path::new(p), &dirs, data, &own);
        assert!(ok("/srv/rootfs/busybox").is_ok());
        for bad in [
            // Review (issue 14): a cached image by path skipped the proof
            // that the task's role fetched it from its URI.
            "/opt/g/var/lib/images/ab12/rootfs",
            "/opt/g/var/lib/images/ab12/rootfs/opt",
            "/opt/g/var/lib/run/netns",
            "/",
            "/srv",
            "/srv/rootfs",
            "/usr",
            "/opt/g/var",
            "/opt/g/var/lib",
            "/opt/g/var/lib/tasks/x/sandbox",
            // Review: the whole cache, an unpack in progress, an image's
            // dir beside its rootfs were accepted.
            "/opt/g/var/lib/images",
            "/opt/g/var/lib/images/.tmp/ab12/rootfs",
            "/opt/g/var/lib/images/ab12",
            "/srv/rootfsx",
        ] {
            let e = ok(bad).unwrap_err();
            assert!(e.starts_with("rootfs.path: "), "{bad}: {e}");
        }
    }

    /// Review: the default rootfs_dirs (/var/lib/gleaner/rootfs) lies in
    /// the default data dir (/var/lib/gleaner), and every path below it was
    /// refused as "inside the agent's data dir".
    #[test]
    fn default_rootfs_dirs_work_with_the_default_data_dir() {
        let d = AgentConfig::default();
        let data = d.data_dir.as_path();
        let own = own_dirs(data);
        let ok = |p: &str| rootfs_allowed(Path::new(p), &d.rootfs_dirs, data, &own);
        assert_eq!(ok("/var/lib/gleaner/rootfs/busybox"), Ok(()));
        for bad in [
            "/var/lib/gleaner/rootfs",
            "/var/lib/gleaner/run",
            "/var/lib/gleaner/tasks/x/sandbox",
            "/var/lib/gleaner/images/ab12/rootfs",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        // Sloppy entries holding (or naming) the agent's own dirs let
        // nothing of them in.
        let sloppy = [
            data.join("tasks"),
            data.join("images"),
            data.join("run"),
            data.to_owned(),
        ];
        for bad in [
            "/var/lib/gleaner/tasks/x/sandbox",
            "/var/lib/gleaner/tasks/x",
            "/var/lib/gleaner/images/ab12/rootfs",
            "/var/lib/gleaner/run/netns",
        ] {
            let e = rootfs_allowed(Path::new(bad), &sloppy, data, &own).unwrap_err();
            assert!(e.contains("inside the agent's data dir"), "{bad}: {e}");
        }
        let e = ok("/var/lib/gleaner/images/ab12/rootfs").unwrap_err();
        assert!(e.contains("rootfs.uri"), "{e}");
    }

    fn own_dirs(data: &Path) -> Vec<PathBuf> {
        ["images", "tasks", "run"].map(|d| data.join(d)).to_vec()
    }

    /// Without binds a path stays as it is; the data dir's own spelling
    /// maps onto itself. (A real bind: `agent/tests/images.rs`.)
    #[test]
    fn through_binds_keeps_unbound_paths() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let other = dir.path().join("other/x");
        std::fs::create_dir_all(data.join("images/ab/rootfs")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let anchors = [data.clone(), data.join("images")];
        assert_eq!(through_binds(&other, &anchors), other);
        let img = data.join("images/ab/rootfs");
        assert_eq!(through_binds(&img, &anchors), img);
        assert_eq!(through_binds(&data, &anchors), data);
        // A path that does not exist (yet) keeps its spelling.
        let gone = dir.path().join("gone/y");
        assert_eq!(through_binds(&gone, &anchors), gone);
    }

    #[test]
    fn pivot_root_refused_on_a_ram_root() {
        let disk = "1 0 8:1 / / rw,relatime - ext4 /dev/vda rw\n";
        let ram = "1 1 0:2 / / rw - rootfs rootfs rw\n";
        let chroot = "25 1 0:23 / /proc rw - proc proc rw\n";
        assert!(pivot_root_possible(disk));
        assert!(!pivot_root_possible(ram));
        assert!(!pivot_root_possible(chroot));
    }
}

/// Whether `dir` is on ext4 (or ext2/3) without a journal; None when it
/// cannot tell. There every file created steps over each inode of its
/// group deleted in the last 60-360 s (ext4's `recently_deleted()`, which
/// a journal turns off), so an agent running many short tasks slows with
/// its own churn: 2 s after 5,000 deletions a create took 1.41 ms instead
/// of 14 µs (bench/RESULTS.md, issue 16). Logged at start.
pub fn ext4_without_journal(dir: &Path) -> Option<bool> {
    const EXT_SUPER_MAGIC: i64 = 0xEF53;
    let fs = nix::sys::statfs::statfs(dir).ok()?;
    if fs.filesystem_type().0 as i64 != EXT_SUPER_MAGIC {
        return Some(false);
    }
    let st = nix::sys::stat::stat(dir).ok()?;
    let (major, minor) = (libc::major(st.st_dev), libc::minor(st.st_dev));
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let dev = link.file_name()?.to_str()?.to_owned();
    // No jbd2 dir at all: no journaled file system is mounted.
    let journals: Vec<String> = match std::fs::read_dir("/proc/fs/jbd2") {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    Some(!journaled(&dev, &journals))
}

/// jbd2 names a journal `<device>-<journal inode>` (`vda1-8`).
fn journaled(dev: &str, jbd2_entries: &[String]) -> bool {
    jbd2_entries.iter().any(|e| {
        e.strip_prefix(dev)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    #[test]
    fn a_journal_is_named_after_its_device() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(journaled("vda1", &e(&["vda1-8"])));
        assert!(journaled("loop0", &e(&["sda2-8", "loop0-8"])));
        // vda's journal is not vda1's, nor the other way round.
        assert!(!journaled("vda", &e(&["vda1-8"])));
        assert!(!journaled("vda1", &e(&["vda-8"])));
        assert!(!journaled("vda", &e(&[])));
        assert!(!journaled("dm-0", &e(&["dm-0-"])));
    }

    #[test]
    fn a_tmpfs_is_not_ext4() {
        assert_eq!(ext4_without_journal(Path::new("/dev/shm")), Some(false));
    }
}
