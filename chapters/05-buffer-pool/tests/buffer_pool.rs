//! Chapter 05's own lessons, observed from outside: the pool's counters in
//! the summary, idle connections that hold no pooled buffer however busy
//! they were, echo still exact through pooled chunks, and a slab token that
//! goes stale when its connection closes.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::procstat::Stat;
use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch05-buffer-pool");
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

#[test]
fn pool_counters_are_in_the_summary_line() {
    // `--offload always`: every read travels to a worker in pooled chunks.
    // (With the default, free work is echoed from the read buffer, and the
    // pool is touched only by partial writes.)
    let server = start(&["--workers", "2", "--offload", "always"]);
    let addr = server.addr();
    for client in 0..20 {
        let sent = numbered_lines(client, 100);
        assert!(pipeline(connect(addr), sent.clone()) == sent);
    }
    let counts = summary(server);
    for key in [
        "pool_hits",
        "pool_misses",
        "pool_high_water",
        "pool_in_use",
        "pool_dropped",
    ] {
        assert!(counts.contains_key(key), "no {key}= in {counts:?}");
    }
    // Twenty clients one after the other: the chunks of the first are
    // reused by all the others.
    assert!(counts["pool_misses"] > 0, "{counts:?}");
    assert!(counts["pool_hits"] > counts["pool_misses"], "{counts:?}");
    assert!(counts["pool_high_water"] >= 1, "{counts:?}");
}

/// The size of the server's pooled chunks (`BUFFER_SIZE` in
/// `src/buffer_pool.rs`): one lent chunk carries at most this many bytes.
const CHUNK: u64 = 16 * 1024;

/// Fifty clients each push ~1 MiB through, then stay connected and say
/// nothing. When the server stops, all fifty are still open, and not one
/// chunk is lent out: an idle connection holds no pooled buffer.
///
/// That the burst went through the pool at all is checked with a count the
/// traffic guarantees, not with how many chunks happened to be out at once
/// (`pool_high_water` depends on scheduling). With `--offload always`
/// every byte read is copied into pooled chunks, travels to a worker and
/// is sent from those chunks; a chunk is filled once per loan and never
/// refilled, so echoing B bytes takes at least B / 16 KiB loans
/// (`pool_hits + pool_misses`), however the reads fell.
#[test]
fn idle_connections_hold_no_pool_buffer_after_a_burst() {
    let server = start(&["--workers", "2", "--offload", "always"]);
    let addr = server.addr();
    let handles: Vec<_> = (0..50)
        .map(|client| {
            thread::spawn(move || {
                let stream = connect(addr);
                let sent = numbered_lines(client, 40_000); // ~1 MiB
                let echoed = pipeline(stream.try_clone().unwrap(), sent.clone());
                assert!(echoed == sent, "client {client}: echo differs");
                (stream, sent.len() as u64) // the stream stays open, idle
            })
        })
        .collect();
    let (idle, echoed): (Vec<TcpStream>, Vec<u64>) =
        handles.into_iter().map(|h| h.join().unwrap()).unzip();
    let counts = summary(server);
    drop(idle);
    assert_eq!(counts["pool_in_use"], 0, "{counts:?}");
    let loans = counts["pool_hits"] + counts["pool_misses"];
    let least = echoed.iter().sum::<u64>().div_ceil(CHUNK);
    assert!(
        loans >= least,
        "{least} chunks' worth echoed, only {loans} lent: the pool was bypassed? {counts:?}"
    );
}

/// Pipelined lines still come back exactly, in order, now that they travel
/// to the workers and back in pooled 16 KiB chunks rather than one `Vec`.
#[test]
fn pipelined_lines_come_back_in_order_through_pooled_chunks() {
    let server = start(&["--workers", "4", "--work-us", "10"]);
    let addr = server.addr();
    let handles: Vec<_> = (0..8)
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
    assert_eq!(summary(server)["pool_in_use"], 0);
}

#[test]
fn a_result_for_a_reset_client_never_reaches_the_next_one() {
    // One worker, and a line that keeps it busy for a second: A's job is
    // still running when A resets and B is accepted into A's slab slot (the
    // slot freed last is reused first), with the next generation.
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
    assert_eq!(counts["pool_in_use"], 0, "A's chunks went back: {counts:?}");
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
