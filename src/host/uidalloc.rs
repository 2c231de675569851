//! Parent side: give each sandbox its own unprivileged host uid from a range.
//!
//! A slot is a [`Lease`] on `<state>/uids/<uid>.lock` for the sandbox's
//! lifetime: a crash never leaks a uid, and separate `swarmcell` processes never
//! share one.

use std::path::Path;

use crate::host::lease::{Lease, LeaseError, ensure_private_dir};

/// Default range: 65536 uids starting at 0x60000000, far above login users and
/// systemd's dynamic and container ranges.
pub const DEFAULT_BASE: u32 = 0x6000_0000;
pub const DEFAULT_COUNT: u32 = 65536;

#[derive(Debug, thiserror::Error)]
pub enum UidAllocError {
    #[error("uid range: {0}")]
    Range(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("all {0} sandbox uids in the range are in use")]
    Exhausted(u32),
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
    _lease: Lease,
}

/// Take a free uid from `range`, starting the search at `start_hint`.
pub fn allocate(state_dir: &Path, range: UidRange, start_hint: u32) -> Result<UidLease, UidAllocError> {
    let dir = state_dir.join("uids");
    ensure_private_dir(state_dir)?;
    ensure_private_dir(&dir)?;
    for i in 0..range.count {
        let uid = range.base + (start_hint.wrapping_add(i) % range.count);
        if let Some(lease) = Lease::try_acquire(&dir.join(format!("{uid}.lock")))? {
            return Ok(UidLease { uid, _lease: lease });
        }
    }
    Err(UidAllocError::Exhausted(range.count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        // A lock file whose holder died without unlinking it is swept; a held one is not.
        let held = allocate(&state, range, 0).unwrap();
        std::fs::write(state.join("uids/200002.lock"), "").unwrap();
        assert_eq!(crate::host::lease::sweep(&state.join("uids")).unwrap(), 1);
        assert_eq!(std::fs::read_dir(state.join("uids")).unwrap().count(), 1);
        drop(held);
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
