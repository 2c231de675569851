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
pub fn drop_all(last_cap: u32) -> Result<(), CapsError> {
    for cap in 0..=last_cap {
        match sys::prctl(libc::PR_CAPBSET_DROP, cap.into(), "PR_CAPBSET_DROP") {
            Err(e) if e.errno == Errno::EINVAL => break,
            r => r.map(drop)?,
        }
    }
    sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, "PR_CAP_AMBIENT_CLEAR_ALL")?;
    sys::child::clear_capabilities()?;
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can ever grant privileges again (setuid bits
/// and file capabilities are ignored). Async-signal-safe.
pub fn set_no_new_privs() -> Result<(), CapsError> {
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    Ok(())
}
