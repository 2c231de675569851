//! Host side: the one way swarmcell runs git. Root never runs git itself: git
//! for a repository runs as that repository's owner (uid, gid, no supplementary
//! groups), with hooks and fsmonitor off, no system or global configuration,
//! a clean environment, its own process group, bounded output and a deadline
//! (a hostile repository must not hang root or fill its memory).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::GitError;

/// Default deadline of one git command.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Most bytes of stdout (and of stderr) kept.
const MAX_OUTPUT: u64 = 32 << 20;

/// Settings that keep git from running anything of the repository's or the
/// caller's: hooks, fsmonitor, pagers, credential helpers, automatic gc.
const SAFE_CONFIG: [&str; 11] = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.pager=cat",
    "credential.helper=",
    "gc.auto=0",
    "maintenance.auto=false",
    "protocol.allow=never",
    "protocol.file.allow=always",
    "submodule.recurse=false",
    "advice.detachedHead=false",
];

fn git_binary() -> &'static str {
    ["/usr/bin/git", "/usr/local/bin/git", "/bin/git"].into_iter().find(|p| Path::new(p).is_file()).unwrap_or("/usr/bin/git")
}

/// `git ARGS` as uid:gid (never 0), in `/`, with SAFE_CONFIG, `extra_env`,
/// and a deadline; stdout on success, the error with stderr's last line otherwise.
pub fn run_as(owner: (u32, u32), args: &[&std::ffi::OsStr], extra_env: &[(&str, &std::ffi::OsStr)], deadline: Duration) -> Result<Vec<u8>, GitError> {
    let shown = || args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let fail = |message: String| GitError::Git { args: shown(), message };
    if owner.0 == 0 || owner.1 == 0 {
        return Err(fail("refusing to run git as root".into()));
    }
    let mut c = Command::new(git_binary());
    for kv in SAFE_CONFIG {
        c.arg("-c").arg(kv);
    }
    c.args(args);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("GIT_PROTOCOL_FROM_USER", "0");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    // std drops the supplementary groups (setgroups(0)) before setuid as root.
    c.uid(owner.0).gid(owner.1).process_group(0).current_dir("/");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| fail(e.to_string()))?;
    let pid = child.id() as libc::pid_t;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let mut r = r.take(MAX_OUTPUT);
                let _ = r.read_to_end(&mut buf);
                // Drain the rest so git never blocks on a full pipe.
                let _ = std::io::copy(&mut r.into_inner(), &mut std::io::sink());
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // SAFETY: SIGKILL to the process group of our own child (it leads it).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    // Helpers it started may still hold the pipes: end its whole group.
    // SAFETY: as above; the group is ours (ESRCH when already gone).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => Err(fail(format!("did not finish within {}s (killed)", deadline.as_secs()))),
        Some(s) if s.success() => Ok(stdout),
        Some(s) => {
            let text = String::from_utf8_lossy(&stderr);
            let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let msg = last.iter().rev().take(2).rev().cloned().collect::<Vec<_>>().join("; ");
            Err(fail(format!("{s}: {}", super::escape(&msg))))
        }
    }
}

/// `--NAME=PATH`, exact for any path (no lossy conversion).
pub fn flag(name: &str, path: &Path) -> std::ffi::OsString {
    let mut f = std::ffi::OsString::from(format!("--{name}="));
    f.push(path.as_os_str());
    f
}

/// `git --git-dir=GIT_DIR ARGS` as `owner`, stdout as text.
pub fn in_git_dir(owner: (u32, u32), git_dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let mut all: Vec<&std::ffi::OsStr> = Vec::new();
    let flag = flag("git-dir", git_dir);
    all.push(&flag);
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    let out = run_as(owner, &all, &[], DEADLINE)?;
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}
