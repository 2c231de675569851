//! Host root: a walk of a sandbox-writable tree (the worktree) that cannot be
//! led outside it. Every name is resolved relative to its parent's descriptor
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` and
//! `O_NOFOLLOW`; only directories are opened by the walk (`O_DIRECTORY` fails
//! on anything else before it is opened: no FIFO is ever opened, so nothing
//! blocks), and each opened directory is checked to be the inode that was
//! listed. Symlinks are never followed, other filesystems are not entered.
//! Depth and the number of entries are bounded.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, SFlag};

use crate::sys::Errno;

/// Directories nested deeper than this are not walked (each level holds a
/// descriptor); a tree that has them is reported as such, never half-walked.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{path}: {call}: {errno} ({})", errno.desc())]
    Io { path: PathBuf, call: &'static str, errno: Errno },
    #[error("{path}: directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep { path: PathBuf },
    #[error("more than {0} files and directories")]
    TooMany(u64),
    /// The visitor ended the walk (e.g. a limit was passed).
    #[error("stopped")]
    Stopped,
}

/// What the walk calls for each entry below the root (never for the root).
pub trait Visitor {
    /// A directory, already opened and checked, before its entries are read.
    fn dir(&mut self, fd: &OwnedFd, st: &FileStat, path: &Path) -> Result<(), WalkError>;
    /// Anything else, by its parent directory (and that one's path) and name
    /// (not opened).
    fn other(&mut self, parent: &OwnedFd, parent_path: &Path, name: &CStr, st: &FileStat) -> Result<(), WalkError>;
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Open the directory `path` (absolute, already canonical) without following
/// any symlink on the way: a path that changed into a symlink is refused.
pub fn open_root(path: &Path) -> Result<OwnedFd, WalkError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how).map_err(|errno| WalkError::Io { path: path.into(), call: "openat2", errno })
}

/// Open `name` in `parent` if it is still the regular file `st` describes
/// (`None` when it is gone or changed). Never follows a symlink, never opens
/// anything but a regular file for longer than the check.
pub fn open_file(parent: &OwnedFd, name: &CStr, st: &FileStat) -> Result<Option<OwnedFd>, Errno> {
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Ok(None);
    }
    let fd = match nix::fcntl::openat2(parent.as_fd(), name, how(OFlag::O_RDONLY | OFlag::O_NOATIME)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV | Errno::ENXIO | Errno::EWOULDBLOCK) => return Ok(None),
        Err(e) => return Err(e),
    };
    let now = nix::sys::stat::fstat(fd.as_fd())?;
    Ok((now.st_ino == st.st_ino && now.st_dev == st.st_dev && SFlag::from_bits_truncate(now.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG).then_some(fd))
}

/// Walk everything below `root` (depth first; a directory is visited before
/// its entries). Entries on another filesystem than the root's are skipped;
/// entries that vanish while the walk runs are skipped.
pub fn walk(root: &OwnedFd, root_path: &Path, max_entries: u64, v: &mut impl Visitor) -> Result<u64, WalkError> {
    let st = nix::sys::stat::fstat(root.as_fd()).map_err(|errno| WalkError::Io { path: root_path.into(), call: "fstat", errno })?;
    let mut w = Walk { dev: st.st_dev, seen: 0, max_entries };
    w.dir(root, root_path, 0, v)?;
    Ok(w.seen)
}

struct Walk {
    dev: u64,
    seen: u64,
    max_entries: u64,
}

impl Walk {
    fn dir(&mut self, fd: &OwnedFd, path: &Path, depth: usize, v: &mut impl Visitor) -> Result<(), WalkError> {
        let io = |call, errno| WalkError::Io { path: path.into(), call, errno };
        // Dir reads through a duplicate, which shares its offset with `fd`
        // (kept for openat and fstatat): start from the beginning, since a
        // root descriptor is walked again and again.
        let dup = fd.try_clone().map_err(|e| io("dup", Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        nix::unistd::lseek(dup.as_fd(), 0, nix::unistd::Whence::SeekSet).map_err(|e| io("lseek", e))?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| io("fdopendir", e))?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io("getdents", e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.seen += 1;
            if self.seen > self.max_entries {
                return Err(WalkError::TooMany(self.max_entries));
            }
            // Built only when needed: most entries are files that need no path.
            let child = || path.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
            let st = match nix::sys::stat::fstatat(fd.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(WalkError::Io { path: child(), call: "fstatat", errno: e }),
            };
            if st.st_dev != self.dev {
                continue;
            }
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                v.other(fd, path, name, &st)?;
                continue;
            }
            if depth + 1 > MAX_DEPTH {
                return Err(WalkError::TooDeep { path: child() });
            }
            let sub = match nix::fcntl::openat2(fd.as_fd(), name, how(OFlag::O_RDONLY | OFlag::O_DIRECTORY)) {
                Ok(sub) => sub,
                // Gone, replaced by a symlink or a non-directory, or a mount point.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => continue,
                Err(e) => return Err(WalkError::Io { path: child(), call: "openat2", errno: e }),
            };
            let child = child();
            let now = nix::sys::stat::fstat(sub.as_fd()).map_err(|e| WalkError::Io { path: child.clone(), call: "fstat", errno: e })?;
            if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                continue; // replaced between the listing and the open
            }
            v.dir(&sub, &now, &child)?;
            self.dir(&sub, &child, depth + 1, v)?;
        }
        Ok(())
    }
}

/// Space and files a tree holds: every inode once (hard links counted once),
/// blocks as allocated on disk (sparse files count what they use).
#[derive(Debug, Default)]
pub struct Measure {
    pub bytes: u64,
    pub inodes: u64,
    /// Stop once past these (the walk's cost is bounded by what it must find).
    pub stop_at_bytes: Option<u64>,
    pub stop_at_inodes: Option<u64>,
    linked: std::collections::HashSet<(u64, u64)>,
}

impl Measure {
    pub fn new(stop_at_bytes: Option<u64>, stop_at_inodes: Option<u64>) -> Measure {
        Measure { stop_at_bytes, stop_at_inodes, ..Default::default() }
    }

    pub fn add(&mut self, st: &FileStat) -> Result<(), WalkError> {
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir && st.st_nlink > 1 && !self.linked.insert((st.st_dev, st.st_ino)) {
            return Ok(());
        }
        self.bytes = self.bytes.saturating_add((st.st_blocks as u64).saturating_mul(512));
        self.inodes += 1;
        if self.stop_at_bytes.is_some_and(|b| self.bytes > b) || self.stop_at_inodes.is_some_and(|i| self.inodes > i) {
            return Err(WalkError::Stopped);
        }
        Ok(())
    }
}

impl Visitor for Measure {
    fn dir(&mut self, _: &OwnedFd, st: &FileStat, _: &Path) -> Result<(), WalkError> {
        self.add(st)
    }

    fn other(&mut self, _: &OwnedFd, _: &Path, _: &CStr, st: &FileStat) -> Result<(), WalkError> {
        self.add(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::os::unix::fs::symlink;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("swarmcell-walk-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_walk_counts_each_inode_once_and_follows_no_symlink_and_opens_no_fifo() {
        let d = tempdir();
        let outside = tempdir();
        std::fs::write(outside.join("secret"), vec![1u8; 64 << 10]).unwrap();
        std::fs::create_dir_all(d.join("a/b/c")).unwrap();
        std::fs::write(d.join("a/b/c/f"), vec![1u8; 16 << 10]).unwrap();
        std::fs::hard_link(d.join("a/b/c/f"), d.join("a/link")).unwrap();
        symlink(&outside, d.join("a/out")).unwrap();
        symlink(outside.join("secret"), d.join("s")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let root = open_root(&d).unwrap();
        let mut m = Measure::new(None, None);
        let seen = walk(&root, &d, 1000, &mut m).unwrap();
        // a, a/b, a/b/c, a/b/c/f (= a/link), a/out, s, fifo
        assert_eq!(m.inodes, 7, "{m:?}");
        assert_eq!(seen, 8);
        // The same root descriptor walked again sees the same tree.
        let mut again = Measure::new(None, None);
        assert_eq!(walk(&root, &d, 1000, &mut again).unwrap(), 8);
        assert_eq!((again.inodes, again.bytes), (m.inodes, m.bytes));
        assert!(m.bytes >= 16 << 10 && m.bytes < 64 << 10, "the symlinked 64K file was not counted: {m:?}");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn the_walk_stops_at_its_bounds() {
        let d = tempdir();
        let mut p = d.clone();
        for _ in 0..(MAX_DEPTH + 2) {
            p = p.join("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = open_root(&d).unwrap();
        assert!(matches!(walk(&root, &d, u64::MAX, &mut Measure::new(None, None)), Err(WalkError::TooDeep { .. })));
        assert!(matches!(walk(&root, &d, 10, &mut Measure::new(None, None)), Err(WalkError::TooMany(10))));
        assert!(matches!(walk(&root, &d, u64::MAX, &mut Measure::new(None, Some(5))), Err(WalkError::Stopped)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_root_path_through_a_symlink_is_refused() {
        let d = tempdir();
        std::fs::create_dir(d.join("real")).unwrap();
        symlink(d.join("real"), d.join("link")).unwrap();
        assert!(open_root(&d.join("real")).is_ok());
        assert!(open_root(&d.join("link")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
