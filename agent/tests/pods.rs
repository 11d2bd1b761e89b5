//! Task groups as pods (issue 22) on a real agent with a busybox rootfs:
//! the shared volume, the group network, sidecars, and what is left after
//! the group; a kill -9 of the agent in the middle of a group's life.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{require_root, wait_until, TestAgent};
use gleaner_agent::client::ClientError;
use gleaner_agent::status::TaskState;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

fn shared_dir(agent: &TestAgent, home: &str) -> PathBuf {
    agent.data_dir.join("tasks").join(home).join("shared")
}

fn netns_file(agent: &TestAgent, home: &str) -> PathBuf {
    agent.data_dir.join("run/netns").join(home)
}

/// Is anything mounted at `path` (in the test's, i.e. the agent's, view)?
fn mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.display().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

fn member(id: &str, cmd: &str, sidecar: bool) -> Value {
    json!({"id": id, "cmd": cmd, "sidecar": sidecar, "kill_grace_s": 1,
           "resources": {"cpus": 0.2, "mem_mb": 32}})
}

fn group_state(agent: &TestAgent, id: &str) -> Value {
    agent
        .client
        .get::<Value>(&format!("/v1/groups/{id}"))
        .unwrap()
}

fn assert_gone(agent: &TestAgent, home: &str) {
    let (shared, ns) = (shared_dir(agent, home), netns_file(agent, home));
    wait_until(
        Duration::from_secs(10),
        "shared dir and netns removed",
        || !shared.exists() && !ns.exists(),
    );
    assert!(!mounted(&ns), "{} still mounted", ns.display());
}

#[test]
fn members_share_a_volume_and_localhost_and_the_sidecar_stops_with_the_main() {
    if !require_root("members_share_a_volume_and_localhost_and_the_sidecar_stops_with_the_main") {
        return;
    }
    let agent = TestAgent::start();
    // A listener on the host's loopback: out of the group's reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let main = format!(
        "echo hello > /shared/msg; until [ -s /sandbox/got ]; do nc -l -p 7000 > /sandbox/got; done; \
         touch /shared/ack; cat /sandbox/got; \
         cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         nc -w 2 127.0.0.1 {host_port} </dev/null && echo REACHED-HOST; echo DONE"
    );
    let side = "while [ ! -s /shared/msg ]; do sleep 0.1; done; cat /shared/msg; \
                until [ -f /shared/ack ]; do echo from-sidecar | nc -w 1 127.0.0.1 7000; sleep 0.2; done; \
                echo SENT; sleep 1000";
    let reply: Value = agent
        .client
        .post(
            "/v1/groups",
            &json!({"id": "pod1", "network": "group", "tasks": [
                member("pod1-main", &main, false), member("pod1-side", side, true)]}),
        )
        .unwrap();
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 2, "{reply}");
    let g = group_state(&agent, "pod1");
    assert_eq!(
        (g["shared_path"].as_str(), g["network"].as_str()),
        (Some("/shared"), Some("group")),
        "{g}"
    );

    let st = agent.wait_final("pod1-main", LONG);
    let out = agent.logs("pod1-main", "stdout");
    assert_eq!(
        st.state,
        TaskState::Finished,
        "{st:?} {out} {}",
        agent.logs("pod1-main", "stderr")
    );
    assert!(
        out.contains("from-sidecar"),
        "the sidecar reached the main on localhost: {out}"
    );
    assert!(
        !out.contains("REACHED-HOST"),
        "the host's loopback is out of reach: {out}"
    );
    let ifaces: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "from-sidecar")
        .skip(1)
        .take_while(|l| *l != "DONE")
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(matches!(host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));

    // The sidecar is stopped once the main has ended; the group is FINISHED.
    let side_st = agent.wait_final("pod1-side", Duration::from_secs(20));
    assert_eq!(side_st.state, TaskState::Killed, "{side_st:?}");
    assert!(
        side_st
            .message
            .as_deref()
            .unwrap_or("")
            .contains("main members"),
        "{side_st:?}"
    );
    let side_out = agent.logs("pod1-side", "stdout");
    // (It may be stopped before it sees the main's acknowledgement.)
    assert!(side_out.contains("hello"), "{side_out}");
    let g = group_state(&agent, "pod1");
    assert_eq!(g["state"], "FINISHED", "{g}");
    assert_gone(&agent, "pod1-main");

    // A main that fails makes the group FAILED, whatever the sidecar did.
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod2", "shared_path": "/data/x", "tasks": [
                member("pod2-side", "sleep 1000", true),
                member("pod2-main", "test -d /data/x && echo SEEN > /data/x/f && exit 3", false)]}),
        )
        .unwrap();
    let st = agent.wait_final("pod2-main", LONG);
    assert_eq!(
        (st.state, st.exit_code),
        (TaskState::Failed, Some(3)),
        "{st:?} {}",
        agent.logs("pod2-main", "stderr")
    );
    assert_eq!(
        agent.wait_final("pod2-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_eq!(group_state(&agent, "pod2")["state"], "FAILED");
    // The first member given holds the volume; no namespace for a host network.
    assert_gone(&agent, "pod2-side");
    // Each supervisor removes its task's cgroup after reporting the exit:
    // the group's goes once they are done.
    wait_until(
        Duration::from_secs(15),
        "no task or group cgroup left",
        || agent.leftover_task_cgroups().is_empty(),
    );
}

#[test]
fn bad_group_options_are_refused_and_create_nothing() {
    if !require_root("bad_group_options_are_refused_and_create_nothing") {
        return;
    }
    let agent = TestAgent::start();
    let refused =
        |body: Value, needle: &str| match agent.client.post::<_, Value>("/v1/groups", &body) {
            Err(ClientError::Api {
                status: 400,
                message,
            }) => {
                assert!(message.contains(needle), "{needle:?} not in {message:?}")
            }
            other => panic!("{body}: {other:?}"),
        };
    let main = member("m", "true", false);
    let side = member("s", "true", true);
    refused(json!({"id": "g", "tasks": [side.clone()]}), "not a sidecar");
    for path in ["/proc/x", "relative", "/a/../b", "/", "/tmp", "/sandbox/s"] {
        refused(
            json!({"id": "g", "shared_path": path, "tasks": [main.clone()]}),
            "shared_path",
        );
    }
    // Review: a volume every member can write over the image's system dirs.
    // And below them (review of e2888f3): a sidecar plants a program or a
    // CA certificate the main member trusts.
    for path in [
        "/etc",
        "/usr/",
        "/var",
        "/lib64",
        "/usr/local/bin",
        "/etc/ssl/certs",
        "/etc/profile.d",
        "/lib/x86_64-linux-gnu",
        "/opt/app",
        "/var/lib",
        "/srv",
    ] {
        refused(
            json!({"id": "g", "shared_path": path, "tasks": [main.clone()]}),
            "system directory",
        );
    }
    let mut none = main.clone();
    none["network"] = json!("none");
    refused(
        json!({"id": "g", "network": "group", "tasks": [none]}),
        "tasks[0].network",
    );
    refused(
        json!({"id": "g", "network": "bridge", "tasks": [main.clone()]}),
        "network",
    );
    match agent.submit(side) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("sidecar"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(agent.data_dir.join("tasks"))
            .unwrap()
            .count(),
        0
    );
    assert!(!agent.data_dir.join("run/netns").exists());

    // Without network namespaces, the same rule as "network": "none".
    let old = TestAgent::start_with("disable_features = [\"net_namespace\"]");
    match old.client.post::<_, Value>(
        "/v1/groups",
        &json!({"id": "g", "network": "group", "tasks": [main]}),
    ) {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => {
            assert!(message.contains("namespace"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_group_survives_an_agent_kill_and_is_cleaned_up_after() {
    if !require_root("a_group_survives_an_agent_kill_and_is_cleaned_up_after") {
        return;
    }
    let mut agent = TestAgent::start();
    let main = "until echo before | nc -w 2 127.0.0.1 7001; do sleep 0.2; done; \
                while [ ! -f /shared/go ]; do sleep 0.1; done; \
                until echo after | nc -w 2 127.0.0.1 7001; do sleep 0.2; done; \
                sleep 0.5; cat /shared/heard";
    let side = "while true; do nc -l -p 7001 >> /shared/heard; done";
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod3", "network": "group", "tasks": [
                member("pod3-main", main, false), member("pod3-side", side, true)]}),
        )
        .unwrap();
    let shared = shared_dir(&agent, "pod3-main");
    wait_until(LONG, "the sidecar heard 'before'", || {
        std::fs::read_to_string(shared.join("heard")).is_ok_and(|t| t.contains("before"))
    });

    agent.stop_agent(libc::SIGKILL);
    let ns = netns_file(&agent, "pod3-main");
    assert!(mounted(&ns), "the namespace is held without the agent");
    agent.spawn();
    for id in ["pod3-main", "pod3-side"] {
        assert_eq!(agent.status(id).state, TaskState::Running, "{id}");
    }
    std::fs::write(shared.join("go"), "").unwrap();
    let st = agent.wait_final("pod3-main", LONG);
    let out = agent.logs("pod3-main", "stdout");
    assert_eq!(st.state, TaskState::Finished, "{st:?} {out}");
    assert!(out.contains("before") && out.contains("after"), "{out}");
    assert_eq!(
        agent.wait_final("pod3-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_eq!(group_state(&agent, "pod3")["state"], "FINISHED");
    assert_gone(&agent, "pod3-main");

    // Main ended while the agent was down: the restarted agent stops the
    // sidecar and removes the group's volume and namespace.
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod4", "network": "group", "tasks": [
                member("pod4-main", "while [ ! -f /shared/go ]; do sleep 0.1; done", false),
                member("pod4-side", "sleep 1000", true)]}),
        )
        .unwrap();
    agent.wait_state("pod4-side", TaskState::Running, LONG);
    agent.stop_agent(libc::SIGKILL);
    std::fs::write(shared_dir(&agent, "pod4-main").join("go"), "").unwrap();
    let exit = agent.data_dir.join("tasks/pod4-main/exit.json");
    wait_until(LONG, "main exited", || exit.exists());
    agent.spawn();
    assert_eq!(
        agent.wait_final("pod4-main", LONG).state,
        TaskState::Finished
    );
    assert_eq!(
        agent.wait_final("pod4-side", Duration::from_secs(20)).state,
        TaskState::Killed
    );
    assert_gone(&agent, "pod4-main");
}

#[test]
fn the_shared_volume_counts_against_the_groups_disk_limit() {
    if !require_root("the_shared_volume_counts_against_the_groups_disk_limit") {
        return;
    }
    let agent = TestAgent::start_with("disk_check_interval_s = 0.5");
    let sized = |id: &str, cmd: &str, sidecar: bool| {
        let mut m = member(id, cmd, sidecar);
        m["resources"]["disk_mb"] = json!(2);
        m
    };
    // 2 + 2 MB for the group; 3 MB in /shared is within it, 5 MB is not
    // (and no member's own sandbox is over its 2 MB).
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "pod5", "tasks": [
                sized("pod5-main", "dd if=/dev/zero of=/shared/a bs=1M count=3 2>/dev/null; \
                                    while [ ! -f /shared/go ]; do sleep 0.1; done; \
                                    dd if=/dev/zero of=/shared/b bs=1M count=2 2>/dev/null; sleep 1000", false),
                sized("pod5-side", "sleep 1000", true)]}),
        )
        .unwrap();
    let shared = shared_dir(&agent, "pod5-main");
    wait_until(LONG, "3 MB written", || {
        std::fs::metadata(shared.join("a")).is_ok_and(|m| m.len() == 3 << 20)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.status("pod5-main").state,
        TaskState::Running,
        "within the limit"
    );
    std::fs::write(shared.join("go"), "").unwrap();
    let st = agent.wait_final("pod5-main", LONG);
    assert_eq!(
        st.reason,
        Some(gleaner_agent::status::Reason::DiskLimit),
        "{st:?}"
    );
    let side = agent.wait_final("pod5-side", LONG);
    assert!(side.state.is_final(), "{side:?}");
    assert_gone(&agent, "pod5-main");
}

/// A group waiting in the queue whose main member is killed there leaves
/// only its sidecar: it is stopped, never launched (it would run forever,
/// with no main left to end; found by review).
#[test]
fn a_sidecar_whose_main_was_killed_in_the_queue_never_runs() {
    if !require_root("a_sidecar_whose_main_was_killed_in_the_queue_never_runs") {
        return;
    }
    let agent = TestAgent::start();
    let reserve = |cpus: f64| {
        agent
            .client
            .put::<_, Value>(
                "/v1/reservations/batch",
                &json!({"cpus": cpus, "mem_mb": 512}),
            )
            .unwrap()
    };
    reserve(0.1); // the group (0.4 CPU) waits
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "q", "tasks": [member("q-main", "sleep 1000", false),
                                         member("q-side", "sleep 1000", true)]}),
        )
        .unwrap();
    assert_eq!(agent.status("q-main").state, TaskState::Queued);
    agent.client.delete::<Value>("/v1/tasks/q-main").unwrap();
    reserve(1.5); // room now: a pass runs
    let side = agent.wait_final("q-side", Duration::from_secs(20));
    assert_eq!(side.state, TaskState::Killed, "{side:?}");
    assert!(side.started_at.is_none(), "the sidecar ran: {side:?}");
}

/// Every path below `root`, with its kind and mode: a rootfs's shape.
fn tree(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), m.mode()));
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Unmounts a test's own mount when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Review of issue 22: the agent made a missing `shared_path` in the rootfs
/// (an image every task shares), and a read-only rootfs failed every group.
/// Now the mount point is made in the member's own mount namespace.
#[test]
fn the_shared_volume_never_writes_into_the_rootfs_and_works_on_a_read_only_one() {
    if !require_root("the_shared_volume_never_writes_into_the_rootfs_and_works_on_a_read_only_one")
    {
        return;
    }
    let agent = TestAgent::start();
    std::fs::create_dir_all(agent.rootfs.join("srv/keep")).unwrap();
    std::fs::write(agent.rootfs.join("srv/file"), "kept").unwrap();
    std::os::unix::fs::symlink("file", agent.rootfs.join("srv/link")).unwrap();
    let before = tree(&agent.rootfs);
    // /shared: missing at the top; /srv/app: below a directory that exists,
    // whose entries the member must still see.
    let run = |id: &str, path: &str, check: &str| {
        agent
            .client
            .post::<_, Value>(
                "/v1/groups",
                &json!({"id": id, "shared_path": path, "tasks": [
                    member(&format!("{id}-main"),
                        &format!("echo hi > {path}/m && {check} && ls /bin/sh /proc/self >/dev/null && echo OK"),
                        false),
                    member(&format!("{id}-side"), &format!("cat {path}/m; sleep 1000"), true)]}),
            )
            .unwrap();
        let st = agent.wait_final(&format!("{id}-main"), LONG);
        let out = agent.logs(&format!("{id}-main"), "stdout");
        assert_eq!(
            st.state,
            TaskState::Finished,
            "{id}: {st:?} {out} {}",
            agent.logs(&format!("{id}-main"), "stderr")
        );
        assert!(out.contains("OK"), "{id}: {out}");
        agent.wait_final(&format!("{id}-side"), Duration::from_secs(20));
        assert_gone(&agent, &format!("{id}-main"));
    };
    run("ro1", "/shared", "true");
    run(
        "ro2",
        "/srv/app",
        "test -d /srv/keep && grep -q kept /srv/link && ! touch /srv/x 2>/dev/null",
    );
    let after = tree(&agent.rootfs);
    let new: Vec<_> = after.iter().filter(|e| !before.contains(e)).collect();
    assert!(
        new.is_empty() && after.len() == before.len(),
        "the rootfs was written: {new:?}"
    );

    // A read-only rootfs: a nested path below a missing dir.
    nix::mount::mount(
        Some(&agent.rootfs),
        &agent.rootfs,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _ro = Unmount(agent.rootfs.clone());
    nix::mount::mount(
        None::<&str>,
        &agent.rootfs,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_BIND
            | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    run("ro3", "/data/x", "test -d /bin");
    assert!(tree(&agent.rootfs) == before, "the rootfs was written");
}

/// The nsfs mounts of the network namespace with inode `ino`, in the mount
/// namespaces of `pids` (of every process if empty): listmount/statmount
/// (6.8+) name them even where a chroot hides them from /proc/PID/mountinfo
/// (a `move_chroot` task's copy of the host's tree lies below its root).
/// None if the kernel lacks them.
fn nsfs_mounts_of(ino: u64, pids: &[i32]) -> Option<Vec<String>> {
    use std::os::fd::AsRawFd;
    const SYS_STATMOUNT: libc::c_long = 457;
    const SYS_LISTMOUNT: libc::c_long = 458;
    const NS_GET_MNTNS_ID: libc::c_ulong = 0x8008_b705;
    const LSMT_ROOT: u64 = u64::MAX;
    const NSFS_MAGIC: u64 = 0x6e73_6673;
    #[repr(C)]
    struct Req {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
        mnt_ns_id: u64,
    }
    let want = format!("net:[{ino}]");
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        match pid.parse::<i32>() {
            Ok(p) if pids.is_empty() || pids.contains(&p) => {}
            _ => continue,
        }
        let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        let mut id = 0u64;
        // SAFETY: an ioctl writing one u64 we own.
        if unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_MNTNS_ID, &mut id) } != 0 {
            return None;
        }
        if !seen.insert(id) {
            continue;
        }
        let mut last = 0;
        loop {
            let req = Req {
                size: 32,
                spare: 0,
                mnt_id: LSMT_ROOT,
                param: last,
                mnt_ns_id: id,
            };
            let mut ids = [0u64; 256];
            // SAFETY: valid request and output array of the given length.
            let n = unsafe { libc::syscall(SYS_LISTMOUNT, &req, ids.as_mut_ptr(), ids.len(), 0) };
            if n < 0 {
                break; // the namespace ended meanwhile
            }
            for &mnt in &ids[..n as usize] {
                // SB_BASIC | MNT_ROOT
                let req = Req {
                    size: 32,
                    spare: 0,
                    mnt_id: mnt,
                    param: 0x1 | 0x8,
                    mnt_ns_id: id,
                };
                let mut buf = vec![0u64; 1024];
                // SAFETY: valid request and an 8 KiB buffer we own.
                let rc = unsafe { libc::syscall(SYS_STATMOUNT, &req, buf.as_mut_ptr(), 8192, 0) };
                if rc != 0 {
                    continue;
                }
                // SAFETY: reinterpreting our own buffer as bytes.
                let b = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), 8192) };
                let magic = u64::from_ne_bytes(b[24..32].try_into().unwrap());
                let off = u32::from_ne_bytes(b[104..108].try_into().unwrap()) as usize;
                let root: Vec<u8> = b[512 + off..]
                    .iter()
                    .take_while(|c| **c != 0)
                    .copied()
                    .collect();
                if magic == NSFS_MAGIC && root == want.as_bytes() {
                    found.push(format!("pid {pid} mount ns {id} mount {mnt}"));
                }
            }
            if (n as usize) < ids.len() {
                break;
            }
            last = ids[ids.len() - 1];
        }
    }
    Some(found)
}

/// Review of issue 22: under `move_chroot` the host's tree stays below a
/// task's root, with a copy of every group namespace's bind mount; such a
/// copy kept the namespace alive after its group was removed. Now the
/// netns dir is a private mount that every task init detaches.
#[test]
fn no_mount_namespace_keeps_a_group_network_after_the_group() {
    if !require_root("no_mount_namespace_keeps_a_group_network_after_the_group") {
        return;
    }
    let agent = TestAgent::start_with("disable_features = [\"pivot_root\"]");
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "ns1", "network": "group", "tasks": [
                member("ns1-main", "while [ ! -f /shared/go ]; do sleep 0.1; done", false),
                member("ns1-side", "sleep 1000", true)]}),
        )
        .unwrap();
    agent.wait_state("ns1-main", TaskState::Running, LONG);
    agent.wait_state("ns1-side", TaskState::Running, LONG);
    let ns = netns_file(&agent, "ns1-main");
    let ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&ns).unwrap().ino()
    };
    let Some(held) = nsfs_mounts_of(ino, &[std::process::id() as i32]) else {
        eprintln!("skipped: no listmount/statmount on this kernel");
        return;
    };
    assert_eq!(
        held.len(),
        1,
        "the agent's own mount (the test's namespace): {held:?}"
    );
    // A task launched while the group lives: its mount namespace is a copy
    // of the host's at that moment.
    let mut other = member("other", "sleep 1000", false);
    other.as_object_mut().unwrap().remove("sidecar");
    agent.submit(other).unwrap();
    agent.wait_state("other", TaskState::Running, LONG);
    // No task holds a copy (the old code's did, in every member and in
    // "other"; a kernel before 3.18 kept them after the group was gone, a
    // later one drops them when the agent unlinks the file).
    let pids: Vec<i32> = ["ns1-main", "ns1-side", "other"]
        .iter()
        .map(|id| agent.status(id).pid.expect("a running task's pid"))
        .collect();
    let copies = nsfs_mounts_of(ino, &pids).unwrap();
    assert!(
        copies.is_empty(),
        "tasks hold the group's namespace: {copies:?}"
    );

    std::fs::write(shared_dir(&agent, "ns1-main").join("go"), "").unwrap();
    assert_eq!(
        agent.wait_final("ns1-main", LONG).state,
        TaskState::Finished
    );
    agent.wait_final("ns1-side", Duration::from_secs(20));
    assert_gone(&agent, "ns1-main");
    let left = nsfs_mounts_of(ino, &[]).unwrap();
    assert!(
        left.is_empty(),
        "the group's namespace is still mounted: {left:?}"
    );
    agent.client.delete::<Value>("/v1/tasks/other").unwrap();
    agent.wait_final("other", LONG);
}

/// Review of issue 22: the disk sweep walked a group's volume without a
/// bound, so a member making millions of files stalled it. Past
/// `disk_check_max_entries` per member the group counts as over its limit,
/// as a task whose own sandbox holds too many entries does.
#[test]
fn too_many_files_count_as_over_the_disk_limit() {
    if !require_root("too_many_files_count_as_over_the_disk_limit") {
        return;
    }
    let agent = TestAgent::start_with("disk_check_interval_s = 0.5\ndisk_check_max_entries = 500");
    let files = |dir: &str, n: u32| {
        format!("i=0; while [ $i -lt {n} ]; do : > {dir}/f$i; i=$((i+1)); done; touch /tmp/done; sleep 1000")
    };
    let sized = |id: &str, cmd: &str, sidecar: bool| {
        let mut m = member(id, cmd, sidecar);
        m["resources"]["disk_mb"] = json!(50);
        m
    };
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "many", "tasks": [
                sized("many-main", &files("/shared", 1200), false),
                sized("many-side", "sleep 1000", true)]}),
        )
        .unwrap();
    let mut alone = sized("alone", &files("/sandbox", 800), false);
    alone.as_object_mut().unwrap().remove("sidecar");
    agent.submit(alone).unwrap();
    for id in ["many-main", "alone"] {
        let st = agent.wait_final(id, LONG);
        assert_eq!(
            st.reason,
            Some(gleaner_agent::status::Reason::DiskLimit),
            "{id}: {st:?}"
        );
    }
    assert!(agent.wait_final("many-side", LONG).state.is_final());
    assert_gone(&agent, "many-main");
}

/// Review of 1c1774b: the init binds every entry of the directory it covers
/// with a tmpfs, without a bound (100k entries: 100k mounts before the task
/// is in its cgroup). Past `MAX_COVERED` the launch fails and says what to
/// do.
#[test]
fn a_covered_dir_with_too_many_entries_fails_the_launch() {
    if !require_root("a_covered_dir_with_too_many_entries_fails_the_launch") {
        return;
    }
    let agent = TestAgent::start();
    let big = agent.rootfs.join("srv");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..1100 {
        std::fs::write(big.join(format!("f{i}")), "").unwrap();
    }
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "wide", "shared_path": "/srv/vol", "tasks": [
                member("wide-main", "echo ran", false),
                member("wide-side", "sleep 1000", true)]}),
        )
        .unwrap();
    let st = agent.wait_final("wide-main", LONG);
    assert_eq!(st.state, TaskState::Failed, "{st:?}");
    let why = st.message.clone().unwrap_or_default();
    assert!(why.contains("create /srv/vol in the image"), "{st:?}");
    assert!(!agent.logs("wide-main", "stdout").contains("ran"));
    assert!(agent.wait_final("wide-side", LONG).state.is_final());
    assert!(!big.join("vol").exists());
    // Within the bound it works.
    for i in 0..1100 {
        std::fs::remove_file(big.join(format!("f{i}"))).unwrap();
    }
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "narrow", "shared_path": "/srv/vol", "tasks": [
                member("narrow-main", "echo ran > /srv/vol/x && cat /srv/vol/x", false)]}),
        )
        .unwrap();
    let st = agent.wait_final("narrow-main", LONG);
    assert_eq!(st.state, TaskState::Finished, "{st:?}");
}

/// Review of 89a7744: an agent upgraded while an older one held a group's
/// namespace on the plain `run/netns` dir made the dir a recursive bind of
/// itself, which copied the held mount and hid the original: the release
/// unmounted the copy, the unlink failed with EBUSY and the namespace
/// stayed until reboot.
#[test]
fn an_upgraded_agent_releases_a_namespace_an_older_one_held() {
    if !require_root("an_upgraded_agent_releases_a_namespace_an_older_one_held") {
        return;
    }
    let mut agent = TestAgent::start();
    agent.stop_agent(libc::SIGTERM);
    // What an agent before 1c1774b left: a namespace held on the plain dir,
    // of a group that ended while no agent ran.
    let dir = agent.data_dir.join("run/netns");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("old-main");
    std::fs::write(&stale, "").unwrap();
    let target = stale.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        nix::mount::mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    })
    .join()
    .unwrap();
    assert!(mounted(&stale));
    agent.spawn();
    wait_until(
        Duration::from_secs(20),
        "the stale namespace removed",
        || !stale.exists(),
    );
    assert!(!mounted(&stale), "still mounted below the dir's bind");
    // And a group network works on the dir the agent made.
    agent
        .client
        .post::<_, Value>(
            "/v1/groups",
            &json!({"id": "up", "network": "group", "tasks": [member("up-main", "true", false)]}),
        )
        .unwrap();
    assert_eq!(agent.wait_final("up-main", LONG).state, TaskState::Finished);
    assert_gone(&agent, "up-main");
    assert!(!mounted(&netns_file(&agent, "up-main")));
}
