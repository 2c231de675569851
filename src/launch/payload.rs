//! The payload process, between its `clone` (from the single-threaded sandbox
//! init, `CLONE_VM | CLONE_VFORK`: on init's memory, with init suspended) and
//! `execve`. Runs inside the finished sandbox; everything it needs was
//! prepared by init before, so this is a straight line of syscalls. What it
//! writes of init's memory: its own stack, the Landlock ruleset it takes,
//! `errno`, the flag it sets right before `execve`, and (on an error's way to
//! `_exit` only) the allocator's state.

use std::ffi::CString;
use std::os::fd::RawFd;

use crate::sys;

/// What the payload execs, prepared before the fork so that the child only
/// makes system calls.
pub struct PreparedExec {
    pub path: CString,
    // Owned here so that the pointer arrays below stay valid.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    pub cwd: CString,
    /// `/proc/sys/kernel/cap_last_cap`, read before the fork.
    pub last_cap: u32,
    /// seccomp programs, loaded in order, last before execve.
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// Socket handoff: where to send the accept-notification listener (to
    /// init), and its program (built before the fork, like everything here).
    pub notify: Option<(RawFd, seccompiler::BpfProgram)>,
    /// The CPUs the payload may run on: init starts it pinned to init's own
    /// CPU (see `init::run`), and it takes these back first thing.
    pub cpus: Option<nix::sched::CpuSet>,
}

impl PreparedExec {
    pub fn new(
        path: CString,
        argv: Vec<CString>,
        envp: Vec<CString>,
        cwd: CString,
        last_cap: u32,
        seccomp: Vec<seccompiler::BpfProgram>,
    ) -> PreparedExec {
        let ptrs = |v: &[CString]| v.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let (argv_ptrs, envp_ptrs) = (ptrs(&argv), ptrs(&envp));
        PreparedExec { path, _argv: argv, _envp: envp, argv_ptrs, envp_ptrs, cwd, last_cap, seccomp, notify: None, cpus: None }
    }
}

/// Where the payload's set-up failed, reported to init through the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Session = 1,
    Privileges = 2,
    Descriptors = 3,
    Chdir = 4,
    Execve = 5,
    Landlock = 6,
    Seccomp = 7,
    Affinity = 8,
}

impl Stage {
    pub fn from_u8(b: u8) -> Option<Stage> {
        [Stage::Session, Stage::Privileges, Stage::Descriptors, Stage::Chdir, Stage::Execve, Stage::Landlock, Stage::Seccomp, Stage::Affinity]
            .into_iter()
            .find(|s| *s as u8 == b)
    }
}

/// Report `(errno, stage)` on the error pipe and exit.
fn fail(err_fd: RawFd, stage: Stage, errno: i32) -> ! {
    let mut msg = [0u8; 5];
    msg[..4].copy_from_slice(&errno.to_ne_bytes());
    msg[4] = stage as u8;
    // SAFETY: writing a small stack buffer to a pipe, then exiting without
    // running any atexit handlers or destructors.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(crate::launch::EXIT_LAUNCHER_ERROR.into())
    }
}

fn errno_of(e: &sys::SysError) -> i32 {
    e.errno as i32
}

/// Become the payload. Never returns: on failure, reports on `err_fd` (a
/// close-on-exec pipe, so a successful exec closes it and init reads EOF).
/// `at_execve` is set right before `execve`: init, resumed with no error on the
/// pipe, tells an exec from a death before it.
pub fn exec(p: &PreparedExec, landlock: Option<::landlock::RulesetCreated>, err_fd: RawFd, at_execve: &std::sync::atomic::AtomicBool) -> ! {
    if let Some(cpus) = &p.cpus
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)
    {
        fail(err_fd, Stage::Affinity, e as i32);
    }
    // A new session without a controlling terminal: TIOCSTI and job-control
    // signals cannot reach the supervisor's terminal.
    if let Err(e) = sys::child::setsid() {
        fail(err_fd, Stage::Session, errno_of(&e));
    }
    if let Err(e) = sys::child::set_sigmask(libc::SIG_SETMASK, &sys::child::sigset(&[])) {
        fail(err_fd, Stage::Session, errno_of(&e));
    }
    if crate::confine::caps::set_no_new_privs().is_err() || crate::confine::caps::drop_all(p.last_cap).is_err() {
        fail(err_fd, Stage::Privileges, nix::errno::Errno::last() as i32);
    }
    // Everything but stdio closes at exec (the error pipe and the Landlock
    // ruleset included).
    if let Err(e) = sys::child::close_range(3, u32::MAX, sys::child::CLOSE_RANGE_CLOEXEC) {
        fail(err_fd, Stage::Descriptors, errno_of(&e));
    }
    // SAFETY: cwd is a valid C string.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } != 0 {
        fail(err_fd, Stage::Chdir, nix::errno::Errno::last() as i32);
    }
    if let Some(ruleset) = landlock
        && crate::confine::landlock::apply::enforce(ruleset).is_err()
    {
        fail(err_fd, Stage::Landlock, nix::errno::Errno::last() as i32);
    }
    // Last before execve: from here on only the filtered calls remain.
    for program in &p.seccomp {
        if let Err(e) = crate::confine::seccomp::load::filter(program) {
            fail(err_fd, Stage::Seccomp, errno_of(&e));
        }
    }
    if let Some((sock, program)) = &p.notify {
        // The accept-notification filter; its listener goes to init (and on to
        // the launcher) and is closed here: the payload must never answer its own.
        match crate::confine::seccomp::load::filter_with_listener(program) {
            Ok(listener) => {
                let sent = crate::sys::child::send_fd(*sock, listener);
                // SAFETY: closing the listener fd we just created.
                unsafe { libc::close(listener) };
                if let Err(e) = sent {
                    fail(err_fd, Stage::Seccomp, errno_of(&e));
                }
            }
            Err(e) => fail(err_fd, Stage::Seccomp, errno_of(&e)),
        }
    }
    at_execve.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: path is a valid C string; argv_ptrs and envp_ptrs are NULL-terminated
    // arrays of pointers into CStrings that outlive this call.
    unsafe { libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr()) };
    fail(err_fd, Stage::Execve, nix::errno::Errno::last() as i32)
}
