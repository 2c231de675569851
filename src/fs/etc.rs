//! The minimal /etc written into each sandbox: only what name lookups and TLS need.

/// The files [`files`] writes: a policy may not bind a host path over them.
pub const NAMES: [&str; 6] = ["passwd", "group", "hostname", "hosts", "nsswitch.conf", "resolv.conf"];

/// Files written into the sandbox's /etc, as (name, contents).
pub fn files(hostname: &str, uid: u32, gid: u32, home: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "passwd",
            format!("agent:x:{uid}:{gid}:swarmcell sandbox user:{home}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ),
        ("group", format!("agent:x:{gid}:\nnogroup:x:65534:\n")),
        ("hostname", format!("{hostname}\n")),
        ("hosts", format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n".into(),
        ),
        // The sandbox has no route anywhere; names resolve through the egress proxy.
        ("resolv.conf", "# swarmcell: no DNS inside the sandbox\n".into()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwd_names_the_sandbox_user_and_home() {
        let files = super::files("sc-abc", 4242, 4243, "/tmp/home");
        let passwd = &files.iter().find(|(n, _)| *n == "passwd").unwrap().1;
        assert!(passwd.starts_with("agent:x:4242:4243:"), "{passwd}");
        assert!(passwd.contains(":/tmp/home:"), "{passwd}");
        let hosts = &files.iter().find(|(n, _)| *n == "hosts").unwrap().1;
        assert!(hosts.contains("localhost sc-abc"));
        assert!(!files.iter().any(|(_, c)| c.contains("root:")), "no root entry");
        assert_eq!(files.iter().map(|(n, _)| *n).collect::<Vec<_>>(), super::NAMES);
    }
}
