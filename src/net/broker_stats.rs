//! The broker's counters, in one shared memory page so that a supervisor can
//! read them without asking: the daemon creates a sealed memfd per sandbox and
//! hands it to `swarmcell run --stats-fd N`; the run's relay threads add to the
//! counters, the daemon reads them when its metrics are scraped (no polling, no
//! channel). Without a supervisor the page is anonymous memory of the run.
//!
//! Privilege boundary: both sides are the launcher (root); the page never
//! reaches the sandbox (run maps it and closes the descriptor before anything
//! else, and every inherited descriptor is CLOEXEC). A value read from it is only
//! ever displayed, never trusted for a decision.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// The counters as laid out in the page (both sides are this binary).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted and relayed.
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` were active.
    pub refused: AtomicU64,
    /// Bytes from clients to the payload.
    pub bytes_in: AtomicU64,
    /// Bytes from the payload to clients.
    pub bytes_out: AtomicU64,
    /// Relays running now.
    pub active: AtomicU64,
    /// Connections closed at once because their client's uid is not allowed.
    pub refused_uid: AtomicU64,
}

const PAGE: usize = 4096;
const _: () = assert!(std::mem::size_of::<Counters>() <= PAGE);

/// A mapping of one counters page; unmapped on drop.
#[derive(Debug)]
pub struct SharedCounters {
    ptr: NonNull<Counters>,
}

// SAFETY: the page holds only atomics, and the mapping lives as long as the value.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for SharedCounters {}

impl std::ops::Deref for SharedCounters {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        // SAFETY: ptr is a live, page-aligned mapping of at least one page (see `map`),
        // zero-filled by the kernel, which is a valid Counters (all atomics zero).
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the page mapped in `map`; no reference outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), PAGE) };
    }
}

impl SharedCounters {
    /// Counters private to this process (a run without a supervisor).
    pub fn private() -> std::io::Result<SharedCounters> {
        Self::map(None)
    }

    /// A new sealed memfd page (for the daemon) and its mapping: hand the fd to
    /// `swarmcell run --stats-fd`. The fd is CLOEXEC.
    pub fn create() -> std::io::Result<(SharedCounters, OwnedFd)> {
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"swarmcell-broker-stats".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate and fcntl on our memfd.
        let sized = unsafe {
            libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) == 0
                && libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) == 0
        };
        if !sized {
            return Err(std::io::Error::last_os_error());
        }
        Ok((Self::map(Some(fd.as_fd().as_raw_fd()))?, fd))
    }

    /// Map the page behind `--stats-fd FD` and close FD. Refused unless FD is a
    /// sealed memfd that cannot shrink (a shrunk file would fault on access).
    pub fn adopt(fd: RawFd) -> std::io::Result<SharedCounters> {
        if fd <= 2 || !crate::sys::fd_is_open(fd) {
            return Err(std::io::Error::other(format!("--stats-fd {fd} is not an open file descriptor above 2")));
        }
        // SAFETY: the caller handed us this descriptor; we own it from now on (closed on return).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: F_GET_SEALS on an fd we own.
        let seals = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GET_SEALS) };
        let size = std::fs::File::from(owned.try_clone()?).metadata()?.len();
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 || size < PAGE as u64 {
            return Err(std::io::Error::other(format!("--stats-fd {fd} is not a sealed page of broker counters")));
        }
        Self::map(Some(owned.as_raw_fd()))
    }

    fn map(fd: Option<RawFd>) -> std::io::Result<SharedCounters> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping of one page; the kernel picks the address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        NonNull::new(p.cast::<Counters>()).map(|ptr| SharedCounters { ptr }).ok_or_else(|| std::io::Error::other("mmap returned null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_run_adds_to_the_counters_the_supervisor_reads() {
        let (daemon_side, fd) = SharedCounters::create().unwrap();
        let raw = fd.try_clone().unwrap().into_raw_fd();
        let run_side = SharedCounters::adopt(raw).unwrap();
        assert!(!crate::sys::fd_is_open(raw), "adopt closes the descriptor");
        run_side.bytes_in.fetch_add(1234, Ordering::Relaxed);
        run_side.connections.fetch_add(2, Ordering::Relaxed);
        assert_eq!(daemon_side.bytes_in.load(Ordering::Relaxed), 1234);
        assert_eq!(daemon_side.connections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_descriptor_that_is_not_a_sealed_page_is_refused() {
        let raw = OwnedFd::from(std::fs::File::open("/dev/null").unwrap()).into_raw_fd();
        let err = SharedCounters::adopt(raw).unwrap_err();
        assert!(err.to_string().contains("not a sealed page"), "{err}");
        assert!(SharedCounters::adopt(1).is_err());
    }
}
