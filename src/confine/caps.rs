//! Child side: drop every capability from every set, with raw syscalls only, so
//! that it is safe between `fork` and `execve` (no allocation, no locks).

use crate::sys::{self, Errno, SysError};

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {0}")]
pub struct CapsError(#[from] SysError);

/// The highest capability number this kernel knows. Read before forking: the
/// kernel may know more capabilities than any crate's list.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}

/// Drop the bounding set (needs CAP_SETPCAP, so first), clear the ambient set,
/// then clear inheritable, permitted and effective. Async-signal-safe.
///
/// A capability already out of the bounding set is only read, not dropped
/// again: each drop allocates and commits new credentials, and the payload
/// inherits the bounding set init emptied before forking it
/// ([`drop_bounding_set`]), so its check costs no allocation.
pub fn drop_all(last_cap: u32) -> Result<(), CapsError> {
    drop_remaining_bounding_set(last_cap)?;
    sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, "PR_CAP_AMBIENT_CLEAR_ALL")?;
    sys::child::clear_capabilities()?;
    Ok(())
}

/// Empty the bounding set (what an `execve` could ever grant), leaving the
/// effective, permitted and ambient sets alone: sandbox init does it early,
/// while it waits for the launcher, so that the payload it forks later starts
/// with an empty bounding set. Each capability is dropped without a read
/// first: a new user namespace starts with all of them. Async-signal-safe.
pub fn drop_bounding_set(last_cap: u32) -> Result<(), CapsError> {
    for cap in 0..=last_cap {
        if !drop_from_bounding_set(cap)? {
            break;
        }
    }
    Ok(())
}

/// The bounding set's remaining capabilities dropped (the payload's, which
/// inherits it empty: each is only read). Async-signal-safe.
fn drop_remaining_bounding_set(last_cap: u32) -> Result<(), CapsError> {
    for cap in 0..=last_cap {
        match sys::prctl(libc::PR_CAPBSET_READ, cap.into(), "PR_CAPBSET_READ") {
            Err(e) if e.errno == Errno::EINVAL => break,
            Ok(0) => continue,
            r => r.map(drop)?,
        }
        if !drop_from_bounding_set(cap)? {
            break;
        }
    }
    Ok(())
}

/// Drop `cap` from the bounding set; false when the kernel does not know it
/// (past its last capability). Async-signal-safe.
fn drop_from_bounding_set(cap: u32) -> Result<bool, CapsError> {
    match sys::prctl(libc::PR_CAPBSET_DROP, cap.into(), "PR_CAPBSET_DROP") {
        Err(e) if e.errno == Errno::EINVAL => Ok(false),
        r => Ok(r.map(|_| true)?),
    }
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can ever grant privileges again (setuid bits
/// and file capabilities are ignored). Async-signal-safe.
pub fn set_no_new_privs() -> Result<(), CapsError> {
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    Ok(())
}
