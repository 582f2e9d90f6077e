//! Exercise 06 — turn the timing wheel.
//!
//! A hashed timing wheel for idle-connection deadlines, as chapter 06's
//! server uses it: a ring of `slots` lists, one per tick; a timer whose
//! deadline falls in tick `t` waits in list `t % slots`. Everything is here
//! except [`TimerWheel::expire`], the tick that fires what is due. Write it.
//!
//! - The links live in a `Vec` indexed by connection key (the slab's key),
//!   one [`TimerLink`] per key: the lists are intrusive and doubly linked, a
//!   slot holds only the key of its first timer, and no timer is allocated
//!   on its own.
//! - `touch` is lazy: it only stores the later `deadline_tick` and leaves
//!   the timer in its list. `expire` finds it there and moves it.
//! - A deadline more than one revolution away shares a list with nearer
//!   ones; `check_tick` says on which visit the wheel should look at it.

use std::time::{Duration, Instant};

/// "No timer" in a neighbour key or a slot head.
const NIL: u32 = u32::MAX;
/// `check_tick` of a key whose timer is not scheduled.
const NOT_SCHEDULED: u64 = u64::MAX;

/// The per-connection part of the wheel: where this connection's timer sits
/// and when it is due. 24 bytes per connection key.
#[derive(Clone, Copy, Debug)]
pub struct TimerLink {
    /// Keys of the neighbours in the slot's list (`NIL` at either end).
    prev: u32,
    next: u32,
    /// The tick at which the wheel will next look at this timer; the timer
    /// sits in slot `check_tick % slots`. `NOT_SCHEDULED` if it is not armed.
    check_tick: u64,
    /// The first tick that starts at or after the deadline: the timer fires
    /// when this tick has begun, so never before the deadline. A touch may
    /// move it past `check_tick` (see the module docs).
    deadline_tick: u64,
}

impl TimerLink {
    const UNSCHEDULED: TimerLink = TimerLink {
        prev: NIL,
        next: NIL,
        check_tick: NOT_SCHEDULED,
        deadline_tick: NOT_SCHEDULED,
    };

    fn is_scheduled(&self) -> bool {
        self.check_tick != NOT_SCHEDULED
    }
}

/// Counters for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerStats {
    /// Calls to `schedule`.
    pub scheduled: u64,
    /// Calls to `touch`.
    pub touched: u64,
    /// Calls to `cancel`.
    pub cancelled: u64,
    /// Timers that fired (for the server: connections reaped).
    pub expired: u64,
    /// Timers relinked because a touch had moved their deadline: the work a
    /// lazy touch defers. (Always 0 for structures without lazy touch.)
    pub moved: u64,
}

impl TimerStats {
    /// Every operation the owner asked for: schedule, touch and cancel.
    pub fn timer_ops(&self) -> u64 {
        self.scheduled + self.touched + self.cancelled
    }
}

/// A hashed timing wheel keyed by connection-slab key.
#[derive(Debug)]
pub struct TimerWheel {
    /// Tick 0 begins here; tick `t` covers `[start + t*tick, start + (t+1)*tick)`.
    start: Instant,
    tick_nanos: u64,
    /// `slots - 1`; the number of slots is a power of two, so `tick % slots`
    /// is `tick & slot_mask`.
    slot_mask: u64,
    /// Key of the first timer in each slot's list, or `NIL`.
    slot_heads: Vec<u32>,
    /// One link per connection key, indexed like the slab.
    links: Vec<TimerLink>,
    /// The first tick not yet processed by `expire`.
    next_tick: u64,
    /// How many timers are scheduled.
    armed: usize,
    stats: TimerStats,
}

impl TimerWheel {
    /// A wheel with ticks of length `tick` and `slots` lists (rounded up to a
    /// power of two) whose tick 0 starts at `start`.
    ///
    /// # Panics
    ///
    /// If `tick` is shorter than a nanosecond or `slots` is 0.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> TimerWheel {
        TimerWheel::with_capacity(tick, slots, start, 0)
    }

    /// Like [`TimerWheel::new`], with room for keys `0..keys` already made,
    /// so that scheduling them never grows a `Vec`.
    pub fn with_capacity(tick: Duration, slots: usize, start: Instant, keys: usize) -> TimerWheel {
        let tick_nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        assert!(tick_nanos > 0, "timer wheel tick must be at least 1 ns");
        assert!(slots > 0, "timer wheel needs at least one slot");
        let slots = slots.next_power_of_two();
        TimerWheel {
            start,
            tick_nanos,
            slot_mask: slots as u64 - 1,
            slot_heads: vec![NIL; slots],
            links: vec![TimerLink::UNSCHEDULED; keys],
            next_tick: 0,
            armed: 0,
            stats: TimerStats::default(),
        }
    }

    /// The length of one tick: the most a timer can fire late.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// The number of slots (a power of two).
    pub fn slots(&self) -> usize {
        self.slot_heads.len()
    }

    /// How many timers are scheduled.
    pub fn len(&self) -> usize {
        self.armed
    }

    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    pub fn stats(&self) -> TimerStats {
        self.stats
    }

    /// Whether `key` has a timer scheduled.
    pub fn is_scheduled(&self, key: usize) -> bool {
        self.links.get(key).is_some_and(TimerLink::is_scheduled)
    }

    /// The earliest instant at which `key`'s timer can fire: its deadline
    /// rounded up to the start of a tick. `None` if it is not scheduled.
    pub fn fires_at(&self, key: usize) -> Option<Instant> {
        let link = self.links.get(key).filter(|link| link.is_scheduled())?;
        Some(self.tick_start(link.deadline_tick))
    }

    /// Arms `key`'s timer to fire at `deadline` (or, if it is armed already,
    /// moves it there). A deadline in the past fires at the next `expire`.
    pub fn schedule(&mut self, key: usize, deadline: Instant) {
        self.stats.scheduled += 1;
        let deadline_tick = self.tick_at_or_after(deadline);
        self.place(key, deadline_tick);
    }

    /// Puts `key`'s timer in the list for `deadline_tick`, unlinking it from
    /// wherever it was.
    fn place(&mut self, key: usize, deadline_tick: u64) {
        if key >= self.links.len() {
            assert!(key < NIL as usize, "timer wheel keys must fit in u32");
            // Amortised growth, once per new highest key; a slab reuses keys.
            self.links.resize(key + 1, TimerLink::UNSCHEDULED);
        }
        if self.links[key].is_scheduled() {
            self.unlink(key);
        } else {
            self.armed += 1;
        }
        self.links[key].deadline_tick = deadline_tick;
        // A deadline in a tick already processed goes in the next one.
        self.link(key, deadline_tick.max(self.next_tick));
    }

    /// Pushes `key`'s deadline to `deadline`: call it on every read and write
    /// with `now + idle_timeout`. If the timer stays where it is until then,
    /// this is one store; the wheel relinks the timer when its slot comes up.
    /// An earlier deadline, or a key with no timer, is scheduled eagerly.
    pub fn touch(&mut self, key: usize, deadline: Instant) {
        self.stats.touched += 1;
        let deadline_tick = self.tick_at_or_after(deadline);
        match self.links.get_mut(key) {
            // The wheel looks at the timer at `check_tick`, no later than the
            // new deadline, and will find the new deadline then.
            Some(link) if link.is_scheduled() && deadline_tick >= link.check_tick => {
                link.deadline_tick = deadline_tick;
            }
            _ => self.place(key, deadline_tick),
        }
    }

    /// Disarms `key`'s timer (call it when the connection closes, before its
    /// key is reused). Returns whether a timer was armed.
    pub fn cancel(&mut self, key: usize) -> bool {
        self.stats.cancelled += 1;
        if !self.is_scheduled(key) {
            return false;
        }
        self.unlink(key);
        self.links[key] = TimerLink::UNSCHEDULED;
        self.armed -= 1;
        true
    }

    /// Fires every timer whose deadline is at or before the start of the
    /// current tick, calling `on_expired(key)` for each (its timer is already
    /// disarmed). Returns how many fired. Call it after every `epoll_wait`;
    /// ticks missed by a late call are caught up on, each slot visited once.
    pub fn expire(&mut self, now: Instant, on_expired: impl FnMut(usize)) -> usize {
        let _ = (now, on_expired);
        todo!(
            "visit the slots of the ticks begun since the last call; fire, skip or move each timer"
        )
    }

    /// How long the event loop may sleep before it must call `expire`: until
    /// the start of the first tick whose slot holds a timer, or `None` when
    /// no timer is armed. Pass it as the `epoll_wait` timeout, rounded *up* to
    /// whole milliseconds, and no timer fires more than one tick late.
    ///
    /// The slot found may hold only timers of a later revolution or touched
    /// timers that will just move; then the loop wakes for nothing, which
    /// costs one `epoll_wait` and never a late timer.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.armed == 0 {
            return None;
        }
        let slots = self.slot_mask + 1;
        let wake_tick = (self.next_tick..self.next_tick + slots)
            .find(|&tick| self.slot_heads[(tick & self.slot_mask) as usize] != NIL)
            .unwrap_or(self.next_tick);
        Some(self.tick_start(wake_tick).saturating_duration_since(now))
    }

    /// Pushes `key` onto the front of the list for `check_tick`.
    fn link(&mut self, key: usize, check_tick: u64) {
        let slot = (check_tick & self.slot_mask) as usize;
        let old_head = self.slot_heads[slot];
        let link = &mut self.links[key];
        link.prev = NIL;
        link.next = old_head;
        link.check_tick = check_tick;
        if old_head != NIL {
            self.links[old_head as usize].prev = key as u32;
        }
        self.slot_heads[slot] = key as u32;
    }

    /// Takes `key` out of its slot's list; its neighbours close the gap.
    fn unlink(&mut self, key: usize) {
        let TimerLink {
            prev,
            next,
            check_tick,
            ..
        } = self.links[key];
        if prev == NIL {
            self.slot_heads[(check_tick & self.slot_mask) as usize] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
    }

    /// Nanoseconds from `start` to `t` (0 if `t` is earlier).
    fn nanos_since_start(&self, t: Instant) -> u64 {
        let elapsed = t.saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The first tick that starts at or after `t`. A timer for `t` fires
    /// when that tick begins, so never before `t`.
    fn tick_at_or_after(&self, t: Instant) -> u64 {
        self.nanos_since_start(t).div_ceil(self.tick_nanos)
    }

    /// The tick that `t` falls in (the last tick to have begun by `t`).
    fn tick_at_or_before(&self, t: Instant) -> u64 {
        self.nanos_since_start(t) / self.tick_nanos
    }

    fn tick_start(&self, tick: u64) -> Instant {
        self.start + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }
}
