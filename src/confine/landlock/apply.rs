//! Landlock, the child's side: the sandbox init builds the ruleset, the
//! payload enforces it (between fork and exec).

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, PathFdError, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, Scope,
};

use super::{LandlockError, LandlockSpec, Mode};

/// Child side (sandbox init, after `pivot_root`): build the ruleset. `None` when
/// the policy turns Landlock off.
pub fn prepare(spec: &LandlockSpec) -> Result<Option<RulesetCreated>, LandlockError> {
    if spec.mode == Mode::Off {
        return Ok(None);
    }
    let err = |e: &dyn std::fmt::Display| LandlockError::Ruleset(e.to_string());
    let level = if spec.mode == Mode::Required { CompatLevel::HardRequirement } else { CompatLevel::BestEffort };
    let abi = ABI::V6;
    let ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err(&e))?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(|e| err(&e))?;
    let mut created = ruleset.create().map_err(|e| err(&e))?;
    let read = AccessFs::from_read(abi);
    let file_rw = AccessFs::from_file(abi) & !AccessFs::Execute;
    for (paths, access) in [(&spec.read_exec, read), (&spec.read_write, AccessFs::from_all(abi)), (&spec.device_files, file_rw)] {
        for path in paths {
            // A path the sandbox does not have (missing, or a file in the way)
            // gets no rule (opened at once: a separate existence check was one
            // more call per rule).
            let fd = match PathFd::new(path) {
                Ok(fd) => fd,
                Err(PathFdError::OpenCall { source, .. })
                    if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
                {
                    continue;
                }
                Err(e) => return Err(LandlockError::Ruleset(format!("{}: {e}", path.display()))),
            };
            // A file (/etc/ld.so.cache, /etc/localtime) takes only a file's
            // rights: the directory-only ones make a required ruleset fail.
            let is_dir = nix::sys::stat::fstat(std::os::fd::AsFd::as_fd(&fd)).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            let access = if is_dir { access } else { access & AccessFs::from_file(abi) };
            created = created.add_rule(PathBeneath::new(fd, access)).map_err(|e| LandlockError::Ruleset(format!("{}: {e}", path.display())))?;
        }
    }
    // ABI 7: the payload restricts itself and then execs, and the kernel by
    // default logs only denials of the executable that restricted itself; the
    // denials after the exec are the ones the daemon reports (`crate::denials`).
    // Records are written only while audit is enabled.
    if super::kernel_abi() >= super::LOG_ABI {
        created = created.log_new_exec(true).map_err(|e| err(&e))?;
    }
    Ok(Some(created))
}

/// Payload side: enforce the prepared ruleset on this process (and its future
/// children). Only `prctl` and `landlock_restrict_self` on success.
pub fn enforce(ruleset: RulesetCreated) -> Result<RestrictionStatus, LandlockError> {
    ruleset.restrict_self().map_err(|e| LandlockError::Ruleset(e.to_string()))
}
