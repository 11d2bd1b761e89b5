//! The seccomp filter every task's command runs under (Docker's default
//! profile is the reference): the system calls that administer the host or
//! escape a sandbox fail with `EPERM`; everything else is allowed. The
//! process is not killed, so programs that probe for a feature carry on.
//!
//! The filter is compiled by `seccompiler` (no hand-written BPF), once per
//! zygote ([`precompile`]: supervisors and commands are its forks), and
//! installed with `prctl(PR_SET_SECCOMP)`, which 3.10 kernels have (the
//! `seccomp(2)` call is 3.17+).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Refused outright.
const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    // Gone since 2.6 (ENOSYS anyway): create_module 174, get_kernel_syms
    // 177, query_module 178.
    ("create_module", 174),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("vhangup", libc::SYS_vhangup),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    // The new mount API (5.2+).
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    // io_uring runs file and socket operations that no filter sees; Docker
    // refuses it too (since 25.0). Programs fall back to plain calls.
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// Namespace flags refused in `unshare` (all of them) and `clone` (all but
/// CLONE_NEWTIME, whose bit is part of clone's exit-signal byte).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

/// Names of the refused system calls (for documentation and tests).
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(n, _)| *n).chain([
        "unshare (namespaces)",
        "clone (namespaces)",
        "clone3",
        "x32 ABI (all)",
    ])
}

/// Bit 30 of the system call number marks the x32 ABI, which shares the
/// x86_64 audit arch: a filter keyed on x86_64 numbers lets `mount | bit`
/// through wherever the kernel has CONFIG_X86_X32. Every x32 call gets
/// `ENOSYS`. Four instructions that `seccompiler` cannot express (it
/// matches numbers, not ranges); other arches are killed by its filters.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

fn any_flag(arg_len: SeccompCmpArgLen, flags: &[u64]) -> Result<Vec<SeccompRule>, String> {
    flags
        .iter()
        .map(|&f| {
            let cond = SeccompCondition::new(0, arg_len.clone(), SeccompCmpOp::MaskedEq(f), f)
                .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect()
}

/// Compiles the three filters: `EPERM` for the denied calls, `ENOSYS` for
/// clone3 (its flags are behind a pointer that seccomp cannot read; ENOSYS
/// makes libc fall back to clone, whose flags it can) and for x32 calls.
pub fn compile() -> Result<[BpfProgram; 3], String> {
    let arch = TargetArch::x86_64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let mut unshare_flags = NAMESPACE_FLAGS.to_vec();
    unshare_flags.push(CLONE_NEWTIME);
    rules.insert(
        libc::SYS_unshare,
        any_flag(SeccompCmpArgLen::Dword, &unshare_flags)?,
    );
    rules.insert(
        libc::SYS_clone,
        any_flag(SeccompCmpArgLen::Qword, NAMESPACE_FLAGS)?,
    );
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    Ok([
        eperm
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        clone3
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        x32_filter(),
    ])
}

static COMPILED: OnceLock<Result<[BpfProgram; 3], String>> = OnceLock::new();

/// Compiles the filter in the zygote, so a launch only installs it.
pub fn precompile() {
    COMPILED.get_or_init(compile);
}

/// Installs the filter in this process (after `no_new_privs`).
pub fn install() -> Result<(), String> {
    install_only(usize::MAX)
}

/// Installs the first `n` programs (a test prices them one by one).
fn install_only(n: usize) -> Result<(), String> {
    let programs = COMPILED
        .get_or_init(compile)
        .as_ref()
        .map_err(|e| format!("seccomp filter: {e}"))?;
    for prog in programs.iter().take(n) {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program; `fprog` outlives the call.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Does the kernel take seccomp filters? A NULL program is refused with
/// EFAULT where it does, EINVAL where it does not; nothing is installed.
pub fn available() -> bool {
    // SAFETY: a prctl whose pointer argument the kernel rejects before use.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use seccompiler::sock_filter;

    /// What the filter adds to a launch: installing the precompiled
    /// programs in a fresh child (the command's process), against the same
    /// child without them. Prints the figure (bench/RESULTS.md).
    #[test]
    fn installing_the_filter_costs_microseconds() {
        super::precompile();
        let run = |filters: usize| -> f64 {
            let (mut r, w) = crate::supervisor::pipe().unwrap();
            // SAFETY: the child only makes system calls and writes a pipe.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let t = std::time::Instant::now();
                    // SAFETY: prctl with integer arguments.
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                    super::install_only(filters).unwrap();
                    let us = t.elapsed().as_secs_f64() * 1e6;
                    let mut w = std::fs::File::from(w);
                    let _ = std::io::Write::write_all(&mut w, us.to_string().as_bytes());
                    // SAFETY: leave the forked test child at once.
                    unsafe { libc::_exit(0) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    drop(w);
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut r, &mut s).unwrap();
                    let _ = nix::sys::wait::waitpid(child, None);
                    s.parse().unwrap()
                }
            }
        };
        let (mut all, mut one, mut none) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..200 {
            all.push(run(usize::MAX));
            one.push(run(1));
            none.push(run(0));
        }
        for v in [&mut all, &mut one, &mut none] {
            v.sort_by(f64::total_cmp);
        }
        let (a, o, n) = (all[100], one[100], none[100]);
        eprintln!("FIGURE seccomp install p50 {a:.1} us (main program alone {o:.1} us, none {n:.1} us): +{:.1} us a launch", a - n);
        // The budget is 200 us on a quiet host; a loaded one is slower.
        assert!(a - n < 2000.0, "the filter costs {:.1} us", a - n);
    }

    #[test]
    fn the_filter_compiles() {
        let programs = super::compile().unwrap();
        assert!(programs[0].len() > 40 && programs.iter().all(|p| !p.is_empty()));
        assert!(super::denied_names().any(|n| n == "keyctl"));
    }

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const X32_BIT: i64 = 0x4000_0000;
    const ALLOW: u32 = 0x7fff_0000;
    const KILL_PROCESS: u32 = 0x8000_0000;
    const fn errno(e: i32) -> u32 {
        0x0005_0000 | e as u32
    }

    /// Runs one classic-BPF program the way the kernel does, on a
    /// `struct seccomp_data` (nr, arch, ip, args).
    fn run(prog: &[sock_filter], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr as u32,
                4 => arch,
                16..=63 => {
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
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
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
                0x06 => return i.k, // ret k
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// Every filter runs; the kernel keeps the most severe action.
    fn verdict(nr: i64, arch: u32, args: [u64; 6]) -> u32 {
        super::compile()
            .unwrap()
            .iter()
            .map(|p| run(p, nr, arch, args))
            .min_by_key(|r| (r & 0xffff_0000) as i32)
            .unwrap()
    }

    fn x86_64(nr: i64, arg0: u64) -> u32 {
        verdict(nr, AUDIT_ARCH_X86_64, [arg0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn what_the_filter_decides() {
        assert_eq!(x86_64(libc::SYS_getpid, 0), ALLOW);
        assert_eq!(x86_64(libc::SYS_mount, 0), errno(libc::EPERM));
        assert_eq!(x86_64(libc::SYS_clone3, 0), errno(libc::ENOSYS));
        let fork_like = (libc::CLONE_VM | libc::SIGCHLD) as u64;
        assert_eq!(x86_64(libc::SYS_clone, fork_like), ALLOW);
        let userns = fork_like | libc::CLONE_NEWUSER as u64;
        assert_eq!(x86_64(libc::SYS_clone, userns), errno(libc::EPERM));
        assert_eq!(
            x86_64(libc::SYS_unshare, libc::CLONE_NEWNET as u64),
            errno(libc::EPERM)
        );
        // i386 through int 0x80: never allowed.
        assert_eq!(verdict(21, AUDIT_ARCH_I386, [0; 6]), KILL_PROCESS);
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
            let v = x86_64(nr | X32_BIT, libc::CLONE_NEWUSER as u64);
            assert_ne!(v, ALLOW, "x32 syscall {nr} passed the filter");
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
            assert_eq!(x86_64(nr, 0), errno(libc::EPERM), "{nr}");
        }
    }
}
