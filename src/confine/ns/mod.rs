//! Namespaces. Parent side: which namespaces a sandbox gets, writing its uid/gid
//! maps, and explaining why the kernel refused to create them.

pub mod user;

/// Namespaces created by the `clone` that starts the sandbox init. Init
/// enters two more itself (`unshare`): the network namespace first thing (its
/// creation, half a millisecond of `lo`'s and the stack's set-up, runs on the
/// init's CPU while the launcher writes the maps and makes the spec, instead
/// of inside the launcher's `clone`), and the cgroup namespace after the
/// parent has placed it in its cgroup, so that the namespace's root is the
/// sandbox's own cgroup.
pub const CLONE_FLAGS: libc::c_int = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// A one-line diagnosis for the sandbox init's failed `unshare(CLONE_NEWNET)`.
pub fn diagnose_netns_failure(errno: nix::errno::Errno) -> String {
    let limit = std::fs::read_to_string("/proc/sys/user/max_net_namespaces").ok();
    match (errno, limit.as_deref().map(str::trim)) {
        (nix::errno::Errno::ENOSPC, Some("0")) => {
            "network namespaces are disabled (user.max_net_namespaces = 0); enable them with `sysctl -w user.max_net_namespaces=15000`".into()
        }
        (nix::errno::Errno::ENOSPC, _) => {
            "the network namespace limit is reached (user.max_net_namespaces); raise the sysctl or stop other sandboxes".into()
        }
        _ => format!("the kernel refused to create the sandbox's network namespace: unshare(CLONE_NEWNET): {errno} ({})", errno.desc()),
    }
}

/// A one-line diagnosis for a failed `clone(CLONE_NEWUSER|...)`, naming the host
/// setting that caused it and how to change it.
pub fn diagnose_clone_failure(errno: nix::errno::Errno) -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "user namespaces are disabled (user.max_user_namespaces = 0); enable them with `sysctl -w user.max_user_namespaces=15000`".into();
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") && errno == nix::errno::Errno::EPERM {
        return "user namespaces are restricted (kernel.unprivileged_userns_clone = 0); run swarmcell as root or `sysctl -w kernel.unprivileged_userns_clone=1`".into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") && errno == nix::errno::Errno::EPERM {
        return "AppArmor restricts user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1); install an AppArmor profile for swarmcell that allows `userns`, or set the sysctl to 0".into();
    }
    if user::is_nested() {
        return format!(
            "swarmcell runs inside a user namespace (a container?) that refuses nested namespaces ({errno}); run it on the host or allow nested user namespaces in the container"
        );
    }
    match errno {
        nix::errno::Errno::ENOSPC | nix::errno::Errno::EUSERS => {
            "the namespace limit is reached (user.max_user_namespaces or the nesting depth of 32); raise the sysctl or stop other sandboxes".into()
        }
        _ => format!("the kernel refused to create namespaces: {errno} ({})", errno.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_network_namespace_is_explained_from_the_host_limit() {
        // This host allows network namespaces: ENOSPC is the limit being reached.
        let limit: u64 = std::fs::read_to_string("/proc/sys/user/max_net_namespaces").unwrap().trim().parse().unwrap();
        assert!(limit > 0);
        let m = diagnose_netns_failure(nix::errno::Errno::ENOSPC);
        assert!(m.contains("limit is reached") && m.contains("user.max_net_namespaces"), "{m}");
        let m = diagnose_netns_failure(nix::errno::Errno::EPERM);
        assert!(m.contains("unshare(CLONE_NEWNET)") && m.contains("EPERM"), "{m}");
    }
}
