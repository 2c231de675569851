//! Who reaches a sandbox's port, and what the launcher's health check reaches,
//! with `swarmcell run`: another local uid gets nothing through the brokered
//! port (no HTTP response at all), root and the worktree's owner do; a payload
//! answering the health check with a redirect fails its launch, and the
//! redirect's target is never contacted. (The daemon's side: tests/daemon.rs.)

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;

/// A local user who is neither root, the worktree's owner, nor allowed.
const STRANGER: u32 = 1001;
/// A user allowed with `--allow-uid`.
const FRIEND: u32 = 4343;

fn serve() -> Vec<&'static str> {
    vec![bin(), "__probe", "serve", "{port}"]
}

/// As `uid`, send `GET PATH` and close at once, without waiting for anything.
fn fire_and_forget_as(uid: u32, port: u16, path: &str) {
    let script =
        format!("trap '' PIPE; exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n' >&3; true");
    let out = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "bash", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_uid_that_is_not_allowed_gets_nothing_through_the_port_while_root_and_the_owner_do() {
    // The same check in both broker modes.
    for broker in ["handoff", "relay"] {
        uid_check(broker);
    }
}

fn uid_check(broker: &str) {
    let f = Fixture::new();
    let (mut l, ready) = f.spawn(&["--log-format", "json", "--ro", &bin_dir(), "--port", "auto", "--broker", broker], &serve());
    let port = ready_of(&ready)["port"].as_u64().unwrap() as u16;
    assert!(bytes_back_as(0, port, "/from-root") > 0, "root is answered");
    assert!(bytes_back_as(OWNER, port, "/from-owner") > 0, "the worktree's owner is answered");
    assert_eq!(bytes_back_as(STRANGER, port, "/from-stranger"), 0, "another local user gets no byte back");
    // Nor does a request sent without waiting reach the payload.
    fire_and_forget_as(STRANGER, port, "/stranger-fire-and-forget");
    assert!(bytes_back_as(0, port, "/after") > 0);
    l.sigterm();
    assert_eq!(l.wait().code(), Some(143));
    let log = std::fs::read_to_string(ready.with_extension("stderr")).unwrap();
    assert!(log.contains("serve: GET /from-root") && log.contains("serve: GET /from-owner"), "{log}");
    assert!(!log.contains("from-stranger") && !log.contains("stranger-fire-and-forget"), "a stranger's request reached the payload:\n{log}");
    // Each refusal is an audit event with the uid and the port.
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("ingress_denied")).collect();
    assert!(denied.len() >= 2, "{log}");
    // (A client that closed before its uid was looked up is refused as unknown.)
    let stranger = format!("\"uid\":{STRANGER}");
    assert!(denied.iter().any(|l| l.contains(&stranger)), "{denied:?}");
    assert!(
        denied.iter().all(|l| (l.contains(&stranger) || l.contains("\"uid\":\"unknown\"")) && l.contains(&format!("\"port\":{port}"))),
        "{denied:?}"
    );
    assert_no_sandbox_left();
}

#[test]
fn allow_uid_admits_another_user() {
    let f = Fixture::new();
    let (mut l, ready) = f.spawn(&["--ro", &bin_dir(), "--port", "auto", "--allow-uid", &FRIEND.to_string()], &serve());
    let port = ready_of(&ready)["port"].as_u64().unwrap() as u16;
    assert!(bytes_back_as(FRIEND, port, "/from-friend") > 0);
    assert_eq!(bytes_back_as(STRANGER, port, "/from-stranger"), 0);
    l.sigterm();
    l.wait();
    assert_no_sandbox_left();
}

#[test]
fn a_redirecting_health_answer_fails_the_launch_and_the_target_receives_nothing() {
    let f = Fixture::new();
    // A host loopback service the payload would like the root launcher to call.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}/exfil?data=stolen", target.local_addr().unwrap().port());
    let out = f.run(&["--ro", &bin_dir(), "--port", "auto", "--health-timeout", "2s"], &[bin(), "__probe", "redirect", "{port}", &url]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("not healthy"), "{}", stderr(&out));
    let contacted = target.accept();
    assert!(contacted.is_err(), "the redirect target was contacted: {contacted:?}");
    assert_eq!(contacted.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn the_health_check_sends_the_secret_and_the_ready_line_returns_it() {
    let f = Fixture::new();
    // A policy whose payload takes a per-sandbox secret.
    let policy = f.dir.join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[process]\nserver_password_env = \"PROBE_PASSWORD\"\n[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n",
            bin_dir()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&policy, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600)).unwrap();
    let script = format!("echo secret=$PROBE_PASSWORD >&2; exec {} __probe serve {{port}}", bin());
    let (mut l, ready) = f.spawn(&["--policy", policy.to_str().unwrap(), "--port", "auto"], &["/bin/sh", "-c", &script]);
    let info = ready_of(&ready);
    let secret = info["secret"].as_str().unwrap_or_else(|| panic!("no secret in {info}")).to_string();
    assert!(secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric()), "{secret}");
    // The payload checks it (401 without it), so the launch became healthy only
    // because the health check sent it (HTTP basic auth, user `opencode`).
    let port = info["port"].as_u64().unwrap() as u16;
    assert!(get_as_root(port, None).starts_with("HTTP/1.1 401"));
    assert!(get_as_root(port, Some(&secret)).starts_with("HTTP/1.1 200"));
    l.sigterm();
    l.wait();
    let log = std::fs::read_to_string(ready.with_extension("stderr")).unwrap();
    assert!(log.contains(&format!("secret={secret}")), "the payload got it: {log}");
    assert!(log.contains("serve: GET /global/health"), "{log}");
    assert_eq!(log.matches(&secret).count(), 1, "the secret is never logged by swarmcell: {log}");
    assert_no_sandbox_left();
}

fn get_as_root(port: u16, secret: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = secret.map(|p| format!("Authorization: {}\r\n", swarmcell::net::health::basic_auth("opencode", p))).unwrap_or_default();
    write!(s, "GET / HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}
