//! The processes a million run starts (loadgen runs in their own process
//! groups, the server and its workers), and the guarantee that every one of
//! them is killed on any way out.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

use crate::run::{TaskError, describe};

/// SIGKILL to a process group we created (0: none).
pub(super) fn kill_group(group: i32) {
    if group > 0 {
        // SAFETY: kill has no memory-safety preconditions; a negative pid
        // names the process group, which is one we started (loadgen's).
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// SIGKILL to a process and all its descendants, children first (0: none).
pub(super) fn kill_tree(pid: i32) {
    if pid > 0 {
        for member in loadgen::server::process_tree(pid as u32).into_iter().rev() {
            // SAFETY: kill has no memory-safety preconditions; the pids are
            // the server we started and the workers it started.
            unsafe { libc::kill(member as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A loadgen run in its own process group (so it and the children it
/// spreads over end together), its stdout collected, its stderr relayed.
/// Killed, group and all, if dropped while running.
pub(super) struct Helper {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Helper {
    pub(super) fn spawn(command: &mut Command, quiet: bool) -> Result<Helper, TaskError> {
        eprintln!("    $ {}", describe(command));
        let mut child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TaskError::Failed(format!("starting {}: {e}", describe(command))))?;
        let stdout = child.stdout.take().map(|mut out| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            })
        });
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().map(|err| {
            let lines = stderr_lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if !quiet {
                        eprintln!("    {line}");
                    }
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            })
        });
        Ok(Helper {
            child,
            stdout,
            stderr_lines,
            stderr,
            status: None,
        })
    }

    pub(super) fn group(&self) -> i32 {
        self.child.id() as i32
    }

    pub(super) fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    pub(super) fn stderr_lines(&self) -> Vec<String> {
        self.stderr_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the exit (killing the group at the deadline) and returns
    /// what it printed on stdout.
    pub(super) fn finish(mut self, what: &str, deadline: Instant) -> Result<String, TaskError> {
        while !self.has_exited() {
            if Instant::now() >= deadline {
                kill_group(self.group());
                return Err(TaskError::Failed(format!(
                    "{what} did not finish in time and was killed"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(stderr) = self.stderr.take() {
            let _ = stderr.join();
        }
        Ok(self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.has_exited() {
            kill_group(self.group());
            let _ = self.child.wait();
        }
    }
}

/// The server, killed with all its workers if dropped while running.
pub(super) struct ServerGuard(pub(super) Option<ServerProcess>);

impl ServerGuard {
    pub(super) fn get(&self) -> Result<&ServerProcess, TaskError> {
        self.0
            .as_ref()
            .ok_or_else(|| TaskError::Failed("the server is gone".to_string()))
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            kill_tree(server.pid() as i32);
        }
    }
}
