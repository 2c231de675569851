//! Host side (root, before a launch): the sandbox's private git layer.
//!
//! The sandbox never gets the real common dir. At its path (REPO/.git) it sees
//! `STATE_DIR/KEY/layer`, a common dir of its own, owned by the repository's
//! owner and idmapped like the worktree, holding:
//! - `HEAD`, a `config` written by us (format version and object format only:
//!   no remote, credential, hook, filter or alias of the real one),
//! - `packed-refs` listing the real refs (from `git for-each-ref`, as the owner),
//! - an empty `objects/` whose `info/alternates` names the real object store,
//!   bound read-only at [`SANDBOX_OBJECTS`],
//! - `worktrees/NAME/` (HEAD, index, commondir, gitdir), kept across launches
//!   of the worktree so that its index stays consistent.
//!
//! So every git write inside (objects, refs, reflogs, packed-refs, index, stash,
//! rebase state) lands in this layer; the real repository is read-only, and no
//! two sandboxes share a writable directory. The layer is sandbox-written:
//! root refreshes it only through [`crate::fs::safe_open`] (no symlink, FIFO or
//! planted directory is followed; files are replaced, never written in place).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::GitError;
use super::record::{self, Record};
use crate::fs::safe_open::{self, Checked, Kind};

/// Where the real object store appears inside a sandbox (read-only).
pub const SANDBOX_OBJECTS: &str = "/.swarmcell/git-objects";
/// Largest index copied from the real admin dir on the first launch.
const MAX_INDEX: u64 = 1 << 30;

pub struct Layer {
    /// The layer directory (mounted read-write at the record's common dir path).
    pub dir: Checked,
    /// Its host path (root-owned parents), for the disk limits.
    pub path: std::path::PathBuf,
    /// The real object store (mounted read-only at SANDBOX_OBJECTS).
    pub objects: Checked,
}

fn safe(e: safe_open::SafeError) -> GitError {
    GitError::Safe(e)
}

/// What the sandbox's `config` keeps of the real one: format version and
/// object format. Unknown extensions are refused.
pub fn config_for(rec: &Record) -> Result<String, GitError> {
    let list = super::cmd::in_git_dir((rec.uid, rec.gid), &rec.common, &["config", "--local", "--list"])?;
    let mut version = "0".to_string();
    let mut format = None;
    for line in list.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k.to_ascii_lowercase().as_str() {
            "core.repositoryformatversion" if v == "0" || v == "1" => version = v.into(),
            "extensions.objectformat" if v == "sha1" || v == "sha256" => format = Some(v.to_string()),
            "extensions.refstorage" if v == "files" => {}
            "extensions.worktreeconfig" | "extensions.preciousobjects" | "extensions.noop" => {}
            k if k.starts_with("extensions.") => {
                return Err(GitError::Invalid {
                    path: rec.common.clone(),
                    message: format!("repository extension {} is not supported", super::escape(k)),
                });
            }
            _ => {}
        }
    }
    let mut text = format!("[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n");
    if let Some(f) = format {
        text.push_str(&format!("[extensions]\n\tobjectformat = {f}\n"));
    }
    Ok(text)
}

/// The real refs as a packed-refs file (only well-formed lines).
pub fn packed_refs(rec: &Record) -> Result<String, GitError> {
    let list = super::cmd::in_git_dir((rec.uid, rec.gid), &rec.common, &["for-each-ref", "--format=%(objectname) %(refname)"])?;
    // No header: no trait (sorted, peeled) is claimed, git sorts and peels itself.
    let mut text = String::new();
    for line in list.lines() {
        if let Some((oid, name)) = line.split_once(' ')
            && record::valid_oid(oid)
            && name.starts_with("refs/")
            && name.bytes().all(|b| b > b' ' && b != 0x7f)
        {
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(text)
}

/// The layer's tip of the recorded branch is an ancestor of (and not equal
/// to) the real branch: all of it was published and the host went further.
fn behind_host(layer: &Checked, lp: &Path, rec: &Record) -> Result<bool, GitError> {
    let Some(branch) = &rec.branch else { return Ok(false) };
    let tip = match safe_open::read_small(layer.fd.as_fd(), lp, &PathBuf::from("refs/heads").join(branch), 256, None) {
        Ok(b) => String::from_utf8_lossy(&b).trim_end_matches('\n').to_string(),
        Err(_) => return Ok(false),
    };
    if !record::valid_oid(&tip) {
        return Ok(false);
    }
    let ids = (rec.uid, rec.gid);
    let real = super::cmd::in_git_dir(ids, &rec.common, &["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}")]).unwrap_or_default();
    if real == tip || !record::valid_oid(&real) {
        return Ok(false);
    }
    // Exit 1 (not an ancestor) and an unknown id (never published) are both "no".
    Ok(super::cmd::in_git_dir(ids, &rec.common, &["merge-base", "--is-ancestor", &tip, &real]).is_ok())
}

/// Create or refresh the layer of `rec` in its state directory `key_dir`.
pub fn prepare(key_dir: &Checked, key_path: &Path, rec: &Record) -> Result<Layer, GitError> {
    let ids = (rec.uid, rec.gid);
    let common = safe_open::open_dir_nofollow(&rec.common, Some(rec.uid)).map_err(safe)?;
    if (common.stat.st_dev, common.stat.st_ino) != (rec.common_dev, rec.common_ino) {
        return Err(GitError::Violation(format!("repository {} was replaced since its record was made", rec.common.display())));
    }
    let objects = safe_open::open_beneath(common.fd.as_fd(), &rec.common, Path::new("objects"), Kind::Dir, Some(rec.uid)).map_err(safe)?;
    let config = config_for(rec)?;
    let refs = packed_refs(rec)?;
    let main_head = safe_open::read_small(common.fd.as_fd(), &rec.common, Path::new("HEAD"), 256, Some(rec.uid))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|h| record::parse_head(h).is_ok())
        .unwrap_or_else(|| "ref: refs/heads/main\n".into());

    let lp = key_path.join("layer");
    let layer = safe_open::ensure_dir(key_dir.fd.as_fd(), key_path, "layer", ids.0, ids.1).map_err(safe)?;
    let sub = |parent: &Checked, ppath: &Path, name: &str| -> Result<(Checked, PathBuf), GitError> {
        Ok((safe_open::ensure_dir(parent.fd.as_fd(), ppath, name, ids.0, ids.1).map_err(safe)?, ppath.join(name)))
    };
    let (obj, objp) = sub(&layer, &lp, "objects")?;
    let (info, infop) = sub(&obj, &objp, "info")?;
    sub(&obj, &objp, "pack")?;
    let (refsd, refsp) = sub(&layer, &lp, "refs")?;
    sub(&refsd, &refsp, "heads")?;
    sub(&refsd, &refsp, "tags")?;
    let (wts, wtsp) = sub(&layer, &lp, "worktrees")?;
    let (adm, admp) = sub(&wts, &wtsp, &rec.name)?;
    let write = |dir: &Checked, path: &Path, name: &str, data: &str| {
        safe_open::replace_file(dir.fd.as_fd(), path, name, data.as_bytes(), 0o644, ids.0, ids.1).map_err(safe)
    };
    write(&layer, &lp, "HEAD", &main_head)?;
    write(&layer, &lp, "config", &config)?;
    write(&layer, &lp, "packed-refs", &refs)?;
    write(&info, &infop, "alternates", &format!("{SANDBOX_OBJECTS}\n"))?;
    write(&adm, &admp, "commondir", "../..\n")?;
    write(&adm, &admp, "gitdir", &format!("{}\n", rec.worktree.join(".git").display()))?;
    // HEAD and index are the agent's across launches; a planted non-file is
    // replaced. When everything the agent did on its branch is in the real
    // branch and the host moved it further (the owner committed in the
    // worktree), the layer starts again from the host's state: otherwise its
    // stale loose ref would hide the new tip and its next commit could never
    // be a fast-forward.
    let a = adm.fd.as_fd();
    let fresh = safe_open::open_beneath(a, &admp, Path::new("HEAD"), Kind::File, None).is_err() || behind_host(&layer, &lp, rec)?;
    if fresh {
        if let Some(b) = &rec.branch {
            safe_open::remove_beneath(refsd.fd.as_fd(), &refsp, &PathBuf::from("heads").join(b)).map_err(safe)?;
        }
        write(&adm, &admp, "HEAD", &rec.head)?;
        // Start from the real admin dir's index (the owner's, never a sandbox's).
        safe_open::remove_owned(a, &admp, "index", rec.uid).map_err(safe)?;
        let real_admin =
            safe_open::open_beneath(common.fd.as_fd(), &rec.common, &PathBuf::from("worktrees").join(&rec.name), Kind::Dir, Some(rec.uid));
        if let Ok(ra) = real_admin {
            match safe_open::copy_file(
                safe_open::At(ra.fd.as_fd(), &rec.admin()),
                Path::new("index"),
                safe_open::At(a, &admp),
                "index",
                MAX_INDEX,
                ids,
            ) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(safe(e)),
            }
        }
    } else if safe_open::open_beneath(a, &admp, Path::new("index"), Kind::File, None).is_err() {
        // Not a regular file: removed (git then starts from an empty index).
        safe_open::remove_owned(a, &admp, "index", rec.uid).map_err(safe)?;
    }
    Ok(Layer { path: lp.clone(), dir: layer, objects })
}
