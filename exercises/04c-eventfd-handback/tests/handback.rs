//! Results on their way back to the loop: one wake-up per batch, never a
//! result stranded with the eventfd reading empty, and never a result for
//! a closed connection handed to the next owner of its descriptor.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ex04_eventfd_handback::{Completed, Completions, ConnectionId, Connections};

/// Generous: only reached when the hand-back is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(10);

fn result(fd: i32, serial: u32, data: &str) -> Completed {
    Completed {
        connection: ConnectionId { fd, serial },
        data: data.as_bytes().to_vec(),
    }
}

#[test]
fn one_wake_up_announces_a_whole_batch() {
    let completions = Arc::new(Completions::new().unwrap());
    let workers: Vec<_> = (0..3)
        .map(|worker| {
            let completions = Arc::clone(&completions);
            thread::spawn(move || {
                for n in 0..100 {
                    completions
                        .deliver(result(worker, 1, &format!("{worker}:{n}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(
        completions.waker().wait(Duration::ZERO).unwrap(),
        "the loop must wake up"
    );
    assert_eq!(
        completions.waker().notifications(),
        1,
        "300 results, and the loop had not taken any: one notify is enough"
    );
    let mut taken = Vec::new();
    completions.take_all(&mut taken).unwrap();
    assert_eq!(taken.len(), 300);
    assert!(
        !completions.waker().wait(Duration::ZERO).unwrap(),
        "after take_all the eventfd reads 0 (or the loop spins on it)"
    );
}

#[test]
fn a_result_after_take_all_wakes_the_loop_again() {
    let completions = Completions::new().unwrap();
    completions.deliver(result(5, 1, "a")).unwrap();
    let mut taken = Vec::new();
    completions.take_all(&mut taken).unwrap();
    assert_eq!(taken, [result(5, 1, "a")]);
    assert!(!completions.waker().wait(Duration::ZERO).unwrap());
    completions.deliver(result(5, 1, "b")).unwrap();
    assert!(
        completions.waker().wait(Duration::ZERO).unwrap(),
        "the loop took the list: the next result must notify again"
    );
    assert_eq!(completions.waker().notifications(), 2);
    taken.clear();
    completions.take_all(&mut taken).unwrap();
    assert_eq!(taken, [result(5, 1, "b")]);
}

/// The race, made to happen every time: a worker delivers exactly while the
/// loop is inside `take_all`, at its `reset` of the eventfd. Whatever
/// order `take_all` does its steps in, that result must be taken now or
/// announced by a readable eventfd; otherwise the loop goes to sleep with
/// it in the list (a lost wake-up).
#[test]
fn a_result_delivered_during_take_all_is_never_stranded() {
    let completions = Arc::new(Completions::new().unwrap());
    completions.deliver(result(5, 1, "a")).unwrap();
    let late = Arc::clone(&completions);
    completions.waker().before_next_reset(move || {
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            late.deliver(result(6, 1, "b")).unwrap();
            let _ = done.send(());
        });
        // If `take_all` holds the list's lock across the reset, the worker
        // waits for it; let it, and carry on.
        let _ = finished.recv_timeout(Duration::from_millis(200));
    });
    let mut taken = Vec::new();
    completions.take_all(&mut taken).unwrap();
    if !taken.contains(&result(6, 1, "b")) {
        assert!(
            completions.waker().wait(Duration::from_secs(2)).unwrap(),
            "a result delivered during take_all was neither taken nor announced: \
             the loop would sleep with it in the list (took {taken:?})"
        );
        let mut rest = Vec::new();
        completions.take_all(&mut rest).unwrap();
        taken.append(&mut rest);
    }
    assert_eq!(taken, [result(5, 1, "a"), result(6, 1, "b")]);
}

/// The real thing: four workers deliver 20,000 results while the loop
/// sleeps on the eventfd (as in `epoll_wait`) and takes what is there each
/// time it wakes. A lost wake-up shows as the loop sleeping past the
/// failsafe with results not yet taken.
#[test]
fn a_loop_that_sleeps_on_the_eventfd_gets_every_result() {
    const PER_WORKER: u32 = 5_000;
    let completions = Arc::new(Completions::new().unwrap());
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let completions = Arc::clone(&completions);
            thread::spawn(move || {
                for n in 0..PER_WORKER {
                    completions.deliver(result(worker, n, "x")).unwrap();
                    if n % 64 == 0 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let total = 4 * PER_WORKER as usize;
    let mut received = 0;
    let mut batch = Vec::new();
    while received < total {
        assert!(
            completions.waker().wait(FAILSAFE).unwrap(),
            "the loop slept with {} results still to come: a lost wake-up",
            total - received
        );
        completions.take_all(&mut batch).unwrap();
        received += batch.len();
        batch.clear();
    }
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(received, total);
    assert!(
        completions.waker().notifications() <= total as u64,
        "at most one notify per result"
    );
}

#[test]
fn a_live_connection_gets_its_result() {
    let mut connections = Connections::new();
    let id = connections.insert(7, "client on 7");
    assert_eq!(connections.get_mut(id), Some(&mut "client on 7"));
}

#[test]
fn a_result_for_a_closed_connection_does_not_reach_the_next_owner_of_its_descriptor() {
    let mut connections = Connections::new();
    let old = connections.insert(7, String::from("old client"));
    // Its job is out at a worker when the client resets the connection...
    assert_eq!(connections.remove(7).as_deref(), Some("old client"));
    assert_eq!(
        connections.get_mut(old),
        None,
        "closed: the result is dropped"
    );
    // ...and the kernel hands descriptor 7 to the next client.
    let new = connections.insert(7, String::from("new client"));
    assert_eq!(new.fd, old.fd);
    assert_eq!(
        connections.get_mut(old),
        None,
        "the old result must not be echoed to the new client"
    );
    assert_eq!(
        connections.get_mut(new).map(|s| s.as_str()),
        Some("new client")
    );
}

#[test]
fn ids_of_descriptors_never_seen_find_nothing() {
    let mut connections: Connections<()> = Connections::new();
    connections.insert(3, ());
    assert_eq!(connections.get_mut(ConnectionId { fd: 9, serial: 1 }), None);
    assert_eq!(
        connections.get_mut(ConnectionId { fd: -1, serial: 1 }),
        None
    );
    assert_eq!(
        connections.get_mut(ConnectionId { fd: 3, serial: 99 }),
        None
    );
}
