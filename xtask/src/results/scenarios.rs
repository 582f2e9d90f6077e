//! Chapter scenarios: the measurements a chapter page shows that the
//! standard matrix does not cover. Each scenario is one small function that
//! starts the server(s) the page talks about, runs the load the page shows
//! the reader, reads the server's `summary:` line or `/proc`, and returns a
//! table of rows. A row that fails carries its error; the set goes on.
//!
//! Every table lands in `generated/<chapter>-<id>.md`, which the chapter
//! page includes, so no figure on a chapter page is typed in by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c1m_benches::{CorePlan, Server};
use loadgen::report::{EchoReport, HoldReport};
use loadgen::server::ServerProcess;

use super::data::{MemoryProbe, ScenarioRow, ScenarioSet, ScenarioTable, Settings};
use super::format::{micros, thousands};
use super::machine;
use super::measure::{self, Matrix, Timing};

/// Every table the scenarios produce, as (chapter, id). The pages include
/// `generated/<chapter>-<id>.md`; a table missing from the data (an older
/// `data.json`) renders as "not measured yet", so the include never breaks.
pub const TABLES: &[(&str, &str)] = &[
    ("ch01-thread-per-connection", "held"),
    ("ch02-epoll-level-triggered", "syscalls"),
    ("ch03-epoll-edge-triggered", "syscalls"),
    ("ch04-worker-pool", "work-200"),
    ("ch04-worker-pool", "work-0"),
    ("ch05-buffer-pool", "idle-memory"),
    ("ch06-idle-timeouts", "reap-lateness"),
    ("ch07-core-pinning", "balance"),
    ("ch07-core-pinning", "reactors"),
    ("ch07-core-pinning", "busy-reactor"),
    ("ch09-io-uring", "syscalls"),
];

/// Where a scenario table lives, under `book/src`.
pub fn table_path(chapter: &str, id: &str) -> PathBuf {
    PathBuf::from("generated").join(format!("{chapter}-{id}.md"))
}

/// The binaries and cores every scenario runs with.
struct Bench {
    release_dir: PathBuf,
    cores: CorePlan,
}

/// Builds what the scenarios need beyond the servers and loadgen, then
/// measures every scenario in turn (or only those of the chapters named in
/// `only`, when it is not empty).
pub fn measure_all(release_dir: &Path, cores: CorePlan, only: &[String]) -> ScenarioSet {
    let started = Instant::now();
    let bench = Bench {
        release_dir: release_dir.to_path_buf(),
        cores,
    };
    let wanted = |chapter: &str| only.is_empty() || only.iter().any(|c| c == chapter);
    eprintln!("\n==> chapter scenarios");
    let mut tables = Vec::new();
    if wanted("ch01-thread-per-connection") {
        tables.push(timed("ch01 threads and memory", || bench.ch01_held()));
    }
    if wanted("ch02-epoll-level-triggered") || wanted("ch03-epoll-edge-triggered") {
        let (lt, both) = timed("ch02/ch03 syscalls per message", || bench.syscalls());
        tables.push(lt);
        tables.push(both);
    }
    if wanted("ch04-worker-pool") {
        let (work_200, work_0) = timed("ch04 pool vs loop", || bench.worker_pool());
        tables.push(work_200);
        tables.push(work_0);
    }
    if wanted("ch05-buffer-pool") {
        tables.push(timed("ch05 bytes per idle connection", || {
            bench.idle_memory()
        }));
    }
    if wanted("ch06-idle-timeouts") {
        tables.push(timed("ch06 reap lateness", reap_lateness));
    }
    if wanted("ch07-core-pinning") {
        tables.push(timed("ch07 connection balance", || bench.balance()));
        tables.push(timed("ch07 reactors and pinning", || bench.reactors()));
        tables.push(timed("ch07 a starved reactor", || bench.busy_reactor()));
    }
    if wanted("ch09-io-uring") {
        tables.push(timed("ch09 syscalls per message", || {
            bench.io_uring_syscalls()
        }));
    }
    ScenarioSet {
        machine: machine::this_machine(cores),
        seconds: started.elapsed().as_secs_f64().round(),
        tables,
    }
}

/// Builds the example binaries the scenarios run (the servers and loadgen
/// come from `c1m_benches::build_release`).
pub fn build_examples() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(c1m_benches::workspace_root())
        .args(["build", "--release", "--quiet"])
        .args([
            "-p",
            "ch02-epoll-level-triggered",
            "--example",
            "slow_readers",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building the slow_readers example failed ({status})"
        ))
    }
}

fn timed<T>(what: &str, scenario: impl FnOnce() -> T) -> T {
    eprintln!("    {what} ...");
    let started = Instant::now();
    let result = scenario();
    eprintln!("    {what}: {:.0} s", started.elapsed().as_secs_f64());
    result
}

fn table(chapter: &str, id: &str, columns: &[&str]) -> ScenarioTable {
    ScenarioTable {
        chapter: chapter.to_string(),
        id: id.to_string(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: Vec::new(),
        notes: Vec::new(),
        machine: None,
        seconds: None,
    }
}

fn row(cells: Vec<String>) -> ScenarioRow {
    ScenarioRow { cells, error: None }
}

fn failed(label: &str, error: String) -> ScenarioRow {
    eprintln!("      {label}: FAILED: {error}");
    ScenarioRow {
        cells: vec![label.to_string()],
        error: Some(error),
    }
}

/// `key=value` pairs of a `summary:` line, numbers only.
fn summary_counts(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Stops a server with SIGINT and returns the counters of its summary line.
pub(super) fn summary_of(process: ServerProcess) -> Result<BTreeMap<String, u64>, String> {
    let shutdown = process
        .shutdown()
        .map_err(|e| format!("stopping the server: {e}"))?;
    let line = shutdown
        .summary_line()
        .ok_or_else(|| "the server printed no summary line".to_string())?;
    Ok(summary_counts(line))
}

fn count(counts: &BTreeMap<String, u64>, key: &str) -> Result<u64, String> {
    counts
        .get(key)
        .copied()
        .ok_or_else(|| format!("the summary has no {key}="))
}

/// A count as `12,345`.
fn n(x: u64) -> String {
    thousands(x)
}

fn pct(x: f64) -> String {
    format!("{x:.0}%")
}

fn times(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".to_string()
    }
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", thousands(bytes / 1024))
}

/// `/proc/PID/status` fields, in kB as the kernel prints them.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn maps_lines(pid: u32) -> Option<usize> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .ok()?
            .lines()
            .count(),
    )
}

impl Bench {
    fn binary(&self, name: &str) -> PathBuf {
        self.release_dir.join(name)
    }

    /// A server pinned to the server core, as the matrix runs them.
    fn start_pinned(&self, name: &str, args: &[&str]) -> Result<ServerProcess, String> {
        let mut builder = ServerProcess::builder(self.binary(name)).args(args);
        if let Some(core) = self.cores.server {
            builder = builder.cpu(core);
        }
        builder
            .spawn()
            .map_err(|e| format!("server did not start: {}", measure::first_line(&e)))
    }

    /// A server the scheduler places: for servers with more threads than
    /// one core (worker pools, several reactors).
    fn start_unpinned(&self, name: &str, args: &[&str]) -> Result<ServerProcess, String> {
        ServerProcess::builder(self.binary(name))
            .args(args)
            .spawn()
            .map_err(|e| format!("server did not start: {}", measure::first_line(&e)))
    }

    /// `loadgen MODE --addr … --server-pid … --json`, on the load core if `pin_load`.
    fn loadgen(&self, mode: &str, server: &ServerProcess, pin_load: bool) -> Command {
        let mut command = Command::new(self.binary("loadgen"));
        command
            .arg(mode)
            .args(["--addr", &server.addr().to_string()])
            .args(["--server-pid", &server.pid().to_string()])
            .arg("--json");
        if let (true, Some(core)) = (pin_load, self.cores.load) {
            command.args(["--cpu", &core.to_string()]);
        }
        command
    }

    // -----------------------------------------------------------------------
    // Chapter 01: threads and memory while holding connections.

    // ANCHOR: ch01_held
    /// Holds 2,000 idle connections on chapter 01 with two stack sizes and
    /// reads `Threads`, `VmRSS`, `VmSize` and the mapping count before and
    /// while holding them.
    fn ch01_held(&self) -> ScenarioTable {
        const HELD: usize = 2_000;
        let mut t = table(
            "ch01-thread-per-connection",
            "held",
            &[
                "server flags",
                "`Threads` idle → held",
                "`VmRSS` idle → held",
                "RSS per connection",
                "`VmSize` idle → held",
                "`/proc/PID/maps` lines held",
                "maps lines per connection",
            ],
        );
        for stack in ["128", "2048"] {
            let label = format!("`--stack-kib {stack}`");
            match self.ch01_hold(&["--stack-kib", stack], HELD) {
                Ok(cells) => {
                    let mut all = vec![label];
                    all.extend(cells);
                    t.rows.push(row(all));
                }
                Err(e) => t.rows.push(failed(&label, e)),
            }
        }
        t
    }
    // ANCHOR_END: ch01_held

    fn ch01_hold(&self, args: &[&str], held: usize) -> Result<Vec<String>, String> {
        let process = self.start_pinned("ch01-thread-per-connection", args)?;
        let pid = process.pid();
        let read = |pid| -> Result<(usize, u64, u64, usize), String> {
            let threads = status_kib(pid, "Threads").ok_or("no Threads in /proc")? as usize;
            let rss = status_kib(pid, "VmRSS").ok_or("no VmRSS in /proc")?;
            let size = status_kib(pid, "VmSize").ok_or("no VmSize in /proc")?;
            let maps = maps_lines(pid).ok_or("cannot read /proc/PID/maps")?;
            Ok((threads, rss, size, maps))
        };
        let idle = read(pid)?;
        let mut hold = self.loadgen("hold", &process, true);
        hold.args(["--conns", &held.to_string()])
            .args(["--rate", "1000", "--hold", "10"]);
        let child = hold
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run loadgen: {e}"))?;
        // stdin, stdout, stderr and the listener, plus one per connection: the
        // least a server holding them all can have open. (Not "idle count +
        // held": a descriptor open for a moment at start would make that
        // unreachable.)
        let all_held = wait_for_fds(&process, 4 + held, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        let holding = read(pid);
        let report = measure::collect_json::<HoldReport>(child)?;
        let _ = process.shutdown();
        if !report.ok {
            return Err(format!(
                "{} of {held} connections held, {} lost, {} of {} pings answered",
                report.connect.established,
                report.connections_lost,
                report.pings_ok,
                report.pings_sent
            ));
        }
        if !all_held {
            return Err(format!(
                "the server never held all {held} connections at once"
            ));
        }
        let (threads, rss, size, maps) = holding?;
        let per_conn = rss.saturating_sub(idle.1) as f64 * 1024.0 / held as f64;
        Ok(vec![
            format!("{} → {}", n(idle.0 as u64), n(threads as u64)),
            format!("{} kB → {} kB", n(idle.1), n(rss)),
            format!("{:.1} KiB", per_conn / 1024.0),
            format!("{} kB → {} kB", n(idle.2), n(size)),
            n(maps as u64),
            format!(
                "{:.1}",
                maps.saturating_sub(idle.3) as f64 / threads.saturating_sub(idle.0).max(1) as f64
            ),
        ])
    }

    // -----------------------------------------------------------------------
    // Chapters 02 and 03: system calls per message.

    // ANCHOR: syscalls
    /// The two workloads of chapters 02 and 03, each on a fresh server so the
    /// summary's counters cover exactly one run: (a) 300,000 64-byte
    /// messages over 100 connections, (b) 10 slow readers of 256 KiB
    /// messages. Returns chapter 02's table and chapter 03's (both servers).
    fn syscalls(&self) -> (ScenarioTable, ScenarioTable) {
        let columns = [
            "workload",
            "server",
            "messages",
            "epoll_wait",
            "epoll_ctl",
            "read",
            "write",
            "syscalls / message",
            "requeued",
        ];
        let mut lt = table("ch02-epoll-level-triggered", "syscalls", &columns);
        let mut both = table("ch03-epoll-edge-triggered", "syscalls", &columns);
        let servers = [
            ("02 LT", "ch02-epoll-level-triggered"),
            ("03 ET", "ch03-epoll-edge-triggered"),
        ];
        let mut waits: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut per_message: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        for (workload, label) in [
            ("(a)", "(a) 64 B ping-pong, 100 conns"),
            ("(b)", "(b) 256 KiB, 10 slow readers"),
        ] {
            for (short, server) in servers {
                let measured = if workload == "(a)" {
                    self.ping_pong_counts(server)
                } else {
                    self.slow_reader_counts(server)
                };
                let r = match measured.and_then(|(messages, counts)| {
                    let get = |k| count(&counts, k);
                    let (w, c, rd, wr) = (
                        get("epoll_wait")?,
                        get("epoll_ctl")?,
                        get("read")?,
                        get("write")?,
                    );
                    let calls = (w + c + rd + wr) as f64 / messages.max(1) as f64;
                    waits.insert((workload, short), w);
                    per_message.insert((workload, short), calls);
                    Ok(vec![
                        label.to_string(),
                        short.to_string(),
                        n(messages),
                        n(w),
                        n(c),
                        n(rd),
                        n(wr),
                        format!("{calls:.2}"),
                        counts.get("requeued").map_or("–".to_string(), |&q| n(q)),
                    ])
                }) {
                    Ok(cells) => row(cells),
                    Err(e) => failed(&format!("{label}, {short}"), e),
                };
                if short == "02 LT" {
                    lt.rows.push(r.clone());
                }
                both.rows.push(r);
            }
        }
        for (workload, what) in [("(a)", "ping-pong"), ("(b)", "slow readers")] {
            if let (Some(&l), Some(&e)) = (
                per_message.get(&(workload, "02 LT")),
                per_message.get(&(workload, "03 ET")),
            ) {
                let (wl, we) = (
                    waits.get(&(workload, "02 LT")).copied().unwrap_or(0),
                    waits.get(&(workload, "03 ET")).copied().unwrap_or(0),
                );
                both.notes.push(format!(
                    "{what}, 03 ET against 02 LT: {} the system calls per message, {} the \
                     `epoll_wait` calls.",
                    times(e, l),
                    times(we as f64, wl as f64)
                ));
            }
        }
        (lt, both)
    }
    // ANCHOR_END: syscalls

    // ANCHOR: io_uring_syscalls
    /// Chapter 09: workload (a) of chapters 02/03 (300,000 64-byte messages
    /// over 100 connections) on chapter 03 and on chapter 09, with and
    /// without `--sqpoll`. Chapter 03's calls are its summary's
    /// `epoll_wait`, `epoll_ctl`, `read` and `write`; chapter 09's are its
    /// `io_uring_enter` calls (and `accept4`, used only to shed).
    fn io_uring_syscalls(&self) -> ScenarioTable {
        let columns = [
            "server",
            "messages",
            "system calls",
            "syscalls / message",
            "completions / enter",
        ];
        let mut t = table("ch09-io-uring", "syscalls", &columns);
        let mut per_message: BTreeMap<&str, f64> = BTreeMap::new();
        let servers: [(&str, &str, &[&str]); 3] = [
            ("03 ET", "ch03-epoll-edge-triggered", &[]),
            // One worker process, as in the matrix (SERVERS).
            ("09 io_uring", "ch09-io-uring", &["--procs", "1"]),
            (
                "09 io_uring --sqpoll",
                "ch09-io-uring",
                &["--procs", "1", "--sqpoll"],
            ),
        ];
        for (label, server, args) in servers {
            let r = self
                .ping_pong_counts_with(server, args)
                .and_then(|(messages, counts)| {
                    let get = |k| count(&counts, k);
                    let (calls, per_enter) = if server == "ch09-io-uring" {
                        let enters = get("io_uring_enter")?;
                        let per_enter = get("completions")? as f64 / enters.max(1) as f64;
                        (enters + get("accept")?, format!("{per_enter:.1}"))
                    } else {
                        (
                            get("epoll_wait")? + get("epoll_ctl")? + get("read")? + get("write")?,
                            "–".to_string(),
                        )
                    };
                    let per = calls as f64 / messages.max(1) as f64;
                    per_message.insert(label, per);
                    Ok(vec![
                        label.to_string(),
                        n(messages),
                        n(calls),
                        format!("{per:.3}"),
                        per_enter,
                    ])
                });
            t.rows.push(match r {
                Ok(cells) => row(cells),
                Err(e) => failed(label, e),
            });
        }
        if let (Some(&et), Some(&uring)) =
            (per_message.get("03 ET"), per_message.get("09 io_uring"))
        {
            t.notes.push(format!(
                "ping-pong, 100 connections: chapter 09 makes {} the system calls per message of \
                 chapter 03.",
                times(uring, et)
            ));
        }
        t
    }
    // ANCHOR_END: io_uring_syscalls

    /// (a): exactly 300,000 messages; the count is loadgen's, so it is exact.
    fn ping_pong_counts(&self, server: &str) -> Result<(u64, BTreeMap<String, u64>), String> {
        self.ping_pong_counts_with(server, &[])
    }

    /// (a) with extra server flags.
    fn ping_pong_counts_with(
        &self,
        server: &str,
        args: &[&str],
    ) -> Result<(u64, BTreeMap<String, u64>), String> {
        const MESSAGES: u64 = 300_000;
        let process = self.start_pinned(server, args)?;
        let mut echo = self.loadgen("echo", &process, true);
        echo.args(["--conns", "100", "--size", "64"])
            .args(["--messages", &MESSAGES.to_string()]);
        let report = measure::run_json::<EchoReport>(&mut echo);
        let counts = summary_of(process)?;
        let report = report?;
        if !report.ok {
            return Err(measure::echo_failure(&report));
        }
        Ok((MESSAGES, counts))
    }

    /// (b): the `slow_readers` example, on the load core; it prints how
    /// many messages it sent.
    fn slow_reader_counts(&self, server: &str) -> Result<(u64, BTreeMap<String, u64>), String> {
        let process = self.start_pinned(server, &[])?;
        let example = self.release_dir.join("examples").join("slow_readers");
        let addr = process.addr().to_string();
        let args = [addr.as_str(), "10", "32"];
        let mut command = match self.cores.load {
            Some(core) if Path::new("/usr/bin/taskset").exists() => {
                let mut c = Command::new("/usr/bin/taskset");
                c.args(["-c", &core.to_string()]).arg(&example).args(args);
                c
            }
            _ => {
                let mut c = Command::new(&example);
                c.args(args);
                c
            }
        };
        let output = command
            .output()
            .map_err(|e| format!("cannot run {}: {e}", example.display()));
        let counts = summary_of(process)?;
        let output = output?;
        if !output.status.success() {
            return Err(format!("slow_readers failed ({})", output.status));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let messages = summary_counts(&stdout)
            .get("messages")
            .copied()
            .ok_or("slow_readers printed no messages=")?;
        Ok((messages, counts))
    }

    // -----------------------------------------------------------------------
    // Chapter 04: work on the loop against work on a pool.

    // ANCHOR: worker_pool
    /// Chapter 03 (work on the loop) against chapter 04 with each pool, at
    /// `--work-us 200` (where `--offload auto` hands every read to the pool)
    /// and at 0 (where it hands none over; `--offload always` shows what the
    /// hand-off alone costs); 100 connections, 64-byte messages. The
    /// servers are not pinned: chapter 04's workers need both cores.
    fn worker_pool(&self) -> (ScenarioTable, ScenarioTable) {
        type Row = (&'static str, &'static str, &'static [&'static str]);
        let at_200: &[Row] = &[
            ("03, work on the loop", "ch03-epoll-edge-triggered", &[]),
            ("04 `--pool hand`", "ch04-worker-pool", &["--pool", "hand"]),
            (
                "04 `--pool rayon`",
                "ch04-worker-pool",
                &["--pool", "rayon"],
            ),
        ];
        let at_0: &[Row] = &[
            ("03, work on the loop", "ch03-epoll-edge-triggered", &[]),
            ("04 `--offload auto`: on the loop", "ch04-worker-pool", &[]),
            (
                "04 `--offload always --pool hand`",
                "ch04-worker-pool",
                &["--offload", "always", "--pool", "hand"],
            ),
            (
                "04 `--offload always --pool rayon`",
                "ch04-worker-pool",
                &["--offload", "always", "--pool", "rayon"],
            ),
        ];
        let columns = [
            "server",
            "msgs/s",
            "vs 03",
            "RTT p50",
            "RTT p99",
            "server CPU",
            "server CPU-µs/msg",
        ];
        let mut out = Vec::new();
        for (work, servers) in [("200", at_200), ("0", at_0)] {
            let mut t = table("ch04-worker-pool", &format!("work-{work}"), &columns);
            let mut loop_rate = None;
            let mut cpu_per_message = Vec::new();
            for &(label, server, args) in servers {
                let mut all = args.to_vec();
                all.extend(["--work-us", work]);
                match self.echo_unpinned(server, &all, 100) {
                    Ok(report) => {
                        let rate = report.messages_per_sec;
                        let base = *loop_rate.get_or_insert(rate);
                        let cpu = report.cpu.server.as_ref();
                        cpu_per_message.push(cpu.and_then(|c| c.us_per_message));
                        t.rows.push(row(vec![
                            label.to_string(),
                            n(rate.round() as u64),
                            times(rate, base),
                            micros(report.rtt_us.p50_us),
                            micros(report.rtt_us.p99_us),
                            cpu.map_or("–".into(), |c| pct(c.percent_of_core)),
                            cpu.and_then(|c| c.us_per_message)
                                .map_or("–".into(), |us| format!("{us:.1}")),
                        ]));
                    }
                    Err(e) => {
                        cpu_per_message.push(None);
                        t.rows.push(failed(label, e));
                    }
                }
            }
            // At work 0, rows 2 and 3 differ only by the hand-off.
            if let (Some(Some(inline)), Some(Some(handed))) =
                (cpu_per_message.get(1), cpu_per_message.get(2))
                && work == "0"
            {
                t.notes.push(format!(
                    "The hand-off alone (a copy, the channel, a worker wake-up, the eventfd, \
                     taking the result back) cost {:.1} µs of server CPU per message here: \
                     {handed:.1} µs with `--offload always` against {inline:.1} µs with the \
                     work on the loop.",
                    handed - inline
                ));
            }
            out.push(t);
        }
        let work_0 = out
            .pop()
            .unwrap_or_else(|| table("ch04-worker-pool", "work-0", &[]));
        let work_200 = out
            .pop()
            .unwrap_or_else(|| table("ch04-worker-pool", "work-200", &[]));
        (work_200, work_0)
    }
    // ANCHOR_END: worker_pool

    /// One closed-loop echo run (1 s warm-up, 3 s measured) against an
    /// unpinned server, loadgen on the load core.
    fn echo_unpinned(
        &self,
        server: &str,
        args: &[&str],
        conns: usize,
    ) -> Result<EchoReport, String> {
        let process = self.start_unpinned(server, args)?;
        let mut echo = self.loadgen("echo", &process, true);
        echo.args(["--conns", &conns.to_string(), "--size", "64"])
            .args(["--warmup", "1", "--duration", "3"]);
        let report = measure::run_json::<EchoReport>(&mut echo);
        let _ = process.shutdown();
        let report = report?;
        if !report.ok {
            return Err(measure::echo_failure(&report));
        }
        Ok(report)
    }

    // -----------------------------------------------------------------------
    // Chapter 05: bytes per idle connection.

    // ANCHOR: idle_memory
    /// The matrix's memory probe at 19,000 idle connections (what one
    /// process can hold under this machine's descriptor limit) for chapters
    /// 02–05 and the baselines, and at 5,000 for chapter 01, whose threads
    /// run into `vm.max_map_count` long before 19,000.
    fn idle_memory(&self) -> ScenarioTable {
        let mut t = table(
            "ch05-buffer-pool",
            "idle-memory",
            &[
                "server",
                "connections held",
                "RSS before",
                "RSS holding them",
                "userland bytes per idle connection",
                "threads",
            ],
        );
        let plan: [(&str, usize); 8] = [
            ("ch01-thread-per-connection", 5_000),
            ("ch02-epoll-level-triggered", 19_000),
            ("ch03-epoll-edge-triggered", 19_000),
            ("ch04-worker-pool", 19_000),
            ("ch05-buffer-pool", 19_000),
            ("tokio-echo", 19_000),
            ("mio-echo", 19_000),
            // Only where a Go toolchain is installed (no row otherwise).
            ("go-echo", 19_000),
        ];
        let available = c1m_benches::available();
        for (name, connections) in plan {
            let label = format!("`{name}`");
            let Some(server) = c1m_benches::server(name) else {
                t.rows.push(failed(&label, "not in SERVERS".to_string()));
                continue;
            };
            if !available.contains(&server) {
                continue;
            }
            let probe = self.memory_probe(server, connections);
            let cells = || -> Option<Vec<String>> {
                Some(vec![
                    label.clone(),
                    n(connections as u64),
                    kib(probe.rss_idle_bytes?),
                    kib(probe.rss_held_bytes?),
                    n(probe.bytes_per_connection()?.round() as u64),
                    n(probe.threads_held? as u64),
                ])
            };
            match (&probe.error, cells()) {
                (None, Some(cells)) => t.rows.push(row(cells)),
                (Some(e), _) => t.rows.push(failed(&label, e.clone())),
                (None, None) => t.rows.push(failed(&label, "no reading".to_string())),
            }
        }
        t
    }
    // ANCHOR_END: idle_memory

    fn memory_probe(&self, server: &Server, connections: usize) -> MemoryProbe {
        let matrix = Matrix {
            release_dir: self.release_dir.clone(),
            cores: self.cores,
            timing: Timing {
                warmup: Duration::ZERO,
                measure: Duration::ZERO,
                hold: Duration::from_secs(2),
            },
            settings: Settings {
                quick: false,
                message_size: c1m_benches::MESSAGE_SIZE,
                warmup_seconds: 0.0,
                measure_seconds: 0.0,
                passes: 1,
                one_connection_passes: 0,
                connection_counts: Vec::new(),
                work_us: 0,
                work_connections: 0,
                idle_connections: connections,
                reference: c1m_benches::REFERENCE.to_string(),
                floor: None,
                pipeline_depth: 0,
                pipeline_connections: 0,
            },
        };
        matrix.memory(server)
    }

    // -----------------------------------------------------------------------
    // Chapter 07: where connections go, and one reactor against two.

    // ANCHOR: balance
    /// Per-reactor accepted counts from the summary line for both balancing
    /// modes: a burst of 10,000 connections as fast as loadgen opens them,
    /// and a trickle of 1,000 at 500 a second.
    fn balance(&self) -> ScenarioTable {
        let mut t = table(
            "ch07-core-pinning",
            "balance",
            &[
                "load",
                "server flags",
                "reactor 0",
                "reactor 1",
                "busier reactor's share",
            ],
        );
        let burst: &[&str] = &["--conns", "10000", "--hold", "2"];
        let trickle: &[&str] = &["--conns", "1000", "--rate", "500", "--hold", "2"];
        let runs: [(&str, &[&str], &[&str]); 6] = [
            ("burst of 10,000", burst, &["--threads", "2"]),
            ("burst of 10,000", burst, &["--threads", "2", "--pin"]),
            (
                "burst of 10,000",
                burst,
                &["--threads", "2", "--balance", "exclusive"],
            ),
            (
                "burst of 10,000",
                burst,
                &["--threads", "2", "--pin", "--balance", "exclusive"],
            ),
            ("1,000 at 500/s", trickle, &["--threads", "2"]),
            (
                "1,000 at 500/s",
                trickle,
                &["--threads", "2", "--balance", "exclusive"],
            ),
        ];
        for (load, hold_args, flags) in runs {
            let label = format!("`{}`", flags.join(" "));
            match self.reactor_split(flags, hold_args) {
                Ok((r0, r1)) => {
                    let share = r0.max(r1) as f64 * 100.0 / (r0 + r1).max(1) as f64;
                    t.rows
                        .push(row(vec![load.to_string(), label, n(r0), n(r1), pct(share)]));
                }
                Err(e) => t.rows.push(failed(&format!("{load}, {label}"), e)),
            }
        }
        t
    }
    // ANCHOR_END: balance

    fn reactor_split(&self, flags: &[&str], hold_args: &[&str]) -> Result<(u64, u64), String> {
        let process = self.start_unpinned("ch07-core-pinning", flags)?;
        let mut hold = self.loadgen("hold", &process, false);
        hold.args(hold_args);
        let report = measure::run_json::<HoldReport>(&mut hold);
        let counts = summary_of(process)?;
        let report = report?;
        if !report.ok {
            return Err(format!(
                "{} connections held, {} lost",
                report.connect.established, report.connections_lost
            ));
        }
        Ok((
            count(&counts, "reactor0_accepted")?,
            count(&counts, "reactor1_accepted")?,
        ))
    }

    // ANCHOR: reactors
    /// One reactor or two, pinned or not: 100 connections in closed loop,
    /// 64-byte messages, 1 s warm-up and 3 s measured, server unpinned by
    /// the harness (`--pin` is the server's own).
    fn reactors(&self) -> ScenarioTable {
        let mut t = table(
            "ch07-core-pinning",
            "reactors",
            &[
                "server flags",
                "messages/s",
                "vs `--threads 1`",
                "server CPU, % of a core",
                "server CPU µs per message",
                "RTT p99",
            ],
        );
        let mut one = None;
        for flags in [
            &["--threads", "1"][..],
            &["--threads", "2"],
            &["--threads", "1", "--pin"],
            &["--threads", "2", "--pin"],
        ] {
            let label = format!("`{}`", flags.join(" "));
            match self.echo_unpinned("ch07-core-pinning", flags, 100) {
                Ok(report) => {
                    let rate = report.messages_per_sec;
                    let base = *one.get_or_insert(rate);
                    let cpu = report.cpu.server.as_ref();
                    t.rows.push(row(vec![
                        label,
                        n(rate.round() as u64),
                        times(rate, base),
                        cpu.map_or("–".into(), |c| pct(c.percent_of_core)),
                        cpu.and_then(|c| c.us_per_message)
                            .map_or("–".into(), |us| format!("{us:.1}")),
                        micros(report.rtt_us.p99_us),
                    ]));
                }
                Err(e) => t.rows.push(failed(&label, e)),
            }
        }
        t
    }
    // ANCHOR_END: reactors

    // ANCHOR: busy_reactor
    /// A reactor that cannot keep up: `--threads 2 --pin`, CPU 0 (reactor
    /// 0's) taken by a higher-priority spinning process (`taskset -c 0 nice
    /// -n -15 sh -c 'while :; do :; done'`, the page's command) while 100
    /// clients connect in one burst and echo 64-byte messages for 4 s.
    /// Twice for each balancing mode: where the connections went, and what
    /// their clients waited.
    fn busy_reactor(&self) -> ScenarioTable {
        let mut t = table(
            "ch07-core-pinning",
            "busy-reactor",
            &[
                "server flags",
                "run",
                "reactor 0 (CPU 0 taken)",
                "reactor 1",
                "RTT p50",
                "RTT p99",
            ],
        );
        for flags in [
            &["--threads", "2", "--pin"][..],
            &["--threads", "2", "--pin", "--balance", "exclusive"],
        ] {
            let label = format!("`{}`", flags.join(" "));
            for run in 1..=2 {
                match self.starved_run(flags) {
                    Ok((r0, r1, report)) => t.rows.push(row(vec![
                        label.clone(),
                        run.to_string(),
                        n(r0),
                        n(r1),
                        micros(report.rtt_us.p50_us),
                        micros(report.rtt_us.p99_us),
                    ])),
                    Err(e) => t.rows.push(failed(&format!("{label}, run {run}"), e)),
                }
            }
        }
        t
    }
    // ANCHOR_END: busy_reactor

    fn starved_run(&self, flags: &[&str]) -> Result<(u64, u64, EchoReport), String> {
        let process = self.start_unpinned("ch07-core-pinning", flags)?;
        let mut hog = Command::new("taskset")
            .args([
                "-c",
                "0",
                "nice",
                "-n",
                "-15",
                "sh",
                "-c",
                "while :; do :; done",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the CPU hog (taskset, from util-linux): {e}"))?;
        // Let the hog take the core before the clients arrive.
        std::thread::sleep(Duration::from_millis(300));
        let mut echo = self.loadgen("echo", &process, false);
        echo.args(["--conns", "100", "--size", "64", "--duration", "4"]);
        let report = measure::run_json::<EchoReport>(&mut echo);
        let _ = hog.kill();
        let _ = hog.wait();
        let counts = summary_of(process)?;
        let report = report?;
        if !report.ok {
            return Err(measure::echo_failure(&report));
        }
        Ok((
            count(&counts, "reactor0_accepted")?,
            count(&counts, "reactor1_accepted")?,
            report,
        ))
    }
}

// ---------------------------------------------------------------------------
// Chapter 06: how late the reaper closes an idle connection.

// ANCHOR: reap_lateness
/// Runs chapter 06's ignored `measure_reap_lateness` test, exactly the
/// command the page shows, and tabulates the lines it prints. The test
/// itself asserts that no connection was closed before its timeout, so a
/// table with rows is also a run in which none was.
fn reap_lateness() -> ScenarioTable {
    let mut t = table(
        "ch06-idle-timeouts",
        "reap-lateness",
        &[
            "timeout",
            "counted from",
            "clients",
            "min",
            "p50",
            "p99",
            "max",
        ],
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(c1m_benches::workspace_root())
        .args(["test", "--release", "--quiet", "-p", "ch06-idle-timeouts"])
        .args(["--test", "idle_timeouts", "--", "--ignored", "--nocapture"])
        .arg("measure_reap_lateness")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            t.rows.push(failed(
                "measure_reap_lateness",
                format!("cannot run cargo: {e}"),
            ));
            return t;
        }
    };
    if !output.status.success() {
        t.rows.push(failed(
            "measure_reap_lateness",
            format!("the test failed ({})", output.status),
        ));
        return t;
    }
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("measure_reap_lateness: ") else {
            continue;
        };
        // clients=200 timeout=1s closed_after_timeout_ms(since_sent) min=.. p50=.. p99=.. max=..
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("?")
                .to_string()
        };
        let from = rest
            .split_once("closed_after_timeout_ms(")
            .and_then(|(_, r)| r.split_once(')'))
            .map_or("?", |(what, _)| what);
        let ms = |key: &str| format!("{} ms", field(key));
        t.rows.push(row(vec![
            field("timeout"),
            format!("`{from}`"),
            field("clients"),
            ms("min"),
            ms("p50"),
            ms("p99"),
            ms("max"),
        ]));
    }
    if t.rows.is_empty() {
        t.rows.push(failed(
            "measure_reap_lateness",
            "the test printed no measure_reap_lateness lines".to_string(),
        ));
    }
    t
}
// ANCHOR_END: reap_lateness

/// Waits until the server holds at least `fds` descriptors.
fn wait_for_fds(process: &ServerProcess, fds: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process.open_fds().unwrap_or(0) >= fds {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_reads_numeric_pairs_only() {
        let counts = summary_counts("summary: connections_served=12 epoll_wait=340 pool=hand");
        assert_eq!(counts.get("connections_served"), Some(&12));
        assert_eq!(counts.get("epoll_wait"), Some(&340));
        assert_eq!(counts.get("pool"), None);
    }

    #[test]
    fn every_table_has_a_distinct_file() {
        for (i, (c, id)) in TABLES.iter().enumerate() {
            assert!(
                TABLES[i + 1..].iter().all(|(c2, id2)| (c2, id2) != (c, id)),
                "{c}-{id} listed twice"
            );
        }
    }
}
