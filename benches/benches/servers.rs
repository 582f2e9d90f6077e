//! Criterion benchmarks over every server in `c1m_benches::SERVERS`.
//!
//! Each server runs as a release subprocess pinned to core 0; loadgen runs
//! inside this process, pinned to core 1. Groups:
//!
//! - `rtt-64B/<server>`: one connection, one 64-byte message per iteration:
//!   the time per iteration is the round-trip time, the throughput is
//!   messages/s at one connection.
//! - `echo-64B/<server>/<connections>`: 64-byte closed-loop echo at 100,
//!   1,000 and 10,000 connections; an iteration is a fixed number of rounds
//!   on every connection, and the throughput is messages/s.
//! - `work-50us-c100/<server>`: the same with `--work-us 50` at 100
//!   connections, where CPU work per message, not the kernel, is the cost.
//!
//! ```sh
//! cargo bench -p c1m-benches                        # full pass
//! C1M_BENCH_QUICK=1 cargo bench -p c1m-benches      # quick pass
//! cargo bench -p c1m-benches -- 'echo-64B/ch02'     # one server
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use c1m_benches::{CONNECTION_COUNTS, CorePlan, MESSAGE_SIZE, Server, WORK_CONNECTIONS, WORK_US};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use loadgen::echo::{EchoConfig, RunLength};

/// Set (to anything but `0`) for a quick pass: shorter warm-up and
/// measurement, fewer messages per iteration.
const QUICK_ENV: &str = "C1M_BENCH_QUICK";

fn main() -> ExitCode {
    let quick = std::env::var(QUICK_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    // Decide the cores before anything pins this process.
    let cores = CorePlan::detect();
    eprintln!("building the servers (cargo build --release)...");
    let release_dir = match c1m_benches::build_release(&[]) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("c1m-benches: {e}");
            return ExitCode::from(2);
        }
    };
    let most_connections = CONNECTION_COUNTS.into_iter().max().unwrap_or(1);
    if let Err(e) = c1m_benches::raise_fd_limit(most_connections) {
        eprintln!("c1m-benches: {e}");
        return ExitCode::from(2);
    }
    // Pins this thread, and so every loadgen thread started from it.
    if let Some(core) = cores.load
        && let Err(e) = loadgen::cpu::pin_to_core(core)
    {
        eprintln!("c1m-benches: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "{} mode; {}",
        if quick { "quick" } else { "full" },
        cores.describe()
    );

    let plan = Plan { quick };
    let mut criterion = plan.configure(Criterion::default()).configure_from_args();
    for server in c1m_benches::available() {
        bench_echo(&mut criterion, plan, server, &release_dir, cores);
        if server.does_work() {
            bench_work(&mut criterion, plan, server, &release_dir, cores);
        }
    }
    criterion.final_summary();
    ExitCode::SUCCESS
}

/// How much to measure: a full pass, or a quick one.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
}

impl Plan {
    // ANCHOR: configure
    /// Few samples, seconds not minutes: a full pass over every server and
    /// connection count must fit in about a quarter of an hour on two cores.
    fn configure(self, criterion: Criterion) -> Criterion {
        let (warm_up, measure) = if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(3))
        };
        criterion
            .sample_size(10)
            .warm_up_time(warm_up)
            .measurement_time(measure)
    }
    // ANCHOR_END: configure

    /// Messages each connection sends in one iteration of a many-connection
    /// benchmark: about 20,000 messages in all (5,000 quick). Every
    /// iteration opens its connections afresh (outside the timed window),
    /// and the server's first messages on a new connection cost more
    /// (accept, a new thread or task, first buffers): many rounds keep that
    /// start-up a small part of the window at 100 connections. At 10,000 it
    /// is part of what is measured (one or two rounds), which keeps a pass
    /// short; `cargo xtask results` measures steady state after a warm-up.
    fn rounds(self, connections: usize) -> u64 {
        let (messages, at_least) = if self.quick { (5_000, 1) } else { (20_000, 2) };
        (messages / connections as u64).max(at_least)
    }
}

/// RTT at one connection, then messages/s at every larger connection count.
fn bench_echo(
    criterion: &mut Criterion,
    plan: Plan,
    server: &Server,
    release_dir: &Path,
    cores: CorePlan,
) {
    let process = match server.start(release_dir, cores, &[]) {
        Ok(process) => process,
        Err(e) => {
            eprintln!("skipping {}: {e}", server.name);
            return;
        }
    };
    let addr = process.addr();

    // ANCHOR: rtt
    // One message per iteration on one fresh connection: criterion's linear
    // sampling fits a line through (iterations, time), so the fixed cost
    // of each run's connect falls into the intercept and the slope is the
    // round trip.
    let mut rtt = criterion.benchmark_group(format!("rtt-{MESSAGE_SIZE}B"));
    rtt.throughput(Throughput::Elements(1));
    bench_messages(
        &mut rtt,
        BenchmarkId::from_parameter(server.name),
        &format!("{} at 1 connection", server.name),
        addr,
        1,
        1,
    );
    rtt.finish();
    // ANCHOR_END: rtt

    let mut echo = criterion.benchmark_group(format!("echo-{MESSAGE_SIZE}B"));
    // Each iteration runs for a good fraction of a second: equal-sized
    // samples, not criterion's growing ones, keep the pass short.
    echo.sampling_mode(SamplingMode::Flat);
    for connections in CONNECTION_COUNTS.into_iter().filter(|&c| c > 1) {
        bench_messages(
            &mut echo,
            BenchmarkId::new(server.name, connections),
            &format!("{} at {connections} connections", server.name),
            addr,
            connections,
            plan.rounds(connections),
        );
    }
    echo.finish();
    // Its summary line goes to stderr so a reader sees the syscall counts.
    if let Ok(shutdown) = process.shutdown()
        && let Some(summary) = shutdown.summary_line()
    {
        eprintln!("{}: {summary}", server.name);
    }
}

/// Messages/s with `--work-us` [`WORK_US`] at [`WORK_CONNECTIONS`] connections.
fn bench_work(
    criterion: &mut Criterion,
    plan: Plan,
    server: &Server,
    release_dir: &Path,
    cores: CorePlan,
) {
    let work = WORK_US.to_string();
    let process = match server.start(release_dir, cores, &["--work-us", &work]) {
        Ok(process) => process,
        Err(e) => {
            eprintln!("skipping {} --work-us {WORK_US}: {e}", server.name);
            return;
        }
    };
    let mut group = criterion.benchmark_group(format!("work-{WORK_US}us-c{WORK_CONNECTIONS}"));
    group.sampling_mode(SamplingMode::Flat);
    bench_messages(
        &mut group,
        BenchmarkId::from_parameter(server.name),
        &format!("{} --work-us {WORK_US}", server.name),
        process.addr(),
        WORK_CONNECTIONS,
        plan.rounds(WORK_CONNECTIONS),
    );
    group.finish();
}

// ANCHOR: bench_messages
/// One benchmark: an iteration is `rounds` messages on each of `connections`
/// connections, timed by loadgen's own clock from the moment all of them are
/// open, so connecting is not part of it.
fn bench_messages(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    label: &str,
    addr: SocketAddr,
    connections: usize,
    rounds: u64,
) {
    let per_iteration = connections as u64 * rounds;
    // A short run first: a server that cannot take this many connections
    // is reported and skipped instead of aborting the suite halfway.
    if let Err(failure) = echo_messages(addr, connections, 2 * connections as u64) {
        eprintln!("skipping {label}: {}", failure.why);
        return;
    }
    group.throughput(Throughput::Elements(per_iteration));
    let mut failed_runs = 0;
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let messages = iters * per_iteration;
            match echo_messages(addr, connections, messages) {
                Ok(elapsed) => elapsed,
                // Criterion cannot skip a benchmark halfway, and a panic
                // would end the whole suite. A run with errors (a server
                // stalling past loadgen's timeout) counts with the time it
                // took, stall included, and is reported below.
                Err(failure) => {
                    failed_runs += 1;
                    eprintln!("{label}: run with errors: {}", failure.why);
                    failure.elapsed
                }
            }
        });
    });
    if failed_runs > 0 {
        eprintln!(
            "WARNING: {label}: {failed_runs} run(s) had errors; its numbers include the stalls"
        );
    }
}
// ANCHOR_END: bench_messages

/// A run that did not complete cleanly: why, and how long it took anyway.
struct Failure {
    why: String,
    elapsed: Duration,
}

/// Sends `messages` 64-byte messages spread over `connections` and returns
/// how long they took once every connection was open.
fn echo_messages(addr: SocketAddr, connections: usize, messages: u64) -> Result<Duration, Failure> {
    let mut config = EchoConfig::new(addr);
    config.connections = connections;
    config.message_size = MESSAGE_SIZE;
    config.length = RunLength::Messages(messages);
    let started = Instant::now();
    let report = loadgen::echo::run(&config).map_err(|e| Failure {
        why: e.to_string(),
        elapsed: started.elapsed(),
    })?;
    let elapsed = Duration::from_secs_f64(report.seconds);
    if !report.ok {
        return Err(Failure {
            why: format!(
                "{} of {} connected, errors {:?}",
                report.connect.established, connections, report.errors
            ),
            elapsed,
        });
    }
    Ok(elapsed)
}
