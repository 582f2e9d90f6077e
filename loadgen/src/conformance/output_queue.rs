//! Checks of how a server queues echo it cannot send yet: a client that
//! reads nothing for a while and meanwhile sends many tiny segments. Each
//! tiny read the server queues separately is a separate piece of output to
//! track; these checks catch a queue that stalls when it is long (one
//! `writev` covers at most so many pieces) and one whose memory grows with
//! the number of reads rather than with the bytes owed.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::client::{IO_TIMEOUT, Pattern, expect_eof, pattern, read_expected, set_timeouts};
use super::hostile::rss;
use super::{CheckFailure, CheckResult, Context, Target, fail};

/// The client's receive buffer: small, so the server's echo backs up soon.
const CLIENT_RECEIVE_BUFFER: usize = 4096;
/// The client alternates a block of this size with single-byte segments.
/// Where the server's echo starts to back up depends on its kernel send
/// buffer (MiBs on loopback, autotuned), which a client cannot see; stepping
/// through in blocks puts some of the single bytes exactly where the server
/// still reads but can no longer send, the case these checks are about.
const BLOCK_BYTES: usize = 32 * 1024;
/// At most this much in all; a server applying back-pressure stops us first.
const MAX_SENT: usize = 16 * 1024 * 1024;
/// The client stops sending once the kernel has refused more for this long:
/// the server stopped reading it (back-pressure, which is allowed).
const STALL: Duration = Duration::from_secs(1);
/// Single-byte segments after each block in [`small_writes_then_half_close`].
const SMALL_WRITES_PER_BLOCK: usize = 50;
/// Single-byte segments after each block in
/// [`single_byte_segments_memory_bounded`].
const SEGMENTS_PER_BLOCK: usize = 100;
/// How much the server's memory may grow meanwhile: a correct server owes
/// the client at most its back-pressure limit (256 KiB by default) plus a
/// read, and holds it in about that much memory.
const SEGMENT_RSS_GROWTH_LIMIT: u64 = 4 * 1024 * 1024;
/// A pause between single-byte writes, so that many of them reach the server
/// as separate reads (the point of the checks), not coalesced into one.
const BETWEEN_SEGMENTS: Duration = Duration::from_micros(20);

/// A client with a small receive buffer and Nagle off: every write is a
/// segment of its own, and the server's echo backs up after a few KiB.
fn connect_small_receiver(addr: SocketAddr) -> Result<TcpStream, CheckFailure> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .context(|| "creating a client socket".to_owned())?;
    socket
        .set_recv_buffer_size(CLIENT_RECEIVE_BUFFER)
        .context(|| "setting SO_RCVBUF".to_owned())?;
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .context(|| format!("connecting to {addr}"))?;
    let stream = TcpStream::from(socket);
    stream
        .set_nodelay(true)
        .context(|| "setting TCP_NODELAY".to_owned())?;
    set_timeouts(&stream).context(|| "setting socket timeouts".to_owned())?;
    Ok(stream)
}

/// Writes `bytes` without blocking, appending what the kernel accepts to
/// `sent`. `Ok(false)` if the kernel refused more for [`STALL`].
fn write_or_stall(
    mut stream: &TcpStream,
    mut bytes: &[u8],
    sent: &mut Vec<u8>,
) -> Result<bool, CheckFailure> {
    let mut blocked_since: Option<Instant> = None;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(n) => {
                sent.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                blocked_since = None;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if blocked_since.get_or_insert_with(Instant::now).elapsed() >= STALL {
                    return Ok(false);
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => fail!("writing after {} bytes: {err}", sent.len()),
        }
    }
    Ok(true)
}

/// Never reading, sends 32 KiB blocks, each followed by `singles`
/// single-byte segments with a short pause between them, until the server
/// stops taking bytes (or 16 MiB). Returns every byte the kernel accepted,
/// in order.
fn blocks_and_single_bytes(stream: &TcpStream, singles: usize) -> Result<Vec<u8>, CheckFailure> {
    let block = pattern(Pattern::Noise, BLOCK_BYTES);
    let bytes = pattern(Pattern::Counter, singles);
    stream
        .set_nonblocking(true)
        .context(|| "setting O_NONBLOCK".to_owned())?;
    let mut sent = Vec::new();
    'sending: while sent.len() < MAX_SENT {
        if !write_or_stall(stream, &block, &mut sent)? {
            break;
        }
        for byte in bytes.chunks(1) {
            if !write_or_stall(stream, byte, &mut sent)? {
                break 'sending;
            }
            thread::sleep(BETWEEN_SEGMENTS);
        }
    }
    stream
        .set_nonblocking(false)
        .context(|| "clearing O_NONBLOCK".to_owned())?;
    Ok(sent)
}

/// A client with a small receive buffer sends, without reading, 32 KiB
/// blocks each followed by 50 single-byte segments, until the server stops
/// taking bytes (the echo has filled both ends' buffers); then it
/// half-closes and reads. Every byte must come back, in order, then EOF.
/// Protects against an output queue that is written one batch at a time
/// and waits for an EPOLLOUT edge between batches: after a batch the kernel
/// took whole, no edge ever comes, and the rest of the echo waits for ever.
pub fn small_writes_then_half_close(target: &Target<'_>) -> CheckResult {
    let stream = connect_small_receiver(target.addr)?;
    let sent = blocks_and_single_bytes(&stream, SMALL_WRITES_PER_BLOCK)?;
    stream
        .shutdown(Shutdown::Write)
        .context(|| "half-closing (shutdown SHUT_WR)".to_owned())?;
    read_expected(
        &stream,
        &sent,
        &format!(
            "{} bytes sent as 32 KiB blocks and single-byte segments, then half-close",
            sent.len()
        ),
    )?;
    expect_eof(
        &stream,
        IO_TIMEOUT,
        "after echoing everything to a half-closed client",
    )?;
    target.still_running("after small writes and a half-close")
}

/// A client that never reads sends 32 KiB blocks each followed by 100
/// single-byte segments, until the server stops taking bytes. The server
/// owes it no more than its back-pressure limit, so its memory must not
/// grow by more than 4 MiB. Protects against output kept in one pooled
/// chunk (or one allocation) per read: a byte limit on pending output then
/// lets a client pin thousands of chunks with a few KiB. Without the server
/// process (only an address) there is nothing to measure, and the check
/// only requires the server to keep running.
pub fn single_byte_segments_memory_bounded(target: &Target<'_>) -> CheckResult {
    let rss_before = rss(target)?;
    let stream = connect_small_receiver(target.addr)?;
    let sent = blocks_and_single_bytes(&stream, SEGMENTS_PER_BLOCK)?;
    // Let the server read and queue what is still in flight.
    thread::sleep(Duration::from_millis(200));
    if let (Some(before), Some(after)) = (rss_before, rss(target)?) {
        let growth = after.saturating_sub(before);
        if growth > SEGMENT_RSS_GROWTH_LIMIT {
            fail!(
                "server RSS grew by {} KiB while a client that never reads sent {} bytes \
                 (32 KiB blocks and single-byte segments); expected under {} KiB: output is kept \
                 per read instead of per byte owed",
                growth >> 10,
                sent.len(),
                SEGMENT_RSS_GROWTH_LIMIT >> 10
            );
        }
    }
    drop(stream);
    target.still_running("after a never-reading client sent single-byte segments")
}
