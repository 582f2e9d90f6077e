//! The stamp on every results page: which CPU, how many cores, which kernel,
//! which day. Numbers without it cannot be compared with anything.

use c1m_benches::CorePlan;

use super::data::Machine;

/// Describes this machine as it is now.
pub fn this_machine(cores: CorePlan) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let listed = cpuinfo
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .is_some_and(|k| k.trim() == "processor")
        })
        .count();
    let online = if listed > 0 {
        listed
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".to_string());
    Machine {
        cpu,
        cores: online,
        kernel,
        date: crate::clock::today_utc(),
        pinning: cores.describe(),
        pinned: cores.server.is_some() && cores.load.is_some(),
    }
}
