//! `swarmcell verify`'s denial check (host root): a sandbox of the battery
//! refuses a directory read (Landlock), a socket family and a system call
//! (seccomp) three times each; each must arrive as a denial attributed to
//! that sandbox, counted, within 2 s — read from the kernel the way the daemon
//! reads it ([`super::hub`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Kind;
use super::hub::{Hub, KernelAudit, Owner};

fn check(status: &str, detail: impl Into<String>) -> Value {
    json!({ "name": "a denial arrives as an attributed event", "status": status, "detail": detail.into() })
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child (the launcher), then reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Kernel audit exists only in the initial network namespace: elsewhere (a
/// container with its own network, as in `scripts/systemd-test`) the netlink
/// audit family is refused outright, which is the host's lack, not a fault.
fn audit_family_missing() -> Option<String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    match socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkAudit) {
        Err(e @ (nix::errno::Errno::EAFNOSUPPORT | nix::errno::Errno::EPROTONOSUPPORT)) => Some(format!(
            "no kernel audit in this network namespace (socket(AF_NETLINK, NETLINK_AUDIT): {e}); only egress and ingress denials are reported here"
        )),
        _ => None,
    }
}

pub fn check_denials(exe: &Path, policy: &Option<PathBuf>, wt: &Path) -> Value {
    if let Some(why) = audit_family_missing() {
        return check("not_applicable", why);
    }
    let hub = match Hub::start(KernelAudit::Leave) {
        Ok(h) if h.seccomp => h,
        Ok(h) => return check("BROKEN", h.kernel),
        Err(e) => return check("BROKEN", e),
    };
    let mut c = Command::new(exe);
    c.args(["run", "--port", "auto", "--ready-fd", "3", "--worktree"]).arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    c.arg("--ro").arg(exe.parent().unwrap_or(Path::new("/"))).arg("--").arg(exe).args(["__probe", "denials", "{port}"]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let (child, line) = match crate::launch::spawn_until_ready(&mut c) {
        Ok(x) => x,
        Err(e) => return check("BROKEN", format!("starting the sandbox: {e}")),
    };
    let _child = Killed(child);
    let ready: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
    let (Some(pid), Some(id)) = (ready["pid"].as_i64(), ready["id"].as_str()) else { return check("BROKEN", "the sandbox did not become ready") };
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()).and_then(|u| u.parse().ok()));
    hub.register(Owner { id: id.to_string(), sandbox: id.to_string(), uid });
    // Landlock's records are required where the kernel is known to write them,
    // and shown anyway (audit may be on while its status cannot be read).
    let required = if hub.landlock { 3 } else { 2 };
    let wanted = [(Kind::Net, "socket"), (Kind::Syscall, "ptrace"), (Kind::Fs, "fs.read_dir /")];
    let counts = |hub: &Hub| -> Vec<u64> {
        let s = hub.lock();
        wanted.iter().map(|(k, d)| s.agg.sandboxes.get(id).and_then(|x| x.details.get(&(*k, d.to_string()))).map_or(0, |c| c.total)).collect()
    };
    let start = Instant::now();
    while counts(&hub).iter().any(|n| *n < 3) && start.elapsed() < Duration::from_secs(2) {
        if counts(&hub).iter().take(required).all(|n| *n >= 3) && start.elapsed() > Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = counts(&hub);
    let shown: Vec<String> = wanted.iter().zip(&got).map(|((k, d), n)| format!("{} {d}: {n}", k.name())).collect();
    let landlock =
        if hub.landlock { "" } else { " (Landlock records not required: the kernel audit status says they are not written, or cannot be read)" };
    if got.iter().take(required).all(|n| *n == 3) {
        check("ok", format!("attributed to {id} within {:?}: {}{landlock}", start.elapsed(), shown.join(", ")))
    } else {
        check("BROKEN", format!("after {:?}: {}{landlock}; {}", start.elapsed(), shown.join(", "), hub.kernel))
    }
}
