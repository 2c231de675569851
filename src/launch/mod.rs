//! Launching one sandbox.
//!
//! - [`parent`]: the launcher side (host root). Validates ([`request`]),
//!   prepares mounts and ids, `clone`s the init into new namespaces, writes its
//!   maps, tells it to go on; [`sandbox`] waits, forwards signals and reports
//!   the payload's status; [`network`] holds the launcher's services for it.
//! - [`init`]: the child side, a clone of the (single-threaded) launcher, no
//!   exec: pid 1 of the new PID namespace: builds the root, drops privileges,
//!   forks the payload and stays as a tiny reaping init.
//! - [`payload`]: the last steps in the payload process, between fork and exec.
//! - [`channel`], [`spec`]: the typed messages between the two sides, and what
//!   init is told (prepared before the clone).

pub mod channel;
pub mod events;
pub mod init;
pub mod network;
pub mod parent;
pub mod payload;
pub mod request;
pub mod sandbox;
pub mod spec;

/// Exit code for an error of swarmcell itself (bad input, kernel refusal).
pub const EXIT_LAUNCHER_ERROR: u8 = 125;
/// The payload exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The payload was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Spawn `cmd` (a `swarmcell run ... --ready-fd 3 ...`) with a pipe as its fd
/// 3 and wait for its ready line: the launcher writes it once and closes the
/// fd, so the read ends with that line, or empty when the launcher ended
/// without one. A launcher whose line cannot be read is killed, never left.
pub fn spawn_until_ready(cmd: &mut std::process::Command) -> std::io::Result<(std::process::Child, String)> {
    use std::io::Read;
    let (mut r, w) = std::io::pipe()?;
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
    // SAFETY: install_fd_for_exec is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || crate::sys::child::install_fd_for_exec(wfd, 3));
    }
    let mut child = cmd.spawn()?;
    drop(w);
    let mut line = String::new();
    if let Err(e) = r.read_to_string(&mut line) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((child, line))
}

/// Random bits from the kernel (getrandom); used for ids and search offsets.
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: b is a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        // getrandom cannot fail for 4 bytes once the pool is initialised; fall back
        // to the pid and time rather than abort.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}

/// A new sandbox id: `sc-` and 12 hex digits. Also the sandbox's hostname.
pub fn new_sandbox_id() -> String {
    format!("sc-{:08x}{:04x}", random_u32(), random_u32() & 0xffff)
}

/// Sandbox ids as accepted from users: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn valid_sandbox_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_unwinds_to_the_catch_of_the_init() {
        // The init's `main` catches a panic rather than unwinding into the
        // launcher's frames; the unwinder is linked in statically (see
        // scripts/link-cc), as in this test binary.
        let caught = std::panic::catch_unwind(|| -> u8 { panic!("in the init") });
        assert!(caught.is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = super::new_sandbox_id();
        let b = super::new_sandbox_id();
        assert!(super::valid_sandbox_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!super::valid_sandbox_id("Bad_id"));
        assert!(!super::valid_sandbox_id("-x"));
        assert!(!super::valid_sandbox_id(&"a".repeat(64)));
    }
}
