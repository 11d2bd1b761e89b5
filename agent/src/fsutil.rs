//! Small file helpers shared by the agent and the supervisor.
//!
//! **State files are written atomically**: temp file in the same directory,
//! fsync, rename, fsync of the directory. A reader sees the old or the new
//! content, never a torn one, even after a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("{path}: invalid content: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl FsError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FsError::Io {
            op,
            path: path.into(),
            err: source,
        }
    }

    /// True when the error is "file does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { err, .. } if err.kind() == io::ErrorKind::NotFound)
    }
}

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, data, true)
}

/// Atomic but not durable: for records that only mean something while the
/// host stays up (pids, start times). A crash of the writer cannot tear
/// them; a power cut may lose them, and then the boot id has changed anyway.
pub fn replace_atomic(path: &Path, data: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, data, false)
}

fn write_atomic_with(path: &Path, data: &[u8], durable: bool) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // Unique per call: two writers of one file (a durable record and a
    // derived state) must not rename each other's temp file away.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| FsError::io("create", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| FsError::io("write", &tmp, e))?;
        if durable {
            f.sync_all().map_err(|e| FsError::io("fsync", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| FsError::io("rename", path, e))?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync of a directory, so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::io("fsync", dir, e))
}

/// fsync of a file written earlier (possibly without one).
pub fn sync_file(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| FsError::io("fsync", path, e))
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    write_atomic(path, &to_json(path, value)?)
}

/// [`replace_atomic`] of a JSON value.
pub fn replace_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    replace_atomic(path, &to_json(path, value)?)
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, FsError> {
    serde_json::to_vec_pretty(value).map_err(|e| FsError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FsError> {
    let data = fs::read(path).map_err(|e| FsError::io("read", path, e))?;
    serde_json::from_slice(&data).map_err(|e| FsError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads a small text file (cgroup and proc files), trimmed.
pub fn read_trimmed(path: &Path) -> Result<String, FsError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| FsError::io("read", path, e))
}

/// Creates a directory and its parents; an existing one is fine.
pub fn create_dir_all(path: &Path) -> Result<(), FsError> {
    fs::create_dir_all(path).map_err(|e| FsError::io("mkdir", path, e))
}

/// Makes `path` unless it is there, never its parents: a dir whose
/// parent is gone fails (`NotFound`) rather than bring the parent back.
pub fn create_dir_in(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

/// Removes a file; a missing one is fine.
pub fn remove_file_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FsError::io("remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn read_json_names_the_path_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        fs::write(&p, b"{nope").unwrap();
        let err = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("x.json"), "{err}");
    }
}
