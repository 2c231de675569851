//! Parent side, pure parsing (no I/O): the egress proxy's view of a request a
//! payload sends, strictly. The head is hostile input: anything ambiguous (bare
//! CR or LF, folded or duplicated framing headers, control characters, both
//! `Content-Length` and `Transfer-Encoding`) is refused rather than guessed at,
//! and what goes upstream is rebuilt from what was parsed, so the upstream sees
//! exactly the request that was checked, and nothing after it.

/// A refusal: the HTTP status for the client and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse<T>(status: u16, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { status, reason: reason.into() })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`.
    Connect { host: String, port: u16 },
    /// `METHOD http://authority/path`: `authority` as written, `path` in origin form.
    Absolute { host: String, port: u16, authority: String, path: String },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: Target,
    pub version: String,
    /// Names as sent, values without surrounding blanks, in order.
    pub headers: Vec<(String, String)>,
}

/// How a request's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Headers for one hop only: never forwarded (the proxy sets `Connection: close`).
const HOP_BY_HOP: [&str; 7] = ["connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "upgrade"];

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Split `host[:port]` (no brackets: IP literals are refused later anyway).
fn split_authority(a: &str, default_port: u16) -> Result<(String, u16), Refusal> {
    if a.is_empty() || a.contains('@') || a.contains(['/', '?', '#', ' ']) {
        return refuse(400, format!("bad authority {a:?}"));
    }
    let (host, port) = match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
            Ok(p) if p != 0 => (h, p),
            _ => return refuse(400, format!("bad port in {a:?}")),
        },
        Some(_) => return refuse(403, format!("{a} is an IP literal; only allowlisted host names may be reached")),
        None => (a, default_port),
    };
    Ok((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// Parse a request head (everything up to and including the blank line).
pub fn parse(head: &[u8]) -> Result<Request, Refusal> {
    let text = std::str::from_utf8(head).map_err(|_| Refusal { status: 400, reason: "the request head is not UTF-8".into() })?;
    let text = text.strip_suffix("\r\n\r\n").ok_or_else(|| Refusal { status: 400, reason: "unterminated request head".into() })?;
    let mut lines = text.split("\r\n");
    for line in text.split("\r\n") {
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return refuse(400, "control character (bare CR or LF?) in the request head");
        }
    }
    let first = lines.next().unwrap_or("");
    let parts: Vec<&str> = first.split(' ').collect();
    let [method, target, version] = parts.as_slice() else { return refuse(400, "malformed request line") };
    if !is_token(method) || !matches!(*version, "HTTP/1.1" | "HTTP/1.0") {
        return refuse(400, "malformed request line");
    }
    let target = if *method == "CONNECT" {
        let (host, port) = split_authority(target, 443)?;
        Target::Connect { host, port }
    } else if target.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
        let rest = &target[7..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if path.contains('#') {
            return refuse(400, "a fragment in the request target");
        }
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        let (host, port) = split_authority(authority, 80)?;
        Target::Absolute { host, port, authority: authority.to_string(), path }
    } else {
        return refuse(400, "only CONNECT and absolute http:// requests are proxied");
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return refuse(400, "folded header line");
        }
        let Some((name, value)) = line.split_once(':') else { return refuse(400, format!("malformed header line {line:?}")) };
        if !is_token(name) {
            return refuse(400, format!("malformed header name {name:?}"));
        }
        headers.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Request { method: method.to_string(), target, version: version.to_string(), headers })
}

impl Target {
    pub fn host_port(&self) -> (&str, u16) {
        match self {
            Target::Connect { host, port } | Target::Absolute { host, port, .. } => (host, *port),
        }
    }
}

impl Request {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `Host` header, when present, names the request's authority: the
    /// host (case and a final dot aside) and the port (443 for CONNECT and 80
    /// otherwise when not written). One `Host` at most.
    pub fn check_host(&self) -> Result<(), Refusal> {
        let hosts: Vec<&str> = self.values("host").collect();
        let default = if matches!(self.target, Target::Connect { .. }) { 443 } else { 80 };
        match hosts.as_slice() {
            [] => Ok(()),
            [h] => {
                let (host, port) = self.target.host_port();
                match split_authority(h, default) {
                    Ok((hh, hp)) if hh == host && hp == port => Ok(()),
                    _ => refuse(403, format!("the Host header {h:?} is not the request's authority {host}:{port}")),
                }
            }
            _ => refuse(400, "more than one Host header"),
        }
    }

    /// The body's framing; ambiguous framing is refused.
    pub fn body(&self) -> Result<Body, Refusal> {
        if matches!(self.target, Target::Connect { .. }) {
            return Ok(Body::None);
        }
        let te: Vec<&str> = self.values("transfer-encoding").flat_map(|v| v.split(',')).map(str::trim).collect();
        let cl: Vec<&str> = self.values("content-length").flat_map(|v| v.split(',')).map(str::trim).collect();
        match (te.as_slice(), cl.as_slice()) {
            ([], []) => Ok(Body::None),
            ([], [n, rest @ ..]) => {
                if !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 18 || rest.iter().any(|m| m != n) {
                    return refuse(400, "bad Content-Length");
                }
                Ok(Body::Length(n.parse().unwrap_or(0)))
            }
            ([t], []) if t.eq_ignore_ascii_case("chunked") => Ok(Body::Chunked),
            (_, []) => refuse(400, "only the chunked transfer coding is proxied"),
            _ => refuse(400, "both Content-Length and Transfer-Encoding"),
        }
    }

    /// The head to send upstream for an absolute-form request: origin form,
    /// the checked `Host` first, no hop-by-hop headers, `Connection: close`.
    pub fn origin_head(&self) -> Vec<u8> {
        let Target::Absolute { authority, path, .. } = &self.target else { return Vec::new() };
        // Names listed in Connection are hop-by-hop too, but never the framing or Host.
        let listed: Vec<String> = self.values("connection").flat_map(|v| v.split(',')).map(|n| n.trim().to_ascii_lowercase()).collect();
        let keep = |n: &str| {
            let n = n.to_ascii_lowercase();
            n != "host"
                && !HOP_BY_HOP.contains(&n.as_str())
                && (!listed.contains(&n) || ["content-length", "transfer-encoding"].contains(&n.as_str()))
        };
        let host = self.values("host").next().unwrap_or(authority);
        let mut out = format!("{} {path} {}\r\nHost: {host}\r\n", self.method, self.version);
        for (n, v) in self.headers.iter().filter(|(n, _)| keep(n)) {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Where a chunked body ends, found as its bytes stream past.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current size or trailer line, and of all trailers.
    line: usize,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, whether a digit came, whether in an extension.
    #[default]
    SizeStart,
    Size(u64, bool),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    Trailer,
    TrailerLf(bool),
    Done,
}

const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feed bytes that follow what was fed before: how many of them belong to
    /// the body (all of them unless it ended inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, String> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if let Data(left) = self.state {
                let take = left.min((buf.len() - i) as u64);
                i += take as usize;
                self.state = if left == take { DataCr } else { Data(left - take) };
                continue;
            }
            let b = buf[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err("chunk line too long".into());
            }
            self.state = match (self.state, b) {
                (SizeStart, _) | (Size(_, false), _) if b.is_ascii_hexdigit() => {
                    let n = match self.state {
                        Size(n, _) => n,
                        _ => 0,
                    };
                    if n >> 60 != 0 {
                        return Err("chunk size too large".into());
                    }
                    Size(n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0)), false)
                }
                (Size(n, _), b';') | (Size(n, true), _) if b != b'\r' && b != b'\n' => Size(n, true),
                (Size(n, _), b'\r') => SizeLf(n),
                (SizeLf(0), b'\n') => {
                    self.line = 0;
                    TrailerStart
                }
                (SizeLf(n), b'\n') => {
                    self.line = 0;
                    Data(n)
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.line = 0;
                    SizeStart
                }
                (TrailerStart, b'\r') => TrailerLf(true),
                (TrailerStart | Trailer, b) if b != b'\r' && b != b'\n' => Trailer,
                (Trailer, b'\r') => TrailerLf(false),
                (TrailerLf(true), b'\n') => Done,
                (TrailerLf(false), b'\n') => {
                    self.trailers += self.line;
                    self.line = 0;
                    if self.trailers > MAX_TRAILERS {
                        return Err("trailers too long".into());
                    }
                    TrailerStart
                }
                _ => return Err("malformed chunked body".into()),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request, Refusal> {
        parse(text.as_bytes())
    }

    #[test]
    fn absolute_and_connect_targets_parse() {
        let r = req("GET http://API.test.:8080/a?b HTTP/1.1\r\nHost: api.test:8080\r\n\r\n").unwrap();
        assert_eq!(r.target, Target::Absolute { host: "api.test".into(), port: 8080, authority: "API.test.:8080".into(), path: "/a?b".into() });
        assert!(r.check_host().is_ok());
        let r = req("GET http://api.test?x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(r.target.host_port(), ("api.test", 80));
        assert!(matches!(&r.target, Target::Absolute { path, .. } if path == "/?x"));
        let r = req("CONNECT api.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n").unwrap();
        assert_eq!(r.target, Target::Connect { host: "api.test".into(), port: 443 });
        assert!(r.check_host().is_ok(), "443 is CONNECT's default port");
        assert!(req("CONNECT api.test:443 HTTP/1.1\r\n\r\n").unwrap().check_host().is_ok());
    }

    #[test]
    fn ambiguous_or_foreign_heads_are_refused() {
        for bad in [
            "GET /local HTTP/1.1\r\n\r\n",
            "GET https://a.test/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/2\r\n\r\n",
            "GET  http://a.test/ HTTP/1.1\r\n\r\n",
            "GET http://user@a.test/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nX: y\nHost: b.test\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nX: y\r\n Host: b.test\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nHost : a.test\r\n\r\n",
            "GET http://a.test:0/ HTTP/1.1\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\n",
        ] {
            assert!(req(bad).is_err(), "{bad:?}");
        }
        assert_eq!(req("CONNECT [::1]:443 HTTP/1.1\r\n\r\n").unwrap_err().status, 403);
    }

    #[test]
    fn the_host_header_must_be_the_authority() {
        for (text, ok) in [
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", true),
            ("GET http://a.test/ HTTP/1.1\r\nHost: A.TEST:80\r\n\r\n", true),
            ("GET http://a.test/ HTTP/1.1\r\n\r\n", true),
            ("GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", false),
            ("GET http://a.test:8080/ HTTP/1.1\r\nHost: a.test\r\n\r\n", false),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n", false),
            ("CONNECT a.test:8443 HTTP/1.1\r\nHost: a.test\r\n\r\n", false),
            ("CONNECT a.test:443 HTTP/1.1\r\nHost: internal-admin.corp\r\n\r\n", false),
        ] {
            assert_eq!(req(text).unwrap().check_host().is_ok(), ok, "{text:?}");
        }
    }

    #[test]
    fn framing_is_unambiguous() {
        let body = |h: &str| req(&format!("POST http://a.test/ HTTP/1.1\r\n{h}\r\n")).unwrap().body();
        assert_eq!(body("Content-Length: 5\r\n"), Ok(Body::Length(5)));
        assert_eq!(body("Content-Length: 5\r\nContent-Length: 5\r\n"), Ok(Body::Length(5)));
        assert_eq!(body("Transfer-Encoding: Chunked\r\n"), Ok(Body::Chunked));
        assert_eq!(body(""), Ok(Body::None));
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 5, 6\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        ] {
            assert!(body(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_upstream_head_is_rebuilt_without_hop_by_hop_headers() {
        let r = req("POST http://A.test:81/x HTTP/1.1\r\nConnection: keep-alive, X-Drop, Content-Length\r\nX-Drop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: s\r\nUpgrade: websocket\r\nContent-Length: 2\r\nX-Keep: y\r\n\r\n").unwrap();
        let head = String::from_utf8(r.origin_head()).unwrap();
        assert_eq!(head, "POST /x HTTP/1.1\r\nHost: A.test:81\r\nContent-Length: 2\r\nX-Keep: y\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn a_chunked_body_ends_where_it_ends() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        let mut tail = body.to_vec();
        tail.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
        let mut c = Chunked::default();
        assert_eq!(c.feed(&tail).unwrap(), body.len());
        assert!(c.done());
        // Byte by byte, the same.
        let mut c = Chunked::default();
        let mut n = 0;
        for b in &tail {
            n += c.feed(std::slice::from_ref(b)).unwrap();
            if c.done() {
                break;
            }
        }
        assert_eq!(n, body.len());
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"5\nhello\r\n", b"fffffffffffffffff\r\n"] {
            assert!(Chunked::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut c = Chunked::default();
        assert!(c.feed(b"0\r\n\r\n").is_ok() && c.done());
    }
}
