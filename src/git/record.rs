//! Host side (root): which repository, admin dir and branch a worktree belongs
//! to, decided by root-owned facts.
//!
//! A record is made once, before any sandbox ran on the worktree: by
//! `swarmcell worktree add`, or on the first launch of a worktree someone else
//! made (`git worktree add PATH BRANCH`), from its `.git` and the admin dir it
//! names, cross-checked without following symlinks (the admin dir is
//! `COMMON/worktrees/NAME`, it points back at this worktree, repository and
//! worktree have the same owner, neither contains the other). Every later
//! launch uses only the record: a `.git` that no longer matches it is refused.
//!
//! Layout, all under [`STATE_DIR`] (root-owned, 0711), one directory per
//! worktree keyed by its device and inode (`DEV-INO`, root-owned, 0711):
//! `record.json` (root, 0600), `lease` (held while a sandbox runs on it),
//! `layer/` (the sandbox's private git layer, owned by the repository's owner)
//! and `publish/` (the publisher's clean source repository, same owner). The
//! whole per-worktree directory is this worktree's private git state.

use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GitError;
use crate::fs::safe_open::{self, Checked, Kind};

/// Root-owned git state: one directory per worktree (see the module docs).
pub const STATE_DIR: &str = "/var/lib/swarmcell/git";
const RECORD: &str = "record.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub worktree: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Birth time (ns), when the filesystem reports it: tells a reused inode apart.
    pub btime: Option<i128>,
    pub uid: u32,
    pub gid: u32,
    /// The repository's common dir (REPO/.git).
    pub common: PathBuf,
    pub common_dev: u64,
    pub common_ino: u64,
    /// The admin dir is COMMON/worktrees/NAME.
    pub name: String,
    pub admin_ino: u64,
    /// The worktree's `.git` file when the record was made.
    pub dotgit: String,
    /// The admin dir's HEAD then, and the branch it named (None: detached).
    pub head: String,
    pub branch: Option<String>,
    /// "worktree add" or "first launch".
    pub source: String,
}

impl Record {
    pub fn key(&self) -> String {
        key(self.dev, self.ino)
    }

    pub fn admin(&self) -> PathBuf {
        self.common.join("worktrees").join(&self.name)
    }

    /// The repository (REPO for REPO/.git, else the common dir itself).
    pub fn repo(&self) -> PathBuf {
        match (self.common.file_name(), self.common.parent()) {
            (Some(n), Some(p)) if n == ".git" => p.to_path_buf(),
            _ => self.common.clone(),
        }
    }
}

/// A worktree's state directory (fd and path).
pub type KeyDir = (Checked, PathBuf);

pub fn key(dev: u64, ino: u64) -> String {
    format!("{dev:x}-{ino:x}")
}

fn violation(path: &Path, message: impl std::fmt::Display) -> GitError {
    GitError::Violation(format!("worktree {}: {message}", path.display()))
}

fn safe(e: safe_open::SafeError) -> GitError {
    GitError::Safe(e)
}

/// A worktree directory opened once; everything after goes through `dir`.
pub struct Opened {
    pub path: PathBuf,
    pub dir: Checked,
    pub btime: Option<i128>,
}

impl Opened {
    /// Open the worktree the operator named (its own symlinks are the
    /// operator's), and take its canonical path from the fd.
    pub fn open(path: &Path) -> Result<Opened, GitError> {
        use nix::fcntl::OFlag;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
            .map_err(|e| GitError::Invalid { path: path.into(), message: format!("{e} ({})", e.desc()) })?;
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| GitError::Invalid { path: path.into(), message: e.desc().into() })?;
        let real = safe_open::fd_path(fd.as_fd()).map_err(safe)?;
        let btime = btime(&fd);
        Ok(Opened { path: real, dir: Checked { fd, stat }, btime })
    }

    pub fn key(&self) -> String {
        key(self.dir.stat.st_dev, self.dir.stat.st_ino)
    }

    /// The `.git` entry: Ok(None) when there is none or it is a directory (not a linked worktree).
    fn dotgit(&self) -> Result<Option<String>, GitError> {
        let fd = self.dir.fd.as_fd();
        match safe_open::read_small(fd, &self.path, Path::new(".git"), 4096, Some(self.dir.uid())) {
            Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| violation(&self.path, ".git is not UTF-8")),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => {
                if safe_open::open_beneath(fd, &self.path, Path::new(".git"), Kind::Dir, None).is_ok() {
                    return Ok(None);
                }
                Err(violation(&self.path, format!("its .git is unusable: {e}")))
            }
        }
    }
}

fn btime(fd: &impl AsFd) -> Option<i128> {
    use std::os::fd::AsRawFd;
    // SAFETY: statx fills a zeroed struct of the right type; "" with AT_EMPTY_PATH names the fd itself.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statx(fd.as_fd().as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_BTIME, &mut sx) };
    (r == 0 && sx.stx_mask & libc::STATX_BTIME != 0).then(|| sx.stx_btime.tv_sec as i128 * 1_000_000_000 + sx.stx_btime.tv_nsec as i128)
}

/// `..` and `.` removed lexically (with no symlink crossed, the kernel resolves the same way).
pub fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    p.is_absolute().then_some(out)
}

/// A branch name git and we both accept: refs/heads/NAME with sane components.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock") && c != "HEAD")
        && !name.contains("..")
        && !name.contains("@{")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
}

pub fn valid_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A HEAD file's branch: Ok(Some) for `ref: refs/heads/B`, Ok(None) for a detached id.
pub fn parse_head(text: &str) -> Result<Option<String>, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    if let Some(r) = t.strip_prefix("ref: refs/heads/") {
        return if valid_branch(r) { Ok(Some(r.to_string())) } else { Err(format!("HEAD names an unusable branch {:?}", super::escape(r))) };
    }
    if valid_oid(t) { Ok(None) } else { Err("HEAD is neither a branch nor a commit id".into()) }
}

/// Read the facts from the worktree's `.git` and its admin dir, cross-checked.
/// Ok(None): not a linked worktree.
pub fn inspect(wt: &Opened, source: &str) -> Result<Option<Record>, GitError> {
    let Some(dotgit) = wt.dotgit()? else { return Ok(None) };
    let uid = wt.dir.uid();
    let gid = wt.dir.stat.st_gid;
    let line = dotgit.strip_suffix('\n').unwrap_or(&dotgit);
    let target = line
        .strip_prefix("gitdir: ")
        .filter(|t| !t.is_empty() && !t.contains('\n'))
        .ok_or_else(|| violation(&wt.path, ".git is not a `gitdir: PATH` file"))?;
    let admin = normalize(&wt.path.join(target)).ok_or_else(|| violation(&wt.path, ".git names an unusable path"))?;
    let name = admin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let worktrees = admin.parent().filter(|p| p.file_name().is_some_and(|n| n == "worktrees"));
    let common =
        worktrees.and_then(Path::parent).map(Path::to_path_buf).ok_or_else(|| violation(&wt.path, ".git does not name REPO/.git/worktrees/NAME"))?;
    // Paths go into git's own files (gitdir, alternates): UTF-8, no control characters.
    for p in [&wt.path, &common] {
        if p.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
            return Err(violation(&wt.path, format!("{} is not a plain UTF-8 path", super::escape(&p.to_string_lossy()))));
        }
    }
    if name.is_empty() || name.starts_with('.') || common.starts_with(&wt.path) || wt.path.starts_with(&common) {
        return Err(violation(&wt.path, format!("its repository {} overlaps the worktree", common.display())));
    }
    let c = safe_open::open_dir_nofollow(&common, Some(uid))
        .map_err(|e| violation(&wt.path, format!("repository: {e} (repository and worktree must have the same owner; no symlinks)")))?;
    let cfd = c.fd.as_fd();
    safe_open::open_beneath(cfd, &common, Path::new("objects"), Kind::Dir, Some(uid)).map_err(|e| violation(&wt.path, e))?;
    let rel = PathBuf::from("worktrees").join(&name);
    let a = safe_open::open_beneath(cfd, &common, &rel, Kind::Dir, Some(uid)).map_err(|e| violation(&wt.path, format!("admin dir: {e}")))?;
    let read = |f: &str, max| {
        safe_open::read_small(a.fd.as_fd(), &admin, Path::new(f), max, Some(uid))
            .map_err(|e| violation(&wt.path, e))
            .and_then(|b| String::from_utf8(b).map_err(|_| violation(&wt.path, format!("{f} is not UTF-8"))))
    };
    let back = read("gitdir", 4096)?;
    let back = normalize(&admin.join(back.trim_end_matches('\n'))).unwrap_or_default();
    if back != wt.path.join(".git") {
        return Err(violation(&wt.path, format!("{} does not point back at this worktree", admin.join("gitdir").display())));
    }
    let commondir = read("commondir", 4096)?;
    if normalize(&admin.join(commondir.trim_end_matches('\n'))).as_deref() != Some(common.as_path()) {
        return Err(violation(&wt.path, format!("{} does not name {}", admin.join("commondir").display(), common.display())));
    }
    let head = read("HEAD", 256)?;
    let branch = parse_head(&head).map_err(|m| violation(&wt.path, m))?;
    Ok(Some(Record {
        worktree: wt.path.clone(),
        dev: wt.dir.stat.st_dev,
        ino: wt.dir.stat.st_ino,
        btime: wt.btime,
        uid,
        gid,
        common,
        common_dev: c.stat.st_dev,
        common_ino: c.stat.st_ino,
        name,
        admin_ino: a.stat.st_ino,
        dotgit,
        head,
        branch,
        source: source.into(),
    }))
}

/// The state root, created root-owned 0711 (owners traverse to their layers, list nothing).
pub fn state_root(create: bool) -> Result<Checked, GitError> {
    let path = Path::new(STATE_DIR);
    if create {
        std::fs::create_dir_all(path).map_err(|source| GitError::Io { path: path.into(), source })?;
    }
    let c = safe_open::open_dir_nofollow(path, Some(0)).map_err(safe)?;
    if c.stat.st_mode & 0o7777 != 0o711 {
        nix::sys::stat::fchmod(&c.fd, nix::sys::stat::Mode::from_bits_truncate(0o711))
            .map_err(|e| GitError::Invalid { path: path.into(), message: e.desc().into() })?;
    }
    Ok(c)
}

/// STATE_DIR/KEY, created root-owned 0711 when `create`.
pub fn key_dir(key: &str, create: bool) -> Result<Option<KeyDir>, GitError> {
    let root = match state_root(create) {
        Ok(r) => r,
        Err(_) if !create => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = Path::new(STATE_DIR).join(key);
    let c = if create {
        let c = safe_open::ensure_dir(root.fd.as_fd(), Path::new(STATE_DIR), key, 0, 0).map_err(safe)?;
        nix::sys::stat::fchmod(&c.fd, nix::sys::stat::Mode::from_bits_truncate(0o711))
            .map_err(|e| GitError::Invalid { path: path.clone(), message: e.desc().into() })?;
        c
    } else {
        match safe_open::open_beneath(root.fd.as_fd(), Path::new(STATE_DIR), Path::new(key), Kind::Dir, Some(0)) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(safe(e)),
        }
    };
    Ok(Some((c, path)))
}

pub fn load(dir: &Checked, path: &Path) -> Result<Option<Record>, GitError> {
    match safe_open::read_small(dir.fd.as_fd(), path, Path::new(RECORD), 64 << 10, Some(0)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| GitError::Invalid { path: path.join(RECORD), message: e.to_string() }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(safe(e)),
    }
}

pub fn save(dir: &Checked, path: &Path, rec: &Record) -> Result<(), GitError> {
    let text = serde_json::to_vec_pretty(rec).map_err(|e| GitError::Invalid { path: path.join(RECORD), message: e.to_string() })?;
    safe_open::replace_file(dir.fd.as_fd(), path, RECORD, &text, 0o600, 0, 0).map_err(safe)
}

/// Forget a worktree: its record, lease file, private layer and publisher state.
/// The layer and publish directories are the owner's: only its (and root's)
/// directories are emptied.
pub fn forget(key: &str, owner: u32) -> Result<(), GitError> {
    let root = state_root(false)?;
    safe_open::remove_owned(root.fd.as_fd(), Path::new(STATE_DIR), key, owner).map_err(safe)
}

/// The repository `repo` names (REPO or its `.git`), as (dev, ino) of its common dir.
fn repo_id(repo: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dotgit = repo.join(".git");
    let m = std::fs::metadata(&dotgit).ok().filter(|m| m.is_dir()).or_else(|| std::fs::metadata(repo).ok())?;
    Some((m.dev(), m.ino()))
}

/// The record for this worktree: the existing one (checked against what is on
/// disk now), or, with `create`, a new one made from its `.git` (first launch).
/// `repos`, when not empty, lists the repositories allowed. Ok(None): not a
/// linked git worktree (and never recorded as one).
pub fn resolve(wt: &Opened, repos: &[PathBuf], create: bool, source: &str) -> Result<Option<(Record, Option<KeyDir>)>, GitError> {
    let key = wt.key();
    let mut dir = key_dir(&key, false)?;
    let mut existing = match &dir {
        Some((d, p)) => load(d, p)?,
        None => None,
    };
    if let Some(rec) = &existing
        && rec.btime.is_some()
        && wt.btime.is_some()
        && rec.btime != wt.btime
    {
        // The inode was reused by a new directory: the old record is stale.
        if create {
            forget(&key, rec.uid)?;
            dir = None;
        }
        existing = None;
    }
    let recorded = existing.is_some();
    let rec = match existing {
        Some(rec) => {
            check_recorded(wt, &rec)?;
            rec
        }
        None => match inspect(wt, source)? {
            Some(rec) => rec,
            None => return Ok(None),
        },
    };
    if !repos.is_empty() && !repos.iter().any(|r| repo_id(r) == Some((rec.common_dev, rec.common_ino))) {
        return Err(violation(&wt.path, format!("its repository {} is not one of the allowed repositories", rec.common.display())));
    }
    if create && !recorded {
        let d = match dir.take() {
            Some(d) => d,
            None => key_dir(&key, true)?.ok_or_else(|| violation(&wt.path, "no state directory"))?,
        };
        save(&d.0, &d.1, &rec)?;
        dir = Some(d);
    }
    Ok(Some((rec, dir)))
}

/// A recorded worktree must still be what the record says.
pub fn check_recorded(wt: &Opened, rec: &Record) -> Result<(), GitError> {
    if wt.path != rec.worktree {
        return Err(violation(
            &wt.path,
            format!("recorded at {} (moved?); remove {}/{} to record it again", rec.worktree.display(), STATE_DIR, rec.key()),
        ));
    }
    if wt.dir.uid() != rec.uid {
        return Err(violation(&wt.path, format!("owned by uid {}, recorded {}", wt.dir.uid(), rec.uid)));
    }
    match wt.dotgit() {
        Ok(Some(t)) if t == rec.dotgit => {}
        _ => {
            return Err(violation(
                &wt.path,
                format!(
                    "its .git no longer matches its record (made by {}): refused; if the operator changed it, remove {}/{} to record it again",
                    rec.source,
                    STATE_DIR,
                    rec.key()
                ),
            ));
        }
    }
    let c = safe_open::open_dir_nofollow(&rec.common, Some(rec.uid)).map_err(|e| violation(&wt.path, format!("repository: {e}")))?;
    if (c.stat.st_dev, c.stat.st_ino) != (rec.common_dev, rec.common_ino) {
        return Err(violation(&wt.path, format!("repository {} was replaced since the record was made", rec.common.display())));
    }
    let a = safe_open::open_beneath(c.fd.as_fd(), &rec.common, &PathBuf::from("worktrees").join(&rec.name), Kind::Dir, Some(rec.uid));
    match a {
        Ok(a) if a.stat.st_ino == rec.admin_ino => Ok(()),
        _ => Err(violation(&wt.path, format!("no longer registered in {}", rec.common.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_heads_branches_and_ids_are_parsed_strictly() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Some(PathBuf::from("/a/c/d")));
        assert_eq!(normalize(Path::new("/../x")), Some(PathBuf::from("/x")));
        assert_eq!(normalize(Path::new("rel/x")), None);
        assert_eq!(parse_head("ref: refs/heads/feature-x\n"), Ok(Some("feature-x".into())));
        assert_eq!(parse_head("ref: refs/heads/agent/a/work"), Ok(Some("agent/a/work".into())));
        assert_eq!(parse_head(&format!("{}\n", "a".repeat(40))), Ok(None));
        for bad in ["ref: refs/heads/../x", "ref: refs/heads/a b", "ref: refs/tags/v1", "ref: refs/heads/x.lock", "zz", "ref: refs/heads/a\nb", ""] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
        assert!(valid_oid(&"0".repeat(64)) && !valid_oid(&"A".repeat(40)) && !valid_oid("abc"));
        assert!(valid_branch("feature-x") && !valid_branch("a//b") && !valid_branch(".x") && !valid_branch("a@{1}"));
    }
}
