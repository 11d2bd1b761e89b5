//! Samples of the host (via procfs: /proc/stat, meminfo, loadavg, PSI) and
//! of gleaner's own use (its root cgroup: cpuacct / cpu.stat, memory).
//! Business use = host use - gleaner's use.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use procfs::{Current, CurrentSI};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("read {what}: {reason}")]
    Read { what: &'static str, reason: String },
}

fn err(what: &'static str) -> impl FnOnce(procfs::ProcError) -> SampleError {
    move |e| SampleError::Read {
        what,
        reason: e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub host_cpus: f64,
    pub host_busy_cpus: f64,
    pub agent_cpus: f64,
    pub mem_total_mb: f64,
    pub mem_used_mb: f64,
    pub agent_mem_mb: f64,
    pub load1: f64,
    pub psi_cpu: Option<f64>,
    pub psi_mem: Option<f64>,
}

impl Sample {
    pub fn business_cpus(&self) -> f64 {
        (self.host_busy_cpus - self.agent_cpus).max(0.0)
    }
    pub fn business_mem_mb(&self) -> f64 {
        (self.mem_used_mb - self.agent_mem_mb).max(0.0)
    }
}

/// Where gleaner's root cgroup is, per version.
#[derive(Debug, Clone)]
enum AgentCgroup {
    V1 { cpuacct: PathBuf, memory: PathBuf },
    V2 { dir: PathBuf },
}

pub struct Sampler {
    cgroup: AgentCgroup,
    ticks_per_s: f64,
    prev: Option<(Instant, u64, u64)>,
}

impl Sampler {
    /// `root` is the agent's cgroup root name (`gleaner`). `psi` false
    /// forces the fallback of kernels without PSI (3.10).
    pub fn new(root: &str) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount_of = |want: &str| {
            mountinfo.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut r = right.split_whitespace();
                let (fstype, _, opts) = (r.next()?, r.next()?, r.next()?);
                let point = left.split_whitespace().nth(4)?;
                let hit = match want {
                    "cgroup2" => fstype == "cgroup2",
                    c => fstype == "cgroup" && opts.split(',').any(|o| o == c),
                };
                hit.then(|| PathBuf::from(point))
            })
        };
        let cgroup = match (mount_of("cpuacct"), mount_of("memory")) {
            (Some(cpuacct), Some(memory)) => AgentCgroup::V1 {
                cpuacct: cpuacct.join(root),
                memory: memory.join(root),
            },
            _ => AgentCgroup::V2 {
                dir: mount_of("cgroup2")
                    .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
                    .join(root),
            },
        };
        Sampler {
            cgroup,
            ticks_per_s: procfs::ticks_per_second() as f64,
            prev: None,
        }
    }

    /// A sample; None for the first call (rates need two readings).
    pub fn sample(&mut self, use_psi: bool) -> Result<Option<Sample>, SampleError> {
        let now = Instant::now();
        let stat = procfs::KernelStats::current().map_err(err("/proc/stat"))?;
        let t = &stat.total;
        let busy = t.user
            + t.nice
            + t.system
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let agent_ns = self.agent_cpu_ns();
        let meminfo = procfs::Meminfo::current().map_err(err("/proc/meminfo"))?;
        let prev = self.prev.replace((now, busy, agent_ns));
        let Some((then, busy0, agent0)) = prev else {
            return Ok(None);
        };
        let dt = now.duration_since(then).as_secs_f64().max(1e-3);
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let available = meminfo
            .mem_available
            .unwrap_or(meminfo.mem_free + meminfo.cached);
        let psi =
            |p: Result<f32, procfs::ProcError>| if use_psi { p.ok().map(f64::from) } else { None };
        Ok(Some(Sample {
            host_cpus: stat.cpu_time.len().max(1) as f64,
            host_busy_cpus: busy.saturating_sub(busy0) as f64 / self.ticks_per_s / dt,
            agent_cpus: agent_ns.saturating_sub(agent0) as f64 / 1e9 / dt,
            mem_total_mb: mb(meminfo.mem_total),
            mem_used_mb: mb(meminfo.mem_total.saturating_sub(available)),
            agent_mem_mb: mb(self.agent_mem_bytes()),
            load1: procfs::LoadAverage::current()
                .map(|l| l.one as f64)
                .unwrap_or(0.0),
            psi_cpu: psi(procfs::CpuPressure::current().map(|p| p.some.avg10)),
            psi_mem: psi(procfs::MemoryPressure::current().map(|p| p.some.avg10)),
        }))
    }

    /// CPU time of gleaner's root cgroup, ns (0 while it does not exist).
    fn agent_cpu_ns(&self) -> u64 {
        match &self.cgroup {
            AgentCgroup::V1 { cpuacct, .. } => read_u64(&cpuacct.join("cpuacct.usage")),
            AgentCgroup::V2 { dir } => stat_field(&dir.join("cpu.stat"), "usage_usec") * 1000,
        }
    }

    /// Memory of gleaner's root cgroup less its inactive file cache (what
    /// the kernel can drop at once): the working set.
    fn agent_mem_bytes(&self) -> u64 {
        let (usage, stat, key) = match &self.cgroup {
            AgentCgroup::V1 { memory, .. } => (
                read_u64(&memory.join("memory.usage_in_bytes")),
                memory.join("memory.stat"),
                "total_inactive_file",
            ),
            AgentCgroup::V2 { dir } => (
                read_u64(&dir.join("memory.current")),
                dir.join("memory.stat"),
                "inactive_file",
            ),
        };
        usage.saturating_sub(stat_field(&stat, key))
    }
}

fn read_u64(path: &std::path::Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn stat_field(path: &std::path::Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_host() {
        let mut s = Sampler::new("gleaner-monitor-test-none");
        assert!(s.sample(true).unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let x = s.sample(true).unwrap().unwrap();
        assert!(x.host_cpus >= 1.0);
        assert!(x.mem_total_mb > 0.0 && x.mem_used_mb > 0.0 && x.mem_used_mb <= x.mem_total_mb);
        assert_eq!(x.agent_cpus, 0.0, "no such cgroup: no agent use");
        assert!(
            s.sample(false).unwrap().unwrap().psi_cpu.is_none(),
            "PSI forced off"
        );
    }
}
