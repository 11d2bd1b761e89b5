//! The installed program against seccompiler's reference programs, on a
//! classic-BPF interpreter that runs them the way the kernel does.

use proptest::prelude::*;
use seccompiler::sock_filter;

use super::{compile, policy, reference, ArgWidth, Rule, When, X32_SYSCALL_BIT};

const AUDIT_ARCH_X86_64: u32 = super::AUDIT_ARCH_X86_64;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const ARCHES: [u32; 4] = [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0];
const ALLOW: u32 = 0x7fff_0000;
const KILL_PROCESS: u32 = 0x8000_0000;
const fn errno(e: i32) -> u32 {
    0x0005_0000 | e as u32
}

/// What one run of a program did.
struct Run {
    verdict: u32,
    /// Instructions executed.
    steps: usize,
    /// Did it load a system call argument? (The kernel's action cache
    /// stops there: such a number is filtered on every call.)
    read_args: bool,
}

/// Runs one classic-BPF program on a `struct seccomp_data` (nr, arch, ip,
/// args), with the kernel's checks: jumps stay inside, loads are aligned.
fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> Run {
    let mut read_args = false;
    let mut word = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            16..=63 if off % 4 == 0 => {
                read_args = true;
                let a = args[(off as usize - 16) / 8];
                if off % 8 == 0 {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            _ => panic!("load at {off}"),
        }
    };
    let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        let i = &prog[pc];
        pc += 1;
        steps += 1;
        match i.code {
            0x20 => acc = word(i.k),    // ld w abs
            0x54 => acc &= i.k,         // alu and k
            0x05 => pc += i.k as usize, // ja
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match i.code {
                    0x15 => acc == i.k,
                    0x25 => acc > i.k,
                    0x35 => acc >= i.k,
                    _ => acc & i.k != 0,
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            0x06 => {
                return Run {
                    verdict: i.k,
                    steps,
                    read_args,
                }
            }
            c => panic!("opcode {c:#x}"),
        }
        assert!(pc < prog.len(), "jump out of the program at {pc}");
    }
}

/// Every program runs; the kernel keeps the most severe action.
fn verdict_of(programs: &[Vec<sock_filter>], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    programs
        .iter()
        .map(|p| run(p, nr, arch, args).verdict)
        .min_by_key(|r| (r & 0xffff_0000) as i32)
        .unwrap()
}

fn installed(nr: i64, arg0: u64) -> u32 {
    run(
        &compile().unwrap(),
        nr as u32,
        AUDIT_ARCH_X86_64,
        [arg0, 0, 0, 0, 0, 0],
    )
    .verdict
}

/// Argument patterns for the calls whose rules read arguments: none, all,
/// fork-like, every bit alone and with fork-like flags, every pair of bits.
fn flag_patterns() -> Vec<u64> {
    let fork_like = (libc::CLONE_VM | libc::CLONE_FS | libc::SIGCHLD) as u64;
    let mut out = vec![0, u64::MAX, fork_like, u32::MAX as u64, !(u32::MAX as u64)];
    for a in 0..64 {
        out.push(1 << a);
        out.push(fork_like | 1 << a);
        for b in a + 1..64 {
            out.push(1 << a | 1 << b);
        }
    }
    out
}

/// The two programs decide alike on every system call number 0..1024 and
/// its x32 twin, the edges of the number space, for x86_64, i386, another
/// arch and none; on every flag pattern where the rule reads flags.
fn assert_equal(rules: &[Rule]) {
    let reference = reference(rules).unwrap();
    let compact = super::compact::emit(rules).unwrap();
    let mut numbers: Vec<u32> = (0..1024)
        .chain((0..1024).map(|n| n | X32_SYSCALL_BIT))
        .collect();
    numbers.extend([
        0x3fff_ffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
    ]);
    let with_flags: Vec<u32> = rules
        .iter()
        .filter(|r| matches!(r.when, When::AnyFlag(..)))
        .flat_map(|r| [r.nr as u32, r.nr as u32 | X32_SYSCALL_BIT])
        .collect();
    let (plain, flags) = ([0, u64::MAX, 0x0100_0011], flag_patterns());
    let mut checked = 0;
    for &arch in &ARCHES {
        for &nr in &numbers {
            let patterns: &[u64] = if with_flags.contains(&nr) {
                &flags
            } else {
                &plain
            };
            for &arg0 in patterns {
                let args = [arg0, !arg0, 0, 0, 0, 0];
                let want = verdict_of(&reference, nr, arch, args);
                let got = run(&compact, nr, arch, args).verdict;
                assert_eq!(got, want, "nr {nr:#x} arch {arch:#x} arg0 {arg0:#x}");
                checked += 1;
            }
        }
    }
    assert!(checked > 4 * 2048);
}

#[test]
fn the_installed_program_equals_seccompilers() {
    assert_equal(&policy());
}

/// A policy long enough that a subtree is over 255 instructions (the
/// `ja` path), rules with flags in both argument words among them.
#[test]
fn a_long_policy_is_emitted_equal_too() {
    const HIGH: &[u64] = &[1 << 33, 1 << 3, 1 << 63];
    const LOW: &[u64] = &[1 << 5, 1 << 31];
    let rules: Vec<Rule> = (0..400)
        .map(|i| Rule {
            nr: i * 2 + 1,
            errno: [libc::EPERM, libc::EACCES, libc::ENOSYS][i as usize % 3],
            when: match i % 7 {
                0 => When::AnyFlag(ArgWidth::Qword, HIGH),
                1 => When::AnyFlag(ArgWidth::Dword, LOW),
                _ => When::Always,
            },
        })
        .collect();
    let compact = super::compact::emit(&rules).unwrap();
    assert!(
        compact.iter().any(|i| i.code == 0x05),
        "no long jump emitted"
    );
    assert_equal(&rules);
}

#[test]
fn bad_policies_are_refused() {
    let rule = |nr, when| Rule {
        nr,
        errno: libc::EPERM,
        when,
    };
    let dup = [rule(1, When::Always), rule(1, When::Always)];
    assert_eq!(
        super::compact::emit(&dup).unwrap_err().to_string(),
        "seccomp filter: system call 1 has two rules"
    );
    let x32 = [rule(i64::from(X32_SYSCALL_BIT) | 1, When::Always)];
    assert!(super::compact::emit(&x32).is_err());
    let two_bits = [rule(1, When::AnyFlag(ArgWidth::Qword, &[3]))];
    assert!(super::compact::emit(&two_bits).is_err());
    let wide = [rule(1, When::AnyFlag(ArgWidth::Dword, &[1 << 40]))];
    assert!(super::compact::emit(&wide).is_err());
}

/// The reason for the compact program: at install, the kernel runs a new
/// filter for each syscall number of each arch (up to the first argument
/// load) to build its allow cache. Counted here on the interpreter, for
/// x86_64 and i386 numbers 0..512 (both arches have ~460).
#[test]
fn the_kernels_install_time_emulation_is_short() {
    let work = |programs: &[Vec<sock_filter>]| -> (usize, usize) {
        let (mut total, mut longest) = (0, 0);
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
            for nr in 0..512 {
                // The kernel stops at the first program that does not allow.
                for p in programs {
                    let r = run(p, nr, arch, [0; 6]);
                    total += r.steps;
                    if !r.read_args && r.verdict == ALLOW {
                        longest = longest.max(r.steps);
                    } else {
                        break;
                    }
                }
            }
        }
        (total, longest)
    };
    let (before, before_longest) = work(&reference(&policy()).unwrap());
    let (after, after_longest) = work(&[compile().unwrap()]);
    eprintln!(
        "FIGURE cache emulation: {before} instructions (longest allowed path {before_longest}) \
         with seccompiler's programs, {after} ({after_longest}) with the installed one"
    );
    assert!(
        after_longest <= 20,
        "an allowed call runs {after_longest} instructions"
    );
    assert!(after * 4 < before, "{after} vs {before}");
}

proptest! {
    #[test]
    fn any_call_is_decided_alike(nr in any::<u32>(), arch in 0usize..4, args in any::<[u64; 6]>()) {
        let rules = policy();
        let want = verdict_of(&reference(&rules).unwrap(), nr, ARCHES[arch], args);
        prop_assert_eq!(run(&compile().unwrap(), nr, ARCHES[arch], args).verdict, want);
    }
}

#[test]
fn what_the_filter_decides() {
    assert_eq!(installed(libc::SYS_getpid, 0), ALLOW);
    assert_eq!(installed(libc::SYS_mount, 0), errno(libc::EPERM));
    assert_eq!(installed(libc::SYS_clone3, 0), errno(libc::ENOSYS));
    let fork_like = (libc::CLONE_VM | libc::SIGCHLD) as u64;
    assert_eq!(installed(libc::SYS_clone, fork_like), ALLOW);
    let userns = fork_like | libc::CLONE_NEWUSER as u64;
    assert_eq!(installed(libc::SYS_clone, userns), errno(libc::EPERM));
    assert_eq!(
        installed(libc::SYS_unshare, libc::CLONE_NEWNET as u64),
        errno(libc::EPERM)
    );
    assert_eq!(
        installed(libc::SYS_unshare, libc::CLONE_FILES as u64),
        ALLOW
    );
    // i386 through int 0x80: never allowed.
    let prog = compile().unwrap();
    assert_eq!(
        run(&prog, 21, AUDIT_ARCH_I386, [0; 6]).verdict,
        KILL_PROCESS
    );
}

#[test]
fn the_filter_compiles() {
    let programs = reference(&policy()).unwrap();
    assert_eq!(programs.len(), 3, "EPERM, ENOSYS, x32");
    assert!(programs[0].len() > 40 && programs.iter().all(|p| !p.is_empty()));
    assert!(super::denied_names().any(|n| n == "keyctl"));
    assert!(compile().unwrap().len() < programs.iter().map(Vec::len).sum::<usize>());
}

/// The x32 ABI shares the x86_64 audit arch; its numbers carry bit 30.
/// Where the kernel offers it (CONFIG_X86_X32), mount|X32_BIT is mount.
#[test]
fn x32_system_calls_do_not_pass() {
    for nr in [
        libc::SYS_mount,
        libc::SYS_unshare,
        libc::SYS_keyctl,
        libc::SYS_setns,
        libc::SYS_getpid,
    ] {
        let v = installed(nr | i64::from(X32_SYSCALL_BIT), libc::CLONE_NEWUSER as u64);
        assert_eq!(v, errno(libc::ENOSYS), "x32 syscall {nr} passed the filter");
    }
}

/// io_uring runs file and socket operations no filter sees, and is a
/// large kernel surface (Docker's default profile refuses it since 25).
#[test]
fn io_uring_is_refused() {
    for nr in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        assert_eq!(installed(nr, 0), errno(libc::EPERM), "{nr}");
    }
}

/// Thread CPU time (µs) and wall time (µs) of installing `programs` in a
/// fresh child (a launch's command process) after `no_new_privs`.
pub(super) fn install_cost(programs: &[Vec<sock_filter>]) -> (f64, f64) {
    let (mut r, w) = crate::supervisor::pipe().unwrap();
    // SAFETY: the child only makes system calls and writes a pipe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let cpu = || {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: writes the struct it is given.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
            };
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let (c0, t0) = (cpu(), std::time::Instant::now());
            for p in programs {
                super::install_program(p).unwrap();
            }
            let (c, t) = (cpu() - c0, t0.elapsed().as_secs_f64() * 1e6);
            let mut w = std::fs::File::from(w);
            let _ = std::io::Write::write_all(&mut w, format!("{c} {t}").as_bytes());
            // SAFETY: leave the forked test child at once.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut s = String::new();
            std::io::Read::read_to_string(&mut r, &mut s).unwrap();
            let _ = nix::sys::wait::waitpid(child, None);
            let (c, t) = s.split_once(' ').expect("the child died");
            (c.parse().unwrap(), t.parse().unwrap())
        }
    }
}

/// What the filter adds to a launch, in CPU time: the installed program
/// against seccompiler's three and none, interleaved in fresh children.
/// (bench `seccomp_install` prices more variants.)
#[test]
fn installing_the_filter_costs_microseconds() {
    super::precompile();
    let installed = vec![compile().unwrap()];
    let before = reference(&policy()).unwrap();
    let (mut after_cpu, mut before_cpu, mut none_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..200 {
        after_cpu.push(install_cost(&installed).0);
        before_cpu.push(install_cost(&before).0);
        none_cpu.push(install_cost(&[]).0);
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b, n) = (
        p50(&mut after_cpu),
        p50(&mut before_cpu),
        p50(&mut none_cpu),
    );
    eprintln!(
        "FIGURE seccomp install, CPU time p50 of 200: installed program +{:.1} us, \
         seccompiler's three +{:.1} us (none {n:.1} us)",
        a - n,
        b - n
    );
    assert!(
        a < b,
        "the compact program costs {a:.1} us, the reference {b:.1} us"
    );
    // The budget is 200 us on a quiet host; a loaded one is slower.
    assert!(a - n < 2000.0, "the filter costs {:.1} us", a - n);
}
