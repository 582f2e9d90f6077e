//! The pool's contract: reuse instead of allocating, a cap on what it keeps,
//! and counters that tell the truth.

use ex05_buffer_pool::BufferPool;

#[test]
fn a_buffer_given_back_is_reused_by_the_next_take() {
    let mut pool = BufferPool::new(1024, 4);
    let mut first = pool.take();
    first.append(b"hello");
    let address = first.address();
    pool.give_back(first);
    let second = pool.take();
    assert_eq!(second.address(), address, "the same memory came back");
    assert!(second.filled().is_empty(), "a reused buffer starts empty");
    assert_eq!(second.size(), 1024);
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses, stats.returned), (1, 1, 1));
}

#[test]
fn the_buffer_given_back_last_is_taken_first() {
    let mut pool = BufferPool::new(64, 4);
    let a = pool.take();
    let b = pool.take();
    let b_address = b.address();
    pool.give_back(a);
    pool.give_back(b);
    assert_eq!(pool.take().address(), b_address, "LIFO: warmest first");
}

#[test]
fn the_pool_keeps_at_most_its_cap_of_idle_buffers() {
    let mut pool = BufferPool::new(64, 3);
    let lent: Vec<_> = (0..5).map(|_| pool.take()).collect();
    for buffer in lent {
        pool.give_back(buffer);
    }
    assert_eq!(pool.idle(), 3);
    let stats = pool.stats();
    assert_eq!(stats.returned, 5);
    assert_eq!(stats.dropped_over_cap, 2);
    assert_eq!(stats.in_use, 0);
}

#[test]
fn counters_add_up_and_high_water_is_the_peak_in_use() {
    let mut pool = BufferPool::new(64, 8);
    let a = pool.take();
    let b = pool.take();
    let c = pool.take();
    pool.give_back(b);
    pool.give_back(c);
    let d = pool.take();
    let stats = pool.stats();
    assert_eq!((stats.misses, stats.hits, stats.returned), (3, 1, 2));
    assert_eq!(stats.in_use, 2);
    assert_eq!(stats.high_water, 3);
    assert_eq!(stats.in_use, stats.hits + stats.misses - stats.returned);
    pool.give_back(a);
    pool.give_back(d);
    assert_eq!(
        pool.stats().high_water,
        3,
        "the high-water mark never goes down"
    );
    assert_eq!(pool.stats().in_use, 0);
}

/// The event loop's rhythm: a connection takes a few buffers for a burst
/// and gives them back; thousands of bursts later, the pool has allocated
/// only as many buffers as the biggest burst needed.
#[test]
fn steady_state_allocates_nothing() {
    let mut pool = BufferPool::new(16 * 1024, 256);
    for burst in 0..10_000 {
        let size = 1 + burst % 4;
        let lent: Vec<_> = (0..size).map(|_| pool.take()).collect();
        for buffer in lent {
            pool.give_back(buffer);
        }
    }
    let stats = pool.stats();
    assert_eq!(
        stats.misses, 4,
        "four allocations in all: each of the first four bursts needed one more buffer than the last"
    );
    assert_eq!(stats.high_water, 4);
    assert_eq!(stats.in_use, 0);
}
