//! The Debian package (`scripts/package`, dpkg-deb from a staged tree):
//! installed on this machine, it puts the binary, the units, the conffiles
//! with their modes, the worker's system user, man pages and completions in
//! place; `swarmcell verify` passes from it; a purge leaves nothing behind
//! (files, user, group, units). The package is always purged, even when an
//! assertion fails. Refuses to run where swarmcell is already installed (it
//! would purge someone's installation).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

/// dpkg waits for the lock (another apt run on the machine) for up to 2 minutes.
fn dpkg(args: &[&str]) -> Output {
    let start = std::time::Instant::now();
    loop {
        let out = Command::new("dpkg").args(args).output().unwrap();
        let locked = stderr(&out).contains("lock");
        if out.status.success() || !locked || start.elapsed() > std::time::Duration::from_secs(120) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn installed() -> bool {
    sh("dpkg-query -W -f='${Status}' swarmcell 2>/dev/null | grep -q 'install ok installed'").status.success()
}

/// Purges the package when dropped (the test passed or not).
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let out = dpkg(&["--purge", "swarmcell"]);
        if !out.status.success() {
            eprintln!("dpkg --purge swarmcell: {}", stderr(&out));
        }
    }
}

#[test]
fn the_package_installs_verifies_and_purges_without_leftovers() {
    require_root();
    assert!(!installed(), "swarmcell is already installed here: this test would purge it");
    for p in ["/usr/bin/swarmcell", "/etc/swarmcell", "/usr/lib/systemd/system/swarmcell.service"] {
        assert!(!Path::new(p).exists(), "{p} exists before the package is installed");
    }
    assert!(!sh("getent passwd swarmcell").status.success(), "a user swarmcell exists before the package is installed");

    let f = Fixture::new();
    let out =
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package")).arg(bin()).arg(&f.dir).env("DEB_COMPRESS", "none").output().unwrap();
    assert!(out.status.success(), "scripts/package: {}", stderr(&out));
    let deb = PathBuf::from(stdout(&out).trim());
    assert!(deb.is_file(), "{}", deb.display());

    let _purge = Purge;
    let out = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(out.status.success(), "dpkg -i: {}{}", stdout(&out), stderr(&out));
    let files: Vec<String> = stdout(&sh("dpkg -L swarmcell")).lines().map(str::to_string).collect();

    // The binary, the unit, man pages and completions.
    let v = Command::new("/usr/bin/swarmcell").arg("--version").output().unwrap();
    assert!(stdout(&v).starts_with("swarmcell "), "{}", stdout(&v));
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/swarmcell.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/swarmcell "), "the unit does not start the packaged binary");
    let man = Command::new("man").args(["-P", "cat", "swarmcell-run"]).env("MANWIDTH", "100").output().unwrap();
    assert!(man.status.success() && stdout(&man).contains("Run CMD in a new sandbox"), "man swarmcell-run: {}", stderr(&man));
    let comp = sh("bash --norc -c '. /usr/share/bash-completion/bash_completion; _completion_loader swarmcell; complete -p swarmcell'");
    assert!(comp.status.success() && stdout(&comp).contains("_swarmcell"), "bash completion: {}{}", stdout(&comp), stderr(&comp));

    // Conffiles, root-owned, with their modes.
    let conffiles = stdout(&sh("dpkg-query -W -f='${Conffiles}' swarmcell"));
    for (path, mode) in [("/etc/swarmcell/daemon.toml", 0o640), ("/etc/swarmcell/opencode.toml", 0o640), ("/etc/swarmcell/secrets.env", 0o600)] {
        let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((m.permissions().mode() & 0o7777, m.uid(), m.gid()), (mode, 0, 0), "{path}");
        assert!(conffiles.contains(path), "{path} is not a conffile: {conffiles}");
    }
    let check = Command::new("/usr/bin/swarmcell").args(["policy", "check", "/etc/swarmcell/opencode.toml"]).output().unwrap();
    assert!(check.status.success(), "the packaged policy: {}", stderr(&check));

    // The worker's system user: a system uid, no login, no home.
    let pw = stdout(&sh("getent passwd swarmcell"));
    let fields: Vec<&str> = pw.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{pw}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000 && uid > 0, "not a system uid: {pw}");
    assert_eq!((fields[5], fields[6]), ("/nonexistent", "/usr/sbin/nologin"), "{pw}");

    // The escape battery, from the installed binary.
    let verify = Command::new("/usr/bin/swarmcell").args(["verify", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap_or_else(|e| panic!("verify: {e}: {}", stderr(&verify)));
    assert_eq!(verify.status.code(), Some(0), "swarmcell verify from the package: {}", report["summary"]);
    assert_no_sandbox_left();

    drop(_purge);
    assert!(!installed(), "still installed after the purge");
    let left: Vec<&String> = files
        .iter()
        .filter(|p| {
            let p = Path::new(p.as_str());
            // Directories other packages share (/usr, /usr/share/man/man1, ...) stay.
            p.exists() && (!p.is_dir() || p.to_string_lossy().contains("swarmcell"))
        })
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    for p in ["/etc/swarmcell", "/var/log/swarmcell/audit.log", "/usr/share/doc/swarmcell"] {
        assert!(!Path::new(p).exists(), "{p} left after the purge");
    }
    assert!(!sh("getent passwd swarmcell").status.success(), "user swarmcell left after the purge");
    assert!(!sh("getent group swarmcell").status.success(), "group swarmcell left after the purge");
}
