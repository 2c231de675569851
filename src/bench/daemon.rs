//! `swarmcell bench daemon`: the supervisor under load, through its control
//! socket. Soak: launch and stop N sandboxes one after another, then compare the
//! daemon's RSS and descriptors and look for leaked cgroups, port locks and
//! mounts. Scale: M sandboxes at once, each a small HTTP server, all healthy
//! through their ports; time to all-healthy, the daemon's RSS, memory per
//! sandbox outside the payload, and the daemon's CPU over one idle health interval.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::protocol::Request;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child (the daemon stops its sandboxes).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Proportional set size: shared pages (the binary) divided among their users.
fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let fields = crate::daemon::records::proc_stat(pid as i32).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (utime, stime) = (field(14), field(15));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (utime + stime) as f64 / hz
}

/// `swarmcell_health_checks_total` from the daemon's metrics.
fn health_checks(port: u16) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().find_map(|l| l.strip_prefix("swarmcell_health_checks_total ")?.trim().parse().ok()).unwrap_or(0)
}

fn port_locks(state: &Path) -> usize {
    std::fs::read_dir(state.join("ports")).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".lock")).count()).unwrap_or(0)
}

fn mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map(|s| s.lines().count()).unwrap_or(0)
}

pub fn run(soak: usize, scale: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tmp = crate::bench::TempWorktree::new()?;
    let dir = tmp.0.clone();
    let base = dir.join("base");
    std::fs::create_dir(&base).map_err(|e| e.to_string())?;
    let wt = base.join("agent");
    std::fs::create_dir(&wt).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&wt, Some(10000), Some(10000)).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, format!("[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n", exe))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let socket = dir.join("ctl.sock");
    let config = dir.join("daemon.toml");
    let state = PathBuf::from(crate::host::lease::HOST_STATE_DIR);
    let (daemon_state, logs) = (dir.join("state"), dir.join("logs"));
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\nworktree_base = {base:?}\ncommands = [{exe:?}]\npolicy = {policy:?}\naudit_log = {:?}\nmetrics = \"127.0.0.1:{metrics_port}\"\nrestart = false\nstate_dir = {daemon_state:?}\nlog_dir = {logs:?}\n",
            dir.join("audit.log")
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    let daemon = Running(Command::new(&exe).arg("daemon").arg("--config").arg(&config).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?);
    let pid = daemon.0.id();
    let start = Instant::now();
    while crate::daemon::ctl(&socket, &Request::List {}).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the daemon did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let launch = |wt: &Path| -> Result<serde_json::Value, String> {
        let req = Request::Launch {
            worktree: wt.into(),
            agent: None,
            task: None,
            argv: vec![exe.display().to_string(), "__probe".into(), "serve".into(), "{port}".into()],
            policy: None,
        };
        let r = crate::daemon::ctl(&socket, &req)?;
        if r["ok"] != true {
            return Err(format!("launch: {}", r["error"]));
        }
        Ok(r)
    };

    if soak > 0 {
        let (rss0, fds0, mounts0) = (status_kb(pid, "VmRSS:"), fd_count(pid), mounts());
        let t = Instant::now();
        for _ in 0..soak {
            let r = launch(&wt)?;
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let s = crate::daemon::ctl(&socket, &Request::Stop { id })?;
            if s["ok"] != true {
                return Err(format!("stop: {}", s["error"]));
            }
        }
        let took = t.elapsed();
        // The daemon closes the last client's connection just after answering it.
        std::thread::sleep(Duration::from_millis(200));
        let leaked_cgroups = crate::host::cgroups::Layout::detect().map(|l| crate::host::cgroups::sandbox_dirs(&l, "swarmcell").len()).unwrap_or(0);
        println!(
            "soak: {soak} launch+stop through the daemon in {:.1} s ({:.1} ms each)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / soak as f64
        );
        println!(
            "  daemon RSS {} KiB -> {} KiB, open fds {} -> {}; leaked: {} sandbox cgroups, {} port locks, {} host mounts, {} records, {} logs",
            rss0,
            status_kb(pid, "VmRSS:"),
            fds0,
            fd_count(pid),
            leaked_cgroups,
            port_locks(&state),
            mounts() as i64 - mounts0 as i64,
            std::fs::read_dir(crate::daemon::records::dir(&daemon_state)).map(|d| d.count()).unwrap_or(0),
            std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0),
        );
    }

    if scale > 0 {
        let wts: Vec<PathBuf> = (0..scale)
            .map(|i| {
                let p = base.join(format!("a{i}"));
                let _ = std::fs::create_dir(&p);
                let _ = std::os::unix::fs::chown(&p, Some(10000), Some(10000));
                p
            })
            .collect();
        let t = Instant::now();
        // All requests at once; the daemon answers each when its sandbox is healthy.
        let results: Vec<Result<serde_json::Value, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = wts.iter().map(|w| s.spawn(|| launch(w))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
        });
        let took = t.elapsed();
        let ok: Vec<&serde_json::Value> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let first_err = results.iter().find_map(|r| r.as_ref().err()).cloned();
        // Memory outside the payload: each sandbox's launcher and init.
        let mut outside_kb = 0;
        for r in &ok {
            if let Some(init) = r["pid"].as_u64() {
                let init = init as u32;
                outside_kb += pss_kb(init);
                let ppid = std::fs::read_to_string(format!("/proc/{init}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("PPid:").and_then(|v| v.trim().parse::<u32>().ok()));
                if let Some(launcher) = ppid {
                    outside_kb += pss_kb(launcher);
                }
            }
        }
        println!(
            "scale: {} of {scale} sandboxes healthy at once after {:.1} s{}",
            ok.len(),
            took.as_secs_f64(),
            first_err.map(|e| format!(" (first failure: {e})")).unwrap_or_default()
        );
        println!(
            "  daemon RSS {} KiB, open fds {}; memory outside the payload {:.2} MiB per sandbox (launcher + init PSS)",
            status_kb(pid, "VmRSS:"),
            fd_count(pid),
            outside_kb as f64 / 1024.0 / ok.len().max(1) as f64
        );
        // (The CPU is read inside the scrapes: a scrape of 1001 sandboxes' cgroups costs CPU too.)
        let checks0 = health_checks(metrics_port);
        let c0 = cpu_secs(pid);
        // One whole health interval (the policy's, 30 s): every sandbox is checked once in it.
        std::thread::sleep(Duration::from_secs(30));
        let cpu = cpu_secs(pid) - c0;
        let checks = health_checks(metrics_port) - checks0;
        println!("  daemon CPU while idle for 30 s (one health interval): {cpu:.3} s, in which it made {checks} health checks");
    }
    drop(daemon);
    Ok(())
}
