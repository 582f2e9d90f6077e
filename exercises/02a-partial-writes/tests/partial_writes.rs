//! Tested against a Unix socket pair whose send buffer is tiny, so that
//! partial writes happen on every call, not only under load.
#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::RawFd;

use ex02_partial_writes::{Flushed, echo, flush_pending};

/// A non-blocking stream socket pair: `(writer, reader)`, with the writer's
/// send buffer as small as the kernel allows.
struct Pair {
    writer: RawFd,
    reader: RawFd,
}

impl Pair {
    fn new() -> Pair {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair returns.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
        let small: libc::c_int = 4096;
        // SAFETY: valid descriptor, pointer to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                fds[0],
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw const small).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Pair {
            writer: fds[0],
            reader: fds[1],
        }
    }

    /// Reads whatever is waiting on the reader side (non-blocking).
    fn read_available(&self, into: &mut Vec<u8>) {
        let mut buffer = [0u8; 65536];
        loop {
            // SAFETY: the pointer and length describe `buffer`.
            let n = unsafe { libc::read(self.reader, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n <= 0 {
                return;
            }
            into.extend_from_slice(&buffer[..n as usize]);
        }
    }

    fn close_reader(&mut self) {
        // SAFETY: we own the descriptor and do not use it afterwards.
        unsafe { libc::close(self.reader) };
        self.reader = -1;
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: we own both descriptors.
        unsafe {
            libc::close(self.writer);
            if self.reader >= 0 {
                libc::close(self.reader);
            }
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn flushing_nothing_is_all_done() {
    let pair = Pair::new();
    let mut pending = Vec::new();
    assert_eq!(
        flush_pending(pair.writer, &mut pending).unwrap(),
        Flushed::All
    );
}

#[test]
fn a_full_send_buffer_keeps_the_rest_pending() {
    let pair = Pair::new();
    let sent = pattern(1024 * 1024);
    let mut pending = sent.clone();
    assert_eq!(
        flush_pending(pair.writer, &mut pending).unwrap(),
        Flushed::Blocked
    );
    assert!(
        !pending.is_empty(),
        "1 MiB cannot fit in a 4 KiB send buffer"
    );
    assert!(
        pending.len() < sent.len(),
        "something should have been written"
    );
    // What is left is exactly the unsent tail.
    assert_eq!(pending[..], sent[sent.len() - pending.len()..]);
}

#[test]
fn every_byte_arrives_once_and_in_order_across_many_partial_writes() {
    let pair = Pair::new();
    let sent = pattern(3 * 1024 * 1024 + 17);
    let mut pending = Vec::new();
    let mut received = Vec::new();
    // Echo in odd-sized pieces, as reads would hand them to us.
    for piece in sent.chunks(100_003) {
        echo(pair.writer, piece, &mut pending).unwrap();
        pair.read_available(&mut received);
        flush_pending(pair.writer, &mut pending).unwrap();
    }
    let mut rounds = 0;
    while flush_pending(pair.writer, &mut pending).unwrap() == Flushed::Blocked {
        pair.read_available(&mut received);
        rounds += 1;
        assert!(rounds < 1_000_000, "flush never finished");
    }
    pair.read_available(&mut received);
    assert!(pending.is_empty());
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "bytes were lost, repeated or reordered");
}

#[test]
fn echo_says_whether_output_is_pending() {
    let pair = Pair::new();
    let mut pending = Vec::new();
    assert!(
        !echo(pair.writer, b"small\n", &mut pending).unwrap(),
        "6 bytes fit at once"
    );
    assert!(pending.is_empty());
    assert!(echo(pair.writer, &pattern(1024 * 1024), &mut pending).unwrap());
    assert!(!pending.is_empty());
    // Once something is pending, new data queues behind it, never ahead.
    let before = pending.len();
    assert!(echo(pair.writer, b"tail", &mut pending).unwrap());
    assert_eq!(pending.len(), before + 4);
    assert_eq!(&pending[pending.len() - 4..], b"tail");
}

#[test]
fn a_vanished_peer_is_an_error_not_a_loop() {
    let mut pair = Pair::new();
    pair.close_reader();
    let mut pending = b"anyone there?\n".to_vec();
    let error = flush_pending(pair.writer, &mut pending).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
}
