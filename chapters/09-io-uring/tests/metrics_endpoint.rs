//! The `/metrics` endpoint under clients that misbehave: scrapers that
//! connect and say nothing, a request followed at once by the client's FIN,
//! a descriptor limit reached by scrapers alone. A monitoring endpoint that
//! one idle script can lock, or that makes the supervisor spin, is worse
//! than none.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch09-io-uring");
/// Generous: only reached when something is broken, never a measurement
/// (the tests run in parallel, on machines that may be busy).
const FAILSAFE: Duration = Duration::from_secs(30);
const REQUEST: &[u8] = b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n";

fn start(nofile: Option<u64>) -> ServerProcess {
    let mut builder =
        ServerProcess::builder(BIN).args(["--procs", "1", "--metrics", "127.0.0.1:0"]);
    if let Some(limit) = nofile {
        builder = builder.nofile_limit(limit);
    }
    builder.spawn().unwrap()
}

/// The metrics address the supervisor announced on stderr.
fn metrics_addr(server: &ServerProcess) -> SocketAddr {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        let stderr = server.stderr();
        // Only a whole line: stderr may be read while the line is half written.
        let announced = stderr.lines().find_map(|l| {
            l.strip_prefix("metrics on http://")?
                .strip_suffix("/metrics")
        });
        if let Some(addr) = announced {
            return addr.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no metrics line in: {stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One scrape: the whole response, or what came before the connection
/// closed (empty when the scraper was turned away).
fn scrape(addr: SocketAddr, half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(REQUEST).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut response = Vec::new();
    // A reset (the request was dropped unread) counts as no response.
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn idle_scrapers(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect()
}

#[test]
fn idle_scrapers_do_not_lock_out_a_real_one() {
    let server = start(None);
    let addr = metrics_addr(&server);
    let idle = idle_scrapers(addr, 70);
    // Give the supervisor time to accept them all, as in the report.
    std::thread::sleep(Duration::from_millis(300));
    let response = scrape(addr, false);
    assert!(
        response.starts_with("HTTP/1.0 200 OK\r\n"),
        "a scraper behind 70 idle ones got: {response:?}"
    );
    drop(idle);
    server.shutdown().unwrap();
}

#[test]
fn a_request_followed_at_once_by_fin_is_answered() {
    let server = start(None);
    let addr = metrics_addr(&server);
    for attempt in 0..60 {
        let response = scrape(addr, true);
        assert!(
            response.starts_with("HTTP/1.0 200 OK\r\n"),
            "attempt {attempt}: request + FIN got {response:?}"
        );
    }
    server.shutdown().unwrap();
}

#[test]
fn scrapers_past_the_descriptor_limit_neither_spin_the_supervisor_nor_lock_it() {
    // 64 descriptors: the supervisor runs out long before 80 scrapers.
    let server = start(Some(64));
    let addr = metrics_addr(&server);
    let idle = idle_scrapers(addr, 80);
    std::thread::sleep(Duration::from_millis(300));
    let before = server.cpu_time().unwrap();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let spent = server.cpu_time().unwrap() - before;
    // The whole tree (supervisor and its idle worker) should be asleep; a
    // level-triggered listener it cannot accept from keeps a core busy.
    assert!(
        spent < wall.elapsed() / 2,
        "server used {spent:?} of CPU in {:?} while holding idle scrapers",
        wall.elapsed()
    );
    let response = scrape(addr, false);
    assert!(
        response.starts_with("HTTP/1.0 200 OK\r\n"),
        "a scraper at the descriptor limit got: {response:?}"
    );
    drop(idle);
    server.shutdown().unwrap();
}

#[test]
fn a_1_mib_request_is_refused_and_the_endpoint_keeps_serving() {
    let server = start(None);
    let addr = metrics_addr(&server);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = b"GET /metrics HTTP/1.0\r\nX-Padding: ".to_vec();
    request.resize(1024 * 1024, b'a');
    // The server stops reading at its limit and answers (or closes); our
    // write may then fail with a reset, which is fine.
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.0 431 "),
        "a 1 MiB request got: {response:?}"
    );
    assert!(server.is_running(), "{}", server.stderr());
    assert!(scrape(addr, false).starts_with("HTTP/1.0 200 OK\r\n"));
    server.shutdown().unwrap();
}

#[test]
fn a_thousand_scrapes_in_a_row_are_all_answered_and_leak_nothing() {
    let server = start(None);
    let addr = metrics_addr(&server);
    assert!(scrape(addr, false).starts_with("HTTP/1.0 200 OK\r\n"));
    let supervisor = server.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{supervisor}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    for attempt in 0..1000 {
        let response = scrape(addr, attempt % 2 == 0);
        assert!(
            response.starts_with("HTTP/1.0 200 OK\r\n"),
            "scrape {attempt}: {response:?}"
        );
    }
    // Each scraper is closed once answered; give the last a moment.
    let deadline = Instant::now() + FAILSAFE;
    while fds() > before {
        assert!(
            Instant::now() < deadline,
            "{} descriptors before, {} after",
            before,
            fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown().unwrap();
}
