//! Landlock and seccomp, seen from inside a real sandbox: every refused call
//! fails with its intended errno, and a weakened test policy shows that the
//! filters (not something else) are what refuse them.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// A policy file under the fixture (mode 0600) with the given TOML.
fn policy(f: &Fixture, name: &str, toml: &str) -> String {
    let p = f.dir.join(name);
    std::fs::write(&p, toml).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_string_lossy().into_owned()
}

/// `swarmcell __probe ARGS` inside a sandbox; lines of `NAME STATUS DETAIL`.
fn probe(f: &Fixture, extra: &[&str], args: &[&str]) -> Vec<(String, String, String)> {
    let dir = bin_dir();
    let mut all: Vec<&str> = vec!["--ro", &dir];
    all.extend_from_slice(extra);
    let mut cmd = vec![bin(), "__probe"];
    cmd.extend_from_slice(args);
    let out = f.run(&all, &cmd);
    assert!(out.status.code().is_some_and(|c| c <= 1), "probe failed to run: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            // Names may contain spaces; the status is the first known word after them.
            let words: Vec<&str> = l.split(' ').collect();
            let i =
                words.iter().position(|w| ["blocked", "ESCAPED", "other", "ok", "BROKEN"].contains(w)).unwrap_or_else(|| panic!("bad line {l:?}"));
            (words[..i].join(" "), words[i].to_string(), words[i + 1..].join(" "))
        })
        .collect()
}

fn status_of<'a>(lines: &'a [(String, String, String)], name: &str) -> &'a str {
    &lines.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no probe line {name}")).1
}

#[test]
fn seccomp_refuses_every_listed_call_with_the_intended_errno() {
    let f = Fixture::new();
    let lines = probe(&f, &[], &["seccomp"]);
    let bad: Vec<_> = lines.iter().filter(|(_, s, _)| s != "blocked" && s != "ok").collect();
    assert!(bad.is_empty(), "not refused as intended: {bad:#?}");
    let blocked = lines.iter().filter(|(_, s, _)| s == "blocked").count();
    assert!(blocked >= 55, "only {blocked} refused calls checked");
    assert_eq!(status_of(&lines, "clone3"), "blocked");
    assert!(lines.iter().any(|(n, _, d)| n == "clone3" && d.starts_with("ENOSYS")));
    assert!(lines.iter().filter(|(_, s, _)| s == "ok").count() >= 6, "what must keep working was checked");
}

#[test]
fn the_filters_are_what_refuse_the_calls() {
    let f = Fixture::new();
    let weak = policy(&f, "weak.toml", "landlock = \"off\"\n[seccomp]\ndeny = []\n");
    let strict = probe(&f, &[], &["seccomp"]);
    let weakened = probe(&f, &["--policy", &weak], &["seccomp"]);
    // Calls that the kernel allows an unprivileged process: only the filter stops them.
    for name in [
        "unshare(CLONE_NEWUSER)",
        "clone(CLONE_NEWUSER)",
        "clone3",
        "open_tree(/tmp)",
        "userfaultfd(USER_MODE_ONLY)",
        "ptrace(TRACEME)",
        "process_vm_readv(self, empty)",
        "personality(PER_LINUX32)",
        "socket(AF_NETLINK, NETLINK_AUDIT)",
    ] {
        assert_eq!(status_of(&strict, name), "blocked", "{name}");
        assert_eq!(status_of(&weakened, name), "ESCAPED", "{name} is refused even without the filter");
    }
    let changed = strict.iter().zip(&weakened).filter(|(a, b)| a.1 == "blocked" && b.1 != "blocked").count();
    assert!(changed >= 35, "only {changed} checks depend on the filter");
    // The architecture guard is not part of the deny list: it always holds.
    assert_eq!(status_of(&weakened, "x32 getpid"), "blocked");
    assert_eq!(status_of(&weakened, "i386 int 0x80"), "blocked");
}

#[test]
fn proc_status_shows_seccomp_filter_mode() {
    let f = Fixture::new();
    let out = ok(&f.sh(&[], "grep -E '^Seccomp(_filters)?:' /proc/self/status"));
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("Seccomp_filters:\t2"), "guard and EPERM, ENOSYS: {out}");
}

#[test]
fn landlock_refuses_a_read_of_a_mounted_path_it_has_no_rule_for() {
    let f = Fixture::new();
    // Not under /tmp: the sandbox's /tmp is read-write for Landlock as a whole.
    let out = std::process::Command::new("mktemp").args(["-d", "/var/tmp/swarmcell-test.XXXXXXXX"]).output().unwrap();
    let exposed = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(exposed.clone());
    std::fs::write(exposed.join("data.txt"), "mounted by mistake").unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = exposed.join("data.txt");
    let file = file.to_str().unwrap();
    let mistake = policy(&f, "mistake.toml", &format!("[filesystem]\nmount_only = [{:?}]\n", exposed.to_str().unwrap()));
    let lines = probe(&f, &["--policy", &mistake], &["read", file]);
    assert_eq!(lines[0].1, "blocked", "{lines:?}");
    assert!(lines[0].2.contains("Permission denied"), "{lines:?}");
    // The same mount without Landlock: the file is readable, so Landlock was the guard.
    let off = policy(&f, "off.toml", &format!("landlock = \"off\"\n[filesystem]\nmount_only = [{:?}]\n", exposed.to_str().unwrap()));
    let lines = probe(&f, &["--policy", &off], &["read", file]);
    assert_eq!(lines[0].1, "ESCAPED", "{lines:?}");
}

#[test]
fn the_sandboxs_loopback_is_its_own_any_port_tcp_udp_and_ipv6_work() {
    // An agent's test suite starts servers on ephemeral ports, 3000, 8080, IPv6
    // and UDP: in no broker mode can its sockets reach the host, so nothing on
    // its own loopback is refused (with socket handoff its accepts of other
    // ports go on in the kernel).
    let f = Fixture::new();
    for mode in ["handoff", "relay"] {
        let lines = probe(&f, &["--port", "auto", "--health", "none", "--broker", mode], &["loopback"]);
        let names: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
        for want in ["127.0.0.1:0", "127.0.0.1:3000", "127.0.0.1:8080", "tcp [::1]:0", "udp 127.0.0.1", "udp [::1]"] {
            assert!(names.iter().any(|n| n.contains(want)), "{mode}: no check for {want}: {lines:?}");
        }
        for (name, status, detail) in &lines {
            assert_eq!(status, "ok", "{mode}: {name}: {detail}");
        }
    }
    // A connection to a port of the sandbox's loopback where nothing listens is
    // refused by nobody (the kernel lets it through: there is nothing there).
    assert_eq!(probe(&f, &[], &["connect", "9999"])[0].1, "ESCAPED");
    // What the host listens on is not on that loopback.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    host.set_nonblocking(true).unwrap();
    let lines = probe(&f, &[], &["http-get", &format!("127.0.0.1:{port}/")]);
    assert_eq!(lines[0].1, "BROKEN", "{lines:?}");
    assert!(host.accept().is_err(), "the host listener got a connection from the sandbox");
}

#[test]
fn landlock_scopes_keep_signals_inside_the_payload() {
    let f = Fixture::new();
    // pid 1 is the sandbox init, outside the payload's Landlock domain.
    let out = ok(&f.sh(&[], "kill -TERM 1; echo rc=$?"));
    assert!(out.contains("rc=1"), "{out}");
    let off = policy(&f, "off.toml", "landlock = \"off\"\n");
    // Without Landlock the signal reaches init, which forwards it to the payload.
    let out = f.sh(&["--policy", &off], "kill -TERM 1; sleep 5; echo survived");
    assert_eq!(out.status.code(), Some(143), "{}", stdout(&out));
}

/// Regular files in the policy's read-only paths (/etc/ld.so.cache,
/// /etc/localtime) get a file's rights: the directory-only ones (read_dir)
/// made `landlock = "required"` refuse the shipped policy at every launch.
#[test]
fn landlock_required_accepts_the_shipped_policy() {
    let f = Fixture::new();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/opencode.toml")).unwrap();
    assert!(shipped.contains("\nlandlock = \"best-effort\"\n"));
    let required = policy(&f, "required.toml", &shipped.replace("\nlandlock = \"best-effort\"\n", "\nlandlock = \"required\"\n"));
    let out = f.sh(&["--policy", &required], "cat /etc/ld.so.cache /etc/localtime > /dev/null && echo read");
    assert_eq!(stdout(&out).trim(), "read", "{}", stderr(&out));
}

#[test]
fn policy_explain_matches_its_snapshot() {
    let out = std::process::Command::new(bin()).args(["policy", "explain"]).output().unwrap();
    let text = ok(&out);
    let snap = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/policy-explain-default.txt");
    let want = std::fs::read_to_string(&snap).expect("snapshot missing: run with UPDATE_SNAPSHOTS=1 once");
    if text != want && std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        // Accepting a change writes the new snapshot and still fails this run,
        // so a snapshot is never compared with itself.
        std::fs::write(&snap, &text).unwrap();
        panic!("snapshot updated: review `git diff {}` and run again", snap.display());
    }
    assert_eq!(text, want, "policy explain changed; review and run with UPDATE_SNAPSHOTS=1 to accept");
    for reason in ["io_uring runs operations the seccomp filter never sees", "TIOCSTI pushes input"] {
        assert!(text.contains(reason));
    }
}

#[test]
fn policy_check_accepts_the_shipped_policy_and_names_bad_seccomp_rules() {
    let f = Fixture::new();
    let shipped = policy(&f, "shipped.toml", &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/opencode.toml")).unwrap());
    let out = std::process::Command::new(bin()).args(["policy", "check", &shipped]).output().unwrap();
    assert!(ok(&out).contains(": ok"));
    let bad = policy(&f, "bad.toml", "[[seccomp.deny]]\nsyscalls = [\"mount\", \"frobnicate\"]\nreason = \"x\"\n");
    let out = std::process::Command::new(bin()).args(["policy", "check", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("unknown system call \"frobnicate\""), "{}", stderr(&out));
}
