//! The worker's audit trail: one JSON line per activity (and per lease or
//! connection event), appended to `--audit-log` (0640) and written to stderr
//! (journald). Arguments are logged sanitized: control characters escaped,
//! strings cut at 256 bytes, and no secret ever (activity inputs carry none;
//! results, which do, are never logged).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

pub struct Audit(Option<Mutex<std::fs::File>>);

impl Audit {
    pub fn open(path: Option<&Path>) -> Result<Audit, String> {
        let Some(path) = path else { return Ok(Audit(None)) };
        Ok(Audit(Some(Mutex::new(swarmcell::daemon::audit::open_log(path)?))))
    }

    pub fn event(&self, event: &str, fields: Value) {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut v = json!({ "time": time, "event": event });
        if let (Some(o), Some(f)) = (v.as_object_mut(), fields.as_object()) {
            o.extend(f.clone());
        }
        let line = format!("{v}\n");
        if let Some(f) = &self.0
            && let Ok(mut f) = f.lock()
            && let Err(e) = f.write_all(line.as_bytes())
        {
            eprintln!("swarmcell-worker: audit log write failed: {e}");
        }
        eprint!("{line}");
    }
}

/// A value as it may be logged: strings cut at 256 bytes and escaped, at most
/// 32 keys or items per level, 4 levels deep.
pub fn sanitize(v: &Value) -> Value {
    fn go(v: &Value, depth: usize) -> Value {
        match v {
            Value::String(s) => {
                let mut end = s.len().min(256);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                let cut = if end < s.len() { "…" } else { "" };
                Value::String(format!("{}{cut}", swarmcell::sanitize::line(&s[..end])))
            }
            _ if depth >= 4 => Value::String("…".into()),
            Value::Array(a) => Value::Array(a.iter().take(32).map(|x| go(x, depth + 1)).collect()),
            Value::Object(o) => Value::Object(o.iter().take(32).map(|(k, x)| (swarmcell::sanitize::line(k), go(x, depth + 1))).collect()),
            other => other.clone(),
        }
    }
    go(v, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_arguments_are_cut_and_escaped() {
        let v = sanitize(&json!({ "command": "x".repeat(1000), "e": "\u{1b}[31mred", "n": 3 }));
        assert!(v["command"].as_str().unwrap().len() < 300);
        assert!(!v["e"].as_str().unwrap().contains('\u{1b}'));
        assert_eq!(v["n"], 3);
    }
}
