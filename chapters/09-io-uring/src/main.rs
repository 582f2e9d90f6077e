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
mod flags;
mod idle;
mod listeners;
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
use std::time::{Duration, Instant};

use clap::Parser;

use crate::flags::{ReactorFlags, available_cores, flag_name};
use crate::idle::IdleTimeouts;
use crate::supervisor::{Failure, Outcome, Settings, Supervisor};
use crate::sys::{DescriptorLimit, SignalFd};
use crate::worker_process::{WorkerFlags, WorkerPlan};

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

    #[command(flatten)]
    worker: WorkerFlags,
    // ANCHOR_END: prefork_flags
    #[command(flatten)]
    reactor: ReactorFlags,
}

/// A positive number or `auto` (`--procs`, `--reactors`).
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
    // Parsing starts no thread. Then, before any other thread could exist:
    // block the signals we handle in this thread, so every thread spawned
    // later inherits the mask, and read them from a signalfd. The
    // supervisor also takes SIGCHLD that way: it says a worker exited.
    let args = Args::parse();
    let worker = args.worker.index.zip(args.worker.stats_fd);
    let signals = if worker.is_some() {
        SignalFd::for_shutdown_signals()
    } else {
        SignalFd::for_shutdown_and_child_signals()
    };
    let signals = match signals {
        Ok(signals) => signals,
        Err(e) => return fail(1, format_args!("cannot set up signalfd: {e}")),
    };
    let addr = match resolve(&args.addr) {
        Ok(addr) => addr,
        Err(e) => return fail(2, format_args!("cannot use --addr {}: {e}", args.addr)),
    };
    if let Some((index, stats_fd)) = worker {
        return run_worker(&args, index, stats_fd, addr, signals);
    }
    run_supervisor(&args, addr, signals)
}
// ANCHOR_END: main

// ANCHOR: run_worker
/// A worker process: the ring reactors, counting into shared memory.
fn run_worker(
    args: &Args,
    index: usize,
    stats_fd: RawFd,
    addr: SocketAddr,
    signals: SignalFd,
) -> ExitCode {
    // The supervisor always passes a number (see `WorkerCommand::argv`).
    let Some(reactors) = args.reactors.0 else {
        return fail(2, format_args!("--worker needs --reactors N"));
    };
    let plan = WorkerPlan {
        index,
        stats_fd,
        addr,
        reactors,
        pin: args.reactor.pin,
        config: args.reactor.config(reactors),
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
    if let Err(cause) = ring::probe(args.reactor.sqpoll()) {
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
    // `--workers`' default needs every process's reactors, which only the
    // supervisor knows: decide it here, and pass the number on.
    let mut flags = args.reactor.clone();
    let workers = flags.workers_per_reactor(plan.procs * plan.reactors);
    flags.workers = Some(u16::try_from(workers).unwrap_or(u16::MAX));
    let settings = Settings {
        addr,
        plan: plan.clone(),
        flags,
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

/// The start-up lines after `listening on`: the processes and reactors,
/// their rings, and the idle-timeout wheel.
fn describe(out: &mut impl Write, args: &Args, settings: &Settings) -> io::Result<()> {
    let allowed = sys::allowed_cpus().unwrap_or_default();
    writeln!(
        out,
        "workers={} reactors_per_worker={} pinned={} cpus_allowed={allowed:?}",
        settings.plan.procs, settings.plan.reactors, args.reactor.pin,
    )?;
    let flags = &settings.flags;
    writeln!(
        out,
        "io_uring: {} sq entries, {} recv buffers x {} bytes per reactor, sqpoll={}, offload={} above {}us",
        flags.ring_entries,
        flags.recv_buffers,
        flags.recv_buffer_size,
        flags.sqpoll,
        flag_name(&flags.offload),
        flags.offload_above_us,
    )?;
    if let Some(timeout) = args.reactor.idle_timeout {
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
/// included; each counter with a summary key in `stats.rs`'s table), the
/// processes and reactors, then how many connections each worker accepted
/// (its last incarnation): the balance across processes, measured.
fn print_summary(out: &mut impl Write, settings: &Settings, outcome: &Outcome) -> io::Result<()> {
    write!(out, "summary:")?;
    for counter in stats::COUNTERS {
        if let Some(key) = counter.summary {
            write!(out, " {key}={}", (counter.value)(&outcome.total))?;
        }
    }
    write!(
        out,
        " workers={} reactors={} restarts={}",
        settings.plan.procs,
        settings.plan.procs * settings.plan.reactors,
        outcome.restarts,
    )?;
    for (index, worker) in outcome.per_worker.iter().enumerate() {
        write!(out, " worker{index}_accepted={}", worker.accepted)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_command_line_parses_back_to_what_the_supervisor_meant() {
        let user = Args::try_parse_from([
            "ch09",
            "--pin",
            "--pool",
            "rayon",
            "--offload",
            "always",
            "--workers",
            "3",
            "--idle-timeout",
            "0.5",
            "--work-us",
            "7",
            "--queue-depth",
            "9",
            "--offload-above-us",
            "11",
            "--max-pending",
            "4096",
            "--sqpoll",
            "--sqpoll-idle-ms",
            "250",
            "--ring-entries",
            "1024",
            "--recv-buffers",
            "64",
            "--recv-buffer-size",
            "2048",
        ])
        .unwrap();
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let command = worker_process::WorkerCommand {
            index: 2,
            stats_fd: 5,
            addr,
            reactors: 4,
            flags: &user.reactor,
        };
        let argv = std::iter::once("ch09".to_string()).chain(command.argv());
        let worker = Args::try_parse_from(argv).unwrap();
        assert_eq!(worker.reactor, user.reactor);
        assert_eq!(worker.worker.index, Some(2));
        assert_eq!(worker.worker.stats_fd, Some(5));
        assert_eq!(worker.reactors, Count(Some(4)));
        assert_eq!(resolve(&worker.addr).unwrap(), addr);
    }

    #[test]
    fn the_defaults_parse_back_too() {
        let user = Args::try_parse_from(["ch09"]).unwrap();
        let command = worker_process::WorkerCommand {
            index: 0,
            stats_fd: 3,
            addr: "127.0.0.1:1".parse().unwrap(),
            reactors: 1,
            flags: &user.reactor,
        };
        let argv = std::iter::once("ch09".to_string()).chain(command.argv());
        assert_eq!(Args::try_parse_from(argv).unwrap().reactor, user.reactor);
    }

    #[test]
    fn worker_and_stats_fd_come_together() {
        assert!(Args::try_parse_from(["ch09", "--worker", "1"]).is_err());
        assert!(Args::try_parse_from(["ch09", "--stats-fd", "4"]).is_err());
    }
}
