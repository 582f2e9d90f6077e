//! Chapter 09: chapter 07's reactors on io_uring instead of epoll. One ring
//! per reactor; multishot accept; multishot receive into a provided buffer
//! ring, so an idle connection owns no buffer; sends batched per turn; one
//! `io_uring_enter` per turn. One process (`--threads N` reactors), not
//! chapter 08's prefork supervisor. See book/src/ch09-io-uring.md.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "chapter 09 uses io_uring, which exists only on Linux (6.0 or newer for this chapter); run it on Linux (a VM is fine; many containers block io_uring)"
);

mod connection;
mod idle;
mod op;
mod reactors;
mod ring;
mod server;
mod slab;
mod sys;
mod timer_wheel;
mod workers;

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::idle::IdleTimeouts;
use crate::reactors::{ReactorInfo, Reactors};
use crate::server::{Config, Totals};
use crate::sys::{Listener, SignalFd};
use crate::workers::{Offload, PoolKind};

/// An echo server on io_uring: one reactor (a thread with its own ring, and
/// its own pool of worker threads for heavy request work) per core.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU work (a busy loop) per newline received, done
    /// before echoing: inline on the reactor, or on a worker (--offload).
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    /// Where the --work-us work runs: `auto` hands a receive to the worker
    /// pool only when newlines x work-us exceeds --offload-above-us,
    /// `always` hands every receive over, `never` runs all of it inline.
    #[arg(long, value_enum, default_value_t = Offload::Auto)]
    offload: Offload,

    /// With --offload auto: the work (in microseconds) above which a
    /// receive goes to the pool instead of running on the reactor.
    #[arg(long, value_name = "US", default_value_t = 10)]
    offload_above_us: u64,

    /// Reactors: threads, each with its own ring, listener, slab, pool and
    /// timer wheel [default: one per core].
    #[arg(long, visible_alias = "reactors", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,

    /// Pin reactor i to the i-th CPU this process may use (round robin if
    /// there are more reactors than CPUs); its worker threads inherit it.
    #[arg(long)]
    pin: bool,

    /// Worker threads per reactor that run offloaded --work-us work
    /// [default: cores / reactors, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,

    /// Which worker pool: threads sharing a channel, or rayon's ThreadPool.
    #[arg(long, value_enum, default_value_t = PoolKind::Hand)]
    pool: PoolKind,

    /// At most this many jobs handed to the workers and not yet answered;
    /// when it is full the reactor does the work itself.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    queue_depth: u32,

    /// Stop receiving from a client while this many bytes of its echo are
    /// unsent (back-pressure).
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_pending: u64,

    /// Close a connection that moves no data, in either direction, for this
    /// many seconds (fractions allowed, e.g. 0.5) [default: never].
    #[arg(long, value_name = "SECS", value_parser = parse_idle_timeout, allow_negative_numbers = true)]
    idle_timeout: Option<Duration>,

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

/// Listen queue length; the kernel silently caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

// ANCHOR: main
fn main() -> ExitCode {
    // First, before any other thread could exist: block SIGINT/SIGTERM in
    // this thread, so every thread spawned later inherits the mask. Only
    // main reads the signalfd; the reactors hear of it from main.
    let signals = match SignalFd::for_shutdown_signals() {
        Ok(signals) => signals,
        Err(e) => return fail(1, format_args!("cannot set up signalfd: {e}")),
    };
    let args = Args::parse();
    let addr = match resolve(&args.addr) {
        Ok(addr) => addr,
        Err(e) => return fail(2, format_args!("cannot use --addr {}: {e}", args.addr)),
    };
    let cores = available_cores();
    let threads = args.threads.map_or(cores, usize::from);
    let cpus = match plan_pinning(threads, args.pin) {
        Ok(cpus) => cpus,
        Err(e) => {
            return fail(
                1,
                format_args!("cannot read this process's CPU affinity: {e}"),
            );
        }
    };
    // Before binding anything: is io_uring usable here at all?
    let sqpoll = args
        .sqpoll
        .then(|| Duration::from_millis(u64::from(args.sqpoll_idle_ms)));
    if let Err(cause) = ring::probe(sqpoll) {
        return fail(2, format_args!("{cause}"));
    }
    let listeners = match bind_listeners(addr, threads) {
        Ok(listeners) => listeners,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot listen on {addr}: {e}; pick another --addr (port 0 picks a free one)"
                ),
            );
        }
    };
    let local_addr = match listeners[0].local_addr() {
        Ok(local_addr) => local_addr,
        Err(e) => return fail(1, format_args!("getsockname: {e}")),
    };
    let config = Config {
        work_per_newline: Duration::from_micros(args.work_us),
        max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        workers: args
            .workers
            .map_or_else(|| (cores / threads).max(1), usize::from),
        pool: args.pool,
        queue_depth: usize::try_from(args.queue_depth).unwrap_or(usize::MAX),
        idle_timeout: args.idle_timeout,
        offload: args.offload,
        offload_above: Duration::from_micros(args.offload_above_us),
        ring_entries: args.ring_entries,
        // Both parsed as powers of two no larger than 32768.
        recv_buffers: u16::try_from(args.recv_buffers).unwrap_or(1 << 15),
        recv_buffer_size: args.recv_buffer_size,
        sqpoll,
    };
    let reactors = match Reactors::start(listeners, &cpus, config) {
        Ok(reactors) => reactors,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot start {threads} reactors with {} worker threads each: {e}; \
                     try fewer --threads or --workers, or raise `ulimit -u`",
                    config.workers
                ),
            );
        }
    };

    // stdout is a pipe when a test or script runs us: flush so the line
    // arrives now, not when the buffer fills. (`writeln!`, not `println!`:
    // if whoever reads our stdout has gone away, that is no reason to panic.)
    let mut stdout = io::stdout();
    let _ = writeln!(stdout, "listening on {local_addr}").and_then(|()| stdout.flush());
    let _ = describe(&mut stdout, &args, config, reactors.infos()).and_then(|()| stdout.flush());

    // Main's whole job from here: wait for a signal (or a reactor's death).
    let reactor_died = match signals.wait_or(reactors.died_fd()) {
        Ok(signal) => signal.is_none(),
        Err(e) => {
            eprintln!("waiting for signals: {e}; stopping");
            true
        }
    };
    reactors.stop();
    let per_reactor = match reactors.join() {
        Ok(per_reactor) => per_reactor,
        Err(e) => return fail(1, format_args!("a reactor failed: {e}")),
    };
    if reactor_died {
        return fail(1, format_args!("a reactor stopped unexpectedly"));
    }
    let _ = print_summary(&mut stdout, config, &per_reactor).and_then(|()| stdout.flush());
    ExitCode::SUCCESS
}
// ANCHOR_END: main

// ANCHOR: listeners
// ANCHOR: listeners_1
// ANCHOR_END: listeners_1
// ANCHOR: bind_listeners_signature
/// The listening sockets, one per reactor, all bound to one port with
/// `SO_REUSEPORT`: port 0 picks a free port for the first, and the others
/// must bind *that* port (binding 0 again would give each its own).
fn bind_listeners(addr: SocketAddr, reactors: usize) -> io::Result<Vec<Arc<Listener>>> {
    // ANCHOR_END: bind_listeners_signature
    let mut listeners = Vec::with_capacity(reactors);
    let mut addr = addr;
    for _ in 0..reactors {
        let listener = Listener::bind(addr, LISTEN_BACKLOG, true)?;
        addr = listener.local_addr()?;
        listeners.push(Arc::new(listener));
    }
    Ok(listeners)
}
// ANCHOR: listeners_2
// ANCHOR_END: listeners_2
// ANCHOR_END: listeners

// ANCHOR: plan_pinning
// ANCHOR: plan_pinning_1
// ANCHOR_END: plan_pinning_1
// ANCHOR: plan_pinning_signature
/// The CPU for each reactor with `--pin` (reactor i gets the i-th CPU we are
/// allowed to use, round robin), or no pinning.
fn plan_pinning(reactors: usize, pin: bool) -> io::Result<Vec<Option<usize>>> {
    // ANCHOR_END: plan_pinning_signature
    if !pin {
        return Ok(vec![None; reactors]);
    }
    let allowed = sys::allowed_cpus()?;
    if allowed.is_empty() {
        return Err(io::Error::other("the affinity mask is empty"));
    }
    Ok((0..reactors)
        .map(|i| Some(allowed[i % allowed.len()]))
        .collect())
}
// ANCHOR: plan_pinning_2
// ANCHOR_END: plan_pinning_2
// ANCHOR_END: plan_pinning

/// The start-up lines after `listening on`: the reactors, where they run,
/// and the idle-timeout wheel.
fn describe(
    out: &mut impl Write,
    args: &Args,
    config: Config,
    infos: &[ReactorInfo],
) -> io::Result<()> {
    let allowed = sys::allowed_cpus().unwrap_or_default();
    writeln!(
        out,
        "reactors={} pinned={} workers_per_reactor={} cpus_allowed={allowed:?}",
        infos.len(),
        args.pin,
        config.workers,
    )?;
    writeln!(
        out,
        "io_uring: {} sq entries, {} recv buffers x {} bytes per reactor, sqpoll={}, offload={:?} above {:?}",
        config.ring_entries,
        config.recv_buffers,
        config.recv_buffer_size,
        args.sqpoll,
        config.offload,
        config.offload_above,
    )?;
    for info in infos {
        match info.cpu {
            Some(cpu) => writeln!(
                out,
                "reactor {}: thread {} pinned to CPU {cpu}",
                info.index, info.thread_id
            )?,
            None => writeln!(
                out,
                "reactor {}: thread {} not pinned",
                info.index, info.thread_id
            )?,
        }
    }
    if let Some(timeout) = config.idle_timeout {
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
/// The summary line: every reactor's counters added up, then how many
/// connections each reactor accepted.
fn print_summary(out: &mut impl Write, config: Config, per_reactor: &[Totals]) -> io::Result<()> {
    let mut totals = per_reactor[0];
    for reactor in &per_reactor[1..] {
        totals.add(reactor);
    }
    let ring = totals.ring;
    write!(
        out,
        "summary: connections_served={} shed={} io_uring_enter={} sqes={} completions={} \
         cq_overflow={} sq_full={} recv_armed={} enobufs={} short_sends={} backpressure_stops={} \
         stale_completions={} accept={} inline_work={} workers={} jobs={} queue_full={} \
         queue_high_water={} wakeups={} results_dropped={} reaped={} timer_ops={} \
         timers_moved={} reactors={}",
        totals.connections_served,
        totals.connections_shed,
        ring.enters,
        ring.submitted,
        ring.completions,
        ring.cq_overflow,
        ring.sq_full,
        totals.recv_armed,
        totals.enobufs,
        totals.short_sends,
        totals.backpressure_stops,
        totals.stale_completions,
        totals.accept_calls,
        totals.inline_work,
        config.workers * per_reactor.len(),
        totals.workers.jobs,
        totals.workers.queue_full,
        totals.workers.queue_high_water,
        sys::eventfd_writes(),
        totals.results_dropped,
        totals.connections_reaped,
        totals.timers.timer_ops(),
        totals.timers.moved,
        per_reactor.len(),
    )?;
    for (index, reactor) in per_reactor.iter().enumerate() {
        write!(
            out,
            " reactor{index}_accepted={}",
            reactor.connections_served
        )?;
    }
    writeln!(out)
}
// ANCHOR_END: summary

/// The CPUs this process may use: the default number of reactors.
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
