//! The zygote: a small single-threaded process, exec'd once by the agent
//! (`gleaner-agent zygote`), that forks a supervisor per launch request.
//!
//! Why: exec'ing the agent binary for every launch costs ~2.5 ms; a fork of
//! this small process costs ~0.2 ms, and its children share its few pages.
//! A multi-threaded agent cannot fork safely itself.
//!
//! Protocol over a SOCK_SEQPACKET pair (the zygote's stdin), one message each:
//! request `launch\t<task-dir>`; reply, from the supervisor itself,
//! `ok\t<task-dir>\t<pid>` or `error\t<task-dir>\t<reason>`. EOF: the agent
//! is gone and the zygote exits; running supervisors are not affected.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{recv, MsgFlags};
use nix::unistd::{fork, ForkResult};

pub const REQUEST: &str = "launch";

/// A reply of a supervisor, as the agent reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub task_dir: PathBuf,
    pub result: Result<i32, String>,
}

pub fn parse_reply(msg: &str) -> Option<Reply> {
    let mut f = msg.trim_end_matches('\n').splitn(3, '\t');
    let (tag, dir, rest) = (f.next()?, f.next()?, f.next().unwrap_or(""));
    let result = match tag {
        "ok" => Ok(rest.parse().ok()?),
        "error" => Err(rest.to_owned()),
        _ => return None,
    };
    Some(Reply {
        task_dir: PathBuf::from(dir),
        result,
    })
}

/// Entry point of `gleaner-agent zygote`; the socket is on stdin.
pub fn main() -> i32 {
    // SAFETY: fd 0 is the socket the agent passed; we take it over and put
    // /dev/null in its place.
    let sock = unsafe { OwnedFd::from_raw_fd(libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 10)) };
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto stdin.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    // The agent's death closes its end: EOF below. Children are reaped by
    // the kernel, so no zombie piles up while the zygote waits.
    // SAFETY: setting a disposition, no handler code.
    unsafe {
        let _ = signal(Signal::SIGCHLD, SigHandler::SigIgn);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    super::set_process_name(c"gleaner-zygote");
    // Once here; every launch is a fork of this process.
    super::seccomp::precompile();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("gleaner-agent zygote: recv: {e}");
                return 1;
            }
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(dir) = msg.strip_prefix(REQUEST).and_then(|m| m.strip_prefix('\t')) else {
            continue;
        };
        spawn_supervisor(&sock, Path::new(dir));
    }
}

fn spawn_supervisor(sock: &OwnedFd, dir: &Path) {
    // Locked before the fork, so there is no moment at which a supervisor
    // exists without holding it; the zygote's copy closes after the fork.
    // The child keeps it (it leaves through _exit, never dropping it); the
    // zygote's copy drops at the end of this function.
    let _lock = match lock_supervisor(dir) {
        Ok(l) => l,
        Err(e) => {
            Reporter {
                sock: sock.try_clone().expect("dup socket"),
                dir: dir.display().to_string(),
            }
            .error(&e);
            return;
        }
    };
    let forked_at = super::steps::now_us();
    // SAFETY: the zygote is single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: back to the default, so the supervisor can wait for its init.
            unsafe {
                let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
            }
            let code = match sock.try_clone() {
                Ok(sock) => super::supervise(
                    dir,
                    Reporter {
                        sock,
                        dir: dir.display().to_string(),
                    },
                    forked_at,
                ),
                Err(e) => {
                    eprintln!("gleaner-agent zygote: dup socket: {e}");
                    1
                }
            };
            // SAFETY: leave the forked child without running the zygote's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => Reporter {
            sock: sock.try_clone().expect("dup socket"),
            dir: dir.display().to_string(),
        }
        .error(&format!("fork supervisor: {e}")),
    }
}

/// Takes the task's supervisor lock; fails when a supervisor of the task
/// is alive already.
fn lock_supervisor(dir: &Path) -> Result<File, String> {
    let path = crate::layout::TaskDir::new(dir).supervisor_lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another supervisor of this task is alive ({} is locked)",
            path.display()
        ));
    }
    Ok(file)
}

/// Whether a supervisor of the task in `dir` is alive (its lock is held).
pub fn supervisor_alive(dir: &crate::layout::TaskDir) -> bool {
    let Ok(file) = File::open(dir.supervisor_lock()) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `file` drops.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// The supervisor's one reply to the agent; consumed by sending, which
/// closes the supervisor's copy of the socket.
pub(crate) struct Reporter {
    sock: OwnedFd,
    dir: String,
}

impl Reporter {
    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    pub fn ok(self, pid: i32) {
        self.send(&format!("ok\t{}\t{pid}", self.dir));
    }

    pub fn error(self, reason: &str) {
        self.send(&format!(
            "error\t{}\t{}",
            self.dir,
            reason.replace(['\n', '\t'], " ")
        ));
    }

    fn send(&self, msg: &str) {
        let _ = nix::sys::socket::send(self.sock.as_raw_fd(), msg.as_bytes(), MsgFlags::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_reply("ok\t/d/t1\t42"),
            Some(Reply {
                task_dir: "/d/t1".into(),
                result: Ok(42)
            })
        );
        assert_eq!(
            parse_reply("error\t/d/t1\texec /x: not found"),
            Some(Reply {
                task_dir: "/d/t1".into(),
                result: Err("exec /x: not found".into())
            })
        );
        assert_eq!(parse_reply("ok\t/d\tnotapid"), None);
        assert_eq!(parse_reply("hello"), None);
    }
}
