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
