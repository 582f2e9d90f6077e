//! The load engines against tiny in-test servers: counts add up, pipelining
//! works, and a server that gets a byte wrong makes the run fail.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use loadgen::echo::{self, EchoConfig, Engine, RunLength};
use loadgen::error::LoadError;
use loadgen::hold::{self, HoldConfig};

/// What the test server does to the bytes it echoes.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Flip the low bit of byte 100 of every connection.
    CorruptByte,
    /// Swallow byte `.0` of every connection.
    DropByte(usize),
}

/// A thread-per-connection echo server on 127.0.0.1:0 that lives until the
/// test process ends.
fn echo_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || serve(stream, fault));
        }
    });
    addr
}

fn serve(mut stream: TcpStream, fault: Fault) {
    let mut buf = [0u8; 16 * 1024];
    let mut seen = 0usize;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let target = match fault {
            Fault::DropByte(index) => index,
            _ => 100,
        };
        let hit = (seen..seen + n).contains(&target).then(|| target - seen);
        seen += n;
        let out: Vec<u8> = match (fault, hit) {
            (Fault::CorruptByte, Some(i)) => {
                chunk[i] ^= 1;
                chunk.to_vec()
            }
            (Fault::DropByte(_), Some(i)) => [&chunk[..i], &chunk[i + 1..]].concat(),
            _ => chunk.to_vec(),
        };
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn messages_run(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    pipeline: usize,
    total: u64,
) -> EchoConfig {
    let mut config = EchoConfig::new(addr);
    config.connections = conns;
    config.message_size = size;
    config.pipeline = pipeline;
    config.length = RunLength::Messages(total);
    config.timeout = Duration::from_secs(1);
    config
}

#[test]
fn pipelined_closed_loop_counts_every_message_and_byte() {
    let addr = echo_server(Fault::None);
    let config = messages_run(addr, 8, 64, 4, 2_000);
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.connect.established, 8);
    assert_eq!(report.messages, 2_000);
    assert_eq!(report.bytes, 2_000 * 64);
    assert_eq!(report.rtt_us.samples, 2_000);
    assert_eq!(report.errors.total(), 0);
}

#[test]
fn messages_larger_than_the_buffers_stream_through() {
    let addr = echo_server(Fault::None);
    // 300 KiB messages are bigger than the engine's 256 KiB buffers.
    let config = messages_run(addr, 2, 300 * 1024, 2, 6);
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.messages, 6);
    assert_eq!(report.bytes, 6 * 300 * 1024);
}

#[test]
fn one_byte_messages_are_bare_newlines() {
    let addr = echo_server(Fault::None);
    let config = messages_run(addr, 3, 1, 5, 300);
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.bytes, 300);
}

#[test]
fn fewer_messages_than_connections_still_finishes() {
    let addr = echo_server(Fault::None);
    let report = echo::run(&messages_run(addr, 5, 16, 1, 3)).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.connect.established, 5);
    assert_eq!(report.messages, 3);
}

#[test]
fn several_event_loops_share_the_connections() {
    let addr = echo_server(Fault::None);
    let mut config = messages_run(addr, 10, 32, 2, 1_000);
    config.threads = 3;
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.threads, 3);
    assert_eq!(report.connect.established, 10);
    assert_eq!(report.messages, 1_000);
}

#[test]
fn duration_run_measures_a_window_and_closes_cleanly() {
    let addr = echo_server(Fault::None);
    let mut config = EchoConfig::new(addr);
    config.connections = 4;
    config.length = RunLength::Duration {
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(300),
    };
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert!(report.messages > 0);
    assert_eq!(report.bytes, report.messages * 64);
    assert_eq!(report.rtt_us.samples, report.messages);
}

#[test]
fn corrupted_byte_is_reported_as_a_mismatch() {
    let addr = echo_server(Fault::CorruptByte);
    let config = messages_run(addr, 4, 64, 2, 400);
    let report = echo::run(&config).unwrap();
    assert!(!report.ok);
    assert_eq!(report.errors.mismatches, 4, "{report:?}");
}

#[test]
fn dropped_newline_stalls_into_a_timeout_or_shifts_into_a_mismatch() {
    // Byte 127 is the `\n` ending the second 64-byte message.
    let addr = echo_server(Fault::DropByte(127));
    // One message in flight: its echo never completes, the stall timeout fires.
    let config = messages_run(addr, 2, 64, 1, 100);
    let report = echo::run(&config).unwrap();
    assert!(!report.ok);
    assert_eq!(report.errors.timeouts, 2, "{report:?}");
    assert_eq!(report.messages, 2);
    // Three in flight: the next message's bytes arrive one early.
    let config = messages_run(addr, 2, 64, 3, 100);
    let report = echo::run(&config).unwrap();
    assert!(!report.ok);
    assert_eq!(report.errors.mismatches, 2, "{report:?}");
}

#[test]
fn thread_engine_verifies_like_the_event_engine() {
    let good = echo_server(Fault::None);
    let mut config = messages_run(good, 4, 48, 1, 400);
    config.engine = Engine::Threads;
    let report = echo::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.engine, "threads");
    assert_eq!(report.messages, 400);
    assert_eq!(report.bytes, 400 * 48);

    let bad = echo_server(Fault::CorruptByte);
    config.addr = bad;
    let report = echo::run(&config).unwrap();
    assert_eq!(report.errors.mismatches, 4, "{report:?}");
}

#[test]
fn nothing_listening_is_a_refused_error_with_exit_code_2() {
    // Bind and drop to get a port that (almost certainly) nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = messages_run(addr, 2, 64, 1, 10);
    let err = echo::run(&config).unwrap_err();
    assert!(matches!(err, LoadError::Refused { .. }), "{err}");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("nothing is listening on"));
}

#[test]
fn hold_ramps_connections_and_pings_a_sample() {
    let addr = echo_server(Fault::None);
    let mut config = HoldConfig::new(addr);
    config.connections = 200;
    config.rate = Some(20_000.0);
    config.max_connecting = 50;
    config.hold = Duration::from_millis(350);
    config.ping_every = Duration::from_millis(100);
    config.ping_sample = 20;
    config.timeout = Duration::from_secs(5);
    let report = hold::run(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.connect.established, 200);
    assert_eq!(report.connections_lost, 0);
    assert!(report.ping_rounds >= 1);
    assert!(report.pings_sent >= 20);
    assert_eq!(report.pings_ok, report.pings_sent);
    assert_eq!(report.ping_rtt_us.samples, report.pings_sent);
}

#[test]
fn hold_notices_corrupted_pings() {
    let addr = echo_server(Fault::CorruptByte);
    let mut config = HoldConfig::new(addr);
    config.connections = 20;
    config.hold = Duration::from_millis(50);
    config.ping_every = Duration::from_millis(10);
    config.ping_sample = 20;
    config.ping_size = 200; // the server corrupts byte 100
    let report = hold::run(&config).unwrap();
    assert!(!report.ok);
    assert_eq!(report.errors.mismatches, 20, "{report:?}");
}
