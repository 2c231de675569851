//! Parent side: the port broker (INV-004). The host side listens on
//! 127.0.0.1:PORT only; for each connection a thread enters the sandbox's network
//! namespace (`setns`), connects to 127.0.0.1:INNER_PORT there (a socket stays in
//! the namespace it was created in), and the two sockets are joined with
//! `splice` through a pipe in each direction: no copy through user space.
//!
//! Half-close is forwarded (EOF on one side shuts down writing on the other), a
//! reset or error closes both, a full side blocks the other (backpressure), at
//! most `max_connections` relays run at once, and a relay that moves no byte
//! either way for the idle timeout is closed (an idle or half-open client
//! cannot hold a slot forever). (The outbound forwards and the egress proxy run
//! on an event loop instead: `crate::net::outbound`.)
//!
//! On a sandbox's host port, every local user shares 127.0.0.1: each accepted
//! connection's client uid is looked up ([`crate::net::sock_diag`]) and a uid that
//! is not allowed ([`Ingress`]) is closed at once, before a byte reaches the
//! payload, counted and reported (`ingress_denied`).

use std::fs::File;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::broker_stats::SharedCounters;

const PIPE_SIZE: libc::c_int = 1 << 20;
const RELAY_STACK: usize = 64 * 1024;
/// How long a connection into the sandbox may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broker {
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    accept: Option<JoinHandle<()>>,
}

/// A way into the sandbox's network namespace.
#[derive(Clone)]
pub struct Netns(Arc<File>);

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns(fd {})", self.0.as_raw_fd())
    }
}

impl Netns {
    pub fn of_pid(pid: libc::pid_t) -> std::io::Result<Netns> {
        Ok(Netns(Arc::new(File::open(format!("/proc/{pid}/ns/net"))?)))
    }

    /// A network namespace another process sent (the sandbox init made its
    /// own): refused unless it is a network namespace owned by the user
    /// namespace `owner` (so never the host's, nor another sandbox's).
    pub fn from_fd(fd: OwnedFd, owner: &File) -> std::io::Result<Netns> {
        const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
        let other = |m: String| std::io::Error::other(m);
        // The ioctls below only on nsfs: a device could read them otherwise.
        // SAFETY: fstatfs fills a zeroed statfs for a descriptor we own.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if fs.f_type as libc::c_long != NSFS_MAGIC {
            return Err(other("not a namespace".into()));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(other(format!("a namespace of type {kind:#x}, not a network namespace")));
        }
        // SAFETY: NS_GET_USERNS returns a new descriptor of the owning user namespace.
        let userns = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_USERNS) };
        if userns < 0 {
            return Err(other(format!("its owner: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: a fresh descriptor, ours.
        let userns = File::from(unsafe { OwnedFd::from_raw_fd(userns) });
        let id = |f: &File| f.metadata().map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)));
        if id(&userns)? != id(owner)? {
            return Err(other("owned by another user namespace than the sandbox's".into()));
        }
        Ok(Netns(Arc::new(File::from(fd))))
    }

    /// The calling thread's own network namespace (to come back to).
    pub fn current() -> std::io::Result<Netns> {
        Ok(Netns(Arc::new(File::open("/proc/thread-self/ns/net")?)))
    }

    /// Run `f` (which should only create a socket: a socket stays in the
    /// namespace it was made in) inside this namespace, on the calling thread,
    /// then return to `home`. For a single-threaded caller (the daemon's loop);
    /// a thread that cannot return is aborted rather than left in a sandbox's
    /// namespace.
    pub fn run_inside<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> std::io::Result<T> {
        self.enter()?;
        let r = f();
        if let Err(e) = home.enter() {
            tracing::error!(error = %e, "cannot return to the host's network namespace; aborting");
            std::process::abort();
        }
        Ok(r)
    }

    /// Move the calling thread into the namespace (for good: use a thread of its own).
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: setns on an fd we own; it affects only the calling thread.
        if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Run `f` on a short-lived thread inside the namespace.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
        let ns = self.clone();
        std::thread::Builder::new()
            .stack_size(RELAY_STACK)
            .spawn(move || {
                ns.enter()?;
                f()
            })?
            .join()
            .map_err(|_| std::io::Error::other("netns thread panicked"))?
    }

    /// Connect to 127.0.0.1:port inside the namespace.
    pub fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        self.inside(move || TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    /// Bring `lo` up and listen on 127.0.0.1 on each of `ports` inside the
    /// namespace, from the calling thread (it enters the namespace and comes
    /// back; no thread is made). The listeners are the launcher's, never
    /// created by code running as the sandbox. (`lo` is brought up here, not
    /// by the sandbox init, whose every step delays the payload.)
    pub fn loopback_up_and_listen(&self, ports: &[u16]) -> std::io::Result<Vec<TcpListener>> {
        let home = Netns::current()?;
        self.run_inside(&home, || {
            crate::sys::loopback_up().map_err(|e| std::io::Error::other(format!("bringing lo up: {e}")))?;
            ports.iter().map(|p| listen_freebind(*p).map_err(|e| std::io::Error::new(e.kind(), format!("127.0.0.1:{p}: {e}")))).collect()
        })?
    }
}

/// A listener on 127.0.0.1:`port` that binds even before the address exists.
fn listen_freebind(port: u16) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let one: libc::c_int = 1;
    let opt = |fd: &OwnedFd, level, name| {
        // SAFETY: a valid int option value and its size.
        let r = unsafe {
            libc::setsockopt(fd.as_raw_fd(), level, name, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    };
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    opt(&fd, libc::IPPROTO_IP, libc::IP_FREEBIND)?;
    // As std's listeners.
    opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the given size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) }
        != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

/// Where a relay connects each accepted connection.
#[derive(Clone)]
pub enum Dest {
    /// 127.0.0.1:port inside a sandbox (the inbound broker).
    Inside(Netns, u16),
    /// 127.0.0.1:port on the host (an outbound forward).
    Host(u16),
}

impl Dest {
    fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            // This relay thread enters the sandbox's namespace only to create the socket.
            Dest::Inside(ns, port) => {
                ns.enter().and_then(|_| TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], *port)), CONNECT_TIMEOUT))
            }
            Dest::Host(port) => TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], *port))),
        }
    }
}

/// Who may connect to a host port: the uids allowed (root, the worktree's
/// owner, the requester...). Everyone else is closed at once.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub allowed: Arc<[u32]>,
    /// The host port (for the refusal's report).
    pub port: u16,
}

impl Ingress {
    /// Whether the client of a connection accepted on `local` from `peer` may
    /// pass; a refusal is counted and reported.
    pub(crate) fn admit(
        &self,
        lookup: &mut Option<crate::net::sock_diag::PeerLookup>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        stats: &SharedCounters,
    ) -> bool {
        let owner = match (lookup.as_mut(), peer, local) {
            (Some(l), SocketAddr::V4(peer), Some(SocketAddr::V4(local))) => l.owner(peer, local).unwrap_or(crate::net::sock_diag::Owner::Unknown),
            _ => crate::net::sock_diag::Owner::Unknown,
        };
        let uid = match owner {
            crate::net::sock_diag::Owner::Uid(u) if self.allowed.contains(&u) => return true,
            crate::net::sock_diag::Owner::Uid(u) => Some(u),
            crate::net::sock_diag::Owner::Unknown => None,
        };
        stats.refused_uid.fetch_add(1, Ordering::Relaxed);
        crate::launch::events::emit(crate::launch::events::Event::IngressDenied { uid, port: self.port });
        false
    }
}

impl Broker {
    /// Relay every connection accepted on `listener` to `dest`, counting in
    /// `stats`; a relay idle for `idle` is closed.
    pub fn start(listener: TcpListener, dest: Dest, max_connections: usize, stats: Arc<SharedCounters>, idle: Duration) -> std::io::Result<Broker> {
        Self::start_checked(listener, dest, max_connections, stats, idle, None)
    }

    /// As `start`, admitting only the clients `ingress` allows (None: anyone).
    pub fn start_checked(
        listener: TcpListener,
        dest: Dest,
        max_connections: usize,
        stats: Arc<SharedCounters>,
        idle: Duration,
        ingress: Option<Ingress>,
    ) -> std::io::Result<Broker> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Arc::new(listener);
        let accept = {
            let (stop, listener) = (stop.clone(), listener.clone());
            std::thread::Builder::new()
                .name("broker-accept".into())
                .spawn(move || accept_loop(&listener, &dest, max_connections, &stats, &stop, idle, ingress.as_ref()))?
        };
        Ok(Broker { stop, listener, accept: Some(accept) })
    }

    /// Stop accepting and close the listener (the port is free afterwards).
    pub fn stop(&mut self) {
        stop_accepting(&self.stop, &self.listener, &mut self.accept);
    }
}

/// End a thread blocked in `accept()` on `listener`: set its stop flag, wake
/// it with `shutdown` (accept then fails), and join it.
pub fn stop_accepting(stop: &AtomicBool, listener: &TcpListener, thread: &mut Option<JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    // SAFETY: shutdown on the listener's fd, which stays open until its owner drops it.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if let Some(t) = thread.take() {
        let _ = t.join();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    dest: &Dest,
    max: usize,
    stats: &Arc<SharedCounters>,
    stop: &AtomicBool,
    idle: Duration,
    ingress: Option<&Ingress>,
) {
    // Without a lookup socket every client is unknown, hence refused (fail closed).
    let mut lookup = ingress.and_then(|_| {
        crate::net::sock_diag::PeerLookup::new()
            .map_err(|e| tracing::error!(error = %e, "NETLINK_SOCK_DIAG socket; every connection will be refused"))
            .ok()
    });
    let local = listener.local_addr().ok();
    loop {
        let (client, peer) = match listener.accept() {
            Ok(c) => c,
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "broker accept failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if let Some(ingress) = ingress
            && !ingress.admit(&mut lookup, peer, local, stats)
        {
            continue; // dropped: closed before a byte is read
        }
        if stats.active.load(Ordering::SeqCst) >= max as u64 {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(max, "broker connection limit reached; connection closed");
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::SeqCst);
        let (dest, stats) = (dest.clone(), stats.clone());
        let spawned = std::thread::Builder::new().stack_size(RELAY_STACK).spawn(move || {
            relay(client, &dest, &stats, idle);
            stats.active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("broker could not start a relay thread");
        }
    }
}

fn relay(client: TcpStream, dest: &Dest, stats: &Arc<SharedCounters>, idle: Duration) {
    let server = match dest.connect() {
        Ok(s) => s,
        Err(_) => return, // nothing listens there (yet): the client sees the connection close
    };
    join(client, server, stats, idle);
}

/// When bytes last moved through a relay, either way.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    idle: Duration,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn expired(&self) -> bool {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) >= self.idle
    }
}

/// Copy both ways between two connected sockets until both directions end,
/// or nothing moved either way for `idle`.
pub fn join(client: TcpStream, server: TcpStream, stats: &Arc<SharedCounters>, idle: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Blocked splices wake up this often to check for idleness.
    let tick = Some((idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(30)));
    for s in [&client, &server] {
        let _ = s.set_read_timeout(tick);
        let _ = s.set_write_timeout(tick);
    }
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let activity = Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), idle });
    let back = {
        let (stats, activity) = (stats.clone(), activity.clone());
        std::thread::Builder::new().stack_size(RELAY_STACK).spawn(move || pump(&s2, &c2, &stats.bytes_out, &activity))
    };
    pump(&client, &server, &stats.bytes_in, &activity);
    if let Ok(t) = back {
        let _ = t.join();
    }
}

/// Move bytes from `from` to `to` until EOF or error, through a pipe with splice.
fn pump(from: &TcpStream, to: &TcpStream, counter: &AtomicU64, activity: &Activity) {
    let Ok((pr, pw)) = crate::sys::pipe_cloexec() else {
        let _ = from.shutdown(Shutdown::Both);
        return;
    };
    // SAFETY: F_SETPIPE_SZ on our pipe; failure only means a smaller buffer.
    unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    match splice_loop(from, to, &pr, &pw, counter, activity) {
        // EOF: forward the half-close and let the other direction finish.
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // Reset, error or idle: end both directions.
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

fn splice_loop(from: &TcpStream, to: &TcpStream, pr: &OwnedFd, pw: &OwnedFd, counter: &AtomicU64, activity: &Activity) -> std::io::Result<()> {
    // No SPLICE_F_MORE: on a socket it corks like MSG_MORE, holding a small
    // reply back for the 200 ms cork timer.
    let flags = libc::SPLICE_F_MOVE;
    loop {
        // SAFETY: splice between fds we own, with null offsets (sockets and pipes).
        let n = unsafe { libc::splice(from.as_raw_fd(), std::ptr::null_mut(), pw.as_raw_fd(), std::ptr::null_mut(), PIPE_SIZE as usize, flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted || (e.kind() == std::io::ErrorKind::WouldBlock && !activity.expired()) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        activity.touch();
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe { libc::splice(pr.as_raw_fd(), std::ptr::null_mut(), to.as_raw_fd(), std::ptr::null_mut(), left, flags) };
            if m < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted || (e.kind() == std::io::ErrorKind::WouldBlock && !activity.expired()) {
                    continue;
                }
                return Err(e);
            }
            left -= m as usize;
            activity.touch();
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_namespace_of_the_given_owner_is_taken() {
        let open = |p: &str| OwnedFd::from(File::open(p).unwrap());
        let owner = File::open("/proc/self/ns/user").unwrap();
        assert!(Netns::from_fd(open("/proc/self/ns/net"), &owner).is_ok(), "ours, owned by our user namespace");
        let e = Netns::from_fd(open("/proc/self/ns/user"), &owner).unwrap_err().to_string();
        assert!(e.contains("not a network namespace"), "{e}");
        let e = Netns::from_fd(open("/dev/null"), &owner).unwrap_err().to_string();
        assert!(e.contains("not a namespace"), "{e}");
        // Another owner (here: a file that is not our user namespace) is refused.
        let e = Netns::from_fd(open("/proc/self/ns/net"), &File::open("/proc/self/ns/mnt").unwrap()).unwrap_err().to_string();
        assert!(e.contains("another user namespace"), "{e}");
    }
}
