//! `swarmcell daemon` and `swarmcell ctl`: start the supervisor, talk to it.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliResult;
use crate::launch;

#[derive(Subcommand)]
pub(super) enum CtlCommand {
    /// Launch a sandbox; prints {"id","port","pid"} (and "secret" when the policy gives it one) once it is healthy.
    Launch {
        #[arg(long)]
        worktree: PathBuf,
        /// One of the policy files the daemon's config allows (`policies`).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        task: Option<String>,
        /// The payload (default: the policy's `process.command`).
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Stop {
        id: String,
    },
    Inspect {
        id: String,
    },
    /// The sandboxes with their usage, refreshed in place (`swarmcell ps --watch`).
    Top {
        #[command(flatten)]
        refresh: super::ps::Refresh,
    },
    /// The sandbox's output; control characters are shown escaped (`\x1b`).
    Logs {
        id: String,
        /// Print the output exactly as the payload wrote it, escape sequences included.
        #[arg(long)]
        raw: bool,
    },
    #[command(flatten)]
    Incident(super::denials::IncidentCommand),
}

pub(super) fn daemon(config: Option<PathBuf>, socket: Option<PathBuf>, state_dir: Option<PathBuf>) -> CliResult {
    use crate::daemon::{Daemon, config::Config};
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    crate::confine::fds::cloexec_inherited().map_err(|e| launcher(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(launcher("swarmcell daemon must run as root".into()));
    }
    let mut cfg = match &config {
        Some(p) => Config::load(p).map_err(launcher)?,
        None => Config::default(),
    };
    if let Some(s) = socket {
        cfg.socket = s;
    }
    if let Some(d) = state_dir {
        cfg.state_dir = d;
    }
    cfg.validate().map_err(launcher)?;
    let mut d = Daemon::new(cfg).map_err(launcher)?;
    d.serve().map(|_| 0).map_err(launcher)
}

/// `swarmcell ctl`. Everything printed may carry text a payload chose (its
/// output, names, errors): it is escaped (`crate::sanitize`), so nothing
/// reaches the operator's terminal as a control sequence; `logs --raw` opts out.
pub(super) fn ctl(socket: &std::path::Path, cmd: CtlCommand) -> CliResult {
    use crate::daemon::protocol::Request;
    use crate::sanitize;
    let (req, list_json, raw) = match cmd {
        CtlCommand::Top { refresh } => return super::ps::top(socket, refresh),
        CtlCommand::Launch { worktree, policy, agent, task, cmd } => (Request::Launch { worktree, agent, task, argv: cmd, policy }, false, false),
        CtlCommand::List { json } => (Request::List {}, json, false),
        CtlCommand::Stop { id } => (Request::Stop { id }, false, false),
        CtlCommand::Inspect { id } => (Request::Inspect { id }, false, false),
        CtlCommand::Logs { id, raw } => (Request::Logs { id }, false, raw),
        CtlCommand::Incident(cmd) => return super::denials::ctl(socket, cmd),
    };
    let is_list = matches!(req, Request::List {});
    let resp = crate::daemon::ctl(socket, &req).map_err(|e| (sanitize::line(&e), launch::EXIT_LAUNCHER_ERROR))?;
    if resp["ok"] != true {
        return Err((sanitize::line(resp["error"].as_str().unwrap_or("request failed")), launch::EXIT_LAUNCHER_ERROR));
    }
    match &req {
        Request::Launch { .. } => {
            let mut out = serde_json::json!({ "id": resp["id"], "port": resp["port"], "pid": resp["pid"] });
            if resp.get("secret").is_some() {
                out["secret"] = resp["secret"].clone();
            }
            println!("{}", sanitize::json(&out))
        }
        Request::Logs { .. } if raw => print!("{}", resp["log"].as_str().unwrap_or("")),
        Request::Logs { .. } => print!("{}", sanitize::text(resp["log"].as_str().unwrap_or(""))),
        Request::Inspect { .. } => println!("{}", sanitize::json(&resp["inspect"])),
        _ if is_list && !list_json => {
            for s in resp["sandboxes"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    sanitize::line(s["id"].as_str().unwrap_or("")),
                    sanitize::line(s["state"].as_str().unwrap_or("")),
                    s["port"],
                    sanitize::line(s["agent"].as_str().unwrap_or("-")),
                    sanitize::line(s["worktree"].as_str().unwrap_or(""))
                );
            }
        }
        _ if is_list => println!("{}", sanitize::json(&resp["sandboxes"])),
        _ => println!("{}", sanitize::json(&resp)),
    }
    Ok(0)
}
