//! The wheel's tick, tested in virtual time: the tests hand `expire` the
//! instants they choose, so nothing sleeps and nothing depends on the clock.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ex06_wheel_tick::TimerWheel;

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
    let count = wheel.expire(now, |key| keys.push(key));
    assert_eq!(count, keys.len(), "expire returns how many fired");
    keys.sort_unstable();
    keys
}

#[test]
fn never_fires_before_its_deadline() {
    let (mut wheel, start) = wheel(64);
    // 25 ms is inside tick 2; it must wait for tick 3 (30 ms).
    wheel.schedule(7, start + ms(25));
    for now_ms in 0..30 {
        assert!(
            expired_at(&mut wheel, start + ms(now_ms)).is_empty(),
            "fired at {now_ms} ms, before its 25 ms deadline's tick"
        );
    }
    assert_eq!(expired_at(&mut wheel, start + ms(30)), [7]);
    assert!(wheel.is_empty());
    assert!(!wheel.is_scheduled(7));
}

#[test]
fn fires_within_one_tick_when_woken_by_next_timeout() {
    let (mut wheel, start) = wheel(64);
    let deadline = start + ms(25);
    wheel.schedule(1, deadline);
    let wake = start + wheel.next_timeout(start).unwrap();
    assert!(wake >= deadline && wake - deadline <= TICK);
    assert_eq!(expired_at(&mut wheel, wake), [1]);
}

#[test]
fn deadline_on_a_tick_boundary_fires_on_that_tick() {
    let (mut wheel, start) = wheel(64);
    wheel.schedule(3, start + ms(40));
    assert!(expired_at(&mut wheel, start + ms(39)).is_empty());
    assert_eq!(expired_at(&mut wheel, start + ms(40)), [3]);
}

#[test]
fn every_timer_in_a_slot_fires_not_just_the_first() {
    let (mut wheel, start) = wheel(64);
    for key in 0..10 {
        wheel.schedule(key, start + ms(20));
    }
    assert_eq!(
        expired_at(&mut wheel, start + ms(20)),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(wheel.stats().expired, 10);
}

#[test]
fn touched_timer_fires_at_its_new_deadline_not_its_old_one() {
    let (mut wheel, start) = wheel(64);
    wheel.schedule(4, start + ms(50));
    wheel.schedule(5, start + ms(50));
    wheel.touch(4, start + ms(120));
    assert_eq!(expired_at(&mut wheel, start + ms(50)), [5]);
    assert_eq!(wheel.stats().moved, 1, "the touched timer was relinked");
    assert!(wheel.is_scheduled(4));
    assert!(expired_at(&mut wheel, start + ms(119)).is_empty());
    assert_eq!(expired_at(&mut wheel, start + ms(120)), [4]);
}

#[test]
fn timer_touched_many_times_moves_once_per_visit() {
    let (mut wheel, start) = wheel(64);
    wheel.schedule(1, start + ms(100));
    // A busy connection: touched every millisecond for 150 ms.
    let mut fired = Vec::new();
    for now_ms in 0..150 {
        let now = start + ms(now_ms);
        wheel.touch(1, now + ms(100));
        wheel.expire(now, |key| fired.push(key));
    }
    assert!(fired.is_empty(), "an active connection was reaped");
    assert_eq!(
        wheel.stats().moved,
        1,
        "relinked once, at its first deadline"
    );
    // Last touched at 149 ms: deadline 249 ms, which rounds up to 250.
    assert!(expired_at(&mut wheel, start + ms(249)).is_empty());
    assert_eq!(expired_at(&mut wheel, start + ms(250)), [1]);
}

#[test]
fn cancelled_timer_never_fires() {
    let (mut wheel, start) = wheel(64);
    wheel.schedule(1, start + ms(10));
    wheel.schedule(2, start + ms(10));
    wheel.schedule(3, start + ms(10));
    assert!(wheel.cancel(2));
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
    assert_eq!(
        wheel.stats().moved,
        0,
        "passing over a later revolution moves nothing"
    );
}

#[test]
fn late_expire_call_fires_everything_due_and_nothing_else() {
    let (mut wheel, start) = wheel(8);
    for key in 0..20 {
        wheel.schedule(key, start + ms(10 * key as u64));
    }
    // One call, 15 ticks late: more than a whole revolution was missed.
    assert_eq!(
        expired_at(&mut wheel, start + ms(155)),
        (0..=15).collect::<Vec<_>>()
    );
    assert_eq!(expired_at(&mut wheel, start + ms(189)), [16, 17, 18]);
    assert_eq!(expired_at(&mut wheel, start + ms(190)), [19]);
}

#[test]
fn a_second_call_in_the_same_tick_fires_nothing_new() {
    let (mut wheel, start) = wheel(16);
    wheel.schedule(1, start + ms(20));
    assert_eq!(expired_at(&mut wheel, start + ms(21)), [1]);
    assert!(expired_at(&mut wheel, start + ms(22)).is_empty());
    // Scheduled for a deadline inside the tick already processed: next tick.
    wheel.schedule(2, start + ms(23));
    assert!(expired_at(&mut wheel, start + ms(29)).is_empty());
    assert_eq!(expired_at(&mut wheel, start + ms(30)), [2]);
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
