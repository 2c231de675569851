//! Parent side: the egress proxy a sandbox reaches at 127.0.0.1:PROXY_PORT in
//! its own network namespace (the listener is created there by the launcher).
//!
//! HTTP CONNECT and plain (absolute-form) HTTP requests are allowed only to host
//! names on the allowlist (`name`, `*.suffix`, optionally `:port`; ports 443 and
//! 80 otherwise). Names are resolved here, on the host; IP literals are refused,
//! and so is every resolved address that is private, loopback, link-local or
//! otherwise not public, unless that address is itself allowlisted: a name can
//! never be made to point at the host or the LAN (DNS rebinding). The address
//! that was checked is the one connected to. Each decision is an audit event.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_HEAD: usize = 16 * 1024;
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

    /// Decide; on success the address to connect to.
    pub fn decide(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
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
        let addrs: Vec<IpAddr> = match self.resolve.get(&host) {
            Some(ip) => vec![*ip],
            None => (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.map(|a| a.ip()).collect(),
        };
        let refused: Vec<String> = addrs.iter().filter(|a| !public(a) && !self.addresses.contains(a)).map(|a| a.to_string()).collect();
        match addrs.iter().find(|a| public(a) || self.addresses.contains(a)) {
            Some(a) => Ok(SocketAddr::new(*a, port)),
            None => {
                Err(format!("{host} resolves to {} (not a public address)", if refused.is_empty() { "nothing".into() } else { refused.join(", ") }))
            }
        }
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

pub struct Proxy {
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(listener: TcpListener, rules: Rules, sandbox: String) -> std::io::Result<Proxy> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Arc::new(listener);
        let rules = Arc::new(rules);
        let stats = Arc::new(crate::broker_stats::SharedCounters::private()?);
        let thread = {
            let (stop, listener) = (stop.clone(), listener.clone());
            std::thread::Builder::new().name("egress-proxy".into()).spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (rules, sandbox, stats) = (rules.clone(), sandbox.clone(), stats.clone());
                    let _ = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || serve(conn, &rules, &sandbox, &stats));
                }
            })?
        };
        Ok(Proxy { stop, listener, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        crate::broker::stop_accepting(&self.stop, &self.listener, &mut self.thread);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn deny(mut conn: TcpStream, reason: &str) {
    let body = format!("swarmcell egress proxy: {reason}\n");
    let _ = write!(conn, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// Read the request head (up to the blank line) and whatever came after it.
fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return String::from_utf8(buf).ok().map(|h| (h, rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn serve(mut conn: TcpStream, rules: &Rules, sandbox: &str, stats: &Arc<crate::broker_stats::SharedCounters>) {
    let _ = sandbox; // events name their sandbox themselves (launch::events)
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((head, rest)) = read_head(&mut conn) else { return deny(conn, "malformed request") };
    let first = head.lines().next().unwrap_or("");
    let parts: Vec<&str> = first.split(' ').collect();
    let (method, target) = match parts.as_slice() {
        [m, t, v] if v.starts_with("HTTP/1.") => (*m, *t),
        _ => return deny(conn, "malformed request line"),
    };
    // CONNECT host:port, or METHOD http://host[:port]/path.
    let (authority, path, connect) = if method == "CONNECT" {
        (target.to_string(), String::new(), true)
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (auth, path) = rest.split_once('/').map(|(a, p)| (a.to_string(), format!("/{p}"))).unwrap_or((rest.to_string(), "/".into()));
        (auth, path, false)
    } else {
        return deny(conn, "only CONNECT and absolute http:// requests are proxied");
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.to_string(), p),
            Err(_) => return deny(conn, "bad port"),
        },
        _ => (authority.clone(), if connect { 443 } else { 80 }),
    };
    let decision = rules.decide(&host, port);
    crate::launch::events::emit(crate::launch::events::Event::Egress {
        host: host.clone(),
        port,
        allowed: decision.is_ok(),
        reason: decision.as_ref().err().cloned(),
        address: decision.as_ref().ok().map(|a| a.to_string()),
    });
    let addr = match decision {
        Ok(a) => a,
        Err(reason) => return deny(conn, &reason),
    };
    let mut upstream = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(u) => u,
        Err(e) => {
            let _ = write!(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let (host, reason) = (host.clone(), Some(format!("connect {addr}: {e}")));
            return crate::launch::events::emit(crate::launch::events::Event::Egress { host, port, allowed: true, reason, address: None });
        }
    };
    let _ = conn.set_read_timeout(None);
    if connect {
        if conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").is_err() {
            return;
        }
    } else {
        // Forward the request in origin form.
        let head = head.replacen(target, &path, 1);
        if upstream.write_all(head.as_bytes()).is_err() {
            return;
        }
    }
    if !rest.is_empty() && upstream.write_all(&rest).is_err() {
        return;
    }
    crate::broker::join(conn, upstream, stats);
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
    fn allowlist_entries_are_validated() {
        assert!(check_entry("api.openai.com").is_ok());
        assert!(check_entry("*.anthropic.com").is_ok());
        assert!(check_entry("host.test:8443").is_ok());
        for bad in ["1.2.3.4", "bad host", "x:0", "x:99999", ""] {
            assert!(check_entry(bad).is_err(), "{bad}");
        }
    }
}
