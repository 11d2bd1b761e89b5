//! The seccomp filter every task's command runs under (Docker's default
//! profile is the reference): the system calls that administer the host or
//! escape a sandbox fail with `EPERM`; everything else is allowed. The
//! process is not killed, so programs that probe for a feature carry on.
//!
//! The policy is one table ([`policy`]). `seccompiler` compiles it into the
//! reference programs ([`reference`]: one linear chain per errno, plus the
//! x32 check it cannot express); what a task gets is the same table emitted
//! as one binary-search program ([`compact`]), which a unit test proves
//! equal to the reference on every system call number, arch and flag
//! pattern. Why: since 5.11 the kernel, at install, runs a new filter once
//! per syscall number of each arch to build its allow cache, so a linear
//! chain of ~60 rules cost ~0.2 ms a launch (bench/RESULTS.md, issue 12).
//!
//! Compiled once per zygote ([`precompile`]: supervisors and commands are
//! its forks) and installed with `prctl(PR_SET_SECCOMP)`, which 3.10
//! kernels have (the `seccomp(2)` call is 3.17+).

mod compact;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter: seccompiler: {0}")]
    Seccompiler(String),
    #[error("seccomp filter: system call {0} has two rules")]
    DuplicateRule(i64),
    #[error("seccomp filter: system call {0} is not an x86_64 number")]
    BadNumber(i64),
    #[error(
        "seccomp filter: system call {nr}: flag {flag:#x} is not one bit of a {width}-bit argument"
    )]
    BadFlag { nr: i64, flag: u64, width: u32 },
    #[error("seccomp filter: {0} instructions, over the kernel's 4096")]
    TooLong(usize),
    #[error("seccomp: install: {0}")]
    Install(String),
}

/// Refused outright.
pub(crate) const DENIED: &[(&str, i64)] = &[
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
const CLONE_NAMESPACES: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];
const CLONE_NEWTIME: u64 = 0x80;
const UNSHARE_NAMESPACES: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    CLONE_NEWTIME,
];

/// Bit 30 of the system call number marks the x32 ABI, which shares the
/// x86_64 audit arch: a filter keyed on x86_64 numbers lets `mount | bit`
/// through wherever the kernel has CONFIG_X86_X32. Every x32 call (every
/// number from this bit up) gets `ENOSYS`.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// How much of argument 0 a flag test reads (seccompiler's terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgWidth {
    Dword,
    Qword,
}

/// When a rule's system call is refused.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    /// Argument 0 has any of these (one-bit) flags.
    AnyFlag(ArgWidth, &'static [u64]),
}

/// One line of the policy: `nr` fails with `errno` when `when` holds.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub nr: i64,
    pub errno: i32,
    pub when: When,
}

/// The whole policy, besides "x32 calls get ENOSYS" and "other arches are
/// killed" (the frame of every program).
pub fn policy() -> Vec<Rule> {
    let eperm = |nr, when| Rule {
        nr,
        errno: libc::EPERM,
        when,
    };
    let mut rules: Vec<Rule> = DENIED
        .iter()
        .map(|&(_, nr)| eperm(nr, When::Always))
        .collect();
    rules.push(eperm(
        libc::SYS_unshare,
        When::AnyFlag(ArgWidth::Dword, UNSHARE_NAMESPACES),
    ));
    rules.push(eperm(
        libc::SYS_clone,
        When::AnyFlag(ArgWidth::Qword, CLONE_NAMESPACES),
    ));
    // clone3's flags are behind a pointer that seccomp cannot read: ENOSYS
    // makes libc fall back to clone, whose flags it can.
    rules.push(Rule {
        nr: libc::SYS_clone3,
        errno: libc::ENOSYS,
        when: When::Always,
    });
    rules
}

/// Names of the refused system calls (for documentation and tests).
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(n, _)| *n).chain([
        "unshare (namespaces)",
        "clone (namespaces)",
        "clone3",
        "x32 ABI (all)",
    ])
}

/// The x32 check as its own program: four instructions that `seccompiler`
/// cannot express (it matches numbers, not ranges); other arches are
/// killed by its filters.
fn x32_filter() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
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

fn seccompiler_rules(rule: &Rule) -> Result<Vec<SeccompRule>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError::Seccompiler(e.to_string());
    match rule.when {
        When::Always => Ok(Vec::new()),
        When::AnyFlag(width, flags) => flags
            .iter()
            .map(|&f| {
                let len = match width {
                    ArgWidth::Dword => SeccompCmpArgLen::Dword,
                    ArgWidth::Qword => SeccompCmpArgLen::Qword,
                };
                let cond =
                    SeccompCondition::new(0, len, SeccompCmpOp::MaskedEq(f), f).map_err(err)?;
                SeccompRule::new(vec![cond]).map_err(err)
            })
            .collect(),
    }
}

/// The policy as `seccompiler` compiles it: one program per errno (a
/// linear chain of its rules), then the x32 program. The definition the
/// installed program is tested against.
pub fn reference(rules: &[Rule]) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let chain = by_errno.entry(rule.errno).or_default();
        if chain.insert(rule.nr, seccompiler_rules(rule)?).is_some() {
            return Err(SeccompError::DuplicateRule(rule.nr));
        }
    }
    let mut programs = Vec::new();
    for (errno, chain) in by_errno {
        let filter = SeccompFilter::new(
            chain,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Seccompiler(e.to_string()))?;
        programs.push(
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SeccompError::Seccompiler(e.to_string()))?,
        );
    }
    programs.push(x32_filter());
    Ok(programs)
}

/// The program a task gets: the policy, one program, a binary search over
/// the system call numbers ([`compact`]).
pub fn compile() -> Result<BpfProgram, SeccompError> {
    compact::emit(&policy())
}

static COMPILED: OnceLock<Result<BpfProgram, SeccompError>> = OnceLock::new();

/// Compiles the filter in the zygote, so a launch only installs it.
pub fn precompile() {
    COMPILED.get_or_init(compile);
}

/// Installs the filter in this process (after `no_new_privs`).
pub fn install() -> Result<(), SeccompError> {
    let program = COMPILED
        .get_or_init(compile)
        .as_ref()
        .map_err(Clone::clone)?;
    install_program(program)
}

/// Installs one program in this process (benches price others with it).
pub fn install_program(program: &[sock_filter]) -> Result<(), SeccompError> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| SeccompError::TooLong(program.len()))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
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
        return Err(SeccompError::Install(
            std::io::Error::last_os_error().to_string(),
        ));
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
