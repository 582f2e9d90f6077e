//! A flood of connects is taken a budget at a time, like reads: the loop
//! goes back to `epoll_wait` (and to the connections it already has)
//! between batches instead of accepting until the queue is empty.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch07-core-pinning");
/// Connections queued while the server is stopped.
const CLIENTS: usize = 1000;
/// The server's `ACCEPTS_PER_TURN`.
const ACCEPTS_PER_TURN: usize = 64;

fn signal_all(pids: &[u32], signal: libc::c_int) {
    for &pid in pids {
        // SAFETY: kill only sends a signal; the pids are the server's own
        // processes, still alive (we hold it).
        unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), signal) };
    }
}

fn summary_field(summary: &str, field: &str) -> usize {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {field}= in {summary}"))
        .parse()
        .unwrap()
}

#[test]
fn a_flood_of_connects_is_accepted_a_budget_per_turn() {
    // One reactor: with several, the last client's echo would prove only
    // its own reactor's queue drained, not the others'.
    let server = ServerProcess::builder(BIN)
        .args(["--reactors", "1"])
        .spawn()
        .unwrap();
    let pids = server.process_tree();
    // While the server is stopped the kernel completes every handshake
    // into the listen queue: when it resumes, all of them are waiting.
    signal_all(&pids, libc::SIGSTOP);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    signal_all(&pids, libc::SIGCONT);
    // The last one queued is served only once every one was accepted.
    let last = clients.last_mut().unwrap();
    last.write_all(b"ping\n").unwrap();
    let mut back = [0; 5];
    last.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping\n");
    let shutdown = server.shutdown().unwrap();
    let summary = shutdown.summary_line().unwrap();
    let served = summary_field(summary, "connections_served");
    let waits = summary_field(summary, "epoll_wait");
    assert!(served >= CLIENTS, "{summary}");
    assert!(
        waits * ACCEPTS_PER_TURN >= CLIENTS,
        "{CLIENTS} queued connections accepted in {waits} turns: more than \
         {ACCEPTS_PER_TURN} per turn ({summary})"
    );
    drop(clients);
}
