//! Parent side (host root): socket handoff, the default broker. Connections
//! reach the payload at loopback speed because the payload reads and writes the
//! accepted host socket itself; no byte passes through the launcher.
//!
//! How a connection gets there (accept interception):
//! 1. The payload binds and listens on its inner port inside its own network
//!    namespace, as usual: it never holds the host's listening socket.
//! 2. The launcher accepts on 127.0.0.1:PORT, checks the client socket's owner
//!    ([`crate::net::sock_diag`], the same [`crate::net::broker::Ingress`] check as the relay's: root, the worktree owner, and the allowed uids) and
//!    pins the accepted socket to that client with a locked classic-BPF socket
//!    filter (below). It then connects a placeholder socket, made by a thread
//!    inside the sandbox's namespace, to the inner port: the payload's listener
//!    becomes readable (poll/epoll wake up as for any connection).
//! 3. The payload's filter turns every `accept`/`accept4` into a user
//!    notification ([`crate::confine::seccomp::compile::accept_notify_program`]). For an accept on
//!    the inner-port listener, the launcher takes a copy of that listener
//!    (`pidfd_getfd`), accepts from it itself, and, when what it got is one of
//!    its placeholders (matched by the placeholder's address), installs the
//!    admitted host connection in the payload instead
//!    (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SEND`: the new fd number is accept's
//!    return value) and writes the client's address where accept's caller
//!    asked. Any other connection (the payload's own clients) is installed as
//!    accepted. Accepts on the payload's other sockets are made by the
//!    launcher too, never continued in the kernel: the kernel would look the
//!    fd number up again, and a payload flipping it to the inner listener took
//!    placeholders (their host clients were never served) and could race the
//!    launcher's own accept. Only this thread ever accepts, so a poll that
//!    sees a connection means accept cannot block.
//!    A connection taken for a call that a signal interrupted goes to the next
//!    call on the same listener.
//! 4. `listen` is a notification too: the launcher makes the call itself on
//!    its copy of the socket (no fd-number race), refuses it on a socket of the
//!    host's namespace, and, for the inner port, hands over the connections
//!    that came before the payload listened (they wait, as in a backlog).
//!
//! Alternatives not taken: a relay with bigger buffers or splice tuning still
//! spends launcher CPU on every byte (0.4-0.7x of loopback on two cores); an
//! eBPF sockmap / `sk_skb` redirect would need hand-assembled eBPF and
//! per-connection map management, and its redirect runs in a kernel work
//! queue, so it is a relay too. Here the per-connection cost is one
//! notification round trip and one placeholder connect; per byte, nothing.
//!
//! Why a handed-off socket reaches nothing else: a connected TCP socket can be
//! disconnected (`connect(AF_UNSPEC)`) and connected again, from 127.0.0.1:PORT
//! in the host's namespace; it could even listen there. The filter the launcher
//! attaches before the handoff, locked with `SO_LOCK_FILTER` (it can be neither
//! removed nor replaced), admits only segments from the client's address and
//! port that carry no SYN: a new handshake (SYN-ACK) or a new client (SYN)
//! never gets in, so the socket never connects or accepts again. Data in a SYN
//! (TCP Fast Open) is refused by the seccomp filter. Landlock's TCP rules are
//! then not needed, and the sandbox's loopback stays its own.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::net::broker::Netns;
use crate::net::broker_stats::SharedCounters;

/// What the broker admits and where it delivers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The payload's port inside its namespace.
    pub inner: u16,
    /// Who may connect (None: anyone, `--allow-any-uid`).
    pub ingress: Option<crate::net::broker::Ingress>,
    /// Most admitted connections waiting for the payload's accept.
    pub max_pending: usize,
    /// Written to (one byte, non-blocking) when the payload listens on its
    /// inner port: the health check tries at once.
    pub on_inner_listen: Option<Arc<OwnedFd>>,
}

/// Most accepts of the payload waiting (blocking) for a connection at once.
const MAX_WAITERS: usize = 256;
/// How often waiting accepts are checked for their caller's interruption.
const POLL_MS: i32 = 100;

/// An admitted host connection and the placeholder that announces it.
struct Pending {
    host: TcpStream,
    peer: SocketAddr,
    placeholder: TcpStream,
}

type PendingMap = Arc<Mutex<HashMap<u16, Pending>>>;

pub struct Handoff {
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    accept: Option<JoinHandle<()>>,
    notify: Option<JoinHandle<()>>,
}

impl Handoff {
    /// Accept on `listener` (the host port) and serve the payload's accept
    /// notifications from `notify`, until stopped.
    pub fn start(notify: OwnedFd, listener: TcpListener, netns: Netns, cfg: Config, stats: Arc<SharedCounters>) -> io::Result<Handoff> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Arc::new(listener);
        let pending: PendingMap = Arc::default();
        // Made here, in the host's namespace (the accept thread enters the sandbox's).
        let diag = std::cell::RefCell::new(cfg.ingress.as_ref().map(|_| crate::net::sock_diag::PeerLookup::new()).transpose()?);
        let host_netns = netns_cookie(listener.as_raw_fd()).ok_or_else(|| io::Error::other("no SO_NETNS_COOKIE (Linux >= 5.14)"))?;
        // The notify thread tells the accept thread that the payload listens.
        let (wake_r, wake_w) = crate::sys::pipe_cloexec().map_err(|e| io::Error::from_raw_os_error(e.errno as i32))?;
        crate::sys::set_nonblocking(wake_r.as_raw_fd()).map_err(|e| io::Error::from_raw_os_error(e.errno as i32))?;
        crate::sys::set_nonblocking(wake_w.as_raw_fd()).map_err(|e| io::Error::from_raw_os_error(e.errno as i32))?;
        listener.set_nonblocking(true)?;
        let notify = {
            let (stop, pending, inner) = (stop.clone(), pending.clone(), cfg.inner);
            let ctx = NotifyCtx { inner, host_netns, wake: wake_w, on_inner_listen: cfg.on_inner_listen.clone() };
            std::thread::Builder::new().name("handoff-notify".into()).spawn(move || notify_loop(&notify, &ctx, &pending, &stop))?
        };
        let accept = {
            let (stop, listener) = (stop.clone(), listener.clone());
            std::thread::Builder::new().name("handoff-accept".into()).spawn(move || {
                let ctx = AcceptCtx { netns, diag, cfg, pending, stats, wake: wake_r };
                accept_loop(&listener, &ctx, &stop)
            })
        };
        let mut h = Handoff { stop, listener, accept: None, notify: Some(notify) };
        h.accept = Some(accept?);
        Ok(h)
    }

    pub fn stop(&mut self) {
        crate::net::broker::stop_accepting(&self.stop, &self.listener, &mut self.accept);
        if let Some(t) = self.notify.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether this kernel has what the handoff needs (Linux >= 5.14:
/// `SECCOMP_ADDFD_FLAG_SEND`, and `SO_NETNS_COOKIE`, which came with it). The
/// launcher decides before the payload loads the filter: once loaded, its
/// notifications must be served for the payload's whole life.
pub fn supported() -> bool {
    std::net::UdpSocket::bind("127.0.0.1:0").is_ok_and(|s| netns_cookie(s.as_raw_fd()).is_some())
}

/// What the accept thread works with.
struct AcceptCtx {
    netns: Netns,
    /// Opened in the host's namespace, before the thread enters the sandbox's.
    diag: std::cell::RefCell<Option<crate::net::sock_diag::PeerLookup>>,
    cfg: Config,
    pending: PendingMap,
    stats: Arc<SharedCounters>,
    /// Readable when the payload listens on its inner port.
    wake: OwnedFd,
}

fn accept_loop(listener: &TcpListener, ctx: &AcceptCtx, stop: &AtomicBool) {
    let AcceptCtx { netns, diag, cfg, pending, stats, wake } = ctx;
    // This thread makes the placeholders: they belong to the sandbox's namespace.
    if let Err(e) = netns.enter() {
        tracing::warn!(error = %e, "handoff: cannot enter the sandbox's network namespace; no connection is brokered");
        return;
    }
    let Ok(local) = listener.local_addr() else { return };
    // Admitted connections that came before the payload listened: they wait,
    // as in a listener's backlog, until it does (the notify thread wakes us
    // when the payload listens on its inner port) or `HOLD` passes.
    let mut early: Vec<(TcpStream, SocketAddr, std::time::Instant)> = Vec::new();
    // The notify thread ends with the payload and closes the pipe's other end:
    // a hung-up pipe polls ready forever, so it is not polled any more.
    let mut wake_open = true;
    loop {
        let mut pfds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if wake_open { wake.as_raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
        ];
        let timeout = if early.is_empty() { -1 } else { RETRY_MS };
        // SAFETY: pfds is a valid array of two pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout) };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if pfds[1].revents != 0 {
            drain(wake);
            wake_open = pfds[1].revents & (libc::POLLHUP | libc::POLLERR) == 0;
        }
        if !early.is_empty() {
            let Ok(mut map) = pending.lock() else { return };
            early.retain_mut(|(host, peer, since)| {
                if since.elapsed() > HOLD {
                    return false;
                }
                let Ok(h) = host.try_clone() else { return false };
                !hand(h, *peer, cfg.inner, &mut map, stats)
            });
        }
        if pfds[0].revents == 0 {
            continue;
        }
        let (host, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "broker accept failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        // The same check as the relay's: counted and reported when refused.
        if let Some(ingress) = &cfg.ingress
            && !ingress.admit(&mut diag.borrow_mut(), peer, Some(local), stats)
        {
            continue;
        }
        if let Err(e) = pin_to_peer(&host, peer) {
            tracing::warn!(error = %e, "broker: cannot pin the connection to its client; closed");
            continue;
        }
        let _ = host.set_nodelay(true);
        let Ok(mut map) = pending.lock() else { return };
        if map.len() + early.len() >= cfg.max_pending {
            sweep(&mut map);
        }
        if map.len() + early.len() >= cfg.max_pending {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(max = cfg.max_pending, "broker: too many connections wait for the payload's accept; closed");
            continue;
        }
        let Ok(h) = host.try_clone() else { continue };
        if !hand(h, peer, cfg.inner, &mut map, stats) {
            early.push((host, peer, std::time::Instant::now()));
        }
    }
}

/// How often connections that came before the payload listened are retried,
/// besides when the payload's listen() wakes us.
const RETRY_MS: i32 = 20;
/// How long such a connection waits for the payload to listen.
const HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// Announce `host` to the payload with a placeholder (under the map's lock:
/// the payload's accept of the placeholder waits for the entry). False when
/// nothing listens inside yet.
fn hand(host: TcpStream, peer: SocketAddr, inner: u16, map: &mut HashMap<u16, Pending>, stats: &SharedCounters) -> bool {
    match placeholder(inner) {
        Ok((placeholder, port)) => {
            map.insert(port, Pending { host, peer, placeholder });
            stats.connections.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

fn drain(fd: &OwnedFd) {
    let mut b = [0u8; 64];
    // SAFETY: reading into our buffer from our non-blocking pipe.
    while unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0 {}
}

/// Drop entries whose placeholder failed or was closed (the payload closed its
/// listener, or its backlog never took the connection).
fn sweep(map: &mut HashMap<u16, Pending>) {
    map.retain(|_, p| {
        let mut pfd = libc::pollfd { fd: p.placeholder.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP) == 0
    });
}

/// Connect 127.0.0.1:`inner` from this thread's namespace; the placeholder's
/// local port is the key the payload's accept finds it by. Loopback answers at
/// once: a refusal is an error, and a full backlog is not waited for. One byte
/// is sent, because a listener with `TCP_DEFER_ACCEPT` (Bun, so OpenCode, sets
/// it) queues a connection only once data comes; the launcher reads the
/// placeholder's server end itself and closes it, so nobody sees the byte.
fn placeholder(inner: u16) -> io::Result<(TcpStream, u16)> {
    let s = crate::sys::tcp_connect_loopback_nonblocking(inner).map_err(|e| io::Error::from_raw_os_error(e.errno as i32))?;
    let mut pfd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd; a loopback handshake completes within the connect.
    unsafe { libc::poll(&mut pfd, 1, 10) };
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    if pfd.revents & libc::POLLOUT != 0 {
        // SAFETY: send one byte from a static buffer on our socket.
        unsafe { libc::send(s.as_raw_fd(), b"P".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }
    let port = s.local_addr()?.port();
    Ok((s, port))
}

/// Attach and lock a socket filter that admits only non-SYN segments from
/// `peer` (IPv4: the host port listens on 127.0.0.1 only).
fn pin_to_peer(sock: &TcpStream, peer: SocketAddr) -> io::Result<()> {
    const LD_B_ABS: u16 = 0x30;
    const LD_H_ABS: u16 = 0x28;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x05 | 0x10;
    const JSET_K: u16 = 0x05 | 0x40;
    const RET_K: u16 = 0x06;
    const TCP_SYN: u32 = 0x02;
    // Socket filters of TCP see the TCP header at offset 0; the IP header is at
    // SKF_NET_OFF.
    const SKF_NET_OFF: i32 = -0x0010_0000;
    let SocketAddr::V4(p) = peer else { return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 peer")) };
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        /* 0 */ f(LD_B_ABS, 0, 0, 13), // TCP flags
        /* 1 */ f(JSET_K, 5, 0, TCP_SYN), // -> 7 drop
        /* 2 */ f(LD_H_ABS, 0, 0, 0), // source port
        /* 3 */ f(JEQ_K, 0, 3, u32::from(p.port())), // else -> 7 drop
        /* 4 */ f(LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) as u32), // IPv4 source
        /* 5 */ f(JEQ_K, 0, 1, u32::from(*p.ip())), // else -> 7 drop
        /* 6 */ f(RET_K, 0, 0, u32::MAX),
        /* 7 */ f(RET_K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    let one: libc::c_int = 1;
    let fd = sock.as_raw_fd();
    // SAFETY: setsockopt with a sock_fprog that points at `prog`, which outlives
    // the call (the kernel copies it), and an int option.
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&fprog as *const libc::sock_fprog).cast(), size_of_val(&fprog) as u32) != 0
            || libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, (&one as *const libc::c_int).cast(), size_of_val(&one) as u32) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One accept call of the payload's on the inner-port listener.
struct Accept {
    id: u64,
    pid: libc::pid_t,
    addr: u64,
    addrlen: u64,
    flags: i32,
    /// Our copy of the payload's listener (same open file description).
    listener: OwnedFd,
    /// Its inode: connections taken for an interrupted call go to the next
    /// call on the same listener.
    ino: u64,
    /// The inner-port listener (`Some(is_ipv6)`), whose placeholders stand for host connections.
    inner: Option<bool>,
}

/// What the notify thread knows besides the pending connections.
struct NotifyCtx {
    inner: u16,
    /// `SO_NETNS_COOKIE` of the host's network namespace.
    host_netns: u64,
    /// Written when the payload listens on its inner port.
    wake: OwnedFd,
    /// Written then too, for the health check.
    on_inner_listen: Option<Arc<OwnedFd>>,
}

fn notify_loop(notify: &OwnedFd, ctx: &NotifyCtx, pending: &PendingMap, stop: &AtomicBool) {
    let fd = notify.as_raw_fd();
    let mut pidfds = Pidfds::default();
    let mut waiting: Vec<Accept> = Vec::new();
    let mut taken = Taken::new();
    while !stop.load(Ordering::SeqCst) {
        let mut pfds: Vec<libc::pollfd> = std::iter::once(fd)
            .chain(waiting.iter().map(|w| w.listener.as_raw_fd()))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: pfds is a valid array of pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, POLL_MS) };
        if n < 0 {
            continue;
        }
        // Waiting accepts whose listener has a connection now, or whose caller
        // was interrupted (its call restarts as a new notification).
        let ready: Vec<bool> = pfds[1..].iter().zip(&waiting).map(|(p, w)| p.revents != 0 || taken.iter().any(|t| t.0 == w.ino)).collect();
        let mut kept = Vec::with_capacity(waiting.len());
        for (w, r) in std::mem::take(&mut waiting).into_iter().zip(ready) {
            if !id_valid(fd, w.id) {
                continue;
            }
            if !r {
                kept.push(w);
                continue;
            }
            match try_accept(fd, &w, pending, &mut taken) {
                Some(reply) => reply.send(fd, w.id),
                None => kept.push(w),
            }
        }
        waiting = kept;
        if pfds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 && pfds[0].revents & libc::POLLIN == 0 {
            return; // every process of the filter is gone
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills `req`.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            continue; // ENOENT: the caller was interrupted or died
        }
        if i64::from(req.data.nr) == libc::SYS_listen {
            let r = on_listen(fd, &req, ctx, &mut pidfds);
            tracing::debug!(pid = req.pid, fd = req.data.args[0], result = ?r, "handoff: the payload listens");
            r.send(fd, req.id);
            continue;
        }
        tracing::trace!(pid = req.pid, nr = req.data.nr, fd = req.data.args[0], "handoff: accept notification");
        match on_accept(fd, &req, ctx.inner, &mut pidfds, pending, &mut taken) {
            Step::Reply(r) => r.send(fd, req.id),
            Step::Wait(a) if waiting.len() < MAX_WAITERS => waiting.push(a),
            Step::Wait(_) => Reply::Error(libc::ENOBUFS).send(fd, req.id),
        }
    }
}

#[derive(Debug)]
enum Reply {
    Continue,
    /// The call returns this value (the launcher made it).
    Value(i64),
    Error(i32),
    /// ADDFD with SEND answered already.
    Done,
}

impl Reply {
    fn send(self, notify: RawFd, id: u64) {
        let (error, flags) = match self {
            Reply::Done => return,
            Reply::Continue => (0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
            Reply::Error(errno) => (-errno, 0),
            Reply::Value(v) => {
                let mut resp = libc::seccomp_notif_resp { id, val: v, error: 0, flags: 0 };
                // SAFETY: SEND reads `resp`; failure means the caller is gone.
                unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
                return;
            }
        };
        let mut resp = libc::seccomp_notif_resp { id, val: 0, error, flags };
        // SAFETY: SEND reads `resp`; failure means the caller is gone.
        unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

enum Step {
    Reply(Reply),
    Wait(Accept),
}

fn on_accept(notify: RawFd, req: &libc::seccomp_notif, inner: u16, pidfds: &mut Pidfds, pending: &PendingMap, taken: &mut Taken) -> Step {
    let nr = i64::from(req.data.nr);
    if nr != libc::SYS_accept && nr != libc::SYS_accept4 {
        return Step::Reply(Reply::Continue);
    }
    let a = req.data.args;
    let flags = if nr == libc::SYS_accept4 { a[3] as i32 } else { 0 };
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Step::Reply(Reply::Error(libc::EINVAL));
    }
    let pid = req.pid as libc::pid_t;
    // Never CONTINUE: the kernel would look the fd number up again, and another
    // thread may have put the inner listener there meanwhile (its accept would
    // take a placeholder, and race ours). Every accept is made here, by this
    // one thread, on the very socket: nobody else ever takes from a queue.
    let listener = match pidfds.getfd(pid, a[0] as RawFd) {
        Ok(l) => l,
        Err(e) => return Step::Reply(Reply::Error(e.raw_os_error().unwrap_or(libc::EBADF))),
    };
    // What we read must belong to the same, still-waiting call.
    if !id_valid(notify, req.id) {
        return Step::Reply(Reply::Done);
    }
    let Some(ino) = inode(listener.as_raw_fd()) else { return Step::Reply(Reply::Error(libc::EBADF)) };
    if sockopt(listener.as_raw_fd(), libc::SO_ACCEPTCONN) != Some(1) {
        // Not a listener: the kernel's answers, without calling accept here
        // (a family whose listen state is not TCP's would block this thread).
        return Step::Reply(Reply::Error(match sockopt(listener.as_raw_fd(), libc::SO_TYPE) {
            None => libc::ENOTSOCK,
            Some(libc::SOCK_STREAM | libc::SOCK_SEQPACKET) => libc::EINVAL,
            Some(_) => libc::EOPNOTSUPP,
        }));
    }
    let inner = inner_listener(&listener, inner);
    let acc = Accept { id: req.id, pid, addr: a[1], addrlen: a[2], flags, listener, ino, inner };
    match try_accept(notify, &acc, pending, taken) {
        Some(r) => Step::Reply(r),
        None if fd_nonblocking(acc.listener.as_raw_fd()) => Step::Reply(Reply::Error(libc::EAGAIN)),
        None => Step::Wait(acc),
    }
}

/// The payload's listen(): made by the launcher on the very socket (no fd-number
/// race), refused for a socket of the host's namespace (a handed-off
/// connection, disconnected, must not become a host listener); a listen on the
/// inner port wakes the connections that came early.
fn on_listen(notify: RawFd, req: &libc::seccomp_notif, ctx: &NotifyCtx, pidfds: &mut Pidfds) -> Reply {
    let (fd, backlog) = (req.data.args[0] as RawFd, req.data.args[1] as libc::c_int);
    // Never CONTINUE: the kernel would look the fd number up again, and another
    // thread may have put a host socket there meanwhile.
    let sock = match pidfds.getfd(req.pid as libc::pid_t, fd) {
        Ok(s) => s,
        // EBADF, or ESRCH for a caller that is gone (then nobody reads it).
        Err(e) => return Reply::Error(e.raw_os_error().unwrap_or(libc::EBADF)),
    };
    if !id_valid(notify, req.id) {
        return Reply::Done;
    }
    match netns_cookie(sock.as_raw_fd()) {
        None => return Reply::Error(libc::ENOTSOCK),
        Some(c) if c == ctx.host_netns => return Reply::Error(libc::EPERM),
        Some(_) => {}
    }
    // SAFETY: listen on our copy of the payload's socket.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } != 0 {
        return Reply::Error(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
    }
    if local_addr(sock.as_raw_fd()).is_some_and(|a| a.port() == ctx.inner) {
        for fd in [Some(&ctx.wake), ctx.on_inner_listen.as_deref()].into_iter().flatten() {
            // SAFETY: one byte to a non-blocking pipe; a full pipe already wakes.
            unsafe { libc::write(fd.as_raw_fd(), b"L".as_ptr().cast(), 1) };
        }
    }
    Reply::Value(0)
}

const SO_NETNS_COOKIE: libc::c_int = 71;

fn netns_cookie(fd: RawFd) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the given size.
    (unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut v as *mut u64).cast(), &mut len) } == 0).then_some(v)
}

/// The inode of `fd`'s file (a socket's identity).
fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a valid fd into our struct.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// `Some(is_ipv6)` when `fd` is a listening TCP socket on port `inner`.
fn inner_listener(fd: &OwnedFd, inner: u16) -> Option<bool> {
    if sockopt(fd.as_raw_fd(), libc::SO_ACCEPTCONN)? != 1 || sockopt(fd.as_raw_fd(), libc::SO_PROTOCOL)? != libc::IPPROTO_TCP {
        return None;
    }
    let local = local_addr(fd.as_raw_fd())?;
    (local.port() == inner).then_some(local.is_ipv6())
}

/// Accept one connection from the payload's listener if one is queued, and
/// deliver it (or the host connection its placeholder stands for).
fn try_accept(notify: RawFd, acc: &Accept, pending: &PendingMap, taken: &mut Taken) -> Option<Reply> {
    // A connection taken for a call that was interrupted goes to the next call.
    if let Some(i) = taken.iter().position(|t| t.0 == acc.ino)
        && let Some((ino, sock, peer)) = taken.remove(i)
    {
        return Some(deliver(notify, acc, sock, peer).unwrap_or_else(|(s, p)| {
            taken.push_front((ino, s, p));
            Reply::Done
        }));
    }
    let fd = acc.listener.as_raw_fd();
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting: accept below must not block.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 on our copy of the listener, the address into our storage.
    let s = unsafe { libc::accept4(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len, libc::SOCK_CLOEXEC) };
    if s < 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => None,
            Some(e) => Some(Reply::Error(e)),
            None => Some(Reply::Error(libc::EIO)),
        };
    }
    // SAFETY: a fresh fd from accept4.
    let accepted = unsafe { OwnedFd::from_raw_fd(s) };
    // The address as accept(2) gives it (any family: the payload's own listeners too).
    // SAFETY: the kernel wrote `len` bytes (at most the storage's size) of `ss`.
    let raw = unsafe {
        std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), (len as usize).min(size_of::<libc::sockaddr_storage>()))
    }
    .to_vec();
    let entry = match (acc.inner, peer_addr(s).map(unmap)) {
        (Some(_), Some(SocketAddr::V4(p))) if *p.ip() == Ipv4Addr::LOCALHOST => pending.lock().ok().and_then(|mut m| m.remove(&p.port())),
        _ => None,
    };
    tracing::trace!(handed_off = entry.is_some(), "handoff: the payload accepts");
    let (sock, peer) = match entry {
        Some(e) => {
            drop(e.placeholder);
            drop(accepted);
            (OwnedFd::from(e.host), sockaddr_bytes(e.peer, acc.inner == Some(true)))
        }
        None => (accepted, raw),
    };
    Some(deliver(notify, acc, sock, peer).unwrap_or_else(|(s, p)| {
        // Bounded: a payload that interrupts its accepts and closes the
        // listener never calls again; the oldest such connection is closed.
        if taken.len() >= MAX_TAKEN {
            taken.pop_front();
        }
        taken.push_back((acc.ino, s, p));
        Reply::Done
    }))
}

/// Connections taken from the payload's listener for an accept call that was
/// interrupted (a signal) before it got them.
type Taken = std::collections::VecDeque<(u64, OwnedFd, Vec<u8>)>;

/// Most connections waiting for the next call after an interrupted one.
const MAX_TAKEN: usize = 32;

/// Install `sock` in the payload as the result of its accept call. `Err` gives
/// the connection back when the call is gone (interrupted by a signal: it
/// restarts as a new notification, or the caller retries on EINTR).
fn deliver(notify: RawFd, acc: &Accept, sock: OwnedFd, peer: Vec<u8>) -> Result<Reply, (OwnedFd, Vec<u8>)> {
    if set_nonblocking(sock.as_raw_fd(), acc.flags & libc::SOCK_NONBLOCK != 0).is_err() {
        return Ok(Reply::Error(libc::ECONNABORTED));
    }
    if acc.addr != 0 {
        match write_sockaddr(notify, acc, &peer) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err((sock, peer)),
            Err(_) => return Ok(Reply::Error(libc::EFAULT)),
        }
    }
    let mut addfd = libc::seccomp_notif_addfd {
        id: acc.id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: sock.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if acc.flags & libc::SOCK_CLOEXEC != 0 { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: ADDFD reads `addfd`; the kernel installs a duplicate of srcfd in
    // the caller and answers the call with its number.
    if unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut addfd) } < 0 {
        let e = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        // The call is gone: ENOENT when it was interrupted before the ADDFD
        // reached it, ESRCH when a signal came while the ADDFD was pending
        // (the kernel cancels queued ADDFDs of an interrupted call). Either way
        // the connection goes to the next accept, never dropped.
        return if e == libc::ENOENT || e == libc::ESRCH { Err((sock, peer)) } else { Ok(Reply::Error(e)) };
    }
    Ok(Reply::Done)
}

/// Write `peer` as accept(2) does: at most `*addrlen` bytes, then the full
/// length. ESRCH: the call is gone.
fn write_sockaddr(notify: RawFd, acc: &Accept, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if acc.addrlen == 0 {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    // The caller's memory through /proc/TID/mem, opened first and checked
    // after: while its call is still pending the thread is alive, so the tid
    // was not reused by another process when we opened it.
    let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{}/mem", acc.pid));
    if !id_valid(notify, acc.id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let mem = mem?;
    let fault = |_| io::Error::from_raw_os_error(libc::EFAULT);
    let mut len = [0u8; 4];
    mem.read_exact_at(&mut len, acc.addrlen).map_err(fault)?;
    let room = i32::from_ne_bytes(len);
    if room < 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    mem.write_all_at(&bytes[..bytes.len().min(room as usize)], acc.addr).map_err(fault)?;
    mem.write_all_at(&(bytes.len() as u32).to_ne_bytes(), acc.addrlen).map_err(fault)
}

/// `peer` as a sockaddr_in, or as a sockaddr_in6 (IPv4-mapped) for an IPv6 listener.
fn sockaddr_bytes(peer: SocketAddr, v6: bool) -> Vec<u8> {
    let ip = match (peer.ip(), v6) {
        (IpAddr::V4(a), false) => {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&peer.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.octets());
            return b;
        }
        (IpAddr::V4(a), true) => a.to_ipv6_mapped(),
        (IpAddr::V6(a), _) => a,
    };
    let mut b = vec![0u8; 28];
    b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    b[2..4].copy_from_slice(&peer.port().to_be_bytes());
    b[8..24].copy_from_slice(&ip.octets());
    b
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

fn id_valid(notify: RawFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: ID_VALID reads the id.
    unsafe { libc::ioctl(notify, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) == 0 }
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the given size.
    (unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) } == 0).then_some(v)
}

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    sockname(fd, libc::getsockname)
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    sockname(fd, libc::getpeername)
}

type NameCall = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn sockname(fd: RawFd, call: NameCall) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname/getpeername into storage of the given size.
    if unsafe { call(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return None;
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::from((std::net::Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

fn fd_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL on a valid fd (the open file description is the payload's).
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a socket we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK }) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// pidfds of the payload's threads, for `pidfd_getfd`.
#[derive(Default)]
struct Pidfds(HashMap<libc::pid_t, OwnedFd>);

const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

impl Pidfds {
    /// A copy of the thread `tid`'s descriptor `fd`.
    fn getfd(&mut self, tid: libc::pid_t, fd: RawFd) -> io::Result<OwnedFd> {
        if let Some(p) = self.0.get(&tid) {
            match pidfd_getfd(p, fd) {
                // A cached pidfd of a thread that has exited: the tid is another's now.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => return other,
            }
        }
        if self.0.len() >= 256 {
            self.0.clear();
        }
        let p = pidfd_open(tid)?;
        let r = pidfd_getfd(&p, fd);
        self.0.insert(tid, p);
        r
    }
}

fn pidfd_open(tid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let mut fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before Linux 6.9 (no PIDFD_THREAD): the thread group, which shares
        // the descriptor table unless the thread unshared it.
        let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:").and_then(|v| v.trim().parse::<libc::pid_t>().ok()))
            .ok_or_else(|| io::Error::other("no Tgid"))?;
        // SAFETY: as above.
        fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid, 0) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd returns a new fd (close-on-exec) or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// CPU time (ns) of this process's threads named `name`, by thread id.
    fn threads_named(name: &str) -> HashMap<String, u64> {
        let mut found = HashMap::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let dir = t.path();
            if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == name)
                && let Ok(s) = std::fs::read_to_string(dir.join("schedstat"))
            {
                found.insert(t.file_name().to_string_lossy().into_owned(), s.split(' ').next().unwrap().parse().unwrap());
            }
        }
        found
    }

    #[test]
    fn the_accept_thread_sleeps_once_the_payload_is_gone() {
        // The notify thread ends when every process of the filter is gone
        // (its fd hangs up): here at once, as a pipe whose writer is closed.
        let (gone, writer) = crate::sys::pipe_cloexec().unwrap();
        drop(writer);
        let before = threads_named("handoff-accept");
        let netns = crate::net::broker::Netns::of_pid(std::process::id() as libc::pid_t).unwrap();
        let cfg = Config { inner: 1, ingress: None, max_pending: 4, on_inner_listen: None };
        let stats = Arc::new(SharedCounters::private().unwrap());
        let mut h = Handoff::start(gone, TcpListener::bind("127.0.0.1:0").unwrap(), netns, cfg, stats).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let tid = threads_named("handoff-accept").into_keys().find(|t| !before.contains_key(t)).expect("the accept thread runs");
        let start = threads_named("handoff-accept")[&tid];
        std::thread::sleep(std::time::Duration::from_millis(300));
        let used = threads_named("handoff-accept")[&tid] - start;
        h.stop();
        // Spinning on the hung-up wake pipe took a whole CPU (~300 ms here).
        assert!(used < 30_000_000, "the accept thread used {} ms of CPU in 300 ms while nothing happened", used / 1_000_000);
    }

    #[test]
    fn a_pinned_socket_talks_to_its_client_and_never_connects_again() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        target.set_nonblocking(true).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        pin_to_peer(&s, peer).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
        // SAFETY: detach on our socket: the lock refuses it.
        let r = unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DETACH_FILTER, [0i32].as_ptr().cast(), 4) };
        assert_eq!(r, -1);
        // Disconnect, then connect elsewhere: the SYN-ACK never gets in.
        let unspec = libc::sockaddr { sa_family: libc::AF_UNSPEC as u16, sa_data: [0; 14] };
        // SAFETY: connect(AF_UNSPEC) on our socket.
        assert_eq!(unsafe { libc::connect(s.as_raw_fd(), &unspec, size_of::<libc::sockaddr>() as u32) }, 0);
        s.set_nonblocking(true).unwrap();
        let t = target.local_addr().unwrap();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: t.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: connect on our socket with a valid sockaddr_in.
        unsafe { libc::connect(s.as_raw_fd(), (&sin as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32) };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(target.accept().is_err(), "the pinned socket reached another listener");
    }

    #[test]
    fn peer_addresses_are_written_as_the_listener_expects() {
        let p: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let b = sockaddr_bytes(p, false);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[2..8], &[0x10, 0x92, 127, 0, 0, 1]);
        let b = sockaddr_bytes(p, true);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[20..24], &[127, 0, 0, 1]);
        assert_eq!(unmap("[::ffff:127.0.0.1]:5".parse().unwrap()), "127.0.0.1:5".parse::<SocketAddr>().unwrap());
    }
}
