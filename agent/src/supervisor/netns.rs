//! `"network": "none"`: the task's init enters a new network namespace,
//! where only the loopback interface exists; it is brought up so that the
//! task's own processes can still talk to each other over 127.0.0.1.
//!
//! A task group's `"network": "group"`: the agent makes one such namespace
//! per group and holds it by a bind mount of its nsfs file under the data
//! dir's `run/netns/` (not by a holder process: a mount needs no
//! supervision, survives an agent restart and a member's exit, and goes
//! with one unmount). Each member's init joins it with `setns`.
//!
//! That directory is a private bind mount of itself (as `ip netns` makes
//! /run/netns a mount): no mount of a held namespace propagates into
//! another namespace, and a task's init detaches the whole directory from
//! its own mount namespace. A copy of a namespace's mount there (under a
//! `move_chroot` root, the host's tree stays below the task's) would keep
//! the namespace alive after its group was removed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Does the kernel offer network namespaces?
pub fn available() -> bool {
    std::path::Path::new("/proc/self/ns/net").exists()
}

/// Unshares the network namespace and brings `lo` up.
pub fn enter_empty() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("network namespace: {e}"))?;
    loopback_up().map_err(|e| format!("network namespace: lo up: {e}"))
}

/// nsfs (4.0+) or proc (older kernels): what a held namespace file is on.
const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: {what}: {err}")]
pub struct NetnsError {
    pub path: std::path::PathBuf,
    pub what: &'static str,
    pub err: String,
}

fn ns_err(path: &Path, what: &'static str, err: impl std::fmt::Display) -> NetnsError {
    NetnsError {
        path: path.to_owned(),
        what,
        err: err.to_string(),
    }
}

/// Is a namespace mounted at `path`?
pub fn is_held(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| {
            let t = s.filesystem_type().0 as i64;
            t == NSFS_MAGIC || t == PROC_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// Makes a network namespace with only `lo` up and holds it by a bind mount
/// at `path` (kept if one is held there already). A thread of its own
/// enters it and ends: the agent's other threads stay in the host's.
pub fn create_held(path: &Path) -> Result<(), NetnsError> {
    if is_held(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| ns_err(path, "create mount point", e))?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| ns_err(&target, "unshare", e))?;
        loopback_up().map_err(|e| ns_err(&target, "lo up", e))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        nix::mount::mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| ns_err(&target, "bind", e))
    })
    .join()
    .map_err(|_| ns_err(path, "create", "thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Makes `dir` (created if missing) a private mount of itself, once: a
/// restarted agent finds it in place, with the namespaces held below. A
/// group network is refused while this fails (`create_held`).
pub fn private_dir(dir: &Path) -> Result<(), NetnsError> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir).map_err(|e| ns_err(dir, "create dir", e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| ns_err(dir, "resolve", e))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ns_err(&dir, "read mountinfo", e))?;
    let mounted = crate::cgroup::mountinfo::parse_all(&mountinfo)
        .iter()
        .any(|m| m.mount_point == dir);
    let none: Option<&str> = None;
    if !mounted {
        // An older agent's namespaces held on the plain dir: a recursive
        // self-bind would copy them and hide the originals (release() then
        // unmounts a copy, the unlink fails EBUSY, the namespace stays until
        // reboot). Each is taken by a descriptor, unmounted, and held again
        // on the new mount.
        let held = take_held(&dir)?;
        mount(Some(&dir), &dir, none, MsFlags::MS_BIND, none)
            .map_err(|e| ns_err(&dir, "bind", e))?;
        mount(none, &dir, none, MsFlags::MS_PRIVATE, none)
            .map_err(|e| ns_err(&dir, "make private", e))?;
        let mut failed = Ok(());
        for (path, ns) in held {
            let from = format!("/proc/self/fd/{}", ns.as_raw_fd());
            if let Err(e) = mount(Some(from.as_str()), &path, none, MsFlags::MS_BIND, none) {
                failed = Err(ns_err(&path, "hold again", e));
            }
        }
        return failed;
    }
    mount(none, &dir, none, MsFlags::MS_PRIVATE, none).map_err(|e| ns_err(&dir, "make private", e))
}

/// Opens every namespace held in `dir` and unmounts it (every layer).
fn take_held(dir: &Path) -> Result<Vec<(std::path::PathBuf, std::fs::File)>, NetnsError> {
    let mut held = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ns_err(dir, "list", e))? {
        let path = entry.map_err(|e| ns_err(dir, "list", e))?.path();
        if !is_held(&path) {
            continue;
        }
        let ns = std::fs::File::open(&path).map_err(|e| ns_err(&path, "open", e))?;
        unmount_all(&path)?;
        held.push((path, ns));
    }
    Ok(held)
}

/// Unmounts `path` until nothing is mounted there (a bounded number of
/// layers: two agents' binds, a copy).
fn unmount_all(path: &Path) -> Result<(), NetnsError> {
    for _ in 0..16 {
        if !is_held(path) {
            return Ok(());
        }
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| ns_err(path, "unmount", e))?;
    }
    Err(ns_err(path, "unmount", "still mounted after 16 unmounts"))
}

/// Unmounts (every layer) and removes a held namespace (gone once no
/// process is in it); a missing one is fine.
pub fn release(path: &Path) -> Result<(), NetnsError> {
    unmount_all(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ns_err(path, "remove", e)),
        _ => Ok(()),
    }
}

/// In a member's init: joins the group's namespace. Refused unless a
/// namespace is held there (a bare file would leave the task on the host's
/// network).
pub fn join(path: &Path) -> Result<(), String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("group network {}: {e}", path.display()))?;
    if !is_held(path) {
        return Err(format!(
            "group network {}: no namespace held there",
            path.display()
        ));
    }
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("group network {}: setns: {e}", path.display()))
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket call; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
