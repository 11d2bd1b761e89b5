//! The agent's side of `gleaner exec` (see `crate::exec`): checks the task,
//! makes the exec's cgroup, starts the helper and, once the client's
//! connection is upgraded, relays frames until the command or the client is
//! gone. Then the exec cgroup is killed and removed: nothing an exec started
//! outlives it.

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::{cgroup_rel, Agent, AgentError};
use crate::cgroup::CgroupHandle;
use crate::exec::proto::{self, Decoder, Kind};
use crate::exec::{ExecRequest, NsExecConfig};
use crate::status::TaskState;
use crate::supervisor::{LaunchConfig, SupervisorRecord};

/// How long the helper may take to enter the task and execute.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a detached command's output is still read after it exited (a
/// background child may hold the pipe open for ever).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(200);

static NEXT_EXEC: AtomicU64 = AtomicU64::new(1);

/// A command running in a task, not yet connected to its client.
pub struct ExecSession {
    task_id: String,
    child: Child,
    cgroup: CgroupHandle,
}

impl Agent {
    /// Enters task `id` and executes `req` there. Errors: the task is
    /// unknown (404), not running (409), or the command could not be
    /// executed (400 for a missing program, else 500).
    pub async fn exec_start(&self, id: &str, req: &ExecRequest) -> Result<ExecSession, AgentError> {
        req.validate().map_err(AgentError::Invalid)?;
        let (rel, dir, state) = {
            let t = self.task(id)?;
            let t = t.lock().unwrap();
            (cgroup_rel(&t.record), t.dir.clone(), t.record.status.state)
        };
        if state != TaskState::Running {
            return Err(AgentError::Conflict(format!(
                "task {id:?} is {}: exec needs a running task",
                state.as_str()
            )));
        }
        let launch: LaunchConfig = crate::fsutil::read_json(&dir.launch_json())
            .map_err(|e| AgentError::Internal(format!("task {id:?}: {e}")))?;
        let sup: SupervisorRecord =
            crate::fsutil::read_json(&dir.supervisor_json()).map_err(|e| {
                AgentError::Conflict(format!("task {id:?} has no running process: {e}"))
            })?;
        let gone = || AgentError::Conflict(format!("task {id:?} has no running process"));
        if !crate::procfs_util::is_same_process(sup.supervisor_pid, sup.supervisor_start_ticks) {
            return Err(gone());
        }
        // The init must still be the supervisor's child: a pid alone could
        // name any process by now.
        if parent_of(sup.init_pid) != Some(sup.supervisor_pid) {
            return Err(gone());
        }
        let init_start_ticks = crate::procfs_util::start_ticks(sup.init_pid).ok_or_else(gone)?;

        let n = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
        let exec_rel = format!("{rel}/exec-{}-{n}", std::process::id());
        let cgroup = self.cgroups.handle(&exec_rel);
        // Plain directories: no controllers delegated below a task (v2's
        // "no internal processes"), the task's limits bind from above.
        for d in &cgroup.dirs {
            std::fs::create_dir(d)
                .map_err(|e| AgentError::Internal(format!("mkdir {}: {e}", d.display())))?;
        }
        let mut env = launch.env.clone();
        let mut extra: Vec<(String, String)> = req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if req.tty && !req.env.contains_key("TERM") {
            extra.push(("TERM".into(), "xterm".into()));
        }
        for (k, v) in extra {
            let prefix = format!("{k}=");
            env.retain(|e| !e.starts_with(&prefix));
            env.push(format!("{k}={v}"));
        }
        let cfg = NsExecConfig {
            init_pid: sup.init_pid,
            init_start_ticks,
            cgroup: cgroup.clone(),
            argv: req.argv.clone(),
            env,
            uid: launch.uid,
            gid: launch.gid,
            nproc_rlimit: launch.nproc_rlimit,
            oom_score_adj: launch.oom_score_adj,
            seccomp: launch.seccomp,
            tty: req.tty,
            rows: req.rows.unwrap_or(24),
            cols: req.cols.unwrap_or(80),
        };
        let started = start_helper(&dir.root().join(format!("exec-{n}.json")), &cfg).await;
        match started {
            Ok(child) => Ok(ExecSession {
                task_id: id.to_owned(),
                child,
                cgroup,
            }),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || cgroup.destroy(Duration::from_secs(2)))
                    .await;
                Err(e)
            }
        }
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Writes the helper's config (0600), starts `gleaner-agent nsexec` with a
/// status pipe on fd 3 and waits until the command was executed.
async fn start_helper(path: &std::path::Path, cfg: &NsExecConfig) -> Result<Child, AgentError> {
    let json = serde_json::to_vec(cfg).map_err(|e| AgentError::Internal(e.to_string()))?;
    super::launcher::write_private(path, &json)
        .map_err(|e| AgentError::Internal(format!("write {}: {e}", path.display())))?;
    let (status_r, status_w) = crate::supervisor::pipe().map_err(AgentError::Internal)?;
    let w = status_w.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("nsexec")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: dup2 between fork and exec touches only this child's table.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(status_w);
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(AgentError::Internal(format!("start the exec helper: {e}")));
        }
    };
    let mut status = tokio::fs::File::from_std(status_r);
    let mut text = String::new();
    let read = tokio::time::timeout(START_TIMEOUT, status.read_to_string(&mut text)).await;
    let _ = std::fs::remove_file(path);
    match read {
        Ok(Ok(_)) if text.is_empty() => Ok(child),
        Ok(Ok(_)) if text.contains("not found in the task's root") => {
            Err(AgentError::Invalid(text))
        }
        Ok(Ok(_)) if text.contains("init is gone") => Err(AgentError::Conflict(text)),
        Ok(Ok(_)) => Err(AgentError::Internal(text)),
        Ok(Err(e)) => Err(AgentError::Internal(format!("exec helper: {e}"))),
        Err(_) => Err(AgentError::Internal(format!(
            "exec helper: no report within {START_TIMEOUT:?}"
        ))),
    }
}

impl ExecSession {
    /// Relays between the client's upgraded connection and the command
    /// until the command exits (then its exit frame is sent) or the client
    /// goes. Either way the exec cgroup is killed and removed.
    pub async fn relay<S>(mut self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let stdin = self.child.stdin.take();
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
        let pumps = [
            self.child
                .stdout
                .take()
                .map(|s| pump(s, Kind::Stdout, out_tx.clone())),
            self.child
                .stderr
                .take()
                .map(|s| pump(s, Kind::Stderr, out_tx.clone())),
        ];
        drop(out_tx);
        let mut input = tokio::spawn(async move { client_input(&mut rd, stdin).await });
        let mut code: Option<i32> = None;
        let mut client_gone = false;
        let mut output_done = false;
        loop {
            tokio::select! {
                frame = out_rx.recv(), if !output_done => match frame {
                    Some(bytes) => {
                        if wr.write_all(&bytes).await.is_err() {
                            client_gone = true;
                            break;
                        }
                    }
                    None => output_done = true,
                },
                status = self.child.wait(), if code.is_none() => {
                    code = Some(match status {
                        Ok(s) => exit_code(s),
                        Err(_) => 127,
                    });
                    // Background children still hold the pipes: end them so
                    // the output reaches EOF.
                    self.kill_cgroup().await;
                },
                _ = &mut input, if !client_gone => {
                    client_gone = true;
                    break;
                },
            }
            if code.is_some() && output_done {
                break;
            }
        }
        if client_gone {
            let _ = self.child.start_kill();
            tracing::info!(target: "audit", task = %self.task_id, "exec ended: the client went away");
        } else if let Some(code) = code {
            let _ = wr.write_all(&proto::exit_frame(code)).await;
            let _ = wr.shutdown().await;
            tracing::info!(target: "audit", task = %self.task_id, code, "exec ended");
        }
        input.abort();
        for p in pumps.into_iter().flatten() {
            p.abort();
        }
        let _ = self.child.wait().await;
        self.kill_cgroup().await;
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Runs the command to its end without a client (a COMMAND health
    /// check): its exit code, or `timeout` passed (it is killed). Output is
    /// drained so the command never blocks on a full pipe; the last bytes
    /// are returned for the check's message. The exec cgroup is removed
    /// either way.
    pub(super) async fn run_detached(mut self, timeout: Duration) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let out = self.child.stdout.take();
        let err = self.child.stderr.take();
        let tail = async {
            let (mut a, b) = tokio::join!(drain_tail(out), drain_tail(err));
            a.extend_from_slice(&b);
            a
        };
        // Ends on the command's exit, not on its output's EOF: a background
        // child holding stdout would otherwise hold the probe to its
        // timeout. The output then gets a moment, and the cgroup's kill
        // below ends what was left behind.
        let run = async {
            tokio::pin!(tail);
            let mut early = None;
            let status = tokio::select! {
                s = self.child.wait() => s,
                t = &mut tail => {
                    early = Some(t);
                    self.child.wait().await
                }
            };
            let tail = match early {
                Some(t) => t,
                None => tokio::time::timeout(OUTPUT_AFTER_EXIT, tail)
                    .await
                    .unwrap_or_default(),
            };
            (status.ok().map(exit_code), tail)
        };
        let result = tokio::time::timeout(timeout, run).await;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.kill_cgroup().await;
        match result {
            Ok((code, tail)) => (code, String::from_utf8_lossy(&tail).trim().to_owned()),
            Err(_) => (None, String::new()),
        }
    }

    /// Ends a session whose client never connected.
    pub async fn abort(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.kill_cgroup().await;
    }

    async fn kill_cgroup(&self) {
        let cgroup = self.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cgroup.destroy(Duration::from_secs(5))).await;
    }
}

/// Reads `r` to its end, keeping the last 256 bytes.
async fn drain_tail<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 256 {
            tail.drain(..tail.len() - 256);
        }
    }
    tail
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// Frames of one of the command's streams.
fn pump<R: AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    kind: Kind,
    tx: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(proto::encode(kind, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// The client's frames to the command's stdin; returns when the client's
/// connection ends (EOF, error or a bad frame).
async fn client_input<R: AsyncRead + Unpin>(rd: &mut R, mut stdin: Option<ChildStdin>) {
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => match f.kind {
                    Kind::Stdin => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&f.payload).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Kind::StdinEof => stdin = None,
                    _ => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
