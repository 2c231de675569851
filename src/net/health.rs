//! Host side (launcher and daemon): the one health checker (INV-003). A small
//! hand-written HTTP/1.1 `GET` to 127.0.0.1:INNER_PORT made *inside the
//! sandbox's network namespace* (the socket is created there, and a socket
//! stays in the namespace it was made in), so a payload's answer can never make
//! the host contact anything: there is no redirect to follow (a 3xx is a failed
//! check, like anything but 2xx), and the only address ever connected to is
//! the one the launcher chose, in a namespace that has nothing but `lo`.
//!
//! Only the status line is read, at most [`MAX_STATUS_LINE`] bytes; every
//! request has its own short timeout inside the overall deadline: a server may
//! accept connections while it is still starting and never answer a request
//! made then (seen with opencode 1.18.34 in its first second).
//!
//! [`Exchange`] is the protocol on a non-blocking socket, driven by the daemon's
//! epoll loop; [`wait`] drives it with `poll` for `swarmcell run`, on a thread
//! that has entered the sandbox's namespace. A refused connection is retried
//! every millisecond, backing off to 25 ms, so a fast server is seen at once and
//! a slow one costs little; a request left unanswered does not hold up the next
//! (checks overlap, see [`wait`]).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most bytes read of an answer: its status line must end within them.
pub const MAX_STATUS_LINE: usize = 512;
pub const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub enum Check {
    /// `GET` until a 2xx answer, through 127.0.0.1:port in `netns` (None:
    /// the caller's own namespace).
    Http { netns: Option<crate::net::broker::Netns>, port: u16, request: Arc<[u8]> },
    /// A TCP connection to 127.0.0.1:port in `netns` is enough.
    Tcp { netns: Option<crate::net::broker::Netns>, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("not healthy after {}{}", crate::policy::units::HumanDuration(*.after), .last.as_ref().map(|l| format!(" (last check: {l})")).unwrap_or_default())]
    Timeout { after: Duration, last: Option<String> },
    #[error("health check cancelled")]
    Cancelled,
    #[error("health check: {0}")]
    Setup(String),
}

/// The request, built once per sandbox: `GET PATH` with `Host`, basic auth
/// when the sandbox has a secret, and `Connection: close`.
pub fn request(path: &str, port: u16, auth: Option<(&str, &str)>) -> Arc<[u8]> {
    let auth = auth.map(|(user, password)| format!("Authorization: {}\r\n", basic_auth(user, password))).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}User-Agent: swarmcell-health\r\nConnection: close\r\n\r\n").into_bytes().into()
}

/// `Basic base64(user:password)` (RFC 7617).
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in raw.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() { ALPHABET[(n >> shift) as usize & 63] as char } else { '=' });
        }
    }
    out
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    /// Why not, in our words (a status code at most from the payload's answer).
    Unhealthy(String),
}

/// One request and its answer's status line on a non-blocking socket.
pub struct Exchange {
    request: Arc<[u8]>,
    sent: usize,
    head: Vec<u8>,
}

impl Exchange {
    pub fn new(request: Arc<[u8]>) -> Exchange {
        Exchange { request, sent: 0, head: Vec::new() }
    }

    /// Still sending (wait for the socket to be writable), else reading.
    pub fn sending(&self) -> bool {
        self.sent < self.request.len()
    }

    /// Go on after the socket was reported ready: `Some` once decided. A write
    /// on a socket whose connection failed reports the failure.
    pub fn advance<S: Read + Write>(&mut self, s: &mut S) -> Option<Outcome> {
        while self.sending() {
            match s.write(&self.request[self.sent..]) {
                Ok(0) => return Some(Outcome::Unhealthy("connection closed".into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Outcome::Unhealthy(e.to_string())),
            }
        }
        let mut buf = [0u8; MAX_STATUS_LINE];
        loop {
            let room = MAX_STATUS_LINE - self.head.len();
            match s.read(&mut buf[..room]) {
                Ok(0) => return Some(Outcome::Unhealthy("closed without an answer".into())),
                Ok(n) => {
                    self.head.extend_from_slice(&buf[..n]);
                    if let Some(end) = self.head.windows(2).position(|w| w == b"\r\n") {
                        return Some(judge(&self.head[..end]));
                    }
                    if self.head.len() >= MAX_STATUS_LINE {
                        return Some(Outcome::Unhealthy(format!("no status line in the first {MAX_STATUS_LINE} bytes")));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Outcome::Unhealthy(e.to_string())),
            }
        }
    }
}

/// `HTTP/1.x 2xx ...` is healthy; anything else (a redirect included) is not.
fn judge(status_line: &[u8]) -> Outcome {
    let code =
        status_line.strip_prefix(b"HTTP/1.").filter(|r| r.len() >= 5 && r[1] == b' ').map(|r| &r[2..5]).filter(|c| c.iter().all(u8::is_ascii_digit));
    match code {
        Some([b'2', _, _]) => Outcome::Healthy,
        Some(c) if c[0] == b'3' => Outcome::Unhealthy(format!("status {} (a redirect is never followed)", String::from_utf8_lossy(c))),
        Some(c) => Outcome::Unhealthy(format!("status {}", String::from_utf8_lossy(c))),
        None => Outcome::Unhealthy("not an HTTP/1 answer".into()),
    }
}

/// One check through 127.0.0.1:port in this thread's network namespace,
/// within `timeout`.
pub fn check_once(port: u16, request: &Arc<[u8]>, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut stream = match crate::sys::tcp_connect_loopback_nonblocking(port) {
        Ok(s) => s,
        Err(e) => return Outcome::Unhealthy(e.to_string()),
    };
    let mut ex = Exchange::new(request.clone());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Unhealthy(format!("no answer within {}", crate::policy::units::HumanDuration(timeout)));
        }
        let events = if ex.sending() { libc::POLLOUT } else { libc::POLLIN };
        let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        if r > 0
            && let Some(outcome) = ex.advance(&mut stream)
        {
            return outcome;
        }
    }
}

/// At most this many HTTP checks in flight at once (see [`wait`]): enough
/// that one starts every [`OVERLAP_EVERY`] even while none is answered.
pub const MAX_IN_FLIGHT: usize = 40;
/// While a check waits for its answer, a fresh one starts this often.
pub const OVERLAP_EVERY: Duration = Duration::from_millis(25);

/// One HTTP check in flight.
struct Attempt {
    stream: std::net::TcpStream,
    exchange: Exchange,
    deadline: Instant,
}

/// Block until healthy, the deadline passes, or `cancel` is set; returns how
/// long it took. A check with a namespace enters it first: call this on a
/// thread of its own.
///
/// HTTP checks overlap: a server that accepts connections while it starts may
/// never answer a request made then, and waiting out that request's timeout
/// before the next one would add up to [`PER_REQUEST_TIMEOUT`] to every
/// launch. So while a check waits for its answer a fresh one starts every
/// [`OVERLAP_EVERY`], each with its own timeout, at most [`MAX_IN_FLIGHT`] at
/// once; the first 2xx wins. A refused connection is retried after 1 ms,
/// backing off to 25 ms.
pub fn wait(check: &Check, deadline: Duration, cancel: &Arc<AtomicBool>) -> Result<Duration, HealthError> {
    wait_kicked(check, deadline, cancel, None)
}

/// [`wait`], and each time `kick` (a non-blocking pipe's read end) becomes
/// readable, a new attempt at once: the socket handoff writes to it when the
/// payload listens on its inner port, so a refused connection's back-off
/// (up to 25 ms) never delays the first answer.
pub fn wait_kicked(check: &Check, deadline: Duration, cancel: &Arc<AtomicBool>, kick: Option<RawFd>) -> Result<Duration, HealthError> {
    let start = Instant::now();
    if let Check::Http { netns: Some(ns), .. } | Check::Tcp { netns: Some(ns), .. } = check {
        ns.enter().map_err(|e| HealthError::Setup(format!("entering the sandbox's network namespace: {e}")))?;
    }
    match check {
        Check::Http { port, request, .. } => wait_http(*port, request, start, deadline, cancel, kick),
        Check::Tcp { port, .. } => wait_tcp(*port, start, deadline, cancel, kick),
    }
}

/// Sleep up to `d`, less when `kick` becomes readable (then drained): true if kicked.
fn sleep_or_kick(d: Duration, kick: &mut Option<RawFd>) -> bool {
    let Some(fd) = *kick else {
        std::thread::sleep(d);
        return false;
    };
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let kicked = unsafe { libc::poll(&mut pfd, 1, ms) } > 0 && pfd.revents != 0;
    if kicked {
        kick_taken(kick, pfd.revents);
    }
    kicked
}

/// Drain the kick pipe; forget it once its writer is gone (a hung-up pipe
/// polls readable forever and would be taken as a kick each time).
fn kick_taken(kick: &mut Option<RawFd>, revents: libc::c_short) {
    if let Some(fd) = *kick {
        drain_kick(fd);
        if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            *kick = None;
        }
    }
}

fn drain_kick(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a local buffer from a non-blocking pipe.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn wait_tcp(port: u16, start: Instant, deadline: Duration, cancel: &Arc<AtomicBool>, mut kick: Option<RawFd>) -> Result<Duration, HealthError> {
    let mut interval = Duration::from_millis(1);
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(HealthError::Cancelled);
        }
        let why = match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(HealthError::Timeout { after: deadline, last: Some(why) });
        }
        if sleep_or_kick(interval.min(deadline.saturating_sub(start.elapsed())), &mut kick) {
            interval = Duration::from_millis(1);
        } else {
            interval = (interval * 2).min(Duration::from_millis(25));
        }
    }
}

fn wait_http(
    port: u16,
    request: &Arc<[u8]>,
    start: Instant,
    deadline: Duration,
    cancel: &Arc<AtomicBool>,
    mut kick: Option<RawFd>,
) -> Result<Duration, HealthError> {
    let end = start + deadline;
    let mut flight: Vec<Attempt> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut next_start = start;
    let mut backoff = Duration::from_millis(1);
    let mut last: Option<String> = None;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(HealthError::Cancelled);
        }
        let now = Instant::now();
        if now >= end {
            return Err(HealthError::Timeout { after: deadline, last });
        }
        // Give up on the attempts whose own timeout passed.
        flight.retain(|a| {
            let alive = now < a.deadline;
            if !alive {
                last = Some(format!("no answer within {}", crate::policy::units::HumanDuration(PER_REQUEST_TIMEOUT)));
            }
            alive
        });
        if flight.len() < MAX_IN_FLIGHT && now >= next_start {
            match crate::sys::tcp_connect_loopback_nonblocking(port) {
                Ok(stream) => {
                    let per_request = PER_REQUEST_TIMEOUT.min(end - now).max(Duration::from_millis(1));
                    flight.push(Attempt { stream, exchange: Exchange::new(request.clone()), deadline: now + per_request });
                    next_start = now + OVERLAP_EVERY;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    next_start = now + backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(25));
                }
            }
            tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, in_flight = flight.len(), "health attempt started");
        }
        // Sleep until an answer, the next start, an attempt's timeout, or a
        // cancellation check (every 25 ms at most).
        let mut wake = end.min(now + Duration::from_millis(25));
        if flight.len() < MAX_IN_FLIGHT {
            wake = wake.min(next_start);
        }
        for a in &flight {
            wake = wake.min(a.deadline);
        }
        pfds.clear();
        pfds.extend(flight.iter().map(|a| libc::pollfd {
            fd: a.stream.as_raw_fd(),
            events: if a.exchange.sending() { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        }));
        let n = pfds.len();
        pfds.extend(kick.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
        let timeout_ms = wake.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: pfds is a valid array of pfds.len() pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r <= 0 {
            continue;
        }
        if kick.is_some() && pfds[n].revents != 0 {
            // The payload listens now: try at once, with a fresh back-off.
            kick_taken(&mut kick, pfds[n].revents);
            next_start = Instant::now();
            backoff = Duration::from_millis(1);
        }
        let mut healthy = false;
        let mut failed = false;
        let mut k = 0;
        flight.retain_mut(|a| {
            let ready = pfds[k].revents != 0;
            k += 1;
            if !ready {
                return true;
            }
            match a.exchange.advance(&mut a.stream) {
                None => true,
                Some(Outcome::Healthy) => {
                    healthy = true;
                    false
                }
                Some(Outcome::Unhealthy(why)) => {
                    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, why = %why, "health attempt failed");
                    last = Some(why);
                    failed = true;
                    false
                }
            }
        });
        if healthy {
            return Ok(start.elapsed());
        }
        if failed && flight.is_empty() {
            // An answer, but not a 2xx: ask again soon, backing off.
            next_start = next_start.min(Instant::now() + backoff);
            backoff = (backoff * 2).min(Duration::from_millis(25));
        }
    }
}

/// A one-connection test server for the checkers' unit tests (here and the daemon's).
#[cfg(test)]
pub(crate) mod test_server {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// Answers its first connection with `reply` after reading the request;
    /// with an empty `reply` it says nothing for 3 s.
    pub(crate) fn start(reply: &'static [u8]) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            if !reply.is_empty() {
                let _ = s.write_all(reply);
            } else {
                std::thread::sleep(Duration::from_secs(3));
            }
        });
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_server::start as server;

    fn once(port: u16) -> Outcome {
        check_once(port, &request("/h", 1, None), Duration::from_millis(500))
    }

    #[test]
    fn a_2xx_is_healthy_and_anything_else_is_not() {
        assert_eq!(once(server(b"HTTP/1.1 200 OK\r\n\r\n")), Outcome::Healthy);
        assert_eq!(once(server(b"HTTP/1.0 204 No Content\r\n\r\n")), Outcome::Healthy);
        assert!(matches!(once(server(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n\r\n")), Outcome::Unhealthy(w) if w.contains("302")));
        assert!(matches!(once(server(b"HTTP/1.1 503 No\r\n\r\n")), Outcome::Unhealthy(w) if w == "status 503"));
        assert!(matches!(once(server(b"HTTP/1.1 2")), Outcome::Unhealthy(_)), "a short answer");
        assert!(matches!(once(server(b"SSH-2.0-x\r\n")), Outcome::Unhealthy(_)));
        let endless: &'static [u8] = Box::leak(vec![b'x'; 4096].into_boxed_slice());
        assert!(matches!(once(server(endless)), Outcome::Unhealthy(w) if w.contains("no status line")));
    }

    #[test]
    fn a_kick_pipe_whose_writer_is_gone_does_not_hurry_the_checks() {
        // A silent server: every check waits for its answer; a new one may
        // start every OVERLAP_EVERY (25 ms), so 300 ms see about a dozen.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let (kick, writer) = crate::sys::pipe_cloexec().unwrap();
        crate::sys::set_nonblocking(kick.as_raw_fd()).unwrap();
        drop(writer);
        let check = Check::Http { netns: None, port, request: request("/h", port, None) };
        let cancel = Arc::new(AtomicBool::new(false));
        let r = wait_kicked(&check, Duration::from_millis(300), &cancel, Some(kick.as_raw_fd()));
        assert!(matches!(r, Err(HealthError::Timeout { .. })), "{r:?}");
        silent.set_nonblocking(true).unwrap();
        let made = std::iter::from_fn(|| silent.accept().ok()).count();
        // A hung-up pipe polls readable forever: taken as a kick each time, it
        // started MAX_IN_FLIGHT checks at once.
        assert!(made <= 16, "{made} checks in 300 ms");
    }

    #[test]
    fn a_closed_port_fails_and_a_silent_server_runs_into_the_timeout() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(matches!(once(closed), Outcome::Unhealthy(_)));
        let t = Instant::now();
        assert!(matches!(once(server(b"")), Outcome::Unhealthy(w) if w.contains("no answer within")));
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    /// A server that accepts at once but leaves its first connections
    /// unanswered (as opencode does while it starts): the overlapping checks
    /// see it healthy as soon as it answers, not a request timeout later.
    #[test]
    fn an_unanswered_first_request_does_not_hold_up_the_next() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let mut s = s.unwrap();
                if t0.elapsed() < Duration::from_millis(200) {
                    held.push(s); // accepted, never answered
                } else {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                }
            }
        });
        let check = Check::Http { netns: None, port, request: request("/h", port, None) };
        let took = wait(&check, Duration::from_secs(5), &Arc::new(AtomicBool::new(false))).unwrap();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(600), "healthy only after {took:?}");
    }

    #[test]
    fn checks_in_flight_are_bounded_and_a_silent_server_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                a.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        let check = Check::Http { netns: None, port, request: request("/h", port, None) };
        let t = Instant::now();
        let r = wait(&check, Duration::from_millis(700), &Arc::new(AtomicBool::new(false)));
        assert!(matches!(r, Err(HealthError::Timeout { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_millis(900));
        std::thread::sleep(Duration::from_millis(50));
        let n = accepted.load(Ordering::SeqCst);
        assert!((10..=MAX_IN_FLIGHT).contains(&n), "{n} connections within one request timeout");
    }

    #[test]
    fn the_request_carries_basic_auth() {
        assert_eq!(basic_auth("opencode", "s3cret"), "Basic b3BlbmNvZGU6czNjcmV0");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
        let r = request("/global/health", 4096, Some(("opencode", "s3cret")));
        let text = String::from_utf8(r.to_vec()).unwrap();
        assert!(text.starts_with("GET /global/health HTTP/1.1\r\nHost: 127.0.0.1:4096\r\nAuthorization: Basic b3BlbmNvZGU6czNjcmV0\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }
}
