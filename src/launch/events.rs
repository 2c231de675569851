//! Launcher side (host root): the events a launcher reports to its supervisor
//! — start failures, egress decisions, ingress refusals, git publishes — on a
//! channel of their own (`swarmcell run --events-fd N`: one JSON line per
//! event, written only by the launcher, never passed into the sandbox). The
//! daemon turns each into an audit event with the sandbox's id; nothing is ever
//! parsed out of the payload's output, which shares the launcher's stderr.
//!
//! Without `--events-fd` (a `run` in the foreground) each event is a
//! structured log line: `warn` for refusals and failures (they are not lost at
//! the default level), `info` for what was allowed.
//!
//! Text in an event may come from the payload (a host name it asked for, an
//! error naming its command): the daemon escapes it before it reaches the audit
//! log or a terminal (see [`crate::sanitize`]).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One event, a closed set (the daemon refuses anything else).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The launcher failed (its `swarmcell: ...` error line, as it printed it).
    StartFailed { error: String },
    /// An egress proxy decision for a host the payload asked for.
    Egress {
        host: String,
        port: u16,
        allowed: bool,
        /// Why it was refused, or why the allowed connection failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The address connected to, when allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// A connection to the sandbox's port from a uid that is not allowed (None:
    /// the client's socket was already gone, so its uid is unknown).
    IngressDenied { uid: Option<u32>, port: u16 },
    /// A branch moved by the git publisher.
    GitPublish { branch: String, old: String, new: String },
    /// Best-effort disk accounting found the worktree over its limit:
    /// `stopped` (the sandbox was killed) or `exited` (found after it ended).
    DiskLimit { outcome: String, detail: String },
}

impl Event {
    /// The event's name in logs and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Event::StartFailed { .. } => "start_failed",
            Event::Egress { .. } => "egress",
            Event::IngressDenied { .. } => "ingress_denied",
            Event::GitPublish { .. } => "git_publish",
            Event::DiskLimit { .. } => "disk_limit",
        }
    }
}

/// Longest event line written or accepted (a longer one is cut short by the
/// writer's field limits, refused by the reader).
pub const MAX_LINE: usize = 4000;

static SINK: Mutex<Option<std::fs::File>> = Mutex::new(None);
static SANDBOX: Mutex<String> = Mutex::new(String::new());

/// Take `--events-fd FD` (made close-on-exec: it never reaches the sandbox).
pub fn init(fd: Option<RawFd>) -> Result<(), String> {
    let Some(fd) = fd else { return Ok(()) };
    if fd <= 2 || !crate::sys::fd_is_open(fd) {
        return Err(format!("--events-fd {fd} is not an open file descriptor above 2"));
    }
    crate::sys::set_cloexec(fd, true).map_err(|e| format!("--events-fd {fd}: {e}"))?;
    // SAFETY: the caller handed us this descriptor; from now on we own it.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Ok(mut s) = SINK.lock() {
        *s = Some(f);
    }
    Ok(())
}

/// Whether a supervisor reads this launcher's events (`--events-fd`).
pub fn has_sink() -> bool {
    SINK.lock().map(|s| s.is_some()).unwrap_or(false)
}

/// The sandbox id logged with each event of this launcher.
pub fn set_sandbox(id: &str) {
    if let Ok(mut s) = SANDBOX.lock() {
        *s = id.to_string();
    }
}

/// Report one event: a line on the events channel, or a log line.
pub fn emit(event: Event) {
    let event = bounded(event);
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = sink.as_mut() {
        let line = serde_json::to_string(&event).unwrap_or_default() + "\n";
        // One write below PIPE_BUF: lines from several threads never interleave.
        if f.write_all(line.as_bytes()).is_ok() {
            return;
        }
    }
    drop(sink);
    log(&event);
}

fn log(event: &Event) {
    let sandbox = SANDBOX.lock().map(|s| s.clone()).unwrap_or_default();
    let name = event.name();
    match event {
        Event::StartFailed { error } => tracing::warn!(target: "audit", event = name, sandbox, error = %crate::sanitize::line(error), "start failed"),
        Event::Egress { host, port, allowed: true, address, reason } => {
            let host = crate::sanitize::line(host);
            match reason {
                None => {
                    tracing::info!(target: "audit", event = name, sandbox, host, port, allowed = true, address = address.as_deref().unwrap_or(""), "egress allowed")
                }
                Some(r) => tracing::warn!(target: "audit", event = name, sandbox, host, port, allowed = true, error = %r, "egress connect failed"),
            }
        }
        Event::Egress { host, port, reason, .. } => {
            let host = crate::sanitize::line(host);
            tracing::warn!(target: "audit", event = name, sandbox, host, port, allowed = false, reason = reason.as_deref().unwrap_or(""), "egress denied")
        }
        Event::IngressDenied { uid: Some(uid), port } => {
            tracing::warn!(target: "audit", event = name, sandbox, uid, port, "connection from a uid that is not allowed; closed")
        }
        Event::IngressDenied { uid: None, port } => {
            tracing::warn!(target: "audit", event = name, sandbox, uid = "unknown", port, "connection whose client was already gone; closed")
        }
        Event::GitPublish { branch, old, new } => {
            tracing::info!(target: "audit", event = name, sandbox, branch = %crate::sanitize::line(branch), old, new, "branch published")
        }
        Event::DiskLimit { outcome, detail } => tracing::warn!(target: "audit", event = name, sandbox, outcome, "worktree {detail}"),
    }
}

/// Fields cut to a length that keeps a line below [`MAX_LINE`] (a host name is
/// at most 255 bytes; an error is ours but may quote the payload's argv).
fn bounded(event: Event) -> Event {
    let cut = |s: String, n: usize| if s.len() <= n { s } else { s.chars().take(n).collect::<String>() + "..." };
    match event {
        Event::StartFailed { error } => Event::StartFailed { error: cut(error, 2000) },
        Event::Egress { host, port, allowed, reason, address } => {
            Event::Egress { host: cut(host, 300), port, allowed, reason: reason.map(|r| cut(r, 500)), address: address.map(|a| cut(a, 100)) }
        }
        Event::GitPublish { branch, old, new } => Event::GitPublish { branch: cut(branch, 300), old: cut(old, 100), new: cut(new, 100) },
        Event::DiskLimit { outcome, detail } => Event::DiskLimit { outcome: cut(outcome, 20), detail: cut(detail, 1000) },
        e => e,
    }
}

/// Parse one line from a launcher (daemon side): a known event or an error.
pub fn parse(line: &[u8]) -> Result<Event, String> {
    if line.len() > MAX_LINE {
        return Err(format!("an event line of {} bytes (at most {MAX_LINE})", line.len()));
    }
    serde_json::from_slice(line).map_err(|e| format!("bad event line: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_a_closed_set_and_round_trip() {
        let e = Event::IngressDenied { uid: Some(1001), port: 8001 };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"event":"ingress_denied","uid":1001,"port":8001}"#);
        assert_eq!(parse(line.as_bytes()).unwrap(), e);
        assert!(parse(br#"{"event":"sandbox_stop","id":"x"}"#).is_err());
        assert!(parse(br#"{"event":"start_failed","error":"x","extra":1}"#).is_err());
        assert!(parse(&vec![b' '; MAX_LINE + 1]).is_err());
        let long = bounded(Event::Egress { host: "h".repeat(10_000), port: 1, allowed: false, reason: Some("r".repeat(10_000)), address: None });
        assert!(serde_json::to_string(&long).unwrap().len() < MAX_LINE);
    }
}
