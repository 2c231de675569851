//! Host side (launcher and daemon, root): the host resources a sandbox leases
//! or is bounded by. Leases (`lease`: flock'ed files in /run/swarmcell) of
//! per-sandbox host uids (`uidalloc`) and ports (`ports`); the sandbox's
//! cgroup (`cgroups`, v2 or v1); its disk and inode limits (`disk`); and the
//! check of files that configure the launcher (`config_file`).

pub mod cgroups;
pub mod config_file;
pub mod disk;
pub mod lease;
pub mod ports;
pub mod uidalloc;
