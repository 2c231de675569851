//! Denials and incident response, against the real kernel: Landlock and
//! seccomp denials of a daemon sandbox arrive as attributed, counted
//! `policy_violation` events; a flood is counted without loss; a `freeze`
//! tripwire freezes on its first match and writes a bundle whose manifest
//! verifies, that a hostile worktree cannot hang or redirect; thaw resumes
//! the server; kill leaves nothing behind.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonOptions};
use common::*;

impl Daemon {
    /// A daemon with kernel audit on and eight worktrees `base/a`..`base/h`.
    fn start(f: &Fixture, policy_extra: &str) -> Daemon {
        let agents = ["a", "b", "c", "d", "e", "f", "g", "h"];
        Daemon::start_in(
            f,
            &DaemonOptions { agents: &agents, commands: &[], policy: policy_extra, config: "allowed_uids = [0]\nkernel_audit = \"enable\"\n" },
        )
    }

    fn launch(&self, agent: &str, cmd: &[&str]) -> serde_json::Value {
        self.launch_cmd(agent, cmd)
    }

    fn denials(&self, id: &str) -> serde_json::Value {
        let out = Command::new(bin()).args(["denials", id, "--json", "--socket"]).arg(&self.socket).output().unwrap();
        let lines: Vec<serde_json::Value> = ok(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        serde_json::Value::Array(lines)
    }

    fn raw_denials(&self) -> serde_json::Value {
        let s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        let mut w = &s;
        writeln!(w, "{{\"cmd\":\"denials\"}}").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn count(&self, id: &str, kind: &str, detail: &str) -> u64 {
        self.denials(id)
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == kind && d["detail"] == detail)
            .and_then(|d| d["count"].as_u64())
            .unwrap_or(0)
    }

    fn scrape(&self) -> String {
        self.scrape_text()
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// One HTTP request to the sandbox's port; the status line, or None when
/// nothing answered within `timeout`.
fn get(port: u64, path: &str, timeout: Duration) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port as u16).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string())
}

#[test]
fn fs_socket_family_and_syscall_denials_arrive_attributed_with_counts_within_a_second() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "");
    let l = d.launch("a", &[bin(), "__probe", "denials", "{port}"]);
    let id = l["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    while !(d.count(&id, "fs", "fs.read_dir /") == 3 && d.count(&id, "net", "socket") == 3 && d.count(&id, "syscall", "ptrace") == 3) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not all three within 1 s: {}\n{}\n{}",
            d.raw_denials(),
            std::fs::read_to_string(f.dir.join("daemon.log")).unwrap_or_default(),
            std::fs::read_to_string(f.dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    eprintln!("all three attributed {took:?} after the launch answered");
    // Each is an audit event with the sandbox's ids and agent. Reports are
    // rate-bounded (about one a second per sandbox): the counts may be split
    // over two of them, the second a moment after the first.
    let wanted = [("fs", "fs.read_dir /"), ("net", "socket"), ("syscall", "ptrace")];
    let total = |v: &[serde_json::Value], kind: &str, detail: &str| -> u64 {
        v.iter().filter(|e| e["id"] == id && e["kind"] == kind && e["detail"] == detail).map(|e| e["count"].as_u64().unwrap()).sum()
    };
    let reported = Instant::now();
    let mut v = d.audit_events("policy_violation");
    while wanted.iter().any(|(k, dt)| total(&v, k, dt) < 3) && reported.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        v = d.audit_events("policy_violation");
    }
    for (kind, detail) in wanted {
        assert_eq!(total(&v, kind, detail), 3, "{kind} {detail}: {v:?}");
        assert!(
            v.iter().any(|e| e["id"] == id
                && e["agent"] == "a"
                && e["sandbox"].as_str().is_some_and(|s| s.starts_with("sc-"))
                && e["source"] == "kernel")
        );
    }
    let m = d.scrape();
    assert!(m.contains(&format!("swarmcell_denials_total{{sandbox=\"{id}\",kind=\"fs\"}} 3")), "{m}");
    assert!(m.contains(&format!("swarmcell_denials_total{{sandbox=\"{id}\",kind=\"syscall\"}} 3")), "{m}");
    // ctl events shows them with the launch.
    let ev = ok(&d.ctl(&["events", &id, "--json"]));
    assert!(ev.contains("\"sandbox_launch\"") && ev.contains("\"policy_violation\""), "{ev}");
    // `swarmcell ps` counts them in its denials column.
    let ps = ok(&Command::new(bin()).arg("ps").arg("--socket").arg(&d.socket).arg("--json").output().unwrap());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&ps).unwrap();
    let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in ps: {ps}"));
    assert!(row["denials"].as_u64().is_some_and(|n| n >= 9), "ps shows {} denials: {row}", row["denials"]);
    ok(&d.ctl(&["stop", &id]));
}

#[test]
fn a_flood_of_a_million_denials_is_counted_without_loss() {
    let f = Fixture::new();
    // Every sandbox of this daemon gets half a core (the flood runs in its own cgroup).
    let d = Daemon::start(&f, "[limits]\ncpu = 0.5\n");
    let time_launches = |agents: &[&str]| {
        let mut v: Vec<Duration> = agents
            .iter()
            .map(|agent| {
                let t = Instant::now();
                let l = d.launch(agent, &[bin(), "__probe", "serve", "{port}"]);
                let took = t.elapsed();
                ok(&d.ctl(&["stop", l["id"].as_str().unwrap()]));
                took
            })
            .collect();
        v.sort();
        v[v.len() / 2]
    };
    let idle = time_launches(&["b", "c", "d"]);
    // The same CPU load without denials, for comparison.
    let spin = d.launch("h", &[bin(), "__probe", "spin-serve", "{port}", "30"]);
    let spinning = time_launches(&["b", "c", "d"]);
    ok(&d.ctl(&["stop", spin["id"].as_str().unwrap()]));
    let l = d.launch("a", &[bin(), "__probe", "denials", "{port}", "1000000"]);
    let id = l["id"].as_str().unwrap().to_string();
    let flooding = time_launches(&["e", "f", "g"]);
    let during = d.count(&id, "syscall", "keyctl");
    let t0 = Instant::now();
    loop {
        let r = d.raw_denials();
        let c = d.count(&id, "syscall", "keyctl");
        if c + r["dropped"].as_u64().unwrap() >= 1_000_000 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "not all counted: keyctl {c}, {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = d.raw_denials();
    let counted = d.count(&id, "syscall", "keyctl");
    eprintln!(
        "flood: counted {counted} dropped {} overruns {} kernel_lost {} unattributed {} ({during} counted during the launches, all {:?} later); launch medians: idle {idle:?}, next to a CPU-bound sandbox {spinning:?}, next to the flood {flooding:?}",
        r["dropped"],
        r["overruns"],
        r["kernel_lost"],
        r["unattributed"],
        t0.elapsed()
    );
    // Every denial of this sandbox is its own, none lost: exactly the flood.
    // (Not `unattributed == 0`: the daemon reads the whole host's audit
    // records, and other programs' seccomp-logged calls on a shared host are
    // unattributed by design; one of this sandbox's would be missing here.)
    assert_eq!((counted, r["dropped"].as_u64().unwrap()), (1_000_000, 0), "{r}");
    // Aggregated: about one report per second for the flood's one detail.
    let reports = d.audit_events("policy_violation").into_iter().filter(|e| e["id"] == id && e["detail"] == "keyctl").count();
    assert!(reports <= 10 + t0.elapsed().as_secs() as usize + 30, "{reports} reports");
    // What the denial machinery (kauditd, the daemon's reader) costs other
    // launches is a measurement, not an assertion (timed tests are flaky on a
    // shared host): printed here, reported with the benchmarks.
    eprintln!("launch median {flooding:?} next to the flood, {spinning:?} next to a CPU-bound sandbox, {idle:?} idle");
    ok(&d.ctl(&["stop", &id]));
}

fn sha256sum_check(dir: &std::path::Path) -> std::process::Output {
    Command::new("sha256sum").arg("-c").arg("--quiet").arg("MANIFEST.sha256").current_dir(dir).output().unwrap()
}

#[test]
fn a_freeze_tripwire_freezes_on_its_first_match_the_bundle_verifies_thaw_resumes_and_kill_leaves_nothing() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"no-ptrace\"\nkind = \"syscall\"\nsyscall = \"ptrace\"\naction = \"freeze\"\n");
    // The payload plants a FIFO, a symlink to /etc/shadow and a 64 GiB sparse file in its worktree.
    let l = d.launch("a", &[bin(), "__probe", "denials", "{port}", "0", "plant"]);
    let (id, port) = (l["id"].as_str().unwrap().to_string(), l["port"].as_u64().unwrap());
    // The three ptrace refusals at its start fired the tripwire: frozen once ready.
    let took = wait_for("the bundle", Duration::from_secs(20), || !d.audit_events("forensic_bundle").is_empty());
    eprintln!("bundle written {took:?} after the launch answered");
    let fired = d.audit_events("tripwire");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!((fired[0]["rule"].as_str(), fired[0]["action"].as_str()), (Some("no-ptrace"), Some("freeze")));
    assert_eq!(d.audit_events("sandbox_freeze").len(), 1);
    let b = &d.audit_events("forensic_bundle")[0];
    assert_eq!(b["outcome"], "written", "{b}");
    let dir = PathBuf::from(b["path"].as_str().unwrap());
    // Frozen: its server does not answer.
    assert_eq!(get(port, "/", Duration::from_millis(1500)), None, "a frozen sandbox answered");
    // The bundle: root's, 0700/0600, its manifest verifies, nothing of the host's copied.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o700));
    let out = sha256sum_check(&dir);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for e in walk(&dir) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        assert!(md.is_file(), "{} is not a regular file", e.display());
        assert_eq!(md.mode() & 0o777, 0o600, "{}", e.display());
    }
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
    let shadow_hash = {
        let o = Command::new("sha256sum").arg("/etc/shadow").output().unwrap();
        stdout(&o).split_whitespace().next().unwrap().to_string()
    };
    // (Not a git worktree: every file is listed, as untracked ones are in one.)
    let untracked: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("worktree.json")).unwrap()).unwrap();
    let all = std::fs::read_to_string(dir.join("worktree.json")).unwrap();
    assert!(!all.contains(&shadow_hash), "the symlink's target was read");
    let first_line = shadow.lines().next().unwrap_or("root:");
    for e in walk(&dir) {
        assert!(!std::fs::read_to_string(&e).unwrap_or_default().contains(first_line), "{} holds /etc/shadow", e.display());
    }
    let entry = |name: &str| {
        untracked["files"].as_array().unwrap().iter().find(|e| e["path"] == name).cloned().unwrap_or_else(|| panic!("{name} not listed: {untracked}"))
    };
    assert_eq!(entry("planted.fifo")["type"], "fifo");
    assert_eq!(entry("planted-shadow")["type"], "symlink");
    assert_eq!(entry("planted-shadow")["target"], "/etc/shadow");
    assert_eq!(entry("planted.sparse")["truncated"], true);
    let incident: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("incident.json")).unwrap()).unwrap();
    for k in ["incident_id", "timestamp", "severity", "type", "description", "affected_agent", "status", "timeline"] {
        assert!(!incident[k].is_null(), "incident.json lacks {k}: {incident}");
    }
    assert_eq!(incident["affected_agent"], "a");
    let procs: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("processes.json")).unwrap()).unwrap();
    assert!(procs["processes"].as_array().unwrap().iter().any(|p| p["cmdline"].to_string().contains("denials")), "{procs}");
    assert!(std::fs::read_to_string(dir.join("net/tcp")).unwrap().contains(" 0A "), "its listening socket is in net/tcp");
    // Thaw: it answers again.
    ok(&d.ctl(&["thaw", &id]));
    wait_for("the thawed server to answer", Duration::from_secs(5), || get(port, "/", Duration::from_millis(500)).is_some());
    assert_eq!(d.audit_events("sandbox_thaw").len(), 1);
    // Kill: gone, with its cgroups and processes.
    let list: serde_json::Value = serde_json::from_str(&ok(&d.ctl(&["list", "--json"]))).unwrap();
    assert!(list.as_array().unwrap().iter().any(|s| s["id"] == id));
    ok(&d.ctl(&["kill", &id]));
    let list: serde_json::Value = serde_json::from_str(&ok(&d.ctl(&["list", "--json"]))).unwrap();
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    assert_eq!(d.audit_events("sandbox_kill").len(), 1);
    assert_no_sandbox_left();
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
