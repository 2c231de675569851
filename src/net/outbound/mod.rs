//! Parent side (host root): the sandbox's outbound services, the egress proxy
//! and the outbound forwards, on ONE event-loop thread per sandbox.
//!
//! The listeners live inside the sandbox's network namespace (the launcher made
//! them there); the upstream sockets are made here, in the host's. Whatever the
//! payload does, the launcher spends on it one thread, at most
//! [`RESOLVERS`] short-lived name-resolution threads, and per connection two
//! sockets and, while bytes flow, two pipes: at most `max_proxy_connections` +
//! `max_forward_connections` connections at once; more are refused at once
//! (the proxy answers 503) and counted. A connection that moves no byte either
//! way for `idle_timeout` is closed; the proxy's request head has a deadline of
//! its own (`head_timeout`, for the whole head, not per byte).
//!
//! Bytes move with `splice` through a pipe per direction on non-blocking
//! sockets: EOF on one side shuts down writing on the other (half-close), a
//! reset or error ends both, and a full side stops reading the other
//! (backpressure: a pipe holds at most [`PIPE_SIZE`] per direction).

/// The egress proxy's serving of one connection.
mod proxy;

use std::cell::Cell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Name-resolution threads at most, per sandbox.
pub const RESOLVERS: usize = 4;
/// How long a name may take to resolve (a hung resolver holds no slot longer).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection to an upstream (forward or proxy) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per pipe, so per direction of a connection.
pub const PIPE_SIZE: usize = 1 << 20;
/// Refusals over a cap are logged at most this often (with a running count).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The bounds, from the policy's `[network]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_proxy: usize,
    pub max_forward: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    /// The uid whose sockets connect upstream (the worktree's owner): see [`connect_as`].
    pub connect_as: u32,
}

impl Settings {
    pub fn of(n: &crate::policy::Network) -> Settings {
        Settings {
            max_proxy: n.max_proxy_connections,
            max_forward: n.max_forward_connections,
            head_timeout: n.head_timeout.0,
            idle_timeout: n.idle_timeout.0,
            connect_as: 0,
        }
    }
}

/// The running loop; stopped (every connection closed) on drop.
pub struct OutboundLoop {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutboundLoop {
    /// Serve `forwards` (listener, host port) and the egress `proxy` of sandbox `id`.
    pub fn start(
        id: &str,
        forwards: Vec<(std::net::TcpListener, u16)>,
        proxy: Option<(std::net::TcpListener, crate::net::egress::Rules)>,
        settings: Settings,
    ) -> std::io::Result<OutboundLoop> {
        for (l, _) in &forwards {
            l.set_nonblocking(true)?;
        }
        if let Some((l, _)) = &proxy {
            l.set_nonblocking(true)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(RESOLVERS)
            .thread_stack_size(256 * 1024)
            .thread_name("egress-resolve")
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = id.to_string();
        let thread = std::thread::Builder::new().name("outbound".into()).spawn(move || run(rt, rx, id, forwards, proxy, settings))?;
        Ok(OutboundLoop { stop: Some(tx), thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OutboundLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cap on concurrent connections of one kind, and its refusals.
pub(crate) struct Cap {
    key: &'static str,
    max: usize,
    open: Cell<usize>,
    refused: Cell<u64>,
    warned: Cell<Option<Instant>>,
}

/// One open connection's place under a cap, given back on drop.
struct Slot(Rc<Cap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

impl Cap {
    fn new(key: &'static str, max: usize) -> Rc<Cap> {
        Rc::new(Cap { key, max, open: Cell::new(0), refused: Cell::new(0), warned: Cell::new(None) })
    }

    fn take(self: &Rc<Cap>, sandbox: &str) -> Option<Slot> {
        if self.open.get() < self.max {
            self.open.set(self.open.get() + 1);
            return Some(Slot(self.clone()));
        }
        self.refused.set(self.refused.get() + 1);
        if self.warned.get().is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.warned.set(Some(Instant::now()));
            tracing::warn!(sandbox, refused = self.refused.get(), "{} ({}) connections are open: new ones are refused", self.key, self.max);
        }
        None
    }
}

/// What every connection task shares (the loop is single-threaded: `Rc`, `Cell`).
pub(crate) struct Shared {
    pub sandbox: String,
    pub settings: Settings,
    pub rules: crate::net::egress::Rules,
    pub(crate) resolver: Resolver,
}

fn run(
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Receiver<()>,
    sandbox: String,
    forwards: Vec<(std::net::TcpListener, u16)>,
    proxy: Option<(std::net::TcpListener, crate::net::egress::Rules)>,
    settings: Settings,
) {
    let local = tokio::task::LocalSet::new();
    let id = sandbox.clone();
    let (proxy_cap, forward_cap) = (Cap::new("max_proxy_connections", settings.max_proxy), Cap::new("max_forward_connections", settings.max_forward));
    local.block_on(&rt, async {
        let (proxy, rules) = match proxy {
            Some((l, r)) => (Some(l), r),
            None => (None, crate::net::egress::Rules::default()),
        };
        let shared = Rc::new(Shared { sandbox, settings, rules, resolver: Resolver::system() });
        for (l, port) in forwards {
            match TcpListener::from_std(l) {
                Ok(l) => drop(tokio::task::spawn_local(accept_loop(l, Some(port), forward_cap.clone(), shared.clone()))),
                Err(e) => tracing::warn!(sandbox = %shared.sandbox, port, error = %e, "outbound forward not served"),
            }
        }
        if let Some(l) = proxy {
            match TcpListener::from_std(l) {
                Ok(l) => drop(tokio::task::spawn_local(accept_loop(l, None, proxy_cap.clone(), shared.clone()))),
                Err(e) => tracing::warn!(sandbox = %shared.sandbox, error = %e, "egress proxy not served"),
            }
        }
        let _ = stop.await;
    });
    // Every connection task (and its sockets) ends here, inside the runtime.
    {
        let _guard = rt.enter();
        drop(local);
    }
    // Never wait for a resolver thread stuck in the system's resolver.
    rt.shutdown_background();
    for cap in [&proxy_cap, &forward_cap] {
        if cap.refused.get() > 0 {
            tracing::warn!(sandbox = %id, refused = cap.refused.get(), "{}: {} connections were refused in all", cap.key, cap.refused.get());
        }
    }
}

/// Accept on `listener`: a forward to host port `forward`, or the proxy.
async fn accept_loop(listener: TcpListener, forward: Option<u16>, cap: Rc<Cap>, shared: Rc<Shared>) {
    let mut warned: Option<Instant> = None;
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors or memory: wait instead of spinning.
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(sandbox = %shared.sandbox, error = %e, "outbound accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = cap.take(&shared.sandbox) else {
            if forward.is_none() {
                // A fresh socket's send buffer is empty: this never blocks.
                let _ = conn.try_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
            continue;
        };
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            match forward {
                Some(port) => forward_to(conn, port, &shared).await,
                None => proxy::serve(conn, &shared).await,
            }
        });
    }
}

async fn forward_to(client: TcpStream, port: u16, shared: &Shared) {
    // Nothing listens there, or it does not answer: the client sees the connection close.
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, connect_as(SocketAddr::from(([127, 0, 0, 1], port)), shared.settings.connect_as)).await;
    if let Ok(Ok(upstream)) = upstream {
        relay(&client, &upstream, shared.settings.idle_timeout).await;
    }
}

/// Connect to `addr` from a socket created as `uid`, never as root. The kernel
/// records who created a socket, and that is the uid other sandboxes' ingress
/// checks (sock_diag) and host services see: a payload must pass only as the
/// user it works for, never as the root launcher (which every port admits).
pub(crate) async fn connect_as(addr: SocketAddr, uid: u32) -> std::io::Result<TcpStream> {
    // setfsuid changes this thread's filesystem uid only (the loop's own thread),
    // and socket(2) is synchronous: nothing else runs in between.
    // SAFETY: setfsuid has no memory effects; the old value is restored below.
    let old = unsafe { libc::setfsuid(uid) };
    // SAFETY: as above; an invalid uid (-1) only reads the current one.
    let now = unsafe { libc::setfsuid(u32::MAX) };
    let socket = if now as u32 != uid {
        Err(std::io::Error::other(format!("setfsuid({uid}) failed; not connecting as root")))
    } else if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    // SAFETY: as above.
    unsafe { libc::setfsuid(old as u32) };
    socket?.connect(addr).await
}

/// Name resolution on at most [`RESOLVERS`] threads, each answer within a
/// deadline: a resolver that hangs costs those threads, never a connection
/// slot for longer than the deadline, and never more threads.
pub(crate) struct Resolver {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    lookup: fn(&str, u16) -> std::io::Result<Vec<std::net::IpAddr>>,
    timeout: Duration,
}

impl Resolver {
    fn system() -> Resolver {
        fn lookup(host: &str, port: u16) -> std::io::Result<Vec<std::net::IpAddr>> {
            crate::sys::host_lookups_from_files_and_dns();
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(|a| a.map(|a| a.ip()).collect())
        }
        Resolver { permits: std::sync::Arc::new(tokio::sync::Semaphore::new(RESOLVERS)), lookup, timeout: RESOLVE_TIMEOUT }
    }

    pub(crate) async fn resolve(&self, host: &str, port: u16) -> Result<Vec<std::net::IpAddr>, String> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = || format!("resolving {host} took longer than {}", crate::policy::units::HumanDuration(self.timeout));
        let permit = match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(timed_out()),
        };
        let (name, lookup) = (host.to_string(), self.lookup);
        let job = tokio::task::spawn_blocking(move || {
            // The thread keeps its permit until the system's resolver returns.
            let _permit = permit;
            lookup(&name, port)
        });
        match tokio::time::timeout_at(deadline, job).await {
            Ok(Ok(Ok(addrs))) => Ok(addrs),
            Ok(Ok(Err(e))) => Err(format!("cannot resolve {host}: {e}")),
            Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
            Err(_) => Err(timed_out()),
        }
    }
}

/// Shut down writing on a socket (forward a half-close).
pub(crate) fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown on a socket fd that `s` keeps open.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
}

/// Wait until `idle` has passed since the last activity recorded in `last`.
pub(crate) async fn idle_for(last: &Cell<Instant>, idle: Duration) {
    loop {
        let at = last.get() + idle;
        if Instant::now() >= at {
            return;
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Relay both ways between two connected sockets until both directions end,
/// either side fails, or nothing moves for `idle`.
pub(crate) async fn relay(a: &TcpStream, b: &TcpStream, idle: Duration) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let last = Cell::new(Instant::now());
    tokio::select! {
        _ = async { tokio::try_join!(pump(a, b, &last), pump(b, a, &last)) } => {}
        _ = idle_for(&last, idle) => {}
    }
}

/// A pipe for splicing, sized up when the kernel lets us.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        let (r, w) = crate::sys::pipe_cloexec().map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        // SAFETY: F_SETPIPE_SZ on our pipe; failure only means a smaller buffer.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(Pipe { r, w })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
    // No SPLICE_F_MORE: on a socket it corks like MSG_MORE, holding a small
    // reply back for the 200 ms cork timer. NONBLOCK: the pipe never blocks
    // (the sockets are non-blocking already).
    // SAFETY: splice between fds the caller keeps open, with null offsets (sockets and pipes).
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Run `op` on `s` once it is ready for `interest`, until it does not block.
async fn when_ready(s: &TcpStream, interest: Interest, mut op: impl FnMut() -> std::io::Result<usize>) -> std::io::Result<usize> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut op) {
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Move bytes from `from` to `to` until EOF (then shut down writing on `to`).
/// The pipe is made when the first byte is there, so an idle connection holds
/// only its two sockets; it is drained before it is filled again.
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, last: &Cell<Instant>) -> std::io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    loop {
        from.readable().await?;
        let p = match &pipe {
            Some(p) => p,
            None => pipe.insert(Pipe::new()?),
        };
        let n = when_ready(from, Interest::READABLE, || splice(from.as_raw_fd(), p.w.as_raw_fd(), PIPE_SIZE)).await?;
        if n == 0 {
            shutdown_write(to);
            return Ok(());
        }
        last.set(Instant::now());
        let mut left = n;
        while left > 0 {
            match when_ready(to, Interest::WRITABLE, || splice(p.r.as_raw_fd(), to.as_raw_fd(), left)).await? {
                0 => return Err(ErrorKind::WriteZero.into()),
                m => left -= m,
            }
            last.set(Instant::now());
        }
    }
}

/// Read what is there (0: EOF), recording the activity.
pub(crate) async fn read_some(s: &TcpStream, buf: &mut [u8], last: &Cell<Instant>) -> std::io::Result<usize> {
    let n = when_ready(s, Interest::READABLE, || s.try_read(buf)).await?;
    last.set(Instant::now());
    Ok(n)
}

/// Write all of `data`, recording the activity.
pub(crate) async fn write_all(s: &TcpStream, mut data: &[u8], last: &Cell<Instant>) -> std::io::Result<()> {
    while !data.is_empty() {
        match when_ready(s, Interest::WRITABLE, || s.try_write(data)).await? {
            0 => return Err(ErrorKind::WriteZero.into()),
            n => data = &data[n..],
        }
        last.set(Instant::now());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .count()
    }

    #[test]
    fn a_hung_resolver_costs_a_bounded_number_of_threads_and_each_answer_has_a_deadline() {
        fn hang(_: &str, _: u16) -> std::io::Result<Vec<std::net::IpAddr>> {
            std::thread::sleep(Duration::from_secs(3));
            Ok(Vec::new())
        }
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_time().max_blocking_threads(RESOLVERS).thread_name("hung-resolve").build().unwrap();
        let r = std::sync::Arc::new(Resolver {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(RESOLVERS)),
            lookup: hang,
            timeout: Duration::from_millis(300),
        });
        let start = std::time::Instant::now();
        let answers = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..4 * RESOLVERS {
                let r = r.clone();
                set.spawn(async move { r.resolve(&format!("n{i}.test"), 443).await });
            }
            set.join_all().await
        });
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(answers.iter().all(|a| a.as_ref().is_err_and(|e| e.contains("took longer than 300ms"))), "{answers:?}");
        assert_eq!(threads_named("hung-resolve"), RESOLVERS);
        rt.shutdown_background();
    }
}
