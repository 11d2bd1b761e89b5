//! Issue 19: a task's files never lead root outside the sandbox. One test
//! per attack; each plants only under the test's temp dir (and removes any
//! mount it made, even on failure). Root only.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gleaner_agent::client::ClientError;
use gleaner_agent::status::TaskState;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

/// A root-only host file the task must never see.
fn plant_secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    fs::write(&p, "TOP-SECRET-HOST-DATA\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// GET /logs on a thread: None if it did not answer within `limit`.
fn logs_within(agent: &TestAgent, id: &str, limit: Duration) -> Option<String> {
    logs_within_stream(agent, id, "stdout", limit)
}

fn logs_within_stream(
    agent: &TestAgent,
    id: &str,
    stream: &str,
    limit: Duration,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let client = gleaner_agent::client::Client::new(&agent.base, Some(agent.token.clone()));
    let path = format!("/v1/tasks/{id}/logs?stream={stream}");
    std::thread::spawn(move || {
        let _ = tx.send(client.get_text(&path).unwrap_or_else(|e| e.to_string()));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn symlinked_stdout_does_not_let_logs_read_host_files() {
    if !require_root("symlinked_stdout_does_not_let_logs_read_host_files") {
        return;
    }
    for disable in ["", "disable_features = [\"openat2\"]"] {
        let agent = TestAgent::start_with(disable);
        let secret = plant_secret(agent.tmp());
        let cmd = format!(
            "echo mine; rm -f /sandbox/stdout /sandbox/stderr; ln -s {0} /sandbox/stdout; ln -s {0} /sandbox/stderr",
            secret.display()
        );
        let st = agent
            .submit(json!({"cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 32}}))
            .unwrap();
        let done = agent.wait_final(&st.id, LONG);
        assert_eq!(done.state, TaskState::Finished, "{done:?}");
        for stream in ["stdout", "stderr"] {
            let out = agent.logs(&st.id, stream);
            assert!(
                !out.contains("TOP-SECRET"),
                "{disable}: /logs?stream={stream} read a host file through the task's symlink: {out}"
            );
        }
        assert_eq!(agent.logs(&st.id, "stdout"), "mine\n");

        // A run from before the logs left the sandbox (as after an upgrade)
        // has only sandbox/stdout: read without following the task's link,
        // a plain file still served.
        let dir = agent.data_dir.join("tasks").join(&st.id);
        fs::remove_file(dir.join("stdout")).unwrap();
        fs::remove_file(dir.join("stderr")).unwrap();
        let out = logs_within(&agent, &st.id, Duration::from_secs(5)).unwrap();
        assert!(
            !out.contains("TOP-SECRET"),
            "{disable}: legacy path followed: {out}"
        );
        fs::remove_file(dir.join("sandbox/stderr")).unwrap();
        nix::unistd::mkfifo(&dir.join("sandbox/stderr"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo = logs_within_stream(&agent, &st.id, "stderr", Duration::from_secs(5));
        assert_eq!(
            fifo.as_deref(),
            Some(""),
            "{disable}: FIFO at the legacy path"
        );
        fs::remove_file(dir.join("sandbox/stdout")).unwrap();
        fs::write(dir.join("sandbox/stdout"), "old layout\n").unwrap();
        assert_eq!(agent.logs(&st.id, "stdout"), "old layout\n");
    }
}

#[test]
fn symlinked_stdout_does_not_let_a_restart_write_host_files() {
    if !require_root("symlinked_stdout_does_not_let_a_restart_write_host_files") {
        return;
    }
    let agent = TestAgent::start();
    let target = agent.tmp().join("cron.d-planted");
    let cmd = format!(
        "if [ -e /sandbox/again ]; then echo second; exit 0; fi; touch /sandbox/again; \
         rm -f /sandbox/stdout; ln -s {} /sandbox/stdout; exit 1",
        target.display()
    );
    let st = agent
        .submit(json!({"cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 32},
                       "restart": {"policy": "on-failure", "max_retries": 1}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(
        (done.state, done.restarts),
        (TaskState::Finished, 1),
        "{done:?}"
    );
    assert!(
        !target.exists(),
        "the supervisor followed the task's symlink and wrote {}",
        target.display()
    );
    assert!(agent.logs(&st.id, "stdout").contains("second"));
}

#[test]
fn fifo_at_the_log_path_hangs_neither_supervisor_nor_logs() {
    if !require_root("fifo_at_the_log_path_hangs_neither_supervisor_nor_logs") {
        return;
    }
    let agent = TestAgent::start();
    let cmd = "if [ -e /sandbox/again ]; then echo second; exit 0; fi; touch /sandbox/again; \
               rm -f /sandbox/stdout; mkfifo /sandbox/stdout; exit 1";
    let st = agent
        .submit(json!({"cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 32},
                       "restart": {"policy": "on-failure", "max_retries": 1}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let out = logs_within(&agent, &st.id, Duration::from_secs(5))
        .expect("GET /logs hung on a FIFO the task planted");
    assert!(out.contains("second"), "{out}");
}

#[test]
fn root_role_task_cannot_write_proc_sys_and_sees_masked_proc() {
    if !require_root("root_role_task_cannot_write_proc_sys_and_sees_masked_proc") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]");
    // Writes back the value it read: harmless if it gets through.
    let cmd = "v=$(cat /proc/sys/vm/overcommit_ratio); \
               (echo $v > /proc/sys/vm/overcommit_ratio) 2>/dev/null && echo SYSCTL-WRITTEN; \
               echo kcore=$(head -c 16 /proc/kcore 2>/dev/null | wc -c); \
               echo keys=$(cat /proc/keys 2>/dev/null | wc -c); \
               echo timer=$(cat /proc/timer_list 2>/dev/null | wc -c); \
               echo sys=$(ls /sys 2>/dev/null | wc -l); \
               echo uptime=$(cut -d. -f1 /proc/uptime)";
    let st = agent
        .submit(json!({"cmd": cmd, "user": "root", "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let out = agent.logs(&st.id, "stdout");
    assert!(
        !out.contains("SYSCTL-WRITTEN"),
        "a root-role task wrote a host sysctl: {out}"
    );
    for masked in ["kcore=0", "keys=0", "timer=0", "sys=0"] {
        assert!(out.contains(masked), "missing {masked}: {out}");
    }
    assert!(!out.contains("uptime=\n"), "/proc must still work: {out}");
}

#[test]
fn sys_is_visible_read_only_only_to_allowed_roles() {
    if !require_root("sys_is_visible_read_only_only_to_allowed_roles") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]\nsys_roles = [\"batch\"]");
    let cmd = "ls /sys | grep -c . ; (echo x > /sys/kernel/uevent_helper) 2>/dev/null && echo SYS-WRITTEN; \
               echo fw=$(ls /sys/firmware 2>/dev/null | wc -l)";
    let st = agent
        .submit(json!({"cmd": cmd, "user": "root", "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let out = agent.logs(&st.id, "stdout");
    let entries: usize = out
        .lines()
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(entries > 3, "/sys not mounted for an allowed role: {out}");
    assert!(!out.contains("SYS-WRITTEN"), "{out}");
    assert!(out.contains("fw=0"), "/sys/firmware must be masked: {out}");
}

/// A tmpfs mounted below the rootfs on the host, unmounted on drop.
struct NestedMount(PathBuf);

impl Drop for NestedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn nested_mount_below_the_rootfs_is_read_only_in_the_task() {
    if !require_root("nested_mount_below_the_rootfs_is_read_only_in_the_task") {
        return;
    }
    for disable in ["", "disable_features = [\"mount_setattr\"]"] {
        let agent = TestAgent::start_with(disable);
        let opt = agent.rootfs.join("opt");
        fs::create_dir_all(&opt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &opt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        let _guard = NestedMount(opt.clone());
        let st = agent
            .submit(
                json!({"cmd": "touch /opt/x 2>/dev/null && echo NESTED-WRITTEN; echo done",
                           "resources": {"cpus": 0.5, "mem_mb": 32}}),
            )
            .unwrap();
        let done = agent.wait_final(&st.id, LONG);
        assert_eq!(done.state, TaskState::Finished, "{done:?}");
        let out = agent.logs(&st.id, "stdout");
        assert!(
            !out.contains("NESTED-WRITTEN") && !opt.join("x").exists(),
            "{disable}: a mount below the rootfs was writable: {out}"
        );
        drop(_guard);
    }
}

#[test]
fn setuid_file_left_in_the_sandbox_is_not_setuid_on_the_host() {
    if !require_root("setuid_file_left_in_the_sandbox_is_not_setuid_on_the_host") {
        return;
    }
    let agent = TestAgent::start_with("root_roles = [\"batch\"]");
    let st = agent
        .submit(json!({"id": "suid", "cmd": "cp /bin/busybox /sandbox/sh && chmod 4755 /sandbox/sh && ls -l /sandbox/sh",
                       "user": "root", "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    let done = agent.wait_final(&st.id, LONG);
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let host = agent.data_dir.join("tasks/suid/sandbox/sh");
    let meta = fs::metadata(&host).unwrap();
    assert_eq!(meta.permissions().mode() & 0o4000, 0o4000, "planted setuid");
    let vfs = nix::sys::statvfs::statvfs(&host).unwrap();
    let flags = vfs.flags();
    assert!(
        flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID)
            && flags.contains(nix::sys::statvfs::FsFlags::ST_NODEV),
        "the sandbox on the host is not nosuid,nodev: {flags:?}"
    );
}

#[test]
fn rootfs_paths_outside_rootfs_dirs_are_refused() {
    if !require_root("rootfs_paths_outside_rootfs_dirs_are_refused") {
        return;
    }
    let agent = TestAgent::start();
    let data = agent.data_dir.display().to_string();
    for path in ["/", "/usr", data.as_str(), "/tmp/../"] {
        let err = agent
            .submit(
                json!({"id": "host", "cmd": "ls /", "rootfs": {"path": path},
                           "resources": {"cpus": 0.5, "mem_mb": 32}}),
            )
            .unwrap_err();
        match err {
            ClientError::Api { status, message } => {
                assert_eq!(status, 400, "{path}: {message}");
                assert!(message.contains("rootfs"), "{path}: {message}");
            }
            other => panic!("{path}: {other}"),
        }
        assert!(!agent.data_dir.join("tasks/host").exists());
    }
    // The configured rootfs dirs still work.
    let ok = agent
        .submit(json!({"cmd": "true", "rootfs": {"path": agent.rootfs},
                       "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    assert_eq!(agent.wait_final(&ok.id, LONG).state, TaskState::Finished);
}

#[test]
fn a_task_printing_a_gigabyte_is_capped() {
    if !require_root("a_task_printing_a_gigabyte_is_capped") {
        return;
    }
    let agent = TestAgent::start_with("log_max_mb = 8");
    let st = agent
        .submit(
            json!({"id": "chatty", "cmd": "dd if=/dev/zero bs=1M count=1024 2>/dev/null; echo END",
                       "resources": {"cpus": 1, "mem_mb": 64}}),
        )
        .unwrap();
    // Generous: 1 GB through a pipe on a shared, loaded machine.
    let done = agent.wait_final(&st.id, Duration::from_secs(400));
    assert_eq!(done.state, TaskState::Finished, "{done:?}");
    let mut biggest = 0;
    for e in walk(&agent.data_dir.join("tasks/chatty")) {
        biggest = biggest.max(fs::symlink_metadata(&e).map(|m| m.len()).unwrap_or(0));
    }
    assert!(
        biggest <= 9 << 20,
        "a file of the task grew to {biggest} bytes"
    );
    let tail = agent
        .client
        .get_text("/v1/tasks/chatty/logs?stream=stdout&tail=1")
        .unwrap();
    // 1 GB of NULs has no newline: the last "line" is mostly zeros.
    assert!(
        tail.ends_with("END\n"),
        "the newest output was not kept: ...{:?}",
        &tail[tail.len().saturating_sub(40)..]
    );
    let log = walk(&agent.data_dir.join("tasks/chatty"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "stdout"))
        .unwrap();
    let mut head = vec![0u8; 256];
    use std::io::Read;
    let n = fs::File::open(&log).unwrap().read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(
        head.contains("dropped"),
        "no note of the dropped output: {head:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Review: `rootfs.path` was checked resolved but launched as given, so a
/// symlink the submitter owns (here in a temp dir outside rootfs_dirs)
/// could point at an allowed rootfs when checked and anywhere when a run
/// (a restart, a queued start) mounted it. With mount_setattr the same
/// path failed every launch instead (EINVAL on the link).
#[test]
fn rootfs_symlink_swapped_after_the_check_is_not_followed() {
    if !require_root("rootfs_symlink_swapped_after_the_check_is_not_followed") {
        return;
    }
    for disable in ["disable_features = [\"mount_setattr\"]", ""] {
        let agent = TestAgent::start_with(disable);
        // Stands for any host directory outside rootfs_dirs.
        let outside = tempfile::tempdir().unwrap();
        let fake = outside.path().join("fake");
        make_busybox_rootfs(&fake);
        fs::write(fake.join("secret"), "TOP-SECRET-HOST-DATA\n").unwrap();
        let refused = agent
            .submit(json!({"cmd": "cat /secret", "rootfs": {"path": fake},
                           "resources": {"cpus": 0.5, "mem_mb": 32}}))
            .unwrap_err();
        assert!(
            matches!(refused, ClientError::Api { status: 400, .. }),
            "{refused}"
        );

        let link = outside.path().join("link");
        std::os::unix::fs::symlink(&agent.rootfs, &link).unwrap();
        let cmd = "if [ -e /sandbox/again ]; then cat /secret; exit 0; fi; touch /sandbox/again; \
                   while [ ! -e /sandbox/go ]; do sleep 0.1; done; exit 1";
        let st = agent
            .submit(json!({"cmd": cmd, "rootfs": {"path": link},
                           "resources": {"cpus": 0.5, "mem_mb": 32},
                           "restart": {"policy": "on-failure", "max_retries": 1}}))
            .unwrap();
        let sandbox = agent.data_dir.join("tasks").join(&st.id).join("sandbox");
        wait_until(LONG, "first run (or its end)", || {
            sandbox.join("again").exists() || agent.status(&st.id).state.is_final()
        });
        assert!(
            sandbox.join("again").exists(),
            "{disable}: a rootfs path through a symlink did not launch: {:?}",
            agent.status(&st.id)
        );
        // The swap, atomic: the link now names the forbidden directory.
        let tmp_link = outside.path().join("link.new");
        std::os::unix::fs::symlink(&fake, &tmp_link).unwrap();
        fs::rename(&tmp_link, &link).unwrap();
        fs::write(sandbox.join("go"), "").unwrap();
        let done = agent.wait_final(&st.id, LONG);
        assert_eq!(done.restarts, 1, "{disable}: {done:?}");
        let out = agent.logs(&st.id, "stdout");
        assert!(
            !out.contains("TOP-SECRET"),
            "{disable}: the restart mounted the swapped link's target as the rootfs: {out}"
        );
    }
}

/// Review: descriptors the agent inherited without close-on-exec (from a
/// shell, a service manager's socket activation, a wrapper) reached every
/// task: a directory descriptor is a way out of the rootfs through
/// /proc/self/fd, a socket a way into whatever it serves.
#[test]
fn descriptors_the_agent_inherited_do_not_reach_tasks() {
    if !require_root("descriptors_the_agent_inherited_do_not_reach_tasks") {
        return;
    }
    use std::os::fd::AsRawFd;
    let outside = tempfile::tempdir().unwrap();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(outside.path().join("planted"), "TOP-SECRET-HOST-DATA\n").unwrap();
    fs::set_permissions(
        outside.path().join("planted"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A fixed, unlikely number, inheritable only while the agent starts.
    const FD: i32 = 347;
    let dir = fs::File::open(outside.path()).unwrap();
    // SAFETY: dup2 onto a descriptor number this test owns.
    assert_eq!(unsafe { libc::dup2(dir.as_raw_fd(), FD) }, FD);
    let agent = TestAgent::start();
    // SAFETY: closing the descriptor made above.
    unsafe { libc::close(FD) };
    let cmd = format!("ls /proc/self/fd/; cat /proc/self/fd/{FD}/planted");
    let st = agent
        .submit(json!({"cmd": cmd, "resources": {"cpus": 0.5, "mem_mb": 32}}))
        .unwrap();
    agent.wait_final(&st.id, LONG);
    let out = agent.logs(&st.id, "stdout");
    assert!(
        !out.contains("TOP-SECRET"),
        "a task read a host file through a descriptor the agent inherited: {out}"
    );
    assert!(
        !out.contains(&format!("\n{FD}\n")),
        "fd {FD} open in the task: {out}"
    );
}

/// Review: the agent made `<data_dir>/tasks` nosuid,nodev with a remount
/// that reset the mount's other flags: an operator's `noexec` (or `ro`) on
/// a dedicated tasks file system was silently dropped at every start.
#[test]
fn securing_the_tasks_dir_keeps_the_operators_mount_flags() {
    if !require_root("securing_the_tasks_dir_keeps_the_operators_mount_flags") {
        return;
    }
    let mut agent = TestAgent::start();
    agent.stop_agent(libc::SIGTERM);
    let tasks = agent.data_dir.join("tasks");
    nix::mount::mount(
        Some("tmpfs"),
        &tasks,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOEXEC,
        Some("size=1m"),
    )
    .unwrap();
    agent.spawn();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let opts = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(tasks.to_str().unwrap()))
        .last()
        .and_then(|l| l.split(' ').nth(5))
        .unwrap()
        .to_owned();
    for want in ["nosuid", "nodev", "noexec"] {
        assert!(
            opts.split(',').any(|o| o == want),
            "{want} missing on {}: {opts}",
            tasks.display()
        );
    }
}
