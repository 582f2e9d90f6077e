//! What the host says while a million run goes on: per-core CPU time,
//! descriptors, memory and sockets, and a guard that stops everything
//! before the host runs out of memory.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use loadgen::cpu::CoreTicks;
use serde::{Deserialize, Serialize};

use super::procs::{kill_group, kill_tree};
use crate::run::TaskError;

/// One core's time over a window, in percent (`/proc/stat`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct CoreTime {
    pub(super) core: String,
    pub(super) user: f64,
    pub(super) system: f64,
    pub(super) softirq: f64,
    pub(super) idle: f64,
}

/// Every core's ticks now (and `cpu`, all cores together).
pub(super) fn cpu_ticks() -> Vec<(String, CoreTicks)> {
    loadgen::cpu::all_core_ticks()
}

/// All cores together (`/proc/stat`'s `cpu` line) from a [`cpu_ticks`].
pub(super) fn all_cores(ticks: &[(String, CoreTicks)]) -> CoreTicks {
    ticks
        .iter()
        .find_map(|(name, t)| (name == "cpu").then_some(*t))
        .unwrap_or_default()
}

/// Where each core's time went between two [`cpu_ticks`] readings.
pub(super) fn cpu_between(
    before: &[(String, CoreTicks)],
    after: &[(String, CoreTicks)],
) -> Vec<CoreTime> {
    before
        .iter()
        .zip(after)
        .map(|((name, a), (_, b))| {
            let total = b.total.saturating_sub(a.total).max(1) as f64;
            let share = |x: u64, y: u64| 100.0 * y.saturating_sub(x) as f64 / total;
            CoreTime {
                core: name.clone(),
                user: share(a.user, b.user),
                system: share(a.system, b.system),
                softirq: share(a.softirq, b.softirq),
                idle: share(a.idle, b.idle),
            }
        })
        .collect()
}

/// What the host says about descriptors, memory and sockets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct HostSnapshot {
    /// First field of `/proc/sys/fs/file-nr`: file handles allocated.
    pub(super) file_handles: u64,
    pub(super) mem_available: u64,
    pub(super) slab: u64,
    pub(super) slab_unreclaimable: u64,
    /// `/proc/net/sockstat`: `sockets: used`, `TCP: inuse … tw … mem`.
    pub(super) sockets_used: u64,
    pub(super) tcp_inuse: u64,
    pub(super) tcp_tw: u64,
    pub(super) tcp_mem_pages: u64,
}

impl HostSnapshot {
    pub(super) fn take() -> HostSnapshot {
        let bytes = |key: &str| crate::procfs::meminfo_bytes(key).unwrap_or(0);
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let field = |line: &str, name: &str| {
            sockstat
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|rest| {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    let at = words.iter().position(|w| *w == name)?;
                    words.get(at + 1)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        };
        HostSnapshot {
            file_handles: std::fs::read_to_string("/proc/sys/fs/file-nr")
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            mem_available: bytes("MemAvailable"),
            slab: bytes("Slab"),
            slab_unreclaimable: bytes("SUnreclaim"),
            sockets_used: field("sockets:", "used"),
            tcp_inuse: field("TCP:", "inuse"),
            tcp_tw: field("TCP:", "tw"),
            tcp_mem_pages: field("TCP:", "mem"),
        }
    }
}

/// Kills everything if MemAvailable falls below the floor: a million
/// sockets cost ~6 GiB of kernel memory, and a host out of memory starts
/// killing processes that are not ours.
pub(super) struct MemoryGuard {
    tripped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    lowest: Arc<Mutex<u64>>,
    /// Process groups to kill (loadgen runs) and the server's pid (whose
    /// tree is killed, 0 when none).
    groups: Arc<Mutex<Vec<i32>>>,
    pub(super) server_pid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

impl MemoryGuard {
    pub(super) fn start(floor_bytes: u64) -> MemoryGuard {
        let tripped = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let lowest = Arc::new(Mutex::new(u64::MAX));
        let groups = Arc::new(Mutex::new(Vec::new()));
        let server_pid = Arc::new(AtomicI32::new(0));
        let thread = {
            let (tripped, stop, lowest) = (tripped.clone(), stop.clone(), lowest.clone());
            let (groups, server) = (groups.clone(), server_pid.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let available = HostSnapshot::take().mem_available;
                    let mut low = lowest.lock().unwrap_or_else(PoisonError::into_inner);
                    *low = (*low).min(available);
                    drop(low);
                    if available > 0 && available < floor_bytes {
                        tripped.store(true, Ordering::Relaxed);
                        eprintln!(
                            "\nmillion: MemAvailable {} MiB is below the floor: killing \
                             loadgen and the server",
                            available >> 20
                        );
                        let groups = groups.lock().unwrap_or_else(PoisonError::into_inner);
                        groups.iter().for_each(|&group| kill_group(group));
                        kill_tree(server.load(Ordering::Relaxed));
                        return;
                    }
                    thread::sleep(Duration::from_millis(250));
                }
            })
        };
        MemoryGuard {
            tripped,
            stop,
            lowest,
            groups,
            server_pid,
            thread: Some(thread),
        }
    }

    pub(super) fn check(&self) -> Result<(), TaskError> {
        if self.tripped.load(Ordering::Relaxed) {
            return Err(TaskError::Failed(
                "MemAvailable fell below --min-available-gib; everything was killed \
                 (try fewer --conns)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Kill this process group too if memory runs out (until unwatched).
    pub(super) fn watch(&self, group: i32) {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(group);
    }

    /// The group has exited: its id may be reused, so never kill it now.
    pub(super) fn unwatch(&self, group: i32) {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|&g| g != group);
    }

    pub(super) fn lowest(&self) -> u64 {
        *self.lowest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
