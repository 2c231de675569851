//! The daemon's configuration: TOML, strictly parsed, read through
//! [`crate::host::config_file`] (regular file, 0640 or stricter, owned by root or the
//! service's own uid).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::units::ByteSize;

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
    /// Repositories a git worktree may belong to (absolute paths; empty: any,
    /// as recorded on its first launch). Passed to each launcher as `--repo`.
    pub repositories: Vec<PathBuf>,
    /// Programs a launch may run (argv[0], exactly).
    pub commands: Vec<String>,
    /// Worktree owners a requester may launch for besides itself, by uid
    /// (`launch_for = { "4343" = [4242] }`). A non-root requester launches
    /// only on worktrees it owns or whose owner is listed here for it: an
    /// agent acts as its worktree's owner, so launching on another tenant's
    /// worktree would read and write that tenant's files.
    pub launch_for: std::collections::BTreeMap<String, Vec<u32>>,
    /// Policy for a sandbox whose launch names none (default: the built-in one).
    pub policy: Option<PathBuf>,
    /// Other policy files a launch may name (`ctl launch --policy FILE`); no
    /// others, since a policy can widen a sandbox.
    pub policies: Vec<PathBuf>,
    /// JSON-lines audit log (0640).
    pub audit_log: PathBuf,
    /// Prometheus metrics on this loopback address ("" turns them off).
    pub metrics: String,
    /// Restart a sandbox whose payload exited or failed its health checks.
    pub restart: bool,
    /// Most sandboxes at once.
    pub max_sandboxes: usize,
    /// Most entries in a requester's `worktree_base/UID` when its `agent`
    /// request would make another worktree (they stay after their sandboxes
    /// stop): a budget per requester, so one tenant cannot use up the others'.
    pub max_worktrees: usize,
    /// The daemon's own state: one record per managed sandbox (for recovery
    /// after a crash) and its instance lock. (The host-wide leases of uids,
    /// ports and sandbox ids stay in /run/swarmcell, shared by every launcher.)
    pub state_dir: PathBuf,
    /// After a crash, what happens to the sandboxes the records name: their
    /// launchers are ended either way, then they are launched again ("relaunch")
    /// or forgotten ("discard").
    pub recover: Recover,
    /// Each sandbox's output, one file per sandbox (0640).
    pub log_dir: PathBuf,
    /// A sandbox log past this size is rotated (one old file kept).
    pub log_max: ByteSize,
    /// Kernel denial records: "leave" the host's audit setting as it is (with
    /// audit off, Landlock writes none), "enable" kernel audit when it is off,
    /// or "off" (read none). See README, "Denials and incident response".
    pub kernel_audit: crate::denials::hub::KernelAudit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recover {
    Relaunch,
    Discard,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "/run/swarmcell/control.sock".into(),
            socket_group: None,
            allowed_uids: vec![0],
            allowed_gids: Vec::new(),
            worktree_base: crate::git::DEFAULT_BASE.into(),
            repositories: Vec::new(),
            launch_for: Default::default(),
            commands: vec!["opencode".into()],
            policy: None,
            policies: Vec::new(),
            audit_log: "/var/log/swarmcell/audit.log".into(),
            metrics: "127.0.0.1:9464".into(),
            restart: true,
            max_sandboxes: 1001,
            max_worktrees: 4096,
            state_dir: "/run/swarmcell/daemon".into(),
            recover: Recover::Relaunch,
            log_dir: "/var/log/swarmcell/sandboxes".into(),
            log_max: ByteSize::bytes(8 << 20),
            kernel_audit: Default::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = crate::host::config_file::read(path).map_err(|r| format!("config {}: {r}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| format!("config {}: {}", path.display(), e.message().trim()))?;
        c.validate().map_err(|m| format!("config {}: {m}", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if [&self.worktree_base, &self.socket, &self.audit_log, &self.state_dir, &self.log_dir].iter().any(|p| !p.is_absolute()) {
            return Err("socket, worktree_base, audit_log, state_dir and log_dir must be absolute paths".into());
        }
        if let Some(k) = self.launch_for.keys().find(|k| k.parse::<u32>().is_err()) {
            return Err(format!("launch_for: {k:?} is not a uid"));
        }
        if let Some(p) = self.repositories.iter().find(|p| !p.is_absolute()) {
            return Err(format!("repository {}: repositories must be absolute paths", p.display()));
        }
        if let Some(p) = self.policy.iter().chain(&self.policies).find(|p| !p.is_absolute()) {
            return Err(format!("policy {}: policies must be absolute paths", p.display()));
        }
        if self.log_max.0.is_none_or(|n| n < 4096) {
            return Err("log_max must be a size of at least 4K".into());
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

impl Config {
    /// Whether `requester` may launch an agent on a worktree owned by `owner`.
    pub fn may_launch_for(&self, requester: u32, owner: u32) -> bool {
        requester == 0 || requester == owner || self.launch_for.get(&requester.to_string()).is_some_and(|o| o.contains(&owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid_and_matches_the_defaults() {
        let c: Config = toml::from_str(include_str!("../../systemd/daemon.toml.example")).unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!((&c.socket, &c.state_dir, &c.log_dir, c.recover, c.log_max), (&d.socket, &d.state_dir, &d.log_dir, d.recover, d.log_max));
    }

    #[test]
    fn relative_paths_tiny_logs_and_public_metrics_are_refused() {
        let bad = |text: &str| toml::from_str::<Config>(text).map_err(|e| e.to_string()).and_then(|c| c.validate()).unwrap_err();
        assert!(bad("state_dir = \"run\"").contains("absolute"));
        assert!(bad("log_max = \"1K\"").contains("log_max"));
        assert!(bad("metrics = \"0.0.0.0:9464\"").contains("loopback"));
        assert!(bad("recover = \"adopt\"").contains("unknown variant"));
    }
}
