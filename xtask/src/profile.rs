//! `cargo xtask profile`: where a server's CPU goes per message, and how that
//! changes as connections grow, from `perf record` on the running server.
//!
//! Each server in turn runs pinned to core 0 under `loadgen echo` (core 1) at
//! each connection count. Once every connection is established and the loop
//! is warm, `perf record -e cpu-clock -g` samples the server's processes for
//! a few seconds; `perf report` then says which functions the samples fell
//! in, kernel and userland alike. The result is written to
//! `book/src/generated/profile.md`, which the measuring appendix includes:
//! a profile in the book comes from this command, never from a paste.
//!
//! Software events only (`cpu-clock`): they work in a VM without hardware
//! counters, which is where this was first run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c1m_benches::{CorePlan, MESSAGE_SIZE};
use clap::Args;
use loadgen::report::EchoReport;
use loadgen::server::ServerProcess;

use crate::results::format;
use crate::run::{TaskError, TaskResult, have, workspace_root};

#[derive(Args)]
pub struct ProfileArgs {
    /// Servers to profile, by package name.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "epoll-floor,ch03-epoll-edge-triggered,ch08-million-connections,ch09-io-uring"
    )]
    servers: Vec<String>,
    /// Connection counts to profile each server at.
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    conns: Vec<usize>,
    /// Seconds of samples per run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Where to write the page fragment (default: book/src/generated/profile.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Symbols listed per run.
const TOP_SYMBOLS: usize = 12;

/// One profiled run: a server at a connection count.
struct Run {
    server: String,
    conns: usize,
    messages_per_sec: f64,
    cpu_us_per_message: Option<f64>,
    /// (percent of samples, where, symbol), largest first.
    symbols: Vec<Sample>,
    /// Percent of samples in the kernel.
    kernel_percent: f64,
}

struct Sample {
    percent: f64,
    kernel: bool,
    dso: String,
    symbol: String,
}

pub fn run(args: &ProfileArgs) -> TaskResult {
    if !have("perf") {
        return Err(TaskError::Usage(
            "perf is not installed: on Debian `apt-get install linux-perf`, on Ubuntu \
             `apt-get install linux-tools-$(uname -r)`"
                .to_string(),
        ));
    }
    let cores = CorePlan::detect();
    let (Some(server_core), Some(load_core)) = (cores.server, cores.load) else {
        return Err(TaskError::Usage(
            "profiling needs two cores (server on one, load on the other)".to_string(),
        ));
    };
    let mut packages: Vec<&str> = args.servers.iter().map(String::as_str).collect();
    packages.push("loadgen");
    eprintln!("==> build the servers and loadgen (release)");
    let release_dir = build(&packages)?;
    let most = args.conns.iter().copied().max().unwrap_or(1);
    c1m_benches::raise_fd_limit(most).map_err(TaskError::Usage)?;
    let scratch = std::env::temp_dir().join(format!("c1m-profile-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| TaskError::Failed(format!("creating {}: {e}", scratch.display())))?;

    let mut runs = Vec::new();
    for server in &args.servers {
        for &conns in &args.conns {
            eprintln!("==> {server} at {conns} connections");
            let run = profile_one(
                &release_dir,
                server,
                conns,
                Duration::from_secs(args.seconds),
                (server_core, load_core),
                &scratch,
            )?;
            eprintln!(
                "    {:.0} msgs/s, {} per message, {:.0}% of samples in the kernel",
                run.messages_per_sec,
                run.cpu_us_per_message
                    .map_or_else(|| "?".to_string(), |us| format!("{us:.2} µs")),
                run.kernel_percent
            );
            runs.push(run);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let out = args.out.clone().unwrap_or_else(|| {
        workspace_root()
            .join("book")
            .join("src")
            .join("generated")
            .join("profile.md")
    });
    let page = render(&runs, args);
    std::fs::write(&out, page)
        .map_err(|e| TaskError::Failed(format!("writing {}: {e}", out.display())))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn build(packages: &[&str]) -> Result<PathBuf, TaskError> {
    let mut command = crate::run::cargo();
    command.args(["build", "--release", "--quiet"]);
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .map_err(|e| TaskError::Failed(format!("cargo build: {e}")))?;
    if !status.success() {
        return Err(TaskError::Failed(format!(
            "cargo build --release failed ({status})"
        )));
    }
    Ok(c1m_benches::release_dir())
}

fn profile_one(
    release_dir: &Path,
    server_name: &str,
    conns: usize,
    seconds: Duration,
    (server_core, load_core): (usize, usize),
    scratch: &Path,
) -> Result<Run, TaskError> {
    let mut builder = ServerProcess::builder(release_dir.join(server_name)).cpu(server_core);
    if server_name.starts_with("ch08") || server_name.starts_with("ch09") {
        builder = builder.args(["--procs", "1"]);
    }
    let server = builder
        .spawn()
        .map_err(|e| TaskError::Failed(format!("starting {server_name}: {e}")))?;
    let fds_before = server.open_fds().unwrap_or(0);
    // Long enough to connect everyone, warm up, and outlast the samples.
    let load_seconds = seconds.as_secs_f64() + 6.0 + conns as f64 / 5_000.0;
    let mut load = Command::new(release_dir.join("loadgen"));
    load.arg("echo")
        .args(["--addr", &server.addr().to_string()])
        .args(["--conns", &conns.to_string()])
        .args(["--size", &MESSAGE_SIZE.to_string()])
        .args(["--duration", &format!("{load_seconds:.1}")])
        .args(["--cpu", &load_core.to_string()])
        .args(["--server-pid", &server.pid().to_string()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = load
        .spawn()
        .map_err(|e| TaskError::Failed(format!("running loadgen: {e}")))?;

    // Every connection accepted (the server holds a descriptor for each),
    // then a second of steady load before the samples start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.open_fds().unwrap_or(0) < fds_before + conns {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(TaskError::Failed(format!(
                "{server_name} never held {conns} connections"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));

    let data = scratch.join(format!("{server_name}-{conns}.data"));
    let pids: Vec<String> = server
        .process_tree()
        .iter()
        .map(ToString::to_string)
        .collect();
    let recorded = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pids.join(",")])
        .args(["--", "sleep", &seconds.as_secs().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| TaskError::Failed(format!("perf record: {e}")))?;
    if !recorded.success() {
        let _ = child.kill();
        return Err(TaskError::Failed(format!(
            "perf record failed ({recorded}); as non-root, lower \
             /proc/sys/kernel/perf_event_paranoid"
        )));
    }

    let output = child
        .wait_with_output()
        .map_err(|e| TaskError::Failed(format!("waiting for loadgen: {e}")))?;
    let _ = server.shutdown();
    let report: EchoReport = serde_json::from_slice(&output.stdout)
        .map_err(|e| TaskError::Failed(format!("loadgen printed no report: {e}")))?;
    if !report.ok {
        return Err(TaskError::Failed(format!(
            "{server_name} at {conns} connections: the echo run reported errors"
        )));
    }
    let symbols = read_report(&data)?;
    let kernel_percent = symbols.iter().filter(|s| s.kernel).map(|s| s.percent).sum();
    Ok(Run {
        server: server_name.to_string(),
        conns,
        messages_per_sec: report.messages_per_sec,
        cpu_us_per_message: report.cpu.server.and_then(|c| c.us_per_message),
        symbols,
        kernel_percent,
    })
}

/// Every symbol in the profile with its share of samples.
fn read_report(data: &Path) -> Result<Vec<Sample>, TaskError> {
    let output = Command::new("perf")
        .args(["report", "--no-children", "--sort", "dso,sym", "--stdio"])
        .args(["-g", "none", "--percent-limit", "0.01", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| TaskError::Failed(format!("perf report: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().filter_map(parse_report_line).collect())
}

/// `     9.45%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore`
fn parse_report_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let (percent, rest) = line.split_once('%')?;
    let percent: f64 = percent.trim().parse().ok()?;
    let mut words = rest.split_whitespace();
    let dso = words.next()?.to_string();
    let mark = words.next()?;
    let symbol = words.collect::<Vec<_>>().join(" ");
    Some(Sample {
        percent,
        kernel: mark == "[k]",
        dso,
        symbol,
    })
}

fn render(runs: &[Run], args: &ProfileArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `cargo xtask profile`. Do not edit: re-run the command. -->\n"
    );
    let _ = writeln!(
        out,
        "Profiled on {} with `cargo xtask profile --servers {} --conns {} --seconds {}`: \
         each server pinned to core 0, `loadgen echo` ({MESSAGE_SIZE}-byte ping-pong) on \
         core 1, `perf record -e cpu-clock -g` on the server's processes once every \
         connection was up.\n",
        stamp(),
        args.servers.join(","),
        args.conns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.seconds
    );
    let _ = writeln!(
        out,
        "| server | connections | msgs/s | server CPU per message | samples in the kernel | \
         the server's own code |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for run in runs {
        let own: f64 = run
            .symbols
            .iter()
            .filter(|s| !s.kernel && s.dso == run.server)
            .map(|s| s.percent)
            .sum();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {:.0}% | {:.1}% |",
            run.server,
            format::thousands(run.conns as u64),
            format::thousands(run.messages_per_sec.round() as u64),
            run.cpu_us_per_message
                .map_or_else(|| "–".to_string(), |us| format!("{us:.2} µs")),
            run.kernel_percent,
            own
        );
    }
    out.push('\n');

    // The symbols whose share grew the most between the fewest and the
    // most connections, for the first server: where the extra time goes.
    if let (Some(&few), Some(&many)) = (args.conns.iter().min(), args.conns.iter().max())
        && few != many
    {
        for server in &args.servers {
            let (Some(a), Some(b)) = (
                runs.iter().find(|r| &r.server == server && r.conns == few),
                runs.iter().find(|r| &r.server == server && r.conns == many),
            ) else {
                continue;
            };
            growth_table(&mut out, a, b);
        }
    }

    for run in runs {
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code> at {} connections: top {TOP_SYMBOLS} \
             symbols</summary>\n",
            run.server,
            format::thousands(run.conns as u64)
        );
        let _ = writeln!(out, "| samples | where | symbol |");
        let _ = writeln!(out, "| ---: | --- | --- |");
        for sample in run.symbols.iter().take(TOP_SYMBOLS) {
            let _ = writeln!(
                out,
                "| {:.1}% | {} | `{}` |",
                sample.percent,
                if sample.kernel { "kernel" } else { &sample.dso },
                sample.symbol
            );
        }
        let _ = writeln!(out, "\n</details>\n");
    }
    out
}

/// The symbols that gained the most CPU per message from `few` to `many`
/// connections: share of samples times CPU per message, in nanoseconds.
fn growth_table(out: &mut String, few: &Run, many: &Run) {
    let (Some(cpu_few), Some(cpu_many)) = (few.cpu_us_per_message, many.cpu_us_per_message) else {
        return;
    };
    let ns = |run: &Run, cpu: f64, symbol: &str| {
        run.symbols
            .iter()
            .find(|s| s.symbol == symbol)
            .map_or(0.0, |s| s.percent / 100.0 * cpu * 1000.0)
    };
    let mut grown: Vec<(String, f64, f64)> = many
        .symbols
        .iter()
        .map(|s| {
            (
                s.symbol.clone(),
                ns(few, cpu_few, &s.symbol),
                ns(many, cpu_many, &s.symbol),
            )
        })
        .collect();
    grown.sort_by(|a, b| (b.2 - b.1).total_cmp(&(a.2 - a.1)));
    let _ = writeln!(
        out,
        "`{}`: {:.2} µs of CPU per message at {} connections, {:.2} µs at {}. The functions \
         that account for most of the difference (their share of samples × CPU per \
         message):\n",
        few.server,
        cpu_few,
        format::thousands(few.conns as u64),
        cpu_many,
        format::thousands(many.conns as u64)
    );
    let _ = writeln!(
        out,
        "| symbol | ns per message at {} | at {} | grew by |",
        format::thousands(few.conns as u64),
        format::thousands(many.conns as u64)
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    for (symbol, a, b) in grown.iter().take(6) {
        let _ = writeln!(out, "| `{symbol}` | {a:.0} | {b:.0} | {:+.0} |", b - a);
    }
    out.push('\n');
}

/// `CPU model, N cores, Linux K, DATE (UTC)`.
fn stamp() -> String {
    crate::results::describe_this_machine()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_into_samples() {
        let kernel =
            parse_report_line("     9.45%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore")
                .unwrap();
        assert!(kernel.kernel);
        assert!((kernel.percent - 9.45).abs() < 1e-9);
        assert_eq!(kernel.symbol, "_raw_spin_unlock_irqrestore");
        let user = parse_report_line(
            "     0.62%  ch08-million-connections  [.] ch08::server::serve_edge_triggered",
        )
        .unwrap();
        assert!(!user.kernel);
        assert_eq!(user.dso, "ch08-million-connections");
        assert!(parse_report_line("# Samples: 12K of event 'cpu-clock'").is_none());
    }
}
