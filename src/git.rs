//! Git worktrees: the host-side manager (`swarmcell worktree ...`, parent side,
//! runs git as root) and what a sandbox needs of the main repository.
//!
//! A worktree's `.git` is a file pointing at `REPO/.git/worktrees/ID`, and its
//! commits write objects and refs into the main repository. A sandbox gets the
//! common directory read-only (so `hooks/`, `config`, `info/`, other branches and
//! other agents' admin directories cannot be changed: a hook or config written
//! by an agent would run on the host the next time a person uses git), with
//! read-write binds on top for exactly what `git add`/`git commit` on its own
//! branch need: its admin directory, the object store, and the directory of its
//! own branch ref and reflog. Agent branches live under `agent/ID/` so that this
//! directory belongs to one agent alone (git updates a ref by creating a lock
//! file and renaming it in the ref's directory).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

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
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GitError + '_ {
    move |source| GitError::Io { path: path.into(), source }
}

pub fn valid_agent_id(id: &str) -> bool {
    crate::launch::valid_sandbox_id(id)
}

fn valid_branch_leaf(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Run git as root on a repository owned by someone else (hence safe.directory).
fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("-c")
        .arg("safe.directory=*")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .map_err(|e| GitError::Git { args: args.join(" "), message: e.to_string() })?;
    if !out.status.success() {
        return Err(GitError::Git { args: args.join(" "), message: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), GitError> {
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(io(path))? {
            chown_tree(&e.map_err(io(path))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The base directory, created root-only if missing, canonical.
fn base_dir(base: &Path, create: bool) -> Result<PathBuf, GitError> {
    if create {
        std::fs::create_dir_all(base).map_err(io(base))?;
    }
    base.canonicalize().map_err(io(base))
}

pub struct AddRequest<'a> {
    pub repo: &'a Path,
    pub id: &'a str,
    pub base: &'a Path,
    pub branch: Option<&'a str>,
    pub owner: Option<(u32, u32)>,
}

/// `swarmcell worktree add`: BASE/ID as a new worktree on branch agent/ID/NAME,
/// mode 0700, owned by the repository's owner (or `owner`), never root.
pub fn add(req: &AddRequest) -> Result<PathBuf, GitError> {
    if !valid_agent_id(req.id) {
        return Err(GitError::BadId(req.id.into()));
    }
    let leaf = req.branch.unwrap_or("work");
    if !valid_branch_leaf(leaf) {
        return Err(GitError::BadBranch(leaf.into()));
    }
    let repo = req.repo.canonicalize().map_err(io(req.repo))?;
    let common = PathBuf::from(git(&repo, &["rev-parse", "--path-format=absolute", "--git-common-dir"])?);
    let meta = std::fs::metadata(&common).map_err(io(&common))?;
    let (uid, gid) = req.owner.unwrap_or((meta.uid(), meta.gid()));
    if uid == 0 || gid == 0 {
        return Err(GitError::Invalid {
            path: repo,
            message: "worktrees would belong to root: chown the repository to the agents' user or pass --owner UID:GID".into(),
        });
    }
    let base = base_dir(req.base, true)?;
    let path = base.join(req.id);
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(GitError::Exists(path));
    }
    let branch = format!("{BRANCH_PREFIX}/{}/{leaf}", req.id);
    git(&repo, &["worktree", "add", "--quiet", "-b", &branch, &path.to_string_lossy()])?;
    let admin = common.join("worktrees").join(req.id);
    let ref_dir = common.join("refs/heads").join(BRANCH_PREFIX).join(req.id);
    let log_dir = common.join("logs/refs/heads").join(BRANCH_PREFIX).join(req.id);
    std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
    std::fs::create_dir_all(&ref_dir).map_err(io(&ref_dir))?;
    for p in [&path, &admin, &ref_dir, &log_dir] {
        chown_tree(p, uid, gid)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(io(&path))?;
    Ok(path)
}

/// The worktree's main repository common dir and its admin dir, from its `.git` file.
fn admin_of(worktree: &Path) -> Result<(PathBuf, PathBuf), GitError> {
    let dotgit = worktree.join(".git");
    let text = std::fs::read_to_string(&dotgit).map_err(io(&dotgit))?;
    let admin = PathBuf::from(
        text.trim().strip_prefix("gitdir: ").ok_or_else(|| GitError::Invalid { path: dotgit.clone(), message: "not a worktree .git file".into() })?,
    );
    let admin = if admin.is_absolute() { admin } else { worktree.join(admin) };
    let admin = admin.canonicalize().map_err(io(&admin))?;
    let parent = admin.parent().filter(|p| p.file_name().is_some_and(|n| n == "worktrees"));
    let common = parent
        .and_then(Path::parent)
        .ok_or_else(|| GitError::Invalid { path: dotgit.clone(), message: "gitdir is not REPO/.git/worktrees/ID".into() })?;
    Ok((common.to_path_buf(), admin))
}

/// `swarmcell worktree remove`: git worktree remove; the branch (the agent's
/// work) is kept.
pub fn remove(base: &Path, id: &str, force: bool) -> Result<PathBuf, GitError> {
    if !valid_agent_id(id) {
        return Err(GitError::BadId(id.into()));
    }
    let path = base_dir(base, false)?.join(id);
    if !path.is_dir() {
        return Err(GitError::Missing(path));
    }
    let (common, _) = admin_of(&path)?;
    let p = path.to_string_lossy().into_owned();
    let mut args = vec!["worktree", "remove"];
    if force {
        args.push("--force");
    }
    args.push(&p);
    git(&common, &args)?;
    Ok(path)
}

pub struct Listed {
    pub id: String,
    pub path: PathBuf,
    pub branch: String,
    pub repo: PathBuf,
}

pub fn list(base: &Path) -> Result<Vec<Listed>, GitError> {
    let Ok(base) = base_dir(base, false) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&base).map_err(io(&base))?.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if !valid_agent_id(&id) {
            continue;
        }
        let Ok((common, admin)) = admin_of(&e.path()) else { continue };
        let head = std::fs::read_to_string(admin.join("HEAD")).unwrap_or_default();
        let branch = head.trim().strip_prefix("ref: refs/heads/").unwrap_or(head.trim()).to_string();
        out.push(Listed { id, path: e.path(), branch, repo: common.parent().map(Path::to_path_buf).unwrap_or(common) });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Remove every swarmcell worktree under BASE (forced) and prune each repository.
pub fn prune(base: &Path) -> Result<Vec<String>, GitError> {
    let listed = list(base)?;
    let mut repos: Vec<PathBuf> = Vec::new();
    let mut removed = Vec::new();
    for w in &listed {
        remove(base, &w.id, true)?;
        removed.push(w.id.clone());
        if !repos.contains(&w.repo) {
            repos.push(w.repo.clone());
        }
    }
    for r in repos {
        git(&r, &["worktree", "prune"])?;
    }
    Ok(removed)
}

/// What a sandbox on `worktree` needs of its main repository, or `None` when the
/// worktree is not a linked git worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxGit {
    /// The common dir (REPO/.git), bound read-only.
    pub common: PathBuf,
    /// Bound read-write on top: admin dir, objects, own ref dir, own reflog dir.
    pub writable: Vec<PathBuf>,
}

pub fn sandbox_view(worktree: &Path) -> Result<Option<SandboxGit>, GitError> {
    if !worktree.join(".git").is_file() {
        return Ok(None);
    }
    let (common, admin) = admin_of(worktree)?;
    let head = std::fs::read_to_string(admin.join("HEAD")).map_err(io(&admin))?;
    let mut writable = vec![admin.clone(), common.join("objects")];
    // The branch's own ref and reflog directories, only when they are its alone.
    if let Some(branch) = head.trim().strip_prefix("ref: refs/heads/") {
        let parts: Vec<&str> = branch.split('/').collect();
        let admin_id = admin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if parts.len() == 3
            && parts[0] == BRANCH_PREFIX
            && parts[1] == admin_id
            && Path::new(branch).components().all(|c| matches!(c, Component::Normal(_)))
        {
            for dir in
                [common.join("refs/heads").join(BRANCH_PREFIX).join(parts[1]), common.join("logs/refs/heads").join(BRANCH_PREFIX).join(parts[1])]
            {
                if dir.is_dir() {
                    writable.push(dir);
                }
            }
        } else {
            tracing::warn!(branch, "the worktree's branch is not agent/ID/NAME: its ref cannot be made writable alone, so commits will fail");
        }
    }
    Ok(Some(SandboxGit { common, writable }))
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
