//! Parent side (host root): the egress rules, what the egress proxy a sandbox
//! reaches at 127.0.0.1:PROXY_PORT in its own network namespace allows (the
//! proxy itself runs on the sandbox's outbound event loop, `outbound::proxy`).
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
//! (`crate::net::http1`) with `Connection: close` (the response gets one too), and
//! exactly its body (`Content-Length` or chunked) goes upstream: nothing the
//! client sends after it is read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
            None => {
                crate::sys::host_lookups_from_files_and_dns();
                (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.map(|a| a.ip()).collect()
            }
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
