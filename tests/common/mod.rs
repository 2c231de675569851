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

    /// `swarmcell run --ready-fd 3 [extra] -- cmd` on this fixture's worktree, in
    /// the background (see [`spawn_run`]).
    pub fn spawn(&self, extra: &[&str], cmd: &[&str]) -> (Launcher, PathBuf) {
        spawn_run(&self.dir, &self.worktree, extra, cmd)
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

/// A launcher running in the background. Dropped while still running (a test
/// failed), it is SIGKILLed: the sandbox init's parent-death signal then ends
/// the sandbox, so a failure never leaks into the next test.
pub struct Launcher(pub std::process::Child);

impl Launcher {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }

    pub fn sigterm(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
    }

    pub fn sigkill(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `swarmcell run --ready-fd 3 --worktree WT [extra] -- cmd` in the background;
/// the ready line goes to a file in `dir` (returned), stderr next to it (`.stderr`).
pub fn spawn_run(dir: &Path, worktree: &Path, extra: &[&str], cmd: &[&str]) -> (Launcher, PathBuf) {
    use std::os::unix::process::CommandExt;
    let ready = dir.join(format!("ready-{}", swarmcell::launch::random_u32()));
    let fd = std::os::fd::IntoRawFd::into_raw_fd(std::fs::File::create(&ready).unwrap());
    let mut c = Command::new(bin());
    c.args(["run", "--ready-fd", "3", "--worktree"]).arg(worktree).args(extra).arg("--").args(cmd);
    // SAFETY: install_fd_for_exec is async-signal-safe.
    unsafe {
        c.pre_exec(move || swarmcell::sys::child::install_fd_for_exec(fd, 3));
    }
    let log = std::fs::File::create(ready.with_extension("stderr")).unwrap();
    let child = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    // SAFETY: the parent's copy is not needed.
    unsafe { libc::close(fd) };
    (Launcher(child), ready)
}

/// The ready line, or a panic that shows what the launcher said.
pub fn ready_of(ready: &Path) -> serde_json::Value {
    let r = std::panic::catch_unwind(|| ready_line(ready));
    r.unwrap_or_else(|_| panic!("no ready line; launcher stderr: {}", std::fs::read_to_string(ready.with_extension("stderr")).unwrap_or_default()))
}

/// `git` as root on a repository owned by the test user.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out =
        Command::new("git").args(["-c", "safe.directory=*", "-c", "user.name=t", "-c", "user.email=t@t", "-C"]).arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository at DIR/repo owned by OWNER, with one commit on main.
pub fn owned_repo(dir: &Path) -> PathBuf {
    // Its owner must reach it (git runs as the owner).
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# demo\n").unwrap();
    git(&repo, &["add", "README.md"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    Command::new("chown").args(["-R", &format!("{OWNER}:{OWNER}")]).arg(&repo).status().unwrap();
    repo
}

/// No process runs as a per-sandbox uid or the test owner, and no lease or
/// cgroup is left. Orphans of a killed launcher are reaped by the host's pid 1,
/// which may take a moment: a process must be gone within 5 s.
pub fn assert_no_sandbox_left() {
    // A launcher finishes its teardown (cgroup, leases) just after its sandbox's
    // processes are gone; everything must be gone within 5 s.
    let start = std::time::Instant::now();
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "left behind:\n{}", left.join("\n---\n"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What sandboxes hold on the host now, by name: cgroups (sandbox ids), port
/// leases, sandbox-id leases, and how many sandbox processes run (zombies left
/// to the host's pid 1 to reap, e.g. the init of a SIGKILLed launcher, do not
/// run and are not counted).
#[derive(Debug)]
pub struct Held {
    pub cgroups: std::collections::BTreeSet<String>,
    pub ports: std::collections::BTreeSet<u16>,
    pub sandbox_leases: std::collections::BTreeSet<String>,
    pub processes: usize,
}

pub fn held() -> Held {
    let locks = |dir: &str| -> Vec<String> {
        std::fs::read_dir(format!("/run/swarmcell/{dir}"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".lock").map(String::from)).collect())
            .unwrap_or_default()
    };
    let layout = swarmcell::host::cgroups::Layout::detect().expect("cgroups");
    Held {
        cgroups: swarmcell::host::cgroups::sandbox_dirs(&layout, "swarmcell")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        ports: locks("ports").iter().filter_map(|p| p.parse().ok()).collect(),
        sandbox_leases: locks("sandboxes").into_iter().collect(),
        processes: sandbox_processes().iter().filter(|p| !p.contains("\nState:\tZ")).count(),
    }
}

/// Sandbox processes, held lock files and sandbox cgroups, described.
fn leftovers() -> Vec<String> {
    let mut left = sandbox_processes();
    for dir in ["uids", "sandboxes", "ports", "projects"] {
        let leases: Vec<String> = std::fs::read_dir(format!("/run/swarmcell/{dir}"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".lock")).collect())
            .unwrap_or_default();
        if !leases.is_empty() {
            left.push(format!("locks in /run/swarmcell/{dir}: {leases:?}"));
        }
    }
    let layout = swarmcell::host::cgroups::Layout::detect().expect("cgroups");
    let cgroups = swarmcell::host::cgroups::sandbox_dirs(&layout, "swarmcell");
    if !cgroups.is_empty() {
        left.push(format!("sandbox cgroups: {cgroups:?}"));
    }
    left
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

pub fn sandbox_process_list() -> String {
    sandbox_processes().join("\n---\n")
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

/// As `uid` (no groups), connect to 127.0.0.1:PORT, send `GET PATH`, and count
/// the bytes that come back within 3 s (`-1`: the connection was refused).
pub fn bytes_back_as(uid: u32, port: u16, path: &str) -> i64 {
    let script = format!(
        "trap '' PIPE; exec 3<>/dev/tcp/127.0.0.1/{port} || {{ echo -1; exit; }}; printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3; timeout 3 cat <&3 | wc -c"
    );
    let out = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "bash", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
}

/// `git` as OWNER (no supplementary groups, hooks of the repository run as OWNER).
pub fn git_as_owner(dir: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([&format!("--reuid={OWNER}"), &format!("--regid={OWNER}"), "--clear-groups", "env", "HOME=/nonexistent", "git"])
        .args(["-c", "user.name=o", "-c", "user.email=o@o", "-C"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `swarmcell worktree ARGS`.
pub fn worktree_cmd(args: &[&str]) -> Output {
    Command::new(bin()).arg("worktree").args(args).output().unwrap()
}

/// `swarmcell run --worktree WT -- /bin/sh -c SCRIPT`, killed after `limit`
/// (None: it did not finish in time).
pub fn sh_in(worktree: &Path, extra: &[&str], script: &str, limit: std::time::Duration) -> Option<Output> {
    let mut c = Command::new(bin());
    c.arg("run").arg("--worktree").arg(worktree).args(extra).args(["--", "/bin/sh", "-c", script]);
    timed(&mut c, limit)
}

/// Run a command, killed (SIGKILL) after `limit`; None when it had to be killed.
pub fn timed(c: &mut Command, limit: std::time::Duration) -> Option<Output> {
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.unwrap()),
        Err(_) => {
            // SAFETY: killing our own child, which has not been reaped (its waiter still waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            None
        }
    }
}
pub mod daemon;
