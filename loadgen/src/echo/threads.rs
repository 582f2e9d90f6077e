//! The baseline client: one blocking OS thread per connection, the way most
//! people would write an echo load generator. It verifies exactly like the
//! event engine, so the two differ only in how they wait for the network.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::config::{EchoConfig, quota};
use super::shared::{CountingWindow, Shared, WorkerResult};
use crate::error::LoadError;
use crate::payload::{Cursor, Payload};
use crate::report::{self, ConnectStats};

// ANCHOR: connection_thread
/// Connection `index`: connect, wait for all the others, then
/// `write_all` a message, `read_exact` its echo, check it, repeat.
pub(super) fn run_connection_thread(
    config: &EchoConfig,
    shared: &Shared,
    index: usize,
) -> Result<WorkerResult, LoadError> {
    let started = Instant::now();
    let mut stats = ConnectStats {
        requested: 1,
        ..ConnectStats::default()
    };
    let connected = TcpStream::connect_timeout(&config.addr, config.timeout).and_then(|stream| {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.timeout))?;
        Ok(stream)
    });
    let mut stream = match connected {
        Ok(stream) => {
            stats.established = 1;
            shared.established.fetch_add(1, Ordering::Relaxed);
            Some(stream)
        }
        Err(e) => {
            let at = shared.established.load(Ordering::Relaxed);
            if let Some(limit) = crate::connect::limit_error(&e, at, config.addr) {
                shared.arrive(false);
                shared.finished_workers.fetch_add(1, Ordering::SeqCst);
                return Err(limit);
            }
            stats.failed = 1;
            None
        }
    };
    stats.seconds = started.elapsed().as_secs_f64();
    let mut result = WorkerResult::new(stats);
    let t0 = shared.arrive(true);
    if let (Some(t0), Some(stream)) = (t0, stream.as_mut()) {
        exchange(
            config,
            stream,
            index,
            CountingWindow::new(config, t0),
            shared,
            &mut result,
        );
    }
    drop(stream);
    result.finished_at = Instant::now();
    shared.finished_workers.fetch_add(1, Ordering::SeqCst);
    Ok(result)
}

fn exchange(
    config: &EchoConfig,
    stream: &mut TcpStream,
    index: usize,
    window: CountingWindow,
    shared: &Shared,
    result: &mut WorkerResult,
) {
    let payload = Payload::new(config.message_size);
    let mut message = vec![0; config.message_size];
    let mut echo = vec![0; config.message_size];
    let quota = quota(config, index);
    let mut seq = 0u64;
    while quota.is_none_or(|q| seq < q) && !shared.abort.load(Ordering::Relaxed) {
        let at = Cursor { seq, offset: 0 };
        payload.fill(index, at, &mut message);
        let sent = Instant::now();
        if window.is_over(sent) {
            return;
        }
        if let Err(e) = stream
            .write_all(&message)
            .and_then(|()| stream.read_exact(&mut echo))
        {
            match e.kind() {
                io::ErrorKind::UnexpectedEof => result.errors.unexpected_eof += 1,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => result.errors.timeouts += 1,
                _ => result.errors.resets += 1,
            }
            return;
        }
        let now = Instant::now();
        if !payload.matches(index, at, &echo) {
            result.errors.mismatches += 1;
            return;
        }
        if window.contains(now) {
            report::record_rtt(&mut result.histogram, now - sent);
            result.messages += 1;
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
        seq += 1;
    }
}
// ANCHOR_END: connection_thread
