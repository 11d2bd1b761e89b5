//! The task's output: a pipe per stream, copied by the supervisor into a
//! file of the task dir (not task-writable), capped in size.
//!
//! When a stream's file would pass its cap, the oldest half is dropped: the
//! newest half is copied to a fresh file that starts with a note of how much
//! was dropped, renamed over the old one. Only the supervisor writes the file,
//! so the rotation is atomic for readers and loses nothing it kept.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NOTE_ROOM: u64 = 160;

/// A log file that never grows past `cap` bytes.
pub(crate) struct CappedLog {
    path: PathBuf,
    file: File,
    len: u64,
    cap: u64,
    dropped: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

impl CappedLog {
    /// Appends to `path` (a restarted task keeps its earlier output).
    pub(crate) fn open(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = open_append(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(CappedLog {
            path: path.to_owned(),
            file,
            len: meta.len(),
            // A note and half of the cap must fit under it.
            cap: cap.max(4096),
            dropped: 0,
        })
    }

    pub(crate) fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.len >= self.cap {
                self.drop_oldest_half()?;
            }
            let room = (self.cap - self.len).min(buf.len() as u64) as usize;
            self.file.write_all(&buf[..room])?;
            self.len += room as u64;
            buf = &buf[room..];
        }
        Ok(())
    }

    fn drop_oldest_half(&mut self) -> io::Result<()> {
        // The newest half, less room for the note (under 160 bytes).
        let keep = self.cap / 2 - NOTE_ROOM;
        let mut old = File::open(&self.path)?;
        let mut cut = self.len.saturating_sub(keep);
        // Start the kept part on a line if one begins soon after the cut.
        old.seek(SeekFrom::Start(cut))?;
        let mut probe = [0u8; 4096];
        let n = old.read(&mut probe)?;
        if let Some(i) = probe[..n].iter().position(|&b| b == b'\n') {
            cut += i as u64 + 1;
        }
        self.dropped += cut;
        let note = format!(
            "[gleaner: {} bytes of older output dropped; this stream is capped at {} bytes]\n",
            self.dropped, self.cap
        );
        let tmp = self.path.with_extension("rotate");
        let _ = std::fs::remove_file(&tmp);
        let mut new = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        new.write_all(note.as_bytes())?;
        old.seek(SeekFrom::Start(cut))?;
        let copied = io::copy(&mut old, &mut new)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = new;
        self.len = note.len() as u64 + copied;
        Ok(())
    }
}

/// The task's output pipes and their files, pumped by the supervisor's
/// single thread (a supervisor that unshared its pid namespace cannot start
/// threads) from the same poll that waits for signals.
pub(crate) struct Streams {
    open: Vec<(File, CappedLog)>,
    buf: Vec<u8>,
}

impl Streams {
    pub(crate) fn new(streams: Vec<(File, CappedLog)>) -> Streams {
        Streams {
            open: streams,
            buf: vec![0u8; 64 << 10],
        }
    }

    /// One pollfd per stream still open, in order.
    pub(crate) fn pollfds(&self) -> Vec<libc::pollfd> {
        self.open
            .iter()
            .map(|(pipe, _)| libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Copies from the streams `polled` says are ready (their `pollfds`,
    /// answered); a stream at EOF is closed.
    pub(crate) fn pump(&mut self, polled: &[libc::pollfd]) {
        let mut closed = Vec::new();
        for (i, p) in polled.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (pipe, log) = &mut self.open[i];
            match pipe.read(&mut self.buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    // A log that cannot be written must not stall the task:
                    // the pipe keeps being drained.
                    if let Err(e) = log.write(&self.buf[..n]) {
                        eprintln!("warning: log {}: {e}", log.path.display());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            self.open.remove(i);
        }
    }

    /// Copies until every writer closed its end, at most `limit`: without
    /// a pid namespace a process that escaped the task may hold a pipe.
    pub(crate) fn drain(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.open.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = self.pollfds();
            // SAFETY: a valid array of pollfds for the call's duration.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    left.as_millis().min(i32::MAX as u128) as i32,
                )
            };
            if n > 0 {
                self.pump(&fds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_half_with_a_note_and_never_passes_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout");
        let mut log = CappedLog::open(&p, 10_000).unwrap();
        for i in 0..5_000u32 {
            log.write(format!("{i:07}\n").as_bytes()).unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() <= 10_000);
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("[gleaner: "), "{}", &text[..80]);
        assert!(text.contains("bytes of older output dropped"));
        assert!(text.ends_with("0004999\n"));
        // What is kept is contiguous, newest last.
        let nums: Vec<u32> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.parse().ok())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(nums.len() > 400, "{}", nums.len());
        assert!(!dir.path().join("stdout.rotate").exists());
    }

    #[test]
    fn appends_across_reopen_and_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout");
        CappedLog::open(&p, 1 << 20).unwrap().write(b"a\n").unwrap();
        CappedLog::open(&p, 1 << 20).unwrap().write(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(CappedLog::open(&l, 1 << 20).is_err());
    }
}

#[cfg(test)]
mod pump_tests {
    use super::*;

    #[test]
    fn streams_copy_until_eof() {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = super::super::pipe().unwrap();
        let log = CappedLog::open(&dir.path().join("stdout"), 1 << 20).unwrap();
        let mut streams = Streams::new(vec![(r, log)]);
        let mut w = File::from(w);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        streams.drain(Duration::from_secs(5));
        assert!(streams.open.is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
            "hello\n"
        );
    }
}
