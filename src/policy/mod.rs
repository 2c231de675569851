//! The sandbox policy: a TOML document, strictly parsed, validated before any fork.
//!
//! Every field has a default (see `policies/opencode.toml`, which is also the
//! embedded default policy). Unknown keys are errors, and every error names the
//! file, the line and the field.

pub mod explain;
pub mod units;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use units::{ByteSize, HumanDuration};

/// The default policy, shipped in the binary.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policies/opencode.toml");
pub const DEFAULT_POLICY_NAME: &str = "<built-in opencode.toml>";
/// The same, as JSON (made by build.rs): what `builtin` reads.
const DEFAULT_POLICY_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/opencode.json"));

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Landlock: "best-effort" (default), "required" or "off".
    pub landlock: crate::confine::landlock::Mode,
    pub process: Process,
    pub filesystem: Filesystem,
    pub network: Network,
    pub limits: Limits,
    pub health: Health,
    pub seccomp: Seccomp,
    pub git: Git,
    /// `[[tripwire]]` rules over the sandbox's denials (daemon only; see
    /// `crate::denials::tripwire`).
    #[serde(rename = "tripwire", skip_serializing_if = "Vec::is_empty")]
    pub tripwires: Vec<crate::denials::tripwire::Tripwire>,
}

/// The git publisher (see README, "Git worktrees").
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Git {
    /// Let the publisher move the agent's branch by a forced (non-fast-forward)
    /// update. Default: false (fast-forward only).
    pub allow_force_publish: bool,
}

/// The default seccomp rules, reviewable as data.
pub const DEFAULT_SECCOMP_TOML: &str = include_str!("../../policies/seccomp/default.toml");
/// The same, as JSON (made by build.rs).
const DEFAULT_SECCOMP_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/seccomp-default.json"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seccomp {
    /// System calls refused; every other call is allowed. Default: policies/seccomp/default.toml.
    pub deny: Vec<crate::confine::seccomp::DenyRule>,
}

impl Default for Seccomp {
    fn default() -> Self {
        // Checked by a unit test; a failure here is a build defect.
        serde_json::from_str(DEFAULT_SECCOMP_JSON).unwrap_or_else(|e| panic!("built-in seccomp rules are invalid: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Process {
    /// The payload when `swarmcell run` is given no command (`{port}` is the
    /// inner port). Default: none.
    pub command: Vec<String>,
    /// Variables copied from the launcher's environment, by name, besides
    /// PATH, HOME, TERM and LANG, which swarmcell sets itself.
    pub env: Vec<String>,
    /// A variable in which the payload gets a fresh random secret per sandbox
    /// (OpenCode: `OPENCODE_SERVER_PASSWORD`, its HTTP basic auth password).
    /// The health check sends it (user `health.auth_user`); only the requester
    /// gets it back (`"secret"` in the ready line). Default: none, no secret.
    pub server_password_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filesystem {
    /// Host paths bound read-only at the same path; missing ones are skipped.
    pub read_only: Vec<PathBuf>,
    /// Host paths bound read-write besides the worktree; they must exist.
    pub read_write: Vec<PathBuf>,
    /// Host paths bound read-only but given no Landlock rule, so that they stay
    /// unreadable while Landlock is enforced. Only for verifying that Landlock
    /// holds on its own; never needed in production.
    pub mount_only: Vec<PathBuf>,
    /// Size of the private /tmp tmpfs.
    pub tmp_size: ByteSize,
    /// Size of the private /dev/shm tmpfs.
    pub shm_size: ByteSize,
}

/// Upper bound of `max_proxy_connections` and `max_forward_connections`: each
/// connection holds up to six descriptors in the launcher.
pub const MAX_RELAYED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// The port the payload listens on inside its own network namespace.
    pub inner_port: u16,
    /// Host loopback ports the sandbox may reach through outbound forwards
    /// (Agent Mail, Temporal, PostgreSQL); Landlock allows TCP connect to these.
    pub forwards: Vec<u16>,
    /// The egress proxy's port inside the sandbox (HTTP_PROXY/HTTPS_PROXY).
    pub proxy_port: u16,
    /// Host names the egress proxy allows: `name`, `*.suffix`, optionally `:port`
    /// (443 and 80 otherwise).
    pub egress_allow: Vec<String>,
    /// Addresses an allowed name may resolve to although they are not public
    /// (loopback, private, link-local are refused otherwise). Default: none.
    pub egress_allow_addresses: Vec<String>,
    /// Most connections open at once through the egress proxy; more are
    /// answered 503 and closed at once.
    pub max_proxy_connections: usize,
    /// Most connections open at once through all outbound forwards together;
    /// more are closed at once.
    pub max_forward_connections: usize,
    /// Deadline for a proxy request's whole head (request line and headers).
    pub head_timeout: HumanDuration,
    /// A relayed connection (inbound broker, forward, proxy) that moves no byte
    /// either way for this long is closed.
    pub idle_timeout: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory: ByteSize,
    pub swap: ByteSize,
    pub pids: u64,
    /// CPU cores (fractional), e.g. 0.5.
    pub cpu: f64,
    /// Most bytes the worktree may hold on the host ("max": no limit).
    pub disk: ByteSize,
    /// Most files and directories the worktree may hold (absent: no limit).
    pub inodes: Option<u64>,
    /// How `disk`/`inodes` are enforced where the worktree's filesystem has no
    /// project quotas: refuse to start ("required", the default) or measure
    /// and stop the sandbox when over ("best-effort").
    pub disk_enforcement: crate::host::disk::Enforcement,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub path: String,
    pub timeout: HumanDuration,
    pub interval: HumanDuration,
    pub failures: u32,
    /// The HTTP basic auth user name sent with the sandbox's secret (when
    /// `process.server_password_env` gives it one). Default: "opencode".
    pub auth_user: String,
}

impl Default for Filesystem {
    fn default() -> Self {
        // The host's time zone too (a symlink into /usr/share/zoneinfo, recreated).
        let ro = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/localtime"];
        Filesystem {
            read_only: ro.iter().map(PathBuf::from).collect(),
            read_write: Vec::new(),
            mount_only: Vec::new(),
            tmp_size: ByteSize::bytes(512 << 20),
            shm_size: ByteSize::bytes(64 << 20),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        use std::time::Duration;
        Network {
            inner_port: 4096,
            forwards: vec![8765, 7233, 5432],
            proxy_port: 3128,
            egress_allow: Vec::new(),
            egress_allow_addresses: Vec::new(),
            max_proxy_connections: 64,
            max_forward_connections: 64,
            head_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(300)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::bytes(2 << 30),
            swap: ByteSize::bytes(0),
            pids: 1024,
            cpu: 2.0,
            disk: ByteSize(None),
            inodes: None,
            disk_enforcement: crate::host::disk::Enforcement::Required,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        use std::time::Duration;
        Health {
            path: "/global/health".into(),
            timeout: HumanDuration(Duration::from_secs(10)),
            interval: HumanDuration(Duration::from_secs(30)),
            failures: 3,
            auth_user: "opencode".into(),
        }
    }
}

/// `run` flags that override `[limits]` for one run.
#[derive(Debug, Default)]
pub struct LimitOverrides<'a> {
    pub memory: Option<&'a str>,
    pub pids: Option<u64>,
    pub cpu: Option<f64>,
    pub disk: Option<&'a str>,
    pub inodes: Option<u64>,
}

/// A policy that failed to load: always names the source, and where known the
/// line, column and offending text.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable, not a regular file, too open, or owned by someone else.
    #[error("policy {file}: {reason}")]
    File { file: String, reason: crate::host::config_file::Refusal },
    #[error("policy {file}:{line}:{column}: {message}{near}")]
    Parse { file: String, line: usize, column: usize, message: String, near: Near },
    #[error("policy {file}: {field}: {message}")]
    Invalid { file: String, field: String, message: String },
}

/// The source line an error points at, shown as ` (at `...`)`.
#[derive(Debug, Default)]
pub struct Near(pub Option<String>);

impl fmt::Display for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (at `{s}`)"),
            None => Ok(()),
        }
    }
}

impl Policy {
    /// The embedded default policy (read from its JSON form: TOML parsing was
    /// a tenth of a millisecond of every launch).
    pub fn builtin() -> Policy {
        // The embedded policy is checked by a unit test; a failure here is a build defect.
        let policy: Policy = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap_or_else(|e| panic!("built-in policy is invalid: {e}"));
        if let Err((field, message)) = policy.validate() {
            panic!("built-in policy is invalid: {field}: {message}");
        }
        policy
    }

    /// Load a policy file, refusing loose permissions and foreign owners.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = crate::host::config_file::read(path).map_err(|reason| PolicyError::File { file: file.clone(), reason })?;
        Policy::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| {
            let (line, column, near) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, 0, None),
            };
            PolicyError::Parse { file: file.to_string(), line, column, message: e.message().trim().to_string(), near: Near(near) }
        })?;
        policy.validate().map_err(|(field, message)| PolicyError::Invalid { file: file.to_string(), field, message })?;
        Ok(policy)
    }

    /// Apply `--memory`, `--pids` and `--cpu` for one run, validated like the file.
    pub fn with_limit_overrides(self, memory: Option<&str>, pids: Option<u64>, cpu: Option<f64>) -> Result<Policy, String> {
        self.with_overrides(&LimitOverrides { memory, pids, cpu, ..Default::default() })
    }

    /// Apply the `run` flags that override `[limits]`, validated like the file.
    pub fn with_overrides(mut self, o: &LimitOverrides) -> Result<Policy, String> {
        let (memory, pids, cpu) = (o.memory, o.pids, o.cpu);
        if let Some(d) = o.disk {
            self.limits.disk = ByteSize::try_from(d.to_string()).map_err(|e| format!("--disk: {e}"))?;
        }
        if let Some(n) = o.inodes {
            self.limits.inodes = Some(n);
        }
        if let Some(m) = memory {
            self.limits.memory = ByteSize::try_from(m.to_string()).map_err(|e| format!("--memory: {e}"))?;
        }
        if let Some(p) = pids {
            self.limits.pids = p;
        }
        if let Some(c) = cpu {
            self.limits.cpu = c;
        }
        self.validate().map_err(|(field, message)| format!("--{}: {message}", field.trim_start_matches("limits.")))?;
        Ok(self)
    }

    /// The disk limits this policy asks for.
    /// The Landlock rules this policy gives a sandbox on `worktree` (sandbox
    /// paths): what the mounts show (minus `mount_only`) and the devices. One
    /// place for `swarmcell run` and `policy explain`; the launcher adds a
    /// linked worktree's git directories.
    pub fn landlock_rules(&self, worktree: &Path, extra_ro: &[PathBuf], extra_rw: &[PathBuf]) -> crate::confine::landlock::LandlockSpec {
        let fs = &self.filesystem;
        let mut read_exec: Vec<PathBuf> = fs.read_only.iter().chain(extra_ro).cloned().collect();
        read_exec.extend(["/etc", "/proc", "/dev"].map(PathBuf::from));
        let mut read_write: Vec<PathBuf> = vec![worktree.to_path_buf(), "/tmp".into(), "/dev/shm".into(), "/dev/pts".into()];
        read_write.extend(fs.read_write.iter().chain(extra_rw).cloned());
        crate::confine::landlock::LandlockSpec {
            mode: self.landlock,
            read_exec,
            read_write,
            device_files: crate::fs::host_binds::DEVICES.iter().map(|d| PathBuf::from("/dev").join(d)).collect(),
        }
    }

    pub fn disk_limits(&self) -> crate::host::disk::DiskLimits {
        let l = &self.limits;
        crate::host::disk::DiskLimits { bytes: l.disk.0, inodes: l.inodes, enforcement: l.disk_enforcement }
    }

    /// The cgroup limits this policy asks for.
    pub fn cgroup_limits(&self) -> crate::host::cgroups::Limits {
        let l = &self.limits;
        crate::host::cgroups::Limits { memory: l.memory.0, swap: l.swap.0, pids: Some(l.pids), cpu: Some(l.cpu) }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        for (i, t) in self.tripwires.iter().enumerate() {
            if let Err((field, m)) = t.validate() {
                return err(&format!("tripwire[{i}].{field}"), m);
            }
        }
        if self.process.command.iter().any(|a| a.contains('\0') || a.len() > 4096) {
            return err("process.command", "arguments must be NUL-free and at most 4096 bytes".into());
        }
        for (i, name) in self.process.env.iter().enumerate() {
            if let Err(m) = check_env_name(name) {
                return err(&format!("process.env[{i}]"), m);
            }
        }
        if let Some(name) = &self.process.server_password_env {
            let field = "process.server_password_env";
            if let Err(m) = check_env_name(name) {
                return err(field, m);
            }
            if RESERVED_ENV.contains(&name.as_str()) || name.starts_with("SWARMCELL_") {
                return err(field, format!("{name} is set by swarmcell itself"));
            }
            if self.process.env.contains(name) {
                return err(field, format!("{name} is also in process.env: the secret is made per sandbox, never copied from the launcher"));
            }
        }
        let user = &self.health.auth_user;
        if user.is_empty() || user.len() > 64 || user.contains(':') || user.chars().any(|c| c.is_control() || c == ' ') {
            return err("health.auth_user", format!("{user:?} must be 1-64 characters without ':', spaces or control characters"));
        }
        for (field, list) in [
            ("filesystem.read_only", &self.filesystem.read_only),
            ("filesystem.read_write", &self.filesystem.read_write),
            ("filesystem.mount_only", &self.filesystem.mount_only),
        ] {
            for (i, p) in list.iter().enumerate() {
                if let Err(m) = check_sandbox_path(p) {
                    return err(&format!("{field}[{i}]"), m);
                }
            }
        }
        let tmp = self.filesystem.tmp_size.0;
        if tmp.is_none_or(|n| n < (1 << 20)) {
            return err("filesystem.tmp_size", format!("{} is out of range (1M or more, not \"max\")", self.filesystem.tmp_size));
        }
        if self.filesystem.shm_size.0.is_none_or(|n| n < (1 << 20)) {
            return err("filesystem.shm_size", format!("{} is out of range (1M or more, not \"max\")", self.filesystem.shm_size));
        }
        if self.network.inner_port == 0 {
            return err("network.inner_port", "0 is not a port (1-65535)".into());
        }
        if let Some(i) = self.network.forwards.iter().position(|p| *p == 0) {
            return err(&format!("network.forwards[{i}]"), "0 is not a port (1-65535)".into());
        }
        let n = &self.network;
        if n.proxy_port == 0 || n.proxy_port == n.inner_port || n.forwards.contains(&n.proxy_port) {
            return err("network.proxy_port", format!("{} must be a port (1-65535) other than the inner port and the forwards", n.proxy_port));
        }
        if n.forwards.contains(&n.inner_port) {
            return err("network.forwards", format!("{} is the inner port", n.inner_port));
        }
        for (i, e) in n.egress_allow.iter().enumerate() {
            if let Err(m) = crate::net::egress::check_entry(e) {
                return err(&format!("network.egress_allow[{i}]"), m);
            }
        }
        for (i, a) in n.egress_allow_addresses.iter().enumerate() {
            if a.parse::<std::net::IpAddr>().is_err() {
                return err(&format!("network.egress_allow_addresses[{i}]"), format!("{a:?} is not an IP address"));
            }
        }
        for (field, max) in
            [("network.max_proxy_connections", n.max_proxy_connections), ("network.max_forward_connections", n.max_forward_connections)]
        {
            if !(1..=MAX_RELAYED).contains(&max) {
                return err(field, format!("{max} is out of range (1 to {MAX_RELAYED})"));
            }
        }
        for (field, d) in [("network.head_timeout", n.head_timeout.0), ("network.idle_timeout", n.idle_timeout.0)] {
            if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(24 * 3600) {
                return err(field, format!("{} is out of range (100ms to 24h)", HumanDuration(d)));
            }
        }
        if let Err(e) = crate::confine::seccomp::validate(&self.seccomp.deny) {
            return err("seccomp", e.to_string());
        }
        if self.limits.memory.0.is_some_and(|n| n < (4 << 20)) {
            return err("limits.memory", format!("{} is too small (4M or more)", self.limits.memory));
        }
        if self.limits.disk.0.is_some_and(|n| n < (1 << 20)) {
            return err("limits.disk", format!("{} is too small (1M or more, or \"max\")", self.limits.disk));
        }
        if self.limits.inodes.is_some_and(|n| n < 16) {
            return err("limits.inodes", "too small (16 or more)".into());
        }
        if self.limits.pids == 0 {
            return err("limits.pids", "0 would not even allow the payload (1 or more)".into());
        }
        if !(self.limits.cpu.is_finite() && self.limits.cpu >= 0.01 && self.limits.cpu <= 1024.0) {
            return err("limits.cpu", format!("{} is out of range (0.01 to 1024 cores)", self.limits.cpu));
        }
        if !self.health.path.starts_with('/') || self.health.path.len() > 1024 || self.health.path.chars().any(|c| c.is_control() || c == ' ') {
            return err("health.path", format!("{:?} must be an absolute URL path without spaces or control characters", self.health.path));
        }
        if self.health.timeout.0.is_zero() || self.health.interval.0.is_zero() {
            return err("health", "timeout and interval must be more than 0".into());
        }
        if self.health.failures == 0 {
            return err("health.failures", "must be 1 or more".into());
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset, and that line's text.
fn locate(text: &str, offset: usize) -> (usize, usize, Option<String>) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("").trim();
    (line, column, (!line_text.is_empty()).then(|| line_text.chars().take(120).collect()))
}

/// Variables swarmcell sets in every sandbox.
const RESERVED_ENV: [&str; 17] = [
    "PATH",
    "HOME",
    "TERM",
    "LANG",
    "USER",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "SWARMCELL_SANDBOX_ID",
    "SWARMCELL_PORT",
];

/// Environment variable names that may be passed through. Loader and shell
/// start-up variables are refused: they would turn the launcher's environment
/// into code running in the sandbox.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{name:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)"));
    }
    if name.starts_with("LD_") || ["BASH_ENV", "ENV", "PYTHONSTARTUP", "NODE_OPTIONS", "PERL5OPT"].contains(&name) {
        return Err(format!("{name} may not be passed into a sandbox: it makes programs load code"));
    }
    Ok(())
}

/// A path inside the sandbox: absolute, normalised, no `..`, not `/` itself.
pub fn check_sandbox_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("{} contains `.` or `..`", p.display()));
    }
    if p.parent().is_none() {
        return Err("`/` cannot be bound into a sandbox".to_string());
    }
    if p.as_os_str().len() > 4096 {
        return Err("path is longer than 4096 bytes".to_string());
    }
    for reserved in ["/proc", "/dev", "/sys"] {
        if p.starts_with(reserved) {
            return Err(format!("{} is under {reserved}, which the sandbox builds itself", p.display()));
        }
    }
    if p == Path::new("/etc") || crate::fs::etc::NAMES.iter().any(|n| p == Path::new("/etc").join(n)) {
        return Err(format!("{} is the sandbox's generated /etc or one of its files; bind other paths below /etc", p.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_json_is_the_embedded_toml() {
        let from_toml = Policy::parse(DEFAULT_POLICY_TOML, DEFAULT_POLICY_NAME).unwrap();
        assert_eq!(Policy::builtin(), from_toml);
        let seccomp: Seccomp = toml::from_str(DEFAULT_SECCOMP_TOML).unwrap();
        assert_eq!(Seccomp::default(), seccomp);
        assert!(!seccomp.deny.is_empty());
    }

    #[test]
    fn builtin_policy_parses_and_has_the_documented_keys() {
        let p = Policy::builtin();
        assert_eq!(p.limits.memory, ByteSize::bytes(2 << 30));
        assert_eq!(p.limits.swap, ByteSize::bytes(0));
        assert_eq!(p.limits.pids, 1024);
        assert_eq!(p.limits.cpu, 2.0);
        assert_eq!(p.limits.disk, ByteSize::bytes(10 << 30));
        assert_eq!(p.limits.inodes, Some(1_000_000));
        assert_eq!(p.limits.disk_enforcement, crate::host::disk::Enforcement::BestEffort);
        assert_eq!(Policy::default().limits.disk_enforcement, crate::host::disk::Enforcement::Required);
        assert_eq!(Policy::default().limits.disk, ByteSize(None));
        assert_eq!(p.filesystem.tmp_size, ByteSize::bytes(512 << 20));
        assert_eq!(p.network.inner_port, 4096);
        assert_eq!((p.network.max_proxy_connections, p.network.max_forward_connections), (64, 64));
        assert_eq!((p.network.head_timeout.0.as_secs(), p.network.idle_timeout.0.as_secs()), (10, 300));
        assert_eq!(p.health.path, "/global/health");
        assert_eq!(p.health.timeout.0.as_secs(), 10);
        assert_eq!(p.health.interval.0.as_secs(), 30);
        assert_eq!(p.health.failures, 3);
        assert!(p.filesystem.read_only.contains(&PathBuf::from("/usr")));
        assert_eq!(p.process.server_password_env.as_deref(), Some("OPENCODE_SERVER_PASSWORD"));
        assert!(!p.process.env.iter().any(|e| e.starts_with("OPENCODE_SERVER_")), "the secret is made per sandbox");
        assert_eq!(p.health.auth_user, "opencode");
    }

    #[test]
    fn empty_policy_is_all_defaults() {
        assert_eq!(Policy::parse("", "t").unwrap(), Policy::default());
        assert_eq!(Policy::default().landlock, crate::confine::landlock::Mode::BestEffort);
        assert!(Policy::default().seccomp.deny.len() > 10);
    }

    #[test]
    fn a_policy_can_replace_the_seccomp_rules_and_turn_landlock_off() {
        let p = Policy::parse("landlock = \"off\"\n[seccomp]\ndeny = []\n", "t").unwrap();
        assert_eq!(p.landlock, crate::confine::landlock::Mode::Off);
        assert!(p.seccomp.deny.is_empty());
        let e = Policy::parse("landlock = \"maybe\"\n", "t").unwrap_err().to_string();
        assert!(e.contains("t:1:") && e.contains("maybe"), "{e}");
        let e = Policy::parse("[[seccomp.deny]]\nsyscalls = [\"nope\"]\nreason = \"x\"\n", "t").unwrap_err().to_string();
        assert!(e.contains("seccomp") && e.contains("nope"), "{e}");
    }

    #[test]
    fn unknown_key_error_names_file_line_and_field() {
        let e = Policy::parse("[limits]\npids = 5\nmemroy = \"1G\"\n", "p.toml").unwrap_err().to_string();
        assert!(e.starts_with("policy p.toml:3:1: "), "{e}");
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn bad_value_error_names_line_and_shows_the_field() {
        let e = Policy::parse("[filesystem]\ntmp_size = \"12Q\"\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:2:"), "{e}");
        assert!(e.contains("tmp_size"), "{e}");
        assert!(e.contains("12Q"), "{e}");
        let e = Policy::parse("[network]\ninner_port = 70000\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:2:") && e.contains("inner_port"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            ("[process]\nenv = [\"LD_PRELOAD\"]", "process.env[0]"),
            ("[process]\nenv = [\"A-B\"]", "process.env[0]"),
            ("[filesystem]\nread_only = [\"usr\"]", "filesystem.read_only[0]"),
            ("[filesystem]\nread_write = [\"/x/../etc\"]", "filesystem.read_write[0]"),
            ("[filesystem]\nread_write = [\"/proc/sys\"]", "filesystem.read_write[0]"),
            // The generated /etc and its files (an EEXIST at every launch before).
            ("[filesystem]\nread_only = [\"/usr\", \"/etc/hosts\"]", "filesystem.read_only[1]"),
            ("[filesystem]\nread_write = [\"/etc\"]", "filesystem.read_write[0]"),
            ("[filesystem]\nmount_only = [\"/etc/resolv.conf\"]", "filesystem.mount_only[0]"),
            ("[limits]\npids = 0", "limits.pids"),
            ("[limits]\ncpu = 0.0", "limits.cpu"),
            ("[limits]\nmemory = \"1K\"", "limits.memory"),
            ("[limits]\ndisk = \"1K\"", "limits.disk"),
            ("[limits]\ninodes = 0", "limits.inodes"),
            ("[network]\ninner_port = 0", "network.inner_port"),
            ("[network]\nmax_proxy_connections = 0", "network.max_proxy_connections"),
            ("[network]\nmax_forward_connections = 100000", "network.max_forward_connections"),
            ("[network]\nhead_timeout = \"0s\"", "network.head_timeout"),
            ("[network]\nidle_timeout = \"25h\"", "network.idle_timeout"),
            ("[health]\npath = \"x\"", "health.path"),
            ("[health]\nauth_user = \"a:b\"", "health.auth_user"),
            ("[process]\nserver_password_env = \"PATH\"", "process.server_password_env"),
            ("[process]\nserver_password_env = \"P\"\nenv = [\"P\"]", "process.server_password_env"),
        ];
        for (text, field) in cases {
            let e = Policy::parse(text, "p.toml").unwrap_err().to_string();
            assert!(e.starts_with(&format!("policy p.toml: {field}:")), "{text}: {e}");
        }
    }

    #[test]
    fn loose_mode_and_missing_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("swarmcell-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.toml");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Policy::load(&f).unwrap_err().to_string();
        assert!(e.contains("mode 0644 is wider than 0640"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Policy::load(&f).is_ok());
        let e = Policy::load(&dir.join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
