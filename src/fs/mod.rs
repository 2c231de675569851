//! The sandbox's filesystem view.
//!
//! - [`host_binds`] runs in the **parent** (host root): it resolves host paths and
//!   turns each into a detached, already-flagged mount tree (`open_tree`).
//! - [`rootfs`] runs in the **child** (sandbox init, inside the new user and mount
//!   namespaces): it builds a tmpfs root, attaches those trees, mounts /proc, /dev
//!   and /tmp, then `pivot_root`s and detaches the host tree.
//! - [`etc`] renders the minimal /etc (pure functions).

pub mod etc;
pub mod host_binds;
pub mod rootfs;
pub mod safe_open;
