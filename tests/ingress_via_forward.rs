//! Attack (red15): another sandbox's payload reaches a sandbox's brokered port
//! through an outbound forward. The forward's host-side socket is created by the
//! root launcher, so the uid check (sock_diag: the uid that created the client
//! socket) sees root, which every sandbox admits. A payload owned by a uid the
//! victim does not allow must get nothing through, as that uid itself would.

mod common;

use common::*;

/// A local user who is neither root nor the victim's owner.
const STRANGER: u32 = 1001;

fn free_port_in_range() -> u16 {
    // The default port range is 8000-9000; take a free one near its end.
    (8900..9000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port in 8900-8999")
}

#[test]
fn a_payload_of_another_uid_gets_nothing_through_a_forward_to_a_sandbox_port() {
    let victim = Fixture::new();
    let port = free_port_in_range();
    let (mut v, ready) = victim.spawn(&["--ro", &bin_dir(), "--port", &port.to_string()], &[bin(), "__probe", "serve", "{port}"]);
    assert_eq!(ready_of(&ready)["port"].as_u64(), Some(port as u64));
    // The stranger is refused when connecting directly...
    assert_eq!(bytes_back_as(STRANGER, port, "/stranger-direct"), 0);

    // ...and a sandbox run for the stranger, whose policy forwards that port
    // (say the operator allowed a host service that usually listens there), tries it.
    let attacker = Fixture::new();
    make_owned_dir(&attacker.worktree, STRANGER, STRANGER);
    std::os::unix::fs::chown(&attacker.worktree, Some(STRANGER), Some(STRANGER)).unwrap();
    // (Not `Fixture::sh`: the victim is still running.)
    let probe = format!("{} __probe http-get 127.0.0.1:{port}/via-forward-as-root", bin());
    let out = attacker.command(&["--ro", &bin_dir(), "--forward", &port.to_string()], &["/bin/sh", "-c", &probe]).output().unwrap();
    let text = stdout(&out);
    v.sigterm();
    v.wait();
    let log = std::fs::read_to_string(ready.with_extension("stderr")).unwrap();
    assert!(!log.contains("via-forward-as-root"), "a stranger's payload reached the victim through a forward: {text}\n{log}");
    assert!(!text.contains(" ok HTTP/1.1 200"), "a stranger's payload got an answer through a forward: {text}");
    // It was refused as the stranger (the direct try and the forwarded one), not lost on the way.
    assert_eq!(log.lines().filter(|l| l.contains("ingress_denied") && l.contains("1001")).count(), 2, "{text}\n{log}");
    assert_no_sandbox_left();
}
