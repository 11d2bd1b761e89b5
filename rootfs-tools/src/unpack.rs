//! Safe unpacking: nothing outside the target directory is touched.
//!
//! Refused, with the entry named: absolute paths, `..`, symlinks whose
//! target leaves the root (absolute targets are read as inside the root, as
//! the task will see them), hardlinks to anything but a file already
//! unpacked whose path crosses no symlink (root ignores
//! `protected_hardlinks`: `x -> /etc` then `h => x/shadow` would link a
//! host file into the image), device nodes and fifos. Never written
//! through: a parent that is a symlink, or an existing symlink at the
//! entry's path. setuid and setgid bits are stripped.
//!
//! Budgets on unpacked bytes and entries stop a decompression bomb before
//! it fills the disk (data skipped counts too), and metadata between
//! entries (long names, pax records, read whole into memory by the tar
//! crate) is bounded to `META_BYTES`; on any failure what this call created is removed.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry}: {reason}")]
    Refused { entry: String, reason: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("bad archive: {0}")]
    Archive(String),
    #[error("unpacks to more than {limit} {what} (a decompression bomb?)")]
    OverBudget { what: &'static str, limit: u64 },
}

/// What one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub max_bytes: u64,
    pub max_entries: u64,
    /// Charged against `max_bytes` for every entry, whatever its data: a
    /// directory, a link or an empty file costs an inode and often a block
    /// (0 for images, whose entry count is their bound; a task's fetch
    /// list, capped in bytes, charges a block).
    pub entry_bytes: u64,
}

impl Default for Budget {
    /// 16 GiB and a million entries: far above any sane rootfs.
    fn default() -> Self {
        Budget {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            entry_bytes: 0,
        }
    }
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
/// Returns how many it created: each is an entry on disk like any other
/// (one entry with a 4 KB long name made ~2,000 of them for free).
fn parents(root: &Path, rel: &Path) -> Result<u64, UnpackError> {
    let mut made = 0;
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
                    fs::create_dir(&at).map_err(io_err(&at))?;
                    made += 1;
                }
                Err(e) => return Err(io_err(&at)(e)),
            }
        }
    }
    Ok(made)
}

/// Whether `rel` names a regular file under `root` reached through real
/// directories only: no component is a symlink.
fn plain_file(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_owned();
    let mut parts = rel.components().peekable();
    while let Some(c) = parts.next() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if parts.peek().is_some() && m.is_dir() => {}
            Ok(m) if parts.peek().is_none() && m.is_file() => return true,
            _ => return false,
        }
    }
    false
}

/// Removes what stands at `path` unless it is a directory we can reuse.
fn clear(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path).map_err(io_err(path)),
        _ => Ok(()),
    }
}

/// Unpacks a gzip'd tar image into `dest` (created if missing), within
/// the default budget.
pub fn unpack(image: &Path, dest: &Path) -> Result<Unpacked, UnpackError> {
    unpack_with(image, dest, Budget::default())
}

/// Unpacks a gzip'd tar image into `dest` within `budget`.
pub fn unpack_with(image: &Path, dest: &Path, budget: Budget) -> Result<Unpacked, UnpackError> {
    let file = fs::File::open(image).map_err(io_err(image))?;
    unpack_gz_with(file, dest, budget)
}

/// [`unpack_with`] from a reader of the `.tar.gz` (one the caller can cut
/// short).
pub fn unpack_gz_with(
    gz: impl io::Read,
    dest: &Path,
    budget: Budget,
) -> Result<Unpacked, UnpackError> {
    unpack_tar_with(flate2::read::GzDecoder::new(gz), dest, budget)
}

/// Unpacks an uncompressed tar stream into `dest`: what the fuzzer drives.
pub fn unpack_tar(tar: impl io::Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    unpack_tar_with(tar, dest, Budget::default())
}

/// As `unpack_tar`, within `budget`. On failure nothing is left: `dest` is
/// removed if this call created it, emptied if it was empty (into a
/// non-empty directory, what was added stays: the agent always unpacks
/// into a fresh one).
pub fn unpack_tar_with(
    tar: impl io::Read,
    dest: &Path,
    budget: Budget,
) -> Result<Unpacked, UnpackError> {
    let fresh = !dest.exists();
    let was_empty = !fresh && fs::read_dir(dest).is_ok_and(|mut d| d.next().is_none());
    let result = unpack_into(tar, dest, budget);
    if result.is_err() {
        if fresh {
            let _ = fs::remove_dir_all(dest);
        } else if was_empty {
            if let Ok(entries) = fs::read_dir(dest) {
                for e in entries.flatten() {
                    let p = e.path();
                    match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_dir() => drop(fs::remove_dir_all(&p)),
                        _ => drop(fs::remove_file(&p)),
                    }
                }
            }
        }
    }
    result
}

/// What the tar reader may pull from the stream to find the next entry,
/// beyond the previous entry's unread data: headers, padding, GNU long
/// names and links, pax records (the tar crate reads those whole into
/// memory, so they must be bounded before it does).
pub const META_BYTES: u64 = 1 << 20;

/// The tar stream, readable only up to `until` (shared with the loop that
/// moves it): past it, an error and `tripped`.
struct Metered<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    until: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.get().saturating_sub(self.read.get());
        if left == 0 && !buf.is_empty() {
            self.tripped.set(true);
            return Err(io::Error::other("metadata over budget"));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn unpack_into(tar: impl io::Read, dest: &Path, budget: Budget) -> Result<Unpacked, UnpackError> {
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let (read, until, tripped) = (
        Rc::new(Cell::new(0u64)),
        Rc::new(Cell::new(META_BYTES)),
        Rc::new(Cell::new(false)),
    );
    let mut archive = tar::Archive::new(Metered {
        inner: tar,
        read: read.clone(),
        until: until.clone(),
        tripped: tripped.clone(),
    });
    let mut stats = Unpacked::default();
    let mut entries = archive
        .entries()
        .map_err(|e| UnpackError::Archive(e.to_string()))?;
    // Data of the last entry not read by us: the tar reader skips it.
    let mut unread = 0u64;
    let mut seen = 0u64;
    loop {
        until.set(read.get().saturating_add(unread).saturating_add(META_BYTES));
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(|e| {
            if tripped.get() {
                UnpackError::OverBudget {
                    what: "bytes of metadata before an entry",
                    limit: META_BYTES,
                }
            } else {
                UnpackError::Archive(e.to_string())
            }
        })?;
        until.set(u64::MAX);
        unread = entry.size();
        let is_file = matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        if !is_file {
            // Data of a directory, link or unknown entry is skipped, not
            // written, but is a bomb's all the same.
            stats.bytes = stats.bytes.saturating_add(unread);
            if stats.bytes > budget.max_bytes {
                return Err(UnpackError::OverBudget {
                    what: "bytes",
                    limit: budget.max_bytes,
                });
            }
        }
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Archive(e.to_string()))?
            .into_owned();
        // Every entry counts, kept or skipped (a label, a global pax
        // header, "./"); the root entry once for free.
        seen += 1;
        if seen > budget.max_entries.saturating_add(1) {
            return Err(UnpackError::OverBudget {
                what: "entries",
                limit: budget.max_entries,
            });
        }
        stats.bytes = stats.bytes.saturating_add(budget.entry_bytes);
        if stats.bytes > budget.max_bytes {
            return Err(UnpackError::OverBudget {
                what: "bytes",
                limit: budget.max_bytes,
            });
        }
        let rel = inside(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let over_bytes = UnpackError::OverBudget {
            what: "bytes",
            limit: budget.max_bytes,
        };
        let path = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644);
        let kept = mode & 0o1777;
        if mode & 0o6000 != 0 {
            stats.stripped += 1;
        }
        // Parents made on the way count as entries, and are charged.
        let made = parents(dest, &rel)?;
        if made > 0 {
            seen = seen.saturating_add(made);
            stats.entries += made as usize;
            stats.bytes = stats
                .bytes
                .saturating_add(made.saturating_mul(budget.entry_bytes));
            if seen > budget.max_entries.saturating_add(1) {
                return Err(UnpackError::OverBudget {
                    what: "entries",
                    limit: budget.max_entries,
                });
            }
            if stats.bytes > budget.max_bytes {
                return Err(UnpackError::OverBudget {
                    what: "bytes",
                    limit: budget.max_bytes,
                });
            }
        }
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
                let left = budget.max_bytes.saturating_sub(stats.bytes);
                if entry.header().size().unwrap_or(0) > left {
                    return Err(over_bytes);
                }
                clear(&path)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc_o_nofollow())
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(&path))?;
                // Never more than the budget is written, whatever the header says.
                let wrote =
                    io::copy(&mut (&mut entry).take(left + 1), &mut out).map_err(io_err(&path))?;
                if wrote > left {
                    return Err(over_bytes);
                }
                unread = unread.saturating_sub(wrote);
                stats.bytes += wrote;
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
                if !plain_file(dest, &target_rel) {
                    return Err(refuse(
                        &rel,
                        format!(
                            "hardlink to {}: not a file unpacked before it (through real directories only)",
                            target.display()
                        ),
                    ));
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

    /// Issue 21: `x -> <host dir>` then `h => x/secret` linked a root-only
    /// host file into the image (root ignores protected_hardlinks).
    #[test]
    fn refuses_a_hardlink_through_any_symlink() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret.txt");
        fs::write(&secret, b"host only").unwrap();
        let target = host.path().display().to_string();
        refused(
            &[
                ("x", T::Symlink, &target, b"", 0o777),
                ("h", T::Link, "x/secret.txt", b"", 0o644),
            ],
            "through real directories only",
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
        // A symlink inside the image is not crossed either.
        refused(
            &[
                ("d/", T::Directory, "", b"", 0o755),
                ("d/f", T::Regular, "", b"x", 0o644),
                ("l", T::Symlink, "d", b"", 0o777),
                ("h", T::Link, "l/f", b"", 0o644),
            ],
            "through real directories only",
        );
        // Nor a final symlink.
        refused(
            &[
                ("d/", T::Directory, "", b"", 0o755),
                ("d/f", T::Regular, "", b"x", 0o644),
                ("l", T::Symlink, "d/f", b"", 0o777),
                ("h", T::Link, "l", b"", 0o644),
            ],
            "through real directories only",
        );
    }

    fn budget(bytes: u64, entries: u64) -> Budget {
        Budget {
            max_bytes: bytes,
            max_entries: entries,
            entry_bytes: 0,
        }
    }

    /// Review: one entry with a long name made every missing parent dir
    /// for free; they count as entries and are charged now.
    #[test]
    fn parents_made_for_an_entry_count_and_are_charged() {
        let deep: String = (0..500).map(|i| format!("d{i}/")).collect::<String>() + "f";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let e =
            unpack_tar_with(&tar[..], &dest.path().join("a"), budget(1 << 30, 100)).unwrap_err();
        assert!(
            matches!(
                e,
                UnpackError::OverBudget {
                    what: "entries",
                    ..
                }
            ),
            "{e}"
        );
        let charged = Budget {
            entry_bytes: 4096,
            ..budget(4096 * 100, 10_000)
        };
        let e = unpack_tar_with(&tar[..], &dest.path().join("b"), charged).unwrap_err();
        assert!(
            matches!(e, UnpackError::OverBudget { what: "bytes", .. }),
            "{e}"
        );
        let got = unpack_tar_with(&tar[..], &dest.path().join("c"), budget(1 << 30, 1000)).unwrap();
        assert_eq!(got.entries, 501);
    }

    /// Empty dirs cost nothing in data but an inode and a block each: with
    /// `entry_bytes` they count against the byte budget.
    #[test]
    fn entry_bytes_charge_every_entry() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..100 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("d{i}/"), std::io::empty())
                .unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let free = unpack_tar_with(&tar[..], &dest.path().join("a"), budget(4096 * 50, 1000));
        assert_eq!(free.unwrap().bytes, 0);
        let charged = Budget {
            entry_bytes: 4096,
            ..budget(4096 * 50, 1000)
        };
        let e = unpack_tar_with(&tar[..], &dest.path().join("b"), charged).unwrap_err();
        assert!(
            matches!(e, UnpackError::OverBudget { what: "bytes", .. }),
            "{e}"
        );
        let roomy = Budget {
            entry_bytes: 4096,
            ..budget(4096 * 200, 1000)
        };
        let got = unpack_tar_with(&tar[..], &dest.path().join("c"), roomy).unwrap();
        assert_eq!(got.bytes, 4096 * 100);
    }

    /// An uncompressed tar of `n` files of `size` zero bytes, made lazily.
    fn zeros_tar(n: usize, size: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..n {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("f{i}"), io::repeat(0).take(size))
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn budgets_stop_a_bomb_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        // One file over the budget: refused before a byte is written.
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(1 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        let bomb = io::Cursor::new(h.as_bytes().to_vec()).chain(io::repeat(0).take(1 << 30));
        let err = unpack_tar_with(bomb, &dest, budget(1 << 20, 100)).unwrap_err();
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        assert!(!dest.exists());
        // Many files each under it, over it together.
        let err = unpack_tar_with(&zeros_tar(20, 100 << 10)[..], &dest, budget(1 << 20, 100))
            .unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(!dest.exists());
        // Too many entries; an empty target left empty.
        fs::create_dir(&dest).unwrap();
        let err = unpack_tar_with(&zeros_tar(60, 0)[..], &dest, budget(1 << 20, 50)).unwrap_err();
        assert!(err.to_string().contains("more than 50 entries"), "{err}");
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
        // Within both: unpacked.
        let stats =
            unpack_tar_with(&zeros_tar(10, 100 << 10)[..], &dest, budget(1 << 20, 50)).unwrap();
        assert_eq!((stats.entries, stats.bytes), (10, 10 * (100 << 10)));
    }

    /// Review of issue 21: entries of a type the unpacker skips (volume
    /// labels, global pax headers, sparse files) did not count against
    /// max_entries: millions of them were read at no cost to the budget.
    #[test]
    fn skipped_entries_count_against_max_entries() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..60 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::new(b'V'));
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, format!("v{i}"), io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let err = unpack_tar_with(&tar[..], &dest, budget(1 << 20, 50)).unwrap_err();
        assert!(err.to_string().contains("more than 50 entries"), "{err}");
    }

    /// Counts what the unpacker pulled from the stream.
    struct Counted<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n as u64);
            Ok(n)
        }
    }

    /// Review of issue 21: the tar crate reads a GNU long-name or long-link
    /// entry, and a pax header, whole into memory before the unpacker sees
    /// an entry; a 4 GB one (4 MB gzip'd) went around the byte budget into
    /// the agent's memory. A directory's data (skipped) did not count either.
    #[test]
    fn metadata_entries_and_skipped_data_are_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root");
        let huge: u64 = 4 << 30;
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
            tar::EntryType::Directory,
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_path("meta").unwrap();
            h.set_size(huge);
            h.set_mode(0o755);
            h.set_cksum();
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let stream = io::Cursor::new(h.as_bytes().to_vec()).chain(io::repeat(b'a').take(huge));
            let err = unpack_tar_with(Counted(stream, read.clone()), &dest, budget(1 << 20, 100))
                .unwrap_err();
            assert!(
                read.get() < 8 << 20,
                "{kind:?}: {} bytes read before refusing ({err})",
                read.get()
            );
            assert!(!dest.exists());
        }
    }
}
