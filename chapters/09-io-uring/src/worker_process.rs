//! A worker process: what the supervisor re-executes this binary as (with
//! the hidden `--worker N --stats-fd FD` flags), as in chapter 08: it binds
//! one `SO_REUSEPORT` listener per reactor on the supervisor's port, starts
//! the reactors (each with its ring, buffer ring, slab, pool and timing
//! wheel), and on SIGINT/SIGTERM stops them and exits 0. It maps its slot of
//! the shared stats memory, the reactors count into it, and it dies with its
//! supervisor.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use crate::flags::ReactorFlags;
use crate::listeners::{bind_listeners, plan_pinning};
use crate::reactors::Reactors;
use crate::server::Config;
use crate::stats::{self, MAX_REACTORS, READY, STOPPING, WorkerStats};
use crate::sys::{self, DescriptorLimit, SharedPage, SignalFd};

// ANCHOR: worker_flags
/// The hidden flags that make this binary a worker process.
#[derive(clap::Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerFlags {
    /// Internal: run as worker N (the supervisor starts workers this way).
    #[arg(long = "worker", value_name = "N", hide = true, requires = "stats_fd")]
    pub index: Option<usize>,

    /// Internal: the descriptor of the shared stats memory (with --worker).
    #[arg(long, hide = true, requires = "index")]
    pub stats_fd: Option<RawFd>,
}

/// A worker's whole command line, written in this one place; `main`'s
/// `Args` parses it back with the same definitions (a test checks the
/// round trip).
pub struct WorkerCommand<'a> {
    pub index: usize,
    pub stats_fd: RawFd,
    /// The supervisor's address, with the real port.
    pub addr: SocketAddr,
    pub reactors: usize,
    /// Chapter 07's flags and the ring's, with `--workers` decided by the
    /// supervisor.
    pub flags: &'a ReactorFlags,
}

impl WorkerCommand<'_> {
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![
            format!("--worker={}", self.index),
            format!("--stats-fd={}", self.stats_fd),
            format!("--addr={}", self.addr),
            format!("--reactors={}", self.reactors),
        ];
        argv.extend(self.flags.to_argv());
        argv
    }
}
// ANCHOR_END: worker_flags

/// What a worker runs with, from its command line.
#[derive(Clone, Copy, Debug)]
pub struct WorkerPlan {
    /// Which slot of the stats memory is ours (0-based).
    pub index: usize,
    /// The inherited memfd with every worker's stats.
    pub stats_fd: RawFd,
    /// The supervisor's address, with the real port.
    pub addr: SocketAddr,
    pub reactors: usize,
    pub pin: bool,
    pub config: Config,
}

// ANCHOR: worker_run
/// Runs one worker until SIGINT/SIGTERM. `signals` must have been set up
/// before any thread existed (first thing in `main`).
pub fn run(plan: WorkerPlan, signals: SignalFd) -> io::Result<()> {
    let stats = map_own_stats(plan.index, plan.stats_fd)?;
    let supervisor = libc::pid_t::try_from(stats.supervisor_pid.load(Ordering::Relaxed))
        .map_err(io::Error::other)?;
    sys::die_with_parent(supervisor)?;
    // Every worker needs its whole allowance: the soft limit is often 1024.
    DescriptorLimit::raise_soft_to_hard()?;

    // Reactor r of worker w gets CPU w*R + r (round robin): the workers'
    // reactors spread over the cores instead of all landing on the first.
    let reactors = plan.reactors.min(MAX_REACTORS);
    let cpus = plan_pinning(reactors, plan.pin, plan.index * reactors)?;
    // Bind every listener before saying READY: the supervisor prints
    // `listening on` only when every worker can take connections.
    let listeners = bind_listeners(plan.addr, reactors)?;
    stats.reactors.store(reactors as u64, Ordering::Relaxed);
    let running = Reactors::start(listeners, &cpus, plan.config, &stats.reactor)?;
    if plan.pin {
        for info in running.infos() {
            eprintln!(
                "worker {} (pid {}): reactor {} thread {} pinned to CPU {}",
                plan.index,
                std::process::id(),
                info.index,
                info.thread_id,
                info.cpu
                    .map_or_else(|| "-".to_string(), |cpu| cpu.to_string()),
            );
        }
    }
    stats
        .pid
        .store(u64::from(std::process::id()), Ordering::Relaxed);
    stats.state.store(READY, Ordering::Release);

    // From here on, chapter 07's main: wait for a signal (the supervisor
    // forwards SIGINT/SIGTERM) or a reactor's death, then stop them all.
    let reactor_died = signals.wait_or(running.died_fd())?.is_none();
    stats.state.store(STOPPING, Ordering::Release);
    running.stop();
    running.join()?;
    if reactor_died {
        return Err(io::Error::other("a reactor stopped unexpectedly"));
    }
    Ok(())
}
// ANCHOR_END: worker_run

/// Maps this worker's slot of the stats memory, for the rest of the
/// process's life, and closes the inherited descriptor (the mapping
/// outlives it; no need to pass it on or count it against our limit).
fn map_own_stats(index: usize, stats_fd: RawFd) -> io::Result<&'static WorkerStats> {
    let slot_len = stats::worker_slot_len();
    let page = SharedPage::map(stats_fd, index * slot_len, slot_len)?;
    // SAFETY: the number came from our command line, but `map` checked that
    // it is open and is the supervisor's sealed stats memfd (not stdio, not
    // anything this process opened: we open no memfd). Nothing else in this
    // process refers to it, so closing it closes nobody else's descriptor.
    drop(unsafe { sys::Fd::from_raw(stats_fd) });
    // The reactor threads hold `&'static ReactorStats`: the mapping must
    // live as long as the process, so it is never unmapped.
    let page: &'static SharedPage = Box::leak(Box::new(page));
    Ok(page.get(0))
}
