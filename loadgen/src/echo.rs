//! `loadgen echo`: closed-loop echo load with byte-exact verification.
//!
//! Every connection keeps `pipeline` messages in flight: it sends, waits for
//! the echo, checks every byte, sends the next. The default engine runs one
//! mio event loop per thread (epoll on Linux, kqueue on macOS); in steady
//! state it costs one `read` and one `write` per message and allocates
//! nothing per message. `Engine::Threads` is the baseline most people would
//! write (a blocking thread per connection), kept for comparison.
//!
//! ```no_run
//! use std::time::Duration;
//! use loadgen::echo::{EchoConfig, RunLength};
//!
//! let mut config = EchoConfig::new("127.0.0.1:7878".parse().unwrap());
//! config.connections = 100;
//! config.length = RunLength::Duration { warmup: Duration::from_secs(1), measure: Duration::from_secs(5) };
//! let report = loadgen::echo::run(&config)?;
//! println!("{:.0} msg/s, ok={}", report.messages_per_sec, report.ok);
//! # Ok::<(), loadgen::error::LoadError>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::connect::{RampPlan, Target};
use crate::cpu::CpuSnapshot;
pub use crate::error::LoadError;
use crate::payload::{Cursor, Payload};
use crate::progress::Progress;
use crate::report::{self, ConnectStats, CpuReport, EchoReport, ErrorCounts, Latency};

/// Which client implementation drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// mio event loops, `threads` of them, each owning a share of the connections.
    Events,
    /// One blocking OS thread per connection: `write_all`, `read_exact`, repeat.
    Threads,
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunLength {
    /// Run `warmup` without counting, then measure for `measure`.
    Duration { warmup: Duration, measure: Duration },
    /// Send exactly this many messages in total, spread over the connections.
    Messages(u64),
}

/// Everything an echo run needs. Start from [`EchoConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub addr: SocketAddr,
    /// Local addresses to connect from, round-robin (empty: kernel's choice).
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    /// Bytes per message including the trailing `\n` (at least 1).
    pub message_size: usize,
    /// Messages in flight per connection (at least 1).
    pub pipeline: usize,
    pub length: RunLength,
    pub engine: Engine,
    /// Event-loop threads for [`Engine::Events`].
    pub threads: usize,
    /// A connection waiting this long for any echoed byte counts as a
    /// timeout error; also how long the end of a run waits for stragglers.
    pub timeout: Duration,
    /// Pin loadgen (the whole process) to this core (Linux).
    pub cpu: Option<usize>,
    /// Report this process's CPU use next to loadgen's (Linux).
    pub server_pid: Option<u32>,
    /// Draw a progress bar on stderr if it is a terminal.
    pub progress: bool,
}

impl EchoConfig {
    /// One connection, 64-byte messages, no pipelining, 5 s, events engine.
    pub fn new(addr: SocketAddr) -> EchoConfig {
        EchoConfig {
            addr,
            sources: Vec::new(),
            connections: 1,
            message_size: 64,
            pipeline: 1,
            length: RunLength::Duration {
                warmup: Duration::ZERO,
                measure: Duration::from_secs(5),
            },
            engine: Engine::Events,
            threads: 1,
            timeout: Duration::from_secs(5),
            cpu: None,
            server_pid: None,
            progress: false,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: &str| Err(LoadError::Config(msg.to_string()));
        if self.connections == 0 {
            return bad("--conns must be at least 1");
        }
        if self.message_size == 0 {
            return bad("--size must be at least 1 (the message ends in \\n)");
        }
        if self.pipeline == 0 {
            return bad("--pipeline must be at least 1");
        }
        if self.threads == 0 || self.threads > self.connections {
            return bad("--threads must be between 1 and --conns");
        }
        if self.engine == Engine::Threads && self.pipeline != 1 {
            return bad("--engine threads supports only --pipeline 1");
        }
        if self.engine == Engine::Threads && !self.sources.is_empty() {
            return bad("--engine threads does not support --sources");
        }
        if let RunLength::Messages(0) = self.length {
            return bad("--messages must be at least 1");
        }
        Ok(())
    }
}

/// Runs the load described by `config` and reports what it measured.
///
/// `Err` means the run could not happen (a limit, nothing listening, a bad
/// config); errors *measured* during the run (mismatched bytes, resets) are
/// in the report and make `report.ok` false.
pub fn run(config: &EchoConfig) -> Result<EchoReport, LoadError> {
    config.validate()?;
    if let Some(core) = config.cpu {
        crate::cpu::pin_to_core(core)?;
    }
    if let Some(pid) = config.server_pid {
        crate::cpu::process_cpu_time(pid)?;
    }
    crate::cpu::ensure_fd_limit(config.connections)?;
    let workers = match config.engine {
        Engine::Events => config.threads,
        Engine::Threads => config.connections,
    };
    let shared = Shared::new(workers);
    let progress = Progress::new(config.progress);
    let begin = Instant::now();

    let outcome = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let shared = &shared;
            let builder = std::thread::Builder::new().name(format!("loadgen-{worker}"));
            let spawned = match config.engine {
                Engine::Events => builder.spawn_scoped(scope, move || {
                    run_event_worker(config, shared, worker, workers)
                }),
                Engine::Threads => builder.spawn_scoped(scope, move || {
                    crate::threaded::run_connection_thread(config, shared, worker)
                }),
            };
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Release the threads already waiting for the others.
                    shared.cancel();
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(LoadError::io(
                        format!("spawning thread {worker} of {workers} (thread limit?)"),
                        e,
                    ));
                }
            }
        }
        let window = watch(config, &shared, &progress, workers);
        let mut results = Vec::with_capacity(workers);
        for handle in handles {
            match handle.join() {
                Ok(result) => results.push(result),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok((window, results))
    });
    progress.finish();
    let (window, results) = outcome?;
    let mut results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let connect_seconds = shared
        .t0
        .get()
        .map_or(0.0, |t0| t0.duration_since(begin).as_secs_f64());
    Ok(build_report(
        config,
        &mut results,
        window,
        connect_seconds,
        workers,
    ))
}

/// What each worker thread shares with the others and with the watcher.
pub(crate) struct Shared {
    /// How many workers have finished connecting; every worker waits until
    /// all have, so that the measurement starts with all connections open.
    arrived: Mutex<usize>,
    all_arrived: Condvar,
    workers: usize,
    /// Set by a worker that hit a limit: everybody stops.
    pub(crate) abort: AtomicBool,
    /// When the connect phase ended (first worker past the barrier).
    t0: OnceLock<Instant>,
    pub(crate) established: AtomicUsize,
    /// Messages completed so far, for the progress bar.
    pub(crate) completed: AtomicU64,
    pub(crate) finished_workers: AtomicUsize,
}

impl Shared {
    fn new(workers: usize) -> Shared {
        Shared {
            arrived: Mutex::new(0),
            all_arrived: Condvar::new(),
            workers,
            abort: AtomicBool::new(false),
            t0: OnceLock::new(),
            established: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            finished_workers: AtomicUsize::new(0),
        }
    }

    /// Stops the run before it starts: releases every waiting worker.
    fn cancel(&self) {
        let _guard = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        self.abort.store(true, Ordering::SeqCst);
        self.all_arrived.notify_all();
    }

    /// Called once by every worker when its connect phase is over. Returns
    /// the common start instant, or `None` if some worker hit a limit.
    pub(crate) fn arrive(&self, ok: bool) -> Option<Instant> {
        if !ok {
            self.abort.store(true, Ordering::SeqCst);
        }
        // A poisoned lock means a worker panicked; the panic is re-raised
        // when it is joined, so carry on with the count inside.
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        *arrived += 1;
        self.all_arrived.notify_all();
        while *arrived < self.workers && !self.abort.load(Ordering::SeqCst) {
            arrived = self
                .all_arrived
                .wait(arrived)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(arrived);
        let t0 = *self.t0.get_or_init(Instant::now);
        (!self.abort.load(Ordering::SeqCst)).then_some(t0)
    }
}

/// The measured window, as loadgen's main thread saw it.
struct Window {
    /// When counting started (None if the run never got that far).
    start: Option<Instant>,
    length: Duration,
    warmup: Duration,
    cpu: Option<(CpuSnapshot, CpuSnapshot)>,
}

/// Runs on the main thread while the workers work: draws progress and
/// samples CPU time at the window's start and end.
fn watch(config: &EchoConfig, shared: &Shared, progress: &Progress, workers: usize) -> Window {
    let all_done = || shared.finished_workers.load(Ordering::SeqCst) == workers;
    let aborted = || shared.abort.load(Ordering::SeqCst);
    let tick = Duration::from_millis(100);

    progress.phase("connect", config.connections as u64);
    let t0 = loop {
        if let Some(t0) = shared.t0.get() {
            break *t0;
        }
        if all_done() || aborted() {
            return Window {
                start: None,
                length: Duration::ZERO,
                warmup: Duration::ZERO,
                cpu: None,
            };
        }
        progress.update(
            shared.established.load(Ordering::Relaxed) as u64,
            String::new(),
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (warmup, measure) = match config.length {
        RunLength::Duration { warmup, measure } => (warmup, Some(measure)),
        RunLength::Messages(_) => (Duration::ZERO, None),
    };
    let window_start = t0 + warmup;
    let mut meter = RateMeter::new(shared);
    let position = || match config.length {
        RunLength::Duration { .. } => t0.elapsed().as_secs(),
        RunLength::Messages(_) => shared.completed.load(Ordering::Relaxed),
    };
    match config.length {
        RunLength::Duration { .. } => {
            progress.phase("seconds", (warmup + measure.unwrap_or_default()).as_secs())
        }
        RunLength::Messages(n) => progress.phase("messages", n),
    }
    let sleep_until = |deadline: Instant, meter: &mut RateMeter<'_>| {
        while Instant::now() < deadline && !all_done() && !aborted() {
            std::thread::sleep(tick.min(deadline.saturating_duration_since(Instant::now())));
            progress.update(position(), meter.rate());
        }
    };
    sleep_until(window_start, &mut meter);
    let cores = cpu_report(config.cpu, config.server_pid).watched_cores();
    let start_cpu = CpuSnapshot::take(config.server_pid, &cores);
    let started = Instant::now();
    match measure {
        Some(measure) => sleep_until(window_start + measure, &mut meter),
        // A messages run ends when every worker has finished; poll often so
        // the CPU sample is taken close to that moment.
        None => {
            while !all_done() && !aborted() {
                std::thread::sleep(Duration::from_millis(2));
                if meter.since.elapsed() >= tick {
                    progress.update(position(), meter.rate());
                }
            }
        }
    }
    let end_cpu = CpuSnapshot::take(config.server_pid, &cores);
    Window {
        start: Some(window_start),
        length: measure.unwrap_or_else(|| started.elapsed()),
        warmup,
        cpu: Some((start_cpu, end_cpu)),
    }
}

/// An empty CPU report naming loadgen's and the server's pinned cores.
pub(crate) fn cpu_report(cpu: Option<usize>, server_pid: Option<u32>) -> CpuReport {
    CpuReport {
        server_pid,
        loadgen_core: cpu,
        server_core: server_pid.and_then(crate::cpu::pinned_core),
        ..CpuReport::default()
    }
}

/// Messages per second since the last look, for the progress bar.
struct RateMeter<'a> {
    shared: &'a Shared,
    since: Instant,
    completed: u64,
}

impl<'a> RateMeter<'a> {
    fn new(shared: &'a Shared) -> RateMeter<'a> {
        RateMeter {
            shared,
            since: Instant::now(),
            completed: shared.completed.load(Ordering::Relaxed),
        }
    }

    fn rate(&mut self) -> String {
        let completed = self.shared.completed.load(Ordering::Relaxed);
        let secs = self.since.elapsed().as_secs_f64().max(1e-3);
        let rate = (completed - self.completed) as f64 / secs;
        (self.since, self.completed) = (Instant::now(), completed);
        format!("{rate:.0} msg/s")
    }
}

/// What one worker measured.
pub(crate) struct WorkerResult {
    pub(crate) connect: ConnectStats,
    pub(crate) messages: u64,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) errors: ErrorCounts,
    /// When the worker's last connection finished (messages runs).
    pub(crate) finished_at: Instant,
}

impl WorkerResult {
    pub(crate) fn new(connect: ConnectStats) -> WorkerResult {
        WorkerResult {
            connect,
            messages: 0,
            histogram: report::rtt_histogram(),
            errors: ErrorCounts::default(),
            finished_at: Instant::now(),
        }
    }
}

/// Which completions count: those inside `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountingWindow {
    pub(crate) start: Instant,
    pub(crate) end: Option<Instant>,
}

impl CountingWindow {
    pub(crate) fn new(config: &EchoConfig, t0: Instant) -> CountingWindow {
        match config.length {
            RunLength::Duration { warmup, measure } => CountingWindow {
                start: t0 + warmup,
                end: Some(t0 + warmup + measure),
            },
            RunLength::Messages(_) => CountingWindow {
                start: t0,
                end: None,
            },
        }
    }

    pub(crate) fn contains(&self, t: Instant) -> bool {
        t >= self.start && self.end.is_none_or(|end| t < end)
    }

    /// Past the end: stop starting new messages.
    pub(crate) fn is_over(&self, t: Instant) -> bool {
        self.end.is_some_and(|end| t >= end)
    }
}

/// Messages connection `index` (of `connections`) sends in a messages run.
pub(crate) fn quota(config: &EchoConfig, index: usize) -> Option<u64> {
    match config.length {
        RunLength::Messages(total) => {
            let c = config.connections as u64;
            Some(total / c + u64::from((index as u64) < total % c))
        }
        RunLength::Duration { .. } => None,
    }
}

fn build_report(
    config: &EchoConfig,
    results: &mut [WorkerResult],
    mut window: Window,
    connect_seconds: f64,
    workers: usize,
) -> EchoReport {
    let mut histogram = report::rtt_histogram();
    let mut errors = ErrorCounts::default();
    let mut connect = ConnectStats::default();
    let mut messages = 0;
    for r in results.iter() {
        // Same bounds on both sides, so adding cannot fail.
        let _ = histogram.add(&r.histogram);
        errors.add(&r.errors);
        messages += r.messages;
        connect.requested += r.connect.requested;
        connect.established += r.connect.established;
        connect.failed += r.connect.failed;
    }
    // A messages run lasts until the last worker's last echo.
    if let (RunLength::Messages(_), Some(start)) = (config.length, window.start) {
        let end = results.iter().map(|r| r.finished_at).max().unwrap_or(start);
        window.length = end.saturating_duration_since(start);
    }
    connect.seconds = connect_seconds;
    connect.per_sec = if connect_seconds > 0.0 {
        connect.established as f64 / connect_seconds
    } else {
        0.0
    };
    let seconds = window.length.as_secs_f64();
    let bytes = messages * config.message_size as u64;
    let per_sec = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
    let mut cpu = cpu_report(config.cpu, config.server_pid);
    if let Some((start, end)) = &window.cpu {
        cpu.measure(start, end, window.length, messages);
    }
    EchoReport {
        engine: match config.engine {
            Engine::Events => "events",
            Engine::Threads => "threads",
        }
        .to_string(),
        addr: config.addr.to_string(),
        threads: workers,
        message_size: config.message_size,
        pipeline: config.pipeline,
        ok: errors.total() == 0 && connect.established == config.connections,
        connect,
        warmup_seconds: window.warmup.as_secs_f64(),
        seconds,
        messages,
        bytes,
        messages_per_sec: per_sec(messages as f64),
        mb_per_sec: per_sec(bytes as f64) / 1e6,
        rtt_us: Latency::from_histogram(&histogram),
        errors,
        cpu,
    }
}

// ---------------------------------------------------------------------------
// The event-driven engine.

/// Largest per-connection buffer; bigger messages stream through it.
const MAX_BUFFER: usize = 256 * 1024;

// ANCHOR: connection
/// One connection of the event engine, with every buffer it will ever use.
struct Connection {
    stream: TcpStream,
    /// Global connection number: picks this connection's message bytes.
    id: usize,
    /// Next message byte to generate into `out`.
    next_to_send: Cursor,
    /// Next echoed byte expected.
    next_to_check: Cursor,
    /// Generated bytes not yet written: `out[out_pos..out_len]`.
    out: Box<[u8]>,
    out_pos: usize,
    out_len: usize,
    /// Bytes written to / verified from the socket, to catch a server that
    /// sends more than it was sent.
    bytes_written: u64,
    bytes_checked: u64,
    /// Holds more than everything that can be in flight, so a read that
    /// does not fill it has drained the socket (no extra EAGAIN read).
    inbuf: Box<[u8]>,
    /// When message `seq` was generated, at `sent_at[seq % pipeline]`.
    sent_at: Box<[Instant]>,
    /// Messages to send in a messages run.
    quota: Option<u64>,
    /// Last time a byte moved either way, for the stall timeout.
    last_progress: Instant,
}
// ANCHOR_END: connection

/// Why a connection was given up.
enum Failure {
    Mismatch,
    Reset,
    UnexpectedEof,
}

impl Failure {
    fn count(self, errors: &mut ErrorCounts) {
        match self {
            Failure::Mismatch => errors.mismatches += 1,
            Failure::Reset => errors.resets += 1,
            Failure::UnexpectedEof => errors.unexpected_eof += 1,
        }
    }
}

fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Failure::UnexpectedEof,
        _ => Failure::Reset,
    }
}

/// Per-loop context the connections report into.
struct LoopState<'a> {
    payload: &'a Payload,
    pipeline: u64,
    window: CountingWindow,
    /// No new messages once the window is over.
    stopping: bool,
    result: &'a mut WorkerResult,
    completed_now: u64,
}

impl Connection {
    fn new(stream: TcpStream, id: usize, config: &EchoConfig, now: Instant) -> Connection {
        let in_flight_bytes = config.pipeline * config.message_size;
        Connection {
            stream,
            id,
            next_to_send: Cursor::default(),
            next_to_check: Cursor::default(),
            out: vec![0; in_flight_bytes.min(MAX_BUFFER)].into_boxed_slice(),
            out_pos: 0,
            out_len: 0,
            bytes_written: 0,
            bytes_checked: 0,
            inbuf: vec![0; (in_flight_bytes + 1).min(MAX_BUFFER)].into_boxed_slice(),
            sent_at: vec![now; config.pipeline].into_boxed_slice(),
            quota: None,
            last_progress: now,
        }
    }

    /// Messages sent (or being sent) whose echo is not complete yet.
    fn in_flight(&self) -> bool {
        self.next_to_send != self.next_to_check || self.out_pos != self.out_len
    }

    /// Nothing in flight and nothing more to send: close it.
    fn is_finished(&self, state: &LoopState<'_>) -> bool {
        !self.in_flight() && (state.stopping || self.quota == Some(self.next_to_send.seq))
    }

    // ANCHOR: generate
    /// Generates the next messages into the (empty) output buffer: as many
    /// as the pipeline allows, plus the rest of a message already begun.
    fn generate(&mut self, state: &LoopState<'_>, now: Instant) {
        self.out_pos = 0;
        self.out_len = 0;
        loop {
            let at = self.next_to_send;
            if at.offset == 0 {
                let pipeline_full = at.seq >= self.next_to_check.seq + state.pipeline;
                let quota_done = self.quota.is_some_and(|q| at.seq >= q);
                if state.stopping || pipeline_full || quota_done {
                    break;
                }
                self.sent_at[(at.seq % state.pipeline) as usize] = now;
            }
            let n = state
                .payload
                .fill(self.id, at, &mut self.out[self.out_len..]);
            if n == 0 {
                break;
            }
            self.out_len += n;
            self.next_to_send.offset += n;
            if self.next_to_send.offset == state.payload.size() {
                self.next_to_send = Cursor {
                    seq: at.seq + 1,
                    offset: 0,
                };
            }
        }
    }
    // ANCHOR_END: generate

    // ANCHOR: write
    /// Writes pending and newly generated messages until the pipeline is full
    /// or the socket's send buffer is.
    fn write_messages(&mut self, state: &LoopState<'_>, now: Instant) -> Result<(), Failure> {
        loop {
            if self.out_pos == self.out_len {
                self.generate(state, now);
                if self.out_len == 0 {
                    return Ok(());
                }
            }
            match self.stream.write(&self.out[self.out_pos..self.out_len]) {
                Ok(n) => {
                    self.out_pos += n;
                    self.bytes_written += n as u64;
                    self.last_progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(&e)),
            }
        }
    }
    // ANCHOR_END: write

    // ANCHOR: read
    /// Reads and verifies whatever has arrived, recording each completed
    /// message's round trip.
    fn read_echoes(&mut self, state: &mut LoopState<'_>, now: Instant) -> Result<(), Failure> {
        loop {
            let n = match self.stream.read(&mut self.inbuf) {
                Ok(0) => return Err(Failure::UnexpectedEof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_failure(&e)),
            };
            self.last_progress = now;
            if self.bytes_checked + n as u64 > self.bytes_written {
                return Err(Failure::Mismatch); // bytes we never sent
            }
            self.bytes_checked += n as u64;
            let first = self.next_to_check.seq;
            let completed = state
                .payload
                .verify(self.id, &mut self.next_to_check, &self.inbuf[..n])
                .ok_or(Failure::Mismatch)?;
            if state.window.contains(now) {
                for seq in first..first + completed {
                    let sent = self.sent_at[(seq % state.pipeline) as usize];
                    report::record_rtt(&mut state.result.histogram, now - sent);
                }
                state.result.messages += completed;
            }
            state.completed_now += completed;
            // A read that did not fill the buffer emptied the socket: the
            // next byte will come with a new readiness event.
            if n < self.inbuf.len() {
                return Ok(());
            }
        }
    }
    // ANCHOR_END: read
}

// ANCHOR: event_loop
/// One event loop: opens its share of the connections, waits for the others,
/// then drives them until the window ends (or the messages are done) and
/// every echo still in flight has come back.
fn run_event_worker(
    config: &EchoConfig,
    shared: &Shared,
    worker: usize,
    workers: usize,
) -> Result<WorkerResult, LoadError> {
    // This loop's connections: indexes first..first + count.
    let count = config.connections / workers + usize::from(worker < config.connections % workers);
    let first = worker * (config.connections / workers) + worker.min(config.connections % workers);
    let target = Target {
        addr: config.addr,
        sources: config.sources.clone(),
    };
    let plan = RampPlan {
        count,
        rate: None,
        max_in_flight: 256,
        timeout: config.timeout.max(Duration::from_secs(3)),
        first_index: first,
    };
    let mut poll = Poll::new().map_err(|e| LoadError::io("creating the poller", e))?;
    let mut reported = 0;
    let ramped = crate::connect::ramp(&mut poll, &target, &plan, &mut |established| {
        shared
            .established
            .fetch_add(established - reported, Ordering::Relaxed);
        reported = established;
    });
    let ramped = match ramped {
        Ok(ramped) => ramped,
        Err(e) => {
            shared.arrive(false);
            shared.finished_workers.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
    };
    let mut result = WorkerResult::new(ramped.stats);
    let Some(t0) = shared.arrive(true) else {
        shared.finished_workers.fetch_add(1, Ordering::SeqCst);
        return Ok(result);
    };

    let payload = Payload::new(config.message_size);
    let mut connections: Vec<Option<Connection>> = Vec::with_capacity(ramped.streams.len());
    for (i, mut stream) in ramped.streams.into_iter().enumerate() {
        poll.registry()
            .reregister(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| LoadError::io("registering a connection", e))?;
        let mut conn = Connection::new(stream, first + i, config, t0);
        conn.quota = quota(config, first + i);
        connections.push(Some(conn));
    }
    let mut state = LoopState {
        payload: &payload,
        pipeline: config.pipeline as u64,
        window: CountingWindow::new(config, t0),
        stopping: false,
        result: &mut result,
        completed_now: 0,
    };
    let mut open = connections.len();

    // Start every connection off with its first messages.
    let now = Instant::now();
    for slot in connections.iter_mut() {
        if let Some(conn) = slot
            && let Err(failure) = conn.write_messages(&state, now)
        {
            failure.count(&mut state.result.errors);
            *slot = None;
            open -= 1;
        }
    }

    // In a messages run with fewer messages than connections, some have
    // nothing to do at all.
    close_finished(&mut connections, &mut open, &state);

    let mut events = Events::with_capacity(1024);
    let mut last_stall_scan = now;
    let mut drain_deadline = None;
    while open > 0 {
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::io("waiting for events", e)),
        }
        for event in events.iter() {
            let Some(slot) = connections.get_mut(event.token().0) else {
                continue;
            };
            let Some(conn) = slot else { continue };
            let now = Instant::now();
            let mut step = Ok(());
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                step = conn.read_echoes(&mut state, now);
            }
            if step.is_ok() {
                step = conn.write_messages(&state, now);
            }
            match step {
                Err(failure) => failure.count(&mut state.result.errors),
                Ok(()) if conn.is_finished(&state) => {}
                Ok(()) => continue,
            }
            *slot = None; // closes the socket
            open -= 1;
        }
        shared
            .completed
            .fetch_add(state.completed_now, Ordering::Relaxed);
        state.completed_now = 0;

        let now = Instant::now();
        if !state.stopping && state.window.is_over(now) {
            // Stop sending; wait (at most the timeout) for echoes in flight.
            state.stopping = true;
            drain_deadline = Some(now + config.timeout);
            close_finished(&mut connections, &mut open, &state);
        }
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        if drain_deadline.is_some_and(|d| now >= d) {
            state.result.errors.timeouts += open as u64;
            break;
        }
        if now.duration_since(last_stall_scan) >= Duration::from_millis(250) {
            last_stall_scan = now;
            for slot in connections.iter_mut() {
                if slot.as_ref().is_some_and(|c| {
                    c.in_flight() && now.duration_since(c.last_progress) >= config.timeout
                }) {
                    state.result.errors.timeouts += 1;
                    *slot = None;
                    open -= 1;
                }
            }
        }
    }
    drop(connections);
    result.finished_at = Instant::now();
    shared.finished_workers.fetch_add(1, Ordering::SeqCst);
    Ok(result)
}
// ANCHOR_END: event_loop

/// Closes connections with nothing in flight once sending has stopped.
fn close_finished(connections: &mut [Option<Connection>], open: &mut usize, state: &LoopState<'_>) {
    for slot in connections.iter_mut() {
        if slot.as_ref().is_some_and(|c| c.is_finished(state)) {
            *slot = None;
            *open -= 1;
        }
    }
}
