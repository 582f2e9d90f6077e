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
/// Declares every counter a reactor keeps, once, and generates from that
/// list: the shared-memory slot ([`ReactorStats`]), its plain copy
/// ([`Counters`]: read, add up, zero), and [`COUNTERS`], which the summary
/// line and the Prometheus page walk. A counter with `summary "key"` is
/// printed as `key=N` on the summary line; one with `metric "name"` is
/// served on `/metrics` as a Prometheus counter with its doc as the help.
macro_rules! counters {
    ($(
        #[doc = $help:literal]
        $name:ident $(, summary $key:literal)? $(, metric $metric:literal)?;
    )*) => {
        /// One reactor's counters, as they lie in shared memory. Aligned to
        /// a cache line so two reactors never write the same line.
        #[repr(C, align(64))]
        #[derive(Debug, Default)]
        pub struct ReactorStats {
            $(#[doc = $help] pub $name: AtomicU64,)*
            /// Time from `io_uring_enter` returning to the loop calling it
            /// again, summed and bucketed: how long each wake-up kept the
            /// loop busy.
            pub iteration_ns_sum: AtomicU64,
            pub iteration_buckets: [AtomicU64; ITERATION_BUCKETS],
        }

        /// A plain copy of the counters, to add up and print.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $(pub $name: u64,)*
            pub iteration_ns_sum: u64,
            pub iteration_buckets: [u64; ITERATION_BUCKETS],
        }

        impl Counters {
            pub fn of(stats: &ReactorStats) -> Counters {
                let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
                Counters {
                    $($name: load(&stats.$name),)*
                    iteration_ns_sum: load(&stats.iteration_ns_sum),
                    iteration_buckets: stats.iteration_buckets.each_ref().map(load),
                }
            }

            pub fn add(&mut self, other: &Counters) {
                $(self.$name += other.$name;)*
                self.iteration_ns_sum += other.iteration_ns_sum;
                for (sum, count) in self
                    .iteration_buckets
                    .iter_mut()
                    .zip(other.iteration_buckets)
                {
                    *sum += count;
                }
            }
        }

        impl ReactorStats {
            /// Every counter in the slot, for `reset`.
            fn counters(&self) -> impl Iterator<Item = &AtomicU64> {
                [$(&self.$name,)* &self.iteration_ns_sum]
                    .into_iter()
                    .chain(self.iteration_buckets.iter())
            }
        }

        /// Every counter, in declaration order, for the summary line and
        /// the Prometheus page.
        pub const COUNTERS: &[Counter] = &[$(Counter {
            summary: optional!($($key)?),
            metric: optional!($($metric)?),
            help: $help.trim_ascii_start(),
            value: |counters| counters.$name,
        },)*];
    };
}

/// `Some(x)` for a given `x`, `None` for nothing (for the table's optional
/// columns).
macro_rules! optional {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

/// One counter, as the summary line and the Prometheus page see it.
pub struct Counter {
    /// Its key on the summary line, if it is printed there.
    pub summary: Option<&'static str>,
    /// Its Prometheus name, if it is served on `/metrics`.
    pub metric: Option<&'static str>,
    pub help: &'static str,
    pub value: fn(&Counters) -> u64,
}

counters! {
    /// Connections accepted.
    accepted, summary "connections_served", metric "c1m_connections_accepted_total";
    /// Connections closed, for any reason (a dead worker's count as closed).
    closed, metric "c1m_connections_closed_total";
    /// Connections closed by the idle timer (--idle-timeout).
    reaped, summary "reaped", metric "c1m_connections_reaped_total";
    /// Connections closed at once because a worker was out of descriptors.
    shed, summary "shed", metric "c1m_connections_shed_total";
    /// Bytes read from clients.
    bytes_received, summary "bytes_received", metric "c1m_bytes_received_total";
    /// Bytes written to clients.
    bytes_sent, summary "bytes_sent", metric "c1m_bytes_sent_total";
    /// Turns of the loop (returns from io_uring_enter), over all reactors.
    wakeups, summary "loop_wakeups", metric "c1m_loop_wakeups_total";
    /// io_uring_enter calls.
    io_uring_enter, summary "io_uring_enter";
    /// Submission queue entries submitted.
    sqes, summary "sqes";
    /// Completions reaped.
    completions, summary "completions";
    /// Completions the completion queue had no room for (kept aside by the kernel, none lost).
    cq_overflow, summary "cq_overflow";
    /// Turns whose submission queue filled up (submitted early, mid-turn).
    sq_full, summary "sq_full";
    /// Multishot receives armed (one per connection, plus one per re-arm).
    recv_armed, summary "recv_armed";
    /// Receives that ended because the buffer ring was empty.
    enobufs, summary "enobufs";
    /// Sends the kernel took only part of: the rest was sent again.
    short_sends, summary "short_sends";
    /// Receives cancelled because a client owed --max-pending bytes.
    backpressure_stops, summary "backpressure_stops";
    /// Completions whose connection was gone (a generation mismatch).
    stale_completions, summary "stale_completions";
    /// accept4 calls (only to shed a connection when out of descriptors).
    accept_calls, summary "accept";
    /// Reads handed to the worker threads as jobs (--work-us).
    jobs, summary "jobs";
    /// Reads whose work ran on the reactor itself (--offload).
    inline, summary "inline";
    /// Times a receive's work wanted the pool but the job queue was full, so it ran on the reactor.
    queue_full, summary "queue_full";
    /// Timing-wheel operations: schedule, touch, cancel (--idle-timeout).
    timer_ops, summary "timer_ops";
    /// Timers relinked because a touch had moved their deadline (the work a lazy touch defers).
    timers_moved, summary "timers_moved";
    /// Connections still owed echo when the shutdown grace ran out.
    shutdown_dropped, summary "shutdown_dropped";
    /// The queued bytes those connections were owed (not counting jobs still running).
    shutdown_dropped_bytes, summary "shutdown_dropped_bytes";
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
impl Counters {
    /// Connections accepted and not yet closed.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }

    /// The counters of a worker that died: its open connections died with
    /// it (the kernel closed them), so they count as closed from now on.
    pub fn retired(mut self) -> Counters {
        self.closed = self.accepted;
        self
    }
}
// ANCHOR_END: counters

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
    fn each_row_of_the_table_reads_its_own_counter() {
        let stats = ReactorStats::default();
        for (n, counter) in stats.counters().take(COUNTERS.len()).enumerate() {
            bump(counter, n as u64 + 1);
        }
        let counters = Counters::of(&stats);
        for (n, counter) in COUNTERS.iter().enumerate() {
            assert_eq!((counter.value)(&counters), n as u64 + 1, "{}", counter.help);
        }
        let mut twice = counters;
        twice.add(&counters);
        assert_eq!((COUNTERS[3].value)(&twice), 8);
    }

    #[test]
    fn summary_keys_and_metric_names_are_unique() {
        let keys: Vec<_> = COUNTERS.iter().filter_map(|c| c.summary).collect();
        let names: Vec<_> = COUNTERS.iter().filter_map(|c| c.metric).collect();
        for list in [&keys, &names] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "{list:?}");
        }
        assert!(
            names.iter().all(|name| name.ends_with("_total")),
            "{names:?}"
        );
        assert!(COUNTERS.iter().all(|c| !c.help.starts_with(' ')));
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
