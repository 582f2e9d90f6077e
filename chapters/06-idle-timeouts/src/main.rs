//! Chapter 06: chapter 05's server closes connections that move no data
//! for `--idle-timeout` seconds. Their deadlines live in a hashed timing
//! wheel beside the connection slab (O(1) schedule, touch and cancel, no
//! allocation per timer), and the wheel's next deadline is the `epoll_wait`
//! timeout. See book/src/ch06-idle-timeouts.md.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "chapter 06 uses epoll and eventfd, which exist only on Linux; run it on Linux (a VM or container is fine)"
);

mod buffer_pool;
mod connection;
mod idle;
mod server;
mod slab;
mod sys;
mod timer_wheel;
mod workers;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::server::{Config, Server};
use crate::sys::{Listener, SignalFd};
use crate::workers::{Offload, PoolKind};

/// An echo server: one event-loop thread for all I/O, a pool of worker
/// threads for the request work.
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

    /// Worker threads that run the --work-us work [default: one per core].
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

/// Listen queue length; the kernel silently caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

// ANCHOR: main
fn main() -> ExitCode {
    // First, before any other thread could exist: block SIGINT/SIGTERM and
    // receive them through a descriptor in the same epoll as the sockets.
    let signals = match SignalFd::for_shutdown_signals() {
        Ok(signals) => signals,
        Err(e) => return fail(1, format_args!("cannot set up signalfd: {e}")),
    };
    let args = Args::parse();
    let addr = match resolve(&args.addr) {
        Ok(addr) => addr,
        Err(e) => return fail(2, format_args!("cannot use --addr {}: {e}", args.addr)),
    };
    let listener = match Listener::bind(addr, LISTEN_BACKLOG) {
        Ok(listener) => listener,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot listen on {addr}: {e}; pick another --addr (port 0 picks a free one)"
                ),
            );
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(local_addr) => local_addr,
        Err(e) => return fail(1, format_args!("getsockname: {e}")),
    };
    let config = Config {
        work_per_newline: Duration::from_micros(args.work_us),
        max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        workers: args.workers.map_or_else(default_workers, usize::from),
        pool: args.pool,
        queue_depth: usize::try_from(args.queue_depth).unwrap_or(usize::MAX),
        offload: args.offload,
        offload_above: Duration::from_micros(args.offload_above_us),
        idle_timeout: args.idle_timeout,
    };
    let server = match Server::new(listener, signals, config) {
        Ok(server) => server,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot start the event loop and {} worker threads: {e}; \
                     try fewer --workers, or raise `ulimit -u`",
                    config.workers
                ),
            );
        }
    };

    // stdout is a pipe when a test or script runs us: flush so the line
    // arrives now, not when the buffer fills. (`writeln!`, not `println!`:
    // if whoever reads our stdout has gone away, that is no reason to panic.)
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {local_addr}").and_then(|()| stdout.flush());
    if let Some(idle) = server.idle_timeouts() {
        let _ = writeln!(
            stdout,
            "idle timeout {:?}: timing wheel of {} slots x {:?} (closes at most one tick late)",
            idle.timeout(),
            idle.slots(),
            idle.tick(),
        )
        .and_then(|()| stdout.flush());
    }

    let totals = match server.run() {
        Ok(totals) => totals,
        Err(e) => return fail(1, format_args!("event loop failed: {e}")),
    };
    let calls = sys::counts();
    let _ = writeln!(
        stdout,
        "summary: connections_served={} shed={} epoll_wait={} epoll_ctl={} read={} write={} accept={} requeued={} \
         workers={} jobs={} inline={} queue_full={} queue_high_water={} wakeups={} results_dropped={} \
         pool_hits={} pool_misses={} pool_high_water={} pool_in_use={} pool_dropped={} \
         reaped={} timer_ops={} timers_moved={}",
        totals.connections_served,
        totals.connections_shed,
        calls.epoll_wait,
        calls.epoll_ctl,
        calls.read,
        calls.write,
        calls.accept,
        totals.requeued,
        config.workers,
        totals.workers.jobs,
        totals.workers.inline,
        totals.workers.queue_full,
        totals.workers.queue_high_water,
        calls.eventfd_write,
        totals.results_dropped,
        totals.pool.hits,
        totals.pool.misses,
        totals.pool.high_water,
        totals.pool.in_use,
        totals.pool.dropped_over_cap,
        totals.connections_reaped,
        totals.timers.timer_ops(),
        totals.timers.moved,
    );
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
// ANCHOR_END: main

/// One worker per core: the work is CPU-bound, so more would only take
/// turns on the same cores (and the loop needs a share too).
fn default_workers() -> usize {
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
