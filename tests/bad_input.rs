//! Bad input gets one clear line on stderr, a documented exit code (125 unless
//! the payload cannot be found or executed), and leaves nothing behind.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn assert_refused(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("swarmcell: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(stdout(out).is_empty());
}

#[test]
fn a_missing_worktree_is_refused() {
    let f = Fixture::new();
    let mut c = std::process::Command::new(bin());
    c.args(["run", "--worktree"]).arg(f.dir.join("nope")).args(["--", "/bin/true"]);
    let out = c.output().unwrap();
    assert_no_sandbox_left();
    assert_refused(&out, 125, "does not exist");
}

#[test]
fn a_worktree_that_is_a_file_is_refused() {
    let f = Fixture::new();
    let file = f.dir.join("file");
    std::fs::write(&file, "").unwrap();
    let out = std::process::Command::new(bin()).args(["run", "--worktree"]).arg(&file).args(["--", "/bin/true"]).output().unwrap();
    assert_refused(&out, 125, "is not a directory");
}

#[test]
fn a_root_owned_worktree_is_refused_unless_a_non_root_uid_is_given() {
    let f = Fixture::new();
    let rootwt = f.dir.join("rootwt");
    std::fs::create_dir(&rootwt).unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["run", "--worktree"])
            .arg(&rootwt)
            .args(extra)
            .args(["--", "/bin/sh", "-c", "id -u"])
            .output()
            .unwrap();
        assert_no_sandbox_left();
        out
    };
    assert_refused(&run(&[]), 125, "is owned by root");
    assert_refused(&run(&["--uid", "0"]), 125, "--uid 0 is refused");
    let out = run(&["--uid", "4243"]);
    assert_eq!(ok(&out).trim(), "4243");
}

#[test]
fn an_unknown_policy_key_names_file_line_and_field() {
    let f = Fixture::new();
    let p = f.dir.join("bad.toml");
    std::fs::write(&p, "[limits]\npids = 10\nmemroy = \"1G\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]);
    assert_refused(&out, 125, &format!("policy {}:3:1: unknown field `memroy`", p.display()));
    let out = std::process::Command::new(bin()).args(["policy", "check"]).arg(&p).output().unwrap();
    assert_refused(&out, 125, "unknown field `memroy`");
}

#[test]
fn a_policy_file_wider_than_0640_is_refused() {
    let f = Fixture::new();
    let p = f.dir.join("loose.toml");
    std::fs::write(&p, "").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]);
    assert_refused(&out, 125, "mode 0644 is wider than 0640");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]));
}

#[test]
fn a_payload_that_does_not_exist_exits_127() {
    let f = Fixture::new();
    assert_refused(&f.run(&[], &["definitely-not-a-command"]), 127, "cannot find \"definitely-not-a-command\"");
}

#[test]
fn a_missing_ro_path_and_a_reserved_one_are_refused() {
    let f = Fixture::new();
    assert_refused(&f.run(&["--ro", "/no/such/dir"], &["/bin/true"]), 125, "--ro path /no/such/dir");
    assert_refused(&f.run(&["--rw", "/proc/sys"], &["/bin/true"]), 125, "under /proc");
}

#[test]
fn usage_errors_exit_125() {
    let out = std::process::Command::new(bin()).args(["run", "--worktree", "/tmp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let out = std::process::Command::new(bin()).args(["run", "--worktree", "/", "--", "/bin/true"]).output().unwrap();
    assert_refused(&out, 125, "is a system directory");
}
