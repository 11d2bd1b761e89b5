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
    DENIED
        .iter()
        .map(|(n, _)| *n)
        .chain(["unshare (namespaces)", "clone (namespaces)", "clone3"])
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

/// Compiles the two filters: `EPERM` for the denied calls, and `ENOSYS`
/// for clone3 (its flags are behind a pointer that seccomp cannot read;
/// ENOSYS makes libc fall back to clone, whose flags it can).
pub fn compile() -> Result<[BpfProgram; 2], String> {
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
    ])
}

static COMPILED: OnceLock<Result<[BpfProgram; 2], String>> = OnceLock::new();

/// Compiles the filter in the zygote, so a launch only installs it.
pub fn precompile() {
    COMPILED.get_or_init(compile);
}

/// Installs the filter in this process (after `no_new_privs`).
pub fn install() -> Result<(), String> {
    let programs = COMPILED
        .get_or_init(compile)
        .as_ref()
        .map_err(|e| format!("seccomp filter: {e}"))?;
    for prog in programs {
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
    #[test]
    fn the_filter_compiles() {
        let [eperm, clone3] = super::compile().unwrap();
        assert!(eperm.len() > 40 && !clone3.is_empty());
        assert!(super::denied_names().any(|n| n == "keyctl"));
    }
}
