//! Is there a process on this host whose CPU grows with the descriptors
//! other processes hold open?
//!
//! Monitoring and security agents often walk `/proc/PID/fd` of every
//! process, every few seconds. That costs nothing on a desktop and a lot
//! beside a million connections: two million socket descriptors, on the
//! same cores as the run, for the whole ramp and every probe. Nothing in the
//! run's own profile shows it (the time is in another process), so the
//! doctor provokes it: it opens many cheap descriptors (eventfds, no
//! sockets, no traffic) in a few child processes, and compares every other
//! process's CPU while they are open against a window before and a window
//! after. A process that is busier only while they are open is paying per
//! descriptor, and the row projects its share to the run's descriptors.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;

use crate::million::others::{self, ProcessTimes};
use crate::results::format::thousands;

/// Descriptors held open while the other processes are watched: enough to
/// lift a per-descriptor cost out of the noise (on the machine this book was
/// recorded on, 380,000 eventfds cost its agent 7–15% of a core), few
/// enough to open in a second.
pub const DESCRIPTORS: usize = 400_000;
/// Each of the three windows: before, while open, after.
pub const WINDOW: Duration = Duration::from_secs(5);
/// A process is named when it was busier while the descriptors were open
/// than in both other windows by at least this much of one core.
const NOTABLE_RISE_PERCENT: f64 = 2.0;

/// What holding [`DESCRIPTORS`] open cost the busiest other process.
#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorWatch {
    /// Descriptors the children held open.
    pub descriptors: usize,
    /// The process that rose most (`comm (pid N)`) and by how many percent
    /// of one core above the busier of the windows before and after;
    /// `None`: no process rose by [`NOTABLE_RISE_PERCENT`].
    pub watcher: Option<(String, f64)>,
}

impl DescriptorWatch {
    /// Percent of one core the watcher would take with `descriptors` open,
    /// if its cost is proportional to them.
    pub fn projected_percent(&self, descriptors: u64) -> f64 {
        match &self.watcher {
            Some((_, rise)) => rise * descriptors as f64 / self.descriptors.max(1) as f64,
            None => 0.0,
        }
    }

    pub fn describe(&self) -> String {
        match &self.watcher {
            Some((name, rise)) => format!(
                "{name}: +{rise:.0}% of a core with {} descriptors open",
                thousands(self.descriptors as u64)
            ),
            None => format!(
                "none rose by {NOTABLE_RISE_PERCENT:.0}% of a core with {} descriptors open",
                thousands(self.descriptors as u64)
            ),
        }
    }
}

/// Watches every other process for a window, opens `descriptors` eventfds
/// in child processes (this program re-run as `hold-descriptors`), watches
/// again, closes them, and watches a third time.
pub fn measure(descriptors: usize, window: Duration) -> io::Result<DescriptorWatch> {
    let before = cpu_over(window);
    let holders = Holders::open(descriptors)?;
    let during = cpu_over(window);
    drop(holders);
    let after = cpu_over(window);
    Ok(DescriptorWatch {
        descriptors,
        watcher: biggest_rise(&before, &during, &after),
    })
}

/// Percent of one core each process outside this one's tree took over
/// `window`, by pid, with its name.
fn cpu_over(window: Duration) -> HashMap<u32, (String, f64)> {
    let start = ProcessTimes::take();
    let started = Instant::now();
    thread::sleep(window);
    let end = ProcessTimes::take();
    others::percent_by_process(&start, &end, started.elapsed().as_secs_f64())
}

/// The process whose share while the descriptors were open most exceeds
/// the busier of its shares before and after. A process missing from any
/// window (a compiler that came and went) is not judged.
fn biggest_rise(
    before: &HashMap<u32, (String, f64)>,
    during: &HashMap<u32, (String, f64)>,
    after: &HashMap<u32, (String, f64)>,
) -> Option<(String, f64)> {
    during
        .iter()
        .filter_map(|(pid, (name, busy))| {
            let quiet = before.get(pid)?.1.max(after.get(pid)?.1);
            Some((name.clone(), busy - quiet))
        })
        .filter(|(_, rise)| *rise >= NOTABLE_RISE_PERCENT)
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Child processes holding eventfds open until dropped.
struct Holders {
    children: Vec<Child>,
}

impl Holders {
    /// Starts children until `descriptors` are open, each opening as many
    /// as its descriptor limit allows, and waits until each says it has.
    fn open(descriptors: usize) -> io::Result<Holders> {
        let per_child = descriptors_one_process_may_open()?;
        let mut holders = Holders {
            children: Vec::new(),
        };
        let mut left = descriptors;
        while left > 0 {
            let count = left.min(per_child);
            let mut child = Command::new(std::env::current_exe()?)
                .args(["hold-descriptors", "--count", &count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take();
            holders.children.push(child);
            let mut line = String::new();
            if let Some(stdout) = stdout {
                BufReader::new(stdout).read_line(&mut line)?;
            }
            if line.trim() != "ready" {
                return Err(io::Error::other(format!(
                    "a descriptor holder did not open its {count} descriptors"
                )));
            }
            left -= count;
        }
        Ok(holders)
    }
}

impl Drop for Holders {
    /// Closing a child's stdin tells it to exit; its descriptors go with it.
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// The hard descriptor limit (which a child raises its soft one to), less
/// what loadgen's `ensure_fd_limit` keeps spare for stdio and the runtime.
fn descriptors_one_process_may_open() -> io::Result<usize> {
    let limit = loadgen::cpu::nofile_limit().map_err(|e| io::Error::other(e.to_string()))?;
    let hard = usize::try_from(limit.rlim_max).unwrap_or(usize::MAX);
    let spare = usize::try_from(loadgen::cpu::SPARE_FDS).unwrap_or(usize::MAX);
    Ok(hard.saturating_sub(spare).clamp(1, 1 << 20))
}

#[derive(Args)]
pub struct HoldArgs {
    /// Eventfds to open.
    #[arg(long)]
    count: usize,
}

/// The child's side: raise the soft descriptor limit as far as needed, open
/// `count` eventfds, say `ready`, and hold them until stdin closes.
pub fn hold(args: &HoldArgs) -> io::Result<()> {
    loadgen::cpu::ensure_fd_limit(args.count).map_err(|e| io::Error::other(e.to_string()))?;
    let mut open = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        open.push(eventfd()?);
    }
    let mut stdout = io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    // Block until the parent closes our stdin (or dies).
    let _ = io::stdin().read_to_end(&mut Vec::new());
    drop(open);
    Ok(())
}

#[cfg(target_os = "linux")]
fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; a non-negative result is a new
    // descriptor this process owns, handed to OwnedFd which closes it.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by eventfd and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    // A pipe's read end stands in where there is no eventfd.
    let (reader, _writer) = io::pipe()?;
    Ok(reader.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(entries: &[(u32, &str, f64)]) -> HashMap<u32, (String, f64)> {
        entries
            .iter()
            .map(|(pid, name, busy)| (*pid, (name.to_string(), *busy)))
            .collect()
    }

    #[test]
    fn the_process_busy_only_while_descriptors_are_open_is_named() {
        let before = window(&[(1, "agent (pid 1)", 1.0), (7, "cron (pid 7)", 0.0)]);
        let during = window(&[
            (1, "agent (pid 1)", 12.0),
            (7, "cron (pid 7)", 9.0),
            (99, "rustc (pid 99)", 90.0),
        ]);
        let after = window(&[(1, "agent (pid 1)", 2.0), (7, "cron (pid 7)", 8.0)]);
        // cron was as busy after as during; rustc was not there before.
        let watch = DescriptorWatch {
            descriptors: 400_000,
            watcher: biggest_rise(&before, &during, &after),
        };
        assert_eq!(watch.watcher, Some(("agent (pid 1)".to_string(), 10.0)));
        assert_eq!(watch.projected_percent(2_000_000), 50.0);
        assert_eq!(
            watch.describe(),
            "agent (pid 1): +10% of a core with 400,000 descriptors open"
        );
    }

    #[test]
    fn a_quiet_host_names_nobody_and_projects_nothing() {
        let quiet = window(&[(1, "init (pid 1)", 0.5)]);
        let watch = DescriptorWatch {
            descriptors: 400_000,
            watcher: biggest_rise(&quiet, &quiet, &quiet),
        };
        assert_eq!(watch.watcher, None);
        assert_eq!(watch.projected_percent(2_000_000), 0.0);
        assert!(watch.describe().starts_with("none rose"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn eventfds_are_descriptors_of_this_process_until_dropped() {
        // Only eventfds are counted: tests run in parallel threads of this
        // process, and the others open and close files meanwhile. None of
        // them opens an eventfd (the doctor's holders are child processes).
        let eventfds_open = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy() == "anon_inode:[eventfd]")
                .count()
        };
        let before = eventfds_open();
        let fds: Vec<_> = (0..100).map(|_| eventfd().unwrap()).collect();
        assert_eq!(eventfds_open(), before + 100);
        drop(fds);
        assert_eq!(eventfds_open(), before);
        assert!(descriptors_one_process_may_open().unwrap() >= 1);
    }
}
