//! A hashed timing wheel for idle-connection deadlines.
//!
//! Time is cut into ticks of a fixed length (say 100 ms). The wheel is a
//! ring of `slots` lists; a timer whose deadline falls in tick `t` sits in
//! list `t % slots`. Every tick the event loop looks at one list and closes
//! the connections in it whose deadline has come. Insert, move and cancel are
//! a few pointer writes, whatever the number of timers, and the price is
//! accuracy: a timer fires up to one tick after its deadline, never before.
//!
//! # Where the timers live
//!
//! The connections already live in a slab: a `Vec` indexed by a small integer
//! key. The wheel keeps one [`TimerLink`] per key in a `Vec` of its own, side
//! by side with the slab, so a connection's timer is found by the same key
//! and no timer is ever allocated on its own. The lists are *intrusive*: a
//! link holds the keys of its neighbours, and a slot holds only the key of
//! its first timer. (The links could live inside the slab entries instead,
//! but unlinking a timer writes to its neighbours' links, so the wheel would
//! then need the whole slab borrowed mutably for every timer operation. A
//! parallel `Vec` keeps the wheel one self-contained value.)
//!
//! # Touch is a single store
//!
//! An idle timeout is pushed back on every read and every write, so a touch
//! must cost next to nothing. [`TimerWheel::touch`] only records the later
//! deadline and leaves the timer where it is. When its list comes up, the
//! wheel sees that the deadline has moved and relinks the timer into the
//! list for its new deadline: a busy connection is relinked once per timeout
//! period, not once per read.
//!
//! # Deadlines beyond one revolution
//!
//! A deadline more than `slots` ticks away shares a list with nearer ones;
//! each link records the absolute tick at which it is due to be looked at
//! (`check_tick`), and a visit skips the links whose tick is a later
//! revolution. Size the wheel so that the longest timeout fits in one
//! revolution (`slots * tick >= timeout`) and this never happens.

use std::time::{Duration, Instant};

/// "No timer" in a neighbour key or a slot head.
const NIL: u32 = u32::MAX;
/// `check_tick` of a key whose timer is not scheduled.
const NOT_SCHEDULED: u64 = u64::MAX;

// ANCHOR: timer_link
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
// ANCHOR_END: timer_link

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

// ANCHOR: timer_wheel
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
// ANCHOR_END: timer_wheel

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
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.armed
    }

    #[cfg(test)]
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

    /// The capacities of the wheel's two `Vec`s, to check that steady-state
    /// use does not allocate.
    #[cfg(test)]
    pub fn capacities(&self) -> (usize, usize) {
        (self.slot_heads.capacity(), self.links.capacity())
    }

    // ANCHOR: schedule
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
    // ANCHOR_END: schedule

    // ANCHOR: touch
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
    // ANCHOR_END: touch

    // ANCHOR: cancel
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
    // ANCHOR_END: cancel

    /// Gives back the links of keys `keys..` after the slab has shrunk below
    /// them (see `Slab::shrink_if_mostly_empty`): the `Vec` grew to the
    /// highest key ever scheduled and would otherwise keep 24 bytes per
    /// connection of the peak. Only unarmed links at the end are dropped.
    pub fn shrink_keys(&mut self, keys: usize) {
        while self.links.len() > keys && self.links.last().is_some_and(|l| !l.is_scheduled()) {
            self.links.pop();
        }
        self.links.shrink_to(keys);
    }

    // ANCHOR: expire
    // ANCHOR: expire_1
    // ANCHOR_END: expire_1
    // ANCHOR: expire_signature
    /// Fires every timer whose deadline is at or before the start of the
    /// current tick, calling `on_expired(key)` for each (its timer is already
    /// disarmed). Returns how many fired. Call it after every `epoll_wait`;
    /// ticks missed by a late call are caught up on, each slot visited once.
    pub fn expire(&mut self, now: Instant, mut on_expired: impl FnMut(usize)) -> usize {
        // ANCHOR_END: expire_signature
        let now_tick = self.tick_at_or_before(now);
        if now_tick < self.next_tick {
            return 0; // still inside a tick already processed
        }
        let slots_due = (now_tick - self.next_tick + 1).min(self.slot_mask + 1);
        let mut fired = 0;
        for tick in self.next_tick..self.next_tick + slots_due {
            let slot = (tick & self.slot_mask) as usize;
            let mut cursor = self.slot_heads[slot];
            while cursor != NIL {
                let key = cursor as usize;
                let link = self.links[key];
                cursor = link.next; // read before `key` is unlinked
                if link.check_tick > now_tick {
                    continue; // due in a later revolution
                }
                if link.deadline_tick <= now_tick {
                    self.unlink(key);
                    self.links[key] = TimerLink::UNSCHEDULED;
                    self.armed -= 1;
                    fired += 1;
                    on_expired(key);
                } else {
                    // Touched since it was placed: move it to its deadline.
                    self.stats.moved += 1;
                    if link.deadline_tick & self.slot_mask == slot as u64 {
                        self.links[key].check_tick = link.deadline_tick;
                    } else {
                        self.unlink(key);
                        self.link(key, link.deadline_tick);
                    }
                }
            }
        }
        self.next_tick = now_tick + 1;
        self.stats.expired += fired as u64;
        fired
    }
    // ANCHOR: expire_2
    // ANCHOR_END: expire_2
    // ANCHOR_END: expire

    // ANCHOR: next_timeout
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
    // ANCHOR_END: next_timeout

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TICK: Duration = Duration::from_millis(10);

    fn wheel(slots: usize) -> (TimerWheel, Instant) {
        let start = Instant::now();
        (TimerWheel::new(TICK, slots, start), start)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn expired_at(wheel: &mut TimerWheel, now: Instant) -> Vec<usize> {
        let mut keys = Vec::new();
        wheel.expire(now, |key| keys.push(key));
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_timer_costs_24_bytes_per_connection() {
        assert_eq!(size_of::<TimerLink>(), 24);
    }

    #[test]
    fn never_fires_before_its_deadline() {
        let (mut wheel, start) = wheel(64);
        // 25 ms is inside tick 2; it must wait for tick 3 (30 ms).
        wheel.schedule(7, start + ms(25));
        for now_ms in 0..30 {
            assert!(
                expired_at(&mut wheel, start + ms(now_ms)).is_empty(),
                "{now_ms} ms"
            );
        }
        assert_eq!(expired_at(&mut wheel, start + ms(30)), [7]);
    }

    #[test]
    fn fires_within_one_tick_of_its_deadline() {
        let (mut wheel, start) = wheel(64);
        let deadline = start + ms(25);
        wheel.schedule(1, deadline);
        let fire_at = start + wheel.next_timeout(start).unwrap();
        assert!(fire_at >= deadline && fire_at - deadline <= TICK);
        assert_eq!(expired_at(&mut wheel, fire_at), [1]);
    }

    #[test]
    fn deadline_on_a_tick_boundary_fires_on_that_tick() {
        let (mut wheel, start) = wheel(64);
        wheel.schedule(3, start + ms(40));
        assert!(expired_at(&mut wheel, start + ms(39)).is_empty());
        assert_eq!(expired_at(&mut wheel, start + ms(40)), [3]);
    }

    #[test]
    fn touched_timer_fires_at_its_new_deadline_not_its_old_one() {
        let (mut wheel, start) = wheel(64);
        wheel.schedule(4, start + ms(50));
        wheel.schedule(5, start + ms(50));
        wheel.touch(4, start + ms(120));
        assert_eq!(expired_at(&mut wheel, start + ms(50)), [5]);
        assert_eq!(wheel.stats().moved, 1, "the touched timer was relinked");
        assert!(expired_at(&mut wheel, start + ms(119)).is_empty());
        assert_eq!(expired_at(&mut wheel, start + ms(120)), [4]);
    }

    #[test]
    fn touch_to_an_earlier_deadline_moves_the_timer_forward() {
        let (mut wheel, start) = wheel(64);
        wheel.schedule(2, start + ms(300));
        wheel.touch(2, start + ms(20));
        assert_eq!(expired_at(&mut wheel, start + ms(20)), [2]);
    }

    #[test]
    fn touch_without_a_timer_schedules_one() {
        let (mut wheel, start) = wheel(64);
        wheel.touch(9, start + ms(10));
        assert!(wheel.is_scheduled(9));
        assert_eq!(expired_at(&mut wheel, start + ms(10)), [9]);
    }

    #[test]
    fn cancelled_timer_never_fires() {
        let (mut wheel, start) = wheel(64);
        wheel.schedule(1, start + ms(10));
        wheel.schedule(2, start + ms(10));
        wheel.schedule(3, start + ms(10));
        assert!(wheel.cancel(2));
        assert!(!wheel.cancel(2), "second cancel finds nothing armed");
        assert_eq!(expired_at(&mut wheel, start + ms(1000)), [1, 3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadline_beyond_one_revolution_fires_on_the_right_revolution() {
        // 8 slots of 10 ms: one revolution is 80 ms.
        let (mut wheel, start) = wheel(8);
        wheel.schedule(1, start + ms(30));
        wheel.schedule(2, start + ms(30 + 80));
        wheel.schedule(3, start + ms(30 + 3 * 80));
        let mut fired = Vec::new();
        for now_ms in 0..=400 {
            wheel.expire(start + ms(now_ms), |key| fired.push((key, now_ms)));
        }
        assert_eq!(fired, [(1, 30), (2, 110), (3, 270)]);
        // Passing over a later revolution's timer leaves it where it is.
        assert_eq!(wheel.stats().moved, 0);
    }

    #[test]
    fn late_expire_call_fires_everything_due_and_nothing_else() {
        let (mut wheel, start) = wheel(8);
        for key in 0..20 {
            wheel.schedule(key, start + ms(10 * key as u64));
        }
        // One call, 15 ticks late: more than a whole revolution missed.
        let fired = expired_at(&mut wheel, start + ms(155));
        assert_eq!(fired, (0..=15).collect::<Vec<_>>());
        assert_eq!(expired_at(&mut wheel, start + ms(190)), [16, 17, 18, 19]);
    }

    #[test]
    fn past_deadline_fires_at_the_next_expire() {
        let (mut wheel, start) = wheel(16);
        wheel.expire(start + ms(100), |_| {});
        wheel.schedule(1, start + ms(20));
        assert_eq!(wheel.next_timeout(start + ms(100)), Some(ms(10)));
        assert_eq!(expired_at(&mut wheel, start + ms(110)), [1]);
    }

    #[test]
    fn next_timeout_sleeps_until_the_first_occupied_slot() {
        let (mut wheel, start) = wheel(64);
        assert_eq!(wheel.next_timeout(start), None);
        wheel.schedule(1, start + ms(95));
        assert_eq!(wheel.next_timeout(start + ms(3)), Some(ms(97)));
        wheel.cancel(1);
        assert_eq!(wheel.next_timeout(start), None);
    }

    #[test]
    fn stats_count_operations_and_expiries() {
        let (mut wheel, start) = wheel(64);
        wheel.schedule(1, start + ms(10));
        wheel.schedule(2, start + ms(10));
        wheel.touch(1, start + ms(20));
        wheel.cancel(2);
        wheel.expire(start + ms(50), |_| {});
        let stats = wheel.stats();
        assert_eq!(stats.timer_ops(), 4);
        assert_eq!(stats.expired, 1);
    }

    #[test]
    fn shrink_keys_drops_unarmed_links_past_the_end_only() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(Duration::from_millis(10), 16, start);
        for key in 0..5_000 {
            wheel.schedule(key, start + Duration::from_millis(50));
        }
        for key in 10..5_000 {
            wheel.cancel(key);
        }
        wheel.schedule(3_000, start + Duration::from_millis(50));
        wheel.shrink_keys(10);
        assert!(wheel.is_scheduled(3_000), "an armed link is never dropped");
        wheel.cancel(3_000);
        wheel.shrink_keys(10);
        assert!(wheel.capacities().1 < 5_000);
        assert_eq!(wheel.len(), 10);
        let fired = expired_at(&mut wheel, start + Duration::from_millis(60));
        assert_eq!(fired, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn internal_vectors_do_not_grow_in_steady_state() {
        let (mut wheel, start) = wheel(256);
        let timeout = ms(500);
        let keys = 1000;
        let mut now = start;
        let cycle = |wheel: &mut TimerWheel, now: Instant, round: usize| {
            // Every round: a tenth of the keys are active, expired keys
            // reconnect (the slab hands their keys out again).
            for key in (round % 10..keys).step_by(10) {
                wheel.touch(key, now + timeout);
            }
            let mut reaped = Vec::new();
            wheel.expire(now, |key| reaped.push(key));
            for key in reaped {
                wheel.schedule(key, now + timeout);
            }
        };
        for key in 0..keys {
            wheel.schedule(key, now + timeout);
        }
        for round in 0..200 {
            now += TICK;
            cycle(&mut wheel, now, round);
        }
        let warmed_up = wheel.capacities();
        for round in 0..2000 {
            now += TICK;
            cycle(&mut wheel, now, round);
        }
        assert_eq!(wheel.capacities(), warmed_up);
        assert_eq!(wheel.len(), keys);
    }

    /// xorshift64*: enough randomness for a test, no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Random schedule / touch / cancel / expire against a model that knows
    /// every key's deadline: at each `expire`, exactly the keys whose deadline
    /// rounded up to a tick (or the next unprocessed tick) has begun must fire.
    #[test]
    fn fires_exactly_the_keys_a_model_says() {
        for seed in 1..=10 {
            let mut rng = Rng(seed);
            // 16 slots of 10 ms; deadlines up to 500 ms away wrap it 3 times.
            let (mut wheel, start) = wheel(16);
            let tick_of = |t: Instant| (t - start).as_nanos().div_ceil(TICK.as_nanos());
            let mut model: BTreeMap<usize, u128> = BTreeMap::new();
            let mut next_tick = 0;
            let mut now = start;
            for step in 0..20_000 {
                let key = rng.below(64) as usize;
                let deadline = now + Duration::from_micros(rng.below(500_000));
                match rng.below(10) {
                    0..=2 => {
                        wheel.schedule(key, deadline);
                        model.insert(key, tick_of(deadline).max(next_tick));
                    }
                    3..=5 => {
                        wheel.touch(key, deadline);
                        model.insert(key, tick_of(deadline).max(next_tick));
                    }
                    6 => assert_eq!(wheel.cancel(key), model.remove(&key).is_some()),
                    _ => {
                        now += if rng.below(50) == 0 {
                            ms(rng.below(1000)) // a long stall
                        } else {
                            Duration::from_micros(rng.below(25_000))
                        };
                        let now_tick = (now - start).as_nanos() / TICK.as_nanos();
                        next_tick = next_tick.max(now_tick + 1);
                        let due: Vec<usize> = (model.iter())
                            .filter(|&(_, &fire_tick)| fire_tick <= now_tick)
                            .map(|(&key, _)| key)
                            .collect();
                        for key in &due {
                            model.remove(key);
                        }
                        assert_eq!(expired_at(&mut wheel, now), due, "seed {seed} step {step}");
                    }
                }
                assert_eq!(wheel.len(), model.len(), "seed {seed} step {step}");
            }
        }
    }

    /// The promise the server makes, in virtual time: a loop that sleeps
    /// exactly as long as `next_timeout` says (or less, when I/O wakes it
    /// first) fires every timer no earlier than its deadline and no later
    /// than one tick after it (or after the moment it was armed, for a
    /// deadline already past).
    #[test]
    fn driven_by_next_timeout_fires_within_one_tick_of_the_deadline() {
        for seed in 1..=10 {
            let mut rng = Rng(seed);
            let (mut wheel, start) = wheel(16);
            let mut promised: BTreeMap<usize, (Instant, Instant)> = BTreeMap::new();
            let mut now = start;
            for _ in 0..20_000 {
                let key = rng.below(64) as usize;
                let deadline = now + Duration::from_micros(rng.below(500_000));
                match rng.below(10) {
                    0..=2 => wheel.schedule(key, deadline),
                    3..=5 => wheel.touch(key, deadline),
                    6 => {
                        wheel.cancel(key);
                        promised.remove(&key);
                        continue;
                    }
                    _ => {
                        let sleep = wheel.next_timeout(now).unwrap_or(TICK * 7);
                        now += if rng.below(2) == 0 {
                            sleep
                        } else {
                            Duration::from_nanos(rng.below(sleep.as_nanos() as u64 + 1))
                        };
                        wheel.expire(now, |key| {
                            let (deadline, armed) = promised.remove(&key).unwrap();
                            assert!(now >= deadline, "seed {seed}: early");
                            let late = now - deadline.max(armed);
                            assert!(late <= TICK, "seed {seed}: {late:?} late");
                        });
                        continue;
                    }
                }
                promised.insert(key, (deadline, now));
            }
        }
    }
}
