//! `swarmcell __gen-docs DIR` (host side, build/packaging time): man pages
//! for every visible subcommand and shell completions, generated from the clap
//! definitions so that they never drift from the parser.
//!
//! Writes DIR/man1/swarmcell.1, DIR/man1/swarmcell-run.1, ... and
//! DIR/completions/{swarmcell.bash,_swarmcell,swarmcell.fish}.

use std::path::Path;

use clap_complete::Shell;

use super::CliResult;
use crate::launch;

pub(super) fn gen_docs(dir: &Path) -> CliResult {
    let err = |what: &Path, e: std::io::Error| (format!("__gen-docs: {}: {e}", what.display()), launch::EXIT_LAUNCHER_ERROR);
    let man = dir.join("man1");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).map_err(|e| err(d, e))?;
    }
    clap_mangen::generate_to(super::command(), &man).map_err(|e| err(&man, e))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible(&super::command());
        clap_complete::generate_to(shell, &mut cmd, "swarmcell", &comp).map_err(|e| err(&comp, e))?;
    }
    Ok(0)
}

/// The command tree without its hidden subcommands (`__probe`,
/// `__gen-docs`), which clap_complete would otherwise offer.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut c = clap::Command::new(cmd.get_name().to_string());
    if let Some(about) = cmd.get_about() {
        c = c.about(about.clone());
    }
    if let Some(v) = cmd.get_version() {
        c = c.version(v.to_string());
    }
    for a in cmd.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
        c = c.arg(a.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        c = c.subcommand(visible(sub));
    }
    c
}
