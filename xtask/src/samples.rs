//! `cargo xtask samples`: the program output the book shows, captured by
//! running the programs.
//!
//! Every code block on a page that shows what a program printed (a server's
//! `listening on` and `summary:` lines, loadgen's report, ch08's status
//! lines and `/metrics`, the doctor's table, …) includes a file
//! `book/src/generated/samples/NAME.txt` that this command writes: the
//! command line as a reader would type it (`$ …`), then what it printed.
//! Servers run on loopback on ports the kernel chose (port 0), shown as the
//! page's `7878` (and `9100` for metrics); connections and seconds are
//! bounded; every process started here is stopped here. Where a page
//! discusses only some lines, the [`Sample`]'s recorder keeps those by a rule
//! written below, never by hand.
//!
//! - `cargo xtask samples` records every sample (a minute or so);
//!   `--only NAME` one of them.
//! - `cargo xtask samples --walkthrough [--conns N]` records chapter 08's
//!   "200,000 connections by hand" (run it under
//!   `flock -x /tmp/c1m-quiet.lock`, with the host tuning appendix's sysctls).
//! - `cargo xtask samples --check` (in the test command) re-runs the cheap
//!   samples and the walk-through at a small bound into a temporary directory
//!   and compares each file's *shape* with the recorded one: numbers masked,
//!   so timing never matters, but a changed output format (a counter added to
//!   a summary, a renamed line) makes the recorded sample stale and fails,
//!   naming the file and the command that re-records it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Args;
use regex::Regex;

use crate::run::{TaskError, TaskResult, cargo, workspace_root};

#[derive(Args)]
pub struct SamplesArgs {
    /// Re-run the cheap samples (and the walk-through at 2,000 connections) into a
    /// temporary directory and compare their shape, numbers masked, with the recorded
    /// files.
    #[arg(long, conflicts_with_all = ["only", "walkthrough"])]
    check: bool,
    /// Record only this sample (repeatable; see --list).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Record chapter 08's walk-through (prefork server, hold N connections, status,
    /// /metrics, kill a worker, summary) instead of the samples.
    #[arg(long)]
    walkthrough: bool,
    /// Connections the walk-through holds.
    #[arg(
        long,
        default_value_t = 200_000,
        value_name = "N",
        requires = "walkthrough"
    )]
    conns: u64,
    /// List the samples, their files and pages.
    #[arg(long)]
    list: bool,
}

/// Where the samples live, relative to the workspace root.
pub const SAMPLES_DIR: &str = "book/src/generated/samples";

/// The port the pages show for a server, and for its metrics.
const SHOWN_PORT: u16 = 7878;
const SHOWN_METRICS_PORT: u16 = 9100;

/// Connections the walk-through holds in the check.
const CHECK_WALKTHROUGH_CONNS: u64 = 2_000;

/// How big a run is: what the page shows, or the smallest run with the same
/// shape of output.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Scale {
    Book,
    Check,
}

impl Scale {
    fn pick<T>(self, book: T, check: T) -> T {
        match self {
            Scale::Book => book,
            Scale::Check => check,
        }
    }
}

/// One recorded file: the commands as typed, then the output.
#[derive(Debug, Default, Clone, PartialEq)]
struct Recording {
    commands: Vec<String>,
    output: Vec<String>,
}

impl Recording {
    fn new(commands: &[String], output: Vec<String>) -> Recording {
        Recording {
            commands: commands.to_vec(),
            output,
        }
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for command in &self.commands {
            text.push_str("$ ");
            text.push_str(command);
            text.push('\n');
        }
        for line in &self.output {
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// How a file's shape is compared in `--check`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    /// Every line with its numbers masked: a new counter, a renamed field or
    /// a new line changes it.
    Masked,
    /// Only the first word of each line: for output whose lines depend on
    /// the host or the scale (the doctor's notes, loadgen's spread line).
    FirstWords,
    /// Only the command and the first N lines of output, masked: for output
    /// whose rows depend on the host (the doctor's checks and notes).
    Head(usize),
}

/// One run that writes one or more sample files.
struct Sample {
    name: &'static str,
    /// The files it writes (without `.txt`) and how each is compared.
    files: &'static [(&'static str, Shape)],
    /// The page that includes them.
    page: &'static str,
    /// Re-run by `--check`.
    cheap: bool,
    record: fn(&Ctx) -> Result<Vec<Recording>, String>,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "ch01-run",
        files: &[
            ("ch01-loadgen-echo", Shape::FirstWords),
            ("ch01-threads", Shape::Masked),
            ("ch01-summary", Shape::Masked),
        ],
        page: "ch01-thread-per-connection.md",
        cheap: true,
        record: ch01_run,
    },
    Sample {
        name: "ch01-spawn-failure",
        files: &[("ch01-spawn-failure", Shape::Masked)],
        page: "ch01-thread-per-connection.md",
        cheap: true,
        record: ch01_spawn_failure,
    },
    Sample {
        name: "ch02-run",
        files: &[("ch02-run", Shape::Masked)],
        page: "ch02-epoll-level-triggered.md",
        cheap: true,
        record: ch02_run,
    },
    Sample {
        name: "ch03-run",
        files: &[("ch03-run", Shape::Masked)],
        page: "ch03-epoll-edge-triggered.md",
        cheap: true,
        record: ch03_run,
    },
    Sample {
        name: "ch03-et-read-once",
        files: &[("ch03-et-read-once", Shape::Masked)],
        page: "ch03-epoll-edge-triggered.md",
        // A test that waits 5 s for an echo that never comes, in a debug build.
        cheap: false,
        record: ch03_et_read_once,
    },
    Sample {
        name: "ch04-run",
        files: &[("ch04-run", Shape::Masked)],
        page: "ch04-worker-pool.md",
        cheap: true,
        record: ch04_run,
    },
    Sample {
        name: "ch05-run",
        files: &[("ch05-run", Shape::Masked)],
        page: "ch05-buffer-pool.md",
        cheap: true,
        record: ch05_run,
    },
    Sample {
        name: "ch05-idle-rss",
        files: &[("ch05-idle-rss", Shape::Masked)],
        page: "ch05-buffer-pool.md",
        cheap: true,
        record: ch05_idle_rss,
    },
    Sample {
        name: "ch06-run",
        files: &[("ch06-run", Shape::Masked)],
        page: "ch06-idle-timeouts.md",
        cheap: true,
        record: ch06_run,
    },
    Sample {
        name: "ch07-run",
        files: &[
            ("ch07-run", Shape::Masked),
            ("ch07-cpus", Shape::FirstWords),
        ],
        page: "ch07-core-pinning.md",
        cheap: true,
        record: ch07_run,
    },
    Sample {
        name: "ch08-run",
        files: &[
            ("ch08-run-stdout", Shape::Masked),
            ("ch08-run-stderr", Shape::Masked),
            ("ch08-run-metrics", Shape::Masked),
        ],
        page: "ch08-million-connections.md",
        cheap: true,
        record: ch08_run,
    },
    Sample {
        name: "doctor",
        files: &[("doctor", Shape::Head(2))],
        page: "appendix-host-tuning.md",
        cheap: true,
        record: doctor,
    },
];

/// The walk-through's files, in the order of its steps.
const WALKTHROUGH_FILES: &[(&str, Shape)] = &[
    ("ch08-walkthrough-server", Shape::FirstWords),
    ("ch08-walkthrough-meminfo", Shape::FirstWords),
    ("ch08-walkthrough-loadgen", Shape::FirstWords),
    ("ch08-walkthrough-status", Shape::Masked),
    ("ch08-walkthrough-metrics", Shape::Masked),
    ("ch08-walkthrough-restart", Shape::Masked),
    ("ch08-walkthrough-summary", Shape::Masked),
];

/// What every recorder needs: where the binaries are, and how big to run.
struct Ctx {
    bin: PathBuf,
    scale: Scale,
}

impl Ctx {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

pub fn run(args: &SamplesArgs) -> TaskResult {
    if args.list {
        for sample in SAMPLES {
            let files: Vec<&str> = sample.files.iter().map(|(f, _)| *f).collect();
            println!(
                "{:<20} {:<32} {}{}",
                sample.name,
                sample.page,
                files.join(", "),
                if sample.cheap {
                    ""
                } else {
                    "  (not in --check)"
                }
            );
        }
        let files: Vec<&str> = WALKTHROUGH_FILES.iter().map(|(f, _)| *f).collect();
        println!(
            "{:<20} {:<32} {}",
            "--walkthrough",
            "ch08-million-connections.md",
            files.join(", ")
        );
        return Ok(());
    }
    if args.check {
        return check();
    }
    for name in &args.only {
        if !SAMPLES.iter().any(|s| s.name == name) {
            return Err(TaskError::Usage(format!(
                "no sample named {name:?}: `cargo xtask samples --list` lists them"
            )));
        }
    }
    let ctx = Ctx {
        bin: build()?,
        scale: Scale::Book,
    };
    let dir = workspace_root().join(SAMPLES_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| TaskError::Failed(format!("creating {}: {e}", dir.display())))?;
    if args.walkthrough {
        let recordings = walkthrough(&ctx, args.conns).map_err(TaskError::Failed)?;
        write_files(&dir, WALKTHROUGH_FILES, &recordings)?;
        return update_reading_time();
    }
    for sample in SAMPLES {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == sample.name) {
            continue;
        }
        eprintln!("==> {}", sample.name);
        let recordings = (sample.record)(&ctx)
            .map_err(|e| TaskError::Failed(format!("sample {}: {e}", sample.name)))?;
        write_files(&dir, sample.files, &recordings)?;
    }
    update_reading_time()
}

/// The reading-time estimate counts the lines a page shows, included
/// samples too: a sample that grew or shrank changes it.
fn update_reading_time() -> TaskResult {
    let path = crate::reading_time::path();
    let table = crate::reading_time::render()?;
    std::fs::write(&path, table)
        .map_err(|e| TaskError::Failed(format!("writing {}: {e}", path.display())))?;
    eprintln!("    wrote {}", path.display());
    Ok(())
}

fn write_files(dir: &Path, files: &[(&str, Shape)], recordings: &[Recording]) -> TaskResult {
    if files.len() != recordings.len() {
        return Err(TaskError::Failed(format!(
            "{} recordings for {} files",
            recordings.len(),
            files.len()
        )));
    }
    for ((file, _), recording) in files.iter().zip(recordings) {
        let path = dir.join(format!("{file}.txt"));
        std::fs::write(&path, recording.render())
            .map_err(|e| TaskError::Failed(format!("writing {}: {e}", path.display())))?;
        eprintln!("    wrote {}", path.display());
    }
    Ok(())
}

/// The release binaries every sample runs.
fn build() -> Result<PathBuf, TaskError> {
    let mut command = cargo();
    command.args(["build", "--release", "--quiet", "-p", "loadgen"]);
    for chapter in [
        "ch01-thread-per-connection",
        "ch02-epoll-level-triggered",
        "ch03-epoll-edge-triggered",
        "ch04-worker-pool",
        "ch05-buffer-pool",
        "ch06-idle-timeouts",
        "ch07-core-pinning",
        "ch08-million-connections",
    ] {
        command.args(["-p", chapter]);
    }
    eprintln!("==> building the release binaries the samples run");
    let status = command
        .status()
        .map_err(|e| TaskError::Failed(format!("cargo build: {e}")))?;
    if !status.success() {
        return Err(TaskError::Failed(format!("cargo build failed ({status})")));
    }
    Ok(c1m_benches::release_dir())
}

// ---------------------------------------------------------------------------
// The check.

/// One re-run in the check: the sample's name, its files, what it printed.
type Run = (
    &'static str,
    &'static [(&'static str, Shape)],
    Result<Vec<Recording>, String>,
);

/// The test command's check: re-run the cheap samples at a small bound and
/// compare shapes.
pub fn check() -> TaskResult {
    eprintln!(
        "\n==> the book's sample outputs still have the shape of what the programs print now"
    );
    let root = workspace_root();
    let dir = root.join(SAMPLES_DIR);
    let mut problems = Vec::new();
    // Every sample file is recorded and included by its page.
    let expected: Vec<(&str, &str)> = SAMPLES
        .iter()
        .flat_map(|s| s.files.iter().map(move |(f, _)| (*f, s.page)))
        .chain(
            WALKTHROUGH_FILES
                .iter()
                .map(|(f, _)| (*f, "ch08-million-connections.md")),
        )
        .collect();
    for (file, page) in &expected {
        let path = dir.join(format!("{file}.txt"));
        if !path.exists() {
            problems.push(format!(
                "{SAMPLES_DIR}/{file}.txt is missing: {}",
                rerecord(file)
            ));
        }
        let text = std::fs::read_to_string(root.join("book/src").join(page)).unwrap_or_default();
        if !text.contains(&format!("generated/samples/{file}.txt")) {
            problems.push(format!(
                "book/src/{page} does not include generated/samples/{file}.txt"
            ));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".txt")
                && !expected.iter().any(|(f, _)| *f == stem)
            {
                problems.push(format!(
                    "{SAMPLES_DIR}/{name} is no sample's file any more: remove it"
                ));
            }
        }
    }
    let ctx = Ctx {
        bin: build()?,
        scale: Scale::Check,
    };
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    for sample in SAMPLES.iter().filter(|s| s.cheap) {
        let began = Instant::now();
        runs.push((sample.name, sample.files, (sample.record)(&ctx)));
        eprintln!(
            "    {} ({:.1} s)",
            sample.name,
            began.elapsed().as_secs_f64()
        );
    }
    let began = Instant::now();
    runs.push((
        "--walkthrough",
        WALKTHROUGH_FILES,
        walkthrough(&ctx, CHECK_WALKTHROUGH_CONNS),
    ));
    eprintln!(
        "    --walkthrough --conns {CHECK_WALKTHROUGH_CONNS} ({:.1} s)",
        began.elapsed().as_secs_f64()
    );
    let temp = std::env::temp_dir().join(format!("c1m-samples-check-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&temp);
    for (name, files, result) in runs {
        let recordings = match result {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("sample {name} did not run: {e}"));
                continue;
            }
        };
        for ((file, shape), fresh) in files.iter().zip(&recordings) {
            let _ = std::fs::write(temp.join(format!("{file}.txt")), fresh.render());
            let recorded = std::fs::read_to_string(dir.join(format!("{file}.txt")));
            let Ok(recorded) = recorded else { continue };
            if let Some(diff) = shape_difference(&recorded, &fresh.render(), *shape) {
                problems.push(format!(
                    "{SAMPLES_DIR}/{file}.txt is stale: the programs now print another shape \
                     ({diff}); fresh output in {}; {}",
                    temp.join(format!("{file}.txt")).display(),
                    rerecord(file)
                ));
            }
        }
    }
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&temp);
        eprintln!(
            "    ok ({} files, re-run in {:.0} s)",
            expected.len(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    for problem in &problems {
        eprintln!("    {problem}");
    }
    Err(TaskError::Failed(format!(
        "{} sample output problem(s)",
        problems.len()
    )))
}

/// The command that re-records `file`.
fn rerecord(file: &str) -> String {
    if WALKTHROUGH_FILES.iter().any(|(f, _)| *f == file) {
        return "re-record it with `flock -x /tmp/c1m-quiet.lock cargo xtask samples \
                --walkthrough` (200,000 connections; see the host tuning appendix)"
            .to_string();
    }
    match SAMPLES
        .iter()
        .find(|s| s.files.iter().any(|(f, _)| *f == file))
    {
        Some(sample) => format!(
            "re-record it with `cargo xtask samples --only {}`",
            sample.name
        ),
        None => "re-record with `cargo xtask samples`".to_string(),
    }
}

/// A line's shape: numbers masked (with the unit that follows, which the
/// program picks by size), then words that repeat side by side (one
/// `workerN_accepted=N` per worker) collapsed to one.
fn mask_line(line: &str) -> String {
    let number = Regex::new(r"\d+(?:[.,]\d+)*").expect("the number pattern is valid");
    let unit =
        Regex::new(r"N ?(?:[KMGT]i?B|B|ns|µs|us|ms|s)\b").expect("the unit pattern is valid");
    let masked = number.replace_all(line, "N");
    let masked = unit.replace_all(&masked, "N U");
    let mut words: Vec<&str> = Vec::new();
    for word in masked.split_whitespace() {
        if words.last() != Some(&word) {
            words.push(word);
        }
    }
    words.join(" ")
}

/// The shape of a file: its lines as [`Shape`] says, side-by-side repeats
/// collapsed (one status line or many), and the elision mark dropped.
fn shape_of(text: &str, shape: Shape) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut output_lines = 0;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim() == ELIDED {
            continue;
        }
        if !line.starts_with("$ ") {
            output_lines += 1;
        }
        let line = match shape {
            Shape::Masked => mask_line(line),
            Shape::FirstWords => line.split_whitespace().next().unwrap_or("").to_string(),
            Shape::Head(n) if output_lines > n => break,
            Shape::Head(_) => mask_line(line),
        };
        if lines.last() != Some(&line) {
            lines.push(line);
        }
    }
    lines
}

/// Where two files' shapes first differ, or `None` if they agree.
fn shape_difference(recorded: &str, fresh: &str, shape: Shape) -> Option<String> {
    let (old, new) = (shape_of(recorded, shape), shape_of(fresh, shape));
    if old == new {
        return None;
    }
    let at = old
        .iter()
        .zip(&new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    Some(format!(
        "recorded `{}`, now `{}`",
        old.get(at).map_or("(end)", String::as_str),
        new.get(at).map_or("(end)", String::as_str)
    ))
}

// ---------------------------------------------------------------------------
// Running things: a server we start and stop, clients, text rules.

/// The line that marks lines left out by a rule.
const ELIDED: &str = "...";

/// A process started by a sample, its stdout and stderr collected as it
/// runs; killed on drop, so nothing outlives the sample.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn start(command: &mut Command) -> Result<Proc, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Ok(Proc {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `find` finds something in (stdout, stderr).
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        find: impl Fn(&str, &str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = find(&self.stdout(), &self.stderr()) {
                return Ok(found);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "exited ({status}) before {what}; stderr: {}",
                    self.stderr().trim()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {what} within {timeout:?}; stderr: {}",
                    self.stderr().trim()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of the `listening on HOST:PORT` line.
    fn listening_port(&mut self) -> Result<u16, String> {
        self.wait_for("`listening on` line", Duration::from_secs(20), |out, _| {
            out.lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|port| port.trim().parse().ok())
        })
    }

    fn signal(&self, signal: libc::c_int) -> Result<(), String> {
        signal_pid(self.pid(), signal)
    }

    /// Waits for the process to exit by itself (then kills it) and returns
    /// (stdout, stderr).
    fn finish(mut self, timeout: Duration) -> Result<(String, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "did not exit within {timeout:?}; stderr: {}",
                        self.stderr().trim()
                    ));
                }
            }
        }
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        Ok((self.stdout(), self.stderr()))
    }

    /// SIGINT, then what it printed.
    fn interrupt(self) -> Result<(String, String), String> {
        self.signal(libc::SIGINT)?;
        self.finish(Duration::from_secs(20))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    })
}

fn signal_pid(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    // SAFETY: kill has no memory-safety preconditions; the pid is a process
    // this command started (or its worker, found in /proc as its child).
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A server binary on a port the kernel chose, with the args the page shows.
fn server(ctx: &Ctx, name: &str, args: &[&str]) -> Result<(Proc, u16, String), String> {
    let mut command = Command::new(ctx.bin(name));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    let mut proc = Proc::start(&mut command)?;
    let port = proc.listening_port()?;
    let shown = shown_command(name, &format!("127.0.0.1:{SHOWN_PORT}"), args);
    Ok((proc, port, shown))
}

fn shown_command(name: &str, addr: &str, args: &[&str]) -> String {
    let mut words = vec![
        format!("target/release/{name}"),
        "--addr".into(),
        addr.into(),
    ];
    words.extend(args.iter().map(|a| a.to_string()));
    words.join(" ")
}

/// One client: send `message`, then either half-close and read to EOF, or
/// read the echo back and stay connected (the stream is returned).
fn client(port: u16, message: &str, half_close: bool) -> Result<TcpStream, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut echoed = Vec::new();
    if half_close {
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        stream
            .read_to_end(&mut echoed)
            .map_err(|e| format!("read: {e}"))?;
    } else {
        echoed.resize(message.len(), 0);
        stream
            .read_exact(&mut echoed)
            .map_err(|e| format!("read: {e}"))?;
    }
    if echoed != message.as_bytes() {
        return Err(format!("echo of {message:?} came back as {echoed:?}"));
    }
    Ok(stream)
}

/// Runs a command to completion (bounded) and returns its stdout, stderr.
fn output(command: &mut Command, timeout: Duration) -> Result<(String, String), String> {
    Proc::start(command)?.finish(timeout)
}

/// The page's ports instead of the ones the kernel chose.
fn normalise(text: &str, ports: &[(u16, u16)]) -> String {
    let mut text = text.to_string();
    for (real, shown) in ports {
        text = text.replace(&format!("127.0.0.1:{real}"), &format!("127.0.0.1:{shown}"));
    }
    text
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn lines_starting(text: &str, prefixes: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The value of `key=` in a `key=value …` line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.split('/').next()?.parse().ok())
}

/// At most `max` lines: the first half and the last half, the elided middle
/// marked.
fn keep_ends(lines: Vec<String>, max: usize) -> Vec<String> {
    if lines.len() <= max {
        return lines;
    }
    let head = max / 2;
    let tail = max - head;
    let mut kept = lines[..head].to_vec();
    kept.push(ELIDED.to_string());
    kept.extend_from_slice(&lines[lines.len() - tail..]);
    kept
}

// ---------------------------------------------------------------------------
// The samples.

/// Chapter 01 under loadgen: loadgen's report, the server's thread line at
/// its peak, and the summary on Ctrl-C.
fn ch01_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let (server, port, shown) = server(ctx, "ch01-thread-per-connection", &[])?;
    let (conns, seconds) = ctx.scale.pick(("100", "5"), ("10", "1"));
    let pid = server.pid().to_string();
    let args = [
        "echo",
        "-c",
        conns,
        "--size",
        "64",
        "--duration",
        seconds,
        "--server-pid",
        &pid,
    ];
    // loadgen takes the mode first: `loadgen echo --addr …`.
    let mut load = Command::new(ctx.bin("loadgen"));
    load.arg(args[0])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(&args[1..]);
    let (report, _) = output(&mut load, Duration::from_secs(60))?;
    // The stats line comes once a second when something changed.
    thread::sleep(Duration::from_millis(1200));
    let (stdout, stderr) = server.interrupt()?;
    let ports = [(port, SHOWN_PORT)];
    // The reader starts the server in the background and passes its pid.
    let shown_args: Vec<&str> = args[1..]
        .iter()
        .map(|a| if *a == pid { "$!" } else { a })
        .collect();
    let loadgen_shown = format!(
        "target/release/loadgen echo --addr 127.0.0.1:{SHOWN_PORT} {}",
        shown_args.join(" ")
    );
    // The thread line the page reads: the first at the peak.
    let threads: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with("threads "))
        .max_by_key(|l| (field(l, "alive"), std::cmp::Reverse(field(l, "served"))))
        .map(str::to_string)
        .into_iter()
        .collect();
    if threads.is_empty() {
        return Err(format!("no `threads` line on stderr: {stderr}"));
    }
    Ok(vec![
        Recording::new(
            &[format!("{shown} &"), loadgen_shown],
            lines(&normalise(&report, &ports)),
        ),
        Recording::new(&[], threads),
        Recording::new(&[shown], lines_starting(&stdout, &["summary:"])),
    ])
}

/// Chapter 01 meeting its limit on purpose: 512 MiB stacks under a 3 GiB
/// address-space limit, so the sixth thread cannot be created.
fn ch01_spawn_failure(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    const ADDRESS_SPACE: u64 = 3 * 1024 * 1024 * 1024;
    let mut command = Command::new(ctx.bin("ch01-thread-per-connection"));
    command.args(["--addr", "127.0.0.1:0", "--stack-kib", "524288"]);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setrlimit, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE,
                rlim_max: ADDRESS_SPACE,
            };
            // SAFETY: `limit` is a valid rlimit for the duration of the call.
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut proc = Proc::start(&mut command)?;
    let port = proc.listening_port()?;
    let mut clients = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => clients.push(stream),
            Err(e) => return Err(format!("connect: {e}")),
        }
        thread::sleep(Duration::from_millis(50));
        if proc.stderr().contains("cannot spawn") {
            break;
        }
    }
    let line = proc.wait_for("`cannot spawn` line", Duration::from_secs(5), |_, err| {
        err.lines()
            .find(|l| l.starts_with("cannot spawn"))
            .map(str::to_string)
    })?;
    drop(clients);
    let _ = proc.interrupt();
    let shown = format!(
        "prlimit --as={ADDRESS_SPACE} target/release/ch01-thread-per-connection \
         --addr 127.0.0.1:{SHOWN_PORT} --stack-kib 524288"
    );
    Ok(vec![Recording::new(&[shown], vec![line])])
}

/// A server, one client that sends `message` and half-closes, Ctrl-C: the
/// server's stdout.
fn one_client(ctx: &Ctx, name: &str, args: &[&str], message: &str) -> Result<Recording, String> {
    let (server, port, shown) = server(ctx, name, args)?;
    drop(client(port, message, true)?);
    let (stdout, _) = server.interrupt()?;
    Ok(Recording::new(
        &[shown],
        lines(&normalise(&stdout, &[(port, SHOWN_PORT)])),
    ))
}

fn ch02_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    Ok(vec![one_client(
        ctx,
        "ch02-epoll-level-triggered",
        &[],
        "hello, epoll\n",
    )?])
}

fn ch03_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    Ok(vec![one_client(
        ctx,
        "ch03-epoll-edge-triggered",
        &[],
        "hello, epoll\n",
    )?])
}

fn ch04_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    Ok(vec![one_client(
        ctx,
        "ch04-worker-pool",
        &["--work-us", "100"],
        "hello, workers\n",
    )?])
}

fn ch05_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    Ok(vec![one_client(
        ctx,
        "ch05-buffer-pool",
        &[],
        "hello, pool\n",
    )?])
}

/// The test that shows chapter 03's edge-triggered trap; its one line.
fn ch03_et_read_once(_ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let args = [
        "test",
        "-p",
        "ch03-epoll-edge-triggered",
        "--test",
        "edge_triggered",
        "reading_once",
        "--",
        "--nocapture",
    ];
    let mut command = cargo();
    command.args(args);
    let (stdout, stderr) = output(&mut command, Duration::from_secs(600))?;
    let found = lines_starting(&format!("{stdout}\n{stderr}"), &["--et-read-once:"]);
    if found.is_empty() {
        return Err(format!(
            "the test printed no `--et-read-once:` line: {stdout}"
        ));
    }
    Ok(vec![Recording::new(
        &[format!("cargo {}", args.join(" "))],
        found,
    )])
}

/// Chapter 05's script that measures bytes per idle connection.
fn ch05_idle_rss(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let held = ctx.scale.pick("19000", "500");
    let script = "chapters/05-buffer-pool/idle_rss.sh";
    let mut command = Command::new("sh");
    command
        .current_dir(workspace_root())
        .env("LOADGEN", ctx.bin("loadgen"))
        .args([script, held])
        .arg(ctx.bin("ch05-buffer-pool"));
    let (stdout, stderr) = output(&mut command, Duration::from_secs(120))?;
    let found = lines_starting(&stdout, &["server="]);
    if found.is_empty() {
        return Err(format!("{script} printed no result: {stderr}"));
    }
    Ok(vec![Recording::new(
        &[format!("{script} {held} target/release/ch05-buffer-pool")],
        found,
    )])
}

/// Chapter 06: a client that says hello and then nothing is reaped.
fn ch06_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let timeout = ctx.scale.pick("2", "0.5");
    let args = ["--idle-timeout", timeout];
    let (server, port, shown) = server(ctx, "ch06-idle-timeouts", &args)?;
    let mut stream = client(port, "hello, timers\n", false)?;
    // The server closes it: read until EOF.
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting to be reaped: {e}"))?;
    let (stdout, _) = server.interrupt()?;
    Ok(vec![Recording::new(
        &[shown],
        lines(&normalise(&stdout, &[(port, SHOWN_PORT)])),
    )])
}

/// Chapter 07 pinned: twenty clients, and what /proc says about the threads.
fn ch07_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let (server, port, shown) = server(ctx, "ch07-core-pinning", &["--pin"])?;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(port, "hello, reactors\n", false)?);
    }
    let mut cpus = Vec::new();
    let task_dir = PathBuf::from(format!("/proc/{}/task", server.pid()));
    let mut tasks: Vec<u32> = std::fs::read_dir(&task_dir)
        .map_err(|e| format!("reading {}: {e}", task_dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    tasks.sort_unstable();
    for task in tasks {
        let dir = task_dir.join(task.to_string());
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            cpus.push(format!("{} {line}", comm.trim()));
        }
    }
    // Threads start in a race, so their ids' order differs from run to
    // run; sorted by name (as the shown command's `sort` does) it does not.
    cpus.sort();
    drop(clients);
    let (stdout, _) = server.interrupt()?;
    let cpus_shown = "for t in /proc/$PID/task/*; do echo \"$(cat $t/comm) $(grep Cpus_allowed_list $t/status)\"; done | sort";
    Ok(vec![
        Recording::new(&[shown], lines(&normalise(&stdout, &[(port, SHOWN_PORT)]))),
        Recording::new(&[cpus_shown.to_string()], cpus),
    ])
}

/// An HTTP GET of `/metrics` on loopback: the body.
fn scrape(port: u16) -> Result<String, String> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("metrics: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("metrics: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("metrics: {e}"))?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .ok_or_else(|| format!("metrics: no HTTP body in {response:?}"))
}

/// The port of the supervisor's `metrics on http://HOST:PORT/metrics` line.
fn metrics_port(proc: &mut Proc) -> Result<u16, String> {
    proc.wait_for("`metrics on` line", Duration::from_secs(20), |_, err| {
        err.lines()
            .find_map(|l| l.strip_prefix("metrics on http://127.0.0.1:"))
            .and_then(|rest| rest.split('/').next()?.parse().ok())
    })
}

/// The metrics lines a reader looks at: no comments, no histogram buckets
/// but the first.
fn metrics_excerpt(body: &str, max: usize) -> Vec<String> {
    let mut kept = Vec::new();
    let mut bucket_seen = false;
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.contains("_bucket{") {
            if bucket_seen {
                continue;
            }
            bucket_seen = true;
        }
        kept.push(line.to_string());
    }
    kept.truncate(max);
    kept
}

/// Chapter 08: twenty clients held, a scrape and a status line, then they
/// leave and Ctrl-C.
fn ch08_run(ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let args = [
        "--conns",
        "50000",
        "--metrics",
        "127.0.0.1:0",
        "--status-every",
        "2",
    ];
    let (mut server, port, _) = server(ctx, "ch08-million-connections", &args)?;
    let metrics = metrics_port(&mut server)?;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(port, "hello, workers\n", false)?);
    }
    // A status line that sees all twenty.
    let status = server.wait_for(
        "status line with open=20",
        Duration::from_secs(10),
        |_, err| {
            err.lines()
                .find(|l| l.starts_with("status:") && field(l, "open") == Some(20))
                .map(str::to_string)
        },
    )?;
    let body = scrape(metrics)?;
    drop(clients);
    let (stdout, stderr) = server.interrupt()?;
    let ports = [(port, SHOWN_PORT), (metrics, SHOWN_METRICS_PORT)];
    let shown = shown_command(
        "ch08-million-connections",
        &format!("127.0.0.1:{SHOWN_PORT}"),
        &[
            "--conns",
            "50000",
            "--metrics",
            &format!("127.0.0.1:{SHOWN_METRICS_PORT}"),
            "--status-every",
            "2",
        ],
    );
    // stderr up to the first status line, then the one that saw all twenty.
    let mut err: Vec<String> = normalise(&stderr, &ports)
        .lines()
        .take_while(|l| !l.starts_with("status:"))
        .map(str::to_string)
        .collect();
    err.push(status);
    Ok(vec![
        Recording::new(
            std::slice::from_ref(&shown),
            lines(&normalise(&stdout, &ports)),
        ),
        Recording::new(&[format!("{shown} >/dev/null")], err),
        Recording::new(
            &[format!(
                "curl -s http://127.0.0.1:{SHOWN_METRICS_PORT}/metrics | grep -v '^#'"
            )],
            metrics_excerpt(&body, 12),
        ),
    ])
}

/// The doctor on this host.
fn doctor(_ctx: &Ctx) -> Result<Vec<Recording>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command.arg("doctor");
    let (stdout, _) = output(&mut command, Duration::from_secs(60))?;
    Ok(vec![Recording::new(
        &["cargo xtask doctor".to_string()],
        lines(&stdout),
    )])
}

// ---------------------------------------------------------------------------
// Chapter 08's walk-through.

fn meminfo() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    lines_starting(&text, &["MemAvailable:", "Slab:"])
}

/// The status lines a reader follows: the first, each one where `open=`
/// moved, the last (unless it repeats the line before); at most twelve.
fn status_excerpt(stderr: &str) -> Vec<String> {
    let status: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("status:"))
        .collect();
    let mut kept: Vec<String> = Vec::new();
    let mut last_open = None;
    for (i, line) in status.iter().enumerate() {
        let open = field(line, "open");
        let last = i + 1 == status.len() && kept.last().map(String::as_str) != Some(*line);
        if i == 0 || last || open != last_open {
            kept.push(line.to_string());
        }
        last_open = open;
    }
    keep_ends(kept, 12)
}

/// Chapter 08's "200,000 connections by hand", step by step.
fn walkthrough(ctx: &Ctx, conns: u64) -> Result<Vec<Recording>, String> {
    let server_conns = (conns + 1000).to_string();
    let n = conns.to_string();
    let (status_every, hold) = ctx.scale.pick(("5", "20"), ("1", "3"));
    let args = [
        "--procs",
        "auto",
        "--conns",
        &server_conns,
        "--metrics",
        "127.0.0.1:0",
        "--status-every",
        status_every,
    ];
    eprintln!("==> walk-through: chapter 08 holding {conns} connections");
    let (mut server, port, _) = server(ctx, "ch08-million-connections", &args)?;
    let metrics = metrics_port(&mut server)?;
    let ports = [(port, SHOWN_PORT), (metrics, SHOWN_METRICS_PORT)];
    let mut shown_args = args;
    let shown_metrics = format!("127.0.0.1:{SHOWN_METRICS_PORT}");
    shown_args[5] = &shown_metrics;
    let server_shown = format!(
        "{} &",
        shown_command(
            "ch08-million-connections",
            &format!("127.0.0.1:{SHOWN_PORT}"),
            &shown_args
        )
    );
    let meminfo_before = meminfo();

    let load_args = [
        "-n",
        &n,
        "--procs",
        "auto",
        "--sources",
        "auto",
        "--verify-all",
        "--hold",
        hold,
        "--timeout",
        "60",
    ];
    let mut load = Command::new(ctx.bin("loadgen"));
    load.args(["hold", "--addr", &format!("127.0.0.1:{port}")])
        .args(load_args);
    let load_shown = format!(
        "target/release/loadgen hold --addr 127.0.0.1:{SHOWN_PORT} {}",
        load_args.join(" ")
    );
    let mut load = Proc::start(&mut load)?;
    // While they are held: the metrics and the memory.
    let deadline = Instant::now() + Duration::from_secs(240);
    let (body, meminfo_held) = loop {
        let body = scrape(metrics)?;
        let open = body
            .lines()
            .find_map(|l| l.strip_prefix("c1m_connections_open "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if open == Some(conns) {
            break (body, meminfo());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server never held {conns} connections (open {open:?}); loadgen said: {}",
                load.stderr().trim()
            ));
        }
        if let Ok(Some(status)) = load.child.try_wait() {
            thread::sleep(Duration::from_millis(200));
            return Err(format!(
                "loadgen exited ({status}) before the server held {conns}: {} {}",
                load.stdout().trim(),
                load.stderr().trim()
            ));
        }
        thread::sleep(Duration::from_millis(200));
    };
    let (report, _) = load.finish(Duration::from_secs(300))?;
    // Let the status line see them leave.
    let seen = server.stderr().matches("status:").count();
    server.wait_for(
        "a status line after loadgen",
        Duration::from_secs(30),
        |_, err| (err.matches("status:").count() > seen + 1).then_some(()),
    )?;
    let status = status_excerpt(&server.stderr());

    // Kill a worker; the supervisor restarts it.
    let worker = loadgen::server::process_tree(server.pid())
        .into_iter()
        .find(|pid| *pid != server.pid())
        .ok_or("the supervisor has no worker process")?;
    let before_kill = server.stderr().len();
    signal_pid(worker, libc::SIGKILL)?;
    let restart = server.wait_for(
        "the restart, seen in a status line",
        Duration::from_secs(30),
        |_, err| {
            let after = err.get(before_kill..)?;
            let died = after.lines().find(|l| l.starts_with("worker "))?;
            let status = after
                .lines()
                .find(|l| l.starts_with("status:") && field(l, "restarts") == Some(1))?;
            Some(vec![died.to_string(), status.to_string()])
        },
    )?;
    let (stdout, stderr) = server.interrupt()?;
    let stderr = normalise(&stderr, &ports);
    let start: Vec<String> = stderr
        .lines()
        .take_while(|l| !l.starts_with("status:"))
        .map(str::to_string)
        .collect();
    let mut memory = vec!["# before loadgen".to_string()];
    memory.extend(meminfo_before);
    memory.push(format!("# while the server holds {conns}"));
    memory.extend(meminfo_held);
    Ok(vec![
        Recording::new(&[server_shown], start),
        Recording::new(
            &["grep -E '^(MemAvailable|Slab):' /proc/meminfo".into()],
            memory,
        ),
        Recording::new(&[load_shown], lines(&normalise(&report, &ports))),
        Recording::new(&[], status),
        Recording::new(
            &[format!(
                "curl -s http://127.0.0.1:{SHOWN_METRICS_PORT}/metrics | grep -v '^#'"
            )],
            metrics_excerpt(&body, 40),
        ),
        Recording::new(&["kill -KILL $(pgrep -P $! | head -1)".into()], restart),
        Recording::new(
            &["kill -INT %1".into()],
            lines_starting(&stdout, &["summary:"]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_format_and_drops_the_numbers() {
        assert_eq!(
            mask_line("status: workers=3/3 open=20 rss=9.0 MiB open_per_worker=1..13"),
            mask_line("status: workers=11/11 open=200000 rss=1.2 GiB open_per_worker=18000..19000")
        );
        assert_eq!(
            mask_line("summary: worker0_accepted=13 worker1_accepted=6 worker2_accepted=1"),
            mask_line("summary: worker0_accepted=2000")
        );
        assert_ne!(
            mask_line("summary: read=2 write=1"),
            mask_line("summary: read=2 write=1 accept=2")
        );
    }

    #[test]
    fn a_changed_format_is_a_stale_sample_and_timing_is_not() {
        let recorded = "$ target/release/x --addr 127.0.0.1:7878\nlistening on 127.0.0.1:7878\nsummary: epoll_wait=4 read=2\n";
        let slower = "$ target/release/x --addr 127.0.0.1:7878\nlistening on 127.0.0.1:7878\nsummary: epoll_wait=9000 read=17\n";
        let renamed = "$ target/release/x --addr 127.0.0.1:7878\nlistening on 127.0.0.1:7878\nsummary: epoll_waits=4 read=2\n";
        assert_eq!(shape_difference(recorded, slower, Shape::Masked), None);
        let diff = shape_difference(recorded, renamed, Shape::Masked);
        assert!(diff.is_some_and(|d| d.contains("epoll_waits")));
    }

    #[test]
    fn repeated_status_lines_and_elisions_are_one_shape() {
        let few = "status: open=1\n";
        let many = "status: open=1\nstatus: open=5\n...\nstatus: open=9\n";
        assert_eq!(shape_of(few, Shape::Masked), shape_of(many, Shape::Masked));
    }

    #[test]
    fn first_words_ignore_what_follows() {
        let a = "hold 127.0.0.1:7878: kernel-chosen source\n  connections 2000 of 2000\n";
        let b =
            "hold 127.0.0.1:7878: 11 processes over 4 sources\n  connections 200000 of 200000\n";
        assert_eq!(shape_difference(a, b, Shape::FirstWords), None);
        let c = "hold 127.0.0.1:7878\n  established 2000\n";
        assert!(shape_difference(a, c, Shape::FirstWords).is_some());
    }

    #[test]
    fn head_compares_only_the_first_lines() {
        let here = "$ cargo xtask doctor\ndoctor: 1000000?\n\ncheck  current\nA  1  OK\nnote\n";
        let there = "$ cargo xtask doctor\ndoctor: 1000000?\n\ncheck  current\nB  2  WARN\n";
        assert_eq!(shape_difference(here, there, Shape::Head(2)), None);
        let changed = "$ cargo xtask doctor\ndoctor: 1000000?\n\ncheck  now\n";
        assert!(shape_difference(here, changed, Shape::Head(2)).is_some());
    }

    #[test]
    fn status_excerpt_keeps_changes_first_and_last() {
        let stderr = "prefork: x\nstatus: open=0\nstatus: open=0\nstatus: open=5 w=1\nstatus: open=5 w=2\nstatus: open=5 w=3\n";
        assert_eq!(
            status_excerpt(stderr),
            vec!["status: open=0", "status: open=5 w=1", "status: open=5 w=3"]
        );
        let repeated = "status: open=0\nstatus: open=5\nstatus: open=5\n";
        assert_eq!(
            status_excerpt(repeated),
            vec!["status: open=0", "status: open=5"]
        );
        let long: String = (0..40).map(|i| format!("status: open={i}\n")).collect();
        let kept = status_excerpt(&long);
        assert_eq!(kept.len(), 13);
        assert_eq!(kept[6], ELIDED);
    }

    #[test]
    fn metrics_excerpt_drops_comments_and_later_buckets() {
        let body = "# HELP a\na 1\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 3\nh_sum 4\n";
        assert_eq!(
            metrics_excerpt(body, 10),
            vec!["a 1", "h_bucket{le=\"1\"} 2", "h_sum 4"]
        );
    }

    #[test]
    fn ports_are_shown_as_the_page_shows_them() {
        assert_eq!(
            normalise("listening on 127.0.0.1:43123", &[(43123, SHOWN_PORT)]),
            "listening on 127.0.0.1:7878"
        );
    }

    #[test]
    fn every_sample_names_its_page_and_files_once() {
        let mut files: Vec<&str> = SAMPLES
            .iter()
            .flat_map(|s| s.files.iter().map(|(f, _)| *f))
            .chain(WALKTHROUGH_FILES.iter().map(|(f, _)| *f))
            .collect();
        let count = files.len();
        files.sort_unstable();
        files.dedup();
        assert_eq!(files.len(), count, "a file written by two samples");
        for sample in SAMPLES {
            assert!(
                workspace_root().join("book/src").join(sample.page).exists(),
                "{}",
                sample.page
            );
        }
    }
}
