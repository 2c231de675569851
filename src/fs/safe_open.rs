//! Host side (root): safe access to trees that a sandbox or an unprivileged
//! user can write (worktrees, git repositories, a sandbox's private git layer).
//!
//! The rule (README, "Trust boundaries"): root opens such paths only relative
//! to a directory fd it already checked, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, never blocks (`O_NONBLOCK`:
//! a FIFO is refused by its type, never waited on), checks type and owner with
//! `fstat`, reads a bounded size, and binds from the fd it checked, never from
//! a path resolved again later. Writes into such a tree go to a fresh file
//! (`O_CREAT | O_EXCL`, never an existing inode) renamed into place.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

#[derive(Debug, thiserror::Error)]
pub enum SafeError {
    #[error("{path}: {errno} ({})", errno.desc())]
    Sys { path: PathBuf, errno: Errno },
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
}

impl SafeError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SafeError::Sys { errno, .. } => Some(*errno),
            SafeError::Refused { .. } => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }
}

fn sys(path: &Path) -> impl FnOnce(Errno) -> SafeError + '_ {
    move |errno| SafeError::Sys { path: path.into(), errno }
}

fn refused(path: &Path, message: impl Into<String>) -> SafeError {
    SafeError::Refused { path: path.into(), message: message.into() }
}

const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS)
    .union(ResolveFlag::RESOLVE_NO_XDEV);

/// The kind of inode expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// An fd and what `fstat` said about it.
pub struct Checked {
    pub fd: OwnedFd,
    pub stat: FileStat,
}

impl Checked {
    pub fn dev_ino(&self) -> (u64, u64) {
        (self.stat.st_dev, self.stat.st_ino)
    }

    pub fn uid(&self) -> u32 {
        self.stat.st_uid
    }
}

fn kind_of(stat: &FileStat) -> Option<Kind> {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Some(Kind::Dir),
        SFlag::S_IFREG => Some(Kind::File),
        _ => None,
    }
}

/// Open `rel` below `dir` without crossing a symlink, a magic link, `..` out
/// of `dir` or a mount; the result must be of `kind` and, when given, owned by
/// `owner`. The inode is first reached with `O_PATH` and checked with `fstat`;
/// only a regular file or directory is then opened (through the checked fd),
/// so a FIFO, socket or device is never opened at all. `display` names `dir`
/// in errors.
pub fn open_beneath(dir: BorrowedFd, display: &Path, rel: &Path, kind: Kind, owner: Option<u32>) -> Result<Checked, SafeError> {
    let path = display.join(rel);
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let flags = if kind == Kind::Dir { flags | OFlag::O_DIRECTORY } else { flags };
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let fd = nix::fcntl::openat2(dir, rel, OpenHow::new().flags(flags).resolve(BENEATH)).map_err(sys(&path))?;
    check(fd, &path, kind, owner)
}

/// Open an absolute path given by the operator or recorded by root, crossing
/// no symlink, as a directory.
pub fn open_dir_nofollow(path: &Path, owner: Option<u32>) -> Result<Checked, SafeError> {
    if !path.is_absolute() {
        return Err(refused(path, "not an absolute path"));
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let resolve = ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let fd = nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, OpenHow::new().flags(flags).resolve(resolve)).map_err(sys(path))?;
    check(fd, path, Kind::Dir, owner)
}

/// Type and owner of an `O_PATH` fd, then the same inode opened for reading
/// (through /proc/self/fd, which names exactly that inode).
fn check(fd: OwnedFd, path: &Path, kind: Kind, owner: Option<u32>) -> Result<Checked, SafeError> {
    let stat = nix::sys::stat::fstat(&fd).map_err(sys(path))?;
    match kind_of(&stat) {
        Some(k) if k == kind => {}
        _ => return Err(refused(path, format!("not a {}", if kind == Kind::Dir { "directory" } else { "regular file" }))),
    }
    if let Some(uid) = owner
        && stat.st_uid != uid
    {
        return Err(refused(path, format!("owned by uid {}, expected {uid}", stat.st_uid)));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let flags = if kind == Kind::Dir { flags | OFlag::O_DIRECTORY } else { flags };
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let opened = nix::fcntl::open(proc.as_str(), flags, Mode::empty()).map_err(sys(path))?;
    let again = nix::sys::stat::fstat(&opened).map_err(sys(path))?;
    if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
        return Err(refused(path, "changed while it was opened"));
    }
    Ok(Checked { fd: opened, stat: again })
}

/// Read at most `max` bytes of the regular file `rel` below `dir`; a larger file is refused.
pub fn read_small(dir: BorrowedFd, display: &Path, rel: &Path, max: usize, owner: Option<u32>) -> Result<Vec<u8>, SafeError> {
    let c = open_beneath(dir, display, rel, Kind::File, owner)?;
    let path = display.join(rel);
    if c.stat.st_size < 0 || c.stat.st_size as u64 > max as u64 {
        return Err(refused(&path, format!("larger than {max} bytes")));
    }
    let mut buf = Vec::new();
    std::fs::File::from(c.fd).take(max as u64 + 1).read_to_end(&mut buf).map_err(|e| refused(&path, e.to_string()))?;
    if buf.len() > max {
        return Err(refused(&path, format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// The path an fd refers to now (for messages and mount targets, never reopened).
pub fn fd_path(fd: BorrowedFd) -> Result<PathBuf, SafeError> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(&link).map_err(|e| refused(Path::new(&link), e.to_string()))
}

/// A detached clone of the mount tree at `fd` (non-recursive): the bind is made
/// of the inode that was checked, never of a path resolved again.
pub fn open_tree_of(fd: BorrowedFd, display: &Path) -> Result<OwnedFd, SafeError> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: "" is a valid C string; the kernel returns a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if ret < 0 {
        return Err(SafeError::Sys { path: display.into(), errno: Errno::last() });
    }
    // SAFETY: a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Directory `name` in `dir`, created (mode 0700, owned by uid:gid) when
/// missing; whatever else is there under that name (a file, a symlink, a FIFO)
/// is removed first. An existing directory of another uid's is refused, never
/// chowned: someone may have moved it there (a world-writable directory can be
/// renamed into a tree its owner writes) to be handed its ownership.
pub fn ensure_dir(dir: BorrowedFd, display: &Path, name: &str, uid: u32, gid: u32) -> Result<Checked, SafeError> {
    let path = display.join(name);
    match open_beneath(dir, display, Path::new(name), Kind::Dir, None) {
        Ok(c) => {
            if c.stat.st_uid != uid {
                return Err(refused(&path, format!("a directory of uid {} where one of uid {uid} was expected", c.stat.st_uid)));
            }
            if c.stat.st_gid != gid {
                nix::unistd::fchown(&c.fd, Some(uid.into()), Some(gid.into())).map_err(sys(&path))?;
            }
            return Ok(c);
        }
        Err(e) if e.is_not_found() => {}
        Err(_) => remove_owned(dir, display, name, uid)?,
    }
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(sys(&path))?;
    let c = open_beneath(dir, display, Path::new(name), Kind::Dir, None)?;
    nix::unistd::fchown(&c.fd, Some(uid.into()), Some(gid.into())).map_err(sys(&path))?;
    Ok(c)
}

/// Replace `name` in `dir` with a new regular file holding `data` (mode 0644
/// or 0600, owned by uid:gid): written to a fresh temporary file, renamed over
/// whatever was there.
pub fn replace_file(dir: BorrowedFd, display: &Path, name: &str, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), SafeError> {
    let mut f = create_temp(dir, display, name, mode, uid, gid)?;
    f.1.write_all(data).map_err(|e| refused(&display.join(name), e.to_string()))?;
    drop(f.1);
    commit_temp(dir, display, &f.0, name)
}

/// A fresh temporary file next to `name` (to be renamed with [`commit_temp`]).
pub fn create_temp(dir: BorrowedFd, display: &Path, name: &str, mode: u32, uid: u32, gid: u32) -> Result<(String, std::fs::File), SafeError> {
    let tmp = format!(".{name}.swarmcell-{:08x}", crate::launch::random_u32());
    let path = display.join(&tmp);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat2(dir, tmp.as_str(), OpenHow::new().flags(flags).mode(Mode::from_bits_truncate(mode)).resolve(BENEATH))
        .map_err(sys(&path))?;
    nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into())).map_err(sys(&path))?;
    Ok((tmp, std::fs::File::from(fd)))
}

pub fn commit_temp(dir: BorrowedFd, display: &Path, tmp: &str, name: &str) -> Result<(), SafeError> {
    let path = display.join(name);
    match nix::fcntl::renameat(dir, tmp, dir, name) {
        Ok(()) => Ok(()),
        // A directory (of the sandbox's making) is in the way.
        Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => {
            remove_entry_of(dir, display, name, Some(dir_uid(dir, display)?))?;
            nix::fcntl::renameat(dir, tmp, dir, name).map_err(sys(&path))
        }
        Err(e) => {
            let _ = nix::unistd::unlinkat(dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
            Err(SafeError::Sys { path, errno: e })
        }
    }
}

/// Remove `name` from `dir`, a whole tree if it is a directory, never following
/// a symlink or leaving the filesystem. Missing is fine. Any depth and width:
/// each level holds one fd, and below [`MAX_DEPTH`] subtrees are moved up to
/// the top directory (renamed, never followed) and removed from there.
pub fn remove_entry(dir: BorrowedFd, display: &Path, name: &str) -> Result<(), SafeError> {
    remove_entry_of(dir, display, name, None)
}

/// [`remove_entry`] of a tree an unprivileged `owner` can write: root empties
/// only directories of `owner`'s (or root's). Another user's directory there
/// was moved in (a world-writable one can be), and root would delete for the
/// owner what it could not delete itself: refused, left as it is.
pub fn remove_owned(dir: BorrowedFd, display: &Path, name: &str, owner: u32) -> Result<(), SafeError> {
    remove_entry_of(dir, display, name, Some(owner))
}

fn remove_entry_of(dir: BorrowedFd, display: &Path, name: &str, owner: Option<u32>) -> Result<(), SafeError> {
    let path = display.join(name);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(refused(&path, "not a single path component"));
    }
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(SafeError::Sys { path, errno: e }),
    }
    let top = open_beneath(dir, display, Path::new(name), Kind::Dir, None)?;
    check_owner(&top, &path, owner)?;
    clear_dir(top.fd.as_fd(), top.fd.as_fd(), &path, 0, owner)?;
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(SafeError::Sys { path, errno: e }),
    }
}

/// [`remove_entry`] of `rel` (several components) below `dir`: its parent is
/// opened without crossing a symlink; a missing parent is fine. Only
/// directories of the parent's owner (or root's) are emptied ([`remove_owned`]).
pub fn remove_beneath(dir: BorrowedFd, display: &Path, rel: &Path) -> Result<(), SafeError> {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { return Err(refused(&display.join(rel), "no file name")) };
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
    let Some(parent) = parent else { return remove_entry_of(dir, display, name, Some(dir_uid(dir, display)?)) };
    match open_beneath(dir, display, parent, Kind::Dir, None) {
        Ok(p) => remove_entry_of(p.fd.as_fd(), &display.join(parent), name, Some(p.stat.st_uid)),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

const MAX_DEPTH: usize = 64;

/// The owner of directory `dir` (a tree below it belongs to that uid).
fn dir_uid(dir: BorrowedFd, display: &Path) -> Result<u32, SafeError> {
    Ok(nix::sys::stat::fstat(dir).map_err(sys(display))?.st_uid)
}

fn check_owner(c: &Checked, path: &Path, owner: Option<u32>) -> Result<(), SafeError> {
    match owner {
        Some(u) if c.stat.st_uid != u && c.stat.st_uid != 0 => {
            Err(refused(path, format!("is a directory of uid {} inside a tree of uid {u}'s: not removed", c.stat.st_uid)))
        }
        _ => Ok(()),
    }
}

/// Empty the directory `d` (at `depth` below `top`).
fn clear_dir(top: BorrowedFd, d: BorrowedFd, display: &Path, depth: usize, owner: Option<u32>) -> Result<(), SafeError> {
    loop {
        let names = list_dir(d, display)?;
        if names.is_empty() {
            return Ok(());
        }
        // Every pass removes or moves something; one that did not is an error, not a loop.
        let mut progress = false;
        for name in names {
            let path = display.join(&name);
            match nix::unistd::unlinkat(d, name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    progress = true;
                    continue;
                }
                Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR | Errno::EPERM) => {}
                Err(e) => return Err(SafeError::Sys { path, errno: e }),
            }
            if depth + 1 >= MAX_DEPTH {
                // Too deep to hold another fd: move it up, it is emptied from the top.
                let flat = format!(".swarmcell-flat-{:08x}", crate::launch::random_u32());
                nix::fcntl::renameat(d, name.as_os_str(), top, flat.as_str()).map_err(sys(&path))?;
                progress = true;
                continue;
            }
            let sub = open_beneath(d, display, Path::new(&name), Kind::Dir, None)?;
            check_owner(&sub, &path, owner)?;
            clear_dir(top, sub.fd.as_fd(), &path, depth + 1, owner)?;
            match nix::unistd::unlinkat(d, name.as_os_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
                Ok(()) => progress = true,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(SafeError::Sys { path, errno: e }),
            }
        }
        if !progress {
            return Err(refused(display, "holds entries that cannot be removed"));
        }
    }
}

/// Most names one [`list_dir`] returns (callers that must see all loop).
pub const MAX_LIST: usize = 100_000;

/// The names in a directory (not `.` and `..`), at most [`MAX_LIST`].
pub fn list_dir(dir: BorrowedFd, display: &Path) -> Result<Vec<std::ffi::OsString>, SafeError> {
    let fd = nix::fcntl::openat2(dir, ".", OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)).map_err(sys(display))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(sys(display))?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(sys(display))?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(n).to_os_string());
        if names.len() >= MAX_LIST {
            break;
        }
    }
    Ok(names)
}

/// A directory fd and the path it is shown as in messages.
#[derive(Clone, Copy)]
pub struct At<'a>(pub BorrowedFd<'a>, pub &'a Path);

/// Copy the regular file `rel` below `src`, which must belong to `ids.0` (a
/// file of someone else's hard-linked into the tree is refused, never copied
/// to where that uid could read it), to a new file `name` in `dst` (owned by
/// `ids`), at most `max` bytes; returns the size.
pub fn copy_file(src: At, rel: &Path, dst: At, name: &str, max: u64, ids: (u32, u32)) -> Result<u64, SafeError> {
    let (At(src, src_display), At(dst, dst_display)) = (src, dst);
    let c = open_beneath(src, src_display, rel, Kind::File, Some(ids.0))?;
    let path = src_display.join(rel);
    if c.stat.st_size < 0 || c.stat.st_size as u64 > max {
        return Err(refused(&path, format!("larger than {max} bytes")));
    }
    let (tmp, mut out) = create_temp(dst, dst_display, name, 0o444, ids.0, ids.1)?;
    let n = std::io::copy(&mut std::fs::File::from(c.fd).take(max + 1), &mut out).map_err(|e| refused(&path, e.to_string()))?;
    drop(out);
    if n > max {
        let _ = nix::unistd::unlinkat(dst, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(refused(&path, format!("larger than {max} bytes")));
    }
    commit_temp(dst, dst_display, &tmp, name)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_fifos_and_dotdot_are_refused_and_files_are_bounded() {
        let dir = std::env::temp_dir().join(format!("safe-open-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/f"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("d/link")).unwrap();
        nix::unistd::mkfifo(&dir.join("d/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let root = open_dir_nofollow(&dir, None).unwrap();
        let fd = root.fd.as_fd();
        assert_eq!(read_small(fd, &dir, Path::new("d/f"), 5, None).unwrap(), b"hello");
        assert!(read_small(fd, &dir, Path::new("d/f"), 4, None).is_err());
        assert!(read_small(fd, &dir, Path::new("d/link"), 4096, None).is_err());
        assert!(read_small(fd, &dir, Path::new("d/fifo"), 4096, None).is_err());
        assert!(read_small(fd, &dir, Path::new("../etc/passwd"), 4096, None).is_err());
        assert!(open_beneath(fd, &dir, Path::new("d"), Kind::Dir, Some(12345)).is_err());
        // Deeper than any fd budget: removed all the same.
        let mut cur = open_beneath(fd, &dir, Path::new("d"), Kind::Dir, None).unwrap();
        for _ in 0..300 {
            nix::sys::stat::mkdirat(cur.fd.as_fd(), "n", Mode::from_bits_truncate(0o700)).unwrap();
            std::fs::write(format!("/proc/self/fd/{}/f", cur.fd.as_raw_fd()), "x").unwrap();
            cur = open_beneath(cur.fd.as_fd(), &dir, Path::new("n"), Kind::Dir, None).unwrap();
        }
        drop(cur);
        std::fs::write(dir.join("d").join(OsStr::from_bytes(b"not-utf8-\xff")), "x").unwrap();
        replace_file(fd, &dir, "d", b"x", 0o644, 0, 0).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("d")).unwrap(), "x");
        remove_entry(fd, &dir, "d").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
