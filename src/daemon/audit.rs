//! The audit log: one JSON line per event (time, event, and the event's fields:
//! sandbox id, agent, uid, outcome), appended to a 0640 file and also emitted
//! on the log (stderr, hence journald under systemd).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde_json::{Value, json};

/// Most recent events kept per sandbox (for `ctl events` and bundles), and
/// most sandboxes kept.
const RECENT_PER_SANDBOX: usize = 500;
const RECENT_SANDBOXES: usize = 256;

pub struct Audit(std::fs::File, Recent);

/// The latest events of each sandbox (those with an `id` field).
#[derive(Default)]
pub struct Recent {
    by_id: std::collections::HashMap<String, std::collections::VecDeque<Value>>,
    order: std::collections::VecDeque<String>,
}

impl Audit {
    pub fn open(path: &Path) -> Result<Audit, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(Audit(open_log(path)?, Recent::default()))
    }

    pub fn event(&mut self, event: &str, fields: Value) {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut v = json!({ "time": time, "event": event });
        if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
            o.extend(f.clone());
        }
        if let Err(e) = writeln!(self.0, "{v}") {
            // The event still reaches the log below; say that the file missed it.
            tracing::error!(error = %e, "audit log write failed");
        }
        tracing::info!(target: "audit", "{v}");
        if let Some(id) = v["id"].as_str().map(str::to_string) {
            let r = &mut self.1;
            if !r.by_id.contains_key(&id) {
                r.order.push_back(id.clone());
                while r.order.len() > RECENT_SANDBOXES {
                    if let Some(old) = r.order.pop_front() {
                        r.by_id.remove(&old);
                    }
                }
            }
            let q = r.by_id.entry(id).or_default();
            q.push_back(v);
            if q.len() > RECENT_PER_SANDBOX {
                q.pop_front();
            }
        }
    }

    /// The latest events of sandbox `id`, oldest first.
    pub fn recent(&self, id: &str) -> Vec<Value> {
        self.1.by_id.get(id).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    /// Keep the recent events across a reopen of the file.
    pub fn take_recent(&mut self, from: &mut Audit) {
        self.1 = std::mem::take(&mut from.1);
    }
}

/// An audit log opened for appending: 0640, never through a symlink (the
/// daemon's and the worker's).
pub fn open_log(path: &Path) -> Result<std::fs::File, String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("audit log {}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o640)).map_err(|e| format!("audit log {}: {e}", path.display()))?;
    Ok(f)
}
