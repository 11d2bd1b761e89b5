//! The business's run-queue delay: how long its threads were runnable but
//! waited for a CPU, per second of wall time (issue 16.5: a business-side
//! signal next to CPU accounting). The kernel counts it per thread
//! (`/proc/<pid>/task/<tid>/schedstat`, 2nd field, ns; 3.10 included);
//! cgroup v1 has no per-cgroup delay or PSI, so the sampler walks every
//! thread and leaves out the processes of gleaner's cgroup tree.
//!
//! Cost: one read per thread per sample, so it is off unless the policy
//! asks for it (`policy.cpu_delay_ms`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Run delay (ns) per thread id, as last read.
pub type Delays = HashMap<u32, u64>;

pub struct DelaySampler {
    /// Gleaner's root cgroup (one hierarchy): its tree's processes are
    /// batch, not business.
    gleaner: PathBuf,
    prev: Option<(Instant, Delays)>,
}

impl DelaySampler {
    pub fn new(gleaner: PathBuf) -> Self {
        DelaySampler {
            gleaner,
            prev: None,
        }
    }

    /// ms of run-queue wait per second since the last call, summed over
    /// the business's threads. None on the first call.
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let delays = business_delays(&gleaner_pids(&self.gleaner));
        let (then, before) = self.prev.replace((now, delays))?;
        let after = &self.prev.as_ref()?.1;
        Some(delay_ms_per_s(&before, after, now.duration_since(then).as_secs_f64()))
    }
}

/// ms of wait per second between two readings. A thread seen only in the
/// second one started during the interval: all of its delay is new. A
/// thread whose count went down is a reused id: it counts from 0.
pub fn delay_ms_per_s(before: &Delays, after: &Delays, dt_s: f64) -> f64 {
    let ns: u64 = after
        .iter()
        .map(|(tid, &d)| match before.get(tid) {
            Some(&b) if b <= d => d - b,
            _ => d,
        })
        .sum();
    ns as f64 / 1e6 / dt_s.max(1e-3)
}

/// The processes of a cgroup tree (`cgroup.procs` of every cgroup in it).
fn gleaner_pids(root: &Path) -> HashSet<u32> {
    let mut pids = HashSet::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Run delay of every thread of every process not in `exclude`. Threads
/// that end while being read are skipped.
fn business_delays(exclude: &HashSet<u32>) -> Delays {
    let mut out = Delays::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(d) = fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            {
                out.insert(tid, d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_threads_count_whole_and_reused_ids_from_zero() {
        let before: Delays = [(1, 100_000_000), (2, 50_000_000), (3, 9_000_000)].into();
        // 1: +20 ms; 2: gone; 3: reused id (count went down) 5 ms; 4: new 10 ms.
        let after: Delays = [(1, 120_000_000), (3, 5_000_000), (4, 10_000_000)].into();
        let r = delay_ms_per_s(&before, &after, 0.5);
        assert!((r - 70.0).abs() < 1e-9, "{r}");
    }

    /// On this host, for real: more spinning processes than CPUs make
    /// their threads wait, and the sampler sees it; the same spinners in
    /// the excluded cgroup tree are not counted. Needs root (a cgroup).
    #[test]
    fn sees_the_wait_of_more_runners_than_cpus_outside_gleaners_cgroup() {
        if !Path::new("/sys/fs/cgroup").is_dir() || fs::metadata("/proc/1/root").is_err() {
            eprintln!("skipped: needs root");
            return;
        }
        let cg = PathBuf::from(format!(
            "/sys/fs/cgroup/cpuacct/gleaner-monitor-test-delay-{}",
            std::process::id()
        ));
        let v1 = Path::new("/sys/fs/cgroup/cpuacct").is_dir();
        let cg = if v1 {
            cg
        } else {
            PathBuf::from(format!(
                "/sys/fs/cgroup/gleaner-monitor-test-delay-{}",
                std::process::id()
            ))
        };
        fs::create_dir_all(&cg).unwrap();
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spin = |n: usize| -> Vec<std::process::Child> {
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect()
        };
        let measure = |s: &mut DelaySampler| {
            s.sample();
            std::thread::sleep(std::time::Duration::from_millis(400));
            s.sample().unwrap()
        };
        let mut sampler = DelaySampler::new(cg.clone());
        let mut kids = spin(2 * cpus);
        let outside = measure(&mut sampler);
        for k in &kids {
            fs::write(cg.join("cgroup.procs"), k.id().to_string()).unwrap();
        }
        let inside = measure(&mut sampler);
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = fs::remove_dir(&cg);
        // 2 x CPUs runners on CPUs: about half of their time waiting, i.e.
        // ~CPUs x 1000 ms/s in all; well above what this test's own host
        // adds otherwise.
        assert!(outside > 300.0 * cpus as f64, "outside: {outside} ms/s");
        assert!(inside < outside / 3.0, "inside {inside} vs outside {outside} ms/s");
    }
}
