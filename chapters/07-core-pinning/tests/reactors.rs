//! Chapter 07's own lessons, observed from outside: N reactors share the
//! connections, each with its own listener; `--pin` shows in `/proc` for the
//! reactors and their workers; SIGINT stops them all and the summary adds
//! them up.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch07-core-pinning");
/// Generous: only reached when something is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::spawn(BIN, args).unwrap()
}

fn echo_once(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FAILSAFE)).unwrap();
    stream.write_all(b"ping\n").unwrap();
    let mut echo = [0; 5];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping\n");
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

/// The first stdout line starting with `prefix`, waiting for it: the server
/// prints its start-up lines just after `listening on`, not with it.
fn line_starting_with(server: &ServerProcess, prefix: &str) -> String {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        if let Some(line) = server
            .stdout_lines()
            .into_iter()
            .find(|line| line.starts_with(prefix))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no line starting with {prefix:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// This thread's or another task's `Cpus_allowed_list` from `/proc`.
fn cpus_allowed(status_path: &str) -> String {
    let status = std::fs::read_to_string(status_path).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// Parses a kernel CPU list such as `0-3,8`.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// The server's threads: (name, allowed CPUs), from `/proc/<pid>/task/*`.
fn threads_of(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let status = task.join("status");
        threads.push((
            name.trim().to_string(),
            cpus_allowed(status.to_str().unwrap()),
        ));
    }
    threads.sort();
    threads
}

#[test]
fn reuseport_spreads_connections_over_every_reactor() {
    let server = start(&["--threads", "2"]);
    let addr = server.addr();
    // Concurrent clients, all open at once: 200 connections hashed over 2
    // listeners all landing on one has odds of 2^-199.
    let clients: Vec<TcpStream> = (0..200).map(|_| echo_once(addr)).collect();
    let counters = summary(server);
    drop(clients);
    let (first, second) = (counters["reactor0_accepted"], counters["reactor1_accepted"]);
    assert_eq!(counters["reactors"], 2);
    assert_eq!(first + second, 200, "{counters:?}");
    assert_eq!(counters["connections_served"], 200);
    assert!(
        first > 0 && second > 0,
        "one reactor got nothing: {counters:?}"
    );
}

#[test]
fn pinned_reactors_and_their_workers_show_in_proc() {
    let allowed = parse_cpu_list(&cpus_allowed("/proc/thread-self/status"));
    let server = start(&["--threads", "2", "--pin", "--workers", "1"]);
    for reactor in 0..2 {
        let expected_cpu = allowed[reactor % allowed.len()];
        // "reactor 0: thread 1234 pinned to CPU 0"
        let line = line_starting_with(&server, &format!("reactor {reactor}: thread "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let (tid, cpu): (u32, usize) = (words[3].parse().unwrap(), words[7].parse().unwrap());
        assert_eq!(cpu, expected_cpu, "{line}");
        let status = format!("/proc/{}/task/{tid}/status", server.pid());
        assert_eq!(cpus_allowed(&status), cpu.to_string(), "{line}");
    }
    // Workers are started on their reactor's thread after it is pinned, so
    // they inherit its CPU; main keeps the full mask.
    let threads = threads_of(server.pid());
    let pinned: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("reactor-") || name.starts_with("worker-"))
        .collect();
    assert_eq!(pinned.len(), 4, "{threads:?}");
    assert!(
        pinned
            .iter()
            .all(|(_, cpus)| parse_cpu_list(cpus).len() == 1),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .any(|(_, cpus)| parse_cpu_list(cpus) == allowed),
        "main is not pinned: {threads:?}"
    );
    summary(server);
}

#[test]
fn without_pin_every_thread_keeps_the_full_mask() {
    let allowed = cpus_allowed("/proc/thread-self/status");
    let server = start(&["--threads", "2"]);
    let threads = threads_of(server.pid());
    assert!(
        threads.iter().all(|(_, cpus)| *cpus == allowed),
        "{threads:?}"
    );
    let line = line_starting_with(&server, "reactor 1: thread ");
    assert!(line.ends_with("not pinned"), "{line}");
    summary(server);
}

#[test]
fn threads_sets_the_number_of_reactors_and_their_workers() {
    let server = start(&["--threads", "3", "--workers", "1"]);
    // main + 3 reactors + 3 workers.
    assert_eq!(server.threads().unwrap(), 7);
    let addr = server.addr();
    let clients: Vec<TcpStream> = (0..30).map(|_| echo_once(addr)).collect();
    let counters = summary(server);
    drop(clients);
    assert_eq!(counters["reactors"], 3);
    assert_eq!(counters["workers"], 3);
    let accepted: u64 = (0..3)
        .map(|i| counters[&format!("reactor{i}_accepted")])
        .sum();
    assert_eq!(accepted, 30);
}

#[test]
fn sigint_stops_every_reactor_even_with_clients_connected() {
    let server = start(&["--threads", "4", "--idle-timeout", "60"]);
    let addr = server.addr();
    // Open connections on (very likely) every reactor, and keep them open.
    let clients: Vec<TcpStream> = (0..100).map(|_| echo_once(addr)).collect();
    let started = Instant::now();
    let counters = summary(server);
    assert!(started.elapsed() < FAILSAFE);
    assert_eq!(counters["connections_served"], 100);
    assert_eq!(counters["reaped"], 0);
    // Every connection was closed by the server on the way out.
    for mut client in clients {
        let mut buf = [0; 8];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0);
    }
}

#[test]
fn idle_timeout_reaps_on_every_reactor() {
    let server = start(&["--threads", "2", "--idle-timeout", "0.2"]);
    let addr = server.addr();
    let mut clients: Vec<TcpStream> = (0..40).map(|_| echo_once(addr)).collect();
    for client in &mut clients {
        let mut buf = [0; 8];
        assert_eq!(
            client.read(&mut buf).unwrap_or(0),
            0,
            "closed by the reaper"
        );
    }
    // Give the last close a moment to be counted before SIGINT.
    thread::sleep(Duration::from_millis(50));
    let counters = summary(server);
    assert_eq!(counters["reaped"], 40, "{counters:?}");
}

#[test]
fn zero_threads_is_a_bad_flag_value() {
    let output = std::process::Command::new(BIN)
        .args(["--addr", "127.0.0.1:0", "--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
