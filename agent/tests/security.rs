//! Issue 12, "nobody gets in": both doors guarded, tasks outside, scoped
//! credentials, network off, the seccomp filter, hostile HTTP clients and
//! the audit log — each against a real agent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

/// One raw HTTP/1.0 exchange; the reply's status code (0: no reply).
fn raw(base: &str, request: &[u8]) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn port_of(agent: &TestAgent) -> &str {
    agent.base.rsplit(':').next().unwrap()
}

#[test]
fn tcp_needs_the_token_and_the_socket_knows_root() {
    if !require_root("tcp_needs_the_token_and_the_socket_knows_root") {
        return;
    }
    let agent = TestAgent::start();
    // The token the agent made: 256 bits, 0600.
    assert_eq!(agent.token.len(), 64);
    let mode = std::fs::metadata(&agent.token_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(agent.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let victim = agent
        .submit(json!({"id": "victim", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}}))
        .unwrap();
    // Loopback too: no token, a wrong one, a prefix of the right one.
    for auth in [
        "",
        "Authorization: Bearer nope\r\n",
        &format!("Authorization: Bearer {}\r\n", &agent.token[..63]),
    ] {
        for req in [
            format!("GET /v1/health HTTP/1.0\r\n{auth}\r\n"),
            format!("DELETE /v1/tasks/victim HTTP/1.0\r\n{auth}\r\n"),
            format!("PUT /v1/reservations/batch HTTP/1.0\r\n{auth}Content-Type: application/json\r\nContent-Length: 27\r\n\r\n{{\"cpus\":0.1,\"mem_mb\":16.0}}"),
        ] {
            let (code, text) = raw(&agent.base, req.as_bytes());
            assert_eq!(code, 401, "{req}\n{text}");
        }
    }
    assert_eq!(agent.status(&victim.id).state, TaskState::Running);

    // The socket: root is an admin, no token needed.
    let sock = agent.socket_client();
    let state: Value = sock.get("/v1/state").unwrap();
    assert!(state["node_id"].is_string());
    let st: Value = sock
        .post(
            "/v1/tasks",
            &json!({"id": "via-sock", "cmd": "true", "resources": {"cpus": 0.1, "mem_mb": 16}}),
        )
        .unwrap();
    assert_eq!(st["id"], "via-sock");
    agent.kill(&victim.id);

    // Audit: one line per mutating call, with the caller.
    let log = std::fs::read_to_string(&agent.log_path).unwrap();
    for needle in [
        "uid=0 via socket POST /v1/tasks 201",
        "token=admin DELETE /v1/tasks/victim 202",
        "unauthenticated DELETE /v1/tasks/victim 401",
        "unauthenticated PUT /v1/reservations/batch 401",
    ] {
        assert!(log.contains(needle), "audit lacks {needle:?}:\n{log}");
    }
    assert!(!log.contains("GET /v1/state 200"), "reads are not audited");
}

#[test]
fn a_non_admin_on_the_socket_is_refused() {
    if !require_root("a_non_admin_on_the_socket_is_refused") {
        return;
    }
    // Listed admins open the socket to everyone; the peer check decides.
    let agent = TestAgent::start_with("admin_uids = [4242]");
    let mode = std::fs::metadata(agent.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    for dir in [agent.tmp(), &agent.data_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let curl = |uid: u32| {
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                "--regid=4343",
                "--clear-groups",
                "--",
            ])
            .arg(CLI_BIN)
            .arg("--config")
            .arg(&agent.config_path)
            .arg("state")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = curl(4242);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = curl(4343);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401") && err.contains("not an admin"), "{err}");
}

/// A script run inside a task that probes the agent from there.
fn probe_script(agent: &TestAgent) -> String {
    format!(
        "cat {token} 2>&1 && echo TOKEN-READ; \
         test -e {sock} && echo SOCKET-SEEN; \
         nc 127.0.0.1 {port} < /dev/null > /dev/null 2>&1; \
         (printf 'DELETE /v1/tasks/victim HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc 127.0.0.1 {port} | head -1; \
         (printf 'DELETE /v1/tasks/victim HTTP/1.0\\r\\nAuthorization: Bearer x\\r\\n\\r\\n'; sleep 1) | nc 127.0.0.1 {port} | head -1; \
         wget -q -O- http://127.0.0.1:{port}/v1/tasks 2>&1; echo; echo DONE",
        token = agent.token_path.display(),
        sock = agent.socket().display(),
        port = port_of(agent),
    )
}

#[test]
fn tasks_cannot_read_the_token_reach_the_socket_or_pass_tcp() {
    if !require_root("tasks_cannot_read_the_token_reach_the_socket_or_pass_tcp") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]");
    let victim = agent
        .submit(json!({"id": "victim", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}}))
        .unwrap();
    for user in ["nobody", "root"] {
        let id = format!("probe-{user}");
        agent
            .submit(json!({"id": id, "cmd": probe_script(&agent), "user": user, "resources": {"cpus": 0.2, "mem_mb": 32}}))
            .unwrap();
        agent.wait_final(&id, Duration::from_secs(30));
        let out = agent.logs(&id, "stdout");
        assert!(out.contains("DONE"), "{user}: {out}");
        assert!(
            !out.contains("TOKEN-READ") && !out.contains(&agent.token),
            "{user}: {out}"
        );
        assert!(!out.contains("SOCKET-SEEN"), "{user}: {out}");
        assert_eq!(out.matches("HTTP/1.0 401").count(), 2, "{user}: {out}");
        assert!(out.contains("401 Unauthorized"), "wget: {user}: {out}");
        assert_eq!(agent.status(&victim.id).state, TaskState::Running);
    }
    agent.kill(&victim.id);
}

#[test]
fn a_scoped_token_reaches_its_own_group_only_and_dies_with_the_task() {
    if !require_root("a_scoped_token_reaches_its_own_group_only_and_dies_with_the_task") {
        return;
    }
    let agent = TestAgent::start();
    agent
        .submit(json!({"id": "other", "argv": ["sleep", "600"], "resources": {"cpus": 0.1, "mem_mb": 16}}))
        .unwrap();
    // Each attempt prints "<name> <first line of the reply>".
    // busybox nc closes at the end of its input: the sleep keeps it open
    // for the reply. wget -S prints the status line.
    let script = r#"
U=$GLEANER_AGENT_URL
A="Authorization: Bearer $GLEANER_TOKEN"
code() { grep -o 'HTTP/1.1 [0-9]*' | head -1 | sed "s/^/$1 /"; }
post() { wget -S -q -O /dev/null --header "$A" --header "Content-Type: application/json" --post-data "$3" "$U$2" 2>&1 | code $1; }
get() { wget -S -q -O /dev/null --header "$A" "$U$2" 2>&1 | code $1; }
raw() { name=$1; shift; (printf "$@"; sleep 1) | nc ${U#http://} | head -1 | sed "s/^/$name /"; }
post submit-own /v1/tasks '{"id":"job1.w1","argv":["sleep","600"],"resources":{"cpus":0.1,"mem_mb":16}}'
post submit-other /v1/tasks '{"id":"job2.w1","argv":["sleep","600"],"resources":{"cpus":0.1,"mem_mb":16}}'
post submit-role /v1/tasks '{"id":"job1.w2","role":"prod","argv":["true"],"resources":{"cpus":0.1,"mem_mb":16}}'
post submit-big /v1/tasks '{"id":"job1.big","argv":["true"],"resources":{"cpus":100000,"mem_mb":16}}'
post submit-group /v1/groups '{"id":"job2","tasks":[{"argv":["true"],"resources":{"cpus":0.1,"mem_mb":16}}]}'
get read-own /v1/tasks/job1.w1
get read-other /v1/tasks/other
get logs-other /v1/tasks/other/logs
get state /v1/state
get metrics /metrics
raw kill-other "DELETE /v1/tasks/other HTTP/1.0\r\n$A\r\n\r\n"
raw reserve "PUT /v1/reservations/batch HTTP/1.0\r\n$A\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"cpus\":0.1,\"mem_mb\":16}"
raw attr "DELETE /v1/attributes/x HTTP/1.0\r\n$A\r\n\r\n"
echo "list $(wget -q -O- --header "$A" $U/v1/tasks)"
raw kill-own "DELETE /v1/tasks/job1.w1 HTTP/1.0\r\n$A\r\n\r\n"
echo "token $GLEANER_TOKEN"
echo DONE
"#;
    agent
        .submit(
            json!({"id": "job1.sched", "cmd": script, "api_access": {"scope": "own-group"},
                       "env": {"GLEANER_TOKEN": "forged"},
                       "resources": {"cpus": 0.2, "mem_mb": 32}}),
        )
        .unwrap();
    agent.wait_final("job1.sched", Duration::from_secs(30));
    let out = agent.logs("job1.sched", "stdout");
    assert!(out.contains("DONE"), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    for (name, code) in [
        ("submit-own", "201"),
        ("submit-other", "403"),
        ("submit-role", "403"),
        ("submit-big", "403"),
        ("submit-group", "403"),
        ("read-own", "200"),
        ("read-other", "403"),
        ("logs-other", "403"),
        ("metrics", "403"),
        ("kill-other", "403"),
        ("state", "403"),
        ("reserve", "403"),
        ("attr", "403"),
        ("kill-own", "202"),
    ] {
        assert!(
            line(name).contains(code),
            "{name}: {} (want {code})\n{out}",
            line(name)
        );
    }
    let list: Vec<Value> = serde_json::from_str(line("list").trim_start_matches("list ")).unwrap();
    let ids: Vec<&str> = list.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("job1.")), "{ids:?}");
    assert!(
        ids.contains(&"job1.w1") && ids.contains(&"job1.sched"),
        "{ids:?}"
    );
    assert_eq!(agent.status("other").state, TaskState::Running);
    assert!(matches!(
        agent.client.get::<Value>("/v1/tasks/job2.w1"),
        Err(ClientError::Api { status: 404, .. })
    ));

    // The token died with its task.
    let token = line("token").trim_start_matches("token ").to_owned();
    assert_eq!(token.len(), 64, "the spec's env cannot forge it: {token}");
    let (code, _) = raw(
        &agent.base,
        format!("GET /v1/tasks HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    );
    assert_eq!(code, 401);
    let log = std::fs::read_to_string(&agent.log_path).unwrap();
    assert!(
        log.contains("token=task:job1.sched POST /v1/tasks 201"),
        "{log}"
    );
    assert!(
        log.contains("token=task:job1.sched DELETE /v1/tasks/other 403"),
        "{log}"
    );
    agent.kill("other");
}

#[test]
fn network_none_has_only_loopback() {
    if !require_root("network_none_has_only_loopback") {
        return;
    }
    let agent = TestAgent::start();
    let port = port_of(&agent);
    let cmd = format!(
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         nc -w 2 127.0.0.1 {port} </dev/null && echo REACHED-AGENT; \
         (nc -l -p 7777 > /sandbox/got &); sleep 0.3; echo ping | nc -w 2 127.0.0.1 7777; sleep 0.3; cat /sandbox/got; echo DONE"
    );
    agent
        .submit(json!({"id": "none", "cmd": cmd, "network": "none", "resources": {"cpus": 0.2, "mem_mb": 32}}))
        .unwrap();
    let st = agent.wait_final("none", Duration::from_secs(30));
    let out = agent.logs("none", "stdout");
    assert!(
        out.contains("DONE"),
        "{st:?} {out} {}",
        agent.logs("none", "stderr")
    );
    let ifaces: Vec<&str> = out
        .lines()
        .take_while(|l| !l.contains("DONE") && !l.contains("ping"))
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(!out.contains("REACHED-AGENT"), "{out}");
    assert!(out.contains("ping"), "loopback inside works: {out}");

    // The same probe on the host network reaches the agent.
    agent
        .submit(json!({"id": "host", "cmd": format!("nc -w 2 127.0.0.1 {port} </dev/null && echo REACHED-AGENT"), "resources": {"cpus": 0.2, "mem_mb": 32}}))
        .unwrap();
    agent.wait_final("host", Duration::from_secs(30));
    assert!(agent.logs("host", "stdout").contains("REACHED-AGENT"));
}

#[test]
fn without_network_namespaces_none_is_refused() {
    if !require_root("without_network_namespaces_none_is_refused") {
        return;
    }
    let agent = TestAgent::start_with("disable_features = [\"net_namespace\"]");
    match agent
        .submit(json!({"cmd": "true", "network": "none", "resources": {"cpus": 0.1, "mem_mb": 16}}))
    {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => {
            assert!(
                message.contains("network") && message.contains("namespace"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(agent.data_dir.join("tasks"))
            .unwrap()
            .count(),
        0
    );
    let log = std::fs::read_to_string(&agent.log_path).unwrap();
    assert!(log.contains("network namespaces unavailable"), "{log}");
}

const SYSCALL_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>
static void report(const char *name, long rc) {
    printf("%s %s\n", name, rc == -1 ? strerrorname_np(errno) : "OK");
}
static void *thread(void *arg) { return arg; }
int main(void) {
    report("unshare", unshare(CLONE_NEWUSER));
    report("unshare-net", unshare(CLONE_NEWNET));
    report("mount", mount("none", "/tmp", "tmpfs", 0, 0));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
    report("bpf", syscall(SYS_bpf, 0, 0, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    /* clone3's flags are out of the filter's sight: ENOSYS. */
    report("clone3", syscall(SYS_clone3, NULL, 0));
    long c = syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(0);
    report("clone-newns", c);
    /* No namespace flag: allowed. */
    report("unshare-files", unshare(CLONE_FILES));
    pthread_t t;
    report("thread", pthread_create(&t, NULL, thread, NULL) == 0 && pthread_join(t, NULL) == 0 ? 0 : -1);
    /* An ordinary fork and a thread-like clone still work. */
    pid_t p = fork();
    if (p == 0) _exit(0);
    report("fork", p);
    report("getpid", getpid());
    printf("alive\n");
    return 0;
}
"#;

fn build_probe(rootfs: &std::path::Path) {
    let src = rootfs.parent().unwrap().join("probe.c");
    std::fs::write(&src, SYSCALL_PROBE).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(rootfs.join("bin/probe"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn seccomp_refuses_host_administration_with_eperm() {
    if !require_root("seccomp_refuses_host_administration_with_eperm") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]");
    build_probe(&agent.rootfs);
    for user in ["nobody", "root"] {
        let id = format!("probe-{user}");
        agent
            .submit(json!({"id": id, "argv": ["/bin/probe"], "user": user, "resources": {"cpus": 0.2, "mem_mb": 32}}))
            .unwrap();
        let st = agent.wait_final(&id, Duration::from_secs(30));
        let out = agent.logs(&id, "stdout");
        assert_eq!(st.state, TaskState::Finished, "{user}: {out}");
        for name in [
            "unshare",
            "unshare-net",
            "mount",
            "keyctl",
            "add_key",
            "bpf",
            "io_uring_setup",
            "clone-newns",
        ] {
            assert!(
                out.contains(&format!("{name} EPERM\n")),
                "{user}: {name}: {out}"
            );
        }
        assert!(out.contains("clone3 ENOSYS\n"), "{user}: {out}");
        for name in ["unshare-files", "thread", "fork", "getpid"] {
            assert!(
                out.contains(&format!("{name} OK\n")),
                "{user}: {name}: {out}"
            );
        }
        assert!(out.contains("alive"), "{user}: {out}");
    }
    // Busybox is unaffected: a pipeline, a subshell, files, sleep.
    agent
        .submit(json!({"id": "bb", "cmd": "echo a b | wc -w; (echo sub) ; echo x > /tmp/f && cat /tmp/f; sleep 0.1; ps >/dev/null && echo ps-ok",
                       "resources": {"cpus": 0.2, "mem_mb": 32}}))
        .unwrap();
    let st = agent.wait_final("bb", Duration::from_secs(30));
    assert_eq!(st.state, TaskState::Finished);
    assert_eq!(agent.logs("bb", "stdout"), "2\nsub\nx\nps-ok\n");
}

#[test]
fn without_seccomp_tasks_run_unfiltered_and_it_is_logged() {
    if !require_root("without_seccomp_tasks_run_unfiltered_and_it_is_logged") {
        return;
    }
    let agent = TestAgent::start_with("disable_features = [\"seccomp\"]");
    build_probe(&agent.rootfs);
    agent
        .submit(
            json!({"id": "p", "argv": ["/bin/probe"], "resources": {"cpus": 0.2, "mem_mb": 32}}),
        )
        .unwrap();
    agent.wait_final("p", Duration::from_secs(30));
    let out = agent.logs("p", "stdout");
    // Not the filter's EPERM: the kernel's own answers.
    assert!(!out.contains("keyctl EPERM"), "{out}");
    assert!(out.contains("alive"), "{out}");
    let log = std::fs::read_to_string(&agent.log_path).unwrap();
    assert_eq!(
        log.matches("seccomp filters unavailable").count(),
        1,
        "{log}"
    );
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn hostile_clients_do_not_stop_the_api_or_leak() {
    if !require_root("hostile_clients_do_not_stop_the_api_or_leak") {
        return;
    }
    let agent = TestAgent::start_with("request_read_timeout_s = 3.0");
    let pid = agent.agent_pid();
    // Let the start-up settle, then count.
    std::thread::sleep(Duration::from_millis(300));
    let before = fd_count(pid);

    // 1,000 slowloris connections: open, half a request line, then nothing.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(agent.base.trim_start_matches("http://")).unwrap();
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nX-Slow: ");
        }
        idle.push(s);
    }
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let _: Value = agent.client.get("/v1/health").unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE /v1/health with 1000 idle connections held: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    assert!(percentile(&lat, 0.99) < 500.0);

    // A 10 MB body: 413, without reading it all.
    let big = vec![b'x'; 10 << 20];
    let mut req = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        agent.token,
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let (code, _) = raw(&agent.base, &req);
    assert_eq!(code, 413);
    // Garbage: 400. A huge head: 431.
    let (code, _) = raw(
        &agent.base,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert_eq!(code, 400);
    let huge = format!(
        "GET /v1/health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let (code, _) = raw(&agent.base, huge.as_bytes());
    assert_eq!(code, 431);

    // The idle connections are dropped by the server after the read timeout.
    let t = Instant::now();
    let mut s = idle.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "idle connection kept {:?}",
        t.elapsed()
    );
    drop(idle);
    drop(s);
    // No descriptor leaked.
    wait_until(
        Duration::from_secs(10),
        "agent fds back to the start count",
        || fd_count(pid) <= before,
    );
    let _: Value = agent.client.get("/v1/health").unwrap();
}

/// A client that pipelines requests and never reads the answers leaves the
/// server blocked in a write, where no read deadline runs: without a write
/// deadline each such connection holds a slot for ever, and a task with no
/// token at all fills `max_connections` and closes the TCP door to all.
#[test]
fn clients_that_never_read_do_not_hold_slots() {
    if !require_root("clients_that_never_read_do_not_hold_slots") {
        return;
    }
    let agent = TestAgent::start_with("max_connections = 4\nrequest_read_timeout_s = 2.0");
    let addr = agent.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..4 {
        let s = TcpStream::connect(&addr).unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
        let mut w = s.try_clone().unwrap();
        writers.push(std::thread::spawn(move || {
            let req = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
            for _ in 0..50 {
                if w.write_all(&req).is_err() {
                    return;
                }
            }
        }));
        held.push(s);
    }
    // Well past the deadlines, the slots are free again.
    std::thread::sleep(Duration::from_secs(8));
    let health: Result<Value, _> = agent.client.get("/v1/health");
    assert!(
        health.is_ok(),
        "TCP door closed by 4 stalled clients: {health:?}"
    );
    for s in &held {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    drop(held);
    for w in writers {
        let _ = w.join();
    }
}

/// With `admin_uids` the socket is 0666; a non-admin who fills its
/// connection cap with idle connections (and reconnects as they time out)
/// must not lock the admins out of their door.
#[test]
fn non_admins_on_the_socket_cannot_lock_admins_out() {
    if !require_root("non_admins_on_the_socket_cannot_lock_admins_out") {
        return;
    }
    let agent = TestAgent::start_with("admin_uids = [4242]");
    for dir in [agent.tmp(), &agent.data_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let hold = format!(
        "import socket,time\n\
         ss=[]\n\
         for _ in range(100):\n\
         \x20   s=socket.socket(socket.AF_UNIX); s.connect({:?}); ss.append(s)\n\
         print('held', flush=True)\n\
         time.sleep(30)\n",
        agent.socket().display().to_string()
    );
    let mut flood = Command::new("setpriv")
        .args(["--reuid=4343", "--regid=4343", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", &hold])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 5];
    let read = flood.stdout.as_mut().unwrap().read_exact(&mut line);
    if read.is_err() || &line != b"held\n" {
        let out = flood.wait_with_output().unwrap();
        panic!("flood: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(CLI_BIN)
        .arg("--config")
        .arg(&agent.config_path)
        .arg("state")
        .output()
        .unwrap();
    let _ = flood.kill();
    let _ = flood.wait();
    assert!(
        out.status.success(),
        "root locked out of the socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
