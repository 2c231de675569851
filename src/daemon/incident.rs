//! The daemon's side of denials and incident response: attribution of each
//! sandbox (registered when it is ready), the denial reports (audit events,
//! metrics, tripwires), and `denials`, `events`, `freeze`, `thaw`, `kill`.
//!
//! Freezing a sandbox: every process of its cgroups is frozen (v1 freezer or
//! v2 cgroup.freeze); its launcher, which runs the broker, the forwards and the
//! egress proxy, is stopped with SIGSTOP, so that nothing is accepted or
//! relayed (connections wait in the kernel's backlog); health checks pause. A
//! forensic bundle is written (`crate::incident::bundle`) by a worker thread
//! (at most [`MAX_BUNDLE_WORKERS`] at once, the rest queued): the freeze, the
//! launcher's stop and the `sandbox_freeze` event happen before the client is
//! answered; the answer carries the incident id and the bundle's directory at
//! once, and a `forensic_bundle` event says when it is written. A freeze that
//! fails is thawed again. Thaw reverses both;
//! kill SIGKILLs the cgroup, resumes the launcher, and removes the sandbox as
//! a stop does.

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use serde_json::{Value, json};

use super::*;
use crate::denials::Kind;
use crate::denials::tripwire::Action;

/// A sandbox's frozen state (its tripwires are armed in the denial hub).
pub(super) struct SandboxIncident {
    pub(super) frozen: Option<Frozen>,
    /// A freeze or kill that fired before the sandbox was ready (applied then).
    pending: Option<(Action, String)>,
}

pub(super) struct Frozen {
    pub(super) incident_id: String,
}

/// Bundles written at once (each runs git and reads the worktree, bounded).
const MAX_BUNDLE_WORKERS: usize = 2;
/// Bundles waiting for a worker (more: the freeze holds, the bundle fails).
pub(super) const MAX_BUNDLES_QUEUED: usize = 16;

/// A forensic bundle being written.
pub(super) struct BundleJob {
    id: String,
    agent: Option<String>,
    incident_id: String,
    /// Set by the worker before it wakes the loop (a finished thread may not
    /// look finished yet when the loop wakes: the result is what counts).
    result: std::sync::Arc<std::sync::Mutex<Option<Result<PathBuf, String>>>>,
    job: std::thread::JoinHandle<()>,
}

impl SandboxIncident {
    pub(super) fn new() -> SandboxIncident {
        SandboxIncident { frozen: None, pending: None }
    }
}

/// A ready sandbox as the attribution knows it: its host uid is used only
/// when it is its own (an idmapped sandbox's leased uid, not the worktree
/// owner's, and no other sandbox's).
pub(super) fn owner(id: &str, e: &Entry) -> crate::denials::hub::Owner {
    let sandbox = e.info["id"].as_str().unwrap_or("").to_string();
    let uid = e.info["pid"].as_i64().and_then(|pid| host_uid(pid as i32));
    let owner_uid = std::fs::symlink_metadata(&e.rec.worktree).map(|m| m.uid()).ok();
    let uid = uid.filter(|u| Some(*u) != owner_uid && *u != 0);
    crate::denials::hub::Owner { id: id.to_string(), sandbox, uid }
}

/// The real uid of a process, as the daemon's user namespace (the host's) sees it.
fn host_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()).and_then(|u| u.parse().ok())
}

fn incident_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("inc-{t}-{:08x}", crate::launch::random_u32())
}

impl Daemon {
    /// Report what is due: one `policy_violation` audit event per (sandbox,
    /// kind, detail) with the denials since its last report; then the
    /// tripwires that fired (matched by the hub on each denial as it came).
    pub(super) fn flush_denials(&mut self) {
        let reports = self.denials.lock().agg.take_reports(Instant::now());
        for r in reports {
            let (agent, sandbox) = match self.sandboxes.get(&r.sandbox) {
                Some(e) => (e.rec.agent.clone(), e.info["id"].clone()),
                None => (None, Value::Null),
            };
            let source = if matches!(r.kind, Kind::Egress | Kind::Ingress) { "launcher" } else { "kernel" };
            self.audit.event(
                "policy_violation",
                json!({ "id": r.sandbox, "sandbox": sandbox, "agent": agent, "kind": r.kind.name(), "detail": r.detail,
                        "count": r.count, "total": r.total, "source": source, "outcome": "denied" }),
            );
        }
        for loss in self.denials.take_losses() {
            let agents: Vec<Option<String>> = loss.flooders.iter().map(|id| self.sandboxes.get(id).and_then(|e| e.rec.agent.clone())).collect();
            self.audit.event(
                "denials_lost",
                json!({ "records": loss.records, "flooders": loss.flooders, "agents": agents, "uids": loss.uids, "sandbox": loss.sandbox, "source": "kernel",
                        "outcome": "lost" }),
            );
        }
        for (id, fired) in self.denials.take_fired() {
            if !self.sandboxes.contains_key(&id) {
                continue;
            }
            self.counters_tripwires += 1;
            let action = match fired.action {
                Action::Alert => "alert",
                Action::Freeze => "freeze",
                Action::Kill => "kill",
            };
            let agent = self.sandboxes.get(&id).and_then(|e| e.rec.agent.clone());
            self.audit.event(
                "tripwire",
                json!({ "id": id, "agent": agent, "rule": fired.rule, "kind": fired.kind.name(), "detail": fired.detail,
                        "count": fired.count, "action": action, "outcome": "fired" }),
            );
            let why = format!("tripwire {} ({} {}: {} denials)", fired.rule, fired.kind.name(), fired.detail, fired.count);
            if fired.action != Action::Alert
                && let Some(e) = self.sandboxes.get_mut(&id)
                && e.state != State::Running
            {
                // Not ready yet (its cgroups are not known): when it is.
                e.incident.pending.get_or_insert((fired.action, why));
                continue;
            }
            match fired.action {
                Action::Alert => {}
                Action::Freeze => {
                    if self.sandboxes.get(&id).is_some_and(|e| e.incident.frozen.is_none()) {
                        let _ = self.freeze(&id, &why, "tripwire", None);
                    }
                }
                Action::Kill => {
                    self.kill(&id, &why, None);
                }
            }
        }
    }

    /// A sandbox became ready: a tripwire that fired while it started acts now.
    pub(super) fn apply_pending_tripwire(&mut self, id: &str) {
        let Some((action, why)) = self.sandboxes.get_mut(id).and_then(|e| e.incident.pending.take()) else { return };
        match action {
            Action::Freeze => {
                let _ = self.freeze(id, &why, "tripwire", None);
            }
            Action::Kill => self.kill(id, &why, None),
            Action::Alert => {}
        }
    }

    /// `swarmcell_denials_total{sandbox,kind}` and the reader's own counters.
    pub(super) fn denials_metrics(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let s = self.denials.lock();
        let _ = writeln!(
            o,
            "# HELP swarmcell_denials_total Accesses refused to a sandbox, by kind (kernel: fs, net, scope, syscall; launcher: egress, ingress)."
        );
        let _ = writeln!(o, "# TYPE swarmcell_denials_total counter");
        for (id, d) in &s.agg.sandboxes {
            for (kind, n) in &d.by_kind {
                let _ = writeln!(o, "swarmcell_denials_total{{sandbox=\"{id}\",kind=\"{}\"}} {n}", kind.name());
            }
        }
        let dropped = s.agg.dropped + s.overruns;
        for (name, help, v) in [
            ("swarmcell_denials_dropped_total", "Denial records lost before they were counted (kernel reconciliation, socket overruns).", dropped),
            ("swarmcell_denials_unattributed_total", "Denial records that named no known sandbox.", s.agg.unattributed),
            ("swarmcell_tripwires_total", "Tripwires fired.", self.counters_tripwires),
            (
                "swarmcell_denials_kernel_lost_total",
                "Audit records the kernel dropped since the daemon started, anyone's (denials_lost events say whose flood).",
                self.denials.kernel_lost(),
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        o
    }

    fn denials_of(&self, id: Option<&str>, uid: u32) -> Value {
        let s = self.denials.lock();
        let visible = |sid: &str| uid == 0 || self.sandboxes.get(sid).is_some_and(|e| e.rec.uid == uid);
        let mut list = Vec::new();
        for (sid, d) in &s.agg.sandboxes {
            if id.is_some_and(|i| i != sid) || !visible(sid) {
                continue;
            }
            for ((kind, detail), c) in &d.details {
                list.push(json!({ "id": sid, "kind": kind.name(), "detail": detail, "count": c.total, "first": c.first, "last": c.last }));
            }
        }
        json!({ "ok": true, "kernel": self.denials.kernel, "landlock": self.denials.landlock, "seccomp": self.denials.seccomp,
                "dropped": s.agg.dropped + s.overruns, "overruns": s.overruns, "unattributed": s.agg.unattributed,
                "kernel_lost": self.denials.kernel_lost(), "denials": list })
    }

    pub(super) fn handle_incident(&mut self, req: Request, cid: u64, uid: u32) {
        let v = match req {
            Request::Denials { id } => {
                // Report what is pending first: the counts shown are the current ones.
                self.flush_denials();
                self.denials_of(id.as_deref(), uid)
            }
            Request::Events { id } => {
                let recent = self.audit.recent(&id);
                // A sandbox that is gone is still its requester's (and root's)
                // only: its launch event says whose it was (none kept: root's).
                let mine = uid == 0
                    || match self.sandboxes.get(&id) {
                        Some(e) => e.rec.uid == uid,
                        None => recent.iter().any(|e| e["event"] == "sandbox_launch" && e["uid"] == uid),
                    };
                if !mine || (!self.sandboxes.contains_key(&id) && recent.is_empty()) {
                    json!({ "ok": false, "error": format!("no sandbox {id}") })
                } else {
                    json!({ "ok": true, "events": recent })
                }
            }
            Request::Freeze { id } => match self.freeze(&id, "frozen by an operator (ctl freeze)", "operator", Some(uid)) {
                Ok(v) => v,
                Err(e) => json!({ "ok": false, "error": e }),
            },
            Request::Thaw { id } => match self.thaw(&id, uid) {
                Ok(v) => v,
                Err(e) => json!({ "ok": false, "error": e }),
            },
            Request::Kill { id } => {
                if !self.sandboxes.contains_key(&id) {
                    json!({ "ok": false, "error": format!("no sandbox {id}") })
                } else {
                    // Answered once it is gone (as a stop).
                    self.kill(&id, "killed by an operator (ctl kill)", Some((cid, uid)));
                    return;
                }
            }
            _ => json!({ "ok": false, "error": "not an incident request" }),
        };
        self.answer(cid, v);
    }

    fn cgroups_of(e: &Entry) -> Vec<PathBuf> {
        e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str).map(PathBuf::from).collect()
    }

    /// Freeze sandbox `id` and write its bundle.
    fn freeze(&mut self, id: &str, why: &str, by: &str, uid: Option<u32>) -> Result<Value, String> {
        let e = self.sandboxes.get_mut(id).ok_or_else(|| format!("no sandbox {id}"))?;
        if e.state != State::Running {
            return Err(format!("sandbox {id} is not running ({:?})", e.state).to_lowercase());
        }
        if let Some(f) = &e.incident.frozen {
            return Err(format!("sandbox {id} is already frozen (incident {})", f.incident_id));
        }
        let started = crate::denials::aggregate::unix_now();
        let cgroups = Self::cgroups_of(e);
        if let Err(err) = crate::incident::freezer::set(&cgroups, true) {
            // A cgroup stuck FREEZING (or one hierarchy frozen and the other
            // not) must not stay half-frozen with nothing that says so: thaw.
            let thawed = crate::incident::freezer::set(&cgroups, false);
            let agent = e.rec.agent.clone();
            self.audit.event(
                "sandbox_freeze",
                json!({ "id": id, "agent": agent, "uid": uid, "reason": why, "by": by, "error": err, "thawed": thawed.is_ok(), "outcome": "failed" }),
            );
            return Err(match thawed {
                Ok(()) => format!("freezing sandbox {id}: {err} (thawed again)"),
                Err(t) => format!("freezing sandbox {id}: {err}; thawing it again failed too: {t}"),
            });
        }
        let frozen_at = crate::denials::aggregate::unix_now();
        // The launcher's accept loops, relays and proxy stop with it.
        // SAFETY: SIGSTOP to our own child, the sandbox's launcher (not reaped: the sandbox runs).
        unsafe { libc::kill(e.child.id() as i32, libc::SIGSTOP) };
        e.probe = None;
        let incident_id = incident_id();
        e.incident.frozen = Some(Frozen { incident_id: incident_id.clone() });
        let agent = e.rec.agent.clone();
        self.audit.event(
            "sandbox_freeze",
            json!({ "id": id, "agent": agent, "uid": uid, "incident_id": incident_id, "reason": why, "by": by, "outcome": "frozen" }),
        );
        let Some(e) = self.sandboxes.get(id) else { return Err(format!("sandbox {id} is gone")) };
        let denials = self.denials_of(Some(id), 0);
        let input = crate::incident::bundle::Input {
            incident_id: incident_id.clone(),
            sandbox: id.to_string(),
            launcher_id: e.info["id"].as_str().unwrap_or("").to_string(),
            agent: agent.clone(),
            severity: if by == "tripwire" { "high" } else { "medium" }.into(),
            kind: if by == "tripwire" { "tripwire" } else { "operator_freeze" }.into(),
            description: why.to_string(),
            init_pid: e.info["pid"].as_i64().map(|p| p as i32),
            cgroups,
            worktree: e.rec.worktree.clone(),
            denials: denials["denials"].clone(),
            events: self.audit.recent(id),
            timeline: vec![
                json!({ "time": started, "event": "detected", "detail": why }),
                json!({ "time": frozen_at, "event": "isolated", "detail": "cgroup frozen, launcher stopped" }),
            ],
        };
        // Written by a worker thread (at most MAX_BUNDLE_WORKERS at once, the
        // rest queued): a worktree made to be slow to read (bounded as it is)
        // must not hold up the loop and every other sandbox. The client is
        // answered now, with the incident id and the bundle's directory; a
        // `forensic_bundle` event says when it is written.
        let dir = self.cfg.state_dir.join("incidents").join(&incident_id);
        if self.bundle_queue.len() >= MAX_BUNDLES_QUEUED {
            self.audit.event(
                "forensic_bundle",
                json!({ "id": id, "agent": agent, "incident_id": incident_id, "error": "too many bundles waiting to be written", "outcome": "failed" }),
            );
        } else {
            self.bundle_queue.push_back(input);
            self.start_bundles();
        }
        Ok(json!({ "ok": true, "id": id, "incident_id": incident_id, "bundle": dir }))
    }

    /// Start queued bundles while fewer than MAX_BUNDLE_WORKERS are being written.
    fn start_bundles(&mut self) {
        while self.bundles.len() < MAX_BUNDLE_WORKERS {
            let Some(input) = self.bundle_queue.pop_front() else { return };
            let base = self.cfg.state_dir.join("incidents");
            let wake = self.denials.wake_fd();
            let (id, agent, incident_id) = (input.sandbox.clone(), input.agent.clone(), input.incident_id.clone());
            let result = std::sync::Arc::new(std::sync::Mutex::new(None));
            let out = result.clone();
            let job = std::thread::Builder::new().name("bundle".into()).spawn(move || {
                let r = crate::incident::bundle::write(&base, &input);
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                let one = 1u64.to_ne_bytes();
                // SAFETY: an 8-byte write to the daemon's eventfd, which lives as long as the daemon.
                unsafe { libc::write(wake, one.as_ptr().cast(), 8) };
            });
            match job {
                Ok(job) => self.bundles.push(BundleJob { id, agent, incident_id, result, job }),
                Err(err) => self.audit.event(
                    "forensic_bundle",
                    json!({ "id": id, "agent": agent, "incident_id": incident_id, "error": err.to_string(), "outcome": "failed" }),
                ),
            }
        }
    }

    /// Bundles written since the last look (`wait`: all of them, at shutdown):
    /// each a `forensic_bundle` event.
    pub(super) fn poll_bundles(&mut self, wait: bool) {
        let is_done = |b: &BundleJob| b.result.lock().unwrap_or_else(|p| p.into_inner()).is_some() || b.job.is_finished();
        let (done, pending): (Vec<BundleJob>, Vec<BundleJob>) = std::mem::take(&mut self.bundles).into_iter().partition(|b| wait || is_done(b));
        self.bundles = pending;
        for b in done {
            let _ = b.job.join();
            let result = b.result.lock().unwrap_or_else(|p| p.into_inner()).take();
            let fields = match result {
                Some(Ok(dir)) => json!({ "id": b.id, "agent": b.agent, "incident_id": b.incident_id, "path": dir, "outcome": "written" }),
                Some(Err(err)) => json!({ "id": b.id, "agent": b.agent, "incident_id": b.incident_id, "error": err, "outcome": "failed" }),
                None => {
                    json!({ "id": b.id, "agent": b.agent, "incident_id": b.incident_id, "error": "the bundle writer panicked", "outcome": "failed" })
                }
            };
            self.audit.event("forensic_bundle", fields);
        }
        if wait {
            // The daemon stops: what is still queued is not written.
            for input in std::mem::take(&mut self.bundle_queue) {
                self.audit.event(
                    "forensic_bundle",
                    json!({ "id": input.sandbox, "agent": input.agent, "incident_id": input.incident_id,
                            "error": "the daemon stopped before it was written", "outcome": "failed" }),
                );
            }
        } else {
            self.start_bundles();
        }
    }

    fn thaw(&mut self, id: &str, uid: u32) -> Result<Value, String> {
        let e = self.sandboxes.get_mut(id).ok_or_else(|| format!("no sandbox {id}"))?;
        let Some(f) = e.incident.frozen.take() else { return Err(format!("sandbox {id} is not frozen")) };
        // SAFETY: SIGCONT to our own child, the sandbox's launcher.
        unsafe { libc::kill(e.child.id() as i32, libc::SIGCONT) };
        let r = crate::incident::freezer::set(&Self::cgroups_of(e), false);
        // Health checks resume from now, and a lease runs again in full (it
        // did not run while frozen).
        e.next_health = Instant::now() + e.health.interval;
        if e.lease_until.is_some() {
            e.lease_until = e.rec.lease_s.map(|s| Instant::now() + std::time::Duration::from_secs(s));
        }
        e.failures = 0;
        let agent = e.rec.agent.clone();
        let outcome = if r.is_ok() { "thawed" } else { "failed" };
        self.audit.event(
            "sandbox_thaw",
            json!({ "id": id, "agent": agent, "uid": uid, "incident_id": f.incident_id, "outcome": outcome, "error": r.as_ref().err() }),
        );
        r.map_err(|err| format!("thawing sandbox {id}: {err}"))?;
        Ok(json!({ "ok": true, "id": id, "incident_id": f.incident_id }))
    }

    /// SIGKILL everything in the sandbox, resume its launcher so that it
    /// cleans up, and remove the sandbox; `waiting`: the client answered when it is gone.
    fn kill(&mut self, id: &str, why: &str, waiting: Option<(u64, u32)>) {
        let Some(e) = self.sandboxes.get_mut(id) else { return };
        let killed = crate::incident::freezer::kill(&Self::cgroups_of(e));
        let incident_id = e.incident.frozen.take().map(|f| f.incident_id);
        if e.state != State::Restarting {
            // SAFETY: SIGCONT to our own child, the sandbox's launcher (not reaped).
            unsafe { libc::kill(e.child.id() as i32, libc::SIGCONT) };
        }
        let agent = e.rec.agent.clone();
        if let Some((cid, uid)) = waiting {
            e.stop_by = Some(uid);
            if let Some(l) = e.waiting.replace(cid) {
                self.answer(l, json!({ "ok": false, "error": format!("sandbox {id} was killed before it was ready") }));
            }
            if let Some(c) = self.clients.get_mut(&cid) {
                c.wait();
            }
        }
        self.audit.event(
            "sandbox_kill",
            json!({ "id": id, "agent": agent, "uid": waiting.map(|w| w.1), "incident_id": incident_id, "reason": why, "processes": killed, "outcome": "killed" }),
        );
        self.begin_stop(id, AfterExit::Remove);
    }
}
