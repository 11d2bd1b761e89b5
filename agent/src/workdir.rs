//! The work dir of one image-cache fetch (`images/.tmp/...`), removed if
//! the fetch does not finish: its future is dropped when the task is
//! stopped. The removal never runs on a runtime worker (a big tree would
//! stall it): the dir is renamed out of the way and removed on the
//! blocking pool. An unpack running on the blocking pool when the fetch
//! is dropped is told to stop (its reads fail) and removes the dir itself
//! when it ends, so nothing writes into a dir being removed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    cancel: AtomicBool,
    /// An unpack runs in the dir (it removes the dir if cancelled).
    unpacking: Mutex<bool>,
}

/// Owns the dir until it is renamed into place (then there is nothing
/// left to remove).
pub struct WorkDir {
    path: PathBuf,
    state: Arc<State>,
}

/// Handed to the blocking unpack: its reads fail once the fetch is
/// dropped, and [`Unpacking::finish`] removes the dir then.
pub struct Unpacking {
    path: PathBuf,
    state: Arc<State>,
}

/// Why a read was cut short.
pub const STOPPED: &str = "the fetch was stopped";

impl WorkDir {
    pub fn new(path: PathBuf) -> WorkDir {
        WorkDir {
            path,
            state: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For the blocking unpack.
    pub fn unpacking(&self) -> Unpacking {
        Unpacking {
            path: self.path.clone(),
            state: self.state.clone(),
        }
    }
}

impl Unpacking {
    /// Runs `f` (the unpack) unless the fetch is already gone; once it
    /// returns, removes the dir if the fetch was dropped meanwhile.
    pub fn run<T>(self, f: impl FnOnce(&Unpacking) -> Result<T, String>) -> Result<T, String> {
        {
            let mut busy = self.state.unpacking.lock().unwrap();
            if self.state.cancel.load(Ordering::SeqCst) {
                return Err(STOPPED.into());
            }
            *busy = true;
        }
        let out = f(&self);
        let mut busy = self.state.unpacking.lock().unwrap();
        *busy = false;
        if self.state.cancel.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.path);
            return Err(STOPPED.into());
        }
        out
    }

    /// `inner`, failing every read once the fetch is dropped.
    pub fn reader<R: Read>(&self, inner: R) -> CancelRead<R> {
        CancelRead {
            inner,
            state: self.state.clone(),
        }
    }
}

pub struct CancelRead<R> {
    inner: R,
    state: Arc<State>,
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.state.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(STOPPED));
        }
        self.inner.read(buf)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let busy = self.state.unpacking.lock().unwrap();
        self.state.cancel.store(true, Ordering::SeqCst);
        if *busy || std::fs::symlink_metadata(&self.path).is_err() {
            // The unpack removes it when it stops; or it was placed.
            return;
        }
        drop(busy);
        let mut doomed = self.path.clone().into_os_string();
        doomed.push(".doomed");
        let doomed = PathBuf::from(doomed);
        if std::fs::rename(&self.path, &doomed).is_err() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || std::fs::remove_dir_all(doomed));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(doomed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// An endless reader: the unpack of an endless archive.
    struct Zeros;
    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            Ok(buf.len())
        }
    }

    /// A fetch dropped mid-unpack: the unpack's reads fail, it ends, and
    /// the dir is gone; a fetch dropped before its unpack: the dir is
    /// removed off the runtime and the unpack never starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_fetch_stops_its_unpack_and_its_dir_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let work = WorkDir::new(tmp.path().join("w"));
        std::fs::create_dir(work.path()).unwrap();
        let unpacking = work.unpacking();
        let started = Arc::new(AtomicBool::new(false));
        let s2 = started.clone();
        let unpack = tokio::task::spawn_blocking(move || {
            unpacking.run(|u| {
                let dir = u.path.join("rootfs");
                std::fs::create_dir(&dir).unwrap();
                s2.store(true, Ordering::SeqCst);
                let mut r = u.reader(Zeros);
                let mut buf = [0u8; 4096];
                loop {
                    r.read(&mut buf).map_err(|e| e.to_string())?;
                }
            })
        });
        while !started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let began = Instant::now();
        drop(work);
        let out: Result<(), String> = unpack.await.unwrap();
        assert_eq!(out.unwrap_err(), STOPPED);
        assert!(began.elapsed() < Duration::from_secs(2));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

        let work = WorkDir::new(tmp.path().join("v"));
        std::fs::create_dir_all(work.path().join("a/b")).unwrap();
        let unpacking = work.unpacking();
        drop(work);
        let ran = unpacking.run(|_| Ok(()));
        assert_eq!(ran.unwrap_err(), STOPPED);
        for _ in 0..200 {
            if std::fs::read_dir(tmp.path()).unwrap().count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "left: {:?}",
            std::fs::read_dir(tmp.path()).unwrap().collect::<Vec<_>>()
        );
    }
}
