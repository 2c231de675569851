//! The typed channel between the launcher (parent) and the sandbox init (child):
//! a `SOCK_SEQPACKET` socketpair carrying one JSON message per packet. The init
//! is cloned first, as soon as its ids are known: `Ids` lets it start its root
//! while the launcher makes the rest of the spec, which comes with `Go` (with
//! the prepared mount trees as `SCM_RIGHTS`); init reports back (with the
//! handoff's notification listener).
//!
//! Each side has one method per message it expects; anything else is an error.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::spec::PayloadStatus;

/// Largest message init accepts (`Go` carries the spec: arguments and
/// environment up to `MAX_ARGS_BYTES`, escaped as JSON).
pub const MAX_TO_INIT: usize = 1024 * 1024;
/// Largest message the launcher accepts from init.
pub const MAX_FROM_INIT: usize = 64 * 1024;
/// Most fds a message may carry (`Go` carries every prepared mount tree).
pub const MAX_FDS: usize = 64;

/// How long init polls for the launcher's `Go` and `Listening` before it
/// sleeps, when the launcher found a CPU idle for it (see `Ids`): the
/// launcher is working towards the message, and waking a CPU that halted
/// meanwhile costs 0.1-0.2 ms on a VM. On a busy host init sleeps at once: a
/// poll would only take time from the tasks that share its CPU (or give its
/// CPU away to them for a whole time slice, if it yielded).
const INIT_POLL: std::time::Duration = std::time::Duration::from_micros(500);

#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    /// The uid/gid maps are written and the launcher holds our namespaces:
    /// take these ids (inside the user namespace) and start the root. `poll`:
    /// init runs on a CPU of its own (poll for the next messages, see
    /// `INIT_POLL`).
    Ids { uid: u32, gid: u32, poll: bool },
    /// The spec, and the mounts ready (idmapped): build the sandbox. The mount
    /// trees come with it, in `fd_index` order.
    Go { spec: Box<super::spec::InitSpec> },
    /// The outbound listeners exist in our network namespace: start the payload.
    Listening,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    /// Init's new network namespace, as the descriptor that comes with it
    /// (its first message).
    Network,
    /// Init could not make its network namespace (`unshare` failed with this errno).
    NetworkRefused {
        errno: i32,
    },
    /// The payload has been exec'd.
    Running,
    /// Building the sandbox failed before the payload ran.
    SetupFailed {
        message: String,
    },
    /// execve of the payload failed with this errno.
    ExecFailed {
        path: String,
        errno: i32,
    },
    Exited(PayloadStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("sandbox channel: {0}")]
    Io(#[from] nix::Error),
    #[error("sandbox channel closed by the other side")]
    Closed,
    #[error("sandbox channel: bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("sandbox channel: message of {0} bytes is too large")]
    TooLarge(usize),
    #[error("sandbox channel: unexpected message {0}")]
    Unexpected(String),
}

impl ChannelError {
    /// The other end is closed (it exited, or gave up and reported why).
    pub fn peer_gone(&self) -> bool {
        matches!(self, ChannelError::Closed | ChannelError::Io(nix::Error::EPIPE | nix::Error::ECONNRESET))
    }
}

impl ToInit {
    /// What init received instead of what it waits for, named, never shown
    /// (a spec holds the secret).
    fn out_of_order(&self) -> ChannelError {
        let name = match self {
            ToInit::Ids { .. } => "Ids",
            ToInit::Go { .. } => "Go",
            ToInit::Listening => "Listening",
        };
        ChannelError::Unexpected(format!("{name} (out of order)"))
    }
}

/// The socket both ends share; each end exposes only its own side's messages.
struct Socket {
    fd: OwnedFd,
}

/// The launcher's end (host root): says go, receives what init reports.
pub struct ParentEnd(Socket);

/// The sandbox init's end: waits for go, reports to the launcher.
/// (With how long it polls for `Go` and `Listening`, as `Ids` said.)
pub struct InitEnd(Socket, std::cell::Cell<std::time::Duration>);

impl Socket {
    fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd], max: usize) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg)?;
        if bytes.len() > max {
            return Err(ChannelError::TooLarge(bytes.len()));
        }
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    /// The next message; polls for up to `poll` before it sleeps.
    fn recv<T: for<'de> Deserialize<'de>>(&self, max: usize, poll: std::time::Duration) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        // The buffer is the packet's size, not `max`: zeroing a megabyte per
        // message cost init half a millisecond.
        let size = self.next_size(poll)?;
        if size > max {
            return Err(ChannelError::TooLarge(size));
        }
        let mut buf = vec![0u8; size.max(1)];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            // (A reset was taken by `next_size`, and a packet is queued.)
            let msg = loop {
                match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other?,
                }
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: SCM_RIGHTS fds are new descriptors installed for us.
                    fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds, msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC))
        };
        if truncated {
            return Err(ChannelError::TooLarge(len));
        }
        if len == 0 {
            return Err(ChannelError::Closed);
        }
        Ok((serde_json::from_slice(&buf[..len])?, fds))
    }
}

impl Socket {
    /// The size of the next packet (0 at EOF), without taking it.
    /// Polls for up to `poll` (yielding the CPU between tries), then sleeps.
    fn next_size(&self, poll: std::time::Duration) -> Result<usize, ChannelError> {
        let poll_until = std::time::Instant::now() + poll;
        let mut reset = false;
        loop {
            let polling = !poll.is_zero() && std::time::Instant::now() < poll_until;
            let flags = libc::MSG_PEEK | libc::MSG_TRUNC | if polling { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: a zero-length peek into no buffer; MSG_TRUNC makes a
            // SOCK_SEQPACKET socket return the packet's real length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), std::ptr::null_mut(), 0, flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            match nix::Error::last() {
                nix::Error::EAGAIN if polling => {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
                nix::Error::EINTR => continue,
                // The peer closed with a message of ours unread (init
                // failed before it read `Listening`): the kernel reports
                // that once, before what the peer sent us; read on.
                nix::Error::ECONNRESET if !reset => reset = true,
                e => return Err(e.into()),
            }
        }
    }
}

impl ParentEnd {
    /// The launcher's end, able to send a message of `MAX_TO_INIT` bytes (a
    /// packet must fit the socket's send buffer, 208 KiB by default).
    pub fn new(fd: OwnedFd) -> Self {
        use nix::sys::socket::{setsockopt, sockopt};
        let size = MAX_TO_INIT + 4096;
        // Beyond `wmem_max` with CAP_NET_ADMIN (the launcher is root); a
        // `Go` that still does not fit is refused with EMSGSIZE, not lost.
        if setsockopt(&fd, sockopt::SndBufForce, &size).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &size);
        }
        ParentEnd(Socket { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// `Ids`: the ids init takes inside its user namespace (its maps are
    /// written); `poll`: it runs on a CPU of its own.
    pub fn send_ids(&self, uid: u32, gid: u32, poll: bool) -> Result<(), ChannelError> {
        self.0.send(&ToInit::Ids { uid, gid, poll }, &[], MAX_TO_INIT)
    }

    /// `Go`, with the spec and the prepared mount trees (its mounts refer to
    /// `fds` by index).
    pub fn send_go(&self, spec: super::spec::InitSpec, fds: &[RawFd]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooLarge(fds.len()));
        }
        self.0.send(&ToInit::Go { spec: Box::new(spec) }, fds, MAX_TO_INIT)
    }

    /// `Listening`, with the v1 cgroups' `tasks` files init joins before it
    /// forks the payload (see `SandboxCgroup::self_attach_files`).
    pub fn send_listening(&self, attach: &[RawFd]) -> Result<(), ChannelError> {
        self.0.send(&ToInit::Listening, attach, MAX_TO_INIT)
    }

    /// A message (or the end) from init is waiting.
    pub fn readable(&self) -> bool {
        self.wait_readable(std::time::Duration::ZERO)
    }

    /// Wait up to `timeout` for a message (or the end) from init.
    pub fn wait_readable(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.0.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                n if n > 0 => return true,
                n if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR => continue,
                _ => return false,
            }
        }
    }

    /// A message from init; only `Network` (the namespace) and `Running` (the
    /// seccomp notification listener for socket handoff) carry a descriptor,
    /// one each.
    pub fn recv_from_init(&self) -> Result<(FromInit, Option<OwnedFd>), ChannelError> {
        let (msg, mut fds) = self.0.recv::<FromInit>(MAX_FROM_INIT, std::time::Duration::ZERO)?;
        match (&msg, fds.len()) {
            (FromInit::Network, 1) => Ok((msg, fds.pop())),
            (FromInit::Network, _) => Err(ChannelError::Unexpected("a network namespace message without its descriptor".into())),
            (_, 0) => Ok((msg, None)),
            (FromInit::Running, 1) => Ok((msg, fds.pop())),
            _ => Err(ChannelError::Unexpected("file descriptors from the sandbox".into())),
        }
    }
}

impl InitEnd {
    pub fn new(fd: OwnedFd) -> Self {
        InitEnd(Socket { fd }, std::cell::Cell::new(std::time::Duration::ZERO))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// Wait for `Ids`; returns (uid, gid).
    pub fn recv_ids(&self) -> Result<(u32, u32), ChannelError> {
        match self.0.recv::<ToInit>(MAX_TO_INIT, std::time::Duration::ZERO)? {
            (ToInit::Ids { uid, gid, poll }, fds) if fds.is_empty() => {
                self.1.set(if poll { INIT_POLL } else { std::time::Duration::ZERO });
                Ok((uid, gid))
            }
            (got, _) => Err(got.out_of_order()),
        }
    }

    /// Wait for `Go`; returns the spec and the mount trees.
    pub fn recv_go(&self) -> Result<(super::spec::InitSpec, Vec<OwnedFd>), ChannelError> {
        match self.0.recv::<ToInit>(MAX_TO_INIT, self.1.get())? {
            (ToInit::Go { spec }, fds) => Ok((*spec, fds)),
            (got, _) => Err(got.out_of_order()),
        }
    }

    /// Wait for `Listening`; returns the cgroup `tasks` files that came with it.
    pub fn recv_listening(&self) -> Result<Vec<OwnedFd>, ChannelError> {
        match self.0.recv::<ToInit>(MAX_TO_INIT, self.1.get())? {
            (ToInit::Listening, fds) => Ok(fds),
            (got, _) => Err(got.out_of_order()),
        }
    }

    pub fn send_to_parent(&self, msg: &FromInit) -> Result<(), ChannelError> {
        self.0.send(msg, &[], MAX_FROM_INIT)
    }

    /// `Network`, with our network namespace.
    pub fn send_network(&self, ns: RawFd) -> Result<(), ChannelError> {
        self.0.send(&FromInit::Network, &[ns], MAX_FROM_INIT)
    }

    /// `Running`, with the handoff listener when there is one.
    pub fn send_running(&self, notify: Option<RawFd>) -> Result<(), ChannelError> {
        self.0.send(&FromInit::Running, notify.as_slice(), MAX_FROM_INIT)
    }

    /// True when the parent has closed its end (it died or gave up).
    pub fn peer_gone(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.0.fd.as_raw_fd(), events: 0, revents: 0 };
        // SAFETY: pfd is a valid pollfd; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_reports_cross_the_channel() {
        let (a, b) = crate::sys::socketpair_seqpacket().unwrap();
        let (parent, child) = (ParentEnd::new(a), InitEnd::new(b));
        let f = std::fs::File::open("/dev/null").unwrap();
        parent.send_ids(1000, 1001, false).unwrap();
        assert_eq!(child.recv_ids().unwrap(), (1000, 1001));
        parent.send_go(super::super::spec::tests::spec(), &[f.as_raw_fd()]).unwrap();
        let (spec, fds) = child.recv_go().unwrap();
        assert_eq!((spec.id.as_str(), fds.len()), ("sc-test", 1));
        parent.send_listening(&[f.as_raw_fd()]).unwrap();
        assert_eq!(child.recv_listening().unwrap().len(), 1);
        child.send_network(f.as_raw_fd()).unwrap();
        assert!(matches!(parent.recv_from_init().unwrap(), (FromInit::Network, Some(_))));
        child.send_to_parent(&FromInit::Network).unwrap();
        assert!(matches!(parent.recv_from_init(), Err(ChannelError::Unexpected(_))), "the namespace message comes with its descriptor");
        child.send_to_parent(&FromInit::Exited(PayloadStatus::Signaled(15))).unwrap();
        assert!(matches!(parent.recv_from_init().unwrap(), (FromInit::Exited(PayloadStatus::Signaled(15)), None)));
        child.send_running(Some(f.as_raw_fd())).unwrap();
        assert!(matches!(parent.recv_from_init().unwrap(), (FromInit::Running, Some(_))));
    }

    #[test]
    fn a_spec_with_the_largest_arguments_and_environment_crosses_the_channel() {
        let (a, b) = crate::sys::socketpair_seqpacket().unwrap();
        let (parent, child) = (ParentEnd::new(a), InitEnd::new(b));
        let mut spec = super::super::spec::tests::spec();
        // MAX_ARGS_BYTES of control characters: six bytes each in JSON.
        spec.env = vec![("BIG".into(), "\u{1}".repeat(super::super::request::MAX_ARGS_BYTES - 8))];
        parent.send_go(spec, &[]).unwrap();
        let (got, _) = child.recv_go().unwrap();
        assert_eq!(got.env[0].1.len(), super::super::request::MAX_ARGS_BYTES - 8);
    }

    #[test]
    fn an_out_of_order_go_is_named_without_its_contents() {
        let (a, b) = crate::sys::socketpair_seqpacket().unwrap();
        let (parent, child) = (ParentEnd::new(a), InitEnd::new(b));
        parent.send_go(super::super::spec::tests::spec(), &[]).unwrap();
        let e = child.recv_listening().unwrap_err().to_string();
        assert!(e.contains("Go (out of order)") && !e.contains("quoted"), "{e}");
    }

    #[test]
    fn closed_peer_is_reported() {
        let (a, b) = crate::sys::socketpair_seqpacket().unwrap();
        let child = InitEnd::new(b);
        assert!(!child.peer_gone());
        drop(a);
        assert!(child.peer_gone());
        assert!(matches!(child.recv_go(), Err(ChannelError::Closed)));
    }

    #[test]
    fn exit_codes_follow_the_env_convention() {
        assert_eq!(PayloadStatus::Exited(7).exit_code(), 7);
        assert_eq!(PayloadStatus::Signaled(15).exit_code(), 143);
        assert_eq!(PayloadStatus::Signaled(9).exit_code(), 137);
    }
}
