//! `swarmcell daemon` and `swarmcell ctl`: real sandboxes launched, listed,
//! stopped and restarted through the control socket; authorisation, input
//! validation, crash recovery and metrics.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    audit: PathBuf,
    metrics: u16,
}

impl Daemon {
    /// A daemon on a socket and audit log under the fixture, allowing the
    /// swarmcell binary (for `__probe serve`) below the fixture's `base`.
    fn start(f: &Fixture) -> Daemon {
        let base = f.dir.join("base");
        for id in ["a", "b", "c"] {
            make_owned_dir(&base.join(id), OWNER, OWNER);
        }
        std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = f.dir.join("policy.toml");
        std::fs::write(&policy, format!("[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n", bin_dir())).unwrap();
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = f.dir.join("daemon.toml");
        let d = Daemon { child: None, dir: f.dir.clone(), socket: f.dir.join("ctl.sock"), audit: f.dir.join("audit.log"), metrics };
        std::fs::write(
            &config,
            format!(
                "socket = {:?}\nsocket_group = {OWNER}\nallowed_uids = [0]\nworktree_base = {:?}\ncommands = [{:?}]\npolicy = {:?}\naudit_log = {:?}\nmetrics = \"127.0.0.1:{metrics}\"\n",
                d.socket, base, bin(), policy, d.audit
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        d.spawn()
    }

    fn spawn(mut self) -> Daemon {
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

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin()).arg("ctl").arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    fn launch(&self, agent: &str) -> serde_json::Value {
        let wt = self.dir.join("base").join(agent);
        let out = self.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--agent", agent, "--", bin(), "__probe", "serve", "{port}"]);
        serde_json::from_str(&ok(&out)).unwrap()
    }

    fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&ok(&self.ctl(&["list", "--json"]))).unwrap().as_array().unwrap().clone()
    }

    fn audit_events(&self, event: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: SIGTERM to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prometheus text format: `name{labels} value` lines, comments, nothing else.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            let ok_name = name.split('{').next().unwrap().chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(ok_name && (!name.contains('{') || name.ends_with('}')), "bad metric name {name:?}");
            (name.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn metric(m: &[(String, f64)], name: &str) -> f64 {
    m.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no metric {name}")).1
}

#[test]
fn three_sandboxes_are_launched_listed_stopped_and_restarted() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let launched: Vec<serde_json::Value> = ["a", "b", "c"].iter().map(|a| d.launch(a)).collect();
    for l in &launched {
        let port = l["port"].as_u64().unwrap() as u16;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let list = d.list();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|s| s["state"] == "running"));
    // Stop one.
    let id = launched[0]["id"].as_str().unwrap();
    ok(&d.ctl(&["stop", id]));
    assert_eq!(d.list().len(), 2);
    // A payload killed from outside is restarted.
    let victim = &launched[1];
    let init = victim["pid"].as_i64().unwrap();
    let payload: i32 = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap().trim().parse().unwrap();
    // SAFETY: killing the sandbox payload this test started (through the daemon).
    unsafe { libc::kill(payload, libc::SIGKILL) };
    wait_until("the restart", || d.audit_events("sandbox_restart").iter().any(|e| e["id"] == victim["id"] && e["outcome"] == "ready"));
    assert!(d.audit_events("health_failure").iter().any(|e| e["id"] == victim["id"]));
    let after = d.list();
    let restarted = after.iter().find(|s| s["id"] == victim["id"]).unwrap();
    assert_eq!(restarted["restarts"], 1);
    assert_ne!(restarted["pid"], victim["pid"]);
    // Metrics parse and match.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.metrics)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let m = parse_metrics(body);
    assert_eq!(metric(&m, "swarmcell_sandboxes{state=\"running\"}"), 2.0, "{body}");
    assert_eq!(metric(&m, "swarmcell_launches_total"), 3.0);
    assert_eq!(metric(&m, "swarmcell_restarts_total"), 1.0);
    assert!(metric(&m, "swarmcell_health_failures_total") >= 1.0);
    assert_eq!(m.iter().filter(|(n, _)| n.starts_with("swarmcell_sandbox_pids{")).count(), 2, "{body}");
    assert_eq!(m.iter().filter(|(n, _)| n.starts_with("swarmcell_sandbox_cpu_seconds_total{")).count(), 2, "{body}");
    // Three launches and one restart reached health.
    assert_eq!(metric(&m, "swarmcell_launch_seconds_count"), 4.0, "{body}");
    assert_eq!(metric(&m, "swarmcell_launch_seconds_bucket{le=\"+Inf\"}"), 4.0);
    assert!(metric(&m, "swarmcell_launch_seconds_sum") > 0.0);
    // Stopping the daemon stops every sandbox.
    d.stop();
    assert_no_sandbox_left();
    assert!(!d.socket.exists());
    assert_eq!(d.audit_events("server_shutdown").len(), 1);
}

#[test]
fn a_peer_that_is_not_allowed_is_refused_and_audited() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    // uid OWNER may connect (socket group) but is not in allowed_uids.
    let out = Command::new(bin()).arg("ctl").arg("--socket").arg(&d.socket).arg("list").uid(OWNER).gid(OWNER).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("not authorised"), "{}", stderr(&out));
    let denied = d.audit_events("auth_denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["uid"], OWNER);
}

#[test]
fn invalid_requests_are_refused_and_change_nothing() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let wt = f.dir.join("base/a");
    let w = wt.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["launch", "--worktree", w, "--agent", "Bad_Id", "--", bin()], "agent id"),
        (vec!["launch", "--worktree", w, "--task", "task-1", "--", bin()], "task id"),
        (vec!["launch", "--worktree", "/etc", "--", bin()], "is not inside"),
        (vec!["launch", "--worktree", w, "--", "/bin/sh", "-c", "id"], "is not allowed"),
        (vec!["launch", "--worktree", w, "--", bin(), "a;reboot"], "shell metacharacter"),
        (vec!["launch", "--worktree", w, "--", bin(), "$(id)"], "shell metacharacter"),
        (vec!["stop", "d-00000000"], "no sandbox"),
    ];
    for (args, needle) in &cases {
        let out = d.ctl(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let long = "x".repeat(4097);
    let out = d.ctl(&["launch", "--worktree", w, "--", bin(), &long]);
    assert!(stderr(&out).contains("4096"), "{}", stderr(&out));
    // Raw protocol: an unknown command, and a request larger than 64 KiB.
    for payload in ["{\"cmd\":\"exec\",\"argv\":[\"id\"]}\n".to_string(), format!("{{\"cmd\":\"list\",\"x\":\"{}\"}}\n", "y".repeat(70_000))] {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        let _ = s.write_all(payload.as_bytes());
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        assert!(r.contains("\"ok\":false"), "{r}");
    }
    assert!(d.list().is_empty());
    assert!(d.audit_events("policy_violation").len() >= 8);
    assert!(d.audit_events("sandbox_launch").is_empty());
}

#[test]
fn kill_9_of_the_daemon_then_a_restart_leaves_nothing_unmanaged() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    d.launch("a");
    d.launch("b");
    let mut c = d.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    // Every sandbox's launcher got SIGTERM from its parent-death signal.
    assert_no_sandbox_left();
    let mut d = d.spawn();
    assert!(d.list().is_empty());
    d.stop();
    assert_no_sandbox_left();
}

#[test]
fn a_config_with_loose_permissions_or_unknown_keys_is_refused() {
    let f = Fixture::new();
    let p = f.dir.join("bad.toml");
    for (text, mode, needle) in [("", 0o644, "wider than 0640"), ("sokcet = \"/x\"\n", 0o600, "unknown field")] {
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(bin()).arg("daemon").arg("--config").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}
