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
    /// Turns of the loop: returns from its wait in `io_uring_enter`.
    pub wakeups: AtomicU64,
    /// `io_uring_enter` calls, submission entries, completions reaped.
    pub io_uring_enter: AtomicU64,
    pub sqes: AtomicU64,
    pub completions: AtomicU64,
    /// Completions the completion queue had no room for (kept aside by the
    /// kernel, none lost) and turns whose submission queue filled up.
    pub cq_overflow: AtomicU64,
    pub sq_full: AtomicU64,
    /// `accept4` calls (only to shed a connection when out of descriptors).
    pub accept_calls: AtomicU64,
    /// Multishot receives armed (one per connection, plus one per re-arm).
    pub recv_armed: AtomicU64,
    /// Receives that ended because the buffer ring was empty.
    pub enobufs: AtomicU64,
    /// Sends the kernel took only part of: the rest was sent again.
    pub short_sends: AtomicU64,
    /// Receives cancelled because a client owed `--max-pending` bytes.
    pub backpressure_stops: AtomicU64,
    /// Completions whose connection was gone (a generation mismatch).
    pub stale_completions: AtomicU64,
    /// Receives handed to the worker threads as jobs (`--work-us`).
    pub jobs: AtomicU64,
    /// Receives whose work ran on the reactor itself (`--offload`).
    pub inline: AtomicU64,
    /// Receives that wanted the pool while its queue was full; the most
    /// jobs out at once; results for a connection closed meanwhile.
    pub queue_full: AtomicU64,
    pub queue_high_water: AtomicU64,
    pub results_dropped: AtomicU64,
    /// Timing-wheel operations: schedule, touch, cancel (`--idle-timeout`),
    /// and timers a lazy touch had to relink.
    pub timer_ops: AtomicU64,
    pub timers_moved: AtomicU64,
    /// Connections still owed echo when the shutdown grace ran out, and the
    /// queued bytes they were owed (not counting jobs still running).
    pub shutdown_dropped: AtomicU64,
    pub shutdown_dropped_bytes: AtomicU64,
    /// Time from `io_uring_enter` returning to the loop calling it again, summed
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
    pub io_uring_enter: u64,
    pub sqes: u64,
    pub completions: u64,
    pub cq_overflow: u64,
    pub sq_full: u64,
    pub accept_calls: u64,
    pub recv_armed: u64,
    pub enobufs: u64,
    pub short_sends: u64,
    pub backpressure_stops: u64,
    pub stale_completions: u64,
    pub jobs: u64,
    pub inline: u64,
    pub queue_full: u64,
    pub queue_high_water: u64,
    pub results_dropped: u64,
    pub timer_ops: u64,
    pub timers_moved: u64,
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
            io_uring_enter: load(&stats.io_uring_enter),
            sqes: load(&stats.sqes),
            completions: load(&stats.completions),
            cq_overflow: load(&stats.cq_overflow),
            sq_full: load(&stats.sq_full),
            accept_calls: load(&stats.accept_calls),
            recv_armed: load(&stats.recv_armed),
            enobufs: load(&stats.enobufs),
            short_sends: load(&stats.short_sends),
            backpressure_stops: load(&stats.backpressure_stops),
            stale_completions: load(&stats.stale_completions),
            jobs: load(&stats.jobs),
            inline: load(&stats.inline),
            queue_full: load(&stats.queue_full),
            queue_high_water: load(&stats.queue_high_water),
            results_dropped: load(&stats.results_dropped),
            timer_ops: load(&stats.timer_ops),
            timers_moved: load(&stats.timers_moved),
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
        self.io_uring_enter += other.io_uring_enter;
        self.sqes += other.sqes;
        self.completions += other.completions;
        self.cq_overflow += other.cq_overflow;
        self.sq_full += other.sq_full;
        self.accept_calls += other.accept_calls;
        self.recv_armed += other.recv_armed;
        self.enobufs += other.enobufs;
        self.short_sends += other.short_sends;
        self.backpressure_stops += other.backpressure_stops;
        self.stale_completions += other.stale_completions;
        self.jobs += other.jobs;
        self.inline += other.inline;
        self.queue_full += other.queue_full;
        // A high-water mark: the larger, not the sum.
        self.queue_high_water = self.queue_high_water.max(other.queue_high_water);
        self.results_dropped += other.results_dropped;
        self.timer_ops += other.timer_ops;
        self.timers_moved += other.timers_moved;
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
            &self.io_uring_enter,
            &self.sqes,
            &self.completions,
            &self.cq_overflow,
            &self.sq_full,
            &self.accept_calls,
            &self.recv_armed,
            &self.enobufs,
            &self.short_sends,
            &self.backpressure_stops,
            &self.stale_completions,
            &self.jobs,
            &self.inline,
            &self.queue_full,
            &self.queue_high_water,
            &self.results_dropped,
            &self.timer_ops,
            &self.timers_moved,
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
