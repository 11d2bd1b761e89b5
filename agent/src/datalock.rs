//! One agent per data dir: an exclusive flock on `<data-dir>/agent.lock`,
//! taken before anything under the data dir is read or written (a second
//! agent would empty `images/.tmp`, take over `notify.sock` and remove
//! half-created task dirs under the live one). The file holds the holder's
//! pid, so the refusal can name it. The lock dies with the process: no
//! stale lock after a crash. Its descriptor is close-on-exec, so neither
//! the zygote nor the supervisors inherit it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data dir {dir} is in use by another gleaner-agent ({holder}); one agent per data dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// Held for the agent's life; released when dropped or the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("agent.lock")
    }

    /// Creates the data dir if missing and takes the lock without waiting.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |err| LockError::Io { path, err }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let path = Self::path(data_dir);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a descriptor we own; released when `file` drops.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(&path)(err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid unknown".to_owned(),
            };
            return Err(LockError::Held {
                dir: data_dir.to_owned(),
                holder,
            });
        }
        file.set_len(0).map_err(io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data).unwrap();
        // flock is per open file description: a second open in this
        // process conflicts just as another process would.
        let err = DataDirLock::acquire(&data).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&data.display().to_string()), "{err}");
        drop(first);
        DataDirLock::acquire(&data).unwrap();
    }
}
