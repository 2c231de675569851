//! File descriptor hygiene on both sides of the sandbox boundary.

use std::os::fd::RawFd;

use crate::sys::{self, CLOSE_RANGE_CLOEXEC, SysResult};

/// Launcher start-up: mark every inherited descriptor above stderr close-on-exec,
/// so nothing a caller leaked to us can reach a sandbox.
pub fn cloexec_inherited() -> SysResult<()> {
    sys::close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC)
}

/// Sandbox init start-up: close every descriptor above stderr except `keep`.
pub fn close_all_except(keep: RawFd) -> SysResult<()> {
    let keep = keep as u32;
    if keep > 3 {
        sys::close_range(3, keep - 1, 0)?;
    }
    if keep < u32::MAX {
        sys::close_range(keep.max(2) + 1, u32::MAX, 0)?;
    }
    Ok(())
}
