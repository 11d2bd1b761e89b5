//! The task's file system view: the rootfs read-only, /proc, a minimal
//! /dev, a private /tmp and the sandbox, then pivot_root (chroot fallback).
//! All of it inside the task's own mount namespace: nothing shows on the host.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::layout::MOUNT_POINTS;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what} {path}: {err}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        err: nix::Error,
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
pub fn ensure_mount_points(rootfs: &Path) -> Result<(), MountError> {
    for dir in MOUNT_POINTS {
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

pub fn enter_rootfs(
    rootfs: &Path,
    sandbox: &Path,
    tmp: &Path,
    pivot: bool,
) -> Result<(), MountError> {
    let root = Path::new("/");
    mount(
        NONE,
        root,
        NONE,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        NONE,
    )
    .map_err(sys("make private", root))?;
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys("bind", rootfs))?;
    // The image is shared by every task using it: read-only, no setuid.
    let ro = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(NONE, rootfs, NONE, ro, NONE).map_err(sys("remount read-only", rootfs))?;

    let proc_dir = rootfs.join("proc");
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &proc_dir, Some("proc"), hardened, NONE)
        .map_err(sys("mount proc", &proc_dir))?;

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

    for (src, name) in [(tmp, "tmp"), (sandbox, "sandbox")] {
        let target = rootfs.join(name);
        mount(Some(src), &target, NONE, MsFlags::MS_BIND, NONE).map_err(sys("bind", &target))?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(NONE, &target, NONE, flags, NONE).map_err(sys("remount nosuid", &target))?;
    }

    nix::unistd::chdir(rootfs).map_err(sys("chdir", rootfs))?;
    if pivot {
        // pivot_root(".", ".") stacks the old root under the new one; the
        // detach unmount then drops it (runc does the same).
        nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root", rootfs))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach old root", rootfs))?;
    } else {
        nix::unistd::chroot(".").map_err(sys("chroot", rootfs))?;
    }
    nix::unistd::chdir("/").map_err(sys("chdir", root))
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
