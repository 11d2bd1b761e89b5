//! The per-task supervisor, synchronous and single-threaded, forked by the
//! zygote (`zygote.rs`), a mode of the agent binary.
//!
//! Process tree of one task:
//!
//! ```text
//! agent ── exec once ──> zygote (gleaner-agent zygote; forks on request)
//!                          └─ supervisor (own session; reparented to init
//!                              │          when the zygote goes: outlives the agent)
//!                              └─ init    (pid 1 of a new pid ns; joins the task cgroup)
//!                                  └─ command (pivot_root/chroot, user, no caps)
//! ```
//!
//! The supervisor reports the launch result to the agent through the
//! zygote's socket (`ok <pid>` or `error: <reason>`), writes `supervisor.json`, waits for
//! the init, enforces the kill grace, then writes `exit.json` atomically,
//! removes the task cgroup and tells the agent through a datagram. **It never
//! needs the agent**: a task that ends while the agent is down leaves its exit
//! record behind for the next agent.

pub(crate) mod init;
mod logcap;
mod mounts;
pub mod netns;
pub mod seccomp;
pub mod shared;
mod steps;
pub mod zygote;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupHandle;
use crate::fsutil::{read_json, write_json_atomic};
use crate::layout::TaskDir;
use crate::status::{ExitRecord, StopReason};

pub use mounts::{ensure_mount_points, mount_setattr_available};
use zygote::Reporter;

/// Everything the supervisor needs, written by the agent into `launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub task_id: String,
    pub run: u32,
    pub rootfs: PathBuf,
    /// Host paths bind-mounted as /sandbox and /tmp.
    pub sandbox: PathBuf,
    pub tmp: PathBuf,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: CgroupHandle,
    /// RLIMIT_NPROC for kernels without a pids controller.
    pub nproc_rlimit: Option<u64>,
    pub kill_grace_s: f64,
    pub notify_socket: PathBuf,
    /// oom_score_adj of the task's processes: the host OOM killer takes
    /// batch work before any business process.
    #[serde(default)]
    pub oom_score_adj: i32,
    /// Install the default seccomp filter on the command.
    #[serde(default)]
    pub seccomp: bool,
    /// A network namespace of its own with only `lo`.
    #[serde(default)]
    pub network_none: bool,
    /// The group's network namespace (`"network": "group"`), held by a
    /// bind mount at this path: joined instead of making one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_netns: Option<PathBuf>,
    /// The group's shared volume: this host dir bind-mounted at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedMount>,
    /// The agent's dir of held group namespaces (`run/netns`), detached in
    /// the task's mount namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_dir: Option<PathBuf>,
    /// Cap of each captured stream (the oldest half is dropped past it).
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// How the init enters the rootfs.
    #[serde(default)]
    pub root_switch: RootSwitch,
    /// Mount a read-only /sys for the task.
    #[serde(default)]
    pub sys: bool,
    /// Make every mount below the rootfs read-only with one
    /// `mount_setattr(AT_RECURSIVE)` (5.12+) instead of one remount each.
    #[serde(default)]
    pub mount_setattr: bool,
}

/// A task group's shared volume in one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMount {
    /// The directory on the host.
    pub source: PathBuf,
    /// Where the member sees it (absolute, checked by `group::check_shared_path`).
    pub path: String,
}

/// Task sandboxing that depends on the kernel: detected once by the agent,
/// each forced off by `disable_features` to test the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SecurityFeatures {
    /// The default seccomp filter (without: tasks run unfiltered, logged
    /// once at start).
    pub seccomp: bool,
    /// Network namespaces (without: `"network": "none"` is refused).
    pub net_namespace: bool,
}

impl SecurityFeatures {
    pub fn detect(disabled: &[String]) -> Self {
        let off = |name: &str| disabled.iter().any(|d| d == name);
        let f = SecurityFeatures {
            seccomp: !off("seccomp") && seccomp::available(),
            net_namespace: !off("net_namespace") && netns::available(),
        };
        if !f.seccomp {
            tracing::warn!("seccomp filters unavailable (kernel or disable_features): tasks run without the default filter");
        }
        if !f.net_namespace {
            tracing::warn!("network namespaces unavailable (kernel or disable_features): tasks asking for network \"none\" are refused");
        }
        f
    }
}

fn default_log_max_bytes() -> u64 {
    100 << 20
}

/// How the init makes the rootfs its root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSwitch {
    /// pivot_root, then the old root is detached.
    #[default]
    PivotRoot,
    /// The rootfs mount is moved over `/` (MS_MOVE) and chrooted into, as
    /// runc's no-pivot mode: for a root in RAM (initramfs), where the kernel
    /// refuses pivot_root. The host's tree stays mounted beneath, out of
    /// reach of the task (no CAP_SYS_CHROOT, no path to it).
    MoveChroot,
}

/// Written by the supervisor once the command was executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorRecord {
    pub run: u32,
    pub supervisor_pid: i32,
    pub supervisor_start_ticks: u64,
    pub init_pid: i32,
    pub task_pid: i32,
    pub started_at: DateTime<Utc>,
    /// Boot of the host it started in: a record from before a reboot
    /// describes processes that are gone.
    #[serde(default)]
    pub boot_id: String,
    /// Where the supervisor's side of the launch went, `step=µs,...`
    /// (issue 16.2): logged by the agent with its own steps, then dropped
    /// (never kept in task.json).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub launch_steps: String,
}

/// Written by the agent before it signals the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub run: u32,
    pub reason: StopReason,
    pub grace_s: f64,
}

/// How often, while a task is stopping, its dying processes are looked
/// for (`CgroupHandle::escape_dying`).
const ESCAPE_POLL: Duration = Duration::from_millis(20);

/// Signals the supervisor waits for; blocked before the init is forked.
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Runs the supervisor of the task in `task_dir` in this process (a fresh
/// child of the zygote, which forked at `forked_at`, µs of
/// `steps::now_us`); `report` takes the launch result. Returns the
/// process's exit code.
pub(crate) fn supervise(task_dir: &Path, report: Reporter, forked_at: u64) -> i32 {
    let mut marks = steps::Marks::start_at(forked_at);
    marks.mark("sup_fork");
    let dir = TaskDir::new(task_dir);
    let cfg: LaunchConfig = match read_json(&dir.launch_json()) {
        Ok(c) => c,
        Err(e) => {
            report.error(&e.to_string());
            return 1;
        }
    };
    let _ = nix::unistd::setsid();
    set_process_name(c"gleaner-sup");
    marks.mark("sup_config");
    Supervisor::new(cfg, dir).run(report, marks)
}

struct Supervisor {
    cfg: LaunchConfig,
    dir: TaskDir,
}

/// How the task's command ended, as the init saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    Exited(i32),
    Signaled(i32),
}

impl Supervisor {
    fn new(cfg: LaunchConfig, dir: TaskDir) -> Self {
        Supervisor { cfg, dir }
    }

    fn run(self, report: Reporter, mut marks: steps::Marks) -> i32 {
        let report_fd = report.raw_fd();
        redirect_stdio(&self.dir.supervisor_log());

        let mut streams = logcap::Streams::new(Vec::new());
        match self.launch(report_fd, &mut streams, &mut marks) {
            Ok((init, task_pid, status_r)) => {
                report.ok(task_pid);
                let outcome = self.wait(init, status_r, &mut streams);
                // The output is complete before the exit is recorded.
                streams.drain(Duration::from_secs(5));
                self.finish(Some(outcome), None);
            }
            Err(reason) => {
                report.error(&reason);
                streams.drain(Duration::from_secs(1));
                self.finish(None, Some(reason));
            }
        }
        0
    }

    /// Forks the init and waits until the command was executed (or failed).
    fn launch(
        &self,
        report_fd: i32,
        streams: &mut logcap::Streams,
        marks: &mut steps::Marks,
    ) -> Result<(Pid, i32, File), String> {
        // The logs live in the task dir, which the task cannot write; the
        // task gets pipes, never the files.
        let open = |p: PathBuf| {
            logcap::CappedLog::open(&p, self.cfg.log_max_bytes)
                .map_err(|e| format!("open {}: {e}", p.display()))
        };
        let out_log = open(self.dir.stdout())?;
        let err_log = open(self.dir.stderr())?;
        let (out_r, stdout) = pipe()?;
        let (errs_r, stderr) = pipe()?;
        let (stdout, stderr) = (File::from(stdout), File::from(stderr));
        let (mut err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (mut steps_r, steps_w) = pipe()?;
        marks.mark("sup_logs");

        let signals = supervisor_signals();
        signals
            .thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        // Without a pid namespace the init is an ordinary process: it still
        // forwards signals and reaps, only orphans are not contained.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
            eprintln!("warning: no pid namespace for the task: {e}");
        }
        // SAFETY: single-threaded process.
        let init = match unsafe { fork() } {
            Err(e) => return Err(format!("fork init: {e}")),
            Ok(ForkResult::Child) => {
                // The agent's pipe must close when the supervisor reports.
                // SAFETY: closing an inherited descriptor this process owns.
                unsafe { libc::close(report_fd) };
                drop(err_r);
                drop(status_r);
                drop(out_r);
                drop(errs_r);
                drop(steps_r);
                let code = init::run(&self.cfg, err_w, status_w, steps_w, stdout, stderr);
                // SAFETY: leave without running the supervisor's destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => child,
        };
        drop(err_w);
        drop(status_w);
        drop(steps_w);
        // Only the task holds the write ends now: EOF when it is gone.
        drop(stdout);
        drop(stderr);
        *streams = logcap::Streams::new(vec![(out_r, out_log), (errs_r, err_log)]);
        let mut failure = String::new();
        let _ = err_r.read_to_string(&mut failure);
        if !failure.is_empty() {
            let _ = waitpid(init, None);
            return Err(failure.trim().to_owned());
        }
        // The init joined the cgroup, built the mounts, pivoted and forked
        // the command, whose exec closed the error pipe; its marks were
        // written before that (never waited for: O_NONBLOCK).
        if let Some(child) = read_available(&mut steps_r).and_then(|t| steps::Marks::decode(&t)) {
            marks.extend(child);
        }
        marks.mark("exec");
        let task_pid = crate::procfs_util::children(init.as_raw())
            .first()
            .copied()
            .unwrap_or(init.as_raw());
        let me = std::process::id() as i32;
        let record = SupervisorRecord {
            run: self.cfg.run,
            supervisor_pid: me,
            supervisor_start_ticks: crate::procfs_util::start_ticks(me).unwrap_or(0),
            init_pid: init.as_raw(),
            task_pid,
            started_at: Utc::now(),
            boot_id: crate::procfs_util::boot_id(),
            launch_steps: {
                marks.mark("sup_record");
                marks.durations()
            },
        };
        crate::runtime::hooks::pause_blocking("supervisor_record");
        // Pids mean nothing after a reboot: atomic, not durable.
        if let Err(e) = crate::fsutil::replace_json(&self.dir.supervisor_json(), &record) {
            let _ = kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
            return Err(format!("record supervisor: {e}"));
        }
        Ok((init, task_pid, status_r))
    }

    /// Waits for the init to exit, enforcing the grace of a stop request and
    /// copying the task's output as it comes.
    fn wait(&self, init: Pid, mut status_r: File, streams: &mut logcap::Streams) -> Outcome {
        let signals = supervisor_signals();
        let sigfd = signal_fd(&signals);
        let mut deadline: Option<Instant> = None;
        let mut sent_kill = false;
        // While stopping, the task's dying processes leave the idle class
        // as soon as they are dying (see `escape_dying`).
        let escape = !crate::runtime::hooks::fails("idle_escape");
        let init_status = loop {
            match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => break status,
                Err(_) => break WaitStatus::StillAlive,
            }
            if deadline.is_some() && escape {
                self.cfg.cgroup.escape_dying(None);
            }
            let timeout = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                if escape {
                    left.min(ESCAPE_POLL)
                } else {
                    left
                }
            });
            let got = match &sigfd {
                Some(fd) => poll_signal_or_output(fd, streams, timeout),
                // No signalfd: output is copied once the init is gone.
                None => wait_signal(&signals, timeout),
            };
            match got {
                Some(libc::SIGTERM) if deadline.is_none() => {
                    let grace = self
                        .stop_request()
                        .map(|s| s.grace_s)
                        .unwrap_or(self.cfg.kill_grace_s);
                    if escape {
                        // The init forwards the stop: it must run now.
                        self.cfg.cgroup.escape_dying(Some(init.as_raw()));
                    }
                    let _ = kill(init, Signal::SIGTERM);
                    deadline = Some(Instant::now() + Duration::from_secs_f64(grace.max(0.0)));
                }
                _ if deadline.is_some_and(|d| Instant::now() >= d) && !sent_kill => {
                    // SIGKILL to a pid-ns init takes the whole namespace down.
                    let _ = kill(init, Signal::SIGKILL);
                    sent_kill = true;
                }
                _ => {}
            }
        };
        // The init is gone: the kernel has killed the rest of its pid
        // namespace, whose exits (and so the end of the output) must not
        // starve either.
        if escape {
            self.cfg.cgroup.escape_dying(None);
        }
        let mut reported = String::new();
        let _ = status_r.read_to_string(&mut reported);
        match parse_outcome(&reported) {
            Some(o) => o,
            None => match init_status {
                WaitStatus::Exited(_, code) => Outcome::Exited(code),
                WaitStatus::Signaled(_, sig, _) => Outcome::Signaled(sig as i32),
                _ => Outcome::Signaled(libc::SIGKILL),
            },
        }
    }

    fn stop_request(&self) -> Option<StopRequest> {
        read_json::<StopRequest>(&self.dir.stop_json())
            .ok()
            .filter(|s| s.run == self.cfg.run)
    }

    /// Records the exit durably, removes the cgroup, tells the agent.
    fn finish(&self, outcome: Option<Outcome>, launch_error: Option<String>) {
        let stop = self.stop_request();
        let (exit_code, signal) = match outcome {
            Some(Outcome::Exited(c)) => (Some(c), None),
            Some(Outcome::Signaled(s)) => (None, Some(s)),
            None => (Some(127), None),
        };
        let oom_killed = launch_error.is_none()
            && stop.is_none()
            && self.cfg.cgroup.oom_killed(signal == Some(libc::SIGKILL));
        // Reported first, removed after: the exit must not wait for the
        // cgroup to empty (seconds when the host is busy: the task's last
        // processes are SCHED_IDLE and slow to die). The agent launches no
        // other run of this task while this process lives (it holds the
        // task's lock), and a cgroup still being removed must not bound its
        // role's quota from below (v1).
        self.cfg.cgroup.lift_cpu_quota();
        let record = ExitRecord {
            run: self.cfg.run,
            exit_code,
            signal,
            oom_killed,
            stop_reason: stop.map(|s| s.reason),
            launch_error,
            finished_at: Utc::now(),
        };
        if let Err(e) = write_json_atomic(&self.dir.exit_json(), &record) {
            eprintln!("error: {e}");
        }
        if let Ok(sock) = UnixDatagram::unbound() {
            let msg = format!("exit {} {}", self.cfg.task_id, self.cfg.run);
            let _ = sock.send_to(msg.as_bytes(), &self.cfg.notify_socket);
        }
        crate::runtime::hooks::pause_blocking("cgroup_remove");
        if let Err(e) = self.cfg.cgroup.destroy(Duration::from_secs(5)) {
            eprintln!("warning: {e}");
        }
    }
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    let (kind, n) = s.trim().split_once(' ')?;
    let n = n.parse().ok()?;
    match kind {
        "exit" => Some(Outcome::Exited(n)),
        "signal" => Some(Outcome::Signaled(n)),
        _ => None,
    }
}

/// A signalfd for the (blocked) `set`, non-blocking.
fn signal_fd(set: &SigSet) -> Option<File> {
    // SAFETY: a valid sigset; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, set.as_ref(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    // SAFETY: a fresh descriptor the kernel just returned.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// Polls the signalfd and the task's output pipes until a signal arrives or
/// `timeout` passes, copying output meanwhile. Returns the signal, if any.
fn poll_signal_or_output(
    sigfd: &File,
    streams: &mut logcap::Streams,
    timeout: Option<Duration>,
) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: sigfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(streams.pollfds());
        let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
        let ms = left.map_or(-1, |l| l.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: a valid array of pollfds for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return None;
        }
        streams.pump(&fds[1..]);
        if fds[0].revents != 0 {
            let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading one siginfo into a buffer of its size.
            let r = unsafe { libc::read(sigfd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
            if r == size as isize {
                // SAFETY: the kernel filled the whole struct.
                return Some(unsafe { info.assume_init() }.ssi_signo as i32);
            }
        }
    }
}

/// sigtimedwait over `set`; None on timeout or interruption.
fn wait_signal(set: &SigSet, timeout: Option<Duration>) -> Option<i32> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: valid sigset and timespec pointers for the duration of the call.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), ts_ptr) };
    (sig > 0).then_some(sig)
}

/// What the pipe `r` holds now, without waiting for more.
fn read_available(r: &mut File) -> Option<String> {
    // SAFETY: fcntl flags on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 1024];
    let n = r.read(&mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

pub(crate) fn pipe() -> Result<(File, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    unsafe { Ok((File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// stdin and stdout to /dev/null, stderr to `log`.
fn redirect_stdio(log: &Path) {
    let null = File::open("/dev/null");
    let log = OpenOptions::new().create(true).append(true).open(log);
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    if let Ok(log) = &log {
        // SAFETY: as above.
        unsafe { libc::dup2(log.as_raw_fd(), 2) };
    }
}

/// Names the process in `ps` (comm, 15 bytes at most).
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Unblocks everything, for the task's command.
pub(crate) fn unblock_all_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_text() {
        assert_eq!(parse_outcome("exit 3\n"), Some(Outcome::Exited(3)));
        assert_eq!(parse_outcome("signal 9"), Some(Outcome::Signaled(9)));
        assert_eq!(parse_outcome(""), None);
    }
}
