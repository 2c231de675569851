//! `swarmcell worker ARGS`: runs the Temporal activity worker, the separate
//! `swarmcell-worker` binary installed next to this one (so that the launcher
//! never links the gRPC/TLS/Temporal stack). Host side, before anything else:
//! the worker never runs as root (the Temporal-facing network code must not),
//! so uid 0 is refused here and again by the worker itself.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// Exec the worker; returns only the reason it could not.
pub fn exec(args: &[OsString]) -> String {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return "the worker does not run as root: run it as a uid in the daemon's allowed_uids (see systemd/swarmcell-worker.service)".into();
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return format!("worker: this executable's path: {e}"),
    };
    let worker = exe.with_file_name("swarmcell-worker");
    let err = std::process::Command::new(&worker).args(args).exec();
    format!("worker: {}: {err} (install swarmcell-worker next to swarmcell)", worker.display())
}
