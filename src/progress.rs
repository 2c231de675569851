//! Progress of a long host-side operation (verify, bench, worktree prune) on
//! stderr, only when stderr is a terminal: one line, rewritten in place
//! (`[3/7] verify: memory limit (12s)`) and cleared when done, so that
//! stdout (a report, JSON) and logs piped to a file stay as they were.
//! `SWARMCELL_PROGRESS=0` turns it off.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    on: bool,
    started: Instant,
}

impl Progress {
    pub fn new(label: &'static str, total: usize) -> Progress {
        let on = std::io::stderr().is_terminal() && std::env::var_os("SWARMCELL_PROGRESS").is_none_or(|v| v != "0");
        Progress { label, total, done: 0, on, started: Instant::now() }
    }

    /// The next step starts.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        if self.on {
            let line = render(self.label, self.done, self.total, what, self.started.elapsed().as_secs());
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// `[k/n] label: what (Ns)`; `what` is escaped (it may name a path or an id).
fn render(label: &str, k: usize, n: usize, what: &str, secs: u64) -> String {
    let total = if n > 0 { format!("/{n}") } else { String::new() };
    format!("[{k}{total}] {label}: {} ({secs}s)", crate::sanitize::line(what))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_step_is_one_escaped_line() {
        assert_eq!(super::render("verify", 3, 7, "memory limit", 12), "[3/7] verify: memory limit (12s)");
        assert_eq!(super::render("prune", 2, 0, "a\n\u{1b}[2J", 0), "[2] prune: a\\x0a\\x1b[2J (0s)");
    }
}
