//! Payload side (run inside a sandbox by the tests): network probes that act as
//! a hostile client of the launcher's egress proxy and outbound forwards.
//!
//! - `flood PORT COUNT SECS`: open COUNT connections to 127.0.0.1:PORT and keep
//!   each alive for SECS seconds by writing one byte per second on it; print
//!   `opened=N failed=M closed=K open=J` (closed: by the other side).
//! - `trickle PORT INTERVAL_MS MAX_SECS`: send a request head one byte per
//!   INTERVAL_MS; print `closed after T ms` (with what came back) or `open after T ms`.
//! - `send HOST:PORT WAIT_SECS PART...`: send each PART (`\r`, `\n` escapes), reading
//!   what comes back after each; then wait up to WAIT_SECS for the close; print
//!   `reply: ...` (escaped) and `end: closed after T ms` or `end: open after T ms`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub fn main(name: &str, args: &[String]) -> Option<u8> {
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    Some(match (name, num(0), num(1), num(2)) {
        ("flood", Some(port), Some(count), Some(secs)) => flood(port as u16, count as usize, secs),
        ("trickle", Some(port), Some(interval), Some(max)) => trickle(port as u16, interval, max),
        ("send", _, Some(wait), _) if args.len() >= 2 => send(&args[0], wait, &args[2..]),
        ("flood" | "trickle" | "send", ..) => {
            eprintln!("usage: flood PORT COUNT SECS | trickle PORT INTERVAL_MS MAX_SECS | send HOST:PORT WAIT_SECS PART...");
            2
        }
        _ => return None,
    })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether the other side has closed `s` (non-blocking check; data is discarded).
fn peer_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

fn flood(port: u16, count: usize, secs: u64) -> u8 {
    let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(count);
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&local(port), Duration::from_secs(2)) {
            Ok(s) if s.set_nonblocking(true).is_ok() => conns.push(Some(s)),
            _ => failed += 1,
        }
    }
    let opened = conns.len();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        for c in conns.iter_mut() {
            let gone = match c {
                Some(s) => peer_closed(s) || s.write(b"G").is_err(),
                None => false,
            };
            if gone {
                *c = None;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let open = conns.iter_mut().flatten().map(|s| !peer_closed(s)).filter(|o| *o).count();
    println!("opened={opened} failed={failed} closed={} open={open}", opened - open);
    0
}

fn trickle(port: u16, interval: u64, max: u64) -> u8 {
    let head = b"GET http://trickle.test.invalid/ HTTP/1.1\r\nHost: trickle.test.invalid\r\nX-Padding: ";
    let start = Instant::now();
    let mut s = match TcpStream::connect(local(port)) {
        Ok(s) => s,
        Err(e) => {
            println!("connect failed: {e}");
            return 1;
        }
    };
    let _ = s.set_nonblocking(true);
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(max) {
        let byte = head.get(i).copied().unwrap_or(b'a');
        i += 1;
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        let closed = loop {
            match s.read(&mut b) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if closed || s.write(&[byte]).is_err() {
            println!("closed after {} ms: {}", start.elapsed().as_millis(), escape(&got));
            return 0;
        }
        std::thread::sleep(Duration::from_millis(interval));
    }
    println!("open after {} ms", start.elapsed().as_millis());
    0
}

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

pub fn escape(b: &[u8]) -> String {
    b.iter().flat_map(|c| std::ascii::escape_default(*c)).map(char::from).collect()
}

/// Read until EOF (true) or until nothing came for `quiet` / `until` passed (false).
fn read_some(s: &mut TcpStream, into: &mut Vec<u8>, quiet: Duration, until: Instant) -> bool {
    let mut b = [0u8; 4096];
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= until || now.duration_since(last) >= quiet {
            return false;
        }
        let _ = s.set_read_timeout(Some((until - now).min(quiet).max(Duration::from_millis(1))));
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(n) => {
                into.extend_from_slice(&b[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return true,
        }
    }
}

fn send(target: &str, wait: u64, parts: &[String]) -> u8 {
    let start = Instant::now();
    let mut s = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(e) => {
            println!("end: connect failed: {e}");
            return 1;
        }
    };
    let mut reply = Vec::new();
    let mut closed = false;
    for p in parts {
        if closed || s.write_all(&unescape(p)).is_err() {
            closed = true;
            break;
        }
        closed = read_some(&mut s, &mut reply, Duration::from_millis(700), Instant::now() + Duration::from_secs(wait));
    }
    if !closed {
        closed = read_some(&mut s, &mut reply, Duration::from_secs(wait), start + Duration::from_secs(wait));
    }
    println!("reply: {}", escape(&reply));
    println!("end: {} after {} ms", if closed { "closed" } else { "open" }, start.elapsed().as_millis());
    0
}
