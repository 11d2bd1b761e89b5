//! The task's init (pid 1 of its pid namespace) and the exec of the command.
//!
//! The init joins the task cgroup, builds the mount namespace and root, then
//! forks the command. It forwards the termination signals to the command,
//! reaps every orphan in the namespace, and reports the command's status to
//! the supervisor. A pid-ns init ignores signals it has no handler for, so
//! it installs a no-op handler and takes them with sigwait.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::steps::Marks;
use super::{mounts, unblock_all_signals, LaunchConfig};
use crate::cgroup::CgroupHandle;
use crate::layout::SANDBOX_IN_ROOTFS;

const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

extern "C" fn noop(_: libc::c_int) {}

/// Whether every read end of the pipe `w` writes to is closed.
fn reader_gone(w: &impl std::os::fd::AsRawFd) -> bool {
    let mut fd = libc::pollfd {
        fd: w.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & libc::POLLERR != 0
}

/// Runs in the init; returns its exit code. `steps_w` takes the launch's
/// timing marks from the command's process just before its exec.
pub(super) fn run(
    cfg: &LaunchConfig,
    err_w: OwnedFd,
    status_w: OwnedFd,
    steps_w: OwnedFd,
    stdout: File,
    stderr: File,
) -> i32 {
    let mut marks = Marks::default();
    marks.mark("init_fork");
    let mut err_w = File::from(err_w);
    // The init dies with its supervisor: a task is never left unsupervised.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // A supervisor killed before that line sends no death signal: then
    // nothing would ever stop this init. Its read end of the error pipe,
    // the only one, is closed exactly then (getppid says 0 in a new pid
    // namespace, so it cannot tell).
    if reader_gone(&err_w) {
        return 1;
    }
    super::set_process_name(c"gleaner-init");
    // Inherited by the command; raising it needs no privilege, lowering would.
    let _ = std::fs::write("/proc/self/oom_score_adj", cfg.oom_score_adj.to_string());
    marks.mark("init_oom_adj");
    let mut procs = match setup(cfg, &mut marks) {
        Ok(p) => p,
        Err(e) => {
            let _ = err_w.write_all(e.as_bytes());
            return 1;
        }
    };
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for s in FORWARDED {
        waited.add(s);
    }
    let handler = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
    for s in waited.iter() {
        // SAFETY: installing a handler that does nothing.
        let _ = unsafe { sigaction(s, &handler) };
    }
    let _ = waited.thread_block();
    // Joined last: the set-up work above is not charged to (or throttled
    // by) the task's own limits. The command is born inside.
    if let Err(e) = CgroupHandle::join_self(&mut procs) {
        let _ = err_w.write_all(format!("join cgroup: {e}").as_bytes());
        return 1;
    }
    drop(procs);
    marks.mark("init_cgroup");

    // SAFETY: the init is single-threaded.
    let command = match unsafe { fork() } {
        Err(e) => {
            let _ = err_w.write_all(format!("fork command: {e}").as_bytes());
            return 1;
        }
        Ok(ForkResult::Child) => {
            marks.mark("cmd_fork");
            let err = exec_command(cfg, &stdout, &stderr, marks, File::from(steps_w));
            let _ = err_w.write_all(err.as_bytes());
            // SAFETY: leave the failed child without unwinding.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(err_w);
    drop(steps_w);
    drop(stdout);
    drop(stderr);

    let status = reap_until(command, &waited);
    let mut status_w = File::from(status_w);
    let _ = status_w.write_all(status.as_bytes());
    0
}

/// Forwards signals and reaps orphans until `command` exits.
fn reap_until(command: Pid, waited: &SigSet) -> String {
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                    return format!("exit {code}")
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                    return format!("signal {}", sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        match waited.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(command, sig);
            }
        }
    }
}

/// Mount namespace and root; returns the task cgroup's procs files, opened
/// while /sys is still in sight.
fn setup(cfg: &LaunchConfig, marks: &mut Marks) -> Result<Vec<(std::path::PathBuf, File)>, String> {
    let procs = cfg
        .cgroup
        .open_procs()
        .map_err(|e| format!("join cgroup: {e}"))?;
    if let Some(path) = &cfg.group_netns {
        super::netns::join(path)?;
    } else if cfg.network_none {
        super::netns::enter_empty()?;
    }
    marks.mark("init_netns");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("mount namespace: {e}"))?;
    marks.mark("init_mntns");
    mounts::enter_rootfs(
        &mounts::RootPlan {
            rootfs: &cfg.rootfs,
            sandbox: &cfg.sandbox,
            tmp: &cfg.tmp,
            switch: cfg.root_switch,
            sys: cfg.sys,
            mount_setattr: cfg.mount_setattr,
            shared: cfg
                .shared
                .as_ref()
                .map(|s| (s.source.as_path(), s.path.as_str())),
            netns_dir: cfg.netns_dir.as_deref(),
        },
        marks,
    )
    .map_err(|e| e.to_string())?;
    Ok(procs)
}

/// In the command's process: drops privileges and executes. Returns only on
/// failure, with the reason. `marks` go into `steps_w` just before the exec.
fn exec_command(
    cfg: &LaunchConfig,
    stdout: &File,
    stderr: &File,
    mut marks: Marks,
    mut steps_w: File,
) -> String {
    unblock_all_signals();
    for s in FORWARDED.iter().chain([Signal::SIGCHLD].iter()) {
        // SAFETY: restoring the default disposition.
        let _ = unsafe {
            sigaction(
                *s,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        };
    }
    let _ = nix::unistd::setsid();
    match File::open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this process.
        Ok(null) => unsafe {
            libc::dup2(null.as_raw_fd(), 0);
        },
        Err(e) => return format!("open /dev/null in rootfs: {e}"),
    }
    // SAFETY: as above.
    unsafe {
        libc::dup2(stdout.as_raw_fd(), 1);
        libc::dup2(stderr.as_raw_fd(), 2);
    }
    close_inherited_on_exec();
    if let Some(n) = cfg.nproc_rlimit {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n);
    }
    marks.mark("cmd_stdio");
    if let Err(e) = drop_privileges(cfg.uid, cfg.gid) {
        return e;
    }
    marks.mark("cmd_privileges");
    if let Err(e) = std::env::set_current_dir(SANDBOX_IN_ROOTFS) {
        return format!("chdir {SANDBOX_IN_ROOTFS}: {e}");
    }
    let program = match resolve_program(&cfg.argv[0], &cfg.env) {
        Some(p) => p,
        None => return format!("exec {}: not found in the rootfs", cfg.argv[0]),
    };
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = cfg.argv.iter().map(|a| cstr(a)).collect();
    let env: Vec<CString> = cfg.env.iter().map(|a| cstr(a)).collect();
    marks.mark("cmd_resolve");
    // Last, after no_new_privs: nothing of the set-up above is filtered.
    if cfg.seccomp {
        if let Err(e) = super::seccomp::install() {
            return e.to_string();
        }
    }
    marks.mark("cmd_seccomp");
    // One write below PIPE_BUF: whole or not at all; close-on-exec.
    let _ = steps_w.write_all(marks.encode().as_bytes());
    let err = nix::unistd::execve(&cstr(&program), &argv, &env).unwrap_err();
    format!("exec {program}: {err}")
}

/// Marks every descriptor above stderr close-on-exec: whatever the agent
/// inherited without the flag (a service manager's sockets, a shell's open
/// directory) would otherwise reach the task, and a directory descriptor
/// leads out of the rootfs through /proc/self/fd. The task's /proc is
/// mounted by now; without it, every number below the descriptor limit.
/// One `close_range(CLOSE_RANGE_CLOEXEC)` where the kernel has it (5.11+);
/// the walk of /proc/self/fd costs ~0.2 ms of every launch.
pub(crate) fn close_inherited_on_exec() {
    if cloexec_range_from(3) {
        return;
    }
    close_inherited_on_exec_by_walk();
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`; false when the kernel
/// has no such call or flag (before 5.11, e.g. CentOS 7's 3.10).
fn cloexec_range_from(first: u32) -> bool {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with integer arguments; it only sets flags.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 }
}

/// The fallback of [`close_inherited_on_exec`] for kernels before 5.11.
pub(crate) fn close_inherited_on_exec_by_walk() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => {
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .unwrap_or((65536, 65536));
            (0..soft.min(1 << 20) as i32).collect()
        }
    };
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: fcntl on a descriptor number; a closed one answers EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Bounding set first (needs CAP_SETPCAP), then ids, then what is left.
pub(crate) fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    for cap in caps::all() {
        let _ = caps::drop(None, caps::CapSet::Bounding, cap);
    }
    let gid_n = nix::unistd::Gid::from_raw(gid);
    nix::unistd::setgroups(&[gid_n]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(gid_n).map_err(|e| format!("setgid {gid}: {e}"))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| format!("setuid {uid}: {e}"))?;
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        let _ = caps::clear(None, set);
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// execvp's search, but over the task's PATH rather than the supervisor's.
pub(crate) fn resolve_program(name: &str, env: &[String]) -> Option<String> {
    if name.contains('/') {
        return Some(name.to_owned());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| nix::unistd::access(Path::new(p), nix::unistd::AccessFlags::X_OK).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inheritable_fd() -> std::fs::File {
        let f = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) };
        f
    }

    fn cloexec(f: &std::fs::File) -> bool {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn both_ways_mark_inherited_descriptors_close_on_exec() {
        // Only flags change, and they are put back after: other tests of
        // this process may hand descriptors to children.
        let before: Vec<(i32, i32)> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            // SAFETY: fcntl on a descriptor number; a closed one gives -1.
            .map(|fd| (fd, unsafe { libc::fcntl(fd, libc::F_GETFD) }))
            .filter(|&(_, flags)| flags >= 0)
            .collect();
        let f = inheritable_fd();
        assert!(!cloexec(&f));
        close_inherited_on_exec_by_walk();
        assert!(cloexec(&f), "the /proc walk (kernels before 5.11)");
        let g = inheritable_fd();
        if cloexec_range_from(3) {
            assert!(cloexec(&g), "close_range");
        } else {
            eprintln!("close_range(CLOSE_RANGE_CLOEXEC) unavailable here: walk only");
        }
        let h = inheritable_fd();
        close_inherited_on_exec();
        let done = cloexec(&h);
        for (fd, flags) in before {
            // SAFETY: as above; restores the flags read before.
            unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
        }
        assert!(done);
    }
}
