//! Issue 22, `gleaner exec`: a command inside a running task, in its pid
//! namespace, root, cgroup, user and filter; admins only; nothing it
//! starts outlives its connection. Root only: real tasks and cgroups.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use gleaner_agent::client::{Client, ClientError};
use gleaner_agent::exec::ExecRequest;
use gleaner_agent::status::TaskState;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

/// Tests that need the CPU (a memory hog, a race to catch) run one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        tty: false,
        env: BTreeMap::new(),
        rows: None,
        cols: None,
    }
}

/// Runs `argv` in task `id`, feeding `stdin`; (exit code, stdout, stderr).
fn exec(client: &Client, id: &str, argv: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut conn = client.exec(id, &req(argv)).unwrap();
    let mut input = conn.input().unwrap();
    input.send_stdin(stdin).unwrap();
    input.close_stdin().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = conn.copy_output(&mut out, &mut err).unwrap();
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn sleeper(agent: &TestAgent, id: &str, mem_mb: f64) {
    agent
        .submit(json!({"id": id, "argv": ["sleep", "600"], "user": "nobody",
                       "resources": {"cpus": 0.5, "mem_mb": mem_mb}}))
        .unwrap();
    agent.wait_state(id, TaskState::Running, LONG);
}

/// Processes whose command line is exactly `cmdline` (host view).
fn pids_running(cmdline: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline)
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn exec_runs_in_the_tasks_namespaces_cgroup_and_user() {
    if !require_root("exec_runs_in_the_tasks_namespaces_cgroup_and_user") {
        return;
    }
    let agent = TestAgent::start();
    sleeper(&agent, "t1", 64.0);
    for client in [
        agent.socket_client(),
        Client::new(&agent.base, Some(agent.token.clone())),
    ] {
        // Its own pid namespace: the task's init, the task, and ps.
        let (code, out, _) = exec(&client, "t1", &["ps"], b"");
        assert_eq!(code, 0, "{out}");
        let pids: Vec<&str> = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(out.contains("sleep 600") && pids.len() == 3, "{out}");
        assert_eq!(pids[0], "1", "{out}");
        let (_, out, _) = exec(&client, "t1", &["cat", "/proc/self/cgroup"], b"");
        let want = format!("{}/batch/t1/exec-", agent.cgroup_root);
        assert!(
            out.lines()
                .any(|l| l.contains(":memory:") && l.contains(&want)),
            "{out}"
        );
        let (_, out, _) = exec(&client, "t1", &["id"], b"");
        assert!(out.starts_with("uid=65534(nobody)"), "{out}");
        // The task's root: the host's files are not there.
        let (code, _, _) = exec(
            &client,
            "t1",
            &["ls", agent.data_dir.to_str().unwrap()],
            b"",
        );
        assert_ne!(code, 0);
        // Streams and the exit code come back apart; stdin goes in.
        let (code, out, err) = exec(
            &client,
            "t1",
            &["sh", "-c", "cat; echo oops >&2; exit 7"],
            b"hello\n",
        );
        assert_eq!((code, out.as_str(), err.as_str()), (7, "hello\n", "oops\n"));
        // The task's filter: unshare is refused inside.
        let (code, _, err) = exec(&client, "t1", &["unshare", "-n", "true"], b"");
        assert_ne!(code, 0, "{err}");
    }
    assert!(
        agent.log_tail().contains("exec in task t1"),
        "no audit line"
    );
    agent.kill("t1");
}

#[test]
fn an_exec_ends_with_its_connection_and_its_children_with_it() {
    if !require_root("an_exec_ends_with_its_connection_and_its_children_with_it") {
        return;
    }
    let agent = TestAgent::start();
    sleeper(&agent, "t2", 64.0);
    let client = agent.socket_client();
    // A background child of a command that exits.
    let (code, _, _) = exec(
        &client,
        "t2",
        &["sh", "-c", "sleep 987 & echo started"],
        b"",
    );
    assert_eq!(code, 0);
    wait_until(
        Duration::from_secs(10),
        "the background child killed",
        || pids_running("sleep 987").is_empty(),
    );
    // A command whose client goes away.
    let conn = client.exec("t2", &req(&["sleep", "986"])).unwrap();
    wait_until(Duration::from_secs(10), "the exec'd sleep running", || {
        !pids_running("sleep 986").is_empty()
    });
    conn.close();
    wait_until(Duration::from_secs(10), "the exec'd sleep killed", || {
        pids_running("sleep 986").is_empty()
    });
    // The task itself is untouched and no exec cgroup is left.
    assert_eq!(agent.status("t2").state, TaskState::Running);
    let task_dir = agent.cgroup_dir("memory", "batch/t2");
    wait_until(Duration::from_secs(10), "exec cgroups removed", || {
        std::fs::read_dir(&task_dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("exec-"))
    });
    agent.kill("t2");
}

#[test]
fn an_execd_memory_hog_meets_the_tasks_limit() {
    if !require_root("an_execd_memory_hog_meets_the_tasks_limit") {
        return;
    }
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let agent = TestAgent::start();
    sleeper(&agent, "t3", 32.0);
    let (code, _, err) = exec(&agent.socket_client(), "t3", &["tail", "/dev/zero"], b"");
    assert_eq!(code, 128 + 9, "{err}");
    assert_eq!(agent.status("t3").state, TaskState::Running);
    agent.kill("t3");
}

#[test]
fn exec_is_refused_to_tasks_bad_input_and_ended_tasks() {
    if !require_root("exec_is_refused_to_tasks_bad_input_and_ended_tasks") {
        return;
    }
    let agent = TestAgent::start();
    // A task with a scoped token, trying its own task.
    agent
        .submit(json!({"id": "job.a", "cmd": "echo \"token $GLEANER_TOKEN\"; sleep 600",
                       "api_access": {"scope": "own-group"}, "resources": {"cpus": 0.2, "mem_mb": 32}}))
        .unwrap();
    agent.wait_output("job.a", "token ");
    let logs = agent.logs("job.a", "stdout");
    let token = logs.trim().strip_prefix("token ").unwrap().to_owned();
    let scoped = Client::new(&agent.base, Some(token));
    let status = |r: Result<_, ClientError>| match r {
        Err(ClientError::Api { status, message }) => (status, message),
        Ok(_) => (0, "connected".into()),
        Err(e) => (1, e.to_string()),
    };
    let (code, msg) = status(scoped.exec("job.a", &req(&["id"])));
    assert_eq!(code, 403, "{msg}");
    let nobody = Client::new(&agent.base, Some("wrong".into()));
    assert_eq!(status(nobody.exec("job.a", &req(&["id"]))).0, 401);
    let admin = agent.socket_client();
    assert_eq!(status(admin.exec("nope", &req(&["id"]))).0, 404);
    let (code, msg) = status(admin.exec("job.a", &req(&["no-such-program"])));
    assert_eq!(code, 400, "{msg}");
    assert_eq!(status(admin.exec("job.a", &req(&[]))).0, 400);
    // Without the upgrade headers: a plain POST.
    let plain: Result<serde_json::Value, _> =
        admin.post("/v1/tasks/job.a/exec", &json!({"argv": ["id"]}));
    assert!(
        matches!(plain, Err(ClientError::Api { status: 400, .. })),
        "{plain:?}"
    );
    agent.kill("job.a");
    assert_eq!(status(admin.exec("job.a", &req(&["id"]))).0, 409);
    // The CLI: one line and an exit code.
    let out = agent.cli(&["exec", "job.a", "--", "id"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("gleaner: 409") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn the_cli_execs_with_the_commands_exit_code() {
    if !require_root("the_cli_execs_with_the_commands_exit_code") {
        return;
    }
    let agent = TestAgent::start();
    sleeper(&agent, "t5", 64.0);
    let out = agent.cli(&[
        "exec",
        "t5",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // With a terminal: the command's stdin and stdout are one (its name,
    // /dev/pts/N, is not in the task's root: `tty` cannot say it).
    let out = agent.cli(&[
        "exec",
        "--tty",
        "t5",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo on-a-tty",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "on-a-tty\r\n",
        "{out:?}"
    );
    agent.kill("t5");
}

// ---- found in review (each failed on the code before its fix) -------------

/// The agent killed (-9, or stopped for an upgrade) mid-exec left the
/// exec'd command running, attached to nothing: the helper only waited for
/// it, and nothing tied it to the agent. The helper now ends its command's
/// process group when the agent's end of its pipes is gone, and a
/// restarted agent removes what is left in `exec-*` cgroups.
#[test]
fn an_exec_ends_when_the_agent_dies() {
    if !require_root("an_exec_ends_when_the_agent_dies") {
        return;
    }
    let mut agent = TestAgent::start();
    sleeper(&agent, "t6", 64.0);
    for tty in [false, true] {
        let mut r = req(&["sh", "-c", "sleep 984 & sleep 985"]);
        r.tty = tty;
        let conn = agent.socket_client().exec("t6", &r).unwrap();
        wait_until(Duration::from_secs(10), "the exec'd sleeps running", || {
            pids_running("sleep 985").len() == 1 && pids_running("sleep 984").len() == 1
        });
        agent.stop_agent(libc::SIGKILL);
        wait_until(
            Duration::from_secs(10),
            &format!("the exec'd command and its child ended with the agent (tty {tty})"),
            || pids_running("sleep 985").is_empty() && pids_running("sleep 984").is_empty(),
        );
        drop(conn);
        agent.spawn();
        assert_eq!(agent.status("t6").state, TaskState::Running);
        let task_dir = agent.cgroup_dir("memory", "batch/t6");
        wait_until(Duration::from_secs(10), "exec cgroups removed", || {
            std::fs::read_dir(&task_dir)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("exec-"))
        });
    }
    agent.kill("t6");
}

/// A task running as root (a `root_roles` role: uid 0, no capabilities,
/// filtered) could open `/proc/<pid>/mem` of the exec'd process between
/// the helper dropping its capabilities and installing the task's filter:
/// same uid, nothing left to protect, still dumpable. Writing there runs
/// code in a process without the seccomp filter (user namespaces,
/// io_uring, bpf: what the filter keeps from tasks), and its environment
/// was the agent's. The helper is not dumpable now until the exec, so the
/// kernel refuses that access to anyone without CAP_SYS_PTRACE.
///
/// The task widens the window as any submitter could: its `PATH` starts
/// with 1,000 entries through a symlink loop, each costing the helper's
/// program lookup a 40-link walk (the exec shares the task's CPU limit).
/// On a saturated machine gleaner's SCHED_IDLE tasks may starve past the
/// helper's 20 s start limit: such an exec (500) is tried again.
#[test]
fn a_root_task_cannot_reach_the_exec_before_its_filter() {
    if !require_root("a_root_task_cannot_reach_the_exec_before_its_filter") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]");
    let slow_path = format!("{}/bin", "/tmp/l/a:".repeat(1_000));
    let watcher = r#"PATH=/bin
ln -s l /tmp/l
echo ready
while :; do
  for d in /proc/[0-9]*; do
    case ${d#/proc/} in 1|$$) continue;; esac
    grep -q 'Seccomp:.0$' $d/status 2>/dev/null || continue
    if (exec 3<>$d/mem) 2>/dev/null && grep -q 'Seccomp:.0$' $d/status 2>/dev/null; then
      echo "HIT $d"
    fi
  done
done"#;
    agent
        .submit(json!({"id": "t7", "user": "root", "cmd": watcher,
                       "env": {"PATH": slow_path},
                       "resources": {"cpus": 1.0, "mem_mb": 64}}))
        .unwrap();
    agent.wait_output("t7", "ready");
    let client = agent.socket_client();
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let (mut done, mut starved) = (0, 0);
    while done < 15 && starved < 10 {
        match client.exec("t7", &req(&["true"])) {
            Ok(mut conn) => {
                let code = conn.copy_output(&mut Vec::new(), &mut Vec::new()).unwrap();
                assert_eq!(code, 0);
                done += 1;
            }
            Err(ClientError::Api {
                status: 500,
                message,
            }) if message.contains("no report") => starved += 1,
            Err(e) => panic!("exec: {e}"),
        }
        if agent.logs("t7", "stdout").contains("HIT") {
            break;
        }
    }
    assert!(done > 0, "no exec ran: the machine starved every one");
    let out = agent.logs("t7", "stdout");
    assert!(
        !out.contains("HIT"),
        "the task opened an unfiltered exec process's memory:\n{out}"
    );
    // The exec'd command itself is as the task's: filtered.
    let (_, out, _) = exec(
        &client,
        "t7",
        &["/bin/grep", "Seccomp:", "/proc/self/status"],
        b"",
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");
    agent.kill("t7");
}

/// An exec from a client that vanished without a FIN (its host gone) held
/// its session, cgroup and connection slot for ever: the agent's TCP
/// sockets had no keepalive. The kernel's timer column in /proc/net/tcp
/// says which timer runs on the agent's side of an idle connection: `00`
/// none, `02` keepalive.
#[test]
fn tcp_connections_probe_a_vanished_client() {
    if !require_root("tcp_connections_probe_a_vanished_client") {
        return;
    }
    let agent = TestAgent::start();
    let port: u16 = agent.base.rsplit(':').next().unwrap().parse().unwrap();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ours = client.local_addr().unwrap().port();
    // local (agent) 127.0.0.1:port, remote 127.0.0.1:ours, ESTABLISHED.
    let (local, remote) = (
        format!("0100007F:{port:04X}"),
        format!("0100007F:{ours:04X}"),
    );
    let timer = || {
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        text.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())
                && f.get(2) == Some(&remote.as_str())
                && f.get(3) == Some(&"01"))
            .then(|| f[5].to_owned())
        })
    };
    // Until the agent accepts, the kernel holds the socket without options.
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        last = timer();
        if last.as_deref().is_some_and(|t| t.starts_with("02:")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = last.expect("the agent's side of the connection in /proc/net/tcp");
    assert!(
        t.starts_with("02:"),
        "no keepalive timer on the agent's side: {t}"
    );
    drop(client);
}
