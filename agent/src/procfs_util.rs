//! Small /proc readers. The identity of a process is (pid, start time): a
//! pid alone can be reused by an unrelated process.

use std::fs;

/// Start time of `pid` in clock ticks since boot (field 22 of stat).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    // comm may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and is the process that started at `ticks`.
pub fn is_same_process(pid: i32, ticks: u64) -> bool {
    pid > 0 && start_ticks(pid) == Some(ticks) && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// CPU time (user + system, clock ticks) of `pid` and whether it is
/// runnable (state R): together, whether a process is getting on or stuck.
pub fn cpu_and_runnable(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_and_runnable(&stat)
}

pub fn parse_cpu_and_runnable(stat: &str) -> Option<(u64, bool)> {
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((utime + stime, *rest.first()? == "R"))
}

/// Processes with a descriptor open on `path` (a scan of every
/// /proc/<pid>/fd: slow, for rare recovery decisions only). The caller's
/// own process is left out.
pub fn holders_of(path: &std::path::Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == path))
            })
        })
        .collect()
}

/// Children of `pid` (needs CONFIG_PROC_CHILDREN; empty otherwise).
pub fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Boot id: tells a host reboot from an agent restart.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_with_odd_comm() {
        let stat =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }

    #[test]
    fn self_is_same_process() {
        let me = std::process::id() as i32;
        let t = start_ticks(me).unwrap();
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
    }

    #[test]
    fn cpu_and_runnable_reads_stat_fields_after_the_last_parenthesis() {
        let stat = "42 (a) b (c)) R 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1234 0 0";
        assert_eq!(parse_cpu_and_runnable(stat), Some((12, true)));
        let sleeping = stat.replace(") R ", ") S ");
        assert_eq!(parse_cpu_and_runnable(&sleeping), Some((12, false)));
        assert_eq!(parse_cpu_and_runnable("garbage"), None);
    }

    #[test]
    fn holders_of_finds_a_child_with_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(&path, "").unwrap();
        assert!(holders_of(&path).is_empty());
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$0\"; exec sleep 30")
            .arg(&path)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let t0 = std::time::Instant::now();
        while !holders_of(&path).contains(&pid) && t0.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let found = holders_of(&path);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![pid]);
    }
}
