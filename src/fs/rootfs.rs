//! Child side (sandbox init, pid 1 of the new PID namespace, holding capabilities
//! only inside its own user namespace): build the sandbox's root filesystem.
//!
//! The sequence: make every mount private; mount a fresh tmpfs as the future root
//! (on the host's /tmp *in this mount namespace only*); create the skeleton
//! (/proc, /dev, /tmp, /etc) with /dev/pts and /proc mounted
//! ([`Skeleton::build`], which needs no spec: init does it while the launcher
//! makes the spec); then ([`Skeleton::finish`]) /tmp and /dev/shm at the
//! spec's sizes; attach the parent's prepared trees (the device nodes among
//! them); write /etc; `pivot_root` into it and detach the host tree; make /
//! (and /dev with it) read-only.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::launch::spec::{InitSpec, MountEntry};
use crate::sys::{self, Errno, SysError};

/// Where the new root is assembled before `pivot_root` (inside our own mount
/// namespace; the host's /tmp is untouched).
const STAGING: &str = "/tmp";

/// /proc entries that must not be writable even by a process that somehow
/// regains privileges in the sandbox's user namespace.
const PROC_READ_ONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];

#[derive(Debug, thiserror::Error)]
#[error("building the sandbox root: {step}: {source}")]
pub struct RootfsError {
    step: String,
    source: SysError,
}

fn step<T>(what: impl Into<String>, r: Result<T, SysError>) -> Result<T, RootfsError> {
    r.map_err(|source| RootfsError { step: what.into(), source })
}

/// The root being built: what it needs of no spec is done.
pub struct Skeleton {
    root: OwnedFd,
}

impl Skeleton {
    /// The root tmpfs with its directories, /dev/pts and /proc.
    pub fn build() -> Result<Skeleton, RootfsError> {
        let staging = Path::new(STAGING);
        step("make mounts private", sys::mount::mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None))?;
        step(
            "root tmpfs",
            sys::mount::mount(Some("tmpfs"), staging, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0755,size=8m,nr_inodes=4096")),
        )?;
        let root = step("open root", open_dir_path(staging))?;
        for dir in ["proc", "dev", "tmp", "etc"] {
            step(format!("mkdir /{dir}"), ensure_path(&root, Path::new(dir), false))?;
        }
        mount_dev(staging, &root)?;
        mount_proc(staging, &root)?;
        Ok(Skeleton { root })
    }

    /// Everything else, as `spec` says (its mounts' trees are `fds`), then
    /// `pivot_root` into it.
    pub fn finish(self, spec: &InitSpec, fds: &[OwnedFd]) -> Result<(), RootfsError> {
        let staging = Path::new(STAGING);
        let root = self.root;
        mount_shared_tmpfs(staging, "tmp", libc::MS_NOSUID | libc::MS_NODEV, spec.tmp_size)?;
        mount_shared_tmpfs(staging, "dev/shm", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, spec.shm_size)?;
        for entry in &spec.mounts {
            attach(&root, entry, fds)?;
        }
        write_etc(&root, spec)?;
        let home = spec.home.strip_prefix("/").unwrap_or(&spec.home);
        let home_fd = step("create HOME", ensure_path(&root, home, false))?;
        step("chmod HOME", fchmod_path(&home_fd, 0o700))?;
        drop(root);

        step("chdir to new root", chdir(staging))?;
        step("pivot_root", sys::mount::pivot_root(Path::new("."), Path::new(".")))?;
        // The old root is now stacked on top of "."; detaching it removes every host
        // mount from this namespace.
        step("detach old root", sys::mount::umount_detach(Path::new(".")))?;
        step("chdir /", chdir(Path::new("/")))?;
        step("read-only /", remount_readonly(Path::new("/"), libc::MS_NOSUID | libc::MS_NODEV))?;
        Ok(())
    }
}

/// A world-writable (sticky) tmpfs of `size` bytes at `rel` (/tmp, /dev/shm).
fn mount_shared_tmpfs(staging: &Path, rel: &str, flags: libc::c_ulong, size: u64) -> Result<(), RootfsError> {
    let opts = format!("mode=1777,size={size}");
    step(format!("mount /{rel}"), sys::mount::mount(Some("tmpfs"), &staging.join(rel), Some("tmpfs"), flags, Some(&opts)))
}

/// /dev is a directory of the root tmpfs (read-only with it; the device
/// nodes are bind mounts of the host's, among the spec's trees): one
/// filesystem less to make, and to tear down when the sandbox ends.
fn mount_dev(staging: &Path, root: &OwnedFd) -> Result<(), RootfsError> {
    let dev = staging.join("dev");
    for d in ["dev/pts", "dev/shm"] {
        step(format!("mkdir /{d}"), ensure_path(root, Path::new(d), false))?;
    }
    // A private devpts instance: the sandbox sees only its own ptys.
    step(
        "mount /dev/pts",
        sys::mount::mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    let dev_fd = step("open /dev", open_dir_path(&dev))?;
    for (name, link) in
        [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
    {
        step(format!("symlink /dev/{name}"), sys::symlinkat(Path::new(link), dev_fd.as_raw_fd(), &cstr(name)))?;
    }
    Ok(())
}

fn mount_proc(staging: &Path, root: &OwnedFd) -> Result<(), RootfsError> {
    let proc_dir = staging.join("proc");
    // Mounted while the host's /proc is still visible in this namespace, as the
    // kernel requires for a new proc instance in a user namespace.
    step("mount /proc", sys::mount::mount(Some("proc"), &proc_dir, Some("proc"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None))?;
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        let target = match ensure_existing(root, &Path::new("proc").join(name)) {
            Ok(fd) => fd,
            Err(e) if e.errno == Errno::ENOENT => continue,
            Err(e) => return step(format!("open /proc/{name}"), Err(e)),
        };
        let tree = step(format!("clone /proc/{name}"), sys::mount::open_tree_clone(&path, true))?;
        let flags = sys::mount::MOUNT_ATTR_RDONLY | sys::mount::MOUNT_ATTR_NOSUID | sys::mount::MOUNT_ATTR_NODEV | sys::mount::MOUNT_ATTR_NOEXEC;
        step(format!("read-only /proc/{name}"), sys::mount::mount_setattr_fd(tree.as_raw_fd(), true, flags, None))?;
        step(format!("attach /proc/{name}"), sys::mount::move_mount_fd(tree.as_raw_fd(), target.as_raw_fd(), &path))?;
    }
    Ok(())
}

fn attach(root: &OwnedFd, entry: &MountEntry, fds: &[OwnedFd]) -> Result<(), RootfsError> {
    let target = entry.target();
    let rel = target.strip_prefix("/").unwrap_or(target);
    match entry {
        MountEntry::Tree { is_file, fd_index, .. } => {
            let tree = fds.get(*fd_index).ok_or_else(|| RootfsError {
                step: format!("attach {}", target.display()),
                source: SysError { call: format!("mount fd #{fd_index} missing"), errno: Errno::EBADF },
            })?;
            let point = step(format!("mount point {}", target.display()), ensure_path(root, rel, *is_file))?;
            step(format!("attach {}", target.display()), sys::mount::move_mount_fd(tree.as_raw_fd(), point.as_raw_fd(), target))
        }
        MountEntry::Symlink { link, .. } => {
            let (parent, name) = split(rel);
            let dir = step(format!("parent of {}", target.display()), ensure_path(root, parent, false))?;
            match sys::symlinkat(link, dir.as_raw_fd(), &cstr(name)) {
                Err(e) if e.errno == Errno::EEXIST => Ok(()),
                r => step(format!("symlink {}", target.display()), r),
            }
        }
    }
}

fn write_etc(root: &OwnedFd, spec: &InitSpec) -> Result<(), RootfsError> {
    let etc = step("open /etc", ensure_path(root, Path::new("etc"), false))?;
    let etc_dir = step("open /etc", sys::openat_nofollow(etc.as_raw_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY, 0))?;
    for (name, contents) in crate::fs::etc::files(&spec.id, spec.uid, spec.gid, &spec.home.to_string_lossy()) {
        let fd = step(
            format!("create /etc/{name}"),
            sys::openat_nofollow(etc_dir.as_raw_fd(), &cstr(name), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(contents.as_bytes()).map_err(|e| RootfsError {
            step: format!("write /etc/{name}"),
            source: SysError { call: "write".into(), errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) },
        })?;
    }
    Ok(())
}

/// Open `rel` below `root` as an `O_PATH` fd usable as a `move_mount`
/// target, creating missing directories (and the final file when `is_file`),
/// never through a symlink, a magic link or `..`. Usually the parent exists
/// already (the skeleton made the top directories, and the targets are
/// sorted): one `openat2` resolves it, and only the last component is made;
/// otherwise the path is walked one component at a time.
fn ensure_path(root: &OwnedFd, rel: &Path, is_file: bool) -> Result<OwnedFd, SysError> {
    let comps = normal_components(rel);
    let Some((name, parents)) = comps.split_last() else { return dup(root) };
    if parents.is_empty() {
        return open_or_make(root.as_fd(), name, is_file);
    }
    let parent: PathBuf = parents.iter().collect();
    let how = nix::fcntl::OpenHow::new().flags(nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC).resolve(
        nix::fcntl::ResolveFlag::RESOLVE_BENEATH | nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    match nix::fcntl::openat2(root.as_fd(), &parent, how) {
        Ok(dir) => open_or_make(dir.as_fd(), name, is_file),
        Err(Errno::ENOENT) => {
            // Walked one component at a time, making what is missing.
            let mut cur: Option<OwnedFd> = None;
            for (i, name) in comps.iter().enumerate() {
                let dir = cur.as_ref().map_or(root.as_fd(), |c| c.as_fd());
                cur = Some(open_or_make(dir, name, is_file && i + 1 == comps.len())?);
            }
            cur.map_or_else(|| dup(root), Ok)
        }
        Err(errno) => Err(SysError { call: format!("openat2({parent:?}, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)"), errno }),
    }
}

/// The names in `rel` (`.`, `..` and the root dropped: the spec's targets
/// are absolute, normalised paths).
fn normal_components(rel: &Path) -> Vec<&OsStr> {
    rel.components().filter_map(|c| if let Component::Normal(n) = c { Some(n) } else { None }).collect()
}

/// The component `name` of `dir` (never a symlink), made first if missing:
/// a directory, or an empty file when `is_file`.
fn open_or_make(dir: BorrowedFd, name: &OsStr, is_file: bool) -> Result<OwnedFd, SysError> {
    let cname = cstr(name);
    let dir = dir.as_raw_fd();
    match sys::openat_nofollow(dir, &cname, libc::O_PATH, 0) {
        Err(e) if e.errno == Errno::ENOENT => {
            if is_file {
                sys::openat_nofollow(dir, &cname, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)?;
            } else {
                sys::mkdirat(dir, &cname, 0o755)?;
            }
            sys::openat_nofollow(dir, &cname, libc::O_PATH, 0)
        }
        r => r,
    }
}

fn ensure_existing(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, SysError> {
    let c = cstr(rel.as_os_str());
    sys::openat_nofollow(root.as_raw_fd(), &c, libc::O_PATH, 0)
}

fn split(rel: &Path) -> (&Path, &OsStr) {
    (rel.parent().unwrap_or(Path::new("")), rel.file_name().unwrap_or(OsStr::new("")))
}

fn cstr(s: impl AsRef<OsStr>) -> CString {
    // Sandbox paths were validated NUL-free by the parent; a NUL here becomes an
    // empty name, which the kernel refuses with ENOENT.
    CString::new(s.as_ref().as_bytes()).unwrap_or_default()
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, SysError> {
    fd.try_clone().map_err(|e| SysError { call: "dup".into(), errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)) })
}

fn open_dir_path(path: &Path) -> Result<OwnedFd, SysError> {
    let c = sys::cstring(path)?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(SysError { call: format!("open({path:?}, O_PATH|O_DIRECTORY)"), errno: Errno::last() });
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod_path(fd: &OwnedFd, mode: libc::mode_t) -> Result<(), SysError> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let c = sys::cstring(&path)?;
    // SAFETY: c is a valid C string; chmod through the O_PATH fd's magic link.
    let ret = unsafe { libc::chmod(c.as_ptr(), mode) };
    if ret < 0 {
        return Err(SysError { call: format!("chmod({}, {mode:o})", fd.as_raw_fd()), errno: Errno::last() });
    }
    Ok(())
}

fn chdir(path: &Path) -> Result<(), SysError> {
    nix::unistd::chdir(path).map_err(|errno| SysError { call: format!("chdir({path:?})"), errno })
}

fn remount_readonly(path: &Path, keep: libc::c_ulong) -> Result<(), SysError> {
    sys::mount::mount(None, path, None, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!("swarmcell-rootfs-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&dir).unwrap();
        let fd = open_dir_path(&dir).unwrap();
        (dir, fd)
    }

    #[test]
    fn mount_points_are_made_below_the_root_whether_their_parent_exists_or_not() {
        let (dir, fd) = root();
        std::fs::create_dir(dir.join("etc")).unwrap();
        ensure_path(&fd, Path::new("etc/ssl"), false).unwrap();
        ensure_path(&fd, Path::new("opt/a/b"), false).unwrap();
        ensure_path(&fd, Path::new("etc/ld.so.cache"), true).unwrap();
        ensure_path(&fd, Path::new("../../escape"), false).unwrap();
        assert!(dir.join("etc/ssl").is_dir() && dir.join("opt/a/b").is_dir() && dir.join("etc/ld.so.cache").is_file());
        assert!(dir.join("escape").is_dir(), "`..` is dropped, as the component walk always did");
        // Existing ones are opened, not made again.
        ensure_path(&fd, Path::new("etc/ssl"), false).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_on_the_way_to_a_mount_point_is_never_followed() {
        let (dir, fd) = root();
        let outside = std::env::temp_dir().join(format!("swarmcell-rootfs-outside-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        // The parent exists (through the link), and the parent is missing beyond it.
        for rel in ["link/x", "link/missing/x"] {
            assert!(ensure_path(&fd, Path::new(rel), false).is_err(), "{rel} was made through a symlink");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was made outside the root");
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
