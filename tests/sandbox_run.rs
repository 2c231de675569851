//! `swarmcell run` builds a real sandbox: each test runs as root against the real
//! kernel and checks one isolation property from inside the sandbox.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::*;

#[test]
fn uid_map_never_maps_to_host_root() {
    let f = Fixture::new();
    for extra in [&[][..], &["--no-idmap"][..]] {
        let out = ok(&f.sh(extra, "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; cat /proc/self/setgroups; id -u"));
        let parts: Vec<&str> = out.split("--\n").collect();
        for map in &parts[..2] {
            let lines: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().collect()).collect();
            assert_eq!(lines.len(), 1, "exactly one id mapped: {map}");
            assert_ne!(lines[0][1], "0", "host id 0 is mapped: {map}");
            assert_eq!(lines[0][2], "1");
        }
        assert!(parts[2].starts_with("deny"), "setgroups is denied: {}", parts[2]);
        assert_eq!(parts[2].lines().nth(1), Some("4242"), "runs as the worktree owner's uid inside");
    }
}

#[test]
fn hard_linked_root_only_host_files_cannot_be_read() {
    let f = Fixture::new();
    for (name, mode) in [("secret600", 0o600), ("secret640", 0o640)] {
        let host = f.dir.join(name);
        std::fs::write(&host, "TOP SECRET\n").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::hard_link(&host, f.worktree.join(name)).unwrap();
    }
    for extra in [&[][..], &["--no-idmap"][..]] {
        let out = f.sh(extra, "cat secret600; echo rc=$?; cat secret640; echo rc=$?");
        let text = stdout(&out);
        assert!(!text.contains("TOP SECRET"), "root-only file was readable: {text}");
        assert_eq!(text.matches("rc=1").count(), 2, "{text} {}", stderr(&out));
    }
}

#[test]
fn host_paths_outside_the_sandbox_are_invisible() {
    let f = Fixture::new();
    let sibling = f.dir.join("wt-b");
    make_owned_dir(&sibling, OWNER, OWNER);
    std::fs::write(sibling.join("theirs.txt"), "sibling data").unwrap();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let script = format!(
        "for p in {sib} {sib}/theirs.txt /root {home} /home /var /run /sys /boot /etc/shadow; do if [ -e $p ]; then echo VISIBLE $p; fi; done; echo done",
        sib = sibling.display()
    );
    let out = ok(&f.sh(&[], &script));
    assert_eq!(out.trim(), "done", "host paths visible inside: {out}");
}

#[test]
fn system_paths_and_the_root_are_read_only() {
    let f = Fixture::new();
    let out =
        ok(&f
            .sh(&[], "for p in /usr/x /etc/x /etc/passwd /x /dev/x /bin/x; do if echo > $p 2>/dev/null; then echo WRITABLE $p; fi; done; echo done"));
    assert_eq!(out.trim(), "done", "{out}");
}

#[test]
fn proc_sys_core_pattern_cannot_be_opened_for_writing() {
    let f = Fixture::new();
    let out = f.sh(&[], "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo rc=$?");
    let text = stdout(&out);
    assert!(text.contains("rc=1") || text.contains("rc=2"), "{text}");
    assert!(stderr(&out).contains("Read-only file system") || stderr(&out).contains("Permission denied"), "{}", stderr(&out));
    let host = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert!(!host.contains("/tmp/pwn"));
}

#[test]
fn every_capability_set_is_empty_and_no_new_privs_is_set() {
    let f = Fixture::new();
    let out = ok(&f.sh(&[], "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status"));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(out.contains(&format!("{set}:\t0000000000000000")), "{set} not empty: {out}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The sandbox init (pid 1) keeps nothing either.
    let out = ok(&f.sh(&[], "grep -E '^(CapPrm|CapEff|CapBnd):' /proc/1/status"));
    assert_eq!(out.matches("0000000000000000").count(), 3, "init keeps capabilities: {out}");
}

#[test]
fn the_payload_may_run_on_every_cpu_the_launcher_may() {
    // The launcher starts the init on another CPU than its own (when one is
    // idle), and the init starts the payload on its own CPU; both must widen
    // their affinity back before the payload runs.
    let f = Fixture::new();
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed =
        |status: &str| status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string());
    let check = || {
        for _ in 0..5 {
            let out = ok(&f.sh(&[], "grep Cpus_allowed_list /proc/self/status; grep Cpus_allowed_list /proc/1/status"));
            let lines: Vec<String> = out.lines().filter_map(allowed).collect();
            assert_eq!(lines.len(), 2, "{out}");
            assert!(lines.iter().all(|l| Some(l) == allowed(&ours).as_ref()), "payload and init {lines:?}, launcher's caller {:?}", allowed(&ours));
        }
    };
    check();
    // Again with every CPU busy: the init then stays where the kernel put it
    // (it shares the launcher's CPU), and still starts the payload pinned to
    // its own CPU, to be widened before the exec.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn an_fd_opened_without_cloexec_is_not_inherited() {
    let f = Fixture::new();
    let secret = f.dir.join("inherited.txt");
    std::fs::write(&secret, "inherited secret").unwrap();
    let c = std::ffi::CString::new(secret.to_str().unwrap()).unwrap();
    // SAFETY: open without O_CLOEXEC on purpose; closed at the end.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(raw >= 0);
    // SAFETY: dup2 onto a fixed, unused number so the test can name it.
    assert_eq!(unsafe { libc::dup2(raw, 77) }, 77);
    let out = ok(&f.sh(&[], "ls /proc/self/fd/; cat /proc/self/fd/77 2>&1; echo; ls /proc/1/fd 2>&1; true"));
    // SAFETY: closing our own descriptors.
    unsafe {
        libc::close(77);
        libc::close(raw);
    }
    assert!(!out.contains("inherited secret"), "{out}");
    let fds: Vec<&str> = out.lines().take_while(|l| !l.contains("No such")).collect();
    assert!(!fds.contains(&"77"), "fd 77 visible: {out}");
    // The payload cannot look into init's descriptors either (init is not dumpable).
    assert!(out.contains("cannot open directory '/proc/1/fd': Permission denied"), "{out}");
}

fn open_pty() -> (std::fs::File, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into the provided ints.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both are fresh fds we own.
    unsafe { (std::fs::File::from_raw_fd_checked(master), std::fs::File::from_raw_fd_checked(slave)) }
}

trait FromRaw {
    unsafe fn from_raw_fd_checked(fd: i32) -> std::fs::File;
}
impl FromRaw for std::fs::File {
    unsafe fn from_raw_fd_checked(fd: i32) -> std::fs::File {
        use std::os::fd::FromRawFd;
        // SAFETY: forwarded from the caller.
        unsafe { std::fs::File::from_raw_fd(fd) }
    }
}

/// Run `cmd` with the pty slave as its controlling terminal and stdin.
fn with_ctty(mut cmd: std::process::Command, slave: &std::fs::File, as_uid: Option<u32>) -> std::process::Output {
    let fd = slave.as_raw_fd();
    cmd.stdin(Stdio::from(slave.try_clone().unwrap())).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(uid) = as_uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

#[test]
fn tiocsti_on_the_controlling_pty_fails_inside() {
    let f = Fixture::new();
    let (_master, slave) = open_pty();
    // Control: the same probe, outside any sandbox as an unprivileged user that
    // shares the terminal, does inject (where the kernel allows TIOCSTI at all).
    if std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").map(|s| s.trim() == "1").unwrap_or(true) {
        let mut direct = std::process::Command::new(bin());
        direct.args(["__probe", "tiocsti"]);
        let out = with_ctty(direct, &slave, Some(OWNER));
        assert!(stdout(&out).starts_with("tiocsti ESCAPED"), "the probe cannot detect TIOCSTI: {}{}", stdout(&out), stderr(&out));
    }
    // Refused by the seccomp filter and, with the filter's rules removed, by the
    // kernel: after setsid() the terminal is no longer the payload's controlling tty.
    let weak = f.dir.join("no-seccomp.toml");
    std::fs::write(&weak, "[seccomp]\ndeny = []\n").unwrap();
    std::fs::set_permissions(&weak, std::fs::Permissions::from_mode(0o600)).unwrap();
    for extra in [vec![], vec!["--policy".to_string(), weak.to_string_lossy().into_owned()]] {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["run", "--worktree"]).arg(&f.worktree).args(&extra).args(["--ro", &bin_dir(), "--", bin(), "__probe", "tiocsti"]);
        let out = with_ctty(cmd, &slave, None);
        assert_no_sandbox_left();
        assert!(stdout(&out).starts_with("tiocsti blocked TIOCSTI failed: EPERM"), "{extra:?}: {}{}", stdout(&out), stderr(&out));
    }
}

#[test]
fn only_loopback_exists_and_there_is_no_route() {
    let f = Fixture::new();
    let out = ok(&f.sh(&[], "tail -n +3 /proc/net/dev | cut -d: -f1; echo --; tail -n +2 /proc/net/route; echo --; grep -v ' lo$' /proc/net/ipv6_route; echo --; ls /sys/class/net 2>/dev/null; echo end"));
    let parts: Vec<&str> = out.split("--\n").collect();
    let ifaces: Vec<&str> = parts[0].lines().map(str::trim).collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");
    assert_eq!(parts[1].trim(), "", "IPv4 routes present: {out}");
    assert_eq!(parts[2].trim(), "", "IPv6 routes beyond lo: {out}");
    assert_eq!(parts[3].trim(), "end", "/sys (and the host's interfaces in it) is not visible: {out}");
    let out = ok(&f.sh(&[], "cat /proc/sys/net/ipv4/ip_forward; hostname"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "the sandbox's network namespace forwards nothing: {out}");
    assert!(lines[1].starts_with("sc-"), "hostname is the sandbox id: {out}");
}

#[test]
fn the_network_namespace_is_new_and_owned_by_the_sandbox_user_namespace() {
    // Init makes its network namespace itself (after the clone): it must still
    // be a new one, owned by the sandbox's user namespace (so the sandbox's
    // root is root there and nowhere else), as the clone's was.
    let f = Fixture::new();
    let script = "import os, fcntl\n\
                  net = os.open('/proc/self/ns/net', os.O_RDONLY)\n\
                  owner = fcntl.ioctl(net, 0xb701)\n\
                  print(os.stat('/proc/self/ns/net').st_ino, os.fstat(owner).st_ino, os.stat('/proc/self/ns/user').st_ino)";
    let out = ok(&f.run(&[], &["python3", "-c", script]));
    let inos: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(inos.len(), 3, "{out}");
    let host_net = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(inos[0], host_net, "the sandbox is in the host's network namespace: {out}");
    assert_eq!(inos[1], inos[2], "the network namespace's owner is not the sandbox's user namespace: {out}");
}

#[test]
fn a_launcher_started_with_sigchld_ignored_still_reports_the_exit_status() {
    // An ignored SIGCHLD survives exec: the kernel would then reap the init by
    // itself, and the launcher would wait for it forever, holding its cgroup,
    // and act on a pid that another process may get.
    let f = Fixture::new();
    let mut cmd = f.command(&[], &["/bin/sh", "-c", "exit 7"]);
    // SAFETY: signal(2) is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let status = status.unwrap_or_else(|| panic!("the launcher hung: {}", stderr(&out)));
    assert_eq!(status.code(), Some(7), "{}", stderr(&out));
    assert_no_sandbox_left();
}

#[test]
fn pid_one_reaps_orphaned_zombies() {
    let f = Fixture::new();
    // Each subshell exits at once, orphaning its background child, which exits
    // 0.2 s later; only pid 1 can reap it.
    let script = "for i in 1 2 3; do (sleep 0.2 &); done; sleep 1; \
                  for s in /proc/[0-9]*/stat; do cut -d' ' -f1-3 $s; done 2>/dev/null; echo end";
    let out = ok(&f.sh(&[], script));
    let zombies: Vec<&str> = out.lines().filter(|l| l.split_whitespace().nth(2) == Some("Z")).collect();
    assert!(zombies.is_empty(), "zombies not reaped: {zombies:?}\n{out}");
    assert!(out.lines().any(|l| l.starts_with("1 (swarmcell-init)")), "pid 1 is swarmcell's init: {out}");
}

#[test]
fn files_created_in_the_worktree_belong_to_the_worktree_owner() {
    let f = Fixture::new();
    for (extra, name) in [(&[][..], "idmapped"), (&["--no-idmap"][..], "direct")] {
        ok(&f.sh(extra, &format!("mkdir d-{name} && echo x > d-{name}/file && touch f-{name}")));
        for p in [format!("d-{name}"), format!("d-{name}/file"), format!("f-{name}")] {
            let m = std::fs::metadata(f.worktree.join(&p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (OWNER, OWNER), "{p} is owned by {}:{}", m.uid(), m.gid());
        }
    }
}

/// Without /etc/localtime the local time is UTC whatever the host's zone, and
/// ICU (Bun's, so OpenCode's) compares every file of /usr/share/zoneinfo with
/// it, several times: 5,400 opens and ~60 ms of each OpenCode start.
#[test]
fn the_sandbox_keeps_the_hosts_time_zone() {
    let f = Fixture::new();
    let host = std::process::Command::new("cksum").arg("/etc/localtime").output().unwrap();
    let inside = f.sh(&[], "cksum /etc/localtime");
    if host.status.success() {
        assert_eq!(stdout(&inside), stdout(&host), "{}", stderr(&inside));
    } else {
        assert!(!inside.status.success(), "the host has no /etc/localtime, the sandbox has: {}", stdout(&inside));
    }
}

#[test]
fn the_working_directory_is_the_worktree_and_tmp_is_private() {
    let f = Fixture::new();
    let out = ok(&f.sh(&[], "pwd; echo $HOME; touch /tmp/mine && ls /tmp"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], f.worktree.to_str().unwrap());
    assert_eq!(lines[1], "/tmp/home");
    assert!(!f.dir.join("mine").exists());
}

#[test]
fn exit_codes_follow_the_env_convention() {
    let f = Fixture::new();
    std::fs::write(f.worktree.join("noexec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::chown(f.worktree.join("noexec.sh"), Some(OWNER), Some(OWNER)).unwrap();
    assert_eq!(f.sh(&[], "exit 7").status.code(), Some(7));
    assert_eq!(f.sh(&[], "kill -TERM $$").status.code(), Some(143));
    let out = f.run(&[], &["./noexec.sh"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot execute \"./noexec.sh\""), "{}", stderr(&out));
    let out = f.run(&[], &["no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot find \"no-such-program\""), "{}", stderr(&out));
    assert_eq!(f.run(&[], &["/no/such/path"]).status.code(), Some(127));
}

#[test]
fn sigterm_to_the_launcher_reaches_the_payload() {
    let f = Fixture::new();
    let mut child =
        f.command(&[], &["/bin/sh", "-c", "trap 'exit 42' TERM; echo up; while :; do sleep 0.05; done"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "up\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(42));
    assert_no_sandbox_left();
}

#[test]
fn sigterm_during_the_launch_is_never_lost() {
    // A stop signal that reaches the launcher while the sandbox is being built
    // is forwarded to the init, which must keep it until the payload exists.
    // (It was dropped when it came before the init blocked it: the kernel
    // discards a signal a PID namespace's init has no handler for, and the
    // payload then ran until the stop timeout's SIGKILL.) Sent at a range of
    // moments across the launch.
    let f = Fixture::new();
    for step in 0..40u64 {
        let mut child =
            f.command(&["--stop-timeout", "3s"], &["/bin/sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.05; done"]).spawn().unwrap();
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_micros(300 + step * 100));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let took = start.elapsed();
        // 42: the payload's trap; 143: the payload (or the launcher, before it
        // took over its signals) ended by SIGTERM itself. Never the stop
        // timeout's SIGKILL (137).
        assert!(
            matches!(status.code(), Some(42 | 143)) || std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
            "SIGTERM {} us into the launch: {status:?} after {took:?}",
            300 + step * 100
        );
        assert!(took < std::time::Duration::from_secs(2), "SIGTERM {} us into the launch: ended only after {took:?}", 300 + step * 100);
    }
    // A launcher ended by the signal before it took over its signals may leave
    // an unheld lock file; the next launch sweeps it.
    ok(&f.run(&[], &["/bin/true"]));
    assert_no_sandbox_left();
}

#[test]
fn ready_fd_gets_one_json_line_and_is_not_passed_in() {
    let f = Fixture::new();
    let (mut r, w) = std::io::pipe().unwrap();
    let wfd = w.as_raw_fd();
    let mut cmd =
        f.command(&["--ready-fd", &wfd.to_string()], &["/bin/sh", "-c", &format!("ls /proc/self/fd | grep -qx {wfd} && echo LEAKED; true")]);
    // SAFETY: clearing CLOEXEC on our pipe end in the child, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(wfd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    drop(w);
    let mut line = String::new();
    std::io::Read::read_to_string(&mut r, &mut line).unwrap();
    assert!(!stdout(&out).contains("LEAKED"));
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert!(v["id"].as_str().unwrap().starts_with("sc-"));
    assert!(v["pid"].as_i64().unwrap() > 1);
    assert!(v.get("port").is_some());
    assert_eq!(line.lines().count(), 1);
}
