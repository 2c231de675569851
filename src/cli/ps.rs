//! `swarmcell ps` and `swarmcell ctl top` (host side, a control-socket client):
//! the daemon's sandboxes as a table (id, agent, task, port, state, uptime,
//! restarts, memory, CPU, pids, connections, denials), from the daemon's
//! `stats` request. `--watch` (and `ctl top`) refreshes it in place like
//! `systemd-cgtop`; CPU% is the CPU time used between two refreshes. Every
//! string a requester chose (agent, task) is escaped and cut to its column.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::CliResult;
use crate::launch;
use crate::sanitize;

#[derive(Args)]
pub(super) struct PsArgs {
    #[arg(long, default_value = "/run/swarmcell/control.sock")]
    socket: PathBuf,
    /// Print the daemon's data as JSON (one array) and exit.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    #[command(flatten)]
    refresh: Refresh,
    /// Refresh until interrupted (or --iterations), like systemd-cgtop.
    #[arg(short, long)]
    watch: bool,
}

#[derive(Args, Clone, Copy)]
pub(super) struct Refresh {
    /// Seconds between refreshes.
    #[arg(short, long, default_value_t = 2.0, value_parser = parse_delay)]
    delay: f64,
    /// Stop after N refreshes (default: until interrupted).
    #[arg(short = 'n', long)]
    iterations: Option<u64>,
}

fn parse_delay(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.1..=3600.0).contains(&d) => Ok(d),
        _ => Err(format!("{s:?} is not a number of seconds between 0.1 and 3600")),
    }
}

pub(super) fn ps(args: PsArgs) -> CliResult {
    if args.json {
        let list = fetch(&args.socket)?;
        println!("{}", sanitize::json(&Value::Array(list)));
        return Ok(0);
    }
    let iterations = if args.watch { args.refresh.iterations } else { Some(1) };
    watch(&args.socket, args.refresh.delay, iterations)
}

/// `ctl top`: `ps --watch`.
pub(super) fn top(socket: &Path, refresh: Refresh) -> CliResult {
    watch(socket, refresh.delay, refresh.iterations)
}

fn fetch(socket: &Path) -> Result<Vec<Value>, (String, u8)> {
    let err = |m: String| (sanitize::line(&m), launch::EXIT_LAUNCHER_ERROR);
    let resp = crate::daemon::ctl(socket, &crate::daemon::protocol::Request::Stats {}).map_err(err)?;
    if resp["ok"] != true {
        return Err(err(resp["error"].as_str().unwrap_or("request failed").to_string()));
    }
    Ok(resp["sandboxes"].as_array().cloned().unwrap_or_default())
}

fn watch(socket: &Path, delay: f64, iterations: Option<u64>) -> CliResult {
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, Vec<(String, f64)>)> = None;
    let mut n = 0u64;
    loop {
        let list = fetch(socket)?;
        let now = Instant::now();
        let cpu: Vec<(String, f64)> = list.iter().filter_map(|s| Some((s["id"].as_str()?.to_string(), s["cpu_seconds"].as_f64()?))).collect();
        let pct = |id: &str, secs: Option<f64>| -> Option<f64> {
            let (t0, before) = prev.as_ref()?;
            let was = before.iter().find(|(i, _)| i == id)?.1;
            let (dt, secs) = (now.duration_since(*t0).as_secs_f64(), secs?);
            (dt > 0.0).then(|| 100.0 * (secs - was).max(0.0) / dt)
        };
        let rows: Vec<Vec<String>> = list.iter().map(|s| row(s, pct(s["id"].as_str().unwrap_or(""), s["cpu_seconds"].as_f64()))).collect();
        let mut out = String::new();
        if tty {
            // Home and clear, as top and systemd-cgtop do.
            out.push_str("\x1b[H\x1b[2J");
        } else if n > 0 {
            out.push('\n');
        }
        out.push_str(&header(&list, delay, iterations.is_none_or(|i| i > 1)));
        out.push_str(&table(&rows));
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            return Ok(0); // the reader went away (e.g. `| head`)
        }
        drop(stdout);
        n += 1;
        if iterations.is_some_and(|i| n >= i) {
            return Ok(0);
        }
        prev = Some((now, cpu));
        std::thread::sleep(Duration::from_secs_f64(delay));
    }
}

const COLUMNS: [(&str, usize, bool); 13] = [
    // (title, width, right-aligned)
    ("ID", 11, false),
    ("AGENT", 16, false),
    ("TASK", 22, false),
    ("PORT", 5, true),
    ("STATE", 10, false),
    ("UPTIME", 8, true),
    ("RESTARTS", 8, true),
    ("MEMORY", 8, true),
    ("CPU%", 6, true),
    ("CPUTIME", 8, true),
    ("PIDS", 5, true),
    ("CONNS", 5, true),
    ("DENIALS", 7, true),
];

fn header(list: &[Value], delay: f64, refreshing: bool) -> String {
    let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in list {
        *by_state.entry(s["state"].as_str().unwrap_or("?")).or_default() += 1;
    }
    let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {}", sanitize::line(s))).collect();
    let every = if refreshing { format!("; every {delay}s") } else { String::new() };
    format!("{} sandboxes{}{}{every}\n", list.len(), if states.is_empty() { "" } else { ": " }, states.join(", "))
}

fn row(s: &Value, cpu_pct: Option<f64>) -> Vec<String> {
    let text = |k: &str| s[k].as_str().map_or("-".to_string(), sanitize::line);
    let num = |k: &str| s[k].as_u64().map_or("-".to_string(), |v| v.to_string());
    vec![
        text("id"),
        text("agent"),
        text("task"),
        num("port"),
        text("state"),
        s["uptime_s"].as_u64().map_or("-".into(), duration),
        num("restarts"),
        s["memory_bytes"].as_u64().map_or("-".into(), bytes),
        cpu_pct.map_or("-".into(), |p| format!("{p:.1}")),
        s["cpu_seconds"].as_f64().map_or("-".into(), |c| duration(c as u64)),
        num("pids"),
        num("connections"),
        match &s["denials"] {
            Value::Number(n) => n.to_string(),
            // A richer record (per kind): its total.
            Value::Object(o) => o.values().filter_map(Value::as_u64).sum::<u64>().to_string(),
            _ => "-".into(),
        },
    ]
}

fn table(rows: &[Vec<String>]) -> String {
    let cell = |text: &str, (_, width, right): (&str, usize, bool)| -> String {
        let cut: String = if text.chars().count() > width { text.chars().take(width - 1).chain(['~']).collect() } else { text.to_string() };
        if right { format!("{cut:>width$}") } else { format!("{cut:<width$}") }
    };
    let line = |cells: Vec<String>| cells.join(" ").trim_end().to_string() + "\n";
    let mut out = line(COLUMNS.iter().map(|c| cell(c.0, *c)).collect());
    for r in rows {
        out.push_str(&line(r.iter().zip(COLUMNS).map(|(t, c)| cell(t, c)).collect()));
    }
    out
}

/// 59s, 12m03s, 5h02m, 3d04h.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// 512B, 3.4K, 120.0M, 1.9G.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_escape_and_cut_what_requesters_chose_and_show_unknowns_as_dashes() {
        let s = serde_json::json!({ "id": "d-0000abcd", "agent": "evil\u{1b}]0;title\u{7}-agent-with-a-long-name", "task": null,
            "port": 8000, "state": "running", "uptime_s": 3725, "restarts": 1, "memory_bytes": 5_452_595, "cpu_seconds": 61.5,
            "pids": 4, "connections": 2, "denials": null });
        let r = row(&s, Some(12.34));
        assert_eq!(r[0], "d-0000abcd");
        assert!(!r[1].contains('\u{1b}') && r[1].starts_with("evil\\x1b"), "{}", r[1]);
        assert_eq!(&r[2..], ["-", "8000", "running", "1h02m", "1", "5.2M", "12.3", "1m01s", "4", "2", "-"]);
        let t = table(&[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID          AGENT"), "{t}");
        assert!(lines[1].contains("evil\\x1b]0;titl~"), "cut to its column: {t}");
        assert!(!t.contains('\u{1b}'));
        assert_eq!(row(&serde_json::json!({ "denials": { "landlock": 2, "seccomp": 3 } }), None)[12], "5");
    }

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!([duration(59), duration(723), duration(18120), duration(273600)], ["59s", "12m03s", "5h02m", "3d04h"]);
        assert_eq!([bytes(512), bytes(3482), bytes(125_829_120), bytes(2_040_109_465)], ["512B", "3.4K", "120.0M", "1.9G"]);
    }
}
