//! Keeping this worker's sandboxes alive only while it can serve them: their
//! leases at the daemon are renewed every third of a lease while Temporal
//! answers; once Temporal has not answered for `grace`, the worker stops them
//! itself (INV-005). A worker killed outright renews nothing: the daemon stops
//! its sandboxes when their leases run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use temporalio_client::Client;

use crate::activities::State;

/// Whether Temporal answered recently, shared by the two loops.
pub struct Reachability {
    last_ok: std::sync::Mutex<Instant>,
}

impl Reachability {
    pub fn new() -> Arc<Reachability> {
        Arc::new(Reachability { last_ok: std::sync::Mutex::new(Instant::now()) })
    }
    fn ok(&self) {
        if let Ok(mut t) = self.last_ok.lock() {
            *t = Instant::now();
        }
    }
    fn since(&self) -> Duration {
        self.last_ok.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }
}

/// Ask Temporal for its system info every 5 s (5 s limit each).
pub async fn watch_temporal(client: Client, reach: Arc<Reachability>, state: Arc<State>, grace: Duration) {
    use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
    let mut lost = false;
    loop {
        let mut svc = client.connection().workflow_service();
        let r =
            tokio::time::timeout(Duration::from_secs(5), svc.get_system_info(temporalio_client::tonic::Request::new(GetSystemInfoRequest {}))).await;
        if matches!(r, Ok(Ok(_))) {
            reach.ok();
            if lost {
                state.audit.event("temporal_reachable", json!({ "host": state.host, "outcome": "ok" }));
                lost = false;
            }
        } else if !lost && reach.since() > grace {
            lost = true;
            let ids = state.known_ids();
            state.audit.event("temporal_lost", json!({ "host": state.host, "grace_s": grace.as_secs(), "stopping": ids, "outcome": "stopping" }));
            for id in ids {
                let _ = state.daemon.stop(&id).await;
                state.forget(&id);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Renew every known sandbox's lease each third of a lease, while Temporal is reachable.
pub async fn renew_loop(state: Arc<State>, reach: Arc<Reachability>, grace: Duration) {
    let period = Duration::from_millis(state.lease_s * 1000 / 3).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(period).await;
        let ids = state.known_ids();
        if ids.is_empty() || reach.since() > grace {
            continue;
        }
        match state.daemon.request(&json!({ "cmd": "renew", "ids": ids }), Duration::from_secs(10)).await {
            Ok(a) => {
                // Gone at the daemon (stopped, or expired): forgotten here.
                for id in a["missing"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                    state.forget(id);
                }
            }
            Err(e) => eprintln!("swarmcell-worker: lease renewal: {}", swarmcell::sanitize::line(&e)),
        }
    }
}
