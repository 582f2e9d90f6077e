//! Chapter 04's own lessons, observed from outside: the work runs on the
//! workers, each connection's echo stays in order however its reads are
//! spread over them, a full job queue stops reading instead of losing or
//! buffering bytes, and a result whose client is gone reaches nobody.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch04-worker-pool");
/// Generous: only reached when something is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::spawn(BIN, args).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FAILSAFE)).unwrap();
    stream
}

/// SIGINT, then the counters from the `summary:` line.
fn summary(server: ServerProcess) -> HashMap<String, u64> {
    let shutdown = server.shutdown().unwrap();
    assert_eq!(shutdown.status.code(), Some(0), "{shutdown:?}");
    let line = shutdown.summary_line().unwrap();
    line["summary:".len()..]
        .split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// `lines` numbered lines, all different, so a reordered, lost or repeated
/// line shows up as a difference.
fn numbered_lines(client: usize, lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|line| format!("client {client} line {line:05}\n").into_bytes())
        .collect()
}

/// Writes `data` in one go from a second thread (pipelining every line)
/// while this thread reads the echo; returns what came back.
fn pipeline(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let expected = data.len();
    let sender = thread::spawn(move || writer.write_all(&data).unwrap());
    let mut echoed = vec![0; expected];
    (&stream).read_exact(&mut echoed).unwrap();
    sender.join().unwrap();
    echoed
}

/// Eight clients pipeline 5,000 lines each at once; with four workers their
/// reads are spread over every worker. Each must get exactly its own lines
/// back, in order.
fn order_is_kept_with(pool: &str) {
    let clients = 8;
    let server = start(&["--workers", "4", "--work-us", "10", "--pool", pool]);
    let addr = server.addr();
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            thread::spawn(move || {
                let sent = numbered_lines(client, 5000);
                let echoed = pipeline(connect(addr), sent.clone());
                assert!(
                    echoed == sent,
                    "client {client}: echo differs from what it sent"
                );
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let counts = summary(server);
    // 5,000 lines are ~120 KB: more than one 64 KiB read, so each client's
    // lines were at least two jobs, free to land on different workers.
    assert!(
        counts["jobs"] >= 2 * clients as u64,
        "expected several jobs per client: {counts:?}"
    );
}

#[test]
fn pipelined_lines_come_back_in_order_across_hand_rolled_workers() {
    order_is_kept_with("hand");
}

#[test]
fn pipelined_lines_come_back_in_order_across_rayon_workers() {
    order_is_kept_with("rayon");
}

#[test]
fn full_job_queue_stops_reading_without_losing_bytes() {
    // One worker and room for one job: every client but one must wait.
    let server = start(&["--workers", "1", "--queue-depth", "1", "--work-us", "20"]);
    let addr = server.addr();
    let handles: Vec<_> = (0..10)
        .map(|client| {
            thread::spawn(move || {
                let sent = numbered_lines(client, 1000);
                let echoed = pipeline(connect(addr), sent.clone());
                assert!(
                    echoed == sent,
                    "client {client}: echo differs from what it sent"
                );
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let counts = summary(server);
    assert_eq!(counts["queue_high_water"], 1, "{counts:?}");
    assert!(
        counts["queue_full"] > 0,
        "ten clients and room for one job: some had to wait: {counts:?}"
    );
}

#[test]
fn the_pool_has_exactly_the_workers_asked_for() {
    for pool in ["hand", "rayon"] {
        let server = start(&["--workers", "3", "--pool", pool]);
        // The event loop's thread, and three workers.
        assert_eq!(server.threads().unwrap(), 4, "--pool {pool}");
        let counts = summary(server);
        assert_eq!(counts["workers"], 3);
    }
}

#[test]
fn a_result_for_a_reset_client_never_reaches_the_next_one() {
    // One worker, and a line that keeps it busy for a second: A's job is
    // still running when A resets and B is accepted, most likely into A's
    // old descriptor number.
    let server = start(&["--workers", "1", "--work-us", "1000000"]);
    let addr = server.addr();
    let idle_cpu = server.cpu_time().unwrap();
    let mut a = connect(addr);
    a.write_all(b"for A only\n").unwrap();
    // The worker spinning is the sign that A's line was read and handed over.
    let deadline = Instant::now() + FAILSAFE;
    while server.cpu_time().unwrap() < idle_cpu + Duration::from_millis(50) {
        assert!(
            Instant::now() < deadline,
            "the server never started A's job"
        );
        thread::sleep(Duration::from_millis(5));
    }
    reset(a);
    // No newline: no work, so B's echo only waits for A's job to finish.
    let mut b = connect(addr);
    b.write_all(b"for B").unwrap();
    let mut echoed = [0; 5];
    b.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"for B", "B received bytes that were not its own");
    let counts = summary(server);
    assert_eq!(counts["results_dropped"], 1, "{counts:?}");
}

/// Closes with SO_LINGER 0, so the kernel sends RST instead of FIN: the
/// server sees an error on the socket and closes it at once, job or not.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct of the size we pass, and the
    // socket is open for the duration of the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).unwrap(),
        )
    };
    assert_eq!(result, 0);
    drop(stream);
}
