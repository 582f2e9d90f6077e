//! Exercise 08 — how many worker processes for a target number of
//! connections, given the per-process descriptor limit.
//!
//! `RLIMIT_NOFILE` is per process: when its hard limit cannot be raised, the
//! way to hold more connections is more processes (prefork). Chapter 08's
//! `--procs auto` plans them with the rule written out in README.md. Write
//! `plan`, marked `todo!()`.

/// Descriptors a worker keeps for itself: stdio, epoll, listeners, eventfds,
/// signalfd, the spare descriptor.
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Plan each worker to this share of the rest: `SO_REUSEPORT` spreads
/// connections by hash, so some workers get more than the average.
pub const FILL_PERCENT: u64 = 95;
/// Below this many connections per worker, the limit is not an allowance
/// to plan by: run one worker.
pub const MIN_PER_WORKER: u64 = 1000;

/// What `--procs auto` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Worker processes to start.
    pub procs: u64,
    /// Reactor threads per worker.
    pub reactors: u64,
    /// Connections one worker is planned to hold.
    pub per_worker: u64,
}

/// The plan for `target` connections on a host whose hard `RLIMIT_NOFILE`
/// is `hard_limit` per process, with `cores` CPUs.
pub fn plan(target: u64, hard_limit: u64, cores: u64) -> Plan {
    let _ = (target, hard_limit, cores);
    todo!("per_worker from the limit, then procs, then reactors")
}
