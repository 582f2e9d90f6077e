//! Results come back in any order; they must leave in the order the jobs
//! were handed out, and nothing may be lost or released twice.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ex04_keep_order::InOrder;

#[test]
fn results_completed_in_reverse_come_out_in_order() {
    let mut order = InOrder::new();
    let jobs: Vec<u64> = (0..5).map(|_| order.assign()).collect();
    for &job in jobs.iter().rev() {
        order.complete(job, format!("line {job}"));
    }
    let released: Vec<String> = std::iter::from_fn(|| order.pop_ready()).collect();
    assert_eq!(released, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
    assert_eq!(order.in_flight(), 0);
}

#[test]
fn nothing_comes_out_while_the_oldest_job_is_still_running() {
    let mut order = InOrder::new();
    let first = order.assign();
    let second = order.assign();
    let third = order.assign();
    order.complete(third, "c");
    order.complete(second, "b");
    assert_eq!(order.pop_ready(), None, "job {first} has not finished yet");
    assert_eq!(order.held_back(), 2);
    assert_eq!(order.in_flight(), 3);
    order.complete(first, "a");
    assert_eq!(order.pop_ready(), Some("a"));
    assert_eq!(order.pop_ready(), Some("b"));
    assert_eq!(order.pop_ready(), Some("c"));
    assert_eq!(order.pop_ready(), None);
    assert_eq!(order.held_back(), 0);
}

#[test]
fn results_are_released_as_soon_as_their_turn_comes() {
    let mut order = InOrder::new();
    let first = order.assign();
    let second = order.assign();
    order.complete(first, 1);
    assert_eq!(
        order.pop_ready(),
        Some(1),
        "the oldest result need not wait"
    );
    assert_eq!(order.in_flight(), 1);
    order.complete(second, 2);
    assert_eq!(order.pop_ready(), Some(2));
}

#[test]
#[should_panic(expected = "not in flight")]
fn completing_a_job_that_was_never_assigned_is_a_bug() {
    let mut order: InOrder<()> = InOrder::new();
    order.complete(0, ());
}

#[test]
#[should_panic(expected = "completed twice")]
fn completing_a_job_twice_is_a_bug() {
    let mut order = InOrder::new();
    let first = order.assign();
    let second = order.assign();
    order.complete(second, "b");
    // A worker that reports the same job twice would echo a line twice.
    order.complete(second, "b again");
    let _ = first;
}

#[test]
#[should_panic(expected = "not in flight")]
fn completing_a_job_already_released_is_a_bug() {
    let mut order = InOrder::new();
    let first = order.assign();
    order.complete(first, "a");
    assert_eq!(order.pop_ready(), Some("a"));
    order.complete(first, "a again");
}

/// The real thing: one connection's 400 lines spread over four worker
/// threads that take different (deterministic) times per line, so they
/// finish out of order. The "event loop" (this thread) releases them in
/// order.
#[test]
fn lines_spread_over_four_workers_are_echoed_in_order() {
    let lines: Vec<String> = (0..400).map(|n| format!("line {n}\n")).collect();
    let (job_senders, result_receiver) = {
        let (results, result_receiver) = mpsc::channel::<(u64, String)>();
        let senders: Vec<mpsc::Sender<(u64, String)>> = (0..4)
            .map(|worker| {
                let (jobs, job_receiver) = mpsc::channel::<(u64, String)>();
                let results = results.clone();
                thread::spawn(move || {
                    for (sequence, line) in job_receiver {
                        // Workers of different speeds: later lines overtake.
                        thread::sleep(Duration::from_micros(50 * (worker as u64 * 7 % 5)));
                        results.send((sequence, line)).unwrap();
                    }
                });
                jobs
            })
            .collect();
        (senders, result_receiver)
    };
    let mut order = InOrder::new();
    for (n, line) in lines.iter().enumerate() {
        let sequence = order.assign();
        job_senders[n % 4].send((sequence, line.clone())).unwrap();
    }
    drop(job_senders);
    let mut echoed = Vec::new();
    for (sequence, line) in result_receiver.iter().take(lines.len()) {
        order.complete(sequence, line);
        while let Some(line) = order.pop_ready() {
            echoed.push(line);
        }
    }
    assert_eq!(echoed, lines);
    assert_eq!(order.in_flight(), 0);
}
