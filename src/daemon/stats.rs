//! The `stats` request (daemon side, in the loop): each sandbox of `list`
//! with what `swarmcell ps` / `ctl top` show: uptime, memory, CPU time and
//! processes from its cgroup, its broker's connections. Read on demand (a few
//! small cgroupfs reads per sandbox), like a metrics scrape; nothing is kept.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::*;

impl Daemon {
    /// `list`'s entries (the requester's own, or all for root) with their usage.
    /// Fields (null when unknown, e.g. not running): `uptime_s` (this run),
    /// `memory_bytes`, `cpu_seconds`, `pids`, `connections` (being relayed),
    /// `connections_total`, `refused_uid`, `denials` (every kind, counted so
    /// far by `crate::denials`).
    pub(super) fn stats(&self, uid: u32) -> Vec<Value> {
        let now = Instant::now();
        // Totals first: the reader thread waits on this lock, not on the
        // cgroupfs reads below.
        let denials: std::collections::HashMap<String, u64> =
            self.denials.lock().agg.sandboxes.iter().map(|(id, d)| (id.clone(), d.by_kind.values().sum())).collect();
        self.list()
            .into_iter()
            .zip(self.sandboxes.values())
            .filter(|(v, _)| uid == 0 || v["uid"] == uid)
            .map(|(mut v, e)| {
                let running = e.state == State::Running;
                let dirs: Vec<&str> =
                    if running { e.info["cgroups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect() } else { vec![] };
                let u = usage(&dirs);
                v["uptime_s"] = if running { json!(now.saturating_duration_since(e.started).as_secs()) } else { Value::Null };
                v["memory_bytes"] = json!(u.memory);
                v["cpu_seconds"] = json!(u.cpu);
                v["pids"] = json!(u.pids);
                v["connections"] = json!(e.broker.active.load(Ordering::Relaxed));
                v["connections_total"] = json!(e.broker.connections.load(Ordering::Relaxed));
                v["refused_uid"] = json!(e.broker.refused_uid.load(Ordering::Relaxed));
                let id = v["id"].as_str().unwrap_or_default();
                v["denials"] = json!(denials.get(id).copied().unwrap_or(0));
                v
            })
            .collect()
    }
}

#[derive(Default, Debug, PartialEq)]
struct Usage {
    memory: Option<u64>,
    pids: Option<u64>,
    cpu: Option<f64>,
}

/// Memory, processes and CPU time of a sandbox's cgroups (v2: one directory;
/// v1: one per hierarchy, each file found in one of them).
fn usage(dirs: &[&str]) -> Usage {
    let mut u = Usage::default();
    let num = |p: &Path| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    for dir in dirs.iter().map(Path::new) {
        u.memory = u.memory.or_else(|| num(&dir.join("memory.current")).or_else(|| num(&dir.join("memory.usage_in_bytes"))));
        u.pids = u.pids.or_else(|| num(&dir.join("pids.current")));
        u.cpu = u.cpu.or_else(|| metrics::cpu_seconds(dir));
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_v1_and_v2_files_and_leaves_unknowns_empty() {
        let base = std::env::temp_dir().join(format!("swarmcell-stats-{}", std::process::id()));
        let (mem, pids, v2) = (base.join("memory"), base.join("pids"), base.join("v2"));
        for d in [&mem, &pids, &v2] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(mem.join("memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(pids.join("pids.current"), "3\n").unwrap();
        std::fs::write(v2.join("memory.current"), "8192\n").unwrap();
        std::fs::write(v2.join("pids.current"), "2\n").unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1500000\nuser_usec 1\n").unwrap();
        let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
        let (m, p, v) = (s(&mem), s(&pids), s(&v2));
        assert_eq!(usage(&[&m, &p]), Usage { memory: Some(4096), pids: Some(3), cpu: None });
        assert_eq!(usage(&[&v]), Usage { memory: Some(8192), pids: Some(2), cpu: Some(1.5) });
        assert_eq!(usage(&[]), Usage::default());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::super::protocol::Request;

    #[test]
    fn stats_is_a_request_with_no_fields() {
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).unwrap(), Request::Stats {});
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stats","id":"x"}"#).is_err());
    }
}
