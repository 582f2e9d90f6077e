//! The supervisor: prefork as nginx does it. It chooses how many worker
//! processes to run, starts them (by re-executing its own binary with the
//! hidden `--worker N` flag), restarts one that dies, serves metrics, prints
//! a status line, and on SIGINT/SIGTERM forwards the signal, waits for every
//! worker and prints one `summary:` line for all of them.
//!
//! Why re-exec rather than a bare `fork`: after `fork` only the calling
//! thread exists in the child, so forking a process that has (or ever had)
//! other threads leaves the child with locks held by threads that are gone.
//! The supervisor is single-threaded, so fork would work today, but that
//! is an invariant every future change would have to keep. `exec` gives
//! each worker a fresh address space and a fresh `main`; the only state it
//! inherits is what we pass on purpose: its command line and one descriptor.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::flags::ReactorFlags;
use crate::metrics::{self, MetricsServer, Sample, WorkerSample};
use crate::stats::{self, Counters, MAX_REACTORS, READY};
use crate::sys::{
    self, DescriptorLimit, Epoll, Events, ExitKind, Fd, Listener, READABLE, SharedPage, SignalFd,
};
use crate::worker_process::WorkerCommand;

// ANCHOR: plan
// ANCHOR: plan_1
/// Descriptors a worker keeps for itself: stdio, rings, listeners,
/// eventfds, signalfd, the spare. Generous: there are fewer than 16 per
/// reactor.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Plan each worker to at most this share of its descriptors:
/// `SO_REUSEPORT` spreads connections by hash, not evenly, so some workers
/// get a few hundred more than the average.
const FILL_PERCENT: u64 = 95;
/// The most workers we start; beyond this, something is misconfigured.
pub const MAX_PROCS: usize = 1024;
/// Below this many connections per process the descriptor limit is not a
/// real allowance (a test's `ulimit -n 64`, say): `auto` runs one worker
/// rather than hundreds of tiny ones.
const MIN_CONNECTIONS_PER_WORKER: u64 = 1000;

/// How many worker processes and reactors per worker, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub procs: usize,
    pub reactors: usize,
    pub reason: String,
}

// ANCHOR_END: plan_1
// ANCHOR: connections_per_worker_signature
/// Connections one worker can hold under a hard `RLIMIT_NOFILE` of `hard`.
pub fn connections_per_worker(hard: u64) -> u64 {
    // ANCHOR_END: connections_per_worker_signature
    hard.saturating_sub(RESERVED_DESCRIPTORS) * FILL_PERCENT / 100
}
// ANCHOR: plan_2

// ANCHOR_END: plan_2
// ANCHOR: choose_plan_signature
/// `--procs auto`: the fewest processes whose descriptor limits together
/// hold `target_conns`. `--reactors auto`: the cores shared out among them.
pub fn choose_plan(
    procs: Option<usize>,
    reactors: Option<usize>,
    target_conns: u64,
    limit: DescriptorLimit,
    cores: usize,
) -> Plan {
    // ANCHOR_END: choose_plan_signature
    let per_worker = connections_per_worker(limit.hard).max(1);
    let (procs, reason) = match procs {
        Some(procs) => (
            procs,
            format!(
                "--procs {procs} as asked; together they hold about {} connections \
                 (RLIMIT_NOFILE hard limit {} per process)",
                per_worker * procs as u64,
                limit.hard
            ),
        ),
        None if per_worker < MIN_CONNECTIONS_PER_WORKER => (
            1,
            format!(
                "RLIMIT_NOFILE hard limit {} leaves room for about {per_worker} connections \
                 per process, too few to size workers by; running one (raise `ulimit -Hn`)",
                limit.hard
            ),
        ),
        None => {
            let procs = usize::try_from(target_conns.div_ceil(per_worker).max(1))
                .unwrap_or(MAX_PROCS)
                .min(MAX_PROCS);
            let why = if procs == 1 {
                format!(
                    "one process holds --conns {target_conns}: RLIMIT_NOFILE allows {} \
                     descriptors per process",
                    limit.hard
                )
            } else {
                format!(
                    "RLIMIT_NOFILE is {} per process and cannot be raised past its hard \
                     limit without privilege, so one worker holds about {per_worker} \
                     connections ({FILL_PERCENT}% of {} - {RESERVED_DESCRIPTORS} reserved); \
                     --conns {target_conns} needs ceil({target_conns} / {per_worker}) = \
                     {procs} (raise `ulimit -Hn` and one process suffices)",
                    limit.hard, limit.hard
                )
            };
            (procs, why)
        }
    };
    let reactors = reactors
        .unwrap_or_else(|| (cores / procs).max(1))
        .clamp(1, MAX_REACTORS);
    Plan {
        procs,
        reactors,
        reason,
    }
}
// ANCHOR: plan_3
// ANCHOR_END: plan_3
// ANCHOR_END: plan

/// Restart delays: the first restart is quick; a worker that keeps dying
/// young waits twice as long each time, up to the maximum, so a crash loop
/// costs little CPU and little log.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A worker that lived this long before dying earns a quick restart again.
const HEALTHY_UPTIME: Duration = Duration::from_secs(10);
/// Workers must all be listening this soon after starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After forwarding a shutdown signal, wait this long, then SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Everything a worker needs besides its index.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    pub plan: Plan,
    /// The flags every worker gets besides its own (`--work-us`,
    /// `--idle-timeout`, ...): chapter 07's flags, passed through.
    /// Chapter 07's flags and the ring's, for every worker (`--workers`
    /// decided).
    pub flags: ReactorFlags,
    pub metrics: Option<SocketAddr>,
    pub status_every: Option<Duration>,
}

// ANCHOR: worker_slot
/// One worker slot: the process now in it (if any) and its restart state.
struct Slot {
    pid: Option<libc::pid_t>,
    started_at: Instant,
    restart_at: Option<Instant>,
    restart_delay: Duration,
}
// ANCHOR_END: worker_slot

pub struct Supervisor {
    epoll: Epoll,
    signals: SignalFd,
    metrics: Option<MetricsServer>,
    /// Every worker's stats, one page-aligned slot each.
    stats: SharedPage,
    /// The memfd behind `stats`, inherited by each worker across exec.
    stats_fd: Fd,
    /// Holds the port (bound, not listening) so it stays ours while workers
    /// come and go.
    _port: Listener,
    /// The address with the real port, which workers bind.
    addr: SocketAddr,
    program: PathBuf,
    settings: Settings,
    slots: Vec<Slot>,
    /// Counters of workers that died (or were replaced), so totals never
    /// go backwards.
    retired: Counters,
    restarts: u64,
    /// SIGINT/SIGTERM arrived while the workers were starting: `run` begins
    /// with the shutdown (and still prints the summary).
    stop_requested: bool,
}

/// What the workers did, for the summary line.
#[derive(Debug)]
pub struct Outcome {
    /// Every worker, dead incarnations included.
    pub total: Counters,
    /// The last incarnation of each worker.
    pub per_worker: Vec<Counters>,
    pub restarts: u64,
}

/// How a supervisor run ended, for `main` to turn into an exit code.
#[derive(Debug)]
pub enum Failure {
    /// A limit or a bad argument: exit 2, as the contract says.
    Usage(String),
    Other(String),
}

impl Supervisor {
    /// Binds the port and the metrics endpoint and maps the stats; starts
    /// nothing yet.
    pub fn new(settings: Settings, signals: SignalFd) -> Result<Supervisor, Failure> {
        let port = Listener::reserve_port(settings.addr).map_err(|e| {
            Failure::Usage(format!(
                "cannot listen on {}: {e}; pick another --addr (port 0 picks a free one)",
                settings.addr
            ))
        })?;
        let addr = port
            .local_addr()
            .map_err(|e| Failure::Other(format!("getsockname: {e}")))?;
        let epoll = Epoll::new().map_err(|e| Failure::Other(format!("epoll_create1: {e}")))?;
        epoll
            .add(signals.raw_fd(), READABLE, token(signals.raw_fd()))
            .map_err(|e| Failure::Other(format!("epoll_ctl: {e}")))?;
        let metrics = match settings.metrics {
            None => None,
            Some(metrics_addr) => Some(MetricsServer::bind(metrics_addr, &epoll).map_err(|e| {
                Failure::Usage(format!(
                    "cannot serve metrics on {metrics_addr}: {e}; pick another --metrics address"
                ))
            })?),
        };
        let procs = settings.plan.procs;
        let (stats, stats_fd) = SharedPage::create(procs * stats::worker_slot_len())
            .map_err(|e| Failure::Other(format!("shared memory for worker stats: {e}")))?;
        let program = std::env::current_exe()
            .map_err(|e| Failure::Other(format!("cannot find our own executable: {e}")))?;
        let now = Instant::now();
        let slots = (0..procs)
            .map(|_| Slot {
                pid: None,
                started_at: now,
                restart_at: None,
                restart_delay: FIRST_RESTART_DELAY,
            })
            .collect();
        Ok(Supervisor {
            epoll,
            signals,
            metrics,
            stats,
            stats_fd,
            _port: port,
            addr,
            program,
            settings,
            slots,
            retired: Counters::default(),
            restarts: 0,
            stop_requested: false,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    // ANCHOR: spawn
    /// Starts worker `index`: a fresh copy of this program, told its slot,
    /// the stats descriptor (inherited: the memfd is not close-on-exec),
    /// the real address, its share of reactors and the server flags.
    fn spawn(&mut self, index: usize) -> io::Result<()> {
        let stats = stats::worker_stats(&self.stats, index);
        stats.reset();
        stats
            .supervisor_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        let command = WorkerCommand {
            index,
            stats_fd: self.stats_fd.raw(),
            addr: self.addr,
            reactors: self.settings.plan.reactors,
            flags: &self.settings.flags,
        };
        let child = Command::new(&self.program)
            .args(command.argv())
            // stdout belongs to the supervisor (`listening on`, `summary:`);
            // workers report through shared memory, and errors on stderr.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // We reap workers ourselves with waitpid; `Child` would only wait
        // if asked, and dropping it neither waits nor kills.
        drop(child);
        let slot = &mut self.slots[index];
        slot.pid = Some(pid);
        slot.started_at = Instant::now();
        slot.restart_at = None;
        Ok(())
    }
    // ANCHOR_END: spawn

    // ANCHOR: start
    /// Starts every worker and waits until each is listening. A worker that
    /// dies during startup fails the whole start (a bad address or limit
    /// would only kill its replacements too).
    pub fn start(&mut self) -> Result<(), Failure> {
        for index in 0..self.slots.len() {
            if let Err(e) = self.spawn(index) {
                self.abort();
                return Err(Failure::Other(format!("cannot start worker {index}: {e}")));
            }
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut events = Events::with_capacity(8);
        loop {
            let ready = (0..self.slots.len())
                .filter(|&i| {
                    stats::worker_stats(&self.stats, i)
                        .state
                        .load(Ordering::Acquire)
                        == READY
                })
                .count();
            if ready == self.slots.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.abort();
                return Err(Failure::Other(format!(
                    "only {ready} of {} workers were listening after {STARTUP_TIMEOUT:?}",
                    self.slots.len()
                )));
            }
            let _ = self
                .epoll
                .wait(&mut events, Some(Duration::from_millis(10)));
            // A scraper may come early: serve it (the metrics listener is
            // level-triggered, so leaving it unserved would spin this loop).
            self.serve_metrics(&events);
            while let Some(signal) = self.signals.take_signal().ok().flatten() {
                if signal != libc::SIGCHLD {
                    // Stop as after start-up: `run` forwards it to the
                    // workers (a worker still starting handles it once it
                    // listens) and prints the summary, exit 0.
                    self.stop_requested = true;
                    return Ok(());
                }
            }
            if let Ok(Some((pid, how))) = sys::reap_exited_child() {
                let index = self.slots.iter().position(|s| s.pid == Some(pid));
                if let Some(index) = index {
                    self.slots[index].pid = None;
                }
                self.abort();
                let message = format!(
                    "worker {} exited during startup ({how}); its error is above",
                    index.map_or_else(|| "?".to_string(), |i| i.to_string())
                );
                return Err(match how {
                    ExitKind::Code(2) => Failure::Usage(message),
                    _ => Failure::Other(message),
                });
            }
        }
    }
    // ANCHOR_END: start

    /// Kills every worker and waits for them (startup failed).
    fn abort(&mut self) {
        for pid in self.slots.iter().filter_map(|s| s.pid) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        while self.slots.iter().any(|s| s.pid.is_some()) {
            match sys::reap_exited_child() {
                Ok(Some((pid, _))) => self.forget(pid),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
    }

    fn forget(&mut self, pid: libc::pid_t) {
        for slot in &mut self.slots {
            if slot.pid == Some(pid) {
                slot.pid = None;
            }
        }
    }

    // ANCHOR: run
    /// Supervises until SIGINT/SIGTERM, then shuts the workers down and
    /// returns the final counts.
    pub fn run(mut self) -> Result<Outcome, Failure> {
        let mut events = Events::with_capacity(64);
        let mut next_status = self
            .settings
            .status_every
            .map(|every| Instant::now() + every);
        let mut shutdown_deadline = self.stop_requested.then(|| self.begin_shutdown());
        loop {
            if shutdown_deadline.is_some() && self.slots.iter().all(|s| s.pid.is_none()) {
                break;
            }
            let now = Instant::now();
            let wake_at = [
                next_status,
                shutdown_deadline,
                self.slots.iter().filter_map(|s| s.restart_at).min(),
                self.metrics.as_ref().and_then(MetricsServer::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = wake_at.map(|at| at.saturating_duration_since(now));
            match self.epoll.wait(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Other(format!("epoll_wait: {e}"))),
            }
            self.serve_metrics(&events);
            while let Some(signal) = self
                .signals
                .take_signal()
                .map_err(|e| Failure::Other(format!("signalfd: {e}")))?
            {
                if signal == libc::SIGCHLD {
                    self.reap_workers(shutdown_deadline.is_some());
                } else if shutdown_deadline.is_none() {
                    shutdown_deadline = Some(self.begin_shutdown());
                } else {
                    // A second Ctrl-C: whoever pressed it does not want to
                    // wait out the grace period.
                    eprintln!("second signal: stopping the workers now (SIGKILL)");
                    for pid in self.slots.iter().filter_map(|s| s.pid) {
                        let _ = sys::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let now = Instant::now();
            if shutdown_deadline.is_some_and(|deadline| now >= deadline) {
                for pid in self.slots.iter().filter_map(|s| s.pid) {
                    eprintln!("worker pid {pid} ignored SIGTERM for {SHUTDOWN_GRACE:?}: SIGKILL");
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
                shutdown_deadline = Some(now + SHUTDOWN_GRACE);
            }
            self.restart_due_workers(now);
            if let Some(at) = next_status
                && now >= at
            {
                eprintln!("{}", metrics::status_line(&self.sample()));
                next_status = self.settings.status_every.map(|every| now + every);
            }
        }
        // Every worker has exited: its final counters are in its page.
        let per_worker: Vec<Counters> = (0..self.slots.len())
            .map(|index| stats::worker_stats(&self.stats, index).snapshot())
            .collect();
        for counters in &per_worker {
            self.retired.add(counters);
        }
        Ok(Outcome {
            total: self.retired,
            per_worker,
            restarts: self.restarts,
        })
    }
    // ANCHOR_END: run

    /// Forwards the shutdown: every worker stops accepting, closes its
    /// connections and exits; we wait for all of them until the returned
    /// deadline, then SIGKILL.
    fn begin_shutdown(&mut self) -> Instant {
        for slot in &mut self.slots {
            slot.restart_at = None;
            if let Some(pid) = slot.pid {
                let _ = sys::kill(pid, libc::SIGTERM);
            }
        }
        Instant::now() + SHUTDOWN_GRACE
    }

    /// Hands the metrics endpoint its events (signals are read every turn
    /// anyway), then closes scrapers whose time is up.
    fn serve_metrics(&mut self, events: &Events) {
        let Some(mut metrics) = self.metrics.take() else {
            return;
        };
        for event in events.iter() {
            if event.token() != token(self.signals.raw_fd()) && metrics.owns(event) {
                metrics.on_event(&self.epoll, event, || self.sample());
            }
        }
        metrics.expire(Instant::now());
        self.metrics = Some(metrics);
    }

    // ANCHOR: reap
    // ANCHOR: reap_1
    /// Collects every worker that exited. Outside shutdown each one is a
    /// crash: keep its counters, and schedule a restart after a delay that
    /// doubles while it keeps dying young.
    fn reap_workers(&mut self, shutting_down: bool) {
        while let Ok(Some((pid, how))) = sys::reap_exited_child() {
            let Some(index) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
                continue;
            };
            self.slots[index].pid = None;
            if shutting_down {
                continue; // its final counters are read after the last one exits
            }
            let stats = stats::worker_stats(&self.stats, index);
            self.retired.add(&stats.snapshot().retired());
            stats.reset();
            let slot = &mut self.slots[index];
            // The back-off (exercise 08c): after a healthy run start again
            // from the first delay; wait the delay, double it up to the cap.
            // ANCHOR_END: reap_1
            if slot.started_at.elapsed() >= HEALTHY_UPTIME {
                slot.restart_delay = FIRST_RESTART_DELAY;
            }
            let delay = slot.restart_delay;
            slot.restart_at = Some(Instant::now() + delay);
            slot.restart_delay = (delay * 2).min(MAX_RESTART_DELAY);
            // ANCHOR: reap_2
            eprintln!("worker {index} (pid {pid}) died ({how}); restarting it in {delay:?}");
        }
    }

    fn restart_due_workers(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            if self.slots[index].restart_at.is_some_and(|at| now >= at) {
                match self.spawn(index) {
                    Ok(()) => self.restarts += 1,
                    Err(e) => {
                        // The same back-off for a spawn that failed (exercise 08c).
                        // ANCHOR_END: reap_2
                        let slot = &mut self.slots[index];
                        let delay = slot.restart_delay;
                        slot.restart_at = Some(now + delay);
                        slot.restart_delay = (delay * 2).min(MAX_RESTART_DELAY);
                        // ANCHOR: reap_3
                        eprintln!("cannot restart worker {index}: {e}; trying again in {delay:?}");
                    }
                }
            }
        }
    }
    // ANCHOR_END: reap_3
    // ANCHOR_END: reap

    // ANCHOR: sample
    /// Reads every worker's counters and resident memory.
    fn sample(&self) -> Sample {
        let mut total = self.retired;
        let workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let counters = stats::worker_stats(&self.stats, index).snapshot();
                total.add(&counters);
                WorkerSample {
                    index,
                    pid: slot.pid,
                    counters,
                    resident_bytes: slot.pid.and_then(sys::resident_bytes).unwrap_or(0),
                }
            })
            .collect();
        Sample {
            workers,
            total,
            restarts: self.restarts,
        }
    }
    // ANCHOR_END: sample
}

fn token(fd: std::os::fd::RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: DescriptorLimit = DescriptorLimit {
        soft: 20_000,
        hard: 20_000,
    };

    #[test]
    fn a_million_under_a_20k_limit_needs_53_workers() {
        let plan = choose_plan(None, None, 1_000_000, HERE, 2);
        assert_eq!(connections_per_worker(20_000), 18_939);
        assert_eq!(plan.procs, 53);
        assert_eq!(plan.reactors, 1);
        assert!(plan.reason.contains("ceil(1000000 / 18939) = 53"));
    }

    #[test]
    fn a_raised_limit_needs_one_worker_with_a_reactor_per_core() {
        let limit = DescriptorLimit {
            soft: 1024,
            hard: 2_000_000,
        };
        let plan = choose_plan(None, None, 1_000_000, limit, 8);
        assert_eq!((plan.procs, plan.reactors), (1, 8));
        assert!(plan.reason.starts_with("one process"));
    }

    #[test]
    fn a_tiny_limit_runs_one_worker_instead_of_hundreds() {
        let limit = DescriptorLimit { soft: 64, hard: 64 };
        let plan = choose_plan(None, None, 1_000_000, limit, 2);
        assert_eq!((plan.procs, plan.reactors), (1, 2));
        assert!(plan.reason.contains("too few to size workers by"));
    }

    #[test]
    fn explicit_choices_are_kept() {
        let plan = choose_plan(Some(3), Some(2), 1_000_000, HERE, 2);
        assert_eq!((plan.procs, plan.reactors), (3, 2));
    }
}
