//! The worktree manager and git inside a sandbox: an agent commits on its own
//! branch (published from its private layer); hooks, config, other branches
//! and other agents' admin dirs of the real repository stay out of its reach,
//! and the other worktrees are invisible.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// A repository owned by OWNER with one commit, and the base for worktrees.
fn repo(f: &Fixture) -> (PathBuf, PathBuf) {
    (owned_repo(&f.dir), f.dir.join("worktrees"))
}

fn worktree(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("worktree").args(args).output().unwrap()
}

#[test]
fn the_worktree_manager_creates_refuses_and_prunes() {
    let f = Fixture::new();
    let (repo, base) = repo(&f);
    let (r, b) = (repo.to_str().unwrap(), base.to_str().unwrap());
    let out = worktree(&["add", r, "a", "--base", b]);
    assert_eq!(ok(&out).trim(), base.join("a").to_str().unwrap());
    let meta = std::fs::metadata(base.join("a")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!((meta.uid(), meta.gid()), (OWNER, OWNER));
    assert_eq!(git(&base.join("a"), &["branch", "--show-current"]), "agent/a/work");
    // Refusals: an existing path, a bad id, a path escape.
    for (args, needle) in [
        (vec!["add", r, "a", "--base", b], "already exists (refusing to reuse it)"),
        (vec!["add", r, "Bad_Id", "--base", b], "agent id \"Bad_Id\" is invalid"),
        (vec!["add", r, "../escape", "--base", b], "agent id \"../escape\" is invalid"),
        (vec!["add", r, "c", "--base", b, "--branch", "../main"], "branch name \"../main\" is invalid"),
        (vec!["add", r, "d", "--base", b, "--owner", "0"], "would belong to root"),
    ] {
        let out = worktree(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert!(!f.dir.join("escape").exists());
    ok(&worktree(&["add", r, "b", "--base", b, "--branch", "feature"]));
    let list = ok(&worktree(&["list", "--base", b]));
    assert!(list.contains("a\t") && list.contains("agent/b/feature"), "{list}");
    let out = ok(&worktree(&["prune", "--base", b]));
    assert!(out.contains("removed a") && out.contains("removed b"), "{out}");
    assert!(!base.join("a").exists() && !base.join("b").exists());
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1, "only the main worktree is left");
    // Nothing lost: the agents' branches remain.
    assert!(git(&repo, &["branch", "--list", "agent/*"]).contains("agent/a/work"));
}

#[test]
fn an_agent_commits_on_its_own_branch_and_nothing_else_of_git() {
    let f = Fixture::new();
    let (repo, base) = repo(&f);
    let (r, b) = (repo.to_str().unwrap(), base.to_str().unwrap());
    ok(&worktree(&["add", r, "a", "--base", b]));
    ok(&worktree(&["add", r, "b", "--base", b]));
    std::fs::write(base.join("b/theirs.txt"), "b's work").unwrap();
    let dotgit = repo.join(".git");
    let script = format!(
        "echo agent-a > work.txt && git add work.txt && git -c user.name=agent-a -c user.email=a@x commit -qm 'agent a' 2>/dev/null && echo COMMITTED; \
         for p in {g}/hooks/post-checkout {g}/config {g}/refs/heads/main {g}/refs/heads/agent/b/work {g}/worktrees/b/HEAD {g}/info/attributes; do \
           if (echo evil >> $p) 2>/dev/null; then echo WROTE $p; fi; done; \
         if (mkdir {g}/refs/heads/evil) 2>/dev/null; then echo WROTE new-branch-dir; fi; \
         cat {wb}/theirs.txt 2>/dev/null && echo SAW-B; ls {base} ; echo end",
        g = dotgit.display(),
        wb = base.join("b").display(),
        base = base.display()
    );
    let out = Command::new(bin()).args(["run", "--worktree"]).arg(base.join("a")).args(["--", "/bin/sh", "-c", &script]).output().unwrap();
    assert_no_sandbox_left();
    let text = ok(&out);
    assert!(text.contains("COMMITTED"), "{text}\n{}", stderr(&out));
    // Its writes to git state land in its private layer: the host's are unchanged.
    for p in ["refs/heads/main", "refs/heads/agent/b/work", "worktrees/b/HEAD", "info/attributes"] {
        let host = dotgit.join(p);
        assert!(!std::fs::read_to_string(&host).unwrap_or_default().contains("evil"), "{} changed: {text}", host.display());
    }
    assert!(!dotgit.join("refs/heads/evil").exists(), "{text}");
    assert!(!text.contains("SAW-B"), "{text}");
    assert_eq!(text.lines().rev().nth(1), Some("a"), "only its own worktree is visible in the base: {text}");
    // The commit is visible from the host, on the agent's branch only.
    assert_eq!(git(&repo, &["log", "-1", "--format=%s", "agent/a/work"]), "agent a");
    assert_eq!(git(&repo, &["log", "-1", "--format=%s", "main"]), "initial");
    let hook = dotgit.join("hooks/post-checkout");
    assert!(!hook.exists() || !std::fs::read_to_string(&hook).unwrap().contains("evil"));
    assert!(!std::fs::read_to_string(dotgit.join("config")).unwrap().contains("evil"));
    ok(&worktree(&["prune", "--base", b]));
}
