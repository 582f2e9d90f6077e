//! The interest rules, first as a table, then against a real
//! level-triggered epoll instance: what the rules prevent (a busy loop) and
//! what they allow (waking when a full send buffer drains).
#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::RawFd;

use ex02_epollout_toggle::{ConnectionState, READABLE, WRITABLE, change_needed, wanted_interest};

const MAX: usize = 256 * 1024;

fn state(pending_output: usize, peer_closed: bool) -> ConnectionState {
    ConnectionState {
        pending_output,
        peer_closed,
    }
}

#[test]
fn idle_connection_waits_only_for_input() {
    assert_eq!(wanted_interest(state(0, false), MAX), Some(READABLE));
}

#[test]
fn pending_output_switches_epollout_on() {
    assert_eq!(
        wanted_interest(state(1, false), MAX),
        Some(READABLE | WRITABLE)
    );
}

#[test]
fn over_the_limit_stops_reading_but_keeps_writing() {
    assert_eq!(wanted_interest(state(MAX, false), MAX), Some(WRITABLE));
    assert_eq!(wanted_interest(state(MAX + 1, false), MAX), Some(WRITABLE));
    assert_eq!(
        wanted_interest(state(MAX - 1, false), MAX),
        Some(READABLE | WRITABLE)
    );
}

#[test]
fn after_eof_only_pending_output_matters() {
    assert_eq!(wanted_interest(state(10, true), MAX), Some(WRITABLE));
    assert_eq!(
        wanted_interest(state(0, true), MAX),
        None,
        "finished: close it"
    );
}

#[test]
fn epoll_ctl_only_when_the_interest_changes() {
    let before = wanted_interest(state(0, false), MAX).unwrap();
    let during = wanted_interest(state(5000, false), MAX).unwrap();
    let after = wanted_interest(state(0, false), MAX).unwrap();
    assert_eq!(change_needed(before, during), Some(READABLE | WRITABLE));
    assert_eq!(change_needed(during, after), Some(READABLE));
    assert_eq!(
        change_needed(after, wanted_interest(state(0, false), MAX).unwrap()),
        None
    );
}

// ---- against a real epoll instance ----

struct Fds(Vec<RawFd>);

impl Drop for Fds {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: the test owns these descriptors.
            unsafe { libc::close(fd) };
        }
    }
}

fn socket_pair() -> (RawFd, RawFd) {
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
    (fds[0], fds[1])
}

fn epoll_with(fd: RawFd, interest: u32) -> RawFd {
    // SAFETY: plain syscall.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0);
    let mut event = libc::epoll_event {
        events: interest,
        u64: 1,
    };
    // SAFETY: valid descriptors and a valid event.
    assert_eq!(
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) },
        0
    );
    epoll
}

/// How many of `rounds` waits of 20 ms returned an event.
fn wakeups(epoll: RawFd, rounds: usize) -> usize {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    (0..rounds)
        .filter(|_| {
            // SAFETY: the buffer holds 4 events.
            let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 4, 20) };
            ready > 0
        })
        .count()
}

#[test]
fn an_idle_connection_does_not_wake_the_loop() {
    let (server_end, client_end) = socket_pair();
    let interest = wanted_interest(state(0, false), MAX).unwrap();
    let epoll = epoll_with(server_end, interest);
    let _fds = Fds(vec![server_end, client_end, epoll]);
    // With EPOLLOUT left on, all 10 waits would return at once: a busy loop.
    assert_eq!(wakeups(epoll, 10), 0);
}

#[test]
fn pending_output_wakes_the_loop_when_the_buffer_drains() {
    let (server_end, client_end) = socket_pair();
    // Fill the server end's send buffer: a partial write is now pending.
    let chunk = [0u8; 65536];
    // SAFETY: valid descriptor and buffer.
    while (unsafe { libc::write(server_end, chunk.as_ptr().cast(), chunk.len()) }) > 0 {}
    let interest = wanted_interest(state(1000, false), MAX).unwrap();
    let epoll = epoll_with(server_end, interest);
    let _fds = Fds(vec![server_end, client_end, epoll]);
    let mut sink = [0u8; 65536];
    // The client reads; the send buffer drains; epoll must report it.
    // SAFETY: valid descriptor and buffer.
    while (unsafe { libc::read(client_end, sink.as_mut_ptr().cast(), sink.len()) }) > 0 {}
    assert!(
        wakeups(epoll, 1) == 1,
        "EPOLLOUT must be on while output is pending"
    );
}
