//! seccomp, the payload's side: loading compiled programs into the calling
//! thread, last before `execve`. Async-signal-safe: no allocation on success.

use std::os::fd::RawFd;

/// Load a program that creates a notification listener; returns its fd.
/// Async-signal-safe.
pub fn filter_with_listener(program: &[seccompiler::sock_filter]) -> Result<RawFd, crate::sys::SysError> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: as in `filter`; NEW_LISTENER makes the kernel return a new fd.
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
pub fn filter(program: &[seccompiler::sock_filter]) -> Result<(), crate::sys::SysError> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    let flags = if is_compat_fallback(program) { 0 } else { libc::SECCOMP_FILTER_FLAG_LOG as u32 };
    // SAFETY: prog points at `len` valid instructions with sock_filter's layout
    // (seccompiler's sock_filter is repr(C) with the same fields).
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog) };
    if ret < 0 {
        return Err(crate::sys::SysError { call: "seccomp(SECCOMP_SET_MODE_FILTER)".into(), errno: crate::sys::Errno::last() });
    }
    Ok(())
}

/// A program that answers ENOSYS: a compatibility fallback, loaded without
/// logging (see [`filter`]). Async-signal-safe.
pub fn is_compat_fallback(program: &[seccompiler::sock_filter]) -> bool {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    program.iter().any(|i| i.code == 0x06 && i.k == enosys)
}
