//! The command line (host side): clap definitions, argument checks, dispatch.
//! One file per command family; each turns arguments into the validated
//! request of the module that does the work, and nothing more.
//!
//! Exit codes: the payload's own status; 125 for a swarmcell error (bad input,
//! refused by the kernel); 126 the payload cannot be executed; 127 it was not
//! found; 128+N when the payload was killed by signal N.

mod bench;
mod ctl;
mod denials;
mod docs;
mod ps;
mod run;
mod worktree;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::launch::{self, spec::LogConfig};
use crate::policy::{self, Policy};

/// A command's outcome: its exit code, or a one-line error and the exit code.
type CliResult = Result<u8, (String, u8)>;

#[derive(Parser)]
#[command(name = "swarmcell", version, about = "A hardened sandbox launcher for AI coding-agent servers")]
pub struct Cli {
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
    Run(Box<run::RunArgs>),
    /// Validate or show a policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Git worktrees for agents: BASE/AGENT_ID on branch agent/AGENT_ID/NAME.
    #[command(subcommand)]
    Worktree(worktree::WorktreeCommand),
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
    /// The Temporal activity worker for this host (unprivileged; runs the
    /// sibling `swarmcell-worker` binary with ARGS; see its --help).
    #[command(disable_help_flag = true)]
    Worker {
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Talk to the daemon.
    Ctl {
        #[arg(long, default_value = "/run/swarmcell/control.sock")]
        socket: PathBuf,
        #[command(subcommand)]
        cmd: ctl::CtlCommand,
    },
    /// The daemon's sandboxes with their usage; --watch refreshes like systemd-cgtop.
    Ps(ps::PsArgs),
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
    Denials(denials::DenialsArgs),
    /// Benchmarks (see benches/). Without a subcommand: launch vs bwrap,
    /// OpenCode launch-to-healthy vs bare, and the broker, side by side.
    Bench(bench::BenchArgs),
    /// Remove the cgroups of sandboxes whose launcher is gone (also done at every start).
    Gc {
        #[arg(long, default_value = crate::host::lease::HOST_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = "swarmcell")]
        cgroup_parent: String,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(name = "__gen-docs", hide = true)]
    GenDocs { dir: PathBuf },
    #[command(name = "__probe", hide = true)]
    Probe {
        name: String,
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file; exit 0 if valid, 125 with the error otherwise.
    Check { file: PathBuf },
    /// Print the resolved policy (the built-in one without FILE).
    Explain { file: Option<PathBuf> },
}

/// The whole command tree, for generated documentation (man pages, completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parse the process's arguments and run the command.
/// `run` is parsed by a command that knows only `run` and the global options:
/// the full command builds every subcommand's arguments first, a third of a
/// millisecond of each launch. Whatever that parse does not accept (help,
/// errors) goes to the full parser, so every message stays the same.
fn parse(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::{Args, FromArgMatches};
    if args.get(1).is_some_and(|a| a == "run") {
        let only_run = clap::Command::new("swarmcell")
            .arg(
                clap::Arg::new("log_format")
                    .long("log-format")
                    .value_parser(clap::builder::EnumValueParser::<LogFormat>::new())
                    .default_value("text")
                    .global(true),
            )
            .arg(clap::Arg::new("log_level").long("log-level").default_value("warn").global(true))
            .subcommand(run::RunArgs::augment_args(clap::Command::new("run")))
            .subcommand_required(true);
        if let Ok(cli) = only_run.try_get_matches_from(&args).and_then(|mut m| Cli::from_arg_matches_mut(&mut m)) {
            return Ok(cli);
        }
    }
    Cli::try_parse_from(args)
}

pub fn main() -> ExitCode {
    crate::phases::init_from_env();
    crate::phases::mark("main");
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `run`: its init starts now, before the command line is even parsed (see
    // `EarlyInit`); unused (bad input), it is killed and reaped when dropped.
    // Not for a request for help, which never launches.
    let asks_help = || args.iter().skip(2).take_while(|a| *a != "--").any(|a| a == "-h" || a == "--help");
    let early = if args.get(1).is_some_and(|a| a == "run") && !asks_help() { launch::sandbox::EarlyInit::start() } else { None };
    let cli = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { launch::EXIT_LAUNCHER_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    crate::phases::mark("cli parsed");
    crate::logging::init(matches!(cli.log_format, LogFormat::Json), &cli.log_level);
    crate::phases::mark("logging");
    let log = LogConfig { json: matches!(cli.log_format, LogFormat::Json), level: cli.log_level.clone() };
    let result = match cli.command {
        Command::Probe { name, args } if name == "verify" => return ExitCode::from(crate::attest::verify_probe::main(&args)),
        Command::Probe { name, args } => return ExitCode::from(crate::attest::probe::main(&name, &args)),
        Command::Run(args) => run::run(*args, log, early),
        Command::Gc { state_dir, cgroup_parent } => run::gc(&state_dir, &cgroup_parent),
        Command::Worktree(cmd) => worktree::worktree(cmd),
        Command::Daemon { config, socket, state_dir } => ctl::daemon(config, socket, state_dir),
        Command::Ctl { socket, cmd } => ctl::ctl(&socket, cmd),
        Command::Denials(args) => denials::denials(&args),
        Command::Worker { args } => Err((crate::worker::exec(&args), launch::EXIT_LAUNCHER_ERROR)),
        Command::Ps(args) => ps::ps(args),
        Command::Verify { policy, json } => crate::attest::verify::run(&crate::attest::verify::Options { policy, json })
            .map_err(|e| (format!("verify: {e}"), launch::EXIT_LAUNCHER_ERROR)),
        Command::Inspect { target, json } => {
            crate::attest::inspect::run(&target, json).map(|_| 0).map_err(|e| (format!("inspect: {e}"), launch::EXIT_LAUNCHER_ERROR))
        }
        Command::Bench(args) => bench::bench(args),
        Command::Policy(cmd) => policy_command(cmd),
        Command::GenDocs { dir } => docs::gen_docs(&dir),
    };
    match result {
        Ok(code) => {
            crate::phases::mark("main returns");
            ExitCode::from(code)
        }
        Err((message, code)) => {
            eprintln!("swarmcell: {message}");
            ExitCode::from(code)
        }
    }
}

fn policy_command(cmd: PolicyCommand) -> CliResult {
    match cmd {
        PolicyCommand::Check { file } => Policy::load(&file)
            .map(|_| {
                println!("policy {}: ok", file.display());
                0
            })
            .map_err(|e| (e.to_string(), launch::EXIT_LAUNCHER_ERROR)),
        PolicyCommand::Explain { file } => {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short-cut parser for `run` must read every `run` command line as
    /// the full one does (its global options are written twice).
    #[test]
    fn the_run_shortcut_parses_as_the_full_command_line() {
        let lines: [&[&str]; 4] = [
            &["swarmcell", "run", "--worktree", "/w", "--", "/bin/true"],
            &["swarmcell", "run", "--log-level", "debug", "--worktree", "/w", "--port", "auto", "--", "x", "--y"],
            &["swarmcell", "run", "--log-format", "json", "--worktree", "/w"],
            &["swarmcell", "run", "--worktree", "/w", "--log-format=json", "--log-level=info", "--memory", "1G"],
        ];
        let show = |c: &Cli| {
            let Command::Run(r) = &c.command else { panic!("not run") };
            (matches!(c.log_format, LogFormat::Json), c.log_level.clone(), r.worktree.clone(), r.cmd.clone(), r.port.clone(), r.memory.clone())
        };
        for line in lines {
            let args: Vec<std::ffi::OsString> = line.iter().map(Into::into).collect();
            let short = parse(args.clone()).unwrap();
            let full = Cli::try_parse_from(args).unwrap();
            assert_eq!(show(&short), show(&full), "{line:?}");
        }
    }
}
