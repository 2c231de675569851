//! Host side (launcher, root, in the host's network namespace unless a thread
//! has entered the sandbox's): the network services of one sandbox. Inbound:
//! the broker (`handoff`, the default, or the `broker` relay) behind the uid
//! check (`sock_diag`). Outbound: forwards and the egress proxy on one bounded
//! event loop (`outbound`, with `egress`'s rules and `http1`'s parser). And the
//! health checks (`health`), made inside the sandbox's namespace.

pub mod broker;
pub mod broker_stats;
pub mod egress;
pub mod handoff;
pub mod health;
pub mod http1;
pub mod outbound;
pub mod sock_diag;
