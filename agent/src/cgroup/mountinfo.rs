//! Where each cgroup hierarchy is mounted, from /proc/self/mountinfo.

use std::path::PathBuf;

use super::{read_file, CgroupError};

#[derive(Debug, Clone, PartialEq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// `cgroup` (v1) or `cgroup2`.
    pub fstype: String,
    /// v1: the controllers in the super options (`cpu`, `cpuacct`, ...).
    pub controllers: Vec<String>,
}

/// v1 mount options that are not controller names.
const NOT_CONTROLLERS: [&str; 7] = [
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
];

pub fn cgroup_mounts() -> Result<Vec<CgroupMount>, CgroupError> {
    let text = read_file(std::path::Path::new("/proc/self/mountinfo"))?;
    Ok(parse(&text))
}

/// Parses mountinfo text, keeping cgroup and cgroup2 mounts.
pub fn parse(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut rf = right.split_whitespace();
        let (Some(fstype), Some(_source), Some(opts)) = (rf.next(), rf.next(), rf.next()) else {
            continue;
        };
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let controllers = if fstype == "cgroup" {
            opts.split(',')
                .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.contains('='))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape(mount_point)),
            fstype: fstype.to_owned(),
            controllers,
        });
    }
    out
}

/// One line of mountinfo, for code that walks mounts (the task's rootfs).
#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-mount options (`rw,nosuid,nodev,noexec,relatime`).
    pub mount_opts: String,
}

/// Every mount of the text.
pub fn parse_all(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut lf = left.split_whitespace();
            let mount_point = lf.nth(4)?;
            let mount_opts = lf.next()?;
            let fstype = right.split_whitespace().next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                mount_opts: mount_opts.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
39 33 0:34 / /sys/fs/cgroup/memory rw,nosuid shared:16 - cgroup cgroup rw,memory
40 33 0:35 / /sys/fs/cgroup/with\\040space rw shared:17 - cgroup cgroup rw,pids
";

    #[test]
    fn parses_every_mount_with_its_options() {
        let all = parse_all(SAMPLE);
        assert_eq!(all[0].mount_point, PathBuf::from("/sys"));
        assert_eq!(all[0].mount_opts, "rw,nosuid,nodev,noexec,relatime");
        assert_eq!(all[1].fstype, "tmpfs");
        assert!(all
            .iter()
            .any(|m| m.mount_point == std::path::Path::new("/sys/fs/cgroup/with space")));
    }

    #[test]
    fn finds_v1_controllers_and_v2_mount() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert!(m[1].controllers.is_empty(), "name= is not a controller");
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            m[2].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(m[4].mount_point, PathBuf::from("/sys/fs/cgroup/with space"));
    }
}
