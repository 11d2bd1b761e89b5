//! Rootfs images named by URI: fetched (file, http, https), verified
//! against their sha256, unpacked once into a content-addressed cache and
//! shared read-only by every task that names them; evicted least recently
//! used past a size. Files of a task's `fetch` with `cache` and a digest
//! are kept here too, as they were downloaded, in the same LRU.
//!
//! ```text
//! <data-dir>/images/<sha256>/rootfs/     the unpacked image (never written after the rename)
//! <data-dir>/images/<sha256>/image.json  uri, size, the (role, URI) pairs that
//!                                        fetched it; its mtime is the last use
//! <data-dir>/images/file-<sha256>-<scope>/file   a fetched file (copied into each
//!                                        sandbox); scope: its role and URI
//! <data-dir>/images/.tmp/                downloads and unpacks in progress
//! ```
//!
//! **An image directory exists only complete**: it is built under `.tmp`
//! and renamed into place, so a crash leaves at most debris in `.tmp`,
//! which start-up removes.
//!
//! **A cached image is used only by a (role, URI) that fetched it**
//! ([`meta`]): any other proves first that its URI serves the digest.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::download::{DownloadError, DownloadLimits, Downloader};
use crate::workdir::WorkDir;

mod file;
pub mod meta;
use meta::ImageMeta;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("unpack {uri}: {reason}")]
    Unpack { uri: String, reason: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Record(#[from] crate::fsutil::FsError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |err| ImageError::Io {
        path: path.to_owned(),
        err,
    }
}

/// Why an unpack failed; a budget overrun names the config key that sets
/// it, so the operator knows what to raise if the image is genuine.
fn unpack_reason(e: &gleaner_rootfs::UnpackError, budget: gleaner_rootfs::Budget) -> String {
    use gleaner_rootfs::UnpackError::OverBudget;
    match e {
        OverBudget { what: "bytes", .. } => format!(
            "{e}: the cap is image_unpack_max_mb = {}",
            budget.max_bytes >> 20
        ),
        OverBudget {
            what: "entries", ..
        } => format!(
            "{e}: the cap is image_unpack_max_entries = {}",
            budget.max_entries
        ),
        _ => e.to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: u64,
    /// Per attempt, connection to last byte.
    pub timeout: Duration,
    /// Attempts after the first, for transient failures.
    pub retries: u32,
    pub cache_bytes: u64,
    /// What one image (or one fetched archive) may unpack to.
    pub unpack: gleaner_rootfs::Budget,
}

/// A short name of (role, URI), for entry names and lock keys.
fn scope(role: &str, uri: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(role.as_bytes());
    h.update([0]);
    h.update(uri.as_bytes());
    crate::download::hex(&h.finalize()[..8])
}

pub struct ImageCache {
    dir: PathBuf,
    /// `dir` resolved, as recorded rootfs paths are.
    real_dir: PathBuf,
    limits: FetchLimits,
    downloader: Downloader,
    /// One lock per entry: concurrent tasks naming it wait for one fetch;
    /// one per (image, role, URI) proof (`proof-...`): one proof per pair.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    seq: AtomicU64,
    pub fetches: AtomicU64,
    pub evictions: AtomicU64,
    /// Cached images a new (role, URI) proved (downloaded and hashed).
    pub proofs: AtomicU64,
}

impl ImageCache {
    /// Opens the cache under `dir`, removing what an interrupted fetch left.
    pub fn open(
        dir: PathBuf,
        limits: FetchLimits,
        ca_file: Option<PathBuf>,
        egress: gleaner_core::egress::Egress,
    ) -> Result<Self, ImageError> {
        let tmp = dir.join(".tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let downloader = Downloader::new(
            DownloadLimits {
                max_bytes: limits.max_bytes,
                timeout: limits.timeout,
                retries: limits.retries,
            },
            ca_file,
            egress,
        )?;
        let real_dir = std::fs::canonicalize(&dir).map_err(io_err(&dir))?;
        Ok(ImageCache {
            dir,
            real_dir,
            limits,
            downloader,
            locks: Mutex::default(),
            seq: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            proofs: AtomicU64::new(0),
        })
    }

    /// The downloader images use, for other downloads (a task's `fetch`).
    pub fn downloader(&self) -> &Downloader {
        &self.downloader
    }

    /// What one archive may unpack to.
    pub fn unpack_budget(&self) -> gleaner_rootfs::Budget {
        self.limits.unpack
    }

    /// Where the image with this digest is (or will be) unpacked.
    pub fn rootfs(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256).join("rootfs")
    }

    /// Whether `path` lies in the cache (as given or resolved): no
    /// syscall, for every launch of a task with a rootfs path.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.real_dir) || path.starts_with(&self.dir)
    }

    pub fn is_cached(&self, sha256: &str) -> bool {
        self.rootfs(sha256).is_dir()
    }

    /// Whether a task of `role` naming the image by `uri` can use it with
    /// no download: cached, and that pair fetched it before.
    pub fn is_ready(&self, sha256: &str, role: &str, uri: &str) -> bool {
        self.is_cached(sha256)
            && meta::read(&self.dir.join(sha256)).is_some_and(|m| m.proven(role, uri))
    }

    fn lock_for(&self, entry: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(entry.to_owned())
            .or_default()
            .clone()
    }

    /// Holds the entry's lock until dropped.
    async fn hold(&self, entry: &str) -> Held<'_> {
        let guard = self.lock_for(entry).lock_owned().await;
        Held {
            cache: self,
            entry: entry.to_owned(),
            _guard: guard,
        }
    }

    fn try_hold(&self, entry: &str) -> Option<Held<'_>> {
        // Held by another: its drop forgets the lock.
        let guard = self.lock_for(entry).try_lock_owned().ok()?;
        Some(Held {
            cache: self,
            entry: entry.to_owned(),
            _guard: guard,
        })
    }

    /// Drops the entry's lock from the map when no one but the map and
    /// the caller holds it (one lock per digest ever seen would grow
    /// without bound). Holders clone it under the map's lock only.
    fn forget_unshared_lock(&self, entry: &str) {
        let mut locks = self.locks.lock().unwrap();
        if locks.get(entry).is_some_and(|l| Arc::strong_count(l) <= 2) {
            locks.remove(entry);
        }
    }

    fn work_dir(&self, entry: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(".tmp")
            .join(format!("{entry}.{}.{n}", std::process::id()))
    }

    /// Moves a complete `work` dir into place as `home` (else its
    /// [`WorkDir`] removes it, off the runtime).
    fn place(
        &self,
        built: Result<(), ImageError>,
        work: &Path,
        home: &Path,
    ) -> Result<(), ImageError> {
        built?;
        // A copy without its content (damaged by hand) may stand there.
        if home.exists() {
            std::fs::remove_dir_all(home).map_err(io_err(home))?;
        }
        std::fs::rename(work, home).map_err(io_err(home))?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The unpacked image for a task of `role` naming it by `uri`, fetched
    /// first unless cached. Marks it used. A cached image is handed out only
    /// to a (role, URI) pair that fetched it ([`meta`]); any other first
    /// downloads its URI and the bytes must hash to the digest (a proof:
    /// the unpacked image is reused). A failed proof leaves the entry as
    /// it was.
    pub async fn ensure(&self, uri: &str, sha256: &str, role: &str) -> Result<PathBuf, ImageError> {
        let home = self.dir.join(sha256);
        {
            let _one_fetch = self.hold(sha256).await;
            if !self.is_cached(sha256) {
                return self.fetch_image(uri, sha256, role, &home).await;
            }
            if self.use_if_proven(&home, role, uri) {
                return Ok(self.rootfs(sha256));
            }
        }
        // The proof runs without the image's lock: a slow or hostile URI
        // must not hold back the tenants already proven, nor eviction of
        // other images. The task names the digest, so while it waits the
        // image is in use and stays (`Agent::images_in_use`). One proof per
        // pair at a time: the others of the pair wait and find it recorded.
        let _one_proof = self
            .hold(&format!("proof-{sha256}-{}", scope(role, uri)))
            .await;
        if self.is_cached(sha256) && self.use_if_proven(&home, role, uri) {
            return Ok(self.rootfs(sha256));
        }
        let proof = self.downloader.verify(uri, sha256).await?;
        let _one_fetch = self.hold(sha256).await;
        if !self.is_cached(sha256) {
            // Removed meanwhile (by hand: an image in use is not evicted).
            return self.fetch_image(uri, sha256, role, &home).await;
        }
        let (sha, role2, uri2) = (sha256.to_owned(), role.to_owned(), uri.to_owned());
        tokio::task::spawn_blocking(move || {
            record_fetcher(&home, &sha, &role2, &uri2, proof.bytes)
        })
        .await
        .map_err(|e| io_err(&self.dir)(std::io::Error::other(e)))??;
        self.proofs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            uri,
            sha256,
            role,
            "cached image proven by a new role or URI"
        );
        Ok(self.rootfs(sha256))
    }

    /// Fetches, unpacks and places the image, recording its first pair.
    /// Under the image's lock.
    async fn fetch_image(
        &self,
        uri: &str,
        sha256: &str,
        role: &str,
        home: &Path,
    ) -> Result<PathBuf, ImageError> {
        let work = WorkDir::new(self.work_dir(sha256));
        let built = self.build(uri, sha256, role, &work).await;
        self.place(built, work.path(), home)?;
        tracing::info!(uri, sha256, role, "image cached");
        Ok(self.rootfs(sha256))
    }

    /// Marks the image used if `role` fetched it from `uri` before.
    /// Under the image's lock.
    fn use_if_proven(&self, home: &Path, role: &str, uri: &str) -> bool {
        let proven = meta::read(home).is_some_and(|m| m.proven(role, uri));
        if proven {
            touch(&home.join("image.json"));
        }
        proven
    }

    /// Fetch, verify, unpack into `work` (the unpack stops if this
    /// future is dropped: see `workdir`).
    async fn build(
        &self,
        uri: &str,
        sha256: &str,
        role: &str,
        dir: &WorkDir,
    ) -> Result<(), ImageError> {
        let work = dir.path();
        std::fs::create_dir_all(work).map_err(io_err(work))?;
        let archive = work.join("image.tar.gz");
        let archive_bytes = self
            .downloader
            .download(uri, Some(sha256), &archive)
            .await?
            .bytes;
        let rootfs = work.join("rootfs");
        let (uri_owned, archive2, rootfs2) = (uri.to_owned(), archive.clone(), rootfs.clone());
        let budget = self.limits.unpack;
        let unpacking = dir.unpacking();
        let (unpacked, bytes) = tokio::task::spawn_blocking(move || {
            unpacking.run(|u| {
                let file = std::fs::File::open(&archive2)
                    .map_err(|e| format!("{}: {e}", archive2.display()))?;
                let stats = gleaner_rootfs::unpack_gz_with(u.reader(file), &rootfs2, budget)
                    .map_err(|e| unpack_reason(&e, budget))?;
                crate::supervisor::ensure_mount_points(&rootfs2, true)
                    .map_err(|e| e.to_string())?;
                Ok((stats, du(&rootfs2)))
            })
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|reason| ImageError::Unpack {
            uri: uri_owned,
            reason,
        })?;
        if unpacked.stripped > 0 {
            tracing::warn!(
                uri,
                files = unpacked.stripped,
                "setuid/setgid bits stripped"
            );
        }
        std::fs::remove_file(&archive).map_err(io_err(&archive))?;
        let mut m = ImageMeta {
            uri: uri.to_owned(),
            sha256: sha256.to_owned(),
            bytes,
            archive_bytes,
            fetched_by: Vec::new(),
        };
        m.record(role, uri);
        write_meta(work, &m)
    }

    /// Removes least recently used images not in `in_use` until the cache
    /// fits its size. Returns the digests removed.
    pub fn evict(&self, in_use: &HashSet<String>) -> Vec<String> {
        let mut images: Vec<(SystemTime, u64, String)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let meta_path = e.path().join("image.json");
            let bytes = meta::read(&e.path()).map_or(0, |m| m.bytes);
            let used = std::fs::metadata(&meta_path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            images.push((used, bytes, name));
        }
        let mut total: u64 = images.iter().map(|i| i.1).sum();
        images.sort();
        let mut removed = Vec::new();
        for (_, bytes, sha) in images {
            if total <= self.limits.cache_bytes {
                break;
            }
            if in_use.contains(&sha) {
                continue;
            }
            // An image being fetched or handed out right now is skipped.
            let Some(_held) = self.try_hold(&sha) else {
                continue;
            };
            let home = self.dir.join(&sha);
            let doomed = self.dir.join(".tmp").join(format!(
                "evict.{sha}.{}",
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
            if std::fs::rename(&home, &doomed).is_ok() {
                let _ = std::fs::remove_dir_all(&doomed);
                total = total.saturating_sub(bytes);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sha256 = %sha, bytes, "image evicted");
                removed.push(sha);
            }
        }
        removed
    }
}

/// An entry's lock, held; forgotten from the map on drop if unshared.
struct Held<'a> {
    cache: &'a ImageCache,
    entry: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.cache.forget_unshared_lock(&self.entry);
    }
}

/// Adds the pair to the image's record (replaced whole: a reader never
/// sees half of it; its new mtime marks the use). A record that cannot
/// be read is made again from what is known. Under the image's lock;
/// off the runtime (a remade record measures the image).
fn record_fetcher(
    home: &Path,
    sha256: &str,
    role: &str,
    uri: &str,
    archive_bytes: u64,
) -> Result<(), ImageError> {
    let mut m = meta::read(home).unwrap_or_else(|| ImageMeta {
        uri: uri.to_owned(),
        sha256: sha256.to_owned(),
        bytes: du(&home.join("rootfs")),
        archive_bytes,
        fetched_by: Vec::new(),
    });
    m.record(role, uri);
    let path = home.join("image.json");
    let json = serde_json::to_vec_pretty(&m).expect("image meta serialises");
    Ok(crate::fsutil::replace_atomic(&path, &json)?)
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn write_meta(work: &Path, meta: &ImageMeta) -> Result<(), ImageError> {
    let json = serde_json::to_vec_pretty(meta).expect("image meta serialises");
    let path = work.join("image.json");
    std::fs::write(&path, json).map_err(io_err(&path))
}

pub use crate::du::du;

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry's lock is forgotten once its last holder lets go, and
    /// kept while another waits for it.
    #[tokio::test]
    async fn entry_locks_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FetchLimits {
            max_bytes: 1 << 20,
            timeout: std::time::Duration::from_secs(1),
            retries: 0,
            cache_bytes: 1 << 20,
            unpack: gleaner_rootfs::Budget::default(),
        };
        let cache =
            ImageCache::open(dir.path().join("images"), limits, None, Default::default()).unwrap();
        let count = || cache.locks.lock().unwrap().len();
        let first = cache.hold("a").await;
        let waiter = cache.hold("a");
        tokio::pin!(waiter);
        assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        drop(first);
        assert_eq!(count(), 1, "dropped while another waits");
        let second = waiter.await;
        assert!(cache.try_hold("a").is_none());
        drop(second);
        assert_eq!(count(), 0);
        for i in 0..100 {
            drop(cache.hold(&format!("e{i}")).await);
        }
        drop(cache.try_hold("b"));
        assert_eq!(count(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }
}
