//! Signals at awkward moments: while the workers are still starting, and a
//! second Ctrl-C while a worker is slow to stop. Either way the supervisor
//! ends with its summary and exit 0.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch08-million-connections");
/// Generous: only reached when something is broken, never a measurement
/// (the tests run in parallel, on machines that may be busy).
const FAILSAFE: Duration = Duration::from_secs(30);

/// Whether `pid` blocks SIGINT (the supervisor does so first thing in
/// `main`, before it starts any worker).
fn blocks_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

fn sigint(pid: u32) {
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGINT) };
}

#[test]
fn sigint_while_workers_start_still_ends_with_a_summary() {
    let mut child = Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--procs", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + FAILSAFE;
    while !blocks_sigint(pid) {
        assert!(
            Instant::now() < deadline,
            "the supervisor never blocked SIGINT"
        );
        std::thread::yield_now();
    }
    // Now, within start-up: four workers take far longer to exec and bind.
    sigint(pid);
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("summary:")),
        "no summary after SIGINT during start-up; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn a_second_sigint_stops_a_slow_worker_at_once() {
    // A 60 s job: the worker finishes it before exiting, far past the
    // supervisor's grace period. The second Ctrl-C must not wait for it.
    let server = ServerProcess::builder(BIN)
        .args(["--procs", "1", "--work-us", "60000000"])
        .spawn()
        .unwrap();
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client.write_all(b"slow\n").unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the job is running
    let pid = server.pid();
    sigint(pid);
    let deadline = Instant::now() + FAILSAFE;
    while !server.stderr().contains("second signal") {
        std::thread::sleep(Duration::from_millis(100));
        sigint(pid);
        assert!(Instant::now() < deadline, "{}", server.stderr());
    }
    let started = Instant::now();
    let shutdown = server.shutdown().unwrap();
    assert!(!shutdown.killed, "the supervisor itself had to be killed");
    assert!(shutdown.status.success(), "{}", shutdown.stderr);
    assert!(shutdown.summary_line().is_some(), "{:?}", shutdown.stdout);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a 60 s job held the shutdown after a second Ctrl-C"
    );
    drop(client);
}
