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
        let mut cmd = super::command();
        clap_complete::generate_to(shell, &mut cmd, "swarmcell", &comp).map_err(|e| err(&comp, e))?;
    }
    Ok(0)
}
