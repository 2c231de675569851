//! The broker, port manager, health wait and shutdown (INV-001, INV-003,
//! INV-004, INV-005), with real HTTP and TCP servers inside real sandboxes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

fn start(f: &Fixture, extra: &[&str], cmd: &[&str]) -> (Launcher, PathBuf) {
    let dir = bin_dir();
    f.spawn(&[&["--ro", dir.as_str()][..], extra].concat(), cmd)
}

fn serve() -> Vec<&'static str> {
    vec![bin(), "__probe", "serve", "{port}"]
}

fn port_of(ready: &serde_json::Value) -> u16 {
    ready["port"].as_u64().unwrap_or_else(|| panic!("no port in {ready}")) as u16
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Send MIB mebibytes to a bench-server in sink mode, half-close, and return
/// the byte count the server reports.
fn upload_and_count(port: u16, mib: usize) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"S").unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).unwrap();
    u64::from_le_bytes(n)
}

fn sigterm(child: &Launcher) {
    child.sigterm();
}

#[test]
fn a_real_http_server_answers_through_the_broker_port() {
    let f = Fixture::new();
    let (mut child, ready) = start(&f, &["--port", "auto"], &serve());
    let info = ready_of(&ready);
    let port = port_of(&info);
    assert!((8000..=9000).contains(&port), "{port}");
    let resp = http_get(port, "/global/health").unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("{\"healthy\":true}"), "{resp}");
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
}

#[test]
fn the_payload_learns_its_inner_port() {
    let f = Fixture::new();
    let out = ok(&f.sh(
        &["--port", "auto", "--health", "none", "--ro", &bin_dir()],
        &format!("echo $SWARMCELL_PORT {{port}}; exec {} __probe serve {{port}} & sleep 0.3", bin()),
    ));
    assert_eq!(out.lines().next(), Some("4096 4096"), "{out}");
}

#[test]
fn fifty_concurrent_sandboxes_get_fifty_distinct_ports_and_all_answer() {
    let f = Fixture::new();
    let runs: Vec<(Launcher, PathBuf)> = (0..50).map(|_| start(&f, &["--port", "auto"], &serve())).collect();
    let ports: Vec<u16> = runs.iter().map(|(_, r)| port_of(&ready_of(r))).collect();
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "ports handed out twice: {ports:?}");
    assert!(ports.iter().all(|p| (8000..=9000).contains(p)), "{ports:?}");
    for p in &ports {
        let resp = http_get(*p, "/").unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "port {p}: {resp}");
    }
    for (c, _) in &runs {
        sigterm(c);
    }
    for (mut c, _) in runs {
        assert_eq!(c.wait().code(), Some(143));
    }
    assert_no_sandbox_left();
}

#[test]
fn an_exhausted_range_is_refused_with_a_clear_error() {
    let f = Fixture::new();
    let range = ["--port-range", "8900-8901"];
    let a = start(&f, &[&range[..], &["--port", "auto"]].concat(), &serve());
    let b = start(&f, &[&range[..], &["--port", "auto"]].concat(), &serve());
    let (pa, pb) = (port_of(&ready_of(&a.1)), port_of(&ready_of(&b.1)));
    assert_ne!(pa, pb);
    // (f.command, not f.run: two sandboxes are meant to be running here.)
    let out = f.command(&[&range[..], &["--port", "auto", "--ro", &bin_dir()]].concat(), &serve()).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("all 2 ports in 8900-8901 are in use"), "{}", stderr(&out));
    let out = f.command(&["--port", "7000", "--ro", &bin_dir()], &serve()).output().unwrap();
    assert!(stderr(&out).contains("port 7000 is outside the range 8000-9000"), "{}", stderr(&out));
    for (mut c, _) in [a, b] {
        sigterm(&c);
        c.wait();
    }
    assert_no_sandbox_left();
}

#[test]
fn a_payload_that_never_becomes_healthy_fails_within_the_timeout_and_leaves_nothing() {
    let f = Fixture::new();
    let t = Instant::now();
    let out = f.run(&["--port", "8950", "--health-timeout", "1s"], &["/bin/sleep", "30"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains(": not healthy after 1s"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    TcpListener::bind(("127.0.0.1", 8950)).expect("the port is free again");
}

#[test]
fn sigterm_ends_payload_and_broker_and_frees_the_port() {
    let f = Fixture::new();
    let (mut child, ready) = start(&f, &["--port", "auto"], &serve());
    let port = port_of(&ready_of(&ready));
    // Only loopback listens on the port (INV-004).
    let listeners = loopback_listeners(port);
    assert_eq!(listeners, vec!["0100007F".to_string()], "port {port} bound to {listeners:?}");
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
    let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    TcpListener::bind(("127.0.0.1", port)).expect("a new listener can bind the port");
}

/// Local addresses (hex, as in /proc/net/tcp) listening on `port`, IPv4 and IPv6.
fn loopback_listeners(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(file).unwrap().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (addr, st) = (cols[1], cols[3]);
            if st == "0A" && addr.ends_with(&format!(":{port:04X}")) {
                found.push(addr.split(':').next().unwrap().to_string());
            }
        }
    }
    found
}

#[test]
fn a_payload_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let f = Fixture::new();
    let (mut child, ready) = start(&f, &["--stop-timeout", "1s"], &["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]);
    ready_of(&ready);
    let t = Instant::now();
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(137));
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_no_sandbox_left();
}

#[test]
fn bulk_transfers_half_close_and_the_connection_cap_work_through_the_relay() {
    let f = Fixture::new();
    let (mut child, ready) = start(
        &f,
        &["--port", "auto", "--broker", "relay", "--health", "none", "--max-connections", "2"],
        &[bin(), "__probe", "bench-server", "{port}"],
    );
    let port = port_of(&ready_of(&ready));
    assert_eq!(upload_and_count(port, 64), 64 << 20);
    // Download 64 MiB.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"G").unwrap();
    s.write_all(&(64u64 << 20).to_le_bytes()).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            k => got += k as u64,
        }
    }
    assert_eq!(got, 64 << 20);
    drop(s);
    std::thread::sleep(Duration::from_millis(50));
    // Two echo connections are relayed; a third is closed at once.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut e = TcpStream::connect(("127.0.0.1", port)).unwrap();
        e.write_all(b"Eping").unwrap();
        let mut r = [0u8; 4];
        e.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"ping");
        open.push(e);
    }
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = third.write_all(b"Eping");
    let mut r = [0u8; 4];
    assert!(matches!(third.read(&mut r), Ok(0) | Err(_)), "a third connection was relayed");
    drop(open);
    sigterm(&child);
    child.wait();
    assert_no_sandbox_left();
}

#[test]
fn with_socket_handoff_the_payload_holds_each_connection_but_never_the_host_listener() {
    let f = Fixture::new();
    // The default broker.
    let (mut child, ready) = start(&f, &["--port", "auto", "--health", "none"], &[bin(), "__probe", "bench-server", "{port}"]);
    let info = ready_of(&ready);
    let port = port_of(&info);
    let init = info["pid"].as_i64().unwrap();
    let in_payload = |inode: &str| socket_holders(inode).iter().any(|pid| status_field(*pid, "PPid") == Some(init.to_string()));
    // The listening socket on 127.0.0.1:port is the launcher's alone.
    let inode = listening_inode(port).expect("a listener on the port");
    assert!(!in_payload(&inode), "the payload holds the host listener");
    // An accepted connection is in the payload's fd table: no relay.
    let mut e = TcpStream::connect(("127.0.0.1", port)).unwrap();
    e.write_all(b"Eping").unwrap();
    let mut r = [0u8; 4];
    e.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"ping");
    let conn = connection_inode(port, e.local_addr().unwrap().port()).expect("the server end of the connection");
    assert!(in_payload(&conn), "the payload does not hold the connection");
    // accept() told the payload who the client is.
    let mut p = TcpStream::connect(("127.0.0.1", port)).unwrap();
    p.write_all(b"P").unwrap();
    let mut said = String::new();
    p.read_to_string(&mut said).unwrap();
    assert_eq!(said.trim(), p.local_addr().unwrap().to_string());
    // Bulk data both ways, straight to the payload.
    assert_eq!(upload_and_count(port, 32), 32 << 20);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"G").unwrap();
    s.write_all(&(32u64 << 20).to_le_bytes()).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(k @ 1..) = s.read(&mut buf) {
        got += k as u64;
    }
    assert_eq!(got, 32 << 20);
    // Many short connections in a row, each handed off.
    for i in 0..200u32 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(format!("E{i:08}").as_bytes()).unwrap();
        let mut r = [0u8; 8];
        c.read_exact(&mut r).unwrap();
        assert_eq!(r, *format!("{i:08}").as_bytes());
    }
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// The inode of the socket on 127.0.0.1:`port` connected to 127.0.0.1:`peer`.
fn connection_inode(port: u16, peer: u16) -> Option<String> {
    std::fs::read_to_string("/proc/net/tcp").ok()?.lines().skip(1).find_map(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        (c[1] == format!("0100007F:{port:04X}") && c[2] == format!("0100007F:{peer:04X}")).then(|| c[9].to_string())
    })
}

fn listening_inode(port: u16) -> Option<String> {
    std::fs::read_to_string("/proc/net/tcp").ok()?.lines().skip(1).find_map(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        (c[3] == "0A" && c[1] == format!("0100007F:{port:04X}")).then(|| c[9].to_string())
    })
}

fn socket_holders(inode: &str) -> Vec<i64> {
    let target = format!("socket:[{inode}]");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).map(|t| t.to_string_lossy() == target).unwrap_or(false)) {
            pids.push(pid);
        }
    }
    pids
}

fn status_field(pid: i64, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
}

/// A 0600 policy file in the fixture.
fn policy(f: &Fixture, name: &str, text: &str) -> String {
    let p = f.dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn the_reuse_listener_attack_reaches_nothing_on_the_host_in_every_broker_mode() {
    // Turn the payload's listening socket back into a client (shutdown) and
    // connect it to a host-loopback service on the inner port: with the old
    // bind-time handoff the listener was the host's and this connected.
    let f = Fixture::new();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let inner = policy(&f, "inner.toml", &format!("[network]\ninner_port = {port}\n"));
    for mode in ["handoff", "relay"] {
        let out = f.run(
            &["--policy", &inner, "--port", "auto", "--broker", mode, "--health", "none", "--ro", &bin_dir()],
            &[bin(), "__probe", "reuse-listener", &port.to_string()],
        );
        let text = stdout(&out);
        assert!(text.contains(" blocked "), "{mode}: {text}{}", stderr(&out));
        assert!(host.accept().is_err(), "{mode}: the host listener got a connection from the sandbox");
    }
}

#[test]
fn a_handed_off_connection_reaches_nothing_but_its_client_in_every_broker_mode() {
    // The payload accepts connections from the broker and tries to point each
    // at a host-loopback service: connect(AF_UNSPEC) + connect, shutdown +
    // connect, TCP Fast Open after a disconnect, and listening on the
    // disconnected socket for host clients.
    let f = Fixture::new();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    for mode in ["handoff", "relay"] {
        let out = f.worktree.join(format!("attack-{mode}.txt"));
        let script = format!("exec {} __probe reuse-accepted {target} > {}", bin(), out.display());
        let (mut child, ready) = start(&f, &["--port", "auto", "--broker", mode, "--health", "none"], &["/bin/sh", "-c", &script]);
        let port = port_of(&ready_of(&ready));
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.write_all(b"X").unwrap();
                c
            })
            .collect();
        // Once the payload listens on a disconnected socket, host clients come.
        let t = Instant::now();
        let listening = || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            text.contains("rogue listener up") || text.contains("then listen and accept")
        };
        while !listening() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..3 {
            if let Ok(mut c) = TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(300)) {
                let _ = c.write_all(b"X");
            }
        }
        let status = child.wait();
        drop(clients);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let results: Vec<&str> = text.lines().filter(|l| l.starts_with("accepted socket")).collect();
        assert_eq!(results.len(), 4, "{mode}: {text}");
        for line in &results {
            assert!(line.contains(" blocked "), "{mode}: {line}");
        }
        assert_eq!(status.code(), Some(0), "{mode}: {text}");
        assert!(host.accept().is_err(), "{mode}: the host listener got a connection from the sandbox");
        if mode == "handoff" {
            assert!(text.contains("Fast Open to 127.0.0.1") && text.contains("EOPNOTSUPP"), "{text}");
            assert!(text.contains("listen and accept blocked listen: EPERM"), "{text}");
        }
        assert_no_sandbox_left();
    }
}

#[test]
fn with_socket_handoff_a_uid_that_is_not_allowed_gets_nothing() {
    let f = Fixture::new();
    let (mut child, ready) = start(&f, &["--port", "auto", "--health", "none"], &[bin(), "__probe", "bench-server", "{port}"]);
    let port = port_of(&ready_of(&ready));
    let echo_as = |uid: u32| {
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && printf Eping >&3 && timeout 3 head -c 4 <&3");
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "/bin/bash", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(echo_as(1001), "", "another local user reached the payload");
    assert_eq!(echo_as(OWNER), "ping", "the worktree's owner is refused");
    assert_eq!(echo_as(0), "ping", "root is refused");
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
}

#[test]
fn with_socket_handoff_no_connection_is_lost_when_accepts_are_interrupted_by_signals() {
    // Bun (OpenCode) signals its threads all the time; an accept interrupted
    // after the launcher took a connection for it must not lose that connection.
    let f = Fixture::new();
    let (mut child, ready) = start(&f, &["--port", "auto", "--health", "none"], &[bin(), "__probe", "signalled-server", "{port}"]);
    let port = port_of(&ready_of(&ready));
    for i in 0..300u32 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(format!("E{i:08}").as_bytes()).unwrap();
        let mut r = [0u8; 8];
        c.read_exact(&mut r).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(r, *format!("{i:08}").as_bytes());
    }
    sigterm(&child);
    child.wait();
    assert_no_sandbox_left();
}

#[test]
fn with_socket_handoff_a_node_server_on_a_dual_stack_listener_answers() {
    // Node listens on [::]:PORT (dual-stack) by default and accepts with
    // accept4 from libuv's epoll loop: the IPv4 client's address reaches it.
    let f = Fixture::new();
    let js = f.worktree.join("server.js");
    std::fs::write(&js, "require('http').createServer((q, r) => r.end('node saw ' + q.socket.remoteAddress)).listen(+process.env.SWARMCELL_PORT);\n")
        .unwrap();
    std::os::unix::fs::chown(&js, Some(OWNER), Some(OWNER)).unwrap();
    // Node from PATH (scripts/setup installs it); outside /usr its install
    // directory is bound read-only too.
    let node = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join("node"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .expect("node is installed (scripts/setup)");
    let home = node.parent().and_then(|b| b.parent()).unwrap().to_str().unwrap().to_string();
    let mut extra = vec!["--port", "auto", "--health", "none"];
    if !node.starts_with("/usr") {
        extra.extend(["--ro", home.as_str()]);
    }
    let (mut child, ready) = start(&f, &extra, &[node.to_str().unwrap(), "server.js"]);
    let port = port_of(&ready_of(&ready));
    for _ in 0..20 {
        let resp = http_get(port, "/").unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK") && resp.ends_with("node saw 127.0.0.1"), "{resp}");
    }
    sigterm(&child);
    child.wait();
    assert_no_sandbox_left();
}
