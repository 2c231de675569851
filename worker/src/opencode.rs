//! OpenCode's HTTP API on a sandbox's host port (loopback; INV-004), with the
//! sandbox's secret as basic auth. The worker's uid is the sandbox's
//! requester, one of the uids the launcher lets through.

use std::time::Duration;

use serde_json::{Value, json};

/// Largest answer read from a sandbox's server.
const MAX_BODY: usize = 16 << 20;
/// Most output returned to the workflow (Temporal's payloads are limited to 2 MB).
const MAX_OUTPUT: usize = 256 << 10;

pub struct OpenCode {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl OpenCode {
    pub fn new(port: u16, secret: Option<&str>) -> Result<OpenCode, String> {
        // No redirects: the server is the sandbox's payload, and following
        // one would carry the worker (and the request's body) to any address
        // the host reaches but the sandbox does not.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(3600))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let auth = secret.map(|s| swarmcell::net::health::basic_auth("opencode", s)).unwrap_or_default();
        Ok(OpenCode { http, base: format!("http://127.0.0.1:{port}"), auth })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>, limit: Duration) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(&url).header("content-type", "application/json").body(body.unwrap_or(json!({})).to_string()),
            _ => self.http.get(&url),
        };
        if !self.auth.is_empty() {
            req = req.header("authorization", &self.auth);
        }
        let mut resp = req.timeout(limit).send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        // The sandbox's server is untrusted: its answer is read up to a bound.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{method} {path}: {e}"))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{method} {path}: the answer is larger than {} MiB", MAX_BODY >> 20));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path}: HTTP {status}: {}", text.chars().take(300).collect::<String>()));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} {path}: not JSON: {e}"))
    }

    pub async fn healthy(&self) -> bool {
        self.call("GET", "/global/health", None, Duration::from_secs(5)).await.is_ok_and(|v| v["healthy"] == true)
    }

    pub async fn new_session(&self) -> Result<String, String> {
        let s = self.call("POST", "/session", Some(json!({})), Duration::from_secs(30)).await?;
        // Used in later request paths: only a well-formed id is.
        let id = s["id"].as_str().filter(|id| crate::input::valid_session(id)).ok_or("POST /session: no valid session id")?;
        Ok(id.to_string())
    }

    /// Run `command` with `arguments` in `session`: `shell` through the
    /// agent's shell tool (no model needed), anything else as an OpenCode
    /// command. The tool or text output of the resulting message.
    pub async fn run(&self, session: &str, command: &str, arguments: &str) -> Result<Value, String> {
        let answer = if command == "shell" {
            self.call(
                "POST",
                &format!("/session/{session}/shell"),
                Some(json!({ "agent": "build", "command": arguments })),
                Duration::from_secs(3600),
            )
            .await?
        } else {
            self.call(
                "POST",
                &format!("/session/{session}/command"),
                Some(json!({ "command": command, "arguments": arguments })),
                Duration::from_secs(3600),
            )
            .await?
        };
        // The answer is the assistant message; its parts hold the output. (Read
        // back from the session when the answer carries no parts.)
        let parts = match answer["parts"].as_array() {
            Some(p) if !p.is_empty() => p.clone(),
            _ => {
                let msgs = self.call("GET", &format!("/session/{session}/message"), None, Duration::from_secs(30)).await?;
                msgs.as_array().and_then(|m| m.last()).and_then(|m| m["parts"].as_array()).cloned().unwrap_or_default()
            }
        };
        let output: Vec<String> = parts
            .iter()
            .filter_map(|p| match p["type"].as_str() {
                Some("tool") => p["state"]["output"].as_str().or(p["state"]["error"].as_str()).map(str::to_string),
                Some("text") => p["text"].as_str().map(str::to_string),
                _ => None,
            })
            .collect();
        let mut output = output.join("\n");
        let truncated = output.len() > MAX_OUTPUT;
        if truncated {
            let mut end = MAX_OUTPUT;
            while !output.is_char_boundary(end) {
                end -= 1;
            }
            output.truncate(end);
        }
        let message_id = answer["info"]["id"].as_str().map(|s| s.chars().take(128).collect::<String>());
        Ok(json!({ "output": output, "truncated": truncated, "message_id": message_id }))
    }
}
