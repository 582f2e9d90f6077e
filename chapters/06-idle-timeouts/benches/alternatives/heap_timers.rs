//! The textbook alternative: a binary min-heap of deadlines.
//!
//! A `BinaryHeap` cannot find or remove an entry in the middle, so a touch or
//! a cancel does not touch the old entry: it bumps the key's generation, and
//! an entry whose generation is no longer the key's live one is skipped when
//! it reaches the top ("lazy deletion"). Schedule and touch are a push,
//! O(log n) in general (O(1) on average when deadlines only grow, as idle
//! deadlines do); each expiry is a pop, O(log n). Fires exactly at the
//! deadline. Stale entries are compacted away once they outnumber the live
//! ones, so memory stays bounded however often connections are touched.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::timer_wheel::TimerStats;

/// Generation of a key with no live timer.
const NOT_ARMED: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HeapEntry {
    deadline: Instant,
    generation: u64,
    key: usize,
}

#[derive(Debug, Default)]
pub struct HeapTimers {
    /// Earliest deadline on top; holds stale entries too.
    heap: BinaryHeap<Reverse<HeapEntry>>,
    /// The generation of each key's live entry, or `NOT_ARMED`.
    live_generation: Vec<u64>,
    last_generation: u64,
    armed: usize,
    stats: TimerStats,
}

impl HeapTimers {
    pub fn with_capacity(keys: usize) -> HeapTimers {
        HeapTimers {
            heap: BinaryHeap::with_capacity(keys),
            live_generation: vec![NOT_ARMED; keys],
            ..HeapTimers::default()
        }
    }

    pub fn len(&self) -> usize {
        self.armed
    }

    pub fn stats(&self) -> TimerStats {
        self.stats
    }

    pub fn schedule(&mut self, key: usize, deadline: Instant) {
        self.stats.scheduled += 1;
        self.push(key, deadline);
    }

    /// Same as `schedule`: the old entry cannot be moved, only superseded.
    pub fn touch(&mut self, key: usize, deadline: Instant) {
        self.stats.touched += 1;
        self.push(key, deadline);
    }

    pub fn cancel(&mut self, key: usize) -> bool {
        self.stats.cancelled += 1;
        match self.live_generation.get_mut(key) {
            Some(generation) if *generation != NOT_ARMED => {
                *generation = NOT_ARMED;
                self.armed -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn expire(&mut self, now: Instant, mut on_expired: impl FnMut(usize)) -> usize {
        let mut fired = 0;
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.deadline > now {
                break;
            }
            let HeapEntry {
                generation, key, ..
            } = *top;
            self.heap.pop();
            if self.live_generation[key] == generation {
                self.live_generation[key] = NOT_ARMED;
                self.armed -= 1;
                fired += 1;
                on_expired(key);
            }
        }
        self.stats.expired += fired as u64;
        fired
    }

    /// Until the top entry's deadline. The top may be stale, which only
    /// makes the loop wake early for nothing.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.armed == 0 {
            return None;
        }
        let Reverse(top) = self.heap.peek()?;
        Some(top.deadline.saturating_duration_since(now))
    }

    fn push(&mut self, key: usize, deadline: Instant) {
        if key >= self.live_generation.len() {
            self.live_generation.resize(key + 1, NOT_ARMED);
        }
        if self.live_generation[key] == NOT_ARMED {
            self.armed += 1;
        }
        self.last_generation += 1;
        self.live_generation[key] = self.last_generation;
        self.heap.push(Reverse(HeapEntry {
            deadline,
            generation: self.last_generation,
            key,
        }));
        // Amortised O(1): a rebuild costs O(heap) and happens only after
        // that many pushes made stale entries.
        if self.heap.len() > 2 * self.armed + 1024 {
            let live = &self.live_generation;
            self.heap
                .retain(|Reverse(entry)| live[entry.key] == entry.generation);
        }
    }
}
