//! One health check (the checker of [`crate::net::health`]) as a state machine for
//! the daemon's poll loop: a non-blocking socket created inside the sandbox's
//! network namespace (the loop's thread enters it for the `socket` call only),
//! connecting to the payload's inner port there; the request goes out, the
//! status line comes back. A payload that accepts and never answers costs the
//! loop nothing but a deadline; a thousand checks can be in flight at once.

use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::poller::{IN, OUT, Poller, Watched};
use crate::net::broker::Netns;
use crate::net::health::{Exchange, Outcome};

/// How long one check may take.
pub const TIMEOUT: Duration = crate::net::health::PER_REQUEST_TIMEOUT;

pub struct Probe {
    stream: Watched<TcpStream>,
    exchange: Exchange,
    pub deadline: Instant,
}

impl Probe {
    /// Connect to 127.0.0.1:port inside `netns` (`(sandbox, home)`; None: the
    /// daemon's own namespace, for tests); the socket is watched under `token`.
    pub fn start(poller: &Rc<Poller>, token: u64, netns: Option<(&Netns, &Netns)>, port: u16, request: Arc<[u8]>) -> std::io::Result<Probe> {
        let connect = || crate::sys::tcp_connect_loopback_nonblocking(port).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32));
        let stream = match netns {
            Some((sandbox, home)) => sandbox.run_inside(home, connect)??,
            None => connect()?,
        };
        Ok(Probe { stream: Watched::new(poller, stream, OUT, token)?, exchange: Exchange::new(request), deadline: Instant::now() + TIMEOUT })
    }

    /// Go on after the socket was reported ready: `Some(healthy)` when decided.
    pub fn advance(&mut self) -> Option<bool> {
        let outcome = self.exchange.advance(&mut *self.stream);
        if outcome.is_none() && !self.exchange.sending() {
            self.stream.interest(IN);
        }
        outcome.map(|o| o == Outcome::Healthy)
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
        Probe::start(&poller, 1, None, port, crate::net::health::request("/h", port, None)).map_or(Some(false), |mut p| run(&poller, &mut p))
    }

    use crate::net::health::test_server::start as server;

    #[test]
    fn a_2xx_is_healthy_and_anything_else_is_not() {
        assert_eq!(check(server(b"HTTP/1.1 200 OK\r\n\r\n")), Some(true));
        assert_eq!(check(server(b"HTTP/1.1 503 No\r\n\r\n")), Some(false));
        assert_eq!(check(server(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n\r\n")), Some(false), "a redirect");
        assert_eq!(check(server(b"HTTP/1.1 2")), Some(false), "a short answer");
    }

    #[test]
    fn a_closed_port_fails_and_a_silent_server_runs_into_the_deadline() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(check(closed), Some(false));
        assert_eq!(check(server(b"")), None, "undecided until the caller's deadline");
    }
}
