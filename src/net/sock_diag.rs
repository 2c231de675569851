//! Host side (the launcher, root): which uid owns the client end of a loopback
//! TCP connection, from the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`,
//! `inet_diag`). TCP has no `SO_PEERCRED`; but both ends of a loopback
//! connection live in this network namespace, and the kernel can look up the
//! client's socket by its 4-tuple and report the uid that created it.
//!
//! The lookup is exact (one request, one answer, no dump) and the answer is
//! checked: it must be the client's own socket (same 4-tuple, connected). A
//! client that already closed its socket leaves at most an orphan or a time-wait
//! entry, which carries no uid (the kernel says 0: root!): that is
//! [`Owner::Unknown`], never a guess. (The kernel falls
//! back to a *listening* socket on the client's port when the client socket is
//! gone; the 4-tuple check keeps that from passing for the client.)

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_NOCOOKIE: u32 = !0;
const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlHeader {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: NlHeader,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Message {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Who owns the client end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Uid(u32),
    /// The client socket is gone (closed, time-wait) or could not be asked about.
    Unknown,
}

/// A netlink socket for lookups; one per thread that asks.
pub struct PeerLookup {
    fd: OwnedFd,
    seq: u32,
}

impl PeerLookup {
    pub fn new() -> std::io::Result<PeerLookup> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that we own from now on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel answers at once; a bound wait keeps a wedged answer from stalling the accept loop.
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(1, 0));
        Ok(PeerLookup { fd, seq: 0 })
    }

    /// The owner of the socket whose local address is `client` and whose peer
    /// is `server` (the address our listener accepted the connection on).
    pub fn owner(&mut self, client: SocketAddrV4, server: SocketAddrV4) -> std::io::Result<Owner> {
        self.seq = self.seq.wrapping_add(1);
        let mut id = SockId { sport: client.port().to_be_bytes(), dport: server.port().to_be_bytes(), ..Default::default() };
        id.src[0] = client.ip().octets();
        id.dst[0] = server.ip().octets();
        id.cookie = [INET_DIAG_NOCOOKIE; 2];
        let req = Request {
            header: NlHeader {
                len: std::mem::size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: libc::NLM_F_REQUEST as u16,
                seq: self.seq,
                pid: 0,
            },
            family: libc::AF_INET as u8,
            protocol: libc::IPPROTO_TCP as u8,
            states: !0,
            id,
            ..Default::default()
        };
        // SAFETY: sockaddr_nl is plain data; zero is valid (pid 0: the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sending a fully initialised repr(C) request to the kernel.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                (&req as *const Request).cast(),
                std::mem::size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: receiving into a buffer we own, of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            let header: NlHeader = read_struct(&buf[..n]).ok_or_else(|| std::io::Error::other("short netlink answer"))?;
            if header.seq != self.seq {
                continue; // an answer to an earlier request that timed out
            }
            let body = &buf[std::mem::size_of::<NlHeader>()..n.min(header.len as usize).max(std::mem::size_of::<NlHeader>())];
            return match header.kind {
                // ENOENT: no such socket (it is gone); any error: we do not know.
                NLMSG_ERROR => Ok(Owner::Unknown),
                SOCK_DIAG_BY_FAMILY => {
                    let m: Message = read_struct(body).ok_or_else(|| std::io::Error::other("short inet_diag answer"))?;
                    Ok(check(&m, &id))
                }
                other => Err(std::io::Error::other(format!("unexpected netlink message type {other}"))),
            };
        }
    }
}

/// The time one lookup takes on this host (for `swarmcell bench broker`): the
/// mean over `n` lookups of a live loopback connection.
pub fn time_lookup(n: u32) -> std::io::Result<std::time::Duration> {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let _client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, peer) = listener.accept()?;
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, listener.local_addr()?) else {
        return Err(std::io::Error::other("not IPv4"));
    };
    let mut lookup = PeerLookup::new()?;
    let start = std::time::Instant::now();
    for _ in 0..n {
        lookup.owner(peer, local)?;
    }
    Ok(start.elapsed() / n.max(1))
}

/// The answer counts only for the client's own connected socket, still held
/// by a process: a socket closed by its owner (an orphan, or a time-wait entry,
/// which the kernel reports with uid 0) has no inode.
fn check(m: &Message, asked: &SockId) -> Owner {
    let same = m.family == libc::AF_INET as u8
        && m.id.sport == asked.sport
        && m.id.dport == asked.dport
        && m.id.src[0] == asked.src[0]
        && m.id.dst[0] == asked.dst[0];
    if !same || m.inode == 0 || [TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE].contains(&m.state) {
        return Owner::Unknown;
    }
    Owner::Uid(m.uid)
}

fn read_struct<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is a repr(C) struct of integers (any bit pattern is valid) and
    // the slice holds at least size_of::<T>() bytes; read_unaligned copes with alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    fn v4(a: std::net::SocketAddr) -> SocketAddrV4 {
        match a {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_owner_of_a_loopback_client_is_its_uid_and_a_closed_one_is_unknown() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        let mut lookup = PeerLookup::new().unwrap();
        let server = v4(listener.local_addr().unwrap());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(lookup.owner(v4(peer), server).unwrap(), Owner::Uid(me));
        // A 4-tuple nobody has.
        let nobody = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        assert_eq!(lookup.owner(nobody, server).unwrap(), Owner::Unknown);
        // With no such connection the kernel finds the listener on that port: never taken for a client.
        assert_eq!(lookup.owner(server, nobody).unwrap(), Owner::Unknown);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(lookup.owner(v4(peer), server).unwrap(), Owner::Unknown, "a client that closed is not known");
    }
}
