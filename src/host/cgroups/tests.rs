//! cgroup code against fake cgroupfs trees in a temporary directory: the pure v2
//! paths (which this hybrid development machine cannot run) and detection.

use super::*;

struct TempTree(PathBuf);

impl TempTree {
    fn new(tag: &str) -> TempTree {
        let p = std::env::temp_dir().join(format!("swarmcell-cgtest-{tag}-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir_all(&p).unwrap();
        TempTree(p)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HYBRID_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 29 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
31 29 0:27 / /sys/fs/cgroup/cpu rw,nosuid shared:10 - cgroup cgroup rw,cpu
32 29 0:28 / /sys/fs/cgroup/cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpuacct
33 29 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
34 29 0:30 / /sys/fs/cgroup/freezer rw,nosuid shared:13 - cgroup cgroup rw,freezer
35 29 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:14 - cgroup cgroup rw,pids
";

const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

fn limits() -> Limits {
    Limits { memory: Some(256 << 20), swap: Some(0), pids: Some(64), cpu: Some(0.5) }
}

fn slurp(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_hybrid_host_uses_v1_with_each_controller_at_its_own_cgroup() {
    let layout = Layout::detect_from(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
    let Layout::V1 { memory, pids, cpu, cpuacct, freezer } = &layout else { panic!("{layout:?}") };
    assert_eq!(memory.own_dir(), PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"));
    assert_eq!(pids.own_dir(), PathBuf::from("/sys/fs/cgroup/pids"));
    assert_eq!(cpu.mount, PathBuf::from("/sys/fs/cgroup/cpu"));
    assert!(cpuacct.is_some() && freezer.is_some());
    let parents: Vec<PathBuf> = layout.parent_dirs("swarmcell").into_iter().map(|(_, d)| d).collect();
    assert!(parents.contains(&PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/swarmcell")));
    assert!(parents.iter().all(|p| p.ends_with("swarmcell") && p.parent().unwrap() != Path::new("/sys/fs/cgroup")), "never a hierarchy root");
}

#[test]
fn a_v2_host_with_delegated_controllers_uses_v2_and_honours_the_mount_root() {
    let t = TempTree::new("detect");
    let own = t.0.join("service");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    let mountinfo = format!("40 1 0:26 /system.slice {} rw - cgroup2 cgroup2 rw\n", t.0.display());
    let layout = Layout::detect_from(&mountinfo, "0::/system.slice/service\n").unwrap();
    assert_eq!(layout.version(), 2);
    let Layout::V2(h) = &layout else { unreachable!() };
    assert_eq!(h.own_dir(), own);
    // Without the controllers, and no v1 hierarchies: a clear refusal.
    std::fs::write(own.join("cgroup.controllers"), "cpu io\n").unwrap();
    let e = Layout::detect_from(&mountinfo, "0::/system.slice/service\n").unwrap_err().to_string();
    assert!(e.contains("Delegate=yes"), "{e}");
}

#[test]
fn v2_create_delegates_applies_limits_and_tracks_processes() {
    let t = TempTree::new("v2");
    let own = t.0.join("svc");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    std::fs::write(own.join("cgroup.subtree_control"), "").unwrap();
    let layout = Layout::V2(Hierarchy { mount: t.0.clone(), mount_root: "/".into(), own: "/svc".into() });
    let mut cg = create(&layout, "swarmcell", "sc-test1", &limits()).unwrap();
    assert_eq!(slurp(&own.join("cgroup.subtree_control")), "+memory +pids +cpu");
    let dir = own.join("swarmcell/sc-test1");
    assert_eq!(slurp(&own.join("swarmcell/cgroup.subtree_control")), "+memory +pids +cpu");
    assert_eq!(slurp(&dir.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(slurp(&dir.join("memory.swap.max")), "0");
    assert_eq!(slurp(&dir.join("memory.oom.group")), "1");
    assert_eq!(slurp(&dir.join("pids.max")), "64");
    assert_eq!(slurp(&dir.join("cpu.max")), "50000 100000");
    cg.add_process(4321).unwrap();
    assert_eq!(slurp(&dir.join("cgroup.procs")), "4321");
    std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n").unwrap();
    assert_eq!(cg.oom_kills(), 1);

    // cgroup.kill is written while the cgroup is populated; the fake "kernel"
    // empties it when it sees the write.
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    let watcher = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                if dir.join("cgroup.kill").exists() {
                    std::fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
                    std::fs::write(dir.join("cgroup.procs"), "").unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    v2::kill(&dir).unwrap();
    assert!(watcher.join().unwrap(), "cgroup.kill was written");
    assert_eq!(slurp(&dir.join("cgroup.kill")), "1");
    cg.removed = true; // a fake tree's directories hold regular files: rmdir is the kernel's job
}

#[test]
fn v2_delegation_failure_names_the_file() {
    // (A fake tree cannot return EBUSY, so the move into a leaf is not covered
    // here.) A failing write is reported with the file it concerns.
    let t = TempTree::new("v2busy");
    let own = t.0.join("svc");
    std::fs::create_dir_all(own.join("cgroup.subtree_control")).unwrap(); // a directory: writing fails
    std::fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let h = Hierarchy { mount: t.0.clone(), mount_root: "/".into(), own: "/svc".into() };
    let e = v2::ensure_parent(&h, "swarmcell").unwrap_err().to_string();
    assert!(e.contains("cgroup.subtree_control"), "{e}");
}

#[test]
fn v1_limits_are_written_per_hierarchy() {
    let t = TempTree::new("v1");
    let h = |name: &str| Hierarchy { mount: t.0.join(name), mount_root: "/".into(), own: "/".into() };
    for n in ["memory", "pids", "cpu"] {
        std::fs::create_dir_all(t.0.join(n)).unwrap();
    }
    let layout = Layout::V1 { memory: h("memory"), pids: h("pids"), cpu: h("cpu"), cpuacct: None, freezer: None };
    let mut cg = create(&layout, "swarmcell", "sc-test2", &limits()).unwrap();
    let dir = |n: &str| t.0.join(n).join("swarmcell/sc-test2");
    assert_eq!(slurp(&dir("memory").join("memory.limit_in_bytes")), (256u64 << 20).to_string());
    assert_eq!(slurp(&dir("memory").join("memory.swappiness")), "0");
    assert_eq!(slurp(&dir("pids").join("pids.max")), "64");
    assert_eq!(slurp(&dir("cpu").join("cpu.cfs_quota_us")), "50000");
    assert_eq!(slurp(&dir("cpu").join("cpu.cfs_period_us")), "100000");
    std::fs::write(dir("memory").join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
    assert_eq!(cg.oom_kills(), 3);
    let unlimited = Limits { memory: None, swap: None, pids: None, cpu: None };
    let _other = create(&layout, "swarmcell", "sc-test3", &unlimited).map(|mut c| c.removed = true);
    assert_eq!(slurp(&t.0.join("memory/swarmcell/sc-test3/memory.limit_in_bytes")), "-1");
    assert_eq!(slurp(&t.0.join("cpu/swarmcell/sc-test3/cpu.cfs_quota_us")), "-1");
    cg.removed = true;
}

#[test]
fn names_gc_may_touch_are_sandbox_ids_only() {
    assert!(is_sandbox_name("sc-0123abcd4567"));
    for bad in ["supervisor", "sc-", "sc-../x", "SC-1", "user.slice", "sc-0123abcd456", "sc-0123abcd456g"] {
        assert!(!is_sandbox_name(bad), "{bad}");
    }
    assert!(valid_parent_name("swarmcell"));
    for bad in ["", ".", "..", "a/b", "x y"] {
        assert!(!valid_parent_name(bad), "{bad:?}");
    }
}

#[test]
fn mountinfo_escapes_are_decoded() {
    let m = parse_mountinfo("1 0 0:1 / /sys/fs/cgroup/my\\040mount rw - cgroup cgroup rw,pids\n");
    assert_eq!(m[0].0, PathBuf::from("/sys/fs/cgroup/my mount"));
}
