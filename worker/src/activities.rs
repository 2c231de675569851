//! The activities (names as Temporal sees them): `LaunchAgent`,
//! `RunAgentCommand`, `StopAgent`, `AgentStatus`. Each is one audit event
//! (workflow id, run id, activity id, attempt, queue, the identity that
//! started the workflow, sanitized arguments, outcome). Invalid input fails
//! non-retryably; a sandbox whose activity is cancelled (by the workflow, or
//! because Temporal timed out its heartbeat) is stopped (INV-005).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::audit::{Audit, sanitize};
use crate::daemon::Daemon;
use crate::input;
use crate::opencode::OpenCode;

/// A sandbox this worker launched (or got back for a retried task).
#[derive(Clone)]
pub struct Known {
    pub port: u16,
    pub secret: Option<String>,
}

pub struct State {
    pub daemon: Daemon,
    pub audit: Audit,
    /// This host's name; its queue is `swarmcell-HOST`.
    pub host: String,
    pub host_queue: String,
    pub identity: String,
    /// Each sandbox's lease at the daemon (renewed by `lease::renew_loop`).
    pub lease_s: u64,
    pub heartbeat: Duration,
    /// Launches are refused (retryably: another host may take them) below this much available memory.
    pub min_free_bytes: u64,
    pub sandboxes: Mutex<HashMap<String, Known>>,
    /// Repository names (`--repo NAME=PATH`) this host's launches may use.
    pub repos: HashMap<String, std::path::PathBuf>,
    /// Who started each workflow run (its starter's Temporal identity), looked up once.
    callers: Mutex<HashMap<String, String>>,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        daemon: Daemon,
        audit: Audit,
        host: String,
        identity: String,
        lease_s: u64,
        heartbeat: Duration,
        min_free_bytes: u64,
        repos: HashMap<String, std::path::PathBuf>,
    ) -> State {
        let host_queue = format!("swarmcell-{host}");
        State {
            daemon,
            audit,
            host,
            host_queue,
            identity,
            lease_s,
            heartbeat,
            min_free_bytes,
            sandboxes: Mutex::default(),
            repos,
            callers: Mutex::default(),
        }
    }

    pub fn known_ids(&self) -> Vec<String> {
        self.sandboxes.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut m) = self.sandboxes.lock() {
            m.remove(id);
        }
    }
}

/// Why an activity failed.
pub enum Fail {
    /// Bad input, or a refusal retrying cannot change: non-retryable.
    Invalid(String),
    /// Anything else (the daemon busy or unreachable, no capacity, a start that failed).
    Retry(String),
    Cancelled,
}

impl Fail {
    fn outcome(&self) -> (&'static str, String) {
        match self {
            Fail::Invalid(e) => ("refused", e.clone()),
            Fail::Retry(e) => ("failed", e.clone()),
            Fail::Cancelled => ("cancelled", "cancelled".into()),
        }
    }

    fn into_error(self) -> ActivityError {
        match self {
            Fail::Invalid(e) => ActivityError::application(ApplicationFailure::non_retryable(format!("swarmcell: {e}"))),
            Fail::Retry(e) => ActivityError::application(ApplicationFailure::new(format!("swarmcell: {e}"))),
            Fail::Cancelled => ActivityError::cancelled(),
        }
    }
}

/// Errors the daemon gives for requests that no retry can fix.
fn daemon_refusal(error: &str) -> bool {
    [
        "is invalid",
        "not one the daemon",
        "not allowed",
        "launch_for",
        "already runs as agent",
        "not inside",
        "no sandbox",
        "lease_s",
        "shell metacharacter",
    ]
    .iter()
    .any(|n| error.contains(n))
}

fn daemon_error(v: &Value) -> Fail {
    let e = v["error"].as_str().unwrap_or("request failed").to_string();
    if daemon_refusal(&e) { Fail::Invalid(format!("the daemon refused: {e}")) } else { Fail::Retry(format!("the daemon: {e}")) }
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

impl State {
    /// Run one activity: audit it, and turn its failure into Temporal's.
    async fn audited<F>(&self, ctx: &ActivityContext, name: &str, input: &Value, f: F) -> Result<Value, ActivityError>
    where
        F: std::future::Future<Output = Result<Value, Fail>>,
    {
        let start = Instant::now();
        let caller = self.caller(ctx).await;
        let info = ctx.info();
        let mut fields = json!({
            "activity": name, "workflow_id": info.workflow_id, "run_id": info.workflow_run_id, "activity_id": info.activity_id,
            "attempt": info.attempt, "task_queue": info.task_queue, "namespace": info.namespace, "workflow_type": info.workflow_type,
            "caller_identity": caller, "worker_identity": self.identity, "host": self.host, "args": sanitize(input),
        });
        let result = f.await;
        fields["duration_s"] = json!(start.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                fields["outcome"] = json!("ok");
                fields["sandbox_id"] = v["sandbox_id"].clone();
                self.audit.event("activity", fields);
                Ok(v)
            }
            Err(fail) => {
                let (outcome, error) = fail.outcome();
                fields["outcome"] = json!(outcome);
                fields["error"] = json!(swarmcell::sanitize::line(&error));
                self.audit.event("activity", fields);
                Err(fail.into_error())
            }
        }
    }

    /// The identity of the client that started the activity's workflow run
    /// (its history's first event), cached per run; null if unknown.
    async fn caller(&self, ctx: &ActivityContext) -> Value {
        use temporalio_common::protos::temporal::api::{
            common::v1::WorkflowExecution, history::v1::history_event::Attributes, workflowservice::v1::GetWorkflowExecutionHistoryRequest,
        };
        let info = ctx.info();
        let (Some(wf), Some(run)) = (info.workflow_id.clone(), info.workflow_run_id.clone()) else { return Value::Null };
        if let Some(c) = self.callers.lock().ok().and_then(|m| m.get(&run).cloned()) {
            return json!(c);
        }
        let req = GetWorkflowExecutionHistoryRequest {
            namespace: info.namespace.clone(),
            execution: Some(WorkflowExecution { workflow_id: wf, run_id: run.clone() }),
            maximum_page_size: 1,
            ..Default::default()
        };
        let mut svc = ctx.client().connection().workflow_service();
        let resp =
            tokio::time::timeout(Duration::from_secs(5), svc.get_workflow_execution_history(temporalio_client::tonic::Request::new(req))).await;
        let identity = resp.ok().and_then(Result::ok).and_then(|r| {
            let ev = r.into_inner().history?.events.into_iter().next()?;
            match ev.attributes? {
                Attributes::WorkflowExecutionStartedEventAttributes(a) => Some(a.identity),
                _ => None,
            }
        });
        match identity {
            Some(id) => {
                let id = swarmcell::sanitize::line(&id.chars().take(256).collect::<String>());
                if let Ok(mut m) = self.callers.lock() {
                    if m.len() > 4096 {
                        m.clear();
                    }
                    m.insert(run, id.clone());
                }
                json!(id)
            }
            None => Value::Null,
        }
    }

    /// Heartbeat every `heartbeat` while `work` runs; if the activity is
    /// cancelled (or its heartbeat timed out at the server), `work` is dropped
    /// and Cancelled returned.
    async fn with_heartbeats<T>(&self, ctx: &ActivityContext, work: impl std::future::Future<Output = Result<T, Fail>>) -> Result<T, Fail> {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.heartbeat);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = ctx.cancelled() => return Err(Fail::Cancelled),
                _ = tick.tick() => { let _ = ctx.record_heartbeat(json!({ "host": self.host })).await; }
            }
        }
    }

    async fn launch(&self, ctx: &ActivityContext, v: Value) -> Result<Value, Fail> {
        let l = input::LaunchAgent::parse(v).map_err(Fail::Invalid)?;
        let repo = if l.repo.starts_with('/') {
            std::path::PathBuf::from(&l.repo)
        } else {
            // Another host may know the name: retryable (the shared queue hands it on).
            self.repos.get(&l.repo).cloned().ok_or_else(|| Fail::Retry(format!("host {} has no repository named {:?}", self.host, l.repo)))?
        };
        if let Some(avail) = mem_available()
            && avail < self.min_free_bytes
        {
            return Err(Fail::Retry(format!("host {} has {} MiB available, less than its reserve", self.host, avail >> 20)));
        }
        let req = json!({ "cmd": "agent", "agent": l.agent_id, "task": l.task_id, "repo": repo, "branch": l.branch, "policy": l.policy,
                          "lease_s": self.lease_s });
        let daemon = self.daemon.clone();
        let attempt = async {
            // A sandbox of this task that is still starting or restarting
            // (a previous attempt) is waited for, then answered.
            loop {
                let a = daemon.request(&req, Duration::from_secs(300)).await.map_err(Fail::Retry)?;
                if a["ok"] == true {
                    return Ok(a);
                }
                if a["retry"] != true {
                    return Err(daemon_error(&a));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let a = match self.with_heartbeats(ctx, attempt).await {
            Ok(a) => a,
            Err(Fail::Cancelled) => {
                // The sandbox may be starting for us: stop it (the lease would, later).
                self.stop_task(&l.task_id).await;
                return Err(Fail::Cancelled);
            }
            Err(e) => return Err(e),
        };
        let (id, port) = (a["id"].as_str().unwrap_or("").to_string(), a["port"].as_u64().unwrap_or(0) as u16);
        let secret = a["secret"].as_str().map(str::to_string);
        if let Ok(mut m) = self.sandboxes.lock() {
            m.insert(id.clone(), Known { port, secret: secret.clone() });
        }
        Ok(json!({ "host": self.host, "queue": self.host_queue, "sandbox_id": id, "port": port,
                   "base_url": format!("http://127.0.0.1:{port}"), "secret": secret, "reused": a["reused"] == true }))
    }

    /// Stop whatever sandbox of ours runs `task` (after a cancelled launch).
    async fn stop_task(&self, task: &str) {
        let Ok(l) = self.daemon.request(&json!({ "cmd": "list" }), Duration::from_secs(10)).await else { return };
        for s in l["sandboxes"].as_array().into_iter().flatten().filter(|s| s["task"] == task) {
            if let Some(id) = s["id"].as_str() {
                let _ = self.daemon.stop(id).await;
                self.forget(id);
            }
        }
    }

    /// Port and secret of one of our sandboxes, asked of the daemon each
    /// time: a sandbox that restarted may run on another port, and its old
    /// one may be anybody's by now (the secret and the command must not go there).
    async fn known(&self, id: &str) -> Result<Known, Fail> {
        let s = self.daemon.request(&json!({ "cmd": "status", "id": id }), Duration::from_secs(10)).await.map_err(Fail::Retry)?;
        if s["ok"] != true {
            return Err(daemon_error(&s));
        }
        if s["state"] != "running" {
            return Err(Fail::Retry(format!("sandbox {id} is {}", s["state"].as_str().unwrap_or("not running"))));
        }
        let port = s["port"].as_u64().and_then(|p| u16::try_from(p).ok()).ok_or_else(|| Fail::Retry(format!("sandbox {id} has no port yet")))?;
        Ok(Known { port, secret: s["secret"].as_str().map(str::to_string) })
    }

    async fn run_command(&self, ctx: &ActivityContext, v: Value) -> Result<Value, Fail> {
        let r = input::RunAgentCommand::parse(v).map_err(Fail::Invalid)?;
        let k = self.known(&r.sandbox_id).await?;
        let oc = OpenCode::new(k.port, k.secret.as_deref()).map_err(Fail::Retry)?;
        let work = async {
            let session = match &r.session_id {
                Some(s) => s.clone(),
                None => oc.new_session().await.map_err(Fail::Retry)?,
            };
            let out = oc.run(&session, &r.command, &r.arguments).await.map_err(Fail::Retry)?;
            Ok(json!({ "sandbox_id": r.sandbox_id, "session_id": session, "output": out["output"], "truncated": out["truncated"],
                       "message_id": out["message_id"] }))
        };
        match self.with_heartbeats(ctx, work).await {
            Err(Fail::Cancelled) => {
                // INV-005: an agent whose workflow gave up on it does not run on.
                let _ = self.daemon.stop(&r.sandbox_id).await;
                self.forget(&r.sandbox_id);
                Err(Fail::Cancelled)
            }
            other => other,
        }
    }

    async fn stop(&self, ctx: &ActivityContext, v: Value) -> Result<Value, Fail> {
        let r = input::SandboxRef::parse(v, "StopAgent").map_err(Fail::Invalid)?;
        let a = self.with_heartbeats(ctx, async { self.daemon.stop(&r.sandbox_id).await.map_err(Fail::Retry) }).await?;
        self.forget(&r.sandbox_id);
        if a["ok"] == true {
            return Ok(json!({ "sandbox_id": r.sandbox_id, "host": self.host, "status": a["status"], "branch": a["branch"], "commit": a["commit"] }));
        }
        // Already gone (a retried stop, or its lease expired): stopping is idempotent.
        if a["error"].as_str().is_some_and(|e| e.starts_with("no sandbox")) {
            return Ok(json!({ "sandbox_id": r.sandbox_id, "host": self.host, "status": "gone", "branch": null, "commit": null }));
        }
        Err(daemon_error(&a))
    }

    async fn status(&self, v: Value) -> Result<Value, Fail> {
        let r = input::SandboxRef::parse(v, "AgentStatus").map_err(Fail::Invalid)?;
        let s = self.daemon.request(&json!({ "cmd": "status", "id": r.sandbox_id }), Duration::from_secs(10)).await.map_err(Fail::Retry)?;
        if s["ok"] != true {
            return Err(daemon_error(&s));
        }
        let k = self.known(&r.sandbox_id).await.ok();
        let answers = match k {
            Some(k) => match OpenCode::new(k.port, k.secret.as_deref()) {
                Ok(oc) => oc.healthy().await,
                Err(_) => false,
            },
            None => false,
        };
        Ok(json!({ "sandbox_id": r.sandbox_id, "host": self.host, "state": s["state"], "healthy": s["healthy"] == true && answers,
                   "health_failures": s["health_failures"], "restarts": s["restarts"], "port": s["port"], "usage": s["usage"],
                   "lease_left_s": s["lease_left_s"] }))
    }
}

/// Every activity, on this host's own queue.
pub struct HostActivities(pub Arc<State>);

#[activities]
impl HostActivities {
    #[activity(name = "LaunchAgent")]
    pub async fn launch_agent(self: Arc<Self>, ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
        self.0.audited(&ctx, "LaunchAgent", &input, self.0.launch(&ctx, input.clone())).await
    }

    #[activity(name = "RunAgentCommand")]
    pub async fn run_agent_command(self: Arc<Self>, ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
        self.0.audited(&ctx, "RunAgentCommand", &input, self.0.run_command(&ctx, input.clone())).await
    }

    #[activity(name = "StopAgent")]
    pub async fn stop_agent(self: Arc<Self>, ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
        self.0.audited(&ctx, "StopAgent", &input, self.0.stop(&ctx, input.clone())).await
    }

    #[activity(name = "AgentStatus")]
    pub async fn agent_status(self: Arc<Self>, ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
        self.0.audited(&ctx, "AgentStatus", &input, self.0.status(input.clone())).await
    }
}

/// `LaunchAgent` only, on the shared queue: the result's `host` and `queue`
/// name where the agent's later activities must go.
pub struct SharedActivities(pub Arc<State>);

#[activities]
impl SharedActivities {
    #[activity(name = "LaunchAgent")]
    pub async fn launch_agent(self: Arc<Self>, ctx: ActivityContext, input: Value) -> Result<Value, ActivityError> {
        self.0.audited(&ctx, "LaunchAgent", &input, self.0.launch(&ctx, input.clone())).await
    }
}
