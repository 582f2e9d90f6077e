//! The queue's contract: full means "here is your job back", never "wait";
//! jobs leave in order; workers sleep until there is work, and leave when
//! the queue is closed and drained.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use ex04_bounded_queue::BoundedQueue;

/// Generous: only reached when the queue is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

#[test]
fn try_push_hands_the_job_back_when_full() {
    let queue = BoundedQueue::new(2);
    assert_eq!(queue.try_push("a"), Ok(()));
    assert_eq!(queue.try_push("b"), Ok(()));
    assert_eq!(queue.try_push("c"), Err("c"), "full: the job comes back");
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.pop(), Some("a"));
    assert_eq!(queue.try_push("c"), Ok(()), "a place was freed");
}

#[test]
fn jobs_leave_in_the_order_they_came() {
    let queue = BoundedQueue::new(8);
    for n in 0..8 {
        queue.try_push(n).unwrap();
    }
    let popped: Vec<i32> = (0..8).map(|_| queue.pop().unwrap()).collect();
    assert_eq!(popped, (0..8).collect::<Vec<_>>());
    assert!(queue.is_empty());
}

#[test]
fn a_waiting_worker_wakes_when_a_job_arrives() {
    let queue = Arc::new(BoundedQueue::new(1));
    let (done, finished) = mpsc::channel();
    let started = Arc::new(Barrier::new(2));
    let worker = {
        let queue = Arc::clone(&queue);
        let started = Arc::clone(&started);
        thread::spawn(move || {
            started.wait();
            done.send(queue.pop()).unwrap();
        })
    };
    started.wait();
    queue.try_push(42).unwrap();
    assert_eq!(finished.recv_timeout(FAILSAFE), Ok(Some(42)));
    worker.join().unwrap();
}

#[test]
fn close_lets_workers_drain_the_queue_then_stop() {
    let queue = Arc::new(BoundedQueue::new(4));
    queue.try_push(1).unwrap();
    queue.try_push(2).unwrap();
    queue.close();
    assert_eq!(queue.try_push(3), Err(3), "closed: nothing more is taken");
    assert_eq!(queue.pop(), Some(1));
    assert_eq!(queue.pop(), Some(2));
    assert_eq!(queue.pop(), None);
    // Workers already asleep in `pop` must wake up and leave too.
    let empty = Arc::new(BoundedQueue::<u8>::new(1));
    let (done, finished) = mpsc::channel();
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let empty = Arc::clone(&empty);
            let done = done.clone();
            thread::spawn(move || done.send(empty.pop()).unwrap())
        })
        .collect();
    thread::sleep(Duration::from_millis(20)); // let them fall asleep (not required)
    empty.close();
    for _ in 0..3 {
        assert_eq!(finished.recv_timeout(FAILSAFE), Ok(None));
    }
    for sleeper in sleepers {
        sleeper.join().unwrap();
    }
}

/// The event loop's side of back-pressure: 2,000 "reads" handed to two
/// workers through a queue of 4. When `try_push` hands a job back, the loop
/// keeps it (as if left unread in the socket) and waits for a result before
/// trying again. Every job must come back exactly once, and the queue never
/// holds more than its capacity.
///
/// The workers are slow on purpose, and deterministically so: each takes a
/// job only when the loop gives it a permit, and the loop gives one only
/// when it is refused. So the first 4 pushes fit, every later push is
/// refused exactly once (the queue is full until a permit frees a place),
/// and the count of refusals is exact, not a matter of timing.
#[test]
fn a_loop_that_stops_reading_when_full_loses_nothing() {
    const JOBS: u32 = 2000;
    let queue = Arc::new(BoundedQueue::new(4));
    let (results, result_receiver) = mpsc::channel::<u32>();
    let (permits, permit_receiver) = mpsc::channel::<()>();
    let permit_receiver = Arc::new(Mutex::new(permit_receiver));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let results = results.clone();
            let permit_receiver = Arc::clone(&permit_receiver);
            thread::spawn(move || {
                loop {
                    let permit = permit_receiver.lock().unwrap().recv();
                    if permit.is_err() {
                        return; // the loop is done handing out work
                    }
                    let job = queue
                        .pop()
                        .expect("a permit is given only for a queued job");
                    results.send(job * 10).unwrap();
                }
            })
        })
        .collect();
    drop(results);

    let mut next_read: u32 = 0;
    let mut refused = 0;
    let mut received = Vec::new();
    while next_read < JOBS {
        match queue.try_push(next_read) {
            Ok(()) => next_read += 1,
            Err(job) => {
                assert_eq!(job, next_read, "the refused job came back unchanged");
                assert_eq!(queue.len(), queue.capacity(), "refused only when full");
                refused += 1;
                // Full: stop reading until a worker delivers a result.
                permits.send(()).unwrap();
                received.push(result_receiver.recv_timeout(FAILSAFE).unwrap());
            }
        }
        assert!(queue.len() <= queue.capacity());
    }
    // The last jobs still queued: let the workers take them.
    for _ in 0..queue.len() {
        permits.send(()).unwrap();
        received.push(result_receiver.recv_timeout(FAILSAFE).unwrap());
    }
    drop(permits);
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(queue.is_empty());
    received.sort_unstable();
    assert_eq!(received, (0..JOBS).map(|n| n * 10).collect::<Vec<_>>());
    // 2,000 jobs through 4 places: after the first 4, every push finds the
    // queue full once.
    assert_eq!(refused, JOBS - 4);
}
