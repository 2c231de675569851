//! `swarmcell bench denials`: what a denial storm costs the payload that makes
//! it. One payload (`__probe denials - N`) makes N refused `keyctl` calls in a
//! sandbox, timed inside the sandbox, under three setups in one run:
//! - `off`: the rule answers ENOSYS, a compatibility fallback that is not
//!   logged (no audit record at all);
//! - `on`: the rule answers EPERM, logged (SECCOMP_FILTER_FLAG_LOG): one audit
//!   record per call, no reader;
//! - `on+reader`: the same while a reader like the daemon's takes every record
//!   from the audit multicast group and counts it.
//!
//! `off` and `on` alternate for `rounds` rounds; `on+reader` runs last (the
//! reader thread lives until the process ends). Medians are reported.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const OWNER: u32 = 10000;

fn policy(dir: &Path, name: &str, errno: &str) -> Result<std::path::PathBuf, String> {
    let p = dir.join(name);
    let text = format!("[seccomp]\n[[seccomp.deny]]\nsyscalls = [\"keyctl\"]\nerrno = \"{errno}\"\nreason = \"bench\"\n");
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(p)
}

/// Calls per second inside the sandbox.
fn round(exe: &Path, policy: &Path, wt: &Path, calls: u64) -> Result<f64, String> {
    let out = Command::new(exe)
        .args(["run", "--policy"])
        .arg(policy)
        .arg("--worktree")
        .arg(wt)
        .arg("--ro")
        .arg(exe.parent().unwrap_or(Path::new("/")))
        .arg("--")
        .arg(exe)
        .args(["__probe", "denials", "-", &calls.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the payload: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("flood "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the payload reported nothing: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
    Ok(calls as f64 / secs.max(1e-9))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(calls: u64, rounds: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("swarmcell-bench-denials-{}", crate::launch::random_u32()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let wt = dir.join("wt");
    std::fs::create_dir(&wt).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&wt, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&wt, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let off = policy(&dir, "off.toml", "ENOSYS")?;
    let on = policy(&dir, "on.toml", "EPERM")?;
    let (mut r_off, mut r_on, mut r_reader) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        r_off.push(round(&exe, &off, &wt, calls)?);
        r_on.push(round(&exe, &on, &wt, calls)?);
    }
    let hub = crate::denials::hub::Hub::start(crate::denials::hub::KernelAudit::Leave)?;
    for _ in 0..rounds {
        r_reader.push(round(&exe, &on, &wt, calls)?);
    }
    let unattributed = hub.lock().agg.unattributed;
    let (off, on, reader) = (median(r_off), median(r_on), median(r_reader));
    println!("swarmcell bench denials: {calls} refused keyctl calls per round, {rounds} rounds, medians (calls/s inside the sandbox)");
    println!("  off        (ENOSYS, not logged)          {off:>12.0}");
    println!("  on         (EPERM, logged, no reader)    {on:>12.0}  ({:.1}x slower than off)", off / on.max(1.0));
    println!("  on+reader  (logged, read and counted)    {reader:>12.0}  ({:.1}x slower than off)", off / reader.max(1.0));
    println!("  records the reader held for no sandbox (expected: none registered here): {unattributed} unattributed, rest in limbo");
    println!("  kernel: {}", hub.kernel);
    Ok(())
}
