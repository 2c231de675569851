//! Man pages and shell completions generated from the clap definitions
//! (`swarmcell __gen-docs DIR`): one page per visible subcommand, readable by
//! `man`, and a bash completion that completes subcommands and options.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Every visible (sub)command's page name: swarmcell, swarmcell-run, swarmcell-ctl-launch, ...
fn page_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    out.push(prefix.to_string());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        page_names(sub, &format!("{prefix}-{}", sub.get_name()), out);
    }
}

fn gen_docs() -> (tempdir::TempDir, Vec<String>) {
    let dir = tempdir::TempDir::new();
    let out = Command::new(bin()).arg("__gen-docs").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "__gen-docs: {}", stderr(&out));
    let mut names = Vec::new();
    page_names(&swarmcell::cli::command(), "swarmcell", &mut names);
    (dir, names)
}

#[test]
fn every_visible_subcommand_has_a_man_page_that_man_renders() {
    let (dir, names) = gen_docs();
    assert!(names.len() > 20, "{names:?}");
    for n in &names {
        let page = dir.path().join("man1").join(format!("{n}.1"));
        assert!(page.is_file(), "no man page {}", page.display());
    }
    // No page for hidden commands (__init, __probe, __gen-docs).
    for f in std::fs::read_dir(dir.path().join("man1")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(names.contains(&name.trim_end_matches(".1").to_string()), "unexpected page {name}");
    }
    let run = dir.path().join("man1/swarmcell-run.1");
    let out = Command::new("man").arg("-l").arg(&run).env("MANPAGER", "cat").env("MANWIDTH", "100").output().expect("man (man-db)");
    let text = stdout(&out);
    assert!(out.status.success(), "man -l {}: {}", run.display(), stderr(&out));
    for want in ["NAME", "swarmcell-run - Run CMD in a new sandbox", "--worktree", "--policy", "--memory"] {
        assert!(text.contains(want), "man swarmcell-run lacks {want:?}:\n{text}");
    }
}

/// Complete `words` (the last one being typed) with the generated bash completion.
fn complete(completion: &Path, words: &[&str]) -> Vec<String> {
    let script = format!(
        "source {c}; COMP_WORDS=({w}); COMP_CWORD={n}; COMP_LINE='{l}'; COMP_POINT=${{#COMP_LINE}}; _swarmcell swarmcell '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        c = completion.display(),
        w = words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        n = words.len() - 1,
        l = words.join(" "),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash").args(["--norc", "-c", &script]).output().unwrap();
    assert!(out.status.success(), "bash completion failed: {}", stderr(&out));
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_options() {
    let (dir, _) = gen_docs();
    let comp = dir.path().join("completions/swarmcell.bash");
    // It loads, and registers itself for `swarmcell`.
    let out = Command::new("bash").args(["--norc", "-c", &format!("source {} && complete -p swarmcell", comp.display())]).output().unwrap();
    assert!(out.status.success() && stdout(&out).contains("swarmcell"), "{}{}", stdout(&out), stderr(&out));
    let subs = complete(&comp, &["swarmcell", ""]);
    for s in ["run", "ctl", "daemon", "verify", "worktree", "policy"] {
        assert!(subs.iter().any(|c| c == s), "no {s} in {subs:?}");
    }
    assert!(!subs.iter().any(|c| c.starts_with("__")), "hidden commands completed: {subs:?}");
    let opts = complete(&comp, &["swarmcell", "run", "--wor"]);
    assert_eq!(opts, ["--worktree"], "{opts:?}");
    let ctl = complete(&comp, &["swarmcell", "ctl", "l"]);
    assert!(ctl.iter().any(|c| c == "launch") && ctl.iter().any(|c| c == "list"), "{ctl:?}");
    // zsh and fish get theirs too.
    for f in ["_swarmcell", "swarmcell.fish"] {
        assert!(dir.path().join("completions").join(f).is_file(), "no {f}");
    }
}

/// A directory removed on drop (no dev-dependency for this).
mod tempdir {
    pub struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub fn new() -> TempDir {
            let out = std::process::Command::new("mktemp").args(["-d", "/tmp/swarmcell-docs.XXXXXXXX"]).output().unwrap();
            TempDir(std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
