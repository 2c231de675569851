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
pub fn filter(program: &[seccompiler::sock_filter]) -> Result<(), crate::sys::SysError> {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prog points at `len` valid instructions with sock_filter's layout
    // (seccompiler's sock_filter is repr(C) with the same fields).
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &prog as *const libc::sock_fprog) };
    if ret < 0 {
        return Err(crate::sys::SysError { call: "seccomp(SECCOMP_SET_MODE_FILTER)".into(), errno: crate::sys::Errno::last() });
    }
    Ok(())
}
