//! `swarmcell policy explain`: the resolved policy as a person reads it.
//! Depends only on the policy (not on the host), so its output is stable.

use std::fmt::Write;

use super::Policy;
use crate::fs::host_binds::DEVICES;

pub fn explain(p: &Policy, source: &str) -> String {
    let mut o = String::new();
    let fs = &p.filesystem;
    let list = |v: &[std::path::PathBuf]| {
        if v.is_empty() { "(none)".to_string() } else { v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ") }
    };
    let _ = writeln!(o, "policy: {source}");
    let _ = writeln!(o);
    let _ = writeln!(o, "mounts (everything else of the host is absent):");
    let _ = writeln!(o, "  /                  tmpfs, read-only; generated /etc (passwd, group, hosts, hostname, nsswitch.conf, resolv.conf)");
    for path in &fs.read_only {
        let _ = writeln!(o, "  {:<18} host path, read-only, nosuid, nodev (skipped when absent)", path.display());
    }
    for path in &fs.read_write {
        let _ = writeln!(o, "  {:<18} host path, read-write, nosuid, nodev", path.display());
    }
    for path in &fs.mount_only {
        let _ = writeln!(o, "  {:<18} host path, read-only, no Landlock rule (unreadable while Landlock holds)", path.display());
    }
    let _ = writeln!(o, "  {:<18} the worktree at its own path, read-write, nosuid, nodev, idmapped to its owner; the cwd", "WORKTREE");
    let _ =
        writeln!(o, "  {:<18} a linked worktree's REPO/.git read-only; its admin dir, objects/ and refs+logs of agent/ID/ read-write", "REPO/.git");
    let _ = writeln!(o, "  {:<18} tmpfs {}, nosuid, nodev; HOME=/tmp/home", "/tmp", fs.tmp_size);
    let _ = writeln!(o, "  {:<18} read-only (part of /): {}; private devpts; shm tmpfs {}, noexec", "/dev", DEVICES.join(" "), fs.shm_size);
    let _ = writeln!(o, "  {:<18} new proc; /proc/sys, /proc/irq, /proc/bus read-only", "/proc");
    let _ = writeln!(o);
    let _ = writeln!(o, "landlock: {}", p.landlock);
    let rules = p.landlock_rules(std::path::Path::new("WORKTREE"), &[], &[]);
    let _ = writeln!(o, "  read, execute:     {}", list(&rules.read_exec));
    let _ = writeln!(o, "  read-write:        {}", list(&rules.read_write));
    let _ = writeln!(o, "  device read-write: {}", list(&rules.device_files));
    let inner = p.network.inner_port;
    let ports = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
    let _ = writeln!(o, "  tcp:               any port on the sandbox's own loopback (a handed-off connection is pinned to its client)");
    let _ = writeln!(o, "  scopes:            abstract unix sockets, signals (ABI 6)");
    let _ = writeln!(o);
    let _ = writeln!(o, "seccomp: every system call not listed is allowed; x32 refused (EPERM), foreign architectures killed");
    for r in &p.seccomp.deny {
        let args = r
            .args
            .iter()
            .map(|a| match a.mask {
                Some(m) => format!("arg{} & {m:#x} {} {:#x}", a.arg, a.op, a.value),
                None => format!("arg{} {} {:#x}", a.arg, a.op, a.value),
            })
            .collect::<Vec<_>>();
        let when = if args.is_empty() { String::new() } else { format!(" when {}", args.join(" and ")) };
        let _ = writeln!(o, "  {:<7} {}{when}", r.errno, r.syscalls.join(", "));
        let _ = writeln!(o, "          why: {}", r.reason);
    }
    let _ = writeln!(o);
    let l = &p.limits;
    let _ = writeln!(o, "limits: memory {}, swap {}, pids {}, cpu {} cores", l.memory, l.swap, l.pids, l.cpu);
    let _ = match (l.disk.0, l.inodes) {
        (None, None) => writeln!(o, "disk: no limit on the worktree"),
        (bytes, inodes) => writeln!(
            o,
            "disk: the worktree holds at most {} and {} files and directories; project quotas (ext4 prjquota, xfs pquota) or {}",
            bytes.map_or("any size".to_string(), |b| crate::policy::units::ByteSize::bytes(b).to_string()),
            inodes.map_or("any number of".to_string(), |i| i.to_string()),
            match l.disk_enforcement {
                crate::host::disk::Enforcement::Required => "refused (required)",
                crate::host::disk::Enforcement::BestEffort => "measured twice a second or less often and stopped when over (best-effort)",
            }
        ),
    };
    let n = &p.network;
    let _ = writeln!(
        o,
        "network: only lo; inner port {inner}; forwards to host loopback {}",
        if n.forwards.is_empty() { "(none)".into() } else { ports(&n.forwards) }
    );
    let _ = writeln!(
        o,
        "egress: proxy at 127.0.0.1:{} inside; allowed hosts {}; non-public addresses allowed {}",
        n.proxy_port,
        if n.egress_allow.is_empty() { "(none)".to_string() } else { n.egress_allow.join(" ") },
        if n.egress_allow_addresses.is_empty() { "(none)".to_string() } else { n.egress_allow_addresses.join(" ") }
    );
    let _ = writeln!(
        o,
        "relay bounds: at most {} proxy and {} forward connections at once (more refused and counted), on one launcher thread; connections idle for {} closed (inbound too)",
        n.max_proxy_connections, n.max_forward_connections, n.idle_timeout
    );
    let _ = writeln!(
        o,
        "proxy requests: whole head within {}; Host must be the request's authority; one request per plain-HTTP connection",
        n.head_timeout
    );
    let h = &p.health;
    let _ = writeln!(
        o,
        "health: GET {} inside the sandbox until 2xx (redirects are failures), timeout {}, then every {}, alert after {} failures",
        h.path, h.timeout, h.interval, h.failures
    );
    if let Some(secret) = &p.process.server_password_env {
        let _ = writeln!(o, "secret: a fresh random value per sandbox in {secret}, sent by the health check as basic auth (user {})", h.auth_user);
    }
    let _ = writeln!(
        o,
        "git: the real repository read-only, writes to a private layer; the publisher moves the worktree's branch {}",
        if p.git.allow_force_publish { "by any update, forced ones included" } else { "by fast-forward only" }
    );
    for (i, t) in p.tripwires.iter().enumerate() {
        let what: Vec<String> =
            [("kind", t.kind.map(|k| k.name().to_string())), ("path", t.path.clone()), ("syscall", t.syscall.clone()), ("host", t.host.clone())]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
                .collect();
        let _ = writeln!(
            o,
            "{}: {} denial(s) within {} of {} -> {} (daemon only)",
            t.label(i),
            t.count,
            t.window,
            if what.is_empty() { "any kind".to_string() } else { what.join(", ") },
            format!("{:?}", t.action).to_lowercase()
        );
    }
    let _ = writeln!(
        o,
        "environment: PATH HOME TERM LANG USER SWARMCELL_SANDBOX_ID{}",
        p.process.env.iter().map(|e| format!(" {e}")).collect::<String>()
    );
    o
}
