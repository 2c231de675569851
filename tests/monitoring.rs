//! `monitoring/grafana-dashboard.json` and `monitoring/alerts.yml` only use
//! what the daemon exports: every metric an expression names, and every label
//! it selects or groups by, is found in a live scrape of a daemon running a
//! sandbox (not in a list kept by hand).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/grafana-dashboard.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/alerts.yml");

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child; it stops its sandboxes.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Metric name -> the label names its series carry, from a live scrape of a
/// daemon running one sandbox (so the per-sandbox families have series).
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = f.dir.join("policy.toml");
    std::fs::write(&policy, format!("[filesystem]\nread_only = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", {:?}]\n", bin_dir())).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let socket = f.dir.join("ctl.sock");
    let config = f.dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\nallowed_uids = [0]\nworktree_base = {:?}\ncommands = [{:?}]\npolicy = {policy:?}\naudit_log = {:?}\nmetrics = \"127.0.0.1:{port}\"\nstate_dir = {:?}\nlog_dir = {:?}\n",
            f.dir,
            bin(),
            f.dir.join("audit.log"),
            f.dir.join("state"),
            f.dir.join("logs")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ctl = |args: &[&str]| Command::new(bin()).arg("ctl").arg("--socket").arg(&socket).args(args).output().unwrap();
    let _d = Daemon(Command::new(bin()).arg("daemon").arg("--config").arg(&config).stderr(std::process::Stdio::null()).spawn().unwrap());
    let start = Instant::now();
    while !ctl(&["list"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(5), "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let launched: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&["launch", "--worktree", f.worktree.to_str().unwrap(), "--", bin(), "__probe", "serve", "{port}"]))).unwrap();
    // One refused call (the probe's `GET /deny` calls ptrace), so that the
    // denial families have samples and labels too.
    let get = |port: u16, path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    get(launched["port"].as_u64().unwrap() as u16, "/deny");
    let start = Instant::now();
    let body = loop {
        let resp = get(port, "/metrics");
        let body = resp.split_once("\r\n\r\n").expect("an HTTP response").1.to_string();
        if body.contains("swarmcell_denials_total{") {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the sandbox's denial never reached the metrics:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let names = if kind == "histogram" {
                vec![format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count")]
            } else {
                vec![name.to_string()]
            };
            for n in names {
                out.entry(n).or_default();
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            let series = l.rsplit_once(' ').unwrap().0;
            let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
            let set = out.entry(name.to_string()).or_default();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                set.insert(pair.split_once('=').unwrap().0.to_string());
            }
        }
    }
    assert!(out.contains_key("swarmcell_sandbox_memory_bytes") && out["swarmcell_sandbox_memory_bytes"].contains("id"), "{body}");
    out
}

const KEYWORDS: [&str; 13] = ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"];

/// What an expression uses: metric names, (metric, selector label) pairs, and
/// the labels of its by()/without() clauses.
fn parse(expr: &str) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
    let b = expr.as_bytes();
    let (mut names, mut selected, mut grouped) = (vec![], vec![], vec![]);
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    let mut last_name = String::new();
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c == b'{' {
            // A selector: label names before each matcher.
            let end = expr[i..].find('}').map_or(b.len(), |e| i + e);
            let mut j = i + 1;
            while j < end {
                let start = j;
                while j < end && ident(b[j]) {
                    j += 1;
                }
                if j > start {
                    selected.push((last_name.clone(), expr[start..j].to_string()));
                }
                // Skip the operator and the quoted value.
                while j < end && b[j] != b'"' {
                    j += 1;
                }
                j += 1;
                while j < end && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                j += 1;
                while j < end && (b[j] == b',' || b[j] == b' ') {
                    j += 1;
                }
            }
            i = end + 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start();
            if word == "by" || word == "without" {
                let open = next.find('(').unwrap();
                let close = next.find(')').unwrap();
                grouped.extend(next[open + 1..close].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
                i += expr[i..].find(')').unwrap() + 1;
            } else if next.starts_with('(')
                || next.starts_with("by ")
                || next.starts_with("by(")
                || next.starts_with("without")
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                // A function, an aggregation (`sum by (x) (...)`) or a keyword.
            } else {
                names.push(word.to_string());
                last_name = word.to_string();
            }
        } else {
            if c.is_ascii_digit() || c == b'.' {
                // A number (1.8, 1024, 0.95, 1e3): skip it whole.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
    }
    (names, selected, grouped)
}

/// Every expression of the dashboard (panel targets and template queries).
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut out = vec![];
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((format!("panel {:?}", p["title"].as_str().unwrap_or("")), t["expr"].as_str().expect("a target without expr").to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        // label_values(METRIC, LABEL)
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap();
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values(METRIC, LABEL)");
        let (metric, label) = inner.split_once(',').unwrap();
        out.push((format!("variable {:?}", v["name"]), format!("sum by ({}) ({})", label.trim(), metric.trim())));
    }
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    std::fs::read_to_string(ALERTS)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| ("alerts.yml".to_string(), e.trim().to_string())))
        .collect()
}

#[test]
fn the_expression_parser_finds_metrics_selectors_and_groupings() {
    let (n, s, g) = parse(r#"histogram_quantile(0.95, sum by (le) (rate(swarmcell_launch_seconds_bucket{x="a,b}"}[5m]))) > 1.8 * 1024"#);
    assert_eq!(n, ["swarmcell_launch_seconds_bucket"]);
    assert_eq!(s, [("swarmcell_launch_seconds_bucket".to_string(), "x".to_string())]);
    assert_eq!(g, ["le"]);
    let (n, s, _) = parse(r#"up{job="swarmcell"} == 0 and on() swarmcell_sandboxes{state=~"a|b"}"#);
    assert_eq!(n, ["up", "swarmcell_sandboxes"]);
    assert_eq!(s.len(), 2);
}

#[test]
fn every_dashboard_and_alert_expression_names_metrics_and_labels_the_daemon_exports() {
    let exported = exported();
    let exprs: Vec<(String, String)> = dashboard_exprs().into_iter().chain(alert_exprs()).collect();
    assert!(exprs.len() > 25, "{exprs:?}");
    let mut used = BTreeSet::new();
    for (where_, e) in &exprs {
        let (names, selected, grouped) = parse(e);
        assert!(!names.is_empty(), "{where_}: no metric in {e:?}");
        for n in &names {
            if n == "up" {
                // Prometheus' own, for this job.
                assert!(e.contains(r#"up{job="swarmcell"}"#), "{where_}: {e}");
                continue;
            }
            assert!(exported.contains_key(n), "{where_}: {n} is not exported by the daemon (exported: {:?})", exported.keys().collect::<Vec<_>>());
            used.insert(n.clone());
        }
        for (metric, label) in &selected {
            if metric == "up" {
                continue;
            }
            assert!(exported[metric].contains(label), "{where_}: {metric} has no label {label:?} ({:?})", exported[metric]);
        }
        for label in &grouped {
            assert!(names.iter().any(|n| exported.get(n).is_some_and(|l| l.contains(label))), "{where_}: no metric of {e:?} has the label {label:?}");
        }
    }
    // And the dashboard shows every family the daemon exports.
    let families: BTreeSet<&String> = exported.keys().filter(|k| !k.ends_with("_sum") && !k.ends_with("_count")).collect();
    let missing: Vec<&&String> = families.iter().filter(|f| !used.contains(f.as_str())).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}
