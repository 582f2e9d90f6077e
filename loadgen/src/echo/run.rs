//! Starting a run: the worker threads of the chosen engine, the thread that
//! watches the measured window, and the report built from what they measured.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::config::{EchoConfig, Engine, RunLength};
use super::shared::{Shared, WorkerResult};
use super::{events, threads};
use crate::cpu::CpuSnapshot;
use crate::error::LoadError;
use crate::progress::Progress;
use crate::report::{self, ConnectStats, CpuReport, EchoReport, ErrorCounts, Latency};

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
                    events::run_event_worker(config, shared, worker, workers)
                }),
                Engine::Threads => builder.spawn_scoped(scope, move || {
                    threads::run_connection_thread(config, shared, worker)
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
