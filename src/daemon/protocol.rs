//! The control protocol: one JSON request per line, one JSON response per line.
//! Requests are a closed set, every field validated (INV-006) before anything
//! is done; an invalid request changes nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest single argument.
pub const MAX_ARG: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Launch {
        worktree: PathBuf,
        #[serde(default)]
        agent: Option<String>,
        #[serde(default)]
        task: Option<String>,
        /// Empty: the policy's `process.command`.
        #[serde(default)]
        argv: Vec<String>,
        /// One of the policies the daemon's config allows (`policies`).
        #[serde(default)]
        policy: Option<PathBuf>,
    },
    Stop {
        id: String,
    },
    List {},
    Inspect {
        id: String,
    },
    Logs {
        id: String,
    },
    /// `list` with each sandbox's usage (`swarmcell ps`, `ctl top`).
    Stats {},
    /// An agent on its own worktree `worktree_base/UID/AGENT` (UID the requester's) of a repository the
    /// config lists (made, on branch `agent/AGENT/BRANCH`, if missing), running
    /// the policy's command; at most one per task: while the requester has a
    /// sandbox for `task`, that one is answered (`"reused": true`). With
    /// `lease_s`, the sandbox is stopped unless renewed within that time.
    Agent {
        agent: String,
        task: String,
        repo: PathBuf,
        #[serde(default)]
        branch: Option<String>,
        #[serde(default)]
        policy: Option<PathBuf>,
        #[serde(default)]
        lease_s: Option<u64>,
    },
    /// Remove one of the requester's own agent worktrees
    /// (`worktree_base/UID/AGENT`; the branch is kept).
    #[serde(rename = "agent_remove")]
    AgentRemove {
        agent: String,
        #[serde(default)]
        force: bool,
    },
    /// Renew the leases of the requester's sandboxes (`lease_s` more each).
    Renew {
        ids: Vec<String>,
    },
    /// State, health and resource usage of one sandbox.
    Status {
        id: String,
    },
    /// Denial counts (one sandbox's, or every sandbox the requester may see).
    Denials {
        #[serde(default)]
        id: Option<String>,
    },
    /// A sandbox's recent audit events.
    Events {
        id: String,
    },
    /// Freeze a sandbox and write a forensic bundle.
    Freeze {
        id: String,
    },
    Thaw {
        id: String,
    },
    /// Kill a sandbox (frozen or not) and remove it.
    Kill {
        id: String,
    },
}

/// Shortest and longest lease a launch may ask for.
pub const MIN_LEASE_S: u64 = 2;
pub const MAX_LEASE_S: u64 = 3600;
/// Most ids one renewal names (INV-001: at most 1001 sandboxes per host).
pub const MAX_RENEW: usize = 1001;

/// Shell metacharacters refused in every argument: `; | & > <`, backticks, `$(`
/// (checked as `$`), and newlines.
pub fn is_shell_meta(c: char) -> bool {
    matches!(c, ';' | '|' | '&' | '>' | '<' | '`' | '$' | '\n' | '\r' | '\0')
}

pub fn valid_task(t: &str) -> bool {
    // ^open-swarm-[a-z0-9]+\.[0-9]+\.[0-9]+$
    let Some(rest) = t.strip_prefix("open-swarm-") else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && parts[0].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && parts[1..].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && t.len() <= 128
}

/// Check a launch against the configuration; returns the canonical worktree.
pub fn check_launch(
    worktree: &Path,
    agent: Option<&str>,
    task: Option<&str>,
    argv: &[String],
    base: &Path,
    commands: &[String],
) -> Result<PathBuf, String> {
    if let Some(a) = agent
        && !crate::git::valid_agent_id(a)
    {
        return Err(format!("agent id {a:?} is invalid (^[a-z0-9][a-z0-9-]{{0,62}}$)"));
    }
    if let Some(t) = task
        && !valid_task(t)
    {
        return Err(format!("task id {t:?} is invalid (^open-swarm-[a-z0-9]+\\.[0-9]+\\.[0-9]+$)"));
    }
    let Some(program) = argv.first() else { return Err("argv is empty".into()) };
    if !commands.contains(program) {
        return Err(format!("command {program:?} is not allowed"));
    }
    for a in argv {
        if a.len() > MAX_ARG {
            return Err(format!("an argument is {} bytes, more than {MAX_ARG}", a.len()));
        }
        if a.chars().any(is_shell_meta) {
            return Err(format!("argument {a:?} contains a shell metacharacter"));
        }
    }
    let base = base.canonicalize().map_err(|e| format!("worktree base {}: {e}", base.display()))?;
    let wt = worktree.canonicalize().map_err(|e| format!("worktree {}: {e}", worktree.display()))?;
    if !wt.starts_with(&base) || wt == base {
        return Err(format!("worktree {} is not inside {}", wt.display(), base.display()));
    }
    Ok(wt)
}

/// Check an agent request's own fields; returns the canonical repository,
/// which must be one of `repositories` (an empty list allows none here: the
/// daemon makes worktrees only of repositories it is told about).
pub fn check_agent(
    agent: &str,
    task: &str,
    repo: &Path,
    branch: Option<&str>,
    lease_s: Option<u64>,
    repositories: &[PathBuf],
) -> Result<PathBuf, String> {
    if !crate::git::valid_agent_id(agent) {
        return Err(format!("agent id {agent:?} is invalid (^[a-z0-9][a-z0-9-]{{0,62}}$)"));
    }
    if !valid_task(task) {
        return Err(format!("task id {task:?} is invalid (^open-swarm-[a-z0-9]+\\.[0-9]+\\.[0-9]+$)"));
    }
    if let Some(b) = branch
        && !crate::git::valid_branch_leaf(b)
    {
        return Err(format!("branch {b:?} is invalid (^[A-Za-z0-9_][A-Za-z0-9._-]{{0,62}}$, no \"..\", not ending in .lock)"));
    }
    if let Some(l) = lease_s
        && !(MIN_LEASE_S..=MAX_LEASE_S).contains(&l)
    {
        return Err(format!("lease_s {l} is out of range ({MIN_LEASE_S}-{MAX_LEASE_S})"));
    }
    if repo.as_os_str().len() > MAX_ARG || !repo.is_absolute() {
        return Err("repo must be an absolute path of at most 4096 bytes".into());
    }
    // Resolved as root: a path that does not resolve gets the same answer as
    // one not listed, or the answer would tell which hidden paths exist.
    let refused = || format!("repository {} is not one the daemon's config allows (`repositories`)", repo.display());
    let canonical = repo.canonicalize().map_err(|_| refused())?;
    if !repositories.iter().any(|r| r.canonicalize().is_ok_and(|r| r == canonical)) {
        return Err(refused());
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_the_open_swarm_format() {
        assert!(valid_task("open-swarm-abc1.2.3"));
        for bad in ["open-swarm-.1.2", "open-swarm-ABC.1.2", "swarm-a.1.2", "open-swarm-a.1", "open-swarm-a.1.x", "open-swarm-a.1.2.3"] {
            assert!(!valid_task(bad), "{bad}");
        }
    }

    #[test]
    fn requests_are_a_closed_set_with_no_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"cmd":"stop","id":"sc-1"}"#).unwrap();
        assert_eq!(r, Request::Stop { id: "sc-1".into() });
        let r: Request = serde_json::from_str(r#"{"cmd":"denials"}"#).unwrap();
        assert_eq!(r, Request::Denials { id: None });
        let r: Request = serde_json::from_str(r#"{"cmd":"freeze","id":"d-1"}"#).unwrap();
        assert_eq!(r, Request::Freeze { id: "d-1".into() });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"kill","id":"d-1","signal":9}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"thaw"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"exec","id":"x"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stop","id":"x","extra":1}"#).is_err());
        // serde lets a unit variant of an internally tagged enum ignore unknown
        // fields: requests without fields must be empty structs.
        for cmd in ["list", "stats"] {
            let line = format!(r#"{{"cmd":"{cmd}","extra":1}}"#);
            assert!(serde_json::from_str::<Request>(&line).is_err(), "{line} was accepted");
            assert!(serde_json::from_str::<Request>(&format!(r#"{{"cmd":"{cmd}"}}"#)).is_ok(), "{cmd}");
        }
    }

    #[test]
    fn launches_are_checked_field_by_field() {
        let base = std::env::temp_dir();
        let wt = base.join(format!("swarmcell-proto-{}", std::process::id()));
        std::fs::create_dir_all(&wt).unwrap();
        let cmds = vec!["opencode".to_string()];
        let ok = |argv: &[&str]| {
            check_launch(&wt, Some("a"), Some("open-swarm-x.1.2"), &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &base, &cmds)
        };
        assert!(ok(&["opencode", "serve", "--port", "{port}"]).is_ok());
        assert!(ok(&["bash", "-c", "x"]).unwrap_err().contains("not allowed"));
        for meta in ["a;b", "a|b", "a&b", "a>b", "a<b", "`id`", "$(id)"] {
            assert!(ok(&["opencode", meta]).unwrap_err().contains("shell metacharacter"), "{meta}");
        }
        assert!(ok(&["opencode", &"x".repeat(4097)]).unwrap_err().contains("4096"));
        assert!(check_launch(&wt, Some("Bad"), None, &["opencode".into()], &base, &cmds).is_err());
        assert!(check_launch(&wt, None, Some("task"), &["opencode".into()], &base, &cmds).is_err());
        assert!(check_launch(Path::new("/etc"), None, None, &["opencode".into()], &base, &cmds).unwrap_err().contains("not inside"));
        std::fs::remove_dir_all(&wt).unwrap();
    }

    #[test]
    fn agent_requests_are_checked_field_by_field() {
        let repo = std::env::temp_dir().join(format!("swarmcell-proto-repo-{}", std::process::id()));
        std::fs::create_dir_all(&repo).unwrap();
        let repos = vec![repo.clone()];
        let check = |agent: &str, task: &str, branch: Option<&str>, lease: Option<u64>| check_agent(agent, task, &repo, branch, lease, &repos);
        assert_eq!(check("a1", "open-swarm-x.1.2", Some("work"), Some(30)).unwrap(), repo.canonicalize().unwrap());
        assert!(check("A", "open-swarm-x.1.2", None, None).unwrap_err().contains("agent id"));
        assert!(check("a1", "x", None, None).unwrap_err().contains("task id"));
        for bad in ["../x", "a/b", "-x", ".x", "x.lock", "a b", "x;y", ""] {
            assert!(check("a1", "open-swarm-x.1.2", Some(bad), None).unwrap_err().contains("branch"), "{bad}");
        }
        assert!(check("a1", "open-swarm-x.1.2", None, Some(1)).unwrap_err().contains("lease_s"));
        assert!(check("a1", "open-swarm-x.1.2", None, Some(3601)).unwrap_err().contains("lease_s"));
        assert!(check_agent("a1", "open-swarm-x.1.2", Path::new("/etc"), None, None, &repos).unwrap_err().contains("not one"));
        assert!(check_agent("a1", "open-swarm-x.1.2", &repo, None, None, &[]).unwrap_err().contains("not one"));
        let r: Request = serde_json::from_str(r#"{"cmd":"renew","ids":["d-00000001"]}"#).unwrap();
        assert_eq!(r, Request::Renew { ids: vec!["d-00000001".into()] });
        std::fs::remove_dir_all(&repo).unwrap();
    }
}
