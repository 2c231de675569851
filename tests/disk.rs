//! Disk and inode limits on what a sandbox writes (its worktree).
//!
//! Enforced: an ext4 filesystem with project quotas in an image file under the
//! test's temporary directory, loop-mounted only inside a private mount
//! namespace of its own (`unshare -m`), never on a host path; `mount -o loop`
//! attaches the loop device with autoclear, so it is detached when the
//! namespace's last mount goes, and the test checks that. Not enforceable: the
//! fixture's worktree on the host's /tmp filesystem (no project quota here):
//! `required` refuses, `best-effort` measures and stops the sandbox.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An ext4 image with the `quota` and `project` features (project quota
/// accounting in hidden inodes), removed with the fixture.
fn quota_image(f: &Fixture, size_mb: u32) -> PathBuf {
    let img = f.dir.join("ext4.img");
    let out = Command::new("truncate").arg("-s").arg(format!("{size_mb}M")).arg(&img).output().unwrap();
    assert!(out.status.success(), "truncate: {}", stderr(&out));
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-O", "quota,project", "-E", "quotatype=prjquota"]).arg(&img).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4 (e2fsprogs, scripts/setup): {}", stderr(&out));
    img
}

/// Run `script` with `sh` in a private mount namespace where IMG is mounted at
/// $MNT (with `opts`) and $WT is a worktree on it owned by OWNER; $SC is the
/// swarmcell binary. Afterwards, no loop device is left on the image.
fn on_quota_fs(f: &Fixture, img: &Path, opts: &str, script: &str) -> Output {
    let mnt = f.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let prelude =
        format!("set -u; mount -o loop,{opts} \"$IMG\" \"$MNT\" || exit 99; mkdir -p \"$WT\"; chown {OWNER}:{OWNER} \"$WT\"; chmod 700 \"$WT\"\n");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(prelude + script)
        .env("IMG", img)
        .env("MNT", &mnt)
        .env("WT", mnt.join("wt"))
        .env("SC", bin())
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    assert_no_sandbox_left();
    assert_no_project_lease_left();
    assert_loop_detached(img);
    out
}

fn assert_loop_detached(img: &Path) {
    let start = Instant::now();
    loop {
        let out = Command::new("losetup").arg("-j").arg(img).output().unwrap();
        if stdout(&out).trim().is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "loop device still attached to {}: {}", img.display(), stdout(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_project_lease_left() {
    let left: Vec<String> = std::fs::read_dir("/run/swarmcell/projects")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".lock")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "project id leases left: {left:?}");
}

/// `KEY=VALUE` lines the scripts print.
fn field(out: &Output, key: &str) -> String {
    let text = stdout(out);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key}= in stdout:\n{text}\nstderr:\n{}", stderr(out)))
}

fn policy_file(f: &Fixture, text: &str) -> PathBuf {
    let p = f.dir.join(format!("policy-{}.toml", swarmcell::launch::random_u32()));
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn a_sandbox_writing_past_its_disk_limit_gets_edquot_and_the_host_holds_no_more() {
    let f = Fixture::new();
    let img = quota_image(&f, 96);
    // The payload writes 2x its limit, then tries to take its file out of the
    // project (chattr -p 0, as a user could on the host) and write again.
    let out = on_quota_fs(
        &f,
        &img,
        "prjquota",
        r#"
"$SC" run --worktree "$WT" --disk 16M -- /bin/sh -c '
  dd if=/dev/zero of=big bs=1M count=32 2>err; echo "dd_rc=$?"; tail -n 2 err | head -n 1 | sed "s/^/dd_err=/"
  chattr -p 0 big 2>/dev/null; echo "chattr_rc=$?"
  dd if=/dev/zero of=more bs=1M count=8 2>/dev/null; echo "more_rc=$?"
  sync'
echo "run_rc=$?"
echo "host_kib=$(du -sk "$WT" | cut -f1)"
"#,
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(field(&out, "run_rc"), "0", "{text}");
    assert_ne!(field(&out, "dd_rc"), "0", "the sandbox wrote 32M past a 16M disk limit: {text}");
    let err = field(&out, "dd_err");
    assert!(err.contains("Disk quota exceeded") || err.contains("No space left"), "{err}");
    assert_ne!(field(&out, "chattr_rc"), "0", "the sandbox changed its file's project id: {text}");
    assert_ne!(field(&out, "more_rc"), "0", "the sandbox wrote again after chattr: {text}");
    let kib: u64 = field(&out, "host_kib").parse().unwrap();
    assert!(kib <= 16 * 1024, "the worktree holds {kib} KiB on the host, more than the 16M limit");
}

#[test]
fn a_sandbox_creating_files_past_its_inode_limit_is_refused_more() {
    let f = Fixture::new();
    let img = quota_image(&f, 64);
    let out = on_quota_fs(
        &f,
        &img,
        "prjquota",
        r#"
"$SC" run --worktree "$WT" --inodes 100 -- /bin/sh -c '
  made=0; i=0; while [ $i -lt 300 ]; do : > f$i 2>/dev/null && made=$((made+1)); mkdir d$i 2>/dev/null && made=$((made+1)); i=$((i+1)); done
  echo "made=$made"'
echo "run_rc=$?"
echo "host_inodes=$(find "$WT" | wc -l)"
"#,
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(field(&out, "run_rc"), "0", "{text}");
    let made: u64 = field(&out, "made").parse().unwrap();
    assert!(made < 100, "the sandbox created {made} files and directories under an inode limit of 100: {text}");
    let inodes: u64 = field(&out, "host_inodes").parse().unwrap();
    assert!(inodes <= 100, "the worktree holds {inodes} inodes on the host");
}

#[test]
fn a_restarted_sandbox_gets_no_new_allowance_and_the_limit_is_gone_after_it() {
    let f = Fixture::new();
    let img = quota_image(&f, 96);
    // Run 1 writes 10M of a 16M limit; run 2 (same worktree) cannot write
    // another 10M: what the worktree holds counts, not what one run wrote.
    // After the runs the owner (on the host, outside any sandbox) writes
    // freely: the limit is removed at teardown.
    let out = on_quota_fs(
        &f,
        &img,
        "prjquota",
        r#"
"$SC" run --worktree "$WT" --disk 16M -- /bin/sh -c 'dd if=/dev/zero of=one bs=1M count=10 2>/dev/null; echo "one_rc=$?"; sync'
"$SC" run --worktree "$WT" --disk 16M -- /bin/sh -c 'dd if=/dev/zero of=two bs=1M count=10 2>/dev/null; echo "two_rc=$?"; sync'
setpriv --reuid=4242 --regid=4242 --clear-groups dd if=/dev/zero of="$WT/three" bs=1M count=20 2>/dev/null; echo "owner_rc=$?"
"#,
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(field(&out, "one_rc"), "0", "{text}");
    assert_ne!(field(&out, "two_rc"), "0", "a second run on the same worktree got a fresh 16M: {text}");
    assert_eq!(field(&out, "owner_rc"), "0", "the limit outlived the sandbox: {text}");
}

#[test]
fn required_enforcement_without_project_quotas_is_refused_and_leaves_nothing() {
    let f = Fixture::new();
    std::fs::write(f.worktree.join("file"), "x").unwrap();
    let before = std::fs::read_dir(&f.worktree).unwrap().count();
    let policy = policy_file(&f, "[limits]\ndisk = \"16M\"\ndisk_enforcement = \"required\"\n");
    let out = f.run(&["--policy", policy.to_str().unwrap()], &["/bin/sh", "-c", "echo started"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(!stdout(&out).contains("started"), "the payload ran");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("swarmcell: ") && lines[0].contains("project quota") && lines[0].contains("best-effort"), "{err}");
    assert_no_project_lease_left();
    assert_eq!(std::fs::read_dir(&f.worktree).unwrap().count(), before);
    // The same with --disk on the command line over a policy asking for required.
    let out = f.run(&["--policy", policy.to_str().unwrap(), "--disk", "1G"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn best_effort_without_project_quotas_stops_a_sandbox_over_its_limit_and_logs_it() {
    let f = Fixture::new();
    let policy = policy_file(&f, "[limits]\ndisk = \"8M\"\ndisk_enforcement = \"best-effort\"\n");
    // 1 MiB every 50 ms, up to 200 MiB: stopped long before the end.
    let script = "i=0; while [ $i -lt 200 ]; do dd if=/dev/zero of=f$i bs=1M count=1 2>/dev/null; i=$((i+1)); sleep 0.05; done; echo finished";
    let start = Instant::now();
    let out = f.command(&["--policy", policy.to_str().unwrap()], &["/bin/sh", "-c", script]).output().unwrap();
    assert_no_sandbox_left();
    let took = start.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(137), "stdout: {}\nstderr: {err}", stdout(&out));
    assert!(!stdout(&out).contains("finished"), "the payload wrote 200M");
    assert!(err.contains("disk_limit"), "no disk_limit event: {err}");
    assert!(err.lines().any(|l| l.starts_with("swarmcell: sandbox sc-") && l.contains("over its disk limit 8M")), "{err}");
    let written: u64 = std::fs::read_dir(&f.worktree).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    assert!(written < 100 << 20, "{} MiB written before the stop ({took:?})", written >> 20);
    // Over the limit already: the next start is refused (a daemon's restart loop gives up).
    let out = f.run(&["--policy", policy.to_str().unwrap()], &["/bin/sh", "-c", "echo started"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("over its disk limit"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("started"));
}

#[test]
fn disk_flags_are_validated() {
    let f = Fixture::new();
    for (flag, value, needle) in [("--disk", "12Q", "--disk: invalid size"), ("--inodes", "0", "--inodes:"), ("--disk", "1K", "--disk:")] {
        let out = f.run(&[flag, value], &["/bin/true"]);
        assert_eq!(out.status.code(), Some(125), "{flag} {value}");
        assert!(stderr(&out).contains(needle), "{flag} {value}: {}", stderr(&out));
    }
}
