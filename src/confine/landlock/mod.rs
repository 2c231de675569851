//! Landlock. The rules are data (`LandlockSpec`, derived from the policy by
//! `Policy::landlock_rules`) that the parent checks against the host
//! (`check_host`) and sends to the sandbox; `apply` is the child's side: the
//! sandbox init prepares the ruleset after `pivot_root` (paths are sandbox
//! paths) and before forking, and the payload enforces it after dropping
//! capabilities and before loading seccomp.
//!
//! - filesystem: read/execute beneath the read-only system paths, read-write
//!   beneath the worktree, /tmp and the policy's read-write paths, read/write on
//!   the device nodes; nothing else, so a path that a mount mistake made visible
//!   stays out of reach;
//! - network: no TCP rule. The sandbox's loopback is its own (a network
//!   namespace with only `lo`): binding and connecting any port there protects
//!   nothing and would break an agent's test servers. The only host sockets a
//!   payload holds are connections handed off by the broker, which a locked
//!   socket filter pins to their client (see `crate::net::handoff`);
//! - scopes (ABI >= 6): abstract unix sockets and signals stay inside the sandbox.

pub mod apply;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The highest ABI whose features swarmcell uses (scopes).
pub const WANTED_ABI: i32 = 6;
/// What each feature needs.
pub const NET_ABI: i32 = 4;
pub const SCOPE_ABI: i32 = 6;
/// Audit records of denials, and the restrict_self log flags.
pub const LOG_ABI: i32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Enforce what the kernel supports; warn about what it does not.
    #[default]
    BestEffort,
    /// Refuse to start unless every rule of the policy can be enforced.
    Required,
    /// No Landlock (tests that prove the other layers, or kernels without it).
    Off,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::BestEffort => "best-effort",
            Mode::Required => "required",
            Mode::Off => "off",
        })
    }
}

/// What the parent decided, sent with the spec; paths are sandbox paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LandlockSpec {
    pub mode: Mode,
    pub read_exec: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    pub device_files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error(
        "Landlock is not available on this kernel (not built in, or missing from the lsm= boot parameter); add `landlock` to lsm= on the kernel command line, or set `landlock = \"best-effort\"` in the policy"
    )]
    Absent,
    #[error(
        "Landlock ABI {have} is below the {WANTED_ABI} this policy requires (network rules need {NET_ABI}, scopes {SCOPE_ABI}); run Linux >= 6.12 or set `landlock = \"best-effort\"` in the policy"
    )]
    TooOld { have: i32 },
    #[error("landlock: {0}")]
    Ruleset(String),
}

/// The running kernel's Landlock ABI version (0 when unavailable).
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the version query takes a null attribute pointer and size 0.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION) };
    if v < 0 { 0 } else { v as i32 }
}

/// Parent side, before anything starts: refuse a `required` policy the kernel
/// cannot enforce; describe what a `best-effort` one will lack.
pub fn check_host(mode: Mode) -> Result<Option<String>, LandlockError> {
    let abi = kernel_abi();
    match mode {
        Mode::Off => Ok(None),
        Mode::Required if abi == 0 => Err(LandlockError::Absent),
        Mode::Required if abi < WANTED_ABI => Err(LandlockError::TooOld { have: abi }),
        Mode::Required => Ok(None),
        Mode::BestEffort => Ok(describe_missing(abi)),
    }
}

fn describe_missing(abi: i32) -> Option<String> {
    match abi {
        0 => Some("Landlock is not available: the sandbox relies on its mounts alone for filesystem confinement".into()),
        a if a < NET_ABI => Some(format!("Landlock ABI {a}: no TCP bind/connect rules (need {NET_ABI}) and no scopes (need {SCOPE_ABI})")),
        a if a < SCOPE_ABI => Some(format!("Landlock ABI {a}: no abstract-socket and signal scopes (need {SCOPE_ABI})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_best_effort_sandbox_lacks_is_named_per_abi() {
        assert!(describe_missing(0).unwrap().contains("not available"));
        assert!(describe_missing(3).unwrap().contains("no TCP bind/connect rules"));
        assert!(describe_missing(5).unwrap().contains("scopes"));
        assert_eq!(describe_missing(6), None);
        assert_eq!(describe_missing(7), None);
    }

    #[test]
    fn required_mode_errors_name_the_cause_and_the_fix() {
        let absent = LandlockError::Absent.to_string();
        assert!(absent.contains("lsm=") && absent.contains("best-effort"), "{absent}");
        let old = LandlockError::TooOld { have: 3 }.to_string();
        assert!(old.contains("ABI 3") && old.contains("6.12"), "{old}");
    }
}
