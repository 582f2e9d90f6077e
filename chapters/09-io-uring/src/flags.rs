//! The flags that shape every reactor (`--work-us`, `--pin`, the worker
//! pool's, back-pressure, `--idle-timeout`, and chapter 09's ring flags), and
//! the [`Config`] each reactor is started with. `main` adds `--addr` and
//! `--reactors`. The supervisor hands these flags on to every worker process
//! ([`ReactorFlags::to_argv`]), which parses them back with this same
//! definition.

use std::time::Duration;

use crate::server::Config;
use crate::workers::{Offload, PoolKind};

/// Every reactor's flags, flattened into the command line by `main`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct ReactorFlags {
    /// Microseconds of CPU work (a busy loop) per newline received, done
    /// before echoing, on a worker thread.
    #[arg(long, default_value_t = 0)]
    pub work_us: u64,

    /// Pin reactor i to the i-th CPU this process may use (round robin if
    /// there are more reactors than CPUs); its worker threads inherit it.
    #[arg(long)]
    pub pin: bool,

    /// Worker threads per reactor that run the --work-us work [default:
    /// cores / reactors of all processes, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Which worker pool: threads sharing a channel (written in chapter 04;
    /// the default: it measured cheaper under load there) or rayon's
    /// ThreadPool.
    #[arg(long, value_enum, default_value_t = PoolKind::Hand)]
    pub pool: PoolKind,

    /// At most this many jobs handed to the workers and not yet answered;
    /// when it is full the loop stops reading clients until results come
    /// back (back-pressure across the hand-off).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_depth: u32,

    /// Which reads' work goes to the worker pool: `auto` only work above
    /// --offload-above-us (cheaper work runs on the event loop, and with
    /// --work-us 0 the pool is never used), `always` every read (the price
    /// of the hand-off on its own), `never` none (chapter 03).
    #[arg(long, value_enum, default_value_t = Offload::Auto)]
    pub offload: Offload,

    /// With --offload auto, a read whose work (newlines × --work-us) costs
    /// more than this many microseconds goes to the pool. A hand-off costs a
    /// few microseconds of CPU (see the book), so work under this runs
    /// cheaper on the loop than the trip would cost.
    #[arg(long, default_value_t = 10)]
    pub offload_above_us: u64,

    /// Stop reading a client while this many bytes of its echo are unsent
    /// (back-pressure).
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending: u64,

    /// Close a connection that moves no data, in either direction, for this
    /// many seconds (fractions allowed, e.g. 0.5) [default: never].
    #[arg(long, value_name = "SECS", value_parser = parse_idle_timeout, allow_negative_numbers = true)]
    pub idle_timeout: Option<Duration>,

    // ANCHOR: uring_flags
    /// Let a kernel thread poll each ring's submission queue (SQPOLL):
    /// submitting then needs no syscall while it is awake, at the price of
    /// a kernel thread spinning on a CPU for up to --sqpoll-idle-ms after
    /// the last submission.
    #[arg(long)]
    pub sqpoll: bool,

    /// With --sqpoll: how long the kernel thread spins without work before
    /// it sleeps (and the next submission needs a wake-up syscall).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub sqpoll_idle_ms: u32,

    /// Submission queue slots per ring (a power of two; the completion
    /// queue gets four times as many).
    #[arg(long, default_value_t = 4096, value_parser = parse_power_of_two::<32768>)]
    pub ring_entries: u32,

    /// Receive buffers in each reactor's provided buffer ring (a power of
    /// two, at most 32768). Size it for one turn's receives, not for the
    /// connections: buffers come back within the turn that used them. When
    /// all are in use, receives end with ENOBUFS and are re-armed once
    /// buffers come back. More buffers than needed cost cache and TLB
    /// misses: the ring hands them out in rotation.
    #[arg(long, default_value_t = 256, value_parser = parse_power_of_two::<32768>)]
    pub recv_buffers: u32,

    /// Bytes per receive buffer: the most one receive completion carries.
    #[arg(long, value_name = "BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub recv_buffer_size: u32,
    // ANCHOR_END: uring_flags
}

impl ReactorFlags {
    /// `--workers`, or its default: the cores shared out among all
    /// `reactors`, at least one each.
    pub fn workers_per_reactor(&self, reactors: usize) -> usize {
        self.workers
            .map_or_else(|| (available_cores() / reactors).max(1), usize::from)
    }

    /// What each of `reactors` reactors is started with.
    pub fn config(&self, reactors: usize) -> Config {
        Config {
            work_per_newline: Duration::from_micros(self.work_us),
            max_pending: usize::try_from(self.max_pending).unwrap_or(usize::MAX),
            workers: self.workers_per_reactor(reactors),
            pool: self.pool,
            queue_depth: usize::try_from(self.queue_depth).unwrap_or(usize::MAX),
            offload: self.offload,
            offload_above: Duration::from_micros(self.offload_above_us),
            idle_timeout: self.idle_timeout,
            ring_entries: self.ring_entries,
            // Both parsed as powers of two no larger than 32768.
            recv_buffers: u16::try_from(self.recv_buffers).unwrap_or(1 << 15),
            recv_buffer_size: self.recv_buffer_size,
            sqpoll: self.sqpoll(),
        }
    }

    /// `--sqpoll`: how long the kernel thread may idle before it sleeps.
    pub fn sqpoll(&self) -> Option<Duration> {
        self.sqpoll
            .then(|| Duration::from_millis(u64::from(self.sqpoll_idle_ms)))
    }
}

// ANCHOR: to_argv
impl ReactorFlags {
    /// These flags as a command line that parses back to them: what the
    /// supervisor passes to each worker process. (Destructured, so a new
    /// flag cannot be forgotten here without a compile error.)
    pub fn to_argv(&self) -> Vec<String> {
        let ReactorFlags {
            work_us,
            pin,
            workers,
            pool,
            queue_depth,
            offload,
            offload_above_us,
            max_pending,
            idle_timeout,
            sqpoll,
            sqpoll_idle_ms,
            ring_entries,
            recv_buffers,
            recv_buffer_size,
        } = self;
        let mut argv = vec![
            format!("--work-us={work_us}"),
            format!("--pool={}", flag_name(pool)),
            format!("--queue-depth={queue_depth}"),
            format!("--offload={}", flag_name(offload)),
            format!("--offload-above-us={offload_above_us}"),
            format!("--max-pending={max_pending}"),
            format!("--sqpoll-idle-ms={sqpoll_idle_ms}"),
            format!("--ring-entries={ring_entries}"),
            format!("--recv-buffers={recv_buffers}"),
            format!("--recv-buffer-size={recv_buffer_size}"),
        ];
        if *pin {
            argv.push("--pin".to_string());
        }
        if let Some(workers) = workers {
            argv.push(format!("--workers={workers}"));
        }
        if let Some(timeout) = idle_timeout {
            argv.push(format!("--idle-timeout={}", timeout.as_secs_f64()));
        }
        if *sqpoll {
            argv.push("--sqpoll".to_string());
        }
        argv
    }
}
// ANCHOR_END: to_argv

/// The name clap gives a `ValueEnum` value on the command line (`--offload
/// auto`): for the start-up lines.
pub fn flag_name(value: &impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_string())
}

/// The longest `--idle-timeout`: a year. Deadlines are `now + timeout`, and
/// an `Instant` that far out must still be representable.
const MAX_IDLE_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `--idle-timeout SECS`: a positive, finite number of seconds, at least a
/// millisecond (the wheel's finest tick). clap turns an `Err` into its usual
/// message and exit code 2.
fn parse_idle_timeout(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds (e.g. 30 or 0.5)"))?;
    if !(0.001..=MAX_IDLE_TIMEOUT_SECS).contains(&secs) {
        return Err(format!(
            "must be between 0.001 and {MAX_IDLE_TIMEOUT_SECS} seconds; leave the flag out to never close idle connections"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A power of two from 1 to `MAX` (`--ring-entries`, `--recv-buffers`).
fn parse_power_of_two<const MAX: u32>(value: &str) -> Result<u32, String> {
    let n: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number"))?;
    if n == 0 || n > MAX || !n.is_power_of_two() {
        return Err(format!("must be a power of two from 1 to {MAX}"));
    }
    Ok(n)
}

/// The CPUs this process may use: the default number of reactors.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
