//! One health check as a small state machine for the daemon's poll loop:
//! connect (non-blocking) to the sandbox's broker port, send `GET PATH`, read the
//! status line. A payload that accepts and never answers costs the loop nothing
//! but a deadline; a thousand checks can be in flight at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::poller::{IN, OUT, Poller, Watched};

/// How long one check may take.
pub const TIMEOUT: Duration = Duration::from_secs(1);

pub struct Probe {
    stream: Watched<TcpStream>,
    request: Vec<u8>,
    sent: bool,
    status: [u8; 12],
    got: usize,
    pub deadline: Instant,
}

impl Probe {
    /// Connect; the socket is watched under `token`.
    pub fn start(poller: &Rc<Poller>, token: u64, port: u16, path: &str) -> std::io::Result<Probe> {
        let stream = crate::sys::tcp_connect_loopback_nonblocking(port).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        Ok(Probe {
            stream: Watched::new(poller, stream, OUT, token)?,
            request: format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes(),
            sent: false,
            status: [0; 12],
            got: 0,
            deadline: Instant::now() + TIMEOUT,
        })
    }

    /// Go on after the socket was reported ready: `Some(healthy)` when decided.
    pub fn advance(&mut self) -> Option<bool> {
        if !self.sent {
            if !matches!(self.stream.take_error(), Ok(None)) {
                return Some(false);
            }
            // The request is far smaller than a socket buffer: one write.
            match self.stream.write(&self.request) {
                Ok(n) if n == self.request.len() => {
                    self.sent = true;
                    self.stream.interest(IN);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                _ => return Some(false),
            }
            return None;
        }
        loop {
            match self.stream.read(&mut self.status[self.got..]) {
                Ok(0) => return Some(false),
                Ok(n) => {
                    self.got += n;
                    // "HTTP/1.1 2xx": healthy on a 2xx status.
                    if self.got == self.status.len() {
                        return Some(self.status.starts_with(b"HTTP/1.") && self.status[9] == b'2');
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Some(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(poller: &Rc<Poller>, p: &mut Probe) -> Option<bool> {
        let mut ready = Vec::new();
        while Instant::now() < p.deadline {
            poller.wait(50, &mut ready);
            if !ready.is_empty()
                && let Some(r) = p.advance()
            {
                return Some(r);
            }
        }
        None
    }

    fn check(port: u16) -> Option<bool> {
        let poller = Poller::new().unwrap();
        // (Refused at once or when the connection completes: both are a failure.)
        Probe::start(&poller, 1, port, "/h").map_or(Some(false), |mut p| run(&poller, &mut p))
    }

    fn server(reply: &'static [u8]) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            if !reply.is_empty() {
                let _ = s.write_all(reply);
            } else {
                std::thread::sleep(Duration::from_secs(3));
            }
        });
        port
    }

    #[test]
    fn a_2xx_is_healthy_and_anything_else_is_not() {
        assert_eq!(check(server(b"HTTP/1.1 200 OK\r\n\r\n")), Some(true));
        assert_eq!(check(server(b"HTTP/1.1 503 No\r\n\r\n")), Some(false));
        assert_eq!(check(server(b"HTTP/1.1 2")), Some(false), "a short answer");
    }

    #[test]
    fn a_closed_port_fails_and_a_silent_server_runs_into_the_deadline() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(check(closed), Some(false));
        assert_eq!(check(server(b"")), None, "undecided until the caller's deadline");
    }
}
