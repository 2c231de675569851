//! Parent side (host root): the egress proxy a sandbox reaches at
//! 127.0.0.1:PROXY_PORT in its own network namespace (the listener is created
//! there by the launcher; connections are served on the sandbox's outbound event
//! loop, `crate::outbound`, which bounds them).
//!
//! HTTP CONNECT and plain (absolute-form) HTTP requests are allowed only to host
//! names on the allowlist (`name`, `*.suffix`, optionally `:port`; ports 443 and
//! 80 otherwise). Names are resolved here, on the host; IP literals are refused,
//! and so is every resolved address that is private, loopback, link-local or
//! otherwise not public, unless that address is itself allowlisted: a name can
//! never be made to point at the host or the LAN (DNS rebinding). The address
//! that was checked is the one connected to. Each decision is an audit event.
//!
//! The request is what was checked, and only it: the whole head must arrive
//! within `head_timeout`; a `Host` header must name the request's authority; a
//! plain-HTTP connection carries ONE request, rebuilt from what was parsed
//! (`crate::http1`) with `Connection: close` (the response gets one too), and
//! exactly its body (`Content-Length` or chunked) goes upstream: nothing the
//! client sends after it is read.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::{self, Body, Refusal, Target};
use crate::outbound::{self, Shared};
use crate::policy::units::HumanDuration;

const MAX_HEAD: usize = 16 * 1024;
/// How long a refused or finished client may take to read our answer.
const LINGER: Duration = Duration::from_secs(1);
const DEFAULT_PORTS: [u16; 2] = [443, 80];

#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `name`, `*.suffix`, each optionally `:port`.
    pub hosts: Vec<String>,
    /// Addresses allowed even though they are not public.
    pub addresses: Vec<IpAddr>,
    /// Fixed resolutions (`--resolve NAME=IP`), used instead of DNS.
    pub resolve: HashMap<String, IpAddr>,
}

/// Host name syntax for allowlist entries and requests.
pub fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-'))
}

/// Validate an allowlist entry (`name`, `*.suffix`, optional `:port`).
pub fn check_entry(e: &str) -> Result<(), String> {
    let (host, port) = match e.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (e, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{e:?}: bad port"));
    }
    if host.parse::<IpAddr>().is_ok() || !valid_host(host) {
        return Err(format!("{e:?} is not a host name (IP literals are never allowed)"));
    }
    Ok(())
}

impl Rules {
    fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|e| {
            let (pat, ports): (&str, Vec<u16>) = match e.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map(|p| vec![p]).unwrap_or_default()),
                None => (e.as_str(), DEFAULT_PORTS.to_vec()),
            };
            let name_ok = match pat.strip_prefix("*.") {
                Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.',
                None => host == pat,
            };
            name_ok && ports.contains(&port)
        })
    }

    /// The checks made before anything is resolved; the normalised name.
    pub fn check_name(&self, host: &str, port: u16) -> Result<String, String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() {
            return Err(format!("{host} is an IP literal; only allowlisted host names may be reached"));
        }
        if !valid_host(&host) {
            return Err(format!("{host:?} is not a valid host name"));
        }
        if !self.host_allowed(&host, port) {
            return Err(format!("{host}:{port} is not on the egress allowlist"));
        }
        Ok(host)
    }

    /// Of what `host` resolves to, the address to connect to.
    pub fn choose(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<SocketAddr, String> {
        let refused: Vec<String> = addrs.iter().filter(|a| !public(a) && !self.addresses.contains(a)).map(|a| a.to_string()).collect();
        match addrs.iter().find(|a| public(a) || self.addresses.contains(a)) {
            Some(a) => Ok(SocketAddr::new(*a, port)),
            None => {
                Err(format!("{host} resolves to {} (not a public address)", if refused.is_empty() { "nothing".into() } else { refused.join(", ") }))
            }
        }
    }

    /// Decide; on success the address to connect to.
    pub fn decide(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let host = self.check_name(host, port)?;
        let addrs: Vec<IpAddr> = match self.resolve.get(&host) {
            Some(ip) => vec![*ip],
            None => (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.map(|a| a.ip()).collect(),
        };
        self.choose(&host, port, &addrs)
    }

    /// As `decide`, resolving on the loop's few resolver threads, with a deadline.
    async fn decide_bounded(&self, host: &str, port: u16, shared: &Shared) -> Result<SocketAddr, String> {
        let host = self.check_name(host, port)?;
        let addrs = match self.resolve.get(&host) {
            Some(ip) => vec![*ip],
            None => shared.resolver.resolve(&host, port).await?,
        };
        self.choose(&host, port, &addrs)
    }
}

/// Public unicast addresses only: no loopback, private, link-local, CGNAT,
/// unspecified, multicast, broadcast, documentation or unique-local ranges.
pub fn public(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            !(v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return public(&IpAddr::V4(v4));
            }
            let s = v.segments();
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
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
        Ok(()) => shared.rules.decide_bounded(&host, port, shared).await,
        Err(r) => Err(r.reason),
    };
    audit(&host, port, &decision);
    let addr = match decision {
        Ok(a) => a,
        Err(reason) => return answer(client, &Refusal { status: 403, reason }).await,
    };
    let upstream = match tokio::time::timeout(outbound::CONNECT_TIMEOUT, outbound::connect_as(addr, shared.settings.connect_as)).await {
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
            outbound::write_all(&client, b"HTTP/1.1 200 Connection established\r\n\r\n", &last).await?;
            // Nothing goes upstream before the tunnel is known not to carry plain HTTP.
            let mut first = rest.clone();
            let mut chunk = [0u8; 4096];
            loop {
                match tunnel_start(&first) {
                    TunnelStart::Http => return Ok(false),
                    TunnelStart::Other => break,
                    TunnelStart::Undecided => match outbound::read_some(&client, &mut chunk, &last).await? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        n => first.extend_from_slice(&chunk[..n]),
                    },
                }
            }
            outbound::write_all(&upstream, &first, &last).await.map(|()| true)
        };
        let opened = tokio::select! {
            r = ready => r,
            _ = outbound::idle_for(&last, idle) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        match opened {
            Ok(true) => outbound::relay(&client, &upstream, idle).await,
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
        _ = outbound::idle_for(&last, idle) => {}
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
        match outbound::read_some(client, &mut chunk, &last).await {
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
    if tokio::time::timeout(LINGER, outbound::write_all(&client, msg.as_bytes(), &last)).await.is_ok_and(|r| r.is_ok()) {
        linger(&client).await;
    }
}

/// Half-close, then read and drop what the client still sends, briefly: closing
/// with unread bytes would send a reset, which can destroy the answer before
/// the client reads it.
async fn linger(client: &TcpStream) {
    outbound::shutdown_write(client);
    let mut scratch = [0u8; 4096];
    let last = Cell::new(Instant::now());
    let _ = tokio::time::timeout(LINGER, async { while let Ok(1..) = outbound::read_some(client, &mut scratch, &last).await {} }).await;
}

/// Send the rebuilt head and exactly the request's body upstream; then never
/// read from the client again (a second request is never seen).
async fn request_upstream(client: &TcpStream, upstream: &TcpStream, head: &[u8], body: Body, rest: &[u8], last: &Cell<Instant>) {
    let sent = async {
        outbound::write_all(upstream, head, last).await?;
        let mut framer = Framer::new(body);
        let n = framer.feed(rest)?;
        outbound::write_all(upstream, &rest[..n], last).await?;
        let mut buf = Vec::new();
        while !framer.done() {
            buf.resize(64 * 1024, 0);
            let k = outbound::read_some(client, &mut buf, last).await?;
            if k == 0 {
                outbound::shutdown_write(upstream);
                break;
            }
            let n = framer.feed(&buf[..k])?;
            outbound::write_all(upstream, &buf[..n], last).await?;
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
            let k = outbound::read_some(upstream, &mut chunk, last).await?;
            if k == 0 {
                outbound::write_all(client, &buf, last).await?;
                outbound::shutdown_write(client);
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..k]);
        };
        // A head too large to rewrite goes as it came.
        let Some(end) = end else { break };
        let (head, interim) = close_response_head(&buf[..end]);
        outbound::write_all(client, &head, last).await?;
        buf.drain(..end);
        if !interim {
            break;
        }
    }
    outbound::write_all(client, &buf, last).await?;
    outbound::pump(upstream, client, last).await
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

    fn rules() -> Rules {
        Rules {
            hosts: vec!["api.example.com".into(), "*.models.test".into(), "local.test:8080".into()],
            addresses: vec!["127.0.0.1".parse().unwrap()],
            resolve: [
                ("api.example.com", "93.184.216.34"),
                ("a.models.test", "10.0.0.5"),
                ("local.test", "127.0.0.1"),
                ("b.models.test", "127.0.0.2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect(),
        }
    }

    #[test]
    fn names_on_the_list_are_allowed_on_their_ports() {
        assert_eq!(rules().decide("api.example.com", 443).unwrap().to_string(), "93.184.216.34:443");
        assert_eq!(rules().decide("API.Example.com.", 80).unwrap().port(), 80);
        assert_eq!(rules().decide("local.test", 8080).unwrap().to_string(), "127.0.0.1:8080", "an allowlisted address");
        assert!(rules().decide("api.example.com", 22).unwrap_err().contains("not on the egress allowlist"));
        assert!(rules().decide("local.test", 443).is_err());
    }

    #[test]
    fn unlisted_names_ip_literals_and_private_resolutions_are_refused() {
        assert!(rules().decide("evil.example.org", 443).unwrap_err().contains("not on the egress allowlist"));
        assert!(rules().decide("models.test", 443).is_err(), "*.suffix does not match the bare suffix");
        assert!(rules().decide("127.0.0.1", 443).unwrap_err().contains("IP literal"));
        assert!(rules().decide("[::1]", 443).unwrap_err().contains("IP literal"));
        assert!(rules().decide("a.models.test", 443).unwrap_err().contains("10.0.0.5 (not a public address)"));
        assert!(rules().decide("b.models.test", 443).unwrap_err().contains("127.0.0.2"));
    }

    #[test]
    fn only_public_unicast_addresses_count_as_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!public(&a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(public(&a.parse().unwrap()), "{a}");
        }
    }

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

    #[test]
    fn allowlist_entries_are_validated() {
        assert!(check_entry("api.openai.com").is_ok());
        assert!(check_entry("*.anthropic.com").is_ok());
        assert!(check_entry("host.test:8443").is_ok());
        for bad in ["1.2.3.4", "bad host", "x:0", "x:99999", ""] {
            assert!(check_entry(bad).is_err(), "{bad}");
        }
    }
}
