//! Git worktrees on the host side (root): the worktree manager (`swarmcell
//! worktree ...`) and what a sandbox gets of its repository.
//!
//! The trust rule (README, "Trust boundaries"): the host side trusts nothing a
//! sandbox can write (the worktree, its `.git`, its private git layer) and
//! nothing an unprivileged user owns. So:
//! - root opens such paths only through [`crate::fs::safe_open`];
//! - git runs only as the repository's owner, hooks and fsmonitor off, with a
//!   deadline ([`cmd`]);
//! - which repository, admin dir and branch a worktree belongs to comes from a
//!   root-owned record ([`record`]), never again from its `.git`;
//! - the sandbox never writes the real repository: it gets a private layer
//!   ([`layer`]) and a verifying publisher imports its branch ([`publish`]).

pub mod cmd;
pub mod layer;
pub mod publish;
pub mod record;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::fs::safe_open::{self, Kind};

pub const DEFAULT_BASE: &str = "/var/lib/swarmcell/worktrees";
pub const BRANCH_PREFIX: &str = "agent";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("agent id {0:?} is invalid: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit")]
    BadId(String),
    #[error("branch name {0:?} is invalid: use 1-63 of a-z, A-Z, 0-9, '.', '_' and '-'")]
    BadBranch(String),
    #[error("worktree path {0} already exists (refusing to reuse it)")]
    Exists(PathBuf),
    #[error("no worktree {0}")]
    Missing(PathBuf),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A check of the trust rule failed (the daemon audits it as `policy_violation`).
    #[error("{0}")]
    Violation(String),
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error(transparent)]
    Safe(#[from] safe_open::SafeError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io { path: path.into(), source }
}

/// Text from git or a repository, made safe for a log line or a terminal.
pub fn escape(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).take(400).collect()
}

pub fn valid_agent_id(id: &str) -> bool {
    crate::launch::valid_sandbox_id(id)
}

/// A branch name's last part (`agent/ID/LEAF`).
pub fn valid_branch_leaf(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The base directory, created root-only if missing; opened without following symlinks.
fn base_dir(base: &Path, create: bool) -> Result<(safe_open::Checked, PathBuf), GitError> {
    if create {
        std::fs::create_dir_all(base).map_err(io(base))?;
    }
    let canonical = base.canonicalize().map_err(io(base))?;
    let c = safe_open::open_dir_nofollow(&canonical, None)?;
    Ok((c, canonical))
}

pub struct AddRequest<'a> {
    pub repo: &'a Path,
    pub id: &'a str,
    pub base: &'a Path,
    pub branch: Option<&'a str>,
    pub owner: Option<(u32, u32)>,
}

/// `swarmcell worktree add`: BASE/ID as a new worktree on branch agent/ID/NAME,
/// mode 0700, owned by the repository's owner (never root). Root makes only the
/// empty directory; git runs as the owner (hooks off); the worktree is recorded.
pub fn add(req: &AddRequest) -> Result<PathBuf, GitError> {
    use std::os::unix::fs::MetadataExt;
    if !valid_agent_id(req.id) {
        return Err(GitError::BadId(req.id.into()));
    }
    let leaf = req.branch.unwrap_or("work");
    if !valid_branch_leaf(leaf) {
        return Err(GitError::BadBranch(leaf.into()));
    }
    let repo = req.repo.canonicalize().map_err(io(req.repo))?;
    let meta = std::fs::metadata(&repo).map_err(io(&repo))?;
    let (uid, gid) = req.owner.unwrap_or((meta.uid(), meta.gid()));
    if uid == 0 || gid == 0 {
        return Err(GitError::Invalid {
            path: repo,
            message: "worktrees would belong to root: chown the repository to the agents' user or pass --owner UID:GID".into(),
        });
    }
    if uid != meta.uid() {
        return Err(GitError::Invalid {
            path: repo,
            message: format!("the repository belongs to uid {}: its worktrees must too (--owner)", meta.uid()),
        });
    }
    let (base_fd, base) = base_dir(req.base, true)?;
    let path = base.join(req.id);
    let b = base_fd.fd.as_fd();
    match nix::sys::stat::mkdirat(b, req.id, nix::sys::stat::Mode::from_bits_truncate(0o700)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => return Err(GitError::Exists(path)),
        Err(e) => return Err(GitError::Invalid { path, message: e.desc().into() }),
    }
    let made = safe_open::open_beneath(b, &base, Path::new(req.id), Kind::Dir, Some(0))?;
    nix::unistd::fchown(&made.fd, Some(uid.into()), Some(gid.into()))
        .map_err(|e| GitError::Invalid { path: path.clone(), message: e.desc().into() })?;
    let branch = format!("{BRANCH_PREFIX}/{}/{leaf}", req.id);
    let r = (|| {
        let c = |s: &str| std::ffi::OsString::from(s);
        let args =
            [c("-C"), repo.clone().into_os_string(), c("worktree"), c("add"), c("--quiet"), c("-b"), c(&branch), path.clone().into_os_string()];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        cmd::run_as((uid, gid), &args, &[], cmd::DEADLINE)?;
        let wt = record::Opened::open(&path)?;
        record::resolve(&wt, &[], true, "worktree add")?
            .ok_or_else(|| GitError::Invalid { path: path.clone(), message: "git made no linked worktree".into() })
    })();
    if let Err(e) = r {
        let _ = safe_open::remove_owned(b, &base, req.id, uid);
        return Err(e);
    }
    Ok(path)
}

/// BASE/ID opened without following symlinks, with its record.
fn recorded(base: &Path, id: &str) -> Result<(record::Opened, Option<record::Record>), GitError> {
    if !valid_agent_id(id) {
        return Err(GitError::BadId(id.into()));
    }
    let (b, base) = base_dir(base, false)?;
    let path = base.join(id);
    let c = match safe_open::open_beneath(b.fd.as_fd(), &base, Path::new(id), Kind::Dir, None) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Err(GitError::Missing(path)),
        Err(e) => return Err(e.into()),
    };
    let key = record::key(c.stat.st_dev, c.stat.st_ino);
    let wt = record::Opened { path, btime: None, dir: c };
    let rec = match record::key_dir(&key, false)? {
        Some((d, p)) => record::load(&d, &p)?,
        None => None,
    };
    Ok((wt, rec))
}

/// The lease held while a sandbox runs on the worktree of `key`.
pub fn lease(key: &str) -> Result<Option<crate::host::lease::Lease>, GitError> {
    let (_, p) = record::key_dir(key, true)?.ok_or_else(|| GitError::Missing(Path::new(record::STATE_DIR).join(key)))?;
    crate::host::lease::Lease::try_acquire(&p.join("lease")).map_err(|e| GitError::Invalid { path: p, message: e.to_string() })
}

/// `swarmcell worktree remove`: the worktree directory and its admin dir are
/// removed by root without following anything planted in them, then its
/// record and private layer. Not forced, a worktree with changes is kept
/// (`git status` as the owner, on the real admin dir, hooks off). The branch
/// (the agent's work, published at stop) is kept.
pub fn remove(base: &Path, id: &str, force: bool) -> Result<PathBuf, GitError> {
    let (wt, rec) = recorded(base, id)?;
    let path = wt.path.clone();
    let Some(rec) = rec else {
        return Err(GitError::Invalid { path, message: "no swarmcell record for this worktree: remove it with git".into() });
    };
    let _held = lease(&rec.key())?.ok_or_else(|| GitError::Invalid { path: path.clone(), message: "a sandbox runs on this worktree".into() })?;
    if !force {
        // The real admin dir (never sandbox-visible) and its repository's own
        // config; submodules are not entered (their .git is the sandbox's).
        let (admin, work) = (cmd::flag("git-dir", &rec.admin()), cmd::flag("work-tree", &path));
        let fixed = ["status", "--porcelain", "--ignore-submodules=all"];
        let args: Vec<&std::ffi::OsStr> = [admin.as_os_str(), work.as_os_str()].into_iter().chain(fixed.iter().map(std::ffi::OsStr::new)).collect();
        let status = cmd::run_as((rec.uid, rec.gid), &args, &[], cmd::DEADLINE)?;
        if !status.is_empty() {
            return Err(GitError::Invalid { path, message: "has changes or untracked files (use --force to remove it anyway)".into() });
        }
        // Commits the publisher could not bring over (not a fast-forward) live only in the layer.
        let mut p = publish::Publisher::new(rec.clone(), "worktree-remove", false, None);
        if let (Ok(Some(tip)), Some(branch)) = (p.layer_tip(), &rec.branch)
            && p.real_tip(branch)? != tip
        {
            return Err(GitError::Invalid {
                path,
                message: format!("its branch {branch} has unpublished commits ({tip}) (use --force to remove it anyway)"),
            });
        }
    }
    let (b, base) = base_dir(base, false)?;
    safe_open::remove_owned(b.fd.as_fd(), &base, id, rec.uid)?;
    // The admin dir, only if it is still the recorded one.
    if let Ok(c) = safe_open::open_dir_nofollow(&rec.common, Some(rec.uid))
        && (c.stat.st_dev, c.stat.st_ino) == (rec.common_dev, rec.common_ino)
        && let Ok(w) = safe_open::open_beneath(c.fd.as_fd(), &rec.common, Path::new("worktrees"), Kind::Dir, Some(rec.uid))
        && let Ok(a) = safe_open::open_beneath(w.fd.as_fd(), &rec.common.join("worktrees"), Path::new(&rec.name), Kind::Dir, Some(rec.uid))
        && a.stat.st_ino == rec.admin_ino
    {
        drop(a);
        safe_open::remove_owned(w.fd.as_fd(), &rec.common.join("worktrees"), &rec.name, rec.uid)?;
    }
    drop(_held);
    record::forget(&rec.key(), rec.uid)?;
    Ok(path)
}

pub struct Listed {
    pub id: String,
    pub path: PathBuf,
    pub branch: String,
    pub repo: PathBuf,
}

/// The worktrees under BASE, from their records (nothing in them is read).
pub fn list(base: &Path) -> Result<Vec<Listed>, GitError> {
    let Ok((b, base)) = base_dir(base, false) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for id in safe_open::list_dir(b.fd.as_fd(), &base)? {
        let Some(id) = id.to_str().map(String::from) else { continue };
        if !valid_agent_id(&id) {
            continue;
        }
        let Ok((wt, Some(rec))) = recorded(&base, &id) else { continue };
        out.push(Listed { id, path: wt.path, branch: rec.branch.clone().unwrap_or_else(|| "(detached)".into()), repo: rec.repo() });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Remove every swarmcell worktree under BASE (forced), then forget records
/// of worktrees that no longer exist.
pub fn prune(base: &Path) -> Result<Vec<String>, GitError> {
    let mut removed = Vec::new();
    let all = list(base)?;
    let mut progress = crate::progress::Progress::new("worktree prune", all.len());
    for w in all {
        progress.step(&w.id);
        remove(base, &w.id, true)?;
        removed.push(w.id);
    }
    if let Ok(root) = record::state_root(false) {
        for key in safe_open::list_dir(root.fd.as_fd(), Path::new(record::STATE_DIR))? {
            let Some(key) = key.to_str().map(String::from) else { continue };
            let Ok(Some((d, p))) = record::key_dir(&key, false) else { continue };
            let Ok(Some(rec)) = record::load(&d, &p) else { continue };
            let gone = match std::fs::symlink_metadata(&rec.worktree) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino()) != (rec.dev, rec.ino)
                }
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            if gone && matches!(lease(&key), Ok(Some(_))) {
                record::forget(&key, rec.uid)?;
            }
        }
    }
    Ok(removed)
}

/// What a sandbox on a linked worktree gets of its repository: its private
/// layer at the common dir's path, the real object store read-only, and the
/// lease that keeps a second sandbox off the worktree.
pub struct SandboxGit {
    pub record: record::Record,
    pub layer: layer::Layer,
    pub lease: crate::host::lease::Lease,
}

impl std::fmt::Debug for SandboxGit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxGit").field("record", &self.record).finish()
    }
}

impl SandboxGit {
    /// The layer's mount point inside the sandbox (the real common dir's path).
    pub fn common(&self) -> &Path {
        &self.record.common
    }
}

/// For a launch on `wt`: the record (made now on a first launch), the lease
/// (refused while another sandbox runs on it), and the refreshed layer.
/// Ok(None): not a linked git worktree.
pub fn prepare_sandbox(wt: &record::Opened, repos: &[PathBuf]) -> Result<Option<SandboxGit>, GitError> {
    let Some((rec, dir)) = record::resolve(wt, repos, true, "first launch")? else { return Ok(None) };
    let (d, p) = dir.ok_or_else(|| GitError::Missing(Path::new(record::STATE_DIR).join(rec.key())))?;
    let lease = lease(&rec.key())?.ok_or_else(|| GitError::Violation(format!("worktree {} already has a running sandbox", wt.path.display())))?;
    let layer = layer::prepare(&d, &p, &rec)?;
    Ok(Some(SandboxGit { record: rec, layer, lease }))
}

/// The daemon's check before it starts a launcher (nothing is written).
pub fn preflight(worktree: &Path, repos: &[PathBuf]) -> Result<(), GitError> {
    let wt = record::Opened::open(worktree)?;
    record::resolve(&wt, repos, false, "first launch").map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_branch_names_are_validated() {
        for good in ["a", "agent-7", "0abc"] {
            assert!(valid_agent_id(good), "{good}");
        }
        for bad in ["", "-a", "A", "a/b", "..", "a..b/c", &"x".repeat(64)] {
            assert!(!valid_agent_id(bad), "{bad}");
        }
        for good in ["work", "fix-1.2", "Feature_x"] {
            assert!(valid_branch_leaf(good), "{good}");
        }
        for bad in ["", "a/b", "..", "-x", ".x", "x.lock", "a b"] {
            assert!(!valid_branch_leaf(bad), "{bad}");
        }
    }
}
