//! Parent side (host root): one sandbox's lifetime: its init's `clone`, the
//! wait loop (the channel, the launcher's signals, the health check), the git
//! publisher while it runs, the ready line, and the kill of an init that a
//! launcher error leaves (dropping a [`Sandbox`] never leaves one behind).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use super::channel::{ChannelError, FromInit, ParentEnd};
use super::network::{Network, Outbound};
use super::request::RunError;
use super::spec::PayloadStatus;
use crate::sys::{self, Errno, SysError};

/// How long the launcher polls for the init's exit once it has the payload's
/// status, when init has a CPU of its own ([`Sandbox::own_cpu`]): init exits
/// right after it sends the status, and waking a CPU that halted meanwhile
/// costs 0.1-0.2 ms on a VM.
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// Work the wait loop does once at a given time (what a short-lived payload
/// never needs, such as the disk monitor's thread).
pub(super) type Deferred<'a> = Option<(std::time::Instant, Box<dyn FnOnce() -> Result<(), RunError> + 'a>)>;

/// The launcher's signals, blocked and read from a signalfd so that they can be
/// forwarded into the sandbox instead of killing the launcher.
pub struct SignalGuard {
    fd: OwnedFd,
    old: libc::sigset_t,
}

const LAUNCHER_SIGNALS: [libc::c_int; 5] = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

impl SignalGuard {
    /// Block SIGCHLD (read from the signalfd): before the clone, so that an
    /// init that dies at once is still reaped. The stop signals come with
    /// [`Self::block_all`], once the launch no longer waits on its caller (a
    /// secret fd, the disk limits): until then they stop the launcher.
    pub(super) fn block_child_exit() -> Result<SignalGuard, RunError> {
        // An ignored SIGCHLD survives the exec that started us: the kernel
        // would then reap the init itself, and we would wait for it forever
        // and act on a pid that another process may get.
        // SAFETY: resetting one signal's disposition; no handler is involved.
        if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(RunError::Sys {
                what: "resetting SIGCHLD",
                source: SysError { call: "signal(SIGCHLD, SIG_DFL)".into(), errno: Errno::last() },
            });
        }
        let set = sys::child::sigset(&[libc::SIGCHLD]);
        // SAFETY: zeroed sigset_t is valid storage for the old mask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set and old are valid sigset_t values.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
            return Err(RunError::Setup("pthread_sigmask failed".into()));
        }
        // SAFETY: set is valid; -1 creates a new signalfd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            let source = SysError { call: "signalfd".into(), errno: Errno::last() };
            // SAFETY: restoring the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            return Err(RunError::Sys { what: "signalfd", source });
        }
        // SAFETY: fresh fd.
        Ok(SignalGuard { fd: unsafe { OwnedFd::from_raw_fd(fd) }, old })
    }

    /// Every launcher signal, blocked and read from the signalfd, to be
    /// forwarded into the sandbox.
    pub(super) fn block_all(&self) -> Result<(), RunError> {
        let set = sys::child::sigset(&LAUNCHER_SIGNALS);
        // SAFETY: set is a valid sigset_t; the old mask is not wanted.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(RunError::Setup("pthread_sigmask failed".into()));
        }
        // SAFETY: our signalfd and a valid set: this changes which signals it reads.
        if unsafe { libc::signalfd(self.fd.as_raw_fd(), &set, 0) } < 0 {
            return Err(RunError::Sys { what: "signalfd", source: SysError { call: "signalfd".into(), errno: Errno::last() } });
        }
        Ok(())
    }

    /// Next pending signal, if any.
    pub(super) fn next(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a correctly sized buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the mask saved in block().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// An init cloned at the launcher's start, before the command line and the
/// policy are read: it makes its network namespace (the longest step of its
/// own) while the launcher reads them, and its memory is a copy of the
/// launcher's before any of it (smaller, so cheaper to copy at the clone and
/// to tear down at its exit, and with nothing of the request in it). It waits
/// for its ids like a later one; dropped unused (bad input, another command),
/// it is killed and reaped.
pub struct EarlyInit {
    pub(super) signals: SignalGuard,
    pub(super) sandbox: Sandbox,
}

impl EarlyInit {
    /// The launcher's descriptors it holds (its channel, the signal descriptor).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        vec![self.signals.fd.as_raw_fd(), self.sandbox.channel.raw_fd()]
    }

    /// For `swarmcell run` as root; `None` (the launch clones later, and
    /// reports any error then) otherwise or when the clone fails.
    pub fn start() -> Option<EarlyInit> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // Root's supplementary groups (gid 0) must not reach the init.
        crate::sys::clear_groups().ok()?;
        let signals = SignalGuard::block_child_exit().ok()?;
        let sandbox = Sandbox::spawn(0).ok()?;
        crate::phases::mark("init cloned");
        Some(EarlyInit { signals, sandbox })
    }
}

/// A started sandbox init. Dropping it before it was reaped kills it: a launcher
/// error never leaves a sandbox behind.
pub(super) struct Sandbox {
    pub(super) pid: libc::pid_t,
    pub(super) host_uid: u32,
    /// The host uid the payload works for (the worktree's owner).
    pub(super) owner: u32,
    pub(super) channel: ParentEnd,
    pub(super) reaped: bool,
    /// Listeners inside the sandbox for outbound traffic, served once it runs.
    pub(super) outbound: Vec<(Outbound, std::net::TcpListener)>,
    /// The sandbox's network namespace (for the broker and health checks).
    pub(super) netns: Option<crate::net::broker::Netns>,
    /// Init was started on a CPU that was idle (see [`place_init`]): the
    /// handoffs between it and the launcher poll before they sleep.
    pub(super) own_cpu: bool,
}

impl Sandbox {
    /// Clone the sandbox init: it runs [`super::init::main`] on a copy of this
    /// process (no exec) and waits for its ids, then its spec (see
    /// [`super::channel`]).
    ///
    /// The launcher must be single-threaded here (checked): the child then runs
    /// ordinary code on a consistent copy of the launcher's memory, as after a
    /// `fork` of a single-threaded program.
    pub(super) fn spawn(host_uid: u32) -> Result<Sandbox, RunError> {
        // A thread joined just before (a git helper's reader) leaves the
        // thread group a moment after its join returns: wait that out briefly.
        let mut threads = 0;
        for _ in 0..50 {
            threads = sys::thread_count().map_err(|source| RunError::Sys { what: "counting the launcher's threads", source })?;
            if threads == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if threads != 1 {
            return Err(RunError::Setup(format!("the launcher has {threads} threads before cloning the sandbox init (it must have one)")));
        }
        let (parent_end, child_end) = sys::socketpair_seqpacket().map_err(|source| RunError::Sys { what: "creating the sandbox channel", source })?;
        let parent_fd = parent_end.as_raw_fd();
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
        let pid = match sys::child::clone_fork(crate::confine::ns::CLONE_FLAGS) {
            Ok(0) => {
                crate::phases::mark("init: clone returned");
                // Child, in the new namespaces: the parent-death signal before
                // anything else runs.
                // SAFETY: raw syscalls on prepared data; _exit on failure.
                unsafe {
                    libc::close(parent_fd);
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        libc::_exit(super::EXIT_LAUNCHER_ERROR.into());
                    }
                }
                super::init::main(child_end, allowed)
            }
            Ok(pid) => pid,
            Err(e) => {
                return Err(RunError::Namespaces(crate::confine::ns::diagnose_clone_failure(e.errno)));
            }
        };
        drop(child_end);
        let own_cpu = allowed.as_ref().is_some_and(|allowed| place_init(pid, allowed));
        Ok(Sandbox { pid, host_uid, owner: host_uid, channel: ParentEnd::new(parent_end), reaped: false, outbound: Vec::new(), netns: None, own_cpu })
    }

    /// Init's first message: its network namespace (it made the namespace
    /// itself, see `CLONE_FLAGS`), taken only if it is one owned by init's
    /// user namespace `userns`; or why it could not.
    pub(super) fn receive_network(&mut self, userns: &std::fs::File) -> Result<(), RunError> {
        // The stop signals may be blocked already: a stuck init does not hold
        // the launcher forever (making a network namespace takes milliseconds,
        // seconds on a host tearing hundreds down).
        if !self.channel.wait_readable(std::time::Duration::from_secs(60)) {
            return Err(RunError::Setup("the sandbox init made no network namespace in 60 s".into()));
        }
        let ns = match self.channel.recv_from_init() {
            Ok((FromInit::Network, Some(fd))) => fd,
            Ok((msg, _)) => {
                return Err(early_failure(msg).unwrap_or_else(|| ChannelError::Unexpected("a message before the network namespace".into()).into()));
            }
            Err(ChannelError::Closed) => {
                return Err(RunError::Setup(format!("sandbox init ended before it made its network namespace ({})", self.reap())));
            }
            Err(e) => return Err(e.into()),
        };
        let ns = crate::net::broker::Netns::from_fd(ns, userns).map_err(|e| RunError::Setup(format!("the sandbox's network namespace: {e}")))?;
        self.netns = Some(ns);
        Ok(())
    }

    /// Why an init that failed early is gone, if it said so (its first
    /// message); None if it did not (or sent nothing in a few seconds).
    pub(super) fn report_of_a_gone_init(&mut self) -> Option<RunError> {
        if !self.channel.wait_readable(std::time::Duration::from_secs(5)) {
            return None;
        }
        self.channel.recv_from_init().ok().and_then(|(msg, _)| early_failure(msg))
    }

    /// Wait for an init that is gone or going (it closed the channel): how it ended.
    fn reap(&mut self) -> String {
        let mut status = 0;
        // SAFETY: waiting for our own child, which has not been reaped.
        if self.reaped || unsafe { libc::waitpid(self.pid, &mut status, 0) } != self.pid {
            return "its exit status is unknown".into();
        }
        self.reaped = true;
        how_it_ended(status)
    }

    /// Poll the channel, the launcher's signals and the health check until init
    /// is gone. A stop signal is forwarded (init passes it to the payload) and,
    /// after `stop_timeout`, followed by SIGKILL.
    pub(super) fn wait(
        &mut self,
        signals: &SignalGuard,
        mut ready: Option<OwnedFd>,
        info: &ReadyInfo,
        network: &mut Network,
        stop_timeout: std::time::Duration,
        mut deferred: Deferred<'_>,
    ) -> Result<PayloadStatus, RunError> {
        let id = info.id;
        let mut status = None;
        let mut failure: Option<RunError> = None;
        let mut channel_open = true;
        let mut health_open = network.health.is_some();
        let mut running = false;
        let mut kill_at: Option<std::time::Instant> = None;
        let mut killed_after_stop_timeout = false;
        let mut init_status = 0;
        let mut exit_poll_until: Option<std::time::Instant> = None;
        while channel_open || !self.reaped {
            let next = [kill_at, deferred.as_ref().map(|d| d.0)].into_iter().flatten().min();
            let polling_for_exit = exit_poll_until.is_some_and(|t| std::time::Instant::now() < t);
            let timeout = if polling_for_exit {
                0
            } else {
                next.map_or(-1, |t| t.saturating_duration_since(std::time::Instant::now()).as_millis().min(i32::MAX as u128) as i32)
            };
            let mut pfds = vec![
                libc::pollfd { fd: signals.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: if channel_open { self.channel.raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: network.health.as_ref().filter(|_| health_open).map_or(-1, |h| h.done_fd()), events: libc::POLLIN, revents: 0 },
            ];
            let outbound = network.pending_outbound_fds();
            pfds.extend(outbound.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
            // SAFETY: pfds is a valid array of pollfds of this length.
            match unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) } {
                0 if polling_for_exit => {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                    continue;
                }
                n if n < 0 => {
                    if Errno::last() == Errno::EINTR {
                        continue;
                    }
                    return Err(RunError::Sys { what: "waiting for the sandbox", source: SysError { call: "poll".into(), errno: Errno::last() } });
                }
                _ => {}
            }
            if pfds[3..].iter().any(|p| p.revents != 0)
                && let Err(e) = network.serve_outbound()
                && failure.is_none()
            {
                failure = Some(e);
                let _ = sys::kill(self.pid, libc::SIGKILL);
            }
            if deferred.as_ref().is_some_and(|d| std::time::Instant::now() >= d.0)
                && let Some((_, work)) = deferred.take()
                && let Err(e) = work()
                && failure.is_none()
            {
                failure = Some(e);
                let _ = sys::kill(self.pid, libc::SIGKILL);
            }
            if kill_at.is_some_and(|t| std::time::Instant::now() >= t) && !self.reaped {
                tracing::warn!(sandbox = %id, "still running {} after SIGTERM; killing", crate::policy::units::HumanDuration(stop_timeout));
                let _ = sys::kill(self.pid, libc::SIGKILL);
                kill_at = None;
                killed_after_stop_timeout = true;
            }
            if pfds[1].revents != 0 {
                match self.channel.recv_from_init() {
                    Ok((FromInit::Running, notify)) => {
                        crate::phases::mark("payload running");
                        running = true;
                        network.on_running(notify);
                        if network.health.is_none() {
                            tracing::info!(sandbox = %id, "ready");
                            if let Some(fd) = ready.take() {
                                write_ready(fd, info, self.pid);
                            }
                        }
                    }
                    Ok((FromInit::Exited(s), _)) => {
                        crate::phases::mark("payload status received");
                        status = Some(s);
                        if self.own_cpu {
                            exit_poll_until = Some(std::time::Instant::now() + EXIT_POLL);
                        }
                    }
                    Ok((FromInit::Network | FromInit::NetworkRefused { .. }, _)) => {
                        failure.get_or_insert(ChannelError::Unexpected("a second network namespace".into()).into());
                        let _ = sys::kill(self.pid, libc::SIGKILL);
                    }
                    Ok((FromInit::SetupFailed { message }, _)) => failure = Some(RunError::Setup(format!("sandbox {id}: {message}"))),
                    Ok((FromInit::ExecFailed { path, errno }, _)) => {
                        let errno = Errno::from_raw(errno);
                        failure = Some(RunError::Exec { verb: if errno == Errno::ENOENT { "find" } else { "execute" }, path, errno });
                    }
                    Err(ChannelError::Closed) => channel_open = false,
                    Err(e) => {
                        failure.get_or_insert(e.into());
                        channel_open = false;
                    }
                }
            }
            if pfds[2].revents != 0
                && let Some(h) = &network.health
            {
                health_open = false;
                match h.result() {
                    Some(Ok(took)) if running || status.is_none() => {
                        crate::phases::mark("healthy");
                        tracing::info!(sandbox = %id, port = info.port, healthy_after_ms = took.as_millis() as u64, "ready");
                        if let Some(fd) = ready.take() {
                            write_ready(fd, info, self.pid);
                        }
                    }
                    Some(Err(e)) if !matches!(e, crate::net::health::HealthError::Cancelled) && status.is_none() && failure.is_none() => {
                        failure = Some(RunError::Health { id: id.to_string(), source: e });
                        let _ = sys::kill(self.pid, libc::SIGKILL);
                    }
                    _ => {}
                }
            }
            while let Some(sig) = signals.next() {
                if sig == libc::SIGCHLD {
                    // SAFETY: init_status is a valid int.
                    if !self.reaped && unsafe { libc::waitpid(self.pid, &mut init_status, libc::WNOHANG) } == self.pid {
                        crate::phases::mark("init reaped");
                        self.reaped = true;
                        if let Some(h) = &network.health {
                            h.cancel();
                        }
                    }
                } else if !self.reaped {
                    tracing::debug!(sandbox = %id, signal = sig, "forwarding signal");
                    let _ = sys::kill(self.pid, sig);
                    if [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT].contains(&sig) && kill_at.is_none() {
                        kill_at = Some(std::time::Instant::now() + stop_timeout);
                        if let Some(h) = &network.health {
                            h.cancel();
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if ready.is_some()
            && let Some(s) = status
            && super::events::has_sink()
        {
            let how = match s {
                PayloadStatus::Exited(c) => format!("exit status {c}"),
                PayloadStatus::Signaled(n) => format!("signal {n}"),
            };
            super::events::emit(super::events::Event::StartFailed { error: format!("sandbox {id}: the payload ended ({how}) before it was ready") });
        }
        if killed_after_stop_timeout && status.is_none() {
            return Ok(PayloadStatus::Signaled(libc::SIGKILL));
        }
        status.ok_or_else(|| {
            RunError::Setup(format!("sandbox {id}: init ended without reporting the payload's status ({})", how_it_ended(init_status)))
        })
    }
}

/// A `waitpid` status, in words.
fn how_it_ended(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

/// The error an init reports instead of its network namespace.
fn early_failure(msg: FromInit) -> Option<RunError> {
    match msg {
        FromInit::NetworkRefused { errno } => Some(RunError::Namespaces(crate::confine::ns::diagnose_netns_failure(Errno::from_raw(errno)))),
        FromInit::SetupFailed { message } => Some(RunError::Setup(format!("sandbox init: {message}"))),
        _ => None,
    }
}

/// Where the init runs, decided right after its clone; true when it was
/// placed on a CPU that no other task wanted.
///
/// A new child waits on its parent's CPU while the parent works on (over a
/// millisecond seen, in one launch of ten), so with another CPU idle the init
/// is moved there: the launcher and the init then work side by side. With
/// every other CPU busy (as many other runnable tasks as other CPUs) it is
/// left where the kernel put it: on a busy CPU it would wait for that CPU's
/// task, and the launch is faster with the two sharing the launcher's CPU
/// (measured with one CPU of two held by a busy loop: 1.6x bwrap's launch
/// time when moved, 1.25x when left). The init widens its affinity back to
/// `allowed` once it has its ids (sent after this).
fn place_init(pid: libc::pid_t, allowed: &nix::sched::CpuSet) -> bool {
    let cpus = sys::cpus_in(allowed).len();
    // Runnable tasks now, host-wide (`/proc/loadavg`'s fourth field, "R/T"):
    // the launcher and the new init among them.
    let others = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse::<usize>().ok())
        .map(|running| running.saturating_sub(2));
    if others.is_none_or(|others| others + 1 >= cpus) {
        return false;
    }
    // SAFETY: no arguments.
    let here = unsafe { libc::sched_getcpu() };
    let Ok(here) = usize::try_from(here) else { return false };
    let mut elsewhere = *allowed;
    if elsewhere.unset(here).is_err() {
        return false;
    }
    // Best effort: where the kernel refuses, the init starts where it is.
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &elsewhere).is_ok()
}

/// The publisher while the sandbox runs: the layer's branch tip is checked
/// every 500 ms (a small bounded read), so a commit reaches the host branch
/// within about a second.
pub(super) struct PublishWatch {
    pub(super) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<crate::git::publish::Publisher>>,
    /// Without a thread (it could not start), publishing happens at stop only.
    pub(super) fallback: Option<crate::git::publish::Publisher>,
}

impl PublishWatch {
    const PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

    pub(super) fn start(mut p: crate::git::publish::Publisher, again: impl FnOnce() -> crate::git::publish::Publisher) -> PublishWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("git-publish".into())
            .spawn(move || {
                let mut last_error = String::new();
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    match p.tick() {
                        // Logged once per distinct error, not every period.
                        Err(e) if e.to_string() != last_error => {
                            last_error = e.to_string();
                            tracing::warn!(event = "git_publish", error = %e, "publishing the agent's branch failed");
                        }
                        Err(_) => {}
                        Ok(_) => last_error.clear(),
                    }
                    std::thread::park_timeout(Self::PERIOD);
                }
                p
            })
            .ok();
        let fallback = thread.is_none().then(again);
        PublishWatch { stop, thread, fallback }
    }

    pub(super) fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let p = match self.thread.take() {
            Some(t) => {
                t.thread().unpark();
                t.join().ok()
            }
            None => self.fallback.take(),
        };
        if let Some(mut p) = p {
            p.finish();
        }
    }
}

impl Drop for PublishWatch {
    /// An early return of the launcher stops the thread (no last publish).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the ready line reports besides the pid.
pub(super) struct ReadyInfo<'a> {
    pub(super) id: &'a str,
    pub(super) port: Option<u16>,
    pub(super) cgroups: Vec<PathBuf>,
    /// Only for the requester, who holds the ready fd; never logged.
    pub(super) secret: Option<&'a str>,
}

pub(super) fn write_ready(fd: OwnedFd, info: &ReadyInfo, pid: libc::pid_t) {
    use std::io::Write;
    let mut line = serde_json::json!({ "id": info.id, "pid": pid, "port": info.port, "cgroups": info.cgroups });
    if let Some(secret) = info.secret {
        line["secret"] = secret.into();
    }
    let line = line.to_string() + "\n";
    let mut f = std::fs::File::from(fd);
    if let Err(e) = f.write_all(line.as_bytes()) {
        tracing::warn!(error = %e, "could not write the ready line to --ready-fd");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }
}
