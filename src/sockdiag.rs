//! Parent side (host root): who owns the other end of a loopback TCP
//! connection. TCP has no `SO_PEERCRED`; the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, `inet_diag`) look a socket up by its exact 4-tuple and
//! report the uid that created it. For a connection accepted on 127.0.0.1:PORT
//! the client's socket is the one whose source is the peer address and whose
//! destination is our local address.
//!
//! The netlink socket answers for the network namespace it was created in: open
//! it on the host side, before a thread enters a sandbox's namespace.
//!
//! (A minimal lookup for the handoff broker; the ingress uid check of the relay
//! broker has its own, to be merged into one.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct Request {
    nlh: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// A `NETLINK_SOCK_DIAG` socket of the caller's network namespace.
pub struct SockDiag(OwnedFd);

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket(2); the fd is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: setsockopt with a timeval of the right size; bounds a lost answer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(SockDiag(fd))
    }

    /// The uid that owns the TCP socket connected from `peer` to `local` (the
    /// client end of a connection we accepted on `local`).
    pub fn peer_uid(&self, local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
        let (family, src, dst) = match (peer.ip(), local.ip()) {
            (IpAddr::V4(p), IpAddr::V4(l)) => (libc::AF_INET, words4(p.octets()), words4(l.octets())),
            (IpAddr::V6(p), IpAddr::V6(l)) => (libc::AF_INET6, words6(p.octets()), words6(l.octets())),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "mixed address families")),
        };
        let mut req = Request {
            // SAFETY: nlmsghdr is plain data.
            nlh: unsafe { std::mem::zeroed() },
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: peer.port().to_be_bytes(),
                dport: local.port().to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        };
        req.nlh.nlmsg_len = std::mem::size_of::<Request>() as u32;
        req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.nlh.nlmsg_flags = libc::NLM_F_REQUEST as u16;
        req.nlh.nlmsg_seq = 1;
        let fd = self.0.as_raw_fd();
        // SAFETY: sending our request struct, whose size is given.
        let n = unsafe { libc::send(fd, (&req as *const Request).cast(), std::mem::size_of::<Request>(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u64; 128];
        // SAFETY: receiving into our buffer of the given size.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = &bytemuck_view(&buf)[..n as usize];
        let hdr = std::mem::size_of::<libc::nlmsghdr>();
        if bytes.len() < hdr {
            return Err(io::Error::other("short sock_diag answer"));
        }
        // SAFETY: at least a header's worth of bytes; read unaligned.
        let nlh: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if nlh.nlmsg_type == libc::NLMSG_ERROR as u16 {
            // SAFETY: an error message carries an i32 errno right after the header.
            let err: i32 = unsafe { std::ptr::read_unaligned(bytes[hdr..].as_ptr().cast()) };
            return Err(io::Error::from_raw_os_error(-err));
        }
        if nlh.nlmsg_type != SOCK_DIAG_BY_FAMILY || bytes.len() < hdr + std::mem::size_of::<InetDiagMsg>() {
            return Err(io::Error::other("unexpected sock_diag answer"));
        }
        // SAFETY: enough bytes for one inet_diag_msg after the header.
        let msg: InetDiagMsg = unsafe { std::ptr::read_unaligned(bytes[hdr..].as_ptr().cast()) };
        Ok(msg.uid)
    }
}

fn words4(o: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(o), 0, 0, 0]
}

fn words6(o: [u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

fn bytemuck_view(buf: &[u64; 128]) -> &[u8] {
    // SAFETY: any u64 array is a valid byte array of 8x the length.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), std::mem::size_of_val(buf)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_loopback_client_socket_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(SockDiag::open().unwrap().peer_uid(l.local_addr().unwrap(), peer).unwrap(), me);
    }
}
