//! Checks of the echo itself: every byte back, in order, exactly once.

use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::client::{
    IO_TIMEOUT, Pattern, connect, echo_exactly, expect_eof, pattern, raise_own_nofile_limit,
    read_expected,
};
use super::{CheckResult, Context, Target, fail};

/// The sizes and patterns [`exact_echo`] sends: from one byte to more than
/// any socket buffer holds.
const EXACT_ECHO_CASES: &[(usize, Pattern)] = &[
    (1, Pattern::Text),
    (100, Pattern::Text),
    (64 * 1024, Pattern::Counter),
    (1024 * 1024, Pattern::Noise),
    (8 * 1024 * 1024, Pattern::Edges),
];

/// Payloads of 1 B, 100 B, 64 KiB, 1 MiB and 8 MiB, each on a fresh
/// connection, come back byte for byte.
pub fn exact_echo(target: &Target<'_>) -> CheckResult {
    for &(size, kind) in EXACT_ECHO_CASES {
        let stream = connect(target.addr)?;
        let data = pattern(kind, size);
        echo_exactly(&stream, &data, &format!("{size}-byte {kind:?} payload"))?;
    }
    target.still_running("during the exact-echo check")
}

/// Lines in [`pipelined_lines`].
const PIPELINED_LINES: usize = 5000;

/// Thousands of newline-terminated lines written in one burst come back in
/// order: the server must not treat a read as one message.
pub fn pipelined_lines(target: &Target<'_>) -> CheckResult {
    let mut burst = Vec::new();
    let mut line_ends = Vec::with_capacity(PIPELINED_LINES);
    for line in 0..PIPELINED_LINES {
        // Lengths vary so lines straddle the server's read boundaries.
        let padding = "x".repeat(line % 97);
        burst.extend_from_slice(format!("line {line} of {PIPELINED_LINES} {padding}\n").as_bytes());
        line_ends.push(burst.len());
    }
    let stream = connect(target.addr)?;
    if let Err(failure) = echo_exactly(&stream, &burst, "pipelined lines") {
        // Say which line went wrong, if the failure names an offset.
        let line = failure
            .message()
            .split("offset ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|offset| offset.parse::<usize>().ok())
            .map(|offset| line_ends.partition_point(|&end| end <= offset));
        match line {
            Some(line) => fail!("{failure} (in line {line} of {PIPELINED_LINES})"),
            None => return Err(failure),
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .context(|| "half-closing after the lines".to_owned())?;
    expect_eof(&stream, IO_TIMEOUT, "after all pipelined lines")
}

/// Clients in [`many_concurrent_clients`].
pub const CONCURRENT_CLIENTS: usize = 2000;

/// 2000 clients connected at once are all served.
pub fn many_concurrent_clients(target: &Target<'_>) -> CheckResult {
    concurrent_clients(target, CONCURRENT_CLIENTS)
}

/// `count` clients connect and stay connected; then each sends a message of
/// its own and gets exactly that message back.
pub fn concurrent_clients(target: &Target<'_>, count: usize) -> CheckResult {
    raise_own_nofile_limit();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut clients: Vec<TcpStream> = Vec::with_capacity(count);
    for client in 0..count {
        if Instant::now() >= deadline {
            fail!("connected only {client} of {count} clients within 90 s");
        }
        match connect(target.addr) {
            Ok(stream) => clients.push(stream),
            Err(failure) => {
                fail!("client {client} of {count} (the others still connected): {failure}")
            }
        }
    }
    let message = |client: usize| format!("client {client} of {count} says hello\n");
    for (client, mut stream) in clients.iter().enumerate() {
        std::io::Write::write_all(&mut stream, message(client).as_bytes())
            .context(|| format!("client {client} of {count}: sending its message"))?;
    }
    for (client, stream) in clients.iter().enumerate() {
        if Instant::now() >= deadline {
            fail!("only {client} of {count} clients got their echo within 90 s");
        }
        read_expected(
            stream,
            message(client).as_bytes(),
            &format!("client {client} of {count}"),
        )?;
    }
    drop(clients);
    target.still_running("while serving many concurrent clients")
}

/// A client that sends data and then shuts down its write side gets all the
/// data back and then EOF: the server echoes what is pending, then closes.
pub fn half_close(target: &Target<'_>) -> CheckResult {
    // Nothing sent at all: the server should close at once.
    let stream = connect(target.addr)?;
    stream
        .shutdown(Shutdown::Write)
        .context(|| "half-closing an empty connection".to_owned())?;
    expect_eof(&stream, IO_TIMEOUT, "half-close with nothing sent")?;

    for (size, kind) in [(6, Pattern::Text), (256 * 1024, Pattern::Noise)] {
        let what = format!("{size} bytes then half-close");
        let data = pattern(kind, size);
        let stream = connect(target.addr)?;
        echo_then_half_close(&stream, &data, &what)?;
    }
    target.still_running("during the half-close check")
}

/// Sends everything, half-closes immediately (before reading anything back),
/// then expects the whole echo followed by EOF.
fn echo_then_half_close(stream: &TcpStream, data: &[u8], what: &str) -> CheckResult {
    let mut writer = stream
        .try_clone()
        .context(|| "cloning the client socket".to_owned())?;
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || {
            std::io::Write::write_all(&mut writer, data)?;
            writer.shutdown(Shutdown::Write)
        });
        let received = read_expected(stream, data, what);
        if received.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
        received?;
        sent.context(|| format!("{what}: sending"))?;
        expect_eof(stream, IO_TIMEOUT, what)
    })
}
