//! Pinning observed the way an operator would: through `/proc`, and through
//! the CPU the thread finds itself running on.
#![allow(clippy::unwrap_used)]

use std::thread;

use ex07_pin_threads::{
    allowed_cpus, cpus_allowed_list, current_cpu, pin_current_thread, plan_pinning,
};

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                cpus.extend(first.parse::<usize>().unwrap()..=last.parse::<usize>().unwrap())
            }
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn allowed_cpus_are_what_proc_says() {
    let allowed = allowed_cpus().unwrap();
    assert!(!allowed.is_empty());
    assert_eq!(allowed, parse_cpu_list(&cpus_allowed_list().unwrap()));
    assert!(allowed.windows(2).all(|pair| pair[0] < pair[1]), "in order");
}

/// Restricts the calling thread to `cpus` with `sched_setaffinity`
/// directly, as `taskset` or a container's cpuset would, without going
/// through the code under test.
fn restrict_this_thread_to(cpus: &[usize]) {
    // SAFETY: cpu_set_t is a plain bitmask; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        assert!(cpu < libc::CPU_SETSIZE as usize);
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is initialised and its
    // size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// An unrestricted host would let `0..available_parallelism()` pass the test
/// above. Here the mask leaves CPU 0 out (all allowed CPUs but the first),
/// so the answer must follow the mask, not count from zero. On a host with
/// a single allowed CPU there is no such mask to make, and the test says so.
#[test]
fn allowed_cpus_follow_a_restricted_mask() {
    let from_proc = parse_cpu_list(&cpus_allowed_list().unwrap());
    if from_proc.len() < 2 {
        eprintln!("only CPU {from_proc:?} allowed here: cannot restrict further");
        return;
    }
    let without_first: Vec<usize> = from_proc[1..].to_vec();
    let seen = thread::spawn(move || {
        restrict_this_thread_to(&without_first);
        (allowed_cpus().unwrap(), without_first)
    })
    .join()
    .unwrap();
    assert_eq!(
        seen.0, seen.1,
        "allowed_cpus() under a mask without CPU {}",
        from_proc[0]
    );
    // And a mask with a gap, when there are CPUs enough to leave one out.
    if from_proc.len() >= 3 {
        let gap = vec![from_proc[0], from_proc[2]];
        let seen = thread::spawn(move || {
            restrict_this_thread_to(&gap);
            (allowed_cpus().unwrap(), gap)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, seen.1, "allowed_cpus() under a mask with a gap");
    }
}

#[test]
fn reactors_are_spread_round_robin_over_allowed_cpus() {
    assert_eq!(plan_pinning(5, &[0, 2]), [0, 2, 0, 2, 0]);
    assert_eq!(plan_pinning(2, &[0, 1, 2, 3]), [0, 1]);
    assert_eq!(plan_pinning(1, &[3]), [3]);
    assert_eq!(plan_pinning(0, &[0, 1]), Vec::<usize>::new());
    assert_eq!(plan_pinning(3, &[]), Vec::<usize>::new());
}

#[test]
fn a_pinned_thread_runs_only_on_its_cpu() {
    for cpu in allowed_cpus().unwrap() {
        let (list, seen) = thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            let list = cpus_allowed_list().unwrap();
            let mut seen = Vec::new();
            for _ in 0..200 {
                seen.push(current_cpu().unwrap());
                thread::yield_now();
            }
            (list, seen)
        })
        .join()
        .unwrap();
        assert_eq!(list, cpu.to_string(), "/proc/thread-self/status");
        assert!(
            seen.iter().all(|&c| c == cpu),
            "pinned to {cpu}, ran on {seen:?}"
        );
    }
}

#[test]
fn pinning_one_thread_leaves_the_others_alone() {
    let before = cpus_allowed_list().unwrap();
    let cpu = allowed_cpus().unwrap()[0];
    let pinned = thread::spawn(move || {
        pin_current_thread(cpu).unwrap();
        cpus_allowed_list().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(pinned, cpu.to_string());
    assert_eq!(cpus_allowed_list().unwrap(), before, "the spawning thread");
    let sibling = thread::spawn(|| cpus_allowed_list().unwrap())
        .join()
        .unwrap();
    assert_eq!(sibling, before, "a thread spawned afterwards");
}

#[test]
fn pinning_to_a_cpu_we_may_not_use_is_an_error() {
    let allowed = allowed_cpus().unwrap();
    let missing = (0..1024).find(|cpu| !allowed.contains(cpu)).unwrap();
    let before = cpus_allowed_list().unwrap();
    let result = thread::spawn(move || {
        let result = pin_current_thread(missing).map_err(|e| e.raw_os_error());
        (result, cpus_allowed_list().unwrap())
    })
    .join()
    .unwrap();
    assert_eq!(
        result.0,
        Err(Some(libc::EINVAL)),
        "pinning to CPU {missing}"
    );
    assert_eq!(result.1, before, "a failed pin changes nothing");
    assert!(pin_current_thread(1 << 20).is_err(), "far past CPU_SETSIZE");
}
