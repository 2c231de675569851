//! A real `swarmcell daemon` under a fixture, for the tests that talk to one:
//! its socket, state, logs and audit log live in the fixture's directory, its
//! metrics on a port of its own; dropped, it is stopped and nothing of its
//! sandboxes may be left.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::*;

/// What differs between the daemons of the test files.
pub struct DaemonOptions<'a> {
    /// Worktrees `base/AGENT` made for OWNER before the start.
    pub agents: &'a [&'a str],
    /// Payloads allowed besides the swarmcell binary (`commands`).
    pub commands: &'a [&'a str],
    /// More policy text (a `[health]` section, tripwires, ...).
    pub policy: &'a str,
    /// More config lines (`allowed_uids`, `kernel_audit`, ...).
    pub config: &'a str,
}

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub audit: PathBuf,
    pub metrics: u16,
    /// Dropped after the daemon stopped (fields drop after `Drop::drop`).
    kernel_audit: KernelAuditRestore,
}

/// Kernel audit as the tests found it. A daemon with `kernel_audit =
/// "enable"` turns it on and, by design, leaves it on; on a test host that
/// is a change the suite must undo (every process then pays the syscall
/// audit hooks, and with no auditd each record goes to the kernel log). The
/// setting read before the first daemon of this test binary is put back when
/// the last one stops, whatever its config said.
struct KernelAuditRestore;

static KERNEL_AUDIT_USERS: std::sync::Mutex<(usize, Option<u32>)> = std::sync::Mutex::new((0, None));

impl KernelAuditRestore {
    fn new() -> KernelAuditRestore {
        let mut users = KERNEL_AUDIT_USERS.lock().unwrap_or_else(|e| e.into_inner());
        if users.0 == 0 {
            users.1 = Some(swarmcell::denials::audit_nl::status().expect("AUDIT_GET").enabled);
        }
        users.0 += 1;
        KernelAuditRestore
    }
}

impl Drop for KernelAuditRestore {
    fn drop(&mut self) {
        let mut users = KERNEL_AUDIT_USERS.lock().unwrap_or_else(|e| e.into_inner());
        users.0 -= 1;
        let changed = || swarmcell::denials::audit_nl::status().is_ok_and(|s| s.enabled != 0);
        if users.0 == 0 && users.1 == Some(0) && changed() {
            let put_back = swarmcell::denials::audit_nl::set_enabled(false);
            let now = swarmcell::denials::audit_nl::status().map(|s| s.enabled);
            if !std::thread::panicking() {
                put_back.expect("AUDIT_SET enabled=0");
                assert_eq!(now.expect("AUDIT_GET"), 0, "kernel audit was off before the test and is still on");
            }
        }
    }
}

impl Daemon {
    pub fn start_in(f: &Fixture, o: &DaemonOptions) -> Daemon {
        let base = f.dir.join("base");
        for id in o.agents {
            make_owned_dir(&base.join(id), OWNER, OWNER);
        }
        std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = f.dir.join("policy.toml");
        std::fs::write(&policy, format!("[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n{}", bin_dir(), o.policy))
            .unwrap();
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Never the default port: another daemon (a test's, the host's) may hold it.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let kernel_audit = KernelAuditRestore::new();
        let d = Daemon { child: None, dir: f.dir.clone(), socket: f.dir.join("ctl.sock"), audit: f.dir.join("audit.log"), metrics, kernel_audit };
        let commands: Vec<&str> = [bin()].into_iter().chain(o.commands.iter().copied()).collect();
        let config = format!(
            "socket = {:?}\nworktree_base = {:?}\ncommands = {commands:?}\npolicy = {:?}\naudit_log = {:?}\nmetrics = \"127.0.0.1:{metrics}\"\nstate_dir = {:?}\nlog_dir = {:?}\n{}",
            d.socket,
            base,
            policy,
            d.audit,
            d.state_dir(),
            f.dir.join("logs"),
            o.config
        );
        std::fs::write(f.dir.join("daemon.toml"), config).unwrap();
        std::fs::set_permissions(f.dir.join("daemon.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
        d.spawn()
    }

    /// Start (or start again, on the same config) and wait until it answers.
    pub fn spawn(mut self) -> Daemon {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        self.child = Some(Command::new(bin()).arg("daemon").arg("--config").arg(self.dir.join("daemon.toml")).stderr(log).spawn().unwrap());
        let start = Instant::now();
        // (A killed daemon leaves its socket file; the new one replaces it.)
        while !self.ctl(&["list"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "daemon did not start: {}",
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin()).arg("ctl").arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    /// `ctl` as another user (in OWNER's group, the socket's in the tests that allow others).
    pub fn ctl_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new(bin()).arg("ctl").arg("--socket").arg(&self.socket).args(args).uid(uid).gid(OWNER).output().unwrap()
    }

    /// `ctl launch` of CMD on the worktree `base/AGENT`.
    pub fn launch_cmd(&self, agent: &str, cmd: &[&str]) -> serde_json::Value {
        let wt = self.dir.join("base").join(agent);
        let out = self.ctl(&[&["launch", "--worktree", wt.to_str().unwrap(), "--agent", agent, "--"][..], cmd].concat());
        serde_json::from_str(&ok(&out)).unwrap()
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&ok(&self.ctl(&["list", "--json"]))).unwrap().as_array().unwrap().clone()
    }

    pub fn audit_events(&self, event: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// The metrics endpoint's answer body (asserting a 200).
    pub fn scrape_text(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        resp.split_once("\r\n\r\n").unwrap().1.to_string()
    }

    /// SIGTERM and wait: the daemon stops every sandbox before it exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: SIGTERM to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    /// SIGTERM (the daemon stops every sandbox), SIGKILL after 15 s; then,
    /// unless the test already failed, nothing of any sandbox may be left.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: SIGTERM to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !std::thread::panicking() {
            assert_no_sandbox_left();
        }
    }
}
