//! Daemon side (host root): the kernel audit netlink socket. Two uses:
//! - reading: a socket bound to the read-only multicast group
//!   (AUDIT_NLGRP_READLOG, needs CAP_AUDIT_READ), which receives a copy of
//!   every record without registering as the audit daemon: an auditd that runs
//!   keeps running and keeps receiving everything;
//! - control: AUDIT_GET (is audit enabled, which pid is the audit daemon) and
//!   AUDIT_SET enabled=1 (needs CAP_AUDIT_CONTROL), used only when the config
//!   asks for it (`kernel_audit = "enable"`).
//!
//! The multicast group exists only in the initial network namespace: the
//! daemon must run there.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_AUDIT: libc::c_int = 9;
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
const AUDIT_NLGRP_READLOG: u32 = 1;
const AUDIT_STATUS_ENABLED: u32 = 1;
const NLMSG_ERROR: u16 = 2;
/// Size of the netlink message header.
pub const NLMSG_HDRLEN: usize = 16;

/// The part of `struct audit_status` read here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// 0 off, 1 on, 2 on and locked.
    pub enabled: u32,
    /// The registered audit daemon (0: none; records also go to the kernel log).
    pub auditd_pid: u32,
    /// Records the kernel lost (backlog or rate limit), host-wide.
    pub lost: u32,
    pub backlog_limit: u32,
}

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_AUDIT) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, groups: u32) -> std::io::Result<()> {
    // SAFETY: sockaddr_nl is plain data.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: a valid sockaddr_nl and its size.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A socket that receives every audit record (read-only group). Its receive
/// buffer is raised to `rcvbuf` bytes (SO_RCVBUFFORCE, root): a flood that
/// still overruns it is seen as ENOBUFS by the reader and counted.
pub fn open_reader(rcvbuf: usize) -> std::io::Result<OwnedFd> {
    let fd = socket()?;
    let size = rcvbuf.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: an int option of the right size.
    unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const libc::c_int).cast(), 4);
    }
    bind(&fd, AUDIT_NLGRP_READLOG)?;
    Ok(fd)
}

fn request(msg_type: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let fd = socket()?;
    bind(&fd, 0)?;
    let len = NLMSG_HDRLEN + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: sockaddr_nl is plain data (pid 0: the kernel).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(2, 0));
    // The ACK (an error message with error 0) and, for AUDIT_GET, the reply.
    let mut reply = Vec::new();
    for _ in 0..2 {
        let mut buf = vec![0u8; 8192];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        if buf.len() < NLMSG_HDRLEN {
            break;
        }
        let t = u16::from_ne_bytes([buf[4], buf[5]]);
        if t == NLMSG_ERROR {
            let err = buf.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            if err != 0 {
                return Err(std::io::Error::from_raw_os_error(-err));
            }
            if msg_type != AUDIT_GET || !reply.is_empty() {
                break;
            }
        } else if t == msg_type {
            reply = buf[NLMSG_HDRLEN..].to_vec();
            break;
        }
    }
    Ok(reply)
}

/// AUDIT_GET.
pub fn status() -> std::io::Result<Status> {
    let r = request(AUDIT_GET, &[])?;
    let word = |i: usize| r.get(i * 4..i * 4 + 4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    if r.len() < 32 {
        return Err(std::io::Error::other("short AUDIT_GET reply"));
    }
    // struct audit_status: mask, enabled, failure, pid, rate_limit, backlog_limit, lost, backlog, ...
    Ok(Status { enabled: word(1), auditd_pid: word(3), backlog_limit: word(5), lost: word(6) })
}

/// AUDIT_SET enabled=1.
pub fn enable() -> std::io::Result<()> {
    set_enabled(true)
}

/// AUDIT_SET enabled=1 or 0 (tests put back what they found).
pub fn set_enabled(on: bool) -> std::io::Result<()> {
    // struct audit_status is 11 u32s on current kernels; older ones read fewer.
    let mut st = [0u32; 11];
    st[0] = AUDIT_STATUS_ENABLED;
    st[1] = u32::from(on);
    let bytes: Vec<u8> = st.iter().flat_map(|w| w.to_ne_bytes()).collect();
    request(AUDIT_SET, &bytes).map(|_| ())
}
