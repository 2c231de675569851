//! Parent side (host root, before the sandbox exists): resolve host paths and
//! prepare each bind as a detached mount tree with its flags already set, so the
//! child only attaches them and never resolves a host path itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::launch::spec::MountEntry;
use crate::sys::mount::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::sys::{self, SysError};

/// Device nodes bound from the host into the sandbox's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{what} {path}: {source}")]
    Path { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: cannot prepare the mount: {source}")]
    Sys { what: &'static str, path: PathBuf, source: SysError },
    #[error("{what} {path}: {reason}")]
    Refused { what: &'static str, path: PathBuf, reason: String },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Mount entries and the fds they refer to (by index).
#[derive(Default)]
pub struct PreparedMounts {
    pub entries: Vec<MountEntry>,
    pub fds: Vec<OwnedFd>,
}

impl PreparedMounts {
    fn push_tree(&mut self, target: PathBuf, is_file: bool, fd: OwnedFd) {
        self.entries.push(MountEntry::Tree { target, is_file, fd_index: self.fds.len() });
        self.fds.push(fd);
    }

    fn covers(&self, path: &Path) -> bool {
        self.entries.iter().any(|e| matches!(e, MountEntry::Tree { .. }) && path.starts_with(e.target()))
    }

    /// Bind a host path at the same path inside the sandbox.
    ///
    /// `required = false` skips paths this host does not have (policy defaults
    /// such as /lib32). A path that is itself a symlink is recreated as a symlink,
    /// and its target is bound too unless something already covers it.
    pub fn add_bind(&mut self, path: &Path, access: Access, required: bool, what: &'static str) -> Result<(), BindError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(BindError::Path { what, path: path.into(), source });
            }
        };
        // Resolve symlinks in the parent directories so that no sandbox path crosses one.
        let parent = path.parent().unwrap_or(Path::new("/"));
        let parent = parent.canonicalize().map_err(|source| BindError::Path { what, path: path.into(), source })?;
        let target = match path.file_name() {
            Some(name) => parent.join(name),
            None => {
                return Err(BindError::Refused { what, path: path.into(), reason: "cannot bind `/`".into() });
            }
        };
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(path).map_err(|source| BindError::Path { what, path: path.into(), source })?;
            let resolved = match path.canonicalize() {
                Ok(p) => p,
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(BindError::Path { what, path: path.into(), source });
                }
            };
            // A link that goes through other links (or `..`) would dangle in
            // the sandbox, which has only its end bound: it points there.
            let link = if parent.join(&link) == resolved { link } else { resolved.clone() };
            self.entries.push(MountEntry::Symlink { target, link });
            if !self.covers(&resolved) {
                self.add_bind(&resolved, access, required, what)?;
            }
            return Ok(());
        }
        if !(meta.is_dir() || meta.is_file()) {
            return Err(BindError::Refused { what, path: path.into(), reason: "not a directory or regular file".into() });
        }
        let flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | if access == Access::ReadOnly { MOUNT_ATTR_RDONLY } else { 0 };
        let fd = detached_tree(&target, true, flags).map_err(|source| BindError::Sys { what, path: path.into(), source })?;
        self.push_tree(target, meta.is_file(), fd);
        Ok(())
    }

    /// The host's device nodes for the sandbox's minimal /dev.
    pub fn add_devices(&mut self) -> Result<(), BindError> {
        for dev in DEVICES {
            let path = PathBuf::from("/dev").join(dev);
            let fd = detached_tree(&path, false, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC).map_err(|source| BindError::Sys {
                what: "device",
                path: path.clone(),
                source,
            })?;
            self.push_tree(path, true, fd);
        }
        Ok(())
    }

    /// A tree that belongs to the worktree's owner (the worktree itself, the
    /// private git layer, the git object store), from a directory fd the caller
    /// opened and checked (never a path resolved again), mounted at `target`
    /// inside the sandbox: only its own mount (submounts below it stay out of
    /// the sandbox), nosuid, nodev. Returns the fd index so that the caller can
    /// idmap it once the sandbox's user namespace exists.
    pub fn add_owned_fd(&mut self, dir: std::os::fd::BorrowedFd, target: &Path, access: Access, what: &'static str) -> Result<usize, BindError> {
        let flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | if access == Access::ReadOnly { MOUNT_ATTR_RDONLY } else { 0 };
        let fd = crate::fs::safe_open::open_tree_of(dir, target).map_err(|e| BindError::Refused {
            what,
            path: target.into(),
            reason: format!("cannot clone the mount: {e}"),
        })?;
        sys::mount::mount_setattr_fd(fd.as_raw_fd(), false, flags, None).map_err(|source| BindError::Sys { what, path: target.into(), source })?;
        self.push_tree(target.into(), false, fd);
        Ok(self.fds.len() - 1)
    }

    /// Order entries so that every mount point's parents are attached first.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.target().cmp(b.target()));
    }

    pub fn raw_fds(&self) -> Vec<i32> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }
}

fn detached_tree(path: &Path, recursive: bool, flags: u64) -> Result<OwnedFd, SysError> {
    let fd = sys::mount::open_tree_clone(path, recursive)?;
    sys::mount::mount_setattr_fd(fd.as_raw_fd(), recursive, flags, None)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_of(m: &PreparedMounts, target: &Path) -> PathBuf {
        m.entries
            .iter()
            .find_map(|e| match e {
                MountEntry::Symlink { target: t, link } if t == target => Some(link.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_symlink_through_other_symlinks_is_recreated_pointing_at_its_end() {
        // NixOS: /etc/localtime -> /etc/zoneinfo/..., /etc/zoneinfo -> /nix/store/...;
        // the first hop's text would dangle in the sandbox, which has only the end bound.
        let dir = std::env::temp_dir().join(format!("sc-binds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("store/zoneinfo")).unwrap();
        std::fs::write(dir.join("store/zoneinfo/UTC"), "TZif").unwrap();
        std::os::unix::fs::symlink(dir.join("store/zoneinfo"), dir.join("zoneinfo")).unwrap();
        std::os::unix::fs::symlink("zoneinfo/UTC", dir.join("localtime")).unwrap();
        std::os::unix::fs::symlink("store/zoneinfo/UTC", dir.join("direct")).unwrap();
        let mut m = PreparedMounts::default();
        let r = m
            .add_bind(&dir.join("localtime"), Access::ReadOnly, true, "test")
            .and_then(|_| m.add_bind(&dir.join("direct"), Access::ReadOnly, true, "test"));
        let end = dir.join("store/zoneinfo/UTC").canonicalize().unwrap();
        let (multi, single) = (link_of(&m, &dir.join("localtime")), link_of(&m, &dir.join("direct")));
        std::fs::remove_dir_all(&dir).unwrap();
        r.unwrap();
        assert_eq!(multi, end);
        assert_eq!(single, Path::new("store/zoneinfo/UTC"), "a one-hop link keeps its own text");
    }
}
