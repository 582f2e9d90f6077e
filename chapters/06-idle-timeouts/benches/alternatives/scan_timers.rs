//! The simplest alternative: remember each connection's deadline and, once
//! per scan interval, look at every connection.
//!
//! Schedule, touch and cancel are one store, O(1). Each scan is O(n) in the
//! number of connections, idle or not, due or not: at a million connections
//! that is a pass over megabytes of memory per scan. Accuracy is one scan
//! interval, so finer accuracy means more scans.
//!
//! (A server would record the last activity and compare it with
//! `now - idle_timeout`; storing the deadline `last_activity + timeout` is the
//! same thing, and lets this type share the method names of the others.)

use std::time::{Duration, Instant};

use crate::timer_wheel::TimerStats;

#[derive(Debug)]
pub struct ScanTimers {
    /// Each key's deadline, `None` if it has no timer.
    deadlines: Vec<Option<Instant>>,
    scan_interval: Duration,
    next_scan: Instant,
    armed: usize,
    stats: TimerStats,
}

impl ScanTimers {
    pub fn with_capacity(scan_interval: Duration, start: Instant, keys: usize) -> ScanTimers {
        ScanTimers {
            deadlines: vec![None; keys],
            scan_interval,
            next_scan: start + scan_interval,
            armed: 0,
            stats: TimerStats::default(),
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
        self.set(key, deadline);
    }

    pub fn touch(&mut self, key: usize, deadline: Instant) {
        self.stats.touched += 1;
        self.set(key, deadline);
    }

    pub fn cancel(&mut self, key: usize) -> bool {
        self.stats.cancelled += 1;
        match self.deadlines.get_mut(key).and_then(Option::take) {
            Some(_) => {
                self.armed -= 1;
                true
            }
            None => false,
        }
    }

    /// If a scan is due, looks at every key and fires those past deadline.
    pub fn expire(&mut self, now: Instant, mut on_expired: impl FnMut(usize)) -> usize {
        if now < self.next_scan {
            return 0;
        }
        let mut fired = 0;
        for (key, deadline) in self.deadlines.iter_mut().enumerate() {
            if deadline.is_some_and(|deadline| deadline <= now) {
                *deadline = None;
                fired += 1;
                on_expired(key);
            }
        }
        self.armed -= fired;
        self.next_scan = now + self.scan_interval;
        self.stats.expired += fired as u64;
        fired
    }

    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.armed == 0 {
            return None;
        }
        Some(self.next_scan.saturating_duration_since(now))
    }

    fn set(&mut self, key: usize, deadline: Instant) {
        if key >= self.deadlines.len() {
            self.deadlines.resize(key + 1, None);
        }
        if self.deadlines[key].replace(deadline).is_none() {
            self.armed += 1;
        }
    }
}
