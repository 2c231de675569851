//! `swarmcell ps` and `swarmcell ctl top` against a real daemon running 50
//! sandboxes: one row each with its port, state, uptime, memory, pids and
//! connections; `--json` for tools; `ctl top` refreshes (CPU% from the second
//! frame); a requester who is not root sees only its own sandboxes.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use common::daemon::{Daemon, DaemonOptions};
use common::*;

const SANDBOXES: usize = 50;
/// A second requester, allowed on the socket, launching on OWNER's worktrees.
const REQUESTER: u32 = 4343;

/// A daemon on which REQUESTER may launch on OWNER's worktrees.
fn start(f: &Fixture) -> Daemon {
    let config = format!("socket_group = {OWNER}\nallowed_uids = [0, {REQUESTER}]\nlaunch_for = {{ \"{REQUESTER}\" = [{OWNER}] }}\n");
    Daemon::start_in(f, &DaemonOptions { agents: &[], commands: &[], policy: "", config: &config })
}

impl Daemon {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        // `ps` and `ctl top` take the socket after their own name.
        c.arg(args[0]).arg("--socket").arg(&self.socket).args(&args[1..]);
        c
    }
    fn ps(&self, args: &[&str]) -> Output {
        self.cmd(&[&["ps"], args].concat()).output().unwrap()
    }
}

#[test]
fn ps_shows_fifty_sandboxes_with_their_usage_and_top_refreshes() {
    let f = Fixture::new();
    let d = start(&f);
    let base = f.dir.join("base");
    // Launched from a few clients at once (the daemon serves them all).
    let launched: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|t| {
                let (d, base) = (&d, &base);
                s.spawn(move || {
                    (0..SANDBOXES / 5)
                        .map(|i| {
                            let agent = format!("agent-{:02}", t * 10 + i);
                            let wt = base.join(&agent);
                            make_owned_dir(&wt, OWNER, OWNER);
                            let task = format!("open-swarm-ps{t}.{i}.1");
                            let mut args = vec!["launch", "--worktree", wt.to_str().unwrap(), "--agent", &agent, "--task", &task];
                            args.extend(["--", bin(), "__probe", "serve", "{port}"]);
                            let out = if t == 0 && i < 2 {
                                // Two of them are REQUESTER's.
                                let mut c = d.cmd(&[&["ctl"], &args[..]].concat());
                                c.uid(REQUESTER).gid(OWNER).output().unwrap()
                            } else {
                                d.ctl(&args)
                            };
                            serde_json::from_str(&ok(&out)).unwrap()
                        })
                        .collect::<Vec<serde_json::Value>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(launched.len(), SANDBOXES);
    // Some traffic, so that connections are counted.
    let port = launched[0]["port"].as_u64().unwrap() as u16;
    assert!(bytes_back_as(0, port, "/ps") > 0);

    // The table: a header, then one row per sandbox, every column filled.
    let out = d.ps(&[]);
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("{SANDBOXES} sandboxes: {SANDBOXES} running")), "{text}");
    let head: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(head, ["ID", "AGENT", "TASK", "PORT", "STATE", "UPTIME", "RESTARTS", "MEMORY", "CPU%", "CPUTIME", "PIDS", "CONNS", "DENIALS"]);
    let rows: Vec<Vec<&str>> = lines[2..].iter().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), SANDBOXES, "{text}");
    for r in &rows {
        assert_eq!(r.len(), 13, "{r:?}");
        assert!(r[0].starts_with("d-") && r[1].starts_with("agent-") && r[2].starts_with("open-swarm-ps"), "{r:?}");
        assert!(r[3].parse::<u16>().is_ok() && r[4] == "running", "{r:?}");
        assert!(r[5].ends_with('s') && r[6] == "0", "{r:?}");
        assert!(r[7].ends_with('K') || r[7].ends_with('M'), "memory {r:?}");
        assert_eq!(r[8], "-", "one-shot ps has no CPU% (no interval): {r:?}");
        assert!(r[10].parse::<u32>().is_ok_and(|p| p >= 1), "pids {r:?}");
        assert!(r[11].parse::<u32>().is_ok(), "connections {r:?}");
    }
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(ids, launched.iter().map(|l| l["id"].as_str().unwrap()).collect());

    // --json: the daemon's data, for tools.
    let json: Vec<serde_json::Value> = serde_json::from_str(&ok(&d.ps(&["--json"]))).unwrap();
    assert_eq!(json.len(), SANDBOXES);
    for s in &json {
        for k in [
            "id",
            "agent",
            "task",
            "port",
            "state",
            "uptime_s",
            "restarts",
            "memory_bytes",
            "cpu_seconds",
            "pids",
            "connections",
            "connections_total",
            "denials",
        ] {
            assert!(s.get(k).is_some(), "no {k} in {s}");
        }
        assert!(s["memory_bytes"].as_u64().is_some_and(|m| m > 0) && s["pids"].as_u64().is_some_and(|p| p > 0), "{s}");
    }
    let first = json.iter().find(|s| s["port"] == port).unwrap();
    assert!(first["connections_total"].as_u64().unwrap() >= 1, "{first}");

    // ctl top: two frames, the second with CPU% measured over the interval.
    let out = d.cmd(&["ctl", "top", "-n", "2", "-d", "0.5"]).output().unwrap();
    let text = ok(&out);
    let frames: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(frames.len(), 2, "{text}");
    assert!(frames[0].contains("; every 0.5s"), "{}", frames[0]);
    let cpu: Vec<&str> = frames[1].lines().skip(2).map(|l| l.split_whitespace().nth(8).unwrap()).collect();
    assert_eq!(cpu.len(), SANDBOXES);
    assert!(cpu.iter().all(|c| c.parse::<f64>().is_ok()), "{cpu:?}");

    // A requester who is not root sees its own two only.
    let mut c = d.cmd(&["ps", "--json"]);
    let mine: Vec<serde_json::Value> = serde_json::from_str(&ok(&c.uid(REQUESTER).gid(OWNER).output().unwrap())).unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|s| s["uid"] == REQUESTER));

    // No daemon: one line, exit 125.
    let out = Command::new(bin()).args(["ps", "--socket"]).arg(f.dir.join("nothing.sock")).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).starts_with("swarmcell: control socket") && stderr(&out).lines().count() == 1, "{}", stderr(&out));
    drop(d);
    assert_no_sandbox_left();
}
