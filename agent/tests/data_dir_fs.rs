//! The agent warns at start when its data dir is on ext4 without a journal
//! (each file created there steps over the recently deleted inodes: README
//! "Data dir"), and not when it has one. Real loop-mounted file systems.
//! Root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const WARNING: &str = "on ext4 without a journal";

/// A small ext4 on a loop file, mounted for the test's life.
struct LoopFs {
    img: PathBuf,
    dir: PathBuf,
}

impl LoopFs {
    fn new(base: &Path, name: &str, journal: bool) -> Option<LoopFs> {
        let img = base.join(format!("{name}.img"));
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(256 << 20).unwrap();
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F"]);
        if !journal {
            mkfs.args(["-O", "^has_journal"]);
        }
        if !mkfs.arg(&img).status().ok()?.success() {
            return None;
        }
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir)
            .status()
            .ok()?
            .success();
        mounted.then_some(LoopFs { img, dir })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.img);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn started_log(fs: &LoopFs) -> String {
    // The harness makes the agent's dir (data dir included) in $TMPDIR.
    std::env::set_var("TMPDIR", &fs.dir);
    let agent = TestAgent::start();
    std::env::remove_var("TMPDIR");
    assert!(agent.tmp().starts_with(&fs.dir));
    wait_until(Duration::from_secs(10), "agent started line", || {
        agent.log_tail().contains("agent started")
    });
    let log = std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    drop(agent);
    log
}

#[test]
fn a_data_dir_on_ext4_without_a_journal_is_warned_about() {
    if !require_root("data dir file system warning") {
        return;
    }
    let base = tempfile::Builder::new()
        .prefix("gleaner-test-fs")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (Some(bare), Some(journaled)) = (
        LoopFs::new(base.path(), "nojournal", false),
        LoopFs::new(base.path(), "journal", true),
    ) else {
        panic!("mkfs.ext4 and loop mounts are needed (e2fsprogs, mount)");
    };
    let log = started_log(&bare);
    assert!(
        log.contains(WARNING),
        "no warning on a journal-less ext4:\n{log}"
    );
    let log = started_log(&journaled);
    assert!(!log.contains(WARNING), "warned on a journaled ext4:\n{log}");
}
