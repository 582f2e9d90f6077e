//! The results file, `book/src/results/data.json`: everything one run of the
//! matrix measured, and the machine it ran on. The book's results page and
//! every chapter's table are rendered from this file alone.

use serde::{Deserialize, Serialize};

/// One run of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsData {
    pub machine: Machine,
    pub settings: Settings,
    /// In the order of `c1m_benches::SERVERS` at the time of the run.
    pub servers: Vec<ServerResults>,
    /// Chapter-specific measurements; absent in files from before they existed.
    #[serde(default)]
    pub scenarios: Option<ScenarioSet>,
    /// Criterion's estimates for the chapters' micro-benchmarks; absent in
    /// files from before they were imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benches: Option<BenchSet>,
}

/// Where and when the numbers were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs online.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// UTC date of the run, YYYY-MM-DD.
    pub date: String,
    /// Which core the servers and the load generator ran on, in words.
    pub pinning: String,
    /// Whether server and load had a core each.
    pub pinned: bool,
}

/// How the matrix was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `--quick`: shorter windows, fewer idle connections.
    pub quick: bool,
    pub message_size: usize,
    pub warmup_seconds: f64,
    pub measure_seconds: f64,
    /// Echo passes over all servers; each point is the best of them,
    /// except at one connection when `one_connection_passes` is set.
    pub passes: usize,
    /// Passes of the one-connection point (the first `passes` of them are
    /// part of the full passes, the rest run that point alone), which keeps
    /// its *median* pass, not its best: see `measure::median_of`. 0 in files
    /// from before it, where the one-connection point kept its best of
    /// `passes` like every other point.
    #[serde(default)]
    pub one_connection_passes: usize,
    pub connection_counts: Vec<usize>,
    pub work_us: u32,
    pub work_connections: usize,
    pub idle_connections: usize,
    /// The server everything is compared with.
    pub reference: String,
    /// The floor (the smallest epoll echo loop), which server CPU per
    /// message is also compared with; absent in files from before it.
    #[serde(default)]
    pub floor: Option<String>,
    /// Messages in flight per connection, and connections, for the
    /// pipelined point; 0 in files from before it.
    #[serde(default)]
    pub pipeline_depth: usize,
    #[serde(default)]
    pub pipeline_connections: usize,
}

/// Everything measured for one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerResults {
    pub name: String,
    /// "chapter" or "baseline".
    pub kind: String,
    /// Extra flags it was started with.
    pub args: Vec<String>,
    /// Messages/s and RTT at each connection count, no CPU work.
    pub echo: Vec<EchoPoint>,
    /// The same with several messages in flight per connection.
    #[serde(default)]
    pub pipelined: Option<EchoPoint>,
    /// The same with `--work-us`; `None` for the floor, which does no work.
    pub work: Option<EchoPoint>,
    pub memory: MemoryProbe,
}

/// One closed-loop echo measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoPoint {
    pub connections: usize,
    pub work_us: u32,
    /// Messages in flight per connection (1: ping-pong).
    #[serde(default = "one")]
    pub pipeline: usize,
    /// Rounded to a whole message.
    pub messages_per_sec: Option<u64>,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    /// Server CPU time per message, in microseconds (one decimal).
    pub server_cpu_us_per_message: Option<f64>,
    /// Percent of one core each side used in the window (one decimal).
    pub server_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: Option<f64>,
    /// Why this point has no (trustworthy) numbers.
    pub error: Option<String>,
    /// Messages/s of every pass that measured this point without error, in
    /// the order they ran; the figures above are one of these passes. The
    /// page shows their spread. Empty in files from before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_rates: Vec<u64>,
}

fn one() -> usize {
    1
}

impl EchoPoint {
    /// Messages/s, if the point succeeded.
    pub fn rate(&self) -> Option<u64> {
        if self.error.is_some() {
            None
        } else {
            self.messages_per_sec
        }
    }

    /// Slowest pass's messages/s over the fastest's, if at least two
    /// passes measured the point: 1.00 means the passes agreed, 0.80 that
    /// the slowest moved a fifth fewer messages than the fastest.
    pub fn pass_spread(&self) -> Option<f64> {
        if self.pass_rates.len() < 2 {
            return None;
        }
        let slowest = *self.pass_rates.iter().min()?;
        let fastest = *self.pass_rates.iter().max()?;
        (fastest > 0).then(|| slowest as f64 / fastest as f64)
    }

    /// p99 RTT in µs, if the point succeeded.
    pub fn p99(&self) -> Option<u64> {
        if self.error.is_some() {
            None
        } else {
            self.p99_us
        }
    }
}

/// Userland memory and threads with many idle connections held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryProbe {
    pub connections: usize,
    /// RSS after serving one connection, before the hold.
    pub rss_idle_bytes: Option<u64>,
    /// RSS with every connection held.
    pub rss_held_bytes: Option<u64>,
    pub threads_idle: Option<usize>,
    pub threads_held: Option<usize>,
    pub error: Option<String>,
    /// Go servers only: goroutine stack in use per held connection, from
    /// `runtime.MemStats.StackInuse` (the summary's `stack_bytes_per_connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_bytes_per_connection: Option<u64>,
    /// Go servers only: goroutines alive when the most connections were held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goroutines_held: Option<u64>,
}

impl MemoryProbe {
    /// RSS growth per held connection, if the probe succeeded.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        if self.error.is_some() || self.connections == 0 {
            return None;
        }
        let (idle, held) = (self.rss_idle_bytes?, self.rss_held_bytes?);
        Some(held.saturating_sub(idle) as f64 / self.connections as f64)
    }
}

impl ResultsData {
    pub fn server(&self, name: &str) -> Option<&ServerResults> {
        self.servers.iter().find(|s| s.name == name)
    }

    pub fn reference(&self) -> Option<&ServerResults> {
        self.server(&self.settings.reference)
    }

    pub fn floor(&self) -> Option<&ServerResults> {
        self.server(self.settings.floor.as_deref()?)
    }
}

impl ServerResults {
    /// The echo point at `connections`, if measured.
    pub fn at(&self, connections: usize) -> Option<&EchoPoint> {
        self.echo.iter().find(|p| p.connections == connections)
    }

    /// Every point measured, for listing failures and loadgen limits.
    pub fn points(&self) -> impl Iterator<Item = &EchoPoint> {
        self.echo
            .iter()
            .chain(self.pipelined.iter())
            .chain(self.work.iter())
    }
}

/// The chapter scenarios: the measurements a chapter page shows that the
/// standard matrix does not cover (syscall counts per message, a pool at a
/// given `--work-us`, how reactors share connections, ...). Measured after
/// the matrix, or alone with `--only-scenarios`, so they carry their own
/// machine and date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSet {
    pub machine: Machine,
    /// Wall-clock seconds the whole set took to measure.
    pub seconds: f64,
    pub tables: Vec<ScenarioTable>,
}

/// One table on one chapter page, rendered to
/// `generated/<chapter>-<id>.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioTable {
    /// The chapter's package name, e.g. `ch02-epoll-level-triggered`.
    pub chapter: String,
    /// Short name of the table within the chapter, e.g. `syscalls`.
    pub id: String,
    pub columns: Vec<String>,
    pub rows: Vec<ScenarioRow>,
    /// Sentences derived from the rows at measuring time (ratios, shares).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Where and when this table was measured, when that differs from the
    /// set's (a later `--only-scenarios --chapter` run merged it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Seconds this table's run took, with `machine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// One row: cells already formatted for the page, or the reason it has none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRow {
    pub cells: Vec<String>,
    pub error: Option<String>,
}

/// The chapters' criterion benches (`cargo bench -p chNN-… --bench …`), one
/// run of each, imported from criterion's own `estimates.json` files by
/// `cargo xtask results --only-benches`. Measured on their own, so they carry
/// their own machine and date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSet {
    pub machine: Machine,
    /// Wall-clock seconds the whole set took, builds included.
    pub seconds: f64,
    pub estimates: Vec<BenchEstimate>,
}

/// One criterion benchmark: `GROUP/FUNCTION/VALUE` of one bench target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchEstimate {
    /// The package and bench target: `cargo bench -p PACKAGE --bench BENCH`.
    pub package: String,
    pub bench: String,
    pub group: String,
    pub function: String,
    /// The benchmark's parameter (`BenchmarkId::new(function, value)`).
    pub value: Option<String>,
    /// Elements per iteration, where the bench declares a throughput.
    pub elements: Option<u64>,
    /// Criterion's median time per iteration, in ns, and its 95% interval.
    pub median_ns: f64,
    pub lower_ns: f64,
    pub upper_ns: f64,
}

impl BenchSet {
    /// The estimate for `group/function/value`, if it was measured.
    pub fn find(&self, group: &str, function: &str, value: &str) -> Option<&BenchEstimate> {
        self.estimates.iter().find(|e| {
            e.group == group && e.function == function && e.value.as_deref() == Some(value)
        })
    }
}
