//! Exercise 04: the bounded job queue between an event loop and its workers.
//!
//! The event loop must never block: if it waited for room in a full queue,
//! every other client would wait too. So pushing is *try*-push: when the
//! queue is full the job comes straight back, and the loop stops reading
//! that client until a worker frees a place (the bytes stay in the kernel's
//! socket buffer, and TCP flow control slows the client down). Workers, on
//! the other hand, have nothing to do but wait: `pop` blocks.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// A first-in, first-out queue of at most `capacity` jobs, shared by one
/// producer that must not block and any number of consumers that may.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    capacity: usize,
    state: Mutex<State<T>>,
    /// Signalled when a job arrives or the queue is closed.
    not_empty: Condvar,
}

#[derive(Debug)]
struct State<T> {
    jobs: VecDeque<T>,
    closed: bool,
}

impl<T> BoundedQueue<T> {
    /// # Panics
    ///
    /// If `capacity` is zero: a queue that can never take a job is a bug.
    pub fn new(capacity: usize) -> BoundedQueue<T> {
        assert!(capacity > 0, "a queue needs room for at least one job");
        BoundedQueue {
            capacity,
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            not_empty: Condvar::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs queued right now.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `job` and wakes one waiting worker, or, if the queue is full
    /// (or closed), hands `job` straight back as `Err(job)`. Never blocks
    /// for longer than it takes to lock.
    pub fn try_push(&self, job: T) -> Result<(), T> {
        let mut state = self.state.lock().unwrap();
        if state.closed || state.jobs.len() >= self.capacity {
            return Err(job);
        }
        state.jobs.push_back(job);
        // Unlock before notifying, so the woken worker does not wake up
        // only to find the lock still held.
        drop(state);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Takes the oldest job, waiting while the queue is empty. Returns
    /// `None` once the queue is closed *and* empty: the worker's signal to
    /// exit. Jobs queued before `close` are still handed out.
    pub fn pop(&self) -> Option<T> {
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            // Releases the lock while asleep; wake-ups can be spurious, so
            // check again in the loop.
            state = self.not_empty.wait(state).unwrap();
        }
    }

    /// No more jobs will come: wake every waiting worker.
    pub fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.not_empty.notify_all();
    }
}
