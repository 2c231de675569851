//! Attacks on the verifying publisher and the private git layer (red team of
//! issue #14): each test performs the attack from inside a real sandbox and
//! checks what the host side did with it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(90);
const STATE_DIR: &str = "/var/lib/swarmcell/git";

/// A repository owned by OWNER and a plain `git worktree add PATH -b feature-x`.
fn plain_worktree(f: &Fixture) -> (PathBuf, PathBuf) {
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = owned_repo(&f.dir);
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]));
    (repo, wt)
}

/// The worktree's root-owned state directory (STATE_DIR/DEV-INO).
fn key_dir(wt: &Path) -> PathBuf {
    let m = std::fs::metadata(wt).unwrap();
    Path::new(STATE_DIR).join(format!("{:x}-{:x}", m.dev(), m.ino()))
}

/// Bytes allocated on disk below `p` (st_blocks, like `du`), not following symlinks.
fn allocated(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    let mut n = m.blocks() * 512;
    if m.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            n += allocated(&e.unwrap().path());
        }
    }
    n
}

fn sh(wt: &Path, extra: &[&str], script: &str) -> std::process::Output {
    let out = sh_in(wt, extra, script, LIMIT).unwrap_or_else(|| panic!("the sandbox on {} did not end within {LIMIT:?}", wt.display()));
    assert_no_sandbox_left();
    out
}

/// A sparse file costs the sandbox nothing under its disk limit; the publisher
/// must not turn it into gigabytes on the host's disk (outside every limit),
/// nor keep copies of the layer's objects around after a publish.
#[test]
fn a_sparse_pack_in_the_layer_is_not_copied_densely_outside_the_disk_limit() {
    let f = Fixture::new();
    let (repo, wt) = plain_worktree(&f);
    let script = "set -e; c='git -c user.name=agent -c user.email=a@x'; g=$(git rev-parse --git-common-dir); \
        truncate -s 96M $g/objects/pack/pack-1111111111111111111111111111111111111111.pack; \
        truncate -s 96M $g/objects/pack/pack-2222222222222222222222222222222222222222.idx; \
        echo one > one.txt; git add one.txt; $c commit -qm one; echo COMMITTED";
    let out = sh(&wt, &["--disk", "32M"], script);
    assert!(ok(&out).contains("COMMITTED"), "{}", stderr(&out));
    // The agent's commit was published (the attack does not need it to fail).
    assert_eq!(git(&repo, &["log", "--format=%s", "-1", "feature-x"]), "one");
    let kd = key_dir(&wt);
    let host = allocated(&kd.join("publish"));
    let layer = allocated(&kd.join("layer"));
    assert!(
        host <= 32 << 20,
        "ESCAPED: the publisher stored {} MiB for a sandbox limited to 32M (its layer holds {} KiB on disk)",
        host >> 20,
        layer >> 10
    );
}

/// Fast-forward only: the agent sets its branch in the layer to a tree (git
/// fetch stores a non-commit without any fast-forward check), then to an
/// unrelated commit; the host's branch must never lose its published history.
#[test]
fn a_non_commit_tip_never_bypasses_the_fast_forward_check() {
    let f = Fixture::new();
    let (repo, wt) = plain_worktree(&f);
    let before = git(&repo, &["rev-parse", "feature-x"]);
    let script = "set -e; c='git -c user.name=agent -c user.email=a@x'; g=$(git rev-parse --git-common-dir); \
        echo one > one.txt; git add one.txt; $c commit -qm one; sleep 3; \
        t=$(git rev-parse HEAD^{tree}); echo $t > $g/refs/heads/feature-x; sleep 3; \
        o=$(echo orphan | $c commit-tree $t); echo $o > $g/refs/heads/feature-x; sleep 3; \
        echo DONE";
    let out = sh(&wt, &[], script);
    assert!(ok(&out).contains("DONE"), "{}", stderr(&out));
    let kind = git(&repo, &["cat-file", "-t", "feature-x"]);
    assert_eq!(kind, "commit", "ESCAPED: the host's feature-x now names a {kind}");
    let anc = git_as_owner(&repo, &["merge-base", "--is-ancestor", &before, "feature-x"]);
    assert!(
        anc.status.success(),
        "ESCAPED: feature-x was moved to an unrelated commit (no fast-forward): {}",
        git(&repo, &["log", "--oneline", "-3", "feature-x"])
    );
    git(&repo, &["fsck", "--strict"]);
}

/// The real object store inside the sandbox: read-only, and it stays so
/// (remount, mount_setattr, a new bind over it, writing through /proc).
#[test]
fn the_real_object_store_stays_read_only_inside_the_sandbox() {
    let f = Fixture::new();
    let (repo, wt) = plain_worktree(&f);
    let before = git(&repo, &["count-objects", "-v"]);
    let script = "o=/.swarmcell/git-objects; \
        mount -o remount,rw $o 2>&1; mount -o remount,rw,bind $o 2>&1; \
        touch $o/x 2>&1 && echo WROTE; mkdir $o/info/y 2>&1 && echo WROTE; \
        chmod 777 $o 2>&1 && echo CHMOD; \
        for d in $o/??; do rm -f $d/* 2>/dev/null; done; ls $o/pack | head -3; \
        ln $o/pack/* $(git rev-parse --git-common-dir)/objects/pack/ 2>&1 | head -1; \
        cat /proc/self/mountinfo | grep -c git-objects; echo END";
    let out = sh(&wt, &[], script);
    let text = stdout(&out);
    eprintln!("{text}\n{}", stderr(&out));
    assert!(text.contains("END"), "{text}");
    assert!(!text.contains("WROTE") && !text.contains("CHMOD"), "ESCAPED: the sandbox wrote the real object store:\n{text}");
    assert_eq!(git(&repo, &["count-objects", "-v"]), before, "ESCAPED: the real object store changed");
    git(&repo, &["fsck", "--strict"]);
}

/// `sh -c SCRIPT` on the host as OWNER (no supplementary groups).
fn as_owner(script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([&format!("--reuid={OWNER}"), &format!("--regid={OWNER}"), "--clear-groups", "sh", "-c", script])
        .output()
        .unwrap()
}

/// The repository's owner (an unprivileged host user) moves a directory of
/// another user's (world-writable, so it may be moved) into its worktree's
/// private layer where root expects one of its own; root must never chown it
/// to the owner (the owner would then own the other user's directory).
#[test]
fn root_never_chowns_a_directory_the_owner_moved_into_the_layer() {
    let f = Fixture::new();
    let (_repo, wt) = plain_worktree(&f);
    ok(&sh(&wt, &[], "true"));
    let layer = key_dir(&wt).join("layer");
    // Another user's shared directory, on the layer's filesystem.
    let shared = Path::new("/var/lib/swarmcell").join(format!("red14-shared-{}", std::process::id()));
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = shared.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&victim, Some(OWNER + 1), Some(OWNER + 1)).unwrap();
    let ino = std::fs::metadata(&victim).unwrap().ino();
    let mv = as_owner(&format!("rm -rf {l}/refs/tags && mv {v} {l}/refs/tags && echo MOVED", l = layer.display(), v = victim.display()));
    assert!(stdout(&mv).contains("MOVED"), "{mv:?}");
    let _ = sh(&wt, &[], "true");
    let now = std::fs::metadata(layer.join("refs/tags"));
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_dir_all(key_dir(&wt));
    if let Ok(m) = now
        && m.ino() == ino
    {
        assert_eq!(m.uid(), OWNER + 1, "ESCAPED: root chowned uid {}'s directory to the owner (uid {OWNER})", OWNER + 1);
    }
}

/// The owner moves another user's world-writable directory (holding that
/// user's private subdirectory, which the owner cannot empty) into its
/// worktree; `worktree remove --force` runs as root and must not delete what
/// the owner itself could not.
#[test]
fn worktree_remove_never_deletes_another_users_files_moved_into_the_worktree() {
    let f = Fixture::new();
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = owned_repo(&f.dir);
    let base = f.dir.join("worktrees");
    ok(&worktree_cmd(&["add", repo.to_str().unwrap(), "a", "--base", base.to_str().unwrap()]));
    let shared = f.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let other = OWNER + 1;
    let victim = shared.join("v");
    std::fs::create_dir_all(victim.join("private")).unwrap();
    std::fs::write(victim.join("private/data"), "OTHER-USERS-DATA").unwrap();
    for p in [victim.clone(), victim.join("private"), victim.join("private/data")] {
        std::os::unix::fs::chown(&p, Some(other), Some(other)).unwrap();
    }
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(victim.join("private"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The owner alone cannot delete it.
    let try_rm = as_owner(&format!("rm -rf {} 2>&1", victim.join("private").display()));
    assert!(victim.join("private/data").exists(), "the owner could delete it itself: {try_rm:?}");
    let mv = as_owner(&format!("mv {} {}/v && echo MOVED", victim.display(), base.join("a").display()));
    assert!(stdout(&mv).contains("MOVED"), "{mv:?}");
    let moved = base.join("a/v/private/data");
    assert!(moved.exists());
    let out = worktree_cmd(&["remove", "a", "--base", base.to_str().unwrap(), "--force"]);
    eprintln!("{}", stderr(&out));
    let survived = std::fs::read_dir(&f.dir).unwrap().count() > 0 && find(&f.dir, "data");
    assert!(survived, "ESCAPED: root deleted uid {other}'s files, which its owner could not (remove: {})", stderr(&out));
}

fn find(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten().any(|e| {
                let t = e.file_type().unwrap();
                (e.file_name() == name && t.is_file()) || (t.is_dir() && !t.is_symlink() && find(&e.path(), name))
            })
        })
        .unwrap_or(false)
}

/// The same through a relaunch: the owner moves another user's directory to
/// the layer's `refs/heads/BRANCH` and removes the layer's HEAD, so that root
/// starts the layer afresh and removes that ref.
#[test]
fn a_relaunch_never_deletes_another_users_directory_moved_into_the_layer() {
    let f = Fixture::new();
    let (_repo, wt) = plain_worktree(&f);
    ok(&sh(&wt, &[], "true"));
    let layer = key_dir(&wt).join("layer");
    let shared = Path::new("/var/lib/swarmcell").join(format!("red14-shared2-{}", std::process::id()));
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let other = OWNER + 1;
    let victim = shared.join("v");
    std::fs::create_dir_all(victim.join("private")).unwrap();
    std::fs::write(victim.join("private/data"), "OTHER-USERS-DATA").unwrap();
    for p in [victim.clone(), victim.join("private"), victim.join("private/data")] {
        std::os::unix::fs::chown(&p, Some(other), Some(other)).unwrap();
    }
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mv = as_owner(&format!(
        "rm -f {l}/refs/heads/feature-x {l}/worktrees/feature/HEAD && mv {v} {l}/refs/heads/feature-x && echo MOVED",
        l = layer.display(),
        v = victim.display()
    ));
    assert!(stdout(&mv).contains("MOVED"), "{mv:?}");
    let _ = sh(&wt, &[], "true");
    let survived = layer.join("refs/heads/feature-x/private/data").exists();
    let _ = std::fs::remove_dir_all(&shared);
    // (Root's refusal leaves it there: taken away, or the next worktree with this inode would be refused.)
    let _ = std::fs::remove_dir_all(key_dir(&wt));
    assert!(survived, "ESCAPED: root deleted uid {other}'s files moved into the layer");
}

/// The disk limit bounds what the worktree and the layer hold; what the
/// publisher imports into the real repository is outside it. The agent
/// commits incompressible data, waits for the publish, deletes its copy from
/// the layer and starts again: the host's repository grows past the limit.
#[test]
fn published_data_never_grows_the_real_repository_past_the_disk_limit() {
    let f = Fixture::new();
    let (repo, wt) = plain_worktree(&f);
    let before = allocated(&repo.join(".git/objects"));
    let script = "set -e; c='git -c user.name=agent -c user.email=a@x'; g=$(git rev-parse --git-common-dir); \
        for i in 1 2 3 4 5; do head -c 12M /dev/urandom > b; git add b; $c commit -qm big$i; rm -f b; sleep 3; \
        rm -f $g/objects/??/*; done; echo DONE";
    let out = sh(&wt, &["--disk", "32M"], script);
    // Once the publishes would pass the limit they are refused (the agent's
    // script then breaks on the objects it deleted itself).
    assert!(stderr(&out).contains("publish budget spent"), "{}{}", stdout(&out), stderr(&out));
    let grown = allocated(&repo.join(".git/objects")) - before;
    assert!(grown <= 32 << 20, "ESCAPED: a sandbox limited to 32M grew the host's repository by {} MiB", grown >> 20);
}
