//! `swarmcell inspect ID|PID [--json]`: live attestation of a running sandbox,
//! read from /proc and cgroupfs (never from swarmcell's own memory): namespaces
//! compared with the host's, id maps, capabilities, no_new_privs, seccomp,
//! Landlock as far as the kernel shows it, cgroup limits and usage, mounts,
//! interfaces and listening ports.

use serde_json::{Value, json};

const NAMESPACES: [&str; 7] = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn comm(pid: i32) -> String {
    read(&format!("/proc/{pid}/comm")).trim().to_string()
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    read(&format!("/proc/{pid}/status")).lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
}

fn sandbox_id(init: i32) -> String {
    read(&format!("/proc/{init}/root/etc/hostname")).trim().to_string()
}

/// (sandbox init pid, payload pid) for an id (`sc-...`) or a pid of either.
pub fn find(target: &str) -> Result<(i32, i32), String> {
    let init = if let Ok(pid) = target.parse::<i32>() {
        // Walk up from the pid to the sandbox's init.
        let mut p = pid;
        loop {
            if p <= 1 {
                return Err(format!("pid {pid} is not in a swarmcell sandbox"));
            }
            if comm(p) == "swarmcell-init" {
                break p;
            }
            p = status_field(p, "PPid").and_then(|v| v.parse().ok()).ok_or_else(|| format!("no process {pid}"))?;
        }
    } else {
        if !crate::launch::valid_sandbox_id(target) {
            return Err(format!("{target:?} is neither a pid nor a sandbox id"));
        }
        std::fs::read_dir("/proc")
            .map_err(|e| e.to_string())?
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .find(|pid| comm(*pid) == "swarmcell-init" && sandbox_id(*pid) == target)
            .ok_or_else(|| format!("no running sandbox {target}"))?
    };
    let children = read(&format!("/proc/{init}/task/{init}/children"));
    let payload = children.split_whitespace().next().and_then(|p| p.parse().ok()).ok_or_else(|| format!("sandbox init {init} has no payload"))?;
    Ok((init, payload))
}

pub fn report(init: i32, payload: i32) -> Value {
    let ns: Vec<Value> = NAMESPACES
        .iter()
        .map(|n| {
            let sandbox = std::fs::read_link(format!("/proc/{payload}/ns/{n}")).map(|p| p.display().to_string()).unwrap_or_default();
            // The inspector runs on the host: its own namespaces are the host's.
            let host = std::fs::read_link(format!("/proc/self/ns/{n}")).map(|p| p.display().to_string()).unwrap_or_default();
            json!({ "type": n, "sandbox": sandbox, "host": host, "isolated": !sandbox.is_empty() && sandbox != host })
        })
        .collect();
    let field = |k: &str| status_field(payload, k).unwrap_or_default();
    let cgroups: Vec<Value> = read(&format!("/proc/{payload}/cgroup")).lines().map(cgroup_entry).collect();
    let mounts: Vec<Value> = read(&format!("/proc/{payload}/mountinfo"))
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            Some(json!({ "target": pre.get(4)?, "source_root": pre.get(3)?, "options": pre.get(5)?, "fstype": post.split(' ').next()? }))
        })
        .collect();
    let ifaces: Vec<String> =
        read(&format!("/proc/{payload}/net/dev")).lines().skip(2).filter_map(|l| l.split(':').next().map(|s| s.trim().to_string())).collect();
    let mut listening: Vec<u64> = ["tcp", "tcp6"]
        .iter()
        .flat_map(|f| read(&format!("/proc/{payload}/net/{f}")).lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.get(3) == Some(&"0A")).then(|| c.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u64::from_str_radix(p, 16).ok())).flatten()
        })
        .collect();
    listening.sort();
    listening.dedup();
    json!({
        "id": sandbox_id(init),
        "init_pid": init,
        "payload_pid": payload,
        "namespaces": ns,
        "uid_map": read(&format!("/proc/{payload}/uid_map")).trim(),
        "gid_map": read(&format!("/proc/{payload}/gid_map")).trim(),
        "setgroups": read(&format!("/proc/{payload}/setgroups")).trim(),
        "uid": field("Uid"),
        "capabilities": { "inheritable": field("CapInh"), "permitted": field("CapPrm"), "effective": field("CapEff"), "bounding": field("CapBnd"), "ambient": field("CapAmb") },
        "no_new_privs": field("NoNewPrivs"),
        "seccomp": { "mode": field("Seccomp"), "filters": field("Seccomp_filters") },
        "landlock": { "kernel_abi": crate::confine::landlock::kernel_abi(), "enforced": "not shown per process by this kernel; see `swarmcell verify`" },
        "cgroups": cgroups,
        "mounts": mounts,
        "interfaces": ifaces,
        "listening_tcp_ports": listening,
    })
}

/// One /proc/PID/cgroup line, resolved on the host with its limits and usage.
fn cgroup_entry(line: &str) -> Value {
    let mut f = line.splitn(3, ':');
    let (_, ctrls, path) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
    let rel = path.trim_start_matches('/');
    let dir = if ctrls.is_empty() {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].iter().map(|m| std::path::Path::new(m).join(rel)).find(|d| d.join("cgroup.procs").exists())
    } else {
        let c = ctrls.split(',').next().unwrap_or("");
        Some(std::path::Path::new("/sys/fs/cgroup").join(c).join(rel)).filter(|d| d.exists())
    };
    let mut values = serde_json::Map::new();
    if let Some(d) = &dir {
        for file in [
            "memory.max",
            "memory.current",
            "memory.swap.max",
            "memory.oom.group",
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "pids.max",
            "pids.current",
            "cpu.max",
            "cpu.cfs_quota_us",
            "cpu.cfs_period_us",
            "cpuacct.usage",
        ] {
            if let Ok(v) = std::fs::read_to_string(d.join(file)) {
                values.insert(file.to_string(), Value::String(v.trim().to_string()));
            }
        }
    }
    json!({ "controllers": ctrls, "path": path, "dir": dir.map(|d| d.display().to_string()), "files": values })
}

pub fn run(target: &str, as_json: bool) -> Result<(), String> {
    let (init, payload) = find(target)?;
    let r = report(init, payload);
    if as_json {
        println!("{r}");
        return Ok(());
    }
    println!("sandbox {}  (init pid {init}, payload pid {payload})", r["id"].as_str().unwrap_or("?"));
    println!("namespaces:");
    for n in r["namespaces"].as_array().into_iter().flatten() {
        println!(
            "  {:<7} {:<24} {}",
            n["type"].as_str().unwrap_or(""),
            n["sandbox"].as_str().unwrap_or(""),
            if n["isolated"] == true { "isolated" } else { "SHARED with the host" }
        );
    }
    println!("uid_map: {}   gid_map: {}   setgroups: {}", r["uid_map"], r["gid_map"], r["setgroups"]);
    println!("capabilities: {}", r["capabilities"]);
    println!("no_new_privs: {}   seccomp: mode {} ({} filters)", r["no_new_privs"], r["seccomp"]["mode"], r["seccomp"]["filters"]);
    println!("landlock: kernel ABI {} ({})", r["landlock"]["kernel_abi"], r["landlock"]["enforced"].as_str().unwrap_or(""));
    println!("cgroups:");
    for c in r["cgroups"].as_array().into_iter().flatten() {
        if c["files"].as_object().is_some_and(|o| !o.is_empty()) {
            println!("  {:<10} {} {}", c["controllers"].as_str().unwrap_or(""), c["dir"].as_str().unwrap_or(""), c["files"]);
        }
    }
    println!("mounts:");
    for m in r["mounts"].as_array().into_iter().flatten() {
        println!("  {:<40} {:<10} {}", m["target"].as_str().unwrap_or(""), m["fstype"].as_str().unwrap_or(""), m["options"].as_str().unwrap_or(""));
    }
    println!("interfaces: {}   listening TCP ports: {}", r["interfaces"], r["listening_tcp_ports"]);
    Ok(())
}
