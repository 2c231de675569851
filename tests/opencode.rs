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
        "grep -E '^Seccomp:' /proc/self/status; \
         opencode serve --hostname 127.0.0.1 --port 4096 >/tmp/opencode.log 2>&1 & \
         for i in $(seq 1 120); do {probe} __probe http-get 127.0.0.1:4096/global/health && break; sleep 0.25; done; \
         kill $!; wait; ls -a /tmp/home"
    );
    let out = f.sh(&["--ro", &bin_dir()], &script);
    let text = stdout(&out);
    assert!(text.contains("Seccomp:\t2"), "{text}");
    let ok_line = text.lines().find(|l| l.contains(" ok HTTP/1.1 200")).unwrap_or_else(|| panic!("no healthy answer:\n{text}\n{}", stderr(&out)));
    assert!(ok_line.contains("\"healthy\":true"), "{ok_line}");
    // OpenCode's own state went to the sandbox's private HOME, not the host's.
    assert!(text.contains(".local") || text.contains(".config") || text.contains(".cache"), "{text}");
}
