//! `swarmcell __probe NAME [ARG]`: checks run *inside* a sandbox by the tests
//! (and by `swarmcell verify`). Each line is `NAME STATUS DETAIL` with STATUS one
//! of `blocked` (refused as intended), `ESCAPED` (the call succeeded), `other`
//! (refused, but not with the intended errno: the filter did not catch it) or
//! `ok` (a call that must keep working did). Exit 0 when every check held.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use nix::errno::Errno;

pub fn main(name: &str, rest: &[String]) -> u8 {
    if let Some(code) = crate::attest::probe_net::main(name, rest) {
        return code;
    }
    let arg = rest.first().map(String::as_str);
    let results = match (name, arg) {
        ("tiocsti", _) => vec![tiocsti()],
        ("fds", _) => vec![fds()],
        ("seccomp", _) => seccomp_battery(),
        ("read", Some(path)) => vec![read(path)],
        ("bind", Some(port)) => vec![tcp("bind", port)],
        ("connect", Some(port)) => vec![tcp("connect", port)],
        ("http-get", Some(target)) => vec![http_get(target)],
        ("alloc", Some(mib)) => vec![alloc(mib)],
        ("forks", Some(n)) => return forks(n),
        ("reuse-listener", Some(port)) => vec![reuse_listener(port)],
        ("reuse-accepted", Some(port)) => reuse_accepted(port),
        ("loopback", _) => loopback_servers(),
        ("bench-client", _) => return bench_client(rest),
        ("serve", Some(port)) => return serve(port, false),
        ("bench-server", Some(port)) => return serve(port, true),
        ("signalled-server", Some(port)) => return signalled_server(port),
        ("accept-race", Some(port)) => return accept_race(port),
        ("accept-kinds", _) => accept_kinds(),
        ("io-uring-accept", Some(port)) => return crate::attest::probe_uring::main(port),
        ("interrupted-accepts", Some(n)) => return interrupted_accepts(n),
        ("redirect", Some(port)) => return redirect(port, rest.get(1).map_or("http://127.0.0.1:1/", String::as_str)),
        ("hostile-output", Some(port)) => return hostile_output(port),
        ("flood-server", Some(port)) => return flood_server(port),
        ("denials", Some(port)) => {
            if rest.iter().any(|a| a == "plant") {
                plant();
            }
            return denials(port, rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(0));
        }
        ("spin-serve", Some(port)) => {
            // CPU-bound like a denial flood, without denials (a comparison load).
            let secs: u64 = rest.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
            std::thread::spawn(move || {
                let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
                let mut x = 0u64;
                while std::time::Instant::now() < end {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            });
            return serve(port, false);
        }
        ("commit-serve", Some(port)) => {
            // An agent that made a commit (in its worktree, the cwd), then serves PORT.
            let ok = std::process::Command::new("git")
                .args(["-c", "user.name=agent", "-c", "user.email=agent@invalid", "commit", "-q", "--allow-empty", "-m", "agent work"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("swarmcell __probe commit-serve: git commit failed");
                return 1;
            }
            return serve(port, false);
        }
        ("slow-serve", Some(port)) => {
            // Serves PORT after SECS (a server slow to become healthy).
            std::thread::sleep(std::time::Duration::from_secs(rest.get(1).and_then(|s| s.parse().ok()).unwrap_or(5)));
            return serve(port, false);
        }
        ("redirect-server", Some(url)) => return redirect_server(rest.get(1).map_or("", String::as_str), url),
        ("egress-then-serve", Some(port)) => return egress_then_serve(port, rest.get(1).map_or("example.invalid:443", String::as_str)),
        _ => {
            eprintln!(
                "swarmcell __probe: unknown probe {name:?} (tiocsti, fds, seccomp, read PATH, bind PORT, connect PORT, loopback, http-get HOST:PORT/PATH, alloc MIB, serve PORT, bench-server PORT, reuse-listener PORT, reuse-accepted PORT, signalled-server PORT, redirect PORT URL, hostile-output PORT|exit, flood, trickle, send)"
            );
            return 2;
        }
    };
    let mut held = true;
    for r in &results {
        println!("{} {} {}", r.name, r.status.word(), r.detail);
        held &= matches!(r.status, Status::Blocked | Status::Ok);
    }
    if held { 0 } else { 1 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Blocked,
    Escaped,
    Other,
    Ok,
    Broken,
}

impl Status {
    /// The fixed status names of `swarmcell verify --json`.
    pub fn json(self) -> &'static str {
        match self {
            Status::Blocked => "blocked",
            Status::Escaped => "ESCAPED",
            Status::Other => "not_applicable",
            Status::Ok => "ok",
            Status::Broken => "BROKEN",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Status::Blocked => "blocked",
            Status::Escaped => "ESCAPED",
            Status::Other => "other",
            Status::Ok => "ok",
            Status::Broken => "BROKEN",
        }
    }
}

pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check { name: name.to_string(), status, detail: detail.into() }
}

/// Classify a call that must fail with `want`.
fn denied(name: &str, want: Errno, r: Result<i64, Errno>) -> Check {
    match r {
        Ok(v) => check(name, Status::Escaped, format!("succeeded ({v})")),
        Err(e) if e == want => check(name, Status::Blocked, format!("{e}")),
        Err(e) => check(name, Status::Other, format!("{e}, expected {want}")),
    }
}

/// Classify a call that must keep working.
fn allowed(name: &str, r: Result<i64, Errno>) -> Check {
    match r {
        Ok(_) => check(name, Status::Ok, "works"),
        Err(e) => check(name, Status::Broken, format!("{e}")),
    }
}

fn sc(nr: libc::c_long, a: [usize; 6]) -> Result<i64, Errno> {
    // SAFETY: every probe passes arguments that are either plain integers or
    // pointers to live, correctly sized buffers (or null/invalid on purpose, which
    // the kernel rejects with EFAULT/EBADF instead of dereferencing).
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// Run `f` in a forked child (for calls that would change the probe itself) and
/// return what it reported: its exit code is 0 for success or the errno.
fn in_child(f: impl FnOnce() -> Result<i64, Errno>) -> Result<i64, Errno> {
    // SAFETY: the probe is single-threaded; the child only makes syscalls and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let code = match f() {
                Ok(_) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(0),
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Err(Errno::from_raw(code)),
            Ok(other) => {
                eprintln!("probe child ended abnormally: {other:?}");
                Err(Errno::ECHILD)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// A raw clone with fork semantics whose child exits at once.
fn clone_and_reap(flags: usize) -> Result<i64, Errno> {
    let pid = sc(libc::SYS_clone, [flags | libc::SIGCHLD as usize, 0, 0, 0, 0, 0])?;
    if pid == 0 {
        // SAFETY: the clone child exits immediately.
        unsafe { libc::_exit(0) };
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    Ok(pid)
}

fn clone3_and_reap() -> Result<i64, Errno> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let pid = sc(libc::SYS_clone3, [&args as *const CloneArgs as usize, std::mem::size_of::<CloneArgs>(), 0, 0, 0, 0])?;
    if pid == 0 {
        // SAFETY: the clone child exits immediately.
        unsafe { libc::_exit(0) };
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    Ok(pid)
}

const BAD_FD: usize = usize::MAX; // -1

/// Every call the default seccomp profile refuses, with arguments for which the
/// kernel itself would answer differently (success, EBADF, EFAULT, ENOTTY...)
/// wherever one exists, so `blocked` means the filter answered.
pub fn seccomp_battery() -> Vec<Check> {
    let tmp = c"/tmp";
    let empty = c"";
    let p = |c: &std::ffi::CStr| c.as_ptr() as usize;
    let eperm = Errno::EPERM;
    let mut out = vec![
        denied("unshare(CLONE_NEWUSER)", eperm, in_child(|| sc(libc::SYS_unshare, [libc::CLONE_NEWUSER as usize, 0, 0, 0, 0, 0]))),
        denied("unshare(CLONE_NEWNET)", eperm, in_child(|| sc(libc::SYS_unshare, [libc::CLONE_NEWNET as usize, 0, 0, 0, 0, 0]))),
        denied("setns(bad fd)", eperm, sc(libc::SYS_setns, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("clone(CLONE_NEWUSER)", eperm, clone_and_reap(libc::CLONE_NEWUSER as usize)),
        denied("clone(CLONE_NEWNS)", eperm, clone_and_reap(libc::CLONE_NEWNS as usize)),
        denied("clone3", Errno::ENOSYS, clone3_and_reap()),
        denied("mount(tmpfs)", eperm, sc(libc::SYS_mount, [p(c"none"), p(tmp), p(c"tmpfs"), 0, 0, 0])),
        denied("umount2(/tmp)", eperm, sc(libc::SYS_umount2, [p(tmp), 0, 0, 0, 0, 0])),
        denied("pivot_root", eperm, sc(libc::SYS_pivot_root, [p(tmp), p(tmp), 0, 0, 0, 0])),
        denied("chroot(/tmp)", eperm, sc(libc::SYS_chroot, [p(tmp), 0, 0, 0, 0, 0])),
        denied("move_mount(bad fd)", eperm, sc(libc::SYS_move_mount, [BAD_FD, p(empty), BAD_FD, p(empty), 0, 0])),
        denied("open_tree(/tmp)", eperm, sc(libc::SYS_open_tree, [libc::AT_FDCWD as usize, p(tmp), libc::O_CLOEXEC as usize, 0, 0, 0])),
        denied("fsopen(tmpfs)", eperm, sc(libc::SYS_fsopen, [p(c"tmpfs"), 0, 0, 0, 0, 0])),
        denied("fsconfig(bad fd)", eperm, sc(libc::SYS_fsconfig, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("fsmount(bad fd)", eperm, sc(libc::SYS_fsmount, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("fspick(/tmp)", eperm, sc(libc::SYS_fspick, [libc::AT_FDCWD as usize, p(tmp), 0, 0, 0, 0])),
        denied("mount_setattr(bad fd)", eperm, sc(libc::SYS_mount_setattr, [BAD_FD, p(empty), 0x1000, 0, 32, 0])),
        denied("bpf", eperm, sc(libc::SYS_bpf, [5, 0, 0, 0, 0, 0])),
        denied("perf_event_open(NULL)", eperm, sc(libc::SYS_perf_event_open, [0, 0, BAD_FD, BAD_FD, 0, 0])),
        denied("userfaultfd(USER_MODE_ONLY)", eperm, sc(libc::SYS_userfaultfd, [1 | libc::O_CLOEXEC as usize, 0, 0, 0, 0, 0])),
        denied("io_uring_setup(NULL)", eperm, sc(libc::SYS_io_uring_setup, [1, 0, 0, 0, 0, 0])),
        denied("io_uring_enter(bad fd)", eperm, sc(libc::SYS_io_uring_enter, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("io_uring_register(bad fd)", eperm, sc(libc::SYS_io_uring_register, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("keyctl(GET_KEYRING_ID)", eperm, sc(libc::SYS_keyctl, [0, (-2i64) as usize, 0, 0, 0, 0])),
        denied("add_key(NULL)", eperm, sc(libc::SYS_add_key, [0, 0, 0, 0, 0, 0])),
        denied("request_key(NULL)", eperm, sc(libc::SYS_request_key, [0, 0, 0, 0, 0, 0])),
        denied("kexec_load", eperm, sc(libc::SYS_kexec_load, [0, 0, 0, 0, 0, 0])),
        denied("kexec_file_load", eperm, sc(libc::SYS_kexec_file_load, [BAD_FD, BAD_FD, 0, 0, 0, 0])),
        denied("init_module(NULL)", eperm, sc(libc::SYS_init_module, [0, 0, 0, 0, 0, 0])),
        denied("finit_module(bad fd)", eperm, sc(libc::SYS_finit_module, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("delete_module(NULL)", eperm, sc(libc::SYS_delete_module, [0, 0, 0, 0, 0, 0])),
        denied("open_by_handle_at(bad fd)", eperm, sc(libc::SYS_open_by_handle_at, [BAD_FD, 0, 0, 0, 0, 0])),
        denied("name_to_handle_at(NULL)", eperm, sc(libc::SYS_name_to_handle_at, [libc::AT_FDCWD as usize, p(tmp), 0, 0, 0, 0])),
        denied("swapon(NULL)", eperm, sc(libc::SYS_swapon, [0, 0, 0, 0, 0, 0])),
        denied("swapoff(NULL)", eperm, sc(libc::SYS_swapoff, [0, 0, 0, 0, 0, 0])),
        denied("reboot(bad magic)", eperm, sc(libc::SYS_reboot, [0, 0, 0, 0, 0, 0])),
        denied("acct(NULL)", eperm, sc(libc::SYS_acct, [0, 0, 0, 0, 0, 0])),
        denied("syslog(SIZE_BUFFER)", eperm, sc(libc::SYS_syslog, [10, 0, 0, 0, 0, 0])),
        denied("quotactl(NULL)", eperm, sc(libc::SYS_quotactl, [0, 0, 0, 0, 0, 0])),
        denied("lookup_dcookie", eperm, sc(libc::SYS_lookup_dcookie, [0, 0, 0, 0, 0, 0])),
        denied("vhangup", eperm, sc(libc::SYS_vhangup, [0, 0, 0, 0, 0, 0])),
        denied("settimeofday(NULL, NULL)", eperm, sc(libc::SYS_settimeofday, [0, 0, 0, 0, 0, 0])),
        denied("clock_settime(NULL)", eperm, sc(libc::SYS_clock_settime, [libc::CLOCK_REALTIME as usize, 0, 0, 0, 0, 0])),
        denied("clock_adjtime(NULL)", eperm, sc(libc::SYS_clock_adjtime, [libc::CLOCK_REALTIME as usize, 0, 0, 0, 0, 0])),
        denied("adjtimex(NULL)", eperm, sc(libc::SYS_adjtimex, [0, 0, 0, 0, 0, 0])),
        denied("ptrace(TRACEME)", eperm, in_child(|| sc(libc::SYS_ptrace, [libc::PTRACE_TRACEME as usize, 0, 0, 0, 0, 0]))),
        denied("process_vm_readv(self, empty)", eperm, sc(libc::SYS_process_vm_readv, [std::process::id() as usize, 0, 0, 0, 0, 0])),
        denied("process_vm_writev(self, empty)", eperm, sc(libc::SYS_process_vm_writev, [std::process::id() as usize, 0, 0, 0, 0, 0])),
        denied("personality(PER_LINUX32)", eperm, in_child(|| sc(libc::SYS_personality, [0x0008, 0, 0, 0, 0, 0]))),
        denied("ioctl(TIOCSTI)", eperm, sc(libc::SYS_ioctl, [BAD_FD, libc::TIOCSTI as usize, p(c"x"), 0, 0, 0])),
        denied("ioctl(TIOCLINUX)", eperm, sc(libc::SYS_ioctl, [BAD_FD, libc::TIOCLINUX as usize, 0, 0, 0, 0])),
        denied("ioctl(TIOCSTI, high bits set)", eperm, sc(libc::SYS_ioctl, [BAD_FD, (1usize << 32) | libc::TIOCSTI as usize, 0, 0, 0, 0])),
        denied("socket(AF_PACKET)", eperm, close_ok(sc(libc::SYS_socket, [libc::AF_PACKET as usize, libc::SOCK_RAW as usize, 0, 0, 0, 0]))),
        denied("socket(AF_VSOCK)", eperm, close_ok(sc(libc::SYS_socket, [libc::AF_VSOCK as usize, libc::SOCK_STREAM as usize, 0, 0, 0, 0]))),
        denied("socket(AF_ALG)", eperm, close_ok(sc(libc::SYS_socket, [libc::AF_ALG as usize, libc::SOCK_SEQPACKET as usize, 0, 0, 0, 0]))),
        denied(
            "socket(AF_NETLINK, NETLINK_AUDIT)",
            eperm,
            close_ok(sc(libc::SYS_socket, [libc::AF_NETLINK as usize, libc::SOCK_RAW as usize, libc::NETLINK_AUDIT as usize, 0, 0, 0])),
        ),
        denied(
            "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)",
            eperm,
            close_ok(sc(libc::SYS_socket, [libc::AF_NETLINK as usize, libc::SOCK_RAW as usize, libc::NETLINK_KOBJECT_UEVENT as usize, 0, 0, 0])),
        ),
        // What a server needs keeps working.
        allowed("fork", clone_and_reap(0)),
        allowed("socket(AF_INET)", close_ok(sc(libc::SYS_socket, [libc::AF_INET as usize, libc::SOCK_STREAM as usize, 0, 0, 0, 0]))),
        allowed("socket(AF_INET6)", close_ok(sc(libc::SYS_socket, [libc::AF_INET6 as usize, libc::SOCK_DGRAM as usize, 0, 0, 0, 0]))),
        allowed("socket(AF_UNIX)", close_ok(sc(libc::SYS_socket, [libc::AF_UNIX as usize, libc::SOCK_STREAM as usize, 0, 0, 0, 0]))),
        allowed(
            "socket(AF_NETLINK, NETLINK_ROUTE)",
            close_ok(sc(libc::SYS_socket, [libc::AF_NETLINK as usize, libc::SOCK_RAW as usize, libc::NETLINK_ROUTE as usize, 0, 0, 0])),
        ),
        allowed("personality(query)", sc(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0])),
    ];
    out.extend(arch_checks());
    out
}

fn close_ok(r: Result<i64, Errno>) -> Result<i64, Errno> {
    if let Ok(fd) = r {
        // SAFETY: closing the descriptor the probe just created.
        unsafe { libc::close(fd as i32) };
    }
    r
}

#[cfg(target_arch = "x86_64")]
fn arch_checks() -> Vec<Check> {
    const X32_BIT: libc::c_long = 0x4000_0000;
    // In a child: a filter above the sandbox's (systemd's
    // SystemCallArchitectures=native, for one) may kill the caller instead.
    // SAFETY: the forked child only makes the call and exits.
    let x32 = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let code = match sc(X32_BIT | libc::SYS_getpid, [0; 6]) {
                Ok(_) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: exit without unwinding.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)) => {
                check("x32 getpid", Status::Blocked, "killed by SIGSYS")
            }
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => denied("x32 getpid", Errno::EPERM, Ok(0)),
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => denied("x32 getpid", Errno::EPERM, Err(Errno::from_raw(code))),
            other => check("x32 getpid", Status::Other, format!("{other:?}")),
        },
        Err(e) => check("x32 getpid", Status::Other, format!("fork: {e}")),
    };
    // An i386 system call (int 0x80) from a 64-bit process: a foreign
    // architecture for the filter, which kills the process.
    // SAFETY: the forked child only issues the interrupt and exits.
    let i386 = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ret: i64;
            // SAFETY: i386 getpid (20) takes no arguments and returns in eax.
            unsafe { std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret) };
            // SAFETY: exit without unwinding.
            unsafe { libc::_exit(if ret > 0 { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)) => {
                check("i386 int 0x80", Status::Blocked, "killed by SIGSYS")
            }
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => check("i386 int 0x80", Status::Escaped, "i386 getpid succeeded"),
            other => check("i386 int 0x80", Status::Other, format!("{other:?}")),
        },
        Err(e) => check("i386 int 0x80", Status::Broken, format!("fork: {e}")),
    };
    vec![x32, i386]
}

#[cfg(not(target_arch = "x86_64"))]
fn arch_checks() -> Vec<Check> {
    Vec::new()
}

/// Push a character into the input queue of the terminal on stdin.
fn tiocsti() -> Check {
    let c: libc::c_char = b'x' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from the pointer.
    let r = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCSTI, &c) };
    if r == 0 {
        check("tiocsti", Status::Escaped, "TIOCSTI pushed input into the terminal")
    } else {
        check("tiocsti", Status::Blocked, format!("TIOCSTI failed: {}", Errno::last()))
    }
}

/// Descriptors above stderr, other than the one listing /proc/self/fd.
fn fds() -> Check {
    let entries: Vec<String> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => return check("fds", Status::Broken, format!("cannot list /proc/self/fd: {e}")),
    };
    let own = format!("/proc/{}/fd", std::process::id());
    let extra: Vec<String> = entries
        .into_iter()
        .filter(|n| n.parse::<i32>().is_ok_and(|fd| fd > 2))
        .filter(|n| std::fs::read_link(format!("/proc/self/fd/{n}")).map(|t| t.to_string_lossy() != own).unwrap_or(false))
        .collect();
    let status = if extra.is_empty() { Status::Blocked } else { Status::Escaped };
    check("fds", status, format!("descriptors above 2: {extra:?}"))
}

/// Read a file: `ESCAPED` when its contents could be read, `blocked` when
/// refused (EACCES/EPERM), `BROKEN` when it is not there (a missing target
/// proves nothing), `other` for any other error.
fn read(path: &str) -> Check {
    let name = format!("read({path})");
    match std::fs::File::open(path).and_then(|mut f| {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map(|_| buf.len())
    }) {
        Ok(n) => check(&name, Status::Escaped, format!("read {n} bytes")),
        Err(e) => check(&name, refusal(&e), e.to_string()),
    }
}

/// How a failed attempt counts: refused by a permission check, or not.
fn refusal(e: &std::io::Error) -> Status {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => Status::Blocked,
        Some(libc::ENOENT) => Status::Broken,
        _ => Status::Other,
    }
}

/// TCP bind or connect on 127.0.0.1:PORT. Connect counts as allowed when the
/// kernel let it through to the port (connected or refused by nobody listening).
fn tcp(what: &str, port: &str) -> Check {
    let name = format!("{what}({port})");
    let Ok(port) = port.parse::<u16>() else { return check(&name, Status::Broken, "not a port") };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = if what == "bind" {
        std::net::TcpListener::bind(addr).map(drop)
    } else {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => other.map(drop),
        }
    };
    match r {
        Ok(()) => check(&name, Status::Escaped, "allowed"),
        Err(e) => check(&name, refusal(&e), e.to_string()),
    }
}

/// What an agent's test suite does on its loopback: TCP servers on an
/// ephemeral port, on 3000 and 8080, on IPv6, and UDP on both; each must bind,
/// accept a connection (or datagram) from a client on the same loopback and
/// carry a byte each way. `ok` or `BROKEN`.
pub fn loopback_servers() -> Vec<Check> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let tcp = |ip: IpAddr, port: u16| -> std::io::Result<String> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port))?;
        let addr = listener.local_addr()?;
        let mut client = TcpStream::connect(addr)?;
        let (mut server, _) = listener.accept()?;
        client.write_all(b"?")?;
        let mut b = [0u8; 1];
        server.read_exact(&mut b)?;
        server.write_all(b"!")?;
        client.read_exact(&mut b)?;
        Ok(format!("served and reached {addr}"))
    };
    let udp = |ip: IpAddr| -> std::io::Result<String> {
        let server = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let client = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        server.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        client.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        client.send_to(b"?", server.local_addr()?)?;
        let mut b = [0u8; 1];
        let (_, from) = server.recv_from(&mut b)?;
        server.send_to(b"!", from)?;
        client.recv(&mut b)?;
        Ok(format!("datagrams both ways on {}", server.local_addr()?))
    };
    let result = |name: &str, r: std::io::Result<String>| match r {
        Ok(d) => check(name, Status::Ok, d),
        Err(e) => check(name, Status::Broken, e.to_string()),
    };
    vec![
        result("loopback tcp 127.0.0.1:0", tcp(v4, 0)),
        result("loopback tcp 127.0.0.1:3000", tcp(v4, 3000)),
        result("loopback tcp 127.0.0.1:8080", tcp(v4, 8080)),
        result("loopback tcp [::1]:0", tcp(v6, 0)),
        result("loopback udp 127.0.0.1", udp(v4)),
        result("loopback udp [::1]", udp(v6)),
    ]
}

/// A minimal HTTP/1.1 GET: `ok` with the status line when a response came.
fn http_get(target: &str) -> Check {
    let name = format!("http-get({target})");
    let (hostport, path) = target.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((target, "/".into()));
    let attempt = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(hostport)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        // With PROBE_PASSWORD: basic auth as OpenCode wants it (user `opencode`).
        let auth = std::env::var("PROBE_PASSWORD")
            .map(|p| format!("Authorization: {}\r\n", crate::net::health::basic_auth("opencode", &p)))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    };
    match attempt() {
        Ok(resp) => {
            let status = resp.lines().next().unwrap_or("").to_string();
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").chars().take(200).collect::<String>();
            check(&name, if status.contains(" 200 ") { Status::Ok } else { Status::Broken }, format!("{status} {body}"))
        }
        Err(e) => check(&name, Status::Broken, e.to_string()),
    }
}

/// Allocate and touch MIB mebibytes, 16 MiB at a time, reporting progress on
/// stderr. `ESCAPED` when all of it could be had.
fn alloc(mib: &str) -> Check {
    let name = format!("alloc({mib} MiB)");
    let Ok(total) = mib.parse::<usize>() else { return check(&name, Status::Broken, "not a number") };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..total.div_ceil(16) {
        // Touch every page so the memory is really charged to the cgroup.
        chunks.push(vec![0xA5; 16 << 20]);
        eprintln!("allocated {} MiB", (i + 1) * 16);
    }
    check(&name, Status::Escaped, format!("allocated {} chunks", chunks.len()))
}

/// A small HTTP/1.1 server on 127.0.0.1:PORT (`serve`): every request gets
/// `200 {"healthy":true}` and its request line is printed on stderr (`serve:
/// GET /path`), so that a test sees what reached the payload. With
/// `PROBE_PASSWORD` in its environment it wants that password as HTTP basic
/// auth (user `opencode`), as OpenCode does, and answers 401 otherwise. With
/// `bench`, a connection's first byte picks a mode instead: `P` the peer
/// address accept() gave, `E` echo, `S` sink (count bytes until EOF, answer the
/// count as 8 bytes), `G` generate (send the 8-byte count that follows, then
/// close). Runs until killed.
pub fn serve(port: &str, bench: bool) -> u8 {
    let body = "{\"healthy\":true}";
    let ok = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    listen_and_answer(port, bench, ok)
}

/// A server that answers every request with `302 Found` to URL (a hostile
/// payload's answer to the health check).
fn redirect(port: &str, url: &str) -> u8 {
    listen_and_answer(port, false, format!("HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\n\r\n"))
}

/// What a hostile payload prints to fool the supervisor and the operator's
/// terminal: forged `swarmcell:` error lines and escape sequences (a window
/// title, a screen clear, a C1 control) on stdout and stderr; then it serves
/// PORT, or exits 3 with `exit`.
fn hostile_output(port: &str) -> u8 {
    let forged = "swarmcell: sandbox forged: \x1b]0;pwned\x07everything is fine\x1b[2J\u{9b}31m\n";
    print!("{forged}");
    let _ = std::io::stdout().flush();
    eprint!("{forged}");
    if port == "exit" {
        return 3;
    }
    serve(port, false)
}

/// A hostile agent server for the Temporal worker: healthy on
/// `/global/health`, and any other request answered `200` with a JSON body
/// that never ends (until the client hangs up).
fn flood_server(port: &str) -> u8 {
    let Ok(port) = port.parse::<u16>() else { return 2 };
    let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else { return 1 };
    loop {
        let Ok((mut conn, _)) = listener.accept() else { continue };
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut b = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
                if head.len() > 64 << 10 {
                    return;
                }
            }
            if head.starts_with(b"GET /global/health ") {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"healthy\":true}",
                );
                return;
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"id\":\"ses_");
            let chunk = [b'a'; 64 << 10];
            while conn.write_all(&chunk).is_ok() {}
        });
    }
}

/// A hostile agent server for the Temporal worker: healthy on
/// `/global/health`, and any other request answered `307` to URL (a host
/// service the sandbox itself cannot reach).
fn redirect_server(port: &str, url: &str) -> u8 {
    let Ok(port) = port.parse::<u16>() else { return 2 };
    let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else { return 1 };
    loop {
        let Ok((mut conn, _)) = listener.accept() else { continue };
        let mut head = Vec::new();
        let mut b = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
            match conn.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        let answer = if head.starts_with(b"GET /global/health ") {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"healthy\":true}".to_string()
        } else {
            format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        };
        let _ = conn.write_all(answer.as_bytes());
    }
}

/// Ask the egress proxy (127.0.0.1:3128) for `CONNECT TARGET`, print its
/// answer's status line, then serve PORT.
fn egress_then_serve(port: &str, target: &str) -> u8 {
    let attempt = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect("127.0.0.1:3128")?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string())
    };
    eprintln!("egress {target}: {}", attempt().unwrap_or_else(|e| e.to_string()));
    serve(port, false)
}

/// What a hostile payload leaves in its worktree for a forensic bundle: a
/// FIFO nobody writes to, a symlink to /etc/shadow, a 64 GiB sparse file.
fn plant() {
    let fifo = c"planted.fifo";
    // SAFETY: mkfifo with a valid C string.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    let _ = std::os::unix::fs::symlink("/etc/shadow", "planted-shadow");
    if let Ok(f) = std::fs::File::create("planted.sparse") {
        let _ = f.set_len(64 << 30);
    }
}

/// Three refusals of each layer — a directory outside the Landlock rules
/// (`/`), a socket family the seccomp filter refuses (AF_PACKET), a refused
/// system call (ptrace) — then `flood` more refused calls (keyctl), timed;
/// then serve on `port` ("-": exit). Prints `flood N S` (calls, seconds).
fn denials(port: &str, flood: u64) -> u8 {
    for _ in 0..3 {
        let dir = std::fs::read_dir("/");
        // SAFETY: socket(2) with constant arguments; closed if it was made.
        let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if s >= 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(s) };
        }
        // SAFETY: PTRACE_TRACEME takes no pointers.
        let p = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        eprintln!("denials: read_dir / {}, socket(AF_PACKET) {s}, ptrace {p}", if dir.is_ok() { "ALLOWED" } else { "refused" });
    }
    // A flood runs while the sandbox serves (it is healthy meanwhile).
    let server = (port != "-" && flood > 0).then(|| {
        let port = port.to_string();
        std::thread::spawn(move || serve(&port, false))
    });
    let start = std::time::Instant::now();
    for _ in 0..flood {
        // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, 0, 0) takes no pointers; refused by the filter anyway.
        unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0) };
    }
    println!("flood {flood} {:.6}", start.elapsed().as_secs_f64());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match server {
        Some(s) => s.join().unwrap_or(1),
        None if port == "-" => 0,
        None => serve(port, false),
    }
}

fn listen_and_answer(port: &str, bench: bool, response: String) -> u8 {
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("serve: {port:?} is not a port");
        return 2;
    };
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("serve: bind 127.0.0.1:{port}: {e}");
            return 1;
        }
    };
    let response: std::sync::Arc<str> = response.into();
    let auth: Option<std::sync::Arc<str>> = std::env::var("PROBE_PASSWORD")
        .ok()
        .map(|p| format!("authorization: {}", crate::net::health::basic_auth("opencode", &p)).to_ascii_lowercase().into());
    loop {
        let Ok((conn, peer)) = listener.accept() else { continue };
        let _ = conn.set_nodelay(true);
        let (response, auth) = (response.clone(), auth.clone());
        std::thread::spawn(move || if bench { bench_conn(conn, peer) } else { http_conn(conn, &response, auth.as_deref()) });
    }
}

fn http_conn(mut conn: std::net::TcpStream, response: &str, auth: Option<&str>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head);
            eprintln!("serve: {}", head.lines().next().unwrap_or("").escape_debug());
            if head.starts_with("GET /deny ") {
                // A refused system call on demand (tripwire tests).
                // SAFETY: PTRACE_TRACEME takes no pointers.
                unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            }
            let lower = head.to_ascii_lowercase();
            let close = lower.contains("connection: close");
            let unauthorized = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"probe\"\r\nContent-Length: 0\r\n\r\n";
            let response = if auth.is_some_and(|a| !lower.lines().any(|l| l.trim_end() == a)) { unauthorized } else { response };
            if conn.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
    }
}

fn bench_conn(mut conn: std::net::TcpStream, peer: std::net::SocketAddr) {
    let mut mode = [0u8; 1];
    if conn.read_exact(&mut mode).is_err() {
        return;
    }
    let mut buf = vec![0u8; 1 << 20];
    match mode[0] {
        // The client's address as accept() reported it.
        b'P' => {
            let _ = writeln!(conn, "{peer}");
        }
        b'E' => loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        },
        b'S' => {
            let mut total: u64 = 0;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = conn.write_all(&total.to_le_bytes());
        }
        b'G' => {
            let mut n = [0u8; 8];
            if conn.read_exact(&mut n).is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(n);
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                if conn.write_all(&buf[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        }
        _ => {}
    }
}

/// Fork up to N children that wait; print `forked=K` and end them. Used by
/// `verify` under a small pids limit.
fn forks(n: &str) -> u8 {
    let Ok(n) = n.parse::<usize>() else { return 2 };
    let mut children = Vec::new();
    for _ in 0..n {
        // SAFETY: the probe is single-threaded; the child only pauses.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: wait for the signal that ends us.
                unsafe { libc::pause() };
            },
            pid if pid > 0 => children.push(pid),
            _ => break,
        }
    }
    println!("forked={}", children.len());
    for pid in &children {
        // SAFETY: ending our own children and reaping them.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
    }
    0
}

/// `bench-client TARGET BYTES [PROXY]` (see `crate::bench::client`).
fn bench_client(args: &[String]) -> u8 {
    let (Some(target), Some(bytes)) = (args.first(), args.get(1).and_then(|b| b.parse::<u64>().ok())) else {
        eprintln!("bench-client TARGET BYTES [PROXY]");
        return 2;
    };
    match crate::bench::client(target, bytes, args.get(2).map(String::as_str)) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("bench-client: {e}");
            1
        }
    }
}

/// 127.0.0.1:`port` for the raw socket calls of the attack probes.
fn loopback_v4(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    }
}

/// Bind and listen on $SWARMCELL_PORT (the inner port), then turn that socket
/// back into an unconnected one (shutdown) and connect it to 127.0.0.1:PORT.
/// `ESCAPED` when the connection reaches a listener: with socket handoff the
/// socket lives in the host's network namespace, so PORT is the host's.
fn reuse_listener(port: &str) -> Check {
    let name = format!("reuse the listening socket to reach 127.0.0.1:{port}");
    let (Ok(target), Some(inner)) = (port.parse::<u16>(), std::env::var("SWARMCELL_PORT").ok().and_then(|p| p.parse::<u16>().ok())) else {
        return check(&name, Status::Broken, "needs a port and SWARMCELL_PORT");
    };
    let addr = loopback_v4;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a socket this probe owns, with valid sockaddrs.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let a = addr(inner);
        if s < 0 || libc::bind(s, (&a as *const libc::sockaddr_in).cast(), len) != 0 || libc::listen(s, 8) != 0 {
            return check(&name, Status::Broken, format!("bind/listen on {inner}: {}", Errno::last()));
        }
        libc::shutdown(s, libc::SHUT_RD);
        let t = addr(target);
        let r = libc::connect(s, (&t as *const libc::sockaddr_in).cast(), len);
        let e = Errno::last();
        // Connecting to one's own bound address is TCP's self-connection: it
        // reaches nothing but this socket.
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        let mut peer: libc::sockaddr_in = std::mem::zeroed();
        let (mut l1, mut l2) = (len, len);
        libc::getsockname(s, (&mut local as *mut libc::sockaddr_in).cast(), &mut l1);
        libc::getpeername(s, (&mut peer as *mut libc::sockaddr_in).cast(), &mut l2);
        let own = local.sin_port == peer.sin_port && local.sin_addr.s_addr == peer.sin_addr.s_addr;
        libc::close(s);
        match (r, own) {
            (0, true) => check(&name, Status::Blocked, "reached only itself (self-connection inside the sandbox)"),
            (0, false) => check(&name, Status::Escaped, "connected to another socket"),
            _ => check(&name, Status::Blocked, e.to_string()),
        }
    }
}

/// The handed-off connection variants of [`reuse_listener`]: listen on
/// $SWARMCELL_PORT, take the first three connections that send `X` (what comes
/// through the broker; a health check sends nothing), and try to point each at
/// 127.0.0.1:PORT: `connect(AF_UNSPEC)` then connect; `shutdown` then connect;
/// disconnect then TCP Fast Open (`sendto` with `MSG_FASTOPEN`, carrying data in
/// the SYN); and last, listen on the disconnected socket and wait for a
/// connection. `ESCAPED` when a connection is made (to anything but itself) or
/// one is accepted.
fn reuse_accepted(port: &str) -> Vec<Check> {
    use std::net::TcpListener;
    let (Ok(target), Some(inner)) = (port.parse::<u16>(), std::env::var("SWARMCELL_PORT").ok().and_then(|p| p.parse::<u16>().ok())) else {
        return vec![check("reuse-accepted", Status::Broken, "needs a port and SWARMCELL_PORT")];
    };
    let listener = match TcpListener::bind(("127.0.0.1", inner)) {
        Ok(l) => l,
        Err(e) => return vec![check("reuse-accepted", Status::Broken, format!("bind {inner}: {e}"))],
    };
    let mut conns = Vec::new();
    while conns.len() < 3 {
        let Ok((mut c, _)) = listener.accept() else { continue };
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() && b[0] == b'X' {
            conns.push(c);
        }
    }
    let addr = loopback_v4;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let t = addr(target);
    let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    let disconnect = |s: i32| {
        // SAFETY: connect(AF_UNSPEC) on a socket this probe owns.
        let r = unsafe { libc::connect(s, &unspec, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t) };
        if r == 0 { "disconnected".to_string() } else { format!("disconnect: {}", Errno::last()) }
    };
    // Connect `s` to the target without blocking, wait up to a second, and
    // classify: a connection to anything but itself is an escape.
    let reconnect = |s: i32, how: &str| -> Check {
        let name = format!("{how} then connect to 127.0.0.1:{target}");
        // SAFETY: fcntl, connect, poll, getsockopt and getpeername on a socket
        // this probe owns, with valid buffers.
        unsafe {
            libc::fcntl(s, libc::F_SETFL, libc::fcntl(s, libc::F_GETFL) | libc::O_NONBLOCK);
            let r = libc::connect(s, (&t as *const libc::sockaddr_in).cast(), len);
            let e = Errno::last();
            if r != 0 && e != Errno::EINPROGRESS {
                return check(&name, Status::Blocked, e.to_string());
            }
            let mut pfd = libc::pollfd { fd: s, events: libc::POLLOUT, revents: 0 };
            libc::poll(&mut pfd, 1, 1000);
            let mut err: libc::c_int = 0;
            let mut el = 4;
            libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut el);
            let mut peer: libc::sockaddr_in = std::mem::zeroed();
            let mut pl = len;
            let connected =
                pfd.revents & libc::POLLOUT != 0 && err == 0 && libc::getpeername(s, (&mut peer as *mut libc::sockaddr_in).cast(), &mut pl) == 0;
            match connected {
                true if peer.sin_port == t.sin_port => check(&name, Status::Escaped, "connected"),
                true => check(&name, Status::Blocked, "connected only to its old peer"),
                false if err != 0 => check(&name, Status::Blocked, Errno::from_raw(err).to_string()),
                false => check(&name, Status::Blocked, "no handshake within 1 s"),
            }
        }
    };
    let fd = |i: usize| std::os::fd::AsRawFd::as_raw_fd(&conns[i]);
    let mut out = Vec::new();
    let how = disconnect(fd(0));
    out.push(reconnect(fd(0), &format!("accepted socket: connect(AF_UNSPEC) ({how})")));
    // SAFETY: shutdown on a socket this probe owns.
    unsafe { libc::shutdown(fd(1), libc::SHUT_RDWR) };
    out.push(reconnect(fd(1), "accepted socket: shutdown"));
    let s = fd(2);
    let how = disconnect(s);
    let name = format!("accepted socket: {how}, then TCP Fast Open to 127.0.0.1:{target}");
    // SAFETY: sendto with a valid buffer and sockaddr on a socket this probe owns.
    let r = unsafe {
        libc::sendto(
            s,
            b"GET / HTTP/1.0\r\n\r\n".as_ptr().cast(),
            18,
            libc::MSG_FASTOPEN | libc::MSG_DONTWAIT,
            (&t as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    out.push(match r {
        n if n > 0 => check(&name, Status::Escaped, format!("sent {n} bytes in a SYN")),
        _ => check(&name, Status::Blocked, Errno::last().to_string()),
    });
    let name = "accepted socket: disconnected, then listen and accept".to_string();
    // SAFETY: listen and poll/accept on a socket this probe owns.
    out.push(unsafe {
        let s = fd(2);
        libc::connect(s, &unspec, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t);
        if libc::listen(s, 8) != 0 {
            check(&name, Status::Blocked, format!("listen: {}", Errno::last()))
        } else {
            println!("rogue listener up");
            let mut pfd = libc::pollfd { fd: s, events: libc::POLLIN, revents: 0 };
            let c = if libc::poll(&mut pfd, 1, 3000) == 1 {
                libc::accept4(s, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK)
            } else {
                -1
            };
            let mut local: libc::sockaddr_in = std::mem::zeroed();
            let mut ll = len;
            // A connection on the inner port is the sandbox's own (relay mode:
            // the disconnected socket belongs to the sandbox's namespace).
            if c >= 0 && libc::getsockname(c, (&mut local as *mut libc::sockaddr_in).cast(), &mut ll) == 0 && u16::from_be(local.sin_port) != inner {
                check(&name, Status::Escaped, format!("accepted a connection on host port {}", u16::from_be(local.sin_port)))
            } else {
                check(&name, Status::Blocked, "no connection from the host came in 3 s")
            }
        }
    });
    out
}

/// `bench-server` whose accepting thread is hit by a signal (with `SA_RESTART`,
/// as Bun's garbage collector does with SIGPWR) every 100 µs: accepts are
/// interrupted and restarted all the time.
fn signalled_server(port: &str) -> u8 {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: installing a handler that does nothing, for SIGUSR1.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = nothing as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    std::thread::spawn(move || {
        loop {
            // SAFETY: signalling a thread of this process, which lives as long as it.
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    });
    serve(port, true)
}

/// A hostile payload racing the fd number of its accept calls: one thread
/// flips a descriptor slot between its inner-port listener (blocking) and
/// another listener (non-blocking), four threads accept on that slot. An
/// accept the launcher let continue in the kernel on "the other listener"
/// runs on the inner one, where the launcher's placeholders queue. Each
/// connection's first byte is echoed; a placeholder (first byte `P`) is
/// reported as `accept-race ESCAPED`.
fn accept_race(port: &str) -> u8 {
    let Ok(inner) = port.parse::<u16>() else { return 2 };
    let (Ok(l), Ok(o)) = (std::net::TcpListener::bind(("127.0.0.1", inner)), std::net::TcpListener::bind("127.0.0.1:0")) else { return 2 };
    if o.set_nonblocking(true).is_err() {
        return 2;
    }
    let (lfd, ofd) = (l.as_raw_fd(), o.as_raw_fd());
    // SAFETY: dup of our own listener; the slot lives as long as the process.
    let slot = unsafe { libc::dup(ofd) };
    if slot < 0 {
        return 2;
    }
    std::thread::spawn(move || {
        let _keep = (l, o);
        loop {
            // SAFETY: dup2 between descriptors this process owns.
            unsafe {
                libc::dup2(lfd, slot);
                libc::dup2(ofd, slot);
            }
        }
    });
    let accepter = move || {
        loop {
            // SAFETY: accept on a descriptor slot of ours; no address wanted.
            let s = unsafe { libc::accept(slot, std::ptr::null_mut(), std::ptr::null_mut()) };
            if s < 0 {
                continue;
            }
            // SAFETY: a fresh fd from accept.
            let mut c = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(s) };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                if b[0] == b'P' {
                    println!("accept-race ESCAPED took a placeholder (peer {:?})", c.peer_addr());
                    let _ = std::io::stdout().flush();
                }
                let _ = c.write_all(&b);
            }
        }
    };
    for _ in 0..3 {
        std::thread::spawn(accepter);
    }
    accepter();
    0
}

/// Accepts on the payload's other sockets, all made by the launcher under
/// socket handoff: they must behave as the kernel's (connections and their
/// addresses on other listeners, errnos on everything else).
fn accept_kinds() -> Vec<Check> {
    fn accept_addr(fd: i32) -> Result<(i32, Vec<u8>), Errno> {
        // SAFETY: sockaddr_storage is plain data.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: accept into our storage.
        let r = unsafe { libc::accept(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
        if r < 0 {
            return Err(Errno::last());
        }
        // SAFETY: the kernel wrote `len` bytes of `ss`.
        Ok((r, unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), (len as usize).min(128)) }.to_vec()))
    }
    let mut out = Vec::new();
    let dir = std::env::temp_dir().join(format!("accept-kinds-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    match std::os::unix::net::UnixListener::bind(&dir) {
        Ok(l) => {
            let path = dir.clone();
            let t = std::thread::spawn(move || std::os::unix::net::UnixStream::connect(&path));
            match accept_addr(l.as_raw_fd()) {
                Ok((fd, addr)) if addr.len() >= 2 && i32::from(u16::from_ne_bytes([addr[0], addr[1]])) == libc::AF_UNIX => {
                    // SAFETY: closing the fd accept gave us.
                    unsafe { libc::close(fd) };
                    out.push(check("unix-accept", Status::Ok, "a unix connection with an AF_UNIX address"));
                }
                other => out.push(check("unix-accept", Status::Broken, format!("{other:?}"))),
            }
            let _ = t.join();
        }
        Err(e) => out.push(check("unix-accept", Status::Broken, format!("bind: {e}"))),
    }
    let _ = std::fs::remove_file(&dir);
    if let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0")
        && let Ok(a) = l.local_addr()
    {
        let c = std::net::TcpStream::connect(a);
        let want = c.as_ref().ok().and_then(|c| c.local_addr().ok()).map(|a| a.port().to_be_bytes());
        match accept_addr(l.as_raw_fd()) {
            Ok((fd, addr)) if addr.len() == 16 && want.is_some_and(|w| addr[2..4] == w) && addr[4..8] == [127, 0, 0, 1] => {
                // SAFETY: closing the fd accept gave us.
                unsafe { libc::close(fd) };
                out.push(check("tcp-accept", Status::Ok, "the client's address"));
            }
            other => out.push(check("tcp-accept", Status::Broken, format!("{other:?}"))),
        }
    }
    let file = std::fs::File::open("/proc/self/status");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0");
    // SAFETY: a new TCP socket that never listens.
    let tcp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    let cases = [
        ("accept-file", file.as_ref().map_or(-1, |f| f.as_raw_fd()), Errno::ENOTSOCK),
        ("accept-udp", udp.as_ref().map_or(-1, |u| u.as_raw_fd()), Errno::EOPNOTSUPP),
        ("accept-unlistened", tcp, Errno::EINVAL),
        ("accept-badfd", 999, Errno::EBADF),
    ];
    for (name, fd, want) in cases {
        out.push(match accept_addr(fd) {
            Err(e) if e == want => check(name, Status::Ok, format!("{e}")),
            other => check(name, Status::Broken, format!("{other:?}, want {want}")),
        });
    }
    out
}

/// N rounds of: a fresh listener, a connection to it, an accept that a signal
/// (no `SA_RESTART`) interrupts at random, and the listener closed. A
/// connection the launcher took for an interrupted call waits for the next
/// call on that listener, which never comes. Prints `done`, then sleeps.
fn interrupted_accepts(n: &str) -> u8 {
    extern "C" fn nothing(_: libc::c_int) {}
    let Ok(n) = n.parse::<u32>() else { return 2 };
    // SAFETY: a handler that does nothing, for SIGUSR1, without SA_RESTART.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = nothing as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    std::thread::spawn(move || {
        loop {
            // SAFETY: signalling a thread of this process, which lives as long as it.
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
            std::thread::sleep(std::time::Duration::from_micros(30));
        }
    });
    let mut interrupted = 0;
    for _ in 0..n {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(a) = l.local_addr() else { continue };
        let c = std::net::TcpStream::connect(a);
        // SAFETY: accept on our listener; no address wanted.
        let r = unsafe { libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if r >= 0 {
            // SAFETY: closing the fd accept gave us.
            unsafe { libc::close(r) };
        } else {
            interrupted += 1;
        }
        drop((c, l));
    }
    println!("done {interrupted} interrupted of {n}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(std::time::Duration::from_secs(60));
    0
}
