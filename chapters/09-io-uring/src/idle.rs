//! `--idle-timeout`: the policy around the timing wheel. Which connections
//! count as idle, how fine the wheel's tick is, and what the summary says.
//!
//! A connection is idle while no data moves in either direction: a `read`
//! that returned bytes or a `write` that sent some pushes its deadline to
//! `now + timeout`. Readiness alone does not (an `EPOLLOUT` edge moves no
//! data), and neither does a client we stopped reading because it does not
//! read its echo: it moves nothing, so it is reaped like any idle one.

use std::time::{Duration, Instant};

use crate::timer_wheel::{TimerStats, TimerWheel};

/// The wheel's tick is this fraction of the timeout: a connection is closed
/// at most 1% late (plus how late the OS wakes us), and a revolution of the
/// wheel covers the whole timeout in ~100 slots.
const TICKS_PER_TIMEOUT: u32 = 100;
/// No finer than this: `epoll_wait` sleeps in whole milliseconds anyway.
const MIN_TICK: Duration = Duration::from_millis(1);

// ANCHOR: idle_timeouts
/// One deadline per connection, kept in a wheel indexed by slab slot.
#[derive(Debug)]
pub struct IdleTimeouts {
    timeout: Duration,
    wheel: TimerWheel,
}

impl IdleTimeouts {
    pub fn new(timeout: Duration, start: Instant) -> IdleTimeouts {
        let tick = (timeout / TICKS_PER_TIMEOUT).max(MIN_TICK);
        // One slot more than a timeout's worth of ticks, so a deadline never
        // shares a slot with one a revolution later (rounded up to a power
        // of two inside the wheel).
        let slots = usize::try_from(timeout.as_nanos().div_ceil(tick.as_nanos()))
            .unwrap_or(usize::MAX - 1)
            + 1;
        IdleTimeouts {
            timeout,
            wheel: TimerWheel::new(tick, slots, start),
        }
    }

    /// A new connection in slot `key`: idle from now.
    pub fn on_accept(&mut self, key: usize, now: Instant) {
        self.wheel.schedule(key, now + self.timeout);
    }

    /// Connection `key` moved data at `now`: one store in the common case.
    pub fn on_activity(&mut self, key: usize, now: Instant) {
        self.wheel.touch(key, now + self.timeout);
    }

    /// Connection `key` is closing: disarm its timer before the slab hands
    /// its slot to someone else.
    pub fn on_close(&mut self, key: usize) {
        self.wheel.cancel(key);
    }

    /// How long the turn's `io_uring_enter` may wait before a deadline is due.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.wheel.next_timeout(now)
    }

    /// The slab has shrunk to `keys` slots: let the wheel shrink with it.
    pub fn shrink_keys(&mut self, keys: usize) {
        self.wheel.shrink_keys(keys);
    }

    /// Appends to `expired` the slots of the connections idle for the
    /// timeout by `now`. Their timers are disarmed: the caller closes them
    /// (or re-arms one that turns out to be waiting on us, not idle).
    pub fn expire(&mut self, now: Instant, expired: &mut Vec<usize>) {
        self.wheel.expire(now, |key| expired.push(key));
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The most a connection can be closed late, by design.
    pub fn tick(&self) -> Duration {
        self.wheel.tick()
    }

    pub fn slots(&self) -> usize {
        self.wheel.slots()
    }

    pub fn stats(&self) -> TimerStats {
        self.wheel.stats()
    }
}
// ANCHOR_END: idle_timeouts
