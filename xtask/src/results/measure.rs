//! Running the matrix: every server, one after another, measured by the
//! release `loadgen` binary exactly as a reader would run it by hand.
//!
//! A point that fails (a server that cannot take 10,000 connections, a
//! crash, echo errors) is recorded with its error and the matrix goes on:
//! "falls over at 10,000" is a result too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c1m_benches::{CorePlan, MESSAGE_SIZE, Server};
use loadgen::report::{EchoReport, HoldReport};
use loadgen::server::ServerProcess;

use super::data::{EchoPoint, MemoryProbe, Settings};

/// Connects per second when the memory probe ramps up its idle connections.
const HOLD_RATE: u32 = 5_000;
/// Handshakes in flight at once during that ramp (below a 128 backlog).
const HOLD_MAX_CONNECTING: u32 = 64;

/// How long each kind of measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
    /// How long the memory probe holds its connections after the ramp.
    pub hold: Duration,
}

/// The echo points of one pass over one server.
pub struct EchoPass {
    pub echo: Vec<EchoPoint>,
    pub pipelined: EchoPoint,
    pub work: Option<EchoPoint>,
}

// ANCHOR: best_of
/// Of the same point measured in several passes, the one that moved the
/// most messages. With many connections the server's core is busy all
/// window, and noise on a shared machine (another process taking the core,
/// a host hiccup) only ever takes time from it, so the best pass is the one
/// closest to what the server can do. A point that failed in every pass
/// keeps its first error.
pub fn best_of(points: Vec<EchoPoint>) -> EchoPoint {
    let mut best: Option<EchoPoint> = None;
    for point in points {
        best = match best {
            None => Some(point),
            Some(current) if current.rate() < point.rate() => Some(point),
            Some(current) => Some(current),
        };
    }
    best.unwrap_or_default()
}
// ANCHOR_END: best_of

// ANCHOR: median_of
/// Of the same point measured in several passes, the median one (the lower
/// of the two middle ones for an even count). For the one-connection point:
/// there the server's core is mostly idle, each message costs two wake-ups
/// (the server's and loadgen's), and how fast a sleeping core wakes up
/// depends on what else the machine is doing — noise that can make a pass
/// faster as well as slower. Single passes of the same server there ranged
/// from 0.89× to 1.54× of another's, so the best of them picks a lucky
/// pass; the median of several does not. Failed passes are left out; a
/// point that failed in every pass keeps its first error.
pub fn median_of(points: Vec<EchoPoint>) -> EchoPoint {
    let mut ok: Vec<EchoPoint> = Vec::new();
    let mut first_failure = None;
    for point in points {
        if point.rate().is_some() {
            ok.push(point);
        } else if first_failure.is_none() {
            first_failure = Some(point);
        }
    }
    ok.sort_by_key(|p| p.rate());
    let middle = ok.len().saturating_sub(1) / 2;
    ok.into_iter()
        .nth(middle)
        .or(first_failure)
        .unwrap_or_default()
}
// ANCHOR_END: median_of

/// Which pass a point keeps: `best_of` or `median_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Best,
    Median,
}

/// The pass `keep` chooses, carrying every successful pass's messages/s
/// (in the order they ran) so the page can show how far they spread.
pub fn aggregate(points: Vec<EchoPoint>, keep: Keep) -> EchoPoint {
    let rates: Vec<u64> = points.iter().filter_map(EchoPoint::rate).collect();
    let mut kept = match keep {
        Keep::Best => best_of(points),
        Keep::Median => median_of(points),
    };
    kept.pass_rates = rates;
    kept
}

/// What the matrix needs to run: binaries, cores, timing, sizes.
pub struct Matrix {
    pub release_dir: PathBuf,
    pub cores: CorePlan,
    pub timing: Timing,
    pub settings: Settings,
}

impl Matrix {
    fn loadgen(&self) -> PathBuf {
        self.release_dir.join("loadgen")
    }

    /// Flags every loadgen run gets: pinning, and the server's pid so its
    /// CPU use is reported next to loadgen's.
    fn loadgen_command(&self, mode: &str, server: &ServerProcess) -> Command {
        let mut command = Command::new(self.loadgen());
        command
            .arg(mode)
            .args(["--addr", &server.addr().to_string()])
            .args(["--server-pid", &server.pid().to_string()])
            .arg("--json");
        if let Some(core) = self.cores.load {
            command.args(["--cpu", &core.to_string()]);
        }
        command
    }

    /// Idle memory and threads of one server, on a fresh process so the
    /// baseline is not inflated by earlier load.
    pub fn memory(&self, server: &Server) -> MemoryProbe {
        let memory = self.memory_probe(server);
        match (&memory.error, memory.bytes_per_connection()) {
            (Some(e), _) => eprintln!("    {}: memory FAILED: {e}", server.name),
            (None, Some(bytes)) => eprintln!(
                "    {}: {bytes:.0} B per idle connection, threads {} -> {}{}",
                server.name,
                show(memory.threads_idle),
                show(memory.threads_held),
                memory
                    .stack_bytes_per_connection
                    .map_or_else(String::new, |b| format!(", {b} B of goroutine stack each"))
            ),
            (None, None) => {}
        }
        memory
    }

    /// One pass over one server: messages/s at every connection count, then
    /// pipelined, then the CPU-work point (the floor does no work), each on a
    /// fresh server process.
    pub fn echo_pass(&self, server: &Server) -> EchoPass {
        eprintln!("    {}", server.name);
        let mut echo = Vec::new();
        let mut process = None;
        for &connections in &self.settings.connection_counts {
            echo.push(self.echo_point(server, &mut process, connections, 0, 1));
        }
        stop(process);

        let mut process = None;
        let pipelined = self.echo_point(
            server,
            &mut process,
            self.settings.pipeline_connections,
            0,
            self.settings.pipeline_depth,
        );
        stop(process);

        let work = server.does_work().then(|| {
            let mut process = None;
            let point = self.echo_point(
                server,
                &mut process,
                self.settings.work_connections,
                self.settings.work_us,
                1,
            );
            stop(process);
            point
        });
        EchoPass {
            echo,
            pipelined,
            work,
        }
    }

    /// One ping-pong point alone, on a fresh server process: the extra
    /// passes of the one-connection point.
    pub fn lone_point(&self, server: &Server, connections: usize) -> EchoPoint {
        eprintln!("    {}", server.name);
        let mut process = None;
        let point = self.echo_point(server, &mut process, connections, 0, 1);
        stop(process);
        point
    }

    /// One echo point, (re)starting the server if it is not running — a
    /// server that died at the previous point gets a fresh start here.
    fn echo_point(
        &self,
        server: &Server,
        process: &mut Option<ServerProcess>,
        connections: usize,
        work_us: u32,
        pipeline: usize,
    ) -> EchoPoint {
        let mut point = EchoPoint {
            connections,
            work_us,
            pipeline,
            ..EchoPoint::default()
        };
        if process.as_ref().is_none_or(|p| !p.is_running()) {
            let work = work_us.to_string();
            let extra: &[&str] = if work_us > 0 {
                &["--work-us", &work]
            } else {
                &[]
            };
            match server.start(&self.release_dir, self.cores, extra) {
                Ok(p) => *process = Some(p),
                Err(e) => {
                    point.error = Some(format!("server did not start: {}", first_line(&e)));
                    return point;
                }
            }
        }
        let Some(running) = process.as_ref() else {
            return point;
        };
        let mut command = self.loadgen_command("echo", running);
        command
            .args(["--conns", &connections.to_string()])
            .args(["--size", &self.settings.message_size.to_string()])
            .args(["--pipeline", &pipeline.to_string()])
            .args(["--warmup", &secs(self.timing.warmup)])
            .args(["--duration", &secs(self.timing.measure)]);
        match run_json::<EchoReport>(&mut command) {
            Ok(report) => {
                point.messages_per_sec = Some(report.messages_per_sec.round() as u64);
                point.p50_us = Some(report.rtt_us.p50_us);
                point.p99_us = Some(report.rtt_us.p99_us);
                point.p999_us = Some(report.rtt_us.p999_us);
                point.loadgen_cpu_percent = Some(tenths(report.cpu.loadgen.percent_of_core));
                if let Some(server_cpu) = &report.cpu.server {
                    point.server_cpu_percent = Some(tenths(server_cpu.percent_of_core));
                    point.server_cpu_us_per_message = server_cpu.us_per_message.map(tenths);
                }
                if !report.ok {
                    point.error = Some(echo_failure(&report));
                }
            }
            Err(e) => point.error = Some(e),
        }
        if !running.is_running() {
            let why = "server exited during the run".to_string();
            point.error = Some(match point.error.take() {
                Some(e) => format!("{why}; {e}"),
                None => why,
            });
        }
        match &point.error {
            Some(e) => eprintln!(
                "    {connections:>6} conns, depth {pipeline}, work {work_us} us: FAILED: {e}"
            ),
            None => eprintln!(
                "    {connections:>6} conns, depth {pipeline}, work {work_us} us: {} msg/s, p99 {} us",
                show(point.messages_per_sec),
                show(point.p99_us)
            ),
        }
        point
    }

    // ANCHOR: memory_probe
    /// RSS growth per idle connection: serve one connection (so one-time
    /// allocations are paid), read RSS, hold N idle connections, read RSS
    /// again once the server has accepted them all, divide.
    fn memory_probe(&self, server: &Server) -> MemoryProbe {
        let connections = self.settings.idle_connections;
        let mut probe = MemoryProbe {
            connections,
            ..MemoryProbe::default()
        };
        let process = match server.start(&self.release_dir, self.cores, &[]) {
            Ok(p) => p,
            Err(e) => {
                probe.error = Some(format!("server did not start: {}", first_line(&e)));
                return probe;
            }
        };
        // Descriptors of a server holding no client; the smaller of before and
        // after the warm-up, in case the warm-up's socket is still closing.
        let fds_fresh = process.open_fds().unwrap_or(0);
        let warm = self
            .loadgen_command("echo", &process)
            .args(["--conns", "1", "--messages", "100"])
            .args(["--size", &MESSAGE_SIZE.to_string()])
            .output();
        if let Err(e) = warm {
            probe.error = Some(format!("cannot run loadgen: {e}"));
            return probe;
        }
        std::thread::sleep(Duration::from_millis(200));
        let fds_idle = process.open_fds().unwrap_or(0).min(fds_fresh);
        probe.rss_idle_bytes = process.rss_bytes().ok();
        probe.threads_idle = process.threads().ok();

        let mut hold = self.loadgen_command("hold", &process);
        hold.args(["--conns", &connections.to_string()])
            .args(["--hold", &secs(self.timing.hold)])
            .args(["--ping-every", "1", "--ping-sample", "10"])
            // A steady ramp with few handshakes in flight: a burst deeper than
            // the server's listen backlog (std's is 128) leaves handshakes
            // the client counts as done waiting in SYN-RECV on the server
            // for seconds, and the probe would measure a half-held set.
            .args(["--rate", &HOLD_RATE.to_string()])
            .args(["--max-connecting", &HOLD_MAX_CONNECTING.to_string()]);
        let mut child = match hold.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(e) => {
                probe.error = Some(format!("cannot run loadgen: {e}"));
                return probe;
            }
        };
        // Wait until the server holds a descriptor for every connection,
        // give it a moment to settle, and read its memory while they are
        // all still open.
        let deadline = Instant::now() + self.timing.hold + Duration::from_secs(60);
        let mut all_accepted = false;
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            if process.open_fds().unwrap_or(0) >= fds_idle + connections {
                all_accepted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if all_accepted {
            std::thread::sleep(Duration::from_secs(1));
            probe.rss_held_bytes = process.rss_bytes().ok();
            probe.threads_held = process.threads().ok();
        }
        let outcome = collect_json::<HoldReport>(child);
        probe.error = match outcome {
            Err(e) => Some(e),
            Ok(report) if !report.ok => Some(format!(
                "{} of {} connections held, {} lost, {} of {} pings answered",
                report.connect.established,
                connections,
                report.connections_lost,
                report.pings_ok,
                report.pings_sent
            )),
            Ok(_) if !all_accepted => Some(format!(
                "the server never held all {connections} connections at once"
            )),
            Ok(_) => None,
        };
        // A Go server's summary says what its goroutine stacks cost when the
        // most connections were open; the others' summaries have no such key.
        if let Ok(counts) = super::scenarios::summary_of(process) {
            probe.stack_bytes_per_connection = counts.get("stack_bytes_per_connection").copied();
            probe.goroutines_held = counts.get("peak_goroutines").copied();
        }
        probe
    }
    // ANCHOR_END: memory_probe
}

/// Stops a server, if one is running.
fn stop(process: Option<ServerProcess>) {
    if let Some(process) = process {
        let _ = process.shutdown();
    }
}

/// Runs loadgen and parses the JSON report it prints.
pub(super) fn run_json<T: serde::de::DeserializeOwned>(command: &mut Command) -> Result<T, String> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run loadgen: {e}"))?;
    collect_json(child)
}

/// Waits for a loadgen child and parses its JSON report. Exit status 1 still
/// prints a report (one that shows errors); anything else is loadgen's
/// one-line error on stderr.
pub(super) fn collect_json<T: serde::de::DeserializeOwned>(
    mut child: std::process::Child,
) -> Result<T, String> {
    let mut stdout = String::new();
    let mut stderr = String::new();
    // stderr is small (no progress bar with --json); read stdout first.
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for loadgen: {e}"))?;
    match serde_json::from_str::<T>(&stdout) {
        Ok(report) => Ok(report),
        Err(_) => {
            let said = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(match said {
                Some(line) => line.trim().to_string(),
                None => format!("loadgen exited ({status}) without a report"),
            })
        }
    }
}

/// Why an echo run's report is not OK, in one line.
pub(super) fn echo_failure(report: &EchoReport) -> String {
    let e = &report.errors;
    let mut parts = Vec::new();
    if report.connect.established < report.connect.requested {
        parts.push(format!(
            "{} of {} connected",
            report.connect.established, report.connect.requested
        ));
    }
    for (count, what) in [
        (e.mismatches, "mismatched"),
        (e.resets, "reset"),
        (e.unexpected_eof, "closed early"),
        (e.timeouts, "timed out"),
    ] {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    }
    if parts.is_empty() {
        "run reported failure".to_string()
    } else {
        parts.join(", ")
    }
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn show<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "?".to_string(), |x| x.to_string())
}

pub(super) fn first_line(e: &std::io::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The loadgen binary exists (built by `cargo build --release -p loadgen`),
/// and so does every server in `servers`.
pub fn check_binaries(release_dir: &Path, servers: &[&Server]) -> Result<(), String> {
    let mut missing: Vec<String> = Vec::new();
    if !release_dir.join("loadgen").exists() {
        missing.push("loadgen".into());
    }
    for server in servers {
        if !server.binary(release_dir).exists() {
            missing.push(server.name.into());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no release binary for {} in {}",
            missing.join(", "),
            release_dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(rate: u64) -> EchoPoint {
        EchoPoint {
            connections: 1,
            messages_per_sec: Some(rate),
            p99_us: Some(rate / 1000),
            ..EchoPoint::default()
        }
    }

    fn failed(rate: u64, why: &str) -> EchoPoint {
        EchoPoint {
            error: Some(why.to_string()),
            ..pass(rate)
        }
    }

    #[test]
    fn best_of_keeps_the_fastest_successful_pass() {
        let kept = best_of(vec![pass(10), failed(99, "reset"), pass(30), pass(20)]);
        assert_eq!(kept.rate(), Some(30));
        assert_eq!(kept.p99_us, Some(0));
    }

    #[test]
    fn median_of_an_odd_count_is_the_middle_pass_not_the_lucky_one() {
        let kept = median_of(vec![
            pass(9_000),
            pass(15_400),
            pass(10_000),
            pass(8_900),
            pass(10_100),
        ]);
        assert_eq!(kept.rate(), Some(10_000));
    }

    #[test]
    fn median_of_an_even_count_is_the_lower_middle_pass() {
        let kept = median_of(vec![pass(40), pass(10), pass(30), pass(20)]);
        assert_eq!(kept.rate(), Some(20));
        // The whole pass is kept, so its latency goes with its rate.
        assert_eq!(kept.p99_us, Some(0));
        assert_eq!(
            median_of(vec![pass(5_000), pass(7_000)]).rate(),
            Some(5_000)
        );
    }

    #[test]
    fn median_of_leaves_failed_passes_out() {
        let kept = median_of(vec![
            failed(1, "reset"),
            pass(30),
            failed(2, "eof"),
            pass(10),
            pass(20),
        ]);
        assert_eq!(kept.rate(), Some(20));
    }

    #[test]
    fn a_point_failed_in_every_pass_keeps_its_first_error() {
        let all_failed = || vec![failed(1, "first"), failed(2, "second")];
        assert_eq!(median_of(all_failed()).error.as_deref(), Some("first"));
        assert_eq!(best_of(all_failed()).error.as_deref(), Some("first"));
        assert_eq!(aggregate(Vec::new(), Keep::Median), EchoPoint::default());
    }

    #[test]
    fn aggregate_records_every_successful_pass_in_order() {
        let points = vec![pass(30), failed(5, "reset"), pass(10), pass(20)];
        let median = aggregate(points.clone(), Keep::Median);
        assert_eq!(median.rate(), Some(20));
        assert_eq!(median.pass_rates, vec![30, 10, 20]);
        let best = aggregate(points, Keep::Best);
        assert_eq!(best.rate(), Some(30));
        assert_eq!(best.pass_rates, vec![30, 10, 20]);
        assert_eq!(best.pass_spread(), Some(10.0 / 30.0));
    }

    #[test]
    fn spread_needs_two_passes() {
        assert_eq!(aggregate(vec![pass(10)], Keep::Best).pass_spread(), None);
        assert_eq!(
            aggregate(vec![pass(10), pass(10)], Keep::Best).pass_spread(),
            Some(1.0)
        );
    }
}
