//! Timer wheel vs binary heap vs periodic scan, at 10K, 100K and 1M timers:
//! why chapter 06 keeps idle deadlines in a wheel.
//!
//! The wheel is the chapter's own `src/timer_wheel.rs`; the two
//! alternatives live in `benches/alternatives/` because only this bench
//! uses them: `HeapTimers` (a `BinaryHeap` with lazy deletion, exact,
//! O(log n)) and `ScanTimers` (a deadline per connection and a scan of all
//! of them every interval: O(1) to touch, O(n) per scan).
//!
//! All three run in virtual time (the bench hands them `Instant`s; nothing
//! sleeps). Settings shared by all: idle timeout 10 s, wheel tick 10 ms with
//! 1024 slots (one revolution 10.24 s), scan interval = one tick, so the
//! three promise the same accuracy.
//!
//! - insert: schedule N timers (keys 0..N, deadlines spread uniformly over
//!   the timeout) into an empty structure.
//! - touch: with N timers armed, touch ALL N in a random order, each to
//!   `now + timeout`, with `now` one tick later each iteration; "wheel-eager"
//!   moves the timer on every touch (what `touch` would cost without the
//!   lazy trick).
//! - expire: with N timers spread over the timeout, advance one tick and
//!   expire (about N/1000 fire); time per call. The fired keys are
//!   rescheduled at `now + timeout` outside the timed part.
//! - tick: one event-loop tick of a server holding N connections of which 1%
//!   are active per tick: N/100 random touches, then expire, then the reaped
//!   keys reconnect (scheduled). All timed. This is where the lazy touch's
//!   deferred moves are paid.
//!
//! Run: `cargo bench -p ch06-idle-timeouts --bench timers` (about 2-3 min)
//! or one group: `cargo bench -p ch06-idle-timeouts --bench timers -- expire`

// The chapter is a binary crate, so the bench compiles the wheel's source
// file itself instead of linking a library. Benches build with cfg(test) but
// without the test harness, so the unit tests' imports would be unused.
#[path = "alternatives/heap_timers.rs"]
mod heap_timers;
#[path = "alternatives/scan_timers.rs"]
mod scan_timers;
#[allow(dead_code, unused_imports)]
#[path = "../src/timer_wheel.rs"]
mod timer_wheel;

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::heap_timers::HeapTimers;
use crate::scan_timers::ScanTimers;
use crate::timer_wheel::{TimerStats, TimerWheel};
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};

/// One timer per connection key, as an event loop uses them.
pub trait IdleTimers {
    /// Arms (or re-arms) `key`'s timer for `deadline`.
    fn schedule(&mut self, key: usize, deadline: Instant);
    /// Moves `key`'s deadline, typically to `now + idle_timeout` on activity.
    fn touch(&mut self, key: usize, deadline: Instant);
    /// Disarms `key`'s timer; returns whether one was armed.
    fn cancel(&mut self, key: usize) -> bool;
    /// Fires the timers that are due at `now`; returns how many fired.
    fn expire(&mut self, now: Instant, on_expired: impl FnMut(usize)) -> usize;
    /// How long the caller may sleep before calling `expire` again.
    fn next_timeout(&self, now: Instant) -> Option<Duration>;
    /// How many timers are armed.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn stats(&self) -> TimerStats;
}

macro_rules! impl_idle_timers {
    ($type:ty) => {
        impl IdleTimers for $type {
            fn schedule(&mut self, key: usize, deadline: Instant) {
                <$type>::schedule(self, key, deadline)
            }
            fn touch(&mut self, key: usize, deadline: Instant) {
                <$type>::touch(self, key, deadline)
            }
            fn cancel(&mut self, key: usize) -> bool {
                <$type>::cancel(self, key)
            }
            fn expire(&mut self, now: Instant, on_expired: impl FnMut(usize)) -> usize {
                <$type>::expire(self, now, on_expired)
            }
            fn next_timeout(&self, now: Instant) -> Option<Duration> {
                <$type>::next_timeout(self, now)
            }
            fn len(&self) -> usize {
                <$type>::len(self)
            }
            fn stats(&self) -> TimerStats {
                <$type>::stats(self)
            }
        }
    };
}

impl_idle_timers!(TimerWheel);
impl_idle_timers!(HeapTimers);
impl_idle_timers!(ScanTimers);

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 1024;

/// xorshift64*: a fixed, dependency-free source of random keys and deadlines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` deadlines spread uniformly over `(now, now + TIMEOUT]`.
fn spread_deadlines(n: usize, now: Instant, rng: &mut Rng) -> Vec<Instant> {
    let timeout_ns = TIMEOUT.as_nanos() as u64;
    (0..n)
        .map(|_| now + Duration::from_nanos(1 + rng.below(timeout_ns)))
        .collect()
}

/// The keys `0..n` in a random order (Fisher-Yates).
fn shuffled_keys(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut keys: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    keys
}

fn wheel(n: usize, start: Instant) -> TimerWheel {
    TimerWheel::with_capacity(TICK, SLOTS, start, n)
}
fn heap(n: usize, _start: Instant) -> HeapTimers {
    HeapTimers::with_capacity(n)
}
fn scan(n: usize, start: Instant) -> ScanTimers {
    ScanTimers::with_capacity(TICK, start, n)
}

/// A structure holding `n` timers spread over the timeout.
fn armed<T: IdleTimers>(make: fn(usize, Instant) -> T, n: usize, start: Instant) -> T {
    let mut timers = make(n, start);
    let mut rng = Rng(0x5eed);
    for (key, deadline) in spread_deadlines(n, start, &mut rng).into_iter().enumerate() {
        timers.schedule(key, deadline);
    }
    timers
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
}

fn bench_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert");
    configure(&mut group);
    for n in SIZES {
        let start = Instant::now();
        let deadlines = spread_deadlines(n, start, &mut Rng(1));
        group.throughput(Throughput::Elements(n as u64));
        fn run<T: IdleTimers>(
            group: &mut BenchmarkGroup<'_, WallTime>,
            name: &str,
            make: fn(usize, Instant) -> T,
            start: Instant,
            deadlines: &[Instant],
        ) {
            let n = deadlines.len();
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_batched(
                    || make(n, start),
                    |mut timers| {
                        for (key, &deadline) in deadlines.iter().enumerate() {
                            timers.schedule(key, deadline);
                        }
                        timers
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        run(&mut group, "wheel", wheel, start, &deadlines);
        run(&mut group, "heap", heap, start, &deadlines);
        run(&mut group, "scan", scan, start, &deadlines);
    }
    group.finish();
}

fn bench_touch(c: &mut Criterion) {
    let mut group = c.benchmark_group("touch");
    configure(&mut group);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let order = shuffled_keys(n, &mut Rng(2));
        fn run<T: IdleTimers>(
            group: &mut BenchmarkGroup<'_, WallTime>,
            name: &str,
            make: fn(usize, Instant) -> T,
            touch: fn(&mut T, usize, Instant),
            order: &[usize],
        ) {
            let start = Instant::now();
            let mut timers = armed(make, order.len(), start);
            let mut now = start;
            group.bench_function(BenchmarkId::new(name, order.len()), |b| {
                b.iter_custom(|iterations| {
                    let began = Instant::now();
                    for _ in 0..iterations {
                        now += TICK;
                        for &key in order {
                            touch(&mut timers, key, now + TIMEOUT);
                        }
                    }
                    began.elapsed()
                })
            });
            black_box(timers.len());
        }
        run(&mut group, "wheel", wheel, TimerWheel::touch, &order);
        // Without the lazy trick: every touch unlinks and relinks.
        run(
            &mut group,
            "wheel-eager",
            wheel,
            TimerWheel::schedule,
            &order,
        );
        run(&mut group, "heap", heap, HeapTimers::touch, &order);
        run(&mut group, "scan", scan, ScanTimers::touch, &order);
    }
    group.finish();
}

fn bench_expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    configure(&mut group);
    for n in SIZES {
        fn run<T: IdleTimers>(
            group: &mut BenchmarkGroup<'_, WallTime>,
            name: &str,
            make: fn(usize, Instant) -> T,
            n: usize,
        ) {
            let start = Instant::now();
            let mut timers = armed(make, n, start);
            let mut now = start;
            let mut reaped = Vec::with_capacity(n);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iterations| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iterations {
                        now += TICK;
                        reaped.clear();
                        let began = Instant::now();
                        timers.expire(now, |key| reaped.push(key));
                        timed += began.elapsed();
                        for &key in &reaped {
                            timers.schedule(key, now + TIMEOUT);
                        }
                    }
                    timed
                })
            });
            assert_eq!(timers.len(), n);
        }
        run(&mut group, "wheel", wheel, n);
        run(&mut group, "heap", heap, n);
        run(&mut group, "scan", scan, n);
    }
    group.finish();
}

fn bench_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick");
    configure(&mut group);
    for n in SIZES {
        fn run<T: IdleTimers>(
            group: &mut BenchmarkGroup<'_, WallTime>,
            name: &str,
            make: fn(usize, Instant) -> T,
            n: usize,
        ) {
            let start = Instant::now();
            let mut timers = armed(make, n, start);
            let mut rng = Rng(3);
            let mut now = start;
            let mut reaped = Vec::with_capacity(n);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    now += TICK;
                    for _ in 0..n / 100 {
                        let key = rng.below(n as u64) as usize;
                        timers.touch(key, now + TIMEOUT);
                    }
                    reaped.clear();
                    timers.expire(now, |key| reaped.push(key));
                    for &key in &reaped {
                        timers.schedule(key, now + TIMEOUT);
                    }
                })
            });
            assert_eq!(timers.len(), n);
        }
        run(&mut group, "wheel", wheel, n);
        run(&mut group, "heap", heap, n);
        run(&mut group, "scan", scan, n);
    }
    group.finish();
}

criterion_group!(benches, bench_insert, bench_touch, bench_expire, bench_tick);
criterion_main!(benches);
