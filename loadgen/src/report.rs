//! What a run measured: a table for people ([`EchoReport::print_table`]) and
//! a stable JSON shape for scripts (`serde`). Field names are part of the
//! interface: `xtask results` and the benches read them; add fields, do not
//! rename them.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// How many round trips were timed.
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Summarises a histogram of microsecond values.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            samples: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A new histogram for round-trip times in microseconds (1 µs .. 1 h, 3
/// significant digits).
pub fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("1 µs .. 1 h at 3 significant figures is a valid histogram")
}

/// Records a round trip, clamped into the histogram's range.
pub fn record_rtt(h: &mut Histogram<u64>, rtt: Duration) {
    let us = (rtt.as_micros() as u64).clamp(1, h.high());
    // In range by the clamp above, so this cannot fail.
    let _ = h.record(us);
}

/// Errors seen on established connections. Any of them fails the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Echoed bytes that differ from what was sent (or bytes never sent).
    pub mismatches: u64,
    /// Connections reset (ECONNRESET, EPIPE) or failing with another I/O error.
    pub resets: u64,
    /// Connections the server closed while loadgen still expected bytes.
    pub unexpected_eof: u64,
    /// Connections whose echo stopped arriving for longer than the timeout.
    pub timeouts: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.mismatches + self.resets + self.unexpected_eof + self.timeouts
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.mismatches += other.mismatches;
        self.resets += other.resets;
        self.unexpected_eof += other.unexpected_eof;
        self.timeouts += other.timeouts;
    }
}

/// How the connections were opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectStats {
    pub requested: usize,
    pub established: usize,
    /// Connects that failed without hitting a limit (timeouts, resets).
    pub failed: usize,
    /// From the first connect to the last one completing.
    pub seconds: f64,
    /// `established / seconds`.
    pub per_sec: f64,
}

/// One process's CPU use over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// User + system CPU time used in the window.
    pub cpu_seconds: f64,
    /// `cpu_seconds / window`, in percent of one core (can exceed 100).
    pub percent_of_core: f64,
    /// CPU microseconds per message (None when no message completed).
    pub us_per_message: Option<f64>,
}

impl ProcessCpu {
    pub fn new(cpu: Duration, window: Duration, messages: u64) -> ProcessCpu {
        let cpu_seconds = cpu.as_secs_f64();
        let window = window.as_secs_f64();
        ProcessCpu {
            cpu_seconds,
            percent_of_core: if window > 0.0 {
                100.0 * cpu_seconds / window
            } else {
                0.0
            },
            us_per_message: (messages > 0).then(|| cpu_seconds * 1e6 / messages as f64),
        }
    }
}

/// How busy a core was over the window, from `/proc/stat` (all processes
/// and the kernel's softirq work on it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreUsage {
    pub core: usize,
    /// "loadgen" or "server": whose pinned core this is.
    pub role: String,
    /// Non-idle time, percent of the window.
    pub busy_percent: f64,
    /// Softirq time (loopback TCP processing), percent of the window.
    pub softirq_percent: f64,
}

impl CoreUsage {
    pub fn new(
        core: usize,
        role: &str,
        start: crate::cpu::CoreTicks,
        end: crate::cpu::CoreTicks,
    ) -> CoreUsage {
        let total = end.total.saturating_sub(start.total).max(1) as f64;
        CoreUsage {
            core,
            role: role.to_string(),
            busy_percent: 100.0 * end.busy.saturating_sub(start.busy) as f64 / total,
            softirq_percent: 100.0 * end.softirq.saturating_sub(start.softirq) as f64 / total,
        }
    }
}

/// CPU use of loadgen and (with `--server-pid`) of the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    pub loadgen: ProcessCpu,
    pub server: Option<ProcessCpu>,
    pub server_pid: Option<u32>,
    /// The core loadgen was pinned to (`--cpu`).
    pub loadgen_core: Option<usize>,
    /// The core the server is pinned to (found from its affinity mask).
    pub server_core: Option<usize>,
    /// Busy time of those cores (Linux). A process's own CPU time leaves
    /// out the softirq work done on its core, so this is the figure that
    /// shows whether a pinned core is saturated.
    pub cores: Vec<CoreUsage>,
}

impl CpuReport {
    /// Fills in the per-process and per-core figures from two snapshots.
    pub fn measure(
        &mut self,
        start: &crate::cpu::CpuSnapshot,
        end: &crate::cpu::CpuSnapshot,
        window: Duration,
        messages: u64,
    ) {
        self.loadgen = ProcessCpu::new(end.own.saturating_sub(start.own), window, messages);
        if let (Some(s0), Some(s1)) = (start.server, end.server) {
            self.server = Some(ProcessCpu::new(s1.saturating_sub(s0), window, messages));
        }
        for (core, role) in [(self.loadgen_core, "loadgen"), (self.server_core, "server")] {
            let Some(core) = core else { continue };
            let ticks = |s: &crate::cpu::CpuSnapshot| {
                s.cores.iter().find(|(c, _)| *c == core).map(|(_, t)| *t)
            };
            if let (Some(t0), Some(t1)) = (ticks(start), ticks(end)) {
                self.cores.push(CoreUsage::new(core, role, t0, t1));
            }
        }
    }

    /// The cores worth watching: loadgen's and the server's, if pinned.
    pub fn watched_cores(&self) -> Vec<usize> {
        let mut cores: Vec<usize> = self
            .loadgen_core
            .into_iter()
            .chain(self.server_core)
            .collect();
        cores.dedup();
        cores
    }
}

/// Result of `loadgen echo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoReport {
    /// "events" (one mio loop per thread) or "threads" (a thread per connection).
    pub engine: String,
    pub addr: String,
    /// Event-loop threads (events engine) or connection threads (threads engine).
    pub threads: usize,
    /// Bytes per message, including the trailing `\n`.
    pub message_size: usize,
    /// Messages kept in flight per connection.
    pub pipeline: usize,
    pub connect: ConnectStats,
    pub warmup_seconds: f64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Messages whose whole echo arrived, verified, inside the window.
    pub messages: u64,
    /// Echoed bytes verified inside the window (`messages * message_size`).
    pub bytes: u64,
    pub messages_per_sec: f64,
    /// Echoed megabytes (10^6 bytes) per second, one direction.
    pub mb_per_sec: f64,
    /// Time from sending a message to the last byte of its echo.
    pub rtt_us: Latency,
    pub errors: ErrorCounts,
    pub cpu: CpuReport,
    /// No errors and every requested connection established.
    pub ok: bool,
}

/// Result of `loadgen hold`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldReport {
    pub addr: String,
    /// Destination addresses on `addr`'s port the connections were spread
    /// over (empty: `addr` alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dests: Vec<String>,
    /// Local addresses connections were bound to (empty: the kernel chose).
    pub sources: Vec<String>,
    /// Requested connect rate in connections per second (None: as fast as possible).
    pub target_rate: Option<f64>,
    pub connect: ConnectStats,
    /// Processes the connections were spread over (1: this process alone).
    #[serde(default = "one")]
    pub processes: usize,
    /// How long all connections were held open after the ramp.
    pub hold_seconds: f64,
    pub ping_every_seconds: f64,
    /// Connections pinged per round.
    pub ping_sample: usize,
    pub ping_rounds: u64,
    pub pings_sent: u64,
    /// Pings whose echo came back complete and byte-exact.
    pub pings_ok: u64,
    pub ping_rtt_us: Latency,
    /// `--verify-all`: every held connection was sent one ping during the hold.
    #[serde(default)]
    pub verify_all: bool,
    /// Held connections that answered at least one ping during the hold
    /// (with `--verify-all`, all of them should have).
    #[serde(default)]
    pub connections_answered: u64,
    /// Held connections that were closed or reset by the server.
    pub connections_lost: u64,
    pub errors: ErrorCounts,
    pub cpu: CpuReport,
    /// Every connection established and kept, every ping answered exactly
    /// (and with `--verify-all`, every connection answered one).
    pub ok: bool,
    /// The ping round trips as an HdrHistogram (V2 serialization, hex): set
    /// only by the processes of a spread run, so that their parent can merge
    /// percentiles exactly instead of averaging them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_rtt_histogram: Option<String>,
}

fn one() -> usize {
    1
}

/// Writes `key  value` rows with the keys in one aligned column.
fn row(out: &mut impl Write, key: &str, value: std::fmt::Arguments<'_>) -> io::Result<()> {
    writeln!(out, "  {key:<18} {value}")
}

fn print_connect(out: &mut impl Write, c: &ConnectStats) -> io::Result<()> {
    row(
        out,
        "connections",
        format_args!(
            "{} of {} established, {} failed, in {:.3} s ({:.0} conn/s)",
            c.established, c.requested, c.failed, c.seconds, c.per_sec
        ),
    )
}

fn print_latency(out: &mut impl Write, key: &str, l: &Latency) -> io::Result<()> {
    row(
        out,
        key,
        format_args!(
            "p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  ({} samples)",
            l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
        ),
    )
}

fn print_errors(out: &mut impl Write, e: &ErrorCounts) -> io::Result<()> {
    row(
        out,
        "errors",
        format_args!(
            "{} (mismatch {}, reset {}, eof {}, timeout {})",
            e.total(),
            e.mismatches,
            e.resets,
            e.unexpected_eof,
            e.timeouts
        ),
    )
}

fn print_cpu(out: &mut impl Write, cpu: &CpuReport) -> io::Result<()> {
    let per_msg = |p: &ProcessCpu| match p.us_per_message {
        Some(us) => format!(", {us:.2} CPU-µs/msg"),
        None => String::new(),
    };
    let pinned = match cpu.loadgen_core {
        Some(core) => format!(" (pinned to core {core})"),
        None => String::new(),
    };
    row(
        out,
        "cpu loadgen",
        format_args!(
            "{:.1}% of a core{}{}",
            cpu.loadgen.percent_of_core,
            per_msg(&cpu.loadgen),
            pinned
        ),
    )?;
    if let (Some(server), Some(pid)) = (&cpu.server, cpu.server_pid) {
        row(
            out,
            "cpu server",
            format_args!(
                "{:.1}% of a core{} (pid {pid})",
                server.percent_of_core,
                per_msg(server)
            ),
        )?;
    }
    for core in &cpu.cores {
        row(
            out,
            &format!("core {} ({})", core.core, core.role),
            format_args!(
                "{:.1}% busy, of which {:.1}% softirq",
                core.busy_percent, core.softirq_percent
            ),
        )?;
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "OK" } else { "FAILED" }
}

impl EchoReport {
    /// The human-readable table `loadgen echo` prints.
    pub fn print_table(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "echo {}: {} engine, {} thread(s), {} B messages, pipeline {}",
            self.addr, self.engine, self.threads, self.message_size, self.pipeline
        )?;
        print_connect(out, &self.connect)?;
        row(
            out,
            "window",
            format_args!(
                "{:.2} s (after {:.2} s warmup)",
                self.seconds, self.warmup_seconds
            ),
        )?;
        row(
            out,
            "messages",
            format_args!("{} ({:.0} msg/s)", self.messages, self.messages_per_sec),
        )?;
        row(
            out,
            "throughput",
            format_args!("{:.2} MB/s echoed ({} bytes)", self.mb_per_sec, self.bytes),
        )?;
        print_latency(out, "rtt", &self.rtt_us)?;
        print_errors(out, &self.errors)?;
        print_cpu(out, &self.cpu)?;
        row(out, "result", format_args!("{}", verdict(self.ok)))
    }
}

impl HoldReport {
    /// The human-readable table `loadgen hold` prints.
    pub fn print_table(&self, out: &mut impl Write) -> io::Result<()> {
        let sources = if self.sources.is_empty() {
            "kernel-chosen source".to_string()
        } else {
            format!("{} source address(es)", self.sources.len())
        };
        let rate = match self.target_rate {
            Some(r) => format!("{r:.0} conn/s"),
            None => "unlimited".to_string(),
        };
        let processes = match self.processes {
            0 | 1 => String::new(),
            p => format!(", {p} processes"),
        };
        let dests = match self.dests.len() {
            0 => String::new(),
            d => format!(" over {d} destination addresses"),
        };
        writeln!(
            out,
            "hold {}{dests}: {sources}, target rate {rate}{processes}",
            self.addr
        )?;
        print_connect(out, &self.connect)?;
        row(
            out,
            "held",
            format_args!("{:.2} s, {} lost", self.hold_seconds, self.connections_lost),
        )?;
        row(
            out,
            "pings",
            format_args!(
                "{} of {} answered exactly ({} rounds of {} every {:.2} s)",
                self.pings_ok,
                self.pings_sent,
                self.ping_rounds,
                self.ping_sample,
                self.ping_every_seconds
            ),
        )?;
        print_latency(out, "ping rtt", &self.ping_rtt_us)?;
        if self.verify_all {
            let every = if self.connections_answered == self.connect.established as u64 {
                "every connection answered an echo"
            } else {
                "NOT every connection answered an echo"
            };
            row(
                out,
                "verify all",
                format_args!(
                    "{every} ({} of {})",
                    self.connections_answered, self.connect.established
                ),
            )?;
        }
        print_errors(out, &self.errors)?;
        print_cpu(out, &self.cpu)?;
        row(out, "result", format_args!("{}", verdict(self.ok)))
    }
}
