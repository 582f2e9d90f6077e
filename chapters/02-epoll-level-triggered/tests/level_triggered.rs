//! Chapter 02's own lessons, observed from outside through the summary line:
//! EPOLLOUT is switched on only for partial writes, back-pressure stops
//! reading a client that does not read, and one thread holds 19,000 clients.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ch02-epoll-level-triggered");

/// The server under test, started on a free port.
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Server {
    fn start(extra_args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        let addr = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            stdout,
            addr,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    /// SIGINT, then the counters from the `summary:` line.
    fn shutdown(mut self) -> HashMap<String, u64> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success());
        let line = rest
            .lines()
            .find(|line| line.starts_with("summary:"))
            .unwrap_or_else(|| panic!("no summary line in {rest:?}"));
        line["summary:".len()..]
            .split_whitespace()
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap();
                (key.to_string(), value.parse().unwrap())
            })
            .collect()
    }
}

/// A test that fails half-way must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn small_messages_never_switch_on_epollout() {
    let server = Server::start(&[]);
    let clients: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    let message = [b"x".repeat(63), b"\n".to_vec()].concat();
    let round_trips_per_client = 100;
    for _ in 0..round_trips_per_client {
        for mut client in &clients {
            client.write_all(&message).unwrap();
        }
        for mut client in &clients {
            let mut echo = vec![0; message.len()];
            client.read_exact(&mut echo).unwrap();
            assert_eq!(echo, message);
        }
    }
    drop(clients);
    let summary = server.shutdown();

    // One EPOLL_CTL_ADD for the listener, one for the signalfd, one per
    // client, and nothing else: every echo fit in the send buffer at once,
    // so EPOLLOUT was never needed.
    assert_eq!(summary["connections_served"], 10);
    assert_eq!(summary["epoll_ctl"], 2 + 10);
    // And every 64-byte message cost exactly one write.
    assert_eq!(summary["write"], 10 * round_trips_per_client);
}

#[test]
fn partial_writes_switch_epollout_on_and_off_again() {
    let server = Server::start(&[]);
    let mut client = server.connect();
    // Far more than the kernel buffers on both sides can hold while the
    // client is not reading, so the server's writes must come up short.
    let sent: Vec<u8> = (0..16 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let writer = {
        let mut client = client.try_clone().unwrap();
        let sent = sent.clone();
        thread::spawn(move || client.write_all(&sent).unwrap())
    };
    thread::sleep(Duration::from_millis(300));
    let mut echoed = vec![0; sent.len()];
    client.read_exact(&mut echoed).unwrap();
    writer.join().unwrap();
    assert!(echoed == sent, "the echo differs from what was sent");
    drop(client);
    let summary = server.shutdown();

    // Beyond the three EPOLL_CTL_ADDs, every call is a switch of interest:
    // EPOLLOUT on after a partial write, off again once the backlog is sent
    // (and EPOLLIN off/on for back-pressure).
    let switches = summary["epoll_ctl"] - 3;
    assert!(
        switches >= 2,
        "expected EPOLLOUT to be switched on and off, saw {switches} epoll_ctl MODs"
    );
}

#[test]
fn client_that_never_reads_is_stopped_by_back_pressure() {
    let server = Server::start(&["--max-pending", "65536"]);
    let mut client = server.connect();
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let limit = 512 * 1024 * 1024;
    let mut accepted = 0;
    while accepted < limit {
        match client.write(&chunk) {
            Ok(n) => accepted += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    // The server stopped reading, the kernel buffers filled, and TCP flow
    // control stopped us: the server did not swallow everything we offered.
    assert!(
        accepted < limit,
        "the server kept reading {accepted} bytes from a client that never reads"
    );
    drop(client);
    server.shutdown();
}

/// Run with `cargo test -p ch02-epoll-level-triggered --release -- --ignored`.
/// Needs RLIMIT_NOFILE above 19,000 for this test process and for the
/// server (two processes, 19,000 descriptors each).
#[test]
#[ignore = "opens 19,000 connections; run explicitly with --ignored"]
fn holds_19000_idle_connections_and_answers_every_one() {
    const CLIENTS: usize = 19_000;
    let server = Server::start(&[]);
    let started = Instant::now();
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| server.connect()).collect();
    let connected = started.elapsed();
    for (i, mut client) in clients.iter().enumerate() {
        client.write_all(format!("ping {i}\n").as_bytes()).unwrap();
    }
    for (i, mut client) in clients.iter().enumerate() {
        let expected = format!("ping {i}\n");
        let mut echo = vec![0; expected.len()];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(echo, expected.as_bytes());
    }
    eprintln!(
        "{CLIENTS} connections: connected in {connected:?}, all answered after {:?}",
        started.elapsed()
    );
    drop(clients);
    let summary = server.shutdown();
    assert_eq!(summary["connections_served"], CLIENTS as u64);
}
