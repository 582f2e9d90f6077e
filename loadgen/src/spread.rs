//! Spreading one `loadgen hold` run over processes and source addresses.
//!
//! Two host limits stand between one loadgen process and a million
//! connections:
//!
//! - **Descriptors.** One connection is one descriptor, and a process can
//!   hold at most `RLIMIT_NOFILE` (hard limit) of them. Where that limit
//!   cannot be raised (20,000 on the machine this book was written on) the
//!   run is split over processes, like nginx's prefork workers.
//! - **Ports.** A connection is the 4-tuple (source address, source port,
//!   destination address, destination port). Towards one server address,
//!   one source address has only as many ports as
//!   `net.ipv4.ip_local_port_range` is wide. All of 127.0.0.0/8 is loopback
//!   on Linux, so more source addresses (127.0.0.1, 127.0.0.2, ...) mean
//!   more ports; [`crate::connect`] binds each socket with
//!   `IP_BIND_ADDRESS_NO_PORT` so the port is still picked at `connect()`.
//!
//!   The hard limit is the range's width, but the *fast* limit is well
//!   below it: `connect()` looks for a free port among the even ports first
//!   (leaving odd ones for `bind()`), and the fuller that half is, the
//!   longer each connect scans for a free one. Measured here, one source
//!   with the default range (28,232 ports): 14,000 connections open at
//!   ~17K/s, 16,000 at ~3.5K/s, 19,000 at ~1.4K/s. And at a million
//!   connections with 32 sources of ~31,000 each (97% of the even half of
//!   1024-65535) the ramp fell from ~35K/s to 1-2K/s near the end, where
//!   100 sources of 10,000 held 20-26K/s throughout. So [`plan`] puts at
//!   most a *quarter* of the range (half of the even half) on each source
//!   address.
//!
//! [`plan`] is the arithmetic (a pure function); [`run_hold`] carries it out:
//! it re-executes the loadgen binary once per process with a hidden
//! `--child` flag, shows one progress bar for all of them, starts their hold
//! together once every process has ramped (so the established count is a
//! true *concurrent* count), and merges their reports, latency histograms
//! included, into one.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use crate::error::LoadError;
use crate::hold::{self, HoldConfig, Watcher};
use crate::progress::Progress;
use crate::report::{self, ConnectStats, HoldReport, Latency};

/// Descriptors a process keeps for itself besides its connections: stdio,
/// the poller, pipes to the parent, a few files under /proc.
pub const FD_HEADROOM: u64 = 100;

/// How many processes to spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procs {
    /// As few as the descriptor limit allows.
    Auto,
    Exactly(usize),
}

/// Which local addresses to connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sources {
    /// The kernel's choice while one address has ports enough, else as many
    /// addresses from 127.0.0.1 up as the port range requires.
    Auto,
    /// These addresses, round-robin over all connections of all processes.
    List(Vec<IpAddr>),
}

/// The host limits the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Hard `RLIMIT_NOFILE`: the most a process may raise its soft limit to.
    pub nofile_hard: u64,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_range: (u16, u16),
}

/// Connections one source address takes, out of a port range `width` wide,
/// while `connect()` still finds a free port at once: a quarter of the
/// range, so the half it searches first stays at most half full. (The
/// doctor applies the same rule.)
pub fn fast_ports_for_width(width: u64) -> u64 {
    (width / 4).max(1)
}

impl HostLimits {
    /// Ports one source address has towards one server address.
    pub fn ports_per_source(&self) -> u64 {
        let (low, high) = self.port_range;
        u64::from(high.saturating_sub(low)) + 1
    }

    /// Connections one source address takes while `connect()` still finds
    /// a free port at once: a quarter of the range, so the even half it
    /// searches first stays at most half full.
    pub fn fast_ports_per_source(&self) -> u64 {
        fast_ports_for_width(self.ports_per_source())
    }

    /// Connections one process can hold.
    pub fn connections_per_process(&self) -> u64 {
        self.nofile_hard.saturating_sub(FD_HEADROOM)
    }

    /// Reads this host's limits (Linux: `/proc`; elsewhere the port range
    /// falls back to the IANA dynamic range 49152-65535).
    pub fn of_this_host() -> Result<HostLimits, LoadError> {
        let limit = crate::cpu::nofile_limit()?;
        let port_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| parse_port_range(&text))
            .unwrap_or((49152, 65535));
        Ok(HostLimits {
            nofile_hard: limit.rlim_max.min(i64::MAX as u64),
            port_range,
        })
    }
}

/// Parses the two numbers of `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// How a run of `connections` is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadPlan {
    pub connections: usize,
    pub processes: usize,
    /// Destination addresses on the server's port (empty: its address).
    pub dests: Vec<IpAddr>,
    /// Empty: the kernel picks the source address.
    pub sources: Vec<IpAddr>,
    pub limits: HostLimits,
}

// ANCHOR: plan
/// Chooses processes and source addresses for `connections` to `server`
/// (or to `dests` on its port, when given).
///
/// A process holds at most `RLIMIT_NOFILE - FD_HEADROOM` connections; a
/// source address at most one port-range width of them towards each
/// destination, and automatic choice puts only a quarter of a width on
/// each (source, destination) pair (see the module docs: beyond that,
/// connects slow down as they scan for a port). An explicit choice that
/// cannot work is an error naming the limit.
pub fn plan(
    connections: usize,
    server: SocketAddr,
    dests: &[IpAddr],
    procs: Procs,
    sources: &Sources,
    limits: HostLimits,
) -> Result<SpreadPlan, String> {
    let n = connections as u64;
    let per_process = limits.connections_per_process();
    if per_process == 0 {
        return Err(format!(
            "RLIMIT_NOFILE={} leaves no descriptors for connections; raise `ulimit -n`",
            limits.nofile_hard
        ));
    }
    let processes = match procs {
        Procs::Auto => n.div_ceil(per_process).max(1) as usize,
        Procs::Exactly(0) => return Err("--procs must be at least 1".to_string()),
        Procs::Exactly(p) => {
            let share = n.div_ceil(p as u64);
            if share > per_process {
                return Err(format!(
                    "--procs {p}: {share} connections per process, but RLIMIT_NOFILE={} \
                     allows {per_process}; use --procs {} or --procs auto",
                    limits.nofile_hard,
                    n.div_ceil(per_process)
                ));
            }
            p.min(connections.max(1))
        }
    };

    // A port is taken per (source, destination) pair, so every destination
    // brings each source address a port range of its own.
    let destinations = dests.len().max(1) as u64;
    let per_source = limits.ports_per_source() * destinations;
    let fast_per_source = limits.fast_ports_per_source() * destinations;
    let (low, high) = limits.port_range;
    let per_pair = match destinations {
        1 => "per source".to_string(),
        d => format!("per source and destination, {d} destinations"),
    };
    let sources = match sources {
        Sources::List(list) => {
            let needed = n.div_ceil(per_source);
            if (list.len() as u64) < needed {
                return Err(format!(
                    "{connections} connections need {needed} source addresses \
                     (port range {low}-{high} = {} {per_pair}), --sources gives {}; \
                     widen net.ipv4.ip_local_port_range or use --sources auto",
                    limits.ports_per_source(),
                    list.len()
                ));
            }
            list.clone()
        }
        Sources::Auto if n <= fast_per_source => Vec::new(),
        Sources::Auto => {
            let sources_needed = n.div_ceil(fast_per_source);
            let loopback = |ip: IpAddr| ip.is_loopback() && ip.is_ipv4();
            match server.ip() {
                // 127.0.0.0/8 is all loopback: 127.0.0.1, 127.0.0.2, ...
                ip if loopback(ip)
                    && dests.iter().all(|&d| loopback(d))
                    && sources_needed < 1 << 24 =>
                {
                    (1..=sources_needed as u32)
                        .map(|host| IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host)))
                        .collect()
                }
                _ => {
                    return Err(format!(
                        "{connections} connections to {server} need {sources_needed} source \
                         addresses (port range {low}-{high}, {} {per_pair} for fast \
                         connects); only 127.0.0.0/8 can be chosen automatically: \
                         give them with --sources",
                        limits.fast_ports_per_source()
                    ));
                }
            }
        }
    };
    Ok(SpreadPlan {
        connections,
        processes,
        dests: dests.to_vec(),
        sources,
        limits,
    })
}
// ANCHOR_END: plan

impl SpreadPlan {
    /// Splits the connections as evenly as possible: the first
    /// `connections % processes` processes take one more.
    pub fn shares(&self) -> Vec<usize> {
        let p = self.processes.max(1);
        let (base, extra) = (self.connections / p, self.connections % p);
        (0..p).map(|i| base + usize::from(i < extra)).collect()
    }

    /// The one line saying what was chosen and why.
    pub fn describe(&self) -> String {
        let processes = match self.processes {
            1 => "1 process".to_string(),
            p => format!("{p} processes"),
        };
        let (low, high) = self.limits.port_range;
        let sources = match self.sources.len() {
            0 => "the kernel-chosen source address".to_string(),
            1 => format!("1 source address {}", format_sources(&self.sources)),
            k => format!("{k} source addresses {}", format_sources(&self.sources)),
        };
        let (dests, per) = match self.dests.len() {
            0 => (String::new(), "per source"),
            d => (
                format!(
                    " towards {d} destination addresses {}",
                    format_sources(&self.dests)
                ),
                "per source and destination",
            ),
        };
        format!(
            "{} connections over {processes} (RLIMIT_NOFILE={}) and {sources}{dests} \
             (port range {low}-{high}: {} {per}, a quarter of the range, so \
             connect() finds a free port at once)",
            self.connections,
            self.limits.nofile_hard,
            self.limits.fast_ports_per_source()
        )
    }
}

/// Writes addresses the way `--sources` reads them, runs of consecutive
/// IPv4 addresses as ranges: `127.0.0.1-127.0.0.20`.
pub fn format_sources(sources: &[IpAddr]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sources.len() {
        let mut j = i;
        if let IpAddr::V4(first) = sources[i] {
            while let Some(IpAddr::V4(next)) = sources.get(j + 1) {
                if u32::from(*next) != u32::from(first) + (j + 1 - i) as u32 {
                    break;
                }
                j += 1;
            }
        }
        parts.push(if j > i {
            format!("{}-{}", sources[i], sources[j])
        } else {
            sources[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// A hold run that may be spread over processes.
#[derive(Debug, Clone)]
pub struct SpreadConfig {
    /// What to do; `hold.sources` and `hold.first_index` are ignored (the
    /// plan sets them), `hold.max_connecting` is per process.
    pub hold: HoldConfig,
    pub procs: Procs,
    pub sources: Sources,
    /// The loadgen binary to run as each child. From the loadgen binary
    /// itself, `std::env::current_exe()`; from elsewhere (xtask, tests),
    /// the path of `target/release/loadgen`.
    pub program: PathBuf,
}

impl SpreadConfig {
    /// Everything automatic; children run as `program`.
    pub fn new(hold: HoldConfig, program: PathBuf) -> SpreadConfig {
        SpreadConfig {
            hold,
            procs: Procs::Auto,
            sources: Sources::Auto,
            program,
        }
    }
}

// ANCHOR: run_hold
/// Plans the run, says on stderr what was chosen if it spreads, and runs
/// it: in this process when one is enough, else over child processes whose
/// reports are merged into one.
pub fn run_hold(config: &SpreadConfig) -> Result<HoldReport, LoadError> {
    let limits = HostLimits::of_this_host()?;
    let plan = plan(
        config.hold.connections,
        config.hold.addr,
        &config.hold.dests,
        config.procs,
        &config.sources,
        limits,
    )
    .map_err(LoadError::Config)?;
    if plan.processes > 1 || plan.sources.len() > 1 || plan.dests.len() > 1 {
        eprintln!("loadgen: {}", plan.describe());
    }
    let mut hold = config.hold.clone();
    hold.sources = plan.sources.clone();
    hold.first_index = 0;
    if plan.processes == 1 {
        return hold::run(&hold);
    }
    run_children(&hold, &plan, config)
}
// ANCHOR_END: run_hold

/// What the stderr of a child says, line by line.
enum News {
    /// Child `.0` has established `.1` connections.
    Progress(usize, usize),
    /// Child `.0` finished its ramp and waits for the start signal.
    Ramped(usize),
    /// Any other line (an error message): passed on to our stderr.
    Said(usize, String),
    /// Child `.0` closed its stderr: it exited.
    Gone(usize),
}

/// One child process and the pipe that starts its hold.
struct ChildProcess {
    process: Child,
    start_signal: Option<ChildStdin>,
    report: Option<thread::JoinHandle<io::Result<String>>>,
    last_words: Option<String>,
}

/// The arguments for child `index`, which opens `share` connections
/// starting at global index `first_index`.
fn child_args(
    hold: &HoldConfig,
    plan: &SpreadPlan,
    share: usize,
    first_index: usize,
) -> Vec<String> {
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let fraction = share as f64 / plan.connections.max(1) as f64;
    let mut args = vec![
        "hold".to_string(),
        "--child".to_string(),
        format!("--addr={}", hold.addr),
        format!("--conns={share}"),
        format!("--first-index={first_index}"),
        format!("--max-connecting={}", hold.max_connecting),
        format!("--hold={}", secs(hold.hold)),
        format!("--ping-every={}", secs(hold.ping_every)),
        // The sample is for the whole run: each process pings its part.
        format!(
            "--ping-sample={}",
            (hold.ping_sample as f64 * fraction).ceil() as usize
        ),
        format!("--ping-size={}", hold.ping_size),
        format!("--timeout={}", secs(hold.timeout)),
    ];
    if let Some(rate) = hold.rate {
        args.push(format!("--rate={}", rate * fraction));
    }
    if !plan.sources.is_empty() {
        args.push(format!("--sources={}", format_sources(&plan.sources)));
    }
    if !plan.dests.is_empty() {
        args.push(format!("--dests={}", format_sources(&plan.dests)));
    }
    if hold.verify_all {
        args.push("--verify-all".to_string());
    }
    if let Some(core) = hold.cpu {
        args.push(format!("--cpu={core}"));
    }
    if let Some(pid) = hold.server_pid {
        args.push(format!("--server-pid={pid}"));
    }
    args
}

// ANCHOR: run_children
fn run_children(
    hold: &HoldConfig,
    plan: &SpreadPlan,
    config: &SpreadConfig,
) -> Result<HoldReport, LoadError> {
    let (news_tx, news) = mpsc::channel::<News>();
    let mut children: Vec<ChildProcess> = Vec::with_capacity(plan.processes);
    let mut first_index = 0;
    for (index, share) in plan.shares().into_iter().enumerate() {
        let spawned = Command::new(&config.program)
            .args(child_args(hold, plan, share, first_index))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        first_index += share;
        let mut process = match spawned {
            Ok(process) => process,
            Err(e) => {
                kill_all(&mut children);
                let program = config.program.display();
                return Err(LoadError::io(format!("starting child {program}"), e));
            }
        };
        let stderr = process.stderr.take();
        let stdout = process.stdout.take();
        let tx = news_tx.clone();
        thread::spawn(move || read_child_stderr(index, stderr, tx));
        let report = stdout.map(|mut stdout| {
            thread::spawn(move || {
                let mut text = String::new();
                stdout.read_to_string(&mut text).map(|_| text)
            })
        });
        children.push(ChildProcess {
            start_signal: process.stdin.take(),
            process,
            report,
            last_words: None,
        });
    }
    drop(news_tx);

    // Ramp: one bar for all children, until every one has ramped.
    let bar = Progress::new(hold.progress);
    bar.phase("connect", plan.connections as u64);
    let mut established = vec![0usize; children.len()];
    let mut ramped = vec![false; children.len()];
    while !ramped.iter().all(|&r| r) {
        match news.recv_timeout(Duration::from_millis(200)) {
            Ok(News::Progress(i, n)) => established[i] = n,
            Ok(News::Ramped(i)) => ramped[i] = true,
            Ok(News::Said(i, line)) => {
                eprintln!("{line}");
                children[i].last_words = Some(line);
            }
            Ok(News::Gone(i)) => {
                bar.finish();
                let why = children[i]
                    .last_words
                    .clone()
                    .unwrap_or_else(|| "exited without a word".to_string());
                kill_all(&mut children);
                let why = why.strip_prefix("loadgen: ").unwrap_or(&why).to_string();
                return Err(LoadError::Config(format!(
                    "process {} of {} failed during the ramp: {why}",
                    i + 1,
                    plan.processes
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        bar.update(established.iter().sum::<usize>() as u64, String::new());
    }

    // Hold: all children start at once, so all connections are open together.
    for child in &mut children {
        if let Some(pipe) = &mut child.start_signal {
            // A child that died here is found below, by its missing report.
            let _ = pipe.write_all(b"go\n").and_then(|()| pipe.flush());
        }
    }
    bar.phase("hold", hold.hold.as_secs());
    let start = Instant::now();
    let mut running = children.len();
    while running > 0 {
        match news.recv_timeout(Duration::from_millis(200)) {
            Ok(News::Gone(_)) => running -= 1,
            Ok(News::Said(i, line)) => {
                eprintln!("{line}");
                children[i].last_words = Some(line);
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        bar.update(
            start.elapsed().as_secs().min(hold.hold.as_secs()),
            String::new(),
        );
    }
    bar.finish();

    let mut reports = Vec::with_capacity(children.len());
    for (i, child) in children.iter_mut().enumerate() {
        drop(child.start_signal.take());
        let text = child
            .report
            .take()
            .and_then(|handle| handle.join().ok())
            .and_then(Result::ok)
            .unwrap_or_default();
        let status = child.process.wait();
        match serde_json::from_str::<HoldReport>(&text) {
            Ok(report) => reports.push(report),
            Err(_) => {
                let why = child.last_words.clone().unwrap_or_else(|| match &status {
                    Ok(status) => format!("exited with {status} and no report"),
                    Err(e) => format!("could not be waited for: {e}"),
                });
                return Err(LoadError::Config(format!(
                    "process {} of {} gave no report: {why}",
                    i + 1,
                    plan.processes
                )));
            }
        }
    }
    merge(hold, plan, &reports)
}
// ANCHOR_END: run_children

/// Sorts a child's stderr lines into news for the parent.
fn read_child_stderr(
    index: usize,
    stderr: Option<std::process::ChildStderr>,
    news: mpsc::Sender<News>,
) {
    if let Some(stderr) = stderr {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let item = if let Some(n) = line.strip_prefix("@progress ") {
                News::Progress(index, n.trim().parse().unwrap_or(0))
            } else if line.starts_with("@ramped") {
                News::Ramped(index)
            } else {
                News::Said(index, line)
            };
            if news.send(item).is_err() {
                return;
            }
        }
    }
    let _ = news.send(News::Gone(index));
}

/// Ends every child started so far (they are ours, by their handles).
fn kill_all(children: &mut [ChildProcess]) {
    for child in children.iter_mut() {
        let _ = child.process.kill();
    }
    for child in children.iter_mut() {
        let _ = child.process.wait();
    }
}

// ANCHOR: merge
/// One report for the whole run: counts add up, latency histograms are
/// merged (so p99 is the p99 of all pings, not an average of p99s), the ramp
/// took as long as the slowest process, the hold as long as the shortest.
pub fn merge(
    hold: &HoldConfig,
    plan: &SpreadPlan,
    reports: &[HoldReport],
) -> Result<HoldReport, LoadError> {
    let mut histogram = report::rtt_histogram();
    let mut connect = ConnectStats::default();
    let mut merged = HoldReport {
        addr: hold.addr.to_string(),
        dests: plan.dests.iter().map(ToString::to_string).collect(),
        sources: plan.sources.iter().map(ToString::to_string).collect(),
        target_rate: hold.rate,
        processes: reports.len(),
        hold_seconds: f64::INFINITY,
        ping_every_seconds: hold.ping_every.as_secs_f64(),
        verify_all: hold.verify_all,
        ok: true,
        ..HoldReport::default()
    };
    for (i, r) in reports.iter().enumerate() {
        let child_histogram = r
            .ping_rtt_histogram
            .as_deref()
            .map(histogram_from_hex)
            .transpose()
            .map_err(|e| LoadError::Config(format!("process {}: bad histogram: {e}", i + 1)))?;
        if let Some(h) = child_histogram {
            histogram
                .add(&h)
                .map_err(|e| LoadError::Config(format!("merging histograms: {e:?}")))?;
        }
        connect.requested += r.connect.requested;
        connect.established += r.connect.established;
        connect.failed += r.connect.failed;
        connect.seconds = connect.seconds.max(r.connect.seconds);
        merged.hold_seconds = merged.hold_seconds.min(r.hold_seconds);
        merged.ping_sample += r.ping_sample;
        merged.ping_rounds = merged.ping_rounds.max(r.ping_rounds);
        merged.pings_sent += r.pings_sent;
        merged.pings_ok += r.pings_ok;
        merged.connections_answered += r.connections_answered;
        merged.connections_lost += r.connections_lost;
        merged.errors.add(&r.errors);
        merged.cpu.loadgen.cpu_seconds += r.cpu.loadgen.cpu_seconds;
        merged.cpu.loadgen.percent_of_core += r.cpu.loadgen.percent_of_core;
        merged.ok &= r.ok;
    }
    if let Some(first) = reports.first() {
        // Every process watched the same server and cores over the same
        // window; the first one's view of them stands for all.
        merged.cpu.server = first.cpu.server.clone();
        merged.cpu.server_pid = first.cpu.server_pid;
        merged.cpu.loadgen_core = first.cpu.loadgen_core;
        merged.cpu.server_core = first.cpu.server_core;
        merged.cpu.cores = first.cpu.cores.clone();
    }
    if !merged.hold_seconds.is_finite() {
        merged.hold_seconds = 0.0;
    }
    connect.per_sec = if connect.seconds > 0.0 {
        connect.established as f64 / connect.seconds
    } else {
        0.0
    };
    merged.ok &= connect.established == plan.connections;
    merged.connect = connect;
    merged.ping_rtt_us = Latency::from_histogram(&histogram);
    Ok(merged)
}
// ANCHOR_END: merge

/// A histogram in HdrHistogram's V2 format, as hex (JSON has no bytes).
pub fn histogram_to_hex(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail for lack of space; an error here would
    // only mean an unencodable histogram, which rtt_histogram() never is.
    let _ = V2Serializer::new().serialize(histogram, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`histogram_to_hex`].
pub fn histogram_from_hex(hex: &str) -> Result<Histogram<u64>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_string());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| e.to_string())?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("{e:?}"))
}

// ANCHOR: child
/// How a child tells its parent how it is doing: `@progress N` lines on
/// stderr while ramping (a few per second), `@ramped N` when done; then it
/// waits for a line on stdin before holding.
struct ChildWatcher {
    last_said: Option<Instant>,
}

impl Watcher for ChildWatcher {
    fn connecting(&mut self, established: usize) {
        if self
            .last_said
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            self.last_said = Some(Instant::now());
            eprintln!("@progress {established}");
        }
    }
    fn ramped(&mut self, stats: &ConnectStats) -> Option<RawFd> {
        eprintln!("@progress {}", stats.established);
        eprintln!("@ramped {}", stats.established);
        Some(libc::STDIN_FILENO)
    }
    fn holding(&mut self, _elapsed: Duration, _pings_ok: u64) {}
    fn finish(&mut self) {}
}

/// Runs one child's part (`loadgen hold --child ...`) and prints its report,
/// histogram included, as one line of JSON on stdout.
pub fn run_child(config: &HoldConfig) -> Result<bool, LoadError> {
    let mut watcher = ChildWatcher { last_said: None };
    let (mut report, histogram) = hold::run_watched(config, &mut watcher)?;
    report.ping_rtt_histogram = Some(histogram_to_hex(&histogram));
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &report)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
        .map_err(|e| LoadError::io("writing the report", e))?;
    Ok(report.ok)
}
// ANCHOR_END: child

#[cfg(test)]
mod tests {
    use super::*;

    fn here(nofile_hard: u64, low: u16, high: u16) -> HostLimits {
        HostLimits {
            nofile_hard,
            port_range: (low, high),
        }
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:7878".parse().unwrap()
    }

    #[test]
    fn small_runs_stay_in_one_process_with_the_kernels_source() {
        let p = plan(
            100,
            loopback(),
            &[],
            Procs::Auto,
            &Sources::Auto,
            here(20_000, 32768, 60999),
        );
        let p = p.unwrap();
        assert_eq!(p.processes, 1);
        assert!(p.sources.is_empty());
    }

    #[test]
    fn a_million_here_needs_51_processes_and_63_sources() {
        let p = plan(
            1_000_000,
            loopback(),
            &[],
            Procs::Auto,
            &Sources::Auto,
            here(20_000, 1024, 65535),
        )
        .unwrap();
        // 19,900 per process (20,000 minus 100 spare): ceil(1e6 / 19900) = 51.
        assert_eq!(p.processes, 51);
        // 64,512 ports, a quarter of them per source: ceil(1e6 / 16128) = 63.
        assert_eq!(p.sources.len(), 63);
        assert_eq!(p.sources[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.sources[62], "127.0.0.63".parse::<IpAddr>().unwrap());
        assert_eq!(
            p.describe(),
            "1000000 connections over 51 processes (RLIMIT_NOFILE=20000) and 63 source \
             addresses 127.0.0.1-127.0.0.63 (port range 1024-65535: 16128 per source, \
             a quarter of the range, so connect() finds a free port at once)"
        );
    }

    #[test]
    fn several_destinations_give_each_source_a_port_range_apiece() {
        let dests = crate::connect::parse_dests("127.0.0.1-127.0.0.8").unwrap();
        let limits = here(20_000, 1024, 65535);
        let p = plan(
            1_000_000,
            loopback(),
            &dests,
            Procs::Auto,
            &Sources::Auto,
            limits,
        )
        .unwrap();
        // A quarter of 1024-65535 per (source, destination) pair:
        // ceil(1e6 / (16128 x 8)) = 8 sources instead of 63.
        assert_eq!(p.sources.len(), 8);
        assert_eq!(p.processes, 51);
        assert_eq!(p.dests, dests);
        assert!(
            p.describe().contains(
                "8 source addresses 127.0.0.1-127.0.0.8 towards 8 destination addresses \
                 127.0.0.1-127.0.0.8 (port range 1024-65535: 16128 per source and destination"
            ),
            "{}",
            p.describe()
        );
        // Up to one quarter-range per destination the kernel's source will do.
        let small = |n| plan(n, loopback(), &dests, Procs::Auto, &Sources::Auto, limits);
        assert!(small(8 * 16_128).unwrap().sources.is_empty());
        assert_eq!(small(8 * 16_128 + 1).unwrap().sources.len(), 2);
        // An explicit list may fill whole ranges, one per destination.
        let one = Sources::List(vec!["127.0.0.1".parse().unwrap()]);
        let with = |n| plan(n, loopback(), &dests, Procs::Auto, &one, limits);
        assert!(with(8 * 64_512).is_ok());
        let err = with(8 * 64_512 + 1).unwrap_err();
        assert!(
            err.contains("per source and destination, 8 destinations"),
            "{err}"
        );
        // Only loopback destinations are chosen sources automatically.
        let remote = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let err = plan(
            1_000_000,
            loopback(),
            &remote,
            Procs::Auto,
            &Sources::Auto,
            limits,
        )
        .unwrap_err();
        assert!(err.contains("--sources"), "{err}");
    }

    #[test]
    fn default_port_range_needs_more_sources() {
        let p = plan(
            1_000_000,
            loopback(),
            &[],
            Procs::Auto,
            &Sources::Auto,
            here(2_000_000, 32768, 60999),
        )
        .unwrap();
        assert_eq!(
            p.processes, 1,
            "a high descriptor limit holds it all in one"
        );
        assert_eq!(p.sources.len(), 142, "ceil(1e6 / (28232 / 4))");
    }

    #[test]
    fn boundaries_are_exact() {
        let limits = here(20_100, 1, 100); // 20,000 per process, 100 ports
        let at = |n| plan(n, loopback(), &[], Procs::Auto, &Sources::Auto, limits).unwrap();
        assert_eq!((at(20_000).processes, at(20_001).processes), (1, 2));
        // A quarter of the range per source: 25 fit the kernel's choice, 26
        // need two.
        assert_eq!((at(25).sources.len(), at(26).sources.len()), (0, 2));
        assert_eq!((at(50).sources.len(), at(51).sources.len()), (2, 3));
        // An explicit list may fill whole ranges.
        let two = Sources::List(crate::connect::parse_sources("127.0.0.1-127.0.0.2").unwrap());
        assert!(plan(200, loopback(), &[], Procs::Auto, &two, limits).is_ok());
        assert!(plan(201, loopback(), &[], Procs::Auto, &two, limits).is_err());
    }

    #[test]
    fn explicit_choices_that_cannot_fit_name_the_limit() {
        let limits = here(20_000, 32768, 60999);
        let err = plan(
            50_000,
            loopback(),
            &[],
            Procs::Exactly(2),
            &Sources::Auto,
            limits,
        )
        .unwrap_err();
        assert!(err.contains("RLIMIT_NOFILE=20000"), "{err}");
        assert!(err.contains("--procs 3"), "{err}");
        let two = Sources::List(vec!["127.0.0.1".parse().unwrap()]);
        let err = plan(50_000, loopback(), &[], Procs::Auto, &two, limits).unwrap_err();
        assert!(err.contains("need 2 source addresses"), "{err}");
        let remote: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let err = plan(50_000, remote, &[], Procs::Auto, &Sources::Auto, limits).unwrap_err();
        assert!(err.contains("--sources"), "{err}");
        assert!(
            plan(
                1,
                loopback(),
                &[],
                Procs::Exactly(0),
                &Sources::Auto,
                limits
            )
            .is_err()
        );
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        let p = SpreadPlan {
            connections: 1_000_000,
            processes: 51,
            dests: Vec::new(),
            sources: Vec::new(),
            limits: here(20_000, 1024, 65535),
        };
        let shares = p.shares();
        assert_eq!(shares.iter().sum::<usize>(), 1_000_000);
        let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(max - min <= 1 && *max <= 19_900);
    }

    #[test]
    fn sources_format_as_ranges_that_parse_back() {
        let list = crate::connect::parse_sources("127.0.0.1-127.0.0.3,127.0.1.9,::1").unwrap();
        let text = format_sources(&list);
        assert_eq!(text, "127.0.0.1-127.0.0.3,127.0.1.9,::1");
        assert_eq!(crate::connect::parse_sources(&text).unwrap(), list);
    }

    #[test]
    fn port_range_parses_procs_format() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn histograms_survive_the_trip_through_hex_and_merge_exactly() {
        let mut a = report::rtt_histogram();
        let mut b = report::rtt_histogram();
        for us in 1..=900 {
            a.record(us).unwrap();
        }
        for _ in 0..100 {
            b.record(50_000).unwrap();
        }
        let a2 = histogram_from_hex(&histogram_to_hex(&a)).unwrap();
        assert_eq!(a2, a);
        let mut all = a2;
        all.add(histogram_from_hex(&histogram_to_hex(&b)).unwrap())
            .unwrap();
        assert_eq!(all.len(), 1000);
        // The p95 of the union is one of b's slow pings, which no average
        // of the two p95s (≈855 µs and 50 ms) would give.
        let p95 = all.value_at_quantile(0.95);
        assert!(all.equivalent(p95, 50_000), "p95 {p95}");
        assert!(histogram_from_hex("abc").is_err());
    }
}
