//! Daemon side (host root): the denial stream's shared state and the thread
//! that reads the kernel's audit records into it.
//!
//! Attribution. Each record names a host uid and a pid (seccomp), or a
//! Landlock domain whose creator's uid and pid the kernel writes once, with the
//! first denial of the domain. A sandbox is found:
//! 1. by its host uid, when it has one of its own (the idmapped mode: a uid
//!    leased for this sandbox alone) — exact, and independent of PID
//!    namespaces;
//! 2. else by the pid's cgroup (`/proc/PID/cgroup` names the sandbox's
//!    cgroup, `.../sc-ID`), read when the record is read: a process that has
//!    exited by then cannot be attributed (the race), and a daemon in another
//!    PID namespace than the kernel's initial one cannot use it at all;
//! 3. a Landlock record of a domain already attributed needs neither.
//!
//! What names no known sandbox is counted as `unattributed`; what the kernel
//! reports it lost (a Landlock domain's final count above what was read, the
//! audit `lost` counter) or the socket overran (ENOBUFS) as `dropped`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Kind;
use super::aggregate::Aggregator;
use super::record::{self, Record};

/// A live sandbox, as the attribution knows it.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The daemon's id (`d-...`).
    pub id: String,
    /// The launcher's id (`sc-...`), the name of its cgroups.
    pub sandbox: String,
    /// The sandbox's own host uid (None: it shares its uid with others).
    pub uid: Option<u32>,
}

#[derive(Default)]
pub struct Shared {
    pub agg: Aggregator,
    owners: Vec<Owner>,
    /// Landlock domain -> daemon id, and the records read for it.
    domains: HashMap<u64, (String, u64)>,
    /// ENOBUFS on the audit socket: records lost in numbers nobody knows.
    pub overruns: u64,
    wake_fd: RawFd,
    wake_armed: bool,
}

impl Shared {
    fn owner_of(&self, uid: u32, pid: i32) -> Option<String> {
        if let Some(o) = self.owners.iter().find(|o| o.uid == Some(uid)) {
            return Some(o.id.clone());
        }
        if pid <= 0 || self.owners.is_empty() {
            return None;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.owners.iter().find(|o| cg.lines().any(|l| l.split('/').any(|c| c == o.sandbox))).map(|o| o.id.clone())
    }

    /// Count denials of a sandbox; wake the daemon when a report became due.
    pub fn add(&mut self, id: &str, kind: Kind, detail: &str, n: u64) {
        if self.agg.add(id, kind, detail, n) && !self.wake_armed {
            self.wake_armed = true;
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write to our eventfd.
            unsafe { libc::write(self.wake_fd, one.as_ptr().cast(), 8) };
        }
    }

    fn landlock(&mut self, id: &str, domain: u64, blockers: &str, object: &str) {
        let kind = match blockers.split('.').next() {
            Some("net") => Kind::Net,
            Some("scope") => Kind::Scope,
            _ => Kind::Fs,
        };
        let detail = if object.is_empty() { blockers.to_string() } else { format!("{blockers} {object}") };
        self.add(id, kind, &detail, 1);
        let d = self.domains.entry(domain).or_insert_with(|| (id.to_string(), 0));
        d.1 += 1;
    }
}

/// The denial stream: shared with the reader thread, and an eventfd that wakes
/// the daemon's loop when a report is due.
pub struct Hub {
    shared: Arc<Mutex<Shared>>,
    wake: OwnedFd,
    /// What the kernel reports, in one sentence (logged once, shown by `denials`).
    pub kernel: String,
    /// Landlock denials are reported (audit enabled, ABI >= 7, reader running).
    pub landlock: bool,
    /// seccomp denials are reported (reader running).
    pub seccomp: bool,
    lost_at_start: Option<u32>,
}

/// Whether the daemon may turn kernel audit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelAudit {
    /// Use what the host has: with audit off, Landlock writes no records.
    #[default]
    Leave,
    /// Turn kernel audit on (AUDIT_SET enabled=1) when it is off; it stays on.
    Enable,
    /// Do not read kernel records at all.
    Off,
}

impl Hub {
    pub fn start(mode: KernelAudit) -> Result<Hub, String> {
        // SAFETY: eventfd with flags only.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Mutex::new(Shared { wake_fd: wake.as_raw_fd(), ..Shared::default() }));
        let mut hub = Hub { shared, wake, kernel: String::new(), landlock: false, seccomp: false, lost_at_start: None };
        if mode == KernelAudit::Off {
            hub.kernel = "kernel denials are not read (kernel_audit = \"off\"): only egress and ingress denials are reported".into();
            return Ok(hub);
        }
        let reader = match super::audit_nl::open_reader(64 << 20) {
            Ok(r) => r,
            Err(e) => {
                hub.kernel = format!(
                    "cannot read kernel audit records (netlink audit, read-only group: {e}; the daemon needs CAP_AUDIT_READ and the initial network namespace): only egress and ingress denials are reported"
                );
                return Ok(hub);
            }
        };
        let mut status = super::audit_nl::status().ok();
        let mut enabled_now = false;
        if mode == KernelAudit::Enable && status.is_some_and(|s| s.enabled == 0) {
            match super::audit_nl::enable() {
                Ok(()) => {
                    enabled_now = true;
                    status = super::audit_nl::status().ok();
                }
                Err(e) => tracing::warn!(error = %e, "could not enable kernel audit (AUDIT_SET)"),
            }
        }
        hub.lost_at_start = status.map(|s| s.lost);
        let abi = crate::confine::landlock::kernel_abi();
        let audit_on = status.is_some_and(|s| s.enabled != 0);
        hub.seccomp = true;
        hub.landlock = audit_on && abi >= crate::confine::landlock::LOG_ABI;
        let auditd = match status.map(|s| s.auditd_pid) {
            Some(0) => "no audit daemon is registered, so the kernel also writes each record to its log (rate-limited)".to_string(),
            Some(p) => format!("the audit daemon (pid {p}) keeps receiving every record"),
            None => "the audit status is unknown".to_string(),
        };
        hub.kernel = match (hub.landlock, audit_on) {
            (true, _) => format!(
                "kernel denials are reported: Landlock (fs, net, scope) and seccomp (syscall){}; {auditd}",
                if enabled_now { "; kernel audit was off and the daemon turned it on (kernel_audit = \"enable\")" } else { "" }
            ),
            (false, true) => format!(
                "Landlock ABI {abi} writes no audit records (7 needed): only seccomp (syscall), egress and ingress denials are reported; {auditd}"
            ),
            (false, false) => "kernel audit is off, so Landlock writes no records: filesystem, network and scope denials are NOT reported; seccomp (syscall), egress and ingress denials are (set kernel_audit = \"enable\" in the daemon's config to report all)".to_string(),
        };
        let shared = hub.shared.clone();
        std::thread::Builder::new()
            .name("denials".into())
            .spawn(move || read_loop(reader, shared))
            .map_err(|e| format!("starting the denials reader: {e}"))?;
        Ok(hub)
    }

    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The daemon was woken: re-arm the wake-up.
    pub fn woken(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reading our non-blocking eventfd into an 8-byte buffer.
        unsafe { libc::read(self.wake.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        self.lock().wake_armed = false;
    }

    pub fn register(&self, owner: Owner) {
        let mut s = self.lock();
        s.agg.revive(&owner.id);
        s.owners.retain(|o| o.id != owner.id);
        s.owners.push(owner);
    }

    pub fn unregister(&self, id: &str) {
        let mut s = self.lock();
        s.owners.retain(|o| o.id != id);
        s.agg.retire(id);
    }

    /// Records the kernel lost since the daemon started (host-wide: other
    /// programs' records included), as its audit status says.
    pub fn kernel_lost(&self) -> u64 {
        match (self.lost_at_start, super::audit_nl::status().ok()) {
            (Some(a), Some(s)) => u64::from(s.lost.wrapping_sub(a)),
            _ => 0,
        }
    }
}

/// The reader thread: parse, attribute and count each record; never blocks on
/// the daemon (the lock is held for a batch of records, never across a read).
fn read_loop(fd: OwnedFd, shared: Arc<Mutex<Shared>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut batch: Vec<Record> = Vec::with_capacity(512);
    let mut pending: Option<(u64, Vec<(u64, String, String)>)> = None;
    loop {
        let mut overruns = 0u64;
        let mut flags = 0;
        while batch.len() < 512 {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOBUFS) => overruns += 1,
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => break,
                    _ => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        break;
                    }
                }
                continue;
            }
            flags = libc::MSG_DONTWAIT;
            let mut msg = &buf[..n as usize];
            while msg.len() >= super::audit_nl::NLMSG_HDRLEN {
                let len = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).clamp(super::audit_nl::NLMSG_HDRLEN, msg.len());
                let t = u16::from_ne_bytes([msg[4], msg[5]]);
                let r = record::parse(t, &msg[super::audit_nl::NLMSG_HDRLEN..len]);
                if r != Record::Other {
                    batch.push(r);
                }
                msg = &msg[len.next_multiple_of(4).min(msg.len())..];
            }
        }
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.overruns += overruns;
        for r in batch.drain(..) {
            handle(&mut s, &mut pending, r);
        }
    }
}

fn seccomp_detail(nr: i64) -> (Kind, String) {
    let name = crate::confine::seccomp::KNOWN_SYSCALLS.iter().copied().find(|n| crate::confine::seccomp::syscall_number(n) == Some(nr));
    match name {
        Some(n @ ("socket" | "socketpair")) => (Kind::Net, n.to_string()),
        Some(n) => (Kind::Syscall, n.to_string()),
        None => (Kind::Syscall, format!("syscall {nr}")),
    }
}

type Pending = Option<(u64, Vec<(u64, String, String)>)>;

fn handle(s: &mut Shared, pending: &mut Pending, r: Record) {
    // A Landlock record waits for the rest of its event (the domain's creator,
    // or the syscall record) when its domain is not known yet.
    let serial = match &r {
        Record::LandlockAccess { serial, .. }
        | Record::DomainAllocated { serial, .. }
        | Record::DomainFreed { serial, .. }
        | Record::Seccomp { serial, .. }
        | Record::Syscall { serial, .. }
        | Record::EndOfEvent { serial } => *serial,
        Record::Other => return,
    };
    if pending.as_ref().is_some_and(|(p, _)| *p != serial)
        && let Some((_, items)) = pending.take()
    {
        s.agg.unattributed += items.len() as u64;
    }
    match r {
        Record::LandlockAccess { domain, blockers, object, .. } => match s.domains.get(&domain).map(|d| d.0.clone()) {
            Some(id) => s.landlock(&id, domain, &blockers, &object),
            None => pending.get_or_insert_with(|| (serial, Vec::new())).1.push((domain, blockers, object)),
        },
        Record::DomainAllocated { domain, pid, uid, .. } | Record::Syscall { pid, uid, serial: domain } => {
            let is_domain = !matches!(r, Record::Syscall { .. });
            let Some((_, items)) = pending.take() else {
                if is_domain && let Some(id) = s.owner_of(uid, pid) {
                    s.domains.entry(domain).or_insert((id, 0));
                }
                return;
            };
            match s.owner_of(uid, pid) {
                Some(id) => {
                    for (d, blockers, object) in items {
                        s.landlock(&id, d, &blockers, &object);
                    }
                }
                None => s.agg.unattributed += items.len() as u64,
            }
        }
        Record::DomainFreed { domain, denials, .. } => {
            if let Some((_, seen)) = s.domains.remove(&domain) {
                s.agg.dropped += denials.saturating_sub(seen);
            }
        }
        Record::Seccomp { pid, uid, syscall, .. } => match s.owner_of(uid, pid) {
            Some(id) => {
                let (kind, detail) = seccomp_detail(syscall);
                s.add(&id, kind, &detail, 1);
            }
            None => s.agg.unattributed += 1,
        },
        Record::EndOfEvent { .. } => {
            if let Some((_, items)) = pending.take() {
                s.agg.unattributed += items.len() as u64;
            }
        }
        Record::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        // SAFETY: eventfd with flags only; leaked in the test.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        let mut s = Shared { wake_fd: fd, ..Shared::default() };
        s.owners.push(Owner { id: "d-1".into(), sandbox: "sc-1".into(), uid: Some(1_610_612_737) });
        s
    }

    #[test]
    fn landlock_records_are_attributed_by_their_domain_s_creator_and_reconciled() {
        let mut s = shared();
        let mut p = None;
        let access = |serial| Record::LandlockAccess { serial, domain: 7, blockers: "fs.read_file".into(), object: "/etc/shadow".into() };
        handle(&mut s, &mut p, access(1));
        handle(&mut s, &mut p, Record::DomainAllocated { serial: 1, domain: 7, pid: 99, uid: 1_610_612_737 });
        handle(&mut s, &mut p, Record::EndOfEvent { serial: 1 });
        handle(&mut s, &mut p, access(2));
        handle(&mut s, &mut p, Record::Seccomp { serial: 3, pid: 99, uid: 1_610_612_737, syscall: libc::SYS_ptrace });
        handle(&mut s, &mut p, Record::Seccomp { serial: 4, pid: 99, uid: 5, syscall: libc::SYS_ptrace });
        // The kernel counted 5 denials for the domain; 2 were read.
        handle(&mut s, &mut p, Record::DomainFreed { serial: 5, domain: 7, denials: 5 });
        let d = &s.agg.sandboxes["d-1"];
        assert_eq!(d.details[&(Kind::Fs, "fs.read_file /etc/shadow".to_string())].total, 2);
        assert_eq!(d.details[&(Kind::Syscall, "ptrace".to_string())].total, 1);
        assert_eq!((s.agg.dropped, s.agg.unattributed), (3, 1));
    }

    #[test]
    fn an_unknown_domain_is_attributed_by_its_syscall_record_or_counted_unattributed() {
        let mut s = shared();
        let mut p = None;
        let access = |serial| Record::LandlockAccess { serial, domain: 8, blockers: "scope.signal".into(), object: "opid=1".into() };
        handle(&mut s, &mut p, access(1));
        handle(&mut s, &mut p, Record::Syscall { serial: 1, pid: 5, uid: 1_610_612_737 });
        handle(&mut s, &mut p, access(2));
        handle(&mut s, &mut p, Record::EndOfEvent { serial: 2 });
        assert_eq!(s.agg.sandboxes["d-1"].by_kind[&Kind::Scope], 1);
        assert_eq!(s.agg.unattributed, 1);
    }
}
