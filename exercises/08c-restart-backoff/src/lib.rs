//! Exercise 08c: restart crashed workers, with back-off.
//!
//! Chapter 08's supervisor runs worker processes and restarts any that
//! dies. Restarting at once is right for a worker that crashed after hours
//! of service; it is wrong for one that dies the moment it starts (a bad
//! flag, a port taken, a missing file): restarted at once, it crash-loops,
//! burning a core and flooding the log. So the delay before a restart
//! doubles each time a worker dies young, up to a maximum, and drops back
//! to the first delay once a worker has lived long enough to count as
//! healthy.
//!
//! Time is a parameter (`now`), never read from the clock here, so that the
//! tests can run an hour of crash loop in a microsecond. The supervisor's
//! event loop calls these with `Instant::now()` and sleeps in `epoll_wait`
//! until `next_wake_up`.
//!
//! Write `died`, `spawn_failed`, `due` and `next_wake_up`, marked `todo!()`.

use std::time::{Duration, Instant};

/// How restarts back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The wait before restarting a worker that was healthy (or is new).
    pub first_delay: Duration,
    /// The longest wait: a worker that never stays up is restarted once
    /// per `max_delay`, forever, and costs almost nothing.
    pub max_delay: Duration,
    /// A worker that ran at least this long before dying was healthy: its
    /// next restart waits `first_delay` again.
    pub healthy_uptime: Duration,
}

impl Policy {
    /// Chapter 08's values.
    pub const CHAPTER_08: Policy = Policy {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        healthy_uptime: Duration::from_secs(10),
    };
}

/// One worker slot: whether a process is in it, and its restart state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub running: bool,
    /// When the process now (or last) in the slot was started.
    pub started_at: Instant,
    /// When to start the next process, while the slot is empty.
    pub restart_at: Option<Instant>,
    /// How long the next restart will wait.
    pub next_delay: Duration,
}

/// The restart bookkeeping of a supervisor with a fixed number of workers.
#[derive(Debug)]
pub struct Restarts {
    policy: Policy,
    slots: Vec<Slot>,
    /// Processes started again after a death or a failed start.
    pub restarts: u64,
}

impl Restarts {
    /// `workers` slots, each with a process started at `now`.
    pub fn new(policy: Policy, workers: usize, now: Instant) -> Restarts {
        let slot = Slot {
            running: true,
            started_at: now,
            restart_at: None,
            next_delay: policy.first_delay,
        };
        Restarts {
            policy,
            slots: vec![slot; workers],
            restarts: 0,
        }
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    /// The worker in slot `index` exited at `now`. Schedules its restart
    /// and returns the wait: `first_delay` if it had lived at least
    /// `healthy_uptime`, otherwise the slot's `next_delay`, which then
    /// doubles (up to `max_delay`) for the time after.
    pub fn died(&mut self, index: usize, now: Instant) -> Duration {
        let _ = (index, now, self.policy);
        todo!("healthy: first_delay again; restart_at = now + delay; double, capped")
    }

    /// Starting a process for slot `index` failed at `now` (`fork` or
    /// `exec` refused): try again later, backing off as for a death. It
    /// never ran, so it was not healthy.
    pub fn spawn_failed(&mut self, index: usize, now: Instant) -> Duration {
        let _ = (index, now);
        todo!("like died, without the healthy check")
    }

    /// The slots whose restart is due at `now`, in order. Each is taken as
    /// started at `now` (running, no restart pending) and counted in
    /// `restarts`; the caller starts their processes.
    pub fn due(&mut self, now: Instant) -> Vec<usize> {
        let _ = now;
        todo!("every slot with restart_at <= now")
    }

    /// When the supervisor must wake up for the next restart: the earliest
    /// `restart_at`, or `None` while every worker is running (then it
    /// sleeps until a signal or a child's exit).
    pub fn next_wake_up(&self) -> Option<Instant> {
        todo!("the earliest restart_at")
    }
}
