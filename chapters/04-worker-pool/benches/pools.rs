//! The hand-off itself, without sockets: how long a job takes to go from the
//! event loop to a worker and back (dispatch, run, deliver, eventfd,
//! `epoll_wait`, take), for the hand-rolled pool and for rayon.
//!
//! - `round_trip`: one job at a time, so every job wakes a sleeping worker
//!   and then the sleeping loop: the latency a lightly loaded server adds.
//! - `batch_of_64`: 64 jobs handed over at once, then all 64 collected: the
//!   cost per job when the pool is busy (reported per batch).
//!
//! Run: `cargo bench -p ch04-worker-pool --bench pools`

// The chapter is a binary crate, so the bench compiles the same source
// files itself instead of linking a library; what it does not use is dead.
#[allow(dead_code)]
#[path = "../src/connection.rs"]
mod connection;
#[allow(dead_code)]
#[path = "../src/sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "../src/workers.rs"]
mod workers;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use crate::connection::ConnectionId;
use crate::sys::{Epoll, Events, READABLE};
use crate::workers::{Completed, Job, PoolKind, Workers};

const WORKERS: usize = 2;
const BATCH: usize = 64;

/// A pool plus the epoll instance the loop would wait in.
struct Loop {
    workers: Workers,
    epoll: Epoll,
    events: Events,
    completed: Vec<Completed>,
}

impl Loop {
    fn new(kind: PoolKind) -> Loop {
        let workers = Workers::start(kind, WORKERS, 1024, Duration::ZERO).expect("start the pool");
        let epoll = Epoll::new().expect("epoll_create1");
        epoll
            .add(workers.waker_fd(), READABLE, 0)
            .expect("register the eventfd");
        Loop {
            workers,
            epoll,
            events: Events::with_capacity(8),
            completed: Vec::with_capacity(BATCH),
        }
    }

    /// Hands over `jobs` jobs of one 64-byte line each, then waits in
    /// `epoll_wait` until every result is back, as the server's loop does.
    fn round_trip(&mut self, jobs: usize) {
        for _ in 0..jobs {
            self.workers.submit(Job {
                connection: ConnectionId { fd: 0, serial: 1 },
                data: black_box(vec![b'x'; 64]),
            });
        }
        let mut back = 0;
        while back < jobs {
            self.epoll.wait(&mut self.events, None).expect("epoll_wait");
            self.workers
                .take_completed(&mut self.completed)
                .expect("take results");
            back += self.completed.len();
            black_box(&self.completed);
            self.completed.clear();
        }
    }
}

fn hand_off(c: &mut Criterion) {
    let mut group = c.benchmark_group("hand_off");
    for kind in [PoolKind::Hand, PoolKind::Rayon] {
        let name = match kind {
            PoolKind::Hand => "hand",
            PoolKind::Rayon => "rayon",
        };
        let mut event_loop = Loop::new(kind);
        group.bench_function(BenchmarkId::new("round_trip", name), |b| {
            b.iter(|| event_loop.round_trip(1));
        });
        group.bench_function(BenchmarkId::new("batch_of_64", name), |b| {
            b.iter(|| event_loop.round_trip(BATCH));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short: the machine is shared and has two cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hand_off
}
criterion_main!(benches);
