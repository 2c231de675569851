//! Parent side: socket handoff, the broker without a relay.
//!
//! The payload's seccomp chain includes a filter that turns every `bind()` into
//! a user notification (`SECCOMP_RET_USER_NOTIF`); its listener fd comes to the
//! launcher through init. When the payload binds its inner port, the launcher
//! installs its own listening socket, bound to 127.0.0.1:PORT in the host's
//! network namespace, in place of the payload's socket
//! (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SETFD`) and answers the bind with success:
//! the payload then accepts host connections itself, at native speed. Every other
//! bind continues in the kernel as usual (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`), so
//! Landlock still decides it. This is what bypass4netns does for rootless
//! containers; the relay in [`crate::broker`] remains the fallback.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub struct Handoff {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub handed_off: Arc<AtomicBool>,
}

impl Handoff {
    /// Serve bind notifications from `notify` until stopped; `handed_off` is set
    /// once the payload owns the listener.
    pub fn start(notify: OwnedFd, listener: TcpListener, inner_port: u16, handed_off: Arc<AtomicBool>) -> std::io::Result<Handoff> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, handed_off) = (stop.clone(), handed_off.clone());
            std::thread::Builder::new().name("handoff".into()).spawn(move || serve(&notify, &listener, inner_port, &stop, &handed_off))?
        };
        Ok(Handoff { stop, thread: Some(thread), handed_off })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(notify: &OwnedFd, listener: &TcpListener, inner: u16, stop: &AtomicBool, handed_off: &AtomicBool) {
    let fd = notify.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: pfd is a valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 && pfd.revents & libc::POLLIN == 0 {
            return; // every process of the filter is gone
        }
        // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills `req`.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            continue; // ENOENT: the caller was interrupted or died
        }
        let (val, error, flags) = match decide(fd, &req, listener, inner, handed_off) {
            Decision::Continue => (0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Decision::Success => (0, 0, 0),
            Decision::Fail(errno) => (0, -errno, 0),
        };
        let mut resp = libc::seccomp_notif_resp { id: req.id, val, error, flags };
        // SAFETY: SEND reads `resp`; failure means the caller is gone.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

enum Decision {
    Continue,
    Success,
    Fail(i32),
}

fn decide(notify: RawFd, req: &libc::seccomp_notif, listener: &TcpListener, inner: u16, handed_off: &AtomicBool) -> Decision {
    if i64::from(req.data.nr) != libc::SYS_bind {
        return Decision::Continue;
    }
    let (sockfd, addr_ptr, addr_len) = (req.data.args[0] as RawFd, req.data.args[1], req.data.args[2] as usize);
    let mut addr = [0u8; 28];
    let len = addr_len.min(addr.len());
    if len < 4 || read_memory(req.pid as libc::pid_t, addr_ptr, &mut addr[..len]).is_err() {
        return Decision::Continue;
    }
    // The memory we read must still belong to the same, still-waiting call.
    let mut id = req.id;
    // SAFETY: ID_VALID reads the id.
    if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) } != 0 {
        return Decision::Continue;
    }
    let family = u16::from_ne_bytes([addr[0], addr[1]]) as i32;
    let port = u16::from_be_bytes([addr[2], addr[3]]);
    if !(family == libc::AF_INET || family == libc::AF_INET6) || port != inner {
        return Decision::Continue;
    }
    if handed_off.load(Ordering::SeqCst) {
        return Decision::Fail(libc::EADDRINUSE);
    }
    match install(notify, req, sockfd, listener) {
        Ok(()) => {
            handed_off.store(true, Ordering::SeqCst);
            tracing::debug!(pid = req.pid, fd = sockfd, "payload's inner listening socket handed off to the host port");
            Decision::Success
        }
        Err(e) => {
            tracing::warn!(error = %e, "socket handoff failed; the payload binds inside its namespace");
            Decision::Continue
        }
    }
}

/// Replace the payload's `sockfd` with a duplicate of our listener, with the
/// payload's close-on-exec and non-blocking flags.
fn install(notify: RawFd, req: &libc::seccomp_notif, sockfd: RawFd, listener: &TcpListener) -> std::io::Result<()> {
    let flags = fd_flags(req.pid as libc::pid_t, sockfd)?;
    let ours = listener.try_clone()?;
    // The open file description is shared with the payload from now on.
    ours.set_nonblocking(flags & libc::O_NONBLOCK != 0)?;
    let mut addfd = libc::seccomp_notif_addfd {
        id: req.id,
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: ours.as_raw_fd() as u32,
        newfd: sockfd as u32,
        newfd_flags: (flags & libc::O_CLOEXEC) as u32,
    };
    // SAFETY: ADDFD reads `addfd`; the kernel duplicates srcfd into the target.
    if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `flags:` of /proc/PID/fdinfo/FD (octal open flags).
fn fd_flags(pid: libc::pid_t, fd: RawFd) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("flags:").and_then(|v| i32::from_str_radix(v.trim(), 8).ok()))
        .ok_or_else(|| std::io::Error::other("no flags in fdinfo"))
}

fn read_memory(pid: libc::pid_t, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: local describes our buffer; remote is only read by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n as usize != buf.len() {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
