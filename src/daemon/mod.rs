//! `swarmcell daemon`: the supervisor for many sandboxes on one host.
//!
//! A single-threaded loop (epoll) over its signals, the control socket and its
//! clients, the metrics listener and its scrapers, and per sandbox the ready
//! pipe, the output pipe and the health check in flight. Nothing in the loop
//! blocks on a peer: clients and health checks are non-blocking state machines
//! with deadlines, and the loop sleeps until a descriptor is ready or the next
//! deadline, so an idle daemon uses no CPU, and a wake-up costs what happened,
//! not the number of sandboxes.
//!
//! Each sandbox is a `swarmcell run` child with PR_SET_PDEATHSIG=SIGTERM, and a
//! record in the state directory. If the daemon dies, every sandbox shuts down
//! by itself; the next daemon ends any launcher still alive, removes stale
//! cgroups and leases, and relaunches the recorded sandboxes (or discards them:
//! `recover`). Requests are authorised by SO_PEERCRED and validated before
//! anything is done.

pub mod audit;
pub mod config;
mod conn;
pub mod health_probe;
mod log_sink;
pub mod metrics;
mod poller;
pub mod protocol;
pub mod records;

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
    path: String,
}

struct Entry {
    rec: Record,
    health: HealthSpec,
    /// Names this sandbox's descriptors in the poller (see [`token`]).
    key: u64,
    child: Child,
    /// The launcher's ready line (non-blocking pipe), until it comes or the pipe closes.
    ready: Option<Watched<std::fs::File>>,
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
    broker: crate::broker_stats::SharedCounters,
    broker_fd: OwnedFd,
}

/// How long a stopping sandbox gets before its launcher is killed (its own
/// --stop-timeout, 5 s, is inside this).
const STOP_GRACE: Duration = Duration::from_secs(10);
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
const READY: u64 = 1 << 56;
const LOG: u64 = 2 << 56;
const PROBE: u64 = 3 << 56;
const CLIENT: u64 = 4 << 56;
const SCRAPER: u64 = 5 << 56;
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
    _instance: crate::lease::Lease,
    /// A SIGCHLD came: look for launchers that exited (only then, so that a
    /// wake-up costs no syscall per sandbox).
    reap_due: bool,
}

fn peer_cred(s: &UnixStream) -> Option<libc::ucred> {
    // SAFETY: ucred is plain data; getsockopt fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid pointers and length.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    (r == 0).then_some(cred)
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let policy = match &cfg.policy {
            Some(p) => crate::policy::Policy::load(p).map_err(|e| e.to_string())?,
            None => crate::policy::Policy::builtin(),
        };
        crate::lease::ensure_private_dir(&cfg.state_dir).map_err(|e| e.to_string())?;
        let instance = crate::lease::Lease::try_acquire(&cfg.state_dir.join("daemon.lock"))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("another swarmcell daemon uses the state directory {}", cfg.state_dir.display()))?;
        crate::lease::ensure_private_dir(&cfg.log_dir).map_err(|e| e.to_string())?;
        let mut audit = Audit::open(&cfg.audit_log)?;
        let poller = Poller::new().map_err(|e| format!("epoll: {e}"))?;
        let listener = bind_control_socket(&cfg)?;
        let metrics = if cfg.metrics.is_empty() {
            None
        } else {
            let l = std::net::TcpListener::bind(&cfg.metrics).map_err(|e| format!("metrics {}: {e}", cfg.metrics))?;
            l.set_nonblocking(true).map_err(|e| format!("metrics {}: {e}", cfg.metrics))?;
            Some(l)
        };
        audit.event("server_startup", json!({ "socket": cfg.socket, "pid": std::process::id(), "outcome": "ok" }));
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
        if let Ok(layout) = crate::cgroups::Layout::detect() {
            match crate::cgroups::gc(&layout, "swarmcell", Path::new(crate::lease::HOST_STATE_DIR)) {
                Ok(ids) if !ids.is_empty() => self.audit.event("stale_cleanup", json!({ "removed": ids, "outcome": "removed" })),
                Ok(_) => {}
                Err(e) => self.audit.event("stale_cleanup", json!({ "outcome": "failed", "error": e.to_string() })),
            }
        }
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

    /// Serve until SIGTERM or SIGINT; then stop every sandbox.
    pub fn serve(&mut self) -> Result<(), String> {
        raise_nofile();
        let set = crate::sys::sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP]);
        crate::sys::set_sigmask(libc::SIG_BLOCK, &set).map_err(|e| e.to_string())?;
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
        let mut ready = Vec::new();
        loop {
            // Rounded up: waking before a deadline would only loop back here.
            let timeout = self.next_due().map_or(-1, |t| t.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).min(60_000) as i32);
            poller.wait(timeout, &mut ready);
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
                    T_METRICS => self.accept_scrapers(),
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
            self.tick();
        }
    }

    fn conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn accept_clients(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            let cred = peer_cred(&s);
            let allowed = cred.is_some_and(|c| self.cfg.allowed_uids.contains(&c.uid) || self.cfg.allowed_gids.contains(&c.gid));
            if !allowed {
                self.counters.auth_denied += 1;
                self.audit.event(
                    "auth_denied",
                    json!({ "uid": cred.map(|c| c.uid), "gid": cred.map(|c| c.gid), "pid": cred.map(|c| c.pid), "outcome": "refused" }),
                );
                // Answered without being read; a peer that does not read loses the answer.
                let _ = s.set_nonblocking(true);
                let _ = writeln!(&s, "{}", json!({ "ok": false, "error": "not authorised" }));
                continue;
            }
            // (Clients waiting for a launch or stop are bounded by max_sandboxes.)
            if self.clients.values().filter(|c| *c.phase() != Phase::Waiting).count() >= MAX_CLIENTS {
                let _ = s.set_nonblocking(true);
                let _ = writeln!(&s, "{}", json!({ "ok": false, "error": "too many clients; try again" }));
                continue;
            }
            let uid = cred.map_or(u32::MAX, |c| c.uid);
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let cid = self.conn_id();
            if let Ok(c) = Conn::new(&self.poller, s, uid, token(CLIENT, cid)) {
                self.clients.insert(cid, c);
                // The request is often there already.
                self.on_client(cid);
            }
        }
    }

    fn on_client(&mut self, cid: u64) {
        let Some(c) = self.clients.get_mut(&cid) else { return };
        let uid = c.uid;
        match c.phase() {
            Phase::Replying => {
                if c.flush() {
                    self.clients.remove(&cid);
                }
            }
            Phase::Waiting => {}
            Phase::Reading => match c.read(protocol::MAX_REQUEST, b"\n") {
                Input::Partial => {}
                Input::Closed => {
                    self.clients.remove(&cid);
                }
                Input::Bad(why) => {
                    self.audit.event("policy_violation", json!({ "uid": uid, "error": why, "outcome": "refused" }));
                    let msg = format!("{why} (a request is one JSON line of at most {} bytes)", protocol::MAX_REQUEST);
                    self.answer(cid, json!({ "ok": false, "error": msg }));
                }
                Input::Line(line) => match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => self.handle(req, cid, uid),
                    Err(e) => {
                        self.audit.event("policy_violation", json!({ "uid": uid, "error": e.to_string(), "outcome": "refused" }));
                        self.answer(cid, json!({ "ok": false, "error": format!("bad request: {e}") }));
                    }
                },
            },
        }
    }

    /// Send the one-line reply to client `cid` (if it is still there).
    fn answer(&mut self, cid: u64, v: Value) {
        if let Some(c) = self.clients.get_mut(&cid)
            && c.reply(format!("{v}\n").into_bytes())
        {
            self.clients.remove(&cid);
        }
    }

    fn handle(&mut self, req: Request, cid: u64, uid: u32) {
        match req {
            Request::Launch { worktree, agent, task, argv, policy } => {
                let checked = self.policy_for(policy.as_deref()).and_then(|(policy_path, policy)| {
                    // No command: the policy's own (`process.command`), checked like any other.
                    let argv = if argv.is_empty() { policy.process.command.clone() } else { argv };
                    let wt =
                        protocol::check_launch(&worktree, agent.as_deref(), task.as_deref(), &argv, &self.cfg.worktree_base, &self.cfg.commands)?;
                    Ok((wt, argv, policy_path, policy))
                });
                let (wt, argv, policy_path, policy) = match checked {
                    Ok(c) => c,
                    Err(e) => {
                        self.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "error": e, "outcome": "refused" }));
                        return self.answer(cid, json!({ "ok": false, "error": e }));
                    }
                };
                if self.sandboxes.len() >= self.cfg.max_sandboxes {
                    let e = format!("{} sandboxes are running (max_sandboxes)", self.sandboxes.len());
                    return self.answer(cid, json!({ "ok": false, "error": e }));
                }
                let id = loop {
                    let id = format!("d-{:08x}", crate::launch::random_u32());
                    if !self.sandboxes.contains_key(&id) {
                        break id;
                    }
                };
                let rec =
                    Record { id: id.clone(), agent, task, worktree: wt, argv, policy: policy_path, uid, port: None, restarts: 0, launcher: None };
                match self.add(rec, &policy, Some(cid)) {
                    Ok(()) => {
                        if let Some(c) = self.clients.get_mut(&cid) {
                            c.wait();
                        }
                    }
                    Err(e) => self.answer(cid, json!({ "ok": false, "error": e })),
                }
            }
            Request::Stop { id } => match self.sandboxes.get_mut(&id) {
                // Answered when the sandbox is gone (see `tick`).
                Some(e) if e.state != State::Stopping || e.after_exit == AfterExit::Restart => {
                    e.stop_by = Some(uid);
                    let launching = e.waiting.replace(cid);
                    if let Some(l) = launching {
                        self.answer(l, json!({ "ok": false, "error": format!("sandbox {id} was stopped before it was ready") }));
                    }
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.wait();
                    }
                    self.begin_stop(&id, AfterExit::Remove);
                }
                Some(_) => self.answer(cid, json!({ "ok": false, "error": format!("sandbox {id} is already stopping") })),
                None => self.answer(cid, json!({ "ok": false, "error": format!("no sandbox {id}") })),
            },
            Request::List => {
                let list = self.list();
                self.answer(cid, json!({ "ok": true, "sandboxes": list }));
            }
            Request::Inspect { id } => {
                let pid = self.sandboxes.get(&id).filter(|e| e.state == State::Running).and_then(|e| e.info["pid"].as_i64());
                let v = match pid.map(|p| crate::inspect::find(&p.to_string())) {
                    Some(Ok((init, payload))) => json!({ "ok": true, "inspect": crate::inspect::report(init, payload) }),
                    Some(Err(e)) => json!({ "ok": false, "error": e }),
                    None => json!({ "ok": false, "error": format!("no running sandbox {id}") }),
                };
                self.answer(cid, v);
            }
            Request::Logs { id } => {
                let v = match self.sandboxes.get_mut(&id) {
                    Some(e) => {
                        e.log.drain();
                        json!({ "ok": true, "log": String::from_utf8_lossy(&e.log.tail(64 * 1024)) })
                    }
                    None => json!({ "ok": false, "error": format!("no sandbox {id}") }),
                };
                self.answer(cid, v);
            }
        }
    }

    /// The policy a launch names (it must be one of the config's `policies`,
    /// or its `policy`), or the default one: (its path, the policy).
    fn policy_for(&self, requested: Option<&Path>) -> Result<(Option<PathBuf>, crate::policy::Policy), String> {
        let Some(requested) = requested else { return Ok((self.cfg.policy.clone(), self.default_policy.clone())) };
        let canonical = requested.canonicalize().map_err(|e| format!("policy {}: {e}", requested.display()))?;
        let allowed = self.cfg.policies.iter().chain(&self.cfg.policy).any(|p| p.canonicalize().is_ok_and(|p| p == canonical));
        if !allowed {
            return Err(format!("policy {} is not one the daemon's config allows (`policies`)", requested.display()));
        }
        let policy = crate::policy::Policy::load(&canonical).map_err(|e| e.to_string())?;
        Ok((Some(canonical), policy))
    }

    fn list(&self) -> Vec<Value> {
        self.sandboxes
            .iter()
            .map(|(id, e)| {
                json!({ "id": id, "state": format!("{:?}", e.state).to_lowercase(), "agent": e.rec.agent, "task": e.rec.task,
                        "worktree": e.rec.worktree, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"],
                        "restarts": e.rec.restarts })
            })
            .collect()
    }

    /// Start managing a sandbox: its counters page, its log, its first launcher
    /// and its record. `waiting` is the client to answer when it is healthy.
    fn add(&mut self, mut rec: Record, policy: &crate::policy::Policy, waiting: Option<u64>) -> Result<(), String> {
        // Secrets reach a sandbox only by name, through the policy's env
        // allowlist; each hand-over is audited (the value never is).
        for name in policy.process.env.iter().filter(|n| std::env::var_os(n).is_some()) {
            self.audit.event("secret_access", json!({ "id": rec.id, "agent": rec.agent, "name": name, "uid": rec.uid, "outcome": "passed" }));
        }
        let (broker, broker_fd) = crate::broker_stats::SharedCounters::create().map_err(|e| format!("broker counters: {e}"))?;
        let key = self.conn_id();
        let log =
            LogSink::new(&self.poller, token(LOG, key), self.cfg.log_dir.join(format!("{}.log", rec.id)), self.cfg.log_max.0.unwrap_or(u64::MAX))
                .map_err(|e| format!("sandbox log in {}: {e}", self.cfg.log_dir.display()))?;
        let (child, ready) = match self.spawn(&rec, &log, &broker_fd, key) {
            Ok(s) => s,
            Err(e) => {
                log.remove();
                return Err(e);
            }
        };
        rec.launcher = records::Process::of(child.id() as i32);
        if let Err(e) = records::save(&self.cfg.state_dir, &rec) {
            // Without a record the sandbox could not be recovered: do not run it.
            self.audit.event("sandbox_launch", json!({ "id": rec.id, "agent": rec.agent, "uid": rec.uid, "outcome": "failed", "error": e }));
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            log.remove();
            return Err(e);
        }
        self.counters.launches += 1;
        let now = Instant::now();
        let health = HealthSpec { interval: policy.health.interval.0, failures: policy.health.failures, path: policy.health.path.clone() };
        self.by_key.insert(key, rec.id.clone());
        self.sandboxes.insert(
            rec.id.clone(),
            Entry {
                rec,
                key,
                next_health: now + health.interval,
                health,
                child,
                ready: Some(ready),
                waiting,
                info: Value::Null,
                state: State::Starting,
                after_exit: AfterExit::Remove,
                restart_at: None,
                failed_starts: 0,
                failures: 0,
                probe: None,
                log,
                started: now,
                stop_deadline: None,
                stop_by: None,
                broker,
                broker_fd,
            },
        );
        Ok(())
    }

    /// `swarmcell run --port auto --ready-fd 3 --stats-fd 4 ...` for one sandbox,
    /// asking for its previous port again when it had one.
    fn spawn(&self, rec: &Record, log: &LogSink, broker_fd: &OwnedFd, key: u64) -> Result<(Child, Watched<std::fs::File>), String> {
        let (r, w) = std::io::pipe().map_err(|e| format!("ready pipe: {e}"))?;
        crate::sys::set_nonblocking(r.as_raw_fd()).map_err(|e| format!("ready pipe: {e}"))?;
        let r = Watched::new(&self.poller, std::fs::File::from(OwnedFd::from(r)), IN, token(READY, key)).map_err(|e| format!("epoll: {e}"))?;
        // Above 4, so that installing fds 3 and 4 in the child cannot overwrite either.
        let w = crate::sys::dup_at_least(w.as_raw_fd(), 10).map_err(|e| e.to_string())?;
        let stats = crate::sys::dup_at_least(broker_fd.as_raw_fd(), 10).map_err(|e| e.to_string())?;
        let (wfd, sfd) = (w.as_raw_fd(), stats.as_raw_fd());
        let out = |what| log.writer.try_clone().map_err(|e| format!("sandbox log {what}: {e}"));
        let mut c = Command::new(&self.exe);
        c.args(["run", "--port", "auto", "--ready-fd", "3", "--stats-fd", "4", "--worktree"]).arg(&rec.worktree);
        if let Some(p) = rec.port {
            c.args(["--prefer-port", &p.to_string()]);
        }
        if let Some(p) = rec.policy.as_ref().or(self.cfg.policy.as_ref()) {
            c.arg("--policy").arg(p);
        }
        c.arg("--").args(&rec.argv);
        c.stdin(Stdio::null()).stdout(out("stdout")?).stderr(out("stderr")?);
        let daemon = std::process::id() as libc::pid_t;
        // SAFETY: dup2, fcntl, prctl and getppid are async-signal-safe. The
        // parent-death signal ends the sandbox if the daemon dies (the daemon is
        // single-threaded, so the "parent" thread lives as long as the daemon);
        // the getppid check closes the window in which the daemon died before
        // the signal was armed.
        unsafe {
            c.pre_exec(move || {
                crate::sys::install_fd_for_exec(wfd, 3)?;
                crate::sys::install_fd_for_exec(sfd, 4)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != daemon {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| format!("starting swarmcell run: {e}"))?;
        Ok((child, r))
    }

    fn on_ready(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let Some(pipe) = e.ready.as_mut() else { return };
        // The launcher writes its line in one write (< PIPE_BUF), then closes the pipe.
        let mut line = [0u8; 4096];
        let n = match pipe.read(&mut line) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        e.ready = None;
        let restart = e.rec.restarts > 0;
        let info = match serde_json::from_slice::<Value>(line[..n].trim_ascii()) {
            Ok(info) if n > 0 => info,
            _ => return self.start_failed(id),
        };
        self.counters.observe_launch(e.started.elapsed().as_secs_f64());
        e.rec.port = info["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        e.info = info;
        e.state = State::Running;
        e.failures = 0;
        e.failed_starts = 0;
        // Its SIGCHLD may have been read while it was still starting.
        self.reap_due = true;
        e.next_health = Instant::now() + e.health.interval;
        let out = json!({ "ok": true, "id": id, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"] });
        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "worktree": e.rec.worktree, "port": out["port"],
                             "sandbox": out["sandbox"], "outcome": "ready" });
        let (waiting, rec) = (e.waiting.take(), e.rec.clone());
        if let Err(err) = records::save(&self.cfg.state_dir, &rec) {
            tracing::error!(id, error = %err, "could not update the sandbox record");
        }
        self.audit.event(if restart { "sandbox_restart" } else { "sandbox_launch" }, fields);
        if let Some(cid) = waiting {
            self.answer(cid, out);
        }
    }

    /// The launcher exited (or closed its ready pipe) before the sandbox was
    /// healthy. A client's launch fails; a restart or a recovery tries again
    /// with back-off, up to MAX_FAILED_STARTS in a row.
    fn start_failed(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        // The pipe closes when the launcher exits: this wait is short.
        let status = describe(wait_with_timeout(&mut e.child, Duration::from_secs(2)));
        e.log.drain();
        let tail = e.log.tail(4096);
        let reason = String::from_utf8_lossy(&tail).lines().rev().find(|l| l.starts_with("swarmcell:")).unwrap_or("").to_string();
        e.failed_starts += 1;
        let error = format!("sandbox failed to start ({status}): {reason}");
        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "outcome": "failed", "error": error });
        if let Some(cid) = e.waiting.take() {
            self.audit.event("sandbox_launch", fields);
            self.answer(cid, json!({ "ok": false, "error": error }));
            return self.remove(id, false);
        }
        self.audit.event("sandbox_restart", fields);
        self.schedule_restart(id);
    }

    /// When the loop must wake up by itself.
    fn next_due(&self) -> Option<Instant> {
        let sandboxes = self.sandboxes.values().filter_map(|e| match e.state {
            State::Running => Some(e.probe.as_ref().map_or(e.next_health, |p| p.deadline)),
            State::Restarting => e.restart_at,
            State::Stopping => e.stop_deadline,
            State::Starting => None,
        });
        let clients = self.clients.values().filter(|c| *c.phase() != Phase::Waiting).map(|c| c.deadline);
        let scrapers = self.scrapers.values().map(|c| c.deadline);
        sandboxes.chain(clients).chain(scrapers).min()
    }

    /// Deadlines, exits, restarts and health checks.
    fn tick(&mut self) {
        let now = Instant::now();
        let reap = std::mem::take(&mut self.reap_due);
        self.clients.retain(|_, c| *c.phase() == Phase::Waiting || now < c.deadline);
        self.scrapers.retain(|_, c| now < c.deadline);
        // Only the sandboxes with something due (all of them after a SIGCHLD).
        let due = |e: &Entry| match e.state {
            State::Stopping => e.stop_deadline.is_some_and(|t| now >= t),
            State::Running => e.probe.as_ref().map_or(now >= e.next_health, |p| now >= p.deadline),
            State::Restarting => e.restart_at.is_some_and(|t| now >= t),
            State::Starting => false,
        };
        let ids: Vec<String> = self.sandboxes.iter().filter(|(_, e)| reap || due(e)).map(|(id, _)| id.clone()).collect();
        for id in ids {
            let Some(e) = self.sandboxes.get_mut(&id) else { continue };
            match e.state {
                State::Stopping => {
                    let exited = match if reap { e.child.try_wait() } else { Ok(None) } {
                        Ok(Some(s)) => Some(Some(s)),
                        _ if e.stop_deadline.is_some_and(|t| now >= t) => Some(wait_with_timeout(&mut e.child, Duration::ZERO)),
                        _ => None,
                    };
                    let Some(status) = exited else { continue };
                    if e.after_exit == AfterExit::Restart {
                        self.schedule_restart(&id);
                        continue;
                    }
                    let status = describe(status);
                    let fields = json!({ "id": id, "agent": e.rec.agent, "worktree": e.rec.worktree, "uid": e.stop_by, "outcome": status });
                    // Answered once everything is gone: record, log, counters.
                    let waiting = e.waiting.take();
                    self.audit.event("sandbox_stop", fields);
                    self.remove(&id, true);
                    if let Some(cid) = waiting {
                        self.answer(cid, json!({ "ok": true, "id": id, "status": status }));
                    }
                }
                State::Running => {
                    if let Some(status) = reap.then(|| e.child.try_wait().ok().flatten()).flatten() {
                        self.counters.health_failures += 1;
                        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "reason": format!("payload exited: {status}"),
                                             "outcome": "restart" });
                        self.audit.event("health_failure", fields);
                        self.schedule_restart(&id);
                    } else if e.probe.as_ref().is_some_and(|p| now >= p.deadline) {
                        self.health_result(&id, false);
                    } else if e.probe.is_none() && now >= e.next_health {
                        e.next_health = now + e.health.interval;
                        let port = e.info["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                        self.counters.health_checks += 1;
                        match Probe::start(&self.poller, token(PROBE, e.key), port, &e.health.path) {
                            Ok(p) => e.probe = Some(p),
                            Err(_) => self.health_result(&id, false),
                        }
                    }
                }
                State::Restarting if e.restart_at.is_some_and(|t| now >= t) => self.restart(&id),
                State::Restarting | State::Starting => {}
            }
        }
    }

    /// The outcome of one health check.
    fn health_result(&mut self, id: &str, ok: bool) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        e.probe = None;
        if ok {
            e.failures = 0;
            return;
        }
        e.failures += 1;
        self.counters.health_failures += 1;
        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "reason": "health check failed", "consecutive": e.failures,
                             "outcome": if e.failures >= e.health.failures { "restart" } else { "retry" } });
        let alert = e.failures >= e.health.failures;
        self.audit.event("health_failure", fields.clone());
        if alert {
            self.audit.event("health_alert", fields);
            self.begin_stop(id, AfterExit::Restart);
        }
    }

    /// SIGTERM to the launcher (which stops its sandbox); SIGKILL after STOP_GRACE.
    fn begin_stop(&mut self, id: &str, after: AfterExit) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        e.after_exit = after;
        e.probe = None;
        if e.state == State::Restarting {
            // Nothing runs: a stop ends it at the next tick.
            e.stop_deadline = Some(Instant::now());
        } else if e.state != State::Stopping {
            e.stop_deadline = Some(Instant::now() + STOP_GRACE);
            // SAFETY: SIGTERM to our own child, the sandbox's launcher (not yet reaped: state is not Restarting).
            unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
        }
        e.ready = None;
        e.state = State::Stopping;
    }

    fn schedule_restart(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let _ = e.child.try_wait();
        if !self.cfg.restart || e.failed_starts >= MAX_FAILED_STARTS {
            let outcome =
                if self.cfg.restart { format!("given up after {MAX_FAILED_STARTS} failed starts") } else { "exited; restart is off".into() };
            let fields = json!({ "id": id, "agent": e.rec.agent, "worktree": e.rec.worktree, "uid": e.rec.uid, "outcome": outcome });
            self.audit.event("sandbox_stop", fields);
            return self.remove(id, false);
        }
        // Back off: 1 s, 2 s, 4 s ... at most 30 s.
        let delay = Duration::from_secs(1u64 << e.rec.restarts.min(5)).min(Duration::from_secs(30));
        e.state = State::Restarting;
        e.after_exit = AfterExit::Remove;
        e.ready = None;
        e.stop_deadline = None;
        e.restart_at = Some(Instant::now() + delay);
    }

    fn restart(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get(id) else { return };
        match self.spawn(&e.rec, &e.log, &e.broker_fd, e.key) {
            Ok((child, ready)) => {
                self.counters.restarts += 1;
                let Some(e) = self.sandboxes.get_mut(id) else { return };
                e.child = child;
                e.ready = Some(ready);
                e.state = State::Starting;
                e.rec.restarts += 1;
                e.rec.launcher = records::Process::of(e.child.id() as i32);
                e.started = Instant::now();
                if let Err(err) = records::save(&self.cfg.state_dir, &e.rec) {
                    tracing::error!(id, error = %err, "could not update the sandbox record");
                }
            }
            Err(err) => {
                let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "outcome": "failed", "error": err });
                self.audit.event("sandbox_restart", fields);
                if let Some(e) = self.sandboxes.get_mut(id) {
                    e.failed_starts += 1;
                }
                self.schedule_restart(id);
            }
        }
    }

    /// Forget a sandbox whose launcher has exited: its record, its counters
    /// (kept in the totals) and, with `remove_log`, its log (a failed one's is
    /// kept for the post-mortem).
    fn remove(&mut self, id: &str, remove_log: bool) {
        let Some(mut e) = self.sandboxes.remove(id) else { return };
        self.by_key.remove(&e.key);
        records::remove(&self.cfg.state_dir, id);
        self.counters.retire(&e.broker);
        e.log.drain();
        if remove_log {
            e.log.remove();
        }
        if let Some(cid) = e.waiting.take() {
            self.answer(cid, json!({ "ok": false, "error": format!("sandbox {id} is gone") }));
        }
    }

    fn accept_scrapers(&mut self) {
        while let Some(Ok((s, _))) = self.metrics.as_ref().map(std::net::TcpListener::accept) {
            if self.scrapers.len() >= MAX_CLIENTS || s.set_nonblocking(true).is_err() {
                continue;
            }
            let cid = self.conn_id();
            if let Ok(c) = Conn::new(&self.poller, s, 0, token(SCRAPER, cid)) {
                self.scrapers.insert(cid, c);
                self.on_scraper(cid);
            }
        }
    }

    /// Read the HTTP request head, then send the metrics whatever was asked.
    fn on_scraper(&mut self, cid: u64) {
        let Some(c) = self.scrapers.get_mut(&cid) else { return };
        let done = match c.phase() {
            Phase::Reading => match c.read(MAX_SCRAPE_REQUEST, b"\r\n\r\n") {
                Input::Partial => false,
                Input::Bad(_) | Input::Closed => true,
                Input::Line(_) => {
                    let body = self.metrics_text();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    self.scrapers.get_mut(&cid).is_none_or(|c| c.reply(response.into_bytes()))
                }
            },
            _ => c.flush(),
        };
        if done {
            self.scrapers.remove(&cid);
        }
    }

    /// SIGHUP: a new audit log file at the same path (the old one was moved
    /// away, e.g. by logrotate). On failure the old file stays in use.
    fn reopen_audit_log(&mut self) {
        match Audit::open(&self.cfg.audit_log) {
            Ok(a) => {
                self.audit = a;
                self.audit.event("audit_reopened", json!({ "pid": std::process::id(), "outcome": "ok" }));
            }
            Err(e) => self.audit.event("audit_reopened", json!({ "outcome": "failed", "error": e })),
        }
    }

    /// Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let count = |state: State| self.sandboxes.values().filter(|e| e.state == state).count();
        let by_state = [
            ("starting", count(State::Starting)),
            ("running", count(State::Running)),
            ("restarting", count(State::Restarting)),
            ("stopping", count(State::Stopping)),
        ];
        let views: Vec<metrics::SandboxView> = self
            .sandboxes
            .iter()
            .map(|(id, e)| metrics::SandboxView {
                id,
                cgroups: if e.state == State::Running {
                    e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
                } else {
                    vec![]
                },
                broker: &e.broker,
            })
            .collect();
        metrics::render(&self.counters, &by_state, &views)
    }

    /// Stop every sandbox (SIGTERM to all, one shared grace period, then SIGKILL)
    /// and forget their records: a stopped daemon relaunches nothing.
    fn shutdown(&mut self) {
        let ids: Vec<String> = self.sandboxes.keys().cloned().collect();
        for id in &ids {
            self.begin_stop(id, AfterExit::Remove);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for e in self.sandboxes.values_mut() {
            let _ = wait_with_timeout(&mut e.child, deadline.saturating_duration_since(Instant::now()));
        }
        for id in &ids {
            if let Some(e) = self.sandboxes.get_mut(id)
                && let Some(cid) = e.waiting.take()
            {
                self.answer(cid, json!({ "ok": false, "error": "the daemon is shutting down" }));
            }
            self.remove(id, true);
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.audit.event("server_shutdown", json!({ "stopped": ids, "outcome": "ok" }));
    }
}

/// The control socket, mode 0660 (group: `socket_group`). A socket file left by
/// a dead daemon is replaced; one a live daemon answers on is not.
fn bind_control_socket(cfg: &Config) -> Result<UnixListener, String> {
    let path = &cfg.socket;
    let err = |e: std::io::Error| format!("control socket {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            if UnixStream::connect(path).is_ok() {
                return Err(format!("control socket {}: another daemon is listening on it", path.display()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => return Err(format!("control socket {} exists and is not a socket", path.display())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(gid) = cfg.socket_group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// "exit N" or "signal N".
fn describe(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => s.code().map(|c| format!("exit {c}")).or_else(|| s.signal().map(|n| format!("signal {n}"))).unwrap_or_default(),
        None => "unknown".into(),
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

/// Wait for a child up to `timeout`, then SIGKILL it and reap it.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `swarmcell ctl`: send one request, print the response.
pub fn ctl(socket: &Path, req: &Request) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    // A refused peer is answered without being read: the answer is still there
    // to read when the write fails.
    let _ = writeln!(s, "{line}");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    if line.is_empty() {
        return Err(format!("control socket {}: the daemon closed the connection without an answer", socket.display()));
    }
    serde_json::from_str(line.trim()).map_err(|e| format!("bad response {line:?}: {e}"))
}
