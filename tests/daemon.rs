//! `swarmcell daemon` and `swarmcell ctl`: real sandboxes launched, listed,
//! stopped and restarted through the control socket; authorisation, input
//! validation, crash recovery and metrics.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonOptions};
use common::*;

impl Daemon {
    /// A daemon on a socket, state directory, log directory and audit log under
    /// the fixture, allowing the swarmcell binary (for `__probe serve`) and
    /// `yes` below the fixture's `base`.
    fn start(f: &Fixture) -> Daemon {
        Daemon::start_with(f, "", "")
    }

    /// As `start`, with more policy text (e.g. a `[health]` section) and config
    /// lines; REQUESTER may use the socket and launch on OWNER's worktrees.
    fn start_with(f: &Fixture, policy_extra: &str, config_extra: &str) -> Daemon {
        let config =
            format!("socket_group = {OWNER}\nallowed_uids = [0, {REQUESTER}]\nlaunch_for = {{ \"{REQUESTER}\" = [{OWNER}] }}\n{config_extra}");
        Daemon::start_in(f, &DaemonOptions { agents: &["a", "b", "c"], commands: &["/usr/bin/yes"], policy: policy_extra, config: &config })
    }

    /// The daemon's records of the sandboxes it manages.
    fn records(&self) -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = std::fs::read_dir(self.state_dir().join("records"))
            .map(|d| d.flatten().map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap()).collect())
            .unwrap_or_default();
        v.sort_by_key(|r| r["id"].as_str().unwrap_or("").to_string());
        v
    }

    fn scrape(&self) -> Vec<(String, f64)> {
        parse_metrics(&self.scrape_text())
    }

    fn launch(&self, agent: &str) -> serde_json::Value {
        self.launch_cmd(agent, &[bin(), "__probe", "serve", "{port}"])
    }
}

/// A user allowed on the control socket besides root (not the worktrees' owner).
const REQUESTER: u32 = 4343;
/// A local user allowed nowhere.
const STRANGER: u32 = 1001;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
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
    m.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no metric {name} in {m:?}")).1
}

/// GET / on a sandbox's host port; the whole response.
fn http_get(port: u16, request: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request).unwrap();
    let mut r = Vec::new();
    s.read_to_end(&mut r).unwrap();
    r
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// The payload (init's only child) of a sandbox whose init is `init`.
fn payload_of(init: i64) -> i32 {
    std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap().trim().parse().unwrap()
}

/// Everything sandboxes hold on the host (cgroups, sandbox-id and port leases,
/// processes) belongs to a sandbox of `list` (the daemon's), and nothing else.
fn assert_host_holds_only(list: &[serde_json::Value]) {
    let held = held();
    let ids: std::collections::BTreeSet<String> = list.iter().map(|s| s["sandbox"].as_str().unwrap().to_string()).collect();
    let ports: std::collections::BTreeSet<u16> = list.iter().map(|s| s["port"].as_u64().unwrap() as u16).collect();
    assert_eq!((&held.cgroups, &held.sandbox_leases, &held.ports), (&ids, &ids, &ports));
    assert_eq!(held.processes, 2 * list.len(), "an init and a payload per sandbox, nothing else: {held:?}\n{}", sandbox_process_list());
}

fn find<'a>(list: &'a [serde_json::Value], id: &serde_json::Value) -> &'a serde_json::Value {
    list.iter().find(|s| &s["id"] == id).unwrap_or_else(|| panic!("{id} not in {list:?}"))
}

#[test]
fn three_sandboxes_are_launched_listed_stopped_and_restarted() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let launched: Vec<serde_json::Value> = ["a", "b", "c"].iter().map(|a| d.launch(a)).collect();
    for l in &launched {
        let r = http_get(l["port"].as_u64().unwrap() as u16, GET);
        assert!(r.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&r));
    }
    let list = d.list();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|s| s["state"] == "running"));
    // One record per sandbox in the state directory, naming its live launcher.
    let records = d.records();
    assert_eq!(records.len(), 3);
    for (r, l) in records.iter().zip(&list) {
        assert_eq!((&r["id"], &r["port"]), (&l["id"], &l["port"]));
        assert!(std::path::Path::new(&format!("/proc/{}", r["launcher"]["pid"])).exists());
    }
    // Stop one: its record and log go with it.
    let id = launched[0]["id"].as_str().unwrap();
    ok(&d.ctl(&["stop", id]));
    assert_eq!(d.list().len(), 2);
    assert_eq!(d.records().len(), 2);
    assert!(!f.dir.join(format!("logs/{id}.log")).exists());
    // A payload killed from outside is restarted, on the port it had.
    let victim = &launched[1];
    // SAFETY: killing the sandbox payload this test started (through the daemon).
    unsafe { libc::kill(payload_of(victim["pid"].as_i64().unwrap()), libc::SIGKILL) };
    wait_until("the restart", || d.audit_events("sandbox_restart").iter().any(|e| e["id"] == victim["id"] && e["outcome"] == "ready"));
    assert!(d.audit_events("health_failure").iter().any(|e| e["id"] == victim["id"]));
    let after = d.list();
    let restarted = find(&after, &victim["id"]);
    assert_eq!(restarted["restarts"], 1);
    assert_ne!(restarted["pid"], victim["pid"]);
    assert_eq!(restarted["port"], victim["port"], "a restarted sandbox keeps its port");
    assert!(http_get(victim["port"].as_u64().unwrap() as u16, GET).starts_with(b"HTTP/1.1 200"));
    // Metrics parse and match.
    let m = d.scrape();
    assert_eq!(metric(&m, "swarmcell_sandboxes{state=\"running\"}"), 2.0);
    assert_eq!(metric(&m, "swarmcell_launches_total"), 3.0);
    assert_eq!(metric(&m, "swarmcell_restarts_total"), 1.0);
    assert!(metric(&m, "swarmcell_health_failures_total") >= 1.0);
    for family in ["swarmcell_sandbox_pids{", "swarmcell_sandbox_cpu_seconds_total{", "swarmcell_sandbox_memory_bytes{"] {
        assert_eq!(m.iter().filter(|(n, _)| n.starts_with(family)).count(), 2, "{family}: {m:?}");
    }
    // Each sandbox's cgroup holds at least its payload.
    for l in [&launched[1], &launched[2]] {
        assert!(metric(&m, &format!("swarmcell_sandbox_pids{{id=\"{}\"}}", l["id"].as_str().unwrap())) >= 1.0);
    }
    // Three launches and one restart reached health.
    assert_eq!(metric(&m, "swarmcell_launch_seconds_count"), 4.0);
    assert_eq!(metric(&m, "swarmcell_launch_seconds_bucket{le=\"+Inf\"}"), 4.0);
    assert!(metric(&m, "swarmcell_launch_seconds_sum") > 0.0);
    // Stopping the daemon stops every sandbox and forgets them.
    d.stop();
    assert_no_sandbox_left();
    assert!(!d.socket.exists());
    assert!(d.records().is_empty());
    assert_eq!(d.audit_events("server_shutdown").len(), 1);
}

#[test]
fn a_killed_launcher_leaves_nothing_behind_and_its_sandbox_comes_back() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let l = d.launch("a");
    let sandbox = d.list()[0]["sandbox"].clone();
    let launcher = d.records()[0]["launcher"]["pid"].as_i64().unwrap() as i32;
    // SAFETY: SIGKILL to the launcher the daemon started for this test; it cannot clean up.
    unsafe { libc::kill(launcher, libc::SIGKILL) };
    wait_until("the restart", || d.audit_events("sandbox_restart").iter().any(|e| e["outcome"] == "ready"));
    // The daemon swept what the killed launcher left (its launchers do not sweep at start).
    let swept = d.audit_events("stale_cleanup");
    assert!(swept.iter().any(|e| e["removed"].as_array().is_some_and(|r| r.contains(&sandbox))), "{swept:?}");
    let now = d.list();
    assert_eq!(now[0]["port"], l["port"], "the same port");
    assert_host_holds_only(&now);
    d.stop();
    assert_no_sandbox_left();
}

#[test]
fn broker_connections_and_bytes_are_counted_per_sandbox() {
    let f = Fixture::new();
    // No health checks of the daemon's own during the measurement.
    let mut d = Daemon::start_with(&f, "[health]\ninterval = \"1h\"\n", "");
    let l = d.launch("a");
    let (id, port) = (l["id"].as_str().unwrap().to_string(), l["port"].as_u64().unwrap() as u16);
    let series = |m: &[(String, f64)], name: &str, labels: &str| metric(m, &format!("{name}{{id=\"{id}\"{labels}}}"));
    let before = d.scrape();
    let mut received = 0;
    for _ in 0..5 {
        let r = http_get(port, GET);
        assert!(r.starts_with(b"HTTP/1.1 200"));
        received += r.len();
    }
    wait_until("the relays to end", || series(&d.scrape(), "swarmcell_sandbox_broker_active_connections", "") == 0.0);
    let after = d.scrape();
    let delta = |name: &str, labels: &str| series(&after, name, labels) - series(&before, name, labels);
    assert_eq!(delta("swarmcell_sandbox_broker_connections_total", ""), 5.0);
    // The default broker hands each connection to the payload: no byte passes
    // through the launcher, so none is counted (only `--broker relay` counts bytes).
    assert!(received > 0);
    assert_eq!(delta("swarmcell_sandbox_broker_bytes_total", ",direction=\"in\""), 0.0);
    assert_eq!(delta("swarmcell_sandbox_broker_bytes_total", ",direction=\"out\""), 0.0);
    assert_eq!(metric(&after, "swarmcell_broker_connections_total") - metric(&before, "swarmcell_broker_connections_total"), 5.0);
    // The totals keep a stopped sandbox's traffic; its own series are gone.
    ok(&d.ctl(&["stop", &id]));
    let gone = d.scrape();
    assert!(!gone.iter().any(|(n, _)| n.contains(&id)));
    assert_eq!(metric(&gone, "swarmcell_broker_bytes_total{direction=\"out\"}"), metric(&after, "swarmcell_broker_bytes_total{direction=\"out\"}"));
    d.stop();
    assert_no_sandbox_left();
}

#[test]
fn a_payload_that_stops_answering_is_restarted_after_failed_health_checks() {
    let f = Fixture::new();
    let mut d = Daemon::start_with(&f, "[health]\ninterval = \"1s\"\nfailures = 2\n", "");
    let l = d.launch("a");
    // An authorised client that connects and sends nothing does not hold up the daemon.
    let idle = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    assert!(d.ctl(&["list"]).status.success());
    idle.set_nonblocking(true).unwrap();
    let err = (&idle).read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "the idle client is still waiting, unanswered");
    // A stopped payload accepts connections (the kernel does) but never answers.
    let payload = payload_of(l["pid"].as_i64().unwrap());
    // SAFETY: stopping the payload this test started (through the daemon).
    unsafe { libc::kill(payload, libc::SIGSTOP) };
    wait_until("the health alert", || d.audit_events("health_alert").iter().any(|e| e["id"] == l["id"]));
    wait_until("the restart", || d.audit_events("sandbox_restart").iter().any(|e| e["id"] == l["id"] && e["outcome"] == "ready"));
    let failures: Vec<_> = d.audit_events("health_failure").into_iter().filter(|e| e["reason"] == "health check failed").collect();
    assert!(failures.len() >= 2, "{failures:?}");
    assert_eq!(failures[1]["consecutive"], 2);
    let now = d.list();
    let s = find(&now, &l["id"]);
    assert_eq!((s["restarts"].as_u64(), &s["port"]), (Some(1), &l["port"]));
    assert!(!std::path::Path::new(&format!("/proc/{payload}")).exists(), "the stopped payload was killed");
    assert!(http_get(l["port"].as_u64().unwrap() as u16, GET).starts_with(b"HTTP/1.1 200"));
    d.stop();
    assert_no_sandbox_left();
}

#[test]
fn a_sandbox_that_prints_without_end_costs_at_most_twice_log_max_of_disk() {
    let f = Fixture::new();
    let d = Daemon::start_with(&f, "[health]\ntimeout = \"2s\"\n", "log_max = \"64K\"\n");
    let wt = f.dir.join("base/a");
    // `yes` prints as fast as it can and never serves its port: the launch fails after 2 s.
    let out = d.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--", "/usr/bin/yes"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("not healthy"), "{}", stderr(&out));
    let logs: Vec<(String, u64)> = std::fs::read_dir(f.dir.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    assert_eq!(logs.len(), 2, "the log and its rotated part, kept after a failed start: {logs:?}");
    assert!(logs.iter().all(|(_, len)| *len <= 64 * 1024), "{logs:?}");
    let rotated = logs.iter().find(|(n, _)| n.ends_with(".log.1")).unwrap();
    let text = std::fs::read_to_string(f.dir.join("logs").join(&rotated.0)).unwrap();
    assert!(text.len() > 60 * 1024 && text.bytes().all(|b| b == b'y' || b == b'\n'), "a full rotated part of yes output");
}

#[test]
fn a_launch_may_name_an_allowed_policy_whose_command_and_limits_apply() {
    let f = Fixture::new();
    // A second policy, allowed by the config: its own command and process limit.
    let strict = f.dir.join("strict.toml");
    std::fs::write(
        &strict,
        format!(
            "[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n[limits]\npids = 77\n",
            bin(),
            bin_dir()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&strict, std::fs::Permissions::from_mode(0o600)).unwrap();
    let unlisted = f.dir.join("unlisted.toml");
    std::fs::copy(&strict, &unlisted).unwrap();
    let mut d = Daemon::start_with(&f, "", &format!("policies = [{strict:?}]\n"));
    let wt = f.dir.join("base/a");
    // No command given: the policy's.
    let l: serde_json::Value =
        serde_json::from_str(&ok(&d.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--policy", strict.to_str().unwrap()]))).unwrap();
    let inspect: serde_json::Value = serde_json::from_str(&ok(&d.ctl(&["inspect", l["id"].as_str().unwrap()]))).unwrap();
    let pids = inspect["cgroups"].as_array().unwrap().iter().find(|c| c["files"].get("pids.max").is_some()).expect("pids cgroup");
    assert_eq!(pids["files"]["pids.max"], "77", "the named policy's limit");
    assert!(http_get(l["port"].as_u64().unwrap() as u16, GET).starts_with(b"HTTP/1.1 200"));
    assert_eq!(d.records()[0]["policy"], strict.to_str().unwrap());
    // A policy the config does not list is refused, even with the same content.
    let out = d.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--policy", unlisted.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("is not one the daemon's config allows"), "{}", stderr(&out));
    assert_eq!(d.list().len(), 1);
    assert!(d.audit_events("policy_violation").iter().any(|e| e["error"].as_str().unwrap().contains("unlisted.toml")));
    d.stop();
    assert_no_sandbox_left();
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
fn sighup_reopens_the_audit_log_after_it_was_moved_away() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let rotated = f.dir.join("audit.log.1");
    std::fs::rename(&d.audit, &rotated).unwrap();
    // SAFETY: SIGHUP to the daemon this test started.
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    wait_until("the new audit log", || !d.audit_events("audit_reopened").is_empty());
    let out = Command::new(bin()).arg("ctl").arg("--socket").arg(&d.socket).arg("list").uid(OWNER).gid(OWNER).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(d.audit_events("auth_denied").len(), 1, "later events go to the new file");
    assert_eq!(std::fs::metadata(&d.audit).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("server_startup"));
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

fn kill_9(d: &mut Daemon) {
    let mut c = d.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
}

#[test]
fn after_kill_9_a_restarted_daemon_relaunches_its_sandboxes_and_leaves_nothing_unmanaged() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let before = [d.launch("a"), d.launch("b")];
    kill_9(&mut d);
    // Every launcher got SIGTERM from its parent-death signal; the records stay.
    assert_no_sandbox_left();
    assert_eq!(d.records().len(), 2);
    let mut d = d.spawn();
    wait_until("the relaunches", || d.list().iter().filter(|s| s["state"] == "running").count() == 2);
    let list = d.list();
    for b in &before {
        let s = find(&list, &b["id"]);
        assert_eq!(s["port"], b["port"], "a relaunched sandbox gets its port back");
        assert_ne!(s["pid"], b["pid"]);
        assert!(http_get(b["port"].as_u64().unwrap() as u16, GET).starts_with(b"HTTP/1.1 200"));
    }
    let recovered = d.audit_events("sandbox_recovered");
    assert_eq!(recovered.iter().filter(|e| e["outcome"] == "relaunched").count(), 2, "{recovered:?}");
    assert_host_holds_only(&list);
    // With recover = "discard", the next crash's sandboxes are forgotten.
    kill_9(&mut d);
    let config = std::fs::read_to_string(d.dir.join("daemon.toml")).unwrap() + "recover = \"discard\"\n";
    std::fs::write(d.dir.join("daemon.toml"), config).unwrap();
    let mut d = d.spawn();
    assert!(d.list().is_empty());
    assert!(d.records().is_empty());
    assert_eq!(d.audit_events("sandbox_recovered").iter().filter(|e| e["outcome"] == "discarded").count(), 2);
    assert_no_sandbox_left();
    d.stop();
}

#[test]
fn a_second_daemon_on_the_same_state_or_socket_is_refused() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let out = Command::new(bin()).arg("daemon").arg("--config").arg(d.dir.join("daemon.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("another swarmcell daemon uses the state directory"), "{}", stderr(&out));
    let other_state = f.dir.join("state2");
    let out = Command::new(bin()).arg("daemon").arg("--config").arg(d.dir.join("daemon.toml")).arg("--state-dir").arg(&other_state).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("another daemon is listening on it"), "{}", stderr(&out));
    // The first one still answers.
    assert!(d.ctl(&["list"]).status.success());
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

#[test]
fn a_uid_that_is_not_allowed_gets_nothing_from_a_daemon_sandbox_while_the_requester_and_root_do() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let wt = f.dir.join("base/a");
    let out = d.ctl_as(REQUESTER, &["launch", "--worktree", wt.to_str().unwrap(), "--", bin(), "__probe", "serve", "{port}"]);
    let l: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let port = l["port"].as_u64().unwrap() as u16;
    assert!(bytes_back_as(REQUESTER, port, &format!("/from-{REQUESTER}")) > 0, "the requester is answered");
    assert!(bytes_back_as(0, port, "/from-0") > 0, "root is answered");
    assert_eq!(bytes_back_as(STRANGER, port, &format!("/from-{STRANGER}")), 0, "another local user gets no byte back");
    let denied = d.audit_events("ingress_denied");
    assert!(denied.iter().any(|e| e["id"] == l["id"] && e["uid"] == STRANGER && e["port"] == port), "{denied:?}");
    assert!(metric(&d.scrape(), "swarmcell_broker_refused_total{reason=\"uid\"}") >= 1.0);
    let log = ok(&d.ctl(&["logs", l["id"].as_str().unwrap()]));
    assert!(log.contains(&format!("GET /from-{REQUESTER}")) && !log.contains(&format!("from-{STRANGER}")), "{log}");
}

/// A worktree BASE/g of a repository owned by OWNER, made by `swarmcell worktree add`.
fn git_worktree(f: &Fixture) -> (PathBuf, PathBuf) {
    let repo = owned_repo(&f.dir);
    let base = f.dir.join("base");
    ok(&worktree_cmd(&["add", repo.to_str().unwrap(), "g", "--base", base.to_str().unwrap()]));
    (repo, base.join("g"))
}

fn launch_git(d: &Daemon) -> Option<std::process::Output> {
    let wt = d.dir.join("base/g");
    let mut c = Command::new(bin());
    c.arg("ctl").arg("--socket").arg(&d.socket).args([
        "launch",
        "--worktree",
        wt.to_str().unwrap(),
        "--agent",
        "g",
        "--",
        bin(),
        "__probe",
        "serve",
        "{port}",
    ]);
    timed(&mut c, Duration::from_secs(30))
}

/// Finding 1 through the daemon: a `.git` a sandbox rewrote is refused at the
/// next launch, with a `policy_violation` audit event.
#[test]
fn the_daemon_refuses_a_worktree_whose_dot_git_a_sandbox_rewrote() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let (_repo, wt) = git_worktree(&f);
    let victim = owned_repo(&f.dir.join("victim-parent").tap_mkdir());
    git(&victim, &["worktree", "add", "-q", f.dir.join("victim-wt").to_str().unwrap()]);
    let plant = sh_in(&wt, &[], &format!("echo 'gitdir: {}/.git/worktrees/victim-wt' > .git", victim.display()), Duration::from_secs(30)).unwrap();
    ok(&plant);
    let out = launch_git(&d).expect("ESCAPED: the daemon's launch hangs");
    assert!(!out.status.success(), "ESCAPED: the daemon launched a sandbox on a redirected .git: {}", stdout(&out));
    wait_until("the policy_violation event", || {
        d.audit_events("policy_violation").iter().any(|e| e["error"].as_str().unwrap_or("").contains(".git"))
    });
    assert!(d.list().is_empty());
    d.stop();
    assert_no_sandbox_left();
}

#[test]
fn a_redirecting_health_answer_fails_a_daemon_launch_and_the_target_receives_nothing() {
    let f = Fixture::new();
    let d = Daemon::start_with(&f, "[health]\ntimeout = \"2s\"\n", "");
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}/exfil?data=stolen", target.local_addr().unwrap().port());
    let wt = f.dir.join("base/a");
    let out = d.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--", bin(), "__probe", "redirect", "{port}", &url]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let contacted = target.accept();
    assert!(contacted.is_err(), "the redirect target was contacted: {contacted:?}");
    assert!(d.list().is_empty());
}

/// Control characters a terminal would act on.
fn has_raw_controls(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

#[test]
fn a_payload_cannot_forge_audit_fields_or_reach_the_operators_terminal() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let wt = f.dir.join("base/a");
    // It prints a forged `swarmcell:` error line with escape sequences, then fails.
    let out = d.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--", bin(), "__probe", "hostile-output", "exit"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(!has_raw_controls(&stderr(&out)) && !stderr(&out).contains("forged"), "ctl printed the payload's text: {:?}", stderr(&out));
    let audit = std::fs::read_to_string(&d.audit).unwrap();
    assert!(!audit.contains("forged") && !audit.contains("pwned"), "the payload wrote into the audit log:\n{audit}");
    let failed = d.audit_events("sandbox_launch");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["error"].as_str().unwrap().contains("exit 3"), "{failed:?}");
    // A running one: its log reaches the operator's terminal escaped, unless --raw.
    let l = d.launch_cmd("b", &[bin(), "__probe", "hostile-output", "{port}"]);
    let id = l["id"].as_str().unwrap();
    let shown = stdout(&d.ctl(&["logs", id]));
    assert!(shown.contains("swarmcell: sandbox forged") && !has_raw_controls(&shown), "{shown:?}");
    assert!(shown.contains("\\x1b]0;pwned\\x07"), "{shown:?}");
    for args in [vec!["list"], vec!["list", "--json"], vec!["inspect", id]] {
        assert!(!has_raw_controls(&stdout(&d.ctl(&args))), "{args:?}");
    }
    let raw = stdout(&d.ctl(&["logs", "--raw", id]));
    assert!(raw.contains("\x1b]0;pwned\x07"), "{raw:?}");
    let audit = std::fs::read_to_string(&d.audit).unwrap();
    assert!(!audit.contains("forged") && !audit.contains("pwned"), "{audit}");
}

#[test]
fn a_sandbox_stuck_in_starting_is_killed_after_its_deadline_and_audited() {
    let f = Fixture::new();
    let d = Daemon::start_with(&f, "[health]\ntimeout = \"1s\"\n", "");
    let wt = f.dir.join("base/a");
    let start = Instant::now();
    let launch = {
        let (bin, socket, wt) = (bin().to_string(), d.socket.clone(), wt.clone());
        std::thread::spawn(move || {
            Command::new(&bin)
                .arg("ctl")
                .arg("--socket")
                .arg(&socket)
                // (Never healthy: it answers every request with a redirect.)
                .args(["launch", "--worktree", wt.to_str().unwrap(), "--", &bin, "__probe", "redirect", "{port}", "http://127.0.0.1:1/"])
                .output()
                .unwrap()
        })
    };
    // Its launcher hangs (stopped) before it reports ready.
    wait_until("the launcher", || d.records().first().is_some_and(|r| r["launcher"]["pid"].is_number()));
    let launcher = d.records()[0]["launcher"]["pid"].as_i64().unwrap() as i32;
    // SAFETY: stopping the launcher the daemon started for this test.
    unsafe { libc::kill(launcher, libc::SIGSTOP) };
    let mut waited = 0;
    while !launch.is_finished() {
        assert!(waited < 400, "the launch is still waiting after 40 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let out = launch.join().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("not healthy within"), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    let timeouts = d.audit_events("start_timeout");
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert!(!std::path::Path::new(&format!("/proc/{launcher}")).exists(), "the stuck launcher was killed");
    assert!(d.list().is_empty());
    assert_no_sandbox_left();
}

#[test]
fn every_egress_decision_of_a_daemon_sandbox_is_an_audit_event_with_its_id() {
    let f = Fixture::new();
    let d = Daemon::start(&f);
    let l = d.launch_cmd("a", &[bin(), "__probe", "egress-then-serve", "{port}", "unlisted.test.invalid:443"]);
    wait_until("the egress event", || d.audit_events("egress").iter().any(|e| e["id"] == l["id"]));
    let events = d.audit_events("egress");
    let e = events.iter().find(|e| e["id"] == l["id"]).unwrap();
    assert_eq!(
        (&e["host"], &e["port"], &e["allowed"], &e["outcome"]),
        (&"unlisted.test.invalid".into(), &443.into(), &false.into(), &"denied".into()),
        "{e}"
    );
    assert!(e["reason"].as_str().unwrap().contains("is not on the egress allowlist"), "{e}");
}

/// Finding 6 through the daemon: FIFOs planted in every git path the sandbox
/// sees do not hang the next launch (it becomes ready).
#[test]
fn the_daemon_relaunches_a_worktree_whose_git_state_holds_fifos() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let (repo, wt) = git_worktree(&f);
    let g = repo.join(".git");
    let script = format!(
        "for p in {g}/worktrees/g/HEAD {g}/worktrees/g/index {g}/worktrees/g/commondir {g}/refs/heads/agent/g/work {g}/packed-refs {g}/HEAD; do \
           rm -f $p; mkfifo $p; done; echo DONE",
        g = g.display()
    );
    assert!(ok(&sh_in(&wt, &[], &script, Duration::from_secs(30)).unwrap()).contains("DONE"));
    let out = launch_git(&d).expect("ESCAPED: the daemon's launch hangs on a planted FIFO");
    let l: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = l["id"].as_str().unwrap().to_string();
    ok(&d.ctl(&["stop", &id]));
    d.stop();
    assert_no_sandbox_left();
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// The daemon's `repositories`: a worktree of another repository is refused
/// (audited) before any launcher starts.
#[test]
fn the_daemon_launches_only_worktrees_of_its_repositories() {
    let f = Fixture::new();
    let other = f.dir.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let other = owned_repo(&other);
    let mut d = Daemon::start_with(&f, "", &format!("repositories = [{:?}]\n", other));
    git_worktree(&f);
    let out = launch_git(&d).expect("the launch hangs");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("not one of the allowed repositories") || stderr(&out).contains("not one of the allowed repositories"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    wait_until("the policy_violation event", || {
        d.audit_events("policy_violation").iter().any(|e| e["error"].as_str().unwrap_or("").contains("allowed repositories"))
    });
    d.stop();
    assert_no_sandbox_left();
}

/// Finding 2 through the daemon: a fake common dir whose `objects` is a
/// symlink to a host file, named by a rewritten `.git`, is refused at the next
/// launch; the file is never bound.
#[test]
fn the_daemon_refuses_a_planted_fake_common_dir() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f);
    let (_repo, wt) = git_worktree(&f);
    let secret = f.dir.join("secret.txt");
    std::fs::write(&secret, "HOSTSECRET").unwrap();
    std::os::unix::fs::chown(&secret, Some(OWNER), Some(OWNER)).unwrap();
    let plant = format!(
        "mkdir -p fake/worktrees/x fake/refs && echo 'ref: refs/heads/main' > fake/HEAD && cp fake/HEAD fake/worktrees/x/HEAD && \
         echo ../.. > fake/worktrees/x/commondir && echo \"$PWD/.git\" > fake/worktrees/x/gitdir && \
         ln -s {} fake/objects && echo \"gitdir: $PWD/fake/worktrees/x\" > .git && echo PLANTED",
        secret.display()
    );
    assert!(ok(&sh_in(&wt, &[], &plant, Duration::from_secs(30)).unwrap()).contains("PLANTED"));
    let out = launch_git(&d).expect("the launch hangs");
    assert!(!out.status.success(), "ESCAPED: the daemon launched a sandbox on a planted fake common dir: {}", stdout(&out));
    wait_until("the policy_violation event", || {
        d.audit_events("policy_violation").iter().any(|e| e["error"].as_str().unwrap_or("").contains(".git"))
    });
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "HOSTSECRET");
    d.stop();
    assert_no_sandbox_left();
}

/// Attack (red15): two tenants both allowed on the control socket (here by
/// the socket's group). One tenant must not read another tenant's sandbox log
/// (its payload's output), inspect it, or stop it: the sandbox's requester and
/// root may.
#[test]
fn another_tenant_on_the_control_socket_cannot_read_inspect_or_stop_a_sandbox() {
    let f = Fixture::new();
    let mut d = Daemon::start_with(&f, "", &format!("allowed_gids = [{OWNER}]\n"));
    let wt = f.dir.join("base/a");
    let out = d.ctl_as(REQUESTER, &["launch", "--worktree", wt.to_str().unwrap(), "--", bin(), "__probe", "serve", "{port}"]);
    let l: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let (id, port) = (l["id"].as_str().unwrap().to_string(), l["port"].as_u64().unwrap() as u16);
    assert!(bytes_back_as(REQUESTER, port, "/tenant-private-path") > 0);
    let logs = d.ctl_as(STRANGER, &["logs", &id]);
    let inspect = d.ctl_as(STRANGER, &["inspect", &id]);
    let stop = d.ctl_as(STRANGER, &["stop", &id]);
    let still_running = d.list().iter().any(|s| s["id"] == id.as_str() && s["state"] == "running");
    assert!(!stdout(&logs).contains("tenant-private-path"), "another tenant read the sandbox's log: {}", stdout(&logs));
    assert!(!inspect.status.success(), "another tenant inspected the sandbox: {}", stdout(&inspect));
    assert!(!stop.status.success() && still_running, "another tenant stopped the sandbox: {} {}", stdout(&stop), stderr(&stop));
    // The requester still may.
    assert!(ok(&d.ctl_as(REQUESTER, &["logs", &id])).contains("tenant-private-path"));
    d.stop();
    assert_no_sandbox_left();
}

/// Attack (red15): a tenant allowed on the control socket launches an agent on
/// ANOTHER tenant's worktree (any directory below `worktree_base`): the
/// payload then reads and writes that tenant's files as their owner, and the
/// launcher hands the attacker the agent's secret. A launch should be refused
/// unless the requester is root or the worktree's owner (or a mapping in the
/// daemon's root-owned config says otherwise).
/// A non-root requester launches only on its own worktrees or those of an
/// owner the config's `launch_for` delegates to it (REQUESTER for OWNER here).
#[test]
fn a_tenant_cannot_launch_an_agent_on_another_tenants_worktree() {
    let f = Fixture::new();
    let mut d = Daemon::start_with(&f, "", &format!("allowed_gids = [{OWNER}]\n"));
    std::fs::write(f.dir.join("base/a/private.txt"), "owner-only secret\n").unwrap();
    std::os::unix::fs::chown(f.dir.join("base/a/private.txt"), Some(OWNER), Some(OWNER)).unwrap();
    let wt = f.dir.join("base/a");
    let out = d.ctl_as(STRANGER, &["launch", "--worktree", wt.to_str().unwrap(), "--", bin(), "__probe", "serve", "{port}"]);
    let launched = out.status.success();
    d.stop();
    assert_no_sandbox_left();
    assert!(!launched, "uid {STRANGER} launched an agent on a worktree owned by {OWNER}: {}", stdout(&out));
}

/// One raw request line on the control socket as `uid`; its JSON answer.
fn request_as(d: &Daemon, uid: u32, req: &serde_json::Value) -> serde_json::Value {
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode()+b'\\n')\nprint(s.makefile().readline().strip())";
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(script).arg(&d.socket).arg(req.to_string()).uid(uid).gid(OWNER);
    let out = timed(&mut c, Duration::from_secs(60)).expect("the request hangs");
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)))
}

/// A daemon that makes agents' worktrees of `repo`, running the probe server.
fn agent_daemon(f: &Fixture) -> (Daemon, PathBuf) {
    let repo = owned_repo(&f.dir);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    (Daemon::start_with(f, &policy, &format!("repositories = [{repo:?}]\nallowed_gids = [{OWNER}]\n")), repo)
}

/// Issue #17: `agent` makes the worktree of a listed repository and launches
/// its policy's command; a second request for the same task gets the same
/// sandbox back; `status` reports it.
#[test]
fn an_agent_request_makes_its_worktree_once_per_task() {
    let f = Fixture::new();
    let (mut d, repo) = agent_daemon(&f);
    let wt = f.dir.join(format!("base/{REQUESTER}/w1"));
    let req = serde_json::json!({ "cmd": "agent", "agent": "w1", "task": "open-swarm-t.1.1", "repo": repo, "branch": "work" });
    let a = request_as(&d, REQUESTER, &req);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["reused"], serde_json::Value::Null, "{a}");
    assert_eq!(git(&wt, &["rev-parse", "--abbrev-ref", "HEAD"]), "agent/w1/work");
    let again = request_as(&d, REQUESTER, &req);
    assert_eq!(
        (again["ok"].clone(), again["id"].clone(), again["port"].clone(), again["reused"].clone()),
        (true.into(), a["id"].clone(), a["port"].clone(), true.into()),
        "{again}"
    );
    assert_eq!(d.list().len(), 1, "a retried request starts nothing new");
    // The same task under another agent id is refused; another task of the same agent id needs its own worktree.
    let other = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "w2", "task": "open-swarm-t.1.1", "repo": repo }));
    assert!(other["error"].as_str().unwrap().contains("already runs as agent w1"), "{other}");
    let status = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "status", "id": a["id"] }));
    assert_eq!((status["state"].as_str(), status["healthy"].as_bool()), (Some("running"), Some(true)), "{status}");
    assert!(status["usage"]["pids"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert_eq!(request_as(&d, STRANGER, &serde_json::json!({ "cmd": "status", "id": a["id"] }))["ok"], false, "another tenant sees nothing");
    // The probe server commits nothing: no commit to return (the Temporal
    // end-to-end test has a real agent commit, tests/temporal.rs).
    let stop = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "stop", "id": a["id"] }));
    assert_eq!((stop["ok"].as_bool(), stop["commit"].as_str()), (Some(true), None), "{stop}");
    assert!(d.audit_events("worktree_add").iter().any(|e| e["agent"] == "w1" && e["uid"] == REQUESTER), "audited");
    d.stop();
    assert_no_sandbox_left();
}

/// A leased sandbox whose requester stops renewing (a worker killed, or cut
/// off from its orchestrator) is stopped by the daemon; renewing keeps it.
#[test]
fn a_sandbox_whose_lease_is_not_renewed_is_stopped_and_audited() {
    let f = Fixture::new();
    let (mut d, repo) = agent_daemon(&f);
    let launch = |agent: &str, task: &str| {
        let v = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": agent, "task": task, "repo": repo, "lease_s": 3 }));
        assert_eq!(v["ok"], true, "{v}");
        v
    };
    let kept = launch("k1", "open-swarm-l.1.1");
    let dropped = launch("k2", "open-swarm-l.1.2");
    let port = dropped["port"].as_u64().unwrap() as u16;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let r = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "renew", "ids": [kept["id"]] }));
        assert_eq!(r["renewed"], serde_json::json!([kept["id"]]), "{r}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let ids: Vec<serde_json::Value> = d.list().iter().map(|s| s["id"].clone()).collect();
    assert_eq!(ids, vec![kept["id"].clone()], "the unrenewed sandbox is gone, the renewed one runs");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "its port is closed");
    let expired = d.audit_events("lease_expired");
    assert!(expired.len() == 1 && expired[0]["id"] == dropped["id"] && expired[0]["task"] == "open-swarm-l.1.2", "{expired:?}");
    // Renewals of someone else's sandbox renew nothing; malformed ones are refused.
    let r = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "renew", "ids": [kept["id"]] }));
    assert_eq!(r["missing"], serde_json::json!([kept["id"]]), "{r}");
    let r = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "renew", "ids": ["../x"] }));
    assert_eq!(r["ok"], false, "{r}");
    d.stop();
    assert_no_sandbox_left();
}

/// A frozen sandbox is kept for investigation: its lease does not end it
/// while frozen (its worker may be gone); after the thaw the lease runs again
/// and, unrenewed, ends it.
#[test]
fn a_frozen_sandbox_outlives_its_lease_until_it_is_thawed() {
    let f = Fixture::new();
    let (mut d, repo) = agent_daemon(&f);
    let v = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "z1", "task": "open-swarm-z.1.1", "repo": repo, "lease_s": 2 }));
    assert_eq!(v["ok"], true, "{v}");
    let id = v["id"].clone();
    let r = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "freeze", "id": id }));
    assert_eq!(r["ok"], true, "{r}");
    std::thread::sleep(Duration::from_secs(4));
    let ids: Vec<serde_json::Value> = d.list().iter().map(|s| s["id"].clone()).collect();
    assert_eq!(ids, vec![id.clone()], "a frozen sandbox was ended by its lease");
    assert!(d.audit_events("lease_expired").is_empty());
    let r = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "thaw", "id": id }));
    assert_eq!(r["ok"], true, "{r}");
    wait_until("the thawed, unrenewed sandbox is stopped by its lease", || d.list().is_empty());
    let expired = d.audit_events("lease_expired");
    assert!(expired.len() == 1 && expired[0]["id"] == id, "{expired:?}");
    d.stop();
    assert_no_sandbox_left();
}

/// Agent requests are validated field by field and refused with an audit
/// event before anything is made.
#[test]
fn invalid_agent_requests_are_refused_audited_and_make_nothing() {
    let f = Fixture::new();
    let (d, repo) = agent_daemon(&f);
    let elsewhere = f.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let other_repo = owned_repo(&elsewhere);
    let cases = [
        (serde_json::json!({ "cmd": "agent", "agent": "Bad", "task": "open-swarm-t.1.1", "repo": repo }), "agent id"),
        (serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "t", "repo": repo }), "task id"),
        (serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "open-swarm-t.1.1", "repo": repo, "branch": "../../x" }), "branch"),
        (serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "open-swarm-t.1.1", "repo": other_repo }), "not one the daemon"),
        (serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "open-swarm-t.1.1", "repo": repo, "lease_s": 0 }), "lease_s"),
        (serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "open-swarm-t.1.1", "repo": repo, "argv": ["sh"] }), "unknown field"),
    ];
    for (req, needle) in &cases {
        let v = request_as(&d, REQUESTER, req);
        assert!(v["ok"] == false && v["error"].as_str().unwrap_or("").contains(needle), "{req}: {v}");
    }
    // A uid the config does not let act for the repository's owner.
    let v = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "agent", "agent": "x9", "task": "open-swarm-t.1.1", "repo": repo }));
    assert!(v["error"].as_str().unwrap_or("").contains("launch_for"), "{v}");
    assert!(!f.dir.join(format!("base/{REQUESTER}/x9")).exists() && !f.dir.join(format!("base/{STRANGER}/x9")).exists(), "no worktree was made");
    assert!(d.list().is_empty());
    assert!(d.audit_events("policy_violation").len() >= cases.len(), "each refusal is audited");
}

/// Worktrees made by `agent` requests stay after their sandboxes: a requester
/// looping over fresh agent ids is stopped at `max_worktrees` (its own
/// directory `base/UID`; the fixture's base/a, b and c do not count).
#[test]
fn agent_requests_make_at_most_max_worktrees() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}]\nmax_worktrees = 2\n"));
    let agent = |id: &str, task: &str| request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": id, "task": task, "repo": repo }));
    for (id, task) in [("m1", "open-swarm-m.1.1"), ("m2", "open-swarm-m.1.2")] {
        let v = agent(id, task);
        assert_eq!(v["ok"], true, "{v}");
        ok(&d.ctl(&["stop", v["id"].as_str().unwrap()]));
    }
    let third = agent("m3", "open-swarm-m.1.3");
    assert!(third["error"].as_str().unwrap_or("").contains("max_worktrees"), "{third}");
    assert!(!f.dir.join(format!("base/{REQUESTER}/m3")).exists());
    d.stop();
    assert_no_sandbox_left();
}

/// A repository at DIR/repo owned by `uid` (another tenant than OWNER's
/// delegate); with `smudge`, its checkout runs that filter (the owner's own
/// repository configuration, which git honours as the owner).
fn tenant_repo(dir: &Path, uid: u32, smudge: Option<&str>) -> PathBuf {
    std::fs::create_dir(dir).unwrap();
    let repo = owned_repo(dir);
    if let Some(cmd) = smudge {
        std::fs::write(repo.join(".gitattributes"), "* filter=slow\n").unwrap();
        git(&repo, &["add", ".gitattributes"]);
        git(&repo, &["commit", "-q", "-m", "attributes"]);
        let mut c = std::fs::OpenOptions::new().append(true).open(repo.join(".git/config")).unwrap();
        writeln!(c, "[filter \"slow\"]\n\tsmudge = {cmd}\n\trequired = true").unwrap();
    }
    Command::new("chown").args(["-R", &format!("{uid}:{uid}")]).arg(&repo).status().unwrap();
    repo
}

/// Red team (#17): one tenant's `agent` request must not stall the daemon for
/// the others. Tenant B's repository checks out slowly (a smudge filter of
/// its own; a big tree does the same): the daemon's loop waits for git, the
/// other tenant's renewals wait with it, and its leased sandbox expires.
#[test]
fn a_slow_checkout_of_one_tenant_does_not_stall_the_daemon_for_the_others() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let b_repo = tenant_repo(&f.dir.join("tenant-b"), STRANGER, Some("sleep 5; cat"));
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}, {b_repo:?}]\nallowed_gids = [{OWNER}]\n"));
    let victim =
        request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "v1", "task": "open-swarm-v.1.1", "repo": repo, "lease_s": 4 }));
    assert_eq!(victim["ok"], true, "{victim}");
    let b_req = serde_json::json!({ "cmd": "agent", "agent": "b1", "task": "open-swarm-b.1.1", "repo": b_repo });
    let (attacker, retried) = std::thread::scope(|s| {
        let b = s.spawn(|| request_as(&d, STRANGER, &b_req));
        // A retry while B's worktree is being made starts no second one.
        std::thread::sleep(Duration::from_millis(1500));
        let retried = request_as(&d, STRANGER, &b_req);
        // The victim renews every second, as its worker does (a third of the lease).
        let mut slowest = Duration::ZERO;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(14) {
            let t = Instant::now();
            let r = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "renew", "ids": [victim["id"]] }));
            slowest = slowest.max(t.elapsed());
            if r["renewed"] != serde_json::json!([victim["id"]]) {
                eprintln!("renewal refused after {:?}: {r}", start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        ((b.join().unwrap(), slowest), retried)
    });
    let (attacker, slowest) = attacker;
    eprintln!("tenant B's request: {attacker}; its retry meanwhile: {retried}");
    let b_sandboxes = d.list().iter().filter(|s| s["task"] == "open-swarm-b.1.1").count();
    let expired = d.audit_events("lease_expired");
    let alive = d.list().iter().any(|s| s["id"] == victim["id"]);
    for s in d.list() {
        ok(&d.ctl(&["stop", s["id"].as_str().unwrap()]));
    }
    d.stop();
    assert_no_sandbox_left();
    assert!(alive && expired.is_empty(), "tenant B's slow checkout expired tenant A's renewed lease: {expired:?}");
    assert!(slowest < Duration::from_secs(2), "tenant A's renewal waited {slowest:?} for tenant B's checkout");
    assert_eq!((attacker["ok"].as_bool(), b_sandboxes), (Some(true), 1), "tenant B's slow checkout still launches, once: {attacker}");
    assert_eq!((retried["ok"].as_bool(), retried["retry"].as_bool()), (Some(false), Some(true)), "a retry meanwhile waits: {retried}");
}

/// Red team (#17): agent ids are one namespace for every tenant and
/// `max_worktrees` one pool: tenant B takes the worktree name tenant A's
/// workflow will use (ids are predictable), so A's launch is refused.
#[test]
fn a_tenant_cannot_take_another_tenants_agent_worktree_name() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let b_repo = tenant_repo(&f.dir.join("tenant-b"), STRANGER, None);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}, {b_repo:?}]\nallowed_gids = [{OWNER}]\n"));
    let b = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "agent", "agent": "agent-1", "task": "open-swarm-b.1.1", "repo": b_repo }));
    assert_eq!(b["ok"], true, "{b}");
    ok(&d.ctl(&["stop", b["id"].as_str().unwrap()]));
    let a = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "agent-1", "task": "open-swarm-a.1.1", "repo": repo }));
    for s in d.list() {
        ok(&d.ctl(&["stop", s["id"].as_str().unwrap()]));
    }
    d.stop();
    assert_no_sandbox_left();
    assert_eq!(a["ok"], true, "tenant B's worktree agent-1 refuses tenant A's agent agent-1: {a}");
}

/// Red team (#17): `max_worktrees` is one pool for every tenant: tenant B
/// fills it (worktrees stay after their sandboxes) and no other tenant can
/// launch a new agent any more.
#[test]
fn one_tenant_cannot_use_up_max_worktrees_for_the_others() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let b_repo = tenant_repo(&f.dir.join("tenant-b"), STRANGER, None);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    // base/a, b and c exist already (the fixture's, OWNER's): 3 more are allowed.
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}, {b_repo:?}]\nallowed_gids = [{OWNER}]\nmax_worktrees = 6\n"));
    for i in 1..=3 {
        let b = request_as(
            &d,
            STRANGER,
            &serde_json::json!({ "cmd": "agent", "agent": format!("b{i}"), "task": format!("open-swarm-b.1.{i}"), "repo": b_repo }),
        );
        assert_eq!(b["ok"], true, "{b}");
        ok(&d.ctl(&["stop", b["id"].as_str().unwrap()]));
    }
    let a = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "a1", "task": "open-swarm-a.1.1", "repo": repo }));
    for s in d.list() {
        ok(&d.ctl(&["stop", s["id"].as_str().unwrap()]));
    }
    d.stop();
    assert_no_sandbox_left();
    assert_eq!(a["ok"], true, "tenant B's stopped agents used up every worktree: {a}");
}

/// Red team (#17): the daemon resolves an `agent` request's repository and
/// policy paths as root before it checks them against its lists: its
/// answers tell a tenant which paths exist where the tenant cannot look.
#[test]
fn agent_requests_do_not_reveal_which_hidden_paths_exist() {
    let f = Fixture::new();
    let (d, repo) = agent_daemon(&f);
    let hidden = f.dir.join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(hidden.join("id_ed25519"), "key").unwrap();
    let mut answers = vec![];
    for field in ["repo", "policy"] {
        for name in ["id_ed25519", "absent"] {
            let mut req = serde_json::json!({ "cmd": "agent", "agent": "o1", "task": "open-swarm-o.1.1", "repo": repo });
            req[field] = serde_json::json!(hidden.join(name));
            let v = request_as(&d, REQUESTER, &req);
            answers.push(v["error"].as_str().unwrap_or("").replace(name, "NAME"));
        }
    }
    assert!(answers[0] == answers[1] && answers[2] == answers[3], "the answers differ by existence: {answers:?}");
}

/// Red team (#17): the daemon checks the repository's owner, then `git
/// worktree add` resolves the path again and runs as whoever owns it then.
/// Tenant B swaps its listed repository for a symlink to OWNER's in between
/// (renameat2 RENAME_EXCHANGE in a loop): the daemon makes OWNER-owned
/// worktrees and `agent/*` branches in a repository B may not launch for.
#[test]
fn a_tenant_cannot_swap_its_repository_for_another_owners_between_check_and_git() {
    let f = Fixture::new();
    let victim = owned_repo(&f.dir);
    let b_dir = f.dir.join("tenant-b");
    let b_repo = tenant_repo(&b_dir, STRANGER, None);
    Command::new("chown").arg(format!("{STRANGER}:{STRANGER}")).arg(&b_dir).status().unwrap();
    std::os::unix::fs::symlink(&victim, b_dir.join("swap")).unwrap();
    std::os::unix::fs::lchown(b_dir.join("swap"), Some(STRANGER), Some(STRANGER)).unwrap();
    // B's own policy runs a command the daemon does not allow: each attempt stops after git.
    let cheap = f.dir.join("cheap.toml");
    std::fs::write(&cheap, "[process]\ncommand = [\"/bin/true\"]\n").unwrap();
    std::fs::set_permissions(&cheap, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(
        &f,
        &policy,
        &format!("repositories = [{b_repo:?}]\npolicies = [{cheap:?}]\nallowed_gids = [{OWNER}]\nmax_worktrees = 100000\n"),
    );
    let racer = "import ctypes,os,sys\nlibc=ctypes.CDLL(None,use_errno=True)\nfd=os.open(sys.argv[1],os.O_RDONLY)\nwhile True: libc.syscall(316,fd,b'repo',fd,b'swap',2)";
    let mut race = Command::new("/usr/bin/python3").arg("-c").arg(racer).arg(&b_dir).uid(STRANGER).gid(STRANGER).spawn().unwrap();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(40) && git(&victim, &["branch", "--list", "agent/*"]).is_empty() {
        let _ = request_as(
            &d,
            STRANGER,
            &serde_json::json!({ "cmd": "agent", "agent": format!("r{i}"), "task": format!("open-swarm-r.1.{i}"), "repo": b_repo, "policy": cheap }),
        );
        i += 1;
    }
    let _ = race.kill();
    let _ = race.wait();
    let branches = git(&victim, &["branch", "--list", "agent/*"]);
    let errors: std::collections::BTreeMap<String, usize> = d.audit_events("policy_violation").iter().fold(Default::default(), |mut m, e| {
        *m.entry(
            e["error"].as_str().unwrap_or("").chars().filter(|c| !c.is_ascii_digit()).collect::<String>().replace(&f.dir.display().to_string(), ""),
        )
        .or_default() += 1;
        m
    });
    eprintln!("{i} attempts: {errors:#?}");
    d.stop();
    assert_no_sandbox_left();
    assert!(branches.is_empty(), "tenant B made the daemon write into OWNER's repository: {branches}");
}

/// Red team (#17): a lease notices a requester that went away; one still
/// waiting for its launch has not. A sandbox slower to become healthy than
/// its lease (OpenCode under load, with the worker's 30 s lease) was stopped
/// while its requester waited, and every retry failed the same way.
#[test]
fn a_launch_slower_than_its_lease_is_not_stopped_while_its_requester_waits() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"slow-serve\", \"{{port}}\", \"4\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}]\nallowed_gids = [{OWNER}]\n"));
    let a = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "s1", "task": "open-swarm-s.1.1", "repo": repo, "lease_s": 2 }));
    // Once it is ready, the lease runs: unrenewed, it is stopped.
    let stopped = a["ok"] == true && {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) && !d.list().is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        d.list().is_empty()
    };
    for s in d.list() {
        let _ = d.ctl(&["stop", s["id"].as_str().unwrap()]);
    }
    d.stop();
    assert_no_sandbox_left();
    assert_eq!(a["ok"], true, "a launch slower than its lease failed while its requester waited: {a}");
    assert!(stopped, "the lease did not run once the sandbox was ready");
}

/// Red team (#17): StopAgent could lose the agent's commit. A retried stop
/// of a sandbox already stopping was told "already stopping", the next retry
/// "no sandbox", and the worker returned `commit: null` although the
/// launcher had published one. A stop of a stopping sandbox waits for the
/// same answer; a gone sandbox's last branch and commit are kept a while for
/// its requester's `stop` and `status` (and no one else's).
#[test]
fn a_retried_stop_still_gets_the_agents_commit() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"commit-serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}]\nallowed_gids = [{OWNER}]\n"));
    let a = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "agent", "agent": "c1", "task": "open-swarm-c.1.1", "repo": repo }));
    assert_eq!(a["ok"], true, "{a}");
    let stop = serde_json::json!({ "cmd": "stop", "id": a["id"] });
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| request_as(&d, REQUESTER, &stop));
        std::thread::sleep(Duration::from_millis(20));
        let second = request_as(&d, REQUESTER, &stop);
        (first.join().unwrap(), second)
    });
    let third = request_as(&d, REQUESTER, &stop);
    let status = request_as(&d, REQUESTER, &serde_json::json!({ "cmd": "status", "id": a["id"] }));
    let stranger_stop = request_as(&d, STRANGER, &stop);
    let stranger_status = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "status", "id": a["id"] }));
    d.stop();
    assert_no_sandbox_left();
    let commit = git(&repo, &["rev-parse", "agent/c1/work"]);
    assert_eq!((first["ok"].as_bool(), first["commit"].as_str()), (Some(true), Some(commit.as_str())), "the first stop: {first}");
    assert_eq!((second["ok"].as_bool(), second["commit"].as_str()), (Some(true), Some(commit.as_str())), "a stop while stopping: {second}");
    assert_eq!(
        (third["ok"].as_bool(), third["status"].as_str(), third["commit"].as_str()),
        (Some(true), Some("gone"), Some(commit.as_str())),
        "a stop once gone: {third}"
    );
    assert_eq!((status["state"].as_str(), status["commit"].as_str()), (Some("gone"), Some(commit.as_str())), "{status}");
    for v in [stranger_stop, stranger_status] {
        assert!(v["ok"] == false && v["error"].as_str().unwrap_or("").starts_with("no sandbox"), "another tenant learns nothing: {v}");
    }
}

/// #17: a requester frees its own `max_worktrees` budget with
/// `agent_remove` (never while a sandbox runs on the worktree, never another
/// tenant's worktree: the id names one in the requester's own directory).
#[test]
fn a_requester_removes_its_own_agent_worktrees_only() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let b_repo = tenant_repo(&f.dir.join("tenant-b"), STRANGER, None);
    let policy = format!("[process]\ncommand = [{:?}, \"__probe\", \"serve\", \"{{port}}\"]\n", bin());
    let mut d = Daemon::start_with(&f, &policy, &format!("repositories = [{repo:?}, {b_repo:?}]\nallowed_gids = [{OWNER}]\nmax_worktrees = 1\n"));
    let b = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "agent", "agent": "r1", "task": "open-swarm-r.1.1", "repo": b_repo }));
    assert_eq!(b["ok"], true, "{b}");
    let remove = serde_json::json!({ "cmd": "agent_remove", "agent": "r1" });
    let busy = request_as(&d, STRANGER, &remove);
    ok(&d.ctl(&["stop", b["id"].as_str().unwrap()]));
    let by_other = request_as(&d, REQUESTER, &remove);
    let b_wt = f.dir.join(format!("base/{STRANGER}/r1"));
    let kept = b_wt.exists();
    let removed = request_as(&d, STRANGER, &remove);
    let again = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "agent", "agent": "r2", "task": "open-swarm-r.1.2", "repo": b_repo }));
    let bad = request_as(&d, STRANGER, &serde_json::json!({ "cmd": "agent_remove", "agent": "../1000" }));
    for s in d.list() {
        ok(&d.ctl(&["stop", s["id"].as_str().unwrap()]));
    }
    d.stop();
    assert_no_sandbox_left();
    assert!(busy["ok"] == false && busy["error"].as_str().unwrap_or("").contains("a sandbox runs"), "{busy}");
    assert!(by_other["ok"] == false && kept, "another tenant removed B's worktree: {by_other}");
    assert_eq!(removed["ok"], true, "{removed}");
    assert!(!b_wt.exists() && git(&b_repo, &["branch", "--list", "agent/r1/work"]).contains("agent/r1/work"), "the worktree goes, its branch stays");
    assert_eq!(again["ok"], true, "the budget is free again: {again}");
    assert!(bad["ok"] == false && bad["error"].as_str().unwrap_or("").contains("invalid"), "{bad}");
}
