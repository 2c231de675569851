//! `swarmcell daemon`: the supervisor for many sandboxes on one host.
//!
//! A single-threaded loop (poll) over the control socket, the ready pipes of
//! starting sandboxes, the metrics listener and its own signals. Each sandbox is
//! a `swarmcell run` child with PR_SET_PDEATHSIG=SIGTERM: if the daemon dies,
//! every sandbox shuts down by itself (the documented recovery choice: sandboxes
//! are killed, not adopted), and the next start's gc removes what is left.
//! Requests are authorised by SO_PEERCRED and validated before anything is done.

pub mod config;
pub mod protocol;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use config::Config;
use protocol::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Running,
    Restarting,
    Stopping,
}

struct Entry {
    agent: Option<String>,
    task: Option<String>,
    worktree: PathBuf,
    argv: Vec<String>,
    child: Child,
    ready: Option<BufReader<std::fs::File>>,
    pending: Option<UnixStream>,
    info: Value,
    state: State,
    restarts: u32,
    restart_at: Option<Instant>,
    failures: u32,
    next_health: Instant,
    log: PathBuf,
    /// When the current `swarmcell run` was started (launch latency).
    started: Instant,
    /// A stop in progress: SIGKILL after this, and who asked.
    stop_deadline: Option<Instant>,
    stop_by: Option<u32>,
}

/// How long a stopping sandbox gets before its launcher is killed (its own
/// --stop-timeout, 5 s, is inside this).
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Audit(std::fs::File);

impl Audit {
    fn open(path: &std::path::Path) -> Result<Audit, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let f =
            std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path).map_err(|e| format!("audit log {}: {e}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o640)).map_err(|e| e.to_string())?;
        Ok(Audit(f))
    }

    /// One JSON line per event, with the time, to the file and the log.
    fn event(&mut self, event: &str, fields: Value) {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut v = json!({ "time": time, "event": event });
        if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
            o.extend(f.clone());
        }
        let _ = writeln!(self.0, "{v}");
        tracing::info!(target: "audit", "{v}");
    }
}

/// Launch-to-healthy latency buckets (seconds), Prometheus histogram.
const LATENCY_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

struct Counters {
    launch_latency: [u64; LATENCY_BUCKETS.len()],
    launch_latency_sum: f64,
    launch_latency_count: u64,
    launches: u64,
    restarts: u64,
    health_failures: u64,
    auth_denied: u64,
}

pub struct Daemon {
    cfg: Config,
    exe: PathBuf,
    listener: UnixListener,
    metrics: Option<std::net::TcpListener>,
    audit: Audit,
    sandboxes: BTreeMap<String, Entry>,
    counters: Counters,
    health_interval: Duration,
    health_failures: u32,
    health_path: String,
    logs: PathBuf,
    /// The policy's env allowlist: names of secrets passed into sandboxes.
    secret_names: Vec<String>,
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
        let mut audit = Audit::open(&cfg.audit_log)?;
        // Crash recovery: cgroups and locks left by sandboxes of a dead daemon.
        if let Ok(layout) = crate::cgroups::Layout::detect() {
            match crate::cgroups::gc(&layout, "swarmcell", &cfg.state_dir) {
                Ok(ids) if !ids.is_empty() => audit.event("stale_cleanup", json!({ "removed": ids })),
                _ => {}
            }
        }
        if let Some(dir) = cfg.socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        match std::fs::symlink_metadata(&cfg.socket) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => std::fs::remove_file(&cfg.socket).map_err(|e| e.to_string())?,
            Ok(_) => return Err(format!("{} exists and is not a socket", cfg.socket.display())),
            Err(_) => {}
        }
        let listener = UnixListener::bind(&cfg.socket).map_err(|e| format!("control socket {}: {e}", cfg.socket.display()))?;
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660)).map_err(|e| e.to_string())?;
        if let Some(gid) = cfg.socket_group {
            std::os::unix::fs::chown(&cfg.socket, None, Some(gid)).map_err(|e| e.to_string())?;
        }
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let metrics = if cfg.metrics.is_empty() {
            None
        } else {
            let l = std::net::TcpListener::bind(&cfg.metrics).map_err(|e| format!("metrics {}: {e}", cfg.metrics))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        };
        let logs = cfg.state_dir.join("daemon-logs");
        crate::lease::ensure_private_dir(&cfg.state_dir).map_err(|e| e.to_string())?;
        crate::lease::ensure_private_dir(&logs).map_err(|e| e.to_string())?;
        audit.event("server_startup", json!({ "socket": cfg.socket, "pid": std::process::id() }));
        Ok(Daemon {
            exe,
            listener,
            metrics,
            audit,
            sandboxes: BTreeMap::new(),
            counters: Counters {
                launch_latency: [0; LATENCY_BUCKETS.len()],
                launch_latency_sum: 0.0,
                launch_latency_count: 0,
                launches: 0,
                restarts: 0,
                health_failures: 0,
                auth_denied: 0,
            },
            health_interval: policy.health.interval.0,
            health_failures: policy.health.failures,
            health_path: policy.health.path.clone(),
            secret_names: policy.process.env.clone(),
            logs,
            cfg,
        })
    }

    /// Serve until SIGTERM or SIGINT; then stop every sandbox. The loop sleeps
    /// until a request, a ready line, a child's exit (SIGCHLD) or the next due
    /// health check or restart: an idle daemon uses no CPU.
    pub fn serve(&mut self) -> Result<(), String> {
        raise_nofile();
        let set = crate::sys::sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
        crate::sys::set_sigmask(libc::SIG_BLOCK, &set).map_err(|e| e.to_string())?;
        // SAFETY: a signalfd for the blocked signals.
        let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if sfd < 0 {
            return Err("signalfd failed".into());
        }
        // SAFETY: fresh fd.
        let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
        loop {
            let mut fds = vec![
                libc::pollfd { fd: sfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.metrics.as_ref().map_or(-1, |m| m.as_raw_fd()), events: libc::POLLIN, revents: 0 },
            ];
            let ids: Vec<String> = self.sandboxes.iter().filter(|(_, e)| e.ready.is_some()).map(|(id, _)| id.clone()).collect();
            for id in &ids {
                let fd = self.sandboxes[id].ready.as_ref().map_or(-1, |r| r.get_ref().as_raw_fd());
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            let timeout = self.next_due().map_or(-1, |t| t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32);
            // SAFETY: fds is a valid array of pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if fds[0].revents != 0 && drain_signals(&sfd) {
                self.shutdown();
                return Ok(());
            }
            if fds[1].revents != 0 {
                self.accept_clients();
            }
            if fds[2].revents != 0 {
                self.serve_metrics();
            }
            for (i, id) in ids.iter().enumerate() {
                if fds[3 + i].revents != 0 {
                    self.on_ready(id);
                }
            }
            self.tick();
        }
    }

    fn accept_clients(&mut self) {
        while let Ok((mut s, _)) = self.listener.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let cred = peer_cred(&s);
            let allowed = cred.is_some_and(|c| self.cfg.allowed_uids.contains(&c.uid) || self.cfg.allowed_gids.contains(&c.gid));
            if !allowed {
                self.counters.auth_denied += 1;
                self.audit.event(
                    "auth_denied",
                    json!({ "uid": cred.map(|c| c.uid), "gid": cred.map(|c| c.gid), "pid": cred.map(|c| c.pid), "outcome": "refused" }),
                );
                let _ = writeln!(s, "{}", json!({ "ok": false, "error": "not authorised" }));
                continue;
            }
            let uid = cred.map(|c| c.uid).unwrap_or(u32::MAX);
            let mut line = Vec::new();
            let n = BufReader::new((&s).take(protocol::MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line);
            if n.is_err() || line.len() > protocol::MAX_REQUEST {
                self.audit.event("policy_violation", json!({ "uid": uid, "error": "request too large or unreadable", "outcome": "refused" }));
                let _ =
                    writeln!(s, "{}", json!({ "ok": false, "error": format!("request larger than {} bytes or unreadable", protocol::MAX_REQUEST) }));
                continue;
            }
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(req, s, uid),
                Err(e) => {
                    self.audit.event("policy_violation", json!({ "uid": uid, "error": e.to_string(), "outcome": "refused" }));
                    let _ = writeln!(s, "{}", json!({ "ok": false, "error": format!("bad request: {e}") }));
                }
            }
        }
    }

    fn handle(&mut self, req: Request, mut s: UnixStream, uid: u32) {
        let mut reply = |v: Value| {
            let _ = writeln!(s, "{v}");
        };
        match req {
            Request::Launch { worktree, agent, task, argv } => {
                let checked =
                    protocol::check_launch(&worktree, agent.as_deref(), task.as_deref(), &argv, &self.cfg.worktree_base, &self.cfg.commands);
                let wt = match checked {
                    Ok(wt) => wt,
                    Err(e) => {
                        self.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "error": e, "outcome": "refused" }));
                        return reply(json!({ "ok": false, "error": e }));
                    }
                };
                if self.sandboxes.len() >= self.cfg.max_sandboxes {
                    return reply(json!({ "ok": false, "error": format!("{} sandboxes are running (max_sandboxes)", self.sandboxes.len()) }));
                }
                let id = format!("d-{:08x}", crate::launch::random_u32());
                // Secrets reach a sandbox only by name, through the policy's env
                // allowlist; each hand-over is audited (the value never is).
                for name in self.secret_names.iter().filter(|n| std::env::var_os(n).is_some()) {
                    self.audit.event("secret_access", json!({ "id": id, "agent": agent, "name": name, "uid": uid }));
                }
                match self.spawn(&id, &wt, &argv) {
                    Ok((child, ready, log)) => {
                        self.counters.launches += 1;
                        let now = Instant::now();
                        self.sandboxes.insert(
                            id,
                            Entry {
                                agent,
                                task,
                                worktree: wt,
                                argv,
                                child,
                                ready: Some(ready),
                                pending: Some(s),
                                info: Value::Null,
                                state: State::Starting,
                                restarts: 0,
                                restart_at: None,
                                failures: 0,
                                next_health: now + self.health_interval,
                                log,
                                started: now,
                                stop_deadline: None,
                                stop_by: None,
                            },
                        );
                    }
                    Err(e) => reply(json!({ "ok": false, "error": e })),
                }
            }
            Request::Stop { id } => match self.sandboxes.get_mut(&id) {
                // Answered when the sandbox is gone (see `tick`), so one slow
                // stop never blocks other clients.
                Some(e) if e.state != State::Stopping => {
                    e.state = State::Stopping;
                    e.stop_deadline = Some(Instant::now() + STOP_GRACE);
                    e.stop_by = Some(uid);
                    e.pending = Some(s);
                    // SAFETY: SIGTERM to our own child, the sandbox's launcher.
                    unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
                }
                Some(_) => reply(json!({ "ok": false, "error": format!("sandbox {id} is already stopping") })),
                None => reply(json!({ "ok": false, "error": format!("no sandbox {id}") })),
            },
            Request::List => reply(json!({ "ok": true, "sandboxes": self.list() })),
            Request::Inspect { id } => {
                let pid = self.sandboxes.get(&id).and_then(|e| e.info["pid"].as_i64());
                match pid.map(|p| crate::inspect::find(&p.to_string())) {
                    Some(Ok((init, payload))) => reply(json!({ "ok": true, "inspect": crate::inspect::report(init, payload) })),
                    Some(Err(e)) => reply(json!({ "ok": false, "error": e })),
                    None => reply(json!({ "ok": false, "error": format!("no running sandbox {id}") })),
                }
            }
            Request::Logs { id } => match self.sandboxes.get(&id) {
                Some(e) => {
                    let text = std::fs::read(&e.log).unwrap_or_default();
                    let tail = &text[text.len().saturating_sub(64 * 1024)..];
                    reply(json!({ "ok": true, "log": String::from_utf8_lossy(tail) }))
                }
                None => reply(json!({ "ok": false, "error": format!("no sandbox {id}") })),
            },
        }
    }

    fn list(&self) -> Vec<Value> {
        self.sandboxes
            .iter()
            .map(|(id, e)| {
                json!({ "id": id, "state": format!("{:?}", e.state).to_lowercase(), "agent": e.agent, "task": e.task, "worktree": e.worktree,
                        "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"], "restarts": e.restarts })
            })
            .collect()
    }

    /// `swarmcell run --port auto --ready-fd 3 ...` for one sandbox.
    fn spawn(&self, id: &str, wt: &std::path::Path, argv: &[String]) -> Result<(Child, BufReader<std::fs::File>, PathBuf), String> {
        let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
        let wfd = w.as_raw_fd();
        let log_path = self.logs.join(format!("{id}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(&log_path).map_err(|e| e.to_string())?;
        let mut c = Command::new(&self.exe);
        c.args(["run", "--port", "auto", "--ready-fd", "3", "--state-dir"]).arg(&self.cfg.state_dir).arg("--worktree").arg(wt);
        if let Some(p) = &self.cfg.policy {
            c.arg("--policy").arg(p);
        }
        c.arg("--").args(argv);
        c.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        // SAFETY: install_fd_for_exec and prctl are async-signal-safe. The parent-death signal
        // ends the sandbox if the daemon dies (the daemon is single-threaded, so
        // the "parent" thread lives as long as the daemon).
        unsafe {
            c.pre_exec(move || {
                crate::sys::install_fd_for_exec(wfd, 3)?;
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| format!("starting swarmcell run: {e}"))?;
        drop(w);
        Ok((child, BufReader::new(std::fs::File::from(OwnedFd::from(r))), log_path))
    }

    fn on_ready(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let mut line = String::new();
        let n = e.ready.as_mut().map(|r| r.read_line(&mut line)).unwrap_or(Ok(0));
        e.ready = None;
        let restart = e.restarts > 0;
        match (n, serde_json::from_str::<Value>(line.trim())) {
            (Ok(k), Ok(info)) if k > 0 => {
                let secs = e.started.elapsed().as_secs_f64();
                let c = &mut self.counters;
                for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                    if secs <= *b {
                        c.launch_latency[i] += 1;
                    }
                }
                c.launch_latency_sum += secs;
                c.launch_latency_count += 1;
                e.info = info;
                e.state = State::Running;
                e.failures = 0;
                let out = json!({ "ok": true, "id": id, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"] });
                if let Some(mut s) = e.pending.take() {
                    let _ = writeln!(s, "{out}");
                }
                let (agent, worktree) = (e.agent.clone(), e.worktree.clone());
                let event = if restart { "sandbox_restart" } else { "sandbox_launch" };
                self.audit.event(event, json!({ "id": id, "agent": agent, "worktree": worktree, "port": out["port"], "outcome": "ready" }));
            }
            _ => {
                // The launcher exited (or wrote nothing) before being ready.
                let status = describe(wait_with_timeout(&mut e.child, Duration::from_secs(10)));
                let log = std::fs::read_to_string(&e.log).unwrap_or_default();
                let reason = log.lines().rev().find(|l| l.starts_with("swarmcell:")).unwrap_or("").to_string();
                if let Some(mut s) = e.pending.take() {
                    let _ = writeln!(s, "{}", json!({ "ok": false, "error": format!("sandbox failed to start ({status}): {reason}") }));
                }
                let agent = e.agent.clone();
                self.audit.event("sandbox_launch", json!({ "id": id, "agent": agent, "outcome": "failed", "error": reason }));
                self.sandboxes.remove(id);
            }
        }
    }

    /// When the loop must wake up by itself: the next health check or restart.
    fn next_due(&self) -> Option<Instant> {
        self.sandboxes
            .values()
            .filter_map(|e| match e.state {
                State::Running => Some(e.next_health),
                State::Restarting => e.restart_at,
                State::Stopping => e.stop_deadline,
                _ => None,
            })
            .min()
    }

    /// Exits, restarts and health checks.
    fn tick(&mut self) {
        let now = Instant::now();
        let ids: Vec<String> = self.sandboxes.keys().cloned().collect();
        for id in ids {
            let Some(e) = self.sandboxes.get_mut(&id) else { continue };
            if e.state == State::Stopping {
                let exited = match e.child.try_wait() {
                    Ok(Some(s)) => Some(Some(s)),
                    _ if e.stop_deadline.is_some_and(|t| now >= t) => Some(wait_with_timeout(&mut e.child, Duration::ZERO)),
                    _ => None,
                };
                if let Some(status) = exited {
                    let status = describe(status);
                    let (agent, worktree, uid) = (e.agent.clone(), e.worktree.clone(), e.stop_by);
                    if let Some(mut s) = e.pending.take() {
                        let _ = writeln!(s, "{}", json!({ "ok": true, "id": id, "status": status }));
                    }
                    self.sandboxes.remove(&id);
                    self.audit.event("sandbox_stop", json!({ "id": id, "agent": agent, "worktree": worktree, "uid": uid, "outcome": status }));
                }
                continue;
            }
            if e.state == State::Running
                && let Ok(Some(status)) = e.child.try_wait()
            {
                self.counters.health_failures += 1;
                let agent = e.agent.clone();
                self.audit.event("health_failure", json!({ "id": id, "agent": agent, "reason": format!("payload exited: {status}") }));
                self.schedule_restart(&id);
                continue;
            }
            if e.state == State::Restarting && e.restart_at.is_some_and(|t| now >= t) {
                self.restart(&id);
                continue;
            }
            if e.state == State::Running && now >= e.next_health {
                e.next_health = now + self.health_interval;
                let port = e.info["port"].as_u64().unwrap_or(0) as u16;
                if !health_ok(port, &self.health_path) {
                    e.failures += 1;
                    self.counters.health_failures += 1;
                    let (agent, failures) = (e.agent.clone(), e.failures);
                    self.audit.event("health_failure", json!({ "id": id, "agent": agent, "reason": "health check failed", "consecutive": failures }));
                    if failures >= self.health_failures {
                        self.audit.event("health_alert", json!({ "id": id, "agent": agent, "consecutive": failures }));
                        // SAFETY: SIGTERM to our own child; it is restarted below.
                        unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
                        let _ = wait_with_timeout(&mut e.child, Duration::from_secs(10));
                        self.schedule_restart(&id);
                    }
                } else {
                    e.failures = 0;
                }
            }
        }
    }

    fn schedule_restart(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let _ = e.child.try_wait();
        if !self.cfg.restart {
            self.sandboxes.remove(id);
            return;
        }
        // Back off: 1 s, 2 s, 4 s ... at most 30 s.
        let delay = Duration::from_secs(1u64 << e.restarts.min(5)).min(Duration::from_secs(30));
        e.state = State::Restarting;
        e.restart_at = Some(Instant::now() + delay);
    }

    fn restart(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get(id) else { return };
        let (wt, argv) = (e.worktree.clone(), e.argv.clone());
        match self.spawn(id, &wt, &argv) {
            Ok((child, ready, _)) => {
                self.counters.restarts += 1;
                if let Some(e) = self.sandboxes.get_mut(id) {
                    e.child = child;
                    e.ready = Some(ready);
                    e.state = State::Starting;
                    e.restarts += 1;
                    e.started = Instant::now();
                    e.next_health = Instant::now() + self.health_interval;
                }
            }
            Err(err) => {
                self.audit.event("sandbox_restart", json!({ "id": id, "outcome": "failed", "error": err }));
                self.schedule_restart(id);
            }
        }
    }

    fn serve_metrics(&mut self) {
        let Some(l) = &self.metrics else { return };
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = self.metrics_text();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    }

    /// Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let mut o = String::new();
        let count = |state: State| self.sandboxes.values().filter(|e| e.state == state).count();
        let by_state = [
            ("starting", count(State::Starting)),
            ("running", count(State::Running)),
            ("restarting", count(State::Restarting)),
            ("stopping", count(State::Stopping)),
        ];
        o.push_str("# HELP swarmcell_sandboxes Sandboxes by state.\n# TYPE swarmcell_sandboxes gauge\n");
        for (s, n) in by_state {
            o.push_str(&format!("swarmcell_sandboxes{{state=\"{s}\"}} {n}\n"));
        }
        for (name, help, v) in [
            ("swarmcell_launches_total", "Sandboxes launched.", self.counters.launches),
            ("swarmcell_restarts_total", "Sandboxes restarted.", self.counters.restarts),
            ("swarmcell_health_failures_total", "Failed health checks and payload exits.", self.counters.health_failures),
            ("swarmcell_auth_denied_total", "Refused control connections.", self.counters.auth_denied),
        ] {
            o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
        }
        o.push_str("# HELP swarmcell_launch_seconds Launch to healthy.\n# TYPE swarmcell_launch_seconds histogram\n");
        for (b, n) in LATENCY_BUCKETS.iter().zip(self.counters.launch_latency) {
            o.push_str(&format!("swarmcell_launch_seconds_bucket{{le=\"{b}\"}} {n}\n"));
        }
        o.push_str(&format!("swarmcell_launch_seconds_bucket{{le=\"+Inf\"}} {}\n", self.counters.launch_latency_count));
        o.push_str(&format!("swarmcell_launch_seconds_sum {}\n", self.counters.launch_latency_sum));
        o.push_str(&format!("swarmcell_launch_seconds_count {}\n", self.counters.launch_latency_count));
        o.push_str("# HELP swarmcell_sandbox_memory_bytes Memory charged to a sandbox's cgroup.\n# TYPE swarmcell_sandbox_memory_bytes gauge\n");
        let mut pids = String::from("# HELP swarmcell_sandbox_pids Processes in a sandbox's cgroup.\n# TYPE swarmcell_sandbox_pids gauge\n");
        let mut cpu = String::from(
            "# HELP swarmcell_sandbox_cpu_seconds_total CPU time used by a sandbox's cgroup.\n# TYPE swarmcell_sandbox_cpu_seconds_total counter\n",
        );
        for (id, e) in &self.sandboxes {
            for dir in e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let dir = std::path::Path::new(dir);
                for file in ["memory.current", "memory.usage_in_bytes"] {
                    if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
                        o.push_str(&format!("swarmcell_sandbox_memory_bytes{{id=\"{id}\"}} {}\n", v.trim()));
                    }
                }
                if let Ok(v) = std::fs::read_to_string(dir.join("pids.current")) {
                    pids.push_str(&format!("swarmcell_sandbox_pids{{id=\"{id}\"}} {}\n", v.trim()));
                }
                // v1 cpuacct.usage is in ns; v2 cpu.stat usage_usec in µs.
                let used =
                    std::fs::read_to_string(dir.join("cpuacct.usage")).ok().and_then(|v| v.trim().parse::<f64>().ok()).map(|ns| ns / 1e9).or_else(
                        || {
                            std::fs::read_to_string(dir.join("cpu.stat"))
                                .ok()?
                                .lines()
                                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
                                .map(|us| us / 1e6)
                        },
                    );
                if let Some(secs) = used {
                    cpu.push_str(&format!("swarmcell_sandbox_cpu_seconds_total{{id=\"{id}\"}} {secs}\n"));
                }
            }
        }
        o + &pids + &cpu
    }

    fn shutdown(&mut self) {
        let ids: Vec<String> = self.sandboxes.keys().cloned().collect();
        for e in self.sandboxes.values_mut() {
            e.state = State::Stopping;
            // SAFETY: SIGTERM to our own children.
            unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
        }
        for e in self.sandboxes.values_mut() {
            let _ = wait_with_timeout(&mut e.child, Duration::from_secs(10));
        }
        self.sandboxes.clear();
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.audit.event("server_shutdown", json!({ "stopped": ids, "outcome": "ok" }));
    }
}

/// "exit N" or "signal N".
fn describe(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => s.code().map(|c| format!("exit {c}")).or_else(|| s.signal().map(|n| format!("signal {n}"))).unwrap_or_default(),
        None => "unknown".into(),
    }
}

/// Read every pending signal; true when one asks the daemon to stop.
fn drain_signals(sfd: &OwnedFd) -> bool {
    let mut stop = false;
    loop {
        // SAFETY: signalfd_siginfo is plain data; read into it.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a correctly sized buffer.
        let n = unsafe { libc::read(sfd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n != size as isize {
            return stop;
        }
        stop |= info.ssi_signo == libc::SIGTERM as u32 || info.ssi_signo == libc::SIGINT as u32;
    }
}

/// One descriptor or so per sandbox: lift the soft limit to the hard one.
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

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One health request through the sandbox's port, with a 1 s timeout.
fn health_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf[9] == b'2')
}

/// `swarmcell ctl`: send one request, print the response.
pub fn ctl(socket: &std::path::Path, req: &Request) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    let line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    // A refused peer is answered without being read: the answer is still there
    // to read when the write fails.
    let _ = writeln!(s, "{line}");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(line.trim()).map_err(|e| format!("bad response {line:?}: {e}"))
}
