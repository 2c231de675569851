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
fn with_socket_handoff_the_payload_itself_listens_on_the_host_port() {
    let f = Fixture::new();
    let (mut child, ready) =
        start(&f, &["--port", "auto", "--broker", "handoff", "--allow-any-uid", "--health", "none"], &[bin(), "__probe", "bench-server", "{port}"]);
    let info = ready_of(&ready);
    let port = port_of(&info);
    // The listening socket on 127.0.0.1:port is in the payload's fd table.
    let inode = listening_inode(port).expect("a listener on the port");
    let init = info["pid"].as_i64().unwrap();
    let holders = socket_holders(&inode);
    let payload_holds = holders.iter().any(|pid| status_field(*pid, "PPid") == Some(init.to_string()));
    assert!(payload_holds, "holders of the listener {holders:?}, sandbox init {init}");
    // Bulk data and an echo, straight to the payload.
    assert_eq!(upload_and_count(port, 32), 32 << 20);
    let mut e = TcpStream::connect(("127.0.0.1", port)).unwrap();
    e.write_all(b"Eping").unwrap();
    let mut r = [0u8; 4];
    e.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"ping");
    sigterm(&child);
    assert_eq!(child.wait().code(), Some(143));
    assert_no_sandbox_left();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
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

#[test]
fn with_the_default_relay_the_payload_holds_no_host_socket() {
    // The attack that socket handoff allows: turn the listening socket back
    // into a client socket and connect to a host-loopback service on a port
    // Landlock allows (here the inner port, with a host listener on it).
    let f = Fixture::new();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let policy = f.dir.join("inner.toml");
    std::fs::write(&policy, format!("[network]\ninner_port = {port}\n")).unwrap();
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dir = bin_dir();
    let out = f.run(
        &["--policy", policy.to_str().unwrap(), "--port", "auto", "--health", "none", "--ro", &dir],
        &[bin(), "__probe", "reuse-listener", &port.to_string()],
    );
    let text = stdout(&out);
    assert!(text.contains(" blocked "), "{text}{}", stderr(&out));
    assert!(host.accept().is_err(), "the host listener got a connection from the sandbox");
    // And handoff is refused where Landlock cannot restrict TCP connect.
    let off = f.dir.join("off.toml");
    std::fs::write(&off, "landlock = \"off\"\n").unwrap();
    std::fs::set_permissions(&off, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = f.run(&["--policy", off.to_str().unwrap(), "--port", "auto", "--broker", "handoff"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--broker handoff needs Landlock's TCP rules"), "{}", stderr(&out));
}
