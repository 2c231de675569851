//! swarmcell: a hardened sandbox launcher for AI coding-agent servers.
//!
//! Module map, with the privilege boundary in the names:
//! - `policy`: the TOML policy, validated before anything is started;
//! - `launch::parent` (host root) / `launch::init` (sandbox pid 1) /
//!   `launch::payload` (fork → exec), talking over `launch::channel`;
//! - `fs::host_binds` (parent) and `fs::rootfs` (child): the filesystem view;
//! - `ns` (maps, namespace diagnostics), `caps`, `fds`, `uidalloc`;
//! - `cgroups` (parent): the sandbox's cgroup, v2 or v1, limits, kill, gc;
//! - `disk` (parent): disk and inode limits on the worktree (project quotas, or measuring);
//! - `landlock` and `seccomp`: prepared before the fork, applied last in the payload;
//! - `sys`: every raw system call.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod bench_all;
pub mod bench_daemon;
pub mod broker;
pub mod broker_stats;
pub mod caps;
pub mod cgroups;
pub mod config_file;
pub mod daemon;
pub mod disk;
pub mod egress;
pub mod fds;
pub mod fs;
pub mod git;
pub mod handoff;
pub mod health;
pub mod http1;
pub mod inspect;
pub mod landlock;
pub mod launch;
pub mod lease;
pub mod logging;
pub mod ns;
pub mod outbound;
pub mod phases;
pub mod policy;
pub mod ports;
pub mod probe;
pub mod probe_net;
pub mod sanitize;
pub mod seccomp;
pub mod sock_diag;
pub mod sys;
pub mod uidalloc;
pub mod verify;
pub mod verify_git;
pub mod verify_probe;
