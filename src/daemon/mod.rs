//! `swarmcell daemon`: the supervisor for many sandboxes on one host.
//!
//! A single-threaded loop (epoll) over its signals, the control socket and its
//! clients, the metrics listener and its scrapers, and per sandbox the ready
//! pipe, the output pipe and the health check in flight. Nothing in the loop
//! blocks on a peer: clients and health checks are non-blocking state machines
//! with deadlines, and the loop sleeps until a descriptor is ready or the next
//! deadline, so an idle daemon uses no CPU, and a wake-up costs what happened,
//! not the number of sandboxes. What it does block on, exactly: reaping a
//! launcher whose ready pipe closed (`start_failed`: at most 2 s, normally
//! none, since the pipe closes as it exits); the sweep of stale cgroups and
//! leases after a launcher was killed (`sweep_stale`: each stale cgroup is
//! killed and waited for, at most 5 s each, and only sandboxes whose launcher
//! died have one); local file I/O (records, at most 64 KiB of a log for `ctl
//! logs`, the audit log); and at shutdown, the stop grace of every sandbox.
//! git for `agent` and `agent_remove` (a checkout may take up to git's 60 s
//! deadline) runs in threads, which wake the loop through an eventfd.
//!
//! Each sandbox is a `swarmcell run` child with PR_SET_PDEATHSIG=SIGTERM, and a
//! record in the state directory. If the daemon dies, every sandbox shuts down
//! by itself; the next daemon ends any launcher still alive, removes stale
//! cgroups and leases, and relaunches the recorded sandboxes (or discards them:
//! `recover`). Requests are authorised by SO_PEERCRED and validated before
//! anything is done.
//!
//! Here: the state, start-up, recovery and the loop. `control`: clients and
//! scrapers; `lifecycle`: a sandbox from launch to removal; `records`: the
//! on-disk state; `poller`, `conn`, `health_probe`, `log_sink`,
//! `launcher_events` (each launcher's own events channel, the only source of
//! its audit events): the loop's non-blocking parts; `audit`, `metrics`,
//! `protocol`, `config`.

pub mod audit;
pub mod config;
mod conn;
mod control;
pub mod health_probe;
mod incident;
mod launcher_events;
mod lifecycle;
mod log_sink;
pub mod metrics;
mod poller;
pub mod protocol;
pub mod records;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use audit::Audit;
use config::{Config, Recover};
use conn::{Conn, Input, Phase};
use control::bind_control_socket;
pub use control::ctl;
use health_probe::Probe;
use log_sink::LogSink;
use poller::{IN, Poller, Watched};
use protocol::Request;
use records::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Restarting,
    Stopping,
}

/// What happens when a stopping sandbox's launcher has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterExit {
    Remove,
    Restart,
}

/// A sandbox's health checking, from its policy.
struct HealthSpec {
    interval: Duration,
    failures: u32,
    /// The request (path, and the sandbox's secret as basic auth), built once.
    request: std::sync::Arc<[u8]>,
    /// The payload's port inside the sandbox's network namespace.
    inner_port: u16,
    /// How long a start may take: the policy's health timeout plus [`START_MARGIN`].
    start_deadline: Duration,
}

struct Entry {
    rec: Record,
    health: HealthSpec,
    /// Names this sandbox's descriptors in the poller (see [`token`]).
    key: u64,
    child: Child,
    /// The launcher's ready line (non-blocking pipe), until it comes or the pipe closes.
    ready: Option<Watched<std::fs::File>>,
    /// The launcher's events (its own channel, never the payload's output).
    events: Option<launcher_events::EventPipe>,
    /// Why the current launcher failed, as it reported on its events channel.
    start_error: Option<String>,
    /// The sandbox's network namespace while it runs (health checks are made there).
    netns: Option<crate::net::broker::Netns>,
    /// The client waiting for this launch or stop.
    waiting: Option<u64>,
    info: Value,
    state: State,
    after_exit: AfterExit,
    restart_at: Option<Instant>,
    /// Starts in a row that never became healthy.
    failed_starts: u32,
    /// Health checks in a row that failed.
    failures: u32,
    next_health: Instant,
    probe: Option<Probe>,
    log: LogSink,
    /// When the current `swarmcell run` was started (launch latency).
    started: Instant,
    /// A stop in progress: SIGKILL after this, and who asked.
    stop_deadline: Option<Instant>,
    stop_by: Option<u32>,
    /// The broker's counters, shared with every launcher of this sandbox.
    broker: crate::net::broker_stats::SharedCounters,
    broker_fd: OwnedFd,
    /// Stopped at this instant unless renewed (`Record::lease_s`).
    lease_until: Option<Instant>,
    /// The last commit the launcher published: (branch, commit).
    published: Option<(String, String)>,
    /// Tripwires, and the frozen state (see `incident`).
    incident: incident::SandboxIncident,
}

impl Entry {
    /// When the loop must next act on this sandbox by itself: a health check
    /// (or the one in flight running out), a restart, a stop running out, or
    /// a start that never became healthy. Every state has one.
    fn deadline(&self) -> Option<Instant> {
        let frozen = self.incident.frozen.is_some();
        let own = match self.state {
            State::Running if frozen => self.probe.as_ref().map(|p| p.deadline),
            State::Running => Some(self.probe.as_ref().map_or(self.next_health, |p| p.deadline)),
            State::Restarting => self.restart_at,
            State::Stopping => return self.stop_deadline,
            State::Starting => Some(self.started + self.health.start_deadline),
        };
        // No lease ends a frozen sandbox (kept for investigation), nor a
        // launch still answered to its requester (see `tick`).
        let lease = if frozen || (self.state == State::Starting && self.waiting.is_some()) { None } else { self.lease_until };
        match (own, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// How long a stopping sandbox gets before its launcher is killed (its own
/// --stop-timeout, 5 s, is inside this).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A starting sandbox gets its policy's health timeout plus this (for the
/// launcher's own set-up on a busy host) before its launcher is killed.
const START_MARGIN: Duration = Duration::from_secs(10);
/// Starts in a row that may fail before a sandbox is given up.
const MAX_FAILED_STARTS: u32 = 5;
/// Most control clients and metrics scrapers being read or answered at once
/// (each holds a descriptor and up to MAX_REQUEST bytes); more are closed.
const MAX_CLIENTS: usize = 2048;
/// Largest metrics request head read.
const MAX_SCRAPE_REQUEST: usize = 8 * 1024;

/// Poller tokens: three fixed ones, then a kind in the top byte and a key
/// (a sandbox's `key`, or a client's id) below it.
const T_SIGNALS: u64 = 0;
const T_CONTROL: u64 = 1;
const T_METRICS: u64 = 2;
const T_DENIALS: u64 = 3;
const T_WORKTREES: u64 = 4;
const READY: u64 = 1 << 56;
const LOG: u64 = 2 << 56;
const PROBE: u64 = 3 << 56;
const CLIENT: u64 = 4 << 56;
const SCRAPER: u64 = 5 << 56;
const EVENTS: u64 = 6 << 56;
const KEY: u64 = (1 << 56) - 1;

fn token(kind: u64, key: u64) -> u64 {
    kind | (key & KEY)
}

pub struct Daemon {
    cfg: Config,
    poller: Rc<Poller>,
    /// Sandbox ids by their `key`.
    by_key: HashMap<u64, String>,
    exe: PathBuf,
    listener: UnixListener,
    metrics: Option<std::net::TcpListener>,
    audit: Audit,
    sandboxes: BTreeMap<String, Entry>,
    clients: BTreeMap<u64, Conn<UnixStream>>,
    scrapers: BTreeMap<u64, Conn<std::net::TcpStream>>,
    next_conn: u64,
    counters: metrics::Counters,
    /// The config's `policy` (or the built-in one), for launches that name none.
    default_policy: crate::policy::Policy,
    /// Held while the daemon runs: one daemon per state directory.
    _instance: crate::host::lease::Lease,
    /// A SIGCHLD came: look for launchers that exited (only then, so that a
    /// wake-up costs no syscall per sandbox).
    reap_due: bool,
    /// A launcher was killed: sweep stale cgroups and leases (the launchers
    /// the daemon starts do not sweep at every start, see `spawn`).
    stale_due: bool,
    /// The daemon's own network namespace, to come back to after creating a
    /// health check's socket in a sandbox's.
    home_netns: crate::net::broker::Netns,
    /// Every sandbox's denials (kernel records, egress, ingress): see `incident`.
    denials: crate::denials::hub::Hub,
    counters_tripwires: u64,
    /// Forensic bundles being written (see `incident`).
    bundles: Vec<incident::BundleJob>,
    /// Forensic bundles waiting for a worker.
    bundle_queue: std::collections::VecDeque<crate::incident::bundle::Input>,
    /// `agent` requests whose worktree a thread is making (see `control`).
    creating: Vec<WorktreeJob>,
    /// `agent_remove` requests in a thread: (requester, agent).
    removing: Vec<(u32, String)>,
    made_tx: std::sync::mpsc::Sender<GitDone>,
    made_rx: std::sync::mpsc::Receiver<GitDone>,
    /// An eventfd the worktree threads wake the loop with.
    made_wake: OwnedFd,
    /// More clients waiting for a stop in progress (the first is the entry's `waiting`).
    stop_waiters: HashMap<String, Vec<u64>>,
    /// Sandboxes removed lately, oldest first: a retried `stop` or a
    /// `status` of its requester still gets the agent's last commit.
    gone: std::collections::VecDeque<Gone>,
}

/// What is kept of a removed sandbox, [`GONE_KEEP`] long.
struct Gone {
    at: Instant,
    id: String,
    uid: u32,
    status: String,
    published: Option<(String, String)>,
}

/// How long a removed sandbox's last answer is kept, and how many at most.
const GONE_KEEP: Duration = Duration::from_secs(300);
const MAX_GONE: usize = 4096;
/// Most clients waiting for the same stop besides the first.
const MAX_STOP_WAITERS: usize = 16;

/// A round of the loop longer than this moves every lease on by its length.
const LEASE_STALL: Duration = Duration::from_millis(500);

/// Most worktrees made at once (each a thread running git).
const MAX_CREATING: usize = 16;

/// An `agent` request waiting for its worktree.
struct WorktreeJob {
    uid: u32,
    agent: String,
    task: String,
    path: PathBuf,
    branch: Option<String>,
    policy: (Option<PathBuf>, crate::policy::Policy),
    lease_s: Option<u64>,
    cid: u64,
}

/// A git thread's result.
enum GitDone {
    /// A worktree made: (agent, task, requester, the worktree and repository or why not).
    Made(String, String, u32, Result<(PathBuf, PathBuf), String>),
    /// An `agent_remove`: the client to answer, the worktree removed or why not.
    Removed { cid: u64, uid: u32, agent: String, result: Result<PathBuf, String> },
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let policy = match &cfg.policy {
            Some(p) => crate::policy::Policy::load(p).map_err(|e| e.to_string())?,
            None => crate::policy::Policy::builtin(),
        };
        crate::host::lease::ensure_private_dir(&cfg.state_dir).map_err(|e| e.to_string())?;
        let instance = crate::host::lease::Lease::try_acquire(&cfg.state_dir.join("daemon.lock"))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("another swarmcell daemon uses the state directory {}", cfg.state_dir.display()))?;
        crate::host::lease::ensure_private_dir(&cfg.log_dir).map_err(|e| e.to_string())?;
        let mut audit = Audit::open(&cfg.audit_log)?;
        let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
        let home_netns = crate::net::broker::Netns::current().map_err(|e| format!("the daemon's network namespace: {e}"))?;
        let listener = bind_control_socket(&cfg)?;
        let metrics = if cfg.metrics.is_empty() {
            None
        } else {
            let l = std::net::TcpListener::bind(&cfg.metrics).map_err(|e| format!("metrics {}: {e}", cfg.metrics))?;
            l.set_nonblocking(true).map_err(|e| format!("metrics {}: {e}", cfg.metrics))?;
            Some(l)
        };
        audit.event("server_startup", json!({ "socket": cfg.socket, "pid": std::process::id(), "outcome": "ok" }));
        let denials = crate::denials::hub::Hub::start(cfg.kernel_audit)?;
        // Said once, clearly: what the denial stream will and will not contain.
        tracing::warn!("{}", denials.kernel);
        audit.event("kernel_audit", json!({ "landlock": denials.landlock, "seccomp": denials.seccomp, "detail": denials.kernel, "outcome": "ok" }));
        let (made_tx, made_rx) = std::sync::mpsc::channel();
        // SAFETY: a fresh eventfd; checked below.
        let made_wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if made_wake < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fd, ours alone.
        let made_wake = unsafe { OwnedFd::from_raw_fd(made_wake) };
        let mut d = Daemon {
            poller,
            by_key: HashMap::new(),
            exe,
            listener,
            metrics,
            audit,
            sandboxes: BTreeMap::new(),
            clients: BTreeMap::new(),
            scrapers: BTreeMap::new(),
            next_conn: 0,
            counters: metrics::Counters::default(),
            default_policy: policy,
            _instance: instance,
            reap_due: false,
            stale_due: false,
            home_netns,
            denials,
            counters_tripwires: 0,
            bundles: Vec::new(),
            bundle_queue: std::collections::VecDeque::new(),
            creating: Vec::new(),
            removing: Vec::new(),
            made_tx,
            made_rx,
            made_wake,
            stop_waiters: HashMap::new(),
            gone: std::collections::VecDeque::new(),
            cfg,
        };
        d.recover();
        Ok(d)
    }

    /// After a crash: end the launchers the records name that still run, remove
    /// stale cgroups and leases, then relaunch or forget the recorded sandboxes.
    fn recover(&mut self) {
        let (records, bad) = records::load_all(&self.cfg.state_dir);
        if !bad.is_empty() {
            self.audit.event("stale_cleanup", json!({ "unreadable_records": bad, "outcome": "removed" }));
        }
        let ended = records::end_launchers(&records, STOP_GRACE);
        self.sweep_stale();
        for mut rec in records {
            let was_running = ended.contains(&rec.id);
            // Checked again: the config or the policy may have changed since.
            let checked = self.policy_for(rec.policy.as_deref()).and_then(|(_, policy)| {
                let wt = protocol::check_launch(
                    &rec.worktree,
                    rec.agent.as_deref(),
                    rec.task.as_deref(),
                    &rec.argv,
                    &self.cfg.worktree_base,
                    &self.cfg.commands,
                )?;
                Ok((wt, policy))
            });
            let fields = json!({ "id": rec.id, "agent": rec.agent, "uid": rec.uid, "worktree": rec.worktree, "launcher_was_running": was_running });
            let outcome = match (self.cfg.recover, checked) {
                (Recover::Discard, _) => "discarded".to_string(),
                (Recover::Relaunch, Err(e)) => format!("refused: {e}"),
                (Recover::Relaunch, Ok((wt, policy))) => {
                    rec.worktree = wt;
                    rec.launcher = None;
                    match self.add(rec.clone(), &policy, None) {
                        Ok(()) => "relaunched".to_string(),
                        Err(e) => format!("failed: {e}"),
                    }
                }
            };
            if outcome != "relaunched" {
                records::remove(&self.cfg.state_dir, &rec.id);
            }
            let mut fields = fields;
            fields["outcome"] = json!(outcome);
            self.audit.event("sandbox_recovered", fields);
        }
    }

    /// Remove the cgroups and leases of sandboxes whose launcher is gone.
    fn sweep_stale(&mut self) {
        self.stale_due = false;
        let Ok(layout) = crate::host::cgroups::Layout::detect() else { return };
        match crate::host::cgroups::gc(&layout, "swarmcell", Path::new(crate::host::lease::HOST_STATE_DIR)) {
            Ok(ids) if !ids.is_empty() => self.audit.event("stale_cleanup", json!({ "removed": ids, "outcome": "removed" })),
            Ok(_) => {}
            Err(e) => self.audit.event("stale_cleanup", json!({ "outcome": "failed", "error": e.to_string() })),
        }
    }

    /// Serve until SIGTERM or SIGINT; then stop every sandbox.
    pub fn serve(&mut self) -> Result<(), String> {
        raise_nofile();
        let set = crate::sys::child::sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP]);
        crate::sys::child::set_sigmask(libc::SIG_BLOCK, &set).map_err(|e| e.to_string())?;
        // SAFETY: a signalfd for the blocked signals.
        let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if sfd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fd.
        let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
        let poller = self.poller.clone();
        let watch = |fd: RawFd, t: u64| poller.add_forever(fd, IN, t).map_err(|e| format!("epoll: {e}"));
        watch(sfd.as_raw_fd(), T_SIGNALS)?;
        watch(self.listener.as_raw_fd(), T_CONTROL)?;
        if let Some(m) = &self.metrics {
            watch(m.as_raw_fd(), T_METRICS)?;
        }
        watch(self.denials.wake_fd(), T_DENIALS)?;
        watch(self.made_wake.as_raw_fd(), T_WORKTREES)?;
        let mut ready = Vec::new();
        loop {
            // Rounded up: waking before a deadline would only loop back here.
            let timeout = self.next_due().map_or(-1, |t| t.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).min(60_000) as i32);
            poller.wait(timeout, &mut ready);
            let woke = Instant::now();
            for &t in &ready {
                match t {
                    T_SIGNALS => {
                        let signals = drain_signals(&sfd);
                        if signals.stop {
                            self.shutdown();
                            return Ok(());
                        }
                        self.reap_due |= signals.child;
                        if signals.reopen {
                            self.reopen_audit_log();
                        }
                    }
                    T_CONTROL => self.accept_clients(),
                    T_WORKTREES => self.worktrees_made(),
                    T_METRICS => self.accept_scrapers(),
                    T_DENIALS => {
                        self.denials.woken();
                        self.flush_denials();
                        self.poll_bundles(false);
                    }
                    _ if t & !KEY == CLIENT => self.on_client(t & KEY),
                    _ if t & !KEY == SCRAPER => self.on_scraper(t & KEY),
                    _ => {
                        // A sandbox's descriptor (it may have gone earlier in this round).
                        let Some(id) = self.by_key.get(&(t & KEY)).cloned() else { continue };
                        match t & !KEY {
                            READY => self.on_ready(&id),
                            LOG => {
                                if let Some(e) = self.sandboxes.get_mut(&id) {
                                    e.log.drain();
                                }
                            }
                            EVENTS => self.on_events(&id),
                            PROBE => {
                                let result = self.sandboxes.get_mut(&id).and_then(|e| e.probe.as_mut()).and_then(Probe::advance);
                                if let Some(ok) = result {
                                    self.health_result(&id, ok);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            // A lease measures its requester's silence, not the daemon's:
            // renewals that queued while the loop was busy (a sweep, local
            // I/O) have not been read yet, so the leases are moved on by the stall.
            self.extend_leases(woke.elapsed());
            self.tick();
            if self.stale_due {
                let t = Instant::now();
                self.sweep_stale();
                self.extend_leases(t.elapsed());
            }
        }
    }

    fn extend_leases(&mut self, busy: Duration) {
        if busy > LEASE_STALL {
            for e in self.sandboxes.values_mut() {
                e.lease_until = e.lease_until.map(|t| t + busy);
            }
        }
    }

    fn conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// SIGHUP: a new audit log file at the same path (the old one was moved
    /// away, e.g. by logrotate). On failure the old file stays in use.
    fn reopen_audit_log(&mut self) {
        match Audit::open(&self.cfg.audit_log) {
            Ok(mut a) => {
                a.take_recent(&mut self.audit);
                self.audit = a;
                self.audit.event("audit_reopened", json!({ "pid": std::process::id(), "outcome": "ok" }));
            }
            Err(e) => self.audit.event("audit_reopened", json!({ "outcome": "failed", "error": e })),
        }
    }
}

#[derive(Default)]
struct Signals {
    /// SIGTERM or SIGINT.
    stop: bool,
    /// SIGCHLD.
    child: bool,
    /// SIGHUP: reopen the audit log (after logrotate moved it).
    reopen: bool,
}

/// Read every pending signal.
fn drain_signals(sfd: &OwnedFd) -> Signals {
    let mut got = Signals::default();
    loop {
        // SAFETY: signalfd_siginfo is plain data; read into it.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a correctly sized buffer.
        let n = unsafe { libc::read(sfd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n != size as isize {
            return got;
        }
        let signo = info.ssi_signo as libc::c_int;
        got.stop |= signo == libc::SIGTERM || signo == libc::SIGINT;
        got.child |= signo == libc::SIGCHLD;
        got.reopen |= signo == libc::SIGHUP;
    }
}

/// A few descriptors per sandbox: lift the soft limit to the hard one.
fn raise_nofile() {
    // SAFETY: rlimit is plain data; get then set our own limit.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
