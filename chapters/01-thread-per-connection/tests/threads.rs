//! What chapter 01 is about: one OS thread per client, counted by the kernel.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch01-thread-per-connection");

/// Generous: only reached when something is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

/// Connect and complete one echo, so the client's thread surely exists.
fn connect_and_echo(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FAILSAFE)).unwrap();
    stream.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping\n");
    stream
}

/// Polls `condition` until it holds; panics with `what` after [`FAILSAFE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + FAILSAFE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn threads_grow_with_connections_and_shrink_when_they_close() {
    const CLIENTS: usize = 50;
    let server = ServerProcess::spawn(BIN, ["--stats-interval", "0"]).unwrap();
    let before = server.threads().unwrap();

    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| connect_and_echo(server.addr()))
        .collect();
    let with_clients = server.threads().unwrap();
    assert!(
        with_clients >= before + CLIENTS,
        "{CLIENTS} clients, but threads went only from {before} to {with_clients}"
    );

    drop(clients);
    eventually("the client threads have exited", || {
        server.threads().unwrap() <= before
    });

    let shutdown = server.shutdown().unwrap();
    assert!(shutdown.status.success(), "{shutdown:?}");
    let summary = shutdown.summary_line().unwrap();
    assert!(
        summary.contains(&format!("connections_served={CLIENTS} "))
            && summary.contains(&format!("threads_peak={CLIENTS} ")),
        "{summary}"
    );
}

#[test]
fn max_threads_refuses_clients_beyond_the_guard_and_recovers() {
    let server = ServerProcess::spawn(BIN, ["--max-threads", "2"]).unwrap();
    let first = connect_and_echo(server.addr());
    let _second = connect_and_echo(server.addr());

    // The third is accepted and closed at once: it reads EOF (or a reset).
    let mut third = TcpStream::connect(server.addr()).unwrap();
    third.set_read_timeout(Some(FAILSAFE)).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(third.read(&mut byte), Ok(0) | Err(_)));

    // Once a client leaves, its thread ends and a new client is served.
    drop(first);
    eventually("a new client is served again", || {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_read_timeout(Some(FAILSAFE)).unwrap();
        stream.write_all(b"x").unwrap();
        matches!(stream.read(&mut byte), Ok(1))
    });

    let shutdown = server.shutdown().unwrap();
    assert!(shutdown.status.success(), "{shutdown:?}");
    let summary = shutdown.summary_line().unwrap();
    assert!(!summary.contains("refused_over_max=0"), "{summary}");
    assert!(
        shutdown.stderr.contains("--max-threads"),
        "{}",
        shutdown.stderr
    );
}
