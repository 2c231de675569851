//! Host root: the project-quota system calls — `quotactl_fd(2)` (Linux 5.14+;
//! it addresses the filesystem by a descriptor of any of its files, so no block
//! device path is needed, and works the same in a private mount namespace) and
//! the `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` ioctls that read and set a
//! file's project id. Kept beside their only user rather than in `crate::sys`.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::{Errno, SysError};

/// The project quota type (`PRJQUOTA` in <linux/quota.h>).
const PRJQUOTA: libc::c_int = 2;
const Q_GETQUOTA: libc::c_int = 0x80_0007;
const Q_SETQUOTA: libc::c_int = 0x80_0008;
/// `XQM_CMD(8)`: the quota subsystem's state, versioned (xfs and the VFS quota of ext4).
const Q_XGETQSTATV: libc::c_int = (('X' as libc::c_int) << 8) + 8;
const FS_QSTATV_VERSION1: i8 = 1;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
/// Limits are given in quota blocks of 1 KiB (`QIF_DQBLKSIZE`).
pub const QUOTA_BLOCK: u64 = 1024;
const QIF_BLIMITS: u32 = 1;
const QIF_ILIMITS: u32 = 4;

/// New files and directories in a directory with this flag take its project id.
pub const FS_XFLAG_PROJINHERIT: u32 = 0x200;
/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pad: [u8; 8],
}

/// `struct if_dqblk`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

/// `struct fs_qfilestatv`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct QFileStatV {
    ino: u64,
    nblks: u64,
    nextents: u32,
    pad: u32,
}

/// `struct fs_quota_statv`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    uquota: QFileStatV,
    gquota: QFileStatV,
    pquota: QFileStatV,
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
    rtbwarnlimit: u16,
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

/// What a project uses now, as the filesystem counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

fn err(call: String) -> SysError {
    SysError { call, errno: Errno::last() }
}

fn quotactl(fs: BorrowedFd, cmd: libc::c_int, id: u32, addr: *mut libc::c_void) -> Result<(), SysError> {
    // SAFETY: quotactl_fd with a valid descriptor and, for the commands used
    // here, a pointer to a correctly sized and initialised struct.
    let r = unsafe { libc::syscall(libc::SYS_quotactl_fd, fs.as_raw_fd() as libc::c_uint, libc::QCMD(cmd, PRJQUOTA) as libc::c_uint, id, addr) };
    if r < 0 { Err(err(format!("quotactl_fd({cmd:#x}, PRJQUOTA, {id})"))) } else { Ok(()) }
}

/// Whether the filesystem of `fs` enforces project quota limits now (ext4 with
/// the `project` and `quota` features mounted with `prjquota`, xfs with
/// `pquota`). Any error (no quota support, quotas off, an old kernel) is "no".
pub fn project_quota_enforced(fs: BorrowedFd) -> Result<(), SysError> {
    let mut st = QuotaStatV { version: FS_QSTATV_VERSION1, ..Default::default() };
    quotactl(fs, Q_XGETQSTATV, 0, (&mut st as *mut QuotaStatV).cast())?;
    if st.flags & FS_QUOTA_PDQ_ENFD == 0 {
        return Err(SysError { call: "quotactl_fd(Q_XGETQSTATV, PRJQUOTA): project quota limits are not enforced".into(), errno: Errno::ESRCH });
    }
    Ok(())
}

pub fn usage(fs: BorrowedFd, project: u32) -> Result<Usage, SysError> {
    let mut q = IfDqblk::default();
    quotactl(fs, Q_GETQUOTA, project, (&mut q as *mut IfDqblk).cast())?;
    Ok(Usage { bytes: q.curspace, inodes: q.curinodes })
}

/// Hard limits for a project (`None`: unlimited); no soft limits, no grace.
pub fn set_limits(fs: BorrowedFd, project: u32, bytes: Option<u64>, inodes: Option<u64>) -> Result<(), SysError> {
    let mut q = IfDqblk {
        bhardlimit: bytes.map_or(0, |b| b.div_ceil(QUOTA_BLOCK)),
        ihardlimit: inodes.unwrap_or(0),
        valid: QIF_BLIMITS | QIF_ILIMITS,
        ..Default::default()
    };
    quotactl(fs, Q_SETQUOTA, project, (&mut q as *mut IfDqblk).cast())
}

pub fn get_xattr(fd: BorrowedFd) -> Result<FsXattr, SysError> {
    let mut a = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a struct fsxattr.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut a as *mut FsXattr) } < 0 {
        return Err(err("ioctl(FS_IOC_FSGETXATTR)".into()));
    }
    Ok(a)
}

/// Give the open file `fd` the project id `project` (and, for a directory,
/// PROJINHERIT, so that what is created in it later gets the id too). Its
/// other attributes are kept.
pub fn set_project(fd: BorrowedFd, project: u32, dir: bool) -> Result<(), SysError> {
    let mut a = get_xattr(fd)?;
    let inherit = if dir { FS_XFLAG_PROJINHERIT } else { 0 };
    if a.projid == project && a.xflags & FS_XFLAG_PROJINHERIT == inherit {
        return Ok(());
    }
    a.projid = project;
    a.xflags = (a.xflags & !FS_XFLAG_PROJINHERIT) | inherit;
    // SAFETY: FS_IOC_FSSETXATTR reads a struct fsxattr.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &a as *const FsXattr) } < 0 {
        return Err(err(format!("ioctl(FS_IOC_FSSETXATTR, projid {project})")));
    }
    Ok(())
}

/// SIGKILL through a pidfd, so that a pid reused after the sandbox's init was
/// reaped is never signalled.
pub struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    pub fn open(pid: libc::pid_t) -> Result<PidFd, SysError> {
        // SAFETY: pidfd_open has no memory arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(err(format!("pidfd_open({pid})")));
        }
        // SAFETY: a fresh descriptor we own.
        Ok(PidFd(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }))
    }

    pub fn kill(&self) -> Result<(), SysError> {
        // SAFETY: pidfd_send_signal with a null siginfo.
        if unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) } < 0 {
            return Err(err("pidfd_send_signal(SIGKILL)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(std::mem::size_of::<QuotaStatV>(), 160);
    }

    #[test]
    fn a_filesystem_without_project_quotas_is_reported_as_such() {
        // The build directory's filesystem: tmpfs, or ext4/xfs without prjquota
        // on the development machines (whose kernel has no quota format).
        let dir = std::fs::File::open(env!("CARGO_MANIFEST_DIR")).unwrap();
        use std::os::fd::AsFd;
        if let Err(e) = project_quota_enforced(dir.as_fd()) {
            assert!(e.to_string().contains("quotactl_fd"), "{e}");
        }
    }
}
