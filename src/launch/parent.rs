//! Parent side: the launcher (host root). Everything that needs host privilege or
//! host paths happens here, before or right after the `clone`:
//!
//! 1. validate the request (payload, worktree and its owner, ids);
//! 2. lease a per-sandbox host uid;
//! 3. prepare every bind as a detached, flagged mount tree ([`crate::fs::host_binds`]);
//! 4. `clone` the init into new namespaces; the child only re-execs this binary;
//! 5. write the child's `setgroups`/uid/gid maps; idmap the worktree mount through
//!    the child's user namespace (falling back to mapping the sandbox to the
//!    worktree owner where the filesystem cannot idmap);
//! 6. send the spec and the mount fds; forward signals; report the status.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::channel::{ChannelError, FromInit, ParentEnd};
use super::spec::{InitSpec, LogConfig, PayloadStatus};
use crate::confine::ns::user::{IdMap, MapError};
use crate::fs::host_binds::{Access, BindError, PreparedMounts};
use crate::host::uidalloc::{self, UidAllocError, UidRange};
use crate::policy::Policy;
use crate::sys::{self, Errno, SysError};

/// Inside the sandbox, HOME is private and empty (on the sandbox's /tmp).
pub const SANDBOX_HOME: &str = "/tmp/home";
pub const SANDBOX_PATH: &str = "/opt/swarmcell/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most bytes of argv + environment passed into a sandbox.
pub const MAX_ARGS_BYTES: usize = 128 * 1024;

pub struct RunRequest {
    pub worktree: PathBuf,
    pub policy: Policy,
    pub extra_ro: Vec<PathBuf>,
    pub extra_rw: Vec<PathBuf>,
    pub ready_fd: Option<RawFd>,
    /// A sealed memfd page for the broker's counters (the daemon reads it).
    pub stats_fd: Option<RawFd>,
    /// Host uid/gid that owns what the sandbox writes (default: the worktree's owner).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Use an idmapped worktree mount and a per-sandbox host uid where supported.
    pub idmap: bool,
    pub argv: Vec<String>,
    pub log: LogConfig,
    pub state_dir: PathBuf,
    /// Sweep stale cgroups and leases first (off for a supervisor that sweeps itself).
    pub gc: bool,
    pub uid_range: UidRange,
    /// Name of the directory, inside the launcher's own cgroup, that holds the
    /// sandboxes' cgroups.
    pub cgroup_parent: String,
    /// Host port for the broker: none, the next free one of the range, or a given one.
    pub port: PortChoice,
    pub port_range: crate::host::ports::PortRange,
    /// How readiness is decided when there is a port.
    pub health: HealthMode,
    /// Overall health deadline (default: the policy's).
    pub health_timeout: Option<std::time::Duration>,
    /// SIGTERM first, SIGKILL to everything after this long.
    pub stop_timeout: std::time::Duration,
    pub max_connections: usize,
    pub broker: BrokerMode,
    /// Outbound forwards and egress rules for this run, on top of the policy's.
    pub extra_forwards: Vec<u16>,
    pub extra_allow_hosts: Vec<String>,
    pub extra_allow_addresses: Vec<std::net::IpAddr>,
    /// Fixed resolutions for the egress proxy (`--resolve NAME=IP`).
    pub resolve: std::collections::HashMap<String, std::net::IpAddr>,
    /// Local uids that may connect to the host port besides root and the
    /// worktree's owner (`--allow-uid`).
    pub allow_uids: Vec<u32>,
    /// No uid check on the host port (`--allow-any-uid`; needed by handoff).
    pub allow_any_uid: bool,
    /// The sandbox's secret, from a supervisor that keeps it across restarts
    /// (`--secret-fd`); otherwise a new one is made when the policy asks.
    pub secret_fd: Option<RawFd>,
    /// Repositories a git worktree may belong to (`--repo`; empty: any, as recorded).
    pub repos: Vec<PathBuf>,
}

impl RunRequest {
    /// Host loopback ports reachable from inside: the policy's and `--forward`s.
    pub fn forwards(&self) -> Vec<u16> {
        let mut f = self.policy.network.forwards.clone();
        f.extend(self.extra_forwards.iter().filter(|p| !self.policy.network.forwards.contains(p)));
        f
    }

    fn egress_rules(&self) -> crate::net::egress::Rules {
        let n = &self.policy.network;
        crate::net::egress::Rules {
            hosts: n.egress_allow.iter().chain(&self.extra_allow_hosts).cloned().collect(),
            addresses: n.egress_allow_addresses.iter().filter_map(|a| a.parse().ok()).chain(self.extra_allow_addresses.iter().copied()).collect(),
            resolve: self.resolve.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// The default: the launcher accepts, checks the client's uid, and hands
    /// each admitted connection to the payload's accept (see crate::net::handoff):
    /// native speed, and the socket reaches only its client. The relay takes
    /// over when the handoff cannot be set up.
    Handoff,
    /// Every connection is relayed into the sandbox's network namespace; the
    /// payload holds no host socket at all.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    None,
    Auto,
    /// This one when it can be had, else the next free one.
    Prefer(u16),
    Fixed(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// GET the policy's health path through the broker until 2xx.
    Http,
    /// A TCP connection to the inner port is enough.
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Uid(#[from] UidAllocError),
    #[error(transparent)]
    Cgroup(#[from] crate::host::cgroups::CgroupError),
    #[error(transparent)]
    Lease(#[from] crate::host::lease::LeaseError),
    #[error(transparent)]
    Port(#[from] crate::host::ports::PortError),
    #[error("sandbox {id}: {source}")]
    Health { id: String, source: crate::net::health::HealthError },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("cannot create the sandbox namespaces: {0}")]
    Namespaces(String),
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: SysError },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot {verb} {path:?}: {errno} ({})", errno.desc())]
    Exec { verb: &'static str, path: String, errno: Errno },
}

impl RunError {
    /// The documented exit code: 127 not found, 126 cannot execute, 125 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Exec { errno: Errno::ENOENT, .. } => super::EXIT_NOT_FOUND,
            RunError::Exec { .. } => super::EXIT_CANNOT_EXECUTE,
            _ => super::EXIT_LAUNCHER_ERROR,
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, RunError> {
    Err(RunError::Invalid(msg.into()))
}

/// A validated worktree: canonical path, owner, the directory fd it was
/// checked through (the bind is made from it), and what the sandbox gets of
/// its git repository when it is a linked worktree.
#[derive(Debug)]
pub struct Worktree {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub dir: OwnedFd,
    pub git: Option<crate::git::SandboxGit>,
}

/// Directories that may never be a worktree: binding one read-write would hand
/// the sandbox the host's system.
const FORBIDDEN_WORKTREES: [&str; 12] = ["/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var", "/root", "/home", "/opt"];

pub fn resolve_worktree(path: &Path, repos: &[PathBuf]) -> Result<Worktree, RunError> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => return invalid(format!("worktree {} is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return invalid(format!("worktree {} does not exist", path.display()));
        }
        _ => {}
    }
    // Opened once; its canonical path comes from the fd, and the bind is made of this inode.
    let opened = crate::git::record::Opened::open(path).map_err(|e| RunError::Invalid(format!("worktree {}: {e}", path.display())))?;
    let canonical = opened.path.clone();
    if FORBIDDEN_WORKTREES.iter().any(|f| canonical == Path::new(f))
        || ["/proc", "/sys", "/dev", "/run/swarmcell"].iter().any(|p| canonical.starts_with(p))
    {
        return invalid(format!("worktree {} is a system directory", canonical.display()));
    }
    let git = crate::git::prepare_sandbox(&opened, repos).map_err(|e| match e {
        crate::git::GitError::Violation(m) => RunError::Invalid(m),
        e => RunError::Invalid(format!("worktree {}: {e}", canonical.display())),
    })?;
    let (uid, gid) = (opened.dir.stat.st_uid, opened.dir.stat.st_gid);
    Ok(Worktree { path: canonical, uid, gid, dir: opened.dir.fd, git })
}

/// The sandbox's ids inside its namespace: the worktree owner's unless given.
fn inside_ids(req: &RunRequest, wt: &Worktree) -> Result<(u32, u32), RunError> {
    let uid = req.uid.unwrap_or(wt.uid);
    if uid == 0 {
        return if req.uid.is_some() {
            invalid("--uid 0 is refused: a sandbox never runs as root")
        } else {
            invalid(format!("worktree {} is owned by root; chown it to an unprivileged user or pass --uid UID (not 0)", wt.path.display()))
        };
    }
    let gid = req.gid.unwrap_or(if req.uid.is_some() { uid } else { wt.gid });
    if gid == 0 {
        return invalid(format!("worktree {} belongs to group root; chgrp it or pass --gid GID (not 0)", wt.path.display()));
    }
    Ok((uid, gid))
}

pub fn environment(policy: &Policy, id: &str, port: Option<u16>, secret: Option<&str>) -> Vec<(String, String)> {
    let clean = |v: String| (!v.is_empty() && v.len() < 256 && !v.chars().any(char::is_control)).then_some(v);
    let mut env = vec![
        ("PATH".to_string(), SANDBOX_PATH.to_string()),
        ("HOME".to_string(), SANDBOX_HOME.to_string()),
        ("TERM".to_string(), std::env::var("TERM").ok().and_then(clean).unwrap_or_else(|| "dumb".into())),
        ("LANG".to_string(), std::env::var("LANG").ok().and_then(clean).unwrap_or_else(|| "C.UTF-8".into())),
        ("USER".to_string(), "agent".to_string()),
        // Tools' state stays in the sandbox's private HOME, never the host user's.
        ("XDG_CONFIG_HOME".to_string(), format!("{SANDBOX_HOME}/.config")),
        ("XDG_DATA_HOME".to_string(), format!("{SANDBOX_HOME}/.local/share")),
        ("XDG_CACHE_HOME".to_string(), format!("{SANDBOX_HOME}/.cache")),
        ("XDG_STATE_HOME".to_string(), format!("{SANDBOX_HOME}/.local/state")),
        ("SWARMCELL_SANDBOX_ID".to_string(), id.to_string()),
    ];
    if port.is_some() {
        env.push(("SWARMCELL_PORT".to_string(), policy.network.inner_port.to_string()));
    }
    // Every outbound HTTP(S) request goes through the egress proxy.
    let proxy = format!("http://127.0.0.1:{}", policy.network.proxy_port);
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push((k.to_string(), proxy.clone()));
    }
    for k in ["NO_PROXY", "no_proxy"] {
        env.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    for name in &policy.process.env {
        if let Ok(v) = std::env::var(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
    }
    if let (Some(name), Some(secret)) = (&policy.process.server_password_env, secret) {
        env.retain(|(k, _)| k != name);
        env.push((name.clone(), secret.to_string()));
    }
    env
}

/// Longest secret accepted from `--secret-fd`.
const MAX_SECRET: usize = 256;

/// A new per-sandbox secret: 32 random bytes from the kernel, in hex.
pub fn new_secret() -> Result<String, RunError> {
    let mut b = [0u8; 32];
    // SAFETY: b is a valid 32-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(RunError::Sys { what: "making the sandbox's secret", source: SysError { call: "getrandom".into(), errno: Errno::last() } });
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Read the secret a supervisor passes on `--secret-fd` (then closed).
fn read_secret(fd: RawFd) -> Result<String, RunError> {
    use std::io::Read;
    if fd <= 2 || !sys::fd_is_open(fd) {
        return invalid(format!("--secret-fd {fd} is not an open file descriptor above 2"));
    }
    // SAFETY: the caller handed us this descriptor; we own it (closed on return).
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    f.by_ref().take(MAX_SECRET as u64 + 1).read_to_string(&mut text).map_err(|e| RunError::Invalid(format!("--secret-fd {fd}: {e}")))?;
    let secret = text.trim_end_matches('\n');
    if secret.len() < 16 || secret.len() > MAX_SECRET || !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return invalid(format!("--secret-fd {fd}: not a secret (16-{MAX_SECRET} characters of [A-Za-z0-9_-])"));
    }
    Ok(secret.to_string())
}

/// Landlock rules in sandbox paths: what the mounts show, minus `mount_only`.
fn landlock_spec(req: &RunRequest, wt: &Worktree) -> crate::confine::landlock::LandlockSpec {
    let mut spec = req.policy.landlock_rules(&wt.path, &req.extra_ro, &req.extra_rw);
    if let Some(git) = &wt.git {
        spec.read_exec.push(crate::git::layer::SANDBOX_OBJECTS.into());
        spec.read_write.push(git.common().to_path_buf());
    }
    spec
}

/// Run one sandbox in the foreground and return the payload's exit code.
pub fn run(req: &RunRequest) -> Result<u8, RunError> {
    if req.argv.is_empty() {
        return invalid("no command given and the policy has none (usage: swarmcell run --worktree DIR -- CMD ARGS...)");
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return invalid("an argument contains a NUL byte");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return invalid("swarmcell run must run as root: it maps every sandbox to its own unprivileged host uid");
    }
    let ready = take_ready_fd(req.ready_fd)?;
    let broker_stats = match req.stats_fd {
        Some(fd) => crate::net::broker_stats::SharedCounters::adopt(fd),
        None => crate::net::broker_stats::SharedCounters::private(),
    }
    .map_err(|e| RunError::Invalid(e.to_string()))?;
    let wt = resolve_worktree(&req.worktree, &req.repos)?;
    let (uid, gid) = inside_ids(req, &wt)?;
    crate::phases::mark("worktree resolved");
    let id = super::new_sandbox_id();
    super::events::set_sandbox(&id);
    let secret = match (&req.policy.process.server_password_env, req.secret_fd) {
        (Some(_), Some(fd)) => Some(read_secret(fd)?),
        (Some(_), None) => Some(new_secret()?),
        (None, _) => None,
    };
    let host_port = match req.port {
        PortChoice::None => None,
        PortChoice::Auto => Some(crate::host::ports::allocate(&req.state_dir, req.port_range)?),
        PortChoice::Prefer(p) => Some(
            crate::host::ports::take(&req.state_dir, req.port_range, p).or_else(|_| crate::host::ports::allocate(&req.state_dir, req.port_range))?,
        ),
        PortChoice::Fixed(p) => Some(crate::host::ports::take(&req.state_dir, req.port_range, p)?),
    };
    crate::phases::mark("secret and port");
    let env = environment(&req.policy, &id, host_port.as_ref().map(|p| p.port), secret.as_deref());
    // `{port}` in the arguments is the port the payload listens on inside.
    let inner = req.policy.network.inner_port.to_string();
    let argv: Vec<String> = req.argv.iter().map(|a| a.replace("{port}", &inner)).collect();
    let args_bytes: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>() + env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
    if args_bytes > MAX_ARGS_BYTES {
        return invalid(format!("arguments and environment are {args_bytes} bytes, more than {MAX_ARGS_BYTES}"));
    }
    if let Some(missing) = crate::confine::landlock::check_host(req.policy.landlock).map_err(|e| RunError::Invalid(e.to_string()))? {
        tracing::warn!("{missing}");
    }
    crate::phases::mark("environment and landlock check");
    let seccomp = crate::confine::seccomp::compile(&req.policy.seccomp.deny).map_err(|e| RunError::Invalid(e.to_string()))?;
    crate::phases::mark("seccomp compiled");
    // Before anything else is made: a limit that cannot be had is refused here.
    let mut disk =
        crate::host::disk::prepare(&wt.path, &req.policy.disk_limits(), &req.state_dir, &id).map_err(|e| RunError::Invalid(e.to_string()))?;
    // What the sandbox writes into its private git layer counts too.
    if let Some(git) = &wt.git {
        disk.add_tree(&git.layer.path).map_err(|e| RunError::Invalid(e.to_string()))?;
    }
    crate::phases::mark("disk prepared");
    let layout = crate::host::cgroups::Layout::detect()?;
    crate::phases::mark("cgroup layout");
    if req.gc {
        match crate::host::cgroups::gc(&layout, &req.cgroup_parent, &req.state_dir) {
            Ok(ids) if !ids.is_empty() => tracing::info!(removed = ?ids, "removed stale sandbox cgroups"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove stale sandbox cgroups"),
        }
    }
    crate::phases::mark("gc sweep");
    let lease = uidalloc::allocate(&req.state_dir, req.uid_range, super::random_u32())?;
    // Held for the sandbox's life: `gc` leaves the cgroup of a held id alone.
    let sandbox_lease = crate::host::lease::acquire_fresh(&req.state_dir.join("sandboxes").join(format!("{id}.lock")))?
        .ok_or_else(|| RunError::Setup(format!("sandbox id {id} is already in use")))?;
    crate::phases::mark("uid and sandbox leases");
    let mut cgroup = crate::host::cgroups::create(&layout, &req.cgroup_parent, &id, &req.policy.cgroup_limits())?;
    crate::phases::mark("cgroup created");
    let spec = InitSpec {
        id: id.clone(),
        uid,
        gid,
        mounts: Vec::new(),
        tmp_size: req.policy.filesystem.tmp_size.0.unwrap_or(512 << 20),
        shm_size: req.policy.filesystem.shm_size.0.unwrap_or(64 << 20),
        cwd: wt.path.clone(),
        home: SANDBOX_HOME.into(),
        argv,
        env,
        stop_timeout_ms: req.stop_timeout.as_millis() as u64,
        // Without kernel support no filter is loaded, and `on_running` relays.
        handoff: host_port.is_some() && req.broker == BrokerMode::Handoff && crate::net::handoff::supported(),
        log: req.log.clone(),
        landlock: landlock_spec(req, &wt),
        seccomp: super::spec::encode_bpf(&seccomp),
        trace_phases: crate::phases::enabled(),
    };
    let signals = SignalGuard::block()?;
    // A per-sandbox host uid behind an idmapped worktree, or (without idmapping)
    // the worktree owner's own ids.
    let leased = IdMap { inside_uid: uid, host_uid: lease.uid, inside_gid: gid, host_gid: lease.uid };
    let direct = IdMap { inside_uid: uid, host_uid: uid, inside_gid: gid, host_gid: gid };
    let first = if req.idmap { start(req, &wt, spec.clone(), leased, true, &cgroup) } else { start(req, &wt, spec.clone(), direct, false, &cgroup) };
    let mut sandbox = match first {
        Err(Fallback::Idmap) => {
            tracing::warn!(worktree = %wt.path.display(), "this filesystem cannot idmap mounts; the sandbox runs as the worktree owner's uid");
            start(req, &wt, spec, direct, false, &cgroup).map_err(Fallback::into_error)?
        }
        other => other.map_err(Fallback::into_error)?,
    };
    tracing::info!(sandbox = %id, pid = sandbox.pid, host_uid = sandbox.host_uid, cgroup_version = cgroup.version(), "sandbox started");
    crate::phases::mark("sandbox started");
    disk.watch(sandbox.pid).map_err(|e| RunError::Setup(e.to_string()))?;
    crate::phases::mark("disk watch");
    let publisher = wt.git.as_ref().map(|g| {
        let make = || crate::git::publish::Publisher::new(g.record.clone(), &id, req.policy.git.allow_force_publish, req.policy.disk_limits().bytes);
        PublishWatch::start(make(), make)
    });
    // Who may connect: root, the worktree's owner (and --uid), and --allow-uid.
    let mut allowed = vec![0, wt.uid];
    allowed.extend(req.uid.iter().chain(&req.allow_uids));
    let ingress = host_port.as_ref().filter(|_| !req.allow_any_uid).map(|p| crate::net::broker::Ingress { allowed: allowed.into(), port: p.port });
    let health_request = crate::net::health::request(
        &req.policy.health.path,
        req.policy.network.inner_port,
        secret.as_deref().map(|s| (req.policy.health.auth_user.as_str(), s)),
    );
    crate::phases::mark("publisher");
    let mut network = Network::start(req, &id, host_port.as_ref(), &mut sandbox, std::sync::Arc::new(broker_stats), ingress, health_request)?;
    crate::phases::mark("network started");
    let ready_info = ReadyInfo { id: &id, port: host_port.as_ref().map(|p| p.port), cgroups: cgroup.paths(), secret: secret.as_deref() };
    let status = sandbox.wait(&signals, ready, &ready_info, &mut network, req.stop_timeout);
    crate::phases::mark("sandbox ended");
    network.finish();
    drop(sandbox);
    crate::phases::mark("network finished");
    // The sandbox is gone: the last publish (the worktree's lease is still held).
    if let Some(p) = publisher {
        p.finish();
    }
    let oom_kills = cgroup.oom_kills();
    cgroup.kill_and_remove()?;
    crate::phases::mark("cgroup removed");
    let disk_stop = disk.finish();
    drop((lease, sandbox_lease, host_port));
    crate::phases::mark("disk and leases released");
    // The disk monitor stops a sandbox by killing its init, which then reports nothing.
    let status = if disk_stop.is_some() { status.or(Ok(PayloadStatus::Signaled(libc::SIGKILL))) } else { status }?;
    if status == PayloadStatus::Signaled(libc::SIGKILL) && oom_kills > 0 {
        let limit = cgroup.memory_limit().map_or("none".to_string(), |m| crate::policy::units::ByteSize::bytes(m).to_string());
        eprintln!("swarmcell: sandbox {id}: killed: out of memory, limit {limit}");
    }
    if let Some(why) = disk_stop {
        eprintln!("swarmcell: sandbox {id}: {why}");
    }
    Ok(status.exit_code())
}

/// The launcher's network services for one sandbox: outbound forwards and the
/// egress proxy, the inbound broker (relay, or socket handoff once the payload
/// runs) and the health check. Each stops its threads when dropped.
struct Network<'a> {
    req: &'a RunRequest,
    id: String,
    lease: Option<&'a crate::host::ports::PortLease>,
    netns: Option<crate::net::broker::Netns>,
    relay: Option<crate::net::broker::Broker>,
    /// The inbound broker's counters (a handoff counts connections, not bytes:
    /// it has no data path).
    relay_stats: std::sync::Arc<crate::net::broker_stats::SharedCounters>,
    handoff: Option<crate::net::handoff::Handoff>,
    /// The outbound forwards and the egress proxy, on one bounded event loop.
    outbound: Option<crate::net::outbound::OutboundLoop>,
    health: Option<HealthWatch>,
    /// Who may connect to the host port (None: anyone, `--allow-any-uid`).
    ingress: Option<crate::net::broker::Ingress>,
}

impl<'a> Network<'a> {
    fn start(
        req: &'a RunRequest,
        id: &str,
        lease: Option<&'a crate::host::ports::PortLease>,
        sandbox: &mut Sandbox,
        relay_stats: std::sync::Arc<crate::net::broker_stats::SharedCounters>,
        ingress: Option<crate::net::broker::Ingress>,
        health_request: std::sync::Arc<[u8]>,
    ) -> Result<Network<'a>, RunError> {
        let inner = req.policy.network.inner_port;
        let mut net = Network {
            req,
            id: id.to_string(),
            lease,
            netns: sandbox.netns.clone(),
            relay: None,
            relay_stats,
            handoff: None,
            outbound: None,
            health: None,
            ingress,
        };
        let (mut forwards, mut proxy) = (Vec::new(), None);
        for (kind, listener) in std::mem::take(&mut sandbox.outbound) {
            match kind {
                Outbound::Forward(p) => forwards.push((listener, p)),
                Outbound::Proxy => proxy = Some((listener, req.egress_rules())),
            }
        }
        if !forwards.is_empty() || proxy.is_some() {
            // The payload's upstream sockets are its owner's, never root's.
            let settings = crate::net::outbound::Settings { connect_as: sandbox.owner, ..crate::net::outbound::Settings::of(&req.policy.network) };
            net.outbound = Some(
                crate::net::outbound::OutboundLoop::start(id, forwards, proxy, settings)
                    .map_err(|e| RunError::Setup(format!("outbound forwards and egress proxy: {e}")))?,
            );
        }
        if let (Some(lease), Some(ns)) = (lease, &net.netns) {
            if req.broker == BrokerMode::Relay {
                net.relay = Some(start_relay(req, lease, ns, &net.relay_stats, net.ingress.clone())?);
            }
            // Always inside the sandbox's namespace, never through the host's
            // (with a handoff, too: the payload listens there itself).
            let check = match req.health {
                HealthMode::Http => crate::net::health::Check::Http { netns: Some(ns.clone()), port: inner, request: health_request },
                HealthMode::Tcp => crate::net::health::Check::Tcp { netns: Some(ns.clone()), port: inner },
            };
            net.health = Some(HealthWatch::start(check, req.health_timeout.unwrap_or(req.policy.health.timeout.0))?);
        }
        Ok(net)
    }

    /// The payload runs: broker by handoff (accept the host port, serve the
    /// payload's accept notifications), or relay when that cannot be set up.
    fn on_running(&mut self, notify: Option<OwnedFd>) {
        let (Some(lease), Some(ns)) = (self.lease, &self.netns) else { return };
        if self.req.broker != BrokerMode::Handoff {
            return;
        }
        let inner = self.req.policy.network.inner_port;
        let started = notify.ok_or_else(|| "no accept-notification listener from the sandbox".to_string()).and_then(|n| {
            let listener = lease.listener.try_clone().map_err(|e| e.to_string())?;
            let cfg = crate::net::handoff::Config { inner, ingress: self.ingress.clone(), max_pending: self.req.max_connections };
            crate::net::handoff::Handoff::start(n, listener, ns.clone(), cfg, self.relay_stats.clone()).map_err(|e| e.to_string())
        });
        match started {
            Ok(h) => self.handoff = Some(h),
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "socket handoff unavailable; relaying connections instead");
                let _ = lease.listener.set_nonblocking(false); // the handoff may have set it
                self.relay = start_relay(self.req, lease, ns, &self.relay_stats, self.ingress.clone()).ok();
            }
        }
    }

    /// Stop the health check, then (by dropping them) every service.
    fn finish(mut self) {
        if let Some(h) = self.health.take() {
            h.finish();
        }
    }
}

fn start_relay(
    req: &RunRequest,
    lease: &crate::host::ports::PortLease,
    ns: &crate::net::broker::Netns,
    stats: &std::sync::Arc<crate::net::broker_stats::SharedCounters>,
    ingress: Option<crate::net::broker::Ingress>,
) -> Result<crate::net::broker::Broker, RunError> {
    let listener = lease.listener.try_clone().map_err(|e| RunError::Setup(format!("broker listener: {e}")))?;
    let (inner, idle) = (req.policy.network.inner_port, req.policy.network.idle_timeout.0);
    crate::net::broker::Broker::start_checked(
        listener,
        crate::net::broker::Dest::Inside(ns.clone(), inner),
        req.max_connections,
        stats.clone(),
        idle,
        ingress,
    )
    .map_err(|e| RunError::Setup(format!("starting the broker: {e}")))
}

/// `start` with idmapping reports this when the filesystem cannot idmap.
enum Fallback {
    Idmap,
    Error(RunError),
}

impl Fallback {
    fn into_error(self) -> RunError {
        match self {
            Fallback::Error(e) => e,
            Fallback::Idmap => RunError::Setup("idmapped mount fallback failed".into()),
        }
    }
}

impl<E: Into<RunError>> From<E> for Fallback {
    fn from(e: E) -> Self {
        Fallback::Error(e.into())
    }
}

fn start(
    req: &RunRequest,
    wt: &Worktree,
    mut spec: InitSpec,
    map: IdMap,
    idmap: bool,
    cgroup: &crate::host::cgroups::SandboxCgroup,
) -> Result<Sandbox, Fallback> {
    // Clone first: the child's exec of `swarmcell __init` then overlaps with the
    // host-side mount preparation below (it waits for the spec anyway).
    // v1: init moves itself into its cgroups before its exec (cheaper, see
    // `self_attach_files`); otherwise we move it below, before it is sent
    // anything, so it still runs nothing of the payload's outside them.
    let attach = cgroup.self_attach_files();
    let mut sandbox = Sandbox::spawn(map.host_uid, attach.as_deref().unwrap_or(&[]))?;
    sandbox.owner = wt.uid;
    crate::phases::mark("init cloned");
    tracing::debug!(pid = sandbox.pid, "init cloned");
    map.write(sandbox.pid)?;
    crate::phases::mark("id maps written");
    // Before init runs anything of the payload's: every process of the sandbox
    // is born inside the cgroup, and init's cgroup namespace is rooted there.
    if attach.is_none() {
        cgroup.add_process(sandbox.pid)?;
    }
    drop(attach);
    crate::phases::mark("init placed in its cgroup");
    tracing::debug!("init placed in its cgroup");
    // Outbound: listeners inside the sandbox's network namespace, made by the
    // launcher before the payload exists (its first connection just queues).
    let ns = crate::net::broker::Netns::of_pid(sandbox.pid).map_err(|e| RunError::Setup(format!("opening the sandbox's network namespace: {e}")))?;
    sandbox.netns = Some(ns.clone());
    let forwards = req.forwards();
    let kinds: Vec<Outbound> = forwards.iter().map(|p| Outbound::Forward(*p)).chain([Outbound::Proxy]).collect();
    let ports: Vec<u16> = forwards.into_iter().chain([req.policy.network.proxy_port]).collect();
    let listeners = ns
        .loopback_up_and_listen(ports)
        .map_err(|e| RunError::Setup(format!("outbound listeners inside the sandbox (forwards, egress proxy): {e}")))?;
    sandbox.outbound = kinds.into_iter().zip(listeners).collect();
    crate::phases::mark("outbound listeners");

    let mut mounts = PreparedMounts::default();
    for p in &req.policy.filesystem.read_only {
        mounts.add_bind(p, Access::ReadOnly, false, "read-only path")?;
    }
    for p in &req.extra_ro {
        mounts.add_bind(p, Access::ReadOnly, true, "--ro path")?;
    }
    for p in &req.policy.filesystem.read_write {
        mounts.add_bind(p, Access::ReadWrite, true, "read-write path")?;
    }
    for p in &req.extra_rw {
        mounts.add_bind(p, Access::ReadWrite, true, "--rw path")?;
    }
    for p in &req.policy.filesystem.mount_only {
        mounts.add_bind(p, Access::ReadOnly, true, "mount-only path")?;
    }
    mounts.add_devices()?;
    let mut owned = vec![mounts.add_owned_fd(wt.dir.as_fd(), &wt.path, Access::ReadWrite, "worktree")?];
    if let Some(git) = &wt.git {
        // The private layer at the common dir's path; the real objects read-only.
        owned.push(mounts.add_owned_fd(git.layer.dir.fd.as_fd(), git.common(), Access::ReadWrite, "private git layer")?);
        owned.push(mounts.add_owned_fd(
            git.layer.objects.fd.as_fd(),
            Path::new(crate::git::layer::SANDBOX_OBJECTS),
            Access::ReadOnly,
            "git object store",
        )?);
    }
    mounts.sort();
    crate::phases::mark("host mounts prepared");
    spec.mounts = mounts.entries.clone();
    if idmap {
        let userns_path = format!("/proc/{}/ns/user", sandbox.pid);
        let userns = std::fs::File::open(&userns_path).map_err(|e| RunError::Setup(format!("open {userns_path}: {e}")))?;
        for index in owned {
            if let Err(e) = sys::mount_setattr_fd(mounts.fds[index].as_raw_fd(), false, sys::MOUNT_ATTR_IDMAP, Some(userns.as_raw_fd())) {
                if matches!(e.errno, Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) {
                    tracing::debug!(error = %e, "idmapped mount refused");
                    return Err(Fallback::Idmap);
                }
                return Err(RunError::Sys { what: "idmapping the worktree mount", source: e }.into());
            }
        }
    }
    sandbox.channel.send_spec(&spec, &mounts.raw_fds())?;
    crate::phases::mark("spec sent");
    tracing::debug!("spec sent");
    Ok(sandbox)
}

/// Validate `--ready-fd` up front and keep it out of every exec.
fn take_ready_fd(fd: Option<RawFd>) -> Result<Option<OwnedFd>, RunError> {
    let Some(fd) = fd else { return Ok(None) };
    if fd <= 2 || !sys::fd_is_open(fd) {
        return invalid(format!("--ready-fd {fd} is not an open file descriptor above 2"));
    }
    sys::set_cloexec(fd, true).map_err(|source| RunError::Sys { what: "--ready-fd", source })?;
    // SAFETY: the caller handed us this descriptor; from now on we own it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The launcher's signals, blocked and read from a signalfd so that they can be
/// forwarded into the sandbox instead of killing the launcher.
pub struct SignalGuard {
    fd: OwnedFd,
    old: libc::sigset_t,
}

const LAUNCHER_SIGNALS: [libc::c_int; 5] = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

impl SignalGuard {
    fn block() -> Result<SignalGuard, RunError> {
        let set = sys::sigset(&LAUNCHER_SIGNALS);
        // SAFETY: zeroed sigset_t is valid storage for the old mask.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set and old are valid sigset_t values.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
            return Err(RunError::Setup("pthread_sigmask failed".into()));
        }
        // SAFETY: set is valid; -1 creates a new signalfd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(RunError::Sys { what: "signalfd", source: SysError { call: "signalfd".into(), errno: Errno::last() } });
        }
        // SAFETY: fresh fd.
        Ok(SignalGuard { fd: unsafe { OwnedFd::from_raw_fd(fd) }, old })
    }

    /// Next pending signal, if any.
    fn next(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a correctly sized buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the mask saved in block().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A started sandbox init. Dropping it before it was reaped kills it: a launcher
/// error never leaves a sandbox behind.
struct Sandbox {
    pid: libc::pid_t,
    host_uid: u32,
    /// The host uid the payload works for (the worktree's owner).
    owner: u32,
    channel: ParentEnd,
    reaped: bool,
    /// Listeners inside the sandbox for outbound traffic, served once it runs.
    outbound: Vec<(Outbound, std::net::TcpListener)>,
    /// The sandbox's network namespace (for the broker and health checks).
    netns: Option<crate::net::broker::Netns>,
}

#[derive(Debug, Clone, Copy)]
enum Outbound {
    Forward(u16),
    Proxy,
}

impl Sandbox {
    /// `attach`: files init writes "0" to before its exec, to join its cgroups
    /// (v1 `tasks` files; failing that, it exits and never runs).
    fn spawn(host_uid: u32, attach: &[OwnedFd]) -> Result<Sandbox, RunError> {
        let attach: Vec<RawFd> = attach.iter().map(|f| f.as_raw_fd()).collect();
        let (parent_end, child_end) = sys::socketpair_seqpacket().map_err(|source| RunError::Sys { what: "creating the sandbox channel", source })?;
        let child_fd = child_end.as_raw_fd();
        let fd_arg = CString::new(child_fd.to_string()).map_err(|_| RunError::Setup("fd argument".into()))?;
        let argv = [c"swarmcell".as_ptr(), c"__init".as_ptr(), fd_arg.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        let pid = match sys::clone_fork(crate::confine::ns::CLONE_FLAGS) {
            Ok(0) => {
                // Child, in the new namespaces. Only async-signal-safe calls until
                // exec: the launcher may be multi-threaded. Our capabilities (over
                // the new user namespace only) are made ambient so that init keeps
                // them across the exec.
                // SAFETY: raw syscalls on prepared, NUL-terminated data.
                unsafe {
                    for fd in &attach {
                        if libc::write(*fd, c"0".as_ptr().cast(), 1) != 1 {
                            libc::_exit(super::EXIT_LAUNCHER_ERROR.into());
                        }
                    }
                    if libc::fcntl(child_fd, libc::F_SETFD, 0) != 0
                        || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                        || sys::raise_ambient_all().is_err()
                    {
                        libc::_exit(super::EXIT_LAUNCHER_ERROR.into());
                    }
                    libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
                    libc::_exit(super::EXIT_LAUNCHER_ERROR.into());
                }
            }
            Ok(pid) => pid,
            Err(e) => {
                return Err(RunError::Namespaces(crate::confine::ns::diagnose_clone_failure(e.errno)));
            }
        };
        drop(child_end);
        Ok(Sandbox { pid, host_uid, owner: host_uid, channel: ParentEnd::new(parent_end), reaped: false, outbound: Vec::new(), netns: None })
    }

    /// Poll the channel and the launcher's signals until init is gone.
    /// Poll the channel, the launcher's signals and the health check until init
    /// is gone. A stop signal is forwarded (init passes it to the payload) and,
    /// after `stop_timeout`, followed by SIGKILL.
    fn wait(
        &mut self,
        signals: &SignalGuard,
        mut ready: Option<OwnedFd>,
        info: &ReadyInfo,
        network: &mut Network,
        stop_timeout: std::time::Duration,
    ) -> Result<PayloadStatus, RunError> {
        let id = info.id;
        let mut status = None;
        let mut failure: Option<RunError> = None;
        let mut channel_open = true;
        let mut health_open = network.health.is_some();
        let mut running = false;
        let mut kill_at: Option<std::time::Instant> = None;
        let mut killed_after_stop_timeout = false;
        let mut init_status = 0;
        while channel_open || !self.reaped {
            let timeout = kill_at.map_or(-1, |t| t.saturating_duration_since(std::time::Instant::now()).as_millis().min(i32::MAX as u128) as i32);
            let mut pfds = [
                libc::pollfd { fd: signals.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: if channel_open { self.channel.raw_fd() } else { -1 }, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: network.health.as_ref().filter(|_| health_open).map_or(-1, |h| h.done_fd()), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: pfds is a valid array of three pollfds.
            if unsafe { libc::poll(pfds.as_mut_ptr(), 3, timeout) } < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                return Err(RunError::Sys { what: "waiting for the sandbox", source: SysError { call: "poll".into(), errno: Errno::last() } });
            }
            if kill_at.is_some_and(|t| std::time::Instant::now() >= t) && !self.reaped {
                tracing::warn!(sandbox = %id, "still running {} after SIGTERM; killing", crate::policy::units::HumanDuration(stop_timeout));
                let _ = sys::kill(self.pid, libc::SIGKILL);
                kill_at = None;
                killed_after_stop_timeout = true;
            }
            if pfds[1].revents != 0 {
                match self.channel.recv_from_init() {
                    Ok((FromInit::Running, notify)) => {
                        crate::phases::mark("payload running");
                        running = true;
                        network.on_running(notify);
                        if network.health.is_none() {
                            tracing::info!(sandbox = %id, "ready");
                            if let Some(fd) = ready.take() {
                                write_ready(fd, info, self.pid);
                            }
                        }
                    }
                    Ok((FromInit::Exited(s), _)) => status = Some(s),
                    Ok((FromInit::SetupFailed { message }, _)) => failure = Some(RunError::Setup(message)),
                    Ok((FromInit::ExecFailed { path, errno }, _)) => {
                        let errno = Errno::from_raw(errno);
                        failure = Some(RunError::Exec { verb: if errno == Errno::ENOENT { "find" } else { "execute" }, path, errno });
                    }
                    Err(ChannelError::Closed) => channel_open = false,
                    Err(e) => {
                        failure.get_or_insert(e.into());
                        channel_open = false;
                    }
                }
            }
            if pfds[2].revents != 0
                && let Some(h) = &network.health
            {
                health_open = false;
                match h.result() {
                    Some(Ok(took)) if running || status.is_none() => {
                        crate::phases::mark("healthy");
                        tracing::info!(sandbox = %id, port = info.port, healthy_after_ms = took.as_millis() as u64, "ready");
                        if let Some(fd) = ready.take() {
                            write_ready(fd, info, self.pid);
                        }
                    }
                    Some(Err(e)) if !matches!(e, crate::net::health::HealthError::Cancelled) && status.is_none() && failure.is_none() => {
                        failure = Some(RunError::Health { id: id.to_string(), source: e });
                        let _ = sys::kill(self.pid, libc::SIGKILL);
                    }
                    _ => {}
                }
            }
            while let Some(sig) = signals.next() {
                if sig == libc::SIGCHLD {
                    // SAFETY: init_status is a valid int.
                    if !self.reaped && unsafe { libc::waitpid(self.pid, &mut init_status, libc::WNOHANG) } == self.pid {
                        self.reaped = true;
                        if let Some(h) = &network.health {
                            h.cancel();
                        }
                    }
                } else if !self.reaped {
                    tracing::debug!(sandbox = %id, signal = sig, "forwarding signal");
                    let _ = sys::kill(self.pid, sig);
                    if [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT].contains(&sig) && kill_at.is_none() {
                        kill_at = Some(std::time::Instant::now() + stop_timeout);
                        if let Some(h) = &network.health {
                            h.cancel();
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if ready.is_some()
            && let Some(s) = status
            && super::events::has_sink()
        {
            let how = match s {
                PayloadStatus::Exited(c) => format!("exit status {c}"),
                PayloadStatus::Signaled(n) => format!("signal {n}"),
            };
            super::events::emit(super::events::Event::StartFailed { error: format!("sandbox {id}: the payload ended ({how}) before it was ready") });
        }
        if killed_after_stop_timeout && status.is_none() {
            return Ok(PayloadStatus::Signaled(libc::SIGKILL));
        }
        status.ok_or_else(|| {
            let how = if libc::WIFSIGNALED(init_status) {
                format!("killed by signal {}", libc::WTERMSIG(init_status))
            } else {
                format!("exit status {}", libc::WEXITSTATUS(init_status))
            };
            RunError::Setup(format!("sandbox {id}: init ended without reporting the payload's status ({how})"))
        })
    }
}

/// The health check, on a thread of its own; the wait loop polls `done_fd`.
struct HealthWatch {
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    result: std::sync::Arc<std::sync::Mutex<Option<Result<std::time::Duration, crate::net::health::HealthError>>>>,
    done_r: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(check: crate::net::health::Check, deadline: std::time::Duration) -> Result<HealthWatch, RunError> {
        let (done_r, done_w) = sys::pipe_cloexec().map_err(|source| RunError::Sys { what: "health pipe", source })?;
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let result = std::sync::Arc::new(std::sync::Mutex::new(None));
        let thread = {
            let (cancel, result) = (cancel.clone(), result.clone());
            std::thread::Builder::new()
                .name("health".into())
                .spawn(move || {
                    let r = crate::net::health::wait(&check, deadline, &cancel);
                    if let Ok(mut slot) = result.lock() {
                        *slot = Some(r);
                    }
                    drop(done_w); // EOF wakes the wait loop
                })
                .map_err(|e| RunError::Setup(format!("starting the health check: {e}")))?
        };
        Ok(HealthWatch { cancel, result, done_r, thread: Some(thread) })
    }

    fn done_fd(&self) -> i32 {
        self.done_r.as_raw_fd()
    }

    fn result(&self) -> Option<Result<std::time::Duration, crate::net::health::HealthError>> {
        self.result.lock().ok().and_then(|mut r| r.take())
    }

    fn cancel(&self) {
        self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn finish(mut self) {
        self.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The publisher while the sandbox runs: the layer's branch tip is checked
/// every 500 ms (a small bounded read), so a commit reaches the host branch
/// within about a second.
struct PublishWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<crate::git::publish::Publisher>>,
    /// Without a thread (it could not start), publishing happens at stop only.
    fallback: Option<crate::git::publish::Publisher>,
}

impl PublishWatch {
    const PERIOD: std::time::Duration = std::time::Duration::from_millis(500);

    fn start(mut p: crate::git::publish::Publisher, again: impl FnOnce() -> crate::git::publish::Publisher) -> PublishWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("git-publish".into())
            .spawn(move || {
                let mut last_error = String::new();
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    match p.tick() {
                        // Logged once per distinct error, not every period.
                        Err(e) if e.to_string() != last_error => {
                            last_error = e.to_string();
                            tracing::warn!(event = "git_publish", error = %e, "publishing the agent's branch failed");
                        }
                        Err(_) => {}
                        Ok(_) => last_error.clear(),
                    }
                    std::thread::park_timeout(Self::PERIOD);
                }
                p
            })
            .ok();
        let fallback = thread.is_none().then(again);
        PublishWatch { stop, thread, fallback }
    }

    fn finish(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let p = match self.thread.take() {
            Some(t) => {
                t.thread().unpark();
                t.join().ok()
            }
            None => self.fallback.take(),
        };
        if let Some(mut p) = p {
            p.finish();
        }
    }
}

impl Drop for PublishWatch {
    /// An early return of the launcher stops the thread (no last publish).
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the ready line reports besides the pid.
struct ReadyInfo<'a> {
    id: &'a str,
    port: Option<u16>,
    cgroups: Vec<PathBuf>,
    /// Only for the requester, who holds the ready fd; never logged.
    secret: Option<&'a str>,
}

fn write_ready(fd: OwnedFd, info: &ReadyInfo, pid: libc::pid_t) {
    use std::io::Write;
    let mut line = serde_json::json!({ "id": info.id, "pid": pid, "port": info.port, "cgroups": info.cgroups });
    if let Some(secret) = info.secret {
        line["secret"] = secret.into();
    }
    let line = line.to_string() + "\n";
    let mut f = std::fs::File::from(fd);
    if let Err(e) = f.write_all(line.as_bytes()) {
        tracing::warn!(error = %e, "could not write the ready line to --ready-fd");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }
}
