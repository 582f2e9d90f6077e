//! A supervisor killed with SIGKILL gets no chance to stop its workers: the
//! kernel must do it (`PR_SET_PDEATHSIG`), or orphaned workers keep the port
//! and every connection, and the next start fails with EADDRINUSE.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch09-io-uring");
/// Generous: only reached when something is broken, never a measurement
/// (the tests run in parallel, on machines that may be busy).
const FAILSAFE: Duration = Duration::from_secs(30);

/// Alive and not a zombie (an exited orphan may wait a moment for a reaper).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after_name = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        !matches!(after_name.split_whitespace().next(), Some("Z" | "X"))
    })
}

#[test]
fn workers_die_with_a_killed_supervisor_and_free_the_port() {
    let server = ServerProcess::builder(BIN)
        .args(["--procs", "2"])
        .spawn()
        .unwrap();
    let addr = server.addr();
    let workers: Vec<u32> = server
        .process_tree()
        .into_iter()
        .filter(|&pid| pid != server.pid())
        .collect();
    assert_eq!(workers.len(), 2, "expected two workers: {workers:?}");
    server.signal(libc::SIGKILL).unwrap();

    let deadline = Instant::now() + FAILSAFE;
    while workers.iter().any(|&pid| is_running(pid)) {
        assert!(
            Instant::now() < deadline,
            "workers {:?} still running {FAILSAFE:?} after their supervisor was killed",
            workers
                .iter()
                .filter(|&&pid| is_running(pid))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nobody holds the port any more: it can be bound again.
    let deadline = Instant::now() + FAILSAFE;
    loop {
        match TcpListener::bind(addr) {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "port {addr} still taken after the workers exited: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
}
