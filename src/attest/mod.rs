//! What auditors run. `verify`: the escape battery (host side sets up targets
//! and plants attacks, then runs sandboxes), `verify_probe` and `probe` (run
//! inside a sandbox as `swarmcell __probe`; also used by the tests), `probe_net`
//! (traffic generators for the bounds tests); `inspect`: live attestation of a
//! running sandbox from /proc and cgroupfs.

pub mod inspect;
pub mod probe;
pub mod probe_net;
pub mod probe_uring;
pub mod verify;
pub mod verify_probe;
