//! What the sandbox init is to do: everything decided and validated on the
//! privileged side, sent with `Go` (the init is cloned before, see
//! `super::channel`), so the child only applies it. (Its logging and phase
//! tracing are the launcher's, inherited by the clone.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub id: String,
    /// uid and gid the sandbox runs as, inside its user namespace (never 0).
    pub uid: u32,
    pub gid: u32,
    /// Mounts prepared by the parent, in the order they are attached (parents first).
    pub mounts: Vec<MountEntry>,
    pub tmp_size: u64,
    pub shm_size: u64,
    /// The payload's working directory (INV-002): the worktree.
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// After the payload exits, how long the rest of the sandbox gets between
    /// SIGTERM and the end of the PID namespace.
    pub stop_timeout_ms: u64,
    pub landlock: crate::confine::landlock::LandlockSpec,
    /// Socket handoff: the payload turns its accept() calls into notifications
    /// for the launcher (see crate::net::handoff).
    pub handoff: bool,
    /// Compiled seccomp programs, loaded in order: (code, jt, jf, k) per instruction.
    pub seccomp: Vec<Vec<(u16, u8, u8, u32)>>,
    /// The launcher's logging, when it shows init's (debug) lines.
    pub log: Option<LogConfig>,
}

/// Flatten compiled BPF for the channel.
pub fn encode_bpf(programs: &[seccompiler::BpfProgram]) -> Vec<Vec<(u16, u8, u8, u32)>> {
    programs.iter().map(|p| p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()).collect()
}

pub fn decode_bpf(programs: &[Vec<(u16, u8, u8, u32)>]) -> Vec<seccompiler::BpfProgram> {
    programs.iter().map(|p| p.iter().map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k }).collect()).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MountEntry {
    /// A detached mount tree (the `fd_index`-th fd sent with the spec), already
    /// flagged read-only/nosuid/nodev/idmapped by the parent, attached at `target`.
    Tree { target: PathBuf, is_file: bool, fd_index: usize },
    /// A symlink recreated inside the sandbox (e.g. `/lib -> usr/lib`).
    Symlink { target: PathBuf, link: PathBuf },
}

impl MountEntry {
    pub fn target(&self) -> &PathBuf {
        match self {
            MountEntry::Tree { target, .. } | MountEntry::Symlink { target, .. } => target,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// How the payload ended, as the sandbox init saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadStatus {
    Exited(i32),
    Signaled(i32),
}

impl PayloadStatus {
    /// The `env`/`timeout` exit-code convention: the status, or 128+N for signal N.
    pub fn exit_code(self) -> u8 {
        match self {
            PayloadStatus::Exited(c) => (c & 0xff) as u8,
            PayloadStatus::Signaled(s) => (128 + s).clamp(0, 255) as u8,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A spec whose every field is set (for channel tests).
    pub(crate) fn spec() -> InitSpec {
        InitSpec {
            id: "sc-test".into(),
            uid: 1000,
            gid: 1000,
            mounts: vec![MountEntry::Symlink { target: "/bin".into(), link: "usr/bin".into() }],
            tmp_size: 1 << 20,
            shm_size: 1 << 20,
            cwd: "/w".into(),
            home: "/tmp/home".into(),
            argv: vec!["/bin/true".into()],
            env: vec![("A".into(), "\"quoted\" \u{1} value".into())],
            stop_timeout_ms: 5000,
            landlock: Default::default(),
            handoff: false,
            seccomp: vec![vec![(6, 0, 0, 0x7fff_0000)]],
            log: Some(LogConfig { json: false, level: "debug".into() }),
        }
    }
}
