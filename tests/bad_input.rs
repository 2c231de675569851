//! Bad input gets one clear line on stderr, a documented exit code (125 unless
//! the payload cannot be found or executed), and leaves nothing behind.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn assert_refused(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("swarmcell: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(stdout(out).is_empty());
}

#[test]
fn a_missing_worktree_is_refused() {
    let f = Fixture::new();
    let mut c = std::process::Command::new(bin());
    c.args(["run", "--worktree"]).arg(f.dir.join("nope")).args(["--", "/bin/true"]);
    let out = c.output().unwrap();
    assert_no_sandbox_left();
    assert_refused(&out, 125, "does not exist");
}

#[test]
fn a_worktree_that_is_a_file_is_refused() {
    let f = Fixture::new();
    let file = f.dir.join("file");
    std::fs::write(&file, "").unwrap();
    let out = std::process::Command::new(bin()).args(["run", "--worktree"]).arg(&file).args(["--", "/bin/true"]).output().unwrap();
    assert_refused(&out, 125, "is not a directory");
}

#[test]
fn a_root_owned_worktree_is_refused_unless_a_non_root_uid_is_given() {
    let f = Fixture::new();
    let rootwt = f.dir.join("rootwt");
    std::fs::create_dir(&rootwt).unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["run", "--worktree"])
            .arg(&rootwt)
            .args(extra)
            .args(["--", "/bin/sh", "-c", "id -u"])
            .output()
            .unwrap();
        assert_no_sandbox_left();
        out
    };
    assert_refused(&run(&[]), 125, "is owned by root");
    assert_refused(&run(&["--uid", "0"]), 125, "--uid 0 is refused");
    let out = run(&["--uid", "4243"]);
    assert_eq!(ok(&out).trim(), "4243");
}

#[test]
fn an_unknown_policy_key_names_file_line_and_field() {
    let f = Fixture::new();
    let p = f.dir.join("bad.toml");
    std::fs::write(&p, "[limits]\npids = 10\nmemroy = \"1G\"\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]);
    assert_refused(&out, 125, &format!("policy {}:3:1: unknown field `memroy`", p.display()));
    let out = std::process::Command::new(bin()).args(["policy", "check"]).arg(&p).output().unwrap();
    assert_refused(&out, 125, "unknown field `memroy`");
}

#[test]
fn a_policy_file_wider_than_0640_is_refused() {
    let f = Fixture::new();
    let p = f.dir.join("loose.toml");
    std::fs::write(&p, "").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]);
    assert_refused(&out, 125, "mode 0644 is wider than 0640");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&f.run(&["--policy", p.to_str().unwrap()], &["/bin/true"]));
}

#[test]
fn a_payload_that_does_not_exist_exits_127() {
    let f = Fixture::new();
    assert_refused(&f.run(&[], &["definitely-not-a-command"]), 127, "cannot find \"definitely-not-a-command\"");
}

#[test]
fn a_missing_ro_path_and_a_reserved_one_are_refused() {
    let f = Fixture::new();
    assert_refused(&f.run(&["--ro", "/no/such/dir"], &["/bin/true"]), 125, "--ro path /no/such/dir");
    assert_refused(&f.run(&["--rw", "/proc/sys"], &["/bin/true"]), 125, "under /proc");
}

#[test]
fn usage_errors_exit_125() {
    let out = std::process::Command::new(bin()).args(["run", "--worktree", "/tmp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let out = std::process::Command::new(bin()).args(["run", "--worktree", "/", "--", "/bin/true"]).output().unwrap();
    assert_refused(&out, 125, "is a system directory");
}

#[test]
fn a_host_without_network_namespaces_is_named_in_the_error() {
    // The launcher runs in a user namespace of its own (every id mapped to
    // itself) whose limit of network namespaces is 0: the init's `unshare`
    // fails, and the launcher says why, from that limit.
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let f = Fixture::new();
    let pipe = || {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds, ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    let ((ready_r, ready_w), (go_r, go_w)) = (pipe(), pipe());
    let (ready_w_fd, go_r_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    let mut cmd = f.command(&[], &["/bin/true"]);
    // SAFETY: only async-signal-safe calls, in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            libc::write(ready_w_fd, pid.as_ptr().cast(), pid.len());
            let mut b = [0u8; 1];
            libc::read(go_r_fd, b.as_mut_ptr().cast(), 1);
            let fd = libc::open(c"/proc/sys/user/max_net_namespaces".as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    // The maps are written from outside while the child waits (spawn returns at its exec).
    let mapper = std::thread::spawn(move || {
        let mut pid = [0u8; 4];
        std::fs::File::from(ready_r).read_exact(&mut pid).unwrap();
        let pid = i32::from_ne_bytes(pid);
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{file}"), "0 0 4294967295\n").unwrap();
        }
        std::fs::File::from(go_w).write_all(b"g").unwrap();
    });
    let out = cmd.output().unwrap();
    mapper.join().unwrap();
    drop((ready_w, go_r));
    assert_no_sandbox_left();
    assert_refused(&out, 125, "user.max_net_namespaces = 0");
}

#[test]
fn a_descriptor_flag_naming_a_closed_descriptor_is_refused() {
    // The launcher opens descriptors of its own before it reads its command
    // line (the early init's channel, its signal descriptor): a closed number
    // given to --ready-fd, --secret-fd, --stats-fd or --events-fd must be refused, never
    // taken to be one of those (the launcher then lost its signals: a SIGTERM
    // no longer stopped it).
    let f = Fixture::new();
    for flag in ["--ready-fd", "--secret-fd", "--stats-fd", "--events-fd"] {
        for fd in ["3", "4", "5", "6"] {
            // Every descriptor above 2 is closed at the exec (Rust opens its own
            // close-on-exec).
            let mut child =
                f.command(&[flag, fd], &["/bin/true"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
            // (Taking its own descriptor, the launcher hung: bounded here.)
            let start = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() {
                if start.elapsed() > std::time::Duration::from_secs(10) {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    panic!("swarmcell run {flag} {fd} (closed) still ran after 10 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let out = child.wait_with_output().unwrap();
            assert_no_sandbox_left();
            assert_refused(&out, 125, &format!("{flag} {fd}"));
        }
    }
}
