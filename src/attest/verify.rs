//! `swarmcell verify [--policy FILE] [--json]`: the escape battery an auditor
//! runs. Parent side: sets up targets on the host (a world-readable secret, a
//! sibling worktree, a root-only file hard-linked into the worktree, symlinks
//! out of it, a host loopback listener, a host abstract unix socket, a leaked
//! descriptor), runs `swarmcell __probe verify` inside a real sandbox built from
//! the policy, runs the memory and process-limit checks and the broker attack
//! (`__probe reuse-accepted`) in sandboxes of their own, tries the host-facing
//! side (another local user on the sandbox's port, a health answer that
//! redirects to a host service), plants the git attacks of
//! [`git`] and relaunches, and reports each check as blocked /
//! ESCAPED / not_applicable / ok / BROKEN.

/// The host-side git checks (issue #14): each plants an attack and relaunches.
pub mod git;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

pub const OWNER: u32 = 10000;

pub struct Options {
    pub policy: Option<PathBuf>,
    pub json: bool,
}

struct Fixture(PathBuf);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let wt = dir.join("wt");
    std::fs::create_dir(&wt)?;
    let sibling = dir.join("sibling");
    std::fs::create_dir(&sibling)?;
    std::fs::write(sibling.join("theirs.txt"), "another agent's work")?;
    std::fs::write(dir.join("host-secret.txt"), "host secret")?;
    std::fs::set_permissions(dir.join("host-secret.txt"), std::fs::Permissions::from_mode(0o644))?;
    std::fs::write(dir.join("root-only"), "root only")?;
    std::fs::set_permissions(dir.join("root-only"), std::fs::Permissions::from_mode(0o600))?;
    std::fs::hard_link(dir.join("root-only"), wt.join("hardlink-secret"))?;
    std::os::unix::fs::symlink(dir.join("host-secret.txt"), wt.join("symlink-out"))?;
    std::os::unix::fs::symlink("/etc/shadow", wt.join("symlink-shadow"))?;
    for p in [&wt, &sibling, &sibling.join("theirs.txt")] {
        std::os::unix::fs::chown(p, Some(OWNER), Some(OWNER))?;
    }
    for p in ["symlink-out", "symlink-shadow"] {
        std::os::unix::fs::lchown(wt.join(p), Some(OWNER), Some(OWNER))?;
    }
    std::fs::set_permissions(&wt, std::fs::Permissions::from_mode(0o700))
}

fn check(name: &str, status: &str, detail: impl Into<String>) -> Value {
    json!({ "name": name, "status": status, "detail": detail.into() })
}

fn run_sandbox(exe: &Path, policy: &Option<PathBuf>, wt: &Path, extra: &[&str], cmd: &[&str]) -> std::io::Result<std::process::Output> {
    let mut c = Command::new(exe);
    c.arg("run").arg("--worktree").arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    let bindir = exe.parent().unwrap_or(Path::new("/"));
    c.arg("--ro").arg(bindir).args(extra).arg("--").arg(exe).args(cmd);
    c.stdin(Stdio::null()).output()
}

pub fn run(opts: &Options) -> Result<u8, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let policy = match &opts.policy {
        Some(p) => crate::policy::Policy::load(p).map_err(|e| e.to_string())?,
        None => crate::policy::Policy::builtin(),
    };
    let dir = std::env::temp_dir().join(format!("swarmcell-verify-{}-{}", std::process::id(), crate::launch::random_u32()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let fixture = Fixture(dir.clone());
    setup(&fixture.0).map_err(|e| format!("setting up the verify fixture in {}: {e}", dir.display()))?;
    let wt = dir.join("wt");

    // Host-side targets the sandbox must not reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let host_port = host.local_addr().map_err(|e| e.to_string())?.port();
    let abstract_name = format!("swarmcell-verify-{}", crate::launch::random_u32());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).map_err(|e| e.to_string())?;
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| e.to_string())?;
    // A descriptor leaked on purpose: not close-on-exec, at a known number.
    let devnull = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    const LEAKED: i32 = 97;
    // SAFETY: dup2 onto a fixed number (without CLOEXEC) for the run; closed below.
    if unsafe { libc::dup2(devnull.as_raw_fd(), LEAKED) } != LEAKED {
        return Err("dup2 for the inherited-descriptor check failed".into());
    }

    let mut checks: Vec<Value> = Vec::new();
    let inner = policy.network.inner_port.to_string();
    let hp = host_port.to_string();
    let leaked = LEAKED.to_string();
    let host_secret = dir.join("host-secret.txt").display().to_string();
    let sibling = dir.join("sibling/theirs.txt").display().to_string();
    let wt_s = wt.display().to_string();
    let args = [
        "__probe",
        "verify",
        "--host-secret",
        &host_secret,
        "--sibling",
        &sibling,
        "--host-port",
        &hp,
        "--abstract",
        &abstract_name,
        "--inherited-fd",
        &leaked,
        "--inner-port",
        &inner,
        "--worktree",
        &wt_s,
    ];
    let mut progress = crate::progress::Progress::new("verify", 7);
    progress.step("the escape battery");
    let out = run_sandbox(&exe, &opts.policy, &wt, &[], &args);
    // SAFETY: closing the descriptor leaked for the check.
    unsafe { libc::close(LEAKED) };
    let out = out.map_err(|e| format!("running the battery: {e}"))?;
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if lines.is_empty() {
        return Err(format!("the battery did not run: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    checks.extend(lines);
    // A check whose target the host itself lacks proves nothing.
    for c in checks.iter_mut() {
        if let Some((_, path)) = crate::attest::verify_probe::HOST_TARGETS.iter().find(|(name, _)| c["name"] == *name)
            && std::fs::symlink_metadata(path).is_err()
        {
            c["status"] = json!("not_applicable");
            c["detail"] = json!(format!("{path} does not exist on this host: nothing to reach"));
        }
    }

    // Limits, each in a sandbox of its own so that hitting them ends only it.
    progress.step("the memory limit");
    let mem = run_sandbox(&exe, &opts.policy, &wt, &["--memory", "64M"], &["__probe", "alloc", "256"]).map_err(|e| e.to_string())?;
    checks.push(match mem.status.code() {
        Some(137) => check("exceed the memory limit", "blocked", "allocating 256 MiB under a 64M limit: OOM-killed"),
        Some(1) => check("exceed the memory limit", "ESCAPED", "allocated 256 MiB under a 64M limit"),
        other => check("exceed the memory limit", "BROKEN", format!("unexpected exit {other:?}: {}", String::from_utf8_lossy(&mem.stderr).trim())),
    });
    progress.step("the process limit");
    let pids = run_sandbox(&exe, &opts.policy, &wt, &["--pids", "32"], &["__probe", "forks", "64"]).map_err(|e| e.to_string())?;
    let made: Option<u32> =
        String::from_utf8_lossy(&pids.stdout).split_whitespace().find_map(|w| w.strip_prefix("forked=").and_then(|n| n.parse().ok()));
    checks.push(match made {
        Some(n) if n < 32 => check("exceed the process limit", "blocked", format!("{n} of 64 forks under pids = 32")),
        Some(n) => check("exceed the process limit", "ESCAPED", format!("{n} of 64 forks under pids = 32")),
        None => check("exceed the process limit", "BROKEN", String::from_utf8_lossy(&pids.stderr).trim().to_string()),
    });
    drop(devnull);
    progress.step("the broker");
    checks.extend(broker_checks(&exe, &opts.policy, &wt, &host));
    progress.step("ingress");
    checks.extend(ingress_checks(&exe, &opts.policy, &wt));
    progress.step("health check redirects");
    checks.push(health_redirect_check(&exe, &opts.policy, &wt));
    checks.push(crate::denials::verify::check_denials(&exe, &opts.policy, &wt));
    // Host-side git checks (issue #14), each in a fixture of its own.
    progress.step("git worktrees");
    checks.extend(git::checks(&exe, &opts.policy));
    drop(progress);

    let count = |s: &str| checks.iter().filter(|c| c["status"] == s).count();
    let summary = json!({
        "blocked": count("blocked"), "escaped": count("ESCAPED"), "ok": count("ok"), "broken": count("BROKEN"), "not_applicable": count("not_applicable"), "total": checks.len(),
    });
    let kernel = kernel_features();
    if opts.json {
        println!("{}", json!({ "checks": checks, "summary": summary, "kernel": kernel }));
    } else {
        println!(
            "swarmcell verify: {} checks against a sandbox from {}",
            checks.len(),
            opts.policy.as_ref().map_or("the built-in policy".to_string(), |p| p.display().to_string())
        );
        println!();
        for c in &checks {
            println!("{:<15} {:<50} {}", c["status"].as_str().unwrap_or(""), c["name"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
        }
        println!();
        println!(
            "summary: {} blocked, {} ESCAPED, {} ok, {} BROKEN, {} not applicable",
            summary["blocked"], summary["escaped"], summary["ok"], summary["broken"], summary["not_applicable"]
        );
        println!("kernel:");
        for (k, v) in kernel.as_object().into_iter().flatten() {
            println!("  {k}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    Ok(if count("ESCAPED") > 0 {
        1
    } else if count("BROKEN") > 0 {
        2
    } else {
        0
    })
}

/// The default broker hands host connections to the payload: a payload that
/// accepts three through the port (`__probe reuse-accepted`) tries to point
/// each at the host listener `host` (disconnect and connect, shutdown and
/// connect, TCP Fast Open, listen). Each attempt is a check; so is whether
/// `host` saw a connection.
fn broker_checks(exe: &Path, policy: &Option<PathBuf>, wt: &Path, host: &std::net::TcpListener) -> Vec<Value> {
    let name = "reuse a handed-off connection";
    match broker_attack(exe, policy, wt, host) {
        Ok(v) => v,
        Err(e) => vec![check(name, "BROKEN", e)],
    }
}

fn broker_attack(exe: &Path, policy: &Option<PathBuf>, wt: &Path, host: &std::net::TcpListener) -> Result<Vec<Value>, String> {
    use std::io::Write;
    let target = host.local_addr().map_err(|e| e.to_string())?.port();
    host.set_nonblocking(true).map_err(|e| e.to_string())?;
    while host.accept().is_ok() {} // what the battery's own checks left (reported there)
    let mut c = Command::new(exe);
    c.args(["run", "--port", "auto", "--health", "none", "--ready-fd", "3", "--worktree"]).arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    let bindir = exe.parent().unwrap_or(Path::new("/"));
    c.arg("--ro").arg(bindir).arg("--").arg(exe).args(["__probe", "reuse-accepted", &target.to_string()]);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, line) = crate::launch::spawn_until_ready(&mut c).map_err(|e| e.to_string())?;
    let port = serde_json::from_str::<Value>(line.trim()).ok().and_then(|v| v["port"].as_u64());
    let mut clients = Vec::new();
    for _ in 0..3 {
        let Some(port) = port else { break };
        match std::net::TcpStream::connect(("127.0.0.1", port as u16)) {
            Ok(mut s) => {
                let _ = s.write_all(b"X");
                clients.push(s);
            }
            Err(_) => break,
        }
    }
    if clients.len() < 3 {
        // The probe waits for three connections: it would never end.
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    drop(clients);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut checks: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with("accepted socket"))
        .filter_map(|l| {
            ["blocked", "ESCAPED"].iter().find_map(|w| l.split_once(&format!(" {w} ")).map(|(n, d)| check(&format!("broker: {n}"), w, d)))
        })
        .collect();
    if checks.is_empty() {
        return Err(format!("no result: {}{}", text.trim(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    checks.push(match host.accept() {
        Ok((_, peer)) => check("broker: reach a host listener through a handed-off connection", "ESCAPED", format!("connection from {peer}")),
        Err(_) => check("broker: reach a host listener through a handed-off connection", "blocked", "the host listener saw nothing"),
    });
    Ok(checks)
}

/// What this kernel offers and what it means for the guarantees.
pub fn kernel_features() -> Value {
    // SAFETY: utsname is plain data filled by uname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    let release = if unsafe { libc::uname(&mut u) } == 0 {
        // SAFETY: uname NUL-terminates the field.
        unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        "unknown".into()
    };
    let abi = crate::confine::landlock::kernel_abi();
    let landlock_meaning = match abi {
        0 => "absent: filesystem confinement rests on the mounts alone".to_string(),
        a if a < crate::confine::landlock::NET_ABI => format!("ABI {a}: filesystem rules only, no TCP or scope rules"),
        a if a < crate::confine::landlock::SCOPE_ABI => format!("ABI {a}: filesystem and TCP rules, no scopes"),
        a => format!("ABI {a}: filesystem, TCP and scope rules"),
    };
    let seccomp = std::fs::read_to_string("/proc/self/status").map(|s| s.contains("Seccomp:")).unwrap_or(false);
    let cgroups = match crate::host::cgroups::Layout::detect() {
        Ok(l) => format!(
            "v{} ({})",
            l.version(),
            if l.version() == 2 { "memory.oom.group, cgroup.kill" } else { "hybrid or v1: freeze-kill, no oom.group" }
        ),
        Err(e) => format!("unusable: {e}"),
    };
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    json!({
        "release": release,
        "landlock_abi": abi,
        "landlock": landlock_meaning,
        "seccomp": if seccomp { "filter mode available" } else { "absent: no system call filtering" },
        "cgroups": cgroups,
        "max_user_namespaces": userns,
    })
}

/// A local user who is neither root nor the worktree's owner.
const STRANGER: u32 = OWNER + 1;

/// `swarmcell run --port auto` of a small HTTP server in the background; its
/// launcher (killed on drop) and its host port.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child, then reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn serve_in_sandbox(exe: &Path, policy: &Option<PathBuf>, wt: &Path) -> Result<(Served, u16), String> {
    let mut c = Command::new(exe);
    c.args(["run", "--port", "auto", "--ready-fd", "3", "--worktree"]).arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    c.arg("--ro").arg(exe.parent().unwrap_or(Path::new("/"))).arg("--").arg(exe).args(["__probe", "serve", "{port}"]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let (child, line) = crate::launch::spawn_until_ready(&mut c).map_err(|e| e.to_string())?;
    let child = Served(child);
    let port = serde_json::from_str::<Value>(line.trim()).ok().and_then(|v| v["port"].as_u64()).ok_or("the sandbox did not become ready")?;
    Ok((child, port as u16))
}

/// `__probe http-get` to the sandbox's port as `uid`: whether any HTTP answer came.
fn answered_as(exe: &Path, uid: u32, port: u16) -> Result<bool, String> {
    use std::os::unix::process::CommandExt;
    let out = Command::new(exe)
        .args(["__probe", "http-get", &format!("127.0.0.1:{port}/")])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the probe as uid {uid}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("HTTP/"))
}

/// Another local user connects to a sandbox's port: it must get no answer at
/// all, while root still does.
fn ingress_checks(exe: &Path, policy: &Option<PathBuf>, wt: &Path) -> Vec<Value> {
    let name = "reach the sandbox's port as another local user";
    let (_served, port) = match serve_in_sandbox(exe, policy, wt) {
        Ok(s) => s,
        Err(e) => return vec![check(name, "BROKEN", e)],
    };
    let stranger = match answered_as(exe, STRANGER, port) {
        Ok(false) => check(name, "blocked", format!("uid {STRANGER} on 127.0.0.1:{port}: closed without an answer")),
        Ok(true) => check(name, "ESCAPED", format!("uid {STRANGER} got an HTTP answer from 127.0.0.1:{port}")),
        Err(e) => check(name, "BROKEN", e),
    };
    let root = match answered_as(exe, 0, port) {
        Ok(true) => check("root reaches the sandbox's port", "ok", format!("127.0.0.1:{port} answers")),
        Ok(false) => check("root reaches the sandbox's port", "BROKEN", format!("127.0.0.1:{port} did not answer root")),
        Err(e) => check("root reaches the sandbox's port", "BROKEN", e),
    };
    vec![stranger, root]
}

/// A payload answers the health check with `302` to a host loopback service:
/// the launch must fail and the service must see nothing.
fn health_redirect_check(exe: &Path, policy: &Option<PathBuf>, wt: &Path) -> Value {
    let name = "make the health check follow a redirect to the host";
    let target = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.set_nonblocking(true).map(|_| l)) {
        Ok(l) => l,
        Err(e) => return check(name, "BROKEN", e.to_string()),
    };
    let url = format!("http://127.0.0.1:{}/exfil", target.local_addr().map(|a| a.port()).unwrap_or(0));
    let mut c = Command::new(exe);
    c.args(["run", "--port", "auto", "--health-timeout", "3s", "--worktree"]).arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    c.arg("--ro").arg(exe.parent().unwrap_or(Path::new("/"))).arg("--").arg(exe).args(["__probe", "redirect", "{port}", &url]);
    let mut run = match c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(r) => Served(r),
        Err(e) => return check(name, "BROKEN", e.to_string()),
    };
    // A launch that counted the 302 as healthy would run on: it gets 10 s.
    let start = std::time::Instant::now();
    let code = loop {
        match run.0.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if start.elapsed() < std::time::Duration::from_secs(10) => std::thread::sleep(std::time::Duration::from_millis(50)),
            _ => break None,
        }
    };
    match (target.accept(), code) {
        (Ok(_), _) => check(name, "ESCAPED", format!("{url} was contacted by the launcher")),
        (Err(_), Some(125)) => check(name, "blocked", "302 is a failed check; nothing outside the sandbox was contacted"),
        (Err(_), code) => check(name, "ESCAPED", format!("a 302 answer counted as healthy (launcher exit {code:?})")),
    }
}
