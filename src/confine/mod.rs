//! What closes a sandbox. Namespaces and id maps (`ns`: the parent writes the
//! maps), capabilities (`caps`) and inherited descriptors (`fds`), dropped in
//! the child before exec; Landlock (`landlock`: rules derived by the policy,
//! the ruleset built by the sandbox init, enforced in the payload) and seccomp
//! (`seccomp`: compiled by the parent before the fork, loaded last in the
//! payload; the handoff's notify filter too).

pub mod caps;
pub mod fds;
pub mod landlock;
pub mod ns;
pub mod seccomp;
