//! Issue 8: the static tarball. Root only. Uses the tarball named by
//! GLEANER_TARBALL (scripts/test.sh builds it), else builds it with
//! packaging/build-tarball.sh (a static release build: minutes).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tarball() -> PathBuf {
    if let Ok(p) = std::env::var("GLEANER_TARBALL") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(workspace().join("packaging/build-tarball.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    workspace().join(String::from_utf8(out.stdout).unwrap().trim())
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_binary_is_static_and_runs_alone_in_an_empty_chroot() {
    if !require_root("every_binary_is_static_and_runs_alone_in_an_empty_chroot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("tar")
        .arg("-xzf")
        .arg(tarball())
        .arg("-C")
        .arg(tmp.path()));
    assert!(ok, "{out}");
    let top = tmp.path().join("gleaner");
    for f in [
        "etc/agent.toml",
        "etc/monitor.toml",
        "systemd/gleaner-agent.service",
        "systemd/gleaner-monitor.service",
        "init.d/gleaner-agent",
        "init.d/gleaner-monitor",
        "install.sh",
        "uninstall.sh",
        "README",
    ] {
        assert!(top.join(f).exists(), "tarball lacks gleaner/{f}");
    }
    let version = std::fs::read_to_string(top.join("VERSION")).unwrap();
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    for bin in [
        "gleaner-agent",
        "gleaner-monitor",
        "gleaner-rootfs",
        "gleaner",
    ] {
        let path = top.join("bin").join(bin);
        let (_, headers) = run(Command::new("readelf").arg("-lW").arg(&path));
        assert!(!headers.contains("INTERP"), "{bin} has an interpreter");
        let (_, dynamic) = run(Command::new("readelf").arg("-d").arg(&path));
        assert!(
            dynamic.contains("no dynamic section"),
            "{bin} has a dynamic section: {dynamic}"
        );
        let (_, symbols) = run(Command::new("readelf").arg("-S").arg(&path));
        assert!(!symbols.contains(".symtab"), "{bin} is not stripped");
        // An empty root holding only the binary.
        let jail = tmp.path().join(format!("jail-{bin}"));
        std::fs::create_dir(&jail).unwrap();
        std::fs::copy(&path, jail.join(bin)).unwrap();
        let (ok, out) = run(Command::new("chroot")
            .arg(&jail)
            .arg(format!("/{bin}"))
            .arg("--version"));
        assert!(ok, "{bin} --version in an empty chroot: {out}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{bin}: {out}");
        let size = std::fs::metadata(&path).unwrap().len();
        eprintln!(
            "{bin}: {:.1} MB, static, stripped, runs alone",
            size as f64 / 1e6
        );
    }
}

#[test]
fn install_upgrade_and_uninstall_leave_no_trace() {
    if !require_root("install_upgrade_and_uninstall_leave_no_trace") {
        return;
    }
    let (ok, out) = run(Command::new("sh")
        .arg(workspace().join("packaging/test-install.sh"))
        .arg(tarball())
        .env("GLEANER_TEST_PORT", free_port().to_string())
        .env("GLEANER_TEST_MONITOR_PORT", free_port().to_string()));
    eprintln!("{out}");
    assert!(ok, "packaging/test-install.sh failed:\n{out}");
}

/// Review of issue 21: uninstall.sh unmounted an operator's mount under
/// PREFIX/var (it claimed to refuse), a prefix with a space hid every
/// mount from it (mountinfo escapes spaces: rm ran through a bind mount),
/// and a manifest entry with `..` removed a file outside the prefix. No
/// tarball needed: stub binaries under --root.
#[test]
fn uninstall_refuses_foreign_mounts_and_stays_in_the_prefix() {
    if !require_root("uninstall_refuses_foreign_mounts_and_stays_in_the_prefix") {
        return;
    }
    let (ok, out) =
        run(Command::new("sh").arg(workspace().join("packaging/test-uninstall-mounts.sh")));
    eprintln!("{out}");
    assert!(ok, "packaging/test-uninstall-mounts.sh failed:\n{out}");
}

/// Review of issue 21: the previous release's SysV pid file holds the pid
/// alone; the new script read it as "not running", so an upgrade's restart
/// left the old agent running and started a second (refused by the data
/// dir lock: the upgrade failed, the old binary stayed).
#[test]
fn sysv_script_stops_the_agent_of_a_legacy_pid_file() {
    let (ok, out) = run(Command::new("sh").arg(workspace().join("packaging/test-sysv-legacy.sh")));
    eprintln!("{out}");
    assert!(ok, "packaging/test-sysv-legacy.sh failed:\n{out}");
}

/// Issue 18, part 3: nothing the environment does makes a binary panic.
/// In an empty root holding only the tarball's binaries, /proc, and /sys
/// and /dev for the agent (no /etc, no CA store, no NSS, no busybox), in a
/// private mount namespace: the agent starts and answers; every CLI
/// subcommand, the monitor, the scheduler and gleaner-rootfs answer or fail
/// in one line; no output holds "panicked".
#[test]
fn no_binary_panics_in_an_empty_chroot() {
    if !require_root("no_binary_panics_in_an_empty_chroot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("tar")
        .arg("-xzf")
        .arg(tarball())
        .arg("-C")
        .arg(tmp.path()));
    assert!(ok, "{out}");
    let jail = tmp.path().join("jail");
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(jail.join(d)).unwrap();
    }
    for bin in [
        "gleaner-agent",
        "gleaner-monitor",
        "gleaner-scheduler",
        "gleaner-rootfs",
        "gleaner",
    ] {
        std::fs::copy(tmp.path().join("gleaner/bin").join(bin), jail.join(bin)).unwrap();
    }
    let port = free_port();
    let croot = format!("gleaner-test-{}-chroot", std::process::id());
    std::fs::write(
        jail.join("agent.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"/data\"\ncgroup_root = {croot:?}\n"),
    )
    .unwrap();
    let cli = "/gleaner --config /agent.toml";
    let agent_url = format!("http://127.0.0.1:{port}");
    // Each line: a command run in the jail; its output is collected.
    let commands = [
        format!("{cli} wait-healthy --timeout 30"),
        format!("{cli} ps"),
        format!("{cli} ps --unfinished --quiet"),
        format!("{cli} state"),
        format!("{cli} reservations"),
        format!("{cli} status nosuchtask"),
        format!("{cli} kill nosuchtask"),
        format!("{cli} logs nosuchtask"),
        format!("{cli} attr ls"),
        format!("{cli} nodes"),
        format!("{cli} run --id t1 -- true"),
        format!(
            "{cli} run --id t2 --image https://127.0.0.1:1/x.tar.gz --sha256 {} -- true",
            "0".repeat(64)
        ),
        format!("/gleaner --agent {agent_url} ps"),
        "/gleaner --agent http://127.0.0.1:1 ps".to_string(),
        "/gleaner --scheduler http://127.0.0.1:1 job ls".to_string(),
        "/gleaner --scheduler http://127.0.0.1:1 queue ls".to_string(),
        "/gleaner-rootfs inspect /nope.tar.gz".to_string(),
        "/gleaner-rootfs verify /nope.tar.gz --sha256 00".to_string(),
        "/gleaner-rootfs build --from busybox --output /x.tar.gz".to_string(),
        "/gleaner-rootfs unpack /nope.tar.gz /x".to_string(),
        "/gleaner-agent --config /nope.toml".to_string(),
        "/gleaner-monitor --config /nope.toml".to_string(),
        "/gleaner-scheduler --config /nope.toml".to_string(),
    ];
    let mut script = String::from(
        "set -u\nJ=$1\nmount -t proc proc \"$J/proc\"\nmount --rbind /sys \"$J/sys\"\nmount --rbind /dev \"$J/dev\"\n\
         chroot \"$J\" /gleaner-agent --config /agent.toml >\"$J.agent.log\" 2>&1 &\nagent=$!\n",
    );
    for c in &commands {
        script.push_str(&format!(
            "echo \"== {c}\"; chroot \"$J\" {c} 2>&1; echo \"== exit $?\"\n"
        ));
    }
    // Long-running ones: a few seconds each, then stopped.
    script.push_str(&format!(
        "chroot \"$J\" /gleaner-monitor --agent {agent_url} --cgroup-root {croot} --listen 127.0.0.1:{} --interval 200ms >\"$J.monitor.log\" 2>&1 &\nm=$!\n\
         chroot \"$J\" /gleaner-scheduler --etcd http://127.0.0.1:1 --listen 127.0.0.1:{} >\"$J.scheduler.log\" 2>&1 &\ns=$!\n\
         sleep 3\nkill $m $s; wait $m $s\nkill $agent; wait $agent\n",
        free_port(),
        free_port()
    ));
    let (_, out) = run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(&jail));
    let logs: String = ["agent", "monitor", "scheduler"]
        .iter()
        .map(|n| {
            format!(
                "--- {n} ---\n{}\n",
                std::fs::read_to_string(tmp.path().join(format!("jail.{n}.log")))
                    .unwrap_or_default()
            )
        })
        .collect();
    // Remove the agent's cgroups (it leaves its root for the next start)
    // in every controller it uses, freezer included.
    for c in [
        "cpu", "cpuacct", "memory", "pids", "freezer", "cpuset", "blkio",
    ] {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/{c}/{croot}"));
        if dir.exists() {
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", "+"])
                .status();
        }
    }
    eprintln!("{out}\n{logs}");
    assert!(
        !out.contains("panicked") && !logs.contains("panicked"),
        "a panic:\n{out}\n{logs}"
    );
    assert!(out.contains(&format!("== {cli} wait-healthy --timeout 30\n")));
    let after_healthy = out
        .split(&format!("== {cli} wait-healthy --timeout 30\n"))
        .nth(1)
        .unwrap();
    assert!(
        after_healthy.lines().take(3).any(|l| l == "== exit 0"),
        "the agent in the chroot is not healthy:\n{out}\n{logs}"
    );
    let ps = out.split(&format!("== {cli} ps\n")).nth(1).unwrap();
    assert!(
        ps.lines().take(5).any(|l| l == "== exit 0"),
        "ps does not answer:\n{out}"
    );
    assert!(logs.contains("monitor started"), "{logs}");
}
