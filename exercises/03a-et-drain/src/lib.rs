//! Exercise 03 — fix the edge-triggered stall.
//!
//! With `EPOLLET`, epoll reports "readable" once per change, not once per
//! `epoll_wait` while data waits. A server that reads one chunk per report
//! leaves the rest in the socket, and no report will ever mention it again.
//! Write `drain`, which reads until the socket is empty.

use std::io;
use std::os::fd::RawFd;

/// How much one `read` asks for.
pub const READ_CHUNK: usize = 16 * 1024;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The socket has nothing more to read right now (`EAGAIN`).
    Empty,
    /// The peer closed its side: everything it sent has been read.
    Eof,
}

/// One `read(2)` on a non-blocking descriptor: `Ok(0)` is EOF,
/// `WouldBlock` means nothing is waiting, `Interrupted` means try again.
pub fn read_once(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buffer`, writable for the call.
    let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// Reads everything waiting on `fd`, `READ_CHUNK` bytes at a time, appending
/// it to `out`, until the socket is empty (`Drained::Empty`) or at EOF
/// (`Drained::Eof`). Retries after `EINTR`; returns other errors.
///
/// The buggy version this replaces read once and returned:
///
/// ```ignore
/// let mut chunk = [0; READ_CHUNK];
/// let n = read_once(fd, &mut chunk)?;   // one chunk per edge: the stall
/// out.extend_from_slice(&chunk[..n]);
/// ```
pub fn drain(fd: RawFd, out: &mut Vec<u8>) -> io::Result<Drained> {
    let _ = (fd, out);
    todo!("read until EAGAIN or EOF, not just once")
}
