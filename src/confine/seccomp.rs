//! seccomp: the policy's `[[seccomp.deny]]` rules, compiled once by the parent
//! (with `seccompiler`) into BPF programs that the payload loads last, right
//! before `execve`.
//!
//! Every system call not denied is allowed: the filter removes kernel attack
//! surface a coding agent never needs; the other layers (namespaces, no
//! capabilities, Landlock) confine what the allowed calls can reach.
//!
//! One BPF program is built per distinct errno (seccompiler has one match action
//! per filter), plus an architecture guard: any non-native architecture (i386 via
//! `int 0x80`) kills the process, and on x86_64 the x32 ABI (syscall numbers with
//! bit 30 set) is refused with EPERM.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
use serde::{Deserialize, Serialize};

/// One deny rule of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub syscalls: Vec<String>,
    /// Conditions on the arguments, all of which must hold for the rule to deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCondition>,
    /// Error returned: EPERM unless given.
    #[serde(default = "default_errno")]
    pub errno: String,
    /// Why the rule exists (shown by `policy explain`).
    pub reason: String,
}

fn default_errno() -> String {
    "EPERM".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    /// Argument index, 0-5.
    pub arg: u8,
    /// eq, ne, lt, le, gt, ge, masked_eq (with `mask`), or any_bits (the rule
    /// applies when any bit of `value` is set in the argument).
    pub op: String,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp.deny[{rule}]: unknown system call {name:?}")]
    UnknownSyscall { rule: usize, name: String },
    #[error("seccomp.deny[{rule}]: unknown errno {0:?} (use a name such as EPERM or ENOSYS)", .errno)]
    UnknownErrno { rule: usize, errno: String },
    #[error("seccomp.deny[{rule}]: {message}")]
    BadCondition { rule: usize, message: String },
    #[error("seccomp.deny[{rule}]: reason must not be empty")]
    NoReason { rule: usize },
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
}

/// Check a rule list without compiling it (policy validation).
pub fn validate(rules: &[DenyRule]) -> Result<(), SeccompError> {
    for (i, r) in rules.iter().enumerate() {
        if r.reason.trim().is_empty() {
            return Err(SeccompError::NoReason { rule: i });
        }
        errno_number(&r.errno).ok_or_else(|| SeccompError::UnknownErrno { rule: i, errno: r.errno.clone() })?;
        for name in &r.syscalls {
            syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall { rule: i, name: name.clone() })?;
        }
        if r.syscalls.is_empty() {
            return Err(SeccompError::BadCondition { rule: i, message: "syscalls must not be empty".into() });
        }
        conditions(i, &r.args)?;
    }
    Ok(())
}

/// The compiled filters, in the order the payload loads them.
pub type Programs = Vec<BpfProgram>;

/// Compile the rules for the architecture this binary runs on.
pub fn compile(rules: &[DenyRule]) -> Result<Programs, SeccompError> {
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
        let filter =
            SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno), arch).map_err(|e| SeccompError::Compile(e.to_string()))?;
        programs.push(BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))?);
    }
    Ok(programs)
}

/// The argument conditions as alternatives (OR) of condition lists (AND).
fn conditions(rule: usize, args: &[ArgCondition]) -> Result<Vec<Vec<SeccompCondition>>, SeccompError> {
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
    vec![
        /* 0 */ stmt(LD_W_ABS, 4),
        /* 1 */ jump(JEQ_K, native, 0, 8), // -> 10 allow
        /* 2 */ stmt(LD_W_ABS, 0),
        /* 3 */ jump(JEQ_K, libc::SYS_accept as u32, 7, 0), // -> 11 notify
        /* 4 */ jump(JEQ_K, libc::SYS_accept4 as u32, 6, 0), // -> 11 notify
        /* 5 */ jump(JEQ_K, libc::SYS_listen as u32, 5, 0), // -> 11 notify
        /* 6 */ jump(JEQ_K, libc::SYS_sendto as u32, 5, 0), // -> 12 flags in arg 3
        /* 7 */ jump(JEQ_K, libc::SYS_sendmmsg as u32, 4, 0), // -> 12 flags in arg 3
        /* 8 */ jump(JEQ_K, libc::SYS_sendmsg as u32, 6, 0), // -> 15 flags in arg 2
        /* 9 */ jump(JEQ_K, libc::SYS_setsockopt as u32, 8, 0), // -> 18
        /* 10 */ stmt(RET_K, allow),
        /* 11 */ stmt(RET_K, notify),
        /* 12 */ stmt(LD_W_ABS, arg(3)),
        /* 13 */ jump(JSET_K, fastopen, 9, 0), // -> 23 deny
        /* 14 */ stmt(RET_K, allow),
        /* 15 */ stmt(LD_W_ABS, arg(2)),
        /* 16 */ jump(JSET_K, fastopen, 6, 0), // -> 23 deny
        /* 17 */ stmt(RET_K, allow),
        /* 18 */ stmt(LD_W_ABS, arg(1)),
        /* 19 */ jump(JEQ_K, libc::IPPROTO_TCP as u32, 0, 2), // -> 22 allow
        /* 20 */ stmt(LD_W_ABS, arg(2)),
        /* 21 */ jump(JEQ_K, TCP_FASTOPEN_CONNECT, 1, 0), // -> 23 deny
        /* 22 */ stmt(RET_K, allow),
        /* 23 */ stmt(RET_K, deny),
    ]
}

/// Load a program that creates a notification listener; returns its fd.
/// Async-signal-safe.
pub fn load_with_listener(program: &[seccompiler::sock_filter]) -> Result<RawFd, crate::sys::SysError> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: as in `load`; NEW_LISTENER makes the kernel return a new fd.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        return Err(crate::sys::SysError { call: "seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)".into(), errno: crate::sys::Errno::last() });
    }
    Ok(ret as RawFd)
}

/// Load one compiled program into the calling thread. Async-signal-safe; needs
/// no_new_privs (or CAP_SYS_ADMIN).
///
/// With `SECCOMP_FILTER_FLAG_LOG`: every call the program refuses becomes an
/// `AUDIT_SECCOMP` record (pid, host uid, syscall number) that the daemon
/// attributes to its sandbox (see `crate::denials`). The kernel writes these
/// records even with audit disabled (Linux 6.18 checked), unless `errno` is
/// removed from `/proc/sys/kernel/seccomp/actions_logged`. A program that
/// answers ENOSYS is loaded without it: ENOSYS rules are compatibility
/// fallbacks (clone3, which libc retries as clone), not refusals to report.
pub fn load(program: &[seccompiler::sock_filter]) -> Result<(), crate::sys::SysError> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let flags = if program.iter().any(|i| i.code == 0x06 && i.k == enosys) { 0 } else { libc::SECCOMP_FILTER_FLAG_LOG as u32 };
    // SAFETY: prog points at `len` valid instructions with sock_filter's layout
    // (seccompiler's sock_filter is repr(C) with the same fields).
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog) };
    if ret < 0 {
        return Err(crate::sys::SysError { call: "seccomp(SECCOMP_SET_MODE_FILTER)".into(), errno: crate::sys::Errno::last() });
    }
    Ok(())
}

pub fn errno_number(name: &str) -> Option<i32> {
    Some(match name {
        "EPERM" => libc::EPERM,
        "ENOSYS" => libc::ENOSYS,
        "EACCES" => libc::EACCES,
        "EINVAL" => libc::EINVAL,
        "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
        "EOPNOTSUPP" => libc::EOPNOTSUPP,
        _ => return None,
    })
}

macro_rules! syscall_table {
    ($($name:ident),* $(,)?) => {
        /// Syscall numbers by name, for the calls a policy may name.
        pub fn syscall_number(name: &str) -> Option<i64> {
            match name {
                $(stringify!($name) => Some(paste_sys!($name)),)*
                _ => None,
            }
        }
        /// Every name `syscall_number` knows.
        pub const KNOWN_SYSCALLS: &[&str] = &[$(stringify!($name)),*];
    };
}

macro_rules! paste_sys {
    (unshare) => {
        libc::SYS_unshare
    };
    (setns) => {
        libc::SYS_setns
    };
    (clone) => {
        libc::SYS_clone
    };
    (clone3) => {
        libc::SYS_clone3
    };
    (mount) => {
        libc::SYS_mount
    };
    (umount2) => {
        libc::SYS_umount2
    };
    (pivot_root) => {
        libc::SYS_pivot_root
    };
    (chroot) => {
        libc::SYS_chroot
    };
    (move_mount) => {
        libc::SYS_move_mount
    };
    (open_tree) => {
        libc::SYS_open_tree
    };
    (fsopen) => {
        libc::SYS_fsopen
    };
    (fsconfig) => {
        libc::SYS_fsconfig
    };
    (fsmount) => {
        libc::SYS_fsmount
    };
    (fspick) => {
        libc::SYS_fspick
    };
    (mount_setattr) => {
        libc::SYS_mount_setattr
    };
    (bpf) => {
        libc::SYS_bpf
    };
    (perf_event_open) => {
        libc::SYS_perf_event_open
    };
    (userfaultfd) => {
        libc::SYS_userfaultfd
    };
    (io_uring_setup) => {
        libc::SYS_io_uring_setup
    };
    (io_uring_enter) => {
        libc::SYS_io_uring_enter
    };
    (io_uring_register) => {
        libc::SYS_io_uring_register
    };
    (keyctl) => {
        libc::SYS_keyctl
    };
    (add_key) => {
        libc::SYS_add_key
    };
    (request_key) => {
        libc::SYS_request_key
    };
    (kexec_load) => {
        libc::SYS_kexec_load
    };
    (kexec_file_load) => {
        libc::SYS_kexec_file_load
    };
    (init_module) => {
        libc::SYS_init_module
    };
    (finit_module) => {
        libc::SYS_finit_module
    };
    (delete_module) => {
        libc::SYS_delete_module
    };
    (open_by_handle_at) => {
        libc::SYS_open_by_handle_at
    };
    (name_to_handle_at) => {
        libc::SYS_name_to_handle_at
    };
    (swapon) => {
        libc::SYS_swapon
    };
    (swapoff) => {
        libc::SYS_swapoff
    };
    (reboot) => {
        libc::SYS_reboot
    };
    (acct) => {
        libc::SYS_acct
    };
    (syslog) => {
        libc::SYS_syslog
    };
    (settimeofday) => {
        libc::SYS_settimeofday
    };
    (clock_settime) => {
        libc::SYS_clock_settime
    };
    (clock_adjtime) => {
        libc::SYS_clock_adjtime
    };
    (adjtimex) => {
        libc::SYS_adjtimex
    };
    (quotactl) => {
        libc::SYS_quotactl
    };
    (lookup_dcookie) => {
        libc::SYS_lookup_dcookie
    };
    (vhangup) => {
        libc::SYS_vhangup
    };
    (ptrace) => {
        libc::SYS_ptrace
    };
    (process_vm_readv) => {
        libc::SYS_process_vm_readv
    };
    (process_vm_writev) => {
        libc::SYS_process_vm_writev
    };
    (personality) => {
        libc::SYS_personality
    };
    (ioctl) => {
        libc::SYS_ioctl
    };
    (socket) => {
        libc::SYS_socket
    };
    (socketpair) => {
        libc::SYS_socketpair
    };
    (getpid) => {
        libc::SYS_getpid
    };
    (uname) => {
        libc::SYS_uname
    };
    (sethostname) => {
        libc::SYS_sethostname
    };
    (setdomainname) => {
        libc::SYS_setdomainname
    };
    (pidfd_getfd) => {
        libc::SYS_pidfd_getfd
    };
    (kcmp) => {
        libc::SYS_kcmp
    };
    (mbind) => {
        libc::SYS_mbind
    };
    (migrate_pages) => {
        libc::SYS_migrate_pages
    };
    (move_pages) => {
        libc::SYS_move_pages
    };
}

syscall_table!(
    unshare,
    setns,
    clone,
    clone3,
    mount,
    umount2,
    pivot_root,
    chroot,
    move_mount,
    open_tree,
    fsopen,
    fsconfig,
    fsmount,
    fspick,
    mount_setattr,
    bpf,
    perf_event_open,
    userfaultfd,
    io_uring_setup,
    io_uring_enter,
    io_uring_register,
    keyctl,
    add_key,
    request_key,
    kexec_load,
    kexec_file_load,
    init_module,
    finit_module,
    delete_module,
    open_by_handle_at,
    name_to_handle_at,
    swapon,
    swapoff,
    reboot,
    acct,
    syslog,
    settimeofday,
    clock_settime,
    clock_adjtime,
    adjtimex,
    quotactl,
    lookup_dcookie,
    vhangup,
    ptrace,
    process_vm_readv,
    process_vm_writev,
    personality,
    ioctl,
    socket,
    socketpair,
    getpid,
    uname,
    sethostname,
    setdomainname,
    pidfd_getfd,
    kcmp,
    mbind,
    migrate_pages,
    move_pages,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(syscalls: &[&str], args: Vec<ArgCondition>) -> DenyRule {
        DenyRule { syscalls: syscalls.iter().map(|s| s.to_string()).collect(), args, errno: "EPERM".into(), reason: "test".into() }
    }

    #[test]
    fn the_builtin_rules_compile_into_a_guard_and_one_program_per_errno() {
        let policy = crate::policy::Policy::builtin();
        let programs = compile(&policy.seccomp.deny).unwrap();
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
    fn only_the_enosys_program_is_recognised_as_a_compatibility_fallback() {
        let programs = compile(&crate::policy::Policy::builtin().seccomp.deny).unwrap();
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let fallback: Vec<bool> = programs.iter().map(|p| p.iter().any(|i| i.code == 0x06 && i.k == enosys)).collect();
        assert_eq!(fallback, vec![false, false, true], "guard, EPERM, ENOSYS");
    }

    #[test]
    fn every_known_syscall_name_resolves() {
        for name in KNOWN_SYSCALLS {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }
}
