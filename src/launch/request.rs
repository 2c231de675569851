//! Parent side (host root): a launch request and its validation, before anything
//! is created: the worktree and its owner, the sandbox's ids, its environment,
//! its secret, and the `--ready-fd`. Nothing here changes the host.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::channel::ChannelError;
use super::spec::LogConfig;
use crate::confine::ns::user::MapError;
use crate::fs::host_binds::BindError;
use crate::host::uidalloc::{UidAllocError, UidRange};
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

    pub(super) fn egress_rules(&self) -> crate::net::egress::Rules {
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

pub(super) fn invalid<T>(msg: impl Into<String>) -> Result<T, RunError> {
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
pub(super) fn inside_ids(req: &RunRequest, wt: &Worktree) -> Result<(u32, u32), RunError> {
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
pub(super) fn read_secret(fd: RawFd) -> Result<String, RunError> {
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
pub(super) fn landlock_spec(req: &RunRequest, wt: &Worktree) -> crate::confine::landlock::LandlockSpec {
    let mut spec = req.policy.landlock_rules(&wt.path, &req.extra_ro, &req.extra_rw);
    if let Some(git) = &wt.git {
        spec.read_exec.push(crate::git::layer::SANDBOX_OBJECTS.into());
        spec.read_write.push(git.common().to_path_buf());
    }
    spec
}

/// Validate `--ready-fd` up front and keep it out of every exec.
pub(super) fn take_ready_fd(fd: Option<RawFd>) -> Result<Option<OwnedFd>, RunError> {
    let Some(fd) = fd else { return Ok(None) };
    if fd <= 2 || !sys::fd_is_open(fd) {
        return invalid(format!("--ready-fd {fd} is not an open file descriptor above 2"));
    }
    sys::set_cloexec(fd, true).map_err(|source| RunError::Sys { what: "--ready-fd", source })?;
    // SAFETY: the caller handed us this descriptor; from now on we own it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
