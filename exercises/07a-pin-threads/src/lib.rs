//! Exercise 07 — pin each reactor thread to its own core.
//!
//! Chapter 07 runs one reactor (an event loop with its own epoll, listener,
//! slab and timer wheel) per core. With `--pin`, each reactor thread asks
//! the kernel to run it on one CPU only: `sched_setaffinity(2)` on the
//! calling thread. Its caches stay warm, and the scheduler never moves it
//! onto the core where another reactor is busy.
//!
//! Write the three functions marked `todo!()`: the CPUs we may use, the plan
//! that gives each reactor a CPU, and the pinning itself.

use std::io;

#[cfg(not(target_os = "linux"))]
compile_error!("CPU affinity through sched_setaffinity is Linux-only");

/// The CPUs this thread may run on, in increasing order: the affinity mask
/// the process started with (`taskset`, a container's cpuset, ...), which
/// is not always `0..available_parallelism()`.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    todo!("sched_getaffinity(0, ...) and the CPUs whose bit is set")
}

/// Which CPU each of `reactors` reactors is pinned to: reactor `i` gets
/// `allowed[i % allowed.len()]`, so with more reactors than CPUs they share
/// evenly, and a CPU outside `allowed` is never chosen. Empty if `allowed` is.
pub fn plan_pinning(reactors: usize, allowed: &[usize]) -> Vec<usize> {
    let _ = (reactors, allowed);
    todo!("reactor i gets allowed[i % allowed.len()]")
}

/// Restricts the *calling thread* to `cpu`. Other threads of the process
/// keep their own masks: affinity is per thread on Linux, and pid 0 means
/// "this thread". A CPU that does not exist or is not allowed is an error
/// (`EINVAL`), not a silent no-op.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let _ = cpu;
    todo!("a cpu_set_t with only `cpu` set, then sched_setaffinity(0, ...)")
}

/// The CPU the calling thread is running on right now (`sched_getcpu(3)`).
pub fn current_cpu() -> io::Result<usize> {
    // SAFETY: no arguments, no memory.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).map_err(|_| io::Error::last_os_error())
}

/// This thread's `Cpus_allowed_list:` line from `/proc/thread-self/status`,
/// e.g. `0-1` or `1`: what `taskset -p` or a reader of `/proc` sees.
pub fn cpus_allowed_list() -> io::Result<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_string())
        .ok_or_else(|| io::Error::other("no Cpus_allowed_list in /proc/thread-self/status"))
}
