//! Downloads by URI (file://, http://, https://) into a file: streamed,
//! hashed on the way, size-limited, timed out per attempt, retried on
//! transient errors. Shared by rootfs images (`images/`) and a task's
//! `fetch` list (`runtime/fetch.rs`). Where http(s) downloads may connect
//! is `gleaner_core::egress`, checked on the first URI, on every redirect
//! and on every resolved address (`egress_guard`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gleaner_core::egress::Egress;

use crate::egress_guard::{self, GuardedResolver};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("fetch {uri}: {reason}")]
    Fetch {
        uri: String,
        reason: String,
        /// Worth another attempt (network trouble, 5xx), as opposed to a
        /// definite answer (404, a missing file).
        transient: bool,
    },
    /// Over `limit` bytes (the image_max_mb limit, or a smaller one the
    /// caller gave).
    #[error("{uri}: larger than {limit} bytes (image_max_mb is {max_mb})")]
    TooLarge {
        uri: String,
        limit: u64,
        max_mb: u64,
    },
    #[error("{uri}: sha256 mismatch: expected {expected}, got {got}")]
    Checksum {
        uri: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |err| DownloadError::Io {
        path: path.to_owned(),
        err,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    pub max_bytes: u64,
    /// Per attempt, connection to last byte.
    pub timeout: Duration,
    /// Attempts after the first, for transient failures.
    pub retries: u32,
}

/// The HTTPS client, made at the first https:// fetch (see `tls`), with
/// the description of its trust roots for error messages.
type HttpsClient = Result<(reqwest::Client, String), String>;

/// What a finished download was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Lower-case hex.
    pub sha256: String,
    pub bytes: u64,
}

pub struct Downloader {
    limits: DownloadLimits,
    /// http:// only: no trust roots are loaded for it.
    client: reqwest::Client,
    https: std::sync::OnceLock<HttpsClient>,
    ca_file: Option<PathBuf>,
    egress: Arc<Egress>,
}

/// A client whose every connection and redirect goes through the rule;
/// no proxy from the environment (a proxy would resolve names itself).
fn guarded_builder(limits: &DownloadLimits, egress: &Arc<Egress>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(limits.timeout.min(Duration::from_secs(30)))
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver(egress.clone())))
        .redirect(egress_guard::redirect_policy(egress.clone()))
}

impl Downloader {
    pub fn new(
        limits: DownloadLimits,
        ca_file: Option<PathBuf>,
        egress: Egress,
    ) -> Result<Self, DownloadError> {
        crate::client::install_tls_provider();
        let egress = Arc::new(egress);
        let client = guarded_builder(&limits, &egress)
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| DownloadError::Fetch {
                uri: String::new(),
                reason: format!("http client: {e}"),
                transient: false,
            })?;
        Ok(Downloader {
            limits,
            client,
            https: std::sync::OnceLock::new(),
            ca_file,
            egress,
        })
    }

    /// Downloads `uri` into `dest` (created or truncated) with retries; with
    /// `sha256`, the content must match it (any case).
    pub async fn download(
        &self,
        uri: &str,
        sha256: Option<&str>,
        dest: &Path,
    ) -> Result<Downloaded, DownloadError> {
        self.download_max(uri, sha256, dest, self.limits.max_bytes)
            .await
    }

    /// [`Self::download`] with at most `max_bytes` (and never more than
    /// the limit of every download).
    pub async fn download_max(
        &self,
        uri: &str,
        sha256: Option<&str>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<Downloaded, DownloadError> {
        self.fetch(uri, sha256, Some(dest), max_bytes).await
    }

    /// Downloads `uri` and checks that it hashes to `sha256`, keeping
    /// nothing (the proof that a URI serves a cached image: see `images`).
    /// Same limits, retries and address rule as a download.
    pub async fn verify(&self, uri: &str, sha256: &str) -> Result<Downloaded, DownloadError> {
        self.fetch(uri, Some(sha256), None, self.limits.max_bytes)
            .await
    }

    async fn fetch(
        &self,
        uri: &str,
        sha256: Option<&str>,
        dest: Option<&Path>,
        max_bytes: u64,
    ) -> Result<Downloaded, DownloadError> {
        let max_bytes = max_bytes.min(self.limits.max_bytes);
        let mut attempt = 0;
        loop {
            let once = self.fetch_once(uri, dest, max_bytes);
            let result = tokio::time::timeout(self.limits.timeout, once)
                .await
                .unwrap_or_else(|_| {
                    Err(DownloadError::Fetch {
                        uri: uri.to_owned(),
                        reason: format!("timed out after {:?}", self.limits.timeout),
                        transient: true,
                    })
                });
            match result {
                Ok(got) => match sha256 {
                    Some(want) if !want.eq_ignore_ascii_case(&got.sha256) => {
                        // A local file's digest is not told to the
                        // submitter (it would learn the digest of any
                        // file below image_file_dirs); the log has it.
                        let got = if uri.starts_with("file://") {
                            tracing::warn!(uri, expected = want, got = %got.sha256,
                                "file:// image: sha256 mismatch");
                            "another digest (not shown for file://; see the agent's log)".to_owned()
                        } else {
                            got.sha256
                        };
                        return Err(DownloadError::Checksum {
                            uri: uri.to_owned(),
                            expected: want.to_owned(),
                            got,
                        });
                    }
                    _ => return Ok(got),
                },
                Err(DownloadError::Fetch {
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

    /// One attempt: streams into `dest` (if any), hashing.
    async fn fetch_once(
        &self,
        uri: &str,
        dest: Option<&Path>,
        max_bytes: u64,
    ) -> Result<Downloaded, DownloadError> {
        let fail = |reason: String, transient: bool| DownloadError::Fetch {
            uri: uri.to_owned(),
            reason,
            transient,
        };
        let out = match dest {
            Some(dest) => Some(tokio::fs::File::create(dest).await.map_err(io_err(dest))?),
            None => None,
        };
        let mut sink = Sink {
            out: out.zip(dest),
            hash: Sha256::new(),
            total: 0,
            limit: max_bytes,
            max_mb: self.limits.max_bytes >> 20,
            uri,
        };
        if let Some(path) = uri.strip_prefix("file://") {
            use tokio::io::AsyncReadExt;
            self.egress.check_file(path).map_err(|e| fail(e, false))?;
            let (p, dirs) = (path.to_owned(), self.egress.file_dirs().to_vec());
            let private = self.egress.private_dir().map(Path::to_owned);
            let file =
                tokio::task::spawn_blocking(move || open_image_file(&p, &dirs, private.as_deref()))
                    .await
                    .map_err(|e| fail(format!("open: {e}"), false))?
                    .map_err(|e| fail(e, false))?;
            let mut file = tokio::fs::File::from_std(file);
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
            let url = reqwest::Url::parse(uri).map_err(|e| fail(format!("bad uri: {e}"), false))?;
            egress_guard::check_url(&self.egress, &url).map_err(|e| fail(e.to_string(), false))?;
            egress_guard::check_own_by_name(&self.egress, &url)
                .await
                .map_err(|e| fail(e.to_string(), false))?;
            let mut resp = client.get(url).send().await.map_err(|e| {
                let chain = error_chain(&e);
                match roots {
                    _ if egress_guard::is_refusal(&e) => fail(chain, false),
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
        if let Some((out, dest)) = sink.out.as_mut() {
            out.flush().await.map_err(io_err(dest))?;
        }
        Ok(Downloaded {
            sha256: hex(&sink.hash.finalize()),
            bytes: sink.total,
        })
    }

    /// Where downloads may connect and read.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// The HTTPS client: trust roots are looked for on the first use only.
    fn https_client(&self) -> Result<(&reqwest::Client, &String), &String> {
        let made = self.https.get_or_init(|| {
            let (certs, source) =
                crate::tls::host_roots(self.ca_file.as_deref()).map_err(|e| e.to_string())?;
            let client = guarded_builder(&self.limits, &self.egress)
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
}

/// Opens a `file://` image. Its resolved path must lie below one of `dirs`
/// (resolved too: a symlink may not lead out) and not inside `private`
/// (the data dir); every dir from the listed one down to the file must be
/// root's and writable by no one else (nobody else can plant a file, a
/// hardlink or a symlink swapped in between the check and the open); the
/// file must have one link (a hardlink to /etc/shadow made where
/// `fs.protected_hardlinks` is off). It is first opened as `O_PATH`
/// (no device's open runs: a watchdog, a tape) and checked to be a
/// regular file, then opened for reading through its descriptor, without
/// blocking (a FIFO would hold a blocking-pool thread for good).
fn open_image_file(
    path: &str,
    dirs: &[PathBuf],
    private: Option<&Path>,
) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let real = std::fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
    let Some(dir) = dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .find(|d| real.starts_with(d) && real != *d)
    else {
        return Err(format!("{path}: leads out of image_file_dirs (a symlink)"));
    };
    // The listed dir as it resolves now (a symlink swapped in after the
    // start) is checked again.
    if let Some(why) = gleaner_core::egress::file_dir_refusal(&dir) {
        return Err(format!("{path}: image_file_dirs entry {why}"));
    }
    if let Some(private) = private {
        let private = std::fs::canonicalize(private).unwrap_or_else(|_| private.to_owned());
        if real.starts_with(&private) {
            return Err(format!("{path}: is inside the agent's data dir"));
        }
    }
    // Every dir from the file's up to `/`: root's; from the listed one down
    // writable by no one else, above it sticky at most (nobody else can
    // then swap a dir on the way for a link between this check and the
    // open, nor plant a file or a hardlink).
    for d in real.ancestors().skip(1) {
        let m = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let below = d.starts_with(&dir);
        let shared = m.mode() & 0o022 != 0 && (below || m.mode() & 0o1000 == 0);
        if m.uid() != 0 || shared {
            let rule = if below {
                "must be root's and writable by no one else"
            } else {
                "(above a listed dir) must be root's and writable by no one else, or sticky"
            };
            return Err(format!(
                "{path}: {} {rule} (owner {}, mode {:o})",
                d.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&real)
        .map_err(|e| format!("{path}: {e}"))?;
    let meta = handle.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{path}: not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(format!(
            "{path}: has {} hard links (one expected)",
            meta.nlink()
        ));
    }
    use std::os::fd::AsRawFd;
    let by_fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&by_fd)
        .map_err(|e| format!("{path}: {e}"))?;
    let opened = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(format!("{path}: changed while opened"));
    }
    Ok(file)
}

/// Where a download goes: a file (none for a hash only), a running hash,
/// and the size limit.
struct Sink<'a> {
    out: Option<(tokio::fs::File, &'a Path)>,
    hash: Sha256,
    total: u64,
    limit: u64,
    max_mb: u64,
    uri: &'a str,
}

impl Sink<'_> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.total += bytes.len() as u64;
        if self.total > self.limit {
            return Err(self.too_large());
        }
        self.hash.update(bytes);
        match self.out.as_mut() {
            Some((out, dest)) => out.write_all(bytes).await.map_err(io_err(dest)),
            None => Ok(()),
        }
    }

    fn too_large(&self) -> DownloadError {
        DownloadError::TooLarge {
            uri: self.uri.to_owned(),
            limit: self.limit,
            max_mb: self.max_mb,
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64) -> DownloadLimits {
        DownloadLimits {
            max_bytes,
            timeout: Duration::from_secs(5),
            retries: 0,
        }
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }

    /// A refusal by the address rule is final: not retried (3 retries
    /// here would take 3.5 s of backoff), by address and by name.
    #[tokio::test]
    async fn refused_addresses_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits(1 << 20);
        l.retries = 3;
        let d = Downloader::new(l, None, Egress::default()).unwrap();
        for uri in [
            "http://127.0.0.1:1/x",
            "http://localhost:1/x",
            "http://[::1]:1/x",
        ] {
            let began = std::time::Instant::now();
            let e = d
                .download(uri, None, &dir.path().join("x"))
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains("loopback"), "{uri}: {text}");
            assert!(
                matches!(
                    e,
                    DownloadError::Fetch {
                        transient: false,
                        ..
                    }
                ),
                "{uri}: {e:?}"
            );
            assert!(
                began.elapsed() < Duration::from_millis(400),
                "{uri}: retried"
            );
        }
    }

    #[tokio::test]
    async fn file_downloads_are_hashed_checked_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"abc").unwrap();
        let uri = format!("file://{}", src.display());
        let dest = dir.path().join("dest");
        let files = || {
            Egress::default()
                .with_file_dirs(&[dir.path().to_owned()])
                .unwrap()
        };
        let d = Downloader::new(limits(3), None, files()).unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got = d
            .download(&uri, Some(&abc.to_uppercase()), &dest)
            .await
            .unwrap();
        assert_eq!((got.sha256.as_str(), got.bytes), (abc, 3));
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        // A hash only: the same check, nothing written.
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(d.verify(&uri, abc).await.unwrap().bytes, 3);
        let wrong = d.verify(&uri, &"0".repeat(64)).await;
        assert!(
            matches!(wrong, Err(DownloadError::Checksum { .. })),
            "{wrong:?}"
        );
        assert!(!dest.exists());
        let wrong = d.download(&uri, Some(&"0".repeat(64)), &dest).await;
        assert!(
            matches!(wrong, Err(DownloadError::Checksum { .. })),
            "{wrong:?}"
        );
        let small = Downloader::new(limits(2), None, files()).unwrap();
        let big = small.download(&uri, None, &dest).await;
        assert!(
            matches!(big, Err(DownloadError::TooLarge { .. })),
            "{big:?}"
        );
        let missing = d
            .download(
                &format!("file://{}/nonexistent", dir.path().display()),
                None,
                &dest,
            )
            .await;
        assert!(
            matches!(
                missing,
                Err(DownloadError::Fetch {
                    transient: false,
                    ..
                })
            ),
            "{missing:?}"
        );
    }

    /// `file://` reads only regular files below `image_file_dirs`: a FIFO
    /// there fails at once (it used to hold a blocking thread for good), a
    /// symlink may not lead out, and with no dirs nothing is read.
    #[tokio::test]
    async fn file_uris_read_only_regular_files_below_image_file_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let fifo = images.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", images.join("out")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", images.join("zero")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        let egress = Egress::default().with_file_dirs(&[images.clone()]).unwrap();
        let d = Downloader::new(limits(1 << 20), None, egress).unwrap();
        let cases = [
            ("fifo", "not a regular file"),
            ("out", "leads out"),
            ("zero", "leads out"),
            ("../secret", "without '..'"),
        ];
        for (name, needle) in cases {
            let uri = format!("file://{}/{name}", images.display());
            let got = tokio::time::timeout(Duration::from_secs(3), d.download(&uri, None, &dest))
                .await
                .unwrap_or_else(|_| panic!("{name}: still reading after 3 s"));
            let e = got.unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
        let none = Downloader::new(limits(1 << 20), None, Egress::default()).unwrap();
        let uri = format!("file://{}/secret", dir.path().display());
        let e = none
            .download(&uri, None, &dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no image_file_dirs"), "{e}");
    }
}
