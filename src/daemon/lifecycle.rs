//! A sandbox's life in the daemon: launch (`swarmcell run` child, record, log,
//! counters), readiness, health checks, restarts with back-off, stop, removal.

use super::*;

impl Daemon {
    /// Start managing a sandbox: its counters page, its log, its first launcher
    /// and its record. `waiting` is the client to answer when it is healthy.
    pub(super) fn add(&mut self, mut rec: Record, policy: &crate::policy::Policy, waiting: Option<u64>) -> Result<(), String> {
        // Secrets reach a sandbox only by name, through the policy's env
        // allowlist; each hand-over is audited (the value never is).
        for name in policy.process.env.iter().filter(|n| std::env::var_os(n).is_some()) {
            self.audit.event("secret_access", json!({ "id": rec.id, "agent": rec.agent, "name": name, "uid": rec.uid, "outcome": "passed" }));
        }
        self.git_preflight(&rec)?;
        // A per-sandbox secret when the policy asks for one; kept in the record
        // (0600) so that a restart or a recovery keeps the requester's access.
        match (&policy.process.server_password_env, &rec.secret) {
            (Some(name), None) => {
                rec.secret = Some(crate::launch::parent::new_secret().map_err(|e| e.to_string())?);
                self.audit.event("secret_access", json!({ "id": rec.id, "agent": rec.agent, "name": name, "uid": rec.uid, "outcome": "generated" }));
            }
            (None, Some(_)) => rec.secret = None,
            _ => {}
        }
        let (broker, broker_fd) = crate::net::broker_stats::SharedCounters::create().map_err(|e| format!("broker counters: {e}"))?;
        let key = self.conn_id();
        let log =
            LogSink::new(&self.poller, token(LOG, key), self.cfg.log_dir.join(format!("{}.log", rec.id)), self.cfg.log_max.0.unwrap_or(u64::MAX))
                .map_err(|e| format!("sandbox log in {}: {e}", self.cfg.log_dir.display()))?;
        let (child, ready, events) = match self.spawn(&rec, &log, &broker_fd, key) {
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
            self.stale_due = true;
            log.remove();
            return Err(e);
        }
        self.counters.launches += 1;
        let now = Instant::now();
        let inner_port = policy.network.inner_port;
        let auth = rec.secret.as_deref().map(|s| (policy.health.auth_user.as_str(), s));
        let health = HealthSpec {
            interval: policy.health.interval.0,
            failures: policy.health.failures,
            request: crate::net::health::request(&policy.health.path, inner_port, auth),
            inner_port,
            start_deadline: policy.health.timeout.0 + START_MARGIN,
        };
        self.by_key.insert(key, rec.id.clone());
        let rec_lease = rec.lease_s;
        self.denials.arm(&rec.id, &policy.tripwires);
        self.sandboxes.insert(
            rec.id.clone(),
            Entry {
                rec,
                key,
                next_health: now + health.interval,
                health,
                child,
                ready: Some(ready),
                events: Some(events),
                start_error: None,
                netns: None,
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
                lease_until: rec_lease.map(|s| now + Duration::from_secs(s)),
                published: None,
                incident: super::incident::SandboxIncident::new(),
            },
        );
        Ok(())
    }

    /// `swarmcell run --port auto --ready-fd 3 --stats-fd 4 --events-fd 5
    /// [--secret-fd 6] --allow-uid REQUESTER ...` for one sandbox, asking for
    /// its previous port again when it had one.
    pub(super) fn spawn(
        &self,
        rec: &Record,
        log: &LogSink,
        broker_fd: &OwnedFd,
        key: u64,
    ) -> Result<(Child, Watched<std::fs::File>, launcher_events::EventPipe), String> {
        let (r, w) = std::io::pipe().map_err(|e| format!("ready pipe: {e}"))?;
        crate::sys::set_nonblocking(r.as_raw_fd()).map_err(|e| format!("ready pipe: {e}"))?;
        let r = Watched::new(&self.poller, std::fs::File::from(OwnedFd::from(r)), IN, token(READY, key)).map_err(|e| format!("epoll: {e}"))?;
        let (events, events_w) = launcher_events::EventPipe::new(&self.poller, token(EVENTS, key)).map_err(|e| format!("events pipe: {e}"))?;
        // The secret goes through a pipe (an argument would be world-readable
        // in /proc/PID/cmdline); it is far smaller than a pipe's buffer.
        let secret = match &rec.secret {
            Some(secret) => {
                let (sr, sw) = std::io::pipe().map_err(|e| format!("secret pipe: {e}"))?;
                (&sw).write_all(secret.as_bytes()).map_err(|e| format!("secret pipe: {e}"))?;
                Some(crate::sys::dup_at_least(sr.as_raw_fd(), 10).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        // Above 6, so that installing fds 3 to 6 in the child cannot overwrite any.
        let w = crate::sys::dup_at_least(w.as_raw_fd(), 10).map_err(|e| e.to_string())?;
        let stats = crate::sys::dup_at_least(broker_fd.as_raw_fd(), 10).map_err(|e| e.to_string())?;
        let events_w = crate::sys::dup_at_least(events_w.as_raw_fd(), 10).map_err(|e| e.to_string())?;
        let (wfd, sfd, efd) = (w.as_raw_fd(), stats.as_raw_fd(), events_w.as_raw_fd());
        let secret_fd = secret.as_ref().map_or(-1, |f| f.as_raw_fd());
        let out = |what| log.writer.try_clone().map_err(|e| format!("sandbox log {what}: {e}"));
        let mut c = Command::new(&self.exe);
        // --no-gc: a burst of launches would each sweep every lease and cgroup
        // (quadratic); the daemon sweeps at start and after a launcher is killed.
        c.args(["run", "--no-gc", "--port", "auto", "--ready-fd", "3", "--stats-fd", "4", "--events-fd", "5", "--worktree"]).arg(&rec.worktree);
        if secret.is_some() {
            c.args(["--secret-fd", "6"]);
        }
        // Who may connect: root and the worktree's owner (always), the requester.
        if rec.uid != 0 {
            c.args(["--allow-uid", &rec.uid.to_string()]);
        }
        for r in &self.cfg.repositories {
            c.arg("--repo").arg(r);
        }
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
                crate::sys::child::install_fd_for_exec(wfd, 3)?;
                crate::sys::child::install_fd_for_exec(sfd, 4)?;
                crate::sys::child::install_fd_for_exec(efd, 5)?;
                if secret_fd >= 0 {
                    crate::sys::child::install_fd_for_exec(secret_fd, 6)?;
                }
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
        Ok((child, r, events))
    }

    /// Events from a sandbox's launcher: each an audit event with the sandbox's
    /// id; a start failure is kept for the launch's answer. Payload-chosen text
    /// in them (host names, errors quoting the command) is escaped.
    pub(super) fn on_events(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let Some(pipe) = e.events.as_mut() else { return };
        let (agent, uid) = (e.rec.agent.clone(), e.rec.uid);
        for event in pipe.drain() {
            use crate::launch::events::Event;
            use crate::sanitize::line;
            let fields = match event {
                Ok(Event::StartFailed { error }) => {
                    if let Some(e) = self.sandboxes.get_mut(id) {
                        e.start_error = Some(line(&error));
                    }
                    continue;
                }
                Ok(Event::Egress { host, port, allowed, reason, address }) => {
                    if !allowed {
                        self.denials.lock().add(id, crate::denials::Kind::Egress, &line(&format!("{host}:{port}")), 1);
                    }
                    (
                        "egress",
                        json!({ "id": id, "agent": agent, "host": line(&host), "port": port, "allowed": allowed,
                            "reason": reason.as_deref().map(line), "address": address.as_deref().map(line),
                            "outcome": if allowed { "allowed" } else { "denied" } }),
                    )
                }
                Ok(Event::IngressDenied { uid: peer, port }) => {
                    let who = peer.map_or("unknown uid".to_string(), |u| format!("uid {u}"));
                    self.denials.lock().add(id, crate::denials::Kind::Ingress, &format!("{who} port {port}"), 1);
                    ("ingress_denied", json!({ "id": id, "agent": agent, "uid": peer, "port": port, "outcome": "refused" }))
                }
                Ok(Event::GitPublish { branch, old, new }) => {
                    if let Some(e) = self.sandboxes.get_mut(id)
                        && crate::git::record::valid_oid(&new)
                    {
                        e.published = Some((branch.clone(), new.clone()));
                    }
                    (
                        "git_publish",
                        json!({ "id": id, "agent": agent, "uid": uid, "branch": line(&branch), "old": line(&old), "new": line(&new), "outcome": "published" }),
                    )
                }
                Ok(Event::DiskLimit { outcome, detail }) => {
                    ("disk_limit", json!({ "id": id, "agent": agent, "uid": uid, "detail": line(&detail), "outcome": line(&outcome) }))
                }
                Err(why) => {
                    tracing::error!(id, error = %why, "a launcher sent a bad event");
                    continue;
                }
            };
            self.audit.event(fields.0, fields.1);
        }
    }

    pub(super) fn on_ready(&mut self, id: &str) {
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
        let mut info = match serde_json::from_slice::<Value>(line[..n].trim_ascii()) {
            Ok(info) if n > 0 => info,
            _ => return self.start_failed(id),
        };
        // The secret goes to the requester only (from the record), never into listings.
        if let Some(o) = info.as_object_mut() {
            o.remove("secret");
        }
        self.counters.observe_launch(e.started.elapsed().as_secs_f64());
        e.rec.port = info["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        // Health checks are made in the sandbox's own network namespace.
        e.netns = info["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).and_then(|init| match sandbox_netns(init, e.child.id() as i32) {
            Ok(ns) => Some(ns),
            Err(err) => {
                tracing::error!(id, error = %err, "cannot open the sandbox's network namespace; its health checks will fail");
                None
            }
        });
        e.info = info;
        e.state = State::Running;
        self.denials.register(super::incident::owner(id, e));
        e.failures = 0;
        e.failed_starts = 0;
        // Its SIGCHLD may have been read while it was still starting.
        self.reap_due = true;
        e.next_health = Instant::now() + e.health.interval;
        // Only the requester's answer carries the secret (never the audit event).
        let mut out = json!({ "ok": true, "id": id, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"] });
        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "worktree": e.rec.worktree, "port": out["port"],
                             "sandbox": out["sandbox"], "outcome": "ready" });
        if let Some(secret) = &e.rec.secret {
            out["secret"] = json!(secret);
        }
        let (waiting, rec) = (e.waiting.take(), e.rec.clone());
        if waiting.is_some() {
            e.lease_until = rec.lease_s.map(|s| Instant::now() + Duration::from_secs(s));
        }
        if let Err(err) = records::save(&self.cfg.state_dir, &rec) {
            tracing::error!(id, error = %err, "could not update the sandbox record");
        }
        self.audit.event(if restart { "sandbox_restart" } else { "sandbox_launch" }, fields);
        if let Some(cid) = waiting {
            self.answer(cid, out);
        }
        self.apply_pending_tripwire(id);
    }

    /// The launcher exited (or closed its ready pipe) before the sandbox was
    /// healthy. A client's launch fails; a restart or a recovery tries again
    /// with back-off, up to MAX_FAILED_STARTS in a row.
    pub(super) fn start_failed(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        // The pipe closes when the launcher exits: this wait is short.
        let status = wait_with_timeout(&mut e.child, Duration::from_secs(2));
        self.stale_due |= killed(status);
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let status = describe(status);
        e.log.drain();
        // Why: from the launcher's own events channel (now at its end), never
        // from the output it shares with the payload.
        self.on_events(id);
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        e.events = None;
        e.failed_starts += 1;
        let error = match e.start_error.take() {
            Some(reason) => format!("sandbox failed to start (launcher {status}): {reason}"),
            None => format!("sandbox failed to start (launcher {status})"),
        };
        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "outcome": "failed", "error": error });
        if let Some(cid) = e.waiting.take() {
            self.audit.event("sandbox_launch", fields);
            self.answer(cid, json!({ "ok": false, "error": error }));
            return self.remove(id, false);
        }
        self.audit.event("sandbox_restart", fields);
        self.schedule_restart(id);
    }

    /// A launcher still starting at its deadline (the health timeout plus a
    /// margin: it hangs, or its host is overloaded): killed, audited, and then
    /// like any failed start (the launch fails, or a restart is tried later).
    pub(super) fn start_timeout(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let after = e.health.start_deadline;
        let status = wait_with_timeout(&mut e.child, Duration::ZERO);
        self.stale_due = true;
        e.ready = None;
        e.events = None;
        e.failed_starts += 1;
        let error =
            format!("sandbox {id}: not healthy within {} (start deadline); its launcher was killed", crate::policy::units::HumanDuration(after));
        let outcome = if e.waiting.is_some() { "failed" } else { "restart" };
        self.audit.event(
            "start_timeout",
            json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "deadline_s": after.as_secs_f64(), "launcher": describe(status), "outcome": outcome }),
        );
        if let Some(cid) = e.waiting.take() {
            self.answer(cid, json!({ "ok": false, "error": error }));
            return self.remove(id, false);
        }
        self.schedule_restart(id);
    }

    /// When the loop must wake up by itself.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let sandboxes = self.sandboxes.values().filter_map(Entry::deadline);
        let clients = self.clients.values().filter_map(Conn::deadline);
        let scrapers = self.scrapers.values().filter_map(Conn::deadline);
        let denials = self.denials.lock().agg.next_due();
        sandboxes.chain(clients).chain(scrapers).chain(denials).min()
    }

    /// Deadlines, exits, restarts and health checks.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        if self.denials.lock().agg.next_due().is_some_and(|t| t <= now) {
            self.flush_denials();
        }
        let reap = std::mem::take(&mut self.reap_due);
        self.clients.retain(|_, c| c.deadline().is_none_or(|t| now < t));
        self.scrapers.retain(|_, c| c.deadline().is_none_or(|t| now < t));
        // Only the sandboxes with something due (all of them after a SIGCHLD).
        let ids: Vec<String> =
            self.sandboxes.iter().filter(|(_, e)| reap || e.deadline().is_some_and(|t| now >= t)).map(|(id, _)| id.clone()).collect();
        for id in ids {
            let Some(e) = self.sandboxes.get_mut(&id) else { continue };
            // A frozen sandbox is kept for investigation: its lease waits for
            // the thaw (renewed then) or the kill. A requester still waiting
            // for the launch is there: its lease runs from the answer (the
            // start has its own deadline).
            let waited_for = e.state == State::Starting && e.waiting.is_some();
            if e.state != State::Stopping && e.incident.frozen.is_none() && !waited_for && e.lease_until.is_some_and(|t| now >= t) {
                self.lease_expired(&id);
                continue;
            }
            match e.state {
                State::Stopping => {
                    let exited = match if reap { e.child.try_wait() } else { Ok(None) } {
                        Ok(Some(s)) => Some(Some(s)),
                        _ if e.stop_deadline.is_some_and(|t| now >= t) => Some(wait_with_timeout(&mut e.child, Duration::ZERO)),
                        _ => None,
                    };
                    let Some(status) = exited else { continue };
                    self.stale_due |= killed(status);
                    if e.after_exit == AfterExit::Restart {
                        self.schedule_restart(&id);
                        continue;
                    }
                    let status = describe(status);
                    let fields = json!({ "id": id, "agent": e.rec.agent, "worktree": e.rec.worktree, "uid": e.stop_by, "outcome": status });
                    // Answered once everything is gone: record, log, counters.
                    let waiting = e.waiting.take();
                    self.audit.event("sandbox_stop", fields);
                    // The launcher's last events (its final publish) before the entry goes.
                    self.on_events(&id);
                    let published = self.sandboxes.get(&id).and_then(|e| e.published.clone());
                    let others = self.stop_waiters.remove(&id).unwrap_or_default();
                    self.remove(&id, true);
                    if let Some(g) = self.gone.back_mut()
                        && g.id == id
                    {
                        g.status.clone_from(&status);
                    }
                    // Every stop asked meanwhile gets the same answer (the agent's commit).
                    let (branch, commit) = published.unzip();
                    for cid in waiting.into_iter().chain(others) {
                        self.answer(cid, json!({ "ok": true, "id": id, "status": status, "branch": branch, "commit": commit }));
                    }
                }
                State::Running => {
                    if let Some(status) = reap.then(|| e.child.try_wait().ok().flatten()).flatten() {
                        self.stale_due |= killed(Some(status));
                        self.counters.health_failures += 1;
                        let fields = json!({ "id": id, "agent": e.rec.agent, "uid": e.rec.uid, "reason": format!("payload exited: {status}"),
                                             "outcome": "restart" });
                        self.audit.event("health_failure", fields);
                        self.schedule_restart(&id);
                    } else if e.probe.as_ref().is_some_and(|p| now >= p.deadline) {
                        self.health_result(&id, false);
                    } else if e.probe.is_none() && now >= e.next_health && e.incident.frozen.is_none() {
                        e.next_health = now + e.health.interval;
                        self.counters.health_checks += 1;
                        let started = match &e.netns {
                            Some(ns) => Probe::start(
                                &self.poller,
                                token(PROBE, e.key),
                                Some((ns, &self.home_netns)),
                                e.health.inner_port,
                                e.health.request.clone(),
                            ),
                            None => Err(std::io::Error::other("no network namespace")),
                        };
                        match started {
                            Ok(p) => e.probe = Some(p),
                            Err(_) => self.health_result(&id, false),
                        }
                    }
                }
                State::Restarting if e.restart_at.is_some_and(|t| now >= t) => self.restart(&id),
                State::Starting if e.deadline().is_some_and(|t| now >= t) => self.start_timeout(&id),
                State::Restarting | State::Starting => {}
            }
        }
    }

    /// Nobody renewed the sandbox's lease in time (its requester, e.g. a
    /// Temporal worker, died or lost its orchestrator): stopped like `ctl stop`.
    pub(super) fn lease_expired(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        e.lease_until = None;
        let fields = json!({ "id": id, "agent": e.rec.agent, "task": e.rec.task, "uid": e.rec.uid, "lease_s": e.rec.lease_s, "outcome": "stopping" });
        let launching = e.waiting.take();
        self.audit.event("lease_expired", fields);
        if let Some(cid) = launching {
            self.answer(cid, json!({ "ok": false, "error": format!("sandbox {id}: its lease expired before it was ready") }));
        }
        self.begin_stop(id, AfterExit::Remove);
    }

    /// The outcome of one health check.
    pub(super) fn health_result(&mut self, id: &str, ok: bool) {
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
    pub(super) fn begin_stop(&mut self, id: &str, after: AfterExit) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        e.after_exit = after;
        e.probe = None;
        if e.incident.frozen.take().is_some() {
            // A frozen sandbox cannot act on a signal, nor its stopped launcher.
            let cgroups: Vec<PathBuf> = e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str).map(PathBuf::from).collect();
            crate::incident::freezer::kill(&cgroups);
            // SAFETY: SIGCONT to our own child, the sandbox's launcher.
            unsafe { libc::kill(e.child.id() as i32, libc::SIGCONT) };
        }
        if e.state == State::Restarting {
            // Nothing runs: a stop ends it at the next tick.
            e.stop_deadline = Some(Instant::now());
        } else if e.state != State::Stopping {
            e.stop_deadline = Some(Instant::now() + STOP_GRACE);
            // SAFETY: SIGTERM to our own child, the sandbox's launcher (not yet reaped: state is not Restarting).
            unsafe { libc::kill(e.child.id() as i32, libc::SIGTERM) };
        }
        e.ready = None;
        e.netns = None;
        e.state = State::Stopping;
    }

    pub(super) fn schedule_restart(&mut self, id: &str) {
        // The last events of the launcher that ended (its pipe goes with it).
        self.on_events(id);
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
        e.events = None;
        e.netns = None;
        e.stop_deadline = None;
        e.restart_at = Some(Instant::now() + delay);
    }

    /// A git worktree must still match its root-owned record (a sandbox may
    /// have rewritten its `.git`): checked before every launch, without
    /// running git or following anything in the worktree; a refusal is a
    /// `policy_violation`.
    pub(super) fn git_preflight(&mut self, rec: &Record) -> Result<(), String> {
        crate::git::preflight(&rec.worktree, &self.cfg.repositories).map_err(|e| {
            let error = e.to_string();
            self.audit.event(
                "policy_violation",
                json!({ "id": rec.id, "agent": rec.agent, "uid": rec.uid, "worktree": rec.worktree, "error": error, "outcome": "refused" }),
            );
            error
        })
    }

    pub(super) fn restart(&mut self, id: &str) {
        let Some(e) = self.sandboxes.get(id) else { return };
        let rec = e.rec.clone();
        let checked = self.git_preflight(&rec);
        let Some(e) = self.sandboxes.get(id) else { return };
        match checked.and_then(|()| self.spawn(&e.rec, &e.log, &e.broker_fd, e.key)) {
            Ok((child, ready, events)) => {
                self.counters.restarts += 1;
                let Some(e) = self.sandboxes.get_mut(id) else { return };
                e.child = child;
                e.ready = Some(ready);
                e.events = Some(events);
                e.start_error = None;
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
    pub(super) fn remove(&mut self, id: &str, remove_log: bool) {
        self.on_events(id);
        let Some(mut e) = self.sandboxes.remove(id) else { return };
        self.by_key.remove(&e.key);
        self.denials.unregister(id);
        records::remove(&self.cfg.state_dir, id);
        self.counters.retire(&e.broker);
        e.log.drain();
        if remove_log {
            e.log.remove();
        } else {
            drop(e.log);
            let live: Vec<&str> = self.sandboxes.keys().map(String::as_str).collect();
            log_sink::prune_kept(&self.cfg.log_dir, &live, log_sink::MAX_KEPT);
        }
        let now = Instant::now();
        while self.gone.front().is_some_and(|g| now.duration_since(g.at) > GONE_KEEP) || self.gone.len() >= MAX_GONE {
            self.gone.pop_front();
        }
        self.gone.push_back(Gone { at: now, id: id.to_string(), uid: e.rec.uid, status: "gone".into(), published: e.published.clone() });
        let others = self.stop_waiters.remove(id).unwrap_or_default();
        for cid in e.waiting.take().into_iter().chain(others) {
            self.answer(cid, json!({ "ok": false, "error": format!("sandbox {id} is gone") }));
        }
    }

    /// A sandbox removed lately, for its requester (or root).
    pub(super) fn gone(&self, id: &str, uid: u32) -> Option<&Gone> {
        self.gone.iter().rev().find(|g| g.id == id && (uid == 0 || g.uid == uid) && g.at.elapsed() <= GONE_KEEP)
    }

    /// Stop every sandbox (SIGTERM to all, one shared grace period, then SIGKILL)
    /// and forget their records: a stopped daemon relaunches nothing.
    pub(super) fn shutdown(&mut self) {
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
        // Launchers killed at the deadline could not clean up after themselves.
        self.sweep_stale();
        // Forensic bundles still being written are finished (their reads are bounded).
        self.poll_bundles(true);
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.audit.event("server_shutdown", json!({ "stopped": ids, "outcome": "ok" }));
    }
}

/// "exit N" or "signal N".
pub(super) fn describe(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => s.code().map(|c| format!("exit {c}")).or_else(|| s.signal().map(|n| format!("signal {n}"))).unwrap_or_default(),
        None => "unknown".into(),
    }
}

/// Wait for a child up to `timeout`, then SIGKILL it and reap it.
/// Ended by a signal: a launcher that could not remove its cgroup and leases.
fn killed(status: Option<std::process::ExitStatus>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.is_none_or(|s| s.signal().is_some())
}

pub(super) fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
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

/// The network namespace of a sandbox whose init is `init`, checked to be the
/// child of our launcher `launcher` (not yet reaped by us, so its pid is its
/// own) and still alive after the open, so that a recycled pid is never entered.
/// (Init enters its own network namespace before its first message to the
/// launcher, and the ready line comes after its `Running`: this is never the
/// host's.)
fn sandbox_netns(init: i32, launcher: i32) -> Result<crate::net::broker::Netns, String> {
    // SAFETY: pidfd_open(2) with a pid and no flags; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) };
    if fd < 0 {
        return Err(format!("pidfd_open({init}): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that we own from now on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let ppid = records::proc_stat(init).and_then(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()));
    if ppid != Some(launcher) {
        return Err(format!("pid {init} is not the sandbox init of launcher {launcher}"));
    }
    let ns = crate::net::broker::Netns::of_pid(init).map_err(|e| format!("/proc/{init}/ns/net: {e}"))?;
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a pidfd is readable once its process has exited.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        return Err(format!("sandbox init {init} exited"));
    }
    Ok(ns)
}
