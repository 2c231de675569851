//! Child side: drop every capability from every set. Runs in the sandbox, after
//! the root filesystem is built and before the payload is exec'd.

use caps::CapSet;

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {0}")]
pub struct CapsError(String);

/// The highest capability number this kernel knows (it may know more than the
/// `caps` crate does, so the bounding set is dropped by number).
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}

/// Drop the bounding set and clear ambient, inheritable, effective and permitted.
/// Needs CAP_SETPCAP in the effective set for the bounding set, so call it before
/// anything else clears capabilities.
pub fn drop_all() -> Result<(), CapsError> {
    for cap in 0..=last_cap() {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL past the last one.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if ret < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
            return Err(CapsError(format!("prctl(PR_CAPBSET_DROP, {cap}): {}", nix::errno::Errno::last())));
        }
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| CapsError(format!("clear {set:?}: {e}")))?;
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can ever grant privileges again (setuid bits
/// and file capabilities are ignored).
pub fn set_no_new_privs() -> Result<(), CapsError> {
    crate::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS").map(drop).map_err(|e| CapsError(e.to_string()))
}
