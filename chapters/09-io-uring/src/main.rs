//! Chapter 09: chapter 08's server with its reactors on io_uring instead of
//! epoll. One ring per reactor; multishot accept; multishot receive into a
//! provided buffer ring, so an idle connection owns no buffer; sends batched
//! per turn; one `io_uring_enter` per turn. The rest is chapter 08's: a
//! supervisor starts `--procs P` worker processes (this binary again, with
//! the hidden `--worker N` flag), restarts one that dies, serves Prometheus
//! metrics (`--metrics`), and on SIGINT/SIGTERM prints one summary for all.
//! See book/src/ch09-io-uring.md.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "chapter 09 uses io_uring, which exists only on Linux (6.0 or newer for this chapter); run it on Linux (a VM is fine; many containers block io_uring)"
);

mod connection;
mod idle;
mod metrics;
mod op;
mod reactors;
mod ring;
mod server;
mod slab;
mod stats;
mod supervisor;
mod sys;
mod timer_wheel;
mod worker_process;
mod workers;

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::idle::IdleTimeouts;
use crate::server::Config;
use crate::supervisor::{Failure, Outcome, Settings, Supervisor};
use crate::sys::{DescriptorLimit, Listener, SignalFd};
use crate::worker_process::WorkerPlan;
use crate::workers::{Offload, PoolKind};

/// An echo server on io_uring for a million connections: a supervisor and
/// prefork worker processes, each with one reactor (a thread with its own
/// ring, and its own pool of worker threads for heavy request work) per
/// core it is given, all on one port.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU work (a busy loop) per newline received, done
    /// before echoing, on a worker thread.
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    // ANCHOR: prefork_flags
    /// Worker processes: a number, or `auto` (the fewest whose descriptor
    /// limits hold --conns; printed with the reason at start).
    #[arg(long, default_value = "auto")]
    procs: Count,

    /// Connections the server should be able to hold; `--procs auto` sizes
    /// the worker count from it.
    #[arg(long, default_value_t = 1_000_000)]
    conns: u64,

    /// Reactors (threads, each with its own listener, ring, buffer ring,
    /// slab, pool and timer wheel) per worker process: a number, or `auto`
    /// (the cores shared out among the workers, at least 1).
    #[arg(long, visible_alias = "threads", default_value = "auto")]
    reactors: Count,

    /// Serve Prometheus metrics on this address (`GET /metrics`). No
    /// authentication: anyone who can connect reads them; keep it on
    /// loopback or a private interface (a warning says so otherwise).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    /// Seconds between status lines on stderr (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    status_every: u64,

    /// Internal: run as worker N (the supervisor starts workers this way).
    #[arg(long, hide = true)]
    worker: Option<usize>,

    /// Internal: the descriptor of the shared stats memory (with --worker).
    #[arg(long, hide = true)]
    stats_fd: Option<RawFd>,
    // ANCHOR_END: prefork_flags
    /// Pin reactor i (counted over all workers) to the i-th CPU this process
    /// may use (round robin if there are more reactors than CPUs); its
    /// worker threads inherit it.
    #[arg(long)]
    pin: bool,

    /// Worker threads per reactor that run the --work-us work [default:
    /// cores / reactors of all processes, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,

    /// Which worker pool: threads sharing a channel (written in chapter 04;
    /// the default: it measured cheaper under load there) or rayon's
    /// ThreadPool.
    #[arg(long, value_enum, default_value_t = PoolKind::Hand)]
    pool: PoolKind,

    /// At most this many jobs handed to the workers and not yet answered;
    /// when it is full the loop stops reading clients until results come
    /// back (back-pressure across the hand-off).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    queue_depth: u32,

    /// Which reads' work goes to the worker pool: `auto` only work above
    /// --offload-above-us (cheaper work runs on the event loop, and with
    /// --work-us 0 the pool is never used), `always` every read (the price
    /// of the hand-off on its own), `never` none (chapter 03).
    #[arg(long, value_enum, default_value_t = Offload::Auto)]
    offload: Offload,

    /// With --offload auto, a read whose work (newlines × --work-us) costs
    /// more than this many microseconds goes to the pool. A hand-off costs a
    /// few microseconds of CPU (see the book), so work under this runs
    /// cheaper on the loop than the trip would cost.
    #[arg(long, default_value_t = 10)]
    offload_above_us: u64,

    /// Stop reading a client while this many bytes of its echo are unsent
    /// (back-pressure).
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_pending: u64,

    /// Close a connection that moves no data, in either direction, for this
    /// many seconds (fractions allowed, e.g. 0.5) [default: never].
    #[arg(long, value_name = "SECS", value_parser = parse_idle_timeout, allow_negative_numbers = true)]
    idle_timeout: Option<Duration>,

    // ANCHOR: uring_flags
    /// Let a kernel thread poll each ring's submission queue (SQPOLL):
    /// submitting then needs no syscall while it is awake, at the price of
    /// a kernel thread spinning on a CPU for up to --sqpoll-idle-ms after
    /// the last submission.
    #[arg(long)]
    sqpoll: bool,

    /// With --sqpoll: how long the kernel thread spins without work before
    /// it sleeps (and the next submission needs a wake-up syscall).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    sqpoll_idle_ms: u32,

    /// Submission queue slots per ring (a power of two; the completion
    /// queue gets four times as many).
    #[arg(long, default_value_t = 4096, value_parser = parse_power_of_two::<32768>)]
    ring_entries: u32,

    /// Receive buffers in each reactor's provided buffer ring (a power of
    /// two, at most 32768). Size it for one turn's receives, not for the
    /// connections: buffers come back within the turn that used them. When
    /// all are in use, receives end with ENOBUFS and are re-armed once
    /// buffers come back. More buffers than needed cost cache and TLB
    /// misses: the ring hands them out in rotation.
    #[arg(long, default_value_t = 256, value_parser = parse_power_of_two::<32768>)]
    recv_buffers: u32,

    /// Bytes per receive buffer: the most one receive completion carries.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    recv_buffer_size: u32,
    // ANCHOR_END: uring_flags
}

/// A power of two from 1 to `MAX`.
fn parse_power_of_two<const MAX: u32>(value: &str) -> Result<u32, String> {
    let n: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number"))?;
    if n == 0 || n > MAX || !n.is_power_of_two() {
        return Err(format!("must be a power of two from 1 to {MAX}"));
    }
    Ok(n)
}

// ANCHOR: parse_idle_timeout
/// The longest `--idle-timeout`: a year. Deadlines are `now + timeout`, and
/// an `Instant` that far out must still be representable.
const MAX_IDLE_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `--idle-timeout SECS`: a positive, finite number of seconds, at least a
/// millisecond (the wheel's finest tick). clap turns an `Err` into its usual
/// message and exit code 2.
fn parse_idle_timeout(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds (e.g. 30 or 0.5)"))?;
    if !(0.001..=MAX_IDLE_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "must be between 0.001 and {MAX_IDLE_TIMEOUT_SECS} seconds; leave the flag out to never close idle connections"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}
// ANCHOR_END: parse_idle_timeout

/// A positive number or `auto` (`--procs`, `--reactors`).
#[derive(Clone, Copy, Debug)]
struct Count(Option<usize>);

impl FromStr for Count {
    type Err = String;

    fn from_str(text: &str) -> Result<Count, String> {
        if text == "auto" {
            return Ok(Count(None));
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Count(Some(n))),
            _ => Err(format!(
                "expected a positive number or `auto`, got `{text}`"
            )),
        }
    }
}

/// Listen queue length per reactor; the kernel silently caps it at
/// net.core.somaxconn. A million clients connecting at once need it long.
const LISTEN_BACKLOG: i32 = 65535;

// ANCHOR: main
fn main() -> ExitCode {
    // First, before any other thread could exist: block the signals we
    // handle in this thread, so every thread spawned later inherits the
    // mask, and read them from a signalfd. The supervisor also takes
    // SIGCHLD that way: it says a worker exited.
    let is_worker = std::env::args().any(|arg| arg == "--worker");
    let signals = if is_worker {
        SignalFd::for_shutdown_signals()
    } else {
        SignalFd::for_shutdown_and_child_signals()
    };
    let signals = match signals {
        Ok(signals) => signals,
        Err(e) => return fail(1, format_args!("cannot set up signalfd: {e}")),
    };
    let args = Args::parse();
    let addr = match resolve(&args.addr) {
        Ok(addr) => addr,
        Err(e) => return fail(2, format_args!("cannot use --addr {}: {e}", args.addr)),
    };
    if let (Some(index), Some(stats_fd)) = (args.worker, args.stats_fd) {
        return run_worker(&args, index, stats_fd, addr, signals);
    }
    run_supervisor(&args, addr, signals)
}
// ANCHOR_END: main

// ANCHOR: run_worker
/// A worker process: chapter 07's server, counting into shared memory.
fn run_worker(
    args: &Args,
    index: usize,
    stats_fd: RawFd,
    addr: SocketAddr,
    signals: SignalFd,
) -> ExitCode {
    let reactors = args.reactors.0.unwrap_or(1);
    let plan = WorkerPlan {
        index,
        stats_fd,
        addr,
        reactors,
        pin: args.pin,
        config: Config {
            work_per_newline: Duration::from_micros(args.work_us),
            max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
            workers: args
                .workers
                .map_or_else(|| (available_cores() / reactors).max(1), usize::from),
            pool: args.pool,
            queue_depth: usize::try_from(args.queue_depth).unwrap_or(usize::MAX),
            offload: args.offload,
            offload_above: Duration::from_micros(args.offload_above_us),
            idle_timeout: args.idle_timeout,
            ring_entries: args.ring_entries,
            // Both parsed as powers of two no larger than 32768.
            recv_buffers: u16::try_from(args.recv_buffers).unwrap_or(1 << 15),
            recv_buffer_size: args.recv_buffer_size,
            sqpoll: sqpoll(args),
        },
    };
    match worker_process::run(plan, signals) {
        Ok(()) => ExitCode::SUCCESS,
        // A usage problem (the port, a limit): exit 2, which the supervisor
        // passes on if it happens while starting.
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => fail(
            2,
            format_args!("worker {index}: cannot listen on {addr}: {e}"),
        ),
        Err(e) => fail(1, format_args!("worker {index}: {e}")),
    }
}
// ANCHOR_END: run_worker

// ANCHOR: run_supervisor
/// The supervisor: choose how many workers, start them, watch them, and
/// print `listening on` first and `summary:` last on stdout.
fn run_supervisor(args: &Args, addr: SocketAddr, signals: SignalFd) -> ExitCode {
    let metrics = match args.metrics.as_deref().map(resolve).transpose() {
        Ok(metrics) => metrics,
        Err(e) => return fail(2, format_args!("cannot use --metrics: {e}")),
    };
    // Before starting anything: is io_uring usable here at all? (Each
    // worker would fail the same way; say why once, and exit 2.)
    if let Err(cause) = ring::probe(sqpoll(args)) {
        return fail(2, format_args!("{cause}"));
    }
    let limit = match DescriptorLimit::get() {
        Ok(limit) => limit,
        Err(e) => return fail(1, format_args!("getrlimit: {e}")),
    };
    let plan = supervisor::choose_plan(
        args.procs.0,
        args.reactors.0,
        args.conns,
        limit,
        available_cores(),
    );
    if plan.procs > supervisor::MAX_PROCS {
        return fail(
            2,
            format_args!(
                "--procs {} is more than {} workers; use fewer (or raise `ulimit -Hn` so \
                 each holds more)",
                plan.procs,
                supervisor::MAX_PROCS
            ),
        );
    }
    eprintln!(
        "prefork: {} worker process(es) x {} reactor(s): {}",
        plan.procs, plan.reactors, plan.reason
    );
    let settings = Settings {
        addr,
        plan: plan.clone(),
        worker_args: worker_args(args, &plan),
        metrics,
        status_every: (args.status_every > 0).then(|| Duration::from_secs(args.status_every)),
    };
    let mut stdout = io::stdout();
    let outcome = Supervisor::new(settings.clone(), signals).and_then(|mut supervisor| {
        supervisor.start()?;
        if let Some(metrics_addr) = supervisor.metrics_addr() {
            eprintln!("metrics on http://{metrics_addr}/metrics");
        }
        // stdout is a pipe when a test or script runs us: flush so the
        // line arrives now. (`writeln!`, not `println!`: a reader that has
        // gone away is no reason to panic.)
        let _ = writeln!(stdout, "listening on {}", supervisor.addr())
            .and_then(|()| describe(&mut stdout, args, &settings))
            .and_then(|()| stdout.flush());
        supervisor.run()
    });
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(Failure::Usage(message)) => return fail(2, format_args!("{message}")),
        Err(Failure::Other(message)) => return fail(1, format_args!("{message}")),
    };
    let _ = print_summary(&mut stdout, &settings, &outcome).and_then(|()| stdout.flush());
    ExitCode::SUCCESS
}
// ANCHOR_END: run_supervisor

/// Chapter 07's flags, as each worker gets them on its command line. The
/// default `--workers` is computed here, where the number of processes is
/// known: the cores shared out among every reactor of every process.
fn worker_args(args: &Args, plan: &supervisor::Plan) -> Vec<String> {
    let threads_per_reactor = args.workers.map_or_else(
        || (available_cores() / (plan.procs * plan.reactors)).max(1),
        usize::from,
    );
    let mut out = vec![
        "--work-us".to_string(),
        args.work_us.to_string(),
        "--max-pending".to_string(),
        args.max_pending.to_string(),
        "--queue-depth".to_string(),
        args.queue_depth.to_string(),
        "--offload".to_string(),
        match args.offload {
            Offload::Auto => "auto",
            Offload::Always => "always",
            Offload::Never => "never",
        }
        .to_string(),
        "--offload-above-us".to_string(),
        args.offload_above_us.to_string(),
        "--pool".to_string(),
        match args.pool {
            PoolKind::Hand => "hand",
            PoolKind::Rayon => "rayon",
        }
        .to_string(),
    ];
    if args.pin {
        out.push("--pin".to_string());
    }
    out.extend(["--workers".to_string(), threads_per_reactor.to_string()]);
    out.extend([
        "--ring-entries".to_string(),
        args.ring_entries.to_string(),
        "--recv-buffers".to_string(),
        args.recv_buffers.to_string(),
        "--recv-buffer-size".to_string(),
        args.recv_buffer_size.to_string(),
    ]);
    if args.sqpoll {
        out.extend([
            "--sqpoll".to_string(),
            "--sqpoll-idle-ms".to_string(),
            args.sqpoll_idle_ms.to_string(),
        ]);
    }
    if let Some(timeout) = args.idle_timeout {
        out.extend([
            "--idle-timeout".to_string(),
            timeout.as_secs_f64().to_string(),
        ]);
    }
    out
}

// ANCHOR: listeners
/// A worker's listening sockets, one per reactor, each with its own
/// `SO_REUSEPORT` listener bound to the supervisor's port (which the
/// supervisor holds with the option too: every member of the port's group
/// must have it). Each reactor's ring arms one multishot accept on its own.
fn bind_listeners(addr: SocketAddr, reactors: usize) -> io::Result<Vec<Arc<Listener>>> {
    (0..reactors)
        .map(|_| Listener::bind(addr, LISTEN_BACKLOG, true).map(Arc::new))
        .collect()
}
// ANCHOR_END: listeners

// ANCHOR: plan_pinning
/// The CPU for each reactor with `--pin` (reactor i, counted from `first`
/// over all workers, gets the i-th CPU we are allowed to use, round
/// robin), or no pinning.
fn plan_pinning(reactors: usize, pin: bool, first: usize) -> io::Result<Vec<Option<usize>>> {
    if !pin {
        return Ok(vec![None; reactors]);
    }
    let allowed = sys::allowed_cpus()?;
    if allowed.is_empty() {
        return Err(io::Error::other("the affinity mask is empty"));
    }
    Ok((first..first + reactors)
        .map(|i| Some(allowed[i % allowed.len()]))
        .collect())
}
// ANCHOR_END: plan_pinning

/// The start-up lines after `listening on`: the processes and reactors,
/// their rings, and the idle-timeout wheel.
fn describe(out: &mut impl Write, args: &Args, settings: &Settings) -> io::Result<()> {
    let allowed = sys::allowed_cpus().unwrap_or_default();
    writeln!(
        out,
        "workers={} reactors_per_worker={} pinned={} cpus_allowed={allowed:?}",
        settings.plan.procs, settings.plan.reactors, args.pin,
    )?;
    writeln!(
        out,
        "io_uring: {} sq entries, {} recv buffers x {} bytes per reactor, sqpoll={}, offload={:?} above {}us",
        args.ring_entries,
        args.recv_buffers,
        args.recv_buffer_size,
        args.sqpoll,
        args.offload,
        args.offload_above_us,
    )?;
    if let Some(timeout) = args.idle_timeout {
        let wheel = IdleTimeouts::new(timeout, Instant::now());
        writeln!(
            out,
            "idle timeout {:?}: a timing wheel per reactor, {} slots x {:?} (closes at most one tick late)",
            wheel.timeout(),
            wheel.slots(),
            wheel.tick(),
        )?;
    }
    Ok(())
}

// ANCHOR: summary
/// The summary line: every worker's counters added up (dead incarnations
/// included), then how many connections each worker accepted (its last
/// incarnation): the balance across processes, measured.
fn print_summary(out: &mut impl Write, settings: &Settings, outcome: &Outcome) -> io::Result<()> {
    let total = &outcome.total;
    write!(
        out,
        "summary: connections_served={} shed={} reaped={} io_uring_enter={} sqes={} \
         completions={} cq_overflow={} sq_full={} recv_armed={} enobufs={} short_sends={} \
         backpressure_stops={} stale_completions={} accept={} jobs={} inline={} queue_full={} \
         queue_high_water={} results_dropped={} timer_ops={} timers_moved={} bytes_received={} \
         bytes_sent={} loop_wakeups={} workers={} reactors={} restarts={} shutdown_dropped={} \
         shutdown_dropped_bytes={}",
        total.accepted,
        total.shed,
        total.reaped,
        total.io_uring_enter,
        total.sqes,
        total.completions,
        total.cq_overflow,
        total.sq_full,
        total.recv_armed,
        total.enobufs,
        total.short_sends,
        total.backpressure_stops,
        total.stale_completions,
        total.accept_calls,
        total.jobs,
        total.inline,
        total.queue_full,
        total.queue_high_water,
        total.results_dropped,
        total.timer_ops,
        total.timers_moved,
        total.bytes_received,
        total.bytes_sent,
        total.wakeups,
        settings.plan.procs,
        settings.plan.procs * settings.plan.reactors,
        outcome.restarts,
        total.shutdown_dropped,
        total.shutdown_dropped_bytes,
    )?;
    for (index, worker) in outcome.per_worker.iter().enumerate() {
        write!(out, " worker{index}_accepted={}", worker.accepted)?;
    }
    writeln!(out)
}
// ANCHOR_END: summary

/// `--sqpoll`: how long the kernel thread may idle before it sleeps.
fn sqpoll(args: &Args) -> Option<Duration> {
    args.sqpoll
        .then(|| Duration::from_millis(u64::from(args.sqpoll_idle_ms)))
}

/// The CPUs this process may use.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the name resolved to no address"))
}

fn fail(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
