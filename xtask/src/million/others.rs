//! The CPU that processes *outside* the run take while it runs.
//!
//! On a 2-core machine, anything else that wakes up during the ramp or a
//! probe takes its share of the same two cores, and a probe's p99 is where
//! that shows first. Some such work grows with the connections held: a
//! monitoring agent that walks every process's descriptors or the socket
//! table pays per socket, so it is cheap at 50,000 and busy at a million.
//! The report names the busiest ones, so a run's figures can be read with
//! what else ran beside them.

use std::collections::HashMap;
use std::fs;

use loadgen::procstat::{Stat, ticks_per_second};
use serde::{Deserialize, Serialize};

/// One process outside the run and the CPU it took over a window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct OtherProcess {
    /// `comm (pid N)`; kernel threads in brackets, as `ps` shows them.
    pub(super) name: String,
    /// CPU time over the window, in percent of one core.
    pub(super) percent_of_core: f64,
}

/// Below this share of one core a process is not worth naming.
const NOTABLE_PERCENT: f64 = 1.0;
/// The busiest this many are named.
const NAMED: usize = 3;

/// Every process's CPU time so far (user + system, in clock ticks), and its
/// parent, read from `/proc/PID/stat`.
#[derive(Debug, Default)]
pub(crate) struct ProcessTimes {
    by_pid: HashMap<u32, Stat>,
}

impl ProcessTimes {
    pub(crate) fn take() -> ProcessTimes {
        let mut by_pid = HashMap::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return ProcessTimes::default();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit between the listing and the read.
            if let Some(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|text| Stat::parse(&text))
            {
                by_pid.insert(pid, stat);
            }
        }
        ProcessTimes { by_pid }
    }

    /// CPU ticks used so far by every process outside the run (as
    /// [`others_between`] counts them), all together.
    pub(super) fn ticks_outside_the_run(&self) -> u64 {
        let xtask = std::process::id();
        self.by_pid
            .iter()
            .filter(|(pid, stat)| self.outside_the_run(**pid, stat, xtask))
            .map(|(_, stat)| stat.cpu_ticks())
            .sum()
    }

    /// Outside the run: not xtask nor what it started, and not `ksoftirqd`,
    /// which delivers the run's own packets when a core's softirq work
    /// overflows.
    fn outside_the_run(&self, pid: u32, stat: &Stat, xtask: u32) -> bool {
        !self.inside_the_run(pid, xtask) && !stat.comm.starts_with("ksoftirqd")
    }

    /// Is `pid` this xtask process or one of its descendants?
    fn inside_the_run(&self, pid: u32, xtask: u32) -> bool {
        let mut at = pid;
        // Parents form a tree rooted at 0; the bound guards a torn read.
        for _ in 0..64 {
            if at == xtask {
                return true;
            }
            match self.by_pid.get(&at) {
                Some(stat) if stat.ppid != 0 && stat.ppid != at => at = stat.ppid,
                _ => return false,
            }
        }
        false
    }
}

/// The busiest processes outside the run between two readings `seconds`
/// apart, in percent of one core (see [`ProcessTimes::outside_the_run`]).
pub(super) fn others_between(
    before: &ProcessTimes,
    after: &ProcessTimes,
    seconds: f64,
) -> Vec<OtherProcess> {
    let mut others: Vec<OtherProcess> = percent_by_process(before, after, seconds)
        .into_values()
        .filter(|(_, percent)| *percent >= NOTABLE_PERCENT)
        .map(|(name, percent_of_core)| OtherProcess {
            name,
            percent_of_core,
        })
        .collect();
    others.sort_by(|a, b| b.percent_of_core.total_cmp(&a.percent_of_core));
    others.truncate(NAMED);
    others
}

/// Every process outside the run that lived through both readings, by pid:
/// its name (`comm (pid N)`, kernel threads in brackets as `ps` shows them)
/// and the CPU it took between them, in percent of one core.
pub(crate) fn percent_by_process(
    before: &ProcessTimes,
    after: &ProcessTimes,
    seconds: f64,
) -> HashMap<u32, (String, f64)> {
    let xtask = std::process::id();
    let ticks_per_second = ticks_per_second() as f64;
    after
        .by_pid
        .iter()
        .filter(|(pid, stat)| after.outside_the_run(**pid, stat, xtask))
        .filter_map(|(pid, stat)| {
            let earlier = before.by_pid.get(pid)?;
            let used = stat.cpu_ticks().checked_sub(earlier.cpu_ticks())?;
            let percent = 100.0 * used as f64 / ticks_per_second / seconds.max(0.001);
            let name = if stat.is_kernel_thread() {
                format!("[{}]", stat.comm)
            } else {
                format!("{} (pid {pid})", stat.comm)
            };
            Some((*pid, (name, percent)))
        })
        .collect()
}

/// "process_api (pid 1) 48%, [kdamond.0] 1%", or "none above 1%".
pub(super) fn describe(others: &[OtherProcess]) -> String {
    if others.is_empty() {
        return format!("none above {NOTABLE_PERCENT:.0}% of a core");
    }
    others
        .iter()
        .map(|o| format!("{} {:.0}%", o.name, o.percent_of_core))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_children_are_inside_the_run() {
        let me = std::process::id();
        let times = ProcessTimes::take();
        assert!(times.inside_the_run(me, me));
        // PID 1 is never below this process.
        assert!(!times.inside_the_run(1, me));
    }

    #[test]
    fn the_busiest_outsiders_are_named_and_the_quiet_ones_left_out() {
        let stat = |pid: u32, comm: &str, ppid: u32, ticks: u64| {
            let stat = Stat {
                pid,
                comm: comm.to_string(),
                state: 'S',
                ppid,
                flags: 0,
                utime: ticks,
                stime: 0,
            };
            (pid, stat)
        };
        let me = std::process::id();
        let hz = ticks_per_second();
        let before = ProcessTimes {
            by_pid: HashMap::from([
                stat(1, "agent", 0, 0),
                stat(me, "xtask", 1, 0),
                stat(900_001, "server", me, 0),
                stat(900_002, "idle-one", 1, 0),
                stat(900_003, "ksoftirqd/0", 2, 0),
            ]),
        };
        let after = ProcessTimes {
            by_pid: HashMap::from([
                stat(1, "agent", 0, hz),
                stat(me, "xtask", 1, hz),
                stat(900_001, "server", me, 2 * hz),
                stat(900_002, "idle-one", 1, 0),
                stat(900_003, "ksoftirqd/0", 2, hz),
            ]),
        };
        let others = others_between(&before, &after, 2.0);
        assert_eq!(
            others,
            [OtherProcess {
                name: "agent (pid 1)".to_string(),
                percent_of_core: 50.0
            }]
        );
        assert_eq!(describe(&others), "agent (pid 1) 50%");
        assert_eq!(describe(&[]), "none above 1% of a core");
    }
}
