//! `gleaner-agent nsexec <config>`: the helper between the agent and an
//! exec'd command. Single-threaded from its first instruction (it is
//! dispatched before the agent starts any runtime), which `setns` into a
//! mount namespace requires.
//!
//! Fd 3 is the status pipe to the agent: a line of text if anything failed
//! before the command was executed, EOF (close-on-exec) once it was.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::NsExecConfig;
use crate::cgroup::CgroupHandle;
use crate::layout::SANDBOX_IN_ROOTFS;
use crate::supervisor::init::{close_inherited_on_exec, drop_privileges, resolve_program};

const STATUS_FD: RawFd = 3;

/// Entry point of the mode; returns the process's exit code: the command's,
/// 128 + n if a signal n ended it, 127 if it never ran.
pub fn main(config: &Path) -> i32 {
    // The status pipe must not reach the command.
    // SAFETY: fcntl on a descriptor number.
    unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    // Not dumpable until the command is executed (execve makes it dumpable
    // again): between dropping its capabilities and installing the task's
    // filter, the command's process is in the task's pid namespace with the
    // task's uid and nothing left to protect, and a task running as root
    // could otherwise open its /proc/<pid>/mem (or ptrace it) and run code
    // there unfiltered. Non-dumpable, that takes CAP_SYS_PTRACE.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: the agent passed fd 3; this process owns it from here.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    crate::supervisor::set_process_name(c"gleaner-exec");
    let cfg = match read_config(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = status.write_all(e.as_bytes());
            return 127;
        }
    };
    match run(&cfg, status) {
        Ok(code) => code,
        Err((mut status, e)) => {
            let _ = status.write_all(e.as_bytes());
            127
        }
    }
}

fn read_config(path: &Path) -> Result<NsExecConfig, String> {
    let text = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&text?).map_err(|e| format!("parse {}: {e}", path.display()))
}

fn open_at(dir: &File, name: &str, flags: i32) -> Result<OwnedFd, String> {
    let c = CString::new(name).unwrap();
    // SAFETY: openat on a valid directory descriptor and a C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "open task init's {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor just opened and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setns(fd: &OwnedFd, kind: libc::c_int, what: &str) -> Result<(), String> {
    // SAFETY: setns on a namespace descriptor.
    if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
        return Err(format!(
            "enter the task's {what} namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Enters the task and runs the command; on failure before the exec, hands
/// the status pipe back with the reason.
fn run(cfg: &NsExecConfig, status: File) -> Result<i32, (File, String)> {
    let fail = |status: File, e: String| Err((status, e));
    // The init's /proc directory pins its identity: whatever is opened
    // through it belongs to that process or fails, even if the pid is reused.
    let proc_dir = match File::open(format!("/proc/{}", cfg.init_pid)) {
        Ok(d) => d,
        Err(e) => return fail(status, format!("the task's init is gone: {e}")),
    };
    let ticks = open_at(&proc_dir, "stat", libc::O_RDONLY)
        .map(File::from)
        .and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(|e| e.to_string())?;
            Ok(crate::procfs_util::parse_start_ticks(&s))
        });
    if ticks != Ok(Some(cfg.init_start_ticks)) {
        return fail(status, "the task's init is gone".into());
    }
    let ns = (|| {
        Ok::<_, String>((
            open_at(&proc_dir, "ns/net", libc::O_RDONLY)?,
            open_at(&proc_dir, "ns/pid", libc::O_RDONLY)?,
            open_at(&proc_dir, "ns/mnt", libc::O_RDONLY)?,
            open_at(&proc_dir, "root", libc::O_RDONLY | libc::O_DIRECTORY)?,
        ))
    })();
    let (net, pid, mnt, root) = match ns {
        Ok(n) => n,
        Err(e) => return fail(status, e),
    };
    // Joined while /sys is in sight; everything after is charged to the
    // task's limits.
    let joined = cfg
        .cgroup
        .open_procs()
        .and_then(|mut p| CgroupHandle::join_self(&mut p));
    if let Err(e) = joined {
        return fail(status, format!("join the exec cgroup: {e}"));
    }
    let pty = if cfg.tty {
        match open_pty(cfg.rows, cfg.cols) {
            Ok(p) => Some(p),
            Err(e) => return fail(status, e),
        }
    } else {
        None
    };
    let entered = setns(&net, libc::CLONE_NEWNET, "network")
        .and_then(|_| setns(&pid, libc::CLONE_NEWPID, "pid"))
        .and_then(|_| setns(&mnt, libc::CLONE_NEWNS, "mount"))
        .and_then(|_| {
            // The init's root, not the namespace's: they differ where the
            // task was moved + chrooted (a root in RAM).
            nix::unistd::fchdir(&root)
                .and_then(|_| nix::unistd::chroot("."))
                .and_then(|_| nix::unistd::chdir("/"))
                .map_err(|e| format!("enter the task's root: {e}"))
        });
    if let Err(e) = entered {
        return fail(status, e);
    }
    drop((net, pid, mnt, root, proc_dir));

    if cfg.seccomp {
        // Compiled here, not between the fork and the exec.
        crate::supervisor::seccomp::precompile();
    }
    // The command's exit is read from a signalfd (blocked first, so none is
    // lost); the command unblocks every signal before it executes.
    let sigchld = match sigchld_fd() {
        Ok(fd) => fd,
        Err(e) => return fail(status, e),
    };
    // SAFETY: this process is single-threaded.
    let child = match unsafe { fork() } {
        Err(e) => return fail(status, format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            let err = exec_command(cfg, pty.as_ref().map(|p| &p.1));
            let mut status = status;
            let _ = status.write_all(err.as_bytes());
            // SAFETY: leave the failed child without unwinding.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    // EOF on the agent's side once the command executed.
    drop(status);
    let code = match pty {
        Some((master, slave)) => {
            drop(slave);
            relay_pty(child, master)
        }
        None => wait_command(child, &sigchld),
    };
    Ok(code)
}

/// A signalfd for SIGCHLD, which is blocked from here on.
fn sigchld_fd() -> Result<OwnedFd, String> {
    // SAFETY: a sigset on the stack, initialised by sigemptyset before use;
    // signalfd returns a fresh descriptor that is owned right away.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "block SIGCHLD: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Whether the agent's end of our stdout is gone (the agent died or was
/// stopped): a pipe's write end polls POLLERR once it has no reader.
fn agent_gone(revents: libc::c_short) -> bool {
    revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Ends the session without the agent: the command and its process group
/// (it called setsid; background jobs of a shell stay in it). What moved
/// elsewhere is left in the exec cgroup, which a restarted agent removes.
fn end_without_agent(child: Pid) -> i32 {
    let _ = nix::sys::signal::kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    wait_code(child, None)
}

/// Waits for the command without a terminal; ends it if the agent goes.
fn wait_command(child: Pid, sigchld: &OwnedFd) -> i32 {
    loop {
        let code = wait_code(child, Some(WaitPidFlag::WNOHANG));
        if code >= 0 {
            return code;
        }
        let mut fds = [
            libc::pollfd {
                fd: 1,
                events: 0,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll over a valid array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n > 0 && agent_gone(fds[0].revents) {
            return end_without_agent(child);
        }
        if n > 0 && fds[1].revents != 0 {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            let _ = read_fd(sigchld.as_raw_fd(), &mut info);
        }
    }
}

fn wait_code(child: Pid, flags: Option<WaitPidFlag>) -> i32 {
    loop {
        match waitpid(child, flags) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(WaitStatus::StillAlive) => return -1,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 127,
        }
    }
}

/// A pseudo-terminal from the host's /dev/ptmx: (master, slave).
fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let err = |what: &str| format!("terminal: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain libc pty calls; every descriptor is owned right away.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(err("posix_openpt"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(err("unlockpt"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(err("ptsname"));
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(err("open slave"));
        }
        let slave = OwnedFd::from_raw_fd(s);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(s, libc::TIOCSWINSZ, &ws);
        Ok((master, slave))
    }
}

/// Copies stdin to the terminal and the terminal to stdout until the
/// command exits (returns its exit code) or the agent goes (ends it).
fn relay_pty(child: Pid, master: OwnedFd) -> i32 {
    let m = master.as_raw_fd();
    let mut stdin_open = true;
    let mut buf = [0u8; 16 << 10];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: 1,
                events: 0,
                revents: 0,
            },
        ];
        // SAFETY: poll over a valid array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, 100) };
        if n > 0 && agent_gone(fds[2].revents) {
            return end_without_agent(child);
        }
        if n > 0 {
            if fds[0].revents != 0 {
                match read_fd(0, &mut buf) {
                    Some(0) | None => {
                        stdin_open = false;
                        // As a terminal's user typing ^D.
                        let _ = write_all_fd(m, &[4]);
                    }
                    Some(k) => {
                        let _ = write_all_fd(m, &buf[..k]);
                    }
                }
            }
            if fds[1].revents != 0 {
                match read_fd(m, &mut buf) {
                    Some(k) if k > 0 => {
                        if write_all_fd(1, &buf[..k]).is_err() {
                            // The agent is gone: so is the session.
                            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        }
                    }
                    // EIO: every holder of the slave closed it.
                    _ => return wait_code(child, None),
                }
            }
        }
        let code = wait_code(child, Some(WaitPidFlag::WNOHANG));
        if code >= 0 {
            // What the command wrote last is still in the terminal.
            // SAFETY: fcntl on our own descriptor.
            unsafe { libc::fcntl(m, libc::F_SETFL, libc::O_NONBLOCK) };
            while let Some(k) = read_fd(m, &mut buf).filter(|&k| k > 0) {
                let _ = write_all_fd(1, &buf[..k]);
            }
            return code;
        }
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: read into a valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        // SAFETY: write from a valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// In the command's process (in the task's pid namespace): the same steps
/// as the task's own command. Returns only on failure, with the reason.
fn exec_command(cfg: &NsExecConfig, slave: Option<&OwnedFd>) -> String {
    crate::supervisor::unblock_all_signals();
    for s in Signal::iterator() {
        if matches!(s, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: restoring the default disposition.
        let _ = unsafe {
            sigaction(
                s,
                &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
            )
        };
    }
    let _ = nix::unistd::setsid();
    if let Some(slave) = slave {
        let s = slave.as_raw_fd();
        // SAFETY: the slave becomes this new session's terminal and stdio.
        unsafe {
            libc::ioctl(s, libc::TIOCSCTTY, 0);
            libc::dup2(s, 0);
            libc::dup2(s, 1);
            libc::dup2(s, 2);
        }
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", cfg.oom_score_adj.to_string());
    close_inherited_on_exec();
    if let Some(n) = cfg.nproc_rlimit {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n);
    }
    if let Err(e) = drop_privileges(cfg.uid, cfg.gid) {
        return e;
    }
    // After the id change, which clears it: the command dies with its
    // helper (and the helper with the agent's connection).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = std::env::set_current_dir(SANDBOX_IN_ROOTFS) {
        return format!("chdir {SANDBOX_IN_ROOTFS}: {e}");
    }
    let Some(program) = resolve_program(&cfg.argv[0], &cfg.env) else {
        return format!("exec {}: not found in the task's root", cfg.argv[0]);
    };
    let cstr = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = cfg.argv.iter().map(|a| cstr(a)).collect();
    let env: Vec<CString> = cfg.env.iter().map(|a| cstr(a)).collect();
    if cfg.seccomp {
        if let Err(e) = crate::supervisor::seccomp::install() {
            return e.to_string();
        }
    }
    let err = nix::unistd::execve(&cstr(&program), &argv, &env).unwrap_err();
    format!("exec {program}: {err}")
}
