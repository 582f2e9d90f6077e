//! Running commands and finding the workspace: the little plumbing every task shares.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Why a task failed. `Usage` is a problem with what the user asked for (exit 2);
/// `Failed` is a check or a command that did not pass (exit 1).
#[derive(Debug)]
pub enum TaskError {
    Usage(String),
    Failed(String),
}

impl TaskError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TaskError::Usage(_) => 2,
            TaskError::Failed(_) => 1,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Usage(msg) | TaskError::Failed(msg) => f.write_str(msg),
        }
    }
}

pub type TaskResult = Result<(), TaskError>;

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// `cargo` as invoked us (respects `$CARGO`), else the one on PATH.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Run a command to completion, echoing it first; a non-zero exit is a `Failed`.
pub fn run_step(title: &str, cmd: &mut Command) -> TaskResult {
    eprintln!("\n==> {title}\n    $ {}", describe(cmd));
    let started = Instant::now();
    let status = cmd.status().map_err(|e| {
        TaskError::Failed(format!("{title}: could not start {}: {e}", describe(cmd)))
    })?;
    let took = started.elapsed().as_secs_f64();
    if status.success() {
        eprintln!("    ok ({took:.1} s)");
        Ok(())
    } else {
        Err(TaskError::Failed(format!(
            "{title} failed ({status}) after {took:.1} s"
        )))
    }
}

/// The command line as a reader would type it.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Is `program --version` runnable?
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
