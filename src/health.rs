//! Parent side: wait until the payload is healthy (INV-003) through the same
//! path clients use (the broker port), with `reqwest`.
//!
//! Every request has its own short timeout inside the overall deadline: a server
//! may accept connections while it is still starting and never answer a request
//! made then (seen with opencode 1.18.34 in its first second). Polling starts
//! every millisecond and backs off to 25 ms, so a fast server is seen at once
//! and a slow one costs little.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Check {
    /// `GET http://127.0.0.1:PORT<path>` until a 2xx answer.
    Http { port: u16, path: String },
    /// A TCP connection to the inner port inside the sandbox is enough (relay).
    Tcp { netns: NetnsPort },
    /// With socket handoff: the payload has taken over the host port's socket
    /// (the flag) and a connection to it succeeds.
    HandedOff { port: u16, flag: Arc<AtomicBool> },
}

#[derive(Clone)]
pub struct NetnsPort {
    pub netns: crate::broker::Netns,
    pub port: u16,
}

impl std::fmt::Debug for NetnsPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inner port {}", self.port)
    }
}

impl PartialEq for NetnsPort {
    fn eq(&self, other: &Self) -> bool {
        self.port == other.port
    }
}

impl Eq for NetnsPort {}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("not healthy after {}", crate::policy::units::HumanDuration(*.0))]
    Timeout(Duration),
    #[error("health check cancelled")]
    Cancelled,
    #[error("health check: {0}")]
    Setup(String),
}

pub const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Block until healthy, the deadline passes, or `cancel` is set. Returns how
/// long it took.
pub fn wait(check: &Check, deadline: Duration, cancel: &Arc<AtomicBool>) -> Result<Duration, HealthError> {
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| HealthError::Setup(e.to_string()))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PER_REQUEST_TIMEOUT.min(deadline))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| HealthError::Setup(e.to_string()))?;
    let mut interval = Duration::from_millis(1);
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(HealthError::Cancelled);
        }
        let healthy = match check {
            Check::Http { port, path } => rt.block_on(async {
                let remaining = deadline.saturating_sub(start.elapsed());
                let req = client.get(format!("http://127.0.0.1:{port}{path}")).timeout(PER_REQUEST_TIMEOUT.min(remaining).max(Duration::from_millis(1)));
                let r = req.send().await;
                tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, result = ?r.as_ref().map(|r| r.status()).map_err(|e| e.to_string()), "health attempt");
                matches!(r, Ok(r) if r.status().is_success())
            }),
            Check::Tcp { netns } => netns.netns.connect(netns.port).is_ok(),
            Check::HandedOff { port, flag } => flag.load(Ordering::SeqCst) && std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
        };
        if healthy {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return Err(HealthError::Timeout(deadline));
        }
        std::thread::sleep(interval.min(deadline.saturating_sub(start.elapsed())));
        interval = (interval * 2).min(Duration::from_millis(25));
    }
}
