//! swarmcell: a hardened sandbox launcher for AI coding-agent servers.
//!
//! The layout follows the privilege boundary (see ARCHITECTURE.md):
//! - `launch`: one sandbox's life: `launch::parent` (the launcher, host root),
//!   `launch::init` (the sandbox's pid 1), `launch::payload` (fork → exec),
//!   talking over `launch::channel`; `launch::events` to the supervisor;
//! - `confine`: what closes the sandbox: namespaces, capabilities, fds,
//!   Landlock and seccomp (compiled by the parent, applied by the child);
//! - `fs`: the filesystem view (`host_binds` parent side, `rootfs` child
//!   side) and `safe_open`, the only way root touches sandbox-writable trees;
//! - `host`: host resources a sandbox leases or is bounded by (host side only):
//!   uids, ports, lease files, cgroups, disk limits, config file checks;
//! - `net`: the launcher's network services for a sandbox (host side): the
//!   broker (relay and handoff), the uid check, outbound forwards and the
//!   egress proxy, health checks;
//! - `git`: worktree records, the private git layer, the publisher;
//! - `policy`: the TOML policy, validated before anything is started;
//! - `daemon`: the supervisor; `denials`: the denial stream it reads from the
//!   kernel's audit records, and tripwires; `incident`: freezing a sandbox and
//!   its forensic bundle; `attest`: what auditors run (`verify`, its
//!   in-sandbox probes, `inspect`); `bench`: benchmarks;
//! - leaf helpers nothing depends back on: `sys` (raw system calls), `sanitize`,
//!   `logging`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attest;
pub mod bench;
pub mod cli;
pub mod confine;
pub mod daemon;
pub mod denials;
pub mod fs;
pub mod git;
pub mod host;
pub mod incident;
pub mod launch;
pub mod logging;
pub mod net;
pub mod phases;
pub mod policy;
pub mod progress;
pub mod sanitize;
pub mod sys;
pub mod worker;
