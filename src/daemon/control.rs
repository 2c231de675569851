//! The daemon's listeners (parent side, in the daemon's loop): control
//! clients (authorised by SO_PEERCRED, one validated request each) and metrics
//! scrapers; and `swarmcell ctl`, the client.

use super::*;

impl Daemon {
    pub(super) fn accept_clients(&mut self) {
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
            if self.clients.values().filter(|c| c.deadline().is_some()).count() >= MAX_CLIENTS {
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

    pub(super) fn on_client(&mut self, cid: u64) {
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
    pub(super) fn answer(&mut self, cid: u64, v: Value) {
        if let Some(c) = self.clients.get_mut(&cid)
            && c.reply(format!("{v}\n").into_bytes())
        {
            self.clients.remove(&cid);
        }
    }

    pub(super) fn handle(&mut self, req: Request, cid: u64, uid: u32) {
        // A sandbox is its requester's (and root's): another tenant allowed on
        // the socket neither reads its log, inspects it, nor stops it, and is
        // told it does not exist.
        if let Request::Stop { id }
        | Request::Inspect { id }
        | Request::Logs { id }
        | Request::Status { id }
        | Request::Events { id }
        | Request::Freeze { id }
        | Request::Thaw { id }
        | Request::Kill { id }
        | Request::Denials { id: Some(id) } = &req
            && uid != 0
            && self.sandboxes.get(id).is_some_and(|e| e.rec.uid != uid)
        {
            self.audit.event("policy_violation", json!({ "uid": uid, "id": id, "error": "not the sandbox's requester", "outcome": "refused" }));
            return self.answer(cid, json!({ "ok": false, "error": format!("no sandbox {id}") }));
        }
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
                self.start(cid, uid, wt, agent, task, argv, (policy_path, policy), None);
            }
            Request::Agent { agent, task, repo, branch, policy, lease_s } => self.launch_agent(cid, uid, agent, task, repo, branch, policy, lease_s),
            Request::Renew { ids } => self.renew(cid, uid, ids),
            Request::AgentRemove { agent, force } => self.agent_remove(cid, uid, agent, force),
            Request::Status { id } => {
                let v = match self.sandboxes.get(&id) {
                    Some(e) => {
                        let cgroups: Vec<&str> = if e.state == State::Running {
                            e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
                        } else {
                            vec![]
                        };
                        json!({ "ok": true, "id": id, "state": format!("{:?}", e.state).to_lowercase(), "agent": e.rec.agent, "task": e.rec.task,
                                "port": e.info["port"], "restarts": e.rec.restarts,
                                "healthy": e.state == State::Running && e.failures == 0, "health_failures": e.failures,
                                "lease_s": e.rec.lease_s, "secret": e.rec.secret,
                                "lease_left_s": e.lease_until.map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64()),
                                "usage": metrics::usage(&cgroups) })
                    }
                    None => match self.gone(&id, uid) {
                        Some(g) => {
                            let (branch, commit) = g.published.clone().unzip();
                            json!({ "ok": true, "id": id, "state": "gone", "status": g.status, "healthy": false,
                                    "branch": branch, "commit": commit })
                        }
                        None => json!({ "ok": false, "error": format!("no sandbox {id}") }),
                    },
                };
                self.answer(cid, v);
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
                // Already stopping (a retry, or its lease expired): this
                // client waits for the same answer, the agent's commit.
                Some(e) => {
                    let others = self.stop_waiters.entry(id.clone()).or_default();
                    if e.waiting.is_none() {
                        e.waiting = Some(cid);
                    } else if others.len() < MAX_STOP_WAITERS {
                        others.push(cid);
                    } else {
                        return self
                            .answer(cid, json!({ "ok": false, "error": format!("sandbox {id} is already stopping; try again"), "retry": true }));
                    }
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.wait();
                    }
                }
                None => {
                    let v = match self.gone(&id, uid) {
                        Some(g) => {
                            let (branch, commit) = g.published.clone().unzip();
                            json!({ "ok": true, "id": id, "status": "gone", "stopped": g.status, "branch": branch, "commit": commit })
                        }
                        None => json!({ "ok": false, "error": format!("no sandbox {id}") }),
                    };
                    self.answer(cid, v);
                }
            },
            Request::List {} => {
                let mine = |v: &Value| uid == 0 || v["uid"] == uid;
                let list: Vec<Value> = self.list().into_iter().filter(mine).collect();
                self.answer(cid, json!({ "ok": true, "sandboxes": list }));
            }
            Request::Stats {} => {
                let v = self.stats(uid);
                self.answer(cid, json!({ "ok": true, "sandboxes": v }));
            }
            Request::Inspect { id } => {
                let pid = self.sandboxes.get(&id).filter(|e| e.state == State::Running).and_then(|e| e.info["pid"].as_i64());
                let v = match pid.map(|p| crate::attest::inspect::find(&p.to_string())) {
                    Some(Ok((init, payload))) => json!({ "ok": true, "inspect": crate::attest::inspect::report(init, payload) }),
                    Some(Err(e)) => json!({ "ok": false, "error": e }),
                    None => json!({ "ok": false, "error": format!("no running sandbox {id}") }),
                };
                self.answer(cid, v);
            }
            Request::Denials { .. } | Request::Events { .. } | Request::Freeze { .. } | Request::Thaw { .. } | Request::Kill { .. } => {
                self.handle_incident(req, cid, uid)
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

    /// Launch a checked request on its canonical worktree `wt`: the owner,
    /// one-per-worktree and capacity checks, then the sandbox. Answered when
    /// it is healthy (or failed).
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        cid: u64,
        uid: u32,
        wt: PathBuf,
        agent: Option<String>,
        task: Option<String>,
        argv: Vec<String>,
        (policy_path, policy): (Option<PathBuf>, crate::policy::Policy),
        lease_s: Option<u64>,
    ) {
        // An agent acts as its worktree's owner: only that owner, root, or
        // a requester the config delegates that owner to may launch one.
        let owner = std::fs::symlink_metadata(&wt).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if !owner.as_ref().is_ok_and(|o| self.cfg.may_launch_for(uid, *o)) {
            let e = match owner {
                Ok(o) => format!("worktree {} belongs to uid {o}, not to the requester (uid {uid}); see launch_for", wt.display()),
                Err(err) => format!("worktree {}: {err}", wt.display()),
            };
            self.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "error": e, "outcome": "refused" }));
            return self.answer(cid, json!({ "ok": false, "error": e }));
        }
        // One sandbox per worktree: two would share its git state.
        if let Some(other) = self.sandboxes.values().find(|e| e.rec.worktree == wt) {
            let e = format!("worktree {} already has a sandbox ({})", wt.display(), other.rec.id);
            return self.answer(cid, json!({ "ok": false, "error": e }));
        }
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
        let rec = Record {
            id: id.clone(),
            agent,
            task,
            worktree: wt,
            argv,
            policy: policy_path,
            uid,
            port: None,
            restarts: 0,
            launcher: None,
            secret: None,
            lease_s,
        };
        match self.add(rec, &policy, Some(cid)) {
            Ok(()) => {
                if let Some(c) = self.clients.get_mut(&cid) {
                    c.wait();
                }
            }
            Err(e) => self.answer(cid, json!({ "ok": false, "error": e })),
        }
    }

    /// `agent`: the requester's sandbox for this task if it has one, else a
    /// new one on `worktree_base/UID/AGENT` (a worktree of `repo` made here, as
    /// the repository's owner, when missing).
    #[allow(clippy::too_many_arguments)]
    fn launch_agent(
        &mut self,
        cid: u64,
        uid: u32,
        agent: String,
        task: String,
        repo: PathBuf,
        branch: Option<String>,
        policy: Option<PathBuf>,
        lease_s: Option<u64>,
    ) {
        let refuse = |d: &mut Self, e: String| {
            d.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "task": task, "error": e, "outcome": "refused" }));
            d.answer(cid, json!({ "ok": false, "error": e }));
        };
        let repo = match protocol::check_agent(&agent, &task, &repo, branch.as_deref(), lease_s, &self.cfg.repositories) {
            Ok(r) => r,
            Err(e) => return refuse(self, e),
        };
        // At most one sandbox per task and requester: a retried request gets it back.
        if let Some((id, e)) = self.sandboxes.iter_mut().find(|(_, e)| e.rec.uid == uid && e.rec.task.as_deref() == Some(task.as_str())) {
            let id = id.clone();
            if e.rec.agent.as_deref() != Some(agent.as_str()) {
                let err = format!("task {task} already runs as agent {} (sandbox {id})", e.rec.agent.as_deref().unwrap_or("-"));
                return refuse(self, err);
            }
            if e.state != State::Running {
                let err = format!("sandbox {id} of task {task} is {}; try again", format!("{:?}", e.state).to_lowercase());
                let v = json!({ "ok": false, "error": err, "retry": e.state != State::Stopping });
                return self.answer(cid, v);
            }
            e.lease_until = e.rec.lease_s.map(|s| Instant::now() + Duration::from_secs(s));
            let mut out = json!({ "ok": true, "id": id, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"],
                                  "worktree": e.rec.worktree, "reused": true });
            if let Some(secret) = &e.rec.secret {
                out["secret"] = json!(secret);
            }
            let fields = json!({ "id": id, "agent": agent, "task": task, "uid": uid, "outcome": "reused" });
            self.audit.event("sandbox_launch", fields);
            return self.answer(cid, out);
        }
        let (policy_path, policy) = match self.policy_for(policy.as_deref()) {
            Ok(p) => p,
            Err(e) => return refuse(self, e),
        };
        let (owner, group) = match std::fs::metadata(&repo) {
            Ok(m) => (std::os::unix::fs::MetadataExt::uid(&m), std::os::unix::fs::MetadataExt::gid(&m)),
            Err(e) => return refuse(self, format!("repository {}: {e}", repo.display())),
        };
        if !self.cfg.may_launch_for(uid, owner) {
            return refuse(self, format!("repository {} belongs to uid {owner}, not to the requester (uid {uid}); see launch_for", repo.display()));
        }
        if self.sandboxes.len() >= self.cfg.max_sandboxes {
            let e = format!("{} sandboxes are running (max_sandboxes)", self.sandboxes.len());
            return self.answer(cid, json!({ "ok": false, "error": e }));
        }
        // Each requester's agents live in its own directory (root's, 0755),
        // so agent ids are a namespace per requester and `max_worktrees` a
        // budget per requester: another tenant can neither take an id
        // first nor use up the worktrees.
        let base = match self.requester_base(uid) {
            Ok(b) => b,
            Err(e) => return refuse(self, e),
        };
        let path = base.join(&agent);
        if self.creating.iter().any(|c| c.uid == uid && (c.task == task || c.agent == agent)) || self.removing.contains(&(uid, agent.clone())) {
            let e = format!("the worktree of agent {agent} (task {task}) is being made or removed; try again");
            return self.answer(cid, json!({ "ok": false, "error": e, "retry": true }));
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            if let Err(e) = crate::git::preflight(&path, std::slice::from_ref(&repo)) {
                return refuse(self, format!("worktree {}: {e}", path.display()));
            }
            return self.finish_agent(cid, uid, path, agent, task, (policy_path, policy), lease_s);
        }
        let made = std::fs::read_dir(&base).map_or(0, Iterator::count);
        if made >= self.cfg.max_worktrees {
            let e = format!("{} holds {made} worktrees (max_worktrees, per requester); remove some (agent_remove)", base.display());
            return refuse(self, e);
        }
        if self.creating.len() + self.removing.len() >= MAX_CREATING {
            let e = format!("{} worktrees are being made or removed; try again", self.creating.len() + self.removing.len());
            return self.answer(cid, json!({ "ok": false, "error": e, "retry": true }));
        }
        // git runs as the repository's owner checked above (never as whoever
        // owns the path when git resolves it again), in a thread of its own:
        // a slow checkout (a big tree, the owner's own filters) must not hold
        // the loop, which goes on serving the others; the request continues
        // in `worktrees_made` when the thread is done.
        let job = WorktreeJob { uid, agent, task, path, branch, policy: (policy_path, policy), lease_s, cid };
        let owner = (owner, group);
        let (a, t, b) = (job.agent.clone(), job.task.clone(), job.branch.clone());
        let spawned = self.in_thread("worktree-add", move || {
            let req = crate::git::AddRequest { repo: &repo, id: &a, base: &base, branch: b.as_deref(), owner: Some(owner) };
            let r = crate::git::add(&req).map_err(|e| e.to_string()).map(|p| (p, repo.clone()));
            GitDone::Made(a, t, uid, r)
        });
        match spawned {
            Ok(()) => {
                if let Some(c) = self.clients.get_mut(&cid) {
                    c.wait();
                }
                self.creating.push(job);
            }
            Err(e) => self.answer(cid, json!({ "ok": false, "error": format!("worktree creation: {e}") })),
        }
    }

    /// Run `work` (git, as a repository's owner) in a thread of its own; the
    /// loop is woken to take its result (`worktrees_made`).
    fn in_thread(&self, name: &str, work: impl FnOnce() -> GitDone + Send + 'static) -> Result<(), String> {
        let tx = self.made_tx.clone();
        let wake = self.made_wake.try_clone().map_err(|e| format!("eventfd: {e}"))?;
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send(work());
                // SAFETY: writing 8 bytes to our own eventfd.
                unsafe { libc::write(wake.as_raw_fd(), 1u64.to_ne_bytes().as_ptr().cast(), 8) };
            })
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `agent_remove`: one of the requester's own agent worktrees
    /// (`worktree_base/UID/AGENT`) removed like `swarmcell worktree remove`
    /// (refused while a sandbox runs on it, or, unless `force`, when it has
    /// changes or unpublished commits); its branch is kept. git runs in a thread.
    fn agent_remove(&mut self, cid: u64, uid: u32, agent: String, force: bool) {
        let refuse = |d: &mut Self, e: String| {
            d.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "error": e, "outcome": "refused" }));
            d.answer(cid, json!({ "ok": false, "error": e }));
        };
        if !crate::git::valid_agent_id(&agent) {
            return refuse(self, format!("agent id {agent:?} is invalid (^[a-z0-9][a-z0-9-]{{0,62}}$)"));
        }
        if self.creating.iter().any(|c| c.uid == uid && c.agent == agent) || self.removing.contains(&(uid, agent.clone())) {
            return self.answer(cid, json!({ "ok": false, "error": format!("the worktree of agent {agent} is busy; try again"), "retry": true }));
        }
        if self.creating.len() + self.removing.len() >= MAX_CREATING {
            return self.answer(cid, json!({ "ok": false, "error": "too many worktrees are being made or removed; try again", "retry": true }));
        }
        let base = match self.requester_base(uid) {
            Ok(b) => b,
            Err(e) => return refuse(self, e),
        };
        let a = agent.clone();
        match self.in_thread("worktree-remove", move || {
            let r = crate::git::remove(&base, &a, force).map_err(|e| e.to_string());
            GitDone::Removed { cid, uid, agent: a, result: r }
        }) {
            Ok(()) => {
                if let Some(c) = self.clients.get_mut(&cid) {
                    c.wait();
                }
                self.removing.push((uid, agent));
            }
            Err(e) => self.answer(cid, json!({ "ok": false, "error": format!("worktree removal: {e}") })),
        }
    }

    /// `worktree_base/UID`: the requester's directory of agent worktrees,
    /// made by root (0755) when missing; opened without following symlinks,
    /// and refused unless it is root's own directory (never one a tenant
    /// planted or moved there).
    pub(super) fn requester_base(&self, uid: u32) -> Result<PathBuf, String> {
        use crate::fs::safe_open;
        use std::os::fd::AsFd;
        let base = &self.cfg.worktree_base;
        // The configured base itself is root's to trust (as `worktree add` does).
        std::fs::create_dir_all(base).map_err(|e| format!("worktree base {}: {e}", base.display()))?;
        let base = &base.canonicalize().map_err(|e| format!("worktree base {}: {e}", base.display()))?;
        let b = safe_open::open_dir_nofollow(base, None).map_err(|e| format!("worktree base {}: {e}", base.display()))?;
        let name = uid.to_string();
        let d = safe_open::ensure_dir(b.fd.as_fd(), base, &name, 0, 0).map_err(|e| format!("worktree base {}: {e}", base.display()))?;
        if d.stat.st_mode & 0o7777 != 0o755 {
            nix::sys::stat::fchmod(&d.fd, nix::sys::stat::Mode::from_bits_truncate(0o755))
                .map_err(|e| format!("{}: fchmod: {}", base.join(&name).display(), e.desc()))?;
        }
        Ok(base.join(name))
    }

    /// A worktree thread is done: go on with the requests it held.
    pub(super) fn worktrees_made(&mut self) {
        let mut b = [0u8; 8];
        // SAFETY: reading our non-blocking eventfd into an 8-byte buffer.
        unsafe { libc::read(self.made_wake.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        while let Ok(done) = self.made_rx.try_recv() {
            let (agent, task, uid, result) = match done {
                GitDone::Made(agent, task, uid, result) => (agent, task, uid, result),
                GitDone::Removed { cid, uid, agent, result } => {
                    self.removing.retain(|(u, a)| (*u, a) != (uid, &agent));
                    let v = match result {
                        Ok(p) => {
                            self.audit.event("worktree_remove", json!({ "uid": uid, "agent": agent, "worktree": p, "outcome": "removed" }));
                            json!({ "ok": true, "agent": agent, "worktree": p })
                        }
                        Err(e) => {
                            self.audit.event("worktree_remove", json!({ "uid": uid, "agent": agent, "error": e, "outcome": "refused" }));
                            json!({ "ok": false, "error": e })
                        }
                    };
                    self.answer(cid, v);
                    continue;
                }
            };
            let Some(i) = self.creating.iter().position(|j| j.uid == uid && j.agent == agent && j.task == task) else { continue };
            let job = self.creating.swap_remove(i);
            let WorktreeJob { cid, path, policy, lease_s, .. } = job;
            match result {
                Ok((p, repo)) => {
                    let fields = json!({ "uid": uid, "agent": agent, "task": task, "repo": repo, "worktree": p, "outcome": "created" });
                    self.audit.event("worktree_add", fields);
                    // Checked again: the world moved on while git ran.
                    if self.sandboxes.values().any(|e| e.rec.uid == uid && e.rec.task.as_deref() == Some(task.as_str())) {
                        let e = format!("task {task} has a sandbox now; try again");
                        self.answer(cid, json!({ "ok": false, "error": e, "retry": true }));
                    } else if self.sandboxes.len() >= self.cfg.max_sandboxes {
                        let e = format!("{} sandboxes are running (max_sandboxes)", self.sandboxes.len());
                        self.answer(cid, json!({ "ok": false, "error": e }));
                    } else {
                        self.finish_agent(cid, uid, path, agent, task, policy, lease_s);
                    }
                }
                Err(e) => {
                    self.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "task": task, "error": e, "outcome": "refused" }));
                    self.answer(cid, json!({ "ok": false, "error": e }));
                }
            }
        }
    }

    /// The rest of an `agent` request, once its worktree is there.
    #[allow(clippy::too_many_arguments)]
    fn finish_agent(
        &mut self,
        cid: u64,
        uid: u32,
        path: PathBuf,
        agent: String,
        task: String,
        (policy_path, policy): (Option<PathBuf>, crate::policy::Policy),
        lease_s: Option<u64>,
    ) {
        let argv = policy.process.command.clone();
        match protocol::check_launch(&path, Some(&agent), Some(&task), &argv, &self.cfg.worktree_base, &self.cfg.commands) {
            Ok(wt) => self.start(cid, uid, wt, Some(agent), Some(task), argv, (policy_path, policy), lease_s),
            Err(e) => {
                self.audit.event("policy_violation", json!({ "uid": uid, "agent": agent, "task": task, "error": e, "outcome": "refused" }));
                self.answer(cid, json!({ "ok": false, "error": e }));
            }
        }
    }

    /// `renew`: each of the requester's leased sandboxes named gets its full lease again.
    fn renew(&mut self, cid: u64, uid: u32, ids: Vec<String>) {
        if ids.len() > protocol::MAX_RENEW || ids.iter().any(|id| !records::valid_id(id)) {
            let e = format!("renew takes at most {} sandbox ids (d-XXXXXXXX)", protocol::MAX_RENEW);
            self.audit.event("policy_violation", json!({ "uid": uid, "error": e, "outcome": "refused" }));
            return self.answer(cid, json!({ "ok": false, "error": e }));
        }
        let now = Instant::now();
        let (mut renewed, mut missing) = (Vec::new(), Vec::new());
        for id in ids {
            match self.sandboxes.get_mut(&id) {
                Some(e) if (uid == 0 || e.rec.uid == uid) && e.state != State::Stopping && e.lease_until.is_some() => {
                    e.lease_until = e.rec.lease_s.map(|s| now + Duration::from_secs(s));
                    renewed.push(id);
                }
                _ => missing.push(id),
            }
        }
        self.answer(cid, json!({ "ok": true, "renewed": renewed, "missing": missing }));
    }

    /// The policy a launch names (it must be one of the config's `policies`,
    /// or its `policy`), or the default one: (its path, the policy).
    pub(super) fn policy_for(&self, requested: Option<&Path>) -> Result<(Option<PathBuf>, crate::policy::Policy), String> {
        let Some(requested) = requested else { return Ok((self.cfg.policy.clone(), self.default_policy.clone())) };
        // Resolved as root: one answer whether the path resolves or is not
        // listed (else it would tell which hidden paths exist).
        let refused = || format!("policy {} is not one the daemon's config allows (`policies`)", requested.display());
        let canonical = requested.canonicalize().map_err(|_| refused())?;
        let allowed = self.cfg.policies.iter().chain(&self.cfg.policy).any(|p| p.canonicalize().is_ok_and(|p| p == canonical));
        if !allowed {
            return Err(refused());
        }
        let policy = crate::policy::Policy::load(&canonical).map_err(|e| e.to_string())?;
        Ok((Some(canonical), policy))
    }

    pub(super) fn list(&self) -> Vec<Value> {
        self.sandboxes
            .iter()
            .map(|(id, e)| {
                json!({ "id": id, "state": format!("{:?}", e.state).to_lowercase(), "agent": e.rec.agent, "task": e.rec.task,
                        "worktree": e.rec.worktree, "port": e.info["port"], "pid": e.info["pid"], "sandbox": e.info["id"],
                        "restarts": e.rec.restarts, "uid": e.rec.uid })
            })
            .collect()
    }

    pub(super) fn accept_scrapers(&mut self) {
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
    pub(super) fn on_scraper(&mut self, cid: u64) {
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
        metrics::render(&self.counters, &by_state, &views) + &self.denials_metrics()
    }
}

pub(super) fn peer_cred(s: &UnixStream) -> Option<libc::ucred> {
    // SAFETY: ucred is plain data; getsockopt fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid pointers and length.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    (r == 0).then_some(cred)
}

/// The control socket, mode 0660 (group: `socket_group`). A socket file left by
/// a dead daemon is replaced; one a live daemon answers on is not.
pub(super) fn bind_control_socket(cfg: &Config) -> Result<UnixListener, String> {
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
