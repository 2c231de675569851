//! `swarmcell __probe NAME`: small checks run *inside* a sandbox by the tests
//! (and later by `swarmcell verify`). Each prints one line and exits 0 when the
//! sandbox held (`blocked: ...`), 1 when it did not (`ESCAPED: ...`).

use std::os::fd::AsRawFd;

pub fn main(name: &str) -> u8 {
    let (held, detail) = match name {
        "tiocsti" => tiocsti(),
        "fds" => fds(),
        other => {
            eprintln!("swarmcell __probe: unknown probe {other:?} (known: tiocsti, fds)");
            return 2;
        }
    };
    println!("{}: {detail}", if held { "blocked" } else { "ESCAPED" });
    if held { 0 } else { 1 }
}

/// Push a character into the input queue of the terminal on stdin.
fn tiocsti() -> (bool, String) {
    let c: libc::c_char = b'x' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from the pointer.
    let r = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCSTI, &c) };
    if r == 0 { (false, "TIOCSTI pushed input into the terminal".into()) } else { (true, format!("TIOCSTI failed: {}", nix::errno::Errno::last())) }
}

/// List descriptors above stderr (other than the one reading /proc/self/fd).
fn fds() -> (bool, String) {
    let entries: Vec<String> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => return (false, format!("cannot list /proc/self/fd: {e}")),
    };
    let extra: Vec<String> = entries
        .into_iter()
        .filter(|n| n.parse::<i32>().is_ok_and(|fd| fd > 2))
        .filter(|n| std::fs::read_link(format!("/proc/self/fd/{n}")).map(|t| !t.starts_with("/proc")).unwrap_or(false))
        .collect();
    (extra.is_empty(), format!("descriptors above 2: {extra:?}"))
}
