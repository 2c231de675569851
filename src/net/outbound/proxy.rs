//! Parent side (host root): the egress proxy's serving, on the sandbox's
//! outbound event loop ([`super`]): one connection's request head within
//! `head_timeout`, checked against the rules ([`crate::net::egress`]), then one
//! plain-HTTP request or a CONNECT tunnel upstream. What it allows is in
//! `crate::net::egress`; how a request is read, in `crate::net::http1`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Shared;
use crate::net::http1::{self, Body, Refusal, Target};
use crate::policy::units::HumanDuration;

const MAX_HEAD: usize = 16 * 1024;
/// How long a refused client gets to read its answer before the close.
const LINGER: Duration = Duration::from_secs(1);

/// As `Rules::decide`, resolving on the loop's few resolver threads, with a deadline.
async fn decide_bounded(rules: &crate::net::egress::Rules, host: &str, port: u16, shared: &Shared) -> Result<SocketAddr, String> {
    let host = rules.check_name(host, port)?;
    let addrs = match rules.resolve.get(&host) {
        Some(ip) => vec![*ip],
        None => shared.resolver.resolve(&host, port).await?,
    };
    rules.choose(&host, port, &addrs)
}

/// Audit one egress decision (one call per decision), on the launcher's event
/// channel: in daemon mode every decision is an audit event with the sandbox id.
fn audit(host: &str, port: u16, decision: &Result<SocketAddr, String>) {
    crate::launch::events::emit(crate::launch::events::Event::Egress {
        host: host.to_string(),
        port,
        allowed: decision.is_ok(),
        reason: decision.as_ref().err().cloned(),
        address: decision.as_ref().ok().map(|a| a.to_string()),
    });
}

/// Serve one connection to the proxy (on the sandbox's outbound loop).
pub(crate) async fn serve(client: TcpStream, shared: &Shared) {
    let (head_timeout, idle) = (shared.settings.head_timeout, shared.settings.idle_timeout);
    let (head, rest) = match tokio::time::timeout(head_timeout, read_head(&client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(None)) => return,
        Ok(Err(Some(r))) => return answer(client, &r).await,
        Err(_) => {
            let reason = format!("no complete request head within {}", HumanDuration(head_timeout));
            return answer(client, &Refusal { status: 408, reason }).await;
        }
    };
    let req = match http1::parse(&head) {
        Ok(r) => r,
        Err(r) => return answer(client, &r).await,
    };
    let body = match req.body() {
        Ok(b) => b,
        Err(r) => return answer(client, &r).await,
    };
    let (host, port) = req.target.host_port();
    let host = host.to_string();
    let decision = match req.check_host() {
        Ok(()) => decide_bounded(&shared.rules, &host, port, shared).await,
        Err(r) => Err(r.reason),
    };
    audit(&host, port, &decision);
    let addr = match decision {
        Ok(a) => a,
        Err(reason) => return answer(client, &Refusal { status: 403, reason }).await,
    };
    let upstream = match tokio::time::timeout(super::CONNECT_TIMEOUT, super::connect_as(addr, shared.settings.connect_as)).await {
        Ok(Ok(u)) => u,
        failed => {
            let e = failed.map_or_else(|_| "timed out".to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
            crate::launch::events::emit(crate::launch::events::Event::Egress {
                host: host.to_string(),
                port,
                allowed: true,
                reason: Some(format!("connect {host}:{port}: {e}")),
                address: None,
            });
            return answer(client, &Refusal { status: 502, reason: format!("cannot connect to {host}:{port}: {e}") }).await;
        }
    };
    let last = Cell::new(Instant::now());
    if let Target::Connect { .. } = req.target {
        let ready = async {
            super::write_all(&client, b"HTTP/1.1 200 Connection established\r\n\r\n", &last).await?;
            // Nothing goes upstream before the tunnel is known not to carry plain HTTP.
            let mut first = rest.clone();
            let mut chunk = [0u8; 4096];
            loop {
                match tunnel_start(&first) {
                    TunnelStart::Http => return Ok(false),
                    TunnelStart::Other => break,
                    TunnelStart::Undecided => match super::read_some(&client, &mut chunk, &last).await? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        n => first.extend_from_slice(&chunk[..n]),
                    },
                }
            }
            super::write_all(&upstream, &first, &last).await.map(|()| true)
        };
        let opened = tokio::select! {
            r = ready => r,
            _ = super::idle_for(&last, idle) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        match opened {
            Ok(true) => super::relay(&client, &upstream, idle).await,
            Ok(false) => crate::launch::events::emit(crate::launch::events::Event::Egress {
                host: host.to_string(),
                port,
                allowed: false,
                reason: Some("plain HTTP in a CONNECT tunnel (its Host is not checked there): tunnel closed".into()),
                address: None,
            }),
            Err(_) => {}
        }
        return;
    }
    let head = req.origin_head();
    tokio::select! {
        _ = request_upstream(&client, &upstream, &head, body, &rest, &last) => {}
        r = response(&upstream, &client, &last) => if r.is_ok() { linger(&client).await },
        _ = super::idle_for(&last, idle) => {}
    }
    drop(client);
}

/// What a tunnel's first bytes are: a plain-HTTP request (a token, then a
/// space: `GET /`, `get /`...), something else (TLS starts with 0x16, SSH with
/// `SSH-`), or not known yet. Plain HTTP goes through the proxy's absolute
/// form, where its Host is checked; through a tunnel it would reach a shared
/// front end with any Host and any number of requests.
#[derive(Debug, PartialEq)]
enum TunnelStart {
    Http,
    Other,
    Undecided,
}

fn tunnel_start(bytes: &[u8]) -> TunnelStart {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match bytes.iter().position(|b| !token(*b)) {
        Some(i) if i > 0 && bytes[i] == b' ' => TunnelStart::Http,
        Some(_) => TunnelStart::Other,
        // A method longer than any head the proxy reads is refused too.
        None if bytes.len() > MAX_HEAD => TunnelStart::Http,
        None => TunnelStart::Undecided,
    }
}

/// Read the request head (up to the blank line) and whatever came after it.
/// `Err(None)`: the client closed or failed before a head came.
async fn read_head(client: &TcpStream) -> Result<(Vec<u8>, Vec<u8>), Option<Refusal>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let last = Cell::new(Instant::now());
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(Refusal { status: 400, reason: format!("request head larger than {MAX_HEAD} bytes") }));
        }
        match super::read_some(client, &mut chunk, &last).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answer a refused request and close.
async fn answer(client: TcpStream, r: &Refusal) {
    let text = match r.status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        502 => "Bad Gateway",
        _ => "Error",
    };
    let body = format!("swarmcell egress proxy: {}\n", r.reason);
    let msg =
        format!("HTTP/1.1 {} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", r.status, body.len());
    let last = Cell::new(Instant::now());
    if tokio::time::timeout(LINGER, super::write_all(&client, msg.as_bytes(), &last)).await.is_ok_and(|r| r.is_ok()) {
        linger(&client).await;
    }
}

/// Half-close, then read and drop what the client still sends, briefly: closing
/// with unread bytes would send a reset, which can destroy the answer before
/// the client reads it.
async fn linger(client: &TcpStream) {
    super::shutdown_write(client);
    let mut scratch = [0u8; 4096];
    let last = Cell::new(Instant::now());
    let _ = tokio::time::timeout(LINGER, async { while let Ok(1..) = super::read_some(client, &mut scratch, &last).await {} }).await;
}

/// Send the rebuilt head and exactly the request's body upstream; then never
/// read from the client again (a second request is never seen).
async fn request_upstream(client: &TcpStream, upstream: &TcpStream, head: &[u8], body: Body, rest: &[u8], last: &Cell<Instant>) {
    let sent = async {
        super::write_all(upstream, head, last).await?;
        let mut framer = Framer::new(body);
        let n = framer.feed(rest)?;
        super::write_all(upstream, &rest[..n], last).await?;
        let mut buf = Vec::new();
        while !framer.done() {
            buf.resize(64 * 1024, 0);
            let k = super::read_some(client, &mut buf, last).await?;
            if k == 0 {
                super::shutdown_write(upstream);
                break;
            }
            let n = framer.feed(&buf[..k])?;
            super::write_all(upstream, &buf[..n], last).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    if sent.await.is_ok() {
        std::future::pending::<()>().await;
    }
}

/// Where a request body ends.
enum Framer {
    Length(u64),
    Chunked(http1::Chunked),
}

impl Framer {
    fn new(body: Body) -> Framer {
        match body {
            Body::None => Framer::Length(0),
            Body::Length(n) => Framer::Length(n),
            Body::Chunked => Framer::Chunked(http1::Chunked::default()),
        }
    }

    fn done(&self) -> bool {
        match self {
            Framer::Length(n) => *n == 0,
            Framer::Chunked(c) => c.done(),
        }
    }

    /// How many bytes of `buf` belong to the body.
    fn feed(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Framer::Length(n) => {
                let take = (*n).min(buf.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            Framer::Chunked(c) => c.feed(buf).map_err(std::io::Error::other),
        }
    }
}

/// Relay the response with `Connection: close` in its head (interim 1xx heads
/// before it pass as they are), then the rest as it comes.
async fn response(upstream: &TcpStream, client: &TcpStream, last: &Cell<Instant>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(e) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(e + 4);
            }
            if buf.len() > MAX_HEAD * 4 {
                break None;
            }
            let k = super::read_some(upstream, &mut chunk, last).await?;
            if k == 0 {
                super::write_all(client, &buf, last).await?;
                super::shutdown_write(client);
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..k]);
        };
        // A head too large to rewrite goes as it came.
        let Some(end) = end else { break };
        let (head, interim) = close_response_head(&buf[..end]);
        super::write_all(client, &head, last).await?;
        buf.drain(..end);
        if !interim {
            break;
        }
    }
    super::write_all(client, &buf, last).await?;
    super::pump(upstream, client, last).await
}

/// A final response head with `Connection: close` instead of its connection
/// headers; an interim (1xx, not 101) head unchanged, and whether it was one.
fn close_response_head(head: &[u8]) -> (Vec<u8>, bool) {
    let body = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut lines = body.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().unwrap_or_default();
    let code = status.split(|b| *b == b' ').nth(1).unwrap_or_default();
    let interim = code.len() == 3 && code[0] == b'1' && code != b"101";
    if interim {
        return (head.to_vec(), true);
    }
    let mut out = status.to_vec();
    out.extend_from_slice(b"\r\n");
    for line in lines {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        if [&b"connection"[..], b"keep-alive", b"proxy-connection"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    (out, interim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_response_head_says_connection_close() {
        let (h, interim) = close_response_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n");
        assert_eq!((String::from_utf8(h).unwrap().as_str(), interim), ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", false));
        let (h, interim) = close_response_head(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!((h.as_slice(), interim), (&b"HTTP/1.1 100 Continue\r\n\r\n"[..], true));
    }
    #[test]
    fn plain_http_is_told_from_tls_and_ssh_at_a_tunnel_start() {
        for http in [&b"GET / HTTP/1.1"[..], b"get /", b"PROPFIND x"] {
            assert_eq!(tunnel_start(http), TunnelStart::Http, "{http:?}");
        }
        for other in [&b"\x16\x03\x01\x02\x00\x01"[..], b"SSH-2.0-OpenSSH_9.6\r\n", b" GET", b"a\n"] {
            assert_eq!(tunnel_start(other), TunnelStart::Other, "{other:?}");
        }
        assert_eq!(tunnel_start(b""), TunnelStart::Undecided);
        assert_eq!(tunnel_start(b"GE"), TunnelStart::Undecided);
    }
}
