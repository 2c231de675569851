//! Attacks on the socket-handoff broker by a hostile payload (src/net/handoff.rs).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_payload_racing_the_accept_fd_number_never_takes_a_placeholder_nor_stalls_the_launcher() {
    // The payload flips one descriptor slot between its inner listener and
    // another listener while four threads accept on it: an accept the launcher
    // lets continue in the kernel (it looked at "another listener") runs on the
    // inner one and takes the launcher's placeholder; the host client it stood
    // for is never served, and a launcher accept racing the payload's blocks.
    let f = Fixture::new();
    let dir = bin_dir();
    let out = f.worktree.join("race.txt");
    let script = format!("exec {} __probe accept-race \"$SWARMCELL_PORT\" > {}", bin(), out.display());
    let (mut child, ready) = f.spawn(&["--ro", dir.as_str(), "--port", "auto", "--health", "none"], &["/bin/sh", "-c", &script]);
    let port = ready_of(&ready)["port"].as_u64().unwrap() as u16;
    let (mut served, mut lost) = (0, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) && served + lost < 300 {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            lost += 1;
            continue;
        };
        c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut b = [0u8; 1];
        if c.write_all(b"X").is_ok() && c.read_exact(&mut b).is_ok() && b == *b"X" {
            served += 1;
        } else {
            lost += 1;
        }
    }
    child.sigterm();
    let t = Instant::now();
    while child.0.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stuck = child.0.try_wait().unwrap().is_none();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    drop(child);
    assert!(!text.contains("ESCAPED"), "served {served}, lost {lost}: {text}");
    assert!(!stuck, "the launcher did not end within 20 s of SIGTERM (served {served}, lost {lost})");
    assert_eq!(lost, 0, "host clients never served: {lost} of {}", served + lost);
    assert_no_sandbox_left();
}

#[test]
fn with_socket_handoff_accepts_on_the_payloads_other_sockets_behave_as_the_kernels() {
    // The launcher makes every accept of the payload (none continues in the
    // kernel): on other listeners (unix, TCP) and on what is not a listener.
    let f = Fixture::new();
    let dir = bin_dir();
    let out = f.run(&["--ro", dir.as_str(), "--port", "auto", "--health", "none"], &[bin(), "__probe", "accept-kinds"]);
    let text = stdout(&out);
    assert_eq!(text.lines().filter(|l| l.contains(" ok ")).count(), 6, "{text}{}", stderr(&out));
    assert!(out.status.success(), "{text}");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_payload_interrupting_its_accepts_on_listeners_it_then_closes_cannot_pile_up_launcher_fds() {
    // Each connection the launcher took for an accept call that a signal
    // interrupted waits for the next call on that listener; the payload
    // closes the listener instead, round after round.
    let f = Fixture::new();
    let dir = bin_dir();
    let out = f.worktree.join("interrupted.txt");
    let script = format!("{0} __probe serve \"$SWARMCELL_PORT\" & exec {0} __probe interrupted-accepts 20000 > {1}", bin(), out.display());
    let (mut child, ready) = f.spawn(&["--ro", dir.as_str(), "--port", "auto", "--health", "none"], &["/bin/sh", "-c", &script]);
    ready_of(&ready);
    let before = fd_count(child.id());
    let t = Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("done") && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = fd_count(child.id());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!("launcher fds: {before} -> {after}; {text}");
    child.sigterm();
    child.wait();
    assert!(text.contains("done"), "{text}");
    assert!(after < before + 80, "the launcher holds {after} fds, {before} at the start: {text}");
    assert_no_sandbox_left();
}

#[test]
fn with_io_uring_allowed_by_a_policy_an_accept_still_goes_through_the_launcher() {
    // A custom policy that allows io_uring (the default denies it): an
    // IORING_OP_ACCEPT is made by the kernel, not by a system call, so the
    // accept notification never sees it; it took the launcher's placeholder
    // and the host client it stood for was never served.
    let f = Fixture::new();
    let open = f.dir.join("io-uring.toml");
    std::fs::write(&open, "[seccomp]\ndeny = []\n").unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dir = bin_dir();
    let out = f.worktree.join("uring.txt");
    let script = format!("exec {} __probe io-uring-accept \"$SWARMCELL_PORT\" > {}", bin(), out.display());
    let policy = open.to_string_lossy().into_owned();
    let (mut child, ready) = f.spawn(&["--policy", &policy, "--ro", dir.as_str(), "--port", "auto", "--health", "none"], &["/bin/sh", "-c", &script]);
    let port = ready_of(&ready)["port"].as_u64().unwrap() as u16;
    // One client, served (its byte echoed) by whatever accept the payload made.
    let mut served = false;
    let t = Instant::now();
    while !served && t.elapsed() < Duration::from_secs(8) {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut b = [0u8; 1];
        served = c.write_all(b"X").is_ok() && c.read_exact(&mut b).is_ok() && b == *b"X";
    }
    let t = Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("io-uring-accept") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    child.sigterm();
    let t = Instant::now();
    while child.0.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child);
    assert!(text.contains("io-uring-accept blocked"), "{text}");
    assert!(served, "the host client was not served: {text}");
    assert_no_sandbox_left();
}
