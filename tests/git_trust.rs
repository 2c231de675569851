//! Git without trust (issue #14): each test performs one attack as an agent
//! would, from inside a real sandbox (or as the repository's unprivileged
//! owner), then checks that the host side neither followed nor ran what was
//! planted, and that the agent's own work still reaches its branch.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A repository owned by OWNER with one commit, and BASE/a made by `swarmcell worktree add`.
fn managed(f: &Fixture, ids: &[&str]) -> (PathBuf, PathBuf) {
    let repo = owned_repo(&f.dir);
    let base = f.dir.join("worktrees");
    for id in ids {
        ok(&worktree_cmd(&["add", repo.to_str().unwrap(), id, "--base", base.to_str().unwrap()]));
    }
    (repo, base)
}

/// `sh -c SCRIPT` in a sandbox on `wt`; panics when it does not end within LIMIT.
fn sh(wt: &Path, script: &str) -> std::process::Output {
    let out = sh_in(wt, &[], script, LIMIT).unwrap_or_else(|| panic!("the sandbox on {} did not end within {LIMIT:?}", wt.display()));
    assert_no_sandbox_left();
    out
}

/// A root-only directory (0700) in the fixture holding `name` (0600) with `text`.
fn root_secret(f: &Fixture, name: &str, text: &str) -> PathBuf {
    let dir = f.dir.join("root-only");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn fixture_traversable(f: &Fixture) {
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Finding 1: the agent points its `.git` at another repository's admin dir;
/// the next launch must not give it that repository (here a root-only one whose
/// config holds a credential).
#[test]
fn a_rewritten_dot_git_never_redirects_a_relaunch_to_another_repository() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let (_repo, base) = managed(&f, &["a"]);
    // The victim: a repository with a linked worktree, inside a root-only directory.
    let hidden = f.dir.join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let victim = owned_repo(&hidden);
    git(&victim, &["config", "credential.token", "TOPSECRET-CONFIG"]);
    git(&victim, &["worktree", "add", "-q", hidden.join("vw").to_str().unwrap()]);
    std::process::Command::new("chown").args(["-R", &format!("{OWNER}:{OWNER}")]).arg(&hidden).status().unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&hidden, Some(0), Some(0)).unwrap();
    let wt = base.join("a");
    let admin = victim.join(".git/worktrees/vw");
    let original = std::fs::read(wt.join(".git")).unwrap();
    for pointer in [admin.to_str().unwrap().to_string(), "../../hidden/repo/.git/worktrees/vw".to_string()] {
        // (The operator puts the original back between the two attempts.)
        std::fs::write(wt.join(".git"), &original).unwrap();
        let plant = sh(&wt, &format!("printf 'gitdir: %s\\n' '{pointer}' > .git && echo PLANTED"));
        assert!(ok(&plant).contains("PLANTED"));
        let out = sh(
            &wt,
            &format!(
                "cat {0}/.git/config 2>&1; git log --all --oneline 2>&1; echo >> {1}/HEAD 2>&1 && echo WROTE-ADMIN",
                victim.display(),
                admin.display()
            ),
        );
        let text = stdout(&out);
        assert!(!text.contains("TOPSECRET-CONFIG"), "ESCAPED: the relaunch read the other repository's config:\n{text}");
        assert!(!text.contains("WROTE-ADMIN"), "ESCAPED: the relaunch wrote the other repository's admin dir:\n{text}");
        assert_eq!(out.status.code(), Some(125), "refused: {}", stderr(&out));
        assert!(stderr(&out).starts_with("swarmcell: ") && stderr(&out).contains(".git"), "{}", stderr(&out));
    }
}

/// Finding 2: `.git` points at a fake common dir inside the worktree whose
/// `objects` is a symlink to a host file; neither a relaunch nor a first launch
/// may bind that file.
#[test]
fn a_planted_fake_common_dir_never_binds_a_host_file() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let (_repo, base) = managed(&f, &["a"]);
    // The owner's own file in a root-only directory: out of the owner's reach.
    let secret = root_secret(&f, "secret.txt", "HOSTSECRET");
    std::os::unix::fs::chown(&secret, Some(OWNER), Some(OWNER)).unwrap();
    let plant = format!(
        "mkdir -p fake/worktrees/x fake/refs && echo 'ref: refs/heads/main' > fake/HEAD && cp fake/HEAD fake/worktrees/x/HEAD && \
         echo ../.. > fake/worktrees/x/commondir && echo \"$PWD/.git\" > fake/worktrees/x/gitdir && \
         ln -s {} fake/objects && echo \"gitdir: $PWD/fake/worktrees/x\" > .git && echo PLANTED",
        secret.display()
    );
    // A worktree a sandbox ran on, and a plain directory its owner prepared.
    assert!(ok(&sh(&base.join("a"), &plant)).contains("PLANTED"));
    assert!(ok(&sh(&f.worktree, &plant)).contains("PLANTED"));
    for wt in [base.join("a"), f.worktree.clone()] {
        let out = sh(&wt, "cat fake/objects 2>&1; echo APPENDED >> fake/objects 2>/dev/null; true");
        assert!(!stdout(&out).contains("HOSTSECRET"), "ESCAPED: a host file was bound into {}:\n{}", wt.display(), stdout(&out));
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "HOSTSECRET", "ESCAPED: the host file was changed");
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    }
}

/// Finding 3: a fake common dir whose config sets core.fsmonitor, reached
/// through the admin dir's `commondir` or the worktree's `.git`, must never run
/// when the host removes the worktree; the removal still works.
#[test]
fn worktree_remove_never_runs_what_a_sandbox_planted() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let (repo, base) = managed(&f, &["a", "b"]);
    let marker_dir = f.dir.join("markers");
    std::fs::create_dir(&marker_dir).unwrap();
    std::fs::set_permissions(&marker_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = marker_dir.join("pwned");
    let fake = |wt: &Path| {
        format!(
            "git init -q --bare {w}/fake && printf '[core]\\n\\tfsmonitor = \"id -u > {m}; false\"\\n' >> {w}/fake/config && \
             mkdir -p {w}/fake/worktrees/x && echo ../.. > {w}/fake/worktrees/x/commondir && echo {w}/.git > {w}/fake/worktrees/x/gitdir && \
             echo 'ref: refs/heads/main' > {w}/fake/worktrees/x/HEAD && echo x > {w}/dirty && ",
            w = wt.display(),
            m = marker.display()
        )
    };
    // a: the admin dir's commondir; b: the worktree's .git.
    let admin = repo.join(".git/worktrees/a");
    let plant_a = format!("{}echo {}/fake > {}/commondir; echo DONE", fake(&base.join("a")), base.join("a").display(), admin.display());
    let plant_b = format!("{}echo gitdir: {}/fake/worktrees/x > .git; echo DONE", fake(&base.join("b")), base.join("b").display());
    assert!(ok(&sh(&base.join("a"), &plant_a)).contains("DONE"));
    assert!(ok(&sh(&base.join("b"), &plant_b)).contains("DONE"));
    let b = base.to_str().unwrap();
    let mut outs = Vec::new();
    for (id, force) in [("a", false), ("a", true), ("b", true)] {
        let mut args = vec!["remove", id, "--base", b];
        if force {
            args.push("--force");
        }
        outs.push(timed(std::process::Command::new(bin()).arg("worktree").args(&args), LIMIT).expect("worktree remove hung"));
        assert!(!marker.exists(), "ESCAPED: worktree remove ran the planted fsmonitor (as uid {})", std::fs::read_to_string(&marker).unwrap());
    }
    // Not forced, a dirty worktree is kept; forced, both are removed.
    assert_eq!(outs[0].status.code(), Some(125), "{}", stderr(&outs[0]));
    ok(&outs[1]);
    ok(&outs[2]);
    assert!(!base.join("a").exists() && !base.join("b").exists());
    assert_eq!(git(&repo, &["worktree", "list"]).lines().count(), 1, "{}", git(&repo, &["worktree", "list"]));
}

/// Finding 4: `swarmcell worktree add` must not run the repository's hooks as
/// root, nor chown through a symlink the repository owner planted.
#[test]
fn worktree_add_runs_no_hook_as_root_and_follows_no_planted_symlink() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let repo = owned_repo(&f.dir);
    let marker_dir = f.dir.join("markers");
    std::fs::create_dir(&marker_dir).unwrap();
    std::fs::set_permissions(&marker_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = marker_dir.join("hook-ran");
    let hook = repo.join(".git/hooks/post-checkout");
    std::fs::write(&hook, format!("#!/bin/sh\nid -u > {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&hook, Some(OWNER), Some(OWNER)).unwrap();
    // refs/heads/agent -> a root-owned directory.
    let rootdir = f.dir.join("root-owned");
    std::fs::create_dir(&rootdir).unwrap();
    std::os::unix::fs::symlink(&rootdir, repo.join(".git/refs/heads/agent")).unwrap();
    std::os::unix::fs::lchown(repo.join(".git/refs/heads/agent"), Some(OWNER), Some(OWNER)).unwrap();
    let base = f.dir.join("worktrees");
    let out = worktree_cmd(&["add", repo.to_str().unwrap(), "a", "--base", base.to_str().unwrap()]);
    let ran = std::fs::read_to_string(&marker).ok();
    assert!(ran.as_deref().map(str::trim) != Some("0"), "ESCAPED: the repository's post-checkout hook ran as root");
    assert!(ran.is_none(), "a hook ran during worktree add (as uid {ran:?})");
    let walk = std::process::Command::new("find").arg(&rootdir).args(["-printf", "%u %p\n"]).output().unwrap();
    assert!(stdout(&walk).lines().all(|l| l.starts_with("root ")), "ESCAPED: root chowned through the planted symlink:\n{}", stdout(&walk));
    // Without the symlink, the same repository gets a worktree (hooks still off).
    std::fs::remove_file(repo.join(".git/refs/heads/agent")).unwrap();
    let _ = out;
    ok(&worktree_cmd(&["add", repo.to_str().unwrap(), "b", "--base", base.to_str().unwrap()]));
    assert!(!marker.exists(), "a hook ran during worktree add");
    assert_eq!(git(&base.join("b"), &["branch", "--show-current"]), "agent/b/work");
}

/// Finding 5: objects are shared; an agent must not delete them or replace
/// one's content under its name.
#[test]
fn an_agent_cannot_delete_or_replace_objects_of_the_repository() {
    let f = Fixture::new();
    let (repo, base) = managed(&f, &["a"]);
    let blob = git(&repo, &["rev-parse", "main:README.md"]);
    let g = repo.join(".git");
    let script = format!(
        "evil=$(echo evil | git hash-object -w --stdin); \
         chmod -R u+w {g}/objects 2>/dev/null; \
         cp -f {g}/objects/$(echo $evil | cut -c1-2)/$(echo $evil | cut -c3-) {g}/objects/{d}/{r} 2>/dev/null && echo REPLACED; \
         for o in {g}/objects/*; do [ $o = {g}/objects/{d} ] || rm -rf $o 2>/dev/null; done; \
         for p in {g}/objects/pack {g}/objects/info; do [ -e $p ] || echo DELETED $p; done; true",
        g = g.display(),
        d = &blob[..2],
        r = &blob[2..]
    );
    let out = sh(&base.join("a"), &script);
    ok(&out);
    let fsck = std::process::Command::new("git").args(["-c", "safe.directory=*", "-C"]).arg(&repo).args(["fsck", "--strict"]).output().unwrap();
    assert!(fsck.status.success(), "ESCAPED: the repository is damaged: {}\n{}", stderr(&fsck), stdout(&out));
    assert_eq!(git(&repo, &["show", "main:README.md"]), "# demo", "ESCAPED: main's README was replaced");
}

/// Finding 6: HEAD and other git files made a FIFO or a symlink to a root-only
/// file: `worktree list`, a relaunch and `worktree remove` neither hang nor show it.
#[test]
fn special_files_planted_in_git_state_never_hang_or_leak_through_root() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let (repo, base) = managed(&f, &["a", "b"]);
    let secret = root_secret(&f, "head.txt", "TOPSECRET-HEAD");
    let g = repo.join(".git");
    // Every git path the agent can see: its admin dir, its branch ref, packed-refs, the index.
    let plant = |id: &str, how: &str| {
        format!(
            "for p in {g}/worktrees/{id}/HEAD {g}/worktrees/{id}/index {g}/worktrees/{id}/commondir {g}/worktrees/{id}/gitdir \
               {g}/refs/heads/agent/{id}/work {g}/packed-refs {g}/HEAD {g}/objects/info/alternates; do \
               rm -f $p 2>/dev/null; {how}; done; echo DONE",
            g = g.display()
        )
    };
    assert!(ok(&sh(&base.join("a"), &plant("a", "mkfifo $p 2>/dev/null"))).contains("DONE"));
    assert!(ok(&sh(&base.join("b"), &plant("b", &format!("ln -s {} $p 2>/dev/null", secret.display())))).contains("DONE"));
    let list = timed(std::process::Command::new(bin()).args(["worktree", "list", "--base", base.to_str().unwrap()]), Duration::from_secs(20))
        .expect("ESCAPED: `worktree list` hangs on a planted FIFO");
    assert!(!stdout(&list).contains("TOPSECRET"), "ESCAPED: `worktree list` printed a root-only file: {}", stdout(&list));
    ok(&list);
    for id in ["a", "b"] {
        let out = sh_in(&base.join(id), &[], "cat .git; echo RAN", Duration::from_secs(30)).expect("ESCAPED: the relaunch hangs on a planted FIFO");
        assert_no_sandbox_left();
        assert!(!stdout(&out).contains("TOPSECRET") && !stderr(&out).contains("TOPSECRET"), "{}", stdout(&out));
        assert!(stdout(&out).contains("RAN"), "the relaunch works: {}", stderr(&out));
    }
    for id in ["a", "b"] {
        let mut c = std::process::Command::new(bin());
        c.args(["worktree", "remove", id, "--force", "--base", base.to_str().unwrap()]);
        ok(&timed(&mut c, Duration::from_secs(30)).expect("ESCAPED: `worktree remove` hangs on a planted FIFO"));
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOPSECRET-HEAD");
    git(&repo, &["fsck"]);
}

/// Finding 7 (and rule 5): two sandboxes of one repository share no writable
/// directory; a socket or FIFO one creates is seen neither by the other nor by
/// the host's repository.
#[test]
fn two_sandboxes_of_one_repository_share_no_writable_directory() {
    let f = Fixture::new();
    let (repo, base) = managed(&f, &["a", "b"]);
    let g = repo.join(".git");
    let dirs = ["objects", "objects/pack", "objects/info", "refs/heads", "refs/heads/agent/a", "logs/refs/heads/agent/a", "worktrees/a", "refs", "."];
    let script = dirs
        .iter()
        .map(|d| {
            format!(
                "python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {g}/{d}/planted-sock 2>/dev/null; mkfifo {g}/{d}/planted-fifo 2>/dev/null; ",
                g = g.display()
            )
        })
        .collect::<String>()
        + "echo DONE";
    assert!(ok(&sh(&base.join("a"), &script)).contains("DONE"));
    let seen = ok(&sh(&base.join("b"), &format!("find {} -name 'planted-*' 2>/dev/null; echo END", g.display())));
    assert!(!seen.contains("planted-"), "ESCAPED: sandbox b sees what sandbox a created:\n{seen}");
    let host = std::process::Command::new("find").arg(&g).args(["-name", "planted-*"]).output().unwrap();
    assert!(stdout(&host).is_empty(), "ESCAPED: special files landed in the host's repository:\n{}", stdout(&host));
}

/// Finding 8, and the publisher: on a worktree made by plain `git worktree add
/// PATH -b feature-x`, commits work inside without error messages and reach the
/// host's `feature-x` (and nothing else) when the sandbox stops.
#[test]
fn commits_work_on_a_plain_git_worktree_and_are_published_on_stop() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let repo = owned_repo(&f.dir);
    ok(&git_as_owner(&repo, &["tag", "v1"]));
    ok(&git_as_owner(&repo, &["branch", "other"]));
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]));
    let before = git(&repo, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let script = "set -e; c='git -c user.name=agent -c user.email=a@x'; \
        echo one > one.txt; git add one.txt; $c commit -qm one; \
        git branch scratch; git stash list; git log --oneline main other v1 >/dev/null; \
        echo two > two.txt; git add two.txt; git stash -q; git stash pop -q; git add two.txt; $c commit -qm two; \
        git checkout -q scratch; echo s > s.txt; git add s.txt; $c commit -qm s; $c rebase -q feature-x; git checkout -q feature-x; \
        git log --format=%s -3 | tr '\\n' ' '; echo; echo COMMITTED";
    let out = sh(&wt, script);
    let text = ok(&out);
    assert!(text.contains("COMMITTED"), "{text}\n{}", stderr(&out));
    let err = stderr(&out);
    for bad in ["cannot lock ref", "packed-refs.lock", "Read-only file system", "fatal", "error"] {
        assert!(!err.contains(bad), "git printed {bad:?} inside the sandbox:\n{err}");
    }
    // Published: feature-x has the agent's commits; every other ref is unchanged.
    assert_eq!(git(&repo, &["log", "--format=%s", "-3", "feature-x"]).replace('\n', " "), "two one initial");
    let after = git(&repo, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let unchanged = |refs: &str| refs.lines().filter(|l| !l.starts_with("refs/heads/feature-x ")).map(String::from).collect::<Vec<_>>();
    assert_eq!(unchanged(&after), unchanged(&before), "only feature-x moved");
    git(&repo, &["fsck", "--strict"]);
    // The host worktree agrees with its branch.
    assert_eq!(git(&wt, &["status", "--porcelain"]), "", "the host's view of the worktree is clean");
}

/// The publisher while the sandbox runs: a commit reaches the host branch
/// within 2 s; a forced (non-fast-forward) move is refused.
#[test]
fn a_commit_is_published_within_two_seconds_while_the_sandbox_runs() {
    let f = Fixture::new();
    fixture_traversable(&f);
    let repo = owned_repo(&f.dir);
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]));
    let start_tip = git(&repo, &["rev-parse", "feature-x"]);
    let script = "c='git -c user.name=agent -c user.email=a@x'; echo one > one.txt; git add one.txt; $c commit -qm live; \
        git rev-parse HEAD > committed; sleep 6; \
        $c commit -q --amend -m rewritten; git rev-parse HEAD > amended; sleep 4";
    let (mut l, _ready) = spawn_run(&f.dir, &wt, &[], &["/bin/sh", "-c", script]);
    let seen = wait_for(Duration::from_secs(30), || std::fs::read_to_string(wt.join("committed")).ok().filter(|s| s.ends_with('\n')));
    let t0 = Instant::now();
    let commit = seen.trim().to_string();
    wait_for(Duration::from_secs(5), || (git(&repo, &["rev-parse", "feature-x"]) == commit).then_some(()));
    let took = t0.elapsed();
    assert!(took <= Duration::from_secs(2), "published after {took:?}");
    assert_ne!(commit, start_tip);
    l.wait();
    assert_no_sandbox_left();
    // The amend rewrote a published commit: not a fast-forward, not published.
    let amended = std::fs::read_to_string(wt.join("amended")).unwrap().trim().to_string();
    assert_ne!(amended, commit);
    assert_eq!(git(&repo, &["rev-parse", "feature-x"]), commit, "a non-fast-forward update was published");
    git(&repo, &["fsck", "--strict"]);
    // Its commits live only in its layer: the relaunch still has them.
    let out = sh(&wt, "git rev-parse HEAD");
    assert_eq!(ok(&out).trim(), amended);
}

/// Rule 6: one sandbox per worktree.
#[test]
fn a_second_sandbox_on_the_same_worktree_is_refused() {
    let f = Fixture::new();
    let (_repo, base) = managed(&f, &["a"]);
    let wt = base.join("a");
    let (mut first, ready) = spawn_run(&f.dir, &wt, &[], &["/bin/sleep", "30"]);
    ready_of(&ready);
    let second = sh_in(&wt, &[], "echo SECOND-RAN", Duration::from_secs(20)).expect("the second launch hangs");
    assert!(!stdout(&second).contains("SECOND-RAN"), "two sandboxes ran on one worktree");
    assert_eq!(second.status.code(), Some(125));
    assert!(stderr(&second).contains("already has a running sandbox"), "{}", stderr(&second));
    first.sigterm();
    first.wait();
    assert_no_sandbox_left();
    ok(&sh(&wt, "true"));
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `run --repo`: a worktree of another repository is refused; its own runs.
#[test]
fn run_repo_allows_only_the_named_repositories() {
    let f = Fixture::new();
    let (repo, base) = managed(&f, &["a"]);
    let other = f.dir.join("other");
    std::fs::create_dir(&other).unwrap();
    let other = owned_repo(&other);
    let wt = base.join("a");
    let out = sh_in(&wt, &["--repo", other.to_str().unwrap()], "echo RAN", LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    assert!(stderr(&out).contains("not one of the allowed repositories"), "{}", stderr(&out));
    let out = sh_in(&wt, &["--repo", other.to_str().unwrap(), "--repo", repo.to_str().unwrap()], "echo RAN", LIMIT).unwrap();
    assert!(ok(&out).contains("RAN"));
    assert_no_sandbox_left();
}

/// `[git] allow_force_publish = true`: a rewritten branch is published too.
#[test]
fn a_policy_may_allow_forced_publishes() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]));
    let policy = f.dir.join("force.toml");
    std::fs::write(&policy, "[git]\nallow_force_publish = true\n").unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = "git -c user.name=a -c user.email=a@x";
    ok(&sh(&wt, &format!("echo 1 > f && git add f && {c} commit -qm one")));
    let first = git(&repo, &["rev-parse", "feature-x"]);
    let out =
        sh_in(&wt, &["--policy", policy.to_str().unwrap()], &format!("{c} commit -q --amend -m rewritten && git rev-parse HEAD"), LIMIT).unwrap();
    assert_no_sandbox_left();
    let amended = ok(&out).trim().to_string();
    assert_ne!(amended, first);
    assert_eq!(git(&repo, &["rev-parse", "feature-x"]), amended, "{}", stderr(&out));
}

/// Trees a sandbox can make that once stopped a recursive removal (deeper than
/// PATH_MAX, names that are not UTF-8) do not stop a relaunch or `worktree remove`.
#[test]
fn deep_trees_and_odd_names_do_not_stop_a_relaunch_or_a_removal() {
    let f = Fixture::new();
    let (repo, base) = managed(&f, &["a"]);
    let g = repo.join(".git");
    let deep = "d=$PWD; i=0; while [ $i -lt 2500 ]; do mkdir n && cd n || break; i=$((i+1)); done; touch \"$(printf 'odd-\\377')\"; cd \"$d\"";
    let script = format!(
        "{deep}; cd {g}/worktrees/a && rm -f HEAD && mkdir HEAD && cd HEAD && {deep}; cd {g}/objects && {deep}; \
         touch \"{g}/objects/$(printf '\\377\\376')\"; echo DONE",
        g = g.display()
    );
    // (Planted without disk limits: measuring stops a sandbox whose tree grows too deep.)
    let policy = f.dir.join("no-disk-limit.toml");
    std::fs::write(&policy, "[limits]\ndisk = \"max\"\n").unwrap();
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let no_limit = ["--policy", policy.to_str().unwrap()];
    let planted = sh_in(&base.join("a"), &no_limit, &script, LIMIT).expect("planting hangs");
    assert_no_sandbox_left();
    assert!(ok(&planted).contains("DONE"));
    // Under the default policy's best-effort disk limit a tree too deep to
    // measure is refused at the start (fail closed, in one line); nothing hangs.
    let out = sh(&base.join("a"), "echo RAN");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("deeper than") && !stdout(&out).contains("RAN"), "{}", stderr(&out));
    // Without disk limits the relaunch builds its git view over the planted trees and runs.
    let out = sh_in(&base.join("a"), &no_limit, "git status --porcelain >/dev/null && echo RAN", LIMIT).expect("the relaunch hangs");
    assert_no_sandbox_left();
    assert!(ok(&out).contains("RAN"), "{}", stderr(&out));
    ok(&worktree_cmd(&["remove", "a", "--force", "--base", base.to_str().unwrap()]));
    assert!(!base.join("a").exists());
}

/// Between two launches the owner commits in the worktree on the host: the
/// next launch starts from that commit (the layer's published, older tip does
/// not hide it), and the agent's next commit is published as a fast-forward.
#[test]
fn a_host_commit_between_launches_is_where_the_agent_continues() {
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]));
    let c = "git -c user.name=a -c user.email=a@x";
    ok(&sh(&wt, &format!("echo 1 > a.txt && git add a.txt && {c} commit -qm agent-1")));
    std::fs::write(wt.join("host.txt"), "host").unwrap();
    std::os::unix::fs::chown(wt.join("host.txt"), Some(OWNER), Some(OWNER)).unwrap();
    ok(&git_as_owner(&wt, &["add", "host.txt"]));
    ok(&git_as_owner(&wt, &["commit", "-qm", "host-1"]));
    let out = sh(&wt, &format!("git status --porcelain; git log --format=%s -1; echo 2 > b.txt && git add b.txt && {c} commit -qm agent-2"));
    let text = ok(&out);
    assert_eq!(text.trim(), "host-1", "the agent starts from the host's commit, clean: {text}\n{}", stderr(&out));
    assert_eq!(git(&repo, &["log", "--format=%s", "-3", "feature-x"]).replace('\n', " "), "agent-2 host-1 agent-1");
}

/// Commits the publisher refused (not a fast-forward) live only in the layer:
/// `worktree remove` keeps the worktree unless forced.
#[test]
fn worktree_remove_keeps_a_worktree_with_unpublished_commits() {
    let f = Fixture::new();
    let (repo, base) = managed(&f, &["a"]);
    let wt = base.join("a");
    let c = "git -c user.name=a -c user.email=a@x";
    ok(&sh(&wt, &format!("echo 1 > f && git add f && {c} commit -qm one")));
    let published = git(&repo, &["rev-parse", "agent/a/work"]);
    ok(&sh(&wt, &format!("{c} commit -q --amend -m rewritten")));
    assert_eq!(git(&repo, &["rev-parse", "agent/a/work"]), published, "not a fast-forward: not published");
    let b = base.to_str().unwrap();
    let out = worktree_cmd(&["remove", "a", "--base", b]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("unpublished commits"), "{}", stderr(&out));
    assert!(wt.exists());
    ok(&worktree_cmd(&["remove", "a", "--force", "--base", b]));
    assert!(!wt.exists());
}
