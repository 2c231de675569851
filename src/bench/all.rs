//! `swarmcell bench` (host root): the whole picture in one run, side by side,
//! in alternating runs so that this machine's other load hits both sides alike:
//! launch (`swarmcell run -- /bin/true`, default policy) against `bwrap
//! --unshare-all` with comparable mounts; OpenCode launch-to-healthy in a
//! sandbox against the same binary run bare (uid 1000 through `setpriv`, the
//! same environment and a cold HOME on both sides, the same health checker and
//! password); then the broker (`swarmcell bench broker` with small defaults).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    /// Launches of each of swarmcell and bwrap.
    pub launches: usize,
    /// OpenCode starts on each side.
    pub opencode_runs: usize,
    pub broker: crate::bench::Options,
    /// Which parts run: "launch", "opencode", "broker".
    pub parts: Vec<String>,
    /// Launch: another swarmcell binary timed alongside (before/after).
    pub compare_with: Option<PathBuf>,
}

const OPENCODE: &str = "/opt/swarmcell/bin/opencode";
/// The bare OpenCode's user (the sandbox runs as the worktree owner, mapped).
const BARE_UID: u32 = 1000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// Time one command to its exit; it must succeed.
fn time_one(cmd: &mut Command, what: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().map_err(|e| format!("{what}: {e}"))?;
    let took = t.elapsed();
    if !status.success() {
        return Err(format!("{what}: {status}"));
    }
    Ok(took)
}

pub fn run(opts: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    println!("swarmcell bench: load average {} at the start", load());
    let part = |p: &str| opts.parts.iter().any(|q| q == p);
    let mut progress = crate::progress::Progress::new("bench", ["launch", "opencode", "broker"].iter().filter(|p| part(p)).count());
    if part("launch") {
        progress.step("launch vs bwrap");
        launch_vs_bwrap(&exe, &opts.broker.worktree, opts.launches, opts.compare_with.as_deref())?;
    }
    if part("opencode") {
        progress.step("OpenCode launch-to-healthy");
        opencode_vs_bare(&exe, &opts.broker.worktree, opts.opencode_runs, opts.compare_with.as_deref())?;
    }
    if part("broker") {
        progress.step("the broker");
        println!();
        crate::bench::broker(&opts.broker)?;
    }
    println!();
    println!("load average {} at the end", load());
    Ok(())
}

/// `swarmcell run -- /bin/true` against bwrap doing comparable work (as
/// benches/launch.sh: /usr read-only, /proc, /dev, tmpfs /tmp, a bound worktree).
fn launch_vs_bwrap(exe: &Path, worktree: &Path, n: usize, other: Option<&Path>) -> Result<(), String> {
    let bwrap_wt = worktree.with_file_name("wt-bwrap");
    std::fs::create_dir_all(&bwrap_wt).map_err(|e| format!("{}: {e}", bwrap_wt.display()))?;
    let mut bwrap_args: Vec<String> =
        ["--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"].iter().map(|s| s.to_string()).collect();
    for l in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(format!("/{l}")) {
            bwrap_args.extend(["--symlink".into(), target.display().to_string(), format!("/{l}")]);
        }
    }
    let b = bwrap_wt.display().to_string();
    bwrap_args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", &b, &b, "--chdir", &b, "/bin/true"].map(String::from));
    let swarmcell_of = |exe: &Path| {
        let mut c = Command::new(exe);
        c.arg("run").arg("--worktree").arg(worktree).args(["--", "/bin/true"]);
        c
    };
    let swarmcell = || swarmcell_of(exe);
    let bwrap = || {
        let mut c = Command::new("bwrap");
        c.args(&bwrap_args);
        c
    };
    let have_bwrap = time_one(&mut bwrap(), "bwrap").is_ok();
    // Warm-up: page cache, the first cgroup of the parent.
    for _ in 0..3 {
        time_one(&mut swarmcell(), "swarmcell run -- /bin/true")?;
        if have_bwrap {
            time_one(&mut bwrap(), "bwrap")?;
        }
    }
    let (mut s, mut w, mut o) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if let Some(other) = other {
            o.push(time_one(&mut swarmcell_of(other), "the other swarmcell")?);
        }
        // Alternate which goes first, too.
        if i % 2 == 0 || !have_bwrap {
            s.push(time_one(&mut swarmcell(), "swarmcell run -- /bin/true")?);
        }
        if have_bwrap {
            w.push(time_one(&mut bwrap(), "bwrap")?);
        }
        if i % 2 == 1 && have_bwrap {
            s.push(time_one(&mut swarmcell(), "swarmcell run -- /bin/true")?);
        }
    }
    println!();
    println!("launch (`run -- /bin/true`, default policy; {n} alternating runs each, load {}):", load());
    let sm = median(s);
    if let Some(other) = other {
        let om = median(o);
        println!("  {}: {:.2} ms; this one {:.2} ms: {:.2}x", other.display(), ms(om), ms(sm), sm.as_secs_f64() / om.as_secs_f64());
    }
    if have_bwrap {
        let wm = median(w);
        println!(
            "  swarmcell {:.2} ms   bwrap --unshare-all {:.2} ms   ratio {:.2}x (bar 1.0x)",
            ms(sm),
            ms(wm),
            sm.as_secs_f64() / wm.as_secs_f64()
        );
    } else {
        println!("  swarmcell {:.2} ms   (bwrap not installed: scripts/setup)", ms(sm));
    }
    Ok(())
}

/// Kill a process group we started, and reap its leader.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: signalling the process group of our own child (it called setpgid(0, 0)).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn new_group(cmd: &mut Command) {
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A fresh directory owned by `uid` (a cold HOME, or a worktree).
fn fresh_dir(parent: &Path, name: &str, uid: u32) -> Result<PathBuf, String> {
    let d = parent.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// OpenCode launch-to-healthy: `swarmcell run --port auto` (the default
/// policy's command, `opencode serve`) until its ready line, which comes after
/// the health check passed, against `opencode serve` run bare until the same
/// checker sees it healthy.
fn opencode_vs_bare(exe: &Path, worktree: &Path, n: usize, other: Option<&Path>) -> Result<(), String> {
    if !Path::new(OPENCODE).exists() {
        println!("\nOpenCode launch-to-healthy: not measured ({OPENCODE} is not installed: scripts/install-opencode)");
        return Ok(());
    }
    let scratch = worktree.parent().ok_or("worktree has no parent")?;
    let bare_wt = fresh_dir(scratch, "wt-bare", BARE_UID)?;
    let policy = crate::policy::Policy::builtin();
    let (mut sandboxed, mut bare, mut others) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if let Some(other) = other {
            others.push(opencode_sandboxed(other, worktree)?);
        }
        if i % 2 == 0 {
            sandboxed.push(opencode_sandboxed(exe, worktree)?);
            bare.push(opencode_bare(&policy, scratch, &bare_wt, i)?);
        } else {
            bare.push(opencode_bare(&policy, scratch, &bare_wt, i)?);
            sandboxed.push(opencode_sandboxed(exe, worktree)?);
        }
    }
    let show = |v: &[Duration]| v.iter().map(|d| format!("{:.0}", ms(*d))).collect::<Vec<_>>().join(" ");
    println!();
    println!("OpenCode launch-to-healthy ({OPENCODE}, cold HOME, password set; {n} alternating runs each, load {}):", load());
    println!("  runs, ms: sandboxed {}; bare {}", show(&sandboxed), show(&bare));
    let (s, b) = (median(sandboxed), median(bare));
    if let Some(other) = other {
        let o = median(others.clone());
        println!("  {}: runs {}; median {:.0} ms: {:.3}x bare", other.display(), show(&others), ms(o), o.as_secs_f64() / b.as_secs_f64());
    }
    println!("  sandboxed {:.0} ms   bare (uid {BARE_UID}) {:.0} ms   ratio {:.3}x (target 1.05x)", ms(s), ms(b), s.as_secs_f64() / b.as_secs_f64());
    Ok(())
}

fn opencode_sandboxed(exe: &Path, worktree: &Path) -> Result<Duration, String> {
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--port", "auto", "--health-timeout", "60s", "--ready-fd", "3", "--worktree"])
        .arg(worktree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let (child, line) = crate::launch::spawn_until_ready(&mut cmd).map_err(|e| format!("starting swarmcell run: {e}"))?;
    let child = Group(child);
    let took = start.elapsed();
    if !line.contains("\"port\"") {
        return Err(format!("the sandboxed OpenCode never became healthy (ready line {line:?})"));
    }
    drop(child);
    Ok(took)
}

fn opencode_bare(policy: &crate::policy::Policy, scratch: &Path, worktree: &Path, i: usize) -> Result<Duration, String> {
    let home = fresh_dir(scratch, &format!("home-bare-{i}"), BARE_UID)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())?;
    let secret = format!("{:08x}{:08x}", crate::launch::random_u32(), crate::launch::random_u32());
    let env = crate::launch::parent::environment(policy, "bench", Some(port), Some(&secret));
    let sandbox_home = crate::launch::parent::SANDBOX_HOME;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &BARE_UID.to_string(), "--regid", &BARE_UID.to_string(), "--clear-groups", "--", OPENCODE])
        .args(["serve", "--hostname", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(worktree)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.clone(), v.replace(sandbox_home, &home.display().to_string()))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    new_group(&mut cmd);
    let request = crate::net::health::request(&policy.health.path, port, Some((&policy.health.auth_user, &secret)));
    let check = crate::net::health::Check::Http { netns: None, port, request };
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let child = Group(cmd.spawn().map_err(|e| format!("starting setpriv {OPENCODE}: {e}"))?);
    crate::net::health::wait(&check, Duration::from_secs(60), &cancel).map_err(|e| format!("bare OpenCode: {e}"))?;
    let took = start.elapsed();
    drop(child);
    let _ = std::fs::remove_dir_all(&home);
    Ok(took)
}
