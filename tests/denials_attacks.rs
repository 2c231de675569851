//! Red-team tests of the denial stream and incident response (issue 18), as
//! an attacker would try them: a payload that blinds a tripwire by filling its
//! sandbox's denial details with decoys first; a payload whose worktree makes
//! the forensic bundle's git stall the daemon for every other client; another
//! local uid reading the audit events of a sandbox that is not its own.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonOptions};
use common::*;

/// Another local user allowed on the control socket (not the sandbox's requester).
const TENANT: u32 = 4343;

impl Daemon {
    /// A daemon with kernel audit on, worktrees `base/a` and `base/b`, `/bin/sh` allowed.
    fn start(f: &Fixture, policy_extra: &str, config_extra: &str) -> Daemon {
        let config = format!("kernel_audit = \"enable\"\n{config_extra}");
        Daemon::start_in(f, &DaemonOptions { agents: &["a", "b"], commands: &["/bin/sh"], policy: policy_extra, config: &config })
    }

    fn worktree(&self, agent: &str) -> PathBuf {
        self.dir.join("base").join(agent)
    }

    /// `/bin/sh WORKTREE/attack.sh {port}` in a sandbox on `base/AGENT`.
    fn launch_script(&self, agent: &str, script: &str) -> serde_json::Value {
        let wt = self.worktree(agent);
        let path = wt.join("attack.sh");
        std::fs::write(&path, script).unwrap();
        std::os::unix::fs::chown(&path, Some(OWNER), Some(OWNER)).unwrap();
        let out = self.ctl(&["launch", "--worktree", wt.to_str().unwrap(), "--agent", agent, "--", "/bin/sh", path.to_str().unwrap(), "{port}"]);
        serde_json::from_str(&ok(&out)).unwrap_or_else(|e| panic!("{e}: {}", self.daemon_log()))
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn raw(&self, req: &str) -> serde_json::Value {
        use std::io::Write;
        let s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        let mut w = &s;
        writeln!(w, "{req}").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

#[test]
fn a_tripwire_fires_even_after_the_payload_filled_its_denial_details_with_decoys() {
    let f = Fixture::new();
    // The rule of tests/denials.rs: a ptrace attempt freezes the sandbox.
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"no-ptrace\"\nkind = \"syscall\"\nsyscall = \"ptrace\"\naction = \"freeze\"\n", "");
    // The payload serves; once ready, it makes 300 refused calls with
    // distinct numbers (x32 numbers: refused by the architecture guard, each
    // its own detail "syscall N"), then tries ptrace (`__probe denials -`).
    let script = format!(
        "{bin} __probe serve \"$1\" &\nsleep 2\n/usr/bin/python3 -c 'import ctypes\nl = ctypes.CDLL(None, use_errno=True)\nfor i in range(300): l.syscall(0x40000000 + 1000 + i)'\n{bin} __probe denials -\nwait\n",
        bin = bin()
    );
    let l = d.launch_script("a", &script);
    let id = l["id"].as_str().unwrap().to_string();
    let denials = || d.raw(&format!("{{\"cmd\":\"denials\",\"id\":\"{id}\"}}"));
    // Every denial was counted (the decoys and the first ptrace attempt: the
    // tripwire freezes the payload on it, before its next two)...
    let start = Instant::now();
    loop {
        let r = denials();
        let n: u64 = r["denials"].as_array().unwrap().iter().filter(|x| x["kind"] == "syscall").map(|x| x["count"].as_u64().unwrap()).sum();
        if n >= 301 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the payload's denials were not counted: {r}\n{}\n{}",
            d.daemon_log(),
            std::fs::read_to_string(f.dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and the tripwire must fire.
    let start = Instant::now();
    while d.audit_events("tripwire").is_empty() {
        let r = denials();
        let ptrace: Vec<&serde_json::Value> =
            r["denials"].as_array().unwrap().iter().filter(|x| x["detail"] == "ptrace" || x["detail"] == "(other)").collect();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the ptrace tripwire never fired: the payload's ptrace denials were counted as {ptrace:?} once 256 decoy details filled its table"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.audit_events("tripwire")[0]["rule"], "no-ptrace");
    assert_eq!(d.audit_events("tripwire")[0]["detail"], "ptrace");
    // The freeze it asked for happened, and the operator sees the call by name.
    let start = Instant::now();
    while d.audit_events("sandbox_freeze").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "the tripwire fired but did not freeze the sandbox: {}", d.daemon_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = denials();
    assert!(
        r["denials"].as_array().unwrap().iter().any(|x| x["kind"] == "syscall" && x["detail"] == "ptrace"),
        "`denials` lost the name of the refused ptrace among the decoys: {r}"
    );
    let _ = d.ctl(&["kill", &id]);
}

#[test]
fn the_forensic_bundle_of_a_hostile_git_worktree_does_not_stall_the_daemon_for_other_clients() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "", "");
    // A git worktree with a small committed file, owned by its owner.
    let wt = d.worktree("a");
    git(&wt, &["init", "-q", "-b", "main"]);
    std::fs::write(wt.join("big"), "small\n").unwrap();
    git(&wt, &["add", "big"]);
    git(&wt, &["commit", "-q", "-m", "initial"]);
    Command::new("chown").args(["-R", &format!("{OWNER}:{OWNER}")]).arg(&wt).status().unwrap();
    // The payload turns it into a 1 TiB sparse file (no disk used), then serves.
    let l = d.launch_script("a", &format!("truncate -s 1T {wt}/big\nexec {bin} __probe serve \"$1\"\n", wt = wt.display(), bin = bin()));
    let id = l["id"].as_str().unwrap().to_string();
    let sock = d.socket.clone();
    let freeze = std::thread::spawn(move || {
        let t = Instant::now();
        let out = Command::new(bin()).arg("ctl").arg("--socket").arg(&sock).args(["freeze", &id]).output().unwrap();
        (t.elapsed(), out)
    });
    std::thread::sleep(Duration::from_millis(500));
    // Another client (an operator listing sandboxes) meanwhile.
    let t = Instant::now();
    let list = d.ctl(&["list", "--json"]);
    let list_took = t.elapsed();
    let (freeze_took, out) = freeze.join().unwrap();
    eprintln!("freeze answered after {freeze_took:?}; a `list` sent 0.5 s into it answered after {list_took:?}: {}", stdout(&out));
    let id = l["id"].as_str().unwrap();
    ok(&d.ctl(&["kill", id]));
    assert!(list.status.success());
    assert!(
        list_took < Duration::from_secs(3),
        "the daemon answered no other client for {list_took:?} while it wrote a bundle (freeze took {freeze_took:?})"
    );
    // The freeze itself is answered at once (the bundle is written by a worker)...
    assert!(out.status.success() && freeze_took < Duration::from_secs(3), "freeze took {freeze_took:?}: {}", stdout(&out));
    // ...and the bundle is written, bounded, without reading the 1 TiB file.
    let start = Instant::now();
    let written = loop {
        if let Some(e) = d.audit_events("forensic_bundle").pop() {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no forensic_bundle event: {}", d.daemon_log());
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("bundle after {:?}: {written}", start.elapsed());
    assert_eq!(written["outcome"], "written", "{written}");
    let bundle = PathBuf::from(written["path"].as_str().unwrap());
    let stat = std::fs::read_to_string(bundle.join("git/diff.stat")).unwrap();
    assert!(!stat.starts_with("error"), "git/diff.stat: {stat}");
    let big: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(bundle.join("git/big.json")).unwrap()).unwrap();
    assert_eq!((&big["files"][0]["path"], &big["files"][0]["size"]), (&serde_json::json!("big"), &serde_json::json!(1u64 << 40)), "{big}");
}

/// The sandbox's cgroup directories (every hierarchy) named `name`.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let out = Command::new("find").args(["/sys/fs/cgroup", "-maxdepth", "8", "-type", "d", "-name", name]).output().unwrap();
    stdout(&out).lines().map(PathBuf::from).collect()
}

/// Kill and thaw what is left in `dirs`, and remove them; returns what was left.
fn reap_leftovers(dirs: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for dir in dirs {
        for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            left.push(format!("pid {pid} in {} ({})", dir.display(), std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default().trim()));
            if let Ok(p) = pid.parse::<i32>() {
                // SAFETY: SIGKILL to a process of this test's sandbox cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    }
    std::thread::sleep(Duration::from_millis(500));
    for dir in dirs {
        if std::fs::remove_dir(dir).is_ok() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    left
}

#[test]
fn a_daemon_stopped_while_a_sandbox_is_frozen_leaves_nothing_behind() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f, "", "");
    let l = d.launch_script("a", &format!("exec {bin} __probe serve \"$1\"\n", bin = bin()));
    let (id, sandbox) = (l["id"].as_str().unwrap().to_string(), l["sandbox"].as_str().unwrap_or("").to_string());
    let listed: serde_json::Value = serde_json::from_str(&ok(&d.ctl(&["list", "--json"]))).unwrap();
    let sandbox = if sandbox.is_empty() { listed[0]["sandbox"].as_str().unwrap().to_string() } else { sandbox };
    let out = ok(&d.ctl(&["freeze", &id]));
    eprintln!("frozen: {out}");
    let dirs = cgroup_dirs(&sandbox);
    assert!(!dirs.is_empty(), "no cgroup named {sandbox}");
    // The daemon is stopped (a restart, a shutdown) while the sandbox is frozen.
    let mut child = d.child.take().unwrap();
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(500));
    let left = reap_leftovers(&dirs);
    assert!(
        left.is_empty(),
        "the daemon exited ({:?} after SIGTERM) and left the frozen sandbox {sandbox} behind: {left:?}\n{}\n{}",
        t.elapsed(),
        std::fs::read_to_string(&d.audit).unwrap_or_default().lines().rev().take(3).collect::<Vec<_>>().join("\n"),
        d.daemon_log()
    );
}

#[test]
fn another_uid_cannot_read_the_events_of_a_sandbox_that_is_gone() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "", &format!("socket_group = {OWNER}\nallowed_uids = [0, {TENANT}]\n"));
    // Root's sandbox.
    let l = d.launch_script("a", &format!("exec {bin} __probe serve \"$1\"\n", bin = bin()));
    let id = l["id"].as_str().unwrap().to_string();
    // While it runs, the tenant is told it does not exist.
    let out = d.ctl_as(TENANT, &["events", &id, "--json"]);
    assert!(!out.status.success(), "the tenant read a running sandbox's events: {}", stdout(&out));
    ok(&d.ctl(&["stop", &id]));
    // Once it is gone: still not the tenant's.
    let out = d.ctl_as(TENANT, &["events", &id, "--json"]);
    assert!(
        !out.status.success(),
        "another uid read the events of root's stopped sandbox {id}: {}",
        stdout(&out).lines().take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_daemon_survives_sighup_and_shuts_down_cleanly_on_sigterm() {
    let f = Fixture::new();
    let mut d = Daemon::start(&f, "", "");
    let l = d.launch_script("a", &format!("exec {bin} __probe serve \"$1\"\n", bin = bin()));
    assert!(l["id"].is_string());
    let mut child = d.child.take().unwrap();
    // SIGHUP reopens the audit log (logrotate); the daemon keeps serving.
    // SAFETY: SIGHUP to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    let alive = child.try_wait().unwrap();
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let events: Vec<String> = std::fs::read_to_string(&d.audit).unwrap_or_default().lines().map(str::to_string).collect();
    assert!(
        alive.is_none(),
        "the daemon died of SIGHUP ({alive:?}): the denials reader thread does not block the signals the daemon reads from its signalfd"
    );
    assert!(
        events.iter().any(|e| e.contains("\"server_shutdown\"")),
        "the daemon ended ({status:?}) on SIGTERM without its shutdown: {}",
        events.last().unwrap()
    );
}

#[test]
fn a_local_user_refused_at_a_sandbox_s_port_cannot_trip_its_tripwires() {
    let f = Fixture::new();
    // "Any five denials within a minute: kill it" (a rule on the sandbox's own behaviour).
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"noisy\"\ncount = 5\naction = \"kill\"\n", "");
    let l = d.launch_script("a", &format!("exec {bin} __probe serve \"$1\"\n", bin = bin()));
    let (id, port) = (l["id"].as_str().unwrap().to_string(), l["port"].as_u64().unwrap() as u16);
    // Another local user, not allowed in, knocks five times.
    for _ in 0..5 {
        let n = bytes_back_as(TENANT, port, "/");
        assert!(n <= 0, "the other uid was let in ({n} bytes)");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let fired = d.audit_events("tripwire");
    let killed = d.audit_events("sandbox_kill");
    assert!(fired.is_empty() && killed.is_empty(), "an outsider's refused connections tripped the sandbox's tripwire: {fired:?} {killed:?}");
    let _ = d.ctl(&["kill", &id]);
}

/// Four threads flood refused calls (keyctl) for a second while the main
/// thread lists `/` once, half a second in.
const FLOOD_THEN_LIST_ROOT: &str = "/usr/bin/python3 -c 'import ctypes, os, threading, time\nl = ctypes.CDLL(None, use_errno=True)\nstop = []\ndef flood():\n    while not stop:\n        for _ in range(1000): l.syscall(250, 0, 0, 0)\nts = [threading.Thread(target=flood) for _ in range(4)]\n[t.start() for t in ts]\ntime.sleep(0.5)\ntry: os.listdir(\"/\")\nexcept OSError: pass\ntime.sleep(0.5)\nstop.append(1)\n[t.join() for t in ts]'";

/// A payload floods refused calls so that the kernel's audit queue is full
/// when it does what a tripwire watches (its first listing of `/`): the
/// kernel drops Landlock records it cannot queue (a clean CI run: the listing
/// never arrived, the tripwire never fired). Either the record arrives and
/// is attributed, or the loss is counted and held against the flooder's
/// tripwires: the tripwire fires.
#[test]
fn a_payload_cannot_hide_a_tripwire_match_behind_a_flood_of_refused_calls() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"no-root-listing\"\nkind = \"fs\"\npath = \"/\"\naction = \"alert\"\n", "");
    // Once ready, four threads flood refused calls (keyctl) while the main
    // thread lists `/` once: the first denial of the sandbox's Landlock
    // domain, whose two records (access, then domain) other records now
    // separate.
    let script = format!("{bin} __probe serve \"$1\" &\nsleep 2\n{FLOOD_THEN_LIST_ROOT}\nwait\n", bin = bin());
    let l = d.launch_script("a", &script);
    let id = l["id"].as_str().unwrap().to_string();
    let denials = || d.raw(&format!("{{\"cmd\":\"denials\",\"id\":\"{id}\"}}"));
    std::thread::sleep(Duration::from_secs(5));
    let r = denials();
    let fs: Vec<&serde_json::Value> = r["denials"].as_array().unwrap().iter().filter(|x| x["kind"] == "fs").collect();
    let keyctl: u64 = r["denials"].as_array().unwrap().iter().filter(|x| x["detail"] == "keyctl").map(|x| x["count"].as_u64().unwrap()).sum();
    let lost = d.audit_events("denials_lost");
    eprintln!("keyctl {keyctl}, fs {fs:?}, unattributed {}, kernel_lost {}, losses {lost:?}", r["unattributed"], r["kernel_lost"]);
    assert!(keyctl > 0, "the flood did not run: {r}");
    let fired = d.audit_events("tripwire");
    assert!(
        !fired.is_empty(),
        "the listing of / was hidden by the flood (fs: {fs:?}; unattributed {}; kernel_lost {}; losses {lost:?}): the tripwire on it never fired",
        r["unattributed"],
        r["kernel_lost"]
    );
    if fs.is_empty() {
        // The record was lost: the loss names the flooder.
        assert!(
            lost.iter().any(|e| e["flooders"].as_array().is_some_and(|a| a.iter().any(|x| x == id.as_str()))),
            "a loss fired the tripwire without naming the sandbox: {lost:?} {fired:?}"
        );
    }
    let _ = d.ctl(&["kill", &id]);
}

/// A payload floods refused calls from its first instant, before its
/// sandbox is ready (the daemon knows its uid only then), and lists `/` in
/// the flood: a loss blamed on a uid nobody owned yet was blamed on nobody
/// (a red team hid the listing in 4 of 6 runs). The loss now waits for the
/// uid and fires the sandbox's tripwires when it registers.
#[test]
fn a_payload_cannot_hide_a_tripwire_match_in_a_flood_made_before_it_is_ready() {
    let f = Fixture::new();
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"no-root-listing\"\nkind = \"fs\"\npath = \"/\"\naction = \"alert\"\n", "");
    let script = format!("{FLOOD_THEN_LIST_ROOT}\nexec {bin} __probe serve \"$1\"\n", bin = bin());
    let l = d.launch_script("a", &script);
    let id = l["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let r = d.raw(&format!("{{\"cmd\":\"denials\",\"id\":\"{id}\"}}"));
    let fs: Vec<&serde_json::Value> = r["denials"].as_array().unwrap().iter().filter(|x| x["kind"] == "fs").collect();
    let lost = d.audit_events("denials_lost");
    eprintln!("fs {fs:?}, kernel_lost {}, losses {lost:?}", r["kernel_lost"]);
    let fired = d.audit_events("tripwire");
    assert!(
        fired.iter().any(|e| e["id"] == id.as_str()),
        "the listing of / was hidden by a flood made before the sandbox was ready (fs: {fs:?}; kernel_lost {}; losses {lost:?})",
        r["kernel_lost"]
    );
    let _ = d.ctl(&["kill", &id]);
}

/// An innocent sandbox with a `freeze` tripwire on /etc/shadow makes a
/// refused call every `period` seconds while uid TENANT runs `program` (a
/// Python program toggling promiscuous mode of `lo` in a user and network
/// namespace of its own: records nobody counts) in three processes. Returns
/// the `tripwire`, `sandbox_freeze` and `denials_lost` events.
fn innocent_sandbox_beside_another_users_audit_records(period: &str, program: &str, args: &[&str]) -> [Vec<serde_json::Value>; 3] {
    let f = Fixture::new();
    let d = Daemon::start(&f, "[[tripwire]]\nname = \"no-shadow\"\nkind = \"fs\"\npath = \"/etc/shadow\"\naction = \"freeze\"\n", "");
    let script = format!(
        "{bin} __probe serve \"$1\" &\n/usr/bin/python3 -c 'import ctypes, time\nl = ctypes.CDLL(None, use_errno=True)\nwhile True:\n    l.syscall(250, 0, 0, 0)\n    time.sleep({period})' &\nwait\n",
        bin = bin()
    );
    let l = d.launch_script("a", &script);
    let id = l["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let uid = TENANT.to_string();
    let others: Vec<std::process::Child> = (0..3)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "unshare", "-rn", "/usr/bin/python3", "-c", program])
                .args(args)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in others {
        assert!(c.wait().unwrap().success(), "the other user's records did not come");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let r = d.raw(&format!("{{\"cmd\":\"denials\",\"id\":\"{id}\"}}"));
    let lost = d.audit_events("denials_lost");
    eprintln!("kernel_lost {}, losses {lost:?}", r["kernel_lost"]);
    let events = [d.audit_events("tripwire"), d.audit_events("sandbox_freeze"), lost];
    let _ = d.ctl(&["kill", &id]);
    events
}

/// Another local user fills the kernel's audit queue with records of a type
/// nobody counts (promiscuous-mode toggles of `lo` in a network namespace of
/// its own) while an innocent sandbox makes a refused call every 20 ms: the
/// loss was blamed on the only sandbox whose records were counted, and its
/// `freeze` tripwire froze it (a red team's). Shares are of every record.
#[test]
fn another_local_user_s_audit_flood_does_not_fire_an_innocent_sandbox_s_tripwires() {
    let promisc = "import fcntl, socket, struct, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0))[:18])[1]\n    fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', flags ^ 0x100))\n";
    let [fired, frozen, lost] = innocent_sandbox_beside_another_users_audit_records("0.02", promisc, &["2"]);
    assert!(fired.is_empty() && frozen.is_empty(), "another user's flood fired the innocent sandbox's tripwire: {fired:?} {frozen:?}");
    assert!(!lost.iter().any(|e| e["flooders"].as_array().is_some_and(|a| !a.is_empty())), "a sandbox was blamed: {lost:?}");
}

/// The same as a short burst: another local user overflows the kernel's
/// queue with a few dozen uncounted records every half second while an
/// innocent sandbox makes a refused call every 5 ms. The lost records were
/// the burst's, never received, so the innocent one made most of what was
/// received around each loss and was frozen (a red team's, in every run
/// with a loss). A flooder must now flood: over 2,000 records a second.
#[test]
fn another_local_user_s_short_bursts_do_not_fire_a_noisy_innocent_sandbox_s_tripwires() {
    let burst = "import fcntl, socket, struct, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 6\nwhile time.time() < end:\n    for _ in range(40):\n        flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0))[:18])[1]\n        fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', flags ^ 0x100))\n    time.sleep(0.5)\n";
    let [fired, frozen, _] = innocent_sandbox_beside_another_users_audit_records("0.005", burst, &[]);
    assert!(fired.is_empty() && frozen.is_empty(), "another user's bursts fired the innocent sandbox's tripwire: {fired:?} {frozen:?}");
}
