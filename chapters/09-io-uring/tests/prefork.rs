//! The prefork machinery, for real: several worker processes on one port,
//! a worker killed and restarted, metrics that add up, a graceful shutdown
//! that closes everything, and the scaled version of the million (50,000
//! connections over several server and several loadgen processes).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use loadgen::hold::HoldConfig;
use loadgen::server::ServerProcess;
use loadgen::spread::{self, SpreadConfig};

const BIN: &str = env!("CARGO_BIN_EXE_ch09-io-uring");
/// Generous: only reached when something is broken, never a measurement
/// (the tests run in parallel, on machines that may be busy).
const FAILSAFE: Duration = Duration::from_secs(30);

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::builder(BIN)
        .args(["--metrics", "127.0.0.1:0", "--status-every", "1"])
        .args(args)
        .spawn()
        .unwrap()
}

/// The metrics address the supervisor announced on stderr.
fn metrics_addr(server: &ServerProcess) -> SocketAddr {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        let stderr = server.stderr();
        if let Some(line) = stderr.lines().find(|l| l.starts_with("metrics on http://")) {
            let addr = line["metrics on http://".len()..].trim_end_matches("/metrics");
            return addr.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no metrics line in: {stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics`, as the body text.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    body.to_string()
}

/// The value of the sample line `name` (with its labels, if any).
fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .parse::<f64>()
        .unwrap() as u64
}

/// Scrapes until `done` holds (or fails after a few seconds).
fn wait_for_metrics(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        let metrics = scrape(addr);
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The supervisor's children: its worker processes.
fn workers(server: &ServerProcess) -> Vec<u32> {
    let pid = server.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// User + system CPU time of one process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: utime and stime are the 12th and 13th.
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|t| t.parse::<u64>().unwrap())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message);
}

fn connect_many(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        })
        .collect()
}

fn summary_field(summary: &str, field: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {field}= in {summary}"))
        .parse()
        .unwrap()
}

#[test]
fn every_worker_takes_connections_on_the_shared_port() {
    let server = start(&["--procs", "3"]);
    assert_eq!(workers(&server).len(), 3);
    let metrics = metrics_addr(&server);
    let mut clients = connect_many(server.addr(), 600);
    for (i, client) in clients.iter_mut().enumerate() {
        echo(client, format!("client {i}\n").as_bytes());
    }
    let text = wait_for_metrics(metrics, "600 open connections", |m| {
        value(m, "c1m_connections_open") == 600
    });
    let per_worker: Vec<u64> = (0..3)
        .map(|w| {
            value(
                &text,
                &format!("c1m_worker_connections_open{{worker=\"{w}\"}}"),
            )
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 600);
    // SO_REUSEPORT hashes the 4-tuple: each of 3 workers gets ~200 of 600.
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
    assert!(value(&text, "c1m_bytes_received_total") > 0);
    assert_eq!(
        value(&text, "c1m_bytes_received_total"),
        value(&text, "c1m_bytes_sent_total")
    );
    assert!(value(&text, "c1m_resident_memory_bytes") > 0);
    drop(clients);
    let done = server.shutdown().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn a_killed_worker_is_restarted_and_totals_keep_counting() {
    let server = start(&["--procs", "3"]);
    let metrics = metrics_addr(&server);
    let mut clients = connect_many(server.addr(), 300);
    for client in &mut clients {
        echo(client, b"before\n");
    }
    let before = wait_for_metrics(metrics, "300 accepted", |m| {
        value(m, "c1m_connections_accepted_total") == 300
    });
    let victim = workers(&server)[0];
    // SAFETY: plain syscall; the pid is our server's child, alive (we just
    // read it from /proc) and not reaped by anyone but its supervisor.
    let killed = unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);

    let after = wait_for_metrics(metrics, "the worker restarted", |m| {
        value(m, "c1m_worker_restarts_total") == 1 && value(m, "c1m_workers") == 3
    });
    let now = workers(&server);
    assert_eq!(now.len(), 3);
    assert!(!now.contains(&victim));
    // Its connections died with it: closed, not forgotten; accepted stays.
    assert_eq!(value(&after, "c1m_connections_accepted_total"), 300);
    assert!(value(&after, "c1m_connections_open") < value(&before, "c1m_connections_open"));
    assert_eq!(
        value(&after, "c1m_connections_open") + value(&after, "c1m_connections_closed_total"),
        300
    );
    // New connections reach every worker again, the new one included. The
    // restarted worker counts as running (`c1m_workers`) from its fork, a
    // moment before its listener joins the port's group, so connect in
    // rounds until each worker has some (a broken restart never gets any).
    let mut fresh = Vec::new();
    let mut rounds = 0;
    let text = loop {
        let mut round = connect_many(server.addr(), 100);
        for client in &mut round {
            echo(client, b"after\n");
        }
        fresh.extend(round);
        rounds += 1;
        let expected = 300 + 100 * rounds;
        let text = wait_for_metrics(metrics, "every new connection accepted", |m| {
            value(m, "c1m_connections_accepted_total") == expected
        });
        let every_worker_has_some = (0..3).all(|w| {
            value(
                &text,
                &format!("c1m_worker_connections_open{{worker=\"{w}\"}}"),
            ) > 0
        });
        if every_worker_has_some || rounds == 20 {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for w in 0..3 {
        assert!(
            value(
                &text,
                &format!("c1m_worker_connections_open{{worker=\"{w}\"}}")
            ) > 0,
            "worker {w} got none of {rounds} rounds of 100 new connections"
        );
    }
    let done = server.shutdown().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("died (signal 9); restarting it in"));
    let summary = done
        .stdout
        .iter()
        .find(|l| l.starts_with("summary:"))
        .unwrap();
    assert_eq!(summary_field(summary, "restarts"), 1);
    assert_eq!(
        summary_field(summary, "connections_served"),
        300 + 100 * rounds
    );
}

#[test]
fn shutdown_closes_every_connection_and_sums_all_workers() {
    let server = start(&["--procs", "3"]);
    let mut clients = connect_many(server.addr(), 400);
    for client in &mut clients {
        echo(client, b"hello\n");
    }
    let pids = workers(&server);
    let done = server.shutdown().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(!done.killed);
    let summary = done
        .stdout
        .iter()
        .find(|l| l.starts_with("summary:"))
        .unwrap();
    assert_eq!(summary_field(summary, "workers"), 3);
    assert_eq!(summary_field(summary, "connections_served"), 400);
    let per_worker: u64 = (0..3)
        .map(|w| summary_field(summary, &format!("worker{w}_accepted")))
        .sum();
    assert_eq!(per_worker, 400);
    assert_eq!(summary_field(summary, "bytes_received"), 400 * 6);
    assert_eq!(summary_field(summary, "bytes_sent"), 400 * 6);
    // Every client sees its connection closed, and no worker outlives the
    // supervisor.
    for client in &mut clients {
        let mut byte = [0u8; 1];
        assert!(matches!(client.read(&mut byte), Ok(0) | Err(_)));
    }
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

#[test]
fn work_us_is_spent_in_the_workers() {
    const LINES: usize = 2000;
    const WORK_US: u64 = 100;
    let server = start(&["--procs", "2", "--work-us", &WORK_US.to_string()]);
    let cpu = |pids: &[u32]| -> Duration { pids.iter().map(|&p| cpu_time(p)).sum() };
    let pids = workers(&server);
    let before = cpu(&pids);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    let lines: String = (0..LINES).map(|i| format!("request {i}\n")).collect();
    stream.write_all(lines.as_bytes()).unwrap();
    let mut back = vec![0; lines.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, lines.as_bytes());
    let spent = cpu(&pids) - before;
    let owed = Duration::from_micros(WORK_US) * LINES as u32;
    assert!(spent >= owed / 4, "workers spent {spent:?}, owed {owed:?}");
    drop(stream);
    assert!(server.shutdown().unwrap().status.success());
}

#[test]
fn idle_connections_are_reaped_in_every_worker_and_counted() {
    let server = start(&["--procs", "2", "--idle-timeout", "0.3"]);
    let metrics = metrics_addr(&server);
    let mut clients = connect_many(server.addr(), 40);
    for client in &mut clients {
        echo(client, b"then silence\n");
    }
    let text = wait_for_metrics(metrics, "40 reaped", |m| {
        value(m, "c1m_connections_reaped_total") == 40
    });
    assert_eq!(value(&text, "c1m_connections_open"), 0);
    for client in &mut clients {
        let mut byte = [0u8; 1];
        assert!(matches!(client.read(&mut byte), Ok(0) | Err(_)));
    }
    let done = server.shutdown().unwrap();
    let summary = done
        .stdout
        .iter()
        .find(|l| l.starts_with("summary:"))
        .unwrap();
    assert_eq!(summary_field(summary, "reaped"), 40);
}

#[test]
fn procs_auto_says_what_it_chose_and_why() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    let per_worker = (limit.rlim_max - 64) * 95 / 100;
    let expected = 50_000_u64.div_ceil(per_worker);
    let server = start(&["--conns", "50000"]);
    assert_eq!(workers(&server).len() as u64, expected);
    let done = server.shutdown().unwrap();
    assert!(
        done.stderr
            .contains(&format!("prefork: {expected} worker process(es)")),
        "{}",
        done.stderr
    );
}

#[test]
fn bad_procs_value_exits_2() {
    for bad in ["0", "many", "-1"] {
        let out = std::process::Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--procs", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--procs {bad}");
    }
}

/// The loadgen binary, whose processes open the 50,000 connections (its
/// `hold` spreads over processes by re-running itself): `LOADGEN_BIN`, or
/// the workspace's `target/{release,debug}/loadgen`, built here (release)
/// if neither exists. A dev-dependency's binary is not built by `cargo
/// test`, hence this.
fn loadgen_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LOADGEN_BIN") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    for profile in ["release", "debug"] {
        let path = target.join(profile).join("loadgen");
        if path.exists() {
            return path;
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "loadgen"])
        .current_dir(&workspace)
        .status()
        .unwrap();
    assert!(built.success(), "cargo build --release -p loadgen failed");
    target.join("release").join("loadgen")
}

// ANCHOR: scaled_million
/// The million, scaled to run on every change: 50,000 connections, more
/// than one process can hold here, over several server and several loadgen
/// processes; every connection must answer, and everything must go back to
/// baseline afterwards.
#[test]
fn holds_50000_connections_over_several_processes() {
    const CONNS: usize = 50_000;
    let server = start(&["--procs", "3", "--conns", &CONNS.to_string()]);
    let metrics = metrics_addr(&server);
    let pids = workers(&server);
    let fds_before: usize = pids.iter().map(|&p| open_fds(p)).sum();

    let mut hold = HoldConfig::new(server.addr());
    hold.connections = CONNS;
    hold.hold = Duration::from_secs(3);
    hold.ping_sample = 100;
    hold.verify_all = true;
    let load = std::thread::spawn(move || {
        spread::run_hold(&SpreadConfig::new(hold, loadgen_binary())).unwrap()
    });
    // While loadgen holds them, the server's own metrics must count them.
    let held = wait_for_metrics(metrics, "every connection open", |m| {
        value(m, "c1m_connections_open") == CONNS as u64
    });
    let report = load.join().unwrap();
    assert!(report.processes > 1);
    assert_eq!(report.connect.established as usize, CONNS);
    assert_eq!(report.connections_answered, CONNS as u64);
    assert!(report.ok, "{report:?}");
    for w in 0..3 {
        let open = value(
            &held,
            &format!("c1m_worker_connections_open{{worker=\"{w}\"}}"),
        );
        assert!(open > 0 && open < 19_000, "worker {w} holds {open}");
    }

    // Tear-down: the workers close their side; descriptors return.
    wait_for_metrics(metrics, "every connection closed", |m| {
        value(m, "c1m_connections_open") == 0
    });
    let fds_after: usize = pids.iter().map(|&p| open_fds(p)).sum();
    assert_eq!(fds_after, fds_before);

    let done = server.shutdown().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let summary = done
        .stdout
        .iter()
        .find(|l| l.starts_with("summary:"))
        .unwrap();
    assert_eq!(summary_field(summary, "connections_served"), CONNS as u64);
    assert_eq!(summary_field(summary, "shed"), 0);
}
// ANCHOR_END: scaled_million
