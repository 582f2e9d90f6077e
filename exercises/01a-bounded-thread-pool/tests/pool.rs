//! The pool on its own: every job runs, on the pool's threads, never more
//! than `n` at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use ex01_bounded_thread_pool::ThreadPool;

/// Generous: only reached when the pool is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

#[test]
fn every_queued_job_has_run_when_drop_returns() {
    let finished = Arc::new(AtomicUsize::new(0));
    let pool = ThreadPool::new(4);
    for _ in 0..200 {
        let finished = Arc::clone(&finished);
        pool.execute(move || {
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }
    drop(pool);
    assert_eq!(finished.load(Ordering::SeqCst), 200);
}

#[test]
fn jobs_run_on_at_most_n_distinct_threads_none_of_them_the_caller() {
    let thread_ids = Arc::new(Mutex::new(HashSet::new()));
    let pool = ThreadPool::new(3);
    for _ in 0..60 {
        let thread_ids = Arc::clone(&thread_ids);
        pool.execute(move || {
            thread_ids.lock().unwrap().insert(thread::current().id());
        });
    }
    drop(pool);
    let thread_ids = thread_ids.lock().unwrap();
    assert!(
        !thread_ids.is_empty() && thread_ids.len() <= 3,
        "60 jobs ran on {} threads; a pool of 3 has 3",
        thread_ids.len()
    );
    assert!(!thread_ids.contains(&thread::current().id()));
}

#[test]
fn never_more_than_n_jobs_run_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    let pool = ThreadPool::new(3);
    for _ in 0..30 {
        let running = Arc::clone(&running);
        let most_running = Arc::clone(&most_running);
        pool.execute(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most_running.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(pool);
    let most = most_running.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&most),
        "{most} jobs ran at once on a pool of 3"
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    HeldJobStarted,
    FirstJobReleased,
    ExtraJobStarted,
}

#[test]
fn n_jobs_run_together_and_the_next_one_waits_for_a_free_thread() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel();
    let gates: Vec<_> = (0..2).map(|_| mpsc::channel::<()>()).collect();
    let pool = ThreadPool::new(2);

    // Two jobs that hold their threads until we let them go.
    let mut releases = Vec::new();
    for (release, wait_for_release) in gates {
        releases.push(release);
        let events = Arc::clone(&events);
        let started_tx = started_tx.clone();
        pool.execute(move || {
            events.lock().unwrap().push(Event::HeldJobStarted);
            started_tx.send(()).unwrap();
            // Returns on a release message, or when the test drops the sender.
            let _ = wait_for_release.recv();
        });
    }
    // Both must be running at the same time: a pool of 2 runs 2 jobs.
    for started in 0..2 {
        started_rx
            .recv_timeout(FAILSAFE)
            .unwrap_or_else(|_| panic!("only {started} of 2 jobs started on a pool of 2 threads"));
    }

    // A third job: it must not start while both threads are held.
    let (extra_done_tx, extra_done_rx) = mpsc::channel();
    {
        let events = Arc::clone(&events);
        pool.execute(move || {
            events.lock().unwrap().push(Event::ExtraJobStarted);
            extra_done_tx.send(()).unwrap();
        });
    }
    // Give a pool without a bound every chance to run it early.
    thread::sleep(Duration::from_millis(100));
    events.lock().unwrap().push(Event::FirstJobReleased);
    releases[0].send(()).unwrap();
    extra_done_rx
        .recv_timeout(FAILSAFE)
        .expect("the extra job never ran after a thread became free");

    drop(releases);
    drop(pool);
    assert_eq!(
        *events.lock().unwrap(),
        [
            Event::HeldJobStarted,
            Event::HeldJobStarted,
            Event::FirstJobReleased,
            Event::ExtraJobStarted,
        ]
    );
}
