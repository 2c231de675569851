//! Daemon side: denials counted per (sandbox, kind, detail), and reported at a
//! bounded rate. A denial is never lost from the counts: what the kernel or
//! the reader could not deliver is counted apart (`dropped`). Memory is
//! bounded: at most [`MAX_DETAILS`] details per sandbox and kind (the rest are
//! counted under `(other)`: a flood of distinct paths does not hide a refused
//! call's name), at most [`MAX_GONE`] sandboxes that are gone. Tripwires do
//! not depend on it: they see every denial's own detail (`super::hub`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::Kind;

pub const MAX_DETAILS: usize = 256;
pub const MAX_GONE: usize = 64;
/// A detail already reported is reported again at most this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// At most this many reports per flush (the rest wait for the next one).
pub const MAX_REPORTS_PER_FLUSH: usize = 200;
pub const OTHER: &str = "(other)";

#[derive(Debug, Clone, Default)]
pub struct Count {
    pub total: u64,
    pub reported: u64,
    last_report: Option<Instant>,
    /// Unix time of the first and last denial.
    pub first: f64,
    pub last: f64,
}

#[derive(Debug, Default)]
pub struct SandboxDenials {
    pub details: BTreeMap<(Kind, String), Count>,
    pub by_kind: BTreeMap<Kind, u64>,
}

/// One line of the denial stream: `count` new denials since the last report
/// of this detail (`total` in all).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub sandbox: String,
    pub kind: Kind,
    pub detail: String,
    pub count: u64,
    pub total: u64,
}

#[derive(Debug, Default)]
pub struct Aggregator {
    pub sandboxes: BTreeMap<String, SandboxDenials>,
    gone: VecDeque<String>,
    /// Records the kernel or the reader lost (never attributed, but counted).
    pub dropped: u64,
    /// Records that named no sandbox swarmcell knows.
    pub unattributed: u64,
    /// Details with counts not yet reported.
    dirty: usize,
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Aggregator {
    /// Count `n` denials; true when this made a detail newly due (wake the reporter).
    pub fn add(&mut self, sandbox: &str, kind: Kind, detail: &str, n: u64) -> bool {
        if !self.sandboxes.contains_key(sandbox) {
            self.sandboxes.insert(sandbox.to_string(), SandboxDenials::default());
        }
        let Some(s) = self.sandboxes.get_mut(sandbox) else { return false };
        let now = unix_now();
        // The hot path (a flood of one detail) allocates nothing.
        let c = match s.details.range_mut((kind, String::new())..).take_while(|((k, _), _)| *k == kind).find(|((_, d), _)| d == detail) {
            Some((_, c)) => c,
            None => {
                let of_kind = s.details.range((kind, String::new())..).take_while(|((k, _), _)| *k == kind).count();
                let detail = if of_kind >= MAX_DETAILS { OTHER } else { detail };
                s.details.entry((kind, detail.to_string())).or_insert_with(|| Count { first: now, ..Count::default() })
            }
        };
        let was_clean = c.total == c.reported;
        c.total += n;
        c.last = now;
        *s.by_kind.entry(kind).or_default() += n;
        if was_clean {
            self.dirty += 1;
        }
        was_clean && c.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY)
    }

    /// The reports due now, at most [`MAX_REPORTS_PER_FLUSH`].
    pub fn take_reports(&mut self, now: Instant) -> Vec<Report> {
        let mut out = Vec::new();
        if self.dirty == 0 {
            return out;
        }
        'all: for (sandbox, s) in &mut self.sandboxes {
            for ((kind, detail), c) in &mut s.details {
                if c.total == c.reported || c.last_report.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
                    continue;
                }
                if out.len() >= MAX_REPORTS_PER_FLUSH {
                    break 'all;
                }
                out.push(Report { sandbox: sandbox.clone(), kind: *kind, detail: detail.clone(), count: c.total - c.reported, total: c.total });
                c.reported = c.total;
                c.last_report = Some(now);
                self.dirty -= 1;
            }
        }
        out
    }

    /// When unreported counts become due (None: nothing waits).
    pub fn next_due(&self) -> Option<Instant> {
        if self.dirty == 0 {
            return None;
        }
        self.sandboxes
            .values()
            .flat_map(|s| s.details.values())
            .filter(|c| c.total > c.reported)
            .map(|c| c.last_report.map_or_else(Instant::now, |t| t + REPORT_EVERY))
            .min()
    }

    /// A sandbox is gone: its counts stay readable (and in the metrics) for a while.
    pub fn retire(&mut self, sandbox: &str) {
        if !self.sandboxes.contains_key(sandbox) || self.gone.iter().any(|g| g == sandbox) {
            return;
        }
        self.gone.push_back(sandbox.to_string());
        while self.gone.len() > MAX_GONE {
            if let Some(old) = self.gone.pop_front()
                && let Some(s) = self.sandboxes.remove(&old)
            {
                self.dirty -= s.details.values().filter(|c| c.total > c.reported).count();
            }
        }
    }

    /// A sandbox id is live again (a relaunch under the same id).
    pub fn revive(&mut self, sandbox: &str) {
        self.gone.retain(|g| g != sandbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_reported_once_per_second_per_detail_without_losing_the_count() {
        let mut a = Aggregator::default();
        assert!(a.add("d-1", Kind::Syscall, "ptrace", 1), "the first denial is due at once");
        for _ in 0..999_999 {
            a.add("d-1", Kind::Syscall, "ptrace", 1);
        }
        let t0 = Instant::now();
        let r = a.take_reports(t0);
        assert_eq!(r, vec![Report { sandbox: "d-1".into(), kind: Kind::Syscall, detail: "ptrace".into(), count: 1_000_000, total: 1_000_000 }]);
        assert!(!a.add("d-1", Kind::Syscall, "ptrace", 5), "reported less than a second ago");
        assert!(a.take_reports(t0 + Duration::from_millis(10)).is_empty());
        assert!(a.next_due().is_some());
        let r = a.take_reports(t0 + REPORT_EVERY);
        assert_eq!((r[0].count, r[0].total), (5, 1_000_005));
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn details_per_sandbox_and_gone_sandboxes_are_bounded() {
        let mut a = Aggregator::default();
        for i in 0..MAX_DETAILS + 50 {
            a.add("d-1", Kind::Fs, &format!("/p{i}"), 1);
        }
        let s = &a.sandboxes["d-1"];
        assert_eq!(s.details.len(), MAX_DETAILS + 1);
        assert_eq!(s.details[&(Kind::Fs, OTHER.to_string())].total, 50);
        assert_eq!(s.by_kind[&Kind::Fs], (MAX_DETAILS + 50) as u64);
        // Other kinds keep their own names.
        a.add("d-1", Kind::Syscall, "ptrace", 1);
        assert_eq!(a.sandboxes["d-1"].details[&(Kind::Syscall, "ptrace".to_string())].total, 1);
        for i in 0..MAX_GONE + 3 {
            let id = format!("g-{i}");
            a.add(&id, Kind::Net, "x", 1);
            a.retire(&id);
        }
        assert_eq!(a.sandboxes.len(), MAX_GONE + 1);
        let all = a.take_reports(Instant::now());
        assert!(all.len() <= MAX_REPORTS_PER_FLUSH);
    }
}
