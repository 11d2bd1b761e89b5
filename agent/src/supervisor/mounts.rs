//! The task's file system view: the rootfs read-only (recursively), a
//! minimal /dev, /proc with the host-facing parts read-only or masked, /sys
//! read-only for the roles allowed it, a private /tmp and the sandbox, then
//! pivot_root (or MS_MOVE + chroot where the root is in RAM). All of it
//! inside the task's own mount namespace: nothing shows on the host.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::steps::Marks;
use super::RootSwitch;
use crate::layout::MOUNT_POINTS;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what} {path}: {err}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        err: nix::Error,
    },
    #[error("rootfs {rootfs}: shared volume mount point {path}: {reason}")]
    SharedPoint {
        rootfs: PathBuf,
        path: String,
        reason: String,
    },
    #[error("shared volume mount point: {what} {path}: {err}")]
    SharedIo {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("rootfs {rootfs} lacks mount point /{dir} and it cannot be created: {err}")]
    MountPoint {
        rootfs: PathBuf,
        dir: &'static str,
        err: std::io::Error,
    },
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError::Sys {
        what,
        path: path.to_owned(),
        err: source,
    }
}

const NONE: Option<&str> = None;

/// Creates the mount points a task needs, where the rootfs lacks them
/// (empty directories, as any container runtime adds).
pub fn ensure_mount_points(rootfs: &Path, sys: bool) -> Result<(), MountError> {
    let extra: &[&'static str] = if sys { &["sys"] } else { &[] };
    for &dir in MOUNT_POINTS.iter().chain(extra) {
        let p = rootfs.join(dir);
        if p.is_dir() {
            continue;
        }
        let made = fs::create_dir(&p).and_then(|_| {
            let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
        });
        if let Err(source) = made {
            if !p.is_dir() {
                return Err(MountError::MountPoint {
                    rootfs: rootfs.to_owned(),
                    dir,
                    err: source,
                });
            }
        }
    }
    Ok(())
}

/// Devices of the minimal /dev: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// How the init builds the task's root (from `LaunchConfig`).
pub struct RootPlan<'a> {
    pub rootfs: &'a Path,
    pub sandbox: &'a Path,
    pub tmp: &'a Path,
    pub switch: RootSwitch,
    /// A read-only /sys (roles in `sys_roles`).
    pub sys: bool,
    pub mount_setattr: bool,
    /// The group's shared volume: host dir, path in the task.
    pub shared: Option<(&'a Path, &'a str)>,
    /// The host's dir of held group network namespaces: detached from the
    /// task's mount namespace, whose copies would keep them alive.
    pub netns_dir: Option<&'a Path>,
}

/// /proc entries that reach the host: read-only (runc's defaults).
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// /proc entries hidden behind /dev/null (files) or an empty read-only
/// tmpfs (directories), as runc masks them.
const PROC_MASKED: [&str; 9] = [
    "kcore",
    "keys",
    "timer_list",
    "timer_stats",
    "latency_stats",
    "sched_debug",
    "acpi",
    "asound",
    "scsi",
];
const SYS_MASKED: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Builds the task's root and enters it; `marks` times each part.
pub(crate) fn enter_rootfs(plan: &RootPlan, marks: &mut Marks) -> Result<(), MountError> {
    let rootfs = plan.rootfs;
    let root = Path::new("/");
    mount(
        NONE,
        root,
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )
    .map_err(sys("make private", root))?;
    if let Some(dir) = plan.netns_dir {
        // Each layer (with the namespaces held below it) until it is no
        // mount; not a mount (no group network made yet) or missing: no
        // copies.
        for _ in 0..16 {
            match umount2(dir, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(e) => return Err(sys("detach", dir)(e)),
            }
        }
    }
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys("bind", rootfs))?;
    // Before the read-only pass, which then covers a tmpfs made for it.
    let shared = match plan.shared {
        Some((source, path)) => Some((source, super::shared::prepare(rootfs, path)?)),
        None => None,
    };
    // The image is shared by every task using it: read-only, no setuid,
    // mounts below it included.
    read_only_recursive(rootfs, plan.mount_setattr)?;
    marks.mark("mnt_rootfs");

    let dev = rootfs.join("dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(sys("mount tmpfs", &dev))?;
    populate_dev(&dev)?;
    marks.mark("mnt_dev");

    let proc_dir = rootfs.join("proc");
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &proc_dir, Some("proc"), hardened, NONE)
        .map_err(sys("mount proc", &proc_dir))?;
    let null = dev.join("null");
    for name in PROC_READ_ONLY {
        bind_read_only(&proc_dir.join(name))?;
    }
    for name in PROC_MASKED {
        mask(&proc_dir.join(name), &null)?;
    }
    if plan.sys {
        let sys_dir = rootfs.join("sys");
        mount(
            Some("sysfs"),
            &sys_dir,
            Some("sysfs"),
            hardened | MsFlags::MS_RDONLY,
            NONE,
        )
        .map_err(sys("mount sysfs", &sys_dir))?;
        for name in SYS_MASKED {
            mask(&sys_dir.join(name), &null)?;
        }
    }
    marks.mark("mnt_proc");

    for (src, name) in [(plan.tmp, "tmp"), (plan.sandbox, "sandbox")] {
        let target = rootfs.join(name);
        mount(Some(src), &target, NONE, MsFlags::MS_BIND, NONE).map_err(sys("bind", &target))?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(NONE, &target, NONE, flags, NONE).map_err(sys("remount nosuid", &target))?;
    }

    if let Some((source, target)) = shared {
        // After the read-only pass: the volume stays writable.
        mount(Some(source), &target, NONE, MsFlags::MS_BIND, NONE).map_err(sys("bind", &target))?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(NONE, &target, NONE, flags, NONE).map_err(sys("remount nosuid", &target))?;
    }

    marks.mark("mnt_binds");
    nix::unistd::chdir(rootfs).map_err(sys("chdir", rootfs))?;
    match plan.switch {
        RootSwitch::PivotRoot => {
            // pivot_root(".", ".") stacks the old root under the new one;
            // the detach unmount then drops it (runc does the same).
            nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root", rootfs))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach old root", rootfs))?;
        }
        RootSwitch::MoveChroot => {
            // runc's no-pivot: the rootfs mount covers the old root, which
            // no path reaches any more; chroot makes it this process's root.
            mount(Some("."), root, NONE, MsFlags::MS_MOVE, NONE)
                .map_err(sys("move rootfs over /", rootfs))?;
            nix::unistd::chroot(".").map_err(sys("chroot", rootfs))?;
        }
    }
    nix::unistd::chdir("/").map_err(sys("chdir", root))?;
    marks.mark("mnt_pivot");
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// True when the kernel has mount_setattr (5.12+): an empty change of "/"
/// in this process's namespace is accepted; ENOSYS says it is missing.
pub fn mount_setattr_available() -> bool {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid path and attribute struct for the call's duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            0,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// The rootfs bind and every mount below it read-only, nosuid, nodev.
fn read_only_recursive(rootfs: &Path, use_setattr: bool) -> Result<(), MountError> {
    if use_setattr {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let c = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()).map_err(|_| {
            MountError::Sys {
                what: "mount_setattr",
                path: rootfs.to_owned(),
                err: nix::Error::EINVAL,
            }
        })?;
        // SAFETY: valid path and attribute struct for the call's duration.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = nix::Error::last();
        if err != nix::Error::ENOSYS {
            return Err(MountError::Sys {
                what: "mount_setattr read-only",
                path: rootfs.to_owned(),
                err,
            });
        }
    }
    // One remount per mount (3.10 has no mount_setattr): the rootfs, then
    // every mount below it in this (private) namespace, keeping the flags
    // each already had.
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| MountError::Sys {
        what: "read mountinfo for",
        path: rootfs.to_owned(),
        err: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let mut targets = vec![(rootfs.to_owned(), String::new())];
    for m in crate::cgroup::mountinfo::parse_all(&text) {
        if m.mount_point != rootfs && m.mount_point.starts_with(rootfs) {
            targets.push((m.mount_point, m.mount_opts));
        }
    }
    for (target, opts) in targets {
        let mut flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        for (opt, flag) in [
            ("noexec", MsFlags::MS_NOEXEC),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
        ] {
            if opts.split(',').any(|o| o == opt) {
                flags |= flag;
            }
        }
        mount(NONE, &target, NONE, flags, NONE).map_err(sys("remount read-only", &target))?;
    }
    Ok(())
}

/// Binds `path` onto itself read-only; a missing entry is fine.
fn bind_read_only(path: &Path) -> Result<(), MountError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys("bind", path))?;
    let flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(NONE, path, NONE, flags, NONE).map_err(sys("remount read-only", path))
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a
/// directory; a missing entry is fine.
fn mask(path: &Path, null: &Path) -> Result<(), MountError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        )
        .map_err(sys("mask", path))
    } else {
        mount(Some(null), path, NONE, MsFlags::MS_BIND, NONE).map_err(sys("mask", path))
    }
}

fn populate_dev(dev: &Path) -> Result<(), MountError> {
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(sys("mknod", &p))?;
        // mknod honours the umask; the devices must be world-usable.
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    let shm = dev.join("shm");
    if fs::create_dir(&shm).is_ok() {
        let _ = fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777));
    }
    Ok(())
}
