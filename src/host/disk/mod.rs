//! Parent side (host root): disk and inode limits on what a sandbox writes —
//! its worktree, and any further tree put under the same limit with
//! [`DiskGuard::add_tree`] (the sandbox's private git layer).
//!
//! Where the worktree's filesystem enforces project quotas (ext4 with the
//! `project` and `quota` features mounted `prjquota`, xfs mounted `pquota`),
//! the tree carries a project id and the kernel refuses writes past the hard
//! limits (EDQUOT), at no cost per write. The id is leased like uids and ports
//! (`<state>/projects/<id>.lock`):
//! - a worktree already carrying an id of swarmcell's range (on its root
//!   directory, which is tagged last, so only after a complete walk) keeps it:
//!   everything created in it since inherited that id (PROJINHERIT), and the
//!   kernel refuses to rename or link a file of another project into it, so no
//!   walk is needed;
//! - otherwise a fresh id, one the filesystem counts nothing against, is set on
//!   every directory and regular file of the tree (a safe walk, see [`walk`]),
//!   the root last.
//!
//! One sandbox with limits runs on a tree at a time (a lease on the tree's
//! device and inode), and a tree whose id another running sandbox holds is
//! refused, never re-tagged under it.
//!
//! The limits bound what the tree holds, not what one run adds: a restarted
//! sandbox gets no new allowance. At teardown the limits are removed and the
//! lease released; the files keep their id (the next sandbox on the worktree
//! takes it again, and no other tree is given an id while files carry it). A
//! sandbox cannot change a project id: the kernel allows that only from the
//! initial user namespace.
//!
//! Elsewhere, `disk_enforcement` decides: "required" refuses to start;
//! "best-effort" measures the tree (at start, then periodically on a launcher
//! thread whose cost is bounded) and stops the sandbox when it is over.

mod kernel;
pub mod walk;

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::stat::{FileStat, SFlag};
use serde::{Deserialize, Serialize};

use crate::host::lease::{Lease, LeaseError};
use crate::policy::units::ByteSize;
use walk::{Measure, Visitor, WalkError};

/// Project ids swarmcell hands out: far from the small ids administrators
/// give by hand in /etc/projid.
pub const PROJECT_BASE: u32 = 0x6000_0000;
pub const PROJECT_COUNT: u32 = 65536;
/// Best-effort accounting: at most this often, and never more than 1/50 of
/// one CPU (the pause is at least 50 times the last measurement).
const MEASURE_EVERY: Duration = Duration::from_millis(500);
const MEASURE_COST_FACTOR: u32 = 50;
/// ... but at least this often: a payload that fills its tree with empty
/// files to make measuring slow must not be looked at only once an hour.
const MEASURE_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// Most entries a walk visits when no inode limit bounds it.
const MAX_ENTRIES: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// Project quotas, or the sandbox does not start: a limit someone asked
    /// for is never silently weaker than it reads.
    #[default]
    Required,
    /// Project quotas where the filesystem has them; elsewhere the tree is
    /// measured and the sandbox stopped when over (it can overshoot by what it
    /// writes between two measurements).
    BestEffort,
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Enforcement::Required => "required",
            Enforcement::BestEffort => "best-effort",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
    pub enforcement: Enforcement,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "worktree {path}: its filesystem does not enforce project quotas ({reason}), so its disk limit cannot be enforced; mount it with project quotas (ext4: features project,quota and option prjquota; xfs: pquota) or set limits.disk_enforcement = \"best-effort\""
    )]
    Unenforceable { path: PathBuf, reason: String },
    #[error("worktree {path}: {what}; free space in it or raise the limit (limits.disk/--disk, limits.inodes/--inodes)")]
    Over { path: PathBuf, what: String },
    #[error("{path}: {message}")]
    Tree { path: PathBuf, message: String },
    #[error("worktree {path}: {source}")]
    Quota { path: PathBuf, source: crate::sys::SysError },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("no free project id in {PROJECT_BASE}-{}", PROJECT_BASE + PROJECT_COUNT - 1)]
    Exhausted,
}

/// The disk limits of one sandbox, in force until [`DiskGuard::finish`] or drop.
pub struct DiskGuard {
    limits: DiskLimits,
    sandbox: String,
    mode: Mode,
}

// One per launch.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Off,
    Quota { root: OwnedFd, path: PathBuf, dev: u64, project: u32, _lease: Lease, _tree: Lease },
    Measure { roots: Vec<(PathBuf, OwnedFd)>, monitor: Option<Monitor> },
}

/// Put the worktree under `limits` before the sandbox starts. No limit: nothing
/// is done and nothing costs. Errors are one line, and leave nothing behind.
pub fn prepare(worktree: &Path, limits: &DiskLimits, state_dir: &Path, sandbox: &str) -> Result<DiskGuard, DiskError> {
    let mut guard = DiskGuard { limits: *limits, sandbox: sandbox.to_string(), mode: Mode::Off };
    if limits.bytes.is_none() && limits.inodes.is_none() {
        return Ok(guard);
    }
    let root = walk::open_root(worktree).map_err(|e| tree(worktree, e))?;
    match kernel::project_quota_enforced(root.as_fd()) {
        Ok(()) => {
            let st = fstat(&root, worktree)?;
            // One sandbox with limits per tree at a time: two would tag it
            // with two ids at once, each counting part of it.
            let tree_lease =
                Lease::try_acquire(&projects_dir(state_dir)?.join(format!("tree-{}-{}.lock", st.st_dev, st.st_ino)))?.ok_or_else(|| {
                    DiskError::Tree { path: worktree.into(), message: "another running sandbox with disk limits uses this worktree".into() }
                })?;
            let (project, lease) = project_for(&root, worktree, state_dir)?;
            guard.mode = Mode::Quota { root, path: worktree.into(), dev: st.st_dev, project, _lease: lease, _tree: tree_lease };
            guard.tag(worktree)?;
            if let Mode::Quota { root, project, .. } = &guard.mode {
                let quota = |source| DiskError::Quota { path: worktree.into(), source };
                kernel::set_limits(root.as_fd(), *project, limits.bytes, limits.inodes).map_err(quota)?;
                let used = kernel::usage(root.as_fd(), *project).map_err(quota)?;
                if let Some(what) = over(limits, used.bytes, used.inodes) {
                    return Err(DiskError::Over { path: worktree.into(), what });
                }
                tracing::debug!(
                    sandbox,
                    project = *project,
                    used_bytes = used.bytes,
                    used_inodes = used.inodes,
                    "disk limits enforced by project quota"
                );
            }
        }
        Err(e) if limits.enforcement == Enforcement::Required => {
            return Err(DiskError::Unenforceable { path: worktree.into(), reason: e.to_string() });
        }
        Err(e) => {
            tracing::info!(sandbox, worktree = %worktree.display(), reason = %e, "no project quotas: the disk limits are enforced by measuring (best-effort)");
            guard.mode = Mode::Measure { roots: vec![(worktree.into(), root)], monitor: None };
            guard.check_measured()?;
        }
    }
    Ok(guard)
}

fn tree(path: &Path, e: WalkError) -> DiskError {
    DiskError::Tree { path: path.into(), message: e.to_string() }
}

fn fstat(fd: &OwnedFd, path: &Path) -> Result<FileStat, DiskError> {
    nix::sys::stat::fstat(fd.as_fd()).map_err(|errno| DiskError::Tree { path: path.into(), message: format!("fstat: {errno}") })
}

/// What is over, in words, or `None`.
fn over(limits: &DiskLimits, bytes: u64, inodes: u64) -> Option<String> {
    if let Some(b) = limits.bytes.filter(|b| bytes > *b) {
        return Some(format!("uses {}, over its disk limit {}", human(bytes), ByteSize::bytes(b)));
    }
    if let Some(i) = limits.inodes.filter(|i| inodes > *i) {
        return Some(format!("holds {inodes} files and directories, over its inode limit {i}"));
    }
    None
}

fn human(n: u64) -> String {
    match n {
        n if n >= 10 << 30 => format!("{}G", n >> 30),
        n if n >= 10 << 20 => format!("{}M", n >> 20),
        n if n >= 10 << 10 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// `<state>/projects`, root-only: the leases of project ids and of trees.
fn projects_dir(state_dir: &Path) -> Result<PathBuf, DiskError> {
    let dir = state_dir.join("projects");
    crate::host::lease::ensure_private_dir(state_dir)?;
    crate::host::lease::ensure_private_dir(&dir)?;
    Ok(dir)
}

/// The id the worktree keeps (its root carries one of ours and nobody holds
/// it), or a fresh one the filesystem counts nothing against.
fn project_for(root: &OwnedFd, path: &Path, state_dir: &Path) -> Result<(u32, Lease), DiskError> {
    let dir = projects_dir(state_dir)?;
    let lock = |p: u32| Lease::try_acquire(&dir.join(format!("{p}.lock")));
    let quota = |source| DiskError::Quota { path: path.into(), source };
    let attr = kernel::get_xattr(root.as_fd()).map_err(quota)?;
    let ours = (PROJECT_BASE..PROJECT_BASE + PROJECT_COUNT).contains(&attr.projid);
    if ours && attr.xflags & kernel::FS_XFLAG_PROJINHERIT != 0 {
        // Held: another sandbox runs on this tree (or on one around it), and
        // re-tagging would take its files out of its limit under its feet.
        return match lock(attr.projid)? {
            Some(lease) => Ok((attr.projid, lease)),
            None => Err(DiskError::Tree {
                path: path.into(),
                message: format!("its project id {} is held by another running sandbox (on this tree or one around it)", attr.projid),
            }),
        };
    }
    let start = crate::launch::random_u32();
    for i in 0..PROJECT_COUNT {
        let p = PROJECT_BASE + start.wrapping_add(i) % PROJECT_COUNT;
        let Some(lease) = lock(p)? else { continue };
        let used = kernel::usage(root.as_fd(), p).map_err(quota)?;
        if used == kernel::Usage::default() {
            return Ok((p, lease));
        }
    }
    Err(DiskError::Exhausted)
}

/// Sets the project id on what the walk shows it: directories (with
/// PROJINHERIT) and regular files. Symlinks, FIFOs and sockets cannot be
/// opened safely for the ioctl and keep their id (each holds an inode, and at
/// most a block, that was there before this sandbox).
struct Tag {
    project: u32,
}

impl Visitor for Tag {
    fn dir(&mut self, fd: &OwnedFd, _: &FileStat, path: &Path) -> Result<(), WalkError> {
        kernel::set_project(fd.as_fd(), self.project, true).map_err(|e| WalkError::Io {
            path: path.into(),
            call: "FS_IOC_FSSETXATTR",
            errno: e.errno,
        })
    }

    fn other(&mut self, parent: &OwnedFd, parent_path: &Path, name: &CStr, st: &FileStat) -> Result<(), WalkError> {
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Ok(());
        }
        let path = || parent_path.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
        let io = |call, errno| WalkError::Io { path: path(), call, errno };
        match walk::open_file(parent, name, st).map_err(|e| io("openat2", e))? {
            Some(fd) => kernel::set_project(fd.as_fd(), self.project, false).map_err(|e| io("FS_IOC_FSSETXATTR", e.errno)),
            None => Ok(()),
        }
    }
}

/// Give the tree at `root` (opened with [`walk::open_root`]) the project id:
/// every directory (with PROJINHERIT) and regular file below it, then the root
/// itself, last, so that it carries the id only once everything below does.
/// Returns how many entries the walk saw.
pub fn tag_tree(root: &OwnedFd, path: &Path, project: u32, max_entries: u64) -> Result<u64, DiskError> {
    let n = walk::walk(root, path, max_entries, &mut Tag { project }).map_err(|e| tree(path, e))?;
    kernel::set_project(root.as_fd(), project, true).map_err(|source| DiskError::Quota { path: path.into(), source })?;
    Ok(n)
}

impl DiskGuard {
    /// Whether any limit is in force.
    pub fn active(&self) -> bool {
        !matches!(self.mode, Mode::Off)
    }

    /// Tag the tree at `path` with the project id, unless its root already has it.
    fn tag(&self, path: &Path) -> Result<(), DiskError> {
        let Mode::Quota { project, dev, .. } = &self.mode else { return Ok(()) };
        let fd = walk::open_root(path).map_err(|e| tree(path, e))?;
        if fstat(&fd, path)?.st_dev != *dev {
            return Err(DiskError::Tree {
                path: path.into(),
                message: "is not on the worktree's filesystem, so it cannot share its project quota".into(),
            });
        }
        let quota = |source| DiskError::Quota { path: path.into(), source };
        let attr = kernel::get_xattr(fd.as_fd()).map_err(quota)?;
        if attr.projid == *project && attr.xflags & kernel::FS_XFLAG_PROJINHERIT != 0 {
            return Ok(());
        }
        let started = Instant::now();
        let n = tag_tree(&fd, path, *project, max_entries(&self.limits))?;
        tracing::info!(sandbox = %self.sandbox, path = %path.display(), project = *project, entries = n, took_ms = started.elapsed().as_millis() as u64, "tagged the tree with its project id");
        Ok(())
    }

    /// Put another tree (the sandbox's private git layer) under the same
    /// limits: the same project id, or measured with the worktree. Call it
    /// before [`DiskGuard::watch`]; it must be on the worktree's filesystem
    /// when quotas enforce the limits.
    pub fn add_tree(&mut self, path: &Path) -> Result<(), DiskError> {
        match &mut self.mode {
            Mode::Off => Ok(()),
            Mode::Quota { .. } => self.tag(path),
            Mode::Measure { roots, .. } => {
                let fd = walk::open_root(path).map_err(|e| tree(path, e))?;
                roots.push((path.into(), fd));
                self.check_measured()
            }
        }
    }

    /// Best-effort accounting: measure now and refuse when over.
    fn check_measured(&self) -> Result<(), DiskError> {
        let Mode::Measure { roots, .. } = &self.mode else { return Ok(()) };
        match measure(roots, &self.limits) {
            Ok(None) => Ok(()),
            Ok(Some(what)) => Err(DiskError::Over { path: roots[0].0.clone(), what }),
            Err((path, e)) => Err(tree(&path, e)),
        }
    }

    /// Best-effort accounting: from now on, measure periodically and SIGKILL
    /// `pid` (the sandbox's init: the whole sandbox ends) once over.
    pub fn watch(&mut self, pid: libc::pid_t) -> Result<(), DiskError> {
        let limits = self.limits;
        let sandbox = self.sandbox.clone();
        let Mode::Measure { roots, monitor } = &mut self.mode else { return Ok(()) };
        let path = roots[0].0.clone();
        let pidfd = kernel::PidFd::open(pid).map_err(|source| DiskError::Quota { path: path.clone(), source })?;
        let mut fds = Vec::new();
        for (p, fd) in roots.iter() {
            let fd = fd.try_clone().map_err(|e| DiskError::Tree { path: p.clone(), message: format!("dup: {e}") })?;
            fds.push((p.clone(), fd));
        }
        *monitor = Some(
            Monitor::start(fds, limits, sandbox, pidfd, pid)
                .map_err(|e| DiskError::Tree { path, message: format!("starting the disk monitor: {e}") })?,
        );
        Ok(())
    }

    /// Remove the limits and release the project id; say why the sandbox was
    /// stopped if the monitor stopped it.
    pub fn finish(mut self) -> Option<String> {
        self.release()
    }

    fn release(&mut self) -> Option<String> {
        match std::mem::replace(&mut self.mode, Mode::Off) {
            Mode::Off => None,
            Mode::Quota { root, path, project, _lease, .. } => {
                if let Err(e) = kernel::set_limits(root.as_fd(), project, None, None) {
                    tracing::warn!(sandbox = %self.sandbox, worktree = %path.display(), project, error = %e, "could not remove the project quota limits");
                }
                None
            }
            Mode::Measure { monitor, roots } => {
                let stopped = monitor.and_then(Monitor::stop);
                // A burst between two measurements: the next start is refused; say so now.
                if stopped.is_none()
                    && let Ok(Some(what)) = measure(&roots, &self.limits)
                {
                    crate::launch::events::emit(crate::launch::events::Event::DiskLimit { outcome: "exited".into(), detail: what });
                }
                stopped
            }
        }
    }
}

impl Drop for DiskGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// A walk past this many entries has found the tree over its inode limit (or
/// too large to walk at all).
fn max_entries(limits: &DiskLimits) -> u64 {
    limits.inodes.map_or(MAX_ENTRIES, |i| i.saturating_add(1).min(MAX_ENTRIES))
}

/// Measure every root; `Some(what)` when over a limit. The walk stops as soon
/// as a limit is passed, so it never costs more than the limits allow.
fn measure(roots: &[(PathBuf, OwnedFd)], limits: &DiskLimits) -> Result<Option<String>, (PathBuf, WalkError)> {
    measure_totals(roots, limits).map(|(what, _)| what)
}

/// What is over (if anything) and the totals found: (bytes, inodes).
type Measured = (Option<String>, (u64, u64));

/// [`measure`], with the totals found.
fn measure_totals(roots: &[(PathBuf, OwnedFd)], limits: &DiskLimits) -> Result<Measured, (PathBuf, WalkError)> {
    let mut m = Measure::new(limits.bytes, limits.inodes);
    let max = max_entries(limits);
    for (path, fd) in roots {
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|errno| (path.clone(), WalkError::Io { path: path.clone(), call: "fstat", errno }))?;
        let r = m.add(&st).and_then(|()| walk::walk(fd, path, max, &mut m).map(|_| ()));
        match r {
            Ok(()) => {}
            Err(WalkError::Stopped) => break,
            Err(e) => return Err((path.clone(), e)),
        }
    }
    Ok((over(limits, m.bytes, m.inodes), (m.bytes, m.inodes)))
}

/// Files the sandbox's processes hold open (or mapped) after unlinking them
/// still hold blocks on the tree's filesystem, and no walk sees them: add
/// those on the roots' devices, found through /proc of init's descendants
/// (every process of the sandbox: orphans are reparented to its init).
fn with_unlinked(m: Measured, roots: &[(PathBuf, OwnedFd)], limits: &DiskLimits, init: libc::pid_t) -> Measured {
    let (what, (bytes, inodes)) = m;
    if what.is_some() {
        return (what, (bytes, inodes));
    }
    let devs: Vec<u64> = roots.iter().filter_map(|(_, fd)| nix::sys::stat::fstat(fd.as_fd()).ok()).map(|st| st.st_dev).collect();
    let (held, files) = unlinked_held(init, &devs);
    let (bytes, inodes) = (bytes.saturating_add(held), inodes.saturating_add(files));
    (over(limits, bytes, inodes), (bytes, inodes))
}

/// Bounds of the /proc scan (a sandbox's pids are bounded by its cgroup too).
const MAX_PROCS: usize = 4096;
const MAX_FDS_PER_PROC: usize = 65536;

/// (bytes, files) of regular files with no name left, on one of `devs`,
/// open or mapped by `init` or a descendant. stat() on /proc/P/fd/N and on
/// map_files entries reads the inode without opening anything.
fn unlinked_held(init: libc::pid_t, devs: &[u64]) -> (u64, u64) {
    let (mut seen, mut visited) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut queue = vec![init];
    while let Some(pid) = queue.pop() {
        if visited.len() >= MAX_PROCS || !visited.insert(pid) {
            continue;
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                queue.extend(children.split_whitespace().filter_map(|c| c.parse::<libc::pid_t>().ok()));
            }
        }
        for dir in ["fd", "map_files"] {
            let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/{dir}")) else { continue };
            for e in entries.flatten().take(MAX_FDS_PER_PROC) {
                let Ok(st) = nix::sys::stat::stat(&e.path()) else { continue };
                let regular = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT == nix::sys::stat::SFlag::S_IFREG;
                if regular && st.st_nlink == 0 && devs.contains(&st.st_dev) && seen.insert((st.st_dev, st.st_ino)) {
                    bytes = bytes.saturating_add((st.st_blocks as u64).saturating_mul(512));
                    files += 1;
                }
            }
        }
    }
    (bytes, files)
}

/// The best-effort accounting thread.
struct Monitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stopped: Arc<Mutex<Option<String>>>,
}

impl Monitor {
    fn start(
        roots: Vec<(PathBuf, OwnedFd)>,
        limits: DiskLimits,
        sandbox: String,
        pidfd: kernel::PidFd,
        init: libc::pid_t,
    ) -> std::io::Result<Monitor> {
        let (tx, rx) = mpsc::channel::<()>();
        let stopped = Arc::new(Mutex::new(None));
        let out = stopped.clone();
        let thread = std::thread::Builder::new().name("disk".into()).spawn(move || {
            let mut pause = MEASURE_EVERY;
            let mut last = None;
            loop {
                if !matches!(rx.recv_timeout(pause), Err(mpsc::RecvTimeoutError::Timeout)) {
                    return;
                }
                let started = Instant::now();
                let what = match measure_totals(&roots, &limits).map(|m| with_unlinked(m, &roots, &limits, init)) {
                    Ok((None, totals)) => {
                        // An idle tree is looked at less and less often (most
                        // of a host's sandboxes are idle at any time); a
                        // changing one as often as its cost allows.
                        let cost = (started.elapsed() * MEASURE_COST_FACTOR).max(MEASURE_EVERY);
                        pause = if last == Some(totals) { (pause * 2).max(cost) } else { cost }.min(MEASURE_AT_LEAST_EVERY);
                        last = Some(totals);
                        continue;
                    }
                    Ok((Some(what), _)) => what,
                    // Fail closed: a tree that cannot be measured is not under its limit.
                    Err((path, e)) => format!("cannot be measured ({path}: {e})", path = path.display()),
                };
                crate::launch::events::emit(crate::launch::events::Event::DiskLimit { outcome: "stopped".into(), detail: what.clone() });
                if let Err(e) = pidfd.kill() {
                    tracing::warn!(sandbox = %sandbox, error = %e, "could not stop the sandbox");
                }
                if let Ok(mut slot) = out.lock() {
                    *slot = Some(format!("stopped: its worktree {what}"));
                }
                return;
            }
        })?;
        Ok(Monitor { stop: Some(tx), thread: Some(thread), stopped })
    }

    fn stop(mut self) -> Option<String> {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stopped.lock().ok().and_then(|mut s| s.take())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_names_the_limit_that_was_passed() {
        let l = DiskLimits { bytes: Some(8 << 20), inodes: Some(100), enforcement: Enforcement::Required };
        assert_eq!(over(&l, 8 << 20, 100), None);
        assert_eq!(over(&l, 12 << 20, 1).unwrap(), "uses 12M, over its disk limit 8M");
        assert_eq!(over(&l, 0, 101).unwrap(), "holds 101 files and directories, over its inode limit 100");
    }

    #[test]
    fn no_limit_costs_nothing_and_touches_nothing() {
        let l = DiskLimits { bytes: None, inodes: None, enforcement: Enforcement::Required };
        let g = prepare(Path::new("/nonexistent/worktree"), &l, Path::new("/nonexistent/state"), "sc-test").unwrap();
        assert!(!g.active());
    }
}
