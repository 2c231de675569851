//! The real OpenCode server (npm opencode-linux-x64, pinned in
//! scripts/install-opencode) runs under the default policy, with Landlock and
//! seccomp enforced, and answers its health endpoint inside the sandbox.

mod common;

use common::*;

const OPENCODE: &str = "/opt/swarmcell/bin/opencode";

fn require_opencode() {
    assert!(std::path::Path::new(OPENCODE).exists(), "OpenCode is not installed at {OPENCODE}: run scripts/install-opencode (scripts/test does)");
}

#[test]
fn opencode_serves_health_inside_the_default_sandbox() {
    require_opencode();
    let f = Fixture::new();
    let probe = bin();
    let script = format!(
        "grep -E '^Seccomp:' /proc/self/status; [ ${{#OPENCODE_SERVER_PASSWORD}} -ge 32 ] && echo has-a-secret; \
         opencode serve --hostname 127.0.0.1 --port 4096 >/tmp/opencode.log 2>&1 & \
         for i in $(seq 1 120); do PROBE_PASSWORD=$OPENCODE_SERVER_PASSWORD {probe} __probe http-get 127.0.0.1:4096/global/health && break; sleep 0.25; done; \
         {probe} __probe http-get 127.0.0.1:4096/global/health; \
         kill $!; wait; ls -a /tmp/home"
    );
    let out = f.sh(&["--ro", &bin_dir()], &script);
    let text = stdout(&out);
    assert!(text.contains("Seccomp:\t2") && text.contains("has-a-secret"), "{text}");
    assert!(text.contains("BROKEN HTTP/1.1 401"), "without the secret OpenCode refuses: {text}");
    let ok_line = text.lines().find(|l| l.contains(" ok HTTP/1.1 200")).unwrap_or_else(|| panic!("no healthy answer:\n{text}\n{}", stderr(&out)));
    assert!(ok_line.contains("\"healthy\":true"), "{ok_line}");
    // OpenCode's own state went to the sandbox's private HOME, not the host's.
    assert!(text.contains(".local") || text.contains(".config") || text.contains(".cache"), "{text}");
}

/// One HTTP request to 127.0.0.1:PORT with reqwest, with the sandbox's secret
/// as basic auth (OpenCode's user name) when given; (status, body).
fn http_auth(port: u16, secret: Option<&str>, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().timeout(std::time::Duration::from_secs(20)).build().unwrap();
        let url = format!("http://127.0.0.1:{port}{path_and_query}");
        let mut req = match method {
            "POST" => client.post(url).header("content-type", "application/json").body(body.to_string()),
            _ => client.get(url),
        };
        if let Some(secret) = secret {
            req = req.header("authorization", swarmcell::net::health::basic_auth("opencode", secret));
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path_and_query}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
}

/// A sandbox's host port and secret, from its ready line.
struct Agent {
    port: u16,
    secret: String,
}

fn http(a: &Agent, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    http_auth(a.port, Some(&a.secret), method, path_and_query, body)
}

/// A local user who is neither root nor the worktree's owner.
const STRANGER: u32 = 1001;

fn q(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// State OpenCode would write under a HOME: (path, modification time) of each.
fn host_opencode_state() -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>)> {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    [".config/opencode", ".local/share/opencode", ".cache/opencode", ".local/state/opencode"]
        .iter()
        .map(|p| {
            let p = home.join(p);
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

#[test]
fn two_agents_run_isolated_opencode_servers_in_their_worktrees() {
    require_opencode();
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let base = f.dir.join("worktrees");
    for id in ["a", "b"] {
        let out = std::process::Command::new(bin()).args(["worktree", "add"]).arg(&repo).arg(id).arg("--base").arg(&base).output().unwrap();
        ok(&out);
        std::fs::write(base.join(id).join(format!("{id}.txt")), format!("secret of agent {id}")).unwrap();
        std::os::unix::fs::chown(base.join(id).join(format!("{id}.txt")), Some(OWNER), Some(OWNER)).unwrap();
    }
    // A world-readable host file: only the sandbox keeps it out of reach.
    let host_file = f.dir.join("host-secret.txt");
    std::fs::write(&host_file, "host secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_before = host_opencode_state();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();

    // Launch the default policy's command (opencode serve) for each agent.
    let mut launchers = Vec::new();
    let mut ports = Vec::new();
    for id in ["a", "b"] {
        launchers.push(spawn_run(&f.dir, &base.join(id), &["--port", "auto", "--health-timeout", "60s"], &[]));
    }
    for (id, (_, ready)) in ["a", "b"].iter().zip(&launchers) {
        let start = std::time::Instant::now();
        let info = loop {
            if let Ok(t) = std::fs::read_to_string(ready)
                && t.ends_with('\n')
            {
                break serde_json::from_str::<serde_json::Value>(t.trim()).unwrap();
            }
            let log = std::fs::read_to_string(ready.with_extension("stderr")).unwrap_or_default();
            assert!(start.elapsed() < std::time::Duration::from_secs(70), "agent {id} never became healthy: {log}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let secret = info["secret"].as_str().unwrap_or_else(|| panic!("no secret in the ready line {info}")).to_string();
        ports.push((*id, Agent { port: info["port"].as_u64().unwrap() as u16, secret }));
    }
    assert_ne!(ports[0].1.secret, ports[1].1.secret, "one secret per sandbox");

    for (id, agent) in &ports {
        let other = if *id == "a" { "b" } else { "a" };
        // Without the secret (or with the other agent's) OpenCode answers nothing but 401.
        let (status, _) = http_auth(agent.port, None, "GET", "/global/health", "");
        assert_eq!(status, 401, "{id} without the secret");
        let theirs = &ports.iter().find(|(o, _)| *o == other).unwrap().1.secret;
        assert_eq!(http_auth(agent.port, Some(theirs), "GET", "/file/content?path=a.txt", "").0, 401, "{id} with the other's secret");
        // Another local user gets nothing through the port at all.
        assert_eq!(bytes_back_as(STRANGER, agent.port, "/global/health"), 0, "{id}: a stranger got an answer");
        let (status, session) = http(agent, "POST", "/session", "{}");
        assert_eq!(status, 200, "POST /session for {id}: {session}");
        let session: serde_json::Value = serde_json::from_str(&session).unwrap_or_else(|e| panic!("{e}: {session}"));
        assert!(session["id"].as_str().unwrap().starts_with("ses"), "{session}");
        assert_eq!(session["directory"].as_str().unwrap(), base.join(id).to_str().unwrap());
        // Its own file, through OpenCode's file API.
        let (status, body) = http(agent, "GET", &format!("/file/content?path={id}.txt"), "");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("secret of agent {id}")), "{body}");
        // The other agent's file: by absolute path, and by pointing the API at its worktree.
        let theirs = base.join(other).join(format!("{other}.txt"));
        for path in [
            format!("/file/content?path={}", q(theirs.to_str().unwrap())),
            format!("/file/content?directory={}&path={other}.txt", q(base.join(other).to_str().unwrap())),
            format!("/file/content?path={}", q(host_file.to_str().unwrap())),
            format!("/file/content?directory={}&path=host-secret.txt", q(f.dir.to_str().unwrap())),
        ] {
            let (_, body) = http(agent, "GET", &path, "");
            assert!(!body.contains("secret of agent") && !body.contains("host secret"), "{id} read through {path}: {body}");
        }
    }

    for (l, _) in &launchers {
        l.sigterm();
    }
    for (l, _) in &mut launchers {
        let status = l.wait();
        assert!(status.code().is_some(), "launcher ended by {status:?}");
    }
    assert_no_sandbox_left();
    assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap(), mounts_before, "host mounts changed");
    assert_eq!(host_opencode_state(), state_before, "OpenCode wrote into the host's HOME");
    for (_, agent) in &ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", agent.port)).is_err(), "port {} still answers", agent.port);
    }
    ok(&std::process::Command::new(bin()).args(["worktree", "prune", "--base"]).arg(&base).output().unwrap());
}

#[test]
fn opencode_through_the_daemon_wants_its_secret_and_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    require_opencode();
    let f = Fixture::new();
    let base = f.dir.join("base");
    make_owned_dir(&base.join("a"), OWNER, OWNER);
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = f.dir.join("ctl.sock");
    let audit = f.dir.join("audit.log");
    let config = f.dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\nallowed_uids = [0]\nworktree_base = {base:?}\ncommands = [\"opencode\"]\naudit_log = {audit:?}\nmetrics = \"\"\nstate_dir = {:?}\nlog_dir = {:?}\n",
            f.dir.join("state"),
            f.dir.join("logs")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = std::fs::File::create(f.dir.join("daemon.log")).unwrap();
    let daemon = std::process::Command::new(bin()).arg("daemon").arg("--config").arg(&config).stderr(log).spawn().unwrap();
    let mut daemon = Launcher(daemon);
    let ctl = |args: &[&str]| std::process::Command::new(bin()).arg("ctl").arg("--socket").arg(&socket).args(args).output().unwrap();
    let start = std::time::Instant::now();
    while !ctl(&["list"]).status.success() {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{}", std::fs::read_to_string(f.dir.join("daemon.log")).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The default policy's command: opencode serve, with a fresh secret.
    let out = ctl(&["launch", "--worktree", base.join("a").to_str().unwrap()]);
    let l: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let agent = Agent { port: l["port"].as_u64().unwrap() as u16, secret: l["secret"].as_str().expect("a secret for the requester").to_string() };
    assert_eq!(http(&agent, "GET", "/global/health", "").0, 200);
    assert_eq!(http_auth(agent.port, None, "GET", "/global/health", "").0, 401);
    assert_eq!(bytes_back_as(STRANGER, agent.port, "/global/health"), 0);
    // The secret stays out of listings, logs and the audit log; the record keeps it, 0600.
    let listed = stdout(&ctl(&["list", "--json"]));
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let daemon_log = std::fs::read_to_string(f.dir.join("daemon.log")).unwrap();
    for (what, text) in [("list", &listed), ("audit log", &audit_text), ("daemon log", &daemon_log)] {
        assert!(!text.contains(&agent.secret), "the secret is in the {what}");
    }
    assert!(audit_text.contains("\"event\":\"ingress_denied\""), "{audit_text}");
    let record = std::fs::read_dir(f.dir.join("state/records")).unwrap().flatten().next().unwrap().path();
    assert_eq!(std::fs::metadata(&record).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&record).unwrap().contains(&agent.secret));
    daemon.sigterm();
    daemon.wait();
    assert_no_sandbox_left();
}

const SDK: &str = "/opt/swarmcell-sdk";

/// The ready line of a `spawn_run` launcher, waiting up to `limit` (OpenCode
/// takes seconds), or a panic that shows what the launcher said.
fn ready_within(ready: &std::path::Path, limit: std::time::Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(ready)
            && t.ends_with('\n')
        {
            return serde_json::from_str(t.trim()).unwrap();
        }
        assert!(start.elapsed() < limit, "never healthy: {}", std::fs::read_to_string(ready.with_extension("stderr")).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `session.shell` of the official SDK for each command, on the OpenCode
/// server at PORT; one (command, output) per command.
fn sdk_shell(port: u16, secret: &str, commands: &[&str]) -> Vec<(String, String)> {
    assert!(
        std::path::Path::new(SDK).join("node_modules/@opencode-ai/sdk").exists(),
        "the SDK is not installed in {SDK}: run scripts/install-opencode"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/opencode-shell.mjs");
    let out =
        std::process::Command::new("node").arg(script).arg(SDK).arg(port.to_string()).args(commands).env("OPENCODE_SECRET", secret).output().unwrap();
    assert!(out.status.success(), "SDK client failed: {}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["command"].as_str().unwrap().to_string(), v["output"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Issue #14, end to end: on a worktree made by plain `git worktree add PATH -b
/// feature-x`, a real OpenCode agent commits through the SDK's `session.shell`;
/// the host's feature-x has the commit within 2 s and after stop; main, other
/// branches and tags are unchanged and the real repository passes `git fsck`
/// after the agent ran `rm -rf` and overwrites on every git path it can see.
#[test]
fn an_opencode_agent_commit_reaches_its_branch_and_nothing_else_changes() {
    require_opencode();
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let owner = |args: &[&str]| ok(&git_as_owner(&repo, args));
    owner(&["tag", "v1"]);
    owner(&["tag", "-a", "-m", "annotated", "v1a"]);
    owner(&["branch", "other"]);
    let wt = f.dir.join("feature");
    make_owned_dir(&wt, OWNER, OWNER);
    owner(&["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "feature-x"]);
    let refs = || git(&repo, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let before = refs();
    let (mut l, ready) = spawn_run(&f.dir, &wt, &["--port", "auto", "--health-timeout", "60s"], &[]);
    let info = ready_within(&ready, std::time::Duration::from_secs(70));
    let port = info["port"].as_u64().unwrap() as u16;
    let secret = info["secret"].as_str().expect("the sandbox's secret in the ready line").to_string();
    let commit = "echo hello > agent.txt && git add agent.txt && git -c user.name=agent -c user.email=agent@x commit -qm 'agent commit' 2>&1; git rev-parse HEAD";
    let out = sdk_shell(port, &secret, &[commit]);
    let t0 = std::time::Instant::now();
    let head = out[0].1.lines().last().unwrap_or("").trim().to_string();
    assert!(head.len() == 40, "the agent's commit failed: {out:?}");
    while git(&repo, &["rev-parse", "feature-x"]) != head {
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "feature-x never got the agent's commit {head}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let took = t0.elapsed();
    eprintln!("published {took:?} after session.shell returned");
    assert!(took <= std::time::Duration::from_secs(2), "published after {took:?}");
    // The attacks: overwrite, then remove, every git path it can see. (The
    // script is a file in the worktree, as the agent's edit tool would write
    // it: OpenCode's shell expands `$` in a command line itself.)
    let g = repo.join(".git");
    let attack = format!(
        "git update-ref refs/heads/main HEAD; git tag -f v1 HEAD; git branch -f other HEAD; git push -f {repo} HEAD:main 2>&1 | tail -1\n\
         find {g} /.swarmcell -type f 2>/dev/null | while read -r f; do chmod u+w \"$f\" 2>/dev/null; (echo evil > \"$f\") 2>/dev/null && echo WROTE \"$f\"; done\n\
         rm -rf {g}/* {g}/.[!.]* /.swarmcell/git-objects/* 2>&1 | tail -2\n\
         echo done\n",
        g = g.display(),
        repo = repo.display()
    );
    std::fs::write(wt.join("attack.sh"), attack).unwrap();
    std::os::unix::fs::chown(wt.join("attack.sh"), Some(OWNER), Some(OWNER)).unwrap();
    let results = sdk_shell(port, &secret, &["sh attack.sh"]);
    let text = &results[0].1;
    eprintln!("{text}");
    assert!(text.contains("done"), "the attack did not run: {results:#?}");
    // Writes land only in its private layer, never in the shared object store.
    assert!(text.contains("WROTE") && !text.contains("WROTE /.swarmcell"), "{text}");
    l.sigterm();
    let status = l.wait();
    assert!(status.code().is_some(), "launcher ended by {status:?}");
    assert_no_sandbox_left();
    // Published and kept: only feature-x moved, to the agent's commit.
    assert_eq!(git(&repo, &["rev-parse", "feature-x"]), head);
    let after = refs();
    let others = |r: &str| r.lines().filter(|l| !l.starts_with("refs/heads/feature-x ")).map(String::from).collect::<Vec<_>>();
    assert_eq!(others(&after), others(&before), "another ref moved");
    git(&repo, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(git(&repo, &["show", "feature-x:agent.txt"]), "hello");
}

/// Issue #16, an agent's day end to end: on a worktree made by plain `git
/// worktree add PATH -b BRANCH`, a real OpenCode agent (the official SDK's
/// `session.shell`) runs a small project's test suite that starts a Node and a
/// Python HTTP server on ephemeral ports of the sandbox's loopback and talks to
/// them, writes files and commits; the branch has the commit on the host, and
/// no output line of the agent's is an error.
#[test]
fn an_agents_test_suite_with_node_and_python_servers_passes_and_its_commit_reaches_the_host() {
    require_opencode();
    let f = Fixture::new();
    let repo = owned_repo(&f.dir);
    let wt = f.dir.join("day");
    make_owned_dir(&wt, OWNER, OWNER);
    ok(&git_as_owner(&repo, &["worktree", "add", "-q", wt.to_str().unwrap(), "-b", "agent-day"]));
    // The project's test suite, as the agent's edit tool would have written it.
    let suite = r#"set -e
node -e "
const http = require('http');
const s = http.createServer((q, r) => r.end('node server ok'));
s.listen(0, '127.0.0.1', () => {
  http.get('http://127.0.0.1:' + s.address().port + '/', (r) => {
    let d = ''; r.on('data', (c) => d += c); r.on('end', () => { console.log(d); s.close(); });
  });
});"
python3 -c "
import http.server, threading, urllib.request
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'python server ok')
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
threading.Thread(target=s.serve_forever, daemon=True).start()
print(urllib.request.urlopen('http://127.0.0.1:%d/' % s.server_address[1], timeout=5).read().decode())
s.shutdown()"
echo SUITE-PASSED
"#;
    std::fs::write(wt.join("test.sh"), suite).unwrap();
    std::os::unix::fs::chown(wt.join("test.sh"), Some(OWNER), Some(OWNER)).unwrap();
    let (mut l, ready) = spawn_run(&f.dir, &wt, &["--port", "auto", "--health-timeout", "60s"], &[]);
    let info = ready_within(&ready, std::time::Duration::from_secs(70));
    let port = info["port"].as_u64().unwrap() as u16;
    let secret = info["secret"].as_str().expect("the sandbox's secret in the ready line").to_string();
    let out = sdk_shell(
        port,
        &secret,
        &[
            "sh test.sh 2>&1",
            "echo 'tested' > RESULT.md && git add -A && git -c user.name=agent -c user.email=agent@x commit -qm 'agent: tests pass' 2>&1 && git rev-parse HEAD",
        ],
    );
    let suite_out = &out[0].1;
    for want in ["node server ok", "python server ok", "SUITE-PASSED"] {
        assert!(suite_out.contains(want), "the agent's test suite did not pass ({want}): {suite_out}");
    }
    let commit_out = &out[1].1;
    let head = commit_out.lines().last().unwrap_or("").trim().to_string();
    assert_eq!(head.len(), 40, "the agent's commit failed: {commit_out}");
    for (cmd, text) in &out {
        let bad: Vec<&str> =
            text.lines().filter(|l| ["error", "fatal", "denied", "refused"].iter().any(|w| l.to_ascii_lowercase().contains(w))).collect();
        assert!(bad.is_empty(), "error lines in the agent's output of {cmd:?}: {bad:?}");
    }
    let t0 = std::time::Instant::now();
    while git(&repo, &["rev-parse", "agent-day"]) != head {
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "agent-day never got the agent's commit {head}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    l.sigterm();
    l.wait();
    assert_no_sandbox_left();
    assert_eq!(git(&repo, &["show", "agent-day:RESULT.md"]), "tested");
}
