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
#[ignore = "needs a kernel with project quotas (ext4: CONFIG_QUOTA + CONFIG_QFMT_V2); this machine's has no quota format: run with --ignored where it has"]
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
  dd if=/dev/zero of=big bs=1M count=32 2>/tmp/err; echo "dd_rc=$?"; head -n 1 /tmp/err | sed "s/^/dd_err=/"
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
#[ignore = "needs a kernel with project quotas (ext4: CONFIG_QUOTA + CONFIG_QFMT_V2); this machine's has no quota format: run with --ignored where it has"]
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
#[ignore = "needs a kernel with project quotas (ext4: CONFIG_QUOTA + CONFIG_QFMT_V2); this machine's has no quota format: run with --ignored where it has"]
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

/// The harness of the enforced tests, on this machine: a loop-mounted
/// filesystem in a private mount namespace (xfs, which keeps project ids
/// without quota support) is a worktree like any other; without project
/// quotas, `best-effort` measures it and stops the sandbox.
#[test]
fn a_worktree_on_a_loop_filesystem_in_a_private_mount_namespace_is_measured_without_quotas() {
    let f = Fixture::new();
    let img = f.dir.join("xfs.img");
    assert!(Command::new("truncate").args(["-s", "320M"]).arg(&img).status().unwrap().success());
    let out = Command::new("mkfs.xfs").arg("-q").arg(&img).output().expect("mkfs.xfs (xfsprogs, scripts/setup)");
    assert!(out.status.success(), "mkfs.xfs: {}", stderr(&out));
    let policy = policy_file(&f, "[limits]\ndisk = \"8M\"\ndisk_enforcement = \"best-effort\"\n");
    let out = on_quota_fs(
        &f,
        &img,
        "rw",
        &format!(
            r#"
"$SC" run --policy {policy} --worktree "$WT" -- /bin/sh -c 'i=0; while [ $i -lt 64 ]; do dd if=/dev/zero of=f$i bs=1M count=1 2>/dev/null; i=$((i+1)); sleep 0.05; done; echo finished'
echo "run_rc=$?"
echo "host_kib=$(du -sk "$WT" | cut -f1)"
"$SC" run --policy {policy} --worktree "$WT" -- /bin/true 2>/dev/null
echo "again_rc=$?"
"#,
            policy = policy.display()
        ),
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(field(&out, "run_rc"), "137", "{text}");
    assert!(!text.contains("finished"), "{text}");
    assert!(stderr(&out).contains("over its disk limit 8M"), "{text}");
    let kib: u64 = field(&out, "host_kib").parse().unwrap();
    assert!(kib < 48 * 1024, "{kib} KiB written before the stop: {text}");
    assert_eq!(field(&out, "again_rc"), "125", "an over-limit worktree is refused at the next start: {text}");
}

#[test]
fn best_effort_stops_a_sandbox_whose_worktree_cannot_be_measured() {
    let f = Fixture::new();
    let policy = policy_file(&f, "[limits]\ndisk = \"1G\"\ndisk_enforcement = \"best-effort\"\n");
    // Deeper than the measuring walk goes: fail closed, not "under the limit".
    let script = "p=.; i=0; while [ $i -lt 300 ]; do p=$p/d; i=$((i+1)); done; mkdir -p $p; sleep 10; echo finished";
    let out = f.command(&["--policy", policy.to_str().unwrap()], &["/bin/sh", "-c", script]).output().unwrap();
    assert_no_sandbox_left();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.lines().any(|l| l.starts_with("swarmcell: sandbox sc-") && l.contains("cannot be measured") && l.contains("deeper than")), "{err}");
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

/// The walk that tags a tree with its project id, on a real filesystem that
/// keeps project ids: xfs keeps them without quota support, which this
/// machine's kernel lacks. Run in a private mount namespace (the test binary
/// re-executes itself there, for `tag_walk_inner`). Every directory and file
/// gets the id, directories PROJINHERIT; a symlink's target outside the tree
/// and a FIFO are left alone (a writer blocked on the FIFO stays blocked: it
/// was never opened).
#[test]
fn the_tagging_walk_tags_every_file_and_directory_and_follows_nothing() {
    let f = Fixture::new();
    let img = f.dir.join("xfs.img");
    assert!(Command::new("truncate").args(["-s", "320M"]).arg(&img).status().unwrap().success());
    let out = Command::new("mkfs.xfs").arg("-q").arg(&img).output().expect("mkfs.xfs (xfsprogs, scripts/setup)");
    assert!(out.status.success(), "mkfs.xfs: {}", stderr(&out));
    let mnt = f.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = r#"
set -u; mount -o loop "$IMG" "$MNT" || exit 99
T="$MNT/tree"; mkdir -p "$T/a/b/c" "$MNT/outside"; echo s > "$MNT/outside/secret"
echo f > "$T/a/b/c/f"; echo g > "$T/g"; ln "$T/g" "$T/a/hard"; ln -s "$MNT/outside/secret" "$T/a/link"; ln -s "$MNT/outside" "$T/dirlink"
mkfifo "$T/fifo"; (echo x > "$T/fifo") & writer=$!
SWARMCELL_TAG_DIR="$T" "$EXE" --exact tag_walk_inner --ignored --test-threads=1 >&2; echo "inner_rc=$?"
sleep 0.2; if kill -0 $writer 2>/dev/null; then echo "fifo=blocked"; kill $writer; else echo "fifo=opened"; fi
for p in "$T" "$T/a" "$T/a/b/c" "$T/a/b/c/f" "$T/g" "$MNT/outside" "$MNT/outside/secret"; do
  echo "proj $(xfs_io -c lsproj "$p" | sed 's/projid = //') $(xfs_io -c lsattr "$p" | cut -c1-16 | tr -d -) ${p#$MNT/}"
done
"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("IMG", &img)
        .env("MNT", &mnt)
        .env("EXE", &exe)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_loop_detached(&img);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(field(&out, "inner_rc"), "0", "{text}");
    assert_eq!(field(&out, "fifo"), "blocked", "the walk opened the FIFO: {text}");
    let p = TAG_PROJECT.to_string();
    for line in stdout(&out).lines().filter_map(|l| l.strip_prefix("proj ")) {
        let v: Vec<&str> = line.split(' ').collect();
        let (id, flags, path) = (v[0], v.get(1).copied().unwrap_or(""), v.last().copied().unwrap_or(""));
        if path.starts_with("outside") {
            assert_eq!(id, "0", "outside the tree: {line}\n{text}");
        } else {
            assert_eq!(id, p, "{line}\n{text}");
            let is_dir = ["tree", "tree/a", "tree/a/b/c"].contains(&path);
            assert_eq!(flags.contains('P'), is_dir, "PROJINHERIT on directories only: {line}");
        }
    }
}

const TAG_PROJECT: u32 = swarmcell::host::disk::PROJECT_BASE + 7;

/// Run by the test above, inside its mount namespace.
#[test]
#[ignore = "run by the_tagging_walk_tags_every_file_and_directory_and_follows_nothing inside its mount namespace"]
fn tag_walk_inner() {
    let dir = PathBuf::from(std::env::var_os("SWARMCELL_TAG_DIR").expect("SWARMCELL_TAG_DIR"));
    let root = swarmcell::host::disk::walk::open_root(&dir).unwrap();
    let n = swarmcell::host::disk::tag_tree(&root, &dir, TAG_PROJECT, 1000).unwrap();
    assert_eq!(n, 9, "a a/b a/b/c a/b/c/f g a/hard a/link dirlink fifo");
}

/// The sandbox's private git layer counts against its disk limit: objects an
/// agent writes with git (outside the worktree's own files) stop it too.
#[test]
fn writes_into_the_private_git_layer_count_against_the_disk_limit() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let base = f.dir.join("base");
    ok(&worktree_cmd(&["add", repo.to_str().unwrap(), "g", "--base", base.to_str().unwrap()]));
    let policy = policy_file(&f, "[limits]\ndisk = \"8M\"\ndisk_enforcement = \"best-effort\"\n");
    // Incompressible blobs straight into the object store, nothing left in the worktree.
    let script = "i=0; while [ $i -lt 40 ]; do head -c 1048576 /dev/urandom > /tmp/blob && git hash-object -w /tmp/blob >/dev/null; \
                  i=$((i+1)); sleep 0.05; done; echo finished";
    let out = Command::new(bin())
        .args(["run", "--worktree"])
        .arg(base.join("g"))
        .args(["--policy", policy.to_str().unwrap(), "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_no_sandbox_left();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(137), "stdout: {}\nstderr: {err}", stdout(&out));
    assert!(!stdout(&out).contains("finished"), "the payload wrote 40M into its git layer");
    assert!(err.lines().any(|l| l.starts_with("swarmcell: sandbox sc-") && l.contains("over its disk limit 8M")), "{err}");
}

/// Attack (red15): best-effort accounting walks the tree, so a file that was
/// unlinked while the payload keeps it open holds real blocks on the host
/// filesystem that no walk sees. 64 MiB written that way against an 8M limit
/// must still stop the sandbox.
#[test]
fn best_effort_counts_an_unlinked_file_the_payload_keeps_open() {
    let f = Fixture::new();
    let policy = policy_file(&f, "[limits]\ndisk = \"8M\"\ndisk_enforcement = \"best-effort\"\n");
    let script = "exec 3>hidden && rm hidden && dd if=/dev/zero bs=1M count=64 >&3 2>/dev/null && sync && sleep 4 && echo survived";
    let out = f.command(&["--policy", policy.to_str().unwrap()], &["/bin/sh", "-c", script]).output().unwrap();
    assert_no_sandbox_left();
    let err = stderr(&out);
    assert!(!stdout(&out).contains("survived"), "64 MiB held in an unlinked file went unnoticed: {err}");
    assert_eq!(out.status.code(), Some(137), "stdout: {}\nstderr: {err}", stdout(&out));
    assert!(err.contains("over its disk limit 8M"), "{err}");
}
