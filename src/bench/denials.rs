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
//!
//! Then what a storm costs the others: launches of `run -- /bin/true` alone,
//! next to a sandbox spinning on half a core (no denials), and next to a
//! sandbox flooding refused calls on the same half core, while the reader
//! counts every record; the three alternate, `rounds` times.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const OWNER: u32 = 10000;
const LAUNCHES_PER_ROUND: usize = 10;

/// A policy refusing `keyctl` with `errno`, and `extra` lines.
fn policy(dir: &Path, name: &str, errno: &str, extra: &str) -> Result<std::path::PathBuf, String> {
    let p = dir.join(name);
    let text = format!("[seccomp]\n[[seccomp.deny]]\nsyscalls = [\"keyctl\"]\nerrno = \"{errno}\"\nreason = \"bench\"\n{extra}");
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(p)
}

/// A directory `name` in `dir` for a sandbox's worktree (OWNER's, 0700).
fn worktree(dir: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let wt = dir.join(name);
    std::fs::create_dir(&wt).map_err(|e| format!("{}: {e}", wt.display()))?;
    std::os::unix::fs::chown(&wt, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&wt, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    Ok(wt)
}

/// `swarmcell run --policy POLICY --worktree WT -- swarmcell __probe PROBE...`.
fn probe_in_sandbox(exe: &Path, policy: &Path, wt: &Path, probe: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.args(["run", "--policy"])
        .arg(policy)
        .arg("--worktree")
        .arg(wt)
        .arg("--ro")
        .arg(exe)
        .arg("--")
        .arg(exe)
        .arg("__probe")
        .args(probe)
        .stdin(Stdio::null());
    c
}

/// Calls per second inside the sandbox.
fn round(exe: &Path, policy: &Path, wt: &Path, calls: u64) -> Result<f64, String> {
    let out = probe_in_sandbox(exe, policy, wt, &["denials", "-", &calls.to_string()]).output().map_err(|e| format!("running the payload: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("flood "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the payload reported nothing: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
    Ok(calls as f64 / secs.max(1e-9))
}

/// A neighbour sandbox (its launcher, ended when dropped), once it is busy.
fn neighbour(exe: &Path, policy: &Path, wt: &Path, probe: &[&str]) -> Result<super::Killed, String> {
    let child = probe_in_sandbox(exe, policy, wt, probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting a neighbour: {e}"))?;
    // Its sandbox is up and busy well within this.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(super::Killed(child))
}

/// Seconds per `run -- /bin/true`, `n` of them.
fn launches(exe: &Path, wt: &Path, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let st = Command::new(exe)
            .args(["run", "--worktree"])
            .arg(wt)
            .args(["--", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("launching: {e}"))?;
        if !st.success() {
            return Err(format!("`run -- /bin/true` failed: {st}"));
        }
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
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
    let wt = worktree(&dir, "wt")?;
    let off = policy(&dir, "off.toml", "ENOSYS", "")?;
    let on = policy(&dir, "on.toml", "EPERM", "")?;
    let (mut r_off, mut r_on, mut r_reader) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        r_off.push(round(&exe, &off, &wt, calls)?);
        r_on.push(round(&exe, &on, &wt, calls)?);
    }
    let hub = crate::denials::hub::Hub::start(crate::denials::hub::KernelAudit::Leave)?;
    for _ in 0..rounds {
        r_reader.push(round(&exe, &on, &wt, calls)?);
    }
    let limited = policy(&dir, "limited.toml", "EPERM", "[limits]\ncpu = 0.5\n")?;
    let wt2 = worktree(&dir, "wt2")?;
    let (mut alone, mut spinning, mut flooding, mut flood_rate) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        alone.extend(launches(&exe, &wt, LAUNCHES_PER_ROUND)?);
        {
            let _n = neighbour(&exe, &limited, &wt2, &["spin-serve", "8080", "3600"])?;
            spinning.extend(launches(&exe, &wt, LAUNCHES_PER_ROUND)?);
        }
        {
            let _n = neighbour(&exe, &limited, &wt2, &["denials", "-", "100000000000"])?;
            let (before, t) = (hub.lock().records_read, std::time::Instant::now());
            flooding.extend(launches(&exe, &wt, LAUNCHES_PER_ROUND)?);
            flood_rate.push((hub.lock().records_read - before) as f64 / t.elapsed().as_secs_f64());
        }
    }
    let unattributed = hub.lock().agg.unattributed;
    let (off, on, reader) = (median(r_off), median(r_on), median(r_reader));
    println!("swarmcell bench denials: {calls} refused keyctl calls per round, {rounds} rounds, medians (calls/s inside the sandbox)");
    println!("  off        (ENOSYS, not logged)          {off:>12.0}");
    println!("  on         (EPERM, logged, no reader)    {on:>12.0}  ({:.1}x slower than off)", off / on.max(1.0));
    println!("  on+reader  (logged, read and counted)    {reader:>12.0}  ({:.1}x slower than off)", off / reader.max(1.0));
    println!("  records the reader held for no sandbox (expected: none registered here): {unattributed} unattributed, rest in limbo");
    let (alone, spinning, flooding) = (median(alone) * 1e3, median(spinning) * 1e3, median(flooding) * 1e3);
    println!(
        "  launches of `run -- /bin/true`, {} per setup over {rounds} alternating rounds, medians; the neighbour has half a core:",
        LAUNCHES_PER_ROUND * rounds
    );
    println!("    alone                                   {alone:>8.2} ms");
    println!("    next to a CPU-bound sandbox             {spinning:>8.2} ms  ({:.2}x alone)", spinning / alone.max(1e-9));
    println!(
        "    next to a denial flood (read, counted)  {flooding:>8.2} ms  ({:.2}x alone, {:.2}x next to the CPU-bound one)",
        flooding / alone.max(1e-9),
        flooding / spinning.max(1e-9)
    );
    println!("    (the flood's records read and counted meanwhile: {:.0}/s, median of the rounds)", median(flood_rate));
    println!("  kernel: {}", hub.kernel);
    Ok(())
}
