//! Child side: the sandbox init, a `clone` of the launcher (no exec) into new
//! user, mount, PID, IPC and UTS namespaces. Single-threaded (the launcher is
//! when it clones, which it checks), pid 1. For `run` as root it is cloned at
//! the launcher's start, before the request is read (see
//! `super::sandbox::EarlyInit`), otherwise once its ids are known; it gets
//! its ids, then its spec (with `Go`), so that it builds the root while the
//! launcher works. It never returns into the launcher's code: it ends with
//! `_exit`, so none of the launcher's destructors (leases, cgroups) runs here.
//!
//! The sequence, in order, each step for a reason:
//! 1. make our network namespace (`unshare`: the longest step that needs
//!    nothing of the launcher's) and send it to the launcher, which brings
//!    `lo` up and makes its listeners there before `Listening`; reset signals
//!    and close every fd but the channel (nothing else of the launcher's
//!    survives into the sandbox); empty the bounding set (nothing here execs
//!    but the payload, which inherits it empty);
//! 2. wait for `Ids` (sent only after the parent wrote our uid/gid maps and
//!    opened our user namespace); become non-dumpable (this memory is a copy
//!    of the launcher's);
//! 3. become the sandbox uid/gid (capabilities in our own user namespace are
//!    kept: uid 0 is not mapped, so the kernel does not clear them), re-arm the
//!    parent-death signal that the uid change cleared;
//! 4. build what the root needs of no spec (tmpfs, /dev, /proc); wait for `Go`
//!    (the spec, and the mount trees, idmapped); finish the root and
//!    `pivot_root` into it;
//! 5. hostname;
//! 6. wait for `Listening` (`lo` is up, the launcher's outbound listeners exist; it
//!    carries the v1 cgroups' `tasks` files): join the cgroups, and enter a new
//!    cgroup namespace rooted there, so the payload is born inside them;
//! 7. drop our own capabilities (no_new_privs too); start the payload
//!    ([`super::payload`], a `CLONE_VM | CLONE_VFORK` child, as posix_spawn
//!    makes): setsid, no_new_privs, drop all capabilities, close fds, chdir to
//!    the worktree, Landlock, seccomp, execve; close every fd of ours but the
//!    channel and the pipes;
//! 8. stay as a reaping init that forwards signals; when the payload exits,
//!    report its status and exit (the kernel then kills whatever else is left
//!    in the PID namespace).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::channel::{FromInit, InitEnd};
use super::payload::{self, PreparedExec, Stage};
use super::spec::{InitSpec, PayloadStatus};
use crate::sys;

/// The payload's stack until its execve (it needs a few pages of it).
const PAYLOAD_STACK: usize = 512 * 1024;

/// The payload's stack until its execve: mapped, with a guard page below it,
/// so that an overflow faults instead of writing init's heap.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new(len: usize) -> std::io::Result<ChildStack> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is ours, `len` bytes long, alive while `self` is
        // (the guard page is never touched through this slice: the stack grows
        // down from its end).
        unsafe { std::slice::from_raw_parts_mut(self.base.cast(), self.len) }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Signals init forwards to the payload.
const FORWARDED: [libc::c_int; 6] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

enum Failure {
    Setup(String),
    Exec { path: String, errno: i32 },
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Setup(e.to_string())
    }
}

/// Entry point of the cloned init. Never returns.
///
/// `channel` is our end of the channel: ids, then the spec and the mount
/// trees (the spec's entries' `fd_index`es refer to them) come on it.
/// `allowed`: the CPUs the launcher may use (the launcher may have started us
/// on fewer, see `super::sandbox`); ours again once we have our ids.
pub fn main(channel: OwnedFd, allowed: Option<nix::sched::CpuSet>) -> ! {
    // Whatever happens below, never unwind into the launcher's frames.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(channel, allowed))).unwrap_or(super::EXIT_LAUNCHER_ERROR);
    // SAFETY: _exit ends this process without running the launcher's atexit
    // handlers or flushing its buffers (a copy of the launcher's memory).
    unsafe { libc::_exit(code.into()) }
}

fn serve(channel: OwnedFd, allowed: Option<nix::sched::CpuSet>) -> u8 {
    // (This memory is a copy of the launcher's: init becomes non-dumpable once
    // it has its ids, below, before it takes the sandbox's uid. Until then it
    // is host uid 0, and the launcher opens our /proc/PID/ns/user: with a
    // non-dumpable init that needs CAP_SYS_PTRACE, which the systemd unit
    // does not grant, since our memory belongs to the host's user namespace.)
    // Named first, so that everything it does is told apart from the launcher.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"swarmcell-init".as_ptr()) };
    crate::phases::mark("init: started");
    // First, the longest step that needs nothing of the launcher's (see
    // `CLONE_FLAGS`): it runs while the launcher writes our maps.
    // SAFETY: unshare with a namespace flag; we are single-threaded.
    let network = if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 { Ok(()) } else { Err(nix::errno::Errno::last()) };
    crate::phases::mark("init: network namespace");
    sys::reset_signal_dispositions();
    // Blocked from the start, the signals the launcher forwards stay pending
    // until we wait for them (with the payload running): a PID namespace's init
    // that neither blocks nor handles a signal has it discarded, and a stop
    // sent while the sandbox is being built was lost.
    let mut keep: Vec<RawFd> = vec![channel.as_raw_fd()];
    if sys::child::set_sigmask(libc::SIG_SETMASK, &sys::child::sigset(&watched_signals())).is_err()
        || crate::confine::fds::close_all_except_these(&mut keep).is_err()
        || sys::set_cloexec(channel.as_raw_fd(), true).is_err()
    {
        return super::EXIT_LAUNCHER_ERROR;
    }
    let chan = InitEnd::new(channel);
    crate::phases::mark("init: fds closed");
    // The launcher's way into the namespace (it brings `lo` up and makes the
    // outbound listeners there): sent, since opening our /proc entry would
    // race with the unshare.
    // (The launcher diagnoses a refusal: the host's limits are not readable
    // from this user namespace.)
    if let Err(errno) = network {
        let _ = chan.send_to_parent(&FromInit::NetworkRefused { errno: errno as i32 });
        return super::EXIT_LAUNCHER_ERROR;
    }
    let sent = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("opening the sandbox's network namespace: {e}"))
        .and_then(|ns| chan.send_network(ns.as_raw_fd()).map_err(|e| e.to_string()));
    if let Err(message) = sent {
        let _ = chan.send_to_parent(&FromInit::SetupFailed { message });
        return super::EXIT_LAUNCHER_ERROR;
    }
    // Nothing here ever execs but the payload: the bounding set goes now, while
    // the launcher still works, and the payload inherits it empty.
    let last_cap = crate::confine::caps::last_cap();
    let bounding = crate::confine::caps::drop_bounding_set(last_cap);
    crate::phases::mark("init: bounding set dropped");
    let Ok(ids) = chan.recv_ids() else {
        // The launcher died or gave up: nothing to report to.
        return super::EXIT_LAUNCHER_ERROR;
    };
    crate::phases::mark("init: ids received");
    // (Ordered after the launcher's placement of us: it sends the ids after.)
    if let Some(allowed) = &allowed
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), allowed)
    {
        let _ = chan.send_to_parent(&FromInit::SetupFailed { message: format!("restoring the CPU affinity: {e}") });
        return super::EXIT_LAUNCHER_ERROR;
    }
    // Before anything of the sandbox's: the payload, once it runs as our uid,
    // could otherwise read this copy of the launcher's memory through ptrace or
    // /proc/1/mem.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        let _ = chan.send_to_parent(&FromInit::SetupFailed { message: format!("PR_SET_DUMPABLE: {}", nix::errno::Errno::last()) });
        return super::EXIT_LAUNCHER_ERROR;
    }
    let result = match bounding {
        Ok(()) => run(&chan, ids, last_cap),
        Err(e) => Err(Failure::Setup(e.to_string())),
    };
    let msg = match result {
        Ok(status) => FromInit::Exited(status),
        Err(Failure::Setup(message)) => FromInit::SetupFailed { message },
        Err(Failure::Exec { path, errno }) => FromInit::ExecFailed { path, errno },
    };
    let code = match &msg {
        FromInit::Exited(_) => 0,
        _ => super::EXIT_LAUNCHER_ERROR,
    };
    let _ = chan.send_to_parent(&msg);
    code
}

/// The signals init waits for (and keeps blocked): those it forwards to the
/// payload, and SIGCHLD.
fn watched_signals() -> Vec<libc::c_int> {
    FORWARDED.iter().copied().chain([libc::SIGCHLD]).collect()
}

/// v1: write "0" to each hierarchy's `tasks` file (opened by the launcher): a
/// thread moving itself is cheap, see `SandboxCgroup::self_attach_files`. (On
/// v2 the launcher placed us already, and sends none.) Until here init ran in
/// the launcher's cgroups: its own set-up only, nothing of the payload's.
fn join_cgroups(tasks: &[OwnedFd]) -> Result<(), Failure> {
    for fd in tasks {
        // SAFETY: writing one byte from a static string to a descriptor we hold.
        if unsafe { libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) } != 1 {
            return Err(Failure::Setup(format!("joining the sandbox's cgroups: write(tasks): {}", nix::errno::Errno::last())));
        }
    }
    Ok(())
}

fn run(chan: &InitEnd, (uid, gid): (u32, u32), last_cap: u32) -> Result<PayloadStatus, Failure> {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        return Err(Failure::Setup("sandbox init is not pid 1 of a new PID namespace".into()));
    }
    // The launcher dropped its supplementary groups; a leftover one (host gid 0)
    // would grant group access to host files.
    if sys::supplementary_group_count()? != 0 {
        return Err(Failure::Setup("sandbox init still has supplementary groups".into()));
    }
    sys::setresgid(gid)?;
    sys::setresuid(uid)?;
    // The uid change reset dumpability to `fs.suid_dumpable`: not dumpable
    // again before the spec (and its secret) arrives.
    sys::prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")?;
    // The credential change cleared the parent-death signal; re-arm it, then make
    // sure the parent did not die in between.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, "PR_SET_PDEATHSIG")?;
    if chan.peer_gone() {
        return Err(Failure::Setup("launcher exited".into()));
    }
    crate::phases::mark("init: credentials");
    // What the root needs of no spec, while the launcher makes it.
    let skeleton = crate::fs::rootfs::Skeleton::build()?;
    crate::phases::mark("init: root skeleton");
    let (spec, fds) = chan.recv_go().map_err(|e| Failure::Setup(format!("waiting for the spec: {e}")))?;
    crate::phases::mark("init: go received");
    // An init cloned before the launcher read its command line has no log
    // subscriber: its debug lines need one (only asked for when they show).
    if let Some(log) = &spec.log {
        crate::logging::init(log.json, &log.level);
    }
    if (spec.uid, spec.gid) != (uid, gid) {
        return Err(Failure::Setup(format!("the spec's ids {}:{} are not the ids {uid}:{gid} taken", spec.uid, spec.gid)));
    }
    let spec = &spec;
    skeleton.finish(spec, &fds)?;
    // The mount trees are attached: their descriptors go.
    drop(fds);
    crate::phases::mark("init: root built");
    tracing::debug!("init: root built");
    // (The launcher created the outbound listeners in this network namespace.)
    sys::sethostname(&spec.id)?;

    let mut prepared = prepare_exec(spec, last_cap)?;
    // Socket handoff: the payload sends its accept-notification listener here.
    let notify_pair = if spec.handoff { Some(sys::socketpair_seqpacket()?) } else { None };
    prepared.notify = notify_pair.as_ref().map(|(_, child)| (child.as_raw_fd(), crate::confine::seccomp::compile::accept_notify_program()));
    crate::phases::mark("init: exec prepared");
    let landlock = crate::confine::landlock::apply::prepare(&spec.landlock)?;
    crate::phases::mark("init: landlock prepared");
    tracing::debug!(abi = crate::confine::landlock::kernel_abi(), mode = ?spec.landlock.mode, seccomp_programs = prepared.seccomp.len(), "init: filters prepared");
    let mask = sys::child::sigset(&watched_signals());
    let (err_r, err_w) = sys::pipe_cloexec()?;
    // The launcher made the outbound listeners meanwhile; the payload may
    // connect to them from its first instruction on.
    // With them came the sandbox's cgroups (made while we built the root).
    let attach = chan.recv_listening().map_err(|e| Failure::Setup(format!("waiting for the launcher's listeners: {e}")))?;
    crate::phases::mark("init: listeners ready");
    // Into the cgroups before the payload exists: every process of the sandbox
    // is born inside them, and our cgroup namespace is rooted there.
    join_cgroups(&attach)?;
    drop(attach);
    // SAFETY: unshare with a namespace flag; we are single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(Failure::Setup(format!("unshare(CLONE_NEWCGROUP): {}", nix::errno::Errno::last())));
    }
    crate::phases::mark("init: cgroups joined");

    // init keeps no privilege once the payload exists (it only reaps and
    // signals, and the payload needs none of it): dropped before the payload, so
    // that no instant of the payload's life sees a privileged pid 1 (and the
    // payload, which starts on our CPU, does not wait for it).
    crate::confine::caps::set_no_new_privs()?;
    crate::confine::caps::drop_all(prepared.last_cap)?;
    // The payload runs on our memory, on a stack of its own, until its execve
    // (CLONE_VM | CLONE_VFORK, as posix_spawn does): nothing of this address
    // space (a copy of the launcher's) is copied for it, and we are suspended
    // until it has exec'd or exited. It makes only the system calls of
    // `payload::exec`, on its own credentials, signal mask and fd table.
    // (A panic in the child would abort it, leaving our panic count raised.)
    // The payload starts on our CPU: we sleep until its exec anyway, and a new
    // task placed on another CPU waits for that CPU to wake up (or, on a busy
    // host, for the task running there). It takes our CPUs back first thing.
    let pinned = pin_to_this_cpu();
    prepared.cpus = pinned;
    let mut landlock = landlock;
    let at_execve = std::sync::atomic::AtomicBool::new(false);
    let (err_r_fd, err_w_fd) = (err_r.as_raw_fd(), err_w.as_raw_fd());
    let mut stack = ChildStack::new(PAYLOAD_STACK).map_err(|e| Failure::Setup(format!("the payload's stack: {e}")))?;
    let exec_payload = Box::new(|| -> isize {
        // SAFETY: the child's own copy of the read end (its fd table is its own).
        unsafe { libc::close(err_r_fd) };
        payload::exec(&prepared, landlock.take(), err_w_fd, &at_execve)
    });
    // SAFETY: we are single-threaded and suspended until the child execs or
    // exits; the child runs only `exec_payload` on `stack`.
    let payload_pid = unsafe {
        nix::sched::clone(exec_payload, stack.as_mut(), nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK, Some(libc::SIGCHLD))
    }
    .map_err(|e| Failure::Setup(format!("clone of the payload: {e}")))?
    .as_raw();
    drop(stack);
    if let Some(cpus) = &pinned {
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)
            .map_err(|e| Failure::Setup(format!("restoring init's CPU affinity: {e}")))?;
    }
    // Still ours if the child died before it took it: its owner closes it.
    drop(landlock);
    // The child took the Landlock ruleset out of our shared memory: our own
    // descriptor of it (and anything else not ours) is closed here.
    let mut keep: Vec<RawFd> =
        [chan.raw_fd(), err_r_fd, err_w_fd].into_iter().chain(notify_pair.iter().flat_map(|(a, b)| [a.as_raw_fd(), b.as_raw_fd()])).collect();
    crate::confine::fds::close_all_except_these(&mut keep).map_err(|e| Failure::Setup(format!("closing init's descriptors: {e}")))?;
    drop(err_w);
    crate::phases::mark("init: payload forked");
    tracing::debug!("init: payload forked");
    let notify = match notify_pair {
        Some((ours, theirs)) => {
            drop(theirs);
            // The payload sends the listener before exec, or exits (EOF).
            sys::recv_fd(ours.as_raw_fd())?
        }
        None => None,
    };
    if let Some((stage, errno)) = read_exec_error(err_r) {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(payload_pid), None);
        return Err(match stage {
            Some(Stage::Execve) => Failure::Exec { path: spec.argv[0].clone(), errno },
            other => Failure::Setup(format!("payload set-up failed at {other:?}: {}", nix::errno::Errno::from_raw(errno))),
        });
    }

    if !at_execve.load(std::sync::atomic::Ordering::SeqCst) {
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(payload_pid), None);
        return Err(Failure::Setup(format!("the payload ended before its execve: {status:?}")));
    }
    crate::phases::mark("init: payload exec'd");
    sys::prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")?;
    let _ = chan.send_running(notify.as_ref().map(|f| f.as_raw_fd()));
    drop(notify);
    tracing::debug!(sandbox = %spec.id, payload_pid, "payload running");
    let status = reap_until_payload_exits(payload_pid, &mask);
    crate::phases::mark("init: payload reaped");
    drain(&mask, std::time::Duration::from_millis(spec.stop_timeout_ms));
    Ok(status)
}

/// Pin this thread to the CPU it runs on; returns the CPUs it had (None, and
/// nothing changed, when it could not tell or had one CPU anyway).
fn pin_to_this_cpu() -> Option<nix::sched::CpuSet> {
    let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    // SAFETY: no arguments.
    let here = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
    let mut only_here = nix::sched::CpuSet::new();
    only_here.set(here).ok()?;
    if before == only_here {
        return None;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only_here).ok()?;
    Some(before)
}

/// The payload is gone: ask whatever it left behind to stop (SIGTERM), reap it
/// for up to `timeout`; when init then exits, the kernel kills the rest.
fn drain(mask: &libc::sigset_t, timeout: std::time::Duration) {
    // SAFETY: kill(-1) from pid 1 signals every other process of this PID namespace.
    if unsafe { libc::kill(-1, libc::SIGTERM) } != 0 {
        return; // ESRCH: nobody left
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        loop {
            // SAFETY: waitpid with WNOHANG on any child; no status is read.
            let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if pid == 0 {
                break;
            }
            if pid < 0 {
                return; // ECHILD: all reaped
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
        // SAFETY: mask and ts are valid; the siginfo pointer may be null.
        unsafe { libc::sigtimedwait(mask, std::ptr::null_mut(), &ts) };
    }
}

/// Resolve the program like `execvp`, but against the sandbox's PATH and root.
fn resolve_program(spec: &InitSpec) -> PathBuf {
    let prog = &spec.argv[0];
    if prog.contains('/') {
        return PathBuf::from(prog);
    }
    let path_var = spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("/usr/bin:/bin");
    path_var.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(prog)).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(prog))
}

fn prepare_exec(spec: &InitSpec, last_cap: u32) -> Result<PreparedExec, Failure> {
    let path = resolve_program(spec);
    if !path.is_absolute() && !spec.argv[0].contains('/') {
        return Err(Failure::Exec { path: spec.argv[0].clone(), errno: libc::ENOENT });
    }
    let argv = spec.argv.iter().map(sys::cstring).collect::<Result<_, _>>()?;
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(|_| Failure::Setup(format!("variable {k} contains a NUL byte"))))
        .collect::<Result<_, _>>()?;
    let seccomp = super::spec::decode_bpf(&spec.seccomp);
    Ok(PreparedExec::new(sys::cstring(&path)?, argv, envp, sys::cstring(&spec.cwd)?, last_cap, seccomp))
}

/// EOF means the exec succeeded (the pipe was close-on-exec).
fn read_exec_error(err_r: OwnedFd) -> Option<(Option<Stage>, i32)> {
    let mut f = std::fs::File::from(err_r);
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| (Stage::from_u8(buf[4]), i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])))
}

/// Reap every child (orphans are re-parented to us), forward signals to the
/// payload, and return when the payload itself exits.
fn reap_until_payload_exits(payload: libc::pid_t, mask: &libc::sigset_t) -> PayloadStatus {
    loop {
        let mut status: Option<PayloadStatus> = None;
        loop {
            let mut raw = 0;
            // SAFETY: raw is a valid int for the status.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == payload {
                status = Some(if libc::WIFSIGNALED(raw) {
                    PayloadStatus::Signaled(libc::WTERMSIG(raw))
                } else {
                    PayloadStatus::Exited(libc::WEXITSTATUS(raw))
                });
            }
        }
        if let Some(s) = status {
            return s;
        }
        // SAFETY: mask is a valid sigset; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(mask, std::ptr::null_mut()) };
        if sig > 0 && sig != libc::SIGCHLD {
            let _ = sys::kill(payload, sig);
        }
    }
}
