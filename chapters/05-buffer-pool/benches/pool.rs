//! What a pooled output chunk saves over allocating one: `take` + `give_back`
//! on a warm pool against `Vec::with_capacity(N)` + drop (malloc + free,
//! memory untouched) and `vec![0; N]` + drop (calloc + free: the pool's miss
//! path, which also zeroes N bytes), for N = 4, 16 and 64 KiB.
//!
//! Run: `cargo bench -p ch05-buffer-pool --bench pool`

// The chapter is a binary crate, so the bench compiles the pool's source
// file (and the syscall layer it uses) itself instead of linking a library.
// Benches build with cfg(test) but without the test harness, so the unit
// tests' imports would be unused too.
#[allow(dead_code, unused_imports)]
#[path = "../src/buffer_pool.rs"]
mod buffer_pool;
#[allow(dead_code)]
#[path = "../src/sys.rs"]
mod sys;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use crate::buffer_pool::BufferPool;

const SIZES: [usize; 3] = [4 * 1024, 16 * 1024, 64 * 1024];

fn take_and_give_back_vs_allocate(c: &mut Criterion) {
    let mut group = c.benchmark_group("output_buffer");
    for size in SIZES {
        let label = format!("{}KiB", size / 1024);

        let mut pool = BufferPool::with_sizes(size, 16);
        // Warm: the first take is the only miss.
        let first = pool.take();
        pool.give_back(first);
        group.bench_function(BenchmarkId::new("pool_take_give_back", &label), |b| {
            b.iter(|| {
                let buffer = black_box(pool.take());
                pool.give_back(buffer);
            });
        });
        assert_eq!(pool.stats().misses, 1, "every timed take was a hit");

        group.bench_function(BenchmarkId::new("vec_with_capacity", &label), |b| {
            b.iter(|| black_box(Vec::<u8>::with_capacity(black_box(size))));
        });

        group.bench_function(BenchmarkId::new("vec_zeroed", &label), |b| {
            b.iter(|| black_box(vec![0u8; black_box(size)]));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = take_and_give_back_vs_allocate
}
criterion_main!(benches);
