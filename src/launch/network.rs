//! Parent side (host root): the launcher's network services for one sandbox:
//! the outbound forwards and egress proxy (one event loop), the inbound broker
//! (socket handoff, or the relay) and the health check.

use std::os::fd::{AsRawFd, OwnedFd};

use super::request::{BrokerMode, HealthMode, RunError, RunRequest};
use crate::sys;

/// The launcher's network services for one sandbox: outbound forwards and the
/// egress proxy, the inbound broker (relay, or socket handoff once the payload
/// runs) and the health check. Each stops its threads when dropped.
pub(super) struct Network<'a> {
    pub(super) req: &'a RunRequest,
    pub(super) id: String,
    pub(super) lease: Option<&'a crate::host::ports::PortLease>,
    pub(super) netns: Option<crate::net::broker::Netns>,
    pub(super) relay: Option<crate::net::broker::Broker>,
    /// The inbound broker's counters (a handoff counts connections, not bytes:
    /// it has no data path).
    pub(super) relay_stats: std::sync::Arc<crate::net::broker_stats::SharedCounters>,
    pub(super) handoff: Option<crate::net::handoff::Handoff>,
    /// The outbound forwards and the egress proxy, on one bounded event loop,
    /// started at the first connection to one of their listeners (a payload
    /// that never connects out costs no thread and no runtime).
    pub(super) outbound: Option<crate::net::outbound::OutboundLoop>,
    pending_outbound: Option<PendingOutbound>,
    pub(super) health: Option<HealthWatch>,
    /// Who may connect to the host port (None: anyone, `--allow-any-uid`).
    pub(super) ingress: Option<crate::net::broker::Ingress>,
}

/// What an outbound listener inside the sandbox is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outbound {
    Forward(u16),
    Proxy,
}

/// The outbound listeners until their first connection.
pub(super) struct PendingOutbound {
    forwards: Vec<(std::net::TcpListener, u16)>,
    proxy: Option<(std::net::TcpListener, crate::net::egress::Rules)>,
    settings: crate::net::outbound::Settings,
}

impl<'a> Network<'a> {
    pub(super) fn start(
        req: &'a RunRequest,
        id: &str,
        lease: Option<&'a crate::host::ports::PortLease>,
        // The outbound listeners, the sandbox's network namespace, and the
        // host uid the payload works for (its upstream sockets are that uid's).
        (outbound, netns, owner): (Vec<(Outbound, std::net::TcpListener)>, Option<crate::net::broker::Netns>, u32),
        relay_stats: std::sync::Arc<crate::net::broker_stats::SharedCounters>,
        ingress: Option<crate::net::broker::Ingress>,
        health_request: std::sync::Arc<[u8]>,
    ) -> Result<Network<'a>, RunError> {
        let inner = req.policy.network.inner_port;
        let mut net = Network {
            req,
            id: id.to_string(),
            lease,
            netns,
            relay: None,
            relay_stats,
            handoff: None,
            outbound: None,
            pending_outbound: None,
            health: None,
            ingress,
        };
        let (mut forwards, mut proxy) = (Vec::new(), None);
        for (kind, listener) in outbound {
            match kind {
                Outbound::Forward(p) => forwards.push((listener, p)),
                Outbound::Proxy => proxy = Some((listener, req.egress_rules())),
            }
        }
        if !forwards.is_empty() || proxy.is_some() {
            // The payload's upstream sockets are its owner's, never root's.
            let settings = crate::net::outbound::Settings { connect_as: owner, ..crate::net::outbound::Settings::of(&req.policy.network) };
            net.pending_outbound = Some(PendingOutbound { forwards, proxy, settings });
        }
        if let (Some(lease), Some(ns)) = (lease, &net.netns) {
            if req.broker == BrokerMode::Relay {
                net.relay = Some(start_relay(req, lease, ns, &net.relay_stats, net.ingress.clone())?);
            }
            // Always inside the sandbox's namespace, never through the host's
            // (with a handoff, too: the payload listens there itself).
            let check = match req.health {
                HealthMode::Http => crate::net::health::Check::Http { netns: Some(ns.clone()), port: inner, request: health_request },
                HealthMode::Tcp => crate::net::health::Check::Tcp { netns: Some(ns.clone()), port: inner },
            };
            net.health = Some(HealthWatch::start(check, req.health_timeout.unwrap_or(req.policy.health.timeout.0))?);
        }
        Ok(net)
    }

    /// The outbound listeners not served yet: the wait loop polls them and
    /// calls [`Network::serve_outbound`] at the first connection.
    pub(super) fn pending_outbound_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.pending_outbound
            .as_ref()
            .map_or(Vec::new(), |p| p.forwards.iter().map(|(l, _)| l.as_raw_fd()).chain(p.proxy.as_ref().map(|(l, _)| l.as_raw_fd())).collect())
    }

    /// Start the outbound event loop (a connection is waiting).
    pub(super) fn serve_outbound(&mut self) -> Result<(), RunError> {
        let Some(p) = self.pending_outbound.take() else { return Ok(()) };
        crate::phases::mark("outbound loop starting");
        self.outbound = Some(
            crate::net::outbound::OutboundLoop::start(&self.id, p.forwards, p.proxy, p.settings)
                .map_err(|e| RunError::Setup(format!("outbound forwards and egress proxy: {e}")))?,
        );
        Ok(())
    }

    /// The payload runs: broker by handoff (accept the host port, serve the
    /// payload's accept notifications), or relay when that cannot be set up.
    pub(super) fn on_running(&mut self, notify: Option<OwnedFd>) {
        let (Some(lease), Some(ns)) = (self.lease, &self.netns) else { return };
        if self.req.broker != BrokerMode::Handoff {
            return;
        }
        let inner = self.req.policy.network.inner_port;
        let started = notify.ok_or_else(|| "no accept-notification listener from the sandbox".to_string()).and_then(|n| {
            let listener = lease.listener.try_clone().map_err(|e| e.to_string())?;
            let cfg = crate::net::handoff::Config {
                inner,
                ingress: self.ingress.clone(),
                max_pending: self.req.max_connections,
                on_inner_listen: self.health.as_ref().map(|h| h.kick.clone()),
            };
            crate::net::handoff::Handoff::start(n, listener, ns.clone(), cfg, self.relay_stats.clone()).map_err(|e| e.to_string())
        });
        match started {
            Ok(h) => self.handoff = Some(h),
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "socket handoff unavailable; relaying connections instead");
                let _ = lease.listener.set_nonblocking(false); // the handoff may have set it
                self.relay = start_relay(self.req, lease, ns, &self.relay_stats, self.ingress.clone()).ok();
            }
        }
    }

    /// Stop the health check, then (by dropping them) every service.
    pub(super) fn finish(mut self) {
        if let Some(h) = self.health.take() {
            h.finish();
        }
    }
}

pub(super) fn start_relay(
    req: &RunRequest,
    lease: &crate::host::ports::PortLease,
    ns: &crate::net::broker::Netns,
    stats: &std::sync::Arc<crate::net::broker_stats::SharedCounters>,
    ingress: Option<crate::net::broker::Ingress>,
) -> Result<crate::net::broker::Broker, RunError> {
    let listener = lease.listener.try_clone().map_err(|e| RunError::Setup(format!("broker listener: {e}")))?;
    let (inner, idle) = (req.policy.network.inner_port, req.policy.network.idle_timeout.0);
    crate::net::broker::Broker::start_checked(
        listener,
        crate::net::broker::Dest::Inside(ns.clone(), inner),
        req.max_connections,
        stats.clone(),
        idle,
        ingress,
    )
    .map_err(|e| RunError::Setup(format!("starting the broker: {e}")))
}

/// The health check, on a thread of its own; the wait loop polls `done_fd`.
pub(super) struct HealthWatch {
    pub(super) cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) result: std::sync::Arc<std::sync::Mutex<Option<Result<std::time::Duration, crate::net::health::HealthError>>>>,
    pub(super) done_r: OwnedFd,
    /// Written when the payload listens on its inner port (see
    /// [`crate::net::health::wait_kicked`]).
    pub(super) kick: std::sync::Arc<OwnedFd>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    pub(super) fn start(check: crate::net::health::Check, deadline: std::time::Duration) -> Result<HealthWatch, RunError> {
        let (done_r, done_w) = sys::pipe_cloexec().map_err(|source| RunError::Sys { what: "health pipe", source })?;
        let (kick_r, kick_w) = sys::pipe_cloexec().map_err(|source| RunError::Sys { what: "health pipe", source })?;
        for fd in [&kick_r, &kick_w] {
            sys::set_nonblocking(fd.as_raw_fd()).map_err(|source| RunError::Sys { what: "health pipe", source })?;
        }
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let result = std::sync::Arc::new(std::sync::Mutex::new(None));
        let thread = {
            let (cancel, result) = (cancel.clone(), result.clone());
            std::thread::Builder::new()
                .name("health".into())
                .spawn(move || {
                    let r = crate::net::health::wait_kicked(&check, deadline, &cancel, Some(kick_r.as_raw_fd()));
                    if let Ok(mut slot) = result.lock() {
                        *slot = Some(r);
                    }
                    drop(done_w); // EOF wakes the wait loop
                })
                .map_err(|e| RunError::Setup(format!("starting the health check: {e}")))?
        };
        Ok(HealthWatch { cancel, result, done_r, kick: std::sync::Arc::new(kick_w), thread: Some(thread) })
    }

    pub(super) fn done_fd(&self) -> i32 {
        self.done_r.as_raw_fd()
    }

    pub(super) fn result(&self) -> Option<Result<std::time::Duration, crate::net::health::HealthError>> {
        self.result.lock().ok().and_then(|mut r| r.take())
    }

    pub(super) fn cancel(&self) {
        self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn finish(mut self) {
        self.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
