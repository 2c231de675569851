//! `swarmcell verify`, host-side git checks (parent side, root): each plants
//! one attack of issue #14 in a fixture of its own, from inside a real sandbox
//! where an agent would (or as the repository's owner), then relaunches or
//! runs the host command that used to follow it, and reports `blocked` or
//! `ESCAPED` (`ok` / `BROKEN` for the function check: an agent's commit is
//! published).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::OWNER;
use crate::git::{self, cmd};

const LIMIT: Duration = Duration::from_secs(30);

struct Fixture {
    dir: PathBuf,
    /// Worktree keys recorded during the checks, forgotten at the end.
    keys: Vec<String>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for k in &self.keys {
            let _ = git::record::forget(k, OWNER);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check(name: &str, status: &str, detail: impl Into<String>) -> Value {
    json!({ "name": name, "status": status, "detail": detail.into() })
}

/// A command's output, or None when it had to be killed after `limit`.
fn timed(mut c: Command, limit: Duration) -> Option<Output> {
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn sh(exe: &Path, policy: &Option<PathBuf>, wt: &Path, script: &str) -> Option<Output> {
    let mut c = Command::new(exe);
    c.arg("run").arg("--worktree").arg(wt);
    if let Some(p) = policy {
        c.arg("--policy").arg(p);
    }
    c.args(["--", "/bin/sh", "-c", script]);
    timed(c, LIMIT)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn owner_git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut all: Vec<std::ffi::OsString> = vec!["-C".into(), dir.into(), "-c".into(), "user.name=v".into(), "-c".into(), "user.email=v@v".into()];
    all.extend(args.iter().map(|a| a.into()));
    let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
    cmd::run_as((OWNER, OWNER), &refs, &[], cmd::DEADLINE).map(|o| String::from_utf8_lossy(&o).trim().to_string()).map_err(|e| e.to_string())
}

impl Fixture {
    /// DIR/NAME: a repository owned by OWNER with one commit on main.
    fn repo(&self, name: &str) -> Result<PathBuf, String> {
        let repo = self.dir.join(name);
        std::fs::create_dir(&repo).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&repo, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
        owner_git(&repo, &["init", "-q", "-b", "main"])?;
        std::fs::write(repo.join("README.md"), "# verify\n").map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(repo.join("README.md"), Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
        owner_git(&repo, &["add", "README.md"])?;
        owner_git(&repo, &["commit", "-q", "-m", "initial"])?;
        Ok(repo)
    }

    /// `swarmcell worktree add REPO ID --base DIR/base`.
    fn managed(&mut self, repo: &Path, id: &str) -> Result<PathBuf, String> {
        let base = self.dir.join("base");
        let wt = git::add(&git::AddRequest { repo, id, base: &base, branch: None, owner: None }).map_err(|e| e.to_string())?;
        self.keys.push(git::record::Opened::open(&wt).map_err(|e| e.to_string())?.key());
        Ok(wt)
    }

    fn note(&mut self, wt: &Path) {
        if let Ok(o) = git::record::Opened::open(wt) {
            self.keys.push(o.key());
        }
    }
}

/// The checks, in order.
pub fn checks(exe: &Path, policy: &Option<PathBuf>) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!("swarmcell-verify-git-{}-{}", std::process::id(), crate::launch::random_u32()));
    if let Err(e) = std::fs::create_dir(&dir).and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))) {
        return vec![check("git: fixture", "BROKEN", format!("{}: {e}", dir.display()))];
    }
    let mut f = Fixture { dir, keys: Vec::new() };
    type Check = fn(&mut Fixture, &Path, &Option<PathBuf>) -> Result<Value, String>;
    let all: [(&str, Check); 8] = [
        ("git: .git redirected to another repository", redirect),
        ("git: fake common dir binds a host file", fake_common),
        ("git: fsmonitor planted for worktree remove", fsmonitor),
        ("git: repository hook run by worktree add", add_hook),
        ("git: delete or replace shared objects", objects),
        ("git: FIFO or symlink planted in git state", special_files),
        ("git: special file in a shared git directory", shared_dir),
        ("git: an agent's commit is published", publish),
    ];
    all.iter()
        .map(|(name, run)| match run(&mut f, exe, policy) {
            Ok(mut v) => {
                v["name"] = json!(name);
                v
            }
            Err(e) => check(name, "BROKEN", e),
        })
        .collect()
}

fn redirect(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r1")?;
    let wt = f.managed(&repo, "v1")?;
    let victim = f.repo("victim1")?;
    owner_git(&victim, &["config", "credential.token", "VERIFY-SECRET"])?;
    let vwt = f.dir.join("victim1-wt");
    std::fs::create_dir(&vwt).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&vwt, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    owner_git(&victim, &["worktree", "add", "-q", &vwt.to_string_lossy()])?;
    let admin = victim.join(".git/worktrees/victim1-wt");
    sh(exe, policy, &wt, &format!("echo 'gitdir: {}' > .git", admin.display())).ok_or("the plant timed out")?;
    let out = sh(exe, policy, &wt, &format!("cat {}/.git/config", victim.display())).ok_or("the relaunch hung")?;
    Ok(if text(&out).contains("VERIFY-SECRET") {
        check("", "ESCAPED", "the relaunch read another repository's config")
    } else if out.status.code() == Some(125) {
        check("", "blocked", "relaunch refused: the .git no longer matches the worktree's record")
    } else {
        check("", "ESCAPED", format!("the relaunch ran on a redirected .git (exit {:?})", out.status.code()))
    })
}

fn fake_common(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r2")?;
    let wt = f.managed(&repo, "v2")?;
    let hidden = f.dir.join("hidden2");
    std::fs::create_dir(&hidden).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    let secret = hidden.join("secret");
    std::fs::write(&secret, "VERIFY-HOST-FILE").map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&secret, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    let plant = format!(
        "mkdir -p fake/worktrees/x fake/refs && echo 'ref: refs/heads/main' > fake/HEAD && cp fake/HEAD fake/worktrees/x/HEAD && \
         echo ../.. > fake/worktrees/x/commondir && echo \"$PWD/.git\" > fake/worktrees/x/gitdir && ln -s {} fake/objects && \
         echo \"gitdir: $PWD/fake/worktrees/x\" > .git",
        secret.display()
    );
    sh(exe, policy, &wt, &plant).ok_or("the plant timed out")?;
    let out = sh(exe, policy, &wt, "cat fake/objects").ok_or("the relaunch hung")?;
    Ok(if text(&out).contains("VERIFY-HOST-FILE") {
        check("", "ESCAPED", "a host file was bound into the sandbox")
    } else {
        check("", "blocked", format!("relaunch exit {:?}; the planted symlink was not followed", out.status.code()))
    })
}

fn fsmonitor(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r3")?;
    let wt = f.managed(&repo, "v3")?;
    let markers = f.dir.join("markers3");
    std::fs::create_dir(&markers).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
    let marker = markers.join("ran");
    let plant = format!(
        "git init -q --bare fake && printf '[core]\\n\\tfsmonitor = \"id -u > {m}; false\"\\n' >> fake/config && mkdir -p fake/worktrees/x && \
         echo ../.. > fake/worktrees/x/commondir && echo $PWD/.git > fake/worktrees/x/gitdir && echo 'ref: refs/heads/main' > fake/worktrees/x/HEAD; \
         echo $PWD/fake > {admin}/commondir 2>/dev/null; echo gitdir: $PWD/fake/worktrees/x > .git",
        m = marker.display(),
        admin = repo.join(".git/worktrees/v3").display()
    );
    sh(exe, policy, &wt, &plant).ok_or("the plant timed out")?;
    let base = f.dir.join("base");
    let r1 = git::remove(&base, "v3", false);
    let r2 = git::remove(&base, "v3", true);
    Ok(if marker.exists() {
        check("", "ESCAPED", "worktree remove ran the planted core.fsmonitor")
    } else if r2.is_err() && wt.exists() {
        check("", "BROKEN", format!("worktree remove --force failed: {:?} / {:?}", r1.err().map(|e| e.to_string()), r2.err().map(|e| e.to_string())))
    } else {
        check("", "blocked", "worktree remove ran nothing the sandbox planted and removed the worktree")
    })
}

fn add_hook(f: &mut Fixture, _exe: &Path, _policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r4")?;
    let markers = f.dir.join("markers4");
    std::fs::create_dir(&markers).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
    let marker = markers.join("ran");
    let hook = repo.join(".git/hooks/post-checkout");
    std::fs::write(&hook, format!("#!/bin/sh\nid -u > {}\n", marker.display())).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&hook, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    let made = f.managed(&repo, "v4");
    Ok(match (std::fs::read_to_string(&marker), made) {
        (Ok(uid), _) => check("", "ESCAPED", format!("the repository's post-checkout hook ran as uid {}", uid.trim())),
        (Err(_), Ok(_)) => check("", "blocked", "worktree add ran git as the owner with hooks off"),
        (Err(_), Err(e)) => check("", "BROKEN", e),
    })
}

fn objects(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r5")?;
    let wt = f.managed(&repo, "v5")?;
    let g = repo.join(".git");
    sh(
        exe,
        policy,
        &wt,
        &format!(
            "chmod -R u+w {g}/objects /.swarmcell 2>/dev/null; rm -rf {g}/objects/* /.swarmcell/git-objects/* 2>/dev/null; true",
            g = g.display()
        ),
    )
    .ok_or("the attack timed out")?;
    Ok(match owner_git(&repo, &["fsck", "--strict"]).and_then(|_| owner_git(&repo, &["show", "main:README.md"])) {
        Ok(t) if t == "# verify" => check("", "blocked", "the real object store is read-only in the sandbox; git fsck is clean"),
        Ok(t) => check("", "ESCAPED", format!("main:README.md is now {t:?}")),
        Err(e) => check("", "ESCAPED", format!("the repository is damaged: {e}")),
    })
}

fn special_files(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r6")?;
    let wt = f.managed(&repo, "v6")?;
    let g = repo.join(".git");
    let plant = format!(
        "for p in {g}/worktrees/v6/HEAD {g}/worktrees/v6/index {g}/refs/heads/agent/v6/work {g}/packed-refs {g}/HEAD {g}/worktrees/v6/commondir; do rm -f $p; mkfifo $p; done; \
         rm -f {g}/config; ln -s /dev/zero {g}/config",
        g = g.display()
    );
    sh(exe, policy, &wt, &plant).ok_or("the plant timed out")?;
    let start = Instant::now();
    let relaunch = sh(exe, policy, &wt, "true");
    let listed = git::list(&f.dir.join("base"));
    Ok(match relaunch {
        None => check("", "ESCAPED", "the relaunch hangs on a planted FIFO"),
        Some(o) if o.status.success() && listed.is_ok() => {
            check("", "blocked", format!("relaunch and worktree list took {} ms; nothing planted was opened", start.elapsed().as_millis()))
        }
        Some(o) => check("", "BROKEN", format!("relaunch exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr).trim())),
    })
}

fn shared_dir(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r7")?;
    let a = f.managed(&repo, "v7a")?;
    let b = f.managed(&repo, "v7b")?;
    let g = repo.join(".git");
    sh(
        exe,
        policy,
        &a,
        &format!("for d in {g} {g}/objects {g}/refs/heads {g}/objects/pack; do mkfifo $d/planted-fifo 2>/dev/null; done; true", g = g.display()),
    )
    .ok_or("the plant timed out")?;
    let seen = sh(exe, policy, &b, &format!("find {} /.swarmcell -name 'planted-*' 2>/dev/null; true", g.display())).ok_or("the check hung")?;
    let host = Command::new("find").arg(&g).args(["-name", "planted-*"]).output().map(|o| text(&o)).unwrap_or_default();
    Ok(if text(&seen).contains("planted-") || !host.trim().is_empty() {
        check("", "ESCAPED", "a FIFO one sandbox made is seen by another sandbox or in the real repository")
    } else {
        check("", "blocked", "each sandbox writes its own git layer; the real repository is read-only")
    })
}

fn publish(f: &mut Fixture, exe: &Path, policy: &Option<PathBuf>) -> Result<Value, String> {
    let repo = f.repo("r8")?;
    let wt = f.dir.join("feature");
    std::fs::create_dir(&wt).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&wt, Some(OWNER), Some(OWNER)).map_err(|e| e.to_string())?;
    owner_git(&repo, &["worktree", "add", "-q", &wt.to_string_lossy(), "-b", "feature-x"])?;
    f.note(&wt);
    let out = sh(exe, policy, &wt, "echo x > x && git add x && git -c user.name=a -c user.email=a@a commit -qm agent 2>&1 && git rev-parse HEAD")
        .ok_or("the sandbox hung")?;
    let head = text(&out).lines().last().unwrap_or("").trim().to_string();
    let host = owner_git(&repo, &["rev-parse", "feature-x"])?;
    Ok(if head.len() == 40 && host == head {
        check("", "ok", "a commit on a plain `git worktree add -b` worktree reached the host's branch at stop")
    } else {
        check("", "BROKEN", format!("inside: {}; host feature-x {host}", text(&out).trim()))
    })
}
