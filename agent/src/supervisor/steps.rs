//! Where the supervisor's side of a launch goes (issue 16.2): monotonic
//! timestamps taken by the zygote (before its fork), the supervisor, the
//! init and the command's process (the last one just before `execve`),
//! turned into `step=µs,...` for the supervisor's record.
//!
//! The init and the command are forked processes, so their marks travel
//! by memory (a fork copies the list) and by one write into a pipe just
//! before `execve`; the supervisor reads it once the exec closed the error
//! pipe. A lost or malformed write costs the split, never the launch.

use std::fmt::Write as _;

/// CLOCK_MONOTONIC in µs: the same clock in every process of the host.
pub(crate) fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Named points in time; each step runs from the previous mark to its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Marks(Vec<(&'static str, u64)>);

impl Marks {
    /// Starts at `t0` (µs of [`now_us`]).
    pub(crate) fn start_at(t0: u64) -> Marks {
        Marks(vec![("", t0)])
    }

    pub(crate) fn mark(&mut self, step: &'static str) {
        self.0.push((step, now_us()));
    }

    /// `step@µs,...` (absolute): what the command's process sends.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for (step, t) in &self.0 {
            let _ = write!(out, "{step}@{t},");
        }
        out
    }

    /// The marks `encode` wrote; None if any part is malformed.
    pub(crate) fn decode(text: &str) -> Option<Marks> {
        let mut marks = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (step, t) = part.split_once('@')?;
            marks.push((known_step(step)?, t.parse().ok()?));
        }
        (!marks.is_empty()).then_some(Marks(marks))
    }

    /// `step=µs,...`: the duration of each step (0 if the clock read
    /// went backwards, which CLOCK_MONOTONIC never does).
    pub(crate) fn durations(&self) -> String {
        let mut out = String::new();
        for pair in self.0.windows(2) {
            let (_, from) = pair[0];
            let (step, to) = pair[1];
            let sep = if out.is_empty() { "" } else { "," };
            let _ = write!(out, "{sep}{step}={}", to.saturating_sub(from));
        }
        out
    }

    /// Appends `later`'s marks (its start mark dropped) to these.
    pub(crate) fn extend(&mut self, later: Marks) {
        self.0
            .extend(later.0.into_iter().filter(|(s, _)| !s.is_empty()));
    }
}

/// The step names a decoded text may carry (`&'static str`, so a name
/// read from a pipe is one of ours).
const STEPS: [&str; 16] = [
    "",
    "init_fork",
    "init_oom_adj",
    "init_netns",
    "init_mntns",
    "mnt_rootfs",
    "mnt_dev",
    "mnt_proc",
    "mnt_binds",
    "mnt_pivot",
    "init_cgroup",
    "cmd_fork",
    "cmd_stdio",
    "cmd_privileges",
    "cmd_resolve",
    "cmd_seccomp",
];

fn known_step(name: &str) -> Option<&'static str> {
    STEPS.iter().copied().find(|s| *s == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cross_a_pipe_and_become_durations_in_order() {
        let mut sup = Marks::start_at(1_000);
        sup.0.push(("sup_config", 1_200));
        // The init's and the command's marks, as sent before the exec.
        let child = Marks(vec![("", 0), ("init_fork", 1_500), ("cmd_seccomp", 1_900)]);
        let sent = child.encode();
        let got = Marks::decode(&sent).expect("decodes");
        sup.extend(got);
        sup.0.push(("exec", 2_400));
        assert_eq!(
            sup.durations(),
            "sup_config=200,init_fork=300,cmd_seccomp=400,exec=500"
        );
        // Unknown names and garbage are refused as a whole.
        assert!(Marks::decode("init_fork@12,evil@3,").is_none());
        assert!(Marks::decode("init_fork@x,").is_none());
        assert!(Marks::decode("").is_none());
        // A clock that went backwards gives 0, not a wrap.
        assert_eq!(
            Marks(vec![("", 10), ("init_fork", 5)]).durations(),
            "init_fork=0"
        );
    }
}
