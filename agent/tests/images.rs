//! Issue 7: rootfs images by URI. Root only. Images are built with the real
//! `gleaner-rootfs`, served by a small HTTP server of the test's own (it
//! counts requests), fetched, verified, cached and shared read-only.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::files::Server;
use common::*;
use gleaner_agent::status::{Reason, TaskState};
use gleaner_rootfs::raw::{write_raw_archive, EntryType as T};
use serde_json::{json, Value};

/// `gleaner-rootfs build --from busybox`, with a script at /opt/hello.sh
/// and `extra` arguments; returns (image, sha256).
fn build_image(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, String) {
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(&script, format!("echo hello from {name}\n")).unwrap();
    let image = dir.join(format!("{name}.tar.gz"));
    let out = Command::new(workspace_bin("gleaner-rootfs"))
        .args(["build", "--from", "busybox", "--add"])
        .arg(format!("{}:/opt/hello.sh", script.display()))
        .args(extra)
        .arg("--output")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(sha.len(), 64, "{sha}");
    (image, sha)
}

fn image_spec(id: &str, cmd: &str, uri: &str, sha: &str) -> Value {
    json!({"id": id, "cmd": cmd, "rootfs": {"uri": uri, "sha256": sha},
           "resources": {"cpus": 0.2, "mem_mb": 32}})
}

fn cached_images(agent: &TestAgent) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(agent.data_dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn leftover_work(agent: &TestAgent) -> Vec<PathBuf> {
    std::fs::read_dir(agent.data_dir.join("images/.tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn an_image_over_http_is_fetched_once_and_shared_read_only() {
    if !require_root("an_image_over_http_is_fetched_once_and_shared_read_only") {
        return;
    }
    let agent =
        TestAgent::start_with("fetch_allow_hosts = [\"127.0.0.1\"]\nimage_file_dirs = [\"{tmp}\"]");
    let server = Server::start();
    let (image, sha) = build_image(agent.tmp(), "app", &[]);
    let uri = server.serve("app.tar.gz", &image);

    // Two tasks naming the same image at once: one fetch. The reply does
    // not wait for the fetch.
    let a = agent
        .submit(image_spec("a", "sh /opt/hello.sh; sleep 600", &uri, &sha))
        .unwrap();
    let b = agent
        .submit(image_spec("b", "sh /opt/hello.sh; sleep 600", &uri, &sha))
        .unwrap();
    assert!(
        matches!(a.state, TaskState::Staging | TaskState::Running),
        "{a:?}"
    );
    assert!(
        matches!(b.state, TaskState::Staging | TaskState::Running),
        "{b:?}"
    );
    for id in ["a", "b"] {
        agent.wait_state(id, TaskState::Running, LONG);
        agent.wait_output(id, "hello from app");
    }
    assert_eq!(server.hits("app.tar.gz"), 1, "one fetch for two tasks");
    assert_eq!(cached_images(&agent), vec![sha.clone()]);

    // Cached now: no fetch, and the reply already says RUNNING.
    let c = agent
        .submit(image_spec("c", "sh /opt/hello.sh", &uri, &sha))
        .unwrap();
    assert_ne!(c.state, TaskState::Staging, "{c:?}");
    assert_eq!(agent.wait_final("c", LONG).state, TaskState::Finished);
    assert_eq!(server.hits("app.tar.gz"), 1);

    // The image is shared read-only; the sandbox and /tmp are the task's.
    let w = agent
        .submit(image_spec(
            "w",
            "echo x > /tmp/t && echo y > /sandbox/s && touch /bin/evil",
            &uri,
            &sha,
        ))
        .unwrap();
    let _ = w;
    let w = agent.wait_final("w", LONG);
    assert_eq!(w.state, TaskState::Failed, "{w:?}");
    assert!(
        agent.logs("w", "stderr").contains("Read-only file system"),
        "{}",
        agent.logs("w", "stderr")
    );
    assert!(!agent
        .data_dir
        .join(format!("images/{sha}/rootfs/bin/evil"))
        .exists());
    // A file:// uri to the same digest is the same cached image, once
    // this (role, URI) has proven it by a local hash: no second unpack.
    agent
        .submit(image_spec(
            "f",
            "sh /opt/hello.sh",
            &format!("file://{}", image.display()),
            &sha,
        ))
        .unwrap();
    assert_eq!(agent.wait_final("f", LONG).state, TaskState::Finished);
    assert_eq!(agent.metric::<u64>("gleaner_image_fetches_total"), 1);
    assert_eq!(agent.metric::<u64>("gleaner_image_proofs_total"), 1);

    for id in ["a", "b"] {
        agent.kill(id);
    }
    assert!(leftover_work(&agent).is_empty());
}

#[test]
fn bad_images_fail_with_rootfs_invalid_and_leave_nothing() {
    if !require_root("bad_images_fail_with_rootfs_invalid_and_leave_nothing") {
        return;
    }
    let agent = TestAgent::start_with(
        "image_fetch_retries = 1\nimage_fetch_timeout_s = 5\nfetch_allow_hosts = [\"127.0.0.1\"]\nimage_file_dirs = [\"{tmp}\"]",
    );
    let server = Server::start();
    let dir = agent.tmp().to_owned();
    let (image, sha) = build_image(&dir, "good", &[]);

    let mut cases: Vec<(String, String, String, &str)> = Vec::new();
    // Right image, wrong digest.
    let wrong = "0".repeat(64);
    cases.push((
        "checksum".into(),
        server.serve("good.tar.gz", &image),
        wrong,
        "sha256 mismatch",
    ));
    // An archive cut short (with the digest of what is served).
    let bytes = std::fs::read(&image).unwrap();
    let cut = dir.join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    cases.push((
        "truncated".into(),
        server.serve("cut.tar.gz", &cut),
        sha256_of(&cut),
        "unpack",
    ));
    // Nothing listens there; and a 404.
    cases.push((
        "unreachable".into(),
        format!("http://127.0.0.1:{}/x.tar.gz", free_port()),
        sha.clone(),
        "fetch",
    ));
    cases.push((
        "missing".into(),
        format!("http://127.0.0.1:{}/nope.tar.gz", server.port),
        sha.clone(),
        "404",
    ));
    // Hostile archives, each kind.
    let hostile: Vec<(&str, Vec<gleaner_rootfs::raw::RawEntry>, &str)> = vec![
        (
            "absolute",
            vec![("/etc/evil", T::Regular, "", b"x", 0o644)],
            "absolute path",
        ),
        (
            "dotdot",
            vec![("a/../../evil", T::Regular, "", b"x", 0o644)],
            "'..'",
        ),
        (
            "symlink",
            vec![("up", T::Symlink, "../../..", b"", 0o777)],
            "escapes",
        ),
        (
            "hardlink",
            vec![("hl", T::Link, "../../etc/passwd", b"", 0o644)],
            "leaves the target",
        ),
        (
            "through",
            vec![
                ("link", T::Symlink, "/", b"", 0o777),
                ("link/evil", T::Regular, "", b"x", 0o644),
            ],
            "not a directory",
        ),
        (
            "device",
            vec![("dev/sda", T::Block, "", b"", 0o600)],
            "device node",
        ),
    ];
    for (name, entries, needle) in &hostile {
        let path = dir.join(format!("{name}.tar.gz"));
        write_raw_archive(&path, entries).unwrap();
        cases.push((
            name.to_string(),
            format!("file://{}", path.display()),
            sha256_of(&path),
            needle,
        ));
    }

    for (id, uri, digest, _) in &cases {
        agent.submit(image_spec(id, "true", uri, digest)).unwrap();
    }
    for (id, _, _, needle) in &cases {
        let s = agent.wait_final(id, LONG);
        assert_eq!(s.state, TaskState::Failed, "{id}: {s:?}");
        assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{id}: {s:?}");
        let msg = s.message.clone().unwrap_or_default();
        assert!(msg.contains(needle), "{id}: {msg:?} lacks {needle:?}");
    }
    assert!(
        cached_images(&agent).is_empty(),
        "{:?}",
        cached_images(&agent)
    );
    assert!(
        leftover_work(&agent).is_empty(),
        "{:?}",
        leftover_work(&agent)
    );
    assert!(!Path::new("/etc/evil").exists() && !dir.parent().unwrap().join("evil").exists());

    // Bad input at submission: 400, nothing created.
    let e = agent
        .submit(image_spec("s3", "true", "s3://bucket/i.tar.gz", &sha))
        .unwrap_err();
    assert!(e.to_string().contains("rootfs.uri"), "{e}");
    let e = agent
        .submit(
            json!({"id": "nodigest", "cmd": "true", "rootfs": {"uri": "http://127.0.0.1/i.tar.gz"},
                       "resources": {"cpus": 0.2, "mem_mb": 32}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("rootfs.sha256"), "{e}");
    assert!(!agent.data_dir.join("tasks/s3").exists());
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Review (issue 14): a cached image's digest worked as a capability
/// across tenants: a task of another role naming the digest with a URI
/// that serves nothing got the image. A cached image now serves only a
/// (role, URI) that fetched it; any other downloads its own URI and must
/// hash to the digest first (no second unpack), without holding back the
/// tasks already proven.
#[test]
fn a_cached_image_is_no_capability_across_roles_or_uris() {
    if !require_root("a_cached_image_is_no_capability_across_roles_or_uris") {
        return;
    }
    let agent = TestAgent::start_with("fetch_allow_hosts = [\"127.0.0.1\"]");
    agent
        .client
        .put::<Value, Value>(
            "/v1/reservations/analytics",
            &json!({"cpus": 1, "mem_mb": 256}),
        )
        .unwrap();
    let server = Server::start();
    let (image, sha) = build_image(agent.tmp(), "private", &[]);
    let uri = server.serve("private.tar.gz", &image);
    let as_role = |mut spec: Value, role: &str| {
        spec["role"] = json!(role);
        spec
    };
    agent
        .submit(image_spec("owner", "sh /opt/hello.sh", &uri, &sha))
        .unwrap();
    assert_eq!(agent.wait_final("owner", LONG).state, TaskState::Finished);
    let home = agent.data_dir.join("images").join(&sha);
    let (record, rootfs_ino) = (
        std::fs::read(home.join("image.json")).unwrap(),
        inode(&home.join("rootfs")),
    );

    // Another role, the digest, a URI that serves nothing: never runs,
    // and the cached image is left as it was.
    let nothing = format!("http://127.0.0.1:{}/nothing.tar.gz", server.port);
    agent
        .submit(as_role(
            image_spec("thief", "touch /sandbox/ran", &nothing, &sha),
            "analytics",
        ))
        .unwrap();
    let s = agent.wait_final("thief", LONG);
    assert_eq!(s.state, TaskState::Failed, "{s:?}");
    assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{s:?}");
    assert!(
        s.message.clone().unwrap_or_default().contains("404"),
        "{s:?}"
    );
    assert!(s.started_at.is_none(), "{s:?}");
    assert!(!agent.data_dir.join("tasks/thief/sandbox/ran").exists());
    // Other bytes at its URI: the same.
    let other = server.serve_bytes("other.tar.gz", b"not the image");
    agent
        .submit(as_role(
            image_spec("liar", "touch /sandbox/ran", &other, &sha),
            "analytics",
        ))
        .unwrap();
    let s = agent.wait_final("liar", LONG);
    assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{s:?}");
    assert!(
        s.message
            .clone()
            .unwrap_or_default()
            .contains("sha256 mismatch"),
        "{s:?}"
    );
    assert_eq!(std::fs::read(home.join("image.json")).unwrap(), record);
    // The owner's own role with another URI proves too.
    agent
        .submit(image_spec("elsewhere", "true", &nothing, &sha))
        .unwrap();
    assert_eq!(
        agent.wait_final("elsewhere", LONG).reason,
        Some(Reason::RootfsInvalid)
    );

    // Its own URI to the same bytes: downloaded and hashed, the unpacked
    // image reused (same inode, one unpack in all), and then recorded.
    let mine = server.serve("mine.tar.gz", &image);
    agent
        .submit(as_role(
            image_spec("mine", "sh /opt/hello.sh", &mine, &sha),
            "analytics",
        ))
        .unwrap();
    let s = agent.wait_final("mine", LONG);
    assert_eq!(s.state, TaskState::Finished, "{s:?}");
    assert!(agent.logs("mine", "stdout").contains("hello from private"));
    assert_eq!(server.hits("mine.tar.gz"), 1);
    assert_eq!(inode(&home.join("rootfs")), rootfs_ino, "unpacked again");
    assert_eq!(agent.metric::<u64>("gleaner_image_fetches_total"), 1);
    assert_eq!(agent.metric::<u64>("gleaner_image_proofs_total"), 1);
    let again = agent
        .submit(as_role(
            image_spec("again", "true", &mine, &sha),
            "analytics",
        ))
        .unwrap();
    assert_ne!(again.state, TaskState::Staging, "proven once: {again:?}");
    assert_eq!(agent.wait_final("again", LONG).state, TaskState::Finished);
    assert_eq!(server.hits("mine.tar.gz"), 1);

    // A slow proof holds back nobody already proven.
    let bytes = std::fs::read(&image).unwrap();
    let every = Duration::from_millis((10_000 / (bytes.len() as u64 / 1024).max(1)).max(1));
    let slow = server.trickle("slow.tar.gz", &bytes, every);
    agent
        .submit(as_role(
            image_spec("slow", "true", &slow, &sha),
            "analytics",
        ))
        .unwrap();
    wait_until(LONG, "the proof under way", || {
        server.open.load(std::sync::atomic::Ordering::SeqCst) == 1
    });
    agent
        .submit(image_spec("proven", "true", &uri, &sha))
        .unwrap();
    assert_eq!(agent.wait_final("proven", LONG).state, TaskState::Finished);
    assert_eq!(
        agent.status("slow").state,
        TaskState::Staging,
        "the proof was not under way"
    );
    assert_eq!(agent.wait_final("slow", LONG).state, TaskState::Finished);
    assert_eq!(server.hits("private.tar.gz"), 1);
    assert_eq!(agent.metric::<u64>("gleaner_image_fetches_total"), 1);
    assert!(
        leftover_work(&agent).is_empty(),
        "{:?}",
        leftover_work(&agent)
    );
}

/// Unmounts a bind on drop (before the agent's tmp dir is removed).
struct Bind(PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Review (issue 14): `rootfs.path` into the image cache handed out a
/// cached image by path. Nothing in the data dir but below an operator's
/// own rootfs_dirs entry is a rootfs, however spelled: directly, through
/// a symlink, through a bind of the data dir's images dir.
#[test]
fn rootfs_path_into_the_data_dir_is_refused() {
    if !require_root("rootfs_path_into_the_data_dir_is_refused") {
        return;
    }
    // rootfs_dirs is the agent's tmp dir, which holds its data dir.
    let agent = TestAgent::start_with("image_file_dirs = [\"{tmp}\"]");
    let (image, sha) = build_image(agent.tmp(), "cached", &[]);
    let uri = format!("file://{}", image.display());
    agent
        .submit(image_spec("owner", "sleep 600", &uri, &sha))
        .unwrap();
    agent.wait_state("owner", TaskState::Running, LONG);
    let data = agent.data_dir.clone();
    let cached = data.join("images").join(&sha).join("rootfs");
    assert!(cached.is_dir());
    let link = agent.tmp().join("link");
    std::os::unix::fs::symlink(&cached, &link).unwrap();
    let bound = agent.tmp().join("bound");
    std::fs::create_dir(&bound).unwrap();
    nix::mount::mount(
        Some(&data.join("images")),
        &bound,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _bind = Bind(bound.clone());
    let cases = [
        ("direct", cached.clone(), "rootfs.uri"),
        ("deeper", cached.join("opt"), "rootfs.uri"),
        ("link", link, "rootfs.uri"),
        ("bind", bound.join(&sha).join("rootfs"), "rootfs.uri"),
        (
            "sandbox",
            data.join("tasks/owner/sandbox"),
            "inside the agent's data dir",
        ),
        ("run", data.join("run"), "inside the agent's data dir"),
        ("data", data.clone(), "holds"),
    ];
    for (id, path, needle) in &cases {
        let mut spec = spec("true");
        spec["id"] = json!(id);
        spec["rootfs"] = json!({ "path": path });
        let e = agent.submit(spec).unwrap_err().to_string();
        assert!(e.contains("400"), "{id}: {e}");
        assert!(e.contains(needle), "{id}: {e}");
        assert!(!data.join("tasks").join(id).exists(), "{id}");
    }
    // The operator's dirs still work (the busybox rootfs below tmp).
    let mut ok = spec("echo fine");
    ok["id"] = json!("ok");
    ok["rootfs"] = json!({ "path": agent.tmp().join("rootfs") });
    agent.submit(ok).unwrap();
    assert_eq!(agent.wait_final("ok", LONG).state, TaskState::Finished);
    agent.kill("owner");
}

/// A record an earlier agent accepted with `rootfs.path` into the image
/// cache (allowed then) fails its next run `rootfs_invalid` instead of
/// skipping the proof: the launch checks it again.
#[test]
fn an_older_record_naming_the_cache_by_path_does_not_run() {
    if !require_root("an_older_record_naming_the_cache_by_path_does_not_run") {
        return;
    }
    let mut agent = TestAgent::start_with("image_file_dirs = [\"{tmp}\"]");
    let (image, sha) = build_image(agent.tmp(), "cached", &[]);
    let uri = format!("file://{}", image.display());
    agent
        .submit(image_spec("owner", "true", &uri, &sha))
        .unwrap();
    assert_eq!(agent.wait_final("owner", LONG).state, TaskState::Finished);
    // Queued (its role has no reservation yet) with an allowed path, then
    // made what an earlier agent accepted.
    let mut old = spec("touch /sandbox/ran");
    old["id"] = json!("old");
    old["role"] = json!("analytics");
    assert_eq!(agent.submit(old).unwrap().state, TaskState::Queued);
    agent.stop_agent(libc::SIGTERM);
    let path = agent.task_json("old");
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let cached = agent.data_dir.join("images").join(&sha).join("rootfs");
    record["spec"]["rootfs"] = json!({ "path": cached });
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    agent.spawn();
    agent
        .client
        .put::<Value, Value>(
            "/v1/reservations/analytics",
            &json!({"cpus": 1, "mem_mb": 256}),
        )
        .unwrap();
    let s = agent.wait_final("old", LONG);
    assert_eq!(s.state, TaskState::Failed, "{s:?}");
    assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{s:?}");
    assert!(
        s.message
            .clone()
            .unwrap_or_default()
            .contains("image cache"),
        "{s:?}"
    );
    assert!(!agent.data_dir.join("tasks/old/sandbox/ran").exists());
}

/// Review of the image fixes: a recorded `rootfs.path` was mounted as
/// recorded at each run; a dir of rootfs_dirs swapped for a link to `/`
/// after the submission gave the task the host's root. Checked again at
/// launch.
#[test]
fn a_rootfs_path_swapped_for_a_link_after_submission_does_not_run() {
    if !require_root("a_rootfs_path_swapped_for_a_link_after_submission_does_not_run") {
        return;
    }
    // The harness lists the agent's tmp dir in rootfs_dirs.
    let agent = TestAgent::start();
    let dirs = agent.tmp().join("roots");
    std::fs::create_dir(&dirs).unwrap();
    let bb = dirs.join("bb");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&agent.rootfs)
        .arg(&bb)
        .status()
        .unwrap();
    assert!(st.success());
    let marker = format!("/gleaner-swap-{}", std::process::id());
    // The old agent made the task's mount points (/sandbox) in the host's
    // root before its bind failed.
    let had_sandbox = Path::new("/sandbox").exists();
    let mut t = spec(&format!("touch {marker}"));
    t["id"] = json!("swapped");
    t["role"] = json!("analytics");
    t["rootfs"] = json!({ "path": bb });
    // Queued: its role has no reservation yet.
    assert_eq!(agent.submit(t).unwrap().state, TaskState::Queued);
    std::fs::rename(&bb, dirs.join("bb.real")).unwrap();
    std::os::unix::fs::symlink("/", &bb).unwrap();
    agent
        .client
        .put::<Value, Value>(
            "/v1/reservations/analytics",
            &json!({"cpus": 1, "mem_mb": 256}),
        )
        .unwrap();
    let s = agent.wait_final("swapped", LONG);
    let ran = Path::new(&marker).exists();
    let _ = std::fs::remove_file(&marker);
    let made = !had_sandbox && Path::new("/sandbox").exists();
    if made {
        let _ = std::fs::remove_dir("/sandbox");
    }
    assert!(!ran, "the task ran in the host's root");
    assert!(!made, "the launch made /sandbox in the host's root");
    assert_eq!(s.state, TaskState::Failed, "{s:?}");
    assert!(
        s.message
            .clone()
            .unwrap_or_default()
            .contains("checked again at launch"),
        "{s:?}"
    );
}

fn sha256_of(path: &Path) -> String {
    gleaner_rootfs::sha256_file(path).unwrap()
}

/// A `file://` image reads a host file as root for any submitter: refused
/// with 400 unless below `image_file_dirs`, and there only a regular file
/// that does not lead out by a symlink (a FIFO used to hang the fetch, a
/// mismatch told the submitter the hash of any root-readable file).
#[test]
fn file_images_come_only_from_image_file_dirs_and_only_regular_files() {
    if !require_root("file_images_come_only_from_image_file_dirs_and_only_regular_files") {
        return;
    }
    let zeros = "0".repeat(64);
    let plain = TestAgent::start();
    let e = plain
        .submit(image_spec("shadow", "true", "file:///etc/shadow", &zeros))
        .unwrap_err();
    assert!(e.to_string().contains("no image_file_dirs"), "{e}");
    assert!(!plain.data_dir.join("tasks/shadow").exists());
    drop(plain);

    let agent = TestAgent::start_with("image_file_dirs = [\"{tmp}/images\"]");
    let images = agent.tmp().join("images");
    std::fs::create_dir(&images).unwrap();
    let (image, sha) = build_image(agent.tmp(), "ok", &[]);
    std::fs::copy(&image, images.join("ok.tar.gz")).unwrap();
    nix::unistd::mkfifo(
        &images.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", images.join("passwd")).unwrap();
    let e = agent
        .submit(image_spec(
            "outside",
            "true",
            &format!("file://{}", image.display()),
            &sha,
        ))
        .unwrap_err();
    assert!(
        e.to_string().contains("not below one of image_file_dirs"),
        "{e}"
    );
    for (id, name, needle) in [
        ("fifo", "fifo", "not a regular file"),
        ("passwd", "passwd", "leads out"),
    ] {
        let uri = format!("file://{}/{name}", images.display());
        agent.submit(image_spec(id, "true", &uri, &zeros)).unwrap();
        let s = agent.wait_final(id, Duration::from_secs(10));
        assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{id}: {s:?}");
        let msg = s.message.clone().unwrap_or_default();
        assert!(
            msg.contains(needle) && !msg.contains("got "),
            "{id}: {msg:?}"
        );
    }
    let uri = format!("file://{}/ok.tar.gz", images.display());
    agent
        .submit(image_spec("ok", "sh /opt/hello.sh", &uri, &sha))
        .unwrap();
    assert_eq!(agent.wait_final("ok", LONG).state, TaskState::Finished);
}

/// Review 3 of issue 14: below a listed dir, a hardlink (to /etc/shadow
/// where `fs.protected_hardlinks` is off), a file in a dir others may
/// write (a symlink swapped in between the check and the open), a file in
/// the data dir (api.token, when a listed dir lies above it) were opened
/// as root; a mismatch told the submitter the file's digest.
#[test]
fn file_images_refuse_hardlinks_shared_dirs_and_the_data_dir_and_keep_digests_private() {
    if !require_root(
        "file_images_refuse_hardlinks_shared_dirs_and_the_data_dir_and_keep_digests_private",
    ) {
        return;
    }
    let zeros = "0".repeat(64);
    let agent = TestAgent::start_with("image_file_dirs = [\"{tmp}\"]");
    let tmp = agent.tmp().to_owned();
    let (image, sha) = build_image(&tmp, "ok", &[]);
    let copy = |to: &Path| {
        std::fs::copy(&image, to).unwrap();
    };
    copy(&tmp.join("a.tar.gz"));
    std::fs::hard_link(tmp.join("a.tar.gz"), tmp.join("linked.tar.gz")).unwrap();
    let open = tmp.join("open");
    std::fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    copy(&open.join("b.tar.gz"));
    copy(&tmp.join("c.tar.gz"));
    let token = agent.data_dir.join("api.token");
    assert!(token.exists());
    for (id, path, want, needle) in [
        (
            "linked",
            tmp.join("linked.tar.gz"),
            sha.as_str(),
            "hard links",
        ),
        (
            "open",
            open.join("b.tar.gz"),
            sha.as_str(),
            "writable by no one else",
        ),
        ("token", token.clone(), zeros.as_str(), "data dir"),
        ("wrong", tmp.join("c.tar.gz"), zeros.as_str(), "not shown"),
    ] {
        let uri = format!("file://{}", path.display());
        agent.submit(image_spec(id, "true", &uri, want)).unwrap();
        let s = agent.wait_final(id, Duration::from_secs(20));
        assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{id}: {s:?}");
        let msg = s.message.clone().unwrap_or_default();
        assert!(msg.contains(needle), "{id}: {msg:?}");
        assert!(!msg.contains(&sha), "{id}: the digest is told: {msg:?}");
    }
    // The same bytes with one link, in root's private dir, run.
    let uri = format!("file://{}", tmp.join("c.tar.gz").display());
    agent
        .submit(image_spec("ok", "sh /opt/hello.sh", &uri, &sha))
        .unwrap();
    assert_eq!(agent.wait_final("ok", LONG).state, TaskState::Finished);
}

#[test]
fn a_task_over_its_disk_mb_ends_with_disk_limit() {
    if !require_root("a_task_over_its_disk_mb_ends_with_disk_limit") {
        return;
    }
    let agent = TestAgent::start_with("disk_check_interval_s = 0.5");
    let mut big =
        spec("dd if=/dev/zero of=/sandbox/big bs=1M count=50 2>/dev/null; echo written; sleep 600");
    big["id"] = json!("big");
    big["resources"]["disk_mb"] = json!(10);
    let mut small =
        spec("dd if=/dev/zero of=/tmp/small bs=1M count=2 2>/dev/null; echo written; sleep 600");
    small["id"] = json!("small");
    small["resources"]["disk_mb"] = json!(10);
    agent.submit(big).unwrap();
    agent.submit(small).unwrap();
    let s = agent.wait_final("big", Duration::from_secs(20));
    assert_eq!(s.state, TaskState::Failed, "{s:?}");
    assert_eq!(s.reason, Some(Reason::DiskLimit), "{s:?}");
    agent.wait_output("small", "written");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.status("small").state, TaskState::Running);
    let metrics = agent.client.get_text("/metrics").unwrap();
    assert!(metrics.contains("gleaner_disk_scan_seconds"), "{metrics}");
    agent.kill("small");
}

#[test]
fn unused_images_are_evicted_least_recently_used_first() {
    if !require_root("unused_images_are_evicted_least_recently_used_first") {
        return;
    }
    // busybox unpacked is about 2 MB: room for one image.
    let agent = TestAgent::start_with("image_cache_mb = 3\nimage_file_dirs = [\"{tmp}\"]");
    let dir = agent.tmp().to_owned();
    let (one, sha1) = build_image(&dir, "one", &[]);
    let (two, sha2) = build_image(&dir, "two", &["--env", "K=2"]);
    assert_ne!(sha1, sha2);
    let uri = |p: &Path| format!("file://{}", p.display());

    agent
        .submit(image_spec("t1", "true", &uri(&one), &sha1))
        .unwrap();
    assert_eq!(agent.wait_final("t1", LONG).state, TaskState::Finished);
    // t2 runs on: its image stays while a newer one comes in.
    agent
        .submit(image_spec("t2", "sleep 600", &uri(&two), &sha2))
        .unwrap();
    agent.wait_state("t2", TaskState::Running, LONG);
    assert_eq!(
        cached_images(&agent),
        vec![sha2.clone()],
        "one (unused, older) evicted"
    );

    agent
        .submit(image_spec("t3", "true", &uri(&one), &sha1))
        .unwrap();
    assert_eq!(agent.wait_final("t3", LONG).state, TaskState::Finished);
    let mut both = vec![sha1.clone(), sha2.clone()];
    both.sort();
    assert_eq!(
        cached_images(&agent),
        both,
        "an image in use is never evicted"
    );
    agent.kill("t2");
}

/// Issue 21 / 20.8: a hardlink through a symlink to a host directory, and
/// an archive of about 10 MB that unpacks to 10 GB of zeros, fail their
/// tasks with rootfs_invalid and leave nothing: no image, no work dir, no
/// host file linked. The bomb stops at the cap (the message names the
/// key), long before the disk fills.
#[test]
fn a_hardlink_through_a_symlink_and_a_10gb_bomb_fail_and_leave_nothing() {
    if !require_root("a_hardlink_through_a_symlink_and_a_10gb_bomb_fail_and_leave_nothing") {
        return;
    }
    let agent = TestAgent::start_with("image_unpack_max_mb = 64\nimage_file_dirs = [\"{tmp}\"]");
    let dir = agent.tmp().to_owned();
    let host = dir.join("host");
    std::fs::create_dir(&host).unwrap();
    let secret = host.join("secret.txt");
    std::fs::write(&secret, b"root only").unwrap();
    let link = dir.join("link.tar.gz");
    let target = host.display().to_string();
    write_raw_archive(
        &link,
        &[
            ("x", T::Symlink, &target, b"", 0o777),
            ("h", T::Link, "x/secret.txt", b"", 0o644),
        ],
    )
    .unwrap();
    let bomb = dir.join("bomb.tar.gz");
    gleaner_rootfs::raw::write_zero_bomb(&bomb, "zeros", 10 << 10).unwrap();
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 16 << 20, "the bomb is {size} bytes");
    for (id, path, needle) in [
        ("link", &link, "through real directories only"),
        ("bomb", &bomb, "the cap is image_unpack_max_mb = 64"),
    ] {
        let uri = format!("file://{}", path.display());
        agent
            .submit(image_spec(id, "true", &uri, &sha256_of(path)))
            .unwrap();
        let s = agent.wait_final(id, LONG);
        assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{id}: {s:?}");
        let msg = s.message.clone().unwrap_or_default();
        assert!(msg.contains(needle), "{id}: {msg:?} lacks {needle:?}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        1,
        "host file linked"
    );
    assert!(
        cached_images(&agent).is_empty(),
        "{:?}",
        cached_images(&agent)
    );
    assert!(
        leftover_work(&agent).is_empty(),
        "{:?}",
        leftover_work(&agent)
    );
}

/// A real HTTPS server: `openssl s_server -WWW` serving `dir`, with a
/// certificate for 127.0.0.1 signed by a CA of the test's own.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    ca: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn tls_server(dir: &Path) -> TlsServer {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=gleaner-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
    );
    let port = free_port();
    let child = Command::new("openssl")
        .args([
            "s_server", "-quiet", "-WWW", "-cert", "srv.pem", "-key", "srv.key", "-accept",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsServer {
        child,
        port,
        ca: dir.join("ca.pem"),
    }
}

/// Issue 18: an https image is fetched with the CA named by `ca_file`; on a
/// host with no CA bundle at all (the agent in a mount namespace with an
/// empty /etc/ssl) the agent starts, and the fetch fails with
/// rootfs_invalid naming the paths it tried.
#[test]
fn https_images_with_ca_file_and_with_no_ca_store_at_all() {
    if !require_root("https_images_with_ca_file_and_with_no_ca_store_at_all") {
        return;
    }
    let www = tempfile::tempdir().unwrap();
    let server = tls_server(www.path());
    let mut agent = TestAgent::start_with(&format!(
        "ca_file = {:?}\nimage_fetch_retries = 0\nfetch_allow_hosts = [\"127.0.0.1\"]",
        server.ca.display().to_string()
    ));
    let (one, sha1) = build_image(www.path(), "one", &[]);
    let (two, sha2) = build_image(www.path(), "two", &["--env", "X=2"]);
    let url = |p: &Path| {
        format!(
            "https://127.0.0.1:{}/{}",
            server.port,
            p.file_name().unwrap().to_string_lossy()
        )
    };
    agent
        .submit(image_spec("trusted", "sh /opt/hello.sh", &url(&one), &sha1))
        .unwrap();
    let s = agent.wait_final("trusted", LONG);
    assert_eq!(s.state, TaskState::Finished, "{s:?}\n{}", agent.log_tail());

    // The same agent without ca_file, where no CA bundle exists.
    agent.stop_agent(libc::SIGTERM);
    let config = std::fs::read_to_string(&agent.config_path).unwrap();
    let bare: String = config
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&agent.config_path, bare).unwrap();
    let log = std::fs::File::create(agent.tmp().join("bare.log")).unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /etc/ssl && exec \"$0\" --config \"$1\"")
        .arg(AGENT_BIN)
        .arg(&agent.config_path)
        .env_remove("SSL_CERT_FILE")
        .stderr(log)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while agent.client.get::<Value>("/v1/health").is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "no agent without a CA store: {}",
                std::fs::read_to_string(agent.tmp().join("bare.log")).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
        .submit(image_spec("untrusted", "true", &url(&two), &sha2))
        .unwrap();
    let s = agent.wait_final("untrusted", LONG);
    let _ = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert_eq!(s.reason, Some(Reason::RootfsInvalid), "{s:?}");
    let msg = s.message.unwrap_or_default();
    for needle in [
        "bundled Mozilla set",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    drop(server);
}
