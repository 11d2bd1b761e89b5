//! Files of a task's `fetch` with `cache` and a digest, kept in the image
//! cache (`images/file-<sha256>-<scope>/file`) in the same LRU and under
//! the same per-entry locks; each task gets its own copy.

use std::path::Path;

use super::meta::ImageMeta;
use super::{io_err, scope, touch, write_meta, ImageCache, ImageError};
use crate::download::DownloadError;
use crate::workdir::WorkDir;

/// Where a fetched file with this digest is kept for tasks of `role`
/// naming `uri`: beside the images, in the same LRU and under the same
/// per-entry locks. Keyed like Mesos's fetcher cache (user and URI; the
/// tenant here is the role): a digest alone is no capability, so a task
/// gets a cached file only if its own tenant fetched it from the same URI
/// (a digest is public, the URI's content may not be).
fn file_entry(sha256: &str, role: &str, uri: &str) -> String {
    format!("file-{sha256}-{}", scope(role, uri))
}

impl ImageCache {
    /// A copy of the file with this digest at `dest` (a new file, mode
    /// 0600, root's), downloaded into the cache first unless a task of
    /// `role` downloaded it from `uri` before ([`file_entry`]). The copy is
    /// made under the entry's lock: eviction never races it.
    pub async fn copy_file(
        &self,
        uri: &str,
        sha256: &str,
        role: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<(), ImageError> {
        let sha256 = sha256.to_ascii_lowercase();
        let entry = file_entry(&sha256, role, uri);
        let _one_fetch = self.hold(&entry).await;
        let home = self.dir.join(&entry);
        let cached = home.join("file");
        if cached.is_file() {
            let len = std::fs::metadata(&cached).map_err(io_err(&cached))?.len();
            let limit = max_bytes.min(self.limits.max_bytes);
            if len > limit {
                return Err(DownloadError::TooLarge {
                    uri: uri.to_owned(),
                    limit,
                    max_mb: self.limits.max_bytes >> 20,
                }
                .into());
            }
            touch(&home.join("image.json"));
        } else {
            let work = WorkDir::new(self.work_dir(&entry));
            let built = self.build_file(uri, &sha256, work.path(), max_bytes).await;
            self.place(built, work.path(), &home)?;
            tracing::info!(uri, sha256, "fetched file cached");
        }
        let (from, to) = (cached, dest.to_owned());
        tokio::task::spawn_blocking(move || copy_new(&from, &to))
            .await
            .map_err(|e| io_err(dest)(std::io::Error::other(e)))?
    }

    async fn build_file(
        &self,
        uri: &str,
        sha256: &str,
        work: &Path,
        max_bytes: u64,
    ) -> Result<(), ImageError> {
        std::fs::create_dir_all(work).map_err(io_err(work))?;
        let file = work.join("file");
        let got = self
            .downloader
            .download_max(uri, Some(sha256), &file, max_bytes)
            .await?;
        write_meta(
            work,
            &ImageMeta {
                uri: uri.to_owned(),
                sha256: sha256.to_owned(),
                bytes: got.bytes,
                archive_bytes: got.bytes,
                // The pair is in the entry's name.
                fetched_by: Vec::new(),
            },
        )
    }
}

/// Copies `from` to a new file `to` (never through what stands there).
fn copy_new(from: &Path, to: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::File::open(from).map_err(io_err(from))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(to)
        .map_err(io_err(to))?;
    std::io::copy(&mut src, &mut out).map_err(io_err(to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_is_scoped_by_role_and_uri() {
        let sha = "ab".repeat(32);
        let a = file_entry(&sha, "batch", "http://h/x");
        assert!(a.starts_with(&format!("file-{sha}-")), "{a}");
        assert_eq!(a, file_entry(&sha, "batch", "http://h/x"));
        assert_ne!(a, file_entry(&sha, "analytics", "http://h/x"));
        assert_ne!(a, file_entry(&sha, "batch", "http://h/y"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(file_entry(&sha, "a", "bc"), file_entry(&sha, "ab", "c"));
    }
}
