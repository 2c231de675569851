//! The raw system calls swarmcell makes, grouped by who may call them.
//!
//! Each wrapper returns [`SysError`], which names the call and its arguments
//! (`mount_setattr("/usr", AT_RECURSIVE, RDONLY): EPERM`), so an error from deep
//! inside sandbox construction still says exactly what the kernel refused.
//!
//! - [`child`]: the fork-to-exec path (the launcher's clone child, the payload
//!   between fork and `execve`): async-signal-safe, allocation-free on success,
//!   hand-written whatever `nix` or `rustix` offer;
//! - [`mount`]: the mount API (`open_tree`, `mount_setattr` with an idmap user
//!   namespace, which no wrapper here has, `move_mount`) and `mount`,
//!   `pivot_root`, `umount2`: the launcher prepares detached trees, the sandbox
//!   init (single-threaded, a clone of the launcher) attaches them;
//! - this module: the sandbox init's other calls (`mkdirat`, `symlinkat`,
//!   `openat_nofollow`, `sethostname`, `setresuid`/`setresgid`, `prctl`,
//!   `recv_fd`, `reset_signal_dispositions`, `kill`; kept raw so that every
//!   failure is named the same way) and the host side's (`clear_groups`,
//!   `thread_count`, `tcp_connect_loopback_nonblocking`, `loopback_up`; the
//!   pipe, socket-pair and `fcntl` helpers are `nix` underneath).

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub mod child;
pub mod mount;

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

// ---- process creation and credentials ----

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

/// Host names from `/etc/hosts` and DNS only: glibc's built-in NSS sources.
/// The launcher is a static PIE (scripts/link-cc): any other `hosts:` source
/// of nsswitch.conf (`resolve`, `myhostname`, `mdns4_minimal`) would be a
/// shared module `dlopen`ed into it, which works only with the exact glibc it
/// was built with. Called before each lookup; done once (it reads
/// nsswitch.conf: not on every launch, only on one that looks a name up).
pub fn host_lookups_from_files_and_dns() {
    #[cfg(target_env = "gnu")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        unsafe extern "C" {
            fn __nss_configure_lookup(db: *const libc::c_char, service_line: *const libc::c_char) -> libc::c_int;
        }
        // SAFETY: two NUL-terminated static strings; glibc copies what it
        // keeps. Lookups made by other threads meanwhile wait at the Once.
        ONCE.call_once(|| unsafe {
            __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr());
        });
    }
}

pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: pointer and length describe a valid byte slice.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret.into(), || format!("sethostname({name:?})")).map(drop)
}

// ---- file descriptors ----

pub fn set_cloexec(fd: RawFd, on: bool) -> SysResult<()> {
    // SAFETY: fcntl on an integer fd.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    check(ret.into(), || format!("fcntl({fd}, F_SETFD)")).map(drop)
}

/// The CPUs of `set`, in order.
pub fn cpus_in(set: &nix::sched::CpuSet) -> Vec<usize> {
    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
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
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|errno| SysError { call: "socketpair(AF_UNIX, SOCK_SEQPACKET)".into(), errno })
}

pub fn pipe_cloexec() -> SysResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| SysError { call: "pipe2(O_CLOEXEC)".into(), errno })
}

pub fn set_nonblocking(fd: RawFd) -> SysResult<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    // SAFETY: the caller owns `fd` for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|errno| SysError { call: format!("fcntl({}, F_GETFL)", fd.as_raw_fd()), errno })?;
    fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK))
        .map(drop)
        .map_err(|errno| SysError { call: format!("fcntl({}, F_SETFL, O_NONBLOCK)", fd.as_raw_fd()), errno })
}

/// A CLOEXEC duplicate of `fd` numbered `min` or above (so that installing
/// other descriptors at low numbers in a child cannot overwrite it).
pub fn dup_at_least(fd: RawFd, min: RawFd) -> SysResult<OwnedFd> {
    use nix::fcntl::{FcntlArg, fcntl};
    // SAFETY: the caller owns `fd` for the duration of the call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let new =
        fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(min)).map_err(|errno| SysError { call: format!("fcntl({fd}, F_DUPFD_CLOEXEC, {min})"), errno })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
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
pub(super) struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub(super) const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

// ---- passing one fd over a unix socket ----

/// A msghdr with one data iovec and room for one fd in `control`.
///
/// # Safety
/// The returned header points into `iov` and `control`, which must outlive it.
pub(super) unsafe fn one_fd_msghdr(iov: &mut libc::iovec, control: &mut [u64; 4]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    msg
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
