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
