//! Operator side: `swarmcell denials [ID] [--follow] [--json]` and the
//! incident commands of `swarmcell ctl` (`events`, `freeze`, `thaw`, `kill`).
//! Everything printed may carry text a payload chose (paths, host names): it
//! is escaped (`crate::sanitize`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::daemon::protocol::Request;
use crate::sanitize;

/// `swarmcell denials`.
#[derive(clap::Args, Debug)]
pub struct DenialsArgs {
    /// Only this sandbox (the daemon's id, `d-...`).
    pub id: Option<String>,
    /// Keep printing new denials (once a second) until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "/run/swarmcell/control.sock")]
    pub socket: PathBuf,
    /// Turn kernel audit on (AUDIT_SET enabled=1; it stays on until reboot or
    /// `auditctl -e 0`) so that Landlock writes its denial records, and exit.
    #[arg(long, conflicts_with_all = ["id", "follow", "json"])]
    pub enable_kernel_audit: bool,
}

/// The incident-response commands of `swarmcell ctl`.
#[derive(clap::Subcommand, Debug)]
pub enum IncidentCommand {
    /// The sandbox's audit events (launch, denials, freeze, ...), oldest first.
    Events {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Freeze every process of the sandbox, stop its launcher's network
    /// services, and write a forensic bundle; prints the bundle's directory.
    Freeze { id: String },
    /// Resume a frozen sandbox.
    Thaw { id: String },
    /// Kill a sandbox (frozen or not) at once and remove it.
    Kill { id: String },
}

type Failure = (String, u8);

fn fail(e: impl AsRef<str>) -> Failure {
    (sanitize::line(e.as_ref()), crate::launch::EXIT_LAUNCHER_ERROR)
}

fn ask(socket: &Path, req: &Request) -> Result<Value, Failure> {
    let resp = crate::daemon::ctl(socket, req).map_err(fail)?;
    if resp["ok"] != true {
        return Err(fail(resp["error"].as_str().unwrap_or("request failed")));
    }
    Ok(resp)
}

fn line_of(d: &Value, count: u64, json: bool) -> String {
    if json {
        let mut d = d.clone();
        d["count"] = count.into();
        return sanitize::json(&d).to_string();
    }
    format!(
        "{}\t{}\t{}\t{}",
        sanitize::line(d["id"].as_str().unwrap_or("")),
        sanitize::line(d["kind"].as_str().unwrap_or("")),
        count,
        sanitize::line(d["detail"].as_str().unwrap_or(""))
    )
}

/// `swarmcell denials`.
pub fn denials(args: &DenialsArgs) -> Result<u8, Failure> {
    if args.enable_kernel_audit {
        crate::denials::audit_nl::enable()
            .map_err(|e| fail(format!("enabling kernel audit (AUDIT_SET; root in the initial PID and user namespaces): {e}")))?;
        let st = crate::denials::audit_nl::status().map_err(|e| fail(format!("AUDIT_GET: {e}")))?;
        println!("kernel audit enabled={} auditd_pid={} lost={} backlog_limit={}", st.enabled, st.auditd_pid, st.lost, st.backlog_limit);
        return Ok(0);
    }
    let req = Request::Denials { id: args.id.clone() };
    let resp = ask(&args.socket, &req)?;
    if !args.json {
        eprintln!("swarmcell: {}", sanitize::line(resp["kernel"].as_str().unwrap_or("")));
    }
    let mut seen: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let key = |d: &Value| {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        (s("id"), s("kind"), s("detail"))
    };
    let mut resp = resp;
    loop {
        for d in resp["denials"].as_array().into_iter().flatten() {
            let total = d["count"].as_u64().unwrap_or(0);
            let before = seen.insert(key(d), total).unwrap_or(0);
            // Following: what is new since the last poll; otherwise the totals.
            if total > before {
                println!("{}", line_of(d, if args.follow && before > 0 { total - before } else { total }, args.json));
            }
        }
        if !args.follow {
            if !args.json {
                eprintln!(
                    "swarmcell: dropped {} (kernel {}, socket overruns {}), unattributed {}",
                    resp["dropped"], resp["kernel_lost"], resp["overruns"], resp["unattributed"]
                );
            }
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        resp = ask(&args.socket, &req)?;
    }
}

/// `swarmcell ctl events|freeze|thaw|kill`.
pub fn ctl(socket: &Path, cmd: IncidentCommand) -> Result<u8, Failure> {
    match cmd {
        IncidentCommand::Events { id, json } => {
            let resp = ask(socket, &Request::Events { id })?;
            for e in resp["events"].as_array().into_iter().flatten() {
                if json {
                    println!("{}", sanitize::json(e));
                    continue;
                }
                let mut rest = e.clone();
                if let Some(o) = rest.as_object_mut() {
                    o.remove("time");
                    o.remove("event");
                }
                println!(
                    "{:.3}\t{}\t{}",
                    e["time"].as_f64().unwrap_or(0.0),
                    sanitize::line(e["event"].as_str().unwrap_or("")),
                    sanitize::json(&rest)
                );
            }
        }
        IncidentCommand::Freeze { id } => {
            let resp = ask(socket, &Request::Freeze { id })?;
            println!("{}", sanitize::json(&resp));
        }
        IncidentCommand::Thaw { id } => {
            let resp = ask(socket, &Request::Thaw { id })?;
            println!("{}", sanitize::json(&resp));
        }
        IncidentCommand::Kill { id } => {
            let resp = ask(socket, &Request::Kill { id })?;
            println!("{}", sanitize::json(&resp));
        }
    }
    Ok(0)
}
