//! Exercise 04: keep one connection's echo in order while its lines run on
//! several worker threads at once.
//!
//! Chapter 04 keeps order the simple way: at most one job per connection is
//! in flight. The other way lets a connection have many jobs in flight (so
//! one busy client can use every core) and puts their results back in order
//! as they return: each job gets a sequence number when it is handed out,
//! and a result is released only when every earlier one has been.

use std::collections::BTreeMap;

/// Puts the results of one connection's jobs back in the order the jobs
/// were handed out, whatever order the workers finish them in.
#[derive(Debug)]
pub struct InOrder<T> {
    /// The sequence number the next job gets.
    next_to_assign: u64,
    /// The sequence number of the next result to release.
    next_to_release: u64,
    /// Results that came back before an earlier one, by sequence number.
    waiting: BTreeMap<u64, T>,
}

impl<T> InOrder<T> {
    pub fn new() -> InOrder<T> {
        InOrder {
            next_to_assign: 0,
            next_to_release: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// The sequence number for a job about to be handed to a worker.
    pub fn assign(&mut self) -> u64 {
        let sequence = self.next_to_assign;
        self.next_to_assign += 1;
        sequence
    }

    /// Jobs assigned whose results have not been released yet.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.next_to_assign - self.next_to_release).unwrap_or(usize::MAX)
    }

    /// Results that arrived early and wait for an earlier one.
    pub fn held_back(&self) -> usize {
        self.waiting.len()
    }

    /// A worker finished job `sequence` with `result`.
    ///
    /// # Panics
    ///
    /// If `sequence` was never assigned, or was completed already.
    pub fn complete(&mut self, sequence: u64, result: T) {
        assert!(
            (self.next_to_release..self.next_to_assign).contains(&sequence),
            "job {sequence} is not in flight"
        );
        let earlier = self.waiting.insert(sequence, result);
        assert!(earlier.is_none(), "job {sequence} completed twice");
    }

    /// The next result in order, if it has arrived; `None` while the oldest
    /// outstanding job is still running (even if later ones are done).
    pub fn pop_ready(&mut self) -> Option<T> {
        // The map is ordered, so the oldest waiting result is its first
        // entry; it is releasable only if it is the very next one.
        let result = self.waiting.remove(&self.next_to_release)?;
        self.next_to_release += 1;
        Some(result)
    }
}

impl<T> Default for InOrder<T> {
    fn default() -> InOrder<T> {
        InOrder::new()
    }
}
