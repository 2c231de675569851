//! Host side: freeze, thaw and kill every process of a sandbox through its
//! cgroups: the v1 freezer hierarchy (`freezer.state`) or cgroup v2
//! (`cgroup.freeze`, `cgroup.kill`). A frozen process runs nothing, not even
//! its signal handlers; on v1 a SIGKILL takes effect only once thawed, so a
//! kill thaws after signalling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a freeze or thaw may take to settle.
const SETTLE: Duration = Duration::from_secs(5);

fn wait_for(what: &Path, done: impl Fn(&str) -> bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let now = std::fs::read_to_string(what).map_err(|e| format!("{}: {e}", what.display()))?;
        if done(&now) {
            return Ok(());
        }
        if start.elapsed() > SETTLE {
            return Err(format!("{}: still {:?} after {}s", what.display(), now.trim(), SETTLE.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Freeze (`true`) or thaw every process in `cgroups` (a sandbox's cgroup
/// directories, one per hierarchy); waits until the kernel says it is done.
pub fn set(cgroups: &[PathBuf], frozen: bool) -> Result<(), String> {
    let mut found = false;
    for dir in cgroups {
        let (v1, v2) = (dir.join("freezer.state"), dir.join("cgroup.freeze"));
        if v1.exists() {
            found = true;
            std::fs::write(&v1, if frozen { "FROZEN" } else { "THAWED" }).map_err(|e| format!("{}: {e}", v1.display()))?;
            let want = if frozen { "FROZEN" } else { "THAWED" };
            wait_for(&v1, |s| s.trim() == want)?;
        } else if v2.exists() {
            found = true;
            std::fs::write(&v2, if frozen { "1" } else { "0" }).map_err(|e| format!("{}: {e}", v2.display()))?;
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            wait_for(&dir.join("cgroup.events"), |s| s.lines().any(|l| l.trim() == want))?;
        }
    }
    if !found {
        return Err("the sandbox has no freezer cgroup (neither v1 freezer.state nor v2 cgroup.freeze)".into());
    }
    Ok(())
}

/// The pids in a sandbox's cgroups (the daemon's PID namespace).
pub fn pids(cgroups: &[PathBuf]) -> Vec<i32> {
    let mut out: Vec<i32> = cgroups
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// SIGKILL every process of the sandbox (frozen or not), then thaw so that
/// the kill takes effect. Returns how many were signalled.
pub fn kill(cgroups: &[PathBuf]) -> usize {
    let mut n = 0;
    // Listed first: on v2, cgroup.kill empties the list before we read it.
    let listed = pids(cgroups);
    for dir in cgroups {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    for pid in listed {
        // SAFETY: SIGKILL to a process of a sandbox cgroup (the launcher's subtree).
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            n += 1;
        }
    }
    let _ = set(cgroups, false);
    n
}
