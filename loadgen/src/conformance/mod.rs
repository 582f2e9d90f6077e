//! The echo contract as checks that can fail.
//!
//! Every check is a plain function returning `Result<(), CheckFailure>`, and a
//! failure says what was expected and what happened instead ("echo of 1048576
//! bytes differed at offset 524288: sent 0x41, got 0x42"). Clients are plain
//! blocking `std::net` sockets: every socket operation has a timeout and every
//! check has an overall deadline, so a broken server fails a check instead of
//! hanging it.
//!
//! There are two kinds of check:
//!
//! - *Target checks* take a [`Target`]: an address, plus (if we started it) the
//!   [`ServerProcess`] so the check can also look at the server's descriptors
//!   and memory. They work against any running echo server; see
//!   [`run_against_addr`].
//! - *Spec checks* take a [`ServerSpec`] (the binary and its extra arguments)
//!   because they start the server their own way: with a low descriptor limit,
//!   with `--work-us`, with a bad flag, or to stop it with SIGINT.
//!
//! Server crates run all of them with one line in `tests/conformance.rs`:
//!
//! ```ignore
//! loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch02-epoll-level-triggered"));
//! ```
//!
//! which expands to one `#[test]` per check (see [`conformance_tests!`](crate::conformance_tests)).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::server::{ServerBuilder, ServerProcess};

mod client;
mod echo;
mod flags;
mod fuzz;
mod hostile;
mod idle;
mod output_queue;
mod resources;
mod tests_macro;

pub use echo::{
    concurrent_clients, exact_echo, half_close, many_concurrent_clients, pipelined_lines,
};
pub use flags::{bad_flag_exits_2, help_lists_flags, sigint_summary, work_us};
pub use fuzz::fuzz_echo;
pub use hostile::{never_reading_client, reset_mid_stream};
pub use idle::idle_timeout;
pub use output_queue::{single_byte_segments_memory_bounded, small_writes_then_half_close};
pub use resources::{emfile, no_descriptor_leak};

/// What a check returns.
pub type CheckResult = Result<(), CheckFailure>;

/// Why a check failed: what was expected, and what happened instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    message: String,
}

impl CheckFailure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> CheckFailure {
        CheckFailure {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CheckFailure {}

/// Turns an I/O error into a [`CheckFailure`] that says what we were doing.
pub(crate) trait Context<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, CheckFailure>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, CheckFailure> {
        self.map_err(|err| CheckFailure::new(format!("{}: {err}", doing())))
    }
}

/// Returns early from a check with a formatted [`CheckFailure`].
macro_rules! fail {
    ($($format:tt)+) => {
        return Err($crate::conformance::CheckFailure::new(format!($($format)+)))
    };
}
pub(crate) use fail;

/// The server a target check talks to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The server process, when we started it: lets checks read its
    /// descriptors, memory and CPU time, and notice if it died.
    pub server: Option<&'a ServerProcess>,
}

impl<'a> Target<'a> {
    /// A server we only know the address of.
    pub fn addr(addr: SocketAddr) -> Target<'static> {
        Target { addr, server: None }
    }

    /// A server we started.
    pub fn process(server: &'a ServerProcess) -> Target<'a> {
        Target {
            addr: server.addr(),
            server: Some(server),
        }
    }

    /// Fails if the server process (when known) has exited.
    pub(crate) fn still_running(&self, after: &str) -> CheckResult {
        match self.server {
            Some(server) if !server.is_running() => {
                let stderr = server.stderr();
                if stderr.trim().is_empty() {
                    fail!("the server exited {after} (printing nothing on stderr)")
                }
                fail!(
                    "the server exited {after}; its stderr:\n{}",
                    stderr.trim_end()
                )
            }
            _ => Ok(()),
        }
    }
}

/// A server binary and the extra arguments every spawn of it gets (after
/// `--addr 127.0.0.1:0`), for checks that start the server themselves.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The server binary.
    pub bin: PathBuf,
    /// Appended to every command line.
    pub extra_args: Vec<OsString>,
}

impl ServerSpec {
    /// `bin` with no extra arguments.
    pub fn new(bin: impl AsRef<Path>) -> ServerSpec {
        ServerSpec {
            bin: bin.as_ref().to_owned(),
            extra_args: Vec::new(),
        }
    }

    /// Adds extra arguments for every spawn.
    pub fn args<I, S>(mut self, args: I) -> ServerSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A builder for `bin --addr 127.0.0.1:0 EXTRA_ARGS...`.
    pub fn builder(&self) -> ServerBuilder {
        // The server inherits our descriptor limit: make it the hard limit,
        // not the 1024 soft limit many systems start with, so that it can
        // hold the thousands of clients the checks open.
        client::raise_own_nofile_limit();
        ServerProcess::builder(&self.bin).args(&self.extra_args)
    }

    /// Starts the server, with `more_args` after the extra arguments.
    pub fn spawn(&self, more_args: &[&str]) -> Result<ServerProcess, CheckFailure> {
        self.builder()
            .args(more_args)
            .spawn()
            .map_err(|err| CheckFailure::new(err.to_string()))
    }
}

/// A check that talks to a running server.
pub type TargetCheck = fn(&Target<'_>) -> CheckResult;

/// A check that starts the server itself.
pub type SpecCheck = fn(&ServerSpec) -> CheckResult;

/// The target checks, by name: everything [`run_against_addr`] runs.
/// (`no_descriptor_leak` is not here: it needs the server process.)
pub const TARGET_CHECKS: &[(&str, TargetCheck)] = &[
    ("exact_echo", exact_echo),
    ("pipelined_lines", pipelined_lines),
    ("many_concurrent_clients", many_concurrent_clients),
    ("half_close", half_close),
    ("reset_mid_stream", reset_mid_stream),
    ("never_reading_client", never_reading_client),
    ("small_writes_then_half_close", small_writes_then_half_close),
    (
        "single_byte_segments_memory_bounded",
        single_byte_segments_memory_bounded,
    ),
    ("fuzz_echo", fuzz_echo),
];

/// Runs every check that needs only an address against a server that is
/// already running (somewhere we did not start it), in order.
pub fn run_against_addr(addr: SocketAddr) -> Vec<(&'static str, CheckResult)> {
    let target = Target::addr(addr);
    TARGET_CHECKS
        .iter()
        .map(|&(name, check)| (name, check(&target)))
        .collect()
}

/// No check may take longer than this; past it the server is killed, which
/// makes every socket operation of a stuck check fail at once.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// Starts a fresh server from `spec`, runs `check` against it and panics with
/// the failure (and the server's stderr) if it fails. What each generated
/// `#[test]` calls.
#[track_caller]
pub fn assert_target_check(spec: &ServerSpec, name: &str, check: TargetCheck) {
    let server = match spec.spawn(&[]) {
        Ok(server) => server,
        Err(failure) => panic!("{name}: {failure}"),
    };
    let result = with_watchdog(&server, || check(&Target::process(&server)));
    if let Err(failure) = result {
        let stderr = server.stderr();
        let stderr = if stderr.trim().is_empty() {
            String::new()
        } else {
            format!("\nserver stderr:\n{}", stderr.trim_end())
        };
        panic!("{name} failed: {failure}{stderr}");
    }
}

/// Runs a spec check and panics with its failure.
#[track_caller]
pub fn assert_spec_check(spec: &ServerSpec, name: &str, check: SpecCheck) {
    if let Err(failure) = check(spec) {
        panic!("{name} failed: {failure}");
    }
}

/// Runs `check`, killing `server` if it outlives [`CHECK_DEADLINE`].
fn with_watchdog(server: &ServerProcess, check: impl FnOnce() -> CheckResult) -> CheckResult {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let result = thread::scope(|scope| {
        let watchdog = scope.spawn(move || {
            // Err(Timeout) only: a send or a dropped sender means the check ended.
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(CHECK_DEADLINE) {
                let _ = server.signal(libc::SIGKILL);
                return true;
            }
            false
        });
        let result = check();
        drop(done_tx);
        let fired = watchdog.join().unwrap_or(false);
        (result, fired)
    });
    match result {
        (Err(failure), true) => fail!(
            "still running after the {CHECK_DEADLINE:?} deadline, so the server was killed; then: {failure}"
        ),
        (result, _) => result,
    }
}
