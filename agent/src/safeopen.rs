//! Opening files under a directory a task can write, without following the
//! task's links.
//!
//! A task controls every name below its sandbox and /tmp: any of them may be
//! a symlink to a host file, a FIFO that blocks an open, or a device. Code
//! running as root that opens such a path goes through [`open_beneath`]:
//! no symlink anywhere in the path, no `..`, only a regular file, opened
//! non-blocking. `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (5.6+)
//! does it in one call; older kernels (3.10 has no `openat2`) get an
//! `O_NOFOLLOW` walk from a directory fd, one component at a time. The mode
//! is chosen once per process ([`init`]); `disable_features = ["openat2"]`
//! forces the walk.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum SafeOpenError {
    #[error("open {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("open {path}: not a plain relative path (no '..', no absolute)")]
    BadPath { path: PathBuf },
    #[error("open {path}: not a regular file")]
    NotRegular { path: PathBuf },
}

impl SafeOpenError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, SafeOpenError::Io { err, .. } if err.kind() == io::ErrorKind::NotFound)
    }
}

const UNKNOWN: u8 = 0;
const OPENAT2: u8 = 1;
const WALK: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Chooses the mode once: `openat2` if the kernel has it and it is not
/// disabled. Returns whether `openat2` is used.
pub fn init(openat2_disabled: bool) -> bool {
    let mode = if !openat2_disabled && probe_openat2() {
        OPENAT2
    } else {
        WALK
    };
    MODE.store(mode, Ordering::Relaxed);
    mode == OPENAT2
}

fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        UNKNOWN => {
            init(false);
            MODE.load(Ordering::Relaxed)
        }
        m => m,
    }
}

fn probe_openat2() -> bool {
    let root = match File::open("/") {
        Ok(f) => f,
        Err(_) => return false,
    };
    // "." beneath "/" always resolves: only ENOSYS (or a seccomp EPERM)
    // says the call is missing.
    openat2(
        root.as_raw_fd(),
        Path::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .is_ok()
}

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(dir: RawFd, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 { 0o640 } else { 0 },
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    // SAFETY: valid NUL-terminated path and open_how for the call's duration.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn openat(dir: RawFd, name: &std::ffi::OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated name.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, 0o640) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `dir/rel` for reading: `rel` must be relative without `..`, no
/// component may be a symlink (nor cross a mount), and the file must be a
/// regular one. Never blocks on a FIFO or a device.
pub fn open_beneath(dir: &Path, rel: &Path) -> Result<File, SafeOpenError> {
    open_with(dir, rel, libc::O_RDONLY, mode())
}

fn open_with(dir: &Path, rel: &Path, flags: i32, mode: u8) -> Result<File, SafeOpenError> {
    let full = dir.join(rel);
    let io_err = |err| SafeOpenError::Io {
        path: full.clone(),
        err,
    };
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(SafeOpenError::BadPath { path: full.clone() }),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, walk)) = parts.split_last() else {
        return Err(SafeOpenError::BadPath { path: full });
    };
    let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    // The directory itself is the caller's (the agent made it).
    let base = File::open(dir).map_err(|err| SafeOpenError::Io {
        path: dir.to_owned(),
        err,
    })?;
    let fd = if mode == OPENAT2 {
        openat2(base.as_raw_fd(), rel, flags).map_err(io_err)?
    } else {
        let mut cur: OwnedFd = base.into();
        for name in walk {
            cur = openat(
                cur.as_raw_fd(),
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
            .map_err(io_err)?;
        }
        openat(cur.as_raw_fd(), last, flags).map_err(io_err)?
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(SafeOpenError::NotRegular { path: full });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes() -> Vec<u8> {
        let mut m = vec![WALK];
        if probe_openat2() {
            m.push(OPENAT2);
        }
        m
    }

    #[test]
    fn refuses_links_fifos_dirs_and_dotdot_in_both_modes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("outside"), "secret").unwrap();
        std::fs::create_dir(d.join("box")).unwrap();
        std::fs::create_dir(d.join("box/sub")).unwrap();
        std::fs::write(d.join("box/sub/ok"), "fine").unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("box/link")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("box/dirlink")).unwrap();
        nix::unistd::mkfifo(&d.join("box/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let b = d.join("box");
        for m in modes() {
            let read = |rel: &str| open_with(&b, Path::new(rel), libc::O_RDONLY, m);
            let mut s = String::new();
            use std::io::Read;
            read("sub/ok").unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, "fine");
            assert!(read("link").is_err(), "mode {m}: symlink followed");
            assert!(
                read("dirlink/ok").is_err(),
                "mode {m}: dir symlink followed"
            );
            assert!(matches!(
                read("fifo"),
                Err(SafeOpenError::NotRegular { .. })
            ));
            assert!(matches!(read("sub"), Err(SafeOpenError::NotRegular { .. })));
            assert!(matches!(
                read("../outside"),
                Err(SafeOpenError::BadPath { .. })
            ));
            assert!(matches!(
                read("/etc/passwd"),
                Err(SafeOpenError::BadPath { .. })
            ));
            assert!(read("missing").unwrap_err().is_not_found());
        }
    }
}
