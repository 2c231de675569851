//! The shipped `systemd/swarmcell.service` under a real systemd: Debian's
//! systemd as pid 1 of a `systemd-nspawn --boot` container over this host's
//! `/usr` (see `scripts/systemd-test`, which does the work and says what it
//! checks). Fails, never skips, when systemd-nspawn or a bootable systemd is
//! missing (`scripts/setup` installs `systemd-container`).

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_shipped_unit_launches_reloads_stops_clean_and_recovers_under_a_real_systemd() {
    require_root();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/systemd-test");
    let out = Command::new("bash").arg(script).arg(bin()).output().expect("run scripts/systemd-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success() && stdout.contains("systemd-test: ok"), "scripts/systemd-test failed ({}):\n{stdout}\n{stderr}", out.status);
    for step in [
        "answers on 127.0.0.1:",
        "new audit log: {\"event\":\"audit_reopened\"",
        "no process, cgroup, port, lease or record left",
        "running again on port",
        "journal: sandbox_recovered",
        "Overall exposure level for swarmcell.service",
    ] {
        assert!(stdout.contains(step), "scripts/systemd-test did not report {step:?}:\n{stdout}");
    }
    // The exposure the unit's comment states, measured on the running unit.
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for swarmcell.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("an exposure score");
    assert!(score <= 4.6, "systemd-analyze security: {score} (was 4.6)");
}
