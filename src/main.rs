//! swarmcell: CLI parse → validate → dispatch.
//!
//! Exit codes: the payload's own status; 125 for a swarmcell error (bad input,
//! refused by the kernel); 126 the payload cannot be executed; 127 it was not
//! found; 128+N when the payload was killed by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use swarmcell::host::uidalloc::UidRange;
use swarmcell::launch::{self, parent, spec::LogConfig};
use swarmcell::policy::{self, Policy};

#[derive(Parser)]
#[command(name = "swarmcell", version, about = "A hardened sandbox launcher for AI coding-agent servers")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD in a new sandbox confined to a worktree, in the foreground.
    Run(Box<RunArgs>),
    /// Validate or show a policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Git worktrees for agents: BASE/AGENT_ID on branch agent/AGENT_ID/NAME.
    #[command(subcommand)]
    Worktree(WorktreeCommand),
    /// The supervisor service: a control socket, health monitoring and restarts,
    /// an audit log and Prometheus metrics.
    Daemon {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the config's control socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Override the config's state directory (the daemon's records and instance lock).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Talk to the daemon.
    Ctl {
        #[arg(long, default_value = "/run/swarmcell/control.sock")]
        socket: PathBuf,
        #[command(subcommand)]
        cmd: CtlCommand,
    },
    /// The escape battery: try to break out of a real sandbox and report.
    Verify {
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Live attestation of a running sandbox, read from /proc and cgroupfs.
    Inspect {
        /// Sandbox id (sc-...) or the pid of its init or payload.
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Accesses the daemon's sandboxes were refused (kernel and launcher), counted.
    Denials(swarmcell::denials::cli::DenialsArgs),
    /// Benchmarks (see benches/). Without a subcommand: launch vs bwrap,
    /// OpenCode launch-to-healthy vs bare, and the broker, side by side.
    Bench(BenchArgs),
    /// Remove the cgroups of sandboxes whose launcher is gone (also done at every start).
    Gc {
        #[arg(long, default_value = swarmcell::host::lease::HOST_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = "swarmcell")]
        cgroup_parent: String,
    },
    #[command(name = "__init", hide = true)]
    Init { fd: i32 },
    #[command(name = "__probe", hide = true)]
    Probe {
        name: String,
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The git worktree (or any directory) the sandbox may write; also its cwd.
    #[arg(long)]
    worktree: PathBuf,
    /// The repository a git worktree must belong to (repeatable: any of them);
    /// without it, the one recorded for the worktree (or, on its first launch, its .git's).
    #[arg(long = "repo", value_name = "REPO")]
    repos: Vec<PathBuf>,
    /// Policy file (mode 0640 or stricter); default: the built-in opencode policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Extra host path to bind read-only (repeatable).
    #[arg(long = "ro", value_name = "PATH")]
    ro: Vec<PathBuf>,
    /// Extra host path to bind read-write (repeatable).
    #[arg(long = "rw", value_name = "PATH")]
    rw: Vec<PathBuf>,
    /// Write one JSON line {"id","pid","port"} to this fd when the sandbox runs, then close it.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// A sealed memfd page (from the daemon) in which the broker counts connections and bytes.
    #[arg(long, value_name = "FD", hide = true)]
    stats_fd: Option<i32>,
    /// Report events (start failures, egress decisions, ingress refusals) as
    /// JSON lines on this fd, for a supervisor (the daemon), instead of logging them.
    #[arg(long, value_name = "FD", hide = true)]
    events_fd: Option<i32>,
    /// Read the sandbox's secret from this fd (a supervisor keeps it across restarts).
    #[arg(long, value_name = "FD", hide = true)]
    secret_fd: Option<i32>,
    /// Another local uid that may connect to the host port, besides root and
    /// the worktree's owner (repeatable). Everyone else is closed at once.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// Let every local user connect to the host port (no uid check). Required
    /// by --broker handoff, where the payload accepts connections itself.
    #[arg(long)]
    allow_any_uid: bool,
    /// Host uid that owns files the sandbox writes (default: the worktree's owner; never 0).
    #[arg(long)]
    uid: Option<u32>,
    /// Host gid for files the sandbox writes (default: the worktree's group, or --uid).
    #[arg(long)]
    gid: Option<u32>,
    /// Map the sandbox to the worktree owner's uid instead of a per-sandbox uid
    /// with an idmapped worktree mount.
    #[arg(long)]
    no_idmap: bool,
    /// Per-sandbox host uids, BASE-LAST.
    #[arg(long, default_value = "1610612736-1610678271")]
    uid_range: String,
    /// Where swarmcell keeps its leases of uids, ports and sandbox ids
    /// (root-only). Every launcher on a host must use the same one: launchers
    /// with different ones could hand two sandboxes the same host uid.
    #[arg(long, default_value = swarmcell::host::lease::HOST_STATE_DIR)]
    state_dir: PathBuf,
    /// Skip the sweep of stale cgroups and leases at start (for a supervisor
    /// that sweeps itself, like the daemon).
    #[arg(long, hide = true)]
    no_gc: bool,
    /// Memory limit for this run (overrides the policy), e.g. 256M.
    #[arg(long)]
    memory: Option<String>,
    /// Process limit for this run (overrides the policy).
    #[arg(long)]
    pids: Option<u64>,
    /// CPU limit in cores for this run (overrides the policy), e.g. 0.5.
    #[arg(long)]
    cpu: Option<f64>,
    /// Most bytes the worktree may hold for this run (overrides the policy), e.g. 10G.
    #[arg(long, value_name = "SIZE")]
    disk: Option<String>,
    /// Most files and directories the worktree may hold for this run (overrides the policy).
    #[arg(long, value_name = "N")]
    inodes: Option<u64>,
    /// Directory inside swarmcell's own cgroup that holds the sandboxes' cgroups.
    #[arg(long, default_value = "swarmcell")]
    cgroup_parent: String,
    /// Host port on 127.0.0.1 brokered to the payload's inner port: `auto` (the
    /// next free one of --port-range) or a number in the range. Without it, no port.
    #[arg(long, value_name = "auto|N")]
    port: Option<String>,
    /// With --port auto: take this port when it is free (the daemon asks a
    /// restarted sandbox for its previous port).
    #[arg(long, value_name = "N", requires = "port")]
    prefer_port: Option<u16>,
    /// Host ports sandboxes may get (at most 1001).
    #[arg(long, default_value = "8000-9000")]
    port_range: String,
    /// Readiness: `http` (GET the policy's health path until 2xx) or `none` (a TCP connection is enough).
    #[arg(long, default_value = "http")]
    health: String,
    /// How long to wait for health (default: the policy's, 10s).
    #[arg(long, value_name = "DURATION")]
    health_timeout: Option<String>,
    /// After SIGTERM, how long before everything in the sandbox is killed.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    stop_timeout: String,
    /// Most connections at once: relayed (relay), or waiting for the payload's
    /// accept (handoff).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// `handoff` (default): the launcher accepts on the host port, checks the
    /// client's uid and hands each connection to the payload's accept (native
    /// speed; the socket is pinned to its client). `relay`: every connection is
    /// relayed into the sandbox, which holds no host socket at all.
    #[arg(long, default_value = "handoff")]
    broker: String,
    /// Another host loopback port the sandbox may reach at 127.0.0.1:PORT (repeatable).
    #[arg(long = "forward", value_name = "PORT")]
    forwards: Vec<u16>,
    /// Another host name the egress proxy allows (repeatable; `*.suffix`, `:port`).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// A non-public address an allowed name may resolve to (repeatable).
    #[arg(long = "allow-address", value_name = "IP")]
    allow_addresses: Vec<std::net::IpAddr>,
    /// Resolve NAME to IP in the egress proxy instead of asking DNS (repeatable).
    #[arg(long = "resolve", value_name = "NAME=IP")]
    resolve: Vec<String>,
    /// The command and its arguments (default: the policy's `process.command`).
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

#[derive(Subcommand)]
enum CtlCommand {
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
    /// The sandbox's output; control characters are shown escaped (`\x1b`).
    Logs {
        id: String,
        /// Print the output exactly as the payload wrote it, escape sequences included.
        #[arg(long)]
        raw: bool,
    },
    #[command(flatten)]
    Incident(swarmcell::denials::cli::IncidentCommand),
}

#[derive(Subcommand)]
enum WorktreeCommand {
    /// Create BASE/AGENT_ID as a worktree of REPO on a new branch agent/AGENT_ID/NAME (0700).
    Add {
        repo: PathBuf,
        agent_id: String,
        #[arg(long, default_value = swarmcell::git::DEFAULT_BASE)]
        base: PathBuf,
        /// Branch leaf NAME (default: work).
        #[arg(long)]
        branch: Option<String>,
        /// Owner UID[:GID] of the worktree (default: the repository's owner; never root).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Remove the worktree of AGENT_ID (its branch is kept).
    Remove {
        agent_id: String,
        #[arg(long, default_value = swarmcell::git::DEFAULT_BASE)]
        base: PathBuf,
        /// Remove even with uncommitted changes.
        #[arg(long)]
        force: bool,
    },
    /// List swarmcell's worktrees.
    List {
        #[arg(long, default_value = swarmcell::git::DEFAULT_BASE)]
        base: PathBuf,
    },
    /// Remove every swarmcell worktree under BASE and run `git worktree prune`.
    Prune {
        #[arg(long, default_value = swarmcell::git::DEFAULT_BASE)]
        base: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCommand>,
    /// Launches of each of `swarmcell run -- /bin/true` and bwrap.
    #[arg(long, default_value_t = 40)]
    launches: usize,
    /// OpenCode starts on each side (sandboxed, bare).
    #[arg(long, default_value_t = 5)]
    opencode_runs: usize,
    /// Broker: bytes each way for the throughput runs.
    #[arg(long, default_value = "384M")]
    bytes: String,
    /// Broker: pings, connections and launches.
    #[arg(long, default_value_t = 3000)]
    pings: usize,
    #[arg(long, default_value_t = 600)]
    connections: usize,
    #[arg(long, default_value_t = 5)]
    broker_launches: usize,
    /// Launch: also time this other swarmcell binary (before/after), alternating.
    #[arg(long)]
    compare_with: Option<PathBuf>,
    /// Only these parts (launch, opencode, broker; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "launch,opencode,broker")]
    only: Vec<String>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The broker against direct loopback and socat: throughput, latency, launch-to-healthy.
    Broker {
        /// Bytes each way for the throughput runs.
        #[arg(long, default_value = "2G")]
        bytes: String,
        #[arg(long, default_value_t = 20000)]
        pings: usize,
        /// Connections (each opened, one byte echoed, closed) for the accept rate.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value_t = 20)]
        launches: usize,
    },
    /// The daemon: soak (launch/stop N) and scale (M at once).
    Daemon {
        #[arg(long, default_value_t = 1000)]
        soak: usize,
        #[arg(long, default_value_t = 1001)]
        scale: usize,
    },
    /// A denial storm's cost: the payload's refused-call rate with audit logging off, on, and read.
    Denials {
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Outbound forward and egress proxy against direct loopback: throughput.
    Egress {
        #[arg(long, default_value = "1G")]
        bytes: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file; exit 0 if valid, 125 with the error otherwise.
    Check { file: PathBuf },
    /// Print the resolved policy (the built-in one without FILE).
    Explain { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    // The sandbox init is exec'd on every launch: skip the CLI parser.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("__init")) {
        let fd = args.next().and_then(|a| a.to_str().and_then(|s| s.parse().ok())).unwrap_or(-1);
        launch::init::main(fd);
    }
    swarmcell::phases::init_from_env();
    swarmcell::phases::mark("main");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { launch::EXIT_LAUNCHER_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    swarmcell::phases::mark("cli parsed");
    swarmcell::logging::init(matches!(cli.log_format, LogFormat::Json), &cli.log_level);
    swarmcell::phases::mark("logging");
    let log = LogConfig { json: matches!(cli.log_format, LogFormat::Json), level: cli.log_level.clone() };
    let result = match cli.command {
        Command::Init { fd } => launch::init::main(fd),
        Command::Probe { name, args } if name == "verify" => return ExitCode::from(swarmcell::attest::verify_probe::main(&args)),
        Command::Probe { name, args } => return ExitCode::from(swarmcell::attest::probe::main(&name, &args)),
        Command::Run(args) => run(*args, log),
        Command::Gc { state_dir, cgroup_parent } => gc(&state_dir, &cgroup_parent),
        Command::Worktree(cmd) => worktree(cmd),
        Command::Daemon { config, socket, state_dir } => daemon(config, socket, state_dir),
        Command::Ctl { socket, cmd: CtlCommand::Incident(cmd) } => swarmcell::denials::cli::ctl(&socket, cmd),
        Command::Ctl { socket, cmd } => ctl(&socket, cmd),
        Command::Denials(args) => swarmcell::denials::cli::denials(&args),
        Command::Verify { policy, json } => swarmcell::attest::verify::run(&swarmcell::attest::verify::Options { policy, json })
            .map_err(|e| (format!("verify: {e}"), launch::EXIT_LAUNCHER_ERROR)),
        Command::Inspect { target, json } => {
            swarmcell::attest::inspect::run(&target, json).map(|_| 0).map_err(|e| (format!("inspect: {e}"), launch::EXIT_LAUNCHER_ERROR))
        }
        Command::Bench(BenchArgs { cmd: Some(BenchCommand::Broker { bytes, pings, connections, launches }), .. }) => {
            bench_broker(&bytes, pings, connections, launches)
        }
        Command::Bench(BenchArgs { cmd: Some(BenchCommand::Egress { bytes }), .. }) => bench_egress(&bytes),
        Command::Bench(BenchArgs { cmd: Some(BenchCommand::Denials { calls, rounds }), .. }) => {
            swarmcell::bench::denials::run(calls, rounds).map(|_| 0).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR))
        }
        Command::Bench(BenchArgs { cmd: Some(BenchCommand::Daemon { soak, scale }), .. }) => {
            swarmcell::bench::daemon::run(soak, scale).map(|_| 0).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR))
        }
        Command::Bench(args) => bench_all(&args),
        Command::Policy(PolicyCommand::Check { file }) => Policy::load(&file)
            .map(|_| {
                println!("policy {}: ok", file.display());
                0
            })
            .map_err(|e| (e.to_string(), launch::EXIT_LAUNCHER_ERROR)),
        Command::Policy(PolicyCommand::Explain { file }) => {
            let (policy, source) = match &file {
                Some(f) => (Policy::load(f), f.display().to_string()),
                None => (Ok(Policy::builtin()), policy::DEFAULT_POLICY_NAME.to_string()),
            };
            policy
                .map(|p| {
                    print!("{}", policy::explain::explain(&p, &source));
                    0
                })
                .map_err(|e| (e.to_string(), launch::EXIT_LAUNCHER_ERROR))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((message, code)) => {
            eprintln!("swarmcell: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: RunArgs, log: LogConfig) -> Result<u8, (String, u8)> {
    use swarmcell::launch::events;
    events::init(args.events_fd).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR))?;
    // A supervisor learns why from the events channel, never from our stderr
    // (which the payload shares).
    run_checked(args, log).inspect_err(|(message, _)| {
        if events::has_sink() {
            events::emit(events::Event::StartFailed { error: message.clone() });
        }
    })
}

fn run_checked(args: RunArgs, log: LogConfig) -> Result<u8, (String, u8)> {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    // Before any thread exists: nothing inherited reaches a sandbox, and no
    // supplementary group (root's gid 0) is carried into one.
    swarmcell::confine::fds::cloexec_inherited().map_err(|e| launcher(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        swarmcell::sys::clear_groups().map_err(|e| launcher(e.to_string()))?;
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
    if !swarmcell::host::cgroups::valid_parent_name(&args.cgroup_parent) {
        return Err(launcher(format!("--cgroup-parent {:?}: one path component of letters, digits, '.', '_' or '-'", args.cgroup_parent)));
    }
    for p in args.ro.iter().chain(&args.rw) {
        policy::check_sandbox_path(p).map_err(|m| launcher(format!("--ro/--rw {}: {m}", p.display())))?;
    }
    let uid_range = UidRange::parse(&args.uid_range).map_err(|e| launcher(e.to_string()))?;
    let port_range = swarmcell::host::ports::PortRange::parse(&args.port_range).map_err(|e| launcher(e.to_string()))?;
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
        swarmcell::net::egress::check_entry(h).map_err(|m| launcher(format!("--allow-host {m}")))?;
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
    swarmcell::phases::mark("policy and arguments");
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
    parent::run(&req).map_err(|e| (e.to_string(), e.exit_code()))
}

fn gc(state_dir: &std::path::Path, parent: &str) -> Result<u8, (String, u8)> {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    if !swarmcell::host::cgroups::valid_parent_name(parent) {
        return Err(launcher(format!("--cgroup-parent {parent:?}: one path component of letters, digits, '.', '_' or '-'")));
    }
    let layout = swarmcell::host::cgroups::Layout::detect().map_err(|e| launcher(e.to_string()))?;
    let removed = swarmcell::host::cgroups::gc(&layout, parent, state_dir).map_err(|e| launcher(e.to_string()))?;
    for id in &removed {
        println!("removed stale cgroup of {id}");
    }
    Ok(0)
}

fn bench_broker(bytes: &str, pings: usize, connections: usize, launches: usize) -> Result<u8, (String, u8)> {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    if pings == 0 || launches == 0 || connections == 0 {
        return Err(launcher("--pings, --connections and --launches must be 1 or more".into()));
    }
    let wt = swarmcell::bench::TempWorktree::new().map_err(launcher)?;
    let opts = swarmcell::bench::Options { bytes, pings, launches, connections, worktree: wt.path() };
    swarmcell::bench::broker(&opts).map(|_| 0).map_err(launcher)
}

fn bench_all(args: &BenchArgs) -> Result<u8, (String, u8)> {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(&args.bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    if [args.launches, args.opencode_runs, args.pings, args.connections, args.broker_launches].contains(&0) {
        return Err(launcher("--launches, --opencode-runs, --pings, --connections and --broker-launches must be 1 or more".into()));
    }
    let wt = swarmcell::bench::TempWorktree::new().map_err(launcher)?;
    let broker =
        swarmcell::bench::Options { bytes, pings: args.pings, launches: args.broker_launches, connections: args.connections, worktree: wt.path() };
    if let Some(p) = args.only.iter().find(|p| !["launch", "opencode", "broker"].contains(&p.as_str())) {
        return Err(launcher(format!("--only {p:?}: expected launch, opencode or broker")));
    }
    let opts = swarmcell::bench::all::Options {
        launches: args.launches,
        opencode_runs: args.opencode_runs,
        broker,
        parts: args.only.clone(),
        compare_with: args.compare_with.clone(),
    };
    swarmcell::bench::all::run(&opts).map(|_| 0).map_err(launcher)
}

fn worktree(cmd: WorktreeCommand) -> Result<u8, (String, u8)> {
    use swarmcell::git;
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    match cmd {
        WorktreeCommand::Add { repo, agent_id, base, branch, owner } => {
            let owner = owner
                .map(|o| {
                    let (u, g) = o.split_once(':').unwrap_or((&o, &o));
                    match (u.parse::<u32>(), g.parse::<u32>()) {
                        (Ok(u), Ok(g)) => Ok((u, g)),
                        _ => Err(launcher(format!("--owner {o:?}: expected UID or UID:GID"))),
                    }
                })
                .transpose()?;
            let req = git::AddRequest { repo: &repo, id: &agent_id, base: &base, branch: branch.as_deref(), owner };
            let path = git::add(&req).map_err(|e| launcher(e.to_string()))?;
            println!("{}", path.display());
        }
        WorktreeCommand::Remove { agent_id, base, force } => {
            let path = git::remove(&base, &agent_id, force).map_err(|e| launcher(e.to_string()))?;
            println!("removed {}", path.display());
        }
        WorktreeCommand::List { base } => {
            for w in git::list(&base).map_err(|e| launcher(e.to_string()))? {
                println!("{}\t{}\t{}\t{}", w.id, w.path.display(), w.branch, w.repo.display());
            }
        }
        WorktreeCommand::Prune { base } => {
            for id in git::prune(&base).map_err(|e| launcher(e.to_string()))? {
                println!("removed {id}");
            }
        }
    }
    Ok(0)
}

fn bench_egress(bytes: &str) -> Result<u8, (String, u8)> {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    let wt = swarmcell::bench::TempWorktree::new().map_err(launcher)?;
    let opts = swarmcell::bench::Options { bytes, pings: 1, launches: 1, connections: 1, worktree: wt.path() };
    swarmcell::bench::egress(&opts).map(|_| 0).map_err(launcher)
}

fn daemon(config: Option<PathBuf>, socket: Option<PathBuf>, state_dir: Option<PathBuf>) -> Result<u8, (String, u8)> {
    use swarmcell::daemon::{Daemon, config::Config};
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    swarmcell::confine::fds::cloexec_inherited().map_err(|e| launcher(e.to_string()))?;
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
/// output, names, errors): it is escaped (`swarmcell::sanitize`), so nothing
/// reaches the operator's terminal as a control sequence; `logs --raw` opts out.
fn ctl(socket: &std::path::Path, cmd: CtlCommand) -> Result<u8, (String, u8)> {
    use swarmcell::daemon::protocol::Request;
    use swarmcell::sanitize;
    let (req, list_json, raw) = match cmd {
        CtlCommand::Launch { worktree, policy, agent, task, cmd } => (Request::Launch { worktree, agent, task, argv: cmd, policy }, false, false),
        CtlCommand::List { json } => (Request::List, json, false),
        CtlCommand::Stop { id } => (Request::Stop { id }, false, false),
        CtlCommand::Inspect { id } => (Request::Inspect { id }, false, false),
        CtlCommand::Logs { id, raw } => (Request::Logs { id }, false, raw),
        CtlCommand::Incident(cmd) => return swarmcell::denials::cli::ctl(socket, cmd),
    };
    let is_list = matches!(req, Request::List);
    let resp = swarmcell::daemon::ctl(socket, &req).map_err(|e| (sanitize::line(&e), launch::EXIT_LAUNCHER_ERROR))?;
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
