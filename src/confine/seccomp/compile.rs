//! seccomp, the parent's side: the policy's deny rules compiled into BPF
//! programs (with `seccompiler`) before the clone, and the handoff's
//! hand-assembled accept-notification program.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use super::{ArgCondition, DenyRule, SeccompError, errno_number, syscall_number, validate};

/// The compiled filters, in the order the payload loads them.
pub type Programs = Vec<BpfProgram>;

/// Compile the rules for the architecture this binary runs on: the
/// architecture guard, then one program per errno (see [`lean_program`]), the
/// guard joined to the first of them (see [`join_guard`]).
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
        programs.push(lean_program(map, errno, arch)?);
    }
    Ok(join_guard(programs))
}

/// The program for one errno: a binary search of the syscall numbers that
/// have rules. A call without rules is allowed after about log2 of them
/// comparisons, a call denied unconditionally is refused there too; only a
/// call with argument conditions goes on to seccompiler's program of those
/// rules. That is what every call of the payload pays, and what the kernel
/// pays when it loads the filter: it compiles every instruction, and runs the
/// filter on every syscall number to cache the allowed ones (seccompiler's
/// program of all the default rules is a linear chain of about 390
/// instructions, 0.07 ms to load). Where the search would not fit the 8-bit
/// jump offsets, or the whole the kernel's 4096 instructions, seccompiler's
/// program of all the rules is used as it is.
fn lean_program(map: BTreeMap<i64, Vec<SeccompRule>>, errno: u32, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let compile = |map: BTreeMap<i64, Vec<SeccompRule>>| -> Result<BpfProgram, SeccompError> {
        let filter =
            SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno), arch).map_err(|e| SeccompError::Compile(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))
    };
    let denied: Vec<u32> = map.iter().filter(|(_, r)| r.is_empty()).map(|(&nr, _)| nr as u32).collect();
    let conditional: BTreeMap<i64, Vec<SeccompRule>> = map.iter().filter(|(_, r)| !r.is_empty()).map(|(&nr, r)| (nr, r.clone())).collect();
    let conditional_calls: Vec<u32> = conditional.keys().map(|&nr| nr as u32).collect();
    // Behind the search: another architecture (killed, as seccompiler's own
    // check does) and the calls with conditions.
    let behind = if conditional.is_empty() { vec![stmt(0x06, libc::SECCOMP_RET_KILL_PROCESS)] } else { compile(conditional)? };
    let deny = libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA);
    match with_fast_path(behind, &conditional_calls, &denied, deny) {
        Some(program) => Ok(program),
        None => compile(map),
    }
}

/// One filter less to load (each costs the kernel about 0.02 ms): the guard's
/// final "allow" falls through into the first errno program instead, when
/// that one is loaded with logging as the guard is (not an ENOSYS fallback,
/// see `super::load::filter`). The kernel's verdict is the same: the guard's
/// kill (another architecture) ranks above every other action, and its
/// refusal of x32 calls comes where the errno programs, which have rules for
/// native numbers only, allow.
fn join_guard(mut programs: Programs) -> Programs {
    let logged = |p: &BpfProgram| !super::load::is_compat_fallback(p);
    let guard_ends_allowing = programs.first().and_then(|g| g.last()).is_some_and(|i| i.code == 0x06 && i.k == libc::SECCOMP_RET_ALLOW);
    if programs.len() < 2 || !guard_ends_allowing || !logged(&programs[1]) || programs[0].len() + programs[1].len() > BPF_MAXINSNS {
        return programs;
    }
    let next = programs.remove(1);
    programs[0].pop();
    programs[0].extend(next);
    programs
}

const BPF_MAXINSNS: usize = 4096;

/// Where a fast-path jump goes before its offset is known.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Skip(usize),
    /// The refusal right after the search.
    Deny,
    /// The program behind the search.
    Program,
}

/// `program` (which has rules only for the native `conditional` calls, and
/// kills another architecture) behind a binary search of `conditional` and
/// `denied`: a `denied` call returns `deny` there, a `conditional` one goes on
/// to `program`, every other native call is allowed. None where the search
/// does not fit 8-bit jumps, or the whole the kernel's limit.
fn with_fast_path(program: BpfProgram, conditional: &[u32], denied: &[u32], deny: u32) -> Option<BpfProgram> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JGE_K: u16 = 0x05 | 0x30;
    const RET_K: u16 = 0x06;
    fn search(calls: &[(u32, Target)], out: &mut Vec<(u16, u32, Target, Target)>) {
        if calls.len() <= 4 {
            for &(nr, target) in calls {
                out.push((JEQ_K, nr, target, Target::Next));
            }
            out.push((RET_K, libc::SECCOMP_RET_ALLOW, Target::Next, Target::Next));
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let mut left = Vec::new();
        search(low, &mut left);
        out.push((JGE_K, high[0].0, Target::Skip(left.len()), Target::Next));
        out.extend(left);
        search(high, out);
    }
    let mut calls: Vec<(u32, Target)> =
        conditional.iter().map(|&nr| (nr, Target::Program)).chain(denied.iter().map(|&nr| (nr, Target::Deny))).collect();
    calls.sort_unstable_by_key(|c| c.0);
    calls.dedup_by_key(|c| c.0);
    let mut prefix = vec![
        (LD_W_ABS, 4, Target::Next, Target::Next),
        (JEQ_K, AUDIT_ARCH_NATIVE, Target::Next, Target::Program),
        (LD_W_ABS, 0, Target::Next, Target::Next),
    ];
    search(&calls, &mut prefix);
    // The search, then the refusal, then the program.
    let len = prefix.len();
    if len + 1 + program.len() > BPF_MAXINSNS {
        return None;
    }
    let offset = |at: usize, t: Target| -> Option<u8> {
        match t {
            Target::Next => Some(0),
            Target::Skip(n) => u8::try_from(n).ok(),
            Target::Deny => u8::try_from(len - at - 1).ok(),
            Target::Program => u8::try_from(len - at).ok(),
        }
    };
    let mut out = Vec::with_capacity(len + 1 + program.len());
    for (at, (code, k, jt, jf)) in prefix.into_iter().enumerate() {
        out.push(jump(code, k, offset(at, jt)?, offset(at, jf)?));
    }
    out.push(stmt(RET_K, deny));
    out.extend(program);
    Some(out)
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
/// `seccomp_data.arch` of this binary's own system calls.
const AUDIT_ARCH_NATIVE: u32 = if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 };
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
    let mut p = vec![
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_NATIVE, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    if AUDIT_ARCH_NATIVE == AUDIT_ARCH_X86_64 {
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
    let notify = libc::SECCOMP_RET_USER_NOTIF;
    let deny = libc::SECCOMP_RET_ERRNO | libc::EOPNOTSUPP as u32;
    let allow = libc::SECCOMP_RET_ALLOW;
    let fastopen = libc::MSG_FASTOPEN as u32;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    vec![
        /* 0 */ stmt(LD_W_ABS, 4),
        /* 1 */ jump(JEQ_K, AUDIT_ARCH_NATIVE, 0, 11), // -> 13 allow
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
        run_arch(program, AUDIT_ARCH_NATIVE, nr, args)
    }

    fn run_arch(program: &[seccompiler::sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr as u32,
                4 => arch,
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

    /// The kernel's verdict over several loaded filters: each runs (the newest
    /// first), the action of highest precedence wins (the lowest value as a
    /// signed number: kill ranks first, allow last), the newest among equals.
    fn verdict(programs: &[BpfProgram], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let rank = |r: u32| (r & 0xffff_0000) as i32;
        let mut best: Option<u32> = None;
        for p in programs.iter().rev() {
            let r = run_arch(p, arch, nr, args);
            if best.is_none_or(|b| rank(r) < rank(b)) {
                best = Some(r);
            }
        }
        best.unwrap_or(libc::SECCOMP_RET_ALLOW)
    }

    /// What the payload loads, decided call by call as the guard and
    /// seccompiler's plain programs would decide it.
    fn assert_same_verdicts(rules: &[DenyRule]) -> usize {
        let lean = programs(rules).unwrap();
        let plain: Vec<BpfProgram> = std::iter::once(arch_guard()).chain(plain_programs(rules)).collect();
        // Argument values that hit and miss each default condition.
        let mut values: Vec<u64> = vec![0, 1, 2, 10, 16, 0x5412, 0x541C, 0x5437, u64::MAX, 0xffff_ffff, 0x1_0000_0000];
        values.extend((0..32).map(|b| 1u64 << b));
        values.push(0x7E02_0000);
        let mut checked = 0;
        for nr in (0..1024).chain([X32_SYSCALL_BIT as i64, X32_SYSCALL_BIT as i64 + 1, X32_SYSCALL_BIT as i64 + 39, u32::MAX as i64]) {
            for &v in &values {
                for arg in 0..6 {
                    let mut args = [0u64; 6];
                    args[arg] = v;
                    assert_eq!(
                        verdict(&lean, AUDIT_ARCH_NATIVE, nr, args),
                        verdict(&plain, AUDIT_ARCH_NATIVE, nr, args),
                        "nr {nr} arg {arg} = {v:#x}"
                    );
                    checked += 1;
                }
            }
            // Another architecture is killed, whatever the call.
            assert_eq!(verdict(&lean, 0x4000_0003, nr, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS, "i386 nr {nr}");
        }
        checked
    }

    #[test]
    fn the_compiled_filters_decide_every_call_as_the_guard_and_plain_programs_do() {
        let rules = crate::policy::Policy::builtin().seccomp.deny;
        assert!(assert_same_verdicts(&rules) > 100_000);
        // Several errnos, a call denied by two of them, conditions and none.
        let mut custom = rules.clone();
        let mut eacces = rule(&["ptrace", "socket", "sethostname"], vec![]);
        eacces.errno = "EACCES".into();
        custom.push(eacces);
        let mut eproto = rule(&["ioctl"], vec![ArgCondition { arg: 1, op: "eq".into(), value: 0x5437, mask: None }]);
        eproto.errno = "EINVAL".into();
        custom.push(eproto);
        assert_same_verdicts(&custom);
        // No rules: the guard alone.
        assert_eq!(programs(&[]).unwrap(), vec![arch_guard()]);
    }

    #[test]
    fn a_call_without_rules_is_decided_in_a_few_instructions_and_the_program_is_short() {
        let lean = programs(&crate::policy::Policy::builtin().seccomp.deny).unwrap();
        let plain = plain_programs(&crate::policy::Policy::builtin().seccomp.deny);
        // The first return comes after the guard, the arch and nr loads and a
        // few comparisons.
        let steps = lean[0].iter().position(|i| i.code == 0x06 && i.k == libc::SECCOMP_RET_ALLOW).unwrap();
        assert!(steps < 25, "the first allow comes after {steps} instructions");
        let (lean_len, plain_len): (usize, usize) = (lean.iter().map(Vec::len).sum(), plain.iter().map(Vec::len).sum());
        assert!(lean_len * 3 < plain_len * 2, "{lean_len} instructions against seccompiler's {plain_len}");
    }

    #[test]
    fn a_search_too_long_for_8_bit_jumps_is_left_out() {
        let calls: Vec<u32> = (0..400).collect();
        let program = vec![stmt(0x06, libc::SECCOMP_RET_KILL_PROCESS)];
        assert!(with_fast_path(program.clone(), &calls, &[], 0).is_none());
        assert!(with_fast_path(program.clone(), &calls[..30], &calls[30..60], 0).is_some_and(|p| p.len() > 60));
        let long = vec![stmt(0x06, libc::SECCOMP_RET_ALLOW); 4090];
        assert!(with_fast_path(long, &calls[..60], &[], 0).is_none(), "over the kernel's limit");
        // Then seccompiler's program of all the rules, as it is.
        let many: Vec<DenyRule> = KNOWN_SYSCALLS.iter().take(300).map(|n| rule(&[n], vec![])).collect();
        let compiled = programs(&many).unwrap();
        assert!(compiled.iter().all(|p| p.len() <= BPF_MAXINSNS));
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
    fn the_builtin_rules_compile_into_the_guard_with_eperm_then_enosys() {
        let policy = crate::policy::Policy::builtin();
        let programs = programs(&policy.seccomp.deny).unwrap();
        assert_eq!(programs.len(), 2, "guard and EPERM, then ENOSYS");
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
        assert_eq!(fallback, vec![false, true], "guard and EPERM, ENOSYS");
    }
}
