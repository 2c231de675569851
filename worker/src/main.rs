//! `swarmcell-worker` (run as `swarmcell worker ...`): a Temporal activity
//! worker for one host, running unprivileged as a client of the local
//! `swarmcell daemon`. It serves the host's own queue `swarmcell-HOST` (every
//! activity) and, optionally, a shared queue (`LaunchAgent` only), so a
//! workflow places an agent on any host with capacity, then pins its later
//! activities to the host that runs it.

mod activities;
mod audit;
mod daemon;
mod input;
mod lease;
mod opencode;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use temporalio_client::{Client, ClientOptions, ClientTlsOptions, Connection, ConnectionOptions, TlsOptions};
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

#[derive(Parser, Debug)]
#[command(
    name = "swarmcell worker",
    bin_name = "swarmcell worker",
    about = "Temporal activity worker for this host's swarmcell daemon (unprivileged)"
)]
struct Args {
    /// Temporal frontend, HOST:PORT.
    #[arg(long)]
    address: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A shared queue for LaunchAgent (placement on any host). This host's own
    /// queue, `swarmcell-HOST`, is always served.
    #[arg(long)]
    task_queue: Option<String>,
    /// This host's name in queue names and results (default: the hostname).
    #[arg(long)]
    host_name: Option<String>,
    /// CA certificate (PEM) for the server; with --tls-cert and --tls-key: mTLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The server name in its certificate (default: the host of --address).
    #[arg(long)]
    tls_server_name: Option<String>,
    /// Seconds to wait for the first connection to Temporal before giving up
    /// (exit 125; a service manager starts the worker again).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    connect_timeout: u64,
    /// The daemon's control socket.
    #[arg(long, default_value = "/run/swarmcell/control.sock")]
    socket: PathBuf,
    /// Temporal identity (default: swarmcell-worker@HOST).
    #[arg(long)]
    identity: Option<String>,
    /// Seconds a sandbox survives without this worker renewing its lease.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease: u64,
    /// Seconds without Temporal after which this worker stops its sandboxes.
    #[arg(long, default_value_t = 60)]
    temporal_grace: u64,
    /// Seconds between heartbeats of a running activity.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    heartbeat: u64,
    /// Most LaunchAgent activities taken at once from the shared queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1001))]
    max_launches: u64,
    /// Most activities at once on the host queue.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10000))]
    max_activities: u64,
    /// MiB of available memory below which launches are declined (retryably).
    #[arg(long, default_value_t = 512)]
    min_free_mib: u64,
    /// A repository LaunchAgent may name by NAME instead of its path here
    /// (repeatable; each host maps the name to its own clone).
    #[arg(long = "repo", value_name = "NAME=PATH")]
    repos: Vec<String>,
    /// JSON-lines audit log (0640); events also go to stderr.
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

fn fail(msg: String) -> ! {
    eprintln!("swarmcell: {}", swarmcell::sanitize::line(&msg));
    std::process::exit(125);
}

/// A certificate or key file: regular, not a symlink, mode 0600 or 0640 (or
/// stricter), owned by us or root. Its content is never logged.
fn read_secret_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let m = f.metadata().map_err(|e| format!("{what} {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.file_type().is_file() {
        return Err(format!("{what} {}: not a regular file", path.display()));
    }
    if m.mode() & 0o137 != 0 {
        return Err(format!(
            "{what} {}: mode {:o}; it must be 0600 or 0640 (no execute, no group write, nothing for others)",
            path.display(),
            m.mode() & 0o777
        ));
    }
    if m.uid() != me && m.uid() != 0 {
        return Err(format!("{what} {}: owned by uid {}, not by this worker's uid or root", path.display(), m.uid()));
    }
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    Ok(buf)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Queue names and identities end up in Temporal and in logs: a short, plain alphabet.
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b))
}

async fn connect(a: &Args, identity: &str) -> Result<Client, String> {
    let scheme = if a.tls_ca.is_some() || a.tls_cert.is_some() { "https" } else { "http" };
    let url: temporalio_client::Url = format!("{scheme}://{}", a.address).parse().map_err(|e| format!("--address {:?}: {e}", a.address))?;
    let tls = if scheme == "https" {
        let mut t = TlsOptions::default();
        if let Some(ca) = &a.tls_ca {
            t.server_root_ca_cert = Some(read_secret_file(ca, "--tls-ca")?);
        }
        t.domain = a.tls_server_name.clone();
        if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
            t.client_tls_options = Some(
                ClientTlsOptions::builder()
                    .client_cert(read_secret_file(cert, "--tls-cert")?)
                    .client_private_key(read_secret_file(key, "--tls-key")?)
                    .build(),
            );
        }
        Some(t)
    } else {
        None
    };
    let opts = ConnectionOptions::new(url).identity(identity.to_string()).maybe_tls_options(tls).build();
    // The connection error never carries the key material (only the endpoint).
    let conn = tokio::time::timeout(Duration::from_secs(a.connect_timeout), Connection::connect(opts))
        .await
        .map_err(|_| format!("Temporal at {}: no connection within {} s", a.address, a.connect_timeout))?
        .map_err(|e| format!("Temporal at {}: {e}", a.address))?;
    Client::new(conn, ClientOptions::new(a.namespace.clone()).build()).map_err(|e| format!("Temporal client: {e}"))
}

fn tuner(activities: usize) -> TunerHolder {
    TunerHolder::builder()
        .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(1))
        .activity_task_slot_supplier(FixedSizeSlotSupplier::new(activities))
        .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(1))
        .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
        .build()
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        fail("the worker does not run as root: run it as a uid in the daemon's allowed_uids (see systemd/swarmcell-worker.service)".into());
    }
    // The process-wide TLS provider (before any connection; a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = a.host_name.clone().unwrap_or_else(hostname);
    let identity = a.identity.clone().unwrap_or_else(|| format!("swarmcell-worker@{host}"));
    for (what, v) in [("--host-name", &host), ("--identity", &identity), ("--namespace", &a.namespace)] {
        if !valid_name(v) {
            fail(format!("{what} {v:?}: letters, digits and ._-@: only, at most 200"));
        }
    }
    if let Some(q) = &a.task_queue
        && !valid_name(q)
    {
        fail(format!("--task-queue {q:?}: letters, digits and ._-@: only, at most 200"));
    }
    let mut repos = std::collections::HashMap::new();
    for r in &a.repos {
        match r.split_once('=') {
            Some((name, path)) if input::valid_repo_name(name) && path.starts_with('/') => {
                repos.insert(name.to_string(), PathBuf::from(path));
            }
            _ => fail(format!("--repo {r:?}: expected NAME=/absolute/path, NAME ^[a-z0-9][a-z0-9._-]{{0,62}}$")),
        }
    }
    let audit = audit::Audit::open(a.audit_log.as_deref()).unwrap_or_else(|e| fail(e));
    let client = connect(&a, &identity).await.unwrap_or_else(|e| fail(e));
    let state = Arc::new(activities::State::new(
        daemon::Daemon { socket: a.socket.clone() },
        audit,
        host.clone(),
        identity.clone(),
        a.lease,
        Duration::from_secs(a.heartbeat),
        a.min_free_mib << 20,
        repos,
    ));
    let runtime = Runtime::from_current_tokio(Default::default()).unwrap_or_else(|e| fail(format!("Temporal runtime: {e}")));
    let host_opts = WorkerOptions::new(state.host_queue.clone())
        .register_activities(activities::HostActivities(state.clone()))
        .tuner(tuner(a.max_activities as usize))
        .client_identity_override(identity.clone())
        .graceful_shutdown_period(Duration::from_secs(5))
        .build();
    let mut host_worker = Worker::new(&runtime, client.clone(), host_opts).unwrap_or_else(|e| fail(format!("worker: {e}")));
    let mut shared_worker = a.task_queue.as_ref().map(|q| {
        let o = WorkerOptions::new(q.clone())
            .register_activities(activities::SharedActivities(state.clone()))
            .tuner(tuner(a.max_launches as usize))
            .client_identity_override(identity.clone())
            .graceful_shutdown_period(Duration::from_secs(5))
            .build();
        Worker::new(&runtime, client.clone(), o).unwrap_or_else(|e| fail(format!("worker: {e}")))
    });
    let reach = lease::Reachability::new();
    let grace = Duration::from_secs(a.temporal_grace);
    tokio::spawn(lease::watch_temporal(client.clone(), reach.clone(), state.clone(), grace));
    tokio::spawn(lease::renew_loop(state.clone(), reach, grace));
    state.audit.event(
        "worker_start",
        serde_json::json!({ "host": host, "identity": identity, "queues": [Some(state.host_queue.clone()), a.task_queue.clone()],
                            "address": a.address, "namespace": a.namespace, "mtls": a.tls_cert.is_some(), "lease_s": a.lease,
                            "activities": [activities::HostActivities::launch_agent.name(), activities::HostActivities::run_agent_command.name(),
                                           activities::HostActivities::stop_agent.name(), activities::HostActivities::agent_status.name()],
                            "shared_activities": [activities::SharedActivities::launch_agent.name()], "outcome": "ok" }),
    );
    // Ready: the queues are polled from here on (tests wait for this line).
    eprintln!(
        "swarmcell-worker: serving {} for host {host}",
        [Some(state.host_queue.clone()), a.task_queue.clone()].into_iter().flatten().collect::<Vec<_>>().join(" and ")
    );
    let shutdown = [Some(host_worker.shutdown_handle()), shared_worker.as_ref().map(|w| w.shutdown_handle())];
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap_or_else(|e| fail(format!("signals: {e}")));
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        for s in shutdown.iter().flatten() {
            s();
        }
    };
    let run_shared = async {
        match shared_worker.as_mut() {
            Some(w) => w.run().await,
            None => Ok(()),
        }
    };
    let (_, r1, r2) = tokio::join!(signals, host_worker.run(), run_shared);
    // A stopping worker cannot serve its agents' later activities: stop them (INV-005).
    let ids = state.known_ids();
    for id in &ids {
        let _ = state.daemon.stop(id).await;
    }
    state.audit.event("worker_stop", serde_json::json!({ "host": host, "stopped": ids, "outcome": "ok" }));
    if let Err(e) = r1.and(r2) {
        fail(format!("worker: {e}"));
    }
}
