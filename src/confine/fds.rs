//! File descriptor hygiene on both sides of the sandbox boundary.

use std::os::fd::RawFd;

use crate::sys::child::CLOSE_RANGE_CLOEXEC;
use crate::sys::{self, SysResult};

/// Launcher start-up: mark every inherited descriptor above stderr close-on-exec,
/// so nothing a caller leaked to us can reach a sandbox.
pub fn cloexec_inherited() -> SysResult<()> {
    sys::child::close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC)
}

/// Sandbox init start-up (a clone of the launcher): close every descriptor
/// above stderr except those in `keep` (sorted in place).
pub fn close_all_except_these(keep: &mut [RawFd]) -> SysResult<()> {
    keep.sort_unstable();
    let mut from: u32 = 3;
    for &k in keep.iter().filter(|&&k| k >= 3) {
        let k = k as u32;
        if k > from {
            sys::child::close_range(from, k - 1, 0)?;
        }
        from = from.max(k + 1);
    }
    sys::child::close_range(from, u32::MAX, 0)
}
