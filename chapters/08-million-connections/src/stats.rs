//! The counters a worker publishes and the supervisor reads: their layout in
//! shared memory, and the plain snapshots the supervisor adds up.
//!
//! Each reactor thread owns one [`ReactorStats`] slot and is its only writer,
//! so an update is a relaxed load and store (no locked read-modify-write,
//! no cache line shared with another reactor). Readers in other processes
//! see each counter move forward monotonically; a status line or a
//! `/metrics` scrape needs nothing stronger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::{self, SharedAtomics, SharedPage};

/// Most reactor threads one worker may run (one slot each in its page).
pub const MAX_REACTORS: usize = 64;

// ANCHOR: buckets
/// Upper bounds of the loop-iteration latency buckets, in nanoseconds: from
/// 1 µs (an idle wake-up) to 1 s (something is badly wrong), ×4 per step.
/// The last bucket (+Inf) is implied.
pub const ITERATION_BUCKET_BOUNDS_NS: [u64; 11] = [
    1_000,
    4_000,
    16_000,
    64_000,
    256_000,
    1_000_000,
    4_000_000,
    16_000_000,
    64_000_000,
    256_000_000,
    1_000_000_000,
];
pub const ITERATION_BUCKETS: usize = ITERATION_BUCKET_BOUNDS_NS.len() + 1;
// ANCHOR_END: buckets

// ANCHOR: reactor_stats
/// One reactor's counters, as they lie in shared memory. Aligned to a cache
/// line so two reactors never write the same line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    /// Closed by the idle timer (`--idle-timeout`).
    pub reaped: AtomicU64,
    /// Accepted and closed at once because the worker was out of descriptors.
    pub shed: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Returns from `epoll_wait`: how often the loop woke up.
    pub wakeups: AtomicU64,
    pub epoll_wait_calls: AtomicU64,
    pub epoll_ctl_calls: AtomicU64,
    pub read_calls: AtomicU64,
    pub write_calls: AtomicU64,
    pub accept_calls: AtomicU64,
    /// Reads handed to the worker threads as jobs (`--work-us`).
    pub jobs: AtomicU64,
    /// Reads whose work ran on the reactor itself (`--offload`).
    pub inline: AtomicU64,
    /// Turns a connection was put on the ready list for (read budget spent
    /// or job queue full).
    pub requeued: AtomicU64,
    /// Output chunks the buffer pool had to allocate (no idle one to lend).
    pub pool_misses: AtomicU64,
    /// Timing-wheel operations: schedule, touch, cancel (`--idle-timeout`).
    pub timer_ops: AtomicU64,
    /// Connections still owed echo when the shutdown grace ran out, and the
    /// queued bytes they were owed (not counting jobs still running).
    pub shutdown_dropped: AtomicU64,
    pub shutdown_dropped_bytes: AtomicU64,
    /// Time from `epoll_wait` returning to the loop calling it again, summed
    /// and bucketed: how long each wake-up kept the loop busy.
    pub iteration_ns_sum: AtomicU64,
    pub iteration_buckets: [AtomicU64; ITERATION_BUCKETS],
}

/// Adds `n` to a counter that only the calling thread writes: a plain load
/// and store, cheaper than `fetch_add`'s locked instruction, and exact
/// because nobody else writes it.
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl ReactorStats {
    /// Records one loop iteration that took `elapsed`.
    pub fn record_iteration(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = ITERATION_BUCKET_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(ITERATION_BUCKETS - 1);
        bump(&self.iteration_buckets[bucket], 1);
        bump(&self.iteration_ns_sum, ns);
    }
}
// ANCHOR_END: reactor_stats

// ANCHOR: worker_stats
/// What a worker is doing, as the supervisor sees it in `state`: 0 (a
/// zeroed page) while it starts, then `READY` once it listens on every
/// reactor (safe to tell clients the port), then `STOPPING`.
pub const READY: u64 = 1;
pub const STOPPING: u64 = 2;

/// One worker's part of the shared memory: a header and a slot per reactor.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct WorkerStats {
    /// Written by the supervisor before it starts the worker: the worker
    /// checks it against `getppid` (see `sys::die_with_parent`).
    pub supervisor_pid: AtomicU64,
    pub pid: AtomicU64,
    pub state: AtomicU64,
    pub reactors: AtomicU64,
    pub reactor: [ReactorStats; MAX_REACTORS],
}

// SAFETY: `#[repr(C)]`, atomics only (arrays of atomics included), and all
// zeroes is a valid value of each.
unsafe impl SharedAtomics for WorkerStats {}

/// Bytes from one worker's stats to the next: whole pages, so that each
/// worker can map its own and nothing else.
pub fn worker_slot_len() -> usize {
    size_of::<WorkerStats>().next_multiple_of(sys::page_size())
}

/// The stats of worker `index` inside a mapping of all workers.
pub fn worker_stats(all: &SharedPage, index: usize) -> &WorkerStats {
    all.get(index * worker_slot_len())
}

impl WorkerStats {
    /// The sum over this worker's reactors.
    pub fn snapshot(&self) -> Counters {
        let mut sum = Counters::default();
        let reactors = usize::try_from(self.reactors.load(Ordering::Relaxed)).unwrap_or(0);
        for reactor in self.reactor.iter().take(reactors.min(MAX_REACTORS)) {
            sum.add(&Counters::of(reactor));
        }
        sum
    }

    /// Zeroes everything but the supervisor's pid, for the next worker to
    /// use this slot (only after the previous one has exited).
    pub fn reset(&self) {
        for field in [&self.pid, &self.state, &self.reactors] {
            field.store(0, Ordering::Relaxed);
        }
        for reactor in &self.reactor {
            for counter in reactor.counters() {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}
// ANCHOR_END: worker_stats

// ANCHOR: counters
/// A plain copy of the counters, to add up and print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    pub closed: u64,
    pub reaped: u64,
    pub shed: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub wakeups: u64,
    pub epoll_wait_calls: u64,
    pub epoll_ctl_calls: u64,
    pub read_calls: u64,
    pub write_calls: u64,
    pub accept_calls: u64,
    pub jobs: u64,
    pub inline: u64,
    pub requeued: u64,
    pub pool_misses: u64,
    pub timer_ops: u64,
    pub shutdown_dropped: u64,
    pub shutdown_dropped_bytes: u64,
    pub iteration_ns_sum: u64,
    pub iteration_buckets: [u64; ITERATION_BUCKETS],
}

impl Counters {
    pub fn of(stats: &ReactorStats) -> Counters {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counters {
            accepted: load(&stats.accepted),
            closed: load(&stats.closed),
            reaped: load(&stats.reaped),
            shed: load(&stats.shed),
            bytes_received: load(&stats.bytes_received),
            bytes_sent: load(&stats.bytes_sent),
            wakeups: load(&stats.wakeups),
            epoll_wait_calls: load(&stats.epoll_wait_calls),
            epoll_ctl_calls: load(&stats.epoll_ctl_calls),
            read_calls: load(&stats.read_calls),
            write_calls: load(&stats.write_calls),
            accept_calls: load(&stats.accept_calls),
            jobs: load(&stats.jobs),
            inline: load(&stats.inline),
            requeued: load(&stats.requeued),
            pool_misses: load(&stats.pool_misses),
            timer_ops: load(&stats.timer_ops),
            shutdown_dropped: load(&stats.shutdown_dropped),
            shutdown_dropped_bytes: load(&stats.shutdown_dropped_bytes),
            iteration_ns_sum: load(&stats.iteration_ns_sum),
            iteration_buckets: stats.iteration_buckets.each_ref().map(load),
        }
    }

    /// Connections accepted and not yet closed.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }

    pub fn add(&mut self, other: &Counters) {
        self.accepted += other.accepted;
        self.closed += other.closed;
        self.reaped += other.reaped;
        self.shed += other.shed;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.wakeups += other.wakeups;
        self.epoll_wait_calls += other.epoll_wait_calls;
        self.epoll_ctl_calls += other.epoll_ctl_calls;
        self.read_calls += other.read_calls;
        self.write_calls += other.write_calls;
        self.accept_calls += other.accept_calls;
        self.jobs += other.jobs;
        self.inline += other.inline;
        self.requeued += other.requeued;
        self.pool_misses += other.pool_misses;
        self.timer_ops += other.timer_ops;
        self.shutdown_dropped += other.shutdown_dropped;
        self.shutdown_dropped_bytes += other.shutdown_dropped_bytes;
        self.iteration_ns_sum += other.iteration_ns_sum;
        for (sum, count) in self
            .iteration_buckets
            .iter_mut()
            .zip(other.iteration_buckets)
        {
            *sum += count;
        }
    }

    /// The counters of a worker that died: its open connections died with
    /// it (the kernel closed them), so they count as closed from now on.
    pub fn retired(mut self) -> Counters {
        self.closed = self.accepted;
        self
    }
}
// ANCHOR_END: counters

impl ReactorStats {
    fn counters(&self) -> impl Iterator<Item = &AtomicU64> {
        [
            &self.accepted,
            &self.closed,
            &self.reaped,
            &self.shed,
            &self.bytes_received,
            &self.bytes_sent,
            &self.wakeups,
            &self.epoll_wait_calls,
            &self.epoll_ctl_calls,
            &self.read_calls,
            &self.write_calls,
            &self.accept_calls,
            &self.jobs,
            &self.inline,
            &self.requeued,
            &self.pool_misses,
            &self.timer_ops,
            &self.shutdown_dropped,
            &self.shutdown_dropped_bytes,
            &self.iteration_ns_sum,
        ]
        .into_iter()
        .chain(self.iteration_buckets.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterations_land_in_the_first_bucket_that_holds_them() {
        let stats = ReactorStats::default();
        stats.record_iteration(Duration::from_nanos(500));
        stats.record_iteration(Duration::from_micros(1));
        stats.record_iteration(Duration::from_micros(5));
        stats.record_iteration(Duration::from_secs(3));
        let counters = Counters::of(&stats);
        assert_eq!(counters.iteration_buckets[0], 2);
        assert_eq!(counters.iteration_buckets[2], 1);
        assert_eq!(counters.iteration_buckets[ITERATION_BUCKETS - 1], 1);
        assert_eq!(
            counters.iteration_ns_sum,
            500 + 1_000 + 5_000 + 3_000_000_000
        );
    }

    #[test]
    fn a_dead_workers_connections_count_as_closed() {
        let counters = Counters {
            accepted: 10,
            closed: 3,
            ..Counters::default()
        };
        assert_eq!(counters.open(), 7);
        assert_eq!(counters.retired().open(), 0);
    }

    #[test]
    fn reset_zeroes_every_counter() {
        let (page, _fd) = SharedPage::create(worker_slot_len()).unwrap();
        let stats = worker_stats(&page, 0);
        stats.reactors.store(1, Ordering::Relaxed);
        bump(&stats.reactor[0].accepted, 5);
        stats.reactor[0].record_iteration(Duration::from_millis(1));
        assert_eq!(stats.snapshot().accepted, 5);
        stats.reset();
        stats.reactors.store(1, Ordering::Relaxed);
        assert_eq!(stats.snapshot(), Counters::default());
    }

    #[test]
    fn a_mapping_past_the_end_of_the_stats_memfd_is_refused() {
        let len = crate::sys::page_size();
        let (_page, fd) = SharedPage::create(len).unwrap();
        assert!(SharedPage::map(fd.raw(), len, len).is_err());
        assert!(SharedPage::map(fd.raw(), usize::MAX - len + 1, len).is_err());
        assert!(SharedPage::map(fd.raw(), 0, len).is_ok());
    }

    #[test]
    fn a_descriptor_that_is_not_the_sealed_stats_memfd_is_refused() {
        // SAFETY: the name is a valid C string; the new descriptor goes
        // straight into an `Fd`, which closes it.
        let raw = unsafe { libc::memfd_create(c"not-stats".as_ptr(), 0) };
        assert!(raw >= 0);
        // SAFETY: we just created `raw` and nothing else owns it.
        let plain = unsafe { crate::sys::Fd::from_raw(raw) };
        // Empty and unsealed: a load from this mapping would be SIGBUS.
        assert!(SharedPage::map(plain.raw(), 0, crate::sys::page_size()).is_err());
    }

    #[test]
    #[should_panic(expected = "shared struct out of the mapping")]
    fn an_offset_that_would_overflow_is_out_of_the_mapping() {
        let (page, _fd) = SharedPage::create(worker_slot_len()).unwrap();
        // Aligned, so only the end check can refuse it: `offset + size`
        // must not wrap around to a small number.
        let offset = usize::MAX - (align_of::<WorkerStats>() - 1);
        let _: &WorkerStats = page.get(offset);
    }
}
