//! Daemon side: the events channel of one launcher (`swarmcell run
//! --events-fd`), a pipe of its own, read non-blockingly by the loop. Only the
//! launcher writes to it (the payload never holds it); lines are parsed into
//! the closed set of [`crate::launch::events::Event`], bounded in length.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use super::poller::{IN, Poller, Watched};
use crate::launch::events::{Event, MAX_LINE};

pub struct EventPipe {
    pipe: Watched<std::fs::File>,
    partial: Vec<u8>,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

impl EventPipe {
    /// A new channel watched under `token`, and its write end for the launcher.
    pub fn new(poller: &Rc<Poller>, token: u64) -> std::io::Result<(EventPipe, OwnedFd)> {
        let (r, w) = crate::sys::pipe_cloexec().map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        crate::sys::set_nonblocking(r.as_raw_fd()).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        Ok((EventPipe { pipe: Watched::new(poller, std::fs::File::from(r), IN, token)?, partial: Vec::new(), skipping: false }, w))
    }

    /// The complete lines the pipe holds now, parsed (at most a few reads: the
    /// loop comes back).
    pub fn drain(&mut self) -> Vec<Result<Event, String>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..8 {
            let n = match self.pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                let complete = chunk.ends_with(b"\n");
                if !self.skipping {
                    self.partial.extend_from_slice(chunk.strip_suffix(b"\n").unwrap_or(chunk));
                }
                if self.partial.len() > MAX_LINE {
                    self.partial.clear();
                    if !self.skipping {
                        out.push(Err(format!("an event line longer than {MAX_LINE} bytes")));
                    }
                    self.skipping = !complete;
                    continue;
                }
                if complete {
                    if !self.skipping && !self.partial.is_empty() {
                        out.push(crate::launch::events::parse(&self.partial));
                    }
                    self.partial.clear();
                    self.skipping = false;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_are_parsed_across_reads_and_long_or_unknown_ones_refused() {
        let poller = Poller::new().unwrap();
        let (mut p, w) = EventPipe::new(&poller, 1).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"{\"event\":\"ingress_denied\",\"uid\":1001,").unwrap();
        assert!(p.drain().is_empty());
        w.write_all(b"\"port\":8001}\n{\"event\":\"exec\"}\n").unwrap();
        let got = p.drain();
        assert_eq!(got[0], Ok(Event::IngressDenied { uid: Some(1001), port: 8001 }));
        assert!(got[1].is_err());
        w.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        w.write_all(b"\n{\"event\":\"start_failed\",\"error\":\"e\"}\n").unwrap();
        let got = p.drain();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(Event::StartFailed { error: "e".into() }));
    }
}
