//! The typed channel between the launcher (parent) and the sandbox init (child):
//! a `SOCK_SEQPACKET` socketpair carrying one JSON message per packet. The init
//! is a clone of the launcher, so it already holds its spec and the prepared
//! mount fds; the parent only tells it when to go on, and init reports back
//! (with the handoff's notification listener as `SCM_RIGHTS`).
//!
//! Each side has one method per message it expects; anything else is an error.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::spec::PayloadStatus;

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds a message may carry (`Go` carries every prepared mount tree).
pub const MAX_FDS: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    /// The uid/gid maps are written and the mounts are ready (idmapped): build
    /// the sandbox. The mount trees come with it, in `fd_index` order.
    Go { mounts: Vec<super::spec::MountEntry> },
    /// The outbound listeners exist in our network namespace: start the payload.
    Listening,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
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

/// The socket both ends share; each end exposes only its own side's messages.
struct Socket {
    fd: OwnedFd,
}

/// The launcher's end (host root): says go, receives what init reports.
pub struct ParentEnd(Socket);

/// The sandbox init's end: waits for go, reports to the launcher.
pub struct InitEnd(Socket);

impl Socket {
    fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(ChannelError::TooLarge(bytes.len()));
        }
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        Ok(())
    }

    fn recv<T: for<'de> Deserialize<'de>>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut reset = false;
            let msg = loop {
                match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Err(nix::Error::EINTR) => continue,
                    // The peer closed with a message of ours unread (init
                    // failed before it read `Listening`): the kernel reports
                    // that once, before what the peer sent us; read on.
                    Err(nix::Error::ECONNRESET) if !reset => reset = true,
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

impl ParentEnd {
    pub fn new(fd: OwnedFd) -> Self {
        ParentEnd(Socket { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.fd.as_raw_fd()
    }

    /// `Go`, with the prepared mount trees (`mounts` refer to `fds` by index).
    pub fn send_go(&self, mounts: Vec<super::spec::MountEntry>, fds: &[RawFd]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooLarge(fds.len()));
        }
        self.0.send(&ToInit::Go { mounts }, fds)
    }

    /// `Listening`, with the v1 cgroups' `tasks` files init joins before it
    /// forks the payload (see `SandboxCgroup::self_attach_files`).
    pub fn send_listening(&self, attach: &[RawFd]) -> Result<(), ChannelError> {
        self.0.send(&ToInit::Listening, attach)
    }

    /// A message from init; only `Running` may carry a descriptor (the seccomp
    /// notification listener for socket handoff), at most one.
    pub fn recv_from_init(&self) -> Result<(FromInit, Option<OwnedFd>), ChannelError> {
        let (msg, mut fds) = self.0.recv::<FromInit>()?;
        match (&msg, fds.len()) {
            (_, 0) => Ok((msg, None)),
            (FromInit::Running, 1) => Ok((msg, fds.pop())),
            _ => Err(ChannelError::Unexpected("file descriptors from the sandbox".into())),
        }
    }
}

impl InitEnd {
    pub fn new(fd: OwnedFd) -> Self {
        InitEnd(Socket { fd })
    }

    /// Wait for `Go`; returns the mount entries and their trees.
    pub fn recv_go(&self) -> Result<(Vec<super::spec::MountEntry>, Vec<OwnedFd>), ChannelError> {
        match self.0.recv::<ToInit>()? {
            (ToInit::Go { mounts }, fds) => Ok((mounts, fds)),
            (got, _) => Err(ChannelError::Unexpected(format!("{got:?} (out of order)"))),
        }
    }

    /// Wait for `Listening`; returns the cgroup `tasks` files that came with it.
    pub fn recv_listening(&self) -> Result<Vec<OwnedFd>, ChannelError> {
        match self.0.recv::<ToInit>()? {
            (ToInit::Listening, fds) => Ok(fds),
            (got, _) => Err(ChannelError::Unexpected(format!("{got:?} (out of order)"))),
        }
    }

    pub fn send_to_parent(&self, msg: &FromInit) -> Result<(), ChannelError> {
        self.0.send(msg, &[])
    }

    /// `Running`, with the handoff listener when there is one.
    pub fn send_running(&self, notify: Option<RawFd>) -> Result<(), ChannelError> {
        self.0.send(&FromInit::Running, notify.as_slice())
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
        parent.send_go(Vec::new(), &[f.as_raw_fd()]).unwrap();
        assert_eq!(child.recv_go().unwrap().1.len(), 1);
        parent.send_listening(&[f.as_raw_fd()]).unwrap();
        assert_eq!(child.recv_listening().unwrap().len(), 1);
        child.send_to_parent(&FromInit::Exited(PayloadStatus::Signaled(15))).unwrap();
        assert!(matches!(parent.recv_from_init().unwrap(), (FromInit::Exited(PayloadStatus::Signaled(15)), None)));
        child.send_running(Some(f.as_raw_fd())).unwrap();
        assert!(matches!(parent.recv_from_init().unwrap(), (FromInit::Running, Some(_))));
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
