//! Outbound forwards and the egress proxy, against loopback servers on the host.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

/// A `swarmcell __probe serve` HTTP server on a free host loopback port.
struct HostServer(Child, u16);

impl HostServer {
    fn start() -> HostServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Owned by the guard at once, so every path below ends it.
        let server = HostServer(Command::new(bin()).args(["__probe", "serve", &port.to_string()]).spawn().unwrap(), port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("host server on {port} did not start");
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_forward_works_end_to_end_and_is_the_only_way_out() {
    let f = Fixture::new();
    let (forwarded, other) = (HostServer::start(), HostServer::start());
    let dir = bin_dir();
    let script =
        format!("{b} __probe http-get 127.0.0.1:{p}/via-forward; {b} __probe http-get 127.0.0.1:{q}/direct", b = bin(), p = forwarded.1, q = other.1);
    let out = f.sh(&["--ro", &dir, "--forward", &forwarded.1.to_string()], &script);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(" ok HTTP/1.1 200 OK"), "the forward does not work: {text}");
    // The sandbox's loopback is its own: a host port that is not forwarded is
    // simply not there.
    assert!(lines[1].contains(" BROKEN ") && lines[1].contains("Connection refused"), "a host port that is not forwarded answered: {text}");
}

#[test]
fn the_proxy_allows_listed_names_and_refuses_the_rest_and_audits_each_decision() {
    let f = Fixture::new();
    let server = HostServer::start();
    let p = server.1;
    let curl = |url: &str, extra: &str| format!("echo \"== {url}\"; curl -s -m 10 {extra} {url}; echo");
    let script = [
        curl(&format!("http://api.test.invalid:{p}/plain"), ""),
        curl(&format!("http://api.test.invalid:{p}/tunnel"), "-p"),
        curl(&format!("http://unlisted.test.invalid:{p}/"), ""),
        curl(&format!("http://127.0.0.1:{p}/"), "--noproxy '' -x http://127.0.0.1:3128"),
        curl(&format!("http://rebound.test.invalid:{p}/"), ""),
    ]
    .join("; ");
    let allow = format!("api.test.invalid:{p}");
    let allow2 = format!("rebound.test.invalid:{p}");
    let args = [
        "--allow-host",
        &allow,
        "--allow-host",
        &allow2,
        "--resolve",
        "api.test.invalid=127.0.0.1",
        "--resolve",
        "rebound.test.invalid=127.0.0.2",
        "--allow-address",
        "127.0.0.1",
    ];
    let out = Command::new(bin())
        .args(["--log-format", "json", "--log-level", "info", "run", "--worktree"])
        .arg(&f.worktree)
        .args(args)
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_no_sandbox_left();
    let text = ok(&out);
    let section = |url: &str| text.split(&format!("== {url}\n")).nth(1).and_then(|s| s.split("\n== ").next()).unwrap_or("").trim().to_string();
    assert_eq!(section(&format!("http://api.test.invalid:{p}/plain")), "{\"healthy\":true}", "{text}");
    // Plain HTTP through a CONNECT tunnel would escape the Host check (red15):
    // the CONNECT is allowed, the tunnel is closed at its first bytes.
    assert_eq!(section(&format!("http://api.test.invalid:{p}/tunnel")), "", "{text}");
    assert!(section(&format!("http://unlisted.test.invalid:{p}/")).contains("is not on the egress allowlist"), "{text}");
    assert!(section(&format!("http://127.0.0.1:{p}/")).contains("is an IP literal"), "{text}");
    assert!(section(&format!("http://rebound.test.invalid:{p}/")).contains("resolves to 127.0.0.2 (not a public address)"), "{text}");
    // Every decision is an audit event.
    let events: Vec<serde_json::Value> =
        stderr(&out).lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["event"] == "egress").collect();
    let count = |host: &str, allowed: bool| events.iter().filter(|e| e["host"] == host && e["allowed"] == allowed).count();
    assert_eq!(count("api.test.invalid", true), 2, "{events:?}");
    assert!(
        events.iter().any(|e| e["host"] == "api.test.invalid" && e["reason"].as_str().is_some_and(|r| r.contains("plain HTTP in a CONNECT tunnel"))),
        "{events:?}"
    );
    assert_eq!(count("unlisted.test.invalid", false), 1);
    assert_eq!(count("127.0.0.1", false), 1);
    assert_eq!(count("rebound.test.invalid", false), 1);
    assert!(events.iter().all(|e| e["sandbox"].as_str().is_some_and(|s| s.starts_with("sc-"))));
}

#[test]
fn the_payload_is_pointed_at_the_proxy_and_egress_flags_are_validated() {
    let f = Fixture::new();
    let out = ok(&f.sh(&[], "echo $HTTPS_PROXY $HTTP_PROXY $NO_PROXY"));
    assert_eq!(out.trim(), "http://127.0.0.1:3128 http://127.0.0.1:3128 localhost,127.0.0.1,::1");
    for (args, needle) in [
        (vec!["--allow-host", "10.0.0.1"], "IP literals are never allowed"),
        (vec!["--forward", "4096"], "--forward 4096"),
        (vec!["--resolve", "x"], "expected NAME=IP"),
    ] {
        let out = f.run(&args, &["/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// The launcher is a static PIE: glibc would `dlopen` any NSS source other
/// than its built-in `files` and `dns` into it, which works only with the
/// glibc it was built with. With an nsswitch.conf that names another source
/// for hosts (hesiod, shipped with libc6), an allowed name is still looked up,
/// and no NSS module is loaded. (The host's file is replaced only in a private
/// mount namespace of this test's.)
#[test]
fn host_name_lookups_load_no_nss_module_into_the_static_launcher() {
    use std::io::BufRead;
    let f = Fixture::new();
    let conf = f.dir.join("nsswitch.conf");
    std::fs::write(&conf, "passwd: files\ngroup: files\nhosts: hesiod files\n").unwrap();
    // Nothing listens on port 9: the proxy looks the name up, then its connection is refused.
    let script = "curl -s -m 5 --noproxy '' -x http://127.0.0.1:3128 -o /dev/null http://localhost:9/; echo looked-up; exec sleep 30";
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", r#"mount --bind "$0" /etc/nsswitch.conf && exec "$@""#])
        .arg(&conf)
        .arg(bin())
        .args(["--log-format", "json", "--log-level", "info", "run", "--allow-host", "localhost:9", "--allow-address", "127.0.0.1", "--worktree"])
        .arg(&f.worktree)
        .args(["--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // The launcher is `unshare`'s process, exec'd twice.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
    // SAFETY: SIGTERM to our own child (the launcher forwards it to the payload).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(line.trim(), "looked-up", "{log}");
    assert!(maps.contains("swarmcell"), "not the launcher's map: {maps}");
    assert!(log.contains(r#""host":"localhost""#) && log.contains("egress"), "no lookup of localhost logged: {log}");
    let nss: Vec<&str> = maps.lines().filter(|l| l.contains("libnss_")).collect();
    assert!(nss.is_empty(), "NSS modules loaded into the launcher: {nss:?}");
    assert_no_sandbox_left();
}
