//! The system calls of the fork-to-exec path: the launcher's clone child and
//! the payload between its fork and `execve` (`launch::payload`). Every one is
//! async-signal-safe and allocation-free on success (an error's text is only
//! formatted when a call fails); they stay hand-written whatever `nix` or
//! `rustix` offer.

use std::os::fd::RawFd;

use super::{CapData, CapHeader, Errno, LINUX_CAPABILITY_VERSION_3, SysError, SysResult, check, fail, one_fd_msghdr};

pub const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Raw `clone(flags|SIGCHLD)` with fork semantics (no new stack).
///
/// In a multi-threaded caller, the child may only make async-signal-safe calls
/// until it execs: the other threads' locks are copied in whatever state they were.
pub fn clone_fork(flags: libc::c_int) -> SysResult<libc::pid_t> {
    // SAFETY: a NULL stack makes clone behave like fork; the caller upholds the
    // async-signal-safety rule in the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    check(ret, || format!("clone({flags:#x})")).map(|p| p as libc::pid_t)
}

pub fn setsid() -> SysResult<()> {
    // SAFETY: no arguments.
    let ret = unsafe { libc::setsid() };
    check(ret.into(), || "setsid()".to_string()).map(drop)
}

/// `close_range(first, last, flags)`. Async-signal-safe.
pub fn close_range(first: u32, last: u32, flags: u32) -> SysResult<()> {
    // SAFETY: integer arguments; closing fds we own by contract of the caller.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    check(ret, || format!("close_range({first}, {last}, {flags:#x})")).map(drop)
}

pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Set this thread's signal mask. Async-signal-safe.
pub fn set_sigmask(how: libc::c_int, set: &libc::sigset_t) -> SysResult<()> {
    // SAFETY: set is a valid sigset_t.
    let ret = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(SysError { call: "pthread_sigmask".into(), errno: Errno::from_raw(ret) });
    }
    Ok(())
}

/// Clear the effective, permitted and inheritable sets. Async-signal-safe.
pub fn clear_capabilities() -> SysResult<()> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: hdr and data are the v3 layout the kernel expects (two data words).
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    check(ret, || "capset(all empty)".to_string()).map(drop)
}

/// Send `fd` with one byte over the unix socket `sock`. Async-signal-safe.
pub fn send_fd(sock: RawFd, fd: RawFd) -> SysResult<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Space for one fd: CMSG_SPACE(4) is 24 on 64-bit targets; 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: the CMSG macros stay within `control`; iov and control outlive msg.
    unsafe {
        let mut msg = one_fd_msghdr(&mut iov, &mut control);
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return fail(|| format!("sendmsg({sock}, SCM_RIGHTS {fd})"));
        }
    }
    Ok(())
}

/// In a child between fork and exec: make `fd` available as `target` across the
/// exec. `dup2` onto itself would leave close-on-exec set, so that case clears
/// the flag instead. Async-signal-safe.
pub fn install_fd_for_exec(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on integer fds; no memory is touched.
    let r = unsafe { if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, target) } };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
