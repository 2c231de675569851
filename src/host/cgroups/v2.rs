//! cgroup v2: delegation (no internal processes), limits, `cgroup.kill`.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{CgroupError, Hierarchy, Limits, V2_CONTROLLERS, mkdir, read, write};

pub const CPU_PERIOD_US: u64 = 100_000;
/// Where the launcher moves itself when its own cgroup must hand its
/// controllers down (a cgroup with processes cannot have controlled children).
pub const SUPERVISOR_LEAF: &str = "supervisor";

/// Make `<own>/<parent>` a cgroup whose children get memory, pids and cpu.
pub(super) fn ensure_parent(h: &Hierarchy, parent: &str) -> Result<(), CgroupError> {
    let own = h.own_dir();
    let enable = V2_CONTROLLERS.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    let subtree = own.join("cgroup.subtree_control");
    let enabled = read(&subtree).unwrap_or_default();
    if !V2_CONTROLLERS.iter().all(|c| enabled.split_whitespace().any(|e| e == *c))
        && let Err(e) = write(&subtree, &enable)
    {
        let busy = matches!(&e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY));
        if !busy {
            return Err(e);
        }
        // Our own cgroup has processes: move ourselves into a leaf, as
        // systemd's Delegate=yes expects, and try again.
        let leaf = own.join(SUPERVISOR_LEAF);
        mkdir(&leaf, true)?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        write(&subtree, &enable).map_err(|e| {
            CgroupError::Unusable(format!(
                "{} still has other processes, so it cannot hand its controllers to sandboxes ({e}); run swarmcell in its own delegated cgroup (systemd: Delegate=yes)",
                own.display()
            ))
        })?;
    }
    let dir = own.join(parent);
    mkdir(&dir, true)?;
    write(&dir.join("cgroup.subtree_control"), &enable)
}

pub(super) fn apply(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let max = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
    write(&dir.join("memory.max"), &max(limits.memory))?;
    write(&dir.join("memory.swap.max"), &max(limits.swap))?;
    // An OOM kill takes the whole sandbox, never leaves it half-alive.
    write(&dir.join("memory.oom.group"), "1")?;
    write(&dir.join("pids.max"), &max(limits.pids))?;
    let cpu = limits.cpu.map_or("max".to_string(), |c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1000).to_string());
    write(&dir.join("cpu.max"), &format!("{cpu} {CPU_PERIOD_US}"))
}

pub(super) fn kill(dir: &Path) -> Result<(), CgroupError> {
    if !populated(dir) {
        return Ok(());
    }
    write(&dir.join("cgroup.kill"), "1")?;
    let start = Instant::now();
    while populated(dir) {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(CgroupError::StillPopulated { path: dir.into(), secs: 5 });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// `cgroup.events` says whether any process is left in the subtree.
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).map(|s| s.lines().any(|l| l.trim() == "populated 1")).unwrap_or(false)
}
