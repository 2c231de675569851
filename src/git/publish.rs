//! Host side (the launcher, as the repository's owner for every git step): the
//! verifying publisher. It brings the agent's work from its private layer to
//! the real repository, moving exactly one ref: the branch the worktree had
//! checked out when it was recorded.
//!
//! 1. Read the branch tip from the layer safely (loose ref or packed-refs, no
//!    symlink or FIFO followed, bounded; a 40/64-hex id or nothing).
//! 2. Copy the layer's objects (loose objects and packs only, regular files,
//!    bounded) into `STATE_DIR/KEY/publish`, a bare repository of our own
//!    making (our config, one ref, alternates to the real object store): no
//!    program, hook or config of the sandbox's is run or read.
//! 3. `git fetch` from it into the real repository as the owner, hooks off,
//!    with `transfer.fsckObjects` (every imported object is re-hashed and
//!    checked, and connectivity is checked), fast-forward only unless the
//!    policy allows forced updates, refspec `refs/heads/BRANCH` alone.
//!
//! Each publish is an audit event (`git_publish`, on the launcher's event
//! channel: the daemon's audit log, or the log of a `run` in the foreground).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::GitError;
use super::record::{self, Record, STATE_DIR};
use crate::fs::safe_open::{self, Checked, Kind};

/// Most bytes one publish copies out of a layer.
const MAX_BYTES: u64 = 8 << 30;
const MAX_FILE: u64 = 4 << 30;
const MAX_PACKED_REFS: usize = 16 << 20;
/// The root-owned count of bytes published from a worktree, in its key dir.
const PUBLISHED: &str = "published";

fn safe(e: safe_open::SafeError) -> GitError {
    GitError::Safe(e)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub branch: String,
    pub old: String,
    pub new: String,
    /// "published", or why not ("rejected: ...").
    pub outcome: String,
}

pub struct Publisher {
    rec: Record,
    sandbox: String,
    allow_force: bool,
    /// Most bytes of objects this worktree's publishes may add to the real
    /// repository, over all its launches (the disk limit; None: no limit).
    /// What was published so far is counted in the root-owned `KEY/published`.
    budget: Option<u64>,
    /// The last tip handled (published or refused): not tried again.
    last: Option<String>,
    /// Whether that tip was published (or refused as not a fast-forward).
    last_final: bool,
    /// packed-refs as last read: (dev, ino, size, mtime s, mtime ns) and the tip
    /// found, so that an unchanged file is not read again every period.
    packed: Option<(FileId, Option<String>)>,
}

/// What tells a file's versions apart: (dev, ino, size, mtime s, mtime ns).
type FileId = (u64, u64, i64, i64, i64);

impl Publisher {
    pub fn new(rec: Record, sandbox: &str, allow_force: bool, budget: Option<u64>) -> Publisher {
        Publisher { rec, sandbox: sandbox.into(), allow_force, budget, last: None, last_final: true, packed: None }
    }

    /// Bytes of objects published from this worktree so far (root-owned count).
    fn published_bytes(&self, kd: &Checked, kp: &Path) -> u64 {
        safe_open::read_small(kd.fd.as_fd(), kp, Path::new(PUBLISHED), 32, Some(0))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    fn key_dir(&self) -> Result<(Checked, PathBuf), GitError> {
        record::key_dir(&self.rec.key(), false)?.ok_or_else(|| GitError::Missing(Path::new(STATE_DIR).join(self.rec.key())))
    }

    /// The branch tip in the layer, if any.
    pub fn layer_tip(&mut self) -> Result<Option<String>, GitError> {
        let Some(branch) = &self.rec.branch else { return Ok(None) };
        let (kd, kp) = self.key_dir()?;
        let lp = kp.join("layer");
        let layer = safe_open::open_beneath(kd.fd.as_fd(), &kp, Path::new("layer"), Kind::Dir, Some(self.rec.uid)).map_err(safe)?;
        let l = layer.fd.as_fd();
        let rel = PathBuf::from("refs/heads").join(branch);
        match safe_open::read_small(l, &lp, &rel, 256, None) {
            Ok(b) => {
                let t = String::from_utf8_lossy(&b).trim_end_matches('\n').to_string();
                return Ok(record::valid_oid(&t).then_some(t));
            }
            Err(e) if e.is_not_found() => {}
            // A FIFO, a symlink, a directory, garbage: nothing to publish.
            Err(_) => return Ok(None),
        }
        let Ok(c) = safe_open::open_beneath(l, &lp, Path::new("packed-refs"), Kind::File, None) else { return Ok(None) };
        let st = &c.stat;
        let id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec);
        if let Some((seen, tip)) = &self.packed
            && *seen == id
        {
            return Ok(tip.clone());
        }
        drop(c);
        let packed = match safe_open::read_small(l, &lp, Path::new("packed-refs"), MAX_PACKED_REFS, None) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let want = format!("refs/heads/{branch}");
        let tip = String::from_utf8_lossy(&packed).lines().find_map(|line| {
            let (oid, name) = line.split_once(' ')?;
            (name == want && record::valid_oid(oid)).then(|| oid.to_string())
        });
        self.packed = Some((id, tip.clone()));
        Ok(tip)
    }

    /// The real branch's commit ("" when it does not exist).
    pub fn real_tip(&self, branch: &str) -> Result<String, GitError> {
        super::cmd::in_git_dir(
            (self.rec.uid, self.rec.gid),
            &self.rec.common,
            &["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}^{{commit}}")],
        )
        .or_else(|e| if matches!(e, GitError::Git { .. }) { Ok(String::new()) } else { Err(e) })
    }

    /// Publish the layer's tip if it changed since the last call.
    pub fn tick(&mut self) -> Result<Option<Published>, GitError> {
        let Some(branch) = self.rec.branch.clone() else { return Ok(None) };
        let Some(tip) = self.layer_tip()? else { return Ok(None) };
        if self.last.as_deref() == Some(tip.as_str()) {
            return Ok(None);
        }
        let old = self.real_tip(&branch)?;
        if old == tip {
            self.last = Some(tip);
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let (outcome, last_final) = match self.import(&branch, &tip) {
            Ok(()) => ("published".to_string(), true),
            Err(e) => {
                let text = e.to_string();
                // A non-fast-forward is final for this tip; anything else is tried again at stop.
                let nonff = text.contains("non-fast-forward") || text.contains("rejected");
                (format!("rejected: {text}"), nonff)
            }
        };
        self.last = Some(tip.clone());
        self.last_final = last_final;
        let new = self.real_tip(&branch)?;
        let p = Published { branch, old, new, outcome };
        if p.outcome == "published" {
            tracing::debug!(sandbox = %self.sandbox, worktree = %self.rec.worktree.display(), took_ms = started.elapsed().as_millis() as u64, "published the agent's branch");
            // The audit event, on the launcher's event channel (the daemon's audit log).
            crate::launch::events::emit(crate::launch::events::Event::GitPublish {
                branch: p.branch.clone(),
                old: p.old.clone(),
                new: p.new.clone(),
            });
        } else {
            tracing::warn!(event = "git_publish", sandbox = %self.sandbox, branch = %p.branch, old = %p.old, new = %tip, outcome = %p.outcome, "the agent's branch was not published");
        }
        Ok(Some(p))
    }

    /// The last publish at stop, then the real admin dir's index is reset to
    /// the published commit (the host's `git status` in the worktree agrees
    /// with its branch; nothing of the sandbox's index is read).
    pub fn finish(&mut self) -> Option<Published> {
        if !self.last_final {
            self.last = None;
        }
        let p = match self.tick() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(event = "git_publish", sandbox = %self.sandbox, error = %e, "publishing at stop failed");
                None
            }
        };
        if let Some(branch) = &self.rec.branch
            && p.as_ref().is_some_and(|p| p.outcome == "published")
        {
            let admin = self.rec.admin();
            let head = super::cmd::in_git_dir((self.rec.uid, self.rec.gid), &admin, &["symbolic-ref", "-q", "HEAD"]).unwrap_or_default();
            if head == format!("refs/heads/{branch}")
                && let Err(e) = super::cmd::in_git_dir((self.rec.uid, self.rec.gid), &admin, &["read-tree", &format!("refs/heads/{branch}")])
            {
                tracing::warn!(sandbox = %self.sandbox, error = %e, "could not reset the worktree's index on the host");
            }
        }
        p
    }

    /// Steps 2 and 3 for `tip`.
    fn import(&self, branch: &str, tip: &str) -> Result<(), GitError> {
        let ids = (self.rec.uid, self.rec.gid);
        let (kd, kp) = self.key_dir()?;
        let layer = safe_open::open_beneath(kd.fd.as_fd(), &kp, Path::new("layer"), Kind::Dir, Some(ids.0)).map_err(safe)?;
        let lp = kp.join("layer");
        let src = safe_open::open_beneath(layer.fd.as_fd(), &lp, Path::new("objects"), Kind::Dir, None).map_err(safe)?;
        let srcp = lp.join("objects");
        let pubd = safe_open::ensure_dir(kd.fd.as_fd(), &kp, "publish", ids.0, ids.1).map_err(safe)?;
        let pp = kp.join("publish");
        let dir = |parent: &Checked, path: &Path, name: &str| -> Result<(Checked, PathBuf), GitError> {
            Ok((safe_open::ensure_dir(parent.fd.as_fd(), path, name, ids.0, ids.1).map_err(safe)?, path.join(name)))
        };
        let (dst, dstp) = dir(&pubd, &pp, "objects")?;
        let (info, infop) = dir(&dst, &dstp, "info")?;
        let (refs, refsp) = dir(&pubd, &pp, "refs")?;
        let (heads, headsp) = dir(&refs, &refsp, "heads")?;
        let mut budget = MAX_BYTES;
        // What the layer holds now: copies of anything else are dropped below.
        let mut present: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
        for name in safe_open::list_dir(src.fd.as_fd(), &srcp).map_err(safe)? {
            let Some(name) = name.to_str().map(String::from) else { continue };
            let fanout = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !(fanout || name == "pack") {
                continue;
            }
            let Ok(sd) = safe_open::open_beneath(src.fd.as_fd(), &srcp, Path::new(&name), Kind::Dir, None) else { continue };
            let sdp = srcp.join(&name);
            let (dd, ddp) = dir(&dst, &dstp, &name)?;
            for file in safe_open::list_dir(sd.fd.as_fd(), &sdp).map_err(safe)? {
                let Some(file) = file.to_str().map(String::from) else { continue };
                let wanted = if fanout { record::valid_oid(&format!("{name}{file}")) } else { is_pack_file(&file) };
                if !wanted {
                    continue;
                }
                let Ok(s) = safe_open::open_beneath(sd.fd.as_fd(), &sdp, Path::new(&file), Kind::File, None) else { continue };
                // Git never writes sparse files: one costs the sandbox nothing
                // under its disk limit, and its copy here would be dense.
                if sparse(&s.stat) {
                    continue;
                }
                present.insert((name.clone(), file.clone()));
                // Content-addressed: a copy of the same size is the same object (fetch verifies anyway).
                if let Ok(d) = safe_open::open_beneath(dd.fd.as_fd(), &ddp, Path::new(&file), Kind::File, None)
                    && d.stat.st_size == s.stat.st_size
                {
                    continue;
                }
                drop(s);
                let n = safe_open::copy_file(
                    safe_open::At(sd.fd.as_fd(), &sdp),
                    Path::new(&file),
                    safe_open::At(dd.fd.as_fd(), &ddp),
                    &file,
                    MAX_FILE.min(budget),
                    ids,
                )
                .map_err(safe)?;
                budget = budget.saturating_sub(n);
            }
        }
        // Copies of files the layer no longer holds go: the publish directory
        // never holds more than the layer does (which is under the disk limit).
        for name in safe_open::list_dir(dst.fd.as_fd(), &dstp).map_err(safe)? {
            let Some(name) = name.to_str().map(String::from) else { continue };
            if name == "info" {
                continue;
            }
            let Ok(dd) = safe_open::open_beneath(dst.fd.as_fd(), &dstp, Path::new(&name), Kind::Dir, None) else {
                safe_open::remove_owned(dst.fd.as_fd(), &dstp, &name, ids.0).map_err(safe)?;
                continue;
            };
            let ddp = dstp.join(&name);
            for file in safe_open::list_dir(dd.fd.as_fd(), &ddp).map_err(safe)? {
                let Some(file) = file.to_str().map(String::from) else { continue };
                if !present.contains(&(name.clone(), file.clone())) {
                    safe_open::remove_owned(dd.fd.as_fd(), &ddp, &file, ids.0).map_err(safe)?;
                }
            }
        }
        // Objects copied for the first time are what this publish can add to
        // the real repository: over all launches, no more than the disk limit
        // (the layer is under it, but deleting published objects from the
        // layer and committing again would otherwise grow the host's
        // repository without end).
        let new_bytes = MAX_BYTES - budget;
        let published = self.published_bytes(&kd, &kp);
        if let Some(limit) = self.budget
            && published.saturating_add(new_bytes) > limit
        {
            return Err(GitError::Invalid {
                path: self.rec.worktree.clone(),
                message: format!(
                    "publish budget spent: {published} bytes published from this worktree, {new_bytes} more would pass its disk limit of {limit} (remove and add the worktree again to reset)"
                ),
            });
        }
        let w = |d: &Checked, p: &Path, name: &str, text: &str| {
            safe_open::replace_file(d.fd.as_fd(), p, name, text.as_bytes(), 0o644, ids.0, ids.1).map_err(safe)
        };
        w(&info, &infop, "alternates", &format!("{}\n", self.rec.common.join("objects").display()))?;
        let format = if tip.len() == 64 { "[extensions]\n\tobjectformat = sha256\n" } else { "" };
        let version = if tip.len() == 64 { 1 } else { 0 };
        w(&pubd, &pp, "config", &format!("[core]\n\trepositoryformatversion = {version}\n\tbare = true\n{format}"))?;
        w(&pubd, &pp, "HEAD", "ref: refs/heads/publish\n")?;
        w(&heads, &headsp, "publish", &format!("{tip}\n"))?;
        let force = if self.allow_force { "+" } else { "" };
        let refspec = format!("{force}refs/heads/publish:refs/heads/{branch}");
        let git_dir = super::cmd::flag("git-dir", &self.rec.common);
        let fixed = [
            "-c",
            "transfer.fsckObjects=true",
            "-c",
            "fetch.fsckObjects=true",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--no-auto-maintenance",
            "--update-head-ok",
        ];
        let args: Vec<&std::ffi::OsStr> = std::iter::once(git_dir.as_os_str())
            .chain(fixed.iter().map(std::ffi::OsStr::new))
            .chain([pp.as_os_str(), std::ffi::OsStr::new(&refspec)])
            .collect();
        super::cmd::run_as(ids, &args, &[], super::cmd::DEADLINE)?;
        let total = (published.saturating_add(new_bytes)).to_string();
        safe_open::replace_file(kd.fd.as_fd(), &kp, PUBLISHED, total.as_bytes(), 0o600, 0, 0).map_err(safe)
    }
}

/// More than 64 KiB of which less than half is allocated: a sparse file.
/// (Small files may be stored inline with no block at all.)
fn sparse(st: &nix::sys::stat::FileStat) -> bool {
    st.st_size > 64 << 10 && st.st_blocks.saturating_mul(512) < st.st_size / 2
}

fn is_pack_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("pack-") else { return false };
    let Some((hex, ext)) = rest.split_once('.') else { return false };
    record::valid_oid(hex) && ["pack", "idx", "rev"].contains(&ext)
}
