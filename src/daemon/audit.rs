//! The audit log: one JSON line per event (time, event, and the event's fields:
//! sandbox id, agent, uid, outcome), appended to a 0640 file and also emitted
//! on the log (stderr, hence journald under systemd).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde_json::{Value, json};

pub struct Audit(std::fs::File);

impl Audit {
    pub fn open(path: &Path) -> Result<Audit, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("audit log {}: {e}", path.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o640)).map_err(|e| format!("audit log {}: {e}", path.display()))?;
        Ok(Audit(f))
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
    }
}
