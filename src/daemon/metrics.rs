//! Prometheus text exposition of the daemon's counters and of each sandbox's
//! cgroup (memory, pids, CPU) and broker (connections, bytes).

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::net::broker_stats::Counters as BrokerCounters;

/// Launch-to-healthy latency buckets (seconds).
pub const LATENCY_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Counters {
    pub launch_latency: [u64; LATENCY_BUCKETS.len()],
    pub launch_latency_sum: f64,
    pub launch_latency_count: u64,
    pub launches: u64,
    pub restarts: u64,
    pub health_checks: u64,
    pub health_failures: u64,
    pub auth_denied: u64,
    /// Broker totals of sandboxes that are gone (live ones are added when rendering).
    pub gone_connections: u64,
    pub gone_bytes_in: u64,
    pub gone_bytes_out: u64,
    pub gone_refused: u64,
    pub gone_refused_uid: u64,
}

impl Counters {
    pub fn observe_launch(&mut self, secs: f64) {
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.launch_latency[i] += 1;
            }
        }
        self.launch_latency_sum += secs;
        self.launch_latency_count += 1;
    }

    /// Keep the broker totals of a sandbox that is removed.
    pub fn retire(&mut self, b: &BrokerCounters) {
        self.gone_connections += b.connections.load(Ordering::Relaxed);
        self.gone_bytes_in += b.bytes_in.load(Ordering::Relaxed);
        self.gone_bytes_out += b.bytes_out.load(Ordering::Relaxed);
        self.gone_refused += b.refused.load(Ordering::Relaxed);
        self.gone_refused_uid += b.refused_uid.load(Ordering::Relaxed);
    }
}

/// What the metrics need to know of one sandbox.
pub struct SandboxView<'a> {
    pub id: &'a str,
    pub cgroups: Vec<&'a str>,
    pub broker: &'a BrokerCounters,
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

pub fn render(c: &Counters, by_state: &[(&str, usize)], sandboxes: &[SandboxView]) -> String {
    let mut o = String::new();
    family(&mut o, "swarmcell_sandboxes", "gauge", "Sandboxes by state.");
    for (s, n) in by_state {
        let _ = writeln!(o, "swarmcell_sandboxes{{state=\"{s}\"}} {n}");
    }
    for (name, help, v) in [
        ("swarmcell_launches_total", "Sandboxes launched.", c.launches),
        ("swarmcell_restarts_total", "Sandboxes restarted.", c.restarts),
        ("swarmcell_health_checks_total", "Health checks made.", c.health_checks),
        ("swarmcell_health_failures_total", "Failed health checks and payload exits.", c.health_failures),
        ("swarmcell_auth_denied_total", "Refused control connections.", c.auth_denied),
    ] {
        family(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(&mut o, "swarmcell_launch_seconds", "histogram", "Launch to healthy.");
    for (b, n) in LATENCY_BUCKETS.iter().zip(c.launch_latency) {
        let _ = writeln!(o, "swarmcell_launch_seconds_bucket{{le=\"{b}\"}} {n}");
    }
    let _ = writeln!(o, "swarmcell_launch_seconds_bucket{{le=\"+Inf\"}} {}", c.launch_latency_count);
    let _ = writeln!(o, "swarmcell_launch_seconds_sum {}", c.launch_latency_sum);
    let _ = writeln!(o, "swarmcell_launch_seconds_count {}", c.launch_latency_count);

    // Broker totals over every sandbox this daemon ran, then per sandbox.
    let live = |f: fn(&BrokerCounters) -> u64| sandboxes.iter().map(|s| f(s.broker)).sum::<u64>();
    family(&mut o, "swarmcell_broker_connections_total", "counter", "Connections relayed by the brokers.");
    let _ = writeln!(o, "swarmcell_broker_connections_total {}", c.gone_connections + live(|b| b.connections.load(Ordering::Relaxed)));
    family(
        &mut o,
        "swarmcell_broker_refused_total",
        "counter",
        "Connections closed by the brokers: at the connection limit, or from a uid that is not allowed.",
    );
    let _ = writeln!(o, "swarmcell_broker_refused_total{{reason=\"limit\"}} {}", c.gone_refused + live(|b| b.refused.load(Ordering::Relaxed)));
    let _ = writeln!(o, "swarmcell_broker_refused_total{{reason=\"uid\"}} {}", c.gone_refused_uid + live(|b| b.refused_uid.load(Ordering::Relaxed)));
    family(&mut o, "swarmcell_broker_bytes_total", "counter", "Bytes relayed by the brokers (in: to the payloads).");
    let _ = writeln!(o, "swarmcell_broker_bytes_total{{direction=\"in\"}} {}", c.gone_bytes_in + live(|b| b.bytes_in.load(Ordering::Relaxed)));
    let _ = writeln!(o, "swarmcell_broker_bytes_total{{direction=\"out\"}} {}", c.gone_bytes_out + live(|b| b.bytes_out.load(Ordering::Relaxed)));

    let mut conns = String::new();
    let mut active = String::new();
    let mut bytes = String::new();
    let mut memory = String::new();
    let mut pids = String::new();
    let mut cpu = String::new();
    for s in sandboxes {
        let (id, b) = (s.id, s.broker);
        let _ = writeln!(conns, "swarmcell_sandbox_broker_connections_total{{id=\"{id}\"}} {}", b.connections.load(Ordering::Relaxed));
        let _ = writeln!(active, "swarmcell_sandbox_broker_active_connections{{id=\"{id}\"}} {}", b.active.load(Ordering::Relaxed));
        let _ = writeln!(bytes, "swarmcell_sandbox_broker_bytes_total{{id=\"{id}\",direction=\"in\"}} {}", b.bytes_in.load(Ordering::Relaxed));
        let _ = writeln!(bytes, "swarmcell_sandbox_broker_bytes_total{{id=\"{id}\",direction=\"out\"}} {}", b.bytes_out.load(Ordering::Relaxed));
        for dir in s.cgroups.iter().map(Path::new) {
            for file in ["memory.current", "memory.usage_in_bytes"] {
                if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
                    let _ = writeln!(memory, "swarmcell_sandbox_memory_bytes{{id=\"{id}\"}} {}", v.trim());
                }
            }
            if let Ok(v) = std::fs::read_to_string(dir.join("pids.current")) {
                let _ = writeln!(pids, "swarmcell_sandbox_pids{{id=\"{id}\"}} {}", v.trim());
            }
            if let Some(secs) = cpu_seconds(dir) {
                let _ = writeln!(cpu, "swarmcell_sandbox_cpu_seconds_total{{id=\"{id}\"}} {secs}");
            }
        }
    }
    for (name, kind, help, lines) in [
        ("swarmcell_sandbox_broker_connections_total", "counter", "Connections relayed to a sandbox.", conns),
        ("swarmcell_sandbox_broker_active_connections", "gauge", "Connections being relayed to a sandbox now.", active),
        ("swarmcell_sandbox_broker_bytes_total", "counter", "Bytes relayed for a sandbox (in: to the payload).", bytes),
        ("swarmcell_sandbox_memory_bytes", "gauge", "Memory charged to a sandbox's cgroup.", memory),
        ("swarmcell_sandbox_pids", "gauge", "Processes in a sandbox's cgroup.", pids),
        ("swarmcell_sandbox_cpu_seconds_total", "counter", "CPU time used by a sandbox's cgroup.", cpu),
    ] {
        family(&mut o, name, kind, help);
        o.push_str(&lines);
    }
    o
}

/// A sandbox's resource usage from its cgroup directories (`status`).
pub fn usage(cgroups: &[&str]) -> serde_json::Value {
    let (mut memory, mut pids, mut cpu) = (None, None, None);
    for dir in cgroups.iter().map(Path::new) {
        for file in ["memory.current", "memory.usage_in_bytes"] {
            memory = memory.or_else(|| std::fs::read_to_string(dir.join(file)).ok().and_then(|v| v.trim().parse::<u64>().ok()));
        }
        pids = pids.or_else(|| std::fs::read_to_string(dir.join("pids.current")).ok().and_then(|v| v.trim().parse::<u64>().ok()));
        cpu = cpu.or_else(|| cpu_seconds(dir));
    }
    serde_json::json!({ "memory_bytes": memory, "pids": pids, "cpu_seconds": cpu })
}

/// v1 cpuacct.usage is in ns; v2 cpu.stat usage_usec in µs.
pub(super) fn cpu_seconds(dir: &Path) -> Option<f64> {
    if let Some(ns) = std::fs::read_to_string(dir.join("cpuacct.usage")).ok().and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(ns / 1e9);
    }
    std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
        .map(|us| us / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_totals_include_sandboxes_that_are_gone() {
        let mut c = Counters::default();
        let gone = BrokerCounters::default();
        gone.bytes_in.store(100, Ordering::Relaxed);
        gone.connections.store(2, Ordering::Relaxed);
        c.retire(&gone);
        let live = BrokerCounters::default();
        live.bytes_in.store(5, Ordering::Relaxed);
        live.connections.store(1, Ordering::Relaxed);
        live.active.store(1, Ordering::Relaxed);
        c.observe_launch(0.02);
        let text = render(&c, &[("running", 1)], &[SandboxView { id: "d-1", cgroups: vec![], broker: &live }]);
        for line in [
            "swarmcell_broker_bytes_total{direction=\"in\"} 105",
            "swarmcell_broker_connections_total 3",
            "swarmcell_sandbox_broker_bytes_total{id=\"d-1\",direction=\"in\"} 5",
            "swarmcell_sandbox_broker_active_connections{id=\"d-1\"} 1",
            "swarmcell_launch_seconds_bucket{le=\"0.01\"} 0",
            "swarmcell_launch_seconds_bucket{le=\"0.025\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
