//! A sandbox's output (its launcher's stdout and stderr, which the payload
//! inherits) reaches the daemon through a pipe and is written to a log file of
//! bounded size: past `max` bytes the file is rotated to `NAME.1` (replacing
//! the previous one), so an agent that prints without end costs at most twice
//! `max` of disk, never the host's /run or /var.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::poller::{IN, Poller, Watched};

pub struct LogSink {
    pipe: Watched<File>,
    /// The write end, duplicated into every launcher of this sandbox (also across restarts).
    pub writer: OwnedFd,
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
}

fn open_log(path: &Path, truncate: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl LogSink {
    /// The pipe's read end is watched under `token`.
    pub fn new(poller: &Rc<Poller>, token: u64, path: PathBuf, max: u64) -> std::io::Result<LogSink> {
        let (r, w) = crate::sys::pipe_cloexec().map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        crate::sys::set_nonblocking(r.as_raw_fd()).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        let file = open_log(&path, false)?;
        let written = file.metadata()?.len();
        Ok(LogSink { pipe: Watched::new(poller, File::from(r), IN, token)?, writer: w, path, file, written, max })
    }

    /// Move what the pipe holds into the file (at most a few reads: the loop comes back).
    pub fn drain(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        for _ in 0..4 {
            let n = match self.pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.written + n as u64 > self.max {
                self.rotate();
            }
            if self.file.write_all(&buf[..n]).is_ok() {
                self.written += n as u64;
            }
        }
    }

    fn rotate(&mut self) {
        let old = self.path.with_extension("log.1");
        let _ = std::fs::rename(&self.path, old);
        if let Ok(f) = open_log(&self.path, true) {
            self.file = f;
            self.written = 0;
        }
    }

    /// Remove the log (and its rotated part).
    pub fn remove(self) {
        let _ = std::fs::remove_file(self.path.with_extension("log.1"));
        let _ = std::fs::remove_file(&self.path);
    }

    /// The last `n` bytes written (across the rotation). Reads at most `n`
    /// bytes of each file (from its end): the loop never reads a whole log.
    pub fn tail(&self, n: usize) -> Vec<u8> {
        fn last(path: &Path, n: usize) -> Vec<u8> {
            use std::io::{Read, Seek, SeekFrom};
            let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(n as u64)));
            let mut buf = Vec::with_capacity(n.min(len as usize));
            let _ = f.take(n as u64).read_to_end(&mut buf);
            buf
        }
        let mut text = last(&self.path, n);
        if text.len() < n {
            let mut older = last(&self.path.with_extension("log.1"), n - text.len());
            older.extend(text);
            text = older;
        }
        text
    }
}

/// Logs kept of sandboxes that failed (for the post-mortem), at most.
pub const MAX_KEPT: usize = 64;

/// Remove the oldest logs in `dir` that belong to no sandbox in `live`, so that
/// at most `keep` sandboxes' logs stay (a client launching failing sandboxes
/// again and again cannot fill the disk either).
pub fn prune_kept(dir: &Path, live: &[&str], keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut kept: Vec<(std::time::SystemTime, String)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".log") else { continue };
        if !live.contains(&id) {
            kept.push((e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), id.to_string()));
        }
    }
    kept.sort();
    let excess = kept.len().saturating_sub(keep);
    for (_, id) in &kept[..excess] {
        let _ = std::fs::remove_file(dir.join(format!("{id}.log.1")));
        let _ = std::fs::remove_file(dir.join(format!("{id}.log")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_rotated_and_the_disk_use_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("swarmcell-logs-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&dir).unwrap();
        let mut sink = LogSink::new(&Poller::new().unwrap(), 1, dir.join("d-1.log"), 1000).unwrap();
        let mut w = File::from(sink.writer.try_clone().unwrap());
        for i in 0..30 {
            w.write_all(format!("{i:03} {}\n", "x".repeat(95)).as_bytes()).unwrap();
            sink.drain();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&dir.join("d-1.log")) <= 1000 && size(&dir.join("d-1.log.1")) <= 1000);
        let tail = String::from_utf8(sink.tail(200)).unwrap();
        assert!(tail.ends_with(&format!("029 {}\n", "x".repeat(95))), "{tail}");
        sink.remove();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn only_the_newest_logs_of_gone_sandboxes_are_kept() {
        let dir = std::env::temp_dir().join(format!("swarmcell-logs-{}-{}", std::process::id(), crate::launch::random_u32()));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("d-{i}.log")), "x").unwrap();
            std::fs::write(dir.join(format!("d-{i}.log.1")), "x").unwrap();
            // Distinct modification times, oldest first.
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i);
            std::fs::File::options().write(true).open(dir.join(format!("d-{i}.log"))).unwrap().set_modified(t).unwrap();
        }
        // d-0 is the oldest but still running: never removed.
        prune_kept(&dir, &["d-0"], 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["d-0.log", "d-0.log.1", "d-3.log", "d-3.log.1", "d-4.log", "d-4.log.1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
