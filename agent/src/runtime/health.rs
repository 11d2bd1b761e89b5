//! Health checks next to a running task: one tokio task per check of the
//! spec's `health_checks`, started when a run becomes RUNNING (launch or
//! re-adoption) and aborted when the run ends (`finish_run`). Each probe is
//! bounded by the check's timeout, so no check can hang the agent; the
//! rules (grace period, consecutive failures) are `gleaner_core::health`.
//!
//! Results go into the task's status (`health`), which fleet mode publishes
//! with the task's record. Past `max_consecutive_failures` the task is
//! stopped with reason `health_check_failed`.
//!
//! HTTP and TCP probe `127.0.0.1:<port>` from the agent (tasks with
//! `network: none` are refused such checks at submission); COMMAND runs
//! `/bin/sh -c <command>` inside the task through `gleaner exec`'s helper
//! (its namespaces, root, cgroup, user and filter).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{Agent, TaskRef};
use crate::exec::ExecRequest;
use crate::status::{StopReason, TaskState};
use gleaner_core::health::{self, HealthCheck, Outcome, Protocol, TaskHealth};

/// How much of an HTTP answer is read for its status line.
const MAX_HEAD: usize = 1024;

impl Agent {
    /// Starts the checks of `task`'s current run (it is RUNNING); any left
    /// from an earlier run are aborted first.
    pub(crate) fn start_health_checks(self: &Arc<Self>, task: &TaskRef) {
        let mut t = task.lock().unwrap();
        for h in t.checks.drain(..) {
            h.abort();
        }
        let checks = t.record.spec.health_checks.clone();
        if checks.is_empty() || t.record.status.state != TaskState::Running {
            return;
        }
        t.record.status.health = Some(TaskHealth::new(checks.len()));
        let (id, run) = (t.record.status.id.clone(), t.record.run);
        for (i, check) in checks.into_iter().enumerate() {
            let agent = self.clone();
            let (id, task) = (id.clone(), task.clone());
            let h = tokio::spawn(async move { agent.check_loop(task, id, run, i, check).await });
            t.checks.push(h.abort_handle());
        }
        drop(t);
        self.touched();
    }

    async fn check_loop(
        self: Arc<Self>,
        task: TaskRef,
        id: String,
        run: u32,
        i: usize,
        check: HealthCheck,
    ) {
        let interval = Duration::from_secs_f64(check.interval_s);
        let timeout = Duration::from_secs_f64(check.timeout_s);
        // A COMMAND probe past its timeout may still be cleaning up.
        let mut inflight: Option<JoinHandle<Outcome>> = None;
        loop {
            let (ports, started) = {
                let t = task.lock().unwrap();
                if t.record.run != run || t.record.status.state != TaskState::Running {
                    return;
                }
                let started = t.record.status.started_at.unwrap_or_else(Utc::now);
                (t.record.status.ports.clone(), started)
            };
            let began = tokio::time::Instant::now();
            let outcome = self
                .probe(&id, &check, &ports, timeout, &mut inflight)
                .await;
            let kill = {
                let mut t = task.lock().unwrap();
                if t.record.run != run || t.record.status.state != TaskState::Running {
                    return;
                }
                let Some(h) = t.record.status.health.as_mut() else {
                    return;
                };
                let kill = h.checks[i].record(&check, outcome, Utc::now(), started);
                h.refresh();
                kill && t.stopping.is_none()
            };
            self.touched();
            if kill {
                tracing::warn!(task = %id, check = i, "health check failed too often: stopping the task");
                if let Err(e) = self.stop(&id, StopReason::HealthCheckFailed) {
                    tracing::error!(task = %id, "stop after failed health checks: {e}");
                }
                return;
            }
            tokio::time::sleep_until(began + interval).await;
        }
    }

    /// One probe, bounded by `timeout`.
    async fn probe(
        self: &Arc<Self>,
        id: &str,
        check: &HealthCheck,
        ports: &[u16],
        timeout: Duration,
        inflight: &mut Option<JoinHandle<Outcome>>,
    ) -> Outcome {
        let timed_out = || Outcome::Fail(format!("no answer within {:.1}s", timeout.as_secs_f64()));
        match check.protocol {
            Protocol::Command => {
                let running = inflight.as_ref().is_some_and(|h| !h.is_finished());
                if let Some(skipped) = health::before_probe(running) {
                    return skipped;
                }
                let cmd = check.command.clone().unwrap_or_default();
                // Its own tokio task: neither this timeout nor an abort of
                // the loop (the task ended) leaves the exec's cgroup behind;
                // it ends within the exec's own start bound plus `timeout`.
                let agent = self.clone();
                let id = id.to_owned();
                let mut run =
                    tokio::spawn(async move { agent.command_probe(&id, cmd, timeout).await });
                match tokio::time::timeout(timeout, &mut run).await {
                    Ok(done) => done.unwrap_or_else(|e| Outcome::Fail(format!("check ended: {e}"))),
                    Err(_) => {
                        *inflight = Some(run);
                        timed_out()
                    }
                }
            }
            Protocol::Tcp | Protocol::Http => {
                let Some(port) = check.target_port(ports) else {
                    return Outcome::Fail("the task has no such port".into());
                };
                let probe = async {
                    let mut conn = TcpStream::connect(("127.0.0.1", port))
                        .await
                        .map_err(|e| format!("connect to port {port}: {e}"))?;
                    if check.protocol == Protocol::Tcp {
                        return Ok(Outcome::Pass);
                    }
                    let path = check.path.as_deref().unwrap_or("/");
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: gleaner-health\r\nConnection: close\r\n\r\n"
                    );
                    conn.write_all(req.as_bytes())
                        .await
                        .map_err(|e| format!("send to port {port}: {e}"))?;
                    let line = read_line(&mut conn)
                        .await
                        .map_err(|e| format!("read from port {port}: {e}"))?;
                    Ok(match health::parse_status_line(&line) {
                        Some(code) => health::classify_http(code, check.ignore_http_1xx),
                        None => Outcome::Fail(format!("not an HTTP answer: {:.60}", line)),
                    })
                };
                match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => Outcome::Fail(e),
                    Err(_) => timed_out(),
                }
            }
        }
    }

    /// `/bin/sh -c cmd` in the task, as `gleaner exec` runs commands.
    async fn command_probe(self: &Arc<Self>, id: &str, cmd: String, timeout: Duration) -> Outcome {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), cmd],
            tty: false,
            env: BTreeMap::new(),
            rows: None,
            cols: None,
        };
        let started = tokio::time::Instant::now();
        // Not cut short: exec_start bounds itself, and dropping it midway
        // would leave the exec's cgroup behind.
        let session = match self.exec_start(id, &req).await {
            Ok(s) => s,
            Err(e) => return Outcome::Fail(format!("exec: {e}")),
        };
        let left = timeout.saturating_sub(started.elapsed());
        match session.run_detached(left).await {
            (Some(0), _) => Outcome::Pass,
            (Some(code), out) if out.is_empty() => Outcome::Fail(format!("exit {code}")),
            (Some(code), out) => Outcome::Fail(format!("exit {code}: {out}")),
            (None, _) => Outcome::Fail(format!("no answer within {:.1}s", timeout.as_secs_f64())),
        }
    }
}

/// The first line of an answer (at most [`MAX_HEAD`] bytes).
async fn read_line(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while head.len() < MAX_HEAD && !head.contains(&b'\n') {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    Ok(String::from_utf8_lossy(&head[..end]).trim_end().to_owned())
}
