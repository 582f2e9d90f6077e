//! Exercise 02 — partial writes (reference solution).

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
pub fn flush_pending(fd: RawFd, pending: &mut Vec<u8>) -> io::Result<Flushed> {
    let mut written = 0;
    let result = loop {
        if written == pending.len() {
            break Ok(Flushed::All);
        }
        match write_once(fd, &pending[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    // One move of the unsent tail, however many writes it took.
    pending.drain(..written);
    result
}

/// Echoes `data` to `fd`: write straight away if nothing is pending, queue
/// whatever the kernel does not take. Returns whether anything is pending.
pub fn echo(fd: RawFd, data: &[u8], pending: &mut Vec<u8>) -> io::Result<bool> {
    let mut written = 0;
    if pending.is_empty() {
        while written < data.len() {
            match write_once(fd, &data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    pending.extend_from_slice(&data[written..]);
    Ok(!pending.is_empty())
}
