//! A client of the daemon (control socket, or metrics scraper) as the poll loop
//! sees it: a non-blocking socket, the request being read up to its terminator,
//! and the reply being written. No client can hold up the loop: an idle or
//! slow one only has a deadline.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::poller::{IN, NOTHING, OUT, Poller, Watched};

/// How long a client has to send its request, and to take its reply.
pub const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request line.
    Reading,
    /// Its request is in progress (a launch waiting for health, a stop waiting
    /// for the exit); not watched, answered by the daemon later.
    Waiting,
    /// Writing the reply; closed when it is out.
    Replying,
}

pub struct Conn<S: AsRawFd> {
    stream: Watched<S>,
    pub uid: u32,
    phase: Phase,
    deadline: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
}

/// What reading produced.
pub enum Input {
    /// Not a whole line yet.
    Partial,
    Line(Vec<u8>),
    /// Closed without sending anything.
    Closed,
    /// Longer than the limit, closed in the middle, or a read error.
    Bad(&'static str),
}

impl<S: Read + Write + AsRawFd> Conn<S> {
    /// `stream` must be non-blocking already; it is watched under `token`.
    pub fn new(poller: &Rc<Poller>, stream: S, uid: u32, token: u64) -> std::io::Result<Conn<S>> {
        let stream = Watched::new(poller, stream, IN, token)?;
        Ok(Conn { stream, uid, phase: Phase::Reading, deadline: Instant::now() + DEADLINE, input: Vec::new(), output: Vec::new() })
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// When it is dropped if still here: being read or answered. A client
    /// whose request is in progress has none (the daemon answers it).
    pub fn deadline(&self) -> Option<Instant> {
        (self.phase != Phase::Waiting).then_some(self.deadline)
    }

    /// The request is being carried out: stop watching until the reply.
    pub fn wait(&mut self) {
        self.phase = Phase::Waiting;
        self.stream.interest(NOTHING);
    }

    /// Read what is there, up to `limit` bytes ending with `terminator`.
    pub fn read(&mut self, limit: usize, terminator: &[u8]) -> Input {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) if self.input.is_empty() => return Input::Closed,
                Ok(0) => return Input::Bad("closed before a whole request"),
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    if let Some(at) = self.input.windows(terminator.len()).position(|w| w == terminator) {
                        let end = at + terminator.len();
                        return if end > limit + terminator.len() {
                            Input::Bad("request too large")
                        } else {
                            Input::Line(self.input.drain(..end).collect())
                        };
                    }
                    if self.input.len() > limit {
                        return Input::Bad("request too large");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Input::Partial,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Input::Bad("unreadable request"),
            }
        }
    }

    /// Queue the reply and start writing it; true when it is all out (or the
    /// client is gone) and the connection can be dropped.
    pub fn reply(&mut self, output: Vec<u8>) -> bool {
        self.output = output;
        self.phase = Phase::Replying;
        self.deadline = Instant::now() + DEADLINE;
        let done = self.flush();
        if !done {
            self.stream.interest(OUT);
        }
        done
    }

    /// Write what is pending; true when done (all written, or the client is gone).
    pub fn flush(&mut self) -> bool {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn conn(s: UnixStream) -> Conn<UnixStream> {
        s.set_nonblocking(true).unwrap();
        Conn::new(&Poller::new().unwrap(), s, 0, 1).unwrap()
    }

    #[test]
    fn a_request_line_arrives_in_pieces_and_a_long_one_is_cut_off() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut c = conn(server);
        assert!(matches!(c.read(100, b"\n"), Input::Partial));
        client.write_all(b"{\"cmd\":").unwrap();
        assert!(matches!(c.read(100, b"\n"), Input::Partial));
        client.write_all(b"\"list\"}\n").unwrap();
        assert!(matches!(c.read(100, b"\n"), Input::Line(l) if l == b"{\"cmd\":\"list\"}\n"));
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut c = conn(server);
        client.write_all(&[b'x'; 200]).unwrap();
        assert!(matches!(c.read(100, b"\n"), Input::Bad("request too large")));
    }

    #[test]
    fn a_reply_larger_than_the_socket_buffer_is_written_as_the_client_reads() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut c = conn(server);
        let big = vec![b'y'; 4 << 20];
        assert!(!c.reply(big.clone()), "4 MiB do not fit in a socket buffer");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            client.read_to_string(&mut s).unwrap();
            s
        });
        while !c.flush() {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(c);
        assert_eq!(reader.join().unwrap().len(), big.len());
    }
}
