//! Leases: a lock file held with `flock` for as long as something is in use.
//! The kernel releases the lock when the holder dies, so a crashed launcher never
//! leaks one, and a later process can tell a stale resource from a live one.
//! Released leases unlink their file (locked → unlink → close; a taker checks
//! that the file it locked is still the one at the path).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where every launcher on the host keeps its leases (uids, ports, sandbox ids):
/// one directory, so that no two launchers hand out the same uid or port.
pub const HOST_STATE_DIR: &str = "/run/swarmcell";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    #[error("lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A held lock file; released (file removed) on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so a waiter re-checks the inode.
        let _ = std::fs::remove_file(&self.path);
        self.file.take();
    }
}

impl Lease {
    /// Take the lock at `path`, or `None` when someone holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Lease>, LeaseError> {
        let io = |source| LeaseError::Io { path: path.into(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(io(e)) };
        }
        // The previous holder may have unlinked the file between our open and flock.
        let ours = file.metadata().map_err(io)?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => Ok(Some(Lease { path: path.into(), file: Some(file) })),
            _ => Ok(None),
        }
    }
}

/// Take a lock that should be free (a fresh, random name): a concurrent
/// [`sweep`] may remove the file between our open and flock, so try again a few
/// times before concluding someone really holds it.
pub fn acquire_fresh(path: &Path) -> Result<Option<Lease>, LeaseError> {
    for _ in 0..5 {
        if let Some(l) = Lease::try_acquire(path)? {
            return Ok(Some(l));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(None)
}

/// Remove the lock files in `dir` that nobody holds (left by holders that were
/// killed before they could unlink them). Returns how many were removed.
pub fn sweep(dir: &Path) -> Result<usize, LeaseError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "lock") && Lease::try_acquire(&path)?.is_some() {
            removed += 1; // dropping the lease unlinks the file
        }
    }
    Ok(removed)
}

/// Create (or check) a root-only state directory: it holds lock files, so a
/// directory writable by others would let them steal or block sandboxes.
pub fn ensure_private_dir(path: &Path) -> Result<(), LeaseError> {
    let err = |message: String| LeaseError::StateDir { path: path.into(), message };
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path) {
        return Err(err(e.to_string()));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| err(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(err("is not a directory".into()));
    }
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(err(format!(
            "must be owned by uid {me} and not writable by group or others (owner {}, mode {:04o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}
