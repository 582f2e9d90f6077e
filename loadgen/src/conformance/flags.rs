//! Checks of the command line and the process: `--work-us`, SIGINT and the
//! summary line, a bad flag value, `--help`.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{connect, echo_exactly};
use super::{CheckFailure, CheckResult, Context, ServerSpec, Target, fail};
use crate::server::describe;

/// Lines and microseconds per line in [`work_us`].
const WORK_LINES: usize = 2000;
const WORK_US: u64 = 100;

/// With `--work-us 100` lines still come back exactly and in order, and the
/// server really spends CPU on them: at least a quarter of the 2000 × 100 µs
/// it owes (a quarter, because a busy loop on a wall clock loses the time it
/// is preempted on a loaded machine; a server that ignores the flag spends
/// almost nothing).
pub fn work_us(spec: &ServerSpec) -> CheckResult {
    let server = spec.spawn(&["--work-us", &WORK_US.to_string()])?;
    let target = Target::process(&server);
    let mut lines = Vec::new();
    for line in 0..WORK_LINES {
        lines.extend_from_slice(format!("request {line} needs work\n").as_bytes());
    }
    let cpu_before = server.cpu_time().ok();
    let stream = connect(target.addr)?;
    echo_exactly(
        &stream,
        &lines,
        &format!("{WORK_LINES} lines with --work-us {WORK_US}"),
    )?;
    if let (Some(before), Ok(after)) = (cpu_before, server.cpu_time()) {
        let owed = Duration::from_micros(WORK_US) * WORK_LINES as u32;
        let spent = after.saturating_sub(before);
        if spent < owed / 4 {
            fail!(
                "with --work-us {WORK_US} the server echoed {WORK_LINES} lines using only \
                 {spent:?} of CPU; it owes {owed:?} of busy work (one {WORK_US} µs spin per newline)"
            );
        }
    }
    target.still_running("with --work-us")
}

/// After serving some clients, SIGINT makes the server print a line starting
/// with `summary:` on stdout and exit with status 0.
pub fn sigint_summary(spec: &ServerSpec) -> CheckResult {
    let server = spec.spawn(&[])?;
    for client in 0..5 {
        let stream = connect(server.addr())?;
        echo_exactly(
            &stream,
            format!("client {client}\n").as_bytes(),
            "before SIGINT",
        )?;
    }
    // One client still connected when the signal arrives.
    let _connected = connect(server.addr())?;
    let shutdown = server
        .shutdown()
        .context(|| "sending SIGINT to the server".to_owned())?;
    if shutdown.killed {
        fail!("the server was still running 10 s after SIGINT and had to be killed");
    }
    if shutdown.status.code() != Some(0) {
        fail!(
            "after SIGINT the server ended with {} instead of exit code 0; stderr:\n{}",
            describe(shutdown.status),
            shutdown.stderr.trim_end()
        );
    }
    if shutdown.summary_line().is_none() {
        fail!(
            "after SIGINT the server printed no stdout line starting with `summary:`; \
             its stdout was: {:?}",
            shutdown.stdout
        );
    }
    Ok(())
}

/// `--work-us notanumber` is rejected with exit code 2 and a message on stderr.
pub fn bad_flag_exits_2(spec: &ServerSpec) -> CheckResult {
    let mut command = Command::new(&spec.bin);
    // `--addr` too, so a server that wrongly accepts the value does not
    // try to take the default port.
    command
        .args(["--addr", "127.0.0.1:0"])
        .args(&spec.extra_args)
        .args(["--work-us", "notanumber"]);
    let run = run_briefly(command)?;
    if run.status.code() != Some(2) {
        fail!(
            "`--work-us notanumber` ended with {} instead of exit code 2; stderr: {:?}",
            describe(run.status),
            run.stderr
        );
    }
    if run.stderr.trim().is_empty() {
        fail!("`--work-us notanumber` exited 2 but printed nothing on stderr to say why");
    }
    Ok(())
}

/// `--help` exits 0 and documents the contract's flags.
pub fn help_lists_flags(spec: &ServerSpec) -> CheckResult {
    let mut command = Command::new(&spec.bin);
    command.arg("--help");
    let run = run_briefly(command)?;
    if run.status.code() != Some(0) {
        fail!(
            "`--help` ended with {} instead of exit code 0; stderr: {:?}",
            describe(run.status),
            run.stderr
        );
    }
    for flag in ["--addr", "--work-us"] {
        if !run.stdout.contains(flag) {
            fail!(
                "`--help` does not mention {flag}; it printed:\n{}",
                run.stdout
            );
        }
    }
    Ok(())
}

/// How a short command-line run ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// How long a `--help` or bad-flag run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` to completion, killing it if it outlives [`RUN_TIMEOUT`]
/// (a server that ignores a bad flag would otherwise serve forever).
fn run_briefly(mut command: Command) -> Result<Run, CheckFailure> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("starting {shown}"))?;
    // Drain both pipes on threads so a chatty child cannot block on them.
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context(|| format!("waiting for {shown}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            fail!("{shown} was still running after {RUN_TIMEOUT:?}; it should have exited at once");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = |drainer: thread::JoinHandle<String>| {
        drainer
            .join()
            .map_err(|_| CheckFailure::new("an output reader panicked"))
    };
    Ok(Run {
        status,
        stdout: text(stdout)?,
        stderr: text(stderr)?,
    })
}
