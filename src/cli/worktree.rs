//! `swarmcell worktree`: agents' git worktrees (see `crate::git`).

use std::path::PathBuf;

use clap::Subcommand;

use super::CliResult;
use crate::launch;

#[derive(Subcommand)]
pub(super) enum WorktreeCommand {
    /// Create BASE/AGENT_ID as a worktree of REPO on a new branch agent/AGENT_ID/NAME (0700).
    Add {
        repo: PathBuf,
        agent_id: String,
        #[arg(long, default_value = crate::git::DEFAULT_BASE)]
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
        #[arg(long, default_value = crate::git::DEFAULT_BASE)]
        base: PathBuf,
        /// Remove even with uncommitted changes.
        #[arg(long)]
        force: bool,
    },
    /// List swarmcell's worktrees.
    List {
        #[arg(long, default_value = crate::git::DEFAULT_BASE)]
        base: PathBuf,
    },
    /// Remove every swarmcell worktree under BASE and run `git worktree prune`.
    Prune {
        #[arg(long, default_value = crate::git::DEFAULT_BASE)]
        base: PathBuf,
    },
}

pub(super) fn worktree(cmd: WorktreeCommand) -> CliResult {
    use crate::git;
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
