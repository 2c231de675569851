//! The launcher's work for a payload is bounded (issue #15, findings 3 and 4):
//! connection floods, byte-trickling and idle clients of the egress proxy and
//! the outbound forwards, and requests whose `Host` header or later requests on
//! the same connection would reach another site behind an allowed address.
//! Every attack runs from inside a real sandbox against host loopback servers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Most threads a launcher may hold while one of its sandboxes floods it.
const THREAD_CAP: usize = 16;

/// A `swarmcell __probe serve` HTTP server on a free host loopback port.
struct HostServer(Child, u16);

impl HostServer {
    fn start() -> HostServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = HostServer(Command::new(bin()).args(["__probe", "serve", &port.to_string()]).spawn().unwrap(), port);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
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

/// A lax keep-alive HTTP server on host loopback (a shared front end): it
/// answers `200 ok` to every request head it sees on a connection, whatever
/// its Host, and records every byte it receives and how many connections came.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, conns) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let (s, c) = (seen.clone(), conns.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || answer(conn, &s));
            }
        });
        Recorder { port, seen, conns }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

fn answer(mut conn: TcpStream, seen: &Mutex<Vec<u8>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.lock().unwrap().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                return;
            }
        }
    }
}

fn policy(f: &Fixture, name: &str, text: &str) -> String {
    let p = f.dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p.to_string_lossy().into_owned()
}

/// `swarmcell run` with `api.test.invalid:PORT` allowed (resolved to 127.0.0.1)
/// and the probe binary visible, running `script`; returns stdout, stderr.
fn run_allowing(f: &Fixture, port: u16, extra: &[&str], script: &str) -> (String, String) {
    let allow = format!("api.test.invalid:{port}");
    let dir = bin_dir();
    let args =
        [&["--ro", &dir, "--allow-host", &allow, "--resolve", "api.test.invalid=127.0.0.1", "--allow-address", "127.0.0.1"][..], extra].concat();
    let out = f.sh(&args, script);
    assert_no_sandbox_left();
    (stdout(&out), stderr(&out))
}

/// The output of the probe that followed the `== name` marker line.
fn section(text: &str, name: &str) -> String {
    text.split(&format!("== {name}\n")).nth(1).and_then(|s| s.split("\n== ").next()).unwrap_or("").trim().to_string()
}

fn closed_after_ms(out: &str) -> Option<u64> {
    out.lines().find_map(|l| l.split("closed after ").nth(1)).and_then(|r| r.split(" ms").next()).and_then(|n| n.parse().ok())
}

fn threads(pid: u32) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())
}

fn http_ok(port: u16) -> bool {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    attempt().is_ok_and(|r| r.starts_with("HTTP/1.1 200 OK"))
}

#[test]
fn a_connection_flood_from_inside_keeps_the_launcher_bounded_and_another_sandbox_answering() {
    let f = Fixture::new();
    let forwarded = HostServer::start();
    let dir = bin_dir();
    // B: another sandbox, answering on its brokered port.
    let (mut b, b_ready) = f.spawn(&["--ro", &dir, "--port", "auto"], &[bin(), "__probe", "serve", "{port}"]);
    let b_port = ready_of(&b_ready)["port"].as_u64().unwrap() as u16;
    // A: 16 pids, floods its egress proxy, then a forward, with 5000
    // connections each, every one kept alive by a byte a second.
    let fport = forwarded.1.to_string();
    let script = format!("{b} __probe flood 3128 5000 5 > flood-proxy.out; {b} __probe flood {fport} 5000 5 > flood-forward.out", b = bin());
    let (mut a, _) = f.spawn(&["--ro", &dir, "--pids", "16", "--forward", &fport], &["/bin/sh", "-c", &script]);
    let (mut most, mut b_failures, mut b_checks) = (0, 0, 0);
    let start = Instant::now();
    let mut last_check = Instant::now();
    while a.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(90) {
        most = most.max(threads(a.id()).unwrap_or(0));
        if most > THREAD_CAP {
            break;
        }
        if last_check.elapsed() > Duration::from_millis(300) {
            b_checks += 1;
            b_failures += usize::from(!http_ok(b_port));
            last_check = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let b_after = http_ok(b_port);
    // Both stopped with SIGTERM before any assertion: a SIGKILLed launcher's
    // sandbox init would be left to pid 1 to reap.
    for l in [&a, &b] {
        l.sigterm();
    }
    a.wait();
    b.wait();
    assert_no_sandbox_left();
    assert!(most <= THREAD_CAP, "the flooded launcher held {most} threads (cap {THREAD_CAP})");
    assert!(b_after, "the other sandbox stopped answering");
    assert_eq!(b_failures, 0, "the other sandbox failed {b_failures} of {b_checks} requests during the flood");
    for (file, what) in [("flood-proxy.out", "proxy"), ("flood-forward.out", "forward")] {
        let out = std::fs::read_to_string(f.worktree.join(file)).unwrap_or_default();
        println!("{what} flood: {}", out.trim());
        let opened: usize = out.split("opened=").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(opened >= 4000, "the {what} flood did not happen: {out:?}");
    }
    println!("most launcher threads during the flood: {most}; other sandbox answered {b_checks} checks");
}

#[test]
fn a_byte_trickling_client_is_dropped_at_the_head_deadline() {
    // Default policy: a 10 s deadline for the whole request head.
    let f = Fixture::new();
    let (out, err) = run_allowing(&f, 1, &[], &format!("{} __probe trickle 3128 500 16", bin()));
    let ms = closed_after_ms(&out).unwrap_or_else(|| panic!("the trickling client was never dropped: {out}{err}"));
    assert!((9_500..=11_500).contains(&ms), "dropped after {ms} ms, not at the 10 s head deadline: {out}");
    assert!(out.contains("408"), "{out}");
}

#[test]
fn idle_tunnels_and_forwards_are_closed_after_the_idle_timeout() {
    let f = Fixture::new();
    let upstream = Recorder::start();
    let p = upstream.port;
    let pol = policy(&f, "idle.toml", "[network]\nidle_timeout = \"2s\"\n");
    let connect = format!("CONNECT api.test.invalid:{p} HTTP/1.1\\r\\nHost: api.test.invalid:{p}\\r\\n\\r\\n");
    let b = bin();
    let script = format!(
        "echo '== tunnel'; {b} __probe send 127.0.0.1:3128 10 '{connect}'; \
         echo '== busy tunnel'; {b} __probe send 127.0.0.1:3128 12 '{connect}' a b c d e f; \
         echo '== forward'; {b} __probe send 127.0.0.1:{p} 10"
    );
    let fwd = p.to_string();
    let (out, err) = run_allowing(&f, p, &["--policy", &pol, "--forward", &fwd], &script);
    let tunnel = section(&out, "tunnel");
    assert!(tunnel.starts_with("reply: HTTP/1.1 200 Connection established"), "{out}{err}");
    let ms = closed_after_ms(&tunnel).unwrap_or_else(|| panic!("an idle tunnel stayed open: {out}{err}"));
    assert!((1_800..=4_000).contains(&ms), "idle tunnel closed after {ms} ms: {out}");
    // Activity (a byte every 0.7 s for about 4 s) keeps a tunnel open.
    let ms = closed_after_ms(&section(&out, "busy tunnel")).unwrap_or_else(|| panic!("{out}{err}"));
    assert!((5_500..=9_000).contains(&ms), "busy tunnel closed after {ms} ms: {out}");
    let ms = closed_after_ms(&section(&out, "forward")).unwrap_or_else(|| panic!("an idle forward stayed open: {out}{err}"));
    assert!((1_800..=4_000).contains(&ms), "idle forward closed after {ms} ms: {out}");
}

#[test]
fn over_the_cap_connections_are_refused_at_once_and_counted() {
    let f = Fixture::new();
    let upstream = Recorder::start();
    let p = upstream.port;
    let pol = policy(&f, "cap.toml", "[network]\nmax_proxy_connections = 2\nmax_forward_connections = 2\n");
    let b = bin();
    let script = format!(
        "{b} __probe send 127.0.0.1:3128 3 >/dev/null & {b} __probe send 127.0.0.1:3128 3 >/dev/null & \
         {b} __probe send 127.0.0.1:{p} 3 >/dev/null & {b} __probe send 127.0.0.1:{p} 3 >/dev/null & sleep 0.5; \
         echo '== proxy'; {b} __probe send 127.0.0.1:3128 2; echo '== forward'; {b} __probe send 127.0.0.1:{p} 2; wait"
    );
    let fwd = p.to_string();
    let (out, err) = run_allowing(&f, p, &["--policy", &pol, "--forward", &fwd], &script);
    let proxy = section(&out, "proxy");
    assert!(proxy.starts_with("reply: HTTP/1.1 503"), "{out}{err}");
    assert!(closed_after_ms(&proxy).is_some_and(|ms| ms < 500), "{out}");
    let forward = section(&out, "forward");
    assert!(closed_after_ms(&forward).is_some_and(|ms| ms < 500), "a third forward connection was relayed: {out}");
    assert!(err.contains("max_proxy_connections") && err.contains("max_forward_connections"), "refusals not reported: {err}");
}

#[test]
fn a_host_header_other_than_the_request_authority_is_refused_and_nothing_reaches_the_upstream() {
    let f = Fixture::new();
    let upstream = Recorder::start();
    let p = upstream.port;
    let b = bin();
    let send = |name: &str, text: &str| format!("echo '== {name}'; {b} __probe send 127.0.0.1:3128 3 '{text}'");
    let script = [
        send("get", &format!("GET http://api.test.invalid:{p}/a HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n")),
        send("get without port", &format!("GET http://api.test.invalid:{p}/b HTTP/1.1\\r\\nHost: api.test.invalid\\r\\n\\r\\n")),
        send(
            "two hosts",
            &format!("GET http://api.test.invalid:{p}/c HTTP/1.1\\r\\nHost: api.test.invalid:{p}\\r\\nHost: internal-admin.corp\\r\\n\\r\\n"),
        ),
        send("connect", &format!("CONNECT api.test.invalid:{p} HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n")),
    ]
    .join("; ");
    let (out, err) = run_allowing(&f, p, &[], &script);
    for name in ["get", "get without port", "two hosts", "connect"] {
        let s = section(&out, name);
        assert!(s.starts_with("reply: HTTP/1.1 403") || s.starts_with("reply: HTTP/1.1 400"), "{name}: {s}\n{out}{err}");
    }
    assert!(section(&out, "get").contains("Host header"), "{out}");
    assert_eq!(upstream.conns.load(Ordering::SeqCst), 0, "the upstream was contacted: {:?}", upstream.seen());
}

#[test]
fn one_request_per_connection_reaches_the_upstream_and_nothing_after_it() {
    let f = Fixture::new();
    let upstream = Recorder::start();
    let p = upstream.port;
    let b = bin();
    let a = format!("api.test.invalid:{p}");
    let send = |name: &str, parts: &[String]| {
        let parts: Vec<String> = parts.iter().map(|t| format!("'{t}'")).collect();
        format!("echo '== {name}'; {b} __probe send 127.0.0.1:3128 3 {}", parts.join(" "))
    };
    let script = [
        // Kept alive: a second request, origin-form, for another site behind the same address.
        send(
            "sequential",
            &[
                format!("GET http://{a}/first HTTP/1.1\\r\\nHost: {a}\\r\\n\\r\\n"),
                "GET /second HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n".into(),
            ],
        ),
        // Pipelined behind the first, absolute-form.
        send(
            "pipelined",
            &[format!("GET http://{a}/first2 HTTP/1.1\\r\\nHost: {a}\\r\\n\\r\\nGET http://internal-admin.corp/third HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n")],
        ),
        // Smuggled after a body of the declared length.
        send(
            "length",
            &[format!("POST http://{a}/upload HTTP/1.1\\r\\nHost: {a}\\r\\nContent-Length: 5\\r\\n\\r\\nhelloGET /smuggled HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n")],
        ),
        // Smuggled after a chunked body.
        send(
            "chunked",
            &[format!(
                "POST http://{a}/chunks HTTP/1.1\\r\\nHost: {a}\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nworld\\r\\n0\\r\\n\\r\\nGET /smuggled2 HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n"
            )],
        ),
        // Both framings at once: refused.
        send(
            "both",
            &[format!("POST http://{a}/both HTTP/1.1\\r\\nHost: {a}\\r\\nContent-Length: 3\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n")],
        ),
    ]
    .join("; ");
    let (out, err) = run_allowing(&f, p, &[], &script);
    let seen = upstream.seen();
    for never in ["internal-admin.corp", "/second", "/third", "/smuggled", "/both"] {
        assert!(!seen.contains(never), "{never:?} reached the upstream: {seen:?}");
    }
    for name in ["sequential", "pipelined", "length", "chunked"] {
        assert!(section(&out, name).starts_with("reply: HTTP/1.1 200 OK"), "{name}: {out}{err}");
    }
    assert!(section(&out, "both").starts_with("reply: HTTP/1.1 400"), "{out}");
    // The client is told not to reuse the connection.
    assert!(section(&out, "sequential").starts_with("reply: HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"), "{out}");
    for wanted in ["GET /first HTTP/1.1", "GET /first2 HTTP/1.1", "POST /upload HTTP/1.1", "hello", "5\r\nworld\r\n0\r\n\r\n", "Connection: close"] {
        assert!(seen.contains(wanted), "the upstream did not get {wanted:?}: {seen:?}");
    }
}

#[test]
fn idle_inbound_connections_are_closed_so_local_clients_cannot_pin_the_broker() {
    // The relay holds a slot per connection (the handoff holds none once the
    // payload accepted: the connection is the payload's own).
    let f = Fixture::new();
    let pol = policy(&f, "idle.toml", "[network]\nidle_timeout = \"2s\"\n");
    let dir = bin_dir();
    let (mut l, ready) = f.spawn(
        &["--ro", &dir, "--policy", &pol, "--port", "auto", "--broker", "relay", "--max-connections", "2"],
        &[bin(), "__probe", "serve", "{port}"],
    );
    let port = ready_of(&ready)["port"].as_u64().unwrap() as u16;
    // Two local clients take every relay slot and send nothing.
    let start = Instant::now();
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!http_ok(port), "a third connection was relayed past --max-connections 2");
    let mut closed_after = Vec::new();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut b = [0u8; 16];
        closed_after.push(match s.read(&mut b) {
            Ok(0) | Err(_) => start.elapsed(),
            Ok(_) => Duration::MAX,
        });
    }
    // A relay frees its slot just after it closes its sockets: the client may
    // see the close a moment before a new connection can be admitted.
    let freed = Instant::now();
    let answered = loop {
        if http_ok(port) {
            break true;
        }
        if freed.elapsed() > Duration::from_secs(2) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    l.sigterm();
    l.wait();
    assert_no_sandbox_left();
    for t in &closed_after {
        assert!(*t >= Duration::from_millis(1_800) && *t <= Duration::from_millis(4_000), "idle inbound connections closed after {closed_after:?}");
    }
    assert!(answered, "the broker did not answer once the idle connections were closed");
}

#[test]
fn bulk_transfers_and_half_close_work_through_a_forward_and_a_tunnel() {
    // bench-client uploads 64 MiB and half-closes (the server then answers its
    // count), and downloads 64 MiB: byte counts are checked on both sides.
    let f = Fixture::new();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = HostServer(Command::new(bin()).args(["__probe", "bench-server", &port.to_string()]).spawn().unwrap(), port);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = bin();
    let bytes = 64 << 20;
    let script = format!(
        "echo '== forward'; {b} __probe bench-client 127.0.0.1:{port} {bytes}; \
         echo '== tunnel'; {b} __probe bench-client api.test.invalid:{port} {bytes} 127.0.0.1:3128"
    );
    let fwd = port.to_string();
    let (out, err) = run_allowing(&f, port, &["--forward", &fwd], &script);
    for name in ["forward", "tunnel"] {
        assert!(section(&out, name).starts_with("up="), "{name}: {out}{err}");
    }
    drop(server);
}

/// Attack (red15): the Host check covers plain-HTTP requests only; a CONNECT
/// tunnel to the same allowed name and port (any allowed port, 80 included for
/// an entry without a port) carries plain HTTP with any Host and as many
/// requests as the payload likes. A tunnel must carry TLS (its first record a
/// handshake), so what reaches a shared front end in clear is checked.
#[test]
fn a_connect_tunnel_carrying_plain_http_with_another_host_is_refused() {
    let f = Fixture::new();
    let upstream = Recorder::start();
    let p = upstream.port;
    let b = bin();
    let script = format!(
        "echo '== tunnel'; {b} __probe send 127.0.0.1:3128 3 'CONNECT api.test.invalid:{p} HTTP/1.1\\r\\nHost: api.test.invalid:{p}\\r\\n\\r\\n\
         GET /admin HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\nGET /again HTTP/1.1\\r\\nHost: internal-admin.corp\\r\\n\\r\\n'"
    );
    let (out, err) = run_allowing(&f, p, &[], &script);
    let seen = upstream.seen();
    assert!(!seen.contains("internal-admin.corp"), "plain HTTP with a foreign Host went through a tunnel: {seen:?}\n{out}{err}");
}
