//! Parent side: give each sandbox its own unprivileged host uid from a range.
//!
//! A slot is a lock file `<state>/uids/<uid>.lock` held with `flock` for the
//! sandbox's lifetime: the kernel releases it when the launcher dies, so a crash
//! never leaks a uid, and separate `swarmcell` processes never share one.
//! Released slots unlink their file (locked → unlink → close; a taker checks that
//! the file it locked is still the one at the path).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default range: 65536 uids starting at 0x60000000, far above login users and
/// systemd's dynamic and container ranges.
pub const DEFAULT_BASE: u32 = 0x6000_0000;
pub const DEFAULT_COUNT: u32 = 65536;

#[derive(Debug, thiserror::Error)]
pub enum UidAllocError {
    #[error("uid range: {0}")]
    Range(String),
    #[error("state directory {path}: {message}")]
    StateDir { path: PathBuf, message: String },
    #[error("all {0} sandbox uids in the range are in use")]
    Exhausted(u32),
    #[error("uid lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

impl UidRange {
    /// Parse `BASE-LAST` (inclusive).
    pub fn parse(s: &str) -> Result<UidRange, UidAllocError> {
        let (a, b) = s.split_once('-').ok_or_else(|| UidAllocError::Range(format!("{s:?} is not BASE-LAST")))?;
        let base: u32 = a.trim().parse().map_err(|_| UidAllocError::Range(format!("{a:?} is not a uid")))?;
        let last: u32 = b.trim().parse().map_err(|_| UidAllocError::Range(format!("{b:?} is not a uid")))?;
        if base < 65536 || last < base || last >= u32::MAX - 1 {
            return Err(UidAllocError::Range(format!(
                "{s:?} must lie within 65536-4294967293 with BASE <= LAST (uid 0, nobody and -1 are never used)"
            )));
        }
        Ok(UidRange { base, count: last - base + 1 })
    }
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange { base: DEFAULT_BASE, count: DEFAULT_COUNT }
    }
}

/// A held uid; released (lock file removed) on drop.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    path: PathBuf,
    file: Option<File>,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so a waiter re-checks the inode.
        let _ = std::fs::remove_file(&self.path);
        self.file.take();
    }
}

/// Create (or check) a root-only state directory: it holds lock files, so a
/// directory writable by others would let them steal or block sandboxes.
pub fn ensure_private_dir(path: &Path) -> Result<(), UidAllocError> {
    let err = |message: String| UidAllocError::StateDir { path: path.into(), message };
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

/// Take a free uid from `range`, starting the search at `start_hint`.
pub fn allocate(state_dir: &Path, range: UidRange, start_hint: u32) -> Result<UidLease, UidAllocError> {
    let dir = state_dir.join("uids");
    ensure_private_dir(state_dir)?;
    ensure_private_dir(&dir)?;
    for i in 0..range.count {
        let uid = range.base + (start_hint.wrapping_add(i) % range.count);
        let path = dir.join(format!("{uid}.lock"));
        if let Some(file) = try_lock(&path)? {
            return Ok(UidLease { uid, path, file: Some(file) });
        }
    }
    Err(UidAllocError::Exhausted(range.count))
}

fn try_lock(path: &Path) -> Result<Option<File>, UidAllocError> {
    let io = |source| UidAllocError::Io { path: path.into(), source };
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(io(e)) };
    }
    // The previous holder may have unlinked the file between our open and flock.
    let ours = file.metadata().map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => Ok(Some(file)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state() -> PathBuf {
        std::env::temp_dir().join(format!("swarmcell-uid-test-{}-{}", std::process::id(), rand_u32()))
    }

    fn rand_u32() -> u32 {
        crate::launch::random_u32()
    }

    #[test]
    fn range_parses_and_refuses_dangerous_values() {
        assert_eq!(UidRange::parse("100000-100009").unwrap(), UidRange { base: 100000, count: 10 });
        for bad in ["0-10", "5", "200000-100000", "100000-4294967295", "x-y"] {
            assert!(UidRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leases_are_unique_until_released_and_leave_nothing_behind() {
        let state = temp_state();
        let range = UidRange { base: 200000, count: 3 };
        let a = allocate(&state, range, 0).unwrap();
        let b = allocate(&state, range, 0).unwrap();
        let c = allocate(&state, range, 0).unwrap();
        let mut uids = vec![a.uid, b.uid, c.uid];
        uids.sort();
        assert_eq!(uids, vec![200000, 200001, 200002]);
        assert!(matches!(allocate(&state, range, 0), Err(UidAllocError::Exhausted(3))));
        let freed = b.uid;
        drop(b);
        assert_eq!(allocate(&state, range, 0).unwrap().uid, freed);
        drop((a, c));
        assert_eq!(std::fs::read_dir(state.join("uids")).unwrap().count(), 0, "lock files removed");
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_state_dir_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let state = temp_state();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = allocate(&state, UidRange { base: 200000, count: 1 }, 0).unwrap_err().to_string();
        assert!(e.contains("not writable by group or others"), "{e}");
        std::fs::remove_dir_all(&state).unwrap();
    }
}
