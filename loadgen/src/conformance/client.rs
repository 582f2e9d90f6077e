//! The small blocking clients the checks are built from.
//!
//! Every socket gets read and write timeouts, and every loop a deadline: a
//! check against a broken server must fail, never hang.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use super::{CheckFailure, CheckResult, Context, fail};

/// Longest wait for any single socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a single echo exchange (of up to several MiB) may take.
pub const ECHO_DEADLINE: Duration = Duration::from_secs(60);

/// Connects with a timeout and sets read/write timeouts on the stream.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, CheckFailure> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .context(|| format!("connecting to {addr}"))?;
    set_timeouts(&stream).context(|| "setting socket timeouts".to_owned())?;
    Ok(stream)
}

pub fn set_timeouts(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))
}

/// Closes with SO_LINGER 0, so the kernel sends RST instead of FIN.
pub fn close_with_reset(stream: TcpStream) -> CheckResult {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .context(|| "setting SO_LINGER 0".to_owned())?;
    drop(stream);
    Ok(())
}

/// Byte patterns for echo payloads. Each differs from offset to offset, so a
/// dropped, duplicated or reordered byte shows up as a difference.
#[derive(Debug, Clone, Copy)]
pub enum Pattern {
    /// Printable text with a newline every so often.
    Text,
    /// `offset % 251`: a prime period, so it never lines up with buffer sizes.
    Counter,
    /// xorshift noise: every byte value, no structure.
    Noise,
    /// Runs of 0x00 and 0xFF broken by newlines and noise: edge values.
    Edges,
}

pub fn pattern(kind: Pattern, len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    (0..len)
        .map(|offset| match kind {
            Pattern::Text => {
                const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789";
                if offset % 61 == 60 {
                    b'\n'
                } else {
                    TEXT[offset % TEXT.len()]
                }
            }
            Pattern::Counter => (offset % 251) as u8,
            Pattern::Noise => noise(),
            Pattern::Edges => match offset % 4099 {
                0..1000 => 0x00,
                1000..2000 => 0xFF,
                2000 => b'\n',
                _ => noise(),
            },
        })
        .collect()
}

/// Sends `data` on one thread while reading it back on this one, and compares
/// every byte. Writing and reading at once matters: a server that stops
/// reading while its output is unread (as it should) would deadlock a client
/// that writes everything before reading.
pub fn echo_exactly(stream: &TcpStream, data: &[u8], what: &str) -> CheckResult {
    let mut writer = stream
        .try_clone()
        .context(|| "cloning the client socket".to_owned())?;
    thread::scope(|scope| {
        let sender = scope.spawn(move || writer.write_all(data));
        let received = read_expected(stream, data, what);
        if received.is_err() {
            // Unblock the writer at once rather than after its timeout.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
        received?;
        sent.context(|| format!("{what}: sending {} bytes", data.len()))
    })
}

/// Reads exactly `expected.len()` bytes and fails at the first one that differs.
pub fn read_expected(mut stream: &TcpStream, expected: &[u8], what: &str) -> CheckResult {
    let deadline = Instant::now() + ECHO_DEADLINE;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < expected.len() {
        if Instant::now() >= deadline {
            fail!(
                "{what}: only {received} of {} bytes came back within {ECHO_DEADLINE:?}",
                expected.len()
            );
        }
        let want = buf.len().min(expected.len() - received);
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => fail!(
                "{what}: the server closed the connection after echoing {received} of {} bytes",
                expected.len()
            ),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if is_timeout(&err) => fail!(
                "{what}: echoed {received} of {} bytes, then nothing for {IO_TIMEOUT:?}",
                expected.len()
            ),
            Err(err) => fail!(
                "{what}: reading after {received} of {} bytes: {err}",
                expected.len()
            ),
        };
        if let Some(i) = (0..n).find(|&i| buf[i] != expected[received + i]) {
            let offset = received + i;
            fail!(
                "{what}: echo of {} bytes differed at offset {offset}: sent {:#04x}, got {:#04x}",
                expected.len(),
                expected[offset],
                buf[i]
            );
        }
        received += n;
    }
    Ok(())
}

/// Expects the server to close its side (EOF) within `within`, writing nothing more.
pub fn expect_eof(mut stream: &TcpStream, within: Duration, what: &str) -> CheckResult {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    let mut extra = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            fail!("{what}: the server did not close the connection within {within:?}");
        }
        stream
            .set_read_timeout(Some(left))
            .context(|| "setting the read timeout".to_owned())?;
        match stream.read(&mut buf) {
            Ok(0) if extra == 0 => return Ok(()),
            Ok(0) => fail!("{what}: the server wrote {extra} bytes more than it was sent"),
            Ok(n) => extra += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) && extra > 0 => {
                fail!("{what}: the server wrote {extra} bytes more than it was sent")
            }
            Err(err) if is_timeout(&err) => {
                fail!("{what}: the server did not close the connection within {within:?}")
            }
            Err(err) => fail!("{what}: expected EOF, got an error: {err}"),
        }
    }
}

/// A read or write timeout shows up as `WouldBlock` on Unix, `TimedOut` elsewhere.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Writes up to `limit` bytes of `chunk` repeated, never reading, until the
/// kernel has refused more for `stall` in a row. Returns the bytes accepted.
/// This is how a client that never reads looks to the server.
pub fn write_without_reading(
    stream: &TcpStream,
    chunk: &[u8],
    limit: usize,
    stall: Duration,
) -> io::Result<usize> {
    stream.set_nonblocking(true)?;
    let mut writer = stream;
    let mut sent = 0;
    let mut blocked_since: Option<Instant> = None;
    let hard_deadline = Instant::now() + ECHO_DEADLINE;
    while sent < limit && Instant::now() < hard_deadline {
        let len = chunk.len().min(limit - sent);
        match writer.write(&chunk[..len]) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= stall {
                    break;
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                stream.set_nonblocking(false)?;
                return Err(err);
            }
        }
    }
    stream.set_nonblocking(false)?;
    Ok(sent)
}

/// Raises this process's soft descriptor limit to its hard limit (once), so
/// that thousands of test clients fit.
pub fn raise_own_nofile_limit() {
    static RAISE: Once = Once::new();
    RAISE.call_once(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the valid rlimit we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: setrlimit reads the valid rlimit we pass. Failure only
            // means we keep the lower limit, which the checks report if hit.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_have_the_requested_length_and_vary() {
        for kind in [
            Pattern::Text,
            Pattern::Counter,
            Pattern::Noise,
            Pattern::Edges,
        ] {
            let bytes = pattern(kind, 10_000);
            assert_eq!(bytes.len(), 10_000);
            // A shifted copy must differ, or a dropped byte could go unseen.
            assert_ne!(&bytes[..5000], &bytes[1..5001], "{kind:?}");
        }
    }
}
