//! `swarmcell bench broker`: both brokers (handoff, the default, and relay)
//! against a direct loopback connection and against `socat` forwarding, side by
//! side in one run on this machine, in alternating rounds: bulk throughput each
//! way, 64-byte ping-pong latency (p50, p99), new connections per second, and
//! launch-to-healthy of a small HTTP server minus that server's own start-up;
//! and the per-connection uid check's cost (the same relay with and without it).
//!
//! The servers are `swarmcell __probe bench-server` / `serve`: the same program
//! directly on the host, inside a sandbox (through the broker), and behind socat.

/// `swarmcell bench` (no subcommand): launch, OpenCode and broker side by side.
pub mod all;
/// `swarmcell bench daemon`: soak and scale through the daemon.
pub mod daemon;
/// `swarmcell bench denials`: a denial storm's cost to its payload.
pub mod denials;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    pub bytes: u64,
    pub pings: usize,
    pub launches: usize,
    /// Connections for the connection rate (over all rounds) and the uid check's cost.
    pub connections: usize,
    pub worktree: PathBuf,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))
}

fn free_port() -> Result<u16, String> {
    // The kernel picks an unused ephemeral port; it stays free for the moment we need.
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

fn wait_connectable(port: u16, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Err(format!("nothing listens on 127.0.0.1:{port}"))
}

/// A sandboxed bench server: its launcher, host port, launch-to-ready time,
/// and the sandbox init's host pid.
struct Sandboxed {
    /// Held: dropping it stops the sandbox.
    _launcher: Killed,
    port: u16,
    took: Duration,
    init: i32,
}

/// `swarmcell run --port auto ... -- swarmcell __probe MODE {port}`, waiting
/// for the ready line.
fn sandboxed(opts: &Options, mode: &str, health: &str, broker: &str) -> Result<Sandboxed, String> {
    let exe = exe()?;
    let start = Instant::now();
    let mut cmd = Command::new(&exe);
    // The probe is this binary, bound alone: its directory may be one the
    // sandbox makes its own (/tmp), which a read-only bind would spoil.
    cmd.args(["run", "--port", "auto", "--broker", broker, "--health", health, "--ready-fd", "3", "--ro"])
        .arg(&exe)
        .arg("--worktree")
        .arg(&opts.worktree)
        .arg("--")
        .arg(&exe)
        .args(["__probe", mode, "{port}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // `serve` logs every request (each health check) to stderr.
        .stderr(if mode == "serve" { Stdio::null() } else { Stdio::inherit() });
    let (child, line) = crate::launch::spawn_until_ready(&mut cmd).map_err(|e| format!("starting swarmcell run: {e}"))?;
    let child = Killed(child);
    let took = start.elapsed();
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| format!("no ready line ({e}): {line:?}"))?;
    let port = v["port"].as_u64().ok_or("ready line without a port")? as u16;
    let init = v["pid"].as_i64().ok_or("ready line without a pid")? as i32;
    Ok(Sandboxed { _launcher: child, port, took, init })
}

/// The CPUs this process may use.
fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok(crate::sys::cpus_in(&set))
}

fn only(cpu: usize) -> Result<nix::sched::CpuSet, String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    Ok(set)
}

/// Pin every thread of `pid` to `cpu` (threads made later inherit it).
fn pin_process(pid: i32, cpu: usize) -> Result<(), String> {
    let set = only(cpu)?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    for tid in tasks.flatten().filter_map(|t| t.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
        match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
            // A connection's thread that ended meanwhile.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("pinning thread {tid} of {pid}: {e}")),
        }
    }
    Ok(())
}

/// Start `cmd` in a session of its own. With autogroup scheduling (the
/// default on most distributions) a session is a scheduling group: a server in
/// the client's session (this bench's) shares the client's group, which no
/// real server does and a sandboxed one cannot; on one CPU that alone made the
/// direct path 12-14% faster one way.
/// Out of the terminal's process group, it would outlive a Ctrl-C of the
/// bench: it is ended with the bench instead.
fn own_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: getpid, setsid, prctl and getppid are async-signal-safe.
    unsafe {
        let bench = libc::getpid();
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::setsid() < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != bench {
                return Err(std::io::Error::other("the bench ended"));
            }
            Ok(())
        })
    }
}

/// The payload of the sandbox whose init is `init` (its only child).
fn payload_of(init: i32) -> Result<i32, String> {
    let kids = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).map_err(|e| format!("children of {init}: {e}"))?;
    kids.split_whitespace().next().and_then(|p| p.parse().ok()).ok_or_else(|| format!("sandbox init {init} has no payload"))
}

/// A connection to the bench server at `target` (HOST:PORT), directly or through
/// an HTTP CONNECT proxy.
fn dial(target: &str, proxy: Option<&str>) -> Result<TcpStream, String> {
    let Some(proxy) = proxy else { return TcpStream::connect(target).map_err(|e| format!("{target}: {e}")) };
    let mut s = TcpStream::connect(proxy).map_err(|e| format!("proxy {proxy}: {e}"))?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).map_err(|e| format!("proxy answer: {e}"))?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("proxy refused: {}", head.lines().next().unwrap_or("")));
    }
    Ok(s)
}

/// `__probe bench-client TARGET BYTES [PROXY]`: upload and download BYTES,
/// print `up=GiB/s down=GiB/s`.
pub fn client(target: &str, bytes: u64, proxy: Option<&str>) -> Result<String, String> {
    let gib = |d: Duration| bytes as f64 / d.as_secs_f64() / f64::from(1u32 << 30);
    let up = gib(upload_on(dial(target, proxy)?, bytes)?);
    let down = gib(download_on(dial(target, proxy)?, bytes)?);
    Ok(format!("up={up:.3} down={down:.3}"))
}

fn upload(port: u16, bytes: u64) -> Result<Duration, String> {
    upload_on(TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?, bytes)
}

fn upload_on(mut s: TcpStream, bytes: u64) -> Result<Duration, String> {
    // Binary filler: a tunnel whose first bytes could be an HTTP method is refused (egress::tunnel_start).
    let chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    s.write_all(b"S").map_err(|e| e.to_string())?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).map_err(|e| e.to_string())?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n).map_err(|e| e.to_string())?;
    if u64::from_le_bytes(n) != bytes {
        return Err(format!("server counted {} of {bytes} bytes", u64::from_le_bytes(n)));
    }
    Ok(start.elapsed())
}

fn download(port: u16, bytes: u64) -> Result<Duration, String> {
    download_on(TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?, bytes)
}

fn download_on(mut s: TcpStream, bytes: u64) -> Result<Duration, String> {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    s.write_all(b"G").and_then(|_| s.write_all(&bytes.to_le_bytes())).map_err(|e| e.to_string())?;
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).map_err(|e| e.to_string())? {
            0 => break,
            k => got += k as u64,
        }
    }
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(start.elapsed())
}

/// Round-trip times of `n` 64-byte messages on one connection, sorted.
fn pingpong(port: u16, n: usize) -> Result<Vec<Duration>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(b"E").map_err(|e| e.to_string())?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        s.write_all(&msg).and_then(|_| s.read_exact(&mut back)).map_err(|e| e.to_string())?;
        if i >= 200 {
            rtts.push(t.elapsed()); // the first 200 warm up
        }
    }
    rtts.sort();
    Ok(rtts)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    up: f64,
    down: f64,
    /// New connections per second (connect, one echoed byte, close).
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Sequential connections per second: connect, echo one byte, close.
fn connection_rate(port: u16, n: usize) -> Result<f64, String> {
    let start = Instant::now();
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.write_all(b"Ex").map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(|e| format!("connection rate: {e}"))?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// How many times each path is measured, alternating between the paths, so
/// that a busy machine's swings hit every path alike (each round moves a
/// share of the bytes).
const ROUNDS: usize = 6;

/// Measure every `(name, port)` path in `ROUNDS` alternating rounds, from
/// this thread pinned to `client_cpu`: median throughput each way, latency
/// percentiles over all rounds' pings.
fn measure_all(paths: &[(&'static str, u16)], opts: &Options, client_cpu: usize) -> Result<Vec<Row>, String> {
    let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only(client_cpu)?).map_err(|e| format!("pinning the client: {e}"))?;
    let rows = measure_rounds(paths, opts);
    let restored = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &before);
    let rows = rows?;
    restored.map_err(|e| format!("unpinning the client: {e}"))?;
    Ok(rows)
}

fn measure_rounds(paths: &[(&'static str, u16)], opts: &Options) -> Result<Vec<Row>, String> {
    let bytes = (opts.bytes / ROUNDS as u64).max(1 << 20);
    let gib = |d: Duration| bytes as f64 / d.as_secs_f64() / f64::from(1u32 << 30);
    let mut ups = vec![Vec::new(); paths.len()];
    let mut downs = vec![Vec::new(); paths.len()];
    let mut rtts = vec![Vec::new(); paths.len()];
    let mut rates = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (i, (_, port)) in paths.iter().enumerate() {
            ups[i].push(gib(upload(*port, bytes)?));
            downs[i].push(gib(download(*port, bytes)?));
            rates[i].push(connection_rate(*port, (opts.connections / ROUNDS).max(1))?);
            rtts[i].extend(pingpong(*port, opts.pings.div_ceil(ROUNDS))?);
        }
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(paths
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut r = std::mem::take(&mut rtts[i]);
            r.sort();
            Row {
                name,
                up: mid(std::mem::take(&mut ups[i])),
                down: mid(std::mem::take(&mut downs[i])),
                rate: mid(std::mem::take(&mut rates[i])),
                p50: pct(&r, 0.5),
                p99: pct(&r, 0.99),
            }
        })
        .collect())
}

pub fn broker(opts: &Options) -> Result<(), String> {
    let exe = exe()?;
    println!(
        "swarmcell bench broker: {} MiB each way, {} pings of 64 bytes, {} connections, in {ROUNDS} alternating rounds; {} launches",
        opts.bytes >> 20,
        opts.pings,
        opts.connections,
        opts.launches
    );
    // Direct: the bench server on the host's loopback.
    let direct_port = free_port()?;
    let direct =
        Killed(own_session(Command::new(&exe).args(["__probe", "bench-server", &direct_port.to_string()])).spawn().map_err(|e| e.to_string())?);
    wait_connectable(direct_port, Duration::from_secs(5))?;
    // socat forwarding to the same server.
    let socat_port = free_port()?;
    let socat = own_session(
        Command::new("socat")
            .args([format!("TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork"), format!("TCP:127.0.0.1:{direct_port}")])
            .stderr(Stdio::null()),
    )
    .spawn()
    .map(Killed);
    // The same server inside a sandbox, behind the broker in each mode.
    let handoff = sandboxed(opts, "bench-server", "none", "handoff")?;
    let relay = sandboxed(opts, "bench-server", "none", "relay")?;

    // Every server on one CPU (the launchers' relay threads are left where
    // the kernel puts them: they are the relay's own cost).
    let cpus = allowed_cpus()?;
    let server_cpu = *cpus.last().ok_or("no CPU allowed")?;
    let mut servers = vec![direct.0.id() as i32, payload_of(handoff.init)?, payload_of(relay.init)?];
    let mut paths = vec![("direct loopback", direct_port), ("broker (handoff)", handoff.port), ("broker (relay)", relay.port)];
    match &socat {
        Ok(s) => {
            wait_connectable(socat_port, Duration::from_secs(5))?;
            paths.push(("socat", socat_port));
            servers.push(s.0.id() as i32);
        }
        Err(e) => println!("(socat not run: {e}; install it with scripts/setup)"),
    }
    for pid in servers {
        pin_process(pid, server_cpu)?;
    }
    // Where the client runs: on the servers' CPU, then on another. Left to
    // the kernel, the choice swung from run to run (a wakeup on the same CPU
    // or across), and with it each path's throughput and latency by up to
    // 20%; so each placement is measured, and compared, on its own.
    let other_cpu = cpus.iter().copied().find(|&c| c != server_cpu);
    for client_cpu in std::iter::once(server_cpu).chain(other_cpu) {
        let rows = measure_all(&paths, opts, client_cpu)?;
        let (placement, place) = if client_cpu == server_cpu {
            ("Together", format!("client and servers on CPU {server_cpu}"))
        } else {
            ("Apart", format!("client on CPU {client_cpu}, servers on CPU {server_cpu}"))
        };
        println!();
        println!("{place}:");
        println!("{:<18} {:>12} {:>12} {:>10} {:>10} {:>10}", "path", "up GiB/s", "down GiB/s", "p50 µs", "p99 µs", "conn/s");
        for r in &rows {
            println!(
                "{:<18} {:>12.2} {:>12.2} {:>10.1} {:>10.1} {:>10.0}",
                r.name,
                r.up,
                r.down,
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                r.rate
            );
        }
        let d = &rows[0];
        for r in &rows[1..] {
            println!(
                "{} ({placement}): throughput {:.2}x up, {:.2}x down of direct; added latency p50 {:+.1} µs, p99 {:+.1} µs; connections {:.2}x",
                r.name,
                r.up / d.up,
                r.down / d.down,
                (r.p50.as_secs_f64() - d.p50.as_secs_f64()) * 1e6,
                (r.p99.as_secs_f64() - d.p99.as_secs_f64()) * 1e6,
                r.rate / d.rate
            );
        }
    }
    drop((handoff, relay));

    uid_check_cost(direct_port, opts.connections)?;

    // Launch-to-healthy against the server's own start-up, alternating.
    let mut own = Vec::new();
    let (mut handoff, mut relay) = (Vec::new(), Vec::new());
    let check_ms = |d: Duration| d.as_secs_f64() * 1e3;
    for _ in 0..opts.launches {
        let port = free_port()?;
        let start = Instant::now();
        let server =
            Killed(Command::new(&exe).args(["__probe", "serve", &port.to_string()]).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?);
        // Polled every 0.2 ms until it listens (the checker's back-off after a
        // refused connection would add up to milliseconds to the baseline).
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::net::health::wait(
            &crate::net::health::Check::Http { netns: None, port, request: crate::net::health::request("/", port, None) },
            Duration::from_secs(5),
            &cancel,
        )
        .map_err(|e| e.to_string())?;
        own.push(start.elapsed());
        drop(server);
        for (mode, v) in [("handoff", &mut handoff), ("relay", &mut relay)] {
            v.push(sandboxed(opts, "serve", "http", mode)?.took);
        }
    }
    let own = median(own);
    println!();
    println!("launch-to-healthy (medians of {}): server alone {:.2} ms", opts.launches, check_ms(own));
    for (name, v) in [("handoff", handoff), ("relay", relay)] {
        let m = median(v);
        println!("  in a sandbox, broker ({name}): {:.2} ms: overhead {:.2} ms", check_ms(m), check_ms(m.saturating_sub(own)));
    }
    Ok(())
}

/// The uid check's cost on its own: two relays in this process to the same
/// bench server, identical but for the check, and connections made to one and
/// the other in turn (so the host's other load hits both alike); medians of
/// the per-connection times (open, one byte echoed, close) and the accept
/// rates they give, and one `sock_diag` lookup timed alone.
fn uid_check_cost(server_port: u16, n: usize) -> Result<(), String> {
    use crate::net::broker::{Broker, Dest, Ingress};
    const BENCH_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
    let err = |e: std::io::Error| e.to_string();
    let (l1, l2) = (TcpListener::bind("127.0.0.1:0").map_err(err)?, TcpListener::bind("127.0.0.1:0").map_err(err)?);
    let (p1, p2) = (l1.local_addr().map_err(err)?.port(), l2.local_addr().map_err(err)?.port());
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let stats = || crate::net::broker_stats::SharedCounters::private().map(std::sync::Arc::new).map_err(err);
    let _checked =
        Broker::start_checked(l1, Dest::Host(server_port), 256, stats()?, BENCH_IDLE, Some(Ingress { allowed: vec![0, me].into(), port: p1 }))
            .map_err(err)?;
    let _plain = Broker::start(l2, Dest::Host(server_port), 256, stats()?, BENCH_IDLE).map_err(err)?;
    let one = |port: u16| -> Result<Duration, String> {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.write_all(b"Ex").and_then(|_| s.read_exact(&mut b)).map_err(|e| format!("uid-check connection: {e}"))?;
        Ok(t.elapsed())
    };
    let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if i % 2 == 0 {
            with.push(one(p1)?);
            without.push(one(p2)?);
        } else {
            without.push(one(p2)?);
            with.push(one(p1)?);
        }
    }
    let (a, b) = (median(with), median(without));
    let lookup = crate::net::sock_diag::time_lookup(20_000).map_err(|e| format!("timing the uid lookup: {e}"))?;
    println!(
        "uid check (the same relay in this process, {n} connections each, interleaved): median connection {:.1} µs with, {:.1} µs without; accept rate {:.0}/s against {:.0}/s: {:+.1}%; one lookup alone {:.1} µs",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        1.0 / a.as_secs_f64(),
        1.0 / b.as_secs_f64(),
        (b.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0,
        lookup.as_secs_f64() * 1e6
    );
    Ok(())
}

/// `swarmcell bench egress`: bulk throughput from inside a sandbox to a host
/// loopback server through an outbound forward and through the egress proxy,
/// against the same client connecting directly on the host.
pub fn egress(opts: &Options) -> Result<(), String> {
    let exe = exe()?;
    let port = free_port()?;
    let _server = Killed(Command::new(&exe).args(["__probe", "bench-server", &port.to_string()]).spawn().map_err(|e| e.to_string())?);
    wait_connectable(port, Duration::from_secs(5))?;
    let bytes = opts.bytes.to_string();
    let parse = |out: std::process::Output, what: &str| -> Result<(f64, f64), String> {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let get = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|v| v.parse::<f64>().ok()));
        match (get("up="), get("down=")) {
            (Some(u), Some(d)) => Ok((u, d)),
            _ => Err(format!("{what}: {}{}", text, String::from_utf8_lossy(&out.stderr))),
        }
    };
    let target = format!("127.0.0.1:{port}");
    let direct = parse(Command::new(&exe).args(["__probe", "bench-client", &target, &bytes]).output().map_err(|e| e.to_string())?, "direct")?;
    let sandboxed = |extra: Vec<String>, cmd: Vec<String>, what: &str| -> Result<(f64, f64), String> {
        let out = Command::new(&exe)
            .arg("run")
            .arg("--worktree")
            .arg(&opts.worktree)
            .arg("--ro")
            .arg(&exe)
            .args(&extra)
            .arg("--")
            .arg(&exe)
            .args(&cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        parse(out, what)
    };
    let forward = sandboxed(
        vec!["--forward".into(), port.to_string()],
        vec!["__probe".into(), "bench-client".into(), target.clone(), bytes.clone()],
        "forward",
    )?;
    let name = format!("bench.test.invalid:{port}");
    let proxy = sandboxed(
        vec![
            "--allow-host".into(),
            name.clone(),
            "--resolve".into(),
            "bench.test.invalid=127.0.0.1".into(),
            "--allow-address".into(),
            "127.0.0.1".into(),
        ],
        vec!["__probe".into(), "bench-client".into(), name, bytes, "127.0.0.1:3128".into()],
        "proxy",
    )?;
    println!("swarmcell bench egress: {} MiB each way", opts.bytes >> 20);
    println!("{:<22} {:>10} {:>12}", "path", "up GiB/s", "down GiB/s");
    for (name, (u, d)) in [("direct loopback", direct), ("outbound forward", forward), ("egress proxy (CONNECT)", proxy)] {
        println!("{name:<22} {u:>10.2} {d:>12.2}");
    }
    for (name, (u, d)) in [("outbound forward", forward), ("egress proxy", proxy)] {
        println!("{name}: {:.2}x up, {:.2}x down of direct", u / direct.0, d / direct.1);
    }
    Ok(())
}

/// A worktree for the bench under a fresh temporary directory, owned by an
/// unprivileged uid; removed on drop.
pub struct TempWorktree(pub PathBuf);

impl TempWorktree {
    pub fn new() -> Result<TempWorktree, String> {
        let dir = std::env::temp_dir().join(format!("swarmcell-bench-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let wt = dir.join("wt");
        std::fs::create_dir(&wt).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&wt, Some(10000), Some(10000)).map_err(|e| e.to_string())?;
        Ok(TempWorktree(dir))
    }

    pub fn path(&self) -> PathBuf {
        self.0.join("wt")
    }
}

impl Drop for TempWorktree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
