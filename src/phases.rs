//! Any side (launcher, sandbox init): `SWARMCELL_TRACE_PHASES=1` prints each
//! launch phase's duration to stderr (`swarmcell phase NAME +DELTA ms (TOTAL ms)`),
//! for finding where a launch's time goes. Off, a mark costs one relaxed load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();
/// Nanoseconds since START at the last mark.
static LAST: AtomicU64 = AtomicU64::new(0);

/// Turn tracing on when the variable is set (the launcher, at its start).
pub fn init_from_env() {
    if std::env::var_os("SWARMCELL_TRACE_PHASES").is_some_and(|v| !v.is_empty() && v != "0") {
        enable();
    }
}

/// Turn tracing on (sandbox init, told so by its spec).
pub fn enable() {
    START.get_or_init(Instant::now);
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The end of phase `name`: its duration since the previous mark.
pub fn mark(name: &str) {
    if !enabled() {
        return;
    }
    let Some(start) = START.get() else { return };
    let now = start.elapsed().as_nanos() as u64;
    let last = LAST.swap(now, Ordering::Relaxed);
    let ms = |ns: u64| ns as f64 / 1e6;
    // The monotonic clock is the same in the launcher and in the sandbox (no
    // time namespace): `t` lines up both processes' marks.
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let t = ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
    // One write per line: the launcher and the init share stderr.
    let line = format!("swarmcell phase {name} +{:.3} ms ({:.3} ms) t={t:.3} [pid {}]\n", ms(now.saturating_sub(last)), ms(now), std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}
