//! Rootfs images named by URI: fetched (file, http, https), verified
//! against their sha256, unpacked once into a content-addressed cache and
//! shared read-only by every task that names them; evicted least recently
//! used past a size.
//!
//! ```text
//! <data-dir>/images/<sha256>/rootfs/     the unpacked image (never written after the rename)
//! <data-dir>/images/<sha256>/image.json  uri, size; its mtime is the last use
//! <data-dir>/images/.tmp/                downloads and unpacks in progress
//! ```
//!
//! **An image directory exists only complete**: it is built under `.tmp`
//! and renamed into place, so a crash leaves at most debris in `.tmp`,
//! which start-up removes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("fetch {uri}: {reason}")]
    Fetch {
        uri: String,
        reason: String,
        /// Worth another attempt (network trouble, 5xx), as opposed to a
        /// definite answer (404, a missing file).
        transient: bool,
    },
    #[error("{uri}: larger than the {limit_mb} MB limit (image_max_mb)")]
    TooLarge { uri: String, limit_mb: u64 },
    #[error("{uri}: sha256 mismatch: expected {expected}, got {got}")]
    Checksum {
        uri: String,
        expected: String,
        got: String,
    },
    #[error("unpack {uri}: {reason}")]
    Unpack { uri: String, reason: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
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
    /// What one image may unpack to.
    pub unpack: gleaner_rootfs::Budget,
}

/// The HTTPS client, made at the first https:// fetch (see `tls`), with
/// the description of its trust roots for error messages.
type HttpsClient = Result<(reqwest::Client, String), String>;

#[derive(Debug, Serialize, Deserialize)]
struct ImageMeta {
    uri: String,
    sha256: String,
    /// Unpacked size, what the cache limit counts.
    bytes: u64,
    archive_bytes: u64,
}

pub struct ImageCache {
    dir: PathBuf,
    limits: FetchLimits,
    /// http:// only: no trust roots are loaded for it.
    client: reqwest::Client,
    https: std::sync::OnceLock<HttpsClient>,
    ca_file: Option<PathBuf>,
    /// One lock per image: concurrent tasks naming it wait for one fetch.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    seq: AtomicU64,
    pub fetches: AtomicU64,
    pub evictions: AtomicU64,
}

impl ImageCache {
    /// Opens the cache under `dir`, removing what an interrupted fetch left.
    pub fn open(
        dir: PathBuf,
        limits: FetchLimits,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, ImageError> {
        let tmp = dir.join(".tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        crate::client::install_tls_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(limits.timeout.min(Duration::from_secs(30)))
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| ImageError::Fetch {
                uri: String::new(),
                reason: format!("http client: {e}"),
                transient: false,
            })?;
        Ok(ImageCache {
            dir,
            limits,
            client,
            https: std::sync::OnceLock::new(),
            ca_file,
            locks: Mutex::default(),
            seq: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// Where the image with this digest is (or will be) unpacked.
    pub fn rootfs(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256).join("rootfs")
    }

    pub fn is_cached(&self, sha256: &str) -> bool {
        self.rootfs(sha256).is_dir()
    }

    fn lock_for(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(sha256.to_owned())
            .or_default()
            .clone()
    }

    /// The unpacked image, fetched first unless cached. Marks it used.
    pub async fn ensure(&self, uri: &str, sha256: &str) -> Result<PathBuf, ImageError> {
        let lock = self.lock_for(sha256);
        let _one_fetch = lock.lock().await;
        let home = self.dir.join(sha256);
        if self.is_cached(sha256) {
            touch(&home.join("image.json"));
            return Ok(self.rootfs(sha256));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let work = self
            .dir
            .join(".tmp")
            .join(format!("{sha256}.{}.{n}", std::process::id()));
        let built = self.build(uri, sha256, &work).await;
        let placed = built.and_then(|()| {
            // A copy without its rootfs (damaged by hand) may stand there.
            if home.exists() {
                std::fs::remove_dir_all(&home).map_err(io_err(&home))?;
            }
            std::fs::rename(&work, &home).map_err(io_err(&home))
        });
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        placed?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(uri, sha256, "image cached");
        Ok(self.rootfs(sha256))
    }

    /// Fetch, verify, unpack into `work`.
    async fn build(&self, uri: &str, sha256: &str, work: &Path) -> Result<(), ImageError> {
        std::fs::create_dir_all(work).map_err(io_err(work))?;
        let archive = work.join("image.tar.gz");
        let archive_bytes = self.fetch(uri, sha256, &archive).await?;
        let rootfs = work.join("rootfs");
        let (uri_owned, archive2, rootfs2) = (uri.to_owned(), archive.clone(), rootfs.clone());
        let budget = self.limits.unpack;
        let (unpacked, bytes) = tokio::task::spawn_blocking(move || {
            let stats = gleaner_rootfs::unpack_with(&archive2, &rootfs2, budget).map_err(|e| {
                ImageError::Unpack {
                    uri: uri_owned.clone(),
                    reason: unpack_reason(&e, budget),
                }
            })?;
            crate::supervisor::ensure_mount_points(&rootfs2, true).map_err(|e| {
                ImageError::Unpack {
                    uri: uri_owned,
                    reason: e.to_string(),
                }
            })?;
            Ok::<_, ImageError>((stats, du(&rootfs2)))
        })
        .await
        .map_err(|e| ImageError::Unpack {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })??;
        if unpacked.stripped > 0 {
            tracing::warn!(
                uri,
                files = unpacked.stripped,
                "setuid/setgid bits stripped"
            );
        }
        std::fs::remove_file(&archive).map_err(io_err(&archive))?;
        let meta = ImageMeta {
            uri: uri.to_owned(),
            sha256: sha256.to_owned(),
            bytes,
            archive_bytes,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("image meta serialises");
        let path = work.join("image.json");
        std::fs::write(&path, json).map_err(io_err(&path))
    }

    /// Downloads with retries; returns the archive size.
    async fn fetch(&self, uri: &str, sha256: &str, dest: &Path) -> Result<u64, ImageError> {
        let mut attempt = 0;
        loop {
            let result = tokio::time::timeout(self.limits.timeout, self.fetch_once(uri, dest))
                .await
                .unwrap_or_else(|_| {
                    Err(ImageError::Fetch {
                        uri: uri.to_owned(),
                        reason: format!("timed out after {:?}", self.limits.timeout),
                        transient: true,
                    })
                });
            match result {
                Ok((got, bytes)) if got == sha256 => return Ok(bytes),
                Ok((got, _)) => {
                    return Err(ImageError::Checksum {
                        uri: uri.to_owned(),
                        expected: sha256.to_owned(),
                        got,
                    })
                }
                Err(ImageError::Fetch {
                    transient: true,
                    reason,
                    ..
                }) if attempt < self.limits.retries => {
                    attempt += 1;
                    let pause = Duration::from_millis(250 << attempt.min(5));
                    tracing::warn!(
                        uri,
                        attempt,
                        "fetch failed ({reason}); retrying in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: streams into `dest`, hashing; returns (sha256, bytes).
    async fn fetch_once(&self, uri: &str, dest: &Path) -> Result<(String, u64), ImageError> {
        let fail = |reason: String, transient: bool| ImageError::Fetch {
            uri: uri.to_owned(),
            reason,
            transient,
        };
        let mut sink = Sink {
            out: tokio::fs::File::create(dest).await.map_err(io_err(dest))?,
            dest,
            hash: Sha256::new(),
            total: 0,
            limit: self.limits.max_bytes,
            uri,
        };
        if let Some(path) = uri.strip_prefix("file://") {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| fail(format!("{path}: {e}"), false))?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| fail(format!("{path}: {e}"), true))?;
                if n == 0 {
                    break;
                }
                sink.put(&buf[..n]).await?;
            }
        } else {
            let (client, roots) = if uri.starts_with("https://") {
                match self.https_client() {
                    Ok((c, roots)) => (c, Some(roots)),
                    Err(e) => return Err(fail(e.clone(), false)),
                }
            } else {
                (&self.client, None)
            };
            let mut resp = client.get(uri).send().await.map_err(|e| {
                let chain = error_chain(&e);
                match roots {
                    // Not worth a retry: the same roots will not trust it.
                    Some(roots)
                        if chain.contains("certificate") || chain.contains("Certificate") =>
                    {
                        fail(format!("{chain} ({roots})"), false)
                    }
                    _ => fail(chain, true),
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}"), status.is_server_error()));
            }
            if resp.content_length().is_some_and(|n| n > sink.limit) {
                return Err(sink.too_large());
            }
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| fail(error_chain(&e), true))?
            {
                sink.put(&chunk).await?;
            }
        }
        sink.out.flush().await.map_err(io_err(dest))?;
        Ok((hex(&sink.hash.finalize()), sink.total))
    }

    /// The HTTPS client: trust roots are looked for on the first use only.
    fn https_client(&self) -> Result<(&reqwest::Client, &String), &String> {
        let made = self.https.get_or_init(|| {
            let (certs, source) =
                crate::tls::host_roots(self.ca_file.as_deref()).map_err(|e| e.to_string())?;
            let client = reqwest::Client::builder()
                .connect_timeout(self.limits.timeout.min(Duration::from_secs(30)))
                .tls_certs_only(certs)
                .build()
                .map_err(|e| format!("https client: {}", error_chain(&e)))?;
            Ok((client, source.to_string()))
        });
        match made {
            Ok((c, roots)) => Ok((c, roots)),
            Err(e) => Err(e),
        }
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
            let bytes = std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ImageMeta>(&b).ok())
                .map_or(0, |m| m.bytes);
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
            let lock = self.lock_for(&sha);
            let Ok(_held) = lock.try_lock() else {
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

/// Where a download goes: a file, a running hash, and the size limit.
struct Sink<'a> {
    out: tokio::fs::File,
    dest: &'a Path,
    hash: Sha256,
    total: u64,
    limit: u64,
    uri: &'a str,
}

impl Sink<'_> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.total += bytes.len() as u64;
        if self.total > self.limit {
            return Err(self.too_large());
        }
        self.hash.update(bytes);
        self.out.write_all(bytes).await.map_err(io_err(self.dest))
    }

    fn too_large(&self) -> ImageError {
        ImageError::TooLarge {
            uri: self.uri.to_owned(),
            limit_mb: self.limit >> 20,
        }
    }
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// reqwest's errors say little at the top level ("error sending request");
/// the cause is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Disk space used under `root`, like `du`: allocated blocks, hard links
/// counted once, symlinks not followed. `root` is the caller's; below it
/// every directory is opened from its parent's descriptor with
/// `O_NOFOLLOW` (a task may swap one for a link between two steps: the
/// walk then skips it, never follows it), and only `fstatat` touches
/// entries.
pub fn du(root: &Path) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::rc::Rc;
    let Ok(top) = std::fs::File::open(root) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    // A directory to list: opened, or a name in its (open) parent. Children
    // are opened when popped, so the open descriptors stay about the depth.
    let mut stack: Vec<(Rc<OwnedFd>, Option<std::ffi::CString>)> =
        vec![(Rc::new(top.into()), None)];
    while let Some((parent, name)) = stack.pop() {
        let dir = match name {
            None => parent,
            Some(name) => {
                // SAFETY: a valid descriptor and NUL-terminated name.
                let fd = unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    continue;
                }
                // SAFETY: a fresh descriptor the kernel just returned.
                Rc::new(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        // fdopendir owns (and closedir closes) its descriptor: a copy.
        // SAFETY: fcntl on an open descriptor.
        let copy = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            continue;
        }
        // SAFETY: `copy` is ours; on failure it is still ours to close.
        let stream = unsafe { libc::fdopendir(copy) };
        if stream.is_null() {
            // SAFETY: as above.
            unsafe { libc::close(copy) };
            continue;
        }
        loop {
            // SAFETY: `stream` is open until closedir below.
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                break;
            }
            // SAFETY: readdir returns a NUL-terminated name valid until the
            // next call; copied at once.
            let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) }.to_owned();
            if name.as_bytes() == b"." || name.as_bytes() == b".." {
                continue;
            }
            // SAFETY: an all-zero stat is a valid out-parameter.
            let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
            // SAFETY: valid descriptor, name and out-parameter.
            let rc = unsafe {
                libc::fstatat64(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                continue;
            }
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if st.st_nlink > 1 && !is_dir && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            total += st.st_blocks as u64 * 512;
            if is_dir {
                stack.push((dir.clone(), Some(name)));
            }
        }
        // SAFETY: closes the stream and its copied descriptor.
        unsafe { libc::closedir(stream) };
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(dir.path().join("d/a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("l")).unwrap();
        let n = du(dir.path());
        assert!((100_000..200_000).contains(&n), "{n}");
    }

    /// Review: the walk re-resolved each directory by path, so a task that
    /// swapped a directory of its sandbox for a link between the `lstat`
    /// and the `read_dir` sent the root agent walking the link's target
    /// (the whole host from `/`) every sweep.
    #[test]
    fn du_does_not_follow_a_directory_swapped_for_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("big"), vec![1u8; 8 << 20]).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("link")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (stop, d, real, link) = (
                stop.clone(),
                root.join("d"),
                dir.path().join("d.real"),
                dir.path().join("link"),
            );
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::rename(&d, &real);
                    let _ = std::fs::rename(&link, &d);
                    let _ = std::fs::rename(&d, &link);
                    let _ = std::fs::rename(&real, &d);
                }
            })
        };
        let started = std::time::Instant::now();
        let mut worst = 0;
        while started.elapsed() < std::time::Duration::from_secs(3) {
            worst = worst.max(du(&root));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(
            worst < 1 << 20,
            "du counted the link's target: {worst} bytes"
        );
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
