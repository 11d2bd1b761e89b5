//! Disk use of a directory tree, like `du`, with a bound: the disk sweep
//! walks trees that tasks write, and a task making millions of entries
//! must not make that walk endless. Over its budget (entries, depth or
//! time) or at an entry it cannot read, the walk stops and says why; the
//! caller decides (`runtime/disk.rs`).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a walk stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("more than {0} entries")]
    Entries(u64),
    #[error("still walking after {0:?}")]
    Time(Duration),
    /// Each pending level keeps a descriptor open: a deep chain would
    /// exhaust the agent's.
    #[error("directories nested deeper than {0}")]
    Depth(usize),
    /// What cannot be read cannot be counted: not a way out of the quota.
    #[error("an entry could not be read: {}", std::io::Error::from_raw_os_error(*.0))]
    Unreadable(i32),
}

/// Deepest directory nesting a walk follows.
pub const MAX_DEPTH: usize = 512;

/// The errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What one measurement (of one or several trees) may spend.
#[derive(Debug, Clone)]
pub struct Budget {
    max_entries: u64,
    left: u64,
    max_time: Duration,
    deadline: Instant,
}

impl Budget {
    pub fn new(max_entries: u64, max_time: Duration) -> Budget {
        Budget {
            max_entries,
            left: max_entries,
            max_time,
            deadline: Instant::now() + max_time,
        }
    }

    pub fn unlimited() -> Budget {
        Budget::new(u64::MAX, Duration::from_secs(u32::MAX as u64))
    }

    /// One entry more; the clock is read every 256.
    fn spend(&mut self) -> Result<(), OverBudget> {
        if self.left == 0 {
            return Err(OverBudget::Entries(self.max_entries));
        }
        self.left -= 1;
        if self.left % 256 == 0 && Instant::now() > self.deadline {
            return Err(OverBudget::Time(self.max_time));
        }
        Ok(())
    }
}

/// [`du_within`] without a bound (trees the agent wrote: an unpacked image).
pub fn du(root: &Path) -> u64 {
    du_within(root, &mut Budget::unlimited()).unwrap_or(u64::MAX)
}

/// Disk space used under `root`, like `du`: allocated blocks, hard links
/// counted once, symlinks not followed. `root` is the caller's; below it
/// every directory is opened from its parent's descriptor with
/// `O_NOFOLLOW` (a task may swap one for a link between two steps: the
/// walk then skips it, never follows it), and only `fstatat` touches
/// entries.
pub fn du_within(root: &Path, budget: &mut Budget) -> Result<u64, OverBudget> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::rc::Rc;
    let Ok(top) = std::fs::File::open(root) else {
        return Ok(0);
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    // A directory to list: opened, or a name in its (open) parent, with its
    // depth. Children are opened when popped, so the open descriptors stay
    // about the depth.
    let mut stack: Vec<(Rc<OwnedFd>, Option<std::ffi::CString>, usize)> =
        vec![(Rc::new(top.into()), None, 0)];
    while let Some((parent, name, depth)) = stack.pop() {
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
                    // Gone, or swapped for a link or a file since the stat:
                    // skipped (never followed); anything else is not
                    // counted, so over.
                    match errno() {
                        libc::ENOENT | libc::ELOOP | libc::ENOTDIR => continue,
                        e => return Err(OverBudget::Unreadable(e)),
                    }
                }
                // SAFETY: a fresh descriptor the kernel just returned.
                Rc::new(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        // fdopendir owns (and closedir closes) its descriptor: a copy.
        // SAFETY: fcntl on an open descriptor.
        let copy = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return Err(OverBudget::Unreadable(errno()));
        }
        // SAFETY: `copy` is ours; on failure it is still ours to close.
        let stream = unsafe { libc::fdopendir(copy) };
        if stream.is_null() {
            let e = errno();
            // SAFETY: as above.
            unsafe { libc::close(copy) };
            return Err(OverBudget::Unreadable(e));
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
            if let Err(e) = budget.spend() {
                // SAFETY: closes the stream and its copied descriptor.
                unsafe { libc::closedir(stream) };
                return Err(e);
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
                let e = errno();
                if e == libc::ENOENT {
                    continue;
                }
                // SAFETY: closes the stream and its copied descriptor.
                unsafe { libc::closedir(stream) };
                return Err(OverBudget::Unreadable(e));
            }
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if st.st_nlink > 1 && !is_dir && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            total += st.st_blocks as u64 * 512;
            if is_dir {
                if depth >= MAX_DEPTH {
                    // SAFETY: closes the stream and its copied descriptor.
                    unsafe { libc::closedir(stream) };
                    return Err(OverBudget::Depth(MAX_DEPTH));
                }
                stack.push((dir.clone(), Some(name), depth + 1));
            }
        }
        // SAFETY: closes the stream and its copied descriptor.
        unsafe { libc::closedir(stream) };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_stops_at_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        for i in 0..100 {
            std::fs::write(dir.path().join("d").join(i.to_string()), "x").unwrap();
        }
        // 101 entries: the dir and its files.
        let mut ok = Budget::new(101, Duration::from_secs(60));
        assert!(du_within(dir.path(), &mut ok).unwrap() > 0);
        let mut few = Budget::new(100, Duration::from_secs(60));
        assert_eq!(
            du_within(dir.path(), &mut few),
            Err(OverBudget::Entries(100))
        );
        // One budget over several trees: the second walk has what is left.
        let mut shared = Budget::new(150, Duration::from_secs(60));
        du_within(dir.path(), &mut shared).unwrap();
        assert!(du_within(dir.path(), &mut shared).is_err());
        // The clock is read every 256 entries: 301 here.
        for i in 0..200 {
            std::fs::write(dir.path().join("d").join(format!("more{i}")), "").unwrap();
        }
        let mut late = Budget::new(u64::MAX, Duration::ZERO);
        assert_eq!(
            du_within(dir.path(), &mut late),
            Err(OverBudget::Time(Duration::ZERO))
        );
    }

    /// Review: a deep chain kept a descriptor per pending level (the agent
    /// ran out of them).
    #[test]
    fn a_deep_chain_is_over_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut at = dir.path().to_owned();
        for _ in 0..MAX_DEPTH {
            at.push("d");
        }
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join("f"), "x").unwrap();
        assert!(du_within(dir.path(), &mut Budget::unlimited()).is_ok());
        std::fs::create_dir(at.join("d")).unwrap();
        assert_eq!(
            du_within(dir.path(), &mut Budget::unlimited()),
            Err(OverBudget::Depth(MAX_DEPTH))
        );
    }

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
}
