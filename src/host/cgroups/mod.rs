//! Parent side: each sandbox's cgroup, created inside the launcher's own cgroup
//! subtree (`<own>/<parent>/<sandbox-id>`), never at a hierarchy root.
//!
//! cgroup v2 is used when its memory, pids and cpu controllers are available to
//! the launcher's cgroup; otherwise the v1 memory, pids and cpu hierarchies (with
//! cpuacct for accounting and freezer for killing, where mounted). Hybrid hosts
//! (v1 controllers, an empty cgroup2 at /sys/fs/cgroup/unified) use v1.
//!
//! Every path is derived from the mount points found in mountinfo, so the code
//! can be pointed at a fake tree in tests.

mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::lease::{Lease, LeaseError};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups: {0}")]
    Unusable(String),
    #[error("cgroup {path}: {action}: {source}")]
    Io { path: PathBuf, action: String, source: std::io::Error },
    #[error("cgroup {path}: processes still running after {secs} s")]
    StillPopulated { path: PathBuf, secs: u64 },
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Resource limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub swap: Option<u64>,
    pub pids: Option<u64>,
    /// CPU cores (fractional).
    pub cpu: Option<f64>,
}

/// One cgroup hierarchy: where it is mounted, the cgroup path its mount shows
/// as `/`, and the launcher's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub mount_root: PathBuf,
    pub own: PathBuf,
}

impl Hierarchy {
    /// The directory of the launcher's own cgroup.
    fn own_dir(&self) -> PathBuf {
        let rel = self.own.strip_prefix(&self.mount_root).unwrap_or(&self.own);
        self.mount.join(rel.strip_prefix("/").unwrap_or(rel))
    }
}

// One per launch: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2(Hierarchy),
    V1 { memory: Hierarchy, pids: Hierarchy, cpu: Hierarchy, cpuacct: Option<Hierarchy>, freezer: Option<Hierarchy> },
}

pub const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

impl Layout {
    pub fn detect() -> Result<Layout, CgroupError> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| CgroupError::Unusable(format!("cannot read {p}: {e}")));
        Layout::detect_from(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
    }

    /// Decide from the texts of /proc/self/mountinfo and /proc/self/cgroup.
    pub fn detect_from(mountinfo: &str, self_cgroup: &str) -> Result<Layout, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let own = |controller: &str| -> Option<PathBuf> {
            self_cgroup.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                let hit = if controller.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == controller) };
                hit.then(|| PathBuf::from(path))
            })
        };
        if let (Some((mount, root)), Some(own2)) = (mounts.iter().find(|m| m.2 == "cgroup2").map(|m| (m.0.clone(), m.1.clone())), own("")) {
            let h = Hierarchy { mount, mount_root: root, own: own2 };
            let available = std::fs::read_to_string(h.own_dir().join("cgroup.controllers")).unwrap_or_default();
            if V2_CONTROLLERS.iter().all(|c| available.split_whitespace().any(|a| a == *c)) {
                return Ok(Layout::V2(h));
            }
        }
        let v1 = |controller: &str| -> Option<Hierarchy> {
            let (mount, root, _, _) = mounts.iter().find(|m| m.2 == "cgroup" && m.3.split(',').any(|o| o == controller))?;
            Some(Hierarchy { mount: mount.clone(), mount_root: root.clone(), own: own(controller)? })
        };
        match (v1("memory"), v1("pids"), v1("cpu")) {
            (Some(memory), Some(pids), Some(cpu)) => {
                let cpuacct = v1("cpuacct").filter(|h| h.mount != cpu.mount);
                Ok(Layout::V1 { memory, pids, cpu, cpuacct, freezer: v1("freezer") })
            }
            _ => Err(CgroupError::Unusable(
                "neither cgroup v2 with the memory, pids and cpu controllers delegated to this process, nor the v1 memory, pids and cpu hierarchies are available; run swarmcell from a delegated cgroup (systemd: Delegate=yes)".into(),
            )),
        }
    }

    pub fn version(&self) -> u8 {
        match self {
            Layout::V2(_) => 2,
            Layout::V1 { .. } => 1,
        }
    }

    /// (role, hierarchy) pairs this layout uses.
    fn hierarchies(&self) -> Vec<(Role, &Hierarchy)> {
        match self {
            Layout::V2(h) => vec![(Role::Unified, h)],
            Layout::V1 { memory, pids, cpu, cpuacct, freezer } => {
                let mut v = vec![(Role::Memory, memory), (Role::Pids, pids), (Role::Cpu, cpu)];
                v.extend(cpuacct.iter().map(|h| (Role::Cpuacct, h)));
                v.extend(freezer.iter().map(|h| (Role::Freezer, h)));
                v
            }
        }
    }

    /// The directory that holds the sandboxes' cgroups in each hierarchy.
    fn parent_dirs(&self, parent: &str) -> Vec<(Role, PathBuf)> {
        self.hierarchies().into_iter().map(|(r, h)| (r, h.own_dir().join(parent))).collect()
    }
}

/// (mount point, mount root, fs type, super options) of each cgroup mount.
fn parse_mountinfo(text: &str) -> Vec<(PathBuf, PathBuf, String, String)> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let fstype = *post.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some((
                PathBuf::from(unescape(pre.get(4)?)),
                PathBuf::from(unescape(pre.get(3)?)),
                fstype.to_string(),
                post.get(2).unwrap_or(&"").to_string(),
            ))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Unified,
    Memory,
    Pids,
    Cpu,
    Cpuacct,
    Freezer,
}

/// Sandbox cgroup names (`sc-` and 12 hex digits, as `new_sandbox_id` makes
/// them): the only names `gc` ever removes.
pub fn is_sandbox_name(name: &str) -> bool {
    name.strip_prefix("sc-").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Parent directory names (`--cgroup-parent`): one plain path component.
pub fn valid_parent_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name != "." && name != ".." && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// A sandbox's cgroup: one directory per hierarchy. Dropping it kills whatever
/// is still inside and removes the directories. (The parent directory that
/// holds them stays: making it again for the next sandbox costs a cgroup per
/// hierarchy.)
#[derive(Debug)]
pub struct SandboxCgroup {
    version: u8,
    dirs: Vec<(Role, PathBuf)>,
    memory_limit: Option<u64>,
    removed: bool,
}

/// Create the sandbox's cgroup with its limits applied.
pub fn create(layout: &Layout, parent: &str, id: &str, limits: &Limits) -> Result<SandboxCgroup, CgroupError> {
    let mut cg = SandboxCgroup { version: layout.version(), dirs: Vec::new(), memory_limit: limits.memory, removed: false };
    if let Layout::V2(h) = layout {
        v2::ensure_parent(h, parent)?;
    }
    for (role, dir) in layout.parent_dirs(parent) {
        let own = dir.join(id);
        // A concurrent teardown may remove the (empty) parent between our two
        // mkdirs: create it again.
        let mut attempts = 0;
        loop {
            mkdir(&dir, true)?;
            match mkdir(&own, false) {
                Err(CgroupError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                r => break r?,
            }
        }
        cg.dirs.push((role, own));
    }
    match layout {
        Layout::V2(_) => v2::apply(&cg.dirs[0].1, limits)?,
        Layout::V1 { .. } => {
            for (role, dir) in &cg.dirs {
                v1::apply(*role, dir, limits)?;
            }
        }
    }
    Ok(cg)
}

impl SandboxCgroup {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// v1: each hierarchy's `tasks` file, opened by us (root) for the sandbox
    /// init to write "0" to between its clone and its exec. A thread that moves
    /// itself is migrated without the kernel's global threadgroup lock (a
    /// percpu rwsem whose write side waits for an RCU grace period, milliseconds
    /// per launch on a busy host), which writing another process's pid to
    /// `cgroup.procs` always takes; the write is allowed by the opener's
    /// credentials (v1 checks the file's, root). The new process is single
    /// threaded, so moving its one thread moves it. None on v2, where
    /// `cgroup.procs` takes the lock anyway (`clone3(CLONE_INTO_CGROUP)` is
    /// the way there).
    pub fn self_attach_files(&self) -> Option<Vec<std::os::fd::OwnedFd>> {
        if self.version == 2 {
            return None;
        }
        self.dirs.iter().map(|(_, d)| std::fs::OpenOptions::new().write(true).open(d.join("tasks")).ok().map(std::os::fd::OwnedFd::from)).collect()
    }

    /// Move a process (the sandbox init, before it runs anything) into the cgroup.
    pub fn add_process(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = match self.version {
            2 => ("memory.events", &self.dirs[0].1),
            _ => match self.dirs.iter().find(|(r, _)| *r == Role::Memory) {
                Some((_, d)) => ("memory.oom_control", d),
                None => return 0,
            },
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// Kill every process still in the cgroup, wait until it is empty, remove it.
    pub fn kill_and_remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        // Usually empty by now (the launcher reaped the init, and the kernel
        // ended its PID namespace with it): the removal then succeeds at once,
        // and only a cgroup still in use (EBUSY) is killed and waited for.
        self.dirs.retain(|(_, dir)| match std::fs::remove_dir(dir) {
            Ok(()) => false,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        });
        if self.dirs.is_empty() {
            self.removed = true;
            return Ok(());
        }
        match self.version {
            2 => v2::kill(&self.dirs[0].1)?,
            _ => v1::kill(&self.dirs)?,
        }
        for (_, dir) in self.dirs.iter().rev() {
            wait_empty(dir, Duration::from_secs(5))?;
            rmdir(dir)?;
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.kill_and_remove() {
            tracing::error!(error = %e, "removing a sandbox cgroup failed");
        }
    }
}

/// Remove the cgroups of sandboxes whose launcher is gone: a cgroup named like a
/// sandbox whose lease (`<state>/sandboxes/<id>.lock`) nobody holds. Returns the
/// removed ids.
pub fn gc(layout: &Layout, parent: &str, state_dir: &Path) -> Result<Vec<String>, CgroupError> {
    let leases = state_dir.join("sandboxes");
    crate::host::lease::ensure_private_dir(state_dir)?;
    crate::host::lease::ensure_private_dir(&leases)?;
    let mut ids: Vec<String> = Vec::new();
    for (_, dir) in layout.parent_dirs(parent) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_sandbox_name(&name) && e.path().is_dir() && !ids.contains(&name) {
                ids.push(name);
            }
        }
    }
    let mut removed = Vec::new();
    for id in ids {
        let Some(_lease) = Lease::try_acquire(&leases.join(format!("{id}.lock")))? else { continue };
        let dirs: Vec<(Role, PathBuf)> = layout.parent_dirs(parent).into_iter().map(|(r, d)| (r, d.join(&id))).filter(|(_, d)| d.is_dir()).collect();
        let mut cg = SandboxCgroup { version: layout.version(), dirs, memory_limit: None, removed: false };
        cg.kill_and_remove()?;
        tracing::info!(sandbox = %id, "removed the stale cgroup of a sandbox whose launcher is gone");
        removed.push(id);
    }
    for dir in ["sandboxes", "uids", "ports", "projects"] {
        crate::host::lease::sweep(&state_dir.join(dir))?;
    }
    Ok(removed)
}

/// The sandbox cgroup directories that exist now under `parent`, in every
/// hierarchy (what `gc` would consider; for tests and inspection).
pub fn sandbox_dirs(layout: &Layout, parent: &str) -> Vec<PathBuf> {
    layout
        .parent_dirs(parent)
        .into_iter()
        .flat_map(|(_, d)| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| is_sandbox_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

fn io(path: &Path, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CgroupError {
    let (path, action) = (path.to_path_buf(), action.into());
    move |source| CgroupError::Io { path, action, source }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path, format!("writing {value:?}")))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io(path, "reading"))
}

fn mkdir(path: &Path, existing_ok: bool) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if existing_ok && e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r.map_err(io(path, "mkdir")),
    }
}

fn rmdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(io(path, "rmdir")),
    }
}

fn procs(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn wait_empty(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    while dir.is_dir() && !procs(dir).is_empty() {
        if start.elapsed() > timeout {
            return Err(CgroupError::StillPopulated { path: dir.into(), secs: timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
