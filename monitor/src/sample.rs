//! Samples of the host (via procfs: /proc/stat, meminfo, loadavg, PSI) and
//! of gleaner's own use (its root cgroup: cpuacct / cpu.stat, memory).
//! Business use = host use - gleaner's use. Memory excludes file cache
//! (active and inactive) on both sides alike, so batch file cache neither
//! counts as business use nor is taken off it. A sample whose cgroup read
//! fails is an error, never a 0 (with a wrong `cgroup_root`, all batch use
//! would look like business use and the monitor would preempt at once).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use procfs::{Current, CurrentSI};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("read {what}: {reason}")]
    Read { what: &'static str, reason: String },
    #[error("read {path} (gleaner's cgroup; is cgroup_root the agent's?): {reason}")]
    Cgroup { path: PathBuf, reason: String },
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
    /// /proc/pressure exists: no PSI on 3.10, nor with `psi=0` or
    /// CONFIG_PSI_DEFAULT_DISABLED; then PSI is off whatever `use_psi` says.
    psi: bool,
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
            psi: std::path::Path::new("/proc/pressure").is_dir(),
        }
    }

    /// Whether this kernel offers PSI.
    pub fn psi_available(&self) -> bool {
        self.psi
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
        let agent_ns = self.agent_cpu_ns()?;
        let agent_mem = self.agent_mem_bytes()?;
        let meminfo = procfs::Meminfo::current().map_err(err("/proc/meminfo"))?;
        let prev = self.prev.replace((now, busy, agent_ns));
        let Some((then, busy0, agent0)) = prev else {
            return Ok(None);
        };
        let dt = now.duration_since(then).as_secs_f64().max(1e-3);
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let used = match (meminfo.active_file, meminfo.inactive_file) {
            (Some(active), Some(inactive)) => {
                host_used_bytes(meminfo.mem_total, meminfo.mem_free, active, inactive)
            }
            // Kernels before 2.6.28: all of the page cache.
            _ => host_used_bytes(meminfo.mem_total, meminfo.mem_free, meminfo.cached, 0),
        };
        let use_psi = use_psi && self.psi;
        let psi =
            |p: Result<f32, procfs::ProcError>| if use_psi { p.ok().map(f64::from) } else { None };
        Ok(Some(Sample {
            host_cpus: stat.cpu_time.len().max(1) as f64,
            host_busy_cpus: busy.saturating_sub(busy0) as f64 / self.ticks_per_s / dt,
            agent_cpus: agent_ns.saturating_sub(agent0) as f64 / 1e9 / dt,
            mem_total_mb: mb(meminfo.mem_total),
            mem_used_mb: mb(used),
            agent_mem_mb: mb(agent_mem),
            load1: procfs::LoadAverage::current()
                .map(|l| l.one as f64)
                .unwrap_or(0.0),
            psi_cpu: psi(procfs::CpuPressure::current().map(|p| p.some.avg10)),
            psi_mem: psi(procfs::MemoryPressure::current().map(|p| p.some.avg10)),
        }))
    }

    /// CPU time of gleaner's root cgroup, ns.
    fn agent_cpu_ns(&self) -> Result<u64, SampleError> {
        match &self.cgroup {
            AgentCgroup::V1 { cpuacct, .. } => read_u64(&cpuacct.join("cpuacct.usage")),
            AgentCgroup::V2 { dir } => Ok(stat_field(&dir.join("cpu.stat"), "usage_usec")? * 1000),
        }
    }

    /// Memory of gleaner's root cgroup less its file cache.
    fn agent_mem_bytes(&self) -> Result<u64, SampleError> {
        let (usage, stat, active, inactive) = match &self.cgroup {
            AgentCgroup::V1 { memory, .. } => (
                read_u64(&memory.join("memory.usage_in_bytes"))?,
                memory.join("memory.stat"),
                "total_active_file",
                "total_inactive_file",
            ),
            AgentCgroup::V2 { dir } => (
                read_u64(&dir.join("memory.current"))?,
                dir.join("memory.stat"),
                "active_file",
                "inactive_file",
            ),
        };
        Ok(cgroup_working_set(
            usage,
            stat_field(&stat, active)?,
            stat_field(&stat, inactive)?,
        ))
    }
}

/// Host memory in use: neither free nor file cache.
pub fn host_used_bytes(total: u64, free: u64, active_file: u64, inactive_file: u64) -> u64 {
    total
        .saturating_sub(free)
        .saturating_sub(active_file)
        .saturating_sub(inactive_file)
}

/// A cgroup's memory in use, its file cache left out as on the host side.
pub fn cgroup_working_set(usage: u64, active_file: u64, inactive_file: u64) -> u64 {
    usage
        .saturating_sub(active_file)
        .saturating_sub(inactive_file)
}

fn cgroup_err(path: &Path, reason: impl ToString) -> SampleError {
    SampleError::Cgroup {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_u64(path: &Path) -> Result<u64, SampleError> {
    let text = fs::read_to_string(path).map_err(|e| cgroup_err(path, e))?;
    text.trim()
        .parse()
        .map_err(|_| cgroup_err(path, format!("not a number: {:?}", text.trim())))
}

fn stat_field(path: &Path, key: &str) -> Result<u64, SampleError> {
    let text = fs::read_to_string(path).map_err(|e| cgroup_err(path, e))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| cgroup_err(path, format!("no {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_host() {
        // The hierarchy's root stands for gleaner's cgroup (v1: it has
        // cpuacct.usage and memory.usage_in_bytes).
        let mut s = Sampler::new("");
        assert!(s.sample(true).unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let x = s.sample(true).unwrap().unwrap();
        assert!(x.host_cpus >= 1.0);
        assert!(x.mem_total_mb > 0.0 && x.mem_used_mb > 0.0 && x.mem_used_mb <= x.mem_total_mb);
        assert!(
            s.sample(false).unwrap().unwrap().psi_cpu.is_none(),
            "PSI forced off"
        );
    }

    /// Issue 21: a missing cgroup used to read as 0 batch use.
    #[test]
    fn a_failed_cgroup_read_is_an_error_naming_the_path() {
        let mut s = Sampler::new("gleaner-monitor-test-none");
        let err = s.sample(true).unwrap_err().to_string();
        assert!(err.contains("gleaner-monitor-test-none"), "{err}");
    }

    /// Batch file cache moves neither the business figure nor is counted
    /// on one side only.
    #[test]
    fn batch_file_cache_leaves_business_memory_unchanged() {
        let mb = 1u64 << 20;
        let business = |cache: u64| {
            // 16 GB host, 4 GB free, 2 GB of business cache; batch: 3 GB
            // working set plus `cache` of file cache split active/inactive.
            let host = host_used_bytes(
                16384 * mb,
                4096 * mb - cache,
                1024 * mb + cache / 2,
                1024 * mb + cache - cache / 2,
            );
            let batch = cgroup_working_set(3072 * mb + cache, cache / 2, cache - cache / 2);
            host - batch
        };
        assert_eq!(business(0), business(2048 * mb));
        assert_eq!(business(0), (16384 - 4096 - 2048 - 3072) * mb);
    }
}
