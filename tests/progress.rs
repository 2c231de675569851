//! Progress of long operations goes to stderr only when it is a terminal:
//! `swarmcell verify` on a pseudo-terminal (util-linux `script`) shows its
//! steps and clears the line; with stderr piped, nothing of it appears.

mod common;

use std::process::Command;

use common::*;

#[test]
fn verify_shows_its_steps_on_a_terminal_only() {
    require_root();
    let cmd = format!("{} verify --json", bin());
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().expect("script (bsdutils)");
    let tty = String::from_utf8_lossy(&out.stdout);
    for step in ["[1/7] verify: the escape battery (", "[7/7] verify: git worktrees ("] {
        assert!(tty.contains(step), "no {step:?} on the terminal:\n{tty}");
    }
    assert!(tty.contains("\r\x1b[2K{\"checks\""), "the progress line is cleared before the report:\n{tty}");
    assert_no_sandbox_left();

    let piped = Command::new(bin()).args(["verify", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(report["summary"]["escaped"], 0);
    assert!(!stderr(&piped).contains("verify: the escape battery"), "progress on a pipe: {}", stderr(&piped));
    assert_no_sandbox_left();
}
