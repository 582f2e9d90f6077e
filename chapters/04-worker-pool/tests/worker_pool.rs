//! Chapter 04's own lessons, observed from outside: the work runs on the
//! workers, each connection's echo stays in order however its reads are
//! spread over them, a full job queue stops reading instead of losing or
//! buffering bytes, and a result whose client is gone reaches nobody.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::procstat::Stat;
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
    // All ten connect, then all send at once: a client that happened to
    // arrive after the one before it had finished would never find the
    // queue full, however slowly this machine started the threads.
    let clients = 10;
    let all_connected = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let all_connected = Arc::clone(&all_connected);
            thread::spawn(move || {
                let sent = numbered_lines(client, 1000);
                let stream = connect(addr);
                all_connected.wait();
                let echoed = pipeline(stream, sent.clone());
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
    // `--offload always`: B's read must go to the pool too, and wait behind
    // A's result, which is the moment this test is about.
    let server = start(&[
        "--workers",
        "1",
        "--work-us",
        "1000000",
        "--offload",
        "always",
    ]);
    let addr = server.addr();
    // The worker going from waiting to running is the sign that A's line
    // was read and handed over. (Its state, not its CPU time: on a busy
    // machine a worker spinning for a second may get only a sliver of a
    // core, and the state says "running" however small the sliver.)
    wait_for_worker(&server, 'S', "the worker never waited for a job");
    let mut a = connect(addr);
    a.write_all(b"for A only\n").unwrap();
    wait_for_worker(&server, 'R', "the server never started A's job");
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

#[test]
fn work_us_0_never_touches_the_pool() {
    let server = start(&[]);
    let mut client = connect(server.addr());
    for n in 0..100 {
        let line = format!("ping {n:03}\n");
        client.write_all(line.as_bytes()).unwrap();
        let mut echoed = vec![0; line.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, line.as_bytes());
    }
    drop(client);
    let counts = summary(server);
    assert_eq!(counts["jobs"], 0, "{counts:?}");
    assert_eq!(
        counts["wakeups"], 0,
        "no worker ever woke the loop: {counts:?}"
    );
    assert!(counts["inline"] >= 100, "{counts:?}");
}

#[test]
fn offload_always_hands_even_free_work_to_the_pool() {
    let server = start(&["--offload", "always"]);
    let mut client = connect(server.addr());
    client.write_all(b"ping\n").unwrap();
    let mut echoed = [0; 5];
    client.read_exact(&mut echoed).unwrap();
    drop(client);
    let counts = summary(server);
    assert!(counts["jobs"] >= 1, "{counts:?}");
    assert_eq!(counts["inline"], 0, "{counts:?}");
}

/// Cheap reads (one line: 50 µs, under the 100 µs threshold) run on the
/// loop, dear ones (a pipelined block of lines) on the pool, mixed on one
/// connection: the echo must still come back exactly in order.
#[test]
fn order_is_kept_when_some_reads_run_inline_and_some_on_the_pool() {
    let server = start(&[
        "--workers",
        "2",
        "--work-us",
        "50",
        "--offload-above-us",
        "100",
    ]);
    let client = connect(server.addr());
    // First one line on its own, echoed before anything else is sent: that
    // read is certainly cheap, so it certainly runs on the loop.
    (&client).write_all(b"first\n").unwrap();
    let mut first = [0; 6];
    (&client).read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
    // Then single lines and blocks of 200 lines, with short pauses so they
    // tend to arrive as separate reads, some while a block's job is out.
    let mut writer = client.try_clone().unwrap();
    let rounds = 20;
    let mut sent = Vec::new();
    let mut plan = Vec::new();
    for round in 0..rounds {
        let single = format!("single {round:03}\n").into_bytes();
        let block = numbered_lines(round, 200);
        sent.extend_from_slice(&single);
        sent.extend_from_slice(&block);
        plan.push(single);
        plan.push(block);
    }
    let expected = sent.len();
    let sender = thread::spawn(move || {
        for piece in plan {
            writer.write_all(&piece).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
    });
    let mut echoed = vec![0; expected];
    (&client).read_exact(&mut echoed).unwrap();
    sender.join().unwrap();
    assert!(echoed == sent, "the echo is out of order or incomplete");
    drop(client);
    let counts = summary(server);
    assert!(counts["inline"] >= 1, "{counts:?}");
    assert!(counts["jobs"] >= 1, "{counts:?}");
}

/// Waits until the server's one worker thread (`worker-0`) is in `state`
/// as `/proc/PID/task/TID/stat` shows it: `S` while it waits for a job,
/// `R` (running or runnable) while it spins through `--work-us`.
fn wait_for_worker(server: &ServerProcess, state: char, failure: &str) {
    let deadline = Instant::now() + FAILSAFE;
    while worker_state(server) != Some(state) {
        assert!(Instant::now() < deadline, "{failure}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn worker_state(server: &ServerProcess) -> Option<char> {
    let tasks = fs::read_dir(format!("/proc/{}/task", server.pid())).ok()?;
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|line| Stat::parse(&line))
        .find(|stat| stat.comm == "worker-0")
        .map(|stat| stat.state)
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
