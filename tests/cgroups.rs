//! Cgroup limits on real sandboxes, each test bounded in size and time: memory
//! (OOM kill reported), processes (a fork bomb stops at pids.max), CPU (quota
//! read back from the cgroup's own accounting), teardown and stale-cgroup gc.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn cgroup_dir(ready: &serde_json::Value, needle: &str) -> PathBuf {
    ready["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .find(|p| p.to_string_lossy().contains(needle))
        .unwrap_or_else(|| panic!("no {needle} cgroup in {ready}"))
}

fn read_u64(p: &Path, key: Option<&str>) -> u64 {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match key {
        None => text.trim().parse().unwrap(),
        Some(k) => text.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse().unwrap())).unwrap_or(0),
    }
}

#[test]
fn memory_beyond_the_limit_is_oom_killed_and_reported() {
    let f = Fixture::new();
    let out = f.run(&["--memory", "256M", "--ro", &bin_dir()], &[bin(), "__probe", "alloc", "768"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("swarmcell: sandbox sc-") && l.ends_with("killed: out of memory, limit 256M")), "{err}");
    let last: usize = err.lines().filter_map(|l| l.strip_prefix("allocated ")?.strip_suffix(" MiB")?.parse().ok()).max().unwrap_or(0);
    assert!((128..=256).contains(&last), "allocated {last} MiB before the kill");
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let f = Fixture::new();
    // The bomb runs for at most 2 s (the payload waits on a sleep started first).
    let script = "sleep 2 & s=$!; bomb() { bomb & bomb; }; bomb 2>/dev/null & wait $s";
    let (mut child, ready) = f.spawn(&["--pids", "64"], &["/bin/sh", "-c", script]);
    let info = ready_line(&ready);
    let dir = cgroup_dir(&info, "pids");
    let (mut peak, mut refused) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        peak = peak.max(read_u64(&dir.join("pids.current"), None));
        refused = read_u64(&dir.join("pids.events"), Some("max "));
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait();
    assert_no_sandbox_left();
    assert!(peak <= 64, "pids.current reached {peak}");
    // The kernel counts every fork it refused at pids.max: the bomb hit the limit.
    assert!(refused > 0, "no fork was refused at the limit (peak seen {peak})");
    assert!(status.code().is_some(), "{status:?}");
}

#[test]
fn a_busy_loop_gets_at_most_its_cpu_quota() {
    let f = Fixture::new();
    let (mut child, ready) = f.spawn(&["--cpu", "0.5"], &["/bin/sh", "-c", "while :; do :; done"]);
    let info = ready_line(&ready);
    // cgroup v1 accounts CPU time in cpuacct.usage (ns), v2 in cpu.stat (µs).
    let usage = |dirs: &serde_json::Value| -> Duration {
        match dirs["cgroups"].as_array().unwrap().len() {
            1 => Duration::from_micros(read_u64(&cgroup_dir(dirs, "sc-").join("cpu.stat"), Some("usage_usec "))),
            _ => Duration::from_nanos(read_u64(&cgroup_dir(dirs, "cpuacct/").join("cpuacct.usage"), None)),
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let (u0, t0) = (usage(&info), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (u1, t1) = (usage(&info), Instant::now());
    child.sigterm();
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
    let rate = (u1 - u0).as_secs_f64() / (t1 - t0).as_secs_f64();
    assert!(rate <= 0.6, "the busy loop used {rate:.2} CPU-seconds per second under cpu = 0.5");
    assert!(rate >= 0.3, "the busy loop hardly ran ({rate:.2}); the measurement is not meaningful");
}

#[test]
fn kill_9_of_the_launcher_leaves_no_sandbox_process_and_gc_removes_its_cgroup() {
    let f = Fixture::new();
    let (mut child, ready) = f.spawn(&[], &["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"]);
    let info = ready_line(&ready);
    let dirs: Vec<PathBuf> = info["cgroups"].as_array().unwrap().iter().map(|p| PathBuf::from(p.as_str().unwrap())).collect();
    child.sigkill();
    child.wait();
    // The init's parent-death signal ends the whole PID namespace.
    let start = Instant::now();
    while dirs.iter().any(|d| std::fs::read_to_string(d.join("cgroup.procs")).map(|s| !s.trim().is_empty()).unwrap_or(false)) {
        assert!(start.elapsed() < Duration::from_secs(3), "sandbox processes outlived their launcher");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(dirs.iter().all(|d| d.is_dir()), "the stale cgroup is still there until gc");
    let out = std::process::Command::new(bin()).arg("gc").output().unwrap();
    assert!(ok(&out).contains(&format!("removed stale cgroup of {}", info["id"].as_str().unwrap())), "{}", stdout(&out));
    assert_no_sandbox_left();
}

#[test]
fn the_next_start_removes_a_stale_cgroup_by_itself() {
    let f = Fixture::new();
    let (mut child, ready) = f.spawn(&[], &["/bin/sleep", "60"]);
    let info = ready_line(&ready);
    child.sigkill();
    child.wait();
    let stale = cgroup_dir(&info, "pids");
    let start = Instant::now();
    while std::fs::read_to_string(stale.join("cgroup.procs")).map(|s| !s.trim().is_empty()).unwrap_or(false) {
        assert!(start.elapsed() < Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(10));
    }
    ok(&f.run(&[], &["/bin/true"]));
    assert!(!stale.exists(), "the next launch did not remove {}", stale.display());
}

#[test]
fn limit_flags_are_validated() {
    let f = Fixture::new();
    for (flag, value, needle) in [("--memory", "12Q", "--memory: invalid size"), ("--pids", "0", "--pids:"), ("--cpu", "0", "--cpu:")] {
        let out = f.run(&[flag, value], &["/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{flag} {value}");
        assert!(stderr(&out).contains(needle), "{flag} {value}: {}", stderr(&out));
    }
    let out = f.run(&["--cgroup-parent", "../x"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
}

/// Init joins its cgroups itself on v1 (the launcher's `tasks` files, written
/// between clone and exec): it and the payload are in every one of the
/// sandbox's cgroups, in all processes and threads, before anything runs.
#[test]
fn the_init_and_the_payload_are_in_every_one_of_the_sandboxes_cgroups() {
    let f = Fixture::new();
    let (mut child, ready) = f.spawn(&[], &["/bin/sh", "-c", "sleep 60 & wait"]);
    let info = ready_line(&ready);
    let init = info["pid"].as_u64().unwrap().to_string();
    let dirs: Vec<PathBuf> = info["cgroups"].as_array().unwrap().iter().map(|p| PathBuf::from(p.as_str().unwrap())).collect();
    assert!(!dirs.is_empty());
    for d in &dirs {
        // Both files list it: the process (cgroup.procs) and its one thread
        // (tasks). The shell forks `sleep` on its own time after the ready
        // line: wait for it (a loaded host may take a moment).
        let start = std::time::Instant::now();
        let mut procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        while procs.split_whitespace().count() < 3 && start.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        }
        let ids: Vec<&str> = procs.split_whitespace().collect();
        assert!(ids.contains(&init.as_str()), "init {init} not in {}: {procs:?}", d.display());
        assert!(ids.len() >= 3, "init, sh and sleep expected in {}: {procs:?}", d.display());
        if dirs.len() > 1 {
            let tasks = std::fs::read_to_string(d.join("tasks")).unwrap();
            assert!(tasks.split_whitespace().any(|t| t == init), "init {init} not in {}/tasks", d.display());
        }
    }
    child.sigterm();
    child.wait();
    assert_no_sandbox_left();
}

/// The incident freezer on cgroup v2 (`cgroup.freeze`, `cgroup.kill`): this
/// host's sandboxes use v1 (the unified hierarchy has no controllers), so the
/// v2 path is exercised on a cgroup of its own in the unified hierarchy,
/// inside swarmcell's subtree, with a process that writes a tick every 10 ms:
/// frozen, it writes nothing; thawed, it writes again; killed, it is gone.
#[test]
fn a_v2_freeze_stops_every_process_thaw_resumes_it_and_kill_ends_it() {
    require_root();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let unified = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ").then(|| pre.split(' ').nth(4).map(PathBuf::from))?
    });
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap().lines().find_map(|l| l.strip_prefix("0::").map(str::to_string));
    let (Some(unified), Some(own)) = (unified, own) else {
        assert!(std::env::var("CI").is_err(), "CI=true: no cgroup v2 hierarchy mounted, the v2 freezer cannot be tested");
        eprintln!("SKIP: no cgroup v2 hierarchy");
        return;
    };
    let parent = unified.join(own.trim_start_matches('/')).join("swarmcell");
    let made_parent = !parent.exists();
    std::fs::create_dir_all(&parent).unwrap();
    let dir = parent.join(format!("freeze-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    /// Whatever happens: nothing left in the cgroup, and the cgroup removed.
    struct Removed(PathBuf, bool);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
            for _ in 0..500 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.1 {
                let _ = std::fs::remove_dir(self.0.parent().unwrap());
            }
        }
    }
    let _removed = Removed(dir.clone(), made_parent);
    let f = Fixture::new();
    let ticks = f.dir.join("ticks");
    let mut child =
        std::process::Command::new("/bin/sh").arg("-c").arg(format!("while :; do echo x >> {}; sleep 0.01; done", ticks.display())).spawn().unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    let grows = || {
        let a = size();
        std::thread::sleep(Duration::from_millis(300));
        size() > a
    };
    assert!(grows(), "the process does not tick before the freeze");
    let cgroups = [dir.clone()];
    swarmcell::incident::freezer::set(&cgroups, true).unwrap();
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap();
    assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    assert!(!grows(), "a frozen process kept writing");
    swarmcell::incident::freezer::set(&cgroups, false).unwrap();
    assert!(grows(), "the thawed process does not tick again");
    swarmcell::incident::freezer::set(&cgroups, true).unwrap();
    // The shell, and its `sleep` when one runs.
    let listed = swarmcell::incident::freezer::pids(&cgroups).len();
    assert!(listed >= 1);
    assert_eq!(swarmcell::incident::freezer::kill(&cgroups), listed, "every process is signalled and counted");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(5), "the frozen process survived the kill");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The shell's `sleep`s went with it (cgroup.kill); the cgroup empties.
    while !std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "processes left in {}", dir.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}
