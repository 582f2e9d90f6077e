//! Restarts on a clock the tests drive: a crash loop backs off to one
//! restart per `max_delay`, a healthy worker is restarted at once, and the
//! supervisor knows when to wake up.

use std::time::{Duration, Instant};

use ex08_restart_backoff::{Policy, Restarts};

const POLICY: Policy = Policy {
    first_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(1),
    healthy_uptime: Duration::from_secs(10),
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_worker_that_keeps_dying_young_waits_twice_as_long_each_time() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 1, start);
    let mut now = start;
    let mut waits = Vec::new();
    for _ in 0..7 {
        now += ms(5); // dies 5 ms after starting
        let wait = restarts.died(0, now);
        waits.push(wait);
        assert!(!restarts.slot(0).running);
        assert_eq!(restarts.slot(0).restart_at, Some(now + wait));
        now += wait;
        assert_eq!(restarts.due(now), [0]);
        assert!(restarts.slot(0).running);
        assert_eq!(restarts.slot(0).started_at, now);
    }
    assert_eq!(
        waits,
        [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1000),
            ms(1000),
            ms(1000)
        ],
        "doubling from first_delay, capped at max_delay"
    );
    assert_eq!(restarts.restarts, 7);
}

#[test]
fn nothing_restarts_before_its_time() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 1, start);
    let wait = restarts.died(0, start + ms(1));
    assert_eq!(wait, ms(100));
    assert_eq!(
        restarts.due(start + ms(100)),
        Vec::<usize>::new(),
        "1 ms early"
    );
    assert_eq!(restarts.restarts, 0);
    assert_eq!(restarts.due(start + ms(101)), [0]);
    assert_eq!(
        restarts.due(start + ms(102)),
        Vec::<usize>::new(),
        "only once"
    );
    assert_eq!(restarts.restarts, 1);
}

#[test]
fn a_worker_that_lived_long_is_restarted_quickly_again() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 1, start);
    let mut now = start;
    for _ in 0..4 {
        now += ms(1);
        now += restarts.died(0, now);
        restarts.due(now);
    }
    // Backed off to 1 s by now. This time it serves for a whole minute.
    now += Duration::from_secs(60);
    assert_eq!(
        restarts.died(0, now),
        ms(100),
        "healthy: back to the first delay"
    );
    now += ms(100);
    restarts.due(now);
    now += ms(1);
    assert_eq!(
        restarts.died(0, now),
        ms(200),
        "and backing off again from there"
    );
}

#[test]
fn an_uptime_just_short_of_healthy_keeps_backing_off() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 1, start);
    assert_eq!(restarts.died(0, start + ms(1)), ms(100));
    restarts.due(start + ms(101));
    let died_at = start + ms(101) + POLICY.healthy_uptime - ms(1);
    assert_eq!(restarts.died(0, died_at), ms(200));
    restarts.due(died_at + ms(200));
    let died_at = died_at + ms(200) + POLICY.healthy_uptime;
    assert_eq!(
        restarts.died(0, died_at),
        ms(100),
        "exactly healthy_uptime counts"
    );
}

#[test]
fn a_failed_start_backs_off_like_a_death() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 1, start);
    // Healthy for a minute, then it dies and the restart cannot fork.
    let mut now = start + Duration::from_secs(60);
    assert_eq!(restarts.died(0, now), ms(100));
    now += ms(100);
    assert_eq!(restarts.due(now), [0]);
    assert_eq!(restarts.spawn_failed(0, now), ms(200));
    assert!(!restarts.slot(0).running);
    now += ms(200);
    assert_eq!(restarts.due(now), [0]);
    // A failed start never ran, whatever `started_at` says: no reset.
    assert_eq!(
        restarts.spawn_failed(0, now + Duration::from_secs(60)),
        ms(400)
    );
}

#[test]
fn each_worker_backs_off_on_its_own() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 3, start);
    let mut now = start;
    for _ in 0..3 {
        now += ms(1);
        now += restarts.died(1, now);
        assert_eq!(restarts.due(now), [1]);
    }
    assert_eq!(restarts.died(1, now + ms(1)), ms(800));
    assert_eq!(
        restarts.died(2, now + ms(1)),
        ms(100),
        "worker 2 never died before"
    );
    assert!(restarts.slot(0).running, "worker 0 is untouched");
    assert_eq!(restarts.due(now + ms(101)), [2]);
    assert_eq!(restarts.due(now + ms(801)), [1]);
}

#[test]
fn the_supervisor_wakes_up_for_the_earliest_restart() {
    let start = Instant::now();
    let mut restarts = Restarts::new(POLICY, 3, start);
    assert_eq!(
        restarts.next_wake_up(),
        None,
        "all running: sleep until a child exits"
    );
    // Worker 0 backs off to 400 ms; worker 2 then dies for the first time.
    let mut now = start;
    for _ in 0..2 {
        now += ms(1);
        now += restarts.died(0, now);
        restarts.due(now);
    }
    let zero_at = now + restarts.died(0, now);
    let two_at = now + ms(50) + restarts.died(2, now + ms(50));
    assert_eq!(zero_at - now, ms(400));
    assert_eq!(two_at - now, ms(150));
    assert_eq!(restarts.next_wake_up(), Some(two_at));
    assert_eq!(restarts.due(two_at), [2]);
    assert_eq!(restarts.next_wake_up(), Some(zero_at));
    assert_eq!(restarts.due(zero_at), [0]);
    assert_eq!(restarts.next_wake_up(), None);
}

/// The real thing, on the test's clock: a supervisor whose only worker
/// dies 10 ms after every start, for ten minutes, with chapter 08's policy.
/// Without back-off that is ~6,000 restarts (60,000 at one per ms); with
/// it, the delays go 0.1, 0.2, … 6.4 s, then one restart every 10 s.
#[test]
fn ten_minutes_of_crash_loop_cost_a_few_dozen_restarts() {
    let start = Instant::now();
    let policy = Policy::CHAPTER_08;
    let mut restarts = Restarts::new(policy, 1, start);
    let end = start + Duration::from_secs(600);
    let mut now = start;
    let mut died_at = start + ms(10);
    loop {
        // The supervisor sleeps until the next thing happens: a death or a
        // restart that is due.
        let wake = match restarts.next_wake_up() {
            Some(at) => at.min(died_at),
            None => died_at,
        };
        assert!(wake >= now, "time never runs backwards");
        now = wake;
        if now >= end {
            break;
        }
        if restarts.slot(0).running && now == died_at {
            let wait = restarts.died(0, now);
            assert!(wait >= policy.first_delay && wait <= policy.max_delay);
            died_at = end + Duration::from_secs(1); // not running: it cannot die
            continue;
        }
        assert_eq!(restarts.due(now), [0], "woken for a restart");
        died_at = now + ms(10);
    }
    // 7 restarts to reach the cap (12.7 s of waiting, plus 10 ms of life
    // each), then one per 10.01 s for the remaining ~587 s.
    assert_eq!(restarts.restarts, 7 + 58);
}
