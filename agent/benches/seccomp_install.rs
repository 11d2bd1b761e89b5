//! What installing the seccomp filter costs a launch, and where the time
//! goes: the installed program against seccompiler's three, each of those
//! alone, linear chains of N rules, and a long chain that a first `ja`
//! jumps over (same length, short path: prices the kernel's copy, checks
//! and JIT apart from its per-syscall cache emulation). Each sample is one
//! install in a fresh forked child after no_new_privs, thread CPU time and
//! wall time; variants interleaved, a rotating first one each round. Root not
//! needed. Run: `cargo bench -p gleaner-agent --bench seccomp_install`
//! (ROUNDS, default 300).

#[path = "stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Instant;

use gleaner_agent::supervisor::seccomp::{self, install_program};
use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use stats::{fmt_interval, median_interval};

fn cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// (CPU µs, wall µs) of installing `programs` in a fresh child.
fn install_cost(programs: &[BpfProgram]) -> (f64, f64) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: single-threaded bench; the child makes system calls only.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        let (c0, t0) = (cpu_us(), Instant::now());
        let ok = programs.iter().all(|p| install_program(p).is_ok());
        let (c, t) = (cpu_us() - c0, t0.elapsed().as_secs_f64() * 1e6);
        let msg = if ok {
            format!("{c} {t}")
        } else {
            "failed".into()
        };
        // SAFETY: the write end of our pipe; then leave at once.
        unsafe {
            let mut w = std::fs::File::from_raw_fd(fds[1]);
            let _ = w.write_all(msg.as_bytes());
            libc::_exit(0)
        }
    }
    // SAFETY: our pipe's descriptors, each closed once.
    let mut r = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let (c, t) = s
        .split_once(' ')
        .unwrap_or_else(|| panic!("install failed: {s:?}"));
    (c.parse().unwrap(), t.parse().unwrap())
}

/// seccompiler's linear chain: `n` numbers (600.., past every x86_64
/// system call, so the child still runs) refused with EPERM.
fn chain(n: i64) -> BpfProgram {
    let rules = (600..600 + n)
        .map(|nr| (nr, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// `p` with a `ja` after its arch check straight to its last instruction
/// (seccompiler's `ret` of the default action): as long, a short path.
fn jumped_over(p: &BpfProgram) -> BpfProgram {
    let mut q = p[..3].to_vec();
    q.push(sock_filter {
        code: 0x05,
        jt: 0,
        jf: 0,
        k: (p.len() - 4) as u32,
    });
    q.extend_from_slice(&p[3..]);
    q
}

fn describe(v: &[f64]) -> String {
    fmt_interval(median_interval(v), 1)
}

/// Per-round differences a[i] - b[i].
fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    if !seccomp::available() {
        println!("seccomp filters unavailable: nothing to price");
        return;
    }
    let reference = seccomp::reference(&seccomp::policy()).unwrap();
    let installed = seccomp::compile().unwrap();
    let long = chain(128);
    let variants: Vec<(String, Vec<BpfProgram>)> = vec![
        ("none".into(), vec![]),
        (
            "seccompiler's 3 programs (before)".into(),
            reference.clone(),
        ),
        (
            "seccompiler EPERM chain alone".into(),
            vec![reference[0].clone()],
        ),
        (
            "seccompiler clone3 ENOSYS alone".into(),
            vec![reference[1].clone()],
        ),
        ("x32 check alone".into(), vec![reference[2].clone()]),
        ("binary search, 1 program (after)".into(), vec![installed]),
        ("linear chain, 8 rules".into(), vec![chain(8)]),
        ("linear chain, 32 rules".into(), vec![chain(32)]),
        ("linear chain, 64 rules".into(), vec![chain(64)]),
        ("linear chain, 128 rules".into(), vec![long.clone()]),
        (
            "linear chain, 128 rules, jumped over".into(),
            vec![jumped_over(&long)],
        ),
    ];
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load before: {}", loadavg().trim());
    let mut cpu = vec![Vec::with_capacity(rounds); variants.len()];
    let mut wall = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        // A rotating first variant, so no one variant always runs first.
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let (c, w) = install_cost(&variants[i].1);
            cpu[i].push(c);
            wall[i].push(w);
        }
    }
    println!("load after: {}", loadavg().trim());
    println!(
        "\n{rounds} rounds; µs, median [distribution-free 95 % interval]; \"added\": difference with \"none\" in the same round\n"
    );
    println!("| programs | instructions | CPU time | CPU added | wall | wall added |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, (name, progs)) in variants.iter().enumerate() {
        let insns: Vec<String> = progs.iter().map(|p| p.len().to_string()).collect();
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            if insns.is_empty() {
                "0".into()
            } else {
                insns.join(" + ")
            },
            describe(&cpu[i]),
            describe(&paired(&cpu[i], &cpu[0])),
            describe(&wall[i]),
            describe(&paired(&wall[i], &wall[0])),
        );
    }
    let after = median_interval(&paired(&cpu[5], &cpu[0])).0;
    println!("\ninstalled program adds {after:.1} µs CPU a launch (budget 200 µs)");
}
