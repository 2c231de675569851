//! Parent side: the sandbox's uid/gid maps.
//!
//! A sandbox sees itself as one uid/gid (`inside`, never 0) that maps to one
//! unprivileged host id (`host`). `setgroups` is denied before the gid map is
//! written, so the sandbox can never change its supplementary groups.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("refusing to map the sandbox to host {kind} 0")]
    HostRoot { kind: &'static str },
    #[error("refusing to run the sandbox as {kind} 0 inside its user namespace")]
    InsideRoot { kind: &'static str },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside_uid: u32,
    pub host_uid: u32,
    pub inside_gid: u32,
    pub host_gid: u32,
}

impl IdMap {
    /// The one-line `uid_map`/`gid_map` contents, refusing any mapping that
    /// involves root on either side.
    pub fn render(&self) -> Result<(String, String), MapError> {
        if self.host_uid == 0 {
            return Err(MapError::HostRoot { kind: "uid" });
        }
        if self.host_gid == 0 {
            return Err(MapError::HostRoot { kind: "gid" });
        }
        if self.inside_uid == 0 {
            return Err(MapError::InsideRoot { kind: "uid" });
        }
        if self.inside_gid == 0 {
            return Err(MapError::InsideRoot { kind: "gid" });
        }
        Ok((format!("{} {} 1\n", self.inside_uid, self.host_uid), format!("{} {} 1\n", self.inside_gid, self.host_gid)))
    }

    /// Write `setgroups` = deny, then the uid and gid maps of process `pid`.
    pub fn write(&self, pid: libc::pid_t) -> Result<(), MapError> {
        let (uid_map, gid_map) = self.render()?;
        for (file, contents) in [("setgroups", "deny\n"), ("uid_map", uid_map.as_str()), ("gid_map", gid_map.as_str())] {
            let path = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&path, contents).map_err(|source| MapError::Write { path, source })?;
        }
        Ok(())
    }
}

/// True when this process itself runs in a non-initial user namespace.
pub fn is_nested() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_never_involve_root() {
        let ok = IdMap { inside_uid: 4242, host_uid: 0x6000_0001, inside_gid: 4243, host_gid: 0x6000_0001 };
        let (u, g) = ok.render().unwrap();
        assert_eq!(u, "4242 1610612737 1\n");
        assert_eq!(g, "4243 1610612737 1\n");
        assert!(matches!(IdMap { host_uid: 0, ..ok }.render(), Err(MapError::HostRoot { kind: "uid" })));
        assert!(matches!(IdMap { host_gid: 0, ..ok }.render(), Err(MapError::HostRoot { kind: "gid" })));
        assert!(matches!(IdMap { inside_uid: 0, ..ok }.render(), Err(MapError::InsideRoot { kind: "uid" })));
        assert!(matches!(IdMap { inside_gid: 0, ..ok }.render(), Err(MapError::InsideRoot { kind: "gid" })));
    }
}
