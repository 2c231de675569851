//! The daemon's event source: one epoll instance, and [`Watched`] descriptors
//! whose registration lives exactly as long as they do (added when wrapped,
//! removed before the descriptor is closed, so a reused descriptor number can
//! never inherit or lose another's registration). A wake-up costs the events
//! that happened, not the number of sandboxes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// Interest in nothing: edge-triggered, so a hang-up is reported once, not on
/// every wait (epoll always reports hang-ups and errors).
pub const NOTHING: u32 = libc::EPOLLET as u32;

pub struct Poller(OwnedFd);

impl Poller {
    pub fn new() -> std::io::Result<Rc<Poller>> {
        // SAFETY: epoll_create1 with a valid flag; the fd is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        Ok(Rc::new(Poller(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl on our epoll fd with a valid event.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watch a descriptor that lives as long as the daemon (signals, listeners).
    pub fn add_forever(&self, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Wait up to `timeout_ms` (-1: no limit); the tokens of what is ready.
    pub fn wait(&self, timeout_ms: i32, ready: &mut Vec<u64>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        ready.clear();
        // SAFETY: events is a valid array of its length.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, timeout_ms) };
        ready.extend(events.iter().take(n.max(0) as usize).map(|e| e.u64));
    }
}

/// A descriptor registered with the poller under `token` for as long as it lives.
pub struct Watched<T: AsRawFd> {
    inner: T,
    poller: Rc<Poller>,
    token: u64,
}

impl<T: AsRawFd> Watched<T> {
    pub fn new(poller: &Rc<Poller>, inner: T, events: u32, token: u64) -> std::io::Result<Watched<T>> {
        poller.ctl(libc::EPOLL_CTL_ADD, inner.as_raw_fd(), events, token)?;
        Ok(Watched { inner, poller: poller.clone(), token })
    }

    /// Change what is watched for.
    pub fn interest(&self, events: u32) {
        // Cannot fail for a registered descriptor; if it did, the caller's deadline still ends the wait.
        let _ = self.poller.ctl(libc::EPOLL_CTL_MOD, self.inner.as_raw_fd(), events, self.token);
    }
}

impl<T: AsRawFd> std::ops::Deref for Watched<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsRawFd> std::ops::DerefMut for Watched<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsRawFd> Drop for Watched<T> {
    fn drop(&mut self) {
        // Before `inner` (and its descriptor) is dropped.
        let _ = self.poller.ctl(libc::EPOLL_CTL_DEL, self.inner.as_raw_fd(), 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_watched_descriptor_reports_under_its_token_until_dropped() {
        let p = Poller::new().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let watched = Watched::new(&p, r, IN, 7).unwrap();
        let mut ready = Vec::new();
        p.wait(0, &mut ready);
        assert!(ready.is_empty());
        (&w).write_all(b"x").unwrap();
        p.wait(0, &mut ready);
        assert_eq!(ready, [7]);
        watched.interest(NOTHING);
        p.wait(0, &mut ready);
        assert!(ready.is_empty(), "no interest, no event");
        drop(watched);
        // A new descriptor (likely the same number) starts with its own registration.
        let (r2, w2) = std::io::pipe().unwrap();
        let _again = Watched::new(&p, r2, IN, 8).unwrap();
        (&w2).write_all(b"y").unwrap();
        p.wait(0, &mut ready);
        assert_eq!(ready, [8]);
    }
}
