//! Safe unpacking: nothing outside the target directory is touched.
//!
//! Refused, with the entry named: absolute paths, `..`, symlinks whose
//! target leaves the root (absolute targets are read as inside the root, as
//! the task will see them), hardlinks to anything but a file already
//! unpacked, device nodes and fifos. Never written through: a parent that
//! is a symlink, or an existing symlink at the entry's path. setuid and
//! setgid bits are stripped.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry}: {reason}")]
    Refused { entry: String, reason: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("bad archive: {0}")]
    Archive(String),
}

#[derive(Debug, Default, PartialEq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
    /// Entries whose setuid/setgid bits were stripped.
    pub stripped: usize,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |err| UnpackError::Io {
        path: path.to_owned(),
        err,
    }
}

fn refuse(entry: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.display().to_string(),
        reason: reason.into(),
    }
}

/// The entry's path inside the root, or why it is refused.
fn inside(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(refuse(raw, "absolute path")),
            Component::ParentDir => return Err(refuse(raw, "'..' leaves the target")),
        }
    }
    Ok(out)
}

/// Lexically resolves a symlink target as seen from `link` inside the root;
/// None when it climbs above the root.
fn resolve(link: &Path, target: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = if target.is_absolute() {
        Vec::new()
    } else {
        link.parent()?.iter().collect()
    };
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// Creates missing parents of `rel` under `root`; refuses a parent that is
/// not a real directory (a symlink would be followed out of the root).
fn parents(root: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut at = root.to_owned();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(refuse(
                        rel,
                        format!("parent {} is not a directory", at.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at).map_err(io_err(&at))?
                }
                Err(e) => return Err(io_err(&at)(e)),
            }
        }
    }
    Ok(())
}

/// Removes what stands at `path` unless it is a directory we can reuse.
fn clear(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path).map_err(io_err(path)),
        _ => Ok(()),
    }
}

/// Unpacks a gzip'd tar image into `dest` (created if missing).
pub fn unpack(image: &Path, dest: &Path) -> Result<Unpacked, UnpackError> {
    let file = fs::File::open(image).map_err(io_err(image))?;
    unpack_tar(flate2::read::GzDecoder::new(file), dest)
}

/// Unpacks an uncompressed tar stream into `dest`: what the fuzzer drives.
pub fn unpack_tar(tar: impl io::Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut archive = tar::Archive::new(tar);
    let mut stats = Unpacked::default();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Archive(e.to_string()))?;
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Archive(e.to_string()))?
            .into_owned();
        let rel = inside(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644);
        let kept = mode & 0o1777;
        if mode & 0o6000 != 0 {
            stats.stripped += 1;
        }
        parents(dest, &rel)?;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refuse(&rel, "a non-directory already stands there")),
                    Err(_) => fs::create_dir(&path).map_err(io_err(&path))?,
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(kept))
                    .map_err(io_err(&path))?;
            }
            T::Regular | T::Continuous => {
                clear(&path)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc_o_nofollow())
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(&path))?;
                stats.bytes += io::copy(&mut entry, &mut out).map_err(io_err(&path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(kept & 0o777))
                    .map_err(io_err(&path))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| refuse(&rel, "symlink without a target"))?;
                if resolve(&rel, &target).is_none() {
                    return Err(refuse(
                        &rel,
                        format!("symlink to {} escapes the target", target.display()),
                    ));
                }
                clear(&path)?;
                std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| refuse(&rel, "hardlink without a target"))?;
                let target_rel = inside(&target).map_err(|_| {
                    refuse(
                        &rel,
                        format!("hardlink to {} leaves the target", target.display()),
                    )
                })?;
                let source = dest.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(refuse(
                            &rel,
                            format!(
                                "hardlink to {}: not a file unpacked before it",
                                target.display()
                            ),
                        ))
                    }
                }
                clear(&path)?;
                fs::hard_link(&source, &path).map_err(io_err(&path))?;
            }
            T::Char | T::Block => {
                return Err(refuse(
                    &rel,
                    "device nodes are refused (the agent makes /dev)",
                ))
            }
            T::Fifo => return Err(refuse(&rel, "fifos are refused")),
            // Metadata entries (pax, GNU long names) are folded in by `tar`.
            _ => continue,
        }
        stats.entries += 1;
    }
    Ok(stats)
}

/// O_NOFOLLOW: a file is never opened through a symlink.
fn libc_o_nofollow() -> i32 {
    0o400000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile(entries: &[crate::raw::RawEntry]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.tar.gz");
        crate::raw::write_raw_archive(&path, entries).unwrap();
        (dir, path)
    }

    fn refused(entries: &[crate::raw::RawEntry], needle: &str) {
        let (dir, image) = hostile(entries);
        let dest = dir.path().join("root");
        let err = unpack(&image, &dest).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        // Nothing landed next to the target.
        let outside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            outside.iter().all(|n| n == "h.tar.gz" || n == "root"),
            "{outside:?}"
        );
    }

    use tar::EntryType as T;

    #[test]
    fn refuses_escapes_devices_and_writes_through_symlinks() {
        refused(
            &[("/etc/evil", T::Regular, "", b"x", 0o644)],
            "absolute path",
        );
        refused(&[("a/../../evil", T::Regular, "", b"x", 0o644)], "'..'");
        refused(&[("up", T::Symlink, "../../..", b"", 0o777)], "escapes");
        refused(&[("dev/sda", T::Block, "", b"", 0o600)], "device node");
        refused(&[("dev/null", T::Char, "", b"", 0o666)], "device node");
        refused(&[("pipe", T::Fifo, "", b"", 0o600)], "fifo");
        refused(
            &[("hl", T::Link, "../../etc/passwd", b"", 0o644)],
            "leaves the target",
        );
        refused(&[("hl", T::Link, "missing", b"", 0o644)], "not a file");
        // A symlink inside the root, then a file written "through" it.
        refused(
            &[
                ("link", T::Symlink, "/", b"", 0o777),
                ("link/evil", T::Regular, "", b"x", 0o644),
            ],
            "not a directory",
        );
    }

    #[test]
    fn keeps_what_is_legitimate_and_strips_setuid() {
        let (dir, image) = hostile(&[
            ("bin/", T::Directory, "", b"", 0o755),
            ("bin/busybox", T::Regular, "", b"\x7fELF", 0o4755),
            ("bin/sh", T::Symlink, "busybox", b"", 0o777),
            ("bin/abs", T::Symlink, "/bin/busybox", b"", 0o777),
            ("bin/again", T::Link, "bin/busybox", b"", 0o755),
        ]);
        let dest = dir.path().join("root");
        let stats = unpack(&image, &dest).unwrap();
        assert_eq!((stats.entries, stats.stripped), (5, 1));
        let mode = fs::metadata(dest.join("bin/busybox"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid stripped");
        assert_eq!(
            fs::read_link(dest.join("bin/abs")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::read(dest.join("bin/again")).unwrap(), b"\x7fELF");
    }

    #[test]
    fn symlink_resolution_is_lexical_and_rooted() {
        assert_eq!(
            resolve(Path::new("a/b/l"), Path::new("../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(
            resolve(Path::new("a/l"), Path::new("/etc/x")),
            Some(PathBuf::from("etc/x"))
        );
        assert_eq!(resolve(Path::new("l"), Path::new("../x")), None);
    }
}
