//! `loadgen hold` spread over processes and source addresses: the children's
//! reports add up to one, every process holds at the same time, sources are
//! used evenly across processes, and a failing child fails the run with its
//! reason.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use loadgen::hold::HoldConfig;
use loadgen::report::HoldReport;
use loadgen::server::ServerProcess;
use loadgen::spread::{self, Procs, Sources, SpreadConfig};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const REFERENCE_ECHO: &str = env!("CARGO_BIN_EXE_reference-echo");

fn loadgen(args: &[&str]) -> Output {
    Command::new(LOADGEN).args(args).output().unwrap()
}

#[test]
fn three_processes_hold_3000_connections_together_and_every_one_answers() {
    let server = ServerProcess::spawn(REFERENCE_ECHO, [] as [&str; 0]).unwrap();
    let addr = server.addr().to_string();
    let out = loadgen(&[
        "hold",
        "--addr",
        &addr,
        "-n",
        "3000",
        "--procs",
        "3",
        "--hold",
        "1",
        "--ping-sample",
        "30",
        "--verify-all",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    assert!(
        stderr.contains("3000 connections over 3 processes"),
        "no plan line on stderr: {stderr}"
    );
    let report: HoldReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.processes, 3);
    assert_eq!(report.connect.requested, 3000);
    assert_eq!(report.connect.established, 3000);
    assert_eq!(report.connections_lost, 0);
    assert!(report.pings_sent >= 30, "{report:?}");
    assert_eq!(report.pings_ok, report.pings_sent);
    assert_eq!(report.ping_rtt_us.samples, report.pings_ok);
    assert!(report.verify_all);
    assert_eq!(report.connections_answered, 3000);
    assert!(report.ok);
    // The parent merges histograms; the children's raw ones stay inside.
    assert!(report.ping_rtt_histogram.is_none());
    server.shutdown().unwrap();
}

/// An echo server that remembers the source address of every connection.
fn recording_echo_server() -> (SocketAddr, Arc<Mutex<Vec<IpAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.lock().unwrap().push(stream.peer_addr().unwrap().ip());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, peers)
}

#[test]
fn sources_are_used_equally_across_all_processes() {
    let (addr, peers) = recording_echo_server();
    let mut hold = HoldConfig::new(addr);
    hold.connections = 300;
    hold.hold = Duration::from_millis(200);
    hold.ping_every = Duration::from_millis(100);
    // Every connection answered is one the server accepted, and so recorded,
    // before the run ends: without it the count raced the accept thread.
    hold.verify_all = true;
    let mut config = SpreadConfig::new(hold, PathBuf::from(LOADGEN));
    config.procs = Procs::Exactly(2);
    config.sources = Sources::List(loadgen::connect::parse_sources("127.0.0.1-127.0.0.3").unwrap());
    let report = spread::run_hold(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.connect.established, 300);
    assert_eq!(report.connections_answered, 300);
    assert_eq!(report.sources, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);

    let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
    for ip in peers.lock().unwrap().iter() {
        *per_source.entry(*ip).or_default() += 1;
    }
    // Two processes of 150 each, round-robin over one global index: each
    // address gets exactly a third, not 2 × (50, 50, 50) by luck.
    let expected: HashMap<IpAddr, usize> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|a| (a.parse().unwrap(), 100))
        .collect();
    assert_eq!(per_source, expected);
}

/// A connection's (source address, destination address).
type Pair = (IpAddr, IpAddr);

/// An echo server listening on 127.0.0.1, 127.0.0.2 and 127.0.0.3 on one
/// port (as a server on 0.0.0.0 would be reached), remembering each
/// connection's (source, destination) pair.
fn echo_server_on_three_addresses() -> (SocketAddr, Arc<Mutex<Vec<Pair>>>) {
    // The port is free on 127.0.0.1; another program may hold it on .2 or
    // .3, so try a few.
    let listeners = (0..20)
        .find_map(|_| {
            let first = TcpListener::bind("127.0.0.1:0").ok()?;
            let port = first.local_addr().ok()?.port();
            let mut all = vec![first];
            for ip in ["127.0.0.2", "127.0.0.3"] {
                all.push(TcpListener::bind((ip, port)).ok()?);
            }
            Some(all)
        })
        .unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let pairs = Arc::new(Mutex::new(Vec::new()));
    for listener in listeners {
        let seen = Arc::clone(&pairs);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let pair = (
                    stream.peer_addr().unwrap().ip(),
                    stream.local_addr().unwrap().ip(),
                );
                seen.lock().unwrap().push(pair);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    (addr, pairs)
}

#[test]
fn destinations_and_sources_pair_up_equally_across_all_processes() {
    let (addr, pairs) = echo_server_on_three_addresses();
    let mut hold = HoldConfig::new(addr);
    hold.dests = loadgen::connect::parse_dests("127.0.0.1-127.0.0.3").unwrap();
    hold.connections = 360;
    hold.hold = Duration::from_millis(200);
    hold.ping_every = Duration::from_millis(100);
    hold.verify_all = true;
    let mut config = SpreadConfig::new(hold, PathBuf::from(LOADGEN));
    config.procs = Procs::Exactly(2);
    config.sources = Sources::List(loadgen::connect::parse_sources("127.0.1.1-127.0.1.2").unwrap());
    let report = spread::run_hold(&config).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.connect.established, 360);
    assert_eq!(report.connections_answered, 360);
    assert_eq!(report.dests, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);

    let mut per_pair: HashMap<Pair, usize> = HashMap::new();
    for pair in pairs.lock().unwrap().iter() {
        *per_pair.entry(*pair).or_default() += 1;
    }
    // Two sources times three destinations, two processes of 180 each on
    // one global index: every pair gets exactly a sixth.
    assert_eq!(per_pair.len(), 6, "{per_pair:?}");
    assert!(per_pair.values().all(|&n| n == 60), "{per_pair:?}");
}

#[test]
fn a_failing_child_fails_the_run_with_its_reason() {
    // A port nobody listens on: every child's connects are refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = loadgen(&["hold", "--addr", &closed, "-n", "20", "--procs", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("connection refused"), "stderr: {stderr}");
    assert!(stderr.contains("of 2 failed"), "stderr: {stderr}");
}

#[test]
fn a_child_holds_only_after_the_start_signal_and_gives_up_without_a_parent() {
    let (addr, _) = recording_echo_server();
    let mut child = Command::new(LOADGEN)
        .args(["hold", "--child", "--addr", &addr.to_string(), "-n", "5"])
        .args(["--hold", "0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("@ramped") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "child exited early"
        );
    }
    assert_eq!(line.trim(), "@ramped 5");
    // Still waiting: it must not hold (and exit) on its own.
    thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "child did not wait");
    // The parent goes away: the child gives up instead of holding forever.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(rest.contains("parent process went away"), "stderr: {rest}");
}

#[test]
fn a_child_reports_one_json_line_with_its_histogram() {
    let (addr, _) = recording_echo_server();
    let mut child = Command::new(LOADGEN)
        .args(["hold", "--child", "--addr", &addr.to_string(), "-n", "5"])
        .args([
            "--hold",
            "0.2",
            "--ping-every",
            "0.05",
            "--ping-sample",
            "5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let report: HoldReport = serde_json::from_str(&text).unwrap();
    let histogram = spread::histogram_from_hex(report.ping_rtt_histogram.as_deref().unwrap());
    let histogram = histogram.unwrap();
    assert!(report.pings_ok > 0);
    assert_eq!(histogram.len(), report.pings_ok);
}
