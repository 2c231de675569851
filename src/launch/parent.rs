//! Parent side: the launcher (host root). Everything that needs host privilege or
//! host paths happens here, before or right after the `clone`:
//!
//! 1. validate what the clone needs (payload, worktree and its owner, ids);
//!    lease a per-sandbox host uid;
//! 2. `clone` the init into new namespaces: a copy of this (single-threaded)
//!    process that runs [`super::init`], made at the launcher's start
//!    ([`EarlyInit`]: it makes its network namespace while the command line,
//!    the policy and the worktree are read) or here; write its
//!    `setgroups`/uid/gid maps, open its user namespace, send `Ids` (it starts
//!    its root meanwhile);
//! 3. validate and decide the rest (the spec: ports, environment, Landlock,
//!    seccomp, disk limits); prepare every bind as a detached, flagged mount
//!    tree ([`crate::fs::host_binds`]); idmap the worktree mount through the
//!    child's user namespace (falling back to mapping the sandbox to the
//!    worktree owner where the filesystem cannot idmap); send `Go` with the
//!    spec and the trees;
//! 4. while it builds the root: make the sandbox's cgroup; bring `lo` up and
//!    make the outbound listeners in its network namespace (which init sent);
//!    send `Listening`
//!    (with the v1 cgroups' `tasks` files, which init joins before it forks
//!    the payload);
//! 5. sweep stale sandboxes meanwhile; forward signals; report the status.
//!
//! The types: [`super::request`] (the request and its validation),
//! [`super::network`] (the network services), [`super::sandbox`] (a sandbox's
//! lifetime).

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use super::network::Network;
use super::network::Outbound;
pub use super::request::{
    BrokerMode, HealthMode, MAX_ARGS_BYTES, PortChoice, RunError, RunRequest, SANDBOX_HOME, SANDBOX_PATH, Worktree, environment, new_secret,
    resolve_worktree,
};
use super::request::{inside_ids, invalid, landlock_spec, read_secret, take_ready_fd};
use super::sandbox::{EarlyInit, PublishWatch, ReadyInfo, Sandbox, SignalGuard};
use super::spec::{InitSpec, PayloadStatus};
use crate::confine::ns::user::IdMap;
use crate::fs::host_binds::{Access, PreparedMounts};
use crate::host::uidalloc;
use crate::sys::{self, Errno};

/// How long after the start the disk monitor's thread starts (its first
/// measurement comes one period later).
const DISK_WATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Run one sandbox in the foreground and return the payload's exit code.
/// `early`: an init cloned at the launcher's start (see [`EarlyInit`]), used
/// for the first attempt.
pub fn run(req: &RunRequest, early: Option<EarlyInit>) -> Result<u8, RunError> {
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
    // (`cli::run` refused a descriptor flag naming one of the early init's
    // descriptors.)
    let ready = take_ready_fd(req.ready_fd)?;
    // Read before this launch opens any descriptor of its own, which a closed
    // number given to --secret-fd could otherwise name.
    let secret = match (&req.policy.process.server_password_env, req.secret_fd) {
        (Some(_), Some(fd)) => Some(read_secret(fd)?),
        (Some(_), None) => Some(new_secret()?),
        (None, _) => None,
    };
    let broker_stats = match req.stats_fd {
        Some(fd) => crate::net::broker_stats::SharedCounters::adopt(fd),
        None => crate::net::broker_stats::SharedCounters::private(),
    }
    .map_err(|e| RunError::Invalid(e.to_string()))?;
    let wt = resolve_worktree(&req.worktree, &req.repos)?;
    let (uid, gid) = inside_ids(req, &wt)?;
    crate::phases::mark("worktree resolved");
    let leases_dir = req.state_dir.join("sandboxes");
    crate::host::lease::ensure_private_dir(&req.state_dir)?;
    crate::host::lease::ensure_private_dir(&leases_dir)?;
    let lease = uidalloc::allocate(&req.state_dir, req.uid_range, super::random_u32())?;
    // A per-sandbox host uid behind an idmapped worktree, or (without idmapping)
    // the worktree owner's own ids.
    let leased = IdMap { inside_uid: uid, host_uid: lease.uid, inside_gid: gid, host_gid: lease.uid };
    let direct = IdMap { inside_uid: uid, host_uid: uid, inside_gid: gid, host_gid: gid };
    // Blocked before the clone: an init that dies at once is still reaped.
    let (signals, early) = match early {
        Some(EarlyInit { signals, sandbox }) => (signals, Some(sandbox)),
        None => (SignalGuard::block_child_exit()?, None),
    };
    // The init gets its ids now: it builds its root while we make its spec.
    let init = spawn_init(early, if req.idmap { leased } else { direct }, wt.uid)?;
    crate::phases::mark("init started");
    let id = super::new_sandbox_id();
    super::events::set_sandbox(&id);
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
    let seccomp = crate::confine::seccomp::compile::programs(&req.policy.seccomp.deny).map_err(|e| RunError::Invalid(e.to_string()))?;
    crate::phases::mark("seccomp compiled");
    // Before anything else is made: a limit that cannot be had is refused here.
    let mut disk =
        crate::host::disk::prepare(&wt.path, &req.policy.disk_limits(), &req.state_dir, &id).map_err(|e| RunError::Invalid(e.to_string()))?;
    // What the sandbox writes into its private git layer counts too.
    if let Some(git) = &wt.git {
        disk.add_tree(&git.layer.path).map_err(|e| RunError::Invalid(e.to_string()))?;
    }
    crate::phases::mark("disk prepared");
    // The cgroup layout is read, and the cgroup made, by `start` once the init
    // has its spec (while it builds the root).
    let layout: std::cell::OnceCell<crate::host::cgroups::Layout> = std::cell::OnceCell::new();
    // (The sweep of stale sandboxes comes once the init is on its way.)
    // Held for the sandbox's life: `gc` leaves the cgroup of a held id alone.
    let sandbox_lease = crate::host::lease::acquire_fresh(&leases_dir.join(format!("{id}.lock")))?
        .ok_or_else(|| RunError::Setup(format!("sandbox id {id} is already in use")))?;
    crate::phases::mark("sandbox lease");
    // From here on the launch waits on nobody: stop signals go to the sandbox.
    signals.block_all()?;
    let mut cgroup = None;
    let make_cgroup = || {
        let layout = match layout.get() {
            Some(l) => l,
            None => {
                let detected = crate::host::cgroups::Layout::detect()?;
                crate::phases::mark("cgroup layout");
                layout.get_or_init(|| detected)
            }
        };
        crate::host::cgroups::create(layout, &req.cgroup_parent, &id, &req.policy.cgroup_limits())
    };
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
        landlock: landlock_spec(req, &wt),
        seccomp: super::spec::encode_bpf(&seccomp),
        log: tracing::enabled!(tracing::Level::DEBUG).then(|| req.log.clone()),
    };
    let first = start(req, &wt, spec.clone(), init, req.idmap, (&mut cgroup, &make_cgroup));
    let mut sandbox = match first {
        Err(Fallback::Idmap) => {
            tracing::warn!(worktree = %wt.path.display(), "this filesystem cannot idmap mounts; the sandbox runs as the worktree owner's uid");
            let init = spawn_init(None, direct, wt.uid)?;
            start(req, &wt, spec, init, false, (&mut cgroup, &make_cgroup)).map_err(Fallback::into_error)?
        }
        other => other.map_err(Fallback::into_error)?,
    };
    let Some(mut cgroup) = cgroup else {
        return Err(RunError::Setup(format!("sandbox {id}: started without its cgroup")));
    };
    tracing::info!(sandbox = %id, pid = sandbox.pid, host_uid = sandbox.host_uid, cgroup_version = cgroup.version(), "sandbox started");
    crate::phases::mark("sandbox started");
    // While the init builds the root: sweep the cgroups and leases of
    // sandboxes whose launcher is gone (ours are held, so left alone).
    if req.gc
        && let Some(layout) = layout.get()
    {
        match crate::host::cgroups::gc(layout, &req.cgroup_parent, &req.state_dir) {
            Ok(ids) if !ids.is_empty() => tracing::info!(removed = ?ids, "removed stale sandbox cgroups"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove stale sandbox cgroups"),
        }
    }
    crate::phases::mark("gc sweep");
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
    let outbound = std::mem::take(&mut sandbox.outbound);
    let mut network = Network::start(
        req,
        &id,
        host_port.as_ref(),
        (outbound, sandbox.netns.clone(), sandbox.owner),
        std::sync::Arc::new(broker_stats),
        ingress,
        health_request,
    )?;
    crate::phases::mark("network started");
    let ready_info = ReadyInfo { id: &id, port: host_port.as_ref().map(|p| p.port), cgroups: cgroup.paths(), secret: secret.as_deref() };
    // The disk monitor measures first after its period anyway: its thread is
    // started a little later, and never for a payload that is gone by then.
    let sandbox_pid = sandbox.pid;
    let disk_ref = &mut disk;
    let watch_disk: Box<dyn FnOnce() -> Result<(), RunError> + '_> = Box::new(move || {
        crate::phases::mark("disk watch starting");
        disk_ref.watch(sandbox_pid).map_err(|e| RunError::Setup(e.to_string()))
    });
    let deferred = Some((std::time::Instant::now() + DISK_WATCH_DELAY, watch_disk));
    let status = sandbox.wait(&signals, ready, &ready_info, &mut network, req.stop_timeout, deferred);
    crate::phases::mark("sandbox ended");
    network.finish();
    drop(sandbox);
    crate::phases::mark("network finished");
    // The sandbox is gone: the last publish (the worktree's lease is still held).
    if let Some(p) = publisher {
        p.finish();
    }
    // Read only when it can matter (the kernel's OOM killer sends SIGKILL).
    let oom_kills = if matches!(status, Ok(PayloadStatus::Signaled(libc::SIGKILL)) | Err(_)) { cgroup.oom_kills() } else { 0 };
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

/// The host's bind mounts, each a detached and flagged tree (made before the
/// clone: the init inherits the fds); returns them with the indexes of the
/// trees that get idmapped (the worktree and the git layer).
fn prepare_mounts(req: &RunRequest, wt: &Worktree) -> Result<(PreparedMounts, Vec<usize>), RunError> {
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
    Ok((mounts, owned))
}

/// An init cloned and given its ids (see [`super::channel`]), with its user
/// namespace open (for idmapping the worktree mount).
struct StartedInit {
    sandbox: Sandbox,
    userns: std::fs::File,
}

/// Clone the init (unless `early` is one), write its maps, open its user
/// namespace (before it becomes non-dumpable, which it does on `Ids`) and send
/// `Ids`. (Its network namespace comes from init, see
/// [`Sandbox::receive_network`].)
fn spawn_init(early_init: Option<Sandbox>, map: IdMap, owner: u32) -> Result<StartedInit, RunError> {
    let mut sandbox = match early_init {
        Some(s) => s,
        None => {
            let s = Sandbox::spawn(map.host_uid)?;
            crate::phases::mark("init cloned");
            s
        }
    };
    sandbox.host_uid = map.host_uid;
    sandbox.owner = owner;
    tracing::debug!(pid = sandbox.pid, "init cloned");
    // An init that could not make its network namespace is gone: its report
    // says why, not a failure on its pid.
    let userns_path = format!("/proc/{}/ns/user", sandbox.pid);
    let userns = std::fs::File::open(&userns_path)
        .map_err(|e| RunError::Setup(format!("open {userns_path}: {e}")))
        .and_then(|userns| map.write(sandbox.pid).map(|()| userns).map_err(RunError::from))
        .map_err(|e| sandbox.report_of_a_gone_init().unwrap_or(e))?;
    crate::phases::mark("id maps written");
    // A send that fails means init is gone (it reported why, or died): the
    // wait loop reads its report either way.
    if let Err(e) = sandbox.channel.send_ids(map.inside_uid, map.inside_gid, sandbox.own_cpu) {
        tracing::debug!(error = %e, "init gone before its ids");
    }
    // Taken now if it came (an early init's usually has; a failure to make it
    // comes at once), so that nothing else fails first on a gone init.
    if sandbox.channel.readable() {
        sandbox.receive_network(&userns)?;
    }
    Ok(StartedInit { sandbox, userns })
}

fn start(
    req: &RunRequest,
    wt: &Worktree,
    mut spec: InitSpec,
    init: StartedInit,
    idmap: bool,
    (cgroup, make_cgroup): (
        &mut Option<crate::host::cgroups::SandboxCgroup>,
        &dyn Fn() -> Result<crate::host::cgroups::SandboxCgroup, crate::host::cgroups::CgroupError>,
    ),
) -> Result<Sandbox, Fallback> {
    let StartedInit { mut sandbox, userns } = init;
    // First: an init that could not make its network namespace says why
    // (an early init sent it long ago).
    if sandbox.netns.is_none() {
        sandbox.receive_network(&userns)?;
    }
    let (mounts, owned) = prepare_mounts(req, wt)?;
    crate::phases::mark("host mounts prepared");
    if idmap {
        for index in owned {
            if let Err(e) = sys::mount::mount_setattr_fd(mounts.fds[index].as_raw_fd(), false, sys::mount::MOUNT_ATTR_IDMAP, Some(userns.as_raw_fd()))
            {
                if matches!(e.errno, Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) {
                    tracing::debug!(error = %e, "idmapped mount refused");
                    return Err(Fallback::Idmap);
                }
                return Err(RunError::Sys { what: "idmapping the worktree mount", source: e }.into());
            }
        }
    }
    drop(userns);
    spec.mounts = mounts.entries.clone();
    // A send refused by a gone init is read from its report (or death) by the
    // wait loop; any other failure is ours.
    match sandbox.channel.send_go(spec, &mounts.raw_fds()) {
        Ok(()) => {}
        Err(e) if e.peer_gone() => tracing::debug!(error = %e, "init gone before go"),
        Err(e) => return Err(RunError::Setup(format!("sending the sandbox init its spec: {e}")).into()),
    }
    // Init holds its own copies of the mount fds now; ours go.
    drop(mounts);
    crate::phases::mark("go sent");
    // The cgroup, while init builds the root (it joins it before it forks
    // the payload, see below).
    if cgroup.is_none() {
        *cgroup = Some(make_cgroup()?);
    }
    let Some(cgroup) = cgroup.as_ref() else {
        return Err(RunError::Setup("the sandbox's cgroup is missing".into()).into());
    };
    crate::phases::mark("cgroup created");
    // Before init forks the payload: every process of the sandbox is born
    // inside the cgroup, and init's cgroup namespace is rooted there. v1: init
    // moves itself in, with the `tasks` files sent along with `Listening`
    // (cheaper, see `self_attach_files`); otherwise we move it here.
    let attach = cgroup.self_attach_files();
    if attach.is_none() {
        cgroup.add_process(sandbox.pid)?;
    }
    crate::phases::mark("init's cgroup ready");
    // Outbound: listeners inside the sandbox's network namespace, made by the
    // launcher before the payload exists (its first connection just queues;
    // they are served from the first one on, see `Network`).
    // (While init builds the root; it starts the payload after `Listening`.)
    let Some(ns) = sandbox.netns.clone() else {
        return Err(RunError::Setup("the sandbox's network namespace is not open".into()).into());
    };
    let forwards = req.forwards();
    let kinds: Vec<Outbound> = forwards.iter().map(|p| Outbound::Forward(*p)).chain([Outbound::Proxy]).collect();
    let ports: Vec<u16> = forwards.into_iter().chain([req.policy.network.proxy_port]).collect();
    let listeners = ns
        .loopback_up_and_listen(&ports)
        .map_err(|e| RunError::Setup(format!("loopback and outbound listeners inside the sandbox (forwards, egress proxy): {e}")))?;
    sandbox.outbound = kinds.into_iter().zip(listeners).collect();
    crate::phases::mark("outbound listeners");
    let attach_fds: Vec<std::os::fd::RawFd> = attach.iter().flatten().map(|f| f.as_raw_fd()).collect();
    let sent = sandbox.channel.send_listening(&attach_fds);
    drop(attach);
    if let Err(e) = sent {
        tracing::debug!(error = %e, "init gone before its payload started");
    }
    Ok(sandbox)
}
