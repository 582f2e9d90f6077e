//! `--procs auto`, checked against the numbers chapter 08 runs with.

use ex08_plan_procs::{MIN_PER_WORKER, plan};

#[test]
fn a_million_under_a_20000_limit_needs_53_workers_of_18939() {
    let p = plan(1_000_000, 20_000, 2);
    assert_eq!(p.per_worker, 18_939);
    assert_eq!(p.procs, 53);
    assert_eq!(p.reactors, 1);
}

#[test]
fn a_raised_limit_needs_one_process_with_a_reactor_per_core() {
    let p = plan(1_000_000, 2_000_000, 8);
    assert_eq!((p.procs, p.reactors), (1, 8));
}

#[test]
fn one_more_connection_than_a_worker_holds_needs_a_second_worker() {
    let per_worker = plan(1, 20_000, 2).per_worker;
    assert_eq!(plan(per_worker, 20_000, 2).procs, 1);
    assert_eq!(plan(per_worker + 1, 20_000, 2).procs, 2);
}

#[test]
fn a_tiny_limit_runs_one_worker_not_thousands() {
    for hard in [0, 10, 64, 100, 1_000] {
        let p = plan(1_000_000, hard, 4);
        assert!(p.per_worker < MIN_PER_WORKER);
        assert_eq!((p.procs, p.reactors), (1, 4), "hard limit {hard}");
    }
}

#[test]
fn the_plan_always_holds_the_target_with_the_fewest_workers() {
    for hard in [2_000, 20_000, 65_536, 1_048_576] {
        for target in [1, 999, 50_000, 200_000, 1_000_000, 10_000_000] {
            let p = plan(target, hard, 2);
            assert!(
                p.procs * p.per_worker >= target,
                "{target} on {hard}: {p:?}"
            );
            assert!(
                (p.procs - 1) * p.per_worker < target,
                "{target} on {hard}: {p:?}"
            );
            assert!(p.reactors >= 1);
        }
    }
}
