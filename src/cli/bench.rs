//! `swarmcell bench`: argument checks, then `crate::bench`.

use std::path::PathBuf;

use clap::Subcommand;

use super::CliResult;
use crate::launch;
use crate::policy;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct BenchArgs {
    #[command(subcommand)]
    pub(super) cmd: Option<BenchCommand>,
    /// Launches of each of `swarmcell run -- /bin/true` and bwrap.
    #[arg(long, default_value_t = 40)]
    pub(super) launches: usize,
    /// OpenCode starts on each side (sandboxed, bare).
    #[arg(long, default_value_t = 5)]
    pub(super) opencode_runs: usize,
    /// Broker: bytes each way for the throughput runs, per CPU placement
    /// (with 384M a round lasted ~20 ms and one placement's ratio one way
    /// moved by 15% from run to run; with 1G, by 6%).
    #[arg(long, default_value = "1G")]
    pub(super) bytes: String,
    /// Broker: pings, connections and launches.
    #[arg(long, default_value_t = 3000)]
    pub(super) pings: usize,
    #[arg(long, default_value_t = 600)]
    pub(super) connections: usize,
    #[arg(long, default_value_t = 5)]
    pub(super) broker_launches: usize,
    /// Launch: also time this other swarmcell binary (before/after), alternating.
    #[arg(long)]
    pub(super) compare_with: Option<PathBuf>,
    /// Only these parts (launch, opencode, broker; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "launch,opencode,broker")]
    pub(super) only: Vec<String>,
}

#[derive(Subcommand)]
pub(super) enum BenchCommand {
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

fn bench_broker(bytes: &str, pings: usize, connections: usize, launches: usize) -> CliResult {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    if pings == 0 || launches == 0 || connections == 0 {
        return Err(launcher("--pings, --connections and --launches must be 1 or more".into()));
    }
    let wt = crate::bench::TempWorktree::new().map_err(launcher)?;
    let opts = crate::bench::Options { bytes, pings, launches, connections, worktree: wt.path() };
    crate::bench::broker(&opts).map(|_| 0).map_err(launcher)
}

fn bench_all(args: &BenchArgs) -> CliResult {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(&args.bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    if [args.launches, args.opencode_runs, args.pings, args.connections, args.broker_launches].contains(&0) {
        return Err(launcher("--launches, --opencode-runs, --pings, --connections and --broker-launches must be 1 or more".into()));
    }
    let wt = crate::bench::TempWorktree::new().map_err(launcher)?;
    let broker =
        crate::bench::Options { bytes, pings: args.pings, launches: args.broker_launches, connections: args.connections, worktree: wt.path() };
    if let Some(p) = args.only.iter().find(|p| !["launch", "opencode", "broker"].contains(&p.as_str())) {
        return Err(launcher(format!("--only {p:?}: expected launch, opencode or broker")));
    }
    let opts = crate::bench::all::Options {
        launches: args.launches,
        opencode_runs: args.opencode_runs,
        broker,
        parts: args.only.clone(),
        compare_with: args.compare_with.clone(),
    };
    crate::bench::all::run(&opts).map(|_| 0).map_err(launcher)
}

fn bench_egress(bytes: &str) -> CliResult {
    let launcher = |m: String| (m, launch::EXIT_LAUNCHER_ERROR);
    let bytes = policy::units::parse_size(bytes).map_err(launcher)?.ok_or_else(|| launcher("--bytes cannot be max".into()))?;
    let wt = crate::bench::TempWorktree::new().map_err(launcher)?;
    let opts = crate::bench::Options { bytes, pings: 1, launches: 1, connections: 1, worktree: wt.path() };
    crate::bench::egress(&opts).map(|_| 0).map_err(launcher)
}

pub(super) fn bench(args: BenchArgs) -> CliResult {
    match args.cmd {
        Some(BenchCommand::Broker { bytes, pings, connections, launches }) => bench_broker(&bytes, pings, connections, launches),
        Some(BenchCommand::Egress { bytes }) => bench_egress(&bytes),
        Some(BenchCommand::Denials { calls, rounds }) => {
            crate::bench::denials::run(calls, rounds).map(|_| 0).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR))
        }
        Some(BenchCommand::Daemon { soak, scale }) => crate::bench::daemon::run(soak, scale).map(|_| 0).map_err(|e| (e, launch::EXIT_LAUNCHER_ERROR)),
        None => bench_all(&args),
    }
}
