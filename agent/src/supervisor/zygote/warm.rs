//! The zygote's pool of warm supervisors (`warm_supervisors`): each forked
//! ahead with its task's init already forked in a fresh pid namespace
//! (`supervisor::supervise_warm`), idle until the zygote hands it a task
//! dir over a private socket. A launch then costs no fork on its path.
//!
//! **An idle warm supervisor holds nothing of a task** (no lock, no cgroup,
//! no file): it exits at EOF of its socket, i.e. with the zygote, and its
//! init dies with it (parent-death signal).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::{fork, ForkResult};

/// One idle warm supervisor: the zygote's end of its socket.
struct Warm {
    chan: OwnedFd,
}

#[derive(Default)]
pub(super) struct Pool {
    idle: VecDeque<Warm>,
}

impl Pool {
    pub fn len(&self) -> usize {
        self.idle.len()
    }

    /// Forks one more warm supervisor; `reply` is the agent's socket, on
    /// which it will report its launch.
    pub fn add(&mut self, reply: &OwnedFd) -> Result<(), String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let reply = reply.try_clone().map_err(|e| format!("dup socket: {e}"))?;
        // SAFETY: the zygote is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                self.close_inherited();
                drop(ours);
                // SAFETY: back to the default, so the supervisor can wait
                // for its init.
                unsafe {
                    let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
                }
                let code = crate::supervisor::supervise_warm(theirs, reply);
                // SAFETY: leave without running the zygote's destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { .. }) => {
                self.idle.push_back(Warm { chan: ours });
                Ok(())
            }
            Err(e) => Err(format!("fork: {e}")),
        }
    }

    /// Hands the launch of the task in `dir` to an idle warm supervisor;
    /// false when none took it (none idle, or each one found dead).
    pub fn claim(&mut self, dir: &Path) -> bool {
        let msg = format!("{}\t{}", crate::supervisor::steps::now_us(), dir.display());
        while let Some(w) = self.idle.pop_front() {
            // MSG_NOSIGNAL: a dead one is an error here, not a SIGPIPE.
            let sent = send(
                w.chan.as_raw_fd(),
                msg.as_bytes(),
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            );
            if sent.is_ok() {
                // Our end closes here: the message is read before the EOF.
                return true;
            }
        }
        false
    }

    /// In a forked child of the zygote: closes the copies of the idle
    /// supervisors' sockets (a copy would keep an idle one alive after the
    /// zygote). The memory of the pool is the child's copy, never dropped.
    pub fn close_inherited(&self) {
        for w in &self.idle {
            // SAFETY: closing this process's copy of a descriptor number
            // it inherited; the OwnedFd in this copy is never used again
            // (the child leaves through _exit).
            unsafe { libc::close(w.chan.as_raw_fd()) };
        }
    }
}

/// The message a warm supervisor gets: when the zygote sent it (µs of
/// `steps::now_us`) and the task dir.
pub(crate) fn parse_claim(msg: &str) -> Option<(u64, &str)> {
    let (at, dir) = msg.split_once('\t')?;
    let at = at.parse().ok()?;
    (!dir.is_empty()).then_some((at, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse() {
        assert_eq!(parse_claim("12\t/d/t1"), Some((12, "/d/t1")));
        assert_eq!(parse_claim("12\t"), None);
        assert_eq!(parse_claim("x\t/d"), None);
        assert_eq!(parse_claim("/d"), None);
    }
}
