//! What a million run measured, the verdict against the targets, and the
//! page the book shows for a recorded run.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use loadgen::report::{ErrorCounts, Latency};
use serde::{Deserialize, Serialize};

use super::flamegraph::RampFlamegraph;
use super::host::{CoreTime, HostSnapshot};
use super::netns::NetworkNamespace;
use super::others::{OtherProcess, describe};
use super::ramp_profile::{HandshakeCounters, RampPhase, RampSample};
use super::{
    FILE_HANDLE_SLACK, KERNEL_RETURN_SHARE, KERNEL_RETURN_SLACK, TARGET_CONNS,
    TARGET_ESTABLISH_SECONDS, TARGET_P99_RATIO, TARGET_USER_BYTES_PER_CONN, TIME_WAIT_SLACK,
    USER_RETURN_SHARE, USER_RETURN_SLACK,
};
use crate::run::{TaskError, TaskResult, workspace_root};

// ANCHOR: report
/// Everything the run measured; printed as a table and written as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Report {
    pub(super) date_utc: String,
    pub(super) conns: usize,
    pub(super) active: usize,
    pub(super) server: String,
    pub(super) server_procs: String,
    pub(super) server_processes: usize,
    pub(super) server_plan: Option<String>,
    pub(super) loadgen_plan: Option<String>,
    pub(super) loadgen_processes: usize,
    pub(super) pinned: bool,
    pub(super) hold_seconds: u64,
    /// loadgen's count of connections open at the end of its ramp.
    pub(super) established: usize,
    /// The most the server counted open at once.
    pub(super) server_peak_open: u64,
    /// loadgen's ramp, first connect to last established (the slowest process).
    pub(super) establish_seconds: f64,
    /// From starting loadgen until the server counted all N open.
    pub(super) server_saw_all_seconds: f64,
    pub(super) connections_answered: u64,
    pub(super) connections_lost: u64,
    pub(super) hold_errors: ErrorCounts,
    pub(super) hold_ok: bool,
    /// The server's open count and the host's CPU ticks every 250 ms of
    /// the ramp.
    #[serde(default)]
    pub(super) ramp_samples: Vec<RampSample>,
    /// The ramp in quarters of the connections: time, rate, CPU split.
    #[serde(default)]
    pub(super) ramp_phases: Vec<RampPhase>,
    /// Handshakes the host's listeners dropped during the ramp, and SYNs
    /// sent again (host-wide counters).
    #[serde(default)]
    pub(super) ramp_handshakes: HandshakeCounters,
    /// `--flamegraph`: what the system-wide profile of the ramp showed.
    #[serde(default)]
    pub(super) flamegraph: Option<RampFlamegraph>,
    /// Where the CPU time went during the ramp, per core (`/proc/stat`).
    pub(super) ramp_cpu: Vec<CoreTime>,
    /// The median probe (by p99) of each phase; the ratio is between them.
    pub(super) rtt_no_idle: Option<Probe>,
    pub(super) rtt_with_idle: Option<Probe>,
    pub(super) p99_ratio: Option<f64>,
    /// Every probe of each phase (`--probes`), in the order they ran.
    #[serde(default)]
    pub(super) probes_no_idle: Vec<Probe>,
    #[serde(default)]
    pub(super) probes_with_idle: Vec<Probe>,
    /// The busiest processes outside the run (not xtask or what it
    /// started) during the ramp and during each probe phase.
    #[serde(default)]
    pub(super) others_during_ramp: Vec<OtherProcess>,
    #[serde(default)]
    pub(super) others_during_probes_no_idle: Vec<OtherProcess>,
    #[serde(default)]
    pub(super) others_during_probes_with_idle: Vec<OtherProcess>,
    pub(super) server_memory: ServerMemory,
    pub(super) host_baseline: HostSnapshot,
    pub(super) host_before_ramp: HostSnapshot,
    pub(super) host_held: HostSnapshot,
    pub(super) host_after_close: HostSnapshot,
    pub(super) host_after_exit: HostSnapshot,
    pub(super) kernel_per_conn: KernelPerConn,
    pub(super) teardown: Teardown,
    pub(super) lowest_mem_available: u64,
    pub(super) targets: Vec<Target>,
    pub(super) total_seconds: f64,
    /// `--netns`: the run was in a network namespace of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) network_namespace: Option<NetworkNamespace>,
    /// `--dests`: the server listened on 0.0.0.0 and loadgen connected to
    /// these addresses (loadgen's `--dests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) dests: Option<String>,
    /// `--pre-touch`: fresh memory written and given back right before the
    /// ramp, in GiB, and how long the writes took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) pre_touch: Option<PreTouch>,
}

/// What `--pre-touch` wrote before the ramp.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(super) struct PreTouch {
    pub(super) gib: u32,
    pub(super) seconds: f64,
}

/// The active probe: `loadgen echo -c ACTIVE --size 64`, closed loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Probe {
    pub(super) connections: usize,
    pub(super) messages_per_sec: f64,
    pub(super) rtt_us: Latency,
    pub(super) ok: bool,
    /// CPU microseconds per message over the measured window: the server's
    /// (the supervisor and every worker) and the probe client's. Outside
    /// processes do not count, so a phase slower only because something
    /// else took the cores keeps these where they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) server_us_per_message: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) client_us_per_message: Option<f64>,
}

impl Probe {
    /// The run's own CPU per message, where the probe measured both sides.
    fn own_cpu(&self) -> Option<OwnCpu> {
        Some(OwnCpu {
            server_us: self.server_us_per_message?,
            client_us: self.client_us_per_message?,
        })
    }

    /// The run's own CPU per message, server and client together.
    fn own_us_per_message(&self) -> Option<f64> {
        self.own_cpu().map(OwnCpu::total_us)
    }
}

/// CPU microseconds per message of a probe that measured both sides.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OwnCpu {
    server_us: f64,
    client_us: f64,
}

impl OwnCpu {
    fn total_us(self) -> f64 {
        self.server_us + self.client_us
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ServerMemory {
    pub(super) rss_before_bytes: u64,
    pub(super) rss_held_bytes: u64,
    pub(super) rss_after_close_bytes: u64,
    pub(super) rss_per_conn_bytes: f64,
    pub(super) fds_before: usize,
    pub(super) fds_after_close: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct KernelPerConn {
    pub(super) slab_bytes: f64,
    pub(super) slab_unreclaimable_bytes: f64,
    pub(super) mem_available_drop_bytes: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Teardown {
    pub(super) close_seconds: f64,
    pub(super) server_exit: String,
    pub(super) server_killed: bool,
    pub(super) summary: Option<String>,
    pub(super) return_seconds: f64,
}

/// One row of the verdict. `judged`: does a miss fail the run?
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Target {
    pub(super) name: String,
    pub(super) wanted: String,
    pub(super) measured: String,
    pub(super) met: bool,
    pub(super) judged: bool,
}
// ANCHOR_END: report

/// Descriptors and kernel memory back to where they were before the
/// server started, within the slack a shared host needs.
pub(super) fn host_returned(report: &Report) -> bool {
    descriptors_returned(report) && kernel_memory_returned(report)
}

/// Client-side TIME_WAIT sockets back near the count before the run (other
/// programs on the host close connections meanwhile too).
pub(super) fn time_wait_drained(report: &Report) -> bool {
    report.host_after_exit.tcp_tw <= report.host_baseline.tcp_tw + TIME_WAIT_SLACK
}

fn descriptors_returned(report: &Report) -> bool {
    report.host_after_exit.file_handles <= report.host_baseline.file_handles + FILE_HANDLE_SLACK
}

fn kernel_memory_returned(report: &Report) -> bool {
    let growth = report
        .host_held
        .slab_unreclaimable
        .saturating_sub(report.host_before_ramp.slab_unreclaimable);
    let allowed = ((growth as f64 * KERNEL_RETURN_SHARE) as u64).max(KERNEL_RETURN_SLACK);
    report.host_after_exit.slab_unreclaimable <= report.host_baseline.slab_unreclaimable + allowed
}

fn user_memory_returned(report: &Report) -> bool {
    let m = &report.server_memory;
    let growth = m.rss_held_bytes.saturating_sub(m.rss_before_bytes);
    let allowed = ((growth as f64 * USER_RETURN_SHARE) as u64).max(USER_RETURN_SLACK);
    m.rss_after_close_bytes <= m.rss_before_bytes + allowed
}

// ANCHOR: verdict
pub(super) fn targets(r: &Report) -> Vec<Target> {
    let n = r.conns;
    let at_scale = n >= TARGET_CONNS;
    let mut rows = Vec::new();
    let held = r.established.min(r.server_peak_open as usize);
    rows.push(Target {
        name: "connections held at once".into(),
        wanted: n.to_string(),
        measured: format!(
            "{} (loadgen) / {} (server)",
            r.established, r.server_peak_open
        ),
        met: held >= n,
        judged: true,
    });
    let clean = r.hold_ok && r.connections_lost == 0;
    rows.push(Target {
        name: "every connection answered an echo".into(),
        wanted: format!("{n}, none lost"),
        measured: format!(
            "{} answered, {} lost, {} errors",
            r.connections_answered,
            r.connections_lost,
            errors_total(&r.hold_errors)
        ),
        met: clean && r.connections_answered >= n as u64,
        judged: true,
    });
    rows.push(Target {
        name: "time to establish them".into(),
        wanted: format!("<= {TARGET_ESTABLISH_SECONDS:.0} s (at 1M)"),
        measured: format!(
            "{:.1} s ({:.0}/s)",
            r.establish_seconds,
            r.established as f64 / r.establish_seconds.max(0.001)
        ),
        met: r.establish_seconds <= TARGET_ESTABLISH_SECONDS,
        judged: at_scale,
    });
    rows.push(Target {
        name: "server userland memory per connection".into(),
        wanted: format!("< {TARGET_USER_BYTES_PER_CONN:.0} B"),
        measured: format!("{:.1} B", r.server_memory.rss_per_conn_bytes),
        met: r.server_memory.rss_per_conn_bytes < TARGET_USER_BYTES_PER_CONN,
        judged: true,
    });
    let probe_ok = |p: &Probe| p.ok && p.connections == r.active;
    let probes_ok = [&r.rtt_no_idle, &r.rtt_with_idle]
        .iter()
        .all(|p| p.as_ref().is_some_and(probe_ok))
        && r.probes_no_idle
            .iter()
            .chain(&r.probes_with_idle)
            .all(probe_ok);
    rows.push(Target {
        name: "active connections echoed without error".into(),
        wanted: format!("{} in both probes", r.active),
        measured: if probes_ok {
            "yes".to_string()
        } else {
            "errors (see JSON)".to_string()
        },
        met: probes_ok,
        judged: true,
    });
    rows.push(Target {
        name: "p99 RTT of the active, idle held / none".into(),
        wanted: format!("<= {TARGET_P99_RATIO}x (at 1M; medians)"),
        measured: match (&r.p99_ratio, &r.rtt_no_idle, &r.rtt_with_idle) {
            (Some(ratio), Some(none), Some(idle)) => format!(
                "{ratio:.2}x ({} / {}){}",
                ms(idle.rtt_us.p99_us),
                ms(none.rtt_us.p99_us),
                match r.probes_no_idle.len().min(r.probes_with_idle.len()) {
                    0 | 1 => "",
                    _ if p99s_overlap(&r.probes_no_idle, &r.probes_with_idle) => {
                        ", phases overlap"
                    }
                    _ => ", apart",
                }
            ),
            _ => "not measured".to_string(),
        },
        met: r.p99_ratio.is_some_and(|ratio| ratio <= TARGET_P99_RATIO),
        judged: at_scale,
    });
    let fds_ok =
        r.server_memory.fds_after_close <= r.server_memory.fds_before && descriptors_returned(r);
    rows.push(Target {
        name: "tear-down: descriptors back to baseline".into(),
        wanted: format!("server fds <= before; file-nr <= +{FILE_HANDLE_SLACK}"),
        measured: format!(
            "server {} (before {}); file-nr {} (baseline {})",
            r.server_memory.fds_after_close,
            r.server_memory.fds_before,
            r.host_after_exit.file_handles,
            r.host_baseline.file_handles
        ),
        met: fds_ok,
        judged: true,
    });
    rows.push(Target {
        name: "tear-down: memory back to baseline".into(),
        wanted: "server RSS and kernel slab".to_string(),
        measured: format!(
            "RSS {:.1} MiB (before {:.1}); SUnreclaim {:+.0} MiB vs baseline in {:.1} s, \
             TIME_WAIT {} (baseline {})",
            r.server_memory.rss_after_close_bytes as f64 / 1048576.0,
            r.server_memory.rss_before_bytes as f64 / 1048576.0,
            (r.host_after_exit.slab_unreclaimable as f64
                - r.host_baseline.slab_unreclaimable as f64)
                / 1048576.0,
            r.teardown.return_seconds,
            r.host_after_exit.tcp_tw,
            r.host_baseline.tcp_tw
        ),
        met: user_memory_returned(r) && kernel_memory_returned(r),
        judged: true,
    });
    rows.push(Target {
        name: "server shut down cleanly".into(),
        wanted: "exit 0 with a summary".to_string(),
        measured: format!(
            "{}{}",
            r.teardown.server_exit,
            if r.teardown.summary.is_some() {
                ", summary printed"
            } else {
                ", no summary"
            }
        ),
        met: r.teardown.server_exit == "exit code 0"
            && !r.teardown.server_killed
            && r.teardown.summary.is_some(),
        judged: true,
    });
    rows
}
// ANCHOR_END: verdict

fn errors_total(e: &ErrorCounts) -> u64 {
    e.mismatches + e.resets + e.unexpected_eof + e.timeouts
}

pub(super) fn print_report(r: &Report) {
    print!("{}", report_text(r));
}

/// The report as the table a person reads (also what the book shows).
fn report_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nmillion: {} connections to {} ({} server processes with the supervisor, {} loadgen \
         processes{})",
        r.conns,
        server_name(r),
        r.server_processes,
        r.loadgen_processes,
        if r.pinned {
            ", server on core 0, loadgen on core 1"
        } else {
            ""
        }
    );
    let w0 = r.targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let w1 = r
        .targets
        .iter()
        .map(|t| t.wanted.chars().count())
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "\n  {:<w0$}  {:<w1$}  measured", "target", "wanted");
    for t in &r.targets {
        let mark = match (t.met, t.judged) {
            (true, _) => "✓",
            (false, true) => "✗",
            (false, false) => "– (not judged below 1M)",
        };
        let _ = writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {}  {mark}",
            t.name, t.wanted, t.measured
        );
    }
    let _ = writeln!(out);
    for (label, probe, all) in [
        ("no idle connections", &r.rtt_no_idle, &r.probes_no_idle),
        (
            "with the idle ones held",
            &r.rtt_with_idle,
            &r.probes_with_idle,
        ),
    ] {
        if let Some(p) = probe {
            let spread = match all.len() {
                0 | 1 => String::new(),
                k => format!(" (median of {k} probes; their p99s {})", p99_spread(all)),
            };
            let _ = writeln!(
                out,
                "  RTT, {} active, {label}: {}{spread}",
                p.connections,
                probe_line(p)
            );
        }
    }
    if let (Some(none), Some(held)) = (
        median_cpu_probe(&r.probes_no_idle),
        median_cpu_probe(&r.probes_with_idle),
    ) {
        let _ = writeln!(
            out,
            "  CPU per message, the server's + the probe client's (median probe): none held {}, \
             all held {}: {:.2}x",
            cpu_line(none),
            cpu_line(held),
            held.total_us() / none.total_us()
        );
    }
    if !r.probes_no_idle.is_empty() {
        let _ = writeln!(
            out,
            "  other processes, % of one core: during the ramp {}; the probes with none held {}; \
             with all held {}",
            describe(&r.others_during_ramp),
            describe(&r.others_during_probes_no_idle),
            describe(&r.others_during_probes_with_idle)
        );
    }
    let k = &r.kernel_per_conn;
    let _ = writeln!(
        out,
        "  kernel, per connection (both socket ends): Slab {:.0} B, SUnreclaim {:.0} B, \
         MemAvailable {:.0} B",
        k.slab_bytes, k.slab_unreclaimable_bytes, k.mem_available_drop_bytes
    );
    let (b, h) = (&r.host_before_ramp, &r.host_held);
    let _ = writeln!(
        out,
        "  /proc/net/sockstat: sockets used {} -> {}, TCP inuse {} -> {}, TCP mem {} -> {} pages",
        b.sockets_used, h.sockets_used, b.tcp_inuse, h.tcp_inuse, b.tcp_mem_pages, h.tcp_mem_pages
    );
    let _ = writeln!(
        out,
        "  server RSS {:.1} MiB idle, {:.1} MiB holding {}; lowest MemAvailable {:.1} GiB",
        r.server_memory.rss_before_bytes as f64 / 1048576.0,
        r.server_memory.rss_held_bytes as f64 / 1048576.0,
        r.conns,
        r.lowest_mem_available as f64 / 1073741824.0
    );
    if !r.ramp_phases.is_empty() {
        let _ = writeln!(
            out,
            "  the ramp by quarters (connections the server counted; CPU of all cores):"
        );
        for p in &r.ramp_phases {
            let _ = writeln!(
                out,
                "    {:>9} -> {:>9} open in {:5.1} s, {:>7.0}/s: user {:2.0}%, system {:2.0}%, \
                 softirq {:2.0}%, idle {:2.0}%{}",
                p.from_open,
                p.to_open,
                p.seconds,
                p.conns_per_sec,
                p.user,
                p.system,
                p.softirq,
                p.idle,
                p.others
                    .map_or(String::new(), |o| format!(", other processes {o:.0}%"))
            );
        }
    }
    if !r.ramp_samples.is_empty() {
        let h = &r.ramp_handshakes;
        let _ = writeln!(
            out,
            "  handshakes during the ramp ({}): accept queue full {} times, {} SYNs or \
             ACKs dropped by listeners, {} SYNs sent again, {} SYN-queue-full cookies",
            if r.network_namespace.is_some() {
                "the namespace's"
            } else {
                "host-wide"
            },
            h.listen_overflows,
            h.listen_drops,
            h.syn_retransmits,
            h.syn_queue_full_cookies
        );
    }
    if let Some(f) = &r.flamegraph {
        let top = |shares: &[super::flamegraph::Share]| {
            shares
                .iter()
                .take(4)
                .map(|s| format!("{} {:.0}%", s.name, s.percent))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  profile of the ramp from {} to {} open ({:.1} s; other processes {:.0}% of the CPU, \
             left out; {:.0}% of the rest in the kernel): {}\n    by system call: {}\n    \
             by function: {}",
            f.from_open,
            f.to_open,
            f.seconds,
            f.others_percent,
            f.kernel_percent,
            f.svg,
            top(&f.syscalls),
            top(&f.functions)
        );
    }
    if let Some(ns) = &r.network_namespace {
        let _ = writeln!(
            out,
            "  in a network namespace of its own: established hash {} buckets (the host's {}){}",
            ns.ehash_entries,
            ns.host_ehash_entries,
            match &r.dests {
                Some(dests) => format!("; the server on 0.0.0.0, connections to {dests}"),
                None => String::new(),
            }
        );
    }
    if let Some(touch) = &r.pre_touch {
        let _ = writeln!(
            out,
            "  before the ramp, {} GiB of fresh memory written and given back in {:.1} s \
             ({:.1} GiB/s)",
            touch.gib,
            touch.seconds,
            f64::from(touch.gib) / touch.seconds.max(0.001)
        );
    }
    if let Some(plan) = &r.loadgen_plan {
        let _ = writeln!(out, "  {plan}");
    }
    if let Some(summary) = &r.teardown.summary {
        let _ = writeln!(out, "  server {summary}");
    }
    let _ = writeln!(out, "  whole run {:.0} s", r.total_seconds);
    out
}

// ANCHOR: record
/// The servers whose runs the book shows, and where `--record` keeps each:
/// `book/src/results/STEM.json` and `book/src/generated/STEM.md`, included
/// by that chapter's page.
const RECORDED: [Recorded; 2] = [
    Recorded {
        package: "ch08-million-connections",
        stem: "million",
        chapter: "chapter 08",
    },
    Recorded {
        package: "ch09-io-uring",
        stem: "million-ch09",
        chapter: "chapter 09",
    },
];

struct Recorded {
    package: &'static str,
    stem: &'static str,
    chapter: &'static str,
}

impl Recorded {
    /// The entry for the server a report names (its binary's file name).
    fn of(r: &Report) -> Result<&'static Recorded, TaskError> {
        let name = server_name(r);
        RECORDED.iter().find(|c| c.package == name).ok_or_else(|| {
            TaskError::Usage(format!(
                "--record: the book shows runs of {} only, not {name}",
                RECORDED.map(|c| c.package).join(" and ")
            ))
        })
    }

    fn json(&self) -> PathBuf {
        workspace_root().join(format!("book/src/results/{}.json", self.stem))
    }

    fn page(&self) -> PathBuf {
        workspace_root().join(format!("book/src/generated/{}.md", self.stem))
    }

    /// The command that runs it (chapter 08's server is the default).
    fn command(&self) -> String {
        if self.package == RECORDED[0].package {
            "cargo xtask million".to_string()
        } else {
            format!("cargo xtask million --server {}", self.package)
        }
    }

    /// The ramp's plot, beside the results page's plots.
    fn plot(&self) -> PathBuf {
        workspace_root().join(format!("book/src/results/{}-ramp.svg", self.stem))
    }

    fn render_plot(&self, r: &Report) -> Result<String, TaskError> {
        super::ramp_profile::plot(
            &r.ramp_samples,
            &format!(
                "Ramp of {} connections to {}, {}",
                crate::results::format::thousands(r.conns as u64),
                self.chapter,
                r.date_utc
            ),
        )
        .map_err(TaskError::Failed)
    }

    /// The book's page for a recorded run: the report exactly as printed,
    /// and the ramp's plot.
    fn render_page(&self, r: &Report) -> String {
        let plot = if r.ramp_samples.is_empty() {
            String::new()
        } else {
            format!(
                "\n![Connections the server counted open against seconds since loadgen started, \
                 and the rate they arrived at](results/{}-ramp.svg)\n",
                self.stem
            )
        };
        format!(
            "<!-- Generated by `{command} --record` into book/src/results/{stem}.json. \
             Do not edit: re-run it, or check with `cargo xtask test`. -->\n\n\
             ```text\n$ {command} --conns {conns}\n{text}```\n{plot}\n\
             <small>Run on {date}; {chapter}'s server and loadgen on the same 2-core machine.</small>\n",
            command = self.command(),
            conns = r.conns,
            stem = self.stem,
            text = report_text(r).trim_start_matches('\n'),
            date = r.date_utc,
            chapter = self.chapter,
        )
    }
}

/// The server binary's file name (its package, when built by `--server`).
fn server_name(r: &Report) -> String {
    Path::new(&r.server)
        .file_name()
        .map_or(r.server.clone(), |f| f.to_string_lossy().into_owned())
}

pub(super) fn record(r: &Report) -> TaskResult {
    let recorded = Recorded::of(r)?;
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| TaskError::Failed(format!("encoding the report: {e}")))?;
    let mut files = vec![
        (recorded.json(), json + "\n"),
        (recorded.page(), recorded.render_page(r)),
    ];
    if !r.ramp_samples.is_empty() {
        files.push((recorded.plot(), recorded.render_plot(r)?));
    }
    super::recorded::write_files(files)
}

/// `--render`: every recorded run's page and plot again, from its JSON.
pub(super) fn render_recorded() -> TaskResult {
    for recorded in &RECORDED {
        let Ok(json) = fs::read_to_string(recorded.json()) else {
            continue;
        };
        let report: Report = serde_json::from_str(&json)
            .map_err(|e| TaskError::Failed(format!("{}: {e}", recorded.json().display())))?;
        record(&report)?;
    }
    Ok(())
}

/// For `cargo xtask test`: each recorded page is what its recorded JSON
/// renders to (nobody edited the numbers by hand).
pub fn check_recorded() -> TaskResult {
    super::flamegraph::check_recorded()?;
    super::experiments::check_recorded()?;
    for recorded in &RECORDED {
        let (json_path, page_path) = (recorded.json(), recorded.page());
        let shown = |p: &Path| {
            p.strip_prefix(workspace_root())
                .unwrap_or(p)
                .display()
                .to_string()
        };
        let Ok(json) = fs::read_to_string(&json_path) else {
            eprintln!(
                "    no recorded million run of {} ({}); nothing to check",
                recorded.package,
                shown(&json_path)
            );
            continue;
        };
        let report: Report = serde_json::from_str(&json)
            .map_err(|e| TaskError::Failed(format!("{}: {e}", shown(&json_path))))?;
        let page = fs::read_to_string(&page_path).unwrap_or_default();
        let plot = fs::read_to_string(recorded.plot()).unwrap_or_default();
        if page != recorded.render_page(&report)
            || (!report.ramp_samples.is_empty() && plot != recorded.render_plot(&report)?)
        {
            return Err(TaskError::Failed(format!(
                "{} or {} differs from what {} renders to; re-record with `{} --record`",
                shown(&page_path),
                shown(&recorded.plot()),
                shown(&json_path),
                recorded.command()
            )));
        }
        eprintln!(
            "    ok: {} matches {}",
            shown(&page_path),
            shown(&json_path)
        );
    }
    Ok(())
}
// ANCHOR_END: record

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The probe whose p99 is the median of a phase's (the upper one of two).
pub(super) fn median_probe(probes: &[Probe]) -> Option<Probe> {
    let mut sorted: Vec<&Probe> = probes.iter().collect();
    sorted.sort_by_key(|p| p.rtt_us.p99_us);
    sorted.get(sorted.len() / 2).map(|p| (*p).clone())
}

/// The own CPU per message of the phase's median probe, among those that
/// measured it.
fn median_cpu_probe(probes: &[Probe]) -> Option<OwnCpu> {
    let mut measured: Vec<OwnCpu> = probes.iter().filter_map(Probe::own_cpu).collect();
    measured.sort_by(|a, b| a.total_us().total_cmp(&b.total_us()));
    measured.get(measured.len() / 2).copied()
}

/// "16.1 µs (server 8.0 + client 8.1)".
fn cpu_line(cpu: OwnCpu) -> String {
    format!(
        "{:.1} µs (server {:.1} + client {:.1})",
        cpu.total_us(),
        cpu.server_us,
        cpu.client_us
    )
}

/// A phase's p99s, lowest to highest: "10.5 / 11.5 / 15.5 ms".
fn p99_spread(probes: &[Probe]) -> String {
    let mut p99s: Vec<u64> = probes.iter().map(|p| p.rtt_us.p99_us).collect();
    p99s.sort_unstable();
    let figures: Vec<String> = p99s
        .iter()
        .map(|&us| format!("{:.1}", us as f64 / 1000.0))
        .collect();
    format!("{} ms", figures.join(" / "))
}

/// Do the two phases' p99s overlap (the highest with none held at or above
/// the lowest with all held)? Then the ratio is within the probe's noise.
fn p99s_overlap(none: &[Probe], held: &[Probe]) -> bool {
    let highest_none = none.iter().map(|p| p.rtt_us.p99_us).max();
    let lowest_held = held.iter().map(|p| p.rtt_us.p99_us).min();
    matches!((highest_none, lowest_held), (Some(n), Some(h)) if n >= h)
}

pub(super) fn probe_line(probe: &Probe) -> String {
    let cpu = probe
        .own_us_per_message()
        .map(|us| format!(", {us:.1} µs CPU per message"))
        .unwrap_or_default();
    format!(
        "p50 {} / p99 {} / max {}, {:.0} msgs/s{cpu}",
        ms(probe.rtt_us.p50_us),
        ms(probe.rtt_us.p99_us),
        ms(probe.rtt_us.max_us),
        probe.messages_per_sec
    )
}

#[cfg(test)]
mod tests {
    use loadgen::report::Latency;

    use super::*;

    fn passing() -> Report {
        let probe = Probe {
            connections: 1000,
            messages_per_sec: 50_000.0,
            rtt_us: Latency {
                samples: 1,
                p99_us: 20_000,
                ..Latency::default()
            },
            ok: true,
            server_us_per_message: Some(8.0),
            client_us_per_message: Some(8.0),
        };
        let mut r = Report {
            conns: 50_000,
            active: 1000,
            established: 50_000,
            server_peak_open: 50_000,
            establish_seconds: 4.0,
            connections_answered: 50_000,
            hold_ok: true,
            rtt_no_idle: Some(probe.clone()),
            rtt_with_idle: Some(Probe {
                rtt_us: Latency {
                    p99_us: 60_000,
                    ..probe.rtt_us.clone()
                },
                ..probe
            }),
            p99_ratio: Some(3.0),
            ..Report::default()
        };
        r.server_memory = ServerMemory {
            rss_before_bytes: 8 << 20,
            rss_held_bytes: (8 << 20) + 1_000_000,
            rss_after_close_bytes: 8 << 20,
            rss_per_conn_bytes: 20.0,
            fds_before: 20,
            fds_after_close: 20,
        };
        r.teardown.server_exit = "exit code 0".to_string();
        r.teardown.summary = Some("summary: connections_served=52000".to_string());
        r
    }

    #[test]
    fn below_a_million_timing_and_latency_are_shown_but_not_judged() {
        let rows = targets(&passing());
        let ratio = rows.iter().find(|t| t.name.starts_with("p99")).unwrap();
        assert!(!ratio.met && !ratio.judged, "{ratio:?}");
        assert!(rows.iter().filter(|t| t.judged).all(|t| t.met), "{rows:#?}");
        let at_scale = Report {
            conns: 1_000_000,
            ..passing()
        };
        let rows = targets(&at_scale);
        assert!(rows.iter().any(|t| t.judged && !t.met));
    }

    fn probe_with_cpu(server: Option<f64>, client: f64) -> Probe {
        Probe {
            server_us_per_message: server,
            client_us_per_message: Some(client),
            ..passing().rtt_no_idle.unwrap()
        }
    }

    #[test]
    fn cpu_per_message_is_the_median_probe_of_those_that_measured_it() {
        let probes = [
            probe_with_cpu(Some(9.0), 9.0),
            probe_with_cpu(None, 1.0),
            probe_with_cpu(Some(7.0), 7.0),
            probe_with_cpu(Some(8.0), 9.0),
        ];
        let median = median_cpu_probe(&probes).unwrap();
        assert_eq!(median.total_us(), 17.0);
        assert_eq!(cpu_line(median), "17.0 µs (server 8.0 + client 9.0)");
        assert!(median_cpu_probe(&[probe_with_cpu(None, 5.0)]).is_none());
        // Reports recorded before the probes measured CPU read back without it.
        let old: Probe = serde_json::from_str(
            r#"{"connections":1000,"messages_per_sec":1.0,"ok":true,"rtt_us":{"samples":1,"mean_us":1.0,"p50_us":1,"p99_us":1,"p999_us":1,"max_us":1}}"#,
        )
        .unwrap();
        assert_eq!(old.own_us_per_message(), None);
        let text = report_text(&Report {
            probes_no_idle: vec![probe_with_cpu(Some(8.0), 8.0)],
            probes_with_idle: vec![probe_with_cpu(Some(8.4), 8.0)],
            ..passing()
        });
        assert!(
            text.contains("none held 16.0 µs (server 8.0 + client 8.0), all held 16.4 µs (server 8.4 + client 8.0): 1.02x"),
            "{text}"
        );
    }

    fn probe_with_p99(p99_us: u64) -> Probe {
        let mut probe = passing().rtt_no_idle.unwrap();
        probe.rtt_us.p99_us = p99_us;
        probe
    }

    #[test]
    fn the_ratio_is_between_medians_and_says_whether_the_phases_overlap() {
        let p99s = |probes: &[Probe]| probes.iter().map(|p| p.rtt_us.p99_us).collect::<Vec<_>>();
        let none: Vec<Probe> = [15_000, 10_000, 11_000].map(probe_with_p99).into();
        assert_eq!(median_probe(&none).unwrap().rtt_us.p99_us, 11_000);
        assert_eq!(
            p99s(&none),
            [15_000, 10_000, 11_000],
            "the order they ran is kept"
        );
        assert_eq!(p99_spread(&none), "10.0 / 11.0 / 15.0 ms");
        assert!(median_probe(&[]).is_none());
        let held_overlapping: Vec<Probe> = [12_000, 14_000, 30_000].map(probe_with_p99).into();
        let held_apart: Vec<Probe> = [16_000, 17_000, 30_000].map(probe_with_p99).into();
        assert!(p99s_overlap(&none, &held_overlapping));
        assert!(!p99s_overlap(&none, &held_apart));
        let at_scale = |held: Vec<Probe>| Report {
            conns: 1_000_000,
            rtt_no_idle: median_probe(&none),
            rtt_with_idle: median_probe(&held),
            p99_ratio: Some(1.0),
            probes_no_idle: none.clone(),
            probes_with_idle: held,
            ..passing()
        };
        let row = |r: &Report| {
            targets(r)
                .into_iter()
                .find(|t| t.name.starts_with("p99"))
                .unwrap()
        };
        assert!(
            row(&at_scale(held_overlapping))
                .measured
                .ends_with("phases overlap")
        );
        assert!(
            row(&at_scale(held_apart.clone()))
                .measured
                .ends_with("apart")
        );
        let mut failed = at_scale(held_apart);
        failed.probes_with_idle[0].ok = false;
        let echoed = targets(&failed)
            .into_iter()
            .find(|t| t.name.starts_with("active connections"))
            .unwrap();
        assert!(!echoed.met, "a failed probe among several fails the run");
    }

    #[test]
    fn each_recorded_page_is_what_its_json_renders_to() {
        check_recorded().unwrap();
    }

    #[test]
    fn only_chapters_08_and_09_are_recorded_each_in_its_own_files() {
        let named = |server: &str| Report {
            server: server.to_string(),
            ..passing()
        };
        let ch08 = Recorded::of(&named("target/release/ch08-million-connections")).unwrap();
        let ch09 = Recorded::of(&named("target/release/ch09-io-uring")).unwrap();
        assert_ne!(ch08.json(), ch09.json());
        assert_ne!(ch08.page(), ch09.page());
        assert!(
            ch09.render_page(&named("ch09-io-uring"))
                .contains("--server ch09-io-uring")
        );
        assert!(Recorded::of(&named("/tmp/some-echo")).is_err());
    }

    #[test]
    fn a_lost_connection_or_a_leak_fails_the_run() {
        let lost = Report {
            connections_lost: 1,
            ..passing()
        };
        let failed: Vec<_> = targets(&lost)
            .into_iter()
            .filter(|t| t.judged && !t.met)
            .map(|t| t.name)
            .collect();
        assert_eq!(failed, ["every connection answered an echo"]);
        let mut leaky = passing();
        leaky.server_memory.fds_after_close = 21;
        assert!(
            targets(&leaky)
                .iter()
                .any(|t| t.name.contains("descriptors") && !t.met)
        );
        let mut bloated = passing();
        bloated.server_memory.rss_after_close_bytes = (8 << 20) + (3 << 20);
        assert!(
            targets(&bloated)
                .iter()
                .any(|t| t.name.contains("memory back") && !t.met)
        );
    }
}
