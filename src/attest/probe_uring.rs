//! Payload side (run inside a sandbox by the tests): `__probe io-uring-accept
//! PORT`, an accept that no system call makes. The payload listens on PORT (its
//! inner port) and asks io_uring to accept there: the kernel then accepts in
//! its own context, and a seccomp filter, which sees only system calls, never
//! sees that accept. Under socket handoff the launcher turns every accept into
//! a notification and, for a host client, hands its connection over; an accept
//! it never sees takes the launcher's placeholder instead (its first byte is
//! `P`), and the host client is never served.
//!
//! Prints `io-uring-accept STATUS DETAIL`: `blocked` when io_uring cannot be set
//! up, `ESCAPED` when the accept completed outside the notification. Then, so
//! that the test's host client is served either way, it accepts normally and
//! echoes one byte per connection for a few seconds.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};

const IORING_OP_ACCEPT: u8 = 13;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

pub fn main(port: &str) -> u8 {
    let Ok(inner) = port.parse::<u16>() else { return 2 };
    let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", inner)) else { return 2 };
    let (status, detail) = match uring_accept(listener.as_raw_fd()) {
        Err(e) => ("blocked", e),
        Ok(fd) => {
            // SAFETY: a fresh descriptor from the kernel's accept.
            let mut c = unsafe { std::net::TcpStream::from_raw_fd(fd) };
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut b = [0u8; 1];
            let first = c.read_exact(&mut b).map(|_| b[0] as char);
            let _ = c.write_all(&b);
            ("ESCAPED", format!("io_uring accepted outside the notification: peer {:?}, first byte {first:?}", c.peer_addr()))
        }
    };
    println!("io-uring-accept {status} {detail}");
    let _ = std::io::stdout().flush();
    // Serve the test's clients the ordinary way for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let _ = listener.set_nonblocking(true);
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    0
}

/// One IORING_OP_ACCEPT on `listener`, waited for; the accepted fd.
fn uring_accept(listener: i32) -> Result<i32, String> {
    let errno = || std::io::Error::last_os_error();
    let mut p = Params::default();
    // SAFETY: p is a valid io_uring_params for the kernel to fill.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &mut p as *mut Params) };
    if ring < 0 {
        return Err(format!("io_uring_setup: {}", errno()));
    }
    let ring = ring as i32;
    let map = |len: usize, off: i64| {
        // SAFETY: mapping the ring's shared areas at the offsets the ABI defines.
        let m =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, ring, off) };
        if m == libc::MAP_FAILED { Err(format!("mmap io_uring: {}", errno())) } else { Ok(m.cast::<u8>()) }
    };
    let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
    let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * 16;
    let sq = map(sq_len, IORING_OFF_SQ_RING)?;
    let cq = map(cq_len, IORING_OFF_CQ_RING)?;
    let sqes = map(p.sq_entries as usize * 64, IORING_OFF_SQES)?;
    // SAFETY: offsets and sizes come from the kernel's io_uring_params; the
    // rings are ours alone (one submission, then one completion waited for).
    unsafe {
        let at = |base: *mut u8, off: u32| base.add(off as usize).cast::<u32>();
        let sqe = sqes; // entry 0: 64 bytes, zeroed but for what ACCEPT needs
        std::ptr::write_bytes(sqe, 0, 64);
        *sqe = IORING_OP_ACCEPT;
        *sqe.add(4).cast::<i32>() = listener;
        *sqe.add(32).cast::<u64>() = 1; // user_data
        let tail = at(sq, p.sq_off.tail);
        let t = std::ptr::read_volatile(tail);
        *at(sq, p.sq_off.array).add((t & *at(sq, p.sq_off.ring_mask)) as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        std::ptr::write_volatile(tail, t.wrapping_add(1));
        let n = libc::syscall(libc::SYS_io_uring_enter, ring, 1u32, 1u32, IORING_ENTER_GETEVENTS, std::ptr::null::<u8>(), 0usize);
        if n < 0 {
            return Err(format!("io_uring_enter: {}", errno()));
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let head = std::ptr::read_volatile(at(cq, p.cq_off.head));
        if head == std::ptr::read_volatile(at(cq, p.cq_off.tail)) {
            return Err("io_uring: no completion".into());
        }
        let cqe = cq.add(p.cq_off.cqes as usize + (head & *at(cq, p.cq_off.ring_mask)) as usize * 16);
        let res = *cqe.add(8).cast::<i32>();
        if res < 0 {
            return Err(format!("io_uring accept: {}", std::io::Error::from_raw_os_error(-res)));
        }
        Ok(res)
    }
}
