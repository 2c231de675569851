//! Tripwires (`[[tripwire]]` in the policy): rules over a sandbox's denial
//! stream that raise an alert, freeze the sandbox, or kill it. Validated with
//! the policy (unknown keys refused); evaluated on every denial as it is
//! counted, by the denial hub ([`super::hub`], daemon side).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Kind;
use crate::policy::units::HumanDuration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A `tripwire` audit event and the `swarmcell_tripwires_total` metric.
    Alert,
    /// Also freeze the sandbox and write a forensic bundle.
    Freeze,
    /// Also kill the sandbox.
    Kill,
}

fn one() -> u64 {
    1
}

fn minute() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// One `[[tripwire]]`: matches the denials of `kind` whose `path`, `syscall`
/// or `host` matches (each optional; all given must match); fires when
/// `count` of them happen within `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tripwire {
    /// Shown in events (default: tripwire[N]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// fs, net, scope, syscall, egress or ingress; absent: any kind but
    /// ingress (refusals of other users' connections, which they control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// A glob on the refused path (`*` any run of characters, `?` one), fs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A system call name (syscall and net kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// A glob on the refused egress host (egress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Denials within `window` that fire it (default 1).
    #[serde(default = "one")]
    pub count: u64,
    /// Default 60s.
    #[serde(default = "minute")]
    pub window: HumanDuration,
    pub action: Action,
}

impl Tripwire {
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("tripwire[{index}]"))
    }

    /// Check one rule (policy validation): `Err((field, message))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.count == 0 {
            return Err(("count", "must be at least 1".into()));
        }
        if self.window.0.is_zero() {
            return Err(("window", "must be longer than 0".into()));
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(("name", "1-64 of [A-Za-z0-9_-]".into()));
        }
        if self.path.is_some() && !matches!(self.kind, None | Some(Kind::Fs)) {
            return Err(("path", "applies to kind = \"fs\" only".into()));
        }
        if self.host.is_some() && !matches!(self.kind, None | Some(Kind::Egress)) {
            return Err(("host", "applies to kind = \"egress\" only".into()));
        }
        if let Some(s) = &self.syscall {
            if !matches!(self.kind, None | Some(Kind::Syscall) | Some(Kind::Net)) {
                return Err(("syscall", "applies to kind = \"syscall\" or \"net\" only".into()));
            }
            if crate::confine::seccomp::syscall_number(s).is_none() {
                return Err(("syscall", format!("unknown system call {s:?}")));
            }
        }
        for (field, g) in [("path", &self.path), ("host", &self.host)] {
            if g.as_ref().is_some_and(|g| g.is_empty() || g.len() > 1024) {
                return Err((field, "must be 1-1024 characters".into()));
            }
        }
        Ok(())
    }

    /// Whether a report's denials are of this rule.
    pub fn matches(&self, kind: Kind, detail: &str) -> bool {
        if self.kind.is_some_and(|k| k != kind) {
            return false;
        }
        // Ingress denials are what others did to the sandbox (any local uid
        // can knock at its port): only a rule that names them counts them.
        if self.kind.is_none() && kind == Kind::Ingress {
            return false;
        }
        if let Some(p) = &self.path {
            // An fs detail is "BLOCKERS PATH".
            let Some((_, path)) = detail.split_once(' ') else { return false };
            if kind != Kind::Fs || !glob(p, path) {
                return false;
            }
        }
        if let Some(s) = &self.syscall
            && detail != s
        {
            return false;
        }
        if let Some(h) = &self.host {
            let host = detail.rsplit_once(':').map_or(detail, |(h, _)| h);
            if kind != Kind::Egress || !glob(&h.to_ascii_lowercase(), &host.to_ascii_lowercase()) {
                return false;
            }
        }
        true
    }
}

/// `*` matches any run of characters (`/` included), `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A rule that fired is not fired again for this long (its matches go on
/// counting): a flood matching a `count = 1` rule is one event a second, not
/// one per denial.
pub const REFIRE_EVERY: Duration = Duration::from_secs(1);

/// The counts in the window of each rule of one sandbox. Fed every denial as
/// it is counted, with its own kind and detail (before the per-sandbox cap on
/// details and the report rate: decoys cannot hide a denial from a rule nor
/// delay it past its window).
#[derive(Debug, Default)]
pub struct Armed {
    pub rules: Vec<Tripwire>,
    /// When the sandbox was launched (armed).
    pub since: Option<Instant>,
    /// Per rule: (time of the last match in the bucket, matches), oldest first.
    seen: Vec<VecDeque<(Instant, u64)>>,
    last_fired: Vec<Option<Instant>>,
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub rule: String,
    pub action: Action,
    pub kind: Kind,
    pub detail: String,
    pub count: u64,
}

impl Armed {
    pub fn new(rules: &[Tripwire]) -> Armed {
        Armed { rules: rules.to_vec(), since: Some(Instant::now()), seen: vec![VecDeque::new(); rules.len()], last_fired: vec![None; rules.len()] }
    }

    /// Count `n` denials of `kind`/`detail` against every rule; the rules
    /// that fire (their window starts again).
    pub fn observe(&mut self, kind: Kind, detail: &str, n: u64, now: Instant) -> Vec<Fired> {
        let matching: Vec<usize> = (0..self.rules.len()).filter(|i| self.rules[*i].matches(kind, detail)).collect();
        matching.into_iter().filter_map(|i| self.count(i, n, now).map(|count| self.fired(i, kind, detail, count))).collect()
    }

    /// `n` records the kernel lost while this sandbox flooded it. They can
    /// only have been Landlock records (the kernel drops the records it
    /// writes without waiting, Landlock's; a refused call's seccomp record
    /// waits for room), whose details nobody knows: every rule that a
    /// Landlock denial could match counts them as matches. A flood cannot
    /// hide a tripwire's match.
    pub fn observe_lost(&mut self, n: u64, now: Instant) -> Vec<Fired> {
        let detail = format!("{n} kernel audit records lost while this sandbox flooded the audit queue");
        let matching: Vec<usize> = (0..self.rules.len())
            .filter(|i| {
                let r = &self.rules[*i];
                matches!(r.kind, None | Some(Kind::Fs | Kind::Net | Kind::Scope)) && r.syscall.is_none() && r.host.is_none()
            })
            .collect();
        matching
            .into_iter()
            .filter_map(|i| self.count(i, n, now).map(|count| self.fired(i, self.rules[i].kind.unwrap_or(Kind::Fs), &detail, count)))
            .collect()
    }

    fn fired(&self, i: usize, kind: Kind, detail: &str, count: u64) -> Fired {
        let rule = &self.rules[i];
        Fired { rule: rule.label(i), action: rule.action, kind, detail: detail.to_string(), count }
    }

    /// Add `n` matches to rule `i`'s window: its count when the rule fires.
    fn count(&mut self, i: usize, n: u64, now: Instant) -> Option<u64> {
        let window = self.rules[i].window.0;
        let q = &mut self.seen[i];
        // Matches close in time share a bucket (its time is its last
        // match's: a bucket leaves the window late, never early), so a
        // flood keeps at most ~256 buckets per window.
        let bucket = window / 256;
        match q.back_mut() {
            Some((t, c)) if now.saturating_duration_since(*t) <= bucket => {
                *t = now;
                *c += n;
            }
            _ => q.push_back((now, n)),
        }
        while q.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > window) {
            q.pop_front();
        }
        while q.len() > 4096 {
            // Never the case with the buckets above; merge rather than forget.
            if let Some((_, c)) = q.pop_front()
                && let Some(f) = q.front_mut()
            {
                f.1 += c;
            }
        }
        let count: u64 = q.iter().map(|(_, c)| c).sum();
        if count >= self.rules[i].count && self.last_fired[i].is_none_or(|t| now.saturating_duration_since(t) >= REFIRE_EVERY) {
            q.clear();
            self.last_fired[i] = Some(now);
            return Some(count);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Tripwire {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn globs_and_matchers() {
        assert!(glob("/etc/*", "/etc/shadow"));
        assert!(glob("*/.ssh/*", "/home/a/.ssh/id_rsa"));
        assert!(!glob("/etc/*", "/usr/etc"));
        assert!(glob("a?c", "abc"));
        let t = rule("kind = \"fs\"\npath = \"/etc/sh*\"\naction = \"freeze\"");
        assert!(t.matches(Kind::Fs, "fs.read_file /etc/shadow"));
        assert!(!t.matches(Kind::Fs, "fs.read_file /etc/passwd"));
        assert!(!t.matches(Kind::Syscall, "ptrace"));
        let e = rule("kind = \"egress\"\nhost = \"*.evil.example\"\naction = \"alert\"");
        assert!(e.matches(Kind::Egress, "x.EVIL.example:443"));
        let s = rule("syscall = \"ptrace\"\naction = \"kill\"");
        assert!(s.matches(Kind::Syscall, "ptrace") && !s.matches(Kind::Syscall, "bpf"));
    }

    #[test]
    fn bad_rules_are_refused_and_unknown_keys_too() {
        assert!(toml::from_str::<Tripwire>("kind = \"fs\"\naction = \"alert\"\nwhat = 1").is_err());
        assert!(toml::from_str::<Tripwire>("kind = \"disk\"\naction = \"alert\"").is_err());
        assert!(toml::from_str::<Tripwire>("kind = \"fs\"\naction = \"explode\"").is_err());
        assert_eq!(rule("kind = \"syscall\"\npath = \"/x\"\naction = \"alert\"").validate().unwrap_err().0, "path");
        assert_eq!(rule("syscall = \"nope\"\naction = \"alert\"").validate().unwrap_err().0, "syscall");
        assert_eq!(rule("kind = \"fs\"\ncount = 0\naction = \"alert\"").validate().unwrap_err().0, "count");
        // In a policy: refused with the rule's index and field.
        let e = crate::policy::Policy::parse("[[tripwire]]\nkind = \"fs\"\nsyscall = \"ptrace\"\naction = \"alert\"\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("tripwire[0].syscall"), "{e}");
        let e = crate::policy::Policy::parse("[[tripwire]]\nkind = \"fs\"\naction = \"alert\"\nsevere = true\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("severe"), "{e}");
        let ok = crate::policy::Policy::parse(
            "[[tripwire]]\nkind = \"egress\"\nhost = \"*.evil\"\ncount = 3\nwindow = \"10s\"\naction = \"kill\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(ok.tripwires.len(), 1);
    }

    #[test]
    fn a_rule_fires_when_its_count_is_reached_within_the_window() {
        let mut a = Armed::new(&[rule("kind = \"syscall\"\ncount = 10\nwindow = \"1s\"\naction = \"alert\"")]);
        let t0 = Instant::now();
        assert!(a.observe(Kind::Syscall, "bpf", 4, t0).is_empty());
        // The first 4 fall out of the window.
        assert!(a.observe(Kind::Syscall, "bpf", 6, t0 + Duration::from_secs(2)).is_empty());
        let fired = a.observe(Kind::Syscall, "bpf", 4, t0 + Duration::from_millis(2500));
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].count, fired[0].action), (10, Action::Alert));
    }

    #[test]
    fn a_flood_fires_a_count_1_rule_once_a_second_and_keeps_its_window_bounded() {
        let mut a = Armed::new(&[rule("syscall = \"ptrace\"\naction = \"alert\""), rule("kind = \"syscall\"\ncount = 1000000\naction = \"kill\"")]);
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for i in 0..1_000_000u64 {
            fired.extend(a.observe(Kind::Syscall, "ptrace", 1, t0 + Duration::from_micros(i)));
        }
        // One second of a flood: the alert once (the first denial), the count rule at its millionth.
        assert_eq!(fired.iter().filter(|f| f.rule == "tripwire[0]").count(), 1);
        assert_eq!(fired.iter().filter(|f| f.rule == "tripwire[1]").map(|f| f.count).collect::<Vec<_>>(), vec![1_000_000]);
        assert!(a.seen.iter().all(|q| q.len() <= 257), "{:?}", a.seen.iter().map(VecDeque::len).collect::<Vec<_>>());
        assert_eq!(a.observe(Kind::Syscall, "ptrace", 1, t0 + Duration::from_secs(2)).len(), 1, "fires again after REFIRE_EVERY");
    }

    #[test]
    fn records_the_kernel_lost_count_as_matches_of_every_rule_a_landlock_denial_could_match() {
        let mut a = Armed::new(&[
            rule("kind = \"fs\"\npath = \"/\"\naction = \"freeze\""),
            rule("kind = \"scope\"\ncount = 3\naction = \"alert\""),
            rule("syscall = \"ptrace\"\naction = \"kill\""),
            rule("kind = \"egress\"\naction = \"kill\""),
        ]);
        let fired = a.observe_lost(2, Instant::now());
        let rules: Vec<&str> = fired.iter().map(|f| f.rule.as_str()).collect();
        // Seccomp records are never lost (they wait), egress ones are not the kernel's.
        assert_eq!(rules, ["tripwire[0]"]);
        assert_eq!((fired[0].action, fired[0].kind), (Action::Freeze, Kind::Fs));
        assert!(fired[0].detail.contains("2 kernel audit records lost"), "{}", fired[0].detail);
        assert_eq!(
            a.observe_lost(1, Instant::now() + REFIRE_EVERY).iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            ["tripwire[0]", "tripwire[1]"]
        );
    }
}
