//! The agent's side of the zygote: starts it, sends launch requests, and
//! hands each supervisor's reply to the launch waiting for it. A dead
//! zygote is started again on the next launch.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::supervisor::zygote::{parse_reply, REQUEST};

/// The agent binary, re-executed as the zygote. /proc/self/exe keeps
/// working while an upgrade replaces the file on disk.
const SELF_EXE: &str = "/proc/self/exe";
/// A supervisor that has not answered by then is given up on.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Supervisors starting at once, per CPU. A burst (a fleet placing many
/// small tasks, a big task's exit admitting many queued ones) would
/// otherwise start every supervisor together in gleaner's idle-priority
/// cgroup, where on a busy host they starve each other past
/// LAUNCH_TIMEOUT; the rest wait their turn, and their timeout starts
/// when they are sent.
const STARTING_PER_CPU: usize = 4;

type Waiters = Arc<Mutex<HashMap<PathBuf, oneshot::Sender<Result<i32, String>>>>>;

struct Zygote {
    sock: Arc<AsyncFd<OwnedFd>>,
    child: tokio::process::Child,
}

pub(crate) struct Spawner {
    zygote: tokio::sync::Mutex<Option<Zygote>>,
    waiters: Waiters,
    starting: tokio::sync::Semaphore,
}

impl Spawner {
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Spawner {
            zygote: tokio::sync::Mutex::new(None),
            waiters: Arc::default(),
            starting: tokio::sync::Semaphore::new(STARTING_PER_CPU * cpus),
        }
    }

    /// A start slot: held from [`Self::launch`]'s send to its report.
    pub async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, String> {
        self.starting
            .acquire()
            .await
            .map_err(|_| "the agent is stopping".to_owned())
    }

    /// Starts the supervisor of the task in `dir` on its start slot
    /// (`_turn`, from [`Self::turn`]); returns the task's pid once it
    /// executed, or why it could not start.
    pub async fn launch(
        &self,
        dir: &Path,
        _turn: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<i32, String> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(dir.to_owned(), tx);
        let sent = self.send(dir).await;
        if let Err(e) = sent {
            self.waiters.lock().unwrap().remove(dir);
            return Err(e);
        }
        match tokio::time::timeout(LAUNCH_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("supervisor ended without a report".into()),
            Err(_) => {
                self.waiters.lock().unwrap().remove(dir);
                Err(format!(
                    "no report from the supervisor within {LAUNCH_TIMEOUT:?}"
                ))
            }
        }
    }

    async fn send(&self, dir: &Path) -> Result<(), String> {
        let msg = format!("{REQUEST}\t{}", dir.display());
        let mut guard = self.zygote.lock().await;
        for attempt in 0..2 {
            if guard
                .as_mut()
                .is_none_or(|z| !matches!(z.child.try_wait(), Ok(None)))
            {
                if attempt == 0 && guard.is_some() {
                    tracing::warn!("zygote exited; starting a new one");
                }
                *guard = Some(self.start_zygote()?);
            }
            let sock = guard.as_ref().map(|z| z.sock.clone()).expect("zygote");
            let result = loop {
                let mut ready = sock
                    .writable()
                    .await
                    .map_err(|e| format!("zygote socket: {e}"))?;
                match ready.try_io(|fd| {
                    send(fd.as_raw_fd(), msg.as_bytes(), MsgFlags::MSG_DONTWAIT)
                        .map_err(std::io::Error::from)
                }) {
                    Ok(r) => break r,
                    Err(_would_block) => continue,
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::warn!("zygote unreachable ({e}); starting a new one");
                    *guard = None;
                }
                Err(e) => return Err(format!("zygote: {e}")),
            }
        }
        Err("zygote unavailable".into())
    }

    fn start_zygote(&self) -> Result<Zygote, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("zygote socketpair: {e}"))?;
        let child = tokio::process::Command::new(SELF_EXE)
            .arg("zygote")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("start zygote: {e}"))?;
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("zygote socket: {e}"))?;
        // SAFETY: `ours` is an OwnedFd, moved in: it stays open and the same
        // for the AsyncFd's whole life.
        let sock = unsafe { AsyncFd::register(ours) }
            .map_err(|e| format!("zygote socket: {}", e.into_parts().1))?;
        let sock = Arc::new(sock);
        tokio::spawn(read_replies(sock.clone(), self.waiters.clone()));
        tracing::debug!(pid = child.id(), "zygote started");
        Ok(Zygote { sock, child })
    }
}

/// Dispatches supervisor replies until the zygote's socket closes.
async fn read_replies(sock: Arc<AsyncFd<OwnedFd>>, waiters: Waiters) {
    let mut buf = vec![0u8; 8192];
    loop {
        let Ok(mut ready) = sock.readable().await else {
            return;
        };
        match ready.try_io(|fd| {
            recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                match parse_reply(&msg) {
                    Some(reply) => {
                        if let Some(tx) = waiters.lock().unwrap().remove(&reply.task_dir) {
                            let _ = tx.send(reply.result);
                        }
                    }
                    None => tracing::warn!("unexpected message from a supervisor: {msg:?}"),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("zygote socket: {e}");
                return;
            }
            Err(_would_block) => continue,
        }
    }
}
