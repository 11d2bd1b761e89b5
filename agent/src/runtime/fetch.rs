//! A task's `fetch` list, downloaded into its sandbox while it is STAGING,
//! before every run (Mesos's fetcher). Downloads go through the image
//! cache's downloader (limits, timeout, retries, trust roots), and through
//! its digest store when `cache` and `sha256` are given.
//!
//! Nothing is written through what the task left in its sandbox: each
//! entry is downloaded (and unpacked, with the same safe unpacker as
//! images) into `<task>/fetch.tmp`, root's alone, chowned there without
//! following links, then renamed into the sandbox over whatever stood at
//! its name. Names are one path component (`gleaner_core::fetch`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gleaner_core::fetch::{Archive, FetchSpec};
use gleaner_rootfs::unpack::UnpackError;

use crate::download::DownloadError;
use crate::images::{ImageCache, ImageError};
use crate::layout::TaskDir;

/// What each unpacked entry of a fetched archive costs against the task's
/// fetch cap besides its data: one ext4 block (an empty dir or file, a
/// symlink, is an inode and usually a block).
const FETCH_ENTRY_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Spec(#[from] gleaner_core::spec::SpecError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Cache(#[from] ImageError),
    #[error("extract {uri}: {reason}")]
    Extract { uri: String, reason: String },
    /// The task dir is gone (never made again by a fetch).
    #[error("{path}: the task's dir is gone")]
    Vanished { path: PathBuf },
    /// The task was stopped while fetching.
    #[error("stopped while fetching")]
    Stopped,
    /// The entries together are over the task's cap.
    #[error("{uri}: the task's fetches come to more than {limit_mb} MB in all ({key})")]
    Total {
        uri: String,
        limit_mb: u64,
        key: &'static str,
    },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |err| FetchError::Io {
        path: path.to_owned(),
        err,
    }
}

/// The most all of a task's downloads may come to together, and the key
/// that sets it (named in the error).
#[derive(Debug, Clone, Copy)]
pub struct TotalCap {
    pub bytes: u64,
    pub key: &'static str,
}

impl TotalCap {
    /// The task's `disk_mb` when it has one, else `image_max_mb` (the
    /// most one entry may be).
    pub fn for_task(disk_mb: f64, image_max_mb: u64) -> TotalCap {
        if disk_mb > 0.0 {
            TotalCap {
                bytes: (disk_mb * (1u64 << 20) as f64) as u64,
                key: "resources.disk_mb",
            }
        } else {
            TotalCap {
                bytes: image_max_mb << 20,
                key: "image_max_mb",
            }
        }
    }
}

/// The task a list is fetched for.
#[derive(Clone, Copy)]
pub struct For<'a> {
    pub owner: Owner,
    /// Its tenant: cached files are kept per role (see `images`).
    pub role: &'a str,
    pub cap: TotalCap,
    /// Told when the task is stopped: the download in progress ends.
    pub stop: &'a tokio::sync::Notify,
}

/// Who owns what is fetched: the task's user.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Downloads every entry of `fetch` into the task's sandbox, in order (a
/// later entry replaces an earlier one's extracted file of the same name).
pub async fn fetch_all(
    images: &ImageCache,
    fetch: &[FetchSpec],
    dir: &TaskDir,
    task: For<'_>,
) -> Result<(), FetchError> {
    let owner = task.owner;
    let staging = dir.fetch_staging();
    let sandbox = dir.sandbox();
    {
        let (staging, sandbox) = (staging.clone(), sandbox.clone());
        blocking(move || fresh_dirs(&staging, &sandbox, owner)).await?;
    }
    let result = fetch_each(images, fetch, &staging, &sandbox, task).await;
    let s = staging.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(s)).await;
    result
}

async fn fetch_each(
    images: &ImageCache,
    fetch: &[FetchSpec],
    staging: &Path,
    sandbox: &Path,
    task: For<'_>,
) -> Result<(), FetchError> {
    let For {
        owner,
        role,
        cap,
        stop,
    } = task;
    let mut total: u64 = 0;
    // One entry budget for the whole list, not one per archive: 32
    // archives of a million empty dirs each were 32 million inodes.
    let mut entries_left = images.unpack_budget().max_entries;
    for (i, f) in fetch.iter().enumerate() {
        let name = f.file_name()?;
        let archive = f.archive()?;
        let item = staging.join(i.to_string());
        std::fs::create_dir(&item).map_err(io_err(&item))?;
        let file = item.join(&name);
        let over = || FetchError::Total {
            uri: f.uri.clone(),
            limit_mb: cap.bytes >> 20,
            key: cap.key,
        };
        let left = cap.bytes.saturating_sub(total);
        // A stop drops the download in progress (what it wrote is in
        // `staging`, removed as after any failure); the unpack and rename
        // below are not cut short.
        let got = tokio::select! {
            r = download(images, f, role, &file, left) => r,
            () = stop.notified() => return Err(FetchError::Stopped),
        };
        let bytes = match got {
            Ok(bytes) => bytes,
            // The cap of the whole list, not of one download.
            Err(FetchError::Download(DownloadError::TooLarge { limit, .. })) if limit == left => {
                return Err(over())
            }
            Err(e) => return Err(e),
        };
        total += bytes;
        if total > cap.bytes {
            return Err(over());
        }
        let (uri, sandbox, name2) = (f.uri.clone(), sandbox.to_owned(), name.clone());
        // What is unpacked counts against the cap too: an archive may not
        // unpack past what is left of it (nor past image_unpack_max_mb).
        let room = cap.bytes - total;
        let mut budget = images.unpack_budget();
        let by_cap = room < budget.max_bytes;
        budget.max_bytes = budget.max_bytes.min(room);
        budget.max_entries = entries_left;
        // Every entry costs at least a block on disk, data or not.
        budget.entry_bytes = FETCH_ENTRY_BYTES;
        let executable = f.executable;
        let over_cap = over();
        let unpacked = blocking(move || {
            let mode = if executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(&file))?;
            let unpacked = item.join(".unpacked");
            let (mut bytes, mut entries) = (0, 0);
            if let Some(kind) = archive {
                let got = unpack(kind, &file, &unpacked, budget).map_err(|e| match e {
                    UnpackError::OverBudget { what: "bytes", .. } if by_cap => over_cap,
                    e => FetchError::Extract {
                        uri: uri.clone(),
                        reason: e.to_string(),
                    },
                })?;
                (bytes, entries) = (got.bytes, got.entries as u64);
            }
            chown_tree(&item, owner)?;
            if archive.is_some() {
                for entry in std::fs::read_dir(&unpacked).map_err(io_err(&unpacked))? {
                    let entry = entry.map_err(io_err(&unpacked))?;
                    replace_in(&sandbox, &entry.file_name(), &entry.path())?;
                }
            }
            // Mesos kept the archive next to what it unpacked.
            replace_in(&sandbox, std::ffi::OsStr::new(&name2), &file)?;
            Ok((bytes, entries))
        })
        .await?;
        let (unpacked_bytes, unpacked_entries) = unpacked;
        total += unpacked_bytes;
        entries_left = entries_left.saturating_sub(unpacked_entries);
        tracing::info!(uri = %f.uri, name, extracted = archive.is_some(), "fetched");
    }
    Ok(())
}

/// One entry's bytes into `file` (from the cache when it is kept there),
/// at most `left` of them; returns its size.
async fn download(
    images: &ImageCache,
    f: &FetchSpec,
    role: &str,
    file: &Path,
    left: u64,
) -> Result<u64, FetchError> {
    match f.cached_digest() {
        Some(sha) => {
            match images.copy_file(&f.uri, &sha, role, file, left).await {
                Err(ImageError::Download(e)) => return Err(e.into()),
                r => r?,
            }
            Ok(std::fs::metadata(file).map_err(io_err(file))?.len())
        }
        None => Ok(images
            .downloader()
            .download_max(&f.uri, f.sha256.as_deref(), file, left)
            .await?
            .bytes),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FetchError::Io {
            path: PathBuf::new(),
            err: std::io::Error::other(e),
        })?
}

/// An empty root-only staging dir; the sandbox, the task's. Both in the
/// task dir, which is never made here: it exists from the task's
/// acceptance on, so one that is gone was removed (the task abandoned or
/// swept) and the run fails rather than bring it back.
fn fresh_dirs(staging: &Path, sandbox: &Path, owner: Owner) -> Result<(), FetchError> {
    let root = staging.parent().unwrap_or(staging);
    if !root.is_dir() {
        return Err(FetchError::Vanished {
            path: root.to_owned(),
        });
    }
    if std::fs::symlink_metadata(staging).is_ok() {
        std::fs::remove_dir_all(staging).map_err(io_err(staging))?;
    }
    std::fs::create_dir(staging).map_err(io_err(staging))?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(staging))?;
    crate::fsutil::create_dir_in(sandbox).map_err(io_err(sandbox))?;
    std::os::unix::fs::chown(sandbox, Some(owner.uid), Some(owner.gid)).map_err(io_err(sandbox))
}

fn unpack(
    kind: Archive,
    file: &Path,
    dest: &Path,
    budget: gleaner_rootfs::Budget,
) -> Result<gleaner_rootfs::unpack::Unpacked, UnpackError> {
    let stats = match kind {
        Archive::TarGz => gleaner_rootfs::unpack_with(file, dest, budget),
        Archive::Tar => {
            let f = std::fs::File::open(file).map_err(|err| UnpackError::Io {
                path: file.to_owned(),
                err,
            })?;
            gleaner_rootfs::unpack_tar_with(f, dest, budget)
        }
    }?;
    if stats.stripped > 0 {
        tracing::warn!(file = %file.display(), files = stats.stripped, "setuid/setgid bits stripped");
    }
    Ok(stats)
}

/// `lchown` of `root` and everything below it; links are changed, never
/// followed. Only for the root-only staging dir (nothing races it).
fn chown_tree(root: &Path, owner: Owner) -> Result<(), FetchError> {
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid))
            .map_err(io_err(&path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err(&path))? {
                stack.push(entry.map_err(io_err(&path))?.path());
            }
        }
    }
    Ok(())
}

/// Renames `from` to `dir/name`, first removing what stands there (a
/// file, a link, a whole directory: never followed). `dir` is the sandbox,
/// whose own path only root can change.
fn replace_in(dir: &Path, name: &std::ffi::OsStr, from: &Path) -> Result<(), FetchError> {
    let to = dir.join(name);
    match std::fs::symlink_metadata(&to) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&to).map_err(io_err(&to))?,
        Ok(_) => std::fs::remove_file(&to).map_err(io_err(&to))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&to)(e)),
    }
    std::fs::rename(from, &to).map_err(io_err(&to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_in_replaces_a_link_and_a_directory_without_following() {
        let d = tempfile::tempdir().unwrap();
        let (sandbox, outside) = (d.path().join("sandbox"), d.path().join("outside"));
        std::fs::create_dir_all(sandbox.join("dir/sub")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"host").unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), sandbox.join("f")).unwrap();
        std::os::unix::fs::symlink(&outside, sandbox.join("l")).unwrap();
        for name in ["f", "l", "dir"] {
            let src = d.path().join(format!("new-{name}"));
            std::fs::write(&src, name).unwrap();
            replace_in(&sandbox, std::ffi::OsStr::new(name), &src).unwrap();
            let m = std::fs::symlink_metadata(sandbox.join(name)).unwrap();
            assert!(m.is_file(), "{name}");
            assert_eq!(std::fs::read(sandbox.join(name)).unwrap(), name.as_bytes());
        }
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"host");
    }

    #[test]
    fn chown_tree_changes_links_not_their_targets() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a")).unwrap();
        std::fs::write(tree.join("a/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&target, tree.join("a/l")).unwrap();
        chown_tree(
            &tree,
            Owner {
                uid: 65534,
                gid: 65534,
            },
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        for p in ["", "a", "a/f", "a/l"] {
            let m = std::fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
    }
}
