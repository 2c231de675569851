//! The mount API: `open_tree`, `mount_setattr` (with an idmap user namespace:
//! no `nix`/`rustix` wrapper has it here), `move_mount`, and the classic
//! `mount`, `umount2`, `pivot_root`. The launcher prepares detached trees on the
//! host side; the sandbox init (single-threaded) attaches them and pivots.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use std::ffi::CString;

use super::{SysResult, check, cstring};

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const AT_SYMLINK_NOFOLLOW: u32 = libc::AT_SYMLINK_NOFOLLOW as u32;
pub const AT_EMPTY_PATH: u32 = libc::AT_EMPTY_PATH as u32;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const OPEN_TREE_CLONE: u32 = 1;

/// `open_tree(path, OPEN_TREE_CLONE|AT_RECURSIVE)`: a detached copy of the mount
/// tree at `path`, to be attached elsewhere with [`move_mount_fd`].
pub fn open_tree_clone(path: &Path, recursive: bool) -> SysResult<OwnedFd> {
    let c = cstring(path)?;
    let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: c is a valid NUL-terminated string; the kernel returns a new fd we own.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check(ret, || format!("open_tree({path:?}, OPEN_TREE_CLONE{})", if recursive { "|AT_RECURSIVE" } else { "" }))?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH[|AT_RECURSIVE], attr)` on a mount fd.
pub fn mount_setattr_fd(fd: RawFd, recursive: bool, set: u64, userns_fd: Option<RawFd>) -> SysResult<()> {
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: userns_fd.map(|f| f as u64).unwrap_or(0) };
    let flags = AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: attr is a valid mount_attr of the size passed; "" is a valid C string.
    let ret = unsafe { libc::syscall(libc::SYS_mount_setattr, fd, c"".as_ptr(), flags, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) };
    check(ret, || format!("mount_setattr(fd {fd}, {}, set={set:#x})", if recursive { "AT_RECURSIVE" } else { "0" })).map(drop)
}

/// `move_mount(from_fd, "", to_fd, "", F_EMPTY_PATH|T_EMPTY_PATH)`: attach a detached
/// mount exactly onto the directory or file `to_fd` refers to, with no path lookup.
pub fn move_mount_fd(from_fd: RawFd, to_fd: RawFd, what: &Path) -> SysResult<()> {
    // SAFETY: both paths are valid empty C strings; fds are plain integers to the kernel.
    let ret =
        unsafe { libc::syscall(libc::SYS_move_mount, from_fd, c"".as_ptr(), to_fd, c"".as_ptr(), MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) };
    check(ret, || format!("move_mount(fd {from_fd} -> {what:?})")).map(drop)
}

/// Classic `mount(2)`.
pub fn mount(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) -> SysResult<()> {
    let src_c = src.map(cstring).transpose()?;
    let target_c = cstring(target)?;
    let fstype_c = fstype.map(cstring).transpose()?;
    let data_c = data.map(cstring).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a valid C string that outlives the call.
    let ret = unsafe { libc::mount(p(&src_c), target_c.as_ptr(), p(&fstype_c), flags, p(&data_c).cast()) };
    check(ret.into(), || format!("mount({src:?}, {target:?}, {fstype:?}, {flags:#x}, {data:?})")).map(drop)
}

pub fn umount_detach(target: &Path) -> SysResult<()> {
    let c = cstring(target)?;
    // SAFETY: c is a valid C string.
    let ret = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    check(ret.into(), || format!("umount2({target:?}, MNT_DETACH)")).map(drop)
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> SysResult<()> {
    let a = cstring(new_root)?;
    let b = cstring(put_old)?;
    // SAFETY: both are valid C strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) };
    check(ret, || format!("pivot_root({new_root:?}, {put_old:?})")).map(drop)
}
