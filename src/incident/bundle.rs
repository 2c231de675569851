//! Host side (root): the forensic bundle of a frozen sandbox, a directory
//! (0700, files 0600, root's) under the daemon's state directory:
//!
//! ```text
//! incidents/INCIDENT_ID/
//!   incident.json      the incident record (seed template)
//!   processes.json     per process: pid, status, cmdline, cwd, open files
//!   net/tcp tcp6 udp udp6 unix raw packet   its network namespace's sockets
//!   mountinfo          its mount table
//!   cgroup.json        usage and event counters of its cgroups
//!   denials.json       its denial counts
//!   events.json        its recent audit events
//!   git/status         `git status --porcelain=v1` of the worktree
//!   git/big.json       changed tracked files above 1 MiB (path, size), left
//!                      out of the stat and the patch: git would read them whole
//!   git/diff.stat      `git diff --stat HEAD`
//!   git/diff.patch     `git diff HEAD` (no external diff, no textconv, no
//!                      binary patches; cut at 8 MiB)
//!   git/untracked.json hashed listing of untracked files
//!   manifest.json      SHA-256 and size of every file above
//!   MANIFEST.sha256    the same, for `sha256sum -c`
//! ```
//!
//! The worktree was written by the sandbox: git runs as the worktree's owner
//! ([`crate::git::cmd`]) with a deadline of [`GIT_DEADLINE`] per command and
//! bounded output, without reading big files; untracked files
//! are opened only through [`crate::fs::safe_open`] (no symlink is followed,
//! a FIFO or device is never opened), and at most [`MAX_HASHED`] bytes of each
//! and [`MAX_TOTAL_HASHED`] in all are read. /proc files are read bounded.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Most bytes hashed of one untracked file, and of all of them.
pub const MAX_HASHED: u64 = 64 << 20;
pub const MAX_TOTAL_HASHED: u64 = 512 << 20;
/// Most untracked files listed, processes described, fds per process.
const MAX_UNTRACKED: usize = 10_000;
const MAX_PROCS: usize = 1024;
const MAX_FDS: usize = 1024;
/// Most bytes read of one /proc file.
const MAX_PROC_FILE: u64 = 4 << 20;
/// Each git command's deadline (three of them: status, diff --stat, diff).
const GIT_DEADLINE: Duration = Duration::from_secs(5);
/// Changed files above this many bytes are not diffed (git would hash them whole).
const BIG_FILE: i64 = 1 << 20;
/// More big changed files than this: no stat and no patch at all.
const MAX_BIG: usize = 1000;
/// Most bytes of patch kept.
const MAX_PATCH: u64 = 8 << 20;

/// What the bundle is about.
pub struct Input {
    pub incident_id: String,
    /// The daemon's id of the sandbox, and its launcher's.
    pub sandbox: String,
    pub launcher_id: String,
    pub agent: Option<String>,
    pub severity: String,
    pub kind: String,
    pub description: String,
    pub init_pid: Option<i32>,
    pub cgroups: Vec<PathBuf>,
    pub worktree: PathBuf,
    pub denials: Value,
    pub events: Vec<Value>,
    pub timeline: Vec<Value>,
}

struct Writer {
    dir: PathBuf,
    files: Vec<(String, String, u64)>,
}

impl Writer {
    fn put(&mut self, rel: &str, data: &[u8]) -> Result<(), String> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(data).map_err(|e| format!("{}: {e}", path.display()))?;
        self.files.push((rel.to_string(), hex(&Sha256::digest(data)), data.len() as u64));
        Ok(())
    }

    fn json(&mut self, rel: &str, v: &Value) -> Result<(), String> {
        let mut text = serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?;
        text.push(b'\n');
        self.put(rel, &text)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(buf)
}

fn text(path: &Path) -> Option<String> {
    read_bounded(path, MAX_PROC_FILE).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn process(pid: i32) -> Value {
    let p = PathBuf::from(format!("/proc/{pid}"));
    let cmdline: Vec<String> = read_bounded(&p.join("cmdline"), 64 * 1024)
        .map(|b| b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default();
    let link = |rel: &str| std::fs::read_link(p.join(rel)).ok().map(|l| l.to_string_lossy().into_owned());
    let fds: Vec<Value> = std::fs::read_dir(p.join("fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .take(MAX_FDS)
                .map(|e| json!({ "fd": e.file_name().to_string_lossy(), "target": std::fs::read_link(e.path()).ok().map(|l| l.to_string_lossy().into_owned()) }))
                .collect()
        })
        .unwrap_or_default();
    json!({ "pid": pid, "cmdline": cmdline, "cwd": link("cwd"), "exe": link("exe"), "root": link("root"),
            "status": text(&p.join("status")), "fds": fds })
}

/// `git -C WORKTREE ARGS` as the worktree's owner.
fn git(owner: (u32, u32), worktree: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    git_os(owner, worktree, &args)
}

fn git_os(owner: (u32, u32), worktree: &Path, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, String> {
    let c = crate::git::cmd::flag("work-tree", worktree);
    let dash_c = std::ffi::OsString::from("-C");
    let mut all: Vec<&std::ffi::OsStr> = vec![&dash_c, worktree.as_os_str(), &c];
    all.extend_from_slice(args);
    crate::git::cmd::run_as(owner, &all, &[], GIT_DEADLINE).map_err(|e| e.to_string())
}

/// A changed tracked file too big to diff: its name and size.
type BigFile = (Vec<u8>, i64);

/// The changed tracked files above [`BIG_FILE`] bytes (size from lstat, never
/// read): git would hash all of a file (a 1 TiB sparse one: minutes) to show
/// it in a stat or a patch. None: more than [`MAX_BIG`] of them.
fn big_changes(owner: (u32, u32), worktree: &Path) -> Result<Option<Vec<BigFile>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let names = git(owner, worktree, &["diff", "--name-only", "-z", "--no-renames", "HEAD"])?;
    let dir = crate::fs::safe_open::open_dir_nofollow(worktree, Some(owner.0)).map_err(|e| e.to_string())?;
    let mut big = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let st = nix::sys::stat::fstatat(&dir.fd, std::ffi::OsStr::from_bytes(name), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if let Ok(st) = st
            && st.st_size > BIG_FILE
        {
            if big.len() >= MAX_BIG {
                return Ok(None);
            }
            big.push((name.to_vec(), st.st_size));
        }
    }
    Ok(Some(big))
}

/// Hash the untracked files `names` (relative to the worktree) safely.
fn untracked(worktree: &Path, owner: u32, names: &[&[u8]]) -> Value {
    use std::os::unix::ffi::OsStrExt;
    let dir = match crate::fs::safe_open::open_dir_nofollow(worktree, Some(owner)) {
        Ok(d) => d,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let mut budget = MAX_TOTAL_HASHED;
    let mut files = Vec::new();
    for name in names.iter().take(MAX_UNTRACKED) {
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        let shown = String::from_utf8_lossy(name).into_owned();
        // The type first, without following or opening anything.
        let st = nix::sys::stat::fstatat(&dir.fd, rel, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        let Ok(st) = st else {
            files.push(json!({ "path": shown, "error": "gone" }));
            continue;
        };
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => "file",
            libc::S_IFLNK => "symlink",
            libc::S_IFIFO => "fifo",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR | libc::S_IFBLK => "device",
            libc::S_IFDIR => "directory",
            _ => "other",
        };
        let mut entry = json!({ "path": shown, "type": kind, "size": st.st_size, "mode": format!("{:o}", st.st_mode & 0o7777), "uid": st.st_uid });
        if kind == "symlink" {
            // The link's text (readlinkat never follows it), not its target's content.
            if let Ok(t) = nix::fcntl::readlinkat(&dir.fd, rel) {
                entry["target"] = json!(t.to_string_lossy());
            }
        } else if kind == "file" {
            match crate::fs::safe_open::open_beneath(dir.fd.as_fd(), worktree, rel, crate::fs::safe_open::Kind::File, None) {
                Ok(c) => {
                    let want = MAX_HASHED.min(budget);
                    let mut h = Sha256::new();
                    let mut r = std::fs::File::from(c.fd).take(want);
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut n = 0u64;
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                h.update(&buf[..k]);
                                n += k as u64;
                            }
                        }
                    }
                    budget -= n;
                    entry["sha256"] = json!(hex(&h.finalize()));
                    entry["hashed_bytes"] = json!(n);
                    if (n as i64) < st.st_size {
                        entry["truncated"] = json!(true);
                    }
                }
                Err(e) => entry["error"] = json!(e.to_string()),
            }
        }
        files.push(entry);
    }
    json!({ "files": files, "listed": files.len(), "total": names.len() })
}

use std::os::fd::AsFd;

/// The entries below a worktree (relative names), breadth first, without
/// following a symlink or crossing a mount, at most [`MAX_UNTRACKED`] and 16
/// levels deep.
fn walk(worktree: &Path, owner: u32) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(root) = crate::fs::safe_open::open_dir_nofollow(worktree, Some(owner)) else { return Vec::new() };
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut dirs: std::collections::VecDeque<(PathBuf, usize)> = [(PathBuf::new(), 0)].into();
    while let Some((rel, depth)) = dirs.pop_front() {
        let dir = if rel.as_os_str().is_empty() {
            None
        } else {
            match crate::fs::safe_open::open_beneath(root.fd.as_fd(), worktree, &rel, crate::fs::safe_open::Kind::Dir, None) {
                Ok(d) => Some(d),
                Err(_) => continue,
            }
        };
        let fd = dir.as_ref().map_or(root.fd.as_fd(), |d| d.fd.as_fd());
        let Ok(names) = crate::fs::safe_open::list_dir(fd, &worktree.join(&rel)) else { continue };
        for name in names {
            if out.len() >= MAX_UNTRACKED {
                return out;
            }
            let child = rel.join(&name);
            let st = nix::sys::stat::fstatat(fd, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
            if st.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
                if depth < 16 && name != ".git" {
                    dirs.push_back((child.clone(), depth + 1));
                }
                continue;
            }
            out.push(child.as_os_str().as_bytes().to_vec());
        }
    }
    out
}

/// Write the bundle under `base` (created 0700); returns its directory.
pub fn write(base: &Path, input: &Input) -> Result<PathBuf, String> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let dir = base.join(&input.incident_id);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut w = Writer { dir: dir.clone(), files: Vec::new() };
    let timestamp = crate::denials::aggregate::unix_now();
    w.json(
        "incident.json",
        &json!({
            "incident_id": input.incident_id,
            "timestamp": timestamp,
            "severity": input.severity,
            "type": input.kind,
            "description": input.description,
            "affected_agent": input.agent,
            "status": "contained",
            "timeline": input.timeline,
            "sandbox": input.sandbox,
            "launcher_sandbox": input.launcher_id,
            "worktree": input.worktree,
        }),
    )?;
    let pids = super::freezer::pids(&input.cgroups);
    let procs: Vec<Value> = pids.iter().take(MAX_PROCS).map(|p| process(*p)).collect();
    w.json("processes.json", &json!({ "count": pids.len(), "processes": procs }))?;
    if let Some(init) = input.init_pid {
        for name in ["tcp", "tcp6", "udp", "udp6", "unix", "raw", "packet"] {
            let data = read_bounded(Path::new(&format!("/proc/{init}/net/{name}")), MAX_PROC_FILE).unwrap_or_default();
            w.put(&format!("net/{name}"), &data)?;
        }
        w.put("mountinfo", &read_bounded(Path::new(&format!("/proc/{init}/mountinfo")), MAX_PROC_FILE).unwrap_or_default())?;
    }
    let mut cg = serde_json::Map::new();
    for d in &input.cgroups {
        let mut files = serde_json::Map::new();
        for f in [
            "memory.usage_in_bytes",
            "memory.max_usage_in_bytes",
            "memory.current",
            "memory.peak",
            "memory.events",
            "memory.oom_control",
            "memory.failcnt",
            "pids.current",
            "pids.events",
            "cpuacct.usage",
            "cpu.stat",
            "freezer.state",
            "cgroup.events",
        ] {
            if let Some(t) = read_bounded(&d.join(f), 64 * 1024) {
                files.insert(f.to_string(), json!(String::from_utf8_lossy(&t).trim()));
            }
        }
        cg.insert(d.display().to_string(), Value::Object(files));
    }
    w.json("cgroup.json", &Value::Object(cg))?;
    w.json("denials.json", &input.denials)?;
    w.json("events.json", &json!(input.events))?;
    // The worktree, as its owner sees it.
    match std::fs::symlink_metadata(&input.worktree) {
        Ok(m) if m.uid() != 0 && m.is_dir() => {
            let owner = (m.uid(), m.gid());
            let status = git(owner, &input.worktree, &["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=no"]);
            match &status {
                Ok(out) => {
                    w.put("git/status", out)?;
                    let names: Vec<&[u8]> = out.split(|b| *b == 0).filter_map(|e| e.strip_prefix(b"?? ")).collect();
                    w.json("git/untracked.json", &untracked(&input.worktree, m.uid(), &names))?;
                }
                Err(e) => w.put("git/status", format!("error: {e}\n").as_bytes())?,
            }
            // Changed files above BIG_FILE are left out of the stat and the
            // patch (listed in git/big.json), never read.
            let (stat, mut diff) = match big_changes(owner, &input.worktree) {
                Ok(Some(big)) => {
                    use std::os::unix::ffi::OsStrExt;
                    let listed: Vec<Value> = big.iter().map(|(n, size)| json!({ "path": String::from_utf8_lossy(n), "size": size })).collect();
                    w.json("git/big.json", &json!({ "limit": BIG_FILE, "files": listed }))?;
                    let mut spec: Vec<std::ffi::OsString> = vec!["--".into(), ".".into()];
                    for (n, _) in &big {
                        let mut x = std::ffi::OsString::from(":(exclude,literal)");
                        x.push(std::ffi::OsStr::from_bytes(n));
                        spec.push(x);
                    }
                    let run = |first: &[&str]| {
                        let mut args: Vec<&std::ffi::OsStr> = first.iter().map(std::ffi::OsStr::new).collect();
                        args.extend(spec.iter().map(|s| s.as_os_str()));
                        git_os(owner, &input.worktree, &args).unwrap_or_else(|e| format!("error: {e}\n").into_bytes())
                    };
                    let base = ["-c", "core.bigFileThreshold=1m", "diff", "--no-ext-diff", "--no-textconv", "--no-renames"];
                    (run(&[&base[..], &["--stat=200", "HEAD"]].concat()), run(&[&base[..], &["HEAD"]].concat()))
                }
                Ok(None) => {
                    let e = format!("error: more than {MAX_BIG} changed files above {BIG_FILE} bytes: no stat, no patch\n").into_bytes();
                    (e.clone(), e)
                }
                Err(e) => (format!("error: {e}\n").into_bytes(), format!("error: {e}\n").into_bytes()),
            };
            w.put("git/diff.stat", &stat)?;
            if diff.len() as u64 > MAX_PATCH {
                diff.truncate(MAX_PATCH as usize);
                diff.extend_from_slice(b"\n[swarmcell: patch cut at its size limit; see git/diff.stat]\n");
            }
            w.put("git/diff.patch", &diff)?;
        }
        _ => w.put("git/status", b"error: the worktree is not a directory owned by a user\n")?,
    }
    if !w.files.iter().any(|(p, _, _)| p == "git/untracked.json") {
        // Not a git worktree (or git failed): every file, hashed the same way.
        let owner = std::fs::symlink_metadata(&input.worktree).map(|m| m.uid()).unwrap_or(0);
        let names = walk(&input.worktree, owner);
        let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        w.json("worktree.json", &untracked(&input.worktree, owner, &refs))?;
    }
    let manifest: Vec<Value> = w.files.iter().map(|(p, h, n)| json!({ "path": p, "sha256": h, "size": n })).collect();
    let sums: String = w.files.iter().map(|(p, h, _)| format!("{h}  {p}\n")).collect();
    w.json("manifest.json", &json!({ "algorithm": "sha256", "files": manifest }))?;
    w.put("MANIFEST.sha256", sums.as_bytes())?;
    Ok(dir)
}
