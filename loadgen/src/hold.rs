//! `loadgen hold`: open many connections, keep them open, and check that the
//! server still answers promptly while it holds them all.
//!
//! Connections are opened at a set rate with a bounded number of handshakes
//! in flight (see [`crate::connect`]), then held idle. Every `ping_every` a
//! small message goes out on a rotating sample of them and its echo is timed
//! and checked byte for byte. Held connections cost loadgen no buffer of
//! their own: reads go through one shared scratch buffer.
//!
//! ```no_run
//! use std::time::Duration;
//! use loadgen::hold::HoldConfig;
//!
//! let mut config = HoldConfig::new("127.0.0.1:7878".parse().unwrap());
//! config.connections = 10_000;
//! config.rate = Some(5_000.0);
//! config.hold = Duration::from_secs(10);
//! let report = loadgen::hold::run(&config)?;
//! println!("{} held, ping p99 {} µs", report.connect.established, report.ping_rtt_us.p99_us);
//! # Ok::<(), loadgen::error::LoadError>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::connect::{RampPlan, Target};
use crate::cpu::CpuSnapshot;
pub use crate::error::LoadError;
use crate::payload::{Cursor, Payload};
use crate::progress::Progress;
use crate::report::{self, ConnectStats, ErrorCounts, HoldReport, Latency};

/// Everything a hold run needs. Start from [`HoldConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub addr: SocketAddr,
    /// Destination addresses to spread over, all on `addr`'s port (a
    /// server listening on 0.0.0.0); empty: `addr` alone.
    pub dests: Vec<IpAddr>,
    /// Local addresses to connect from, round-robin (empty: kernel's choice).
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    /// Connects started per second (`None`: as fast as `max_connecting` allows).
    pub rate: Option<f64>,
    /// Handshakes in progress at once.
    pub max_connecting: usize,
    /// How long to keep all connections open after the ramp.
    pub hold: Duration,
    pub ping_every: Duration,
    /// Connections pinged per round.
    pub ping_sample: usize,
    /// Also ping every held connection once during the hold, spread over
    /// its first three quarters, and count the connections that answered.
    pub verify_all: bool,
    /// Bytes per ping including its `\n`.
    pub ping_size: usize,
    /// A connect, or a ping echo, taking longer than this is an error.
    pub timeout: Duration,
    /// Pin loadgen to this core (Linux).
    pub cpu: Option<usize>,
    /// Report this process's CPU use during the hold (Linux).
    pub server_pid: Option<u32>,
    /// Draw a progress bar on stderr if it is a terminal.
    pub progress: bool,
    /// Global index of this run's first connection, for round-robin over
    /// `sources`: the processes of a spread run share one source list and
    /// together use every source equally.
    pub first_index: usize,
}

impl HoldConfig {
    /// 100 connections, unlimited rate, held 5 s, 10 pings every second.
    pub fn new(addr: SocketAddr) -> HoldConfig {
        HoldConfig {
            addr,
            dests: Vec::new(),
            sources: Vec::new(),
            connections: 100,
            rate: None,
            max_connecting: 1000,
            hold: Duration::from_secs(5),
            ping_every: Duration::from_secs(1),
            ping_sample: 10,
            verify_all: false,
            ping_size: 16,
            timeout: Duration::from_secs(10),
            cpu: None,
            server_pid: None,
            progress: false,
            first_index: 0,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: &str| Err(LoadError::Config(msg.to_string()));
        if self.connections == 0 {
            return bad("--conns must be at least 1");
        }
        if self.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return bad("--rate must be positive");
        }
        if self.max_connecting == 0 {
            return bad("--max-connecting must be at least 1");
        }
        if self.ping_every.is_zero() {
            return bad("--ping-every must be positive");
        }
        if self.ping_size == 0 {
            return bad("--ping-size must be at least 1");
        }
        if let Some(dest) = self
            .dests
            .iter()
            .find(|d| d.is_ipv4() != self.addr.is_ipv4())
        {
            return Err(LoadError::Config(format!(
                "--dests: {dest} is not of the same address family as --addr {}",
                self.addr
            )));
        }
        Ok(())
    }
}

/// A ping on its way.
struct Ping {
    seq: u64,
    sent_at: Instant,
    written: usize,
    checked: usize,
}

/// One held connection: a socket and, while one is out, its ping.
struct Held {
    stream: TcpStream,
    ping: Option<Ping>,
    /// At least one of its pings came back during the hold.
    answered: bool,
}

/// Counters for the hold phase.
struct Tally {
    histogram: Histogram<u64>,
    errors: ErrorCounts,
    pings_sent: u64,
    pings_ok: u64,
    lost: u64,
}

/// Who follows a hold run as it goes: a progress bar for a person, or the
/// parent of a spread run (see [`crate::spread`]), which also decides when
/// the hold starts so that all its processes hold at the same time.
pub(crate) trait Watcher {
    /// The ramp has opened `established` connections so far.
    fn connecting(&mut self, established: usize);
    /// The ramp is over. Returns a descriptor to wait on before holding (a
    /// line on it means "start the hold", end of file means "give up"), or
    /// `None` to start at once.
    fn ramped(&mut self, stats: &ConnectStats) -> Option<RawFd>;
    /// `elapsed` into the hold, `pings_ok` answered so far.
    fn holding(&mut self, elapsed: Duration, pings_ok: u64);
    /// The run is over (or failed): clean up the display.
    fn finish(&mut self);
}

/// The watcher of a plain `loadgen hold`: a progress bar on a terminal.
struct BarWatcher {
    bar: Progress,
    hold: Duration,
}

impl Watcher for BarWatcher {
    fn connecting(&mut self, established: usize) {
        self.bar.update(established as u64, String::new());
    }
    fn ramped(&mut self, _stats: &ConnectStats) -> Option<RawFd> {
        self.bar.phase("hold", self.hold.as_secs());
        None
    }
    fn holding(&mut self, elapsed: Duration, pings_ok: u64) {
        self.bar
            .update(elapsed.as_secs(), format!("{pings_ok} pings ok"));
    }
    fn finish(&mut self) {
        self.bar.finish();
    }
}

/// Opens, holds and pings connections as `config` says.
///
/// `Err` means the run could not happen (a limit, nothing listening, a bad
/// config); lost connections and bad pings are in the report.
pub fn run(config: &HoldConfig) -> Result<HoldReport, LoadError> {
    let bar = Progress::new(config.progress);
    bar.phase("connect", config.connections as u64);
    let mut watcher = BarWatcher {
        bar,
        hold: config.hold,
    };
    let outcome = run_watched(config, &mut watcher);
    watcher.finish();
    outcome.map(|(report, _)| report)
}

/// The token of the descriptor a child waits on for "start the hold";
/// connection tokens are indexes into the held list, so they never reach it.
const GATE: Token = Token(usize::MAX);

/// [`run`] with any watcher; also returns the ping round-trip histogram so a
/// spread run can merge its processes' histograms exactly.
pub(crate) fn run_watched(
    config: &HoldConfig,
    watcher: &mut dyn Watcher,
) -> Result<(HoldReport, Histogram<u64>), LoadError> {
    config.validate()?;
    if let Some(core) = config.cpu {
        crate::cpu::pin_to_core(core)?;
    }
    if let Some(pid) = config.server_pid {
        crate::cpu::process_cpu_time(pid)?;
    }
    crate::cpu::ensure_fd_limit(config.connections)?;
    let mut poll = Poll::new().map_err(|e| LoadError::io("creating the poller", e))?;

    // ANCHOR: ramp_up
    let target = Target {
        addr: config.addr,
        dests: config.dests.clone(),
        sources: config.sources.clone(),
    };
    let plan = RampPlan {
        count: config.connections,
        rate: config.rate,
        max_in_flight: config.max_connecting,
        timeout: config.timeout,
        first_index: config.first_index,
    };
    let ramped = crate::connect::ramp(&mut poll, &target, &plan, &mut |established| {
        watcher.connecting(established);
    })?;
    let mut held = Vec::with_capacity(ramped.streams.len());
    for (i, mut stream) in ramped.streams.into_iter().enumerate() {
        // Re-registering also reports anything that arrived during the ramp.
        poll.registry()
            .reregister(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| LoadError::io("registering a connection", e))?;
        held.push(Some(Held {
            stream,
            ping: None,
            answered: false,
        }));
    }
    // ANCHOR_END: ramp_up

    let payload = Payload::new(config.ping_size);
    let mut tally = Tally {
        histogram: report::rtt_histogram(),
        errors: ErrorCounts::default(),
        pings_sent: 0,
        pings_ok: 0,
        lost: 0,
    };
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 4096];
    if let Some(gate) = watcher.ramped(&ramped.stats) {
        wait_for_start(
            &mut poll,
            gate,
            &mut held,
            &payload,
            &mut scratch,
            &mut tally,
        )?;
    }

    let mut cpu = crate::echo::cpu_report(config.cpu, config.server_pid);
    let cores = cpu.watched_cores();
    let cpu_start = CpuSnapshot::take(config.server_pid, &cores);
    let start = Instant::now();
    let end = start + config.hold;
    let mut next_round = start;
    let mut rounds = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    // With --verify-all, connection `i` gets its own ping at
    // `start + verify_window * i / n`: all of them, but never all at once.
    let verify_window = config.hold.mul_f64(0.75);
    let mut next_to_verify = if config.verify_all { 0 } else { held.len() };

    // ANCHOR: hold_loop
    loop {
        let now = Instant::now();
        if now >= end && drain_deadline.is_none() {
            drain_deadline = Some(now + config.timeout);
        }
        if let Some(deadline) = drain_deadline {
            let outstanding = held.iter().flatten().filter(|h| h.ping.is_some()).count();
            if outstanding == 0 || now >= deadline {
                tally.errors.timeouts += outstanding as u64;
                break;
            }
        }
        if drain_deadline.is_none() && now >= next_round {
            expire_pings(&mut held, now, config.timeout, &mut tally);
            send_ping_round(
                &mut held,
                rounds,
                config.ping_sample,
                &payload,
                &mut scratch,
                &mut tally,
            );
            rounds += 1;
            next_round += config.ping_every;
            watcher.holding(start.elapsed(), tally.pings_ok);
        }
        if drain_deadline.is_none() && next_to_verify < held.len() {
            let due = verify_due(held.len(), now - start, verify_window);
            while next_to_verify < due {
                verify_one(
                    &mut held,
                    next_to_verify,
                    rounds,
                    &payload,
                    &mut scratch,
                    &mut tally,
                );
                next_to_verify += 1;
            }
        }
        let mut wake = if drain_deadline.is_some() {
            now + Duration::from_millis(50)
        } else {
            next_round.min(end)
        };
        if drain_deadline.is_none() && next_to_verify < held.len() {
            // Send the --verify-all pings in small batches, every 10 ms.
            wake = wake.min(now + Duration::from_millis(10));
        }
        match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::io("waiting for events", e)),
        }
        for event in events.iter() {
            on_connection_event(event, &mut held, &payload, &mut scratch, &mut tally);
        }
    }
    // ANCHOR_END: hold_loop
    let held_for = start
        .elapsed()
        .min(config.hold.max(Duration::from_millis(1)));
    let cpu_end = CpuSnapshot::take(config.server_pid, &cores);
    let answered = held.iter().flatten().filter(|h| h.answered).count() as u64;
    // Closing every socket sends a FIN to the server.
    drop(held);

    cpu.measure(&cpu_start, &cpu_end, held_for, 0);
    let stats = ramped.stats;
    let report = HoldReport {
        addr: config.addr.to_string(),
        dests: config.dests.iter().map(ToString::to_string).collect(),
        sources: config.sources.iter().map(ToString::to_string).collect(),
        target_rate: config.rate,
        ok: stats.established == config.connections
            && tally.errors.total() == 0
            && tally.lost == 0
            && tally.pings_ok == tally.pings_sent
            && (!config.verify_all || answered == stats.established as u64),
        connect: stats,
        processes: 1,
        hold_seconds: held_for.as_secs_f64(),
        ping_every_seconds: config.ping_every.as_secs_f64(),
        ping_sample: config.ping_sample,
        ping_rounds: rounds,
        pings_sent: tally.pings_sent,
        pings_ok: tally.pings_ok,
        ping_rtt_us: Latency::from_histogram(&tally.histogram),
        verify_all: config.verify_all,
        connections_answered: answered,
        connections_lost: tally.lost,
        errors: tally.errors,
        cpu,
        ping_rtt_histogram: None,
    };
    Ok((report, tally.histogram))
}

/// How many connections should have had their --verify-all ping by
/// `elapsed` into the hold: `n` spread evenly over `window`.
fn verify_due(n: usize, elapsed: Duration, window: Duration) -> usize {
    if elapsed >= window || window.is_zero() {
        return n;
    }
    let fraction = elapsed.as_secs_f64() / window.as_secs_f64();
    ((n as f64 * fraction).ceil() as usize).min(n)
}

/// Sends connection `index` its --verify-all ping, unless it already
/// answered one or has one out (whose answer will count).
fn verify_one(
    held: &mut [Option<Held>],
    index: usize,
    seq: u64,
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) {
    let Some(conn) = &mut held[index] else {
        return;
    };
    if conn.answered || conn.ping.is_some() {
        return;
    }
    if let Err(failure) = start_ping(conn, index, seq, payload, scratch, tally) {
        failure(&mut tally.errors);
        tally.lost += 1;
        held[index] = None;
    }
}

/// Reads and writes whatever an event on a held connection allows; a
/// connection that failed is counted and dropped.
fn on_connection_event(
    event: &mio::event::Event,
    held: &mut [Option<Held>],
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) {
    let id = event.token().0;
    let Some(slot) = held.get_mut(id) else {
        return;
    };
    let Some(conn) = slot else { return };
    let mut step = Ok(());
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        step = read_pings(conn, id, payload, scratch, tally);
    }
    if step.is_ok() && event.is_writable() {
        step = write_ping(conn, id, payload, scratch);
    }
    if let Err(failure) = step {
        failure(&mut tally.errors);
        tally.lost += 1;
        *slot = None;
    }
}

// ANCHOR: wait_for_start
/// Keeps the connections open, and watched, until a line arrives on `gate`
/// (the parent of a spread run says every process has ramped). End of file
/// on `gate` means the parent is gone: give up rather than hold forever.
fn wait_for_start(
    poll: &mut Poll,
    gate: RawFd,
    held: &mut [Option<Held>],
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) -> Result<(), LoadError> {
    let registry = poll.registry();
    registry
        .register(&mut SourceFd(&gate), GATE, Interest::READABLE)
        .map_err(|e| LoadError::io("watching the start signal", e))?;
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::io("waiting for the start signal", e)),
        }
        for event in events.iter() {
            if event.token() != GATE {
                // Nothing should arrive on an idle connection; if something
                // does, the usual checks count it.
                on_connection_event(event, held, payload, scratch, tally);
                continue;
            }
            let mut line = [0u8; 64];
            // SAFETY: `line` is a writable buffer of the length passed; the
            // descriptor is the gate our caller owns. Readable, so no block.
            let n = unsafe { libc::read(gate, line.as_mut_ptr().cast(), line.len()) };
            match n {
                0 => {
                    return Err(LoadError::Config(
                        "the parent process went away before the hold started".to_string(),
                    ));
                }
                n if n < 0 => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted
                        && err.kind() != io::ErrorKind::WouldBlock
                    {
                        return Err(LoadError::io("reading the start signal", err));
                    }
                }
                n if line[..n as usize].contains(&b'\n') => {
                    let _ = poll.registry().deregister(&mut SourceFd(&gate));
                    return Ok(());
                }
                _ => {}
            }
        }
    }
}
// ANCHOR_END: wait_for_start

/// What went wrong on a held connection: which error counter to bump.
type Failure = fn(&mut ErrorCounts);

fn mismatch(e: &mut ErrorCounts) {
    e.mismatches += 1;
}
fn reset(e: &mut ErrorCounts) {
    e.resets += 1;
}
fn eof(e: &mut ErrorCounts) {
    e.unexpected_eof += 1;
}

/// Sends a ping on `sample` connections spread evenly over all of them,
/// starting at a different one each round so every connection gets its turn.
fn send_ping_round(
    held: &mut [Option<Held>],
    round: u64,
    sample: usize,
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) {
    if held.is_empty() || sample == 0 {
        return;
    }
    let stride = (held.len() / sample).max(1);
    let offset = (round as usize) % stride;
    for index in (offset..held.len()).step_by(stride).take(sample) {
        let Some(conn) = &mut held[index] else {
            continue;
        };
        if conn.ping.is_some() {
            continue; // the previous ping is still out; expire_pings judges it
        }
        if let Err(failure) = start_ping(conn, index, round, payload, scratch, tally) {
            failure(&mut tally.errors);
            tally.lost += 1;
            held[index] = None;
        }
    }
}

/// Puts a new ping out on `conn` and writes as much of it as fits.
fn start_ping(
    conn: &mut Held,
    index: usize,
    seq: u64,
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) -> Result<(), Failure> {
    conn.ping = Some(Ping {
        seq,
        sent_at: Instant::now(),
        written: 0,
        checked: 0,
    });
    tally.pings_sent += 1;
    write_ping(conn, index, payload, scratch)
}

/// Writes what is left of the connection's ping, if any.
fn write_ping(
    conn: &mut Held,
    id: usize,
    payload: &Payload,
    scratch: &mut [u8],
) -> Result<(), Failure> {
    let Some(ping) = &mut conn.ping else {
        return Ok(());
    };
    while ping.written < payload.size() {
        let at = Cursor {
            seq: ping.seq,
            offset: ping.written,
        };
        let n = payload.fill(id, at, scratch);
        match conn.stream.write(&scratch[..n]) {
            Ok(written) => ping.written += written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(reset),
        }
    }
    Ok(())
}

/// Reads and checks echoed ping bytes; anything else arriving is an error.
fn read_pings(
    conn: &mut Held,
    id: usize,
    payload: &Payload,
    scratch: &mut [u8],
    tally: &mut Tally,
) -> Result<(), Failure> {
    loop {
        let n = match conn.stream.read(scratch) {
            Ok(0) => return Err(eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(reset),
        };
        let Some(ping) = &mut conn.ping else {
            return Err(mismatch); // bytes nobody asked for
        };
        if ping.checked + n > ping.written {
            return Err(mismatch);
        }
        let at = Cursor {
            seq: ping.seq,
            offset: ping.checked,
        };
        if !payload.matches(id, at, &scratch[..n]) {
            return Err(mismatch);
        }
        ping.checked += n;
        if ping.checked == payload.size() {
            report::record_rtt(&mut tally.histogram, ping.sent_at.elapsed());
            tally.pings_ok += 1;
            conn.ping = None;
            conn.answered = true;
        }
        if n < scratch.len() {
            return Ok(());
        }
    }
}

/// Counts pings out for longer than `timeout` as errors and closes their
/// connections (a server that stopped answering one client).
fn expire_pings(held: &mut [Option<Held>], now: Instant, timeout: Duration, tally: &mut Tally) {
    for slot in held.iter_mut() {
        let expired = slot
            .as_ref()
            .and_then(|h| h.ping.as_ref())
            .is_some_and(|p| now.duration_since(p.sent_at) >= timeout);
        if expired {
            tally.errors.timeouts += 1;
            tally.lost += 1;
            *slot = None;
        }
    }
}
