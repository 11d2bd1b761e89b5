//! The group's shared volume in a member's root, without writing into the
//! rootfs: the rootfs is a shared (often cached, possibly read-only) image,
//! so a mount point it lacks is made in a small tmpfs laid over the nearest
//! directory that exists, inside the task's own mount namespace. That tmpfs
//! carries a bind of every entry of the directory it covers (links are
//! copied), so the task sees the directory as it was, plus the mount point
//! (what runc does for mount points missing on a read-only rootfs).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::mounts::MountError;

const NONE: Option<&str> = None;
/// Most entries a covered directory may hold: each is a bind mount made
/// before the task joins its cgroup, under the kernel's namespace lock.
pub const MAX_COVERED: usize = 1024;

/// Where the shared volume goes below a rootfs.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedPoint {
    /// The directory exists: mount there.
    Exists(PathBuf),
    /// `parent` is the deepest directory of the path that exists; `missing`
    /// are the components below it.
    Missing {
        parent: PathBuf,
        missing: Vec<String>,
    },
}

/// Walks `path` (absolute, normalised) below `rootfs` without following a
/// link. A link or a non-directory on the way is refused, so the mount
/// never lands outside the rootfs. Reads only.
pub fn locate(rootfs: &Path, path: &str) -> Result<SharedPoint, MountError> {
    let fail = |reason: String| MountError::SharedPoint {
        rootfs: rootfs.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut at = rootfs.to_owned();
    for (i, part) in parts.iter().enumerate() {
        if *part == "." || *part == ".." {
            return Err(fail(format!("component {part:?}")));
        }
        let next = at.join(part);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(fail(format!("{} is a link", next.display())))
            }
            Ok(m) if !m.is_dir() => {
                return Err(fail(format!("{} is not a directory", next.display())))
            }
            Ok(_) => at = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SharedPoint::Missing {
                    parent: at,
                    missing: parts[i..].iter().map(|s| s.to_string()).collect(),
                })
            }
            Err(e) => return Err(fail(format!("{}: {e}", next.display()))),
        }
    }
    Ok(SharedPoint::Exists(at))
}

/// In the task's mount namespace, before the rootfs is made read-only:
/// returns the shared volume's mount point, made in a tmpfs over the
/// nearest existing directory when the rootfs lacks it.
pub fn prepare(rootfs: &Path, path: &str) -> Result<PathBuf, MountError> {
    match locate(rootfs, path)? {
        SharedPoint::Exists(p) => Ok(p),
        SharedPoint::Missing { parent, missing } => {
            cover(&parent).map_err(|e| match e {
                Covered::TooMany => too_many(rootfs, path, &parent),
                Covered::Err(e) => e,
            })?;
            let mut at = parent;
            for part in missing {
                at.push(part);
                fs::create_dir(&at).map_err(|e| io(&at, "create mount point", e))?;
            }
            Ok(at)
        }
    }
}

/// At the agent, before a member launches: the path passes the group
/// rules (a record from before they were stricter is checked again) and
/// the init will be able to make it.
pub fn check(rootfs: &Path, path: &str) -> Result<(), MountError> {
    gleaner_core::group::check_shared_path(path).map_err(|e| MountError::SharedPoint {
        rootfs: rootfs.to_owned(),
        path: path.to_owned(),
        reason: e.reason,
    })?;
    if let SharedPoint::Missing { parent, .. } = locate(rootfs, path)? {
        let n = fs::read_dir(&parent)
            .map_err(|e| io(&parent, "list", e))?
            .take(MAX_COVERED + 1)
            .count();
        if n > MAX_COVERED {
            return Err(too_many(rootfs, path, &parent));
        }
    }
    Ok(())
}

fn too_many(rootfs: &Path, path: &str, parent: &Path) -> MountError {
    MountError::SharedPoint {
        rootfs: rootfs.to_owned(),
        path: path.to_owned(),
        reason: format!(
            "{} holds more than {MAX_COVERED} entries to carry over: create {path} in the image",
            parent.display()
        ),
    }
}

fn io(path: &Path, what: &'static str, err: std::io::Error) -> MountError {
    MountError::SharedIo {
        what,
        path: path.to_owned(),
        err,
    }
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |err| MountError::Sys {
        what,
        path: path.to_owned(),
        err,
    }
}

enum Covered {
    TooMany,
    Err(MountError),
}

impl From<MountError> for Covered {
    fn from(e: MountError) -> Covered {
        Covered::Err(e)
    }
}

/// Lays a tmpfs over `dir` holding what `dir` held: a bind of each entry
/// (taken through a descriptor opened before the tmpfs hides them), links
/// recreated with their owner. The tmpfs has `dir`'s mode and owner.
fn cover(dir: &Path) -> Result<(), Covered> {
    let meta = fs::symlink_metadata(dir).map_err(|e| io(dir, "stat", e))?;
    let below = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| io(dir, "open", e))?;
    let entries: Vec<(std::ffi::OsString, fs::FileType)> = fs::read_dir(dir)
        .map_err(|e| io(dir, "list", e))?
        .take(MAX_COVERED + 1)
        .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir, "list", e))?;
    if entries.len() > MAX_COVERED {
        return Err(Covered::TooMany);
    }
    // No size cap (the read-only pass makes it read-only before the task
    // runs; a cap made a few long link targets ENOSPC), an inode cap: the
    // entries plus the missing components of the path.
    let opts = format!(
        "mode={:o},uid={},gid={},nr_inodes={}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        MAX_COVERED + 256
    );
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(sys("mount tmpfs over", dir))?;
    let old = PathBuf::from(format!("/proc/self/fd/{}", below.as_raw_fd()));
    for (name, kind) in entries {
        let (src, dst) = (old.join(&name), dir.join(&name));
        if kind.is_symlink() {
            let to = fs::read_link(&src).map_err(|e| io(&src, "read link", e))?;
            let owner = fs::symlink_metadata(&src).map_err(|e| io(&src, "stat", e))?;
            std::os::unix::fs::symlink(&to, &dst).map_err(|e| io(&dst, "copy link", e))?;
            std::os::unix::fs::lchown(&dst, Some(owner.uid()), Some(owner.gid()))
                .map_err(|e| io(&dst, "chown link", e))?;
            continue;
        }
        if kind.is_dir() {
            fs::create_dir(&dst)
        } else {
            fs::File::create(&dst).map(drop)
        }
        .map_err(|e| io(&dst, "create bind point", e))?;
        mount(
            Some(&src),
            &dst,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(sys("bind", &dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{locate, SharedPoint};

    #[test]
    fn the_shared_point_is_found_below_the_rootfs_and_never_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            locate(r, "/data/shared").unwrap(),
            SharedPoint::Missing {
                parent: r.to_owned(),
                missing: vec!["data".into(), "shared".into()]
            }
        );
        std::fs::create_dir(r.join("data")).unwrap();
        assert_eq!(
            locate(r, "/data/shared").unwrap(),
            SharedPoint::Missing {
                parent: r.join("data"),
                missing: vec!["shared".into()]
            }
        );
        std::fs::create_dir(r.join("data/shared")).unwrap();
        assert_eq!(
            locate(r, "/data/shared").unwrap(),
            SharedPoint::Exists(r.join("data/shared"))
        );
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        let e = locate(r, "/link/x").unwrap_err();
        assert!(e.to_string().contains("is a link"), "{e}");
        std::fs::write(r.join("file"), "").unwrap();
        let e = locate(r, "/file/x").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        // Nothing was made on the way.
        assert!(!outside.path().join("x").exists());
        assert_eq!(std::fs::read_dir(r).unwrap().count(), 3);
    }
}
