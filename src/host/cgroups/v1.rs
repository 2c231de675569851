//! cgroup v1: limits per hierarchy; kill by freezing, killing and thawing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CgroupError, Limits, Role, procs, read, write};

pub const CPU_PERIOD_US: u64 = 100_000;

pub(super) fn apply(role: Role, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    match role {
        Role::Memory => {
            let mem = limits.memory.map_or("-1".to_string(), |m| m.to_string());
            write(&dir.join("memory.limit_in_bytes"), &mem)?;
            if let (Some(m), Some(s)) = (limits.memory, limits.swap) {
                // memory+swap; only where swap accounting is on.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &(m + s).to_string())?;
                }
            }
            if limits.swap == Some(0) {
                write(&dir.join("memory.swappiness"), "0")?;
            }
        }
        Role::Pids => write(&dir.join("pids.max"), &limits.pids.map_or("max".to_string(), |p| p.to_string()))?,
        Role::Cpu => {
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let quota = limits.cpu.map_or(-1, |c| ((c * CPU_PERIOD_US as f64).round() as i64).max(1000));
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Role::Cpuacct | Role::Freezer | Role::Unified => {}
    }
    Ok(())
}

/// Freeze (so nothing forks while we kill), SIGKILL everything, thaw. Without a
/// freezer hierarchy, kill repeatedly until no process is left.
pub(super) fn kill(dirs: &[(Role, PathBuf)]) -> Result<(), CgroupError> {
    let Some((_, any)) = dirs.first() else { return Ok(()) };
    if procs(any).is_empty() {
        return Ok(());
    }
    if let Some((_, freezer)) = dirs.iter().find(|(r, _)| *r == Role::Freezer) {
        let state = freezer.join("freezer.state");
        write(&state, "FROZEN")?;
        let start = Instant::now();
        while read(&state)?.trim() != "FROZEN" && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
        for pid in procs(freezer) {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        write(&state, "THAWED")?;
        return Ok(());
    }
    let start = Instant::now();
    while !procs(any).is_empty() && start.elapsed() < Duration::from_secs(5) {
        for pid in procs(any) {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
