//! Files that configure the privileged launcher (policies, the daemon's config)
//! are read only when they are regular files, mode 0640 or stricter, and owned
//! by root or the caller: anyone else able to write one could widen a sandbox.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("mode {mode:04o} is wider than 0640; run `chmod 0640 {path}`")]
    LooseMode { mode: u32, path: String },
    #[error("owned by uid {uid}, expected root or uid {caller}")]
    Owner { uid: u32, caller: u32 },
}

/// The file's text, checked on the opened file (no race with a rename).
pub fn read(path: &Path) -> Result<String, Refusal> {
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Refusal::NotAFile);
    }
    let mode = meta.mode() & 0o7777;
    if mode & !0o640 != 0 {
        return Err(Refusal::LooseMode { mode, path: path.display().to_string() });
    }
    // SAFETY: geteuid has no preconditions.
    let caller = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != caller {
        return Err(Refusal::Owner { uid: meta.uid(), caller });
    }
    Ok(std::io::read_to_string(f)?)
}
