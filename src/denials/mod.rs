//! Denials: every access a sandbox was refused, as one attributed stream
//! (daemon side, host root). Sources:
//! - the kernel: Landlock (ABI 7) and seccomp audit records, read from the
//!   audit netlink read-only group ([`audit_nl`], [`record`]) by a thread
//!   of the daemon and attributed to sandboxes ([`hub`]);
//! - the launchers: egress proxy refusals and refused ingress connections
//!   (`crate::launch::events`).
//!
//! They are counted per (sandbox, kind, detail) and reported at a bounded rate
//! ([`aggregate`]) as `policy_violation` audit events, the
//! `swarmcell_denials_total` metric, and `swarmcell denials` (`crate::cli::denials`).

pub mod aggregate;
pub mod audit_nl;

pub mod hub;
pub mod record;
pub mod tripwire;
pub mod verify;

use serde::{Deserialize, Serialize};

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A Landlock filesystem access.
    Fs,
    /// A Landlock TCP rule, or a socket family the seccomp filter refuses.
    Net,
    /// A Landlock scope (abstract unix socket, signal).
    Scope,
    /// A system call the seccomp filter refuses.
    Syscall,
    /// A host the egress proxy refused.
    Egress,
    /// A connection to the sandbox's port from a uid that is not allowed.
    Ingress,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fs => "fs",
            Kind::Net => "net",
            Kind::Scope => "scope",
            Kind::Syscall => "syscall",
            Kind::Egress => "egress",
            Kind::Ingress => "ingress",
        }
    }

    pub const ALL: [Kind; 6] = [Kind::Fs, Kind::Net, Kind::Scope, Kind::Syscall, Kind::Egress, Kind::Ingress];
}
