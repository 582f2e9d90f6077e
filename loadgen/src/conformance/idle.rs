//! The idle-timeout check, for servers started with an idle timeout
//! (chapter 06 on). Not part of `conformance_tests!`: the caller starts the
//! server with its own flag and passes the timeout it configured.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use super::client::{connect, echo_exactly, is_timeout};
use super::{CheckFailure, CheckResult, Context, Target, fail};

/// A server configured to close connections idle for `timeout` must close
/// an idle client (within twice the timeout plus 10 s: a bound only a server
/// that never reaps should reach, even on a loaded machine with a coarse
/// timer wheel), while a client that sends a line every eighth of the
/// timeout stays open and fully served for twice as long (so it stays
/// active even if this process is not scheduled for most of a timeout).
pub fn idle_timeout(target: &Target<'_>, timeout: Duration) -> CheckResult {
    let reap_deadline = timeout * 2 + Duration::from_secs(10);
    let idle = connect(target.addr)?;
    echo_exactly(&idle, b"hello, then silence\n", "the idle client")?;
    let idle_since = Instant::now();

    thread::scope(|scope| {
        let active = scope.spawn(|| stay_active(target, timeout));
        let reaped = wait_for_close(&idle, idle_since, reap_deadline);
        let active = active
            .join()
            .unwrap_or_else(|_| Err(CheckFailure::new("the active client panicked")));
        reaped?;
        active
    })?;
    target.still_running("during the idle-timeout check")
}

/// Sends a line every `timeout / 8` for `2 * timeout`; each must be echoed.
fn stay_active(target: &Target<'_>, timeout: Duration) -> CheckResult {
    let mut stream = connect(target.addr)?;
    let until = Instant::now() + timeout * 2;
    let mut line = 0;
    while Instant::now() < until {
        let message = format!("still here {line}\n");
        stream
            .write_all(message.as_bytes())
            .context(|| format!("active client, line {line}"))?;
        super::client::read_expected(&stream, message.as_bytes(), "active client").map_err(
            |failure| {
                CheckFailure::new(format!(
                    "a client sending a line every {:?} was not served (idle timeout {timeout:?}): {failure}",
                    timeout / 8
                ))
            },
        )?;
        line += 1;
        thread::sleep(timeout / 8);
    }
    Ok(())
}

/// Waits for the server to close `stream` (EOF or reset) by `deadline`.
fn wait_for_close(stream: &TcpStream, idle_since: Instant, deadline: Duration) -> CheckResult {
    let mut reader = stream;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_sub(idle_since.elapsed());
        if left.is_zero() {
            fail!(
                "an idle client was still connected {deadline:?} after its last byte: \
                 the server does not reap idle connections"
            );
        }
        stream
            .set_read_timeout(Some(left))
            .context(|| "setting the read timeout".to_owned())?;
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => fail!("the server sent {n} unexpected bytes to an idle client"),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted || is_timeout(&err) => {}
            Err(err) => fail!("waiting for the server to close an idle client: {err}"),
        }
    }
}
