//! Shared helpers for the privileged integration tests: they run the real
//! `swarmcell` binary as root against the real kernel, in fixtures under a
//! fresh temporary directory that is removed afterwards.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const OWNER: u32 = 4242;
/// The default per-sandbox host uid range (see `swarmcell run --uid-range`).
pub const UID_BASE: u32 = 0x6000_0000;
pub const UID_COUNT: u32 = 65536;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_swarmcell")
}

/// These tests need root (namespaces, mounts, uid maps). They fail, never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "privileged test: run as root (scripts/test does); it cannot pass or skip otherwise");
}

/// A temporary directory with a worktree owned by OWNER (0700), removed on drop.
pub struct Fixture {
    pub dir: PathBuf,
    pub worktree: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        require_root();
        let out = Command::new("mktemp").args(["-d", "/tmp/swarmcell-test.XXXXXXXX"]).output().expect("mktemp");
        assert!(out.status.success());
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let worktree = dir.join("wt");
        make_owned_dir(&worktree, OWNER, OWNER);
        Fixture { dir, worktree }
    }

    /// `swarmcell run --worktree WT [extra...] -- /bin/sh -c SCRIPT`.
    pub fn sh(&self, extra: &[&str], script: &str) -> Output {
        self.run(extra, &["/bin/sh", "-c", script])
    }

    pub fn run(&self, extra: &[&str], cmd: &[&str]) -> Output {
        let out = self.command(extra, cmd).output().expect("spawn swarmcell");
        assert_no_sandbox_left();
        out
    }

    pub fn command(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("run").arg("--worktree").arg(&self.worktree).args(extra).arg("--").args(cmd);
        c.stdin(Stdio::null());
        c
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn make_owned_dir(path: &Path, uid: u32, gid: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert exit status 0 and return stdout.
pub fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stdout(o)
}

/// No process runs as a per-sandbox uid or the test owner, and no lease or
/// cgroup is left. Orphans of a killed launcher are reaped by the host's pid 1,
/// which may take a moment: a process must be gone within 5 s.
pub fn assert_no_sandbox_left() {
    let start = std::time::Instant::now();
    loop {
        let left = sandbox_processes();
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "sandbox processes left behind:\n{}", left.join("\n---\n"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for dir in ["uids", "sandboxes", "ports"] {
        let leases = std::fs::read_dir(format!("/run/swarmcell/{dir}"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".lock")).count())
            .unwrap_or(0);
        assert_eq!(leases, 0, "a lease is still held in /run/swarmcell/{dir}");
    }
    assert_no_cgroup_left();
}

/// No sandbox cgroup, and no empty `swarmcell` parent, in any hierarchy.
pub fn assert_no_cgroup_left() {
    let layout = swarmcell::cgroups::Layout::detect().expect("cgroups");
    let left = swarmcell::cgroups::sandbox_dirs(&layout, "swarmcell");
    assert!(left.is_empty(), "sandbox cgroups left behind: {left:?}");
}

/// Read the ready line a `--ready-fd 3` run writes into `path`.
pub fn ready_line(path: &Path) -> serde_json::Value {
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return serde_json::from_str(text.trim()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no ready line in {}", path.display());
}

fn sandbox_processes() -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let uid: u32 =
            status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        if (UID_BASE..UID_BASE + UID_COUNT).contains(&uid) || uid == OWNER {
            left.push(format!("pid {pid} uid {uid}\n{}", status.lines().take(8).collect::<Vec<_>>().join("\n")));
        }
    }
    left
}

/// Where the swarmcell binary lives, to bind it read-only for `__probe`.
pub fn bin_dir() -> String {
    Path::new(bin()).parent().unwrap().to_string_lossy().into_owned()
}
