//! Host resources a run needs: descriptor limit, CPU pinning, CPU accounting.
//!
//! CPU time is how we show that the server, not loadgen, is the bottleneck:
//! the report puts both processes' CPU use over the measured window side by
//! side, as percent of one core and as CPU-microseconds per message.

use std::io;
use std::time::Duration;

use crate::error::LoadError;
#[cfg(target_os = "linux")]
use crate::procstat::{Stat, ticks_per_second, ticks_to_duration};

/// Descriptors a run needs besides its sockets: stdio, the poller, a few
/// files (/proc, the binary's own libraries) and some headroom.
pub const SPARE_FDS: u64 = 64;

/// Makes sure `connections` sockets fit under `RLIMIT_NOFILE`, raising the
/// soft limit towards the hard one when needed. Fails early, with the limit
/// and its fix, when even the hard limit is too low.
pub fn ensure_fd_limit(connections: usize) -> Result<(), LoadError> {
    let needed = connections as u64 + SPARE_FDS;
    let limit = nofile_limit()?;
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    // Try the hard limit first (a later phase may need more), then just
    // enough: macOS rejects a soft limit above OPEN_MAX even when the hard
    // limit is "unlimited".
    for want in [limit.rlim_max, needed] {
        if want < needed || want > limit.rlim_max {
            continue;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(LoadError::OutOfFds {
        connections,
        limit: limit.rlim_max.min(i64::MAX as u64),
    })
}

/// The current soft `RLIMIT_NOFILE`, for error messages.
pub fn fd_soft_limit() -> u64 {
    nofile_limit().map_or(0, |limit| limit.rlim_cur)
}

/// This process's `RLIMIT_NOFILE` (soft and hard).
pub fn nofile_limit() -> Result<libc::rlimit, LoadError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
        return Err(LoadError::io(
            "getrlimit(RLIMIT_NOFILE)",
            io::Error::last_os_error(),
        ));
    }
    Ok(limit)
}

/// Pins the whole process (the calling thread, and every thread it spawns
/// afterwards, which inherit the mask) to one CPU core.
#[cfg(target_os = "linux")]
pub fn pin_to_core(core: usize) -> Result<(), LoadError> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(LoadError::Config(format!("--cpu {core}: no such core")));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` < CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the
    // size we pass.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == -1 {
        let err = io::Error::last_os_error();
        return Err(LoadError::Config(format!(
            "--cpu {core}: cannot pin to that core ({err}); see `nproc`"
        )));
    }
    Ok(())
}

/// Pinning needs `sched_setaffinity`, which only Linux has.
#[cfg(not(target_os = "linux"))]
pub fn pin_to_core(core: usize) -> Result<(), LoadError> {
    Err(LoadError::Config(format!(
        "--cpu {core}: pinning to a core is only supported on Linux"
    )))
}

/// CPU time (user + system) this process has used so far, all threads.
pub fn own_cpu_time() -> Duration {
    // SAFETY: rusage is plain data; all-zero is a valid value to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF cannot fail
    // with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system, all threads) process `pid` has used so far,
/// from `/proc/PID/stat` (clock-tick resolution, usually 10 ms).
#[cfg(target_os = "linux")]
pub fn process_cpu_time(pid: u32) -> Result<Duration, LoadError> {
    let path = format!("/proc/{pid}/stat");
    let line = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::Config(format!("--server-pid {pid}: cannot read {path}: {e}")))?;
    let Some(stat) = Stat::parse(&line) else {
        return Err(LoadError::Config(format!("cannot parse {path}")));
    };
    Ok(ticks_to_duration(stat.cpu_ticks(), ticks_per_second()))
}

/// Reading another process's CPU time needs /proc, which only Linux has.
#[cfg(not(target_os = "linux"))]
pub fn process_cpu_time(pid: u32) -> Result<Duration, LoadError> {
    Err(LoadError::Config(format!(
        "--server-pid {pid}: reading another process's CPU time needs /proc (Linux)"
    )))
}

/// The one core process `pid` is pinned to (e.g. by `taskset -c 0`), if its
/// affinity mask holds exactly one core.
#[cfg(target_os = "linux")]
pub fn pinned_core(pid: u32) -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size we pass.
    let rc = unsafe {
        libc::sched_getaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    if rc == -1 {
        return None;
    }
    let is_set = |core: usize| {
        // SAFETY: `set` was filled in by sched_getaffinity and `core` is
        // below CPU_SETSIZE.
        unsafe { libc::CPU_ISSET(core, &set) }
    };
    let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| is_set(c))
        .collect();
    (cores.len() == 1).then(|| cores[0])
}

/// Affinity masks of other processes need Linux.
#[cfg(not(target_os = "linux"))]
pub fn pinned_core(_pid: u32) -> Option<usize> {
    None
}

/// One core's cumulative time from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTicks {
    /// user + nice: time in processes' own code.
    pub user: u64,
    /// system: time in the kernel on processes' behalf (syscalls).
    pub system: u64,
    /// idle + iowait.
    pub idle: u64,
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// Time spent in softirq: on loopback, most of TCP's receive path. It
    /// is charged to the core, not to the process that triggered it, so a
    /// process's own CPU time understates how busy its core is.
    pub softirq: u64,
    /// busy + idle + iowait + steal.
    pub total: u64,
}

/// Reads core `core`'s line of `/proc/stat` (Linux; `None` elsewhere).
pub fn core_ticks(core: usize) -> Option<CoreTicks> {
    let prefix = format!("cpu{core}");
    all_core_ticks()
        .into_iter()
        .find_map(|(name, ticks)| (name == prefix).then_some(ticks))
}

/// Every `cpu` line of `/proc/stat`: `cpu` (all cores together), then
/// `cpu0`, `cpu1`, … (Linux; empty elsewhere).
pub fn all_core_ticks() -> Vec<(String, CoreTicks)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|line| line.starts_with("cpu"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_string();
            let f: Vec<u64> = words.map(|x| x.parse().unwrap_or(0)).collect();
            Some((name, CoreTicks::from_fields(&f)))
        })
        .collect()
}

impl CoreTicks {
    /// From the numbers of a `/proc/stat` cpu line: user nice system idle
    /// iowait irq softirq steal …
    fn from_fields(f: &[u64]) -> CoreTicks {
        let field = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        CoreTicks {
            user: field(0) + field(1),
            system: field(2),
            idle: field(3) + field(4),
            busy,
            softirq: field(6),
            total: busy + field(3) + field(4) + field(7),
        }
    }
}

/// CPU time of loadgen and, optionally, the server at one instant, plus
/// the ticks of the cores they are pinned to.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub own: Duration,
    pub server: Option<Duration>,
    /// `(core, ticks)` for each core watched.
    pub cores: Vec<(usize, CoreTicks)>,
}

/// CPU time of the server and every process it started: a prefork server
/// (chapter 08) does its work in child processes, not in the pid we were
/// given.
fn server_cpu_time(pid: u32) -> Result<Duration, LoadError> {
    let mut total = process_cpu_time(pid)?;
    for child in crate::server::process_tree(pid)
        .into_iter()
        .filter(|&p| p != pid)
    {
        // A child that exited between listing and reading simply is not counted.
        total += process_cpu_time(child).unwrap_or_default();
    }
    Ok(total)
}

impl CpuSnapshot {
    /// Samples now, watching `cores`. A server that exited since the start
    /// is reported as unknown rather than failing a run that already
    /// measured something.
    pub fn take(server_pid: Option<u32>, cores: &[usize]) -> CpuSnapshot {
        CpuSnapshot {
            own: own_cpu_time(),
            server: server_pid.and_then(|pid| server_cpu_time(pid).ok()),
            cores: cores
                .iter()
                .filter_map(|&c| core_ticks(c).map(|t| (c, t)))
                .collect(),
        }
    }
}
