//! The policy as one classic-BPF program: the arch and x32 checks, then a
//! binary search over the sorted system call numbers, a short `jeq` chain
//! at each leaf. An allowed call runs ~15 instructions, not the ~120 of
//! seccompiler's linear chain; that matters at install, where the kernel
//! (5.11+) runs the program once per syscall number to build its cache.
//! Pure: rules in, instructions out; `tests.rs` proves it equal to
//! [`super::reference`].

use seccompiler::{sock_filter, BpfProgram};

use super::{ArgWidth, Rule, SeccompError, When, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in `struct seccomp_data` (little endian: an argument's low word
// comes first).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG0_HIGH: u32 = 20;

/// The kernel's BPF_MAXINSNS.
const MAX_LEN: usize = 4096;
/// Rules below which a `jeq` chain beats another level of search.
const LEAF: usize = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// One program for `rules`: other arches are killed, x32 calls get ENOSYS
/// (both as in [`super::reference`]), the rest follows the rules.
pub fn emit(rules: &[Rule]) -> Result<BpfProgram, SeccompError> {
    let mut sorted = rules.to_vec();
    sorted.sort_by_key(|r| r.nr);
    if let Some(w) = sorted.windows(2).find(|w| w[0].nr == w[1].nr) {
        return Err(SeccompError::DuplicateRule(w[0].nr));
    }
    if let Some(r) = sorted
        .iter()
        .find(|r| !(0..i64::from(X32_SYSCALL_BIT)).contains(&r.nr))
    {
        return Err(SeccompError::BadNumber(r.nr));
    }
    let mut prog = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, errno(libc::ENOSYS)),
    ];
    prog.extend(search(&sorted)?);
    if prog.len() > MAX_LEN {
        return Err(SeccompError::TooLong(prog.len()));
    }
    Ok(prog)
}

/// A subtree for `rules` (sorted, distinct); the accumulator holds the
/// number; every path ends in a `ret`.
fn search(rules: &[Rule]) -> Result<Vec<sock_filter>, SeccompError> {
    if rules.len() <= LEAF {
        let mut out = Vec::new();
        for rule in rules {
            let body = on_match(rule)?;
            // A body is at most 7 instructions.
            out.push(jump(JEQ_K, rule.nr as u32, 0, body.len() as u8));
            out.extend(body);
        }
        out.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
        return Ok(out);
    }
    let mid = rules.len() / 2;
    let (low, high) = (search(&rules[..mid])?, search(&rules[mid..])?);
    let pivot = rules[mid].nr as u32;
    let mut out = Vec::with_capacity(low.len() + high.len() + 2);
    match u8::try_from(low.len()) {
        Ok(skip) => out.push(jump(JGE_K, pivot, skip, 0)),
        // Conditional jumps reach 255 ahead; `ja` reaches anywhere.
        Err(_) => {
            out.push(jump(JGE_K, pivot, 0, 1));
            out.push(stmt(JA, low.len() as u32));
        }
    }
    out.extend(low);
    out.extend(high);
    Ok(out)
}

/// What runs once the number matched: the verdict, after the flag tests.
fn on_match(rule: &Rule) -> Result<Vec<sock_filter>, SeccompError> {
    let refuse = stmt(RET_K, errno(rule.errno));
    let (width, flags) = match rule.when {
        When::Always => return Ok(vec![refuse]),
        When::AnyFlag(width, flags) => (width, flags),
    };
    let bits = match width {
        ArgWidth::Dword => 32,
        ArgWidth::Qword => 64,
    };
    let mut mask = 0u64;
    for &flag in flags {
        // seccompiler's test is "all bits of the flag": for one bit, "any
        // flag" is one `jset` over their union.
        if flag.count_ones() != 1 || flag.trailing_zeros() >= bits {
            return Err(SeccompError::BadFlag {
                nr: rule.nr,
                flag,
                width: bits,
            });
        }
        mask |= flag;
    }
    let mut out = Vec::new();
    for (offset, word) in [(ARG0_LOW, mask as u32), (ARG0_HIGH, (mask >> 32) as u32)] {
        if word != 0 {
            out.push(stmt(LD_W_ABS, offset));
            out.push(jump(JSET_K, word, 0, 1));
            out.push(refuse.clone());
        }
    }
    out.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    Ok(out)
}
