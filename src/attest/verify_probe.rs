//! Child side of `swarmcell verify`: the escape battery, run inside a real
//! sandbox as `swarmcell __probe verify ARGS`. Prints one JSON object per check.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use nix::errno::Errno;

use crate::attest::probe::{Check, Status};

/// What the launcher set up on the host for the battery to aim at.
pub struct Targets {
    pub host_secret: String,
    pub sibling_file: String,
    pub host_port: u16,
    pub abstract_name: String,
    pub inherited_fd: i32,
    pub inner_port: u16,
    pub worktree: String,
}

impl Targets {
    pub fn parse(args: &[String]) -> Result<Targets, String> {
        let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned().ok_or_else(|| format!("missing {k}"));
        let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().map_err(|_| format!("{k}: not a number")));
        Ok(Targets {
            host_secret: get("--host-secret")?,
            sibling_file: get("--sibling")?,
            host_port: num("--host-port")? as u16,
            abstract_name: get("--abstract")?,
            inherited_fd: num("--inherited-fd")? as i32,
            inner_port: num("--inner-port")? as u16,
            worktree: get("--worktree")?,
        })
    }
}

fn c(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status, detail: detail.into() }
}

/// Host paths that checks expect to be absent inside the sandbox (invisible is
/// how they are blocked). `swarmcell verify` looks each up on the host: where
/// the host itself lacks it, the check proves nothing and is `not_applicable`,
/// never `blocked`.
pub const HOST_TARGETS: [(&str, &str); 9] = [
    ("read /etc/shadow", "/etc/shadow"),
    ("follow a symlink to /etc/shadow", "/etc/shadow"),
    ("list /root", "/root"),
    ("list /home", "/home"),
    ("read /proc/kcore", "/proc/kcore"),
    ("read /sys", "/sys/kernel/notes"),
    ("open /dev/mem", "/dev/mem"),
    ("open /dev/kmsg", "/dev/kmsg"),
    ("write /proc/sys/vm/drop_caches", "/proc/sys/vm/drop_caches"),
];

/// A read that must fail.
fn no_read(name: &str, path: &str) -> Check {
    match std::fs::read(path) {
        Ok(b) => c(name, Status::Escaped, format!("read {} bytes of {path}", b.len())),
        Err(e) => c(name, Status::Blocked, format!("{path}: {e}")),
    }
}

/// A write (append) that must fail.
fn no_write(name: &str, path: &str) -> Check {
    match std::fs::OpenOptions::new().append(true).create(true).open(path) {
        Ok(mut f) => {
            let _ = f.write_all(b"");
            c(name, Status::Escaped, format!("opened {path} for writing"))
        }
        Err(e) => c(name, Status::Blocked, format!("{path}: {e}")),
    }
}

fn status_line(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

pub fn battery(t: &Targets) -> Vec<Check> {
    let mut out = vec![
        // Host files and other agents.
        no_read("read a host file by absolute path", &t.host_secret),
        no_read("read a sibling worktree's file", &t.sibling_file),
        no_read("read /etc/shadow", "/etc/shadow"),
        match std::fs::read_dir("/root") {
            Ok(_) => c("list /root", Status::Escaped, "/root is visible"),
            Err(e) => c("list /root", Status::Blocked, e.to_string()),
        },
        match std::fs::read_dir("/home") {
            Ok(d) => c("list /home", Status::Escaped, format!("{} entries visible", d.count())),
            Err(e) => c("list /home", Status::Blocked, e.to_string()),
        },
        no_read("follow a hard link to a root-only host file", &format!("{}/hardlink-secret", t.worktree)),
        no_read("follow a symlink out of the worktree", &format!("{}/symlink-out", t.worktree)),
        no_read("follow a symlink to /etc/shadow", &format!("{}/symlink-shadow", t.worktree)),
        // System paths.
        no_write("write /usr", "/usr/bin/swarmcell-verify"),
        no_write("write /etc/passwd", "/etc/passwd"),
        no_write("write the root directory", "/swarmcell-verify"),
        no_write("write /proc/sys/kernel/core_pattern", "/proc/sys/kernel/core_pattern"),
        no_write("write /proc/sys/vm/drop_caches", "/proc/sys/vm/drop_caches"),
        no_read("read /proc/kcore", "/proc/kcore"),
        no_read("read /sys", "/sys/kernel/notes"),
        // Devices.
        no_read("open /dev/mem", "/dev/mem"),
        no_read("open /dev/kmsg", "/dev/kmsg"),
        {
            let p = std::ffi::CString::new("/tmp/swarmcell-verify-null").unwrap_or_default();
            // SAFETY: mknod with a valid path; a created node is removed at once.
            let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
            if r == 0 {
                // SAFETY: removing the node we created.
                unsafe { libc::unlink(p.as_ptr()) };
                c("create a device node", Status::Escaped, "mknod succeeded")
            } else {
                c("create a device node", Status::Blocked, Errno::last().to_string())
            }
        },
        // Privileges.
        {
            let caps: Vec<String> = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"].iter().map(|k| status_line(k)).collect();
            let all_zero = caps.iter().all(|v| v.chars().all(|ch| ch == '0') && !v.is_empty());
            c("hold any capability", if all_zero { Status::Blocked } else { Status::Escaped }, format!("Inh/Prm/Eff/Bnd/Amb = {}", caps.join("/")))
        },
        {
            let nnp = status_line("NoNewPrivs:");
            c("gain privileges on exec", if nnp == "1" { Status::Blocked } else { Status::Escaped }, format!("NoNewPrivs = {nnp}"))
        },
        {
            // SAFETY: setuid(0) only changes this probe's credentials if it is allowed.
            let r = unsafe { libc::setuid(0) };
            if r == 0 {
                c("become root (setuid 0)", Status::Escaped, "setuid(0) succeeded")
            } else {
                c("become root (setuid 0)", Status::Blocked, Errno::last().to_string())
            }
        },
        {
            let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
            let host_root = map.lines().any(|l| l.split_whitespace().nth(1) == Some("0"));
            c("map to host root", if host_root { Status::Escaped } else { Status::Blocked }, map.trim().to_string())
        },
        {
            let name = "sethostname";
            // SAFETY: a short valid buffer.
            let r = unsafe { libc::sethostname(b"escaped".as_ptr().cast(), 7) };
            if r == 0 { c(name, Status::Escaped, "hostname changed") } else { c(name, Status::Blocked, Errno::last().to_string()) }
        },
        // Other processes.
        {
            // SAFETY: signal 0 only checks permission.
            let r = unsafe { libc::kill(1, 0) };
            if r == 0 {
                c("signal the sandbox's init", Status::Escaped, "kill(1, 0) allowed")
            } else {
                c("signal the sandbox's init", Status::Blocked, Errno::last().to_string())
            }
        },
        no_read("read init's environment", "/proc/1/environ"),
        {
            let pids = std::fs::read_dir("/proc")
                .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()).count())
                .unwrap_or(0);
            let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
            let own = init.trim() == "swarmcell-init";
            c(
                "see host processes",
                if own && pids < 50 { Status::Blocked } else { Status::Escaped },
                format!("{pids} processes visible, pid 1 is {:?}", init.trim()),
            )
        },
        // Network.
        match std::net::TcpStream::connect(("127.0.0.1", t.host_port)) {
            Ok(_) => c("reach a host loopback port", Status::Escaped, format!("connected to 127.0.0.1:{}", t.host_port)),
            Err(e) => c("reach a host loopback port", Status::Blocked, e.to_string()),
        },
        abstract_connect(&t.abstract_name),
        {
            let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
            let ifaces: Vec<String> = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect();
            c("find a non-loopback interface", if ifaces == ["lo"] { Status::Blocked } else { Status::Escaped }, format!("interfaces {ifaces:?}"))
        },
        {
            let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default().lines().skip(1).count();
            let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default().lines().filter(|l| !l.trim_end().ends_with(" lo")).count();
            c(
                "find a route out",
                if routes == 0 && v6 == 0 { Status::Blocked } else { Status::Escaped },
                format!("{routes} IPv4 and {v6} non-lo IPv6 routes"),
            )
        },
        // Descriptors.
        if crate::sys::fd_is_open(t.inherited_fd) {
            c("inherit a launcher descriptor", Status::Escaped, format!("fd {} is open", t.inherited_fd))
        } else {
            c("inherit a launcher descriptor", Status::Blocked, format!("fd {} is closed", t.inherited_fd))
        },
    ];
    // Kernel attack surface: every call the seccomp profile refuses.
    out.extend(crate::attest::probe::seccomp_battery().into_iter().filter(|ch| ch.status != Status::Ok).map(|mut ch| {
        ch.name = format!("syscall {}", ch.name);
        if ch.status == Status::Other {
            // Refused, but by the kernel rather than the filter.
            ch.status = Status::Escaped;
            ch.detail = format!("not filtered: {}", ch.detail);
        }
        ch
    }));
    out.extend(function_checks(t));
    // An agent's own test servers: any port of the sandbox's own loopback.
    out.extend(crate::attest::probe::loopback_servers());
    out
}

fn abstract_connect(name: &str) -> Check {
    let n = "reach a host abstract unix socket";
    use std::os::linux::net::SocketAddrExt;
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => return c(n, Status::Broken, e.to_string()),
    };
    match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(_) => c(n, Status::Escaped, format!("connected to @{name}")),
        Err(e) => c(n, Status::Blocked, e.to_string()),
    }
}

/// What must keep working inside.
fn function_checks(t: &Targets) -> Vec<Check> {
    let ok_or = |name: &str, r: Result<String, String>| match r {
        Ok(d) => c(name, Status::Ok, d),
        Err(e) => c(name, Status::Broken, e),
    };
    let file = format!("{}/.swarmcell-verify", t.worktree);
    vec![
        ok_or(
            "worktree is writable",
            std::fs::write(&file, "x").and_then(|_| std::fs::remove_file(&file)).map(|_| t.worktree.clone()).map_err(|e| e.to_string()),
        ),
        ok_or(
            "/tmp is writable",
            std::fs::write("/tmp/.swarmcell-verify", "x")
                .and_then(|_| std::fs::remove_file("/tmp/.swarmcell-verify"))
                .map(|_| "/tmp".into())
                .map_err(|e| e.to_string()),
        ),
        ok_or(
            "/dev/null works",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .and_then(|mut f| f.write_all(b"x"))
                .map(|_| "/dev/null".into())
                .map_err(|e| e.to_string()),
        ),
        ok_or("/proc/self is readable", std::fs::read_to_string("/proc/self/status").map(|_| "/proc/self/status".into()).map_err(|e| e.to_string())),
        ok_or(
            "cwd is the worktree",
            std::env::current_dir()
                .map_err(|e| e.to_string())
                .and_then(|d| if d.to_string_lossy() == t.worktree { Ok(d.display().to_string()) } else { Err(format!("cwd is {}", d.display())) }),
        ),
        ok_or("loopback TCP on the inner port", loopback(t.inner_port)),
    ]
}

fn loopback(port: u16) -> Result<String, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind {port}: {e}"))?;
    let mut a = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect {port}: {e}"))?;
    let (mut b, _) = l.accept().map_err(|e| e.to_string())?;
    a.write_all(b"hi").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2];
    b.read_exact(&mut buf).map_err(|e| e.to_string())?;
    let _ = a.as_raw_fd();
    Ok(format!("127.0.0.1:{port}"))
}

/// `__probe verify ...`: run the battery and print JSON lines.
pub fn main(args: &[String]) -> u8 {
    let t = match Targets::parse(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("__probe verify: {e}");
            return 2;
        }
    };
    for ch in battery(&t) {
        println!("{}", serde_json::json!({ "name": ch.name, "status": ch.status.json(), "detail": ch.detail }));
    }
    0
}
