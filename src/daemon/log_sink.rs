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

    /// The last `n` bytes written (across the rotation).
    pub fn tail(&self, n: usize) -> Vec<u8> {
        let mut text = std::fs::read(self.path.with_extension("log.1")).unwrap_or_default();
        text.extend(std::fs::read(&self.path).unwrap_or_default());
        text.split_off(text.len().saturating_sub(n))
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
}
