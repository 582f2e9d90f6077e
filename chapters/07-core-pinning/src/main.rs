//! Chapter 07: chapter 06's event loop, once per core. `--threads N`
//! reactors, each with its own epoll instance, `SO_REUSEPORT` listener,
//! slab, buffer pool, worker pool and timer wheel: shared nothing. `--pin`
//! sets each reactor's CPU affinity. Main only waits for SIGINT/SIGTERM and
//! tells the reactors to stop. See book/src/ch07-core-pinning.md.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "chapter 07 uses epoll and eventfd, which exist only on Linux; run it on Linux (a VM or container is fine)"
);

mod buffer_pool;
mod connection;
mod idle;
mod reactors;
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
use crate::reactors::{Balance, ReactorInfo, Reactors};
use crate::server::{Config, Totals};
use crate::sys::{Listener, SignalFd};
use crate::workers::{Offload, PoolKind};

/// An echo server: one reactor (an event-loop thread for all I/O, with its
/// own pool of worker threads for the request work) per core.
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

    /// Reactors: event-loop threads, each with its own listener, epoll,
    /// slab, pools and timer wheel [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,

    /// Pin reactor i to the i-th CPU this process may use (round robin if
    /// there are more reactors than CPUs); its worker threads inherit it.
    #[arg(long)]
    pin: bool,

    /// How new connections are spread over the reactors.
    #[arg(long, value_enum, default_value_t = Balance::Reuseport)]
    balance: Balance,

    /// Worker threads per reactor that run the --work-us work [default:
    /// cores / reactors, at least 1].
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
    let listeners = match bind_listeners(addr, threads, args.balance) {
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
        offload: args.offload,
        offload_above: Duration::from_micros(args.offload_above_us),
        idle_timeout: args.idle_timeout,
        shared_listener: args.balance == Balance::Exclusive,
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
/// The listening sockets, one per reactor. With `SO_REUSEPORT` each reactor
/// gets its own, all bound to one port: port 0 picks a free port for the
/// first, and the others must bind *that* port (binding 0 again would give
/// each a port of its own). With `EPOLLEXCLUSIVE` there is one listener,
/// and every reactor watches it.
fn bind_listeners(
    addr: SocketAddr,
    reactors: usize,
    balance: Balance,
) -> io::Result<Vec<Arc<Listener>>> {
    // ANCHOR_END: bind_listeners_signature
    match balance {
        Balance::Reuseport => {
            let mut listeners = Vec::with_capacity(reactors);
            let mut addr = addr;
            for _ in 0..reactors {
                let listener = Listener::bind(addr, LISTEN_BACKLOG, true)?;
                addr = listener.local_addr()?;
                listeners.push(Arc::new(listener));
            }
            Ok(listeners)
        }
        Balance::Exclusive => {
            let shared = Arc::new(Listener::bind(addr, LISTEN_BACKLOG, false)?);
            Ok(vec![shared; reactors])
        }
    }
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
    let balance = match args.balance {
        Balance::Reuseport => "reuseport",
        Balance::Exclusive => "exclusive",
    };
    let allowed = sys::allowed_cpus().unwrap_or_default();
    writeln!(
        out,
        "reactors={} balance={balance} pinned={} workers_per_reactor={} cpus_allowed={allowed:?}",
        infos.len(),
        args.pin,
        config.workers,
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
/// connections each reactor accepted (the balance, measured).
fn print_summary(out: &mut impl Write, config: Config, per_reactor: &[Totals]) -> io::Result<()> {
    let mut totals = per_reactor[0];
    for reactor in &per_reactor[1..] {
        totals.add(reactor);
    }
    let calls = totals.calls;
    write!(
        out,
        "summary: connections_served={} shed={} epoll_wait={} epoll_ctl={} read={} write={} accept={} requeued={} \
         workers={} jobs={} inline={} queue_full={} queue_high_water={} wakeups={} results_dropped={} \
         pool_hits={} pool_misses={} pool_high_water={} pool_in_use={} pool_dropped={} \
         reaped={} timer_ops={} timers_moved={} reactors={}",
        totals.connections_served,
        totals.connections_shed,
        calls.epoll_wait,
        calls.epoll_ctl,
        calls.read,
        calls.write,
        calls.accept,
        totals.requeued,
        config.workers * per_reactor.len(),
        totals.workers.jobs,
        totals.workers.inline,
        totals.workers.queue_full,
        totals.workers.queue_high_water,
        sys::eventfd_writes(),
        totals.results_dropped,
        totals.pool.hits,
        totals.pool.misses,
        totals.pool.high_water,
        totals.pool.in_use,
        totals.pool.dropped_over_cap,
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
