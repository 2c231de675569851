//! What closes a sandbox. Namespaces and id maps (`ns`: the parent writes the
//! maps), capabilities (`caps`) and inherited descriptors (`fds`), dropped in
//! the child before exec; Landlock (`landlock`: rules derived by the policy and
//! checked against the host by the parent; `landlock::apply`: the ruleset built
//! by the sandbox init, enforced in the payload) and seccomp
//! (`seccomp::compile`: by the parent before the clone, the handoff's notify
//! filter too; `seccomp::load`: last in the payload, async-signal-safe).

pub mod caps;
pub mod fds;
pub mod landlock;
pub mod ns;
pub mod seccomp;
