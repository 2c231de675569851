//! Parent side: the host port manager (INV-001).
//!
//! Ports come from a configured range (default 8000-9000: at most 1001 live
//! sandboxes). A port is held by a [`Lease`] on `<state>/ports/<port>.lock`,
//! so separate `swarmcell` processes and threads never share one, and a crashed
//! holder releases it. Allocation is circular: a cursor (under its own lock)
//! remembers where the last search stopped, so a just-released port is not
//! handed out again at once. A port some other program holds is skipped: the
//! lease comes with the bound listener, never without it.

use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::host::lease::{Lease, LeaseError, ensure_private_dir};

pub const DEFAULT_RANGE: PortRange = PortRange { first: 8000, last: 9000 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port range {0:?}: {1}")]
    Range(String, String),
    #[error("port {port} is outside the range {range}")]
    OutOfRange { port: u16, range: PortRange },
    #[error("all {count} ports in {range} are in use (at most {count} sandboxes at once)")]
    Exhausted { count: u32, range: PortRange },
    #[error("port {0} is in use")]
    InUse(u16),
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("port cursor {path}: {source}")]
    Cursor { path: PathBuf, source: std::io::Error },
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl PortRange {
    /// `FIRST-LAST`, inclusive, within 1024-65535 and at most 1001 ports.
    pub fn parse(s: &str) -> Result<PortRange, PortError> {
        let bad = |m: &str| PortError::Range(s.to_string(), m.to_string());
        let (a, b) = s.split_once('-').ok_or_else(|| bad("expected FIRST-LAST"))?;
        let first: u16 = a.trim().parse().map_err(|_| bad("FIRST is not a port"))?;
        let last: u16 = b.trim().parse().map_err(|_| bad("LAST is not a port"))?;
        if first < 1024 || last < first {
            return Err(bad("need 1024 <= FIRST <= LAST <= 65535"));
        }
        if u32::from(last - first) + 1 > 1001 {
            return Err(bad("at most 1001 ports (INV-001)"));
        }
        Ok(PortRange { first, last })
    }

    pub fn count(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
}

/// A held port: its lease and the listener bound to 127.0.0.1 (INV-004).
#[derive(Debug)]
pub struct PortLease {
    pub port: u16,
    pub listener: TcpListener,
    _lease: Lease,
}

/// Take a specific port (it must be in the range and free).
pub fn take(state_dir: &Path, range: PortRange, port: u16) -> Result<PortLease, PortError> {
    if !range.contains(port) {
        return Err(PortError::OutOfRange { port, range });
    }
    let dir = ports_dir(state_dir)?;
    try_port(&dir, port)?.ok_or(PortError::InUse(port))
}

/// Take the next free port of the range, circularly after the last one handed out.
pub fn allocate(state_dir: &Path, range: PortRange) -> Result<PortLease, PortError> {
    let dir = ports_dir(state_dir)?;
    let mut cursor = Cursor::open(&dir)?;
    let start = cursor.next(range);
    for i in 0..range.count() {
        let port = range.first + ((u32::from(start - range.first) + i) % range.count()) as u16;
        if let Some(lease) = try_port(&dir, port)? {
            cursor.store(port)?;
            return Ok(lease);
        }
    }
    Err(PortError::Exhausted { count: range.count(), range })
}

fn ports_dir(state_dir: &Path) -> Result<PathBuf, PortError> {
    let dir = state_dir.join("ports");
    ensure_private_dir(state_dir)?;
    ensure_private_dir(&dir)?;
    Ok(dir)
}

/// Lease then bind: `None` when another sandbox or another program has it.
fn try_port(dir: &Path, port: u16) -> Result<Option<PortLease>, PortError> {
    let Some(lease) = Lease::try_acquire(&dir.join(format!("{port}.lock")))? else { return Ok(None) };
    match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
        Ok(listener) => Ok(Some(PortLease { port, listener, _lease: lease })),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(source) => Err(PortError::Bind { port, source }),
    }
}

/// `<state>/ports/cursor`: the last port handed out, under an exclusive flock.
struct Cursor {
    file: std::fs::File,
    path: PathBuf,
}

impl Cursor {
    fn open(dir: &Path) -> Result<Cursor, PortError> {
        let path = dir.join("cursor");
        let err = |source| PortError::Cursor { path: path.clone(), source };
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(err)?;
        // SAFETY: flock on an fd we own; blocks only while another allocation runs.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Cursor { file, path })
    }

    fn next(&mut self, range: PortRange) -> u16 {
        let mut s = String::new();
        let _ = self.file.read_to_string(&mut s);
        match s.trim().parse::<u16>() {
            Ok(p) if range.contains(p) && p < range.last => p + 1,
            _ => range.first,
        }
    }

    fn store(&mut self, port: u16) -> Result<(), PortError> {
        let err = |source| PortError::Cursor { path: self.path.clone(), source };
        self.file.set_len(0).map_err(err)?;
        self.file.rewind().map_err(err)?;
        self.file.write_all(port.to_string().as_bytes()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PathBuf {
        std::env::temp_dir().join(format!("swarmcell-ports-{}-{}", std::process::id(), crate::launch::random_u32()))
    }

    /// A range of free ports for the test (ephemeral-range ports are busy rarely).
    fn range() -> PortRange {
        let first = 20000 + (crate::launch::random_u32() % 20000) as u16;
        PortRange { first, last: first + 2 }
    }

    #[test]
    fn ranges_are_validated() {
        assert_eq!(PortRange::parse("8000-9000").unwrap().count(), 1001);
        for bad in ["8000-9001", "9000-8000", "80-90", "x-1", "8000"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_is_unique_circular_and_refuses_when_full() {
        let (s, r) = (state(), range());
        let a = allocate(&s, r).unwrap();
        let b = allocate(&s, r).unwrap();
        let c = allocate(&s, r).unwrap();
        let mut got = vec![a.port, b.port, c.port];
        got.sort();
        assert_eq!(got, vec![r.first, r.first + 1, r.first + 2]);
        let e = allocate(&s, r).unwrap_err().to_string();
        assert!(e.contains("all 3 ports") && e.contains("are in use"), "{e}");
        // Released ports come back only after the ones not yet used: circular.
        let freed = a.port;
        drop(a);
        assert_eq!(allocate(&s, r).unwrap().port, freed);
        drop((b, c));
        let _ = std::fs::remove_dir_all(&s);
    }

    #[test]
    fn a_port_held_by_another_program_is_skipped() {
        let (s, r) = (state(), range());
        let other = TcpListener::bind(("127.0.0.1", r.first)).unwrap();
        let lease = allocate(&s, r).unwrap();
        assert_ne!(lease.port, r.first);
        assert!(matches!(take(&s, r, r.first), Err(PortError::InUse(_))));
        assert!(matches!(take(&s, r, r.last + 1), Err(PortError::OutOfRange { .. })));
        drop((other, lease));
        let _ = std::fs::remove_dir_all(&s);
    }

    #[test]
    fn the_listener_is_bound_to_loopback_only() {
        let (s, r) = (state(), range());
        let lease = allocate(&s, r).unwrap();
        assert_eq!(lease.listener.local_addr().unwrap().ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
        drop(lease);
        let _ = std::fs::remove_dir_all(&s);
    }
}
