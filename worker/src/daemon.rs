//! The worker's side of the daemon's control socket (unprivileged client):
//! one JSON request per connection, one JSON answer, each bounded in time.
//! The daemon authorises the worker's uid and validates every request again.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Clone)]
pub struct Daemon {
    pub socket: PathBuf,
}

impl Daemon {
    /// Send `req`; the daemon's answer (`ok` true or false), or why there was none.
    pub async fn request(&self, req: &Value, limit: Duration) -> Result<Value, String> {
        let io = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| format!("control socket {}: {e}", self.socket.display()))?;
            let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
            line.push(b'\n');
            s.write_all(&line).await.map_err(|e| format!("control socket {}: {e}", self.socket.display()))?;
            let mut answer = String::new();
            // Answers are small except `logs` (not used here); bounded anyway.
            let mut r = BufReader::new(s).take(4 << 20);
            r.read_line(&mut answer).await.map_err(|e| format!("control socket {}: {e}", self.socket.display()))?;
            if answer.is_empty() {
                return Err(format!("control socket {}: the daemon closed the connection without an answer", self.socket.display()));
            }
            serde_json::from_str::<Value>(answer.trim()).map_err(|e| format!("bad answer from the daemon: {e}"))
        };
        tokio::time::timeout(limit, io).await.map_err(|_| format!("the daemon did not answer within {}s", limit.as_secs()))?
    }

    pub async fn stop(&self, id: &str) -> Result<Value, String> {
        self.request(&json!({ "cmd": "stop", "id": id }), Duration::from_secs(30)).await
    }
}

use tokio::io::AsyncReadExt as _;
