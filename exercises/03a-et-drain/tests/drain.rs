//! Drain tested the way an edge-triggered server uses it: one edge, one
//! drain, and afterwards nothing may be left behind in the socket.
#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::RawFd;

use ex03_et_drain::{Drained, READ_CHUNK, drain, read_once};

/// A Unix stream socket pair, non-blocking, with the reading end registered
/// edge-triggered in its own epoll instance.
struct Setup {
    reader: RawFd,
    writer: RawFd,
    epoll: RawFd,
}

impl Setup {
    fn new() -> Setup {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: plain syscall.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: 7,
        };
        // SAFETY: valid descriptors and event.
        assert_eq!(
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fds[0], &mut event) },
            0
        );
        Setup {
            reader: fds[0],
            writer: fds[1],
            epoll,
        }
    }

    fn send(&self, bytes: &[u8]) {
        let mut sent = 0;
        while sent < bytes.len() {
            // SAFETY: valid descriptor and buffer.
            let n = unsafe {
                libc::write(
                    self.writer,
                    bytes[sent..].as_ptr().cast(),
                    bytes.len() - sent,
                )
            };
            assert!(n > 0, "the test payload must fit in the socket buffers");
            sent += n as usize;
        }
    }

    fn close_writer(&mut self) {
        // SAFETY: we own it and do not use it again.
        unsafe { libc::close(self.writer) };
        self.writer = -1;
    }

    /// How many reports one `epoll_wait` of up to `timeout_ms` returns.
    fn edges(&self, timeout_ms: i32) -> i32 {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: the buffer holds 4 events.
        unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), 4, timeout_ms) }
    }

    /// Whether bytes are still waiting in the socket.
    fn anything_left(&self) -> bool {
        let mut byte = [0u8; 1];
        match read_once(self.reader, &mut byte) {
            Ok(n) => n > 0,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                false
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // SAFETY: the test owns these descriptors.
        unsafe {
            libc::close(self.reader);
            libc::close(self.epoll);
            if self.writer >= 0 {
                libc::close(self.writer);
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn one_edge_one_drain_leaves_nothing_behind() {
    let setup = Setup::new();
    let sent = pattern(6 * READ_CHUNK + 123);
    setup.send(&sent);
    assert_eq!(setup.edges(1000), 1, "one edge for the burst");

    let mut received = Vec::new();
    assert_eq!(drain(setup.reader, &mut received).unwrap(), Drained::Empty);
    assert_eq!(
        received.len(),
        sent.len(),
        "a drain must read every waiting byte"
    );
    assert!(received == sent);
    // And this is why it matters: no further edge will come for leftovers.
    assert_eq!(setup.edges(50), 0);
    assert!(!setup.anything_left());
}

#[test]
fn eof_comes_after_the_last_byte() {
    let mut setup = Setup::new();
    let sent = pattern(3 * READ_CHUNK + 1);
    setup.send(&sent);
    setup.close_writer();
    assert_eq!(setup.edges(1000), 1);

    let mut received = Vec::new();
    assert_eq!(drain(setup.reader, &mut received).unwrap(), Drained::Eof);
    assert!(received == sent);
}

#[test]
fn an_empty_socket_is_empty_not_an_error() {
    let setup = Setup::new();
    let mut received = Vec::new();
    assert_eq!(drain(setup.reader, &mut received).unwrap(), Drained::Empty);
    assert!(received.is_empty());
}

#[test]
fn every_burst_is_read_in_full_on_its_own_edge() {
    let setup = Setup::new();
    let mut received = Vec::new();
    let mut expected = Vec::new();
    for round in 0..5 {
        let burst = pattern(READ_CHUNK * (round + 1) + round);
        setup.send(&burst);
        expected.extend_from_slice(&burst);
        assert_eq!(
            setup.edges(1000),
            1,
            "round {round}: a new edge for new data"
        );
        assert_eq!(drain(setup.reader, &mut received).unwrap(), Drained::Empty);
        assert_eq!(
            received.len(),
            expected.len(),
            "round {round}: bytes left behind"
        );
    }
    assert!(received == expected);
}
