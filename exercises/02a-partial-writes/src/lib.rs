//! Exercise 02 — partial writes.
//!
//! A non-blocking `write` takes only what fits in the socket's send buffer.
//! An event-loop server keeps the rest (its *pending output*) and sends it
//! when epoll says there is room. Write the two functions marked `todo!()`.

use std::io;
use std::os::fd::RawFd;

/// What `flush_pending` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written; `pending` is empty.
    All,
    /// The send buffer is full; what is left stays in `pending`, to be sent
    /// after the next `EPOLLOUT`.
    Blocked,
}

/// One `write(2)` on a non-blocking descriptor. `WouldBlock` means the send
/// buffer is full; `Interrupted` means a signal arrived first (try again).
pub fn write_once(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `bytes`, readable for the call.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// Writes as much of `pending` to `fd` as the kernel will take, removing
/// what was written from the front of `pending`.
///
/// - Returns `Flushed::All` once `pending` is empty (also when it started
///   empty).
/// - Returns `Flushed::Blocked` when the send buffer is full (`EAGAIN`),
///   keeping every unsent byte in `pending`, in order.
/// - Retries after `EINTR`.
/// - Returns any other error (for example `EPIPE` when the peer is gone).
pub fn flush_pending(fd: RawFd, pending: &mut Vec<u8>) -> io::Result<Flushed> {
    let _ = (fd, pending);
    todo!("write pending bytes until empty or EAGAIN; keep the unsent rest")
}

/// Echoes `data` to `fd`: if nothing is pending, write it straight away;
/// whatever the kernel does not take (and all of `data` if something was
/// already pending, so that bytes stay in order) is appended to `pending`.
/// Returns whether anything is now pending (i.e. whether the caller must
/// ask epoll for `EPOLLOUT`).
pub fn echo(fd: RawFd, data: &[u8], pending: &mut Vec<u8>) -> io::Result<bool> {
    let _ = (fd, data, pending);
    todo!("write directly when nothing is pending, queue the rest")
}
