//! What the worker threads of either engine share with each other and
//! with the thread watching the run.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::config::{EchoConfig, RunLength};
use crate::report::{self, ConnectStats, ErrorCounts};

/// What each worker thread shares with the others and with the watcher.
pub(crate) struct Shared {
    /// How many workers have finished connecting; every worker waits until
    /// all have, so that the measurement starts with all connections open.
    arrived: Mutex<usize>,
    all_arrived: Condvar,
    workers: usize,
    /// Set by a worker that hit a limit: everybody stops.
    pub(crate) abort: AtomicBool,
    /// When the connect phase ended (first worker past the barrier).
    pub(crate) t0: OnceLock<Instant>,
    pub(crate) established: AtomicUsize,
    /// Messages completed so far, for the progress bar.
    pub(crate) completed: AtomicU64,
    pub(crate) finished_workers: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Shared {
        Shared {
            arrived: Mutex::new(0),
            all_arrived: Condvar::new(),
            workers,
            abort: AtomicBool::new(false),
            t0: OnceLock::new(),
            established: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            finished_workers: AtomicUsize::new(0),
        }
    }

    /// Stops the run before it starts: releases every waiting worker.
    pub(crate) fn cancel(&self) {
        let _guard = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        self.abort.store(true, Ordering::SeqCst);
        self.all_arrived.notify_all();
    }

    /// Called once by every worker when its connect phase is over. Returns
    /// the common start instant, or `None` if some worker hit a limit.
    pub(crate) fn arrive(&self, ok: bool) -> Option<Instant> {
        if !ok {
            self.abort.store(true, Ordering::SeqCst);
        }
        // A poisoned lock means a worker panicked; the panic is re-raised
        // when it is joined, so carry on with the count inside.
        let mut arrived = self.arrived.lock().unwrap_or_else(PoisonError::into_inner);
        *arrived += 1;
        self.all_arrived.notify_all();
        while *arrived < self.workers && !self.abort.load(Ordering::SeqCst) {
            arrived = self
                .all_arrived
                .wait(arrived)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(arrived);
        let t0 = *self.t0.get_or_init(Instant::now);
        (!self.abort.load(Ordering::SeqCst)).then_some(t0)
    }
}

/// What one worker measured.
pub(crate) struct WorkerResult {
    pub(crate) connect: ConnectStats,
    pub(crate) messages: u64,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) errors: ErrorCounts,
    /// When the worker's last connection finished (messages runs).
    pub(crate) finished_at: Instant,
}

impl WorkerResult {
    pub(crate) fn new(connect: ConnectStats) -> WorkerResult {
        WorkerResult {
            connect,
            messages: 0,
            histogram: report::rtt_histogram(),
            errors: ErrorCounts::default(),
            finished_at: Instant::now(),
        }
    }
}

/// Which completions count: those inside `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountingWindow {
    pub(crate) start: Instant,
    pub(crate) end: Option<Instant>,
}

impl CountingWindow {
    pub(crate) fn new(config: &EchoConfig, t0: Instant) -> CountingWindow {
        match config.length {
            RunLength::Duration { warmup, measure } => CountingWindow {
                start: t0 + warmup,
                end: Some(t0 + warmup + measure),
            },
            RunLength::Messages(_) => CountingWindow {
                start: t0,
                end: None,
            },
        }
    }

    pub(crate) fn contains(&self, t: Instant) -> bool {
        t >= self.start && self.end.is_none_or(|end| t < end)
    }

    /// Past the end: stop starting new messages.
    pub(crate) fn is_over(&self, t: Instant) -> bool {
        self.end.is_some_and(|end| t >= end)
    }
}
