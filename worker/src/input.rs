//! Activity inputs: JSON objects, strictly parsed (unknown fields refused) and
//! validated like the daemon's control protocol (the daemon checks them again).
//! A refusal is final: retrying the same input cannot succeed, so it is a
//! non-retryable failure.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use swarmcell::daemon::protocol::{MAX_ARG, valid_task};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchAgent {
    pub agent_id: String,
    pub task_id: String,
    /// An absolute path, or a name this worker maps to a path (`--repo NAME=PATH`):
    /// the same name can stand for each host's own clone.
    pub repo: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAgentCommand {
    pub sandbox_id: String,
    #[serde(default)]
    pub session_id: Option<String>,
    /// `shell` (OpenCode's shell tool: `arguments` is the command line, run
    /// inside the sandbox) or the name of an OpenCode command.
    pub command: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRef {
    pub sandbox_id: String,
}

fn path_ok(p: &std::path::Path, what: &str) -> Result<(), String> {
    let s = p.as_os_str();
    if !p.is_absolute() || s.len() > MAX_ARG || s.as_encoded_bytes().iter().any(|b| *b == 0 || *b == b'\n') {
        return Err(format!("{what} must be an absolute path of at most {MAX_ARG} bytes"));
    }
    Ok(())
}

/// A repository's name in `--repo NAME=PATH` and in LaunchAgent's `repo`.
pub fn valid_repo_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !n.contains("..")
}

/// An OpenCode session id (it goes into request paths).
pub fn valid_session(s: &str) -> bool {
    s.len() <= 128 && s.starts_with("ses") && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The daemon's sandbox ids: `d-` and 8 hex digits.
pub fn sandbox_id(id: &str) -> Result<(), String> {
    if swarmcell::daemon::records::valid_id(id) { Ok(()) } else { Err(format!("sandbox_id {:?} is invalid (^d-[0-9a-f]{{8}}$)", cut(id))) }
}

fn cut(s: &str) -> String {
    swarmcell::sanitize::line(&s.chars().take(80).collect::<String>())
}

fn parse<T: for<'de> Deserialize<'de>>(v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: {}", cut(&e.to_string())))
}

impl LaunchAgent {
    pub fn parse(v: Value) -> Result<LaunchAgent, String> {
        let l: LaunchAgent = parse(v, "LaunchAgent")?;
        if !swarmcell::git::valid_agent_id(&l.agent_id) {
            return Err(format!("agent_id {:?} is invalid (^[a-z0-9][a-z0-9-]{{0,62}}$)", cut(&l.agent_id)));
        }
        if !valid_task(&l.task_id) {
            return Err(format!("task_id {:?} is invalid (^open-swarm-[a-z0-9]+\\.[0-9]+\\.[0-9]+$)", cut(&l.task_id)));
        }
        if l.repo.starts_with('/') {
            path_ok(std::path::Path::new(&l.repo), "repo")?;
        } else if !valid_repo_name(&l.repo) {
            return Err(format!("repo {:?} is neither an absolute path nor a repository name (^[a-z0-9][a-z0-9._-]{{0,62}}$)", cut(&l.repo)));
        }
        if let Some(p) = &l.policy {
            path_ok(p, "policy")?;
        }
        if let Some(b) = &l.branch
            && !swarmcell::git::valid_branch_leaf(b)
        {
            return Err(format!("branch {:?} is invalid (^[A-Za-z0-9_][A-Za-z0-9._-]{{0,62}}$)", cut(b)));
        }
        Ok(l)
    }
}

impl RunAgentCommand {
    pub fn parse(v: Value) -> Result<RunAgentCommand, String> {
        let r: RunAgentCommand = parse(v, "RunAgentCommand")?;
        sandbox_id(&r.sandbox_id)?;
        if let Some(s) = &r.session_id
            && !valid_session(s)
        {
            return Err(format!("session_id {:?} is invalid (^ses[A-Za-z0-9_]{{0,125}}$)", cut(s)));
        }
        let name_ok = !r.command.is_empty()
            && r.command.len() <= 64
            && r.command.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && r.command.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!("command {:?} is invalid (\"shell\" or an OpenCode command name, ^[a-z][a-z0-9_-]{{0,63}}$)", cut(&r.command)));
        }
        if r.arguments.len() > MAX_ARG || r.arguments.contains('\0') {
            return Err(format!("arguments: at most {MAX_ARG} bytes, no NUL"));
        }
        Ok(r)
    }
}

impl SandboxRef {
    pub fn parse(v: Value, what: &str) -> Result<SandboxRef, String> {
        let r: SandboxRef = parse(v, what)?;
        sandbox_id(&r.sandbox_id)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn launch_inputs_are_checked_field_by_field() {
        let ok = json!({ "agent_id": "a1", "task_id": "open-swarm-x.1.2", "repo": "/srv/repo", "branch": "work" });
        assert!(LaunchAgent::parse(ok).is_ok());
        assert!(LaunchAgent::parse(json!({ "agent_id": "a1", "task_id": "open-swarm-x.1.2", "repo": "project" })).is_ok());
        for (bad, needle) in [
            (json!({ "agent_id": "A", "task_id": "open-swarm-x.1.2", "repo": "/r" }), "agent_id"),
            (json!({ "agent_id": "a", "task_id": "x", "repo": "/r" }), "task_id"),
            (json!({ "agent_id": "a", "task_id": "open-swarm-x.1.2", "repo": "../r" }), "repo"),
            (json!({ "agent_id": "a", "task_id": "open-swarm-x.1.2", "repo": "Repo" }), "repo"),
            (json!({ "agent_id": "a", "task_id": "open-swarm-x.1.2", "repo": "/r", "branch": "../x" }), "branch"),
            (json!({ "agent_id": "a", "task_id": "open-swarm-x.1.2", "repo": "/r", "argv": ["sh"] }), "unknown field"),
            (json!("a string"), "LaunchAgent"),
        ] {
            let e = LaunchAgent::parse(bad.clone()).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn command_inputs_are_checked() {
        assert!(RunAgentCommand::parse(json!({ "sandbox_id": "d-0000abcd", "command": "shell", "arguments": "git log" })).is_ok());
        assert!(RunAgentCommand::parse(json!({ "sandbox_id": "../x", "command": "shell" })).is_err());
        assert!(RunAgentCommand::parse(json!({ "sandbox_id": "d-0000abcd", "command": "Shell;rm" })).is_err());
        assert!(RunAgentCommand::parse(json!({ "sandbox_id": "d-0000abcd", "command": "shell", "session_id": "ses/../x" })).is_err());
        assert!(RunAgentCommand::parse(json!({ "sandbox_id": "d-0000abcd", "command": "shell", "arguments": "x".repeat(5000) })).is_err());
    }
}
