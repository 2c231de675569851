//! seccomp, the parent's side: the policy's deny rules compiled into BPF
//! programs (with `seccompiler`) before the clone, and the handoff's
//! hand-assembled accept-notification program.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use super::{ArgCondition, DenyRule, SeccompError, errno_number, syscall_number, validate};

/// The compiled filters, in the order the payload loads them.
pub type Programs = Vec<BpfProgram>;

/// Compile the rules for the architecture this binary runs on.
pub fn programs(rules: &[DenyRule]) -> Result<Programs, SeccompError> {
    validate(rules)?;
    let arch = native_arch()?;
    // errno -> syscall -> rules (an empty rule list would deny unconditionally).
    let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    let mut unconditional: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (i, r) in rules.iter().enumerate() {
        let errno = errno_number(&r.errno).unwrap_or(libc::EPERM) as u32;
        let alternatives = conditions(i, &r.args)?;
        for name in &r.syscalls {
            let nr = syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall { rule: i, name: name.clone() })?;
            if alternatives.is_empty() {
                unconditional.entry(errno).or_default().push(nr);
                continue;
            }
            let entry = by_errno.entry(errno).or_default().entry(nr).or_default();
            for conds in &alternatives {
                entry.push(SeccompRule::new(conds.clone()).map_err(|e| SeccompError::Compile(e.to_string()))?);
            }
        }
    }
    // A syscall denied unconditionally must not also carry conditions (that would
    // narrow it to the conditions): the unconditional rule wins.
    for (errno, nrs) in &unconditional {
        let map = by_errno.entry(*errno).or_default();
        for nr in nrs {
            map.insert(*nr, Vec::new());
        }
    }
    let mut programs = vec![arch_guard()];
    for (errno, map) in by_errno {
        let calls: Vec<u32> = map.keys().map(|&nr| nr as u32).collect();
        let filter =
            SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno), arch).map_err(|e| SeccompError::Compile(e.to_string()))?;
        let program = BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))?;
        programs.push(with_fast_path(program, &calls));
    }
    Ok(programs)
}

/// Where a fast-path jump goes before its offset is known.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Skip(usize),
    /// The compiled program itself, right after the fast path.
    Program,
}

/// `program` (which has rules only for the native `calls`) behind a binary
/// search of `calls`: any other native call is allowed after about log2 of
/// them comparisons instead of after the program's linear chain. That is what
/// every call of the payload pays, and what the kernel pays when it loads the
/// filter (it runs the filter on every syscall number to cache the allowed
/// ones): loading the default rules took 0.2 ms of each launch. Another
/// architecture, or a call with rules, goes on to the program unchanged.
/// Left out (the program as it is) when the search would not fit the 8-bit
/// jump offsets, or the whole the kernel's 4096 instructions.
fn with_fast_path(program: BpfProgram, calls: &[u32]) -> BpfProgram {
    const BPF_MAXINSNS: usize = 4096;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JGE_K: u16 = 0x05 | 0x30;
    const RET_K: u16 = 0x06;
    fn search(calls: &[u32], out: &mut Vec<(u16, u32, Target, Target)>) {
        if calls.len() <= 4 {
            for &nr in calls {
                out.push((JEQ_K, nr, Target::Program, Target::Next));
            }
            out.push((RET_K, libc::SECCOMP_RET_ALLOW, Target::Next, Target::Next));
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let mut left = Vec::new();
        search(low, &mut left);
        out.push((JGE_K, high[0], Target::Skip(left.len()), Target::Next));
        out.extend(left);
        search(high, out);
    }
    let native = if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 };
    let mut sorted = calls.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut prefix =
        vec![(LD_W_ABS, 4, Target::Next, Target::Next), (JEQ_K, native, Target::Next, Target::Program), (LD_W_ABS, 0, Target::Next, Target::Next)];
    search(&sorted, &mut prefix);
    let len = prefix.len();
    if len + program.len() > BPF_MAXINSNS {
        return program;
    }
    let offset = |at: usize, t: Target| -> Option<u8> {
        match t {
            Target::Next => Some(0),
            Target::Skip(n) => u8::try_from(n).ok(),
            Target::Program => u8::try_from(len - at - 1).ok(),
        }
    };
    let mut out = Vec::with_capacity(len + program.len());
    for (at, (code, k, jt, jf)) in prefix.into_iter().enumerate() {
        match (offset(at, jt), offset(at, jf)) {
            (Some(jt), Some(jf)) => out.push(jump(code, k, jt, jf)),
            _ => return program,
        }
    }
    out.extend(program);
    out
}

/// The argument conditions as alternatives (OR) of condition lists (AND).
pub(super) fn conditions(rule: usize, args: &[ArgCondition]) -> Result<Vec<Vec<SeccompCondition>>, SeccompError> {
    let bad = |message: String| SeccompError::BadCondition { rule, message };
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let mut fixed = Vec::new();
    let mut any_bits: Option<(u8, u64)> = None;
    for a in args {
        if a.arg > 5 {
            return Err(bad(format!("arg {} is out of range (0-5)", a.arg)));
        }
        let op = match a.op.as_str() {
            "eq" => SeccompCmpOp::Eq,
            "ne" => SeccompCmpOp::Ne,
            "lt" => SeccompCmpOp::Lt,
            "le" => SeccompCmpOp::Le,
            "gt" => SeccompCmpOp::Gt,
            "ge" => SeccompCmpOp::Ge,
            "masked_eq" => SeccompCmpOp::MaskedEq(a.mask.ok_or_else(|| bad("masked_eq needs a mask".into()))?),
            "any_bits" => {
                if any_bits.replace((a.arg, a.value)).is_some() {
                    return Err(bad("at most one any_bits condition per rule".into()));
                }
                if a.value == 0 {
                    return Err(bad("any_bits needs a non-zero value".into()));
                }
                continue;
            }
            other => return Err(bad(format!("unknown op {other:?} (eq, ne, lt, le, gt, ge, masked_eq, any_bits)"))),
        };
        if a.value > u64::from(u32::MAX) {
            return Err(bad(format!("value {:#x} is wider than 32 bits", a.value)));
        }
        // Arguments are compared on their low 32 bits: the kernel truncates the
        // int-sized arguments these rules look at, so high bits cannot bypass them.
        fixed.push(SeccompCondition::new(a.arg, SeccompCmpArgLen::Dword, op, a.value).map_err(|e| bad(e.to_string()))?);
    }
    match any_bits {
        None => Ok(vec![fixed]),
        Some((arg, bits)) => (0..64)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(|b| {
                let bit = 1u64 << b;
                let mut c = fixed.clone();
                c.push(SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bit), bit).map_err(|e| bad(e.to_string()))?);
                Ok(c)
            })
            .collect(),
    }
}

fn native_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(SeccompError::Compile(format!("unsupported architecture {other}"))),
    }
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

/// Kill on any foreign architecture; refuse x32 system calls on x86_64.
fn arch_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let native = if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 };
    let mut p = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, native, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if native == AUDIT_ARCH_X86_64 {
        p.extend([
            stmt(LD_W_ABS, 0), // seccomp_data.nr
            jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ]);
    }
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    p
}

/// The socket-handoff filter (see `crate::net::handoff`): every `accept`/`accept4`
/// and `listen` becomes a user notification for the launcher, and TCP Fast Open as a client
/// is refused (`MSG_FASTOPEN` on `sendto`/`sendmsg`/`sendmmsg`, the
/// `TCP_FASTOPEN_CONNECT` option): a handed-off host socket that the payload
/// disconnects and points elsewhere must not carry data in a SYN. Only argument
/// registers are inspected, so nothing here can race. Foreign architectures are
/// left to the guard.
///
/// io_uring is refused here too (EPERM, as the default policy's list), whatever
/// the policy allows: its operations (accept, listen, send with
/// `MSG_FASTOPEN`, setsockopt) are made by the kernel, not by system calls,
/// so no filter would see them, and an accept through it took the launcher's
/// placeholder instead of its host client.
pub fn accept_notify_program() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JSET_K: u16 = 0x05 | 0x40;
    const RET_K: u16 = 0x06;
    const TCP_FASTOPEN_CONNECT: u32 = 30;
    // Offsets in seccomp_data: nr 0, arch 4, args[i] at 16 + 8i (low word first
    // on the little-endian targets this supports).
    let arg = |i: u32| 16 + 8 * i;
    let native = if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 };
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let deny = libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32;
    let allow = libc::SECCOMP_RET_ALLOW;
    let fastopen = libc::MSG_FASTOPEN as u32;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    vec![
        /* 0 */ stmt(LD_W_ABS, 4),
        /* 1 */ jump(JEQ_K, native, 0, 11), // -> 13 allow
        /* 2 */ stmt(LD_W_ABS, 0),
        /* 3 */ jump(JEQ_K, libc::SYS_accept as u32, 10, 0), // -> 14 notify
        /* 4 */ jump(JEQ_K, libc::SYS_accept4 as u32, 9, 0), // -> 14 notify
        /* 5 */ jump(JEQ_K, libc::SYS_listen as u32, 8, 0), // -> 14 notify
        /* 6 */ jump(JEQ_K, libc::SYS_sendto as u32, 8, 0), // -> 15 flags in arg 3
        /* 7 */ jump(JEQ_K, libc::SYS_sendmmsg as u32, 7, 0), // -> 15 flags in arg 3
        /* 8 */ jump(JEQ_K, libc::SYS_sendmsg as u32, 9, 0), // -> 18 flags in arg 2
        /* 9 */ jump(JEQ_K, libc::SYS_setsockopt as u32, 11, 0), // -> 21
        /* 10 */ jump(JEQ_K, libc::SYS_io_uring_setup as u32, 16, 0), // -> 27 EPERM
        /* 11 */ jump(JEQ_K, libc::SYS_io_uring_enter as u32, 15, 0), // -> 27 EPERM
        /* 12 */ jump(JEQ_K, libc::SYS_io_uring_register as u32, 14, 0), // -> 27 EPERM
        /* 13 */ stmt(RET_K, allow),
        /* 14 */ stmt(RET_K, notify),
        /* 15 */ stmt(LD_W_ABS, arg(3)),
        /* 16 */ jump(JSET_K, fastopen, 9, 0), // -> 26 deny
        /* 17 */ stmt(RET_K, allow),
        /* 18 */ stmt(LD_W_ABS, arg(2)),
        /* 19 */ jump(JSET_K, fastopen, 6, 0), // -> 26 deny
        /* 20 */ stmt(RET_K, allow),
        /* 21 */ stmt(LD_W_ABS, arg(1)),
        /* 22 */ jump(JEQ_K, libc::IPPROTO_TCP as u32, 0, 2), // -> 25 allow
        /* 23 */ stmt(LD_W_ABS, arg(2)),
        /* 24 */ jump(JEQ_K, TCP_FASTOPEN_CONNECT, 1, 0), // -> 26 deny
        /* 25 */ stmt(RET_K, allow),
        /* 26 */ stmt(RET_K, deny),
        /* 27 */ stmt(RET_K, eperm),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::seccomp::*;

    fn rule(syscalls: &[&str], args: Vec<ArgCondition>) -> DenyRule {
        DenyRule { syscalls: syscalls.iter().map(|s| s.to_string()).collect(), args, errno: "EPERM".into(), reason: "test".into() }
    }

    /// Run a classic-BPF seccomp program (the instructions the hand-assembled
    /// programs use) on a native call `nr` with `args`.
    fn run(program: &[seccompiler::sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        let native = if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 };
        let word = |off: u32| -> u32 {
            match off {
                0 => nr as u32,
                4 => native,
                o if o >= 16 => {
                    let a = args[((o - 16) / 8) as usize];
                    if (o - 16) % 8 == 0 { a as u32 } else { (a >> 32) as u32 }
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            pc += 1;
            let branch = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                0x20 => acc = word(i.k),
                0x06 => return i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += branch(acc == i.k),
                0x25 => pc += branch(acc > i.k),
                0x35 => pc += branch(acc >= i.k),
                0x45 => pc += branch(acc & i.k != 0),
                0x54 => acc &= i.k,
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    /// The programs as seccompiler alone makes them (no fast path).
    fn plain_programs(rules: &[DenyRule]) -> Vec<BpfProgram> {
        let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            let alternatives = conditions(i, &r.args).unwrap();
            for name in &r.syscalls {
                let rules = by_errno
                    .entry(errno_number(&r.errno).unwrap_or(libc::EPERM) as u32)
                    .or_default()
                    .entry(syscall_number(name).unwrap())
                    .or_default();
                rules.extend(alternatives.iter().map(|c| SeccompRule::new(c.clone()).unwrap()));
            }
        }
        by_errno
            .into_iter()
            .map(|(errno, map)| {
                let f = SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno), native_arch().unwrap()).unwrap();
                BpfProgram::try_from(f).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_fast_path_decides_every_call_as_the_program_behind_it_does() {
        let rules = crate::policy::Policy::builtin().seccomp.deny;
        let fast = programs(&rules).unwrap();
        let plain = plain_programs(&rules);
        assert_eq!(fast.len(), plain.len() + 1);
        // Argument values that hit and miss each default condition.
        let mut values: Vec<u64> = vec![0, 1, 2, 10, 16, 0x5412, 0x5437, u64::MAX, 0xffff_ffff, 0x1_0000_0000];
        values.extend((0..32).map(|b| 1u64 << b));
        values.push(0x7E02_0000);
        let mut checked = 0;
        for (fast, plain) in fast[1..].iter().zip(&plain) {
            assert!(fast.len() > plain.len(), "the fast path is in front");
            for nr in (0..1024).chain([X32_SYSCALL_BIT as i64, X32_SYSCALL_BIT as i64 + 1, u32::MAX as i64]) {
                for &v in &values {
                    for arg in 0..6 {
                        let mut args = [0u64; 6];
                        args[arg] = v;
                        assert_eq!(run(fast, nr, args), run(plain, nr, args), "nr {nr} arg {arg} = {v:#x}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000);
        // And it is short for a call without rules: arch, nr, a few comparisons.
        let steps = |p: &[seccompiler::sock_filter]| p.iter().position(|i| i.code == 0x06).unwrap_or(p.len());
        assert!(steps(&fast[1]) < 20, "the first return comes after {} instructions", steps(&fast[1]));
    }

    #[test]
    fn a_search_too_long_for_8_bit_jumps_leaves_the_program_as_it_is() {
        let calls: Vec<u32> = (0..400).collect();
        let program = vec![stmt(0x06, libc::SECCOMP_RET_ALLOW)];
        assert_eq!(with_fast_path(program.clone(), &calls).len(), 1);
        assert!(with_fast_path(program, &calls[..60]).len() > 60);
        let long = vec![stmt(0x06, libc::SECCOMP_RET_ALLOW); 4090];
        assert_eq!(with_fast_path(long, &calls[..60]).len(), 4090, "over the kernel's limit");
    }

    #[test]
    fn the_accept_notify_program_notifies_accepts_and_refuses_io_uring_and_fast_open() {
        let p = accept_notify_program();
        let (notify, allow) = (libc::SECCOMP_RET_USER_NOTIF, libc::SECCOMP_RET_ALLOW);
        let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
        for nr in [libc::SYS_accept, libc::SYS_accept4, libc::SYS_listen] {
            assert_eq!(run(&p, nr, [0; 6]), notify, "{nr}");
        }
        for nr in [libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register] {
            assert_eq!(run(&p, nr, [0; 6]), errno(libc::EPERM), "{nr}");
        }
        let fastopen = libc::MSG_FASTOPEN as u64;
        assert_eq!(run(&p, libc::SYS_sendto, [0, 0, 0, fastopen, 0, 0]), errno(libc::EOPNOTSUPP));
        assert_eq!(run(&p, libc::SYS_sendmmsg, [0, 0, 0, fastopen, 0, 0]), errno(libc::EOPNOTSUPP));
        assert_eq!(run(&p, libc::SYS_sendmsg, [0, 0, fastopen, 0, 0, 0]), errno(libc::EOPNOTSUPP));
        assert_eq!(run(&p, libc::SYS_setsockopt, [0, libc::IPPROTO_TCP as u64, 30, 0, 0, 0]), errno(libc::EOPNOTSUPP));
        assert_eq!(run(&p, libc::SYS_sendto, [0; 6]), allow);
        assert_eq!(run(&p, libc::SYS_sendmsg, [0; 6]), allow);
        assert_eq!(run(&p, libc::SYS_setsockopt, [0, libc::IPPROTO_TCP as u64, 1, 0, 0, 0]), allow);
        assert_eq!(run(&p, libc::SYS_setsockopt, [0, libc::SOL_SOCKET as u64, 30, 0, 0, 0]), allow);
        for nr in [libc::SYS_read, libc::SYS_connect, libc::SYS_socket] {
            assert_eq!(run(&p, nr, [0; 6]), allow, "{nr}");
        }
    }

    #[test]
    fn the_builtin_rules_compile_into_a_guard_and_one_program_per_errno() {
        let policy = crate::policy::Policy::builtin();
        let programs = programs(&policy.seccomp.deny).unwrap();
        assert_eq!(programs.len(), 3, "guard + EPERM + ENOSYS");
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn unknown_names_errnos_and_bad_conditions_are_refused() {
        assert!(matches!(validate(&[rule(&["no_such_call"], vec![])]), Err(SeccompError::UnknownSyscall { .. })));
        let mut r = rule(&["mount"], vec![]);
        r.errno = "EWHATEVER".into();
        assert!(matches!(validate(&[r]), Err(SeccompError::UnknownErrno { .. })));
        let bad_op = ArgCondition { arg: 0, op: "between".into(), value: 1, mask: None };
        assert!(matches!(validate(&[rule(&["socket"], vec![bad_op])]), Err(SeccompError::BadCondition { .. })));
        let bad_arg = ArgCondition { arg: 6, op: "eq".into(), value: 1, mask: None };
        assert!(matches!(validate(&[rule(&["socket"], vec![bad_arg])]), Err(SeccompError::BadCondition { .. })));
        let mut no_reason = rule(&["mount"], vec![]);
        no_reason.reason = " ".into();
        assert!(matches!(validate(&[no_reason]), Err(SeccompError::NoReason { .. })));
    }

    #[test]
    fn any_bits_expands_into_one_alternative_per_bit() {
        let c = ArgCondition { arg: 0, op: "any_bits".into(), value: 0b1010_0000, mask: None };
        let alts = conditions(0, &[c]).unwrap();
        assert_eq!(alts.len(), 2);
    }

    #[test]
    fn every_known_syscall_name_resolves() {
        for name in KNOWN_SYSCALLS {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn only_the_enosys_program_is_recognised_as_a_compatibility_fallback() {
        let programs = programs(&crate::policy::Policy::builtin().seccomp.deny).unwrap();
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let fallback: Vec<bool> = programs.iter().map(|p| p.iter().any(|i| i.code == 0x06 && i.k == enosys)).collect();
        assert_eq!(fallback, vec![false, false, true], "guard, EPERM, ENOSYS");
    }
}
