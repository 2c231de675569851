//! `swarmcell verify` holds on this machine and each sampled check can fail;
//! `swarmcell inspect` reports what /proc says about a running sandbox.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn verify(policy: Option<&std::path::Path>) -> (i32, serde_json::Value) {
    let mut c = std::process::Command::new(bin());
    c.args(["verify", "--json"]);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    let out = c.output().unwrap();
    assert_no_sandbox_left();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap_or(-1), v)
}

fn status<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name:?}"))["status"].as_str().unwrap()
}

#[test]
fn verify_reports_no_escape_with_at_least_forty_checks() {
    require_root();
    let (code, r) = verify(None);
    let s = &r["summary"];
    assert_eq!(s["escaped"], 0, "{r:#}");
    assert_eq!(s["broken"], 0, "{r:#}");
    assert!(s["ok"].as_u64().unwrap() >= 5, "function checks: {s}");
    assert!(s["total"].as_u64().unwrap() >= 40, "{s}");
    assert_eq!(code, 0);
    // An agent's own test servers work on any port of the sandbox's loopback.
    for name in ["loopback tcp 127.0.0.1:0", "loopback tcp 127.0.0.1:8080", "loopback tcp [::1]:0", "loopback udp [::1]"] {
        assert_eq!(status(&r, name), "ok", "{name}");
    }
    // The default broker's handed-off connections, turned against the host.
    let broker: Vec<&serde_json::Value> =
        r["checks"].as_array().unwrap().iter().filter(|c| c["name"].as_str().unwrap().starts_with("broker: ")).collect();
    assert_eq!(broker.len(), 5, "{broker:?}");
    assert!(broker.iter().all(|c| c["status"] == "blocked"), "{broker:?}");
    for c in r["checks"].as_array().unwrap() {
        assert!(["blocked", "ESCAPED", "not_applicable", "ok", "BROKEN"].contains(&c["status"].as_str().unwrap()), "{c}");
        assert!(c["name"].is_string() && c["detail"].is_string());
    }
    // The host-side git checks (issue #14): each attack planted and blocked.
    let git: Vec<&serde_json::Value> = r["checks"].as_array().unwrap().iter().filter(|c| c["name"].as_str().unwrap().starts_with("git: ")).collect();
    assert_eq!(git.len(), 8, "{git:#?}");
    assert_eq!(git.iter().filter(|c| c["status"] == "blocked").count(), 7, "{git:#?}");
    assert!(git.iter().any(|c| c["status"] == "ok" && c["name"] == "git: an agent's commit is published"), "{git:#?}");
    assert!(r["kernel"]["landlock_abi"].is_number() && r["kernel"]["cgroups"].is_string() && r["kernel"]["seccomp"].is_string());
    // The host-facing side: another local user on the port, a redirecting health answer.
    assert_eq!(status(&r, "reach the sandbox's port as another local user"), "blocked");
    assert_eq!(status(&r, "root reaches the sandbox's port"), "ok");
    assert_eq!(status(&r, "make the health check follow a redirect to the host"), "blocked");
}

#[test]
fn weakened_policies_make_sampled_checks_report_escaped() {
    let f = Fixture::new();
    let policy = |name: &str, text: &str| {
        let p = f.dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    // No seccomp rules.
    let (code, r) = verify(Some(&policy("no-seccomp.toml", "[seccomp]\ndeny = []\n")));
    assert_eq!(code, 1, "verify must fail when something escaped");
    let sampled = [
        "syscall unshare(CLONE_NEWUSER)",
        "syscall clone(CLONE_NEWUSER)",
        "syscall clone3",
        "syscall open_tree(/tmp)",
        "syscall userfaultfd(USER_MODE_ONLY)",
        "syscall ptrace(TRACEME)",
        "syscall process_vm_readv(self, empty)",
        "syscall personality(PER_LINUX32)",
        "syscall socket(AF_NETLINK, NETLINK_AUDIT)",
        "syscall io_uring_setup(NULL)",
        "syscall keyctl(GET_KEYRING_ID)",
        "syscall perf_event_open(NULL)",
    ];
    for name in sampled {
        assert_eq!(status(&r, name), "ESCAPED", "{name}");
    }
    // No Landlock.
    let (_, r) = verify(Some(&policy("no-landlock.toml", "landlock = \"off\"\n")));
    assert_eq!(status(&r, "signal the sandbox's init"), "ESCAPED");
    // An extra bind mount of a host directory.
    assert!(std::path::Path::new("/home").is_dir(), "this check needs the host's /home");
    let (_, r) = verify(Some(&policy("extra-mount.toml", "[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/home\"]\n")));
    assert_eq!(status(&r, "list /home"), "ESCAPED");
}

#[test]
fn inspect_reports_what_proc_shows_for_a_running_sandbox() {
    let f = Fixture::new();
    let (child, ready) = f.spawn(&["--pids", "77"], &["/bin/sleep", "30"]);
    let info = ready_line(&ready);
    let (id, init) = (info["id"].as_str().unwrap().to_string(), info["pid"].as_i64().unwrap());
    let inspect = |target: &str| -> serde_json::Value {
        let out = std::process::Command::new(bin()).args(["inspect", "--json", target]).output().unwrap();
        serde_json::from_str(&ok(&out)).unwrap()
    };
    let by_id = inspect(&id);
    let by_pid = inspect(&init.to_string());
    for key in ["id", "init_pid", "payload_pid", "namespaces", "uid_map", "gid_map", "capabilities", "seccomp", "mounts"] {
        assert_eq!(by_id[key], by_pid[key], "{key}");
    }
    let payload = by_id["payload_pid"].as_i64().unwrap();
    assert_eq!(by_id["init_pid"], init);
    let read = |p: String| std::fs::read_to_string(p).unwrap();
    for ns in by_id["namespaces"].as_array().unwrap() {
        let t = ns["type"].as_str().unwrap();
        let want = std::fs::read_link(format!("/proc/{payload}/ns/{t}")).unwrap().display().to_string();
        assert_eq!(ns["sandbox"], want.as_str(), "{t}");
        assert_eq!(ns["isolated"], true, "{t}");
        assert_eq!(ns["host"], std::fs::read_link(format!("/proc/self/ns/{t}")).unwrap().display().to_string().as_str());
    }
    assert_eq!(by_id["uid_map"], read(format!("/proc/{payload}/uid_map")).trim());
    let status = read(format!("/proc/{payload}/status"));
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(&format!("{k}:")).map(|v| v.trim().to_string())).unwrap();
    assert_eq!(by_id["capabilities"]["effective"], field("CapEff").as_str());
    assert_eq!(by_id["capabilities"]["bounding"], field("CapBnd").as_str());
    assert_eq!(by_id["no_new_privs"], field("NoNewPrivs").as_str());
    assert_eq!(by_id["seccomp"]["mode"], field("Seccomp").as_str());
    let pids = by_id["cgroups"].as_array().unwrap().iter().find(|c| c["files"].get("pids.max").is_some()).expect("pids cgroup");
    assert_eq!(pids["files"]["pids.max"], "77");
    assert!(by_id["mounts"].as_array().unwrap().iter().any(|m| m["target"] == f.worktree.to_str().unwrap()));
    assert_eq!(by_id["interfaces"], serde_json::json!(["lo"]));
    let out = std::process::Command::new(bin()).args(["inspect", "sc-000000000000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let mut child = child;
    child.sigterm();
    child.wait();
    assert_no_sandbox_left();
}
