//! seccomp: the policy's `[[seccomp.deny]]` rules, compiled once by the parent
//! (with `seccompiler`) into BPF programs that the payload loads last, right
//! before `execve`.
//!
//! Every system call not denied is allowed: the filter removes kernel attack
//! surface a coding agent never needs; the other layers (namespaces, no
//! capabilities, Landlock) confine what the allowed calls can reach.
//!
//! One BPF program is built per distinct errno (seccompiler has one match action
//! per filter), behind an architecture guard: any non-native architecture (i386
//! via `int 0x80`) kills the process, and on x86_64 the x32 ABI (syscall numbers
//! with bit 30 set) is refused with EPERM. The guard falls through into the
//! first program loaded with logging (see `compile::programs`).
//!
//! The two sides are separate modules: `compile` (the parent, before the
//! clone: rules → BPF, and the handoff's hand-assembled notify program) and
//! `load` (the payload, between fork and exec: async-signal-safe, no allocation).

pub mod compile;
pub mod load;

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
        compile::conditions(i, &r.args)?;
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
