//! Every raw system call swarmcell makes, in one place.
//!
//! Each wrapper returns [`SysError`], which names the call and its arguments
//! (`mount_setattr("/usr", AT_RECURSIVE, RDONLY): EPERM`), so an error from deep
//! inside sandbox construction still says exactly what the kernel refused.
//!
//! The functions marked *async-signal-safe* do no allocation on success and may be
//! called between `clone` and `execve` in a multi-threaded parent; the argument
//! strings are only formatted when a call fails.
//!
//! Who calls what, and why these are hand-written:
//! - **between fork and exec** (the launcher's clone child, the payload in
//!   `launch::payload`): `clone_fork`, `install_fd_for_exec`,
//!   `close_range`, `setsid`, `set_sigmask`, `send_fd`, `clear_capabilities`.
//!   These stay here, allocation-free, whatever `nix` or `rustix` offer;
//! - **the sandbox init** (single-threaded, a clone of the launcher): `mount`,
//!   `move_mount_fd`, `pivot_root`, `umount_detach`, `mkdirat`, `symlinkat`,
//!   `openat_nofollow`, `sethostname`, `setresuid`/`setresgid`, `prctl`,
//!   `recv_fd`, `reset_signal_dispositions`, `kill`. Kept here so that every
//!   failure names its call and arguments the same way (`nix`/`rustix` wrap
//!   most of them: `mount`, `pivot_root`, `setresuid` could move there);
//! - **host side only**: `open_tree_clone`, `mount_setattr_fd` (also the init),
//!   `socketpair_seqpacket`, `pipe_cloexec`, `set_nonblocking`, `dup_at_least`,
//!   `tcp_connect_loopback_nonblocking`, `loopback_up`. `nix` and
//!   `rustix` have no `mount_setattr` with an idmap user namespace here, which
//!   is why the mount-API calls are raw; the socket and pipe helpers could use
//!   `nix` (the launch channel already does).

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use nix::errno::Errno;

/// A failed system call: what was called, with which arguments, and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    pub call: String,
    pub errno: Errno,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.call, self.errno, self.errno.desc())
    }
}

impl std::error::Error for SysError {}

pub type SysResult<T> = Result<T, SysError>;

fn fail<T>(call: impl FnOnce() -> String) -> SysResult<T> {
    Err(SysError { call: call(), errno: Errno::last() })
}

fn check(ret: libc::c_long, call: impl FnOnce() -> String) -> SysResult<libc::c_long> {
    if ret < 0 { fail(call) } else { Ok(ret) }
}

pub fn cstring(s: impl AsRef<std::ffi::OsStr>) -> SysResult<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_ref().as_bytes()).map_err(|_| SysError { call: format!("path {:?} contains a NUL byte", s.as_ref()), errno: Errno::EINVAL })
}

// ---- new mount API (Linux >= 5.12 for mount_setattr) ----

pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const AT_EMPTY_PATH: u32 = libc::AT_EMPTY_PATH as u32;
pub const AT_SYMLINK_NOFOLLOW: u32 = libc::AT_SYMLINK_NOFOLLOW as u32;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(path, OPEN_TREE_CLONE|AT_RECURSIVE)`: a detached copy of the mount
/// tree at `path`, to be attached elsewhere with [`move_mount_fd`].
pub fn open_tree_clone(path: &Path, recursive: bool) -> SysResult<OwnedFd> {
    let c = cstring(path)?;
    let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: c is a valid NUL-terminated string; the kernel returns a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check(ret, || format!("open_tree({path:?}, OPEN_TREE_CLONE{})", if recursive { "|AT_RECURSIVE" } else { "" }))?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH[|AT_RECURSIVE], attr)` on a mount fd.
pub fn mount_setattr_fd(fd: RawFd, recursive: bool, set: u64, userns_fd: Option<RawFd>) -> SysResult<()> {
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: userns_fd.map(|f| f as u64).unwrap_or(0) };
    let flags = AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: attr is a valid mount_attr of the size passed; "" is a valid C string.
    let ret = unsafe { libc::syscall(libc::SYS_mount_setattr, fd, c"".as_ptr(), flags, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) };
    check(ret, || format!("mount_setattr(fd {fd}, {}, set={set:#x})", if recursive { "AT_RECURSIVE" } else { "0" })).map(drop)
}

/// `move_mount(from_fd, "", to_fd, "", F_EMPTY_PATH|T_EMPTY_PATH)`: attach a detached
/// mount exactly onto the directory or file `to_fd` refers to, with no path lookup.
pub fn move_mount_fd(from_fd: RawFd, to_fd: RawFd, what: &Path) -> SysResult<()> {
    // SAFETY: both paths are valid empty C strings; fds are plain integers to the kernel.
    let ret =
        unsafe { libc::syscall(libc::SYS_move_mount, from_fd, c"".as_ptr(), to_fd, c"".as_ptr(), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) };
    check(ret, || format!("move_mount(fd {from_fd} -> {what:?})")).map(drop)
}

/// Classic `mount(2)`.
pub fn mount(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) -> SysResult<()> {
    let src_c = src.map(cstring).transpose()?;
    let target_c = cstring(target)?;
    let fstype_c = fstype.map(cstring).transpose()?;
    let data_c = data.map(cstring).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a valid C string that outlives the call.
    let ret = unsafe { libc::mount(p(&src_c), target_c.as_ptr(), p(&fstype_c), flags, p(&data_c).cast()) };
    check(ret.into(), || format!("mount({src:?}, {target:?}, {fstype:?}, {flags:#x}, {data:?})")).map(drop)
}

pub fn umount_detach(target: &Path) -> SysResult<()> {
    let c = cstring(target)?;
    // SAFETY: c is a valid C string.
    let ret = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    check(ret.into(), || format!("umount2({target:?}, MNT_DETACH)")).map(drop)
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> SysResult<()> {
    let a = cstring(new_root)?;
    let b = cstring(put_old)?;
    // SAFETY: both are valid C strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) };
    check(ret, || format!("pivot_root({new_root:?}, {put_old:?})")).map(drop)
}

// ---- process creation and credentials ----

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

/// Raw setresuid: changes only the calling thread's credentials, which is all
/// there is in the single-threaded sandbox init. Async-signal-safe.
pub fn setresuid(uid: libc::uid_t) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    check(ret, || format!("setresuid({uid})")).map(drop)
}

pub fn setresgid(gid: libc::gid_t) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    check(ret, || format!("setresgid({gid})")).map(drop)
}

/// Drop every supplementary group (raw syscall: this thread only).
pub fn clear_groups() -> SysResult<()> {
    // SAFETY: size 0 with a null list is the documented way to clear groups.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) };
    check(ret, || "setgroups(0, [])".to_string()).map(drop)
}

pub fn supplementary_group_count() -> SysResult<usize> {
    // SAFETY: size 0 asks only for the count.
    let ret = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    check(ret.into(), || "getgroups(0)".to_string()).map(|n| n as usize)
}

/// Integer-argument `prctl`. Async-signal-safe (the name is formatted on error only).
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong, name: &str) -> SysResult<libc::c_int> {
    // SAFETY: integer-argument prctl options only; unused arguments are 0.
    let ret = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    check(ret.into(), || format!("prctl({name}, {arg2})")).map(|r| r as libc::c_int)
}

pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: pointer and length describe a valid byte slice.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret.into(), || format!("sethostname({name:?})")).map(drop)
}

pub fn setsid() -> SysResult<()> {
    // SAFETY: no arguments.
    let ret = unsafe { libc::setsid() };
    check(ret.into(), || "setsid()".to_string()).map(drop)
}

// ---- file descriptors ----

pub const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// `close_range(first, last, flags)`. Async-signal-safe.
pub fn close_range(first: u32, last: u32, flags: u32) -> SysResult<()> {
    // SAFETY: integer arguments; closing fds we own by contract of the caller.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    check(ret, || format!("close_range({first}, {last}, {flags:#x})")).map(drop)
}

pub fn set_cloexec(fd: RawFd, on: bool) -> SysResult<()> {
    // SAFETY: fcntl on an integer fd.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    check(ret.into(), || format!("fcntl({fd}, F_SETFD)")).map(drop)
}

/// How many threads this process has: `/proc/self/task` has one link per
/// thread besides `.` and `..`.
pub fn thread_count() -> SysResult<u64> {
    // SAFETY: stat is plain data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid stat buffer.
    let ret = unsafe { libc::stat(c"/proc/self/task".as_ptr(), &mut st) };
    check(ret.into(), || "stat(/proc/self/task)".to_string())?;
    Ok((st.st_nlink as u64).saturating_sub(2))
}

pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `openat(dir, name, flags|O_CLOEXEC|O_NOFOLLOW)`: one path component, never a symlink.
pub fn openat_nofollow(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> SysResult<OwnedFd> {
    // SAFETY: name is a valid C string.
    let ret = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW, mode) };
    let fd = check(ret.into(), || format!("openat({dir}, {name:?})"))?;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn mkdirat(dir: RawFd, name: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: name is a valid C string.
    let ret = unsafe { libc::mkdirat(dir, name.as_ptr(), mode) };
    check(ret.into(), || format!("mkdirat({dir}, {name:?})")).map(drop)
}

pub fn symlinkat(target: &Path, dir: RawFd, name: &CStr) -> SysResult<()> {
    let t = cstring(target)?;
    // SAFETY: valid C strings.
    let ret = unsafe { libc::symlinkat(t.as_ptr(), dir, name.as_ptr()) };
    check(ret.into(), || format!("symlinkat({target:?}, {name:?})")).map(drop)
}

pub fn socketpair_seqpacket() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array.
    let ret = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    check(ret.into(), || "socketpair(AF_UNIX, SOCK_SEQPACKET)".to_string())?;
    // SAFETY: both are fresh fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn pipe_cloexec() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(ret.into(), || "pipe2(O_CLOEXEC)".to_string())?;
    // SAFETY: both are fresh fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: RawFd) -> SysResult<()> {
    // SAFETY: fcntl on an integer fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(flags.into(), || format!("fcntl({fd}, F_GETFL)"))?;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    check(ret.into(), || format!("fcntl({fd}, F_SETFL, O_NONBLOCK)")).map(drop)
}

/// A CLOEXEC duplicate of `fd` numbered `min` or above (so that installing
/// other descriptors at low numbers in a child cannot overwrite it).
pub fn dup_at_least(fd: RawFd, min: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: fcntl on an integer fd; the new fd is ours.
    let ret = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    check(ret.into(), || format!("fcntl({fd}, F_DUPFD_CLOEXEC, {min})"))?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

// ---- network ----

/// Start connecting to 127.0.0.1:`port` without waiting: the socket is
/// non-blocking and becomes writable when the connection is made or has failed
/// (then `take_error` says why).
pub fn tcp_connect_loopback_nonblocking(port: u16) -> SysResult<std::net::TcpStream> {
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    check(fd.into(), || "socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK)".to_string())?;
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the given length.
    let ret = unsafe {
        libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if ret < 0 && Errno::last() != Errno::EINPROGRESS {
        return fail(|| format!("connect(127.0.0.1:{port})"));
    }
    Ok(std::net::TcpStream::from(sock))
}

/// Bring the loopback interface up in the current network namespace.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: a plain socket call.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(sock.into(), || "socket(AF_INET, SOCK_DGRAM)".to_string())?;
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq for SIOCGIFFLAGS.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret.into(), || "ioctl(lo, SIOCGIFFLAGS)".to_string())?;
    // SAFETY: ifru_flags is the active union member after SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: req is a valid ifreq for SIOCSIFFLAGS.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(ret.into(), || "ioctl(lo, SIOCSIFFLAGS, IFF_UP)".to_string()).map(drop)
}

// ---- signals ----

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

/// Reset every catchable signal to its default action (exec keeps "ignored").
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; failures (invalid
        // numbers reserved by libc) are irrelevant.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: integer arguments.
    let ret = unsafe { libc::kill(pid, sig) };
    check(ret.into(), || format!("kill({pid}, {sig})")).map(drop)
}

// ---- capabilities across exec ----

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clear the effective, permitted and inheritable sets. Async-signal-safe.
pub fn clear_capabilities() -> SysResult<()> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: hdr and data are the v3 layout the kernel expects (two data words).
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    check(ret, || "capset(all empty)".to_string()).map(drop)
}

// ---- passing one fd over a unix socket ----

/// A msghdr with one data iovec and room for one fd in `control`.
///
/// # Safety
/// The returned header points into `iov` and `control`, which must outlive it.
unsafe fn one_fd_msghdr(iov: &mut libc::iovec, control: &mut [u64; 4]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    msg
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

/// Receive one fd sent by [`send_fd`]; `None` when the peer closed without sending.
pub fn recv_fd(sock: RawFd) -> SysResult<Option<OwnedFd>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: iov and control outlive msg; a received fd is new and ours.
    unsafe {
        let mut msg = one_fd_msghdr(&mut iov, &mut control);
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            break n;
        };
        if n < 0 {
            return fail(|| format!("recvmsg({sock})"));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0 || cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// In a child between fork and exec: make `fd` available as `target` across the
/// exec. `dup2` onto itself would leave close-on-exec set, so that case clears
/// the flag instead. Async-signal-safe.
pub fn install_fd_for_exec(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on integer fds; no memory is touched.
    let r = unsafe { if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, target) } };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
