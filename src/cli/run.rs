//! `swarmcell run` and `swarmcell gc`: arguments → a validated `RunRequest`
//! for `launch::parent` (host side, before anything is started).

use std::path::PathBuf;

use super::CliResult;
use crate::host::uidalloc::UidRange;
use crate::launch::{self, parent, spec::LogConfig};
use crate::policy::{self, Policy};

#[derive(clap::Args)]
pub(super) struct RunArgs {
    /// The git worktree (or any directory) the sandbox may write; also its cwd.
    #[arg(long)]
    pub(super) worktree: PathBuf,
    /// The repository a git worktree must belong to (repeatable: any of them);
    /// without it, the one recorded for the worktree (or, on its first launch, its .git's).
    #[arg(long = "repo", value_name = "REPO")]
    pub(super) repos: Vec<PathBuf>,
    /// Policy file (mode 0640 or stricter); default: the built-in opencode policy.
    #[arg(long)]
    pub(super) policy: Option<PathBuf>,
    /// Extra host path to bind read-only (repeatable).
    #[arg(long = "ro", value_name = "PATH")]
    pub(super) ro: Vec<PathBuf>,
    /// Extra host path to bind read-write (repeatable).
    #[arg(long = "rw", value_name = "PATH")]
    pub(super) rw: Vec<PathBuf>,
    /// Write one JSON line {"id","pid","port"} to this fd when the sandbox runs, then close it.
    #[arg(long, value_name = "FD")]
    pub(super) ready_fd: Option<i32>,
    /// A sealed memfd page (from the daemon) in which the broker counts connections and bytes.
    #[arg(long, value_name = "FD", hide = true)]
    pub(super) stats_fd: Option<i32>,
    /// Report events (start failures, egress decisions, ingress refusals) as
    /// JSON lines on this fd, for a supervisor (the daemon), instead of logging them.
    #[arg(long, value_name = "FD", hide = true)]
    pub(super) events_fd: Option<i32>,
    /// Read the sandbox's secret from this fd (a supervisor keeps it across restarts).
    #[arg(long, value_name = "FD", hide = true)]
    pub(super) secret_fd: Option<i32>,
    /// Another local uid that may connect to the host port, besides root and
    /// the worktree's owner (repeatable). Everyone else is closed at once.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub(super) allow_uids: Vec<u32>,
    /// Let every local user connect to the host port (no uid check). Required
    /// by --broker handoff, where the payload accepts connections itself.
    #[arg(long)]
    pub(super) allow_any_uid: bool,
    /// Host uid that owns files the sandbox writes (default: the worktree's owner; never 0).
    #[arg(long)]
    pub(super) uid: Option<u32>,
    /// Host gid for files the sandbox writes (default: the worktree's group, or --uid).
    #[arg(long)]
    pub(super) gid: Option<u32>,
    /// Map the sandbox to the worktree owner's uid instead of a per-sandbox uid
    /// with an idmapped worktree mount.
    #[arg(long)]
    pub(super) no_idmap: bool,
    /// Per-sandbox host uids, BASE-LAST.
    #[arg(long, default_value = "1610612736-1610678271")]
    pub(super) uid_range: String,
    /// Where swarmcell keeps its leases of uids, ports and sandbox ids
    /// (root-only). Every launcher on a host must use the same one: launchers
    /// with different ones could hand two sandboxes the same host uid.
    #[arg(long, default_value = crate::host::lease::HOST_STATE_DIR)]
    pub(super) state_dir: PathBuf,
    /// Skip the sweep of stale cgroups and leases at start (for a supervisor
    /// that sweeps itself, like the daemon).
    #[arg(long, hide = true)]
    pub(super) no_gc: bool,
    /// Memory limit for this run (overrides the policy), e.g. 256M.
    #[arg(long)]
    pub(super) memory: Option<String>,
    /// Process limit for this run (overrides the policy).
    #[arg(long)]
    pub(super) pids: Option<u64>,
    /// CPU limit in cores for this run (overrides the policy), e.g. 0.5.
    #[arg(long)]
    pub(super) cpu: Option<f64>,
    /// Most bytes the worktree may hold for this run (overrides the policy), e.g. 10G.
    #[arg(long, value_name = "SIZE")]
    pub(super) disk: Option<String>,
    /// Most files and directories the worktree may hold for this run (overrides the policy).
    #[arg(long, value_name = "N")]
    pub(super) inodes: Option<u64>,
    /// Directory inside swarmcell's own cgroup that holds the sandboxes' cgroups.
    #[arg(long, default_value = "swarmcell")]
    pub(super) cgroup_parent: String,
    /// Host port on 127.0.0.1 brokered to the payload's inner port: `auto` (the
    /// next free one of --port-range) or a number in the range. Without it, no port.
    #[arg(long, value_name = "auto|N")]
    pub(super) port: Option<String>,
    /// With --port auto: take this port when it is free (the daemon asks a
    /// restarted sandbox for its previous port).
    #[arg(long, value_name = "N", requires = "port")]
    pub(super) prefer_port: Option<u16>,
    /// Host ports sandboxes may get (at most 1001).
    #[arg(long, default_value = "8000-9000")]
    pub(super) port_range: String,
    /// Readiness: `http` (GET the policy's health path until 2xx) or `none` (a TCP connection is enough).
    #[arg(long, default_value = "http")]
    pub(super) health: String,
    /// How long to wait for health (default: the policy's, 10s).
    #[arg(long, value_name = "DURATION")]
    pub(super) health_timeout: Option<String>,
    /// After SIGTERM, how long before everything in the sandbox is killed.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub(super) stop_timeout: String,
    /// Most connections at once: relayed (relay), or waiting for the payload's
    /// accept (handoff).
    #[arg(long, default_value_t = 256)]
    pub(super) max_connections: usize,
    /// `handoff` (default): the launcher accepts on the host port, checks the
    /// client's uid and hands each connection to the payload's accept (native
    /// speed; the socket is pinned to its client). `relay`: every connection is
    /// relayed into the sandbox, which holds no host socket at all.
    #[arg(long, default_value = "handoff")]
    pub(super) broker: String,
    /// Another host loopback port the sandbox may reach at 127.0.0.1:PORT (repeatable).
    #[arg(long = "forward", value_name = "PORT")]
    pub(super) forwards: Vec<u16>,
    /// Another host name the egress proxy allows (repeatable; `*.suffix`, `:port`).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub(super) allow_hosts: Vec<String>,
    /// A non-public address an allowed name may resolve to (repeatable).
    #[arg(long = "allow-address", value_name = "IP")]
    pub(super) allow_addresses: Vec<std::net::IpAddr>,
    /// Resolve NAME to IP in the egress proxy instead of asking DNS (repeatable).
    #[arg(long = "resolve", value_name = "NAME=IP")]
    pub(super) resolve: Vec<String>,
    /// The command and its arguments (default: the policy's `process.command`).
    #[arg(last = true, value_name = "CMD")]
    pub(super) cmd: Vec<String>,
}

pub(super) fn run(args: RunArgs, log: LogConfig, early: Option<launch::sandbox::EarlyInit>) -> CliResult {
    use crate::launch::events;
    // The early init's descriptors were opened before the command line was
    // read: a descriptor flag naming a number that was closed at our start
    // may name one of them now, and must be refused, not taken.
    let ours = early.as_ref().map(launch::sandbox::EarlyInit::raw_fds).unwrap_or_default();
    for (flag, fd) in [("--ready-fd", args.ready_fd), ("--secret-fd", args.secret_fd), ("--stats-fd", args.stats_fd), ("--events-fd", args.events_fd)]
    {
        if let Some(fd) = fd.filter(|fd| ours.contains(fd)) {
            return Err((format!("{flag} {fd} is not an open file descriptor above 2"), launch::EXIT_LAUNCHER_ERROR));
        }
    }
    events::init(args.events_fd).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR))?;
    // A supervisor learns why from the events channel, never from our stderr
    // (which the payload shares).
    run_checked(args, log, early).inspect_err(|(message, _)| {
        if events::has_sink() {
            events::emit(events::Event::StartFailed { error: message.clone() });
        }
    })
}

fn run_checked(args: RunArgs, log: LogConfig, early: Option<launch::sandbox::EarlyInit>) -> CliResult {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    // Before any thread exists: nothing inherited reaches a sandbox, and no
    // supplementary group (root's gid 0) is carried into one.
    crate::confine::fds::cloexec_inherited().map_err(|e| launcher(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        crate::sys::clear_groups().map_err(|e| launcher(e.to_string()))?;
    }
    let policy = match &args.policy {
        Some(f) => Policy::load(f),
        None => Ok(Policy::builtin()),
    }
    .map_err(|e| launcher(e.to_string()))?
    .with_overrides(&policy::LimitOverrides {
        memory: args.memory.as_deref(),
        pids: args.pids,
        cpu: args.cpu,
        disk: args.disk.as_deref(),
        inodes: args.inodes,
    })
    .map_err(launcher)?;
    crate::phases::mark("policy loaded");
    if !crate::host::cgroups::valid_parent_name(&args.cgroup_parent) {
        return Err(launcher(format!("--cgroup-parent {:?}: one path component of letters, digits, '.', '_' or '-'", args.cgroup_parent)));
    }
    for p in args.ro.iter().chain(&args.rw) {
        policy::check_sandbox_path(p).map_err(|m| launcher(format!("--ro/--rw {}: {m}", p.display())))?;
    }
    let uid_range = UidRange::parse(&args.uid_range).map_err(|e| launcher(e.to_string()))?;
    let port_range = crate::host::ports::PortRange::parse(&args.port_range).map_err(|e| launcher(e.to_string()))?;
    let port = match args.port.as_deref() {
        None => parent::PortChoice::None,
        Some("auto") => match args.prefer_port {
            Some(p) => parent::PortChoice::Prefer(p),
            None => parent::PortChoice::Auto,
        },
        Some(_) if args.prefer_port.is_some() => return Err(launcher("--prefer-port goes with --port auto".into())),
        Some(n) => parent::PortChoice::Fixed(n.parse().map_err(|_| launcher(format!("--port {n:?}: expected auto or a port number")))?),
    };
    let health = match args.health.as_str() {
        "http" => parent::HealthMode::Http,
        "none" => parent::HealthMode::Tcp,
        other => return Err(launcher(format!("--health {other:?}: expected http or none"))),
    };
    let duration = |flag: &str, v: &str| policy::units::parse_duration(v).map_err(|e| launcher(format!("{flag}: {e}")));
    let health_timeout = args.health_timeout.as_deref().map(|v| duration("--health-timeout", v)).transpose()?;
    let stop_timeout = duration("--stop-timeout", &args.stop_timeout)?;
    let broker = match args.broker.as_str() {
        "handoff" => parent::BrokerMode::Handoff,
        "relay" => parent::BrokerMode::Relay,
        other => return Err(launcher(format!("--broker {other:?}: expected handoff or relay"))),
    };
    for h in &args.allow_hosts {
        crate::net::egress::check_entry(h).map_err(|m| launcher(format!("--allow-host {m}")))?;
    }
    if let Some(p) = args.forwards.iter().find(|p| **p == 0 || **p == policy.network.inner_port || **p == policy.network.proxy_port) {
        return Err(launcher(format!("--forward {p}: must be a port other than the inner port and the proxy port")));
    }
    let mut resolve = std::collections::HashMap::new();
    for r in &args.resolve {
        let (name, ip) = r.split_once('=').ok_or_else(|| launcher(format!("--resolve {r:?}: expected NAME=IP")))?;
        let ip = ip.parse().map_err(|_| launcher(format!("--resolve {r:?}: {ip:?} is not an IP address")))?;
        resolve.insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
    }
    if args.max_connections == 0 {
        return Err(launcher("--max-connections must be 1 or more".into()));
    }
    crate::phases::mark("policy and arguments");
    let req_policy_command = policy.process.command.clone();
    let req = parent::RunRequest {
        worktree: args.worktree,
        policy,
        extra_ro: args.ro,
        extra_rw: args.rw,
        ready_fd: args.ready_fd,
        stats_fd: args.stats_fd,
        uid: args.uid,
        gid: args.gid,
        idmap: !args.no_idmap,
        argv: if args.cmd.is_empty() { req_policy_command.clone() } else { args.cmd },
        log,
        state_dir: args.state_dir,
        gc: !args.no_gc,
        uid_range,
        cgroup_parent: args.cgroup_parent,
        port,
        port_range,
        health,
        health_timeout,
        stop_timeout,
        max_connections: args.max_connections,
        broker,
        extra_forwards: args.forwards,
        extra_allow_hosts: args.allow_hosts,
        extra_allow_addresses: args.allow_addresses,
        resolve,
        allow_uids: args.allow_uids,
        allow_any_uid: args.allow_any_uid,
        secret_fd: args.secret_fd,
        repos: args.repos,
    };
    parent::run(&req, early).map_err(|e| (e.to_string(), e.exit_code()))
}

pub(super) fn gc(state_dir: &std::path::Path, parent: &str) -> CliResult {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    if !crate::host::cgroups::valid_parent_name(parent) {
        return Err(launcher(format!("--cgroup-parent {parent:?}: one path component of letters, digits, '.', '_' or '-'")));
    }
    let layout = crate::host::cgroups::Layout::detect().map_err(|e| launcher(e.to_string()))?;
    let removed = crate::host::cgroups::gc(&layout, parent, state_dir).map_err(|e| launcher(e.to_string()))?;
    for id in &removed {
        println!("removed stale cgroup of {id}");
    }
    Ok(0)
}
