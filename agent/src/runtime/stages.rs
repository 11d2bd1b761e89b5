//! Where the agent's side of a launch goes (issue 16.2): wall and thread
//! CPU time of each step, one debug line per launch (`launch stages`),
//! which bench/launch sums up. Thread CPU is meaningful only for steps that
//! do not await (a task may move between runtime threads at an await); the
//! supervisor's round trip is wall time only.

use std::fmt;
use std::time::{Duration, Instant};

pub(crate) struct Stages {
    wall: Instant,
    cpu: Duration,
    /// (step, wall µs, thread CPU µs or None).
    parts: Vec<(&'static str, u64, Option<u64>)>,
    /// The supervisor's own split of its round trip (`step=µs,...`, wall),
    /// from its record.
    pub(crate) supervisor_steps: String,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; this clock exists on every Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Stages {
    pub(crate) fn start() -> Stages {
        Stages {
            wall: Instant::now(),
            cpu: thread_cpu(),
            parts: Vec::new(),
            supervisor_steps: String::new(),
        }
    }

    /// Ends a step that ran on this thread without an await.
    pub(crate) fn mark(&mut self, step: &'static str) {
        let cpu = thread_cpu();
        let wall = self.wall.elapsed();
        self.parts.push((
            step,
            wall.as_micros() as u64,
            Some(cpu.saturating_sub(self.cpu).as_micros() as u64),
        ));
        self.restart_at(cpu);
    }

    /// Ends a step that awaited: wall time only.
    pub(crate) fn mark_wall(&mut self, step: &'static str) {
        let wall = self.wall.elapsed();
        self.parts.push((step, wall.as_micros() as u64, None));
        self.restart_at(thread_cpu());
    }

    fn restart_at(&mut self, cpu: Duration) {
        self.wall = Instant::now();
        self.cpu = cpu;
    }
}

/// `step=wall/cpu,...` in µs, `-` for a CPU time not measured.
impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (step, wall, cpu)) in self.parts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            match cpu {
                Some(c) => write!(f, "{sep}{step}={wall}/{c}")?,
                None => write!(f, "{sep}{step}={wall}/-")?,
            }
        }
        for part in self.supervisor_steps.split(',').filter(|p| !p.is_empty()) {
            write!(f, ",{part}/-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_timed_in_order_and_printed_for_the_bench() {
        let mut s = Stages::start();
        // Busy for a moment: CPU time shows up on this thread.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(5) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        s.mark("busy");
        std::thread::sleep(Duration::from_millis(5));
        s.mark_wall("sleep");
        let (_, busy_wall, busy_cpu) = s.parts[0];
        assert!(busy_wall >= 5000 && busy_cpu.unwrap() > 1000, "{s}");
        assert!(s.parts[1].1 >= 5000 && s.parts[1].2.is_none(), "{s}");
        let text = s.to_string();
        assert!(text.starts_with("busy=") && text.contains(",sleep=") && text.ends_with("/-"));
        s.supervisor_steps = "sup_prepare=10,sup_record=3".into();
        assert!(
            s.to_string().ends_with(",sup_prepare=10/-,sup_record=3/-"),
            "{s}"
        );
    }
}
