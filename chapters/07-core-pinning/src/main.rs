//! Chapter 07: chapter 06's event loop, once per core. `--reactors N`
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
mod flags;
mod idle;
mod listeners;
mod reactors;
mod server;
mod slab;
mod sys;
mod timer_wheel;
mod workers;

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Instant;

use clap::Parser;

use crate::flags::{ReactorFlags, available_cores, flag_name};
use crate::idle::IdleTimeouts;
use crate::listeners::{bind_listeners, plan_pinning};
use crate::reactors::{ReactorInfo, Reactors};
use crate::server::{Config, Totals};
use crate::sys::SignalFd;

/// An echo server: one reactor (an event-loop thread for all I/O, with its
/// own pool of worker threads for the request work) per core.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Reactors (event-loop threads, each with its own listener, epoll,
    /// slab, pools and timer wheel): a number, or `auto` (one per core).
    #[arg(long, visible_alias = "threads", default_value = "auto")]
    reactors: Count,

    #[command(flatten)]
    reactor: ReactorFlags,
}

/// A positive number or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    let reactors = args.reactors.0.unwrap_or_else(available_cores);
    let cpus = match plan_pinning(reactors, args.reactor.pin, 0) {
        Ok(cpus) => cpus,
        Err(e) => {
            return fail(
                1,
                format_args!("cannot read this process's CPU affinity: {e}"),
            );
        }
    };
    let listeners = match bind_listeners(addr, reactors, args.reactor.balance) {
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
    let config = args.reactor.config(reactors);
    let running = match Reactors::start(listeners, &cpus, config) {
        Ok(running) => running,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot start {reactors} reactors with {} worker threads each: {e}; \
                     try fewer --reactors or --workers, or raise `ulimit -u`",
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
    let _ =
        describe(&mut stdout, &args.reactor, config, running.infos()).and_then(|()| stdout.flush());

    // Main's whole job from here: wait for a signal (or a reactor's death).
    let reactor_died = match signals.wait_or(running.died_fd()) {
        Ok(signal) => signal.is_none(),
        Err(e) => {
            eprintln!("waiting for signals: {e}; stopping");
            true
        }
    };
    running.stop();
    let per_reactor = match running.join() {
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

/// The start-up lines after `listening on`: the reactors, where they run,
/// and the idle-timeout wheel.
fn describe(
    out: &mut impl Write,
    flags: &ReactorFlags,
    config: Config,
    infos: &[ReactorInfo],
) -> io::Result<()> {
    let balance = flag_name(&flags.balance);
    let allowed = sys::allowed_cpus().unwrap_or_default();
    writeln!(
        out,
        "reactors={} balance={balance} pinned={} workers_per_reactor={} cpus_allowed={allowed:?}",
        infos.len(),
        flags.pin,
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

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the name resolved to no address"))
}

fn fail(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
