//! The daemon's on-disk state: one JSON record per managed sandbox in
//! `STATE_DIR/records/ID.json` (0600, written to a temporary file and renamed,
//! so a crash leaves the old record or the new one, never half of one).
//!
//! A record holds what is needed to launch the sandbox again (agent, task,
//! worktree, argv, the requesting uid, its port, its secret) and which launcher process runs
//! it (pid and start time, so that a reused pid is never mistaken for it). After
//! a crash the next daemon reads them back ([`load_all`]), ends launchers that
//! are still alive ([`end_launchers`]) and relaunches or discards the sandboxes.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: String,
    pub agent: Option<String>,
    pub task: Option<String>,
    pub worktree: PathBuf,
    pub argv: Vec<String>,
    /// The policy it was launched with (None: the daemon's default).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Who asked for it (SO_PEERCRED uid).
    pub uid: u32,
    /// The host port it was given last (asked for again on a relaunch).
    pub port: Option<u16>,
    pub restarts: u32,
    /// The `swarmcell run` process, while one runs.
    pub launcher: Option<Process>,
    /// The sandbox's secret (policy `process.server_password_env`), kept for
    /// its restarts; the file is 0600 and the value is never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Stopped unless its requester renews it within this many seconds
    /// (`agent` requests; a relaunch after a crash starts a fresh lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u64>,
}

/// A process, identified beyond its pid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: ticks after boot at which it started.
    pub start_time: u64,
}

impl Process {
    pub fn of(pid: i32) -> Option<Process> {
        start_time(pid).map(|start_time| Process { pid, start_time })
    }

    /// Still running (not a zombie) and still the same process.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The fields of /proc/PID/stat from field 3 (the state) on: element `n - 3`
/// is field `n`. The command name (field 2) may contain spaces and
/// parentheses, so the split is after its last ')'.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(String::from).collect())
}

/// The start time (field 22) of a live (non-zombie) process.
fn start_time(pid: i32) -> Option<u64> {
    let fields = proc_stat(pid)?;
    if fields.first().is_some_and(|s| s == "Z" || s == "X") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The daemon's sandbox ids: `d-` and 8 hex digits (they name files).
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("d-").is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("records")
}

/// Write (or replace) a record.
pub fn save(state_dir: &Path, r: &Record) -> Result<(), String> {
    let dir = dir(state_dir);
    crate::host::lease::ensure_private_dir(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{}.json", r.id));
    let tmp = dir.join(format!(".{}.json.tmp", r.id));
    let text = serde_json::to_vec(r).map_err(|e| e.to_string())?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        f.write_all(&text)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("record {}: {e}", path.display()))
}

pub fn remove(state_dir: &Path, id: &str) {
    let _ = std::fs::remove_file(dir(state_dir).join(format!("{id}.json")));
}

/// Every record, and the names of files that are not one (left for the caller
/// to report; they are removed).
pub fn load_all(state_dir: &Path) -> (Vec<Record>, Vec<String>) {
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return (records, bad) };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let parsed = std::fs::read(&path).ok().and_then(|t| serde_json::from_slice::<Record>(&t).ok());
        match parsed {
            Some(r) if valid_id(&r.id) && name == format!("{}.json", r.id) => records.push(r),
            _ => {
                bad.push(name);
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    (records, bad)
}

/// SIGTERM every launcher of `records` still alive, wait up to `grace` for all
/// of them together, then SIGKILL the rest. Returns the ids whose launcher was
/// still running. (A launcher ends its sandbox on SIGTERM; on SIGKILL its
/// sandbox gets the parent-death signal and the caller's cgroup gc does the rest.)
pub fn end_launchers(records: &[Record], grace: Duration) -> Vec<String> {
    let live: Vec<(&str, Process)> = records.iter().filter_map(|r| r.launcher.filter(Process::alive).map(|p| (r.id.as_str(), p))).collect();
    for (_, p) in &live {
        // SAFETY: kill(2) on a pid we just checked is the recorded launcher (same start time).
        unsafe { libc::kill(p.pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while live.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, p) in live.iter().filter(|(_, p)| p.alive()) {
        // SAFETY: as above, re-checked just now.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
    live.into_iter().map(|(id, _)| id.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, launcher: Option<Process>) -> Record {
        Record {
            id: id.into(),
            agent: Some("a".into()),
            task: None,
            worktree: "/w".into(),
            argv: vec!["x".into()],
            policy: None,
            uid: 0,
            port: Some(8000),
            restarts: 0,
            launcher,
            secret: None,
            lease_s: None,
        }
    }

    fn temp_state() -> PathBuf {
        let d = std::env::temp_dir().join(format!("swarmcell-records-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn records_survive_a_round_trip_and_junk_is_removed() {
        let state = temp_state();
        save(&state, &record("d-00000001", None)).unwrap();
        save(&state, &record("d-00000002", Process::of(std::process::id() as i32))).unwrap();
        std::fs::write(dir(&state).join("junk.json"), "{").unwrap();
        save(&state, &record("..", None)).unwrap();
        let (records, mut bad) = load_all(&state);
        assert_eq!(records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["d-00000001", "d-00000002"]);
        bad.sort();
        assert_eq!(bad, ["...json", "junk.json"]);
        assert!(!dir(&state).join("junk.json").exists());
        remove(&state, "d-00000001");
        assert_eq!(load_all(&state).0.len(), 1);
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_live_launcher_is_ended_and_a_reused_pid_is_left_alone() {
        let mut live = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let mut other = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let p = Process::of(live.id() as i32).unwrap();
        // The second record names a pid that now belongs to a different process (start time differs).
        let reused = Process { pid: other.id() as i32, start_time: Process::of(other.id() as i32).unwrap().start_time + 1 };
        let ended = end_launchers(&[record("d-00000001", Some(p)), record("d-00000002", Some(reused))], Duration::from_secs(5));
        assert_eq!(ended, ["d-00000001"]);
        assert!(live.wait().unwrap().code().is_none(), "ended by a signal");
        assert!(other.try_wait().unwrap().is_none(), "a reused pid is not touched");
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!p.alive());
    }
}
