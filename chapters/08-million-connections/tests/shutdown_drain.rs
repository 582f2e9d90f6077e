//! Shutdown owes clients their echo: on SIGINT a worker stops accepting and
//! reading, but sends what it owes (queued output, the result of a job in
//! flight) for a bounded grace, and counts in the summary what it dropped.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch08-million-connections");

fn summary_field(summary: &str, field: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {field}= in {summary}"))
        .parse()
        .unwrap()
}

#[test]
fn a_job_in_flight_at_shutdown_is_still_echoed() {
    // Half a second per line: the job is still running when SIGINT comes.
    let server = ServerProcess::builder(BIN)
        .args(["--procs", "1", "--work-us", "500000"])
        .spawn()
        .unwrap();
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"owed\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGINT).unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"owed\n", "the echo owed at shutdown was dropped");
    let shutdown = server.shutdown().unwrap();
    let summary = shutdown.summary_line().unwrap();
    assert_eq!(summary_field(summary, "shutdown_dropped"), 0, "{summary}");
}

#[test]
fn echo_a_client_will_not_read_is_dropped_after_the_grace_and_counted() {
    let server = ServerProcess::builder(BIN)
        .args(["--procs", "1"])
        .spawn()
        .unwrap();
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client.set_nonblocking(true).unwrap();
    // Send without reading until the server stops taking bytes: its echo
    // has filled both ends' socket buffers and its own queue.
    let block = vec![b'x'; 64 * 1024];
    let mut stalled_since: Option<Instant> = None;
    let mut sent = 0usize;
    while sent < 256 * 1024 * 1024 {
        match client.write(&block) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stalled_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_millis(500)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("sending: {e}"),
        }
    }
    let shutdown = server.shutdown().unwrap();
    assert!(!shutdown.killed, "{}", shutdown.stderr);
    let summary = shutdown.summary_line().unwrap();
    assert_eq!(summary_field(summary, "shutdown_dropped"), 1, "{summary}");
    assert!(
        summary_field(summary, "shutdown_dropped_bytes") > 0,
        "{summary}"
    );
    drop(client);
}
