//! The idle list in virtual time: the tests pass the instants in.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ex06_idle_list::IdleList;

const TIMEOUT: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn expired_at(list: &mut IdleList, now: Instant) -> Vec<usize> {
    let mut keys = Vec::new();
    let count = list.expire(now, |key| keys.push(key));
    assert_eq!(count, keys.len(), "expire returns how many it reaped");
    keys
}

#[test]
fn idle_connections_expire_exactly_at_their_timeout() {
    let start = Instant::now();
    let mut list = IdleList::new(TIMEOUT);
    list.touch(3, start);
    assert!(expired_at(&mut list, start + ms(99)).is_empty(), "early");
    assert_eq!(expired_at(&mut list, start + ms(100)), [3]);
    assert!(list.is_empty());
    assert!(!list.is_armed(3));
}

#[test]
fn longest_idle_expires_first() {
    let start = Instant::now();
    let mut list = IdleList::new(TIMEOUT);
    for (i, key) in [5, 1, 9, 2].into_iter().enumerate() {
        list.touch(key, start + ms(i as u64));
    }
    assert_eq!(list.len(), 4);
    assert_eq!(expired_at(&mut list, start + ms(102)), [5, 1, 9]);
    assert_eq!(expired_at(&mut list, start + ms(500)), [2]);
}

#[test]
fn touch_sends_a_connection_to_the_back() {
    let start = Instant::now();
    let mut list = IdleList::new(TIMEOUT);
    list.touch(1, start);
    list.touch(2, start + ms(10));
    list.touch(3, start + ms(20));
    list.touch(1, start + ms(30)); // 1 talked: now the most recent
    assert_eq!(list.len(), 3, "a touch does not add a second entry");
    assert_eq!(list.next_timeout(start + ms(30)), Some(ms(80)));
    assert_eq!(expired_at(&mut list, start + ms(125)), [2, 3]);
    assert!(expired_at(&mut list, start + ms(129)).is_empty());
    assert_eq!(expired_at(&mut list, start + ms(130)), [1]);
}

#[test]
fn active_connection_is_never_reaped() {
    let start = Instant::now();
    let mut list = IdleList::new(TIMEOUT);
    list.touch(0, start);
    list.touch(1, start);
    for now_ms in (0..1000).step_by(30) {
        let now = start + ms(now_ms);
        list.touch(0, now);
        let reaped = expired_at(&mut list, now);
        assert!(
            !reaped.contains(&0),
            "reaped the active connection at {now_ms} ms"
        );
    }
    assert!(list.is_armed(0));
    assert!(!list.is_armed(1), "the idle one was reaped");
}

#[test]
fn cancelled_connection_never_expires() {
    let start = Instant::now();
    let mut list = IdleList::new(TIMEOUT);
    for key in 0..5 {
        list.touch(key, start);
    }
    assert!(list.cancel(0));
    assert!(list.cancel(2));
    assert!(list.cancel(4));
    assert!(!list.cancel(4));
    assert_eq!(expired_at(&mut list, start + TIMEOUT), [1, 3]);
    assert_eq!(list.next_timeout(start), None);
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

/// Random touch / cancel / expire against a model that remembers every
/// key's last activity: at each `expire`, exactly the keys idle for the
/// timeout must go, longest idle first.
#[test]
fn reaps_exactly_the_keys_a_model_says() {
    for seed in 1..=10 {
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut list = IdleList::new(TIMEOUT);
        let mut last_active: BTreeMap<usize, (Instant, u64)> = BTreeMap::new();
        let mut now = start;
        for step in 0..20_000u64 {
            let key = rng.below(64) as usize;
            match rng.below(10) {
                0..=5 => {
                    list.touch(key, now);
                    last_active.insert(key, (now, step));
                }
                6 => assert_eq!(list.cancel(key), last_active.remove(&key).is_some()),
                _ => {
                    now += Duration::from_micros(rng.below(40_000));
                    // Due, ordered by last activity (ties: order of touch).
                    let mut due: Vec<(Instant, u64, usize)> = (last_active.iter())
                        .filter(|&(_, &(at, _))| at + TIMEOUT <= now)
                        .map(|(&key, &(at, order))| (at, order, key))
                        .collect();
                    due.sort_unstable();
                    let due: Vec<usize> = due.into_iter().map(|(_, _, key)| key).collect();
                    for key in &due {
                        last_active.remove(key);
                    }
                    assert_eq!(expired_at(&mut list, now), due, "seed {seed} step {step}");
                    let next = last_active.values().map(|&(at, _)| at + TIMEOUT).min();
                    assert_eq!(list.next_timeout(now), next.map(|d| d - now));
                }
            }
            assert_eq!(list.len(), last_active.len(), "seed {seed} step {step}");
        }
    }
}
