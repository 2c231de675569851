//! The daemon's configuration: TOML, strictly parsed, read through
//! [`crate::config_file`] (regular file, 0640 or stricter, owned by root or the
//! service's own uid).

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The control socket (mode 0660).
    pub socket: PathBuf,
    /// Group owning the control socket (gid); default root's.
    pub socket_group: Option<u32>,
    /// Peers allowed on the control socket, by uid or gid (SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// Worktrees must lie below this directory.
    pub worktree_base: PathBuf,
    /// Programs a launch may run (argv[0], exactly).
    pub commands: Vec<String>,
    /// Policy for every sandbox (default: the built-in one).
    pub policy: Option<PathBuf>,
    /// JSON-lines audit log (0640).
    pub audit_log: PathBuf,
    /// Prometheus metrics on this loopback address ("" turns them off).
    pub metrics: String,
    /// Restart a sandbox whose payload exited or failed its health checks.
    pub restart: bool,
    /// Most sandboxes at once.
    pub max_sandboxes: usize,
    /// State and locks (as `swarmcell run --state-dir`).
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "/run/swarmcell/control.sock".into(),
            socket_group: None,
            allowed_uids: vec![0],
            allowed_gids: Vec::new(),
            worktree_base: crate::git::DEFAULT_BASE.into(),
            commands: vec!["opencode".into()],
            policy: None,
            audit_log: "/var/log/swarmcell/audit.log".into(),
            metrics: "127.0.0.1:9464".into(),
            restart: true,
            max_sandboxes: 1001,
            state_dir: "/run/swarmcell".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = crate::config_file::read(path).map_err(|r| format!("config {}: {r}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| format!("config {}: {}", path.display(), e.message().trim()))?;
        c.validate().map_err(|m| format!("config {}: {m}", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.worktree_base.is_absolute() || !self.socket.is_absolute() || !self.audit_log.is_absolute() {
            return Err("socket, worktree_base and audit_log must be absolute paths".into());
        }
        if self.commands.is_empty() || self.commands.iter().any(|c| c.is_empty() || c.chars().any(super::protocol::is_shell_meta)) {
            return Err("commands must list at least one program, without shell metacharacters".into());
        }
        if self.max_sandboxes == 0 || self.max_sandboxes > 1001 {
            return Err("max_sandboxes must be 1-1001 (INV-001)".into());
        }
        if !self.metrics.is_empty() {
            let addr: std::net::SocketAddr = self.metrics.parse().map_err(|_| format!("metrics {:?} is not an address", self.metrics))?;
            if !addr.ip().is_loopback() {
                return Err("metrics must listen on a loopback address".into());
            }
        }
        Ok(())
    }
}
