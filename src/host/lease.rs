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
        let open = |create: bool| {
            OpenOptions::new().read(true).write(true).create(create).truncate(false).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
        };
        let file = match open(false) {
            // It exists: held, or left by a holder that was killed.
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_locked(path).map_err(io)? {
                Some(file) => return Ok(Some(Lease { path: path.into(), file: Some(file) })),
                // Created by someone else meanwhile, or no O_TMPFILE here.
                None => open(true).map_err(io)?,
            },
            Err(e) => return Err(io(e)),
        };
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

/// A new lock file at `path`, already locked when it appears: an unnamed file
/// (O_TMPFILE) is locked, then linked into place. No sweeper can find it
/// unlocked between creation and `flock` (which, with 1001 launchers sweeping
/// at once, made fresh leases fail). `None` when `path` exists.
fn create_locked(path: &Path) -> std::io::Result<Option<File>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = match OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(f) => f,
        // A filesystem without O_TMPFILE: the caller's open-then-lock path.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) || e.raw_os_error() == Some(libc::EISDIR) => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on an fd we own; nobody else can reach this unnamed inode.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let from = crate::sys::cstring(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
    let to = crate::sys::cstring(path).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
    // SAFETY: linkat with two NUL-terminated paths; AT_SYMLINK_FOLLOW resolves the /proc fd link to the inode.
    if unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) } != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EEXIST) { Ok(None) } else { Err(e) };
    }
    Ok(Some(file))
}

/// Take a lock that should be free (a fresh, random name). Where the file
/// system has no O_TMPFILE, a concurrent [`sweep`] may remove the file between
/// our open and flock, so try again a few times before concluding someone
/// really holds it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_fresh_lease_is_never_taken_away_by_a_sweeper_running_at_the_same_time() {
        let dir = std::env::temp_dir().join(format!("swarmcell-lease-{}-{}", std::process::id(), crate::launch::random_u32()));
        ensure_private_dir(&dir).unwrap();
        let stop = AtomicBool::new(false);
        let (refused, stolen) = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = sweep(&dir);
                }
            });
            let (mut refused, mut stolen) = (0, 0);
            for i in 0..3000 {
                let path = dir.join(format!("{i}.lock"));
                let lease = Lease::try_acquire(&path).ok().flatten();
                refused += usize::from(lease.is_none());
                // Held: a sweeper leaves it alone, and another taker is refused.
                stolen += usize::from(lease.is_some() && !matches!(Lease::try_acquire(&path), Ok(None)));
            }
            stop.store(true, Ordering::Relaxed);
            (refused, stolen)
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((refused, stolen), (0, 0), "fresh leases refused, held leases taken");
    }

    #[test]
    fn a_lock_file_left_by_a_killed_holder_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("swarmcell-lease-{}-{}", std::process::id(), crate::launch::random_u32()));
        ensure_private_dir(&dir).unwrap();
        let path = dir.join("8000.lock");
        std::fs::write(&path, "").unwrap();
        let lease = Lease::try_acquire(&path).unwrap().expect("an unheld file is free");
        drop(lease);
        assert!(!path.exists(), "released leases unlink their file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
