//! Daemon side (host root): the kernel's audit records that report a
//! sandbox's refused accesses, parsed from their text (`audit(SEC.MS:SERIAL):
//! key=value ...`). Only the types and fields swarmcell reads; everything else
//! is [`Record::Other`]. Values a process chose (paths, comm) are either quoted
//! or hex-encoded by the kernel; both are decoded here and bounded.

/// AUDIT_SYSCALL: the system call of an audited event (pid, host uid).
pub const AUDIT_SYSCALL: u16 = 1300;
/// AUDIT_EOE: end of a multi-record event.
pub const AUDIT_EOE: u16 = 1320;
/// AUDIT_SECCOMP: a call a seccomp filter refused (with SECCOMP_FILTER_FLAG_LOG).
pub const AUDIT_SECCOMP: u16 = 1326;
/// AUDIT_LANDLOCK_ACCESS: an access a Landlock domain refused.
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// AUDIT_LANDLOCK_DOMAIN: a Landlock domain's creator, or its end with its denial count.
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;

/// Longest object (path, port) kept from a record.
pub const MAX_OBJECT: usize = 256;

/// One audit record, as far as denials need it (a seccomp record's `arch`: its
/// AUDIT_ARCH_*, 0 when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    LandlockAccess { serial: u64, domain: u64, blockers: String, object: String },
    DomainAllocated { serial: u64, domain: u64, pid: i32, uid: u32 },
    DomainFreed { serial: u64, domain: u64, denials: u64 },
    Seccomp { serial: u64, pid: i32, uid: u32, syscall: i64, arch: u32 },
    Syscall { serial: u64, pid: i32, uid: u32 },
    EndOfEvent { serial: u64 },
    Other,
}

/// The AUDIT_ARCH_* of this binary's architecture (the call numbers named).
pub const NATIVE_ARCH: u32 = if cfg!(target_arch = "aarch64") { 0xc000_00b7 } else { 0xc000_003e };

/// Parse one record's text (the netlink payload) of type `msg_type`.
pub fn parse(msg_type: u16, text: &[u8]) -> Record {
    if !matches!(msg_type, AUDIT_SYSCALL | AUDIT_EOE | AUDIT_SECCOMP | AUDIT_LANDLOCK_ACCESS | AUDIT_LANDLOCK_DOMAIN) {
        return Record::Other;
    }
    // The hot path (a seccomp flood): no allocation.
    if msg_type == AUDIT_SECCOMP || msg_type == AUDIT_SYSCALL || msg_type == AUDIT_EOE {
        return parse_fast(msg_type, text);
    }
    let text = String::from_utf8_lossy(text.strip_suffix(b"\0").unwrap_or(text));
    let Some((head, body)) = text.split_once("): ").or_else(|| text.strip_suffix("):").map(|h| (h, ""))) else { return Record::Other };
    let Some(serial) = head.rsplit_once(':').and_then(|(_, s)| s.parse::<u64>().ok()) else { return Record::Other };
    let f = fields(body);
    let get = |k: &str| f.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
    let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let hex = |k: &str| get(k).and_then(|v| u64::from_str_radix(v, 16).ok());
    let uid = || num("uid").and_then(|u| u32::try_from(u).ok());
    let pid = || num("pid").and_then(|p| i32::try_from(p).ok());
    match msg_type {
        AUDIT_EOE => Record::EndOfEvent { serial },
        AUDIT_SYSCALL => match (pid(), uid()) {
            (Some(pid), Some(uid)) => Record::Syscall { serial, pid, uid },
            _ => Record::Other,
        },
        AUDIT_SECCOMP => match (pid(), uid(), num("syscall")) {
            (Some(pid), Some(uid), Some(syscall)) => {
                Record::Seccomp { serial, pid, uid, syscall, arch: get("arch").and_then(|a| u32::from_str_radix(a, 16).ok()).unwrap_or(0) }
            }
            _ => Record::Other,
        },
        AUDIT_LANDLOCK_ACCESS => {
            let Some(domain) = hex("domain") else { return Record::Other };
            let blockers = get("blockers").unwrap_or("").to_string();
            // The object: the path, or the other fields (port, peer), without dev/ino.
            let object = match get("path") {
                Some(p) => p.to_string(),
                None => f
                    .iter()
                    .filter(|(k, _)| !matches!(*k, "domain" | "blockers" | "dev" | "ino"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            Record::LandlockAccess { serial, domain, blockers: bound(blockers), object: bound(object) }
        }
        AUDIT_LANDLOCK_DOMAIN => {
            let Some(domain) = hex("domain") else { return Record::Other };
            match get("status") {
                Some("allocated") => match (pid(), uid()) {
                    (Some(pid), Some(uid)) => Record::DomainAllocated { serial, domain, pid, uid },
                    _ => Record::Other,
                },
                Some("deallocated") => Record::DomainFreed { serial, domain, denials: num("denials").map_or(0, |d| d.max(0) as u64) },
                _ => Record::Other,
            }
        }
        _ => Record::Other,
    }
}

/// Seccomp, syscall and end-of-event records: only numbers are read.
fn parse_fast(msg_type: u16, text: &[u8]) -> Record {
    let Some(close) = text.windows(3).position(|w| w == b"): ") else {
        return match (msg_type, text.strip_suffix(b"):").or_else(|| text.strip_suffix(b"): "))) {
            (AUDIT_EOE, Some(head)) => serial_of(head).map_or(Record::Other, |serial| Record::EndOfEvent { serial }),
            _ => Record::Other,
        };
    };
    let Some(serial) = serial_of(&text[..close]) else { return Record::Other };
    if msg_type == AUDIT_EOE {
        return Record::EndOfEvent { serial };
    }
    let (mut pid, mut uid, mut syscall, mut arch) = (None, None, None, 0);
    for tok in text[close + 3..].split(|b| *b == b' ') {
        let num = |p: &[u8]| tok.strip_prefix(p).and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<i64>().ok());
        if let Some(v) = num(b"pid=") {
            pid = i32::try_from(v).ok();
        } else if let Some(v) = num(b"uid=") {
            uid = u32::try_from(v).ok();
        } else if let Some(v) = num(b"syscall=") {
            syscall = Some(v);
        } else if let Some(v) = tok.strip_prefix(b"arch=").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| u32::from_str_radix(v, 16).ok()) {
            arch = v;
        }
    }
    match (msg_type, pid, uid, syscall) {
        (AUDIT_SECCOMP, Some(pid), Some(uid), Some(syscall)) => Record::Seccomp { serial, pid, uid, syscall, arch },
        (AUDIT_SYSCALL, Some(pid), Some(uid), _) => Record::Syscall { serial, pid, uid },
        _ => Record::Other,
    }
}

fn serial_of(head: &[u8]) -> Option<u64> {
    let colon = head.iter().rposition(|b| *b == b':')?;
    std::str::from_utf8(&head[colon + 1..]).ok()?.parse().ok()
}

fn bound(mut s: String) -> String {
    if s.len() > MAX_OBJECT {
        let mut cut = MAX_OBJECT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// `key=value` pairs; a value is `"quoted"` (taken as is) or a bare word
/// (hex-decoded for the fields the kernel writes as untrusted strings).
fn fields(body: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let raw = &after[..end];
            let v = if matches!(key, "path" | "comm" | "exe" | "name") { unhex(raw).unwrap_or_else(|| raw.to_string()) } else { raw.to_string() };
            (v, &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_of_a_landlock_and_a_seccomp_denial_are_parsed() {
        let a = parse(
            AUDIT_LANDLOCK_ACCESS,
            b"audit(1795986076.378:260): domain=155e8c56b blockers=fs.read_file path=\"/etc/hostname\" dev=\"vda\" ino=611",
        );
        assert_eq!(a, Record::LandlockAccess { serial: 260, domain: 0x155e8c56b, blockers: "fs.read_file".into(), object: "/etc/hostname".into() });
        let d = parse(
            AUDIT_LANDLOCK_DOMAIN,
            b"audit(1795986076.378:260): domain=155e8c56b status=allocated mode=enforcing pid=19182 uid=1610612737 exe=\"/x\" comm=\"exp\"",
        );
        assert_eq!(d, Record::DomainAllocated { serial: 260, domain: 0x155e8c56b, pid: 19182, uid: 1610612737 });
        let f = parse(AUDIT_LANDLOCK_DOMAIN, b"audit(1795986076.426:266): domain=155e8c56b status=deallocated denials=3");
        assert_eq!(f, Record::DomainFreed { serial: 266, domain: 0x155e8c56b, denials: 3 });
        let s = parse(
            AUDIT_SECCOMP,
            b"audit(1795986076.378:263): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=19182 comm=\"exp\" exe=\"/tmp/den/exp\" sig=0 arch=c000003e syscall=63 compat=0 ip=0x7fe940201829 code=0x50000",
        );
        assert_eq!(s, Record::Seccomp { serial: 263, pid: 19182, uid: 0, syscall: 63, arch: 0xc000_003e });
        assert_eq!(parse(AUDIT_EOE, b"audit(1795986076.378:260): "), Record::EndOfEvent { serial: 260 });
        assert_eq!(parse(1327, b"audit(1.2:3): proctitle=2E"), Record::Other);
    }

    #[test]
    fn hex_encoded_paths_are_decoded_and_long_ones_cut() {
        // A path with a space is written in hex by the kernel.
        let a = parse(AUDIT_LANDLOCK_ACCESS, b"audit(1.2:7): domain=1 blockers=fs.read_file path=2F746D702F6120622E747874 dev=\"x\" ino=1");
        assert!(matches!(a, Record::LandlockAccess { ref object, .. } if object == "/tmp/a b.txt"), "{a:?}");
        let long = format!("audit(1.2:8): domain=1 blockers=fs.read_file path=\"/{}\"", "a".repeat(5000));
        let Record::LandlockAccess { object, .. } = parse(AUDIT_LANDLOCK_ACCESS, long.as_bytes()) else { panic!() };
        assert!(object.len() <= MAX_OBJECT + 3);
        let n = parse(AUDIT_LANDLOCK_ACCESS, b"audit(1.2:9): domain=1 blockers=net.bind_tcp lport=80");
        assert!(matches!(n, Record::LandlockAccess { ref object, .. } if object == "lport=80"), "{n:?}");
        assert_eq!(parse(AUDIT_SECCOMP, b"garbage"), Record::Other);
    }
}
