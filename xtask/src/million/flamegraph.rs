//! `--flamegraph`: a system-wide kernel profile of the ramp. `perf record
//! -a -g -e cpu-clock` samples every core, kernel and userland alike, over
//! the whole ramp; only the samples from the moment the server counts a
//! share of the connections open (`--flamegraph-from`) until the last one
//! arrives are kept (`perf script --time`). inferno folds the stacks and draws the
//! flamegraph; the same folded stacks give the tables: the functions the
//! samples fell in (self time), and the system calls the time was spent
//! under (with the loopback softirq work they run inline).
//!
//! Software events only (`cpu-clock`): they work in a VM without hardware
//! counters. Kernel symbols come from `/proc/kallsyms`, which needs root
//! (or `kernel.kptr_restrict = 0`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use inferno::collapse::Collapse;
use serde::{Deserialize, Serialize};

use super::recorded::RecordedRuns;
use crate::results::format::thousands;
use crate::run::{TaskError, have, workspace_root};

/// What a profiled ramp window showed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct RampFlamegraph {
    /// The run's connection count.
    pub(super) conns: usize,
    /// The window: open counts when perf started and stopped, its length.
    pub(super) from_open: u64,
    pub(super) to_open: u64,
    pub(super) seconds: f64,
    /// CPU time sampled on all cores in the window, ours and others'.
    pub(super) cpu_seconds: f64,
    /// Share of that time in processes that are not this run's (other
    /// work on a shared host): left out of every table below and the
    /// flamegraph, which are shares of this run's time (idle included).
    pub(super) others_percent: f64,
    /// Share of samples per process name (perf's `comm`), largest first.
    pub(super) processes: Vec<Share>,
    /// Share of samples in the kernel (any frame tagged `_[k]`).
    pub(super) kernel_percent: f64,
    /// Share of samples under each system call (outermost `__x64_sys_*`
    /// frame), largest first; softirq work done inline is counted under it.
    pub(super) syscalls: Vec<Share>,
    /// Share of samples per function they fell in (self time).
    pub(super) functions: Vec<Share>,
    /// The flamegraph, relative to the workspace.
    pub(super) svg: String,
    /// The options the run was given that change the ramp (`--netns`,
    /// `--pre-touch 14`, …); none for the host as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) settings: Vec<String>,
    pub(super) date_utc: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct Share {
    pub(super) name: String,
    pub(super) percent: f64,
}

/// Rows kept per table.
const KEEP: usize = 15;

/// perf's sampling frequency: below the default 4 kHz so a long ramp's
/// stacks stay a few MB, above 100 Hz so a one-second window has samples.
const FREQUENCY: &str = "997";

/// Records the whole ramp (perf takes a moment to start, longer than a
/// small ramp lasts) with CLOCK_MONOTONIC timestamps, notes when the ramp
/// passes `from_fraction`, and keeps only the samples after that.
pub(super) struct RampProfiler {
    conns: usize,
    from_fraction: Option<f64>,
    svg: PathBuf,
    data: PathBuf,
    perf: Option<Child>,
    /// CLOCK_MONOTONIC and the open count when the window began.
    window_start: Option<(f64, u64, Instant)>,
    last_open: u64,
}

/// CLOCK_MONOTONIC in seconds: the clock perf stamps samples with (`-k`).
fn monotonic_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec that lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

impl RampProfiler {
    /// No profile (`from_fraction` None), or one written to `svg`.
    pub(super) fn new(conns: usize, from_fraction: Option<f64>, svg: PathBuf) -> RampProfiler {
        let data = std::env::temp_dir().join(format!("c1m-ramp-{}.perf.data", std::process::id()));
        RampProfiler {
            conns,
            from_fraction,
            svg,
            data,
            perf: None,
            window_start: None,
            last_open: 0,
        }
    }

    pub(super) fn check_host(from_fraction: Option<f64>) -> Result<(), TaskError> {
        if from_fraction.is_some() && !have("perf") {
            return Err(TaskError::Usage(
                "--flamegraph needs perf: on Debian `apt-get install linux-perf`, on Ubuntu \
                 `apt-get install linux-tools-$(uname -r)`"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Starts perf on every core (when profiling), before the ramp starts.
    pub(super) fn start(&mut self) -> Result<(), TaskError> {
        if self.from_fraction.is_none() {
            return Ok(());
        }
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", FREQUENCY])
            .args(["-k", "CLOCK_MONOTONIC", "-o"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TaskError::Failed(format!("starting perf record: {e}")))?;
        eprintln!("    $ perf record -a -g -e cpu-clock -F {FREQUENCY} -k CLOCK_MONOTONIC");
        self.perf = Some(child);
        // Let perf map its buffers on every core before the ramp begins.
        std::thread::sleep(std::time::Duration::from_millis(700));
        Ok(())
    }

    /// Called on every look at the ramp: notes when the window begins.
    pub(super) fn poll(&mut self, open: u64, total: u64) {
        self.last_open = open;
        if let (Some(fraction), None) = (self.from_fraction, self.window_start)
            && open as f64 >= fraction * total as f64
        {
            self.window_start = Some((monotonic_seconds(), open, Instant::now()));
        }
    }

    /// Stops perf (the ramp is done) and renders the window, keeping the
    /// samples of the processes named `ours` (and idle).
    pub(super) fn finish(mut self, ours: &[String]) -> Result<Option<RampFlamegraph>, TaskError> {
        let Some(mut child) = self.perf.take() else {
            return Ok(None);
        };
        let end = monotonic_seconds();
        // SAFETY: kill has no memory-safety preconditions; the pid is the
        // perf we started and have not waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let status = child
            .wait()
            .map_err(|e| TaskError::Failed(format!("waiting for perf record: {e}")))?;
        if !status.success() && !self.data.is_file() {
            return Err(TaskError::Failed(format!(
                "perf record failed ({status}); as non-root, lower \
                 /proc/sys/kernel/perf_event_paranoid"
            )));
        }
        let (start, from_open, started) =
            self.window_start
                .unwrap_or((end, self.last_open, Instant::now()));
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("    perf: a {seconds:.1} s window; folding the stacks");
        let script = Command::new("perf")
            .args(["script", "--time", &format!("{start:.6},{end:.6}"), "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| TaskError::Failed(format!("perf script: {e}")))?;
        let _ = fs::remove_file(&self.data);
        let all = fold(&script.stdout)?;
        let total = total_count(&all);
        let folded: Vec<String> = all
            .into_iter()
            .filter(|line| {
                let comm = line.split(';').next().unwrap_or("");
                comm == "swapper" || ours.iter().any(|o| o == comm)
            })
            .collect();
        let title = format!(
            "The ramp's CPU, all cores: {} → {} of {} connections open ({seconds:.1} s)",
            thousands(from_open),
            thousands(self.last_open),
            thousands(self.conns as u64)
        );
        let others_percent = 100.0 - percent(total_count(&folded), total);
        let svg = draw(&folded, &title, others_percent)?;
        if let Some(dir) = self.svg.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| TaskError::Failed(format!("creating {}: {e}", dir.display())))?;
        }
        fs::write(&self.svg, svg)
            .map_err(|e| TaskError::Failed(format!("writing {}: {e}", self.svg.display())))?;
        eprintln!("    flamegraph: {}", self.svg.display());
        let mut summary = summarise(&folded);
        summary.conns = self.conns;
        summary.from_open = from_open;
        summary.to_open = self.last_open;
        summary.seconds = seconds;
        // perf's cpu-clock samples carry their period in nanoseconds, and
        // inferno counts by period.
        summary.cpu_seconds = total as f64 / 1e9;
        summary.others_percent = others_percent;
        summary.svg = relative(&self.svg);
        summary.date_utc = crate::clock::now_utc();
        Ok(Some(summary))
    }
}

impl Drop for RampProfiler {
    fn drop(&mut self) {
        if let Some(mut child) = self.perf.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&self.data);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `perf script` text into folded stacks: `comm;outer;…;leaf count`.
fn fold(script: &[u8]) -> Result<Vec<String>, TaskError> {
    let mut options = inferno::collapse::perf::Options::default();
    options.annotate_kernel = true;
    let mut out = Vec::new();
    inferno::collapse::perf::Folder::from(options)
        .collapse(BufReader::new(Cursor::new(script)), &mut out)
        .map_err(|e| TaskError::Failed(format!("folding perf's stacks: {e}")))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The sum of folded stacks' counts.
fn total_count(folded: &[String]) -> u64 {
    folded
        .iter()
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// The flamegraph SVG, with colours from the function names (the same
/// stacks draw the same picture).
fn draw(folded: &[String], title: &str, others_percent: f64) -> Result<Vec<u8>, TaskError> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!(
        "perf record -a -g -e cpu-clock; kernel frames end in _[k]; width is CPU time; \
         this run's processes and idle only ({others_percent:.0}% of the cores' time went to \
         other processes)"
    ));
    options.deterministic = true;
    options.hash = true;
    options.colors =
        inferno::flamegraph::color::Palette::Basic(inferno::flamegraph::color::BasicPalette::Aqua);
    options.count_name = "ns".to_string();
    options.min_width = 0.2;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.iter().map(String::as_str), &mut svg)
        .map_err(|e| TaskError::Failed(format!("drawing the flamegraph: {e}")))?;
    Ok(svg)
}

/// The tables from folded stacks.
fn summarise(folded: &[String]) -> RampFlamegraph {
    let (mut processes, mut syscalls, mut functions) =
        (HashMap::new(), HashMap::new(), HashMap::new());
    let (mut total, mut kernel) = (0u64, 0u64);
    for line in folded {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let frames: Vec<&str> = stack.split(';').collect();
        total += count;
        if frames.iter().any(|f| f.ends_with("_[k]")) {
            kernel += count;
        }
        let comm = frames.first().copied().unwrap_or("?");
        *processes.entry(comm.to_string()).or_insert(0) += count;
        let syscall = frames
            .iter()
            .find_map(|f| f.strip_prefix("__x64_sys_"))
            .map_or_else(|| not_in_a_syscall(&frames), |s| s.trim_end_matches("_[k]"));
        *syscalls.entry(syscall.to_string()).or_insert(0) += count;
        let leaf = frames.last().copied().unwrap_or("?");
        *functions
            .entry(leaf.trim_end_matches("_[k]").to_string())
            .or_insert(0) += count;
    }
    RampFlamegraph {
        kernel_percent: percent(kernel, total),
        processes: ranked(processes, total),
        syscalls: ranked(syscalls, total),
        functions: ranked(functions, total),
        ..RampFlamegraph::default()
    }
}

/// Where a sample outside any system call was: idle, an interrupt's
/// softirq, or userland.
fn not_in_a_syscall(frames: &[&str]) -> &'static str {
    if frames
        .iter()
        .any(|f| f.starts_with("default_idle") || f.starts_with("cpu_startup_entry"))
    {
        "(idle)"
    } else if frames.iter().any(|f| {
        f.starts_with("__do_softirq")
            || f.starts_with("handle_softirqs")
            || f.starts_with("run_ksoftirqd")
    }) {
        "(softirq outside a system call)"
    } else if frames.iter().any(|f| f.ends_with("_[k]")) {
        "(other kernel: faults, timers, scheduler)"
    } else {
        "(userland)"
    }
}

fn percent(part: u64, total: u64) -> f64 {
    100.0 * part as f64 / total.max(1) as f64
}

fn ranked(counts: HashMap<String, u64>, total: u64) -> Vec<Share> {
    let mut rows: Vec<(String, u64)> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.into_iter()
        .take(KEEP)
        .map(|(name, count)| Share {
            name,
            percent: percent(count, total),
        })
        .collect()
}

// ANCHOR: record
/// Where `--record-flamegraph` keeps its windows (one per connection
/// count), and the page the book includes.
const RECORDED: RecordedRuns = RecordedRuns {
    stem: "ramp-flamegraphs",
    command: "cargo xtask million --record-flamegraph",
};

/// Where a recorded run's flamegraph goes in the book: one file per
/// connection count and settings (`ramp-flamegraph-1000000-netns.svg`).
pub(super) fn book_svg(conns: usize, settings: &[String]) -> PathBuf {
    let mut stem = format!("ramp-flamegraph-{conns}");
    for word in settings
        .join(" ")
        .split(|c: char| !c.is_ascii_alphanumeric())
    {
        if !word.is_empty() {
            stem.push('-');
            stem.push_str(word);
        }
    }
    workspace_root().join(format!("book/src/img/{stem}.svg"))
}

/// Replaces the recorded window at this connection count and settings,
/// and re-renders the page. The host as it is comes first, then each
/// set of settings, smaller runs before larger.
pub(super) fn record(run: &RampFlamegraph) -> Result<(), TaskError> {
    let mut runs: Vec<RampFlamegraph> = RECORDED.read()?;
    runs.retain(|r| (r.conns, &r.settings) != (run.conns, &run.settings));
    runs.push(run.clone());
    runs.sort_by(|a, b| (&a.settings, a.conns).cmp(&(&b.settings, b.conns)));
    let page = render(&runs);
    RECORDED.write(&runs, page)
}

/// Re-renders the page from the recorded windows.
pub(super) fn render_recorded() -> Result<(), TaskError> {
    let runs: Vec<RampFlamegraph> = RECORDED.read()?;
    if runs.is_empty() {
        return Ok(());
    }
    RECORDED.write_page(render(&runs))
}

/// For `cargo xtask test`: the page is what the recorded windows render to,
/// and every flamegraph it shows exists.
pub(super) fn check_recorded() -> Result<(), TaskError> {
    let runs: Vec<RampFlamegraph> = RECORDED.read()?;
    if runs.is_empty() {
        return Ok(());
    }
    RECORDED.check_page(&render(&runs))?;
    for run in &runs {
        if !workspace_root().join(&run.svg).is_file() {
            return Err(TaskError::Failed(format!(
                "{} (recorded in ramp-flamegraphs.json) is missing",
                run.svg
            )));
        }
    }
    Ok(())
}
// ANCHOR_END: record

/// "1,000,000" or "1,000,000 with `--netns`": what a run's column is.
fn column(run: &RampFlamegraph) -> String {
    format!("{}{}", thousands(run.conns as u64), with_settings(run))
}

/// "" or " with `--netns --pre-touch 14`".
fn with_settings(run: &RampFlamegraph) -> String {
    if run.settings.is_empty() {
        String::new()
    } else {
        format!(" with `{}`", run.settings.join(" "))
    }
}

/// The recorded windows side by side: each table has one column per run.
fn render(runs: &[RampFlamegraph]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `cargo xtask million --record-flamegraph` into \
         book/src/results/ramp-flamegraphs.json. Do not edit: re-run it. -->\n"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "`cargo xtask million --conns {}{} --record-flamegraph`: {} → {} connections open in \
             {:.1} s; {:.1} s of CPU sampled on all cores, {:.0}% of it in other processes (left \
             out); of this run's, {:.0}% in the kernel (run on {}).\n",
            run.conns,
            run.settings
                .iter()
                .map(|s| format!(" {s}"))
                .collect::<String>(),
            thousands(run.from_open),
            thousands(run.to_open),
            run.seconds,
            run.cpu_seconds,
            run.others_percent,
            run.kernel_percent,
            run.date_utc
        );
        let file = Path::new(&run.svg)
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned());
        let _ = writeln!(
            out,
            "[![Flamegraph of the ramp at {} connections{}](img/{file})](img/{file})\n",
            thousands(run.conns as u64),
            with_settings(run)
        );
    }
    let heading = |what: &str| {
        let mut h = format!("| {what} |");
        for run in runs {
            let _ = write!(h, " at {} |", column(run));
        }
        h.push_str("\n| --- |");
        h.push_str(&" ---: |".repeat(runs.len()));
        h
    };
    for (title, what, pick) in [
        (
            "Where the samples were, by process:",
            "process",
            (|r: &RampFlamegraph| &r.processes) as fn(&RampFlamegraph) -> &Vec<Share>,
        ),
        (
            "By the system call they ran under (softirq work a call does inline, such as the \
             loopback handshake, counts under the call):",
            "system call",
            |r| &r.syscalls,
        ),
        (
            "By the function they fell in (self time; the top of the flamegraph):",
            "function",
            |r| &r.functions,
        ),
    ] {
        let _ = writeln!(out, "{title}\n\n{}", heading(what));
        let mut names: Vec<&str> = Vec::new();
        for run in runs {
            for share in pick(run) {
                if !names.contains(&share.name.as_str()) {
                    names.push(&share.name);
                }
            }
        }
        for name in names {
            let _ = write!(out, "| `{name}` |");
            for run in runs {
                match pick(run).iter().find(|s| s.name == name) {
                    Some(s) => {
                        let _ = write!(out, " {:.1}% |", s.percent);
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_stacks_are_shared_out_by_process_call_and_function() {
        let folded: Vec<String> = [
            "loadgen;entry_SYSCALL_64_[k];__x64_sys_connect_[k];__inet_hash_connect_[k] 6",
            "loadgen;entry_SYSCALL_64_[k];__x64_sys_connect_[k];tcp_v4_rcv_[k] 2",
            "ch08;__x64_sys_accept4_[k];inet_csk_accept_[k] 1",
            "swapper;cpu_startup_entry_[k];default_idle_[k] 1",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let s = summarise(&folded);
        assert_eq!(total_count(&folded), 10);
        assert!((s.kernel_percent - 100.0).abs() < 1e-9);
        assert_eq!(s.syscalls[0].name, "connect");
        assert!((s.syscalls[0].percent - 80.0).abs() < 1e-9);
        assert!(s.syscalls.iter().any(|x| x.name == "(idle)"));
        assert_eq!(s.functions[0].name, "__inet_hash_connect");
        assert!((s.functions[0].percent - 60.0).abs() < 1e-9);
        assert_eq!(s.processes[0].name, "loadgen");
    }

    #[test]
    fn the_page_puts_runs_side_by_side() {
        let run = |conns, percent| RampFlamegraph {
            conns,
            svg: format!("book/src/img/ramp-flamegraph-{conns}.svg"),
            functions: vec![Share {
                name: "__inet_hash_connect".into(),
                percent,
            }],
            ..RampFlamegraph::default()
        };
        let page = render(&[run(50_000, 5.0), run(1_000_000, 40.0)]);
        assert!(
            page.contains("| `__inet_hash_connect` | 5.0% | 40.0% |"),
            "{page}"
        );
        assert!(page.contains("img/ramp-flamegraph-1000000.svg"));
        assert!(
            page.contains("| function | at 50,000 | at 1,000,000 |"),
            "{page}"
        );
    }

    #[test]
    fn runs_with_settings_are_kept_and_named_apart() {
        let settings = vec!["--netns".to_string(), "--pre-touch 14".to_string()];
        let svg = book_svg(1_000_000, &settings);
        assert!(
            svg.ends_with("book/src/img/ramp-flamegraph-1000000-netns-pre-touch-14.svg"),
            "{}",
            svg.display()
        );
        assert!(book_svg(50_000, &[]).ends_with("book/src/img/ramp-flamegraph-50000.svg"));
        let run = RampFlamegraph {
            conns: 1_000_000,
            settings,
            ..RampFlamegraph::default()
        };
        let page = render(&[run]);
        assert!(
            page.contains(
                "`cargo xtask million --conns 1000000 --netns --pre-touch 14 --record-flamegraph`"
            ),
            "{page}"
        );
        assert!(
            page.contains("| at 1,000,000 with `--netns --pre-touch 14` |"),
            "{page}"
        );
    }
}
