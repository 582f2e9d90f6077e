//! Chapter 06's own lessons, observed from outside: idle clients are closed
//! never before the timeout, a client that moves data is never closed, a
//! client the server is busy for is not idle, the summary counts reaped
//! connections and timer operations, and without the flag nothing is reaped.
//! (How *late* a close may be is measured, not asserted: see
//! `measure_reap_lateness` and the book.)
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

const BIN: &str = env!("CARGO_BIN_EXE_ch06-idle-timeouts");
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

/// Sends one line and reads its echo; returns when the line was sent (the
/// server cannot have seen activity before this) and when its echo arrived
/// (just after the server's last activity on the connection: its write).
fn talk_once(stream: &mut TcpStream, line: &[u8]) -> (Instant, Instant) {
    let sent_at = Instant::now();
    stream.write_all(line).unwrap();
    let mut echo = vec![0; line.len()];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(echo, line);
    (sent_at, Instant::now())
}

/// Blocks until the server closes `stream` (EOF or reset); returns when.
fn wait_for_close(stream: &mut TcpStream) -> Instant {
    let mut buf = [0; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(n) => panic!("the server sent {n} unexpected bytes to an idle client"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for the server to close an idle client: {e}"),
        }
    }
}

/// How long a silent client was left open: measured from the moment it
/// sent its last line, and from the moment it received that line's echo.
#[derive(Clone, Copy, Debug)]
struct IdleFor {
    since_sent: Duration,
    since_echoed: Duration,
}

/// `clients` connections each talk once, at moments spread over a tick or
/// so, then fall silent; each is closed by the server. Returns how long
/// each one was left open, and the summary.
fn idle_for_until_closed(clients: usize, timeout: &str) -> (Vec<IdleFor>, HashMap<String, u64>) {
    let server = start(&["--idle-timeout", timeout]);
    let addr = server.addr();
    let idle_for: Vec<IdleFor> = thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                scope.spawn(move || {
                    let mut stream = connect(addr);
                    // Stagger the last activity over ~10 ms, so deadlines
                    // fall at every point inside the wheel's ticks.
                    thread::sleep(Duration::from_micros(97 * i as u64 % 10_000));
                    let (sent, echoed) = talk_once(&mut stream, b"last words\n");
                    let closed = wait_for_close(&mut stream);
                    IdleFor {
                        since_sent: closed - sent,
                        since_echoed: closed - echoed,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (idle_for, summary(server))
}

/// Prints how long after the timeout the clients were closed, counted from
/// the last line sent and from its echo received.
fn report(label: &str, timeout: Duration, idle_for: &[IdleFor]) {
    let line = |what: &str, pick: fn(&IdleFor) -> Duration| {
        let mut late: Vec<f64> = idle_for
            .iter()
            .map(|idle| (pick(idle).as_secs_f64() - timeout.as_secs_f64()) * 1e3)
            .collect();
        late.sort_by(f64::total_cmp);
        let pct = |p: f64| late[((late.len() - 1) as f64 * p) as usize];
        eprintln!(
            "{label}: clients={} timeout={timeout:?} closed_after_timeout_ms({what}) min={:.2} p50={:.2} p99={:.2} max={:.2}",
            late.len(),
            late[0],
            pct(0.5),
            pct(0.99),
            late[late.len() - 1],
        );
    };
    line("since_sent", |idle| idle.since_sent);
    line("since_echoed", |idle| idle.since_echoed);
}

#[test]
fn idle_clients_are_never_closed_before_the_timeout() {
    let timeout = Duration::from_millis(300);
    let (idle_for, counters) = idle_for_until_closed(50, "0.3");
    for (client, idle) in idle_for.iter().enumerate() {
        let idle = idle.since_sent;
        assert!(
            idle >= timeout,
            "client {client} was closed {idle:?} after its last byte, before the {timeout:?} timeout"
        );
    }
    report(
        "idle_clients_are_never_closed_before_the_timeout",
        timeout,
        &idle_for,
    );
    assert_eq!(counters["reaped"], 50);
    assert_eq!(counters["connections_served"], 50);
}

/// The measurement behind the book's accuracy figures (run it in release,
/// with `--ignored --nocapture`). Asserts only the lower bound.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn measure_reap_lateness() {
    for (clients, secs) in [(200, "1"), (200, "0.2")] {
        let timeout = Duration::from_secs_f64(secs.parse().unwrap());
        let (idle_for, counters) = idle_for_until_closed(clients, secs);
        assert!(idle_for.iter().all(|idle| idle.since_sent >= timeout));
        report("measure_reap_lateness", timeout, &idle_for);
        assert_eq!(counters["reaped"], clients as u64);
    }
}

#[test]
fn a_client_that_keeps_talking_outlives_many_timeouts() {
    let server = start(&["--idle-timeout", "0.5"]);
    let mut active = connect(server.addr());
    let mut idle = connect(server.addr());
    talk_once(&mut idle, b"then silence\n");
    // A line every 50 ms for 2.5 s: five timeouts' worth of time, and room
    // for this thread to go unscheduled for 0.4 s on a busy machine
    // without the active client looking idle.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        talk_once(&mut active, b"still here\n");
        thread::sleep(Duration::from_millis(50));
    }
    wait_for_close(&mut idle);
    let counters = summary(server);
    assert_eq!(counters["reaped"], 1, "only the silent one");
    assert!(counters["timer_ops"] >= 20, "{counters:?}");
}

#[test]
fn a_client_waiting_for_a_slow_worker_is_not_idle() {
    // One line that takes the worker 0.6 s, three times the timeout: the
    // client is waiting on us, and must get its echo.
    let server = start(&["--idle-timeout", "0.2", "--work-us", "600000"]);
    let mut client = connect(server.addr());
    talk_once(&mut client, b"take your time\n");
    let counters = summary(server);
    assert_eq!(counters["reaped"], 0, "{counters:?}");
}

#[test]
fn a_client_that_stops_reading_its_echo_is_reaped() {
    // It sends far more than the back-pressure limit and never reads: the
    // server stops reading it, no data moves either way, so it is idle.
    let server = start(&["--idle-timeout", "0.3", "--max-pending", "65536"]);
    let mut stream = connect(server.addr());
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    let closed = loop {
        match stream.write(&chunk) {
            Ok(_) => {}
            // The buffers are full: nothing moves; wait for the reaper.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Instant::now(), // reset or broken pipe: closed
        }
        assert!(started.elapsed() < FAILSAFE, "never closed");
    };
    assert!(closed - started >= Duration::from_millis(300));
    assert_eq!(summary(server)["reaped"], 1);
}

#[test]
fn without_the_flag_idle_clients_stay_connected() {
    let server = start(&[]);
    let mut stream = connect(server.addr());
    talk_once(&mut stream, b"hello\n");
    thread::sleep(Duration::from_millis(500));
    talk_once(&mut stream, b"still connected\n");
    let counters = summary(server);
    assert_eq!((counters["reaped"], counters["timer_ops"]), (0, 0));
}

#[test]
fn bad_idle_timeouts_exit_2() {
    for bad in ["0", "-1", "nan", "inf", "abc", "0.0001", "1e12"] {
        let output = std::process::Command::new(BIN)
            .args(["--addr", "127.0.0.1:0", "--idle-timeout", bad])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "--idle-timeout {bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--idle-timeout"), "{bad}: {stderr}");
    }
}

#[test]
fn the_wheel_is_described_at_start_after_the_listening_line() {
    let server = start(&["--idle-timeout", "2.5"]);
    let shutdown = server.shutdown().unwrap();
    let lines = shutdown.stdout;
    assert!(lines[0].starts_with("listening on "), "{lines:?}");
    assert!(
        lines[1].starts_with("idle timeout 2.5s: timing wheel of 128 slots x 25ms"),
        "{lines:?}"
    );
}
