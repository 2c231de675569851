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
    List,
    Inspect {
        id: String,
    },
    Logs {
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
}
