//! `cargo xtask demo`: start the most advanced server present, pinned to one
//! core, and measure it with loadgen on the other — the first thing a reader
//! runs after cloning.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;
use loadgen::server::ServerProcess;

use crate::run::{TaskError, TaskResult, cargo, run_step, workspace_root};

#[derive(Args)]
pub struct DemoArgs {
    /// Server package to run (default: the highest-numbered chapter present).
    #[arg(long)]
    server: Option<String>,
    /// Concurrent connections for the echo measurement.
    #[arg(long, default_value_t = 100)]
    conns: u32,
    /// Seconds of echo load.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Idle connections to ramp up and hold afterwards.
    #[arg(long, default_value_t = 5000)]
    hold: u32,
}

pub fn run(args: &DemoArgs) -> TaskResult {
    let server = match &args.server {
        Some(name) => name.clone(),
        None => latest_chapter()?,
    };
    run_step(
        "build the server and loadgen (release)",
        cargo().args(["build", "--release", "-p", &server, "-p", "loadgen"]),
    )?;
    let bin_dir = workspace_root().join("target").join("release");
    // A Go server is built by its crate's build.rs; put it beside the others.
    if c1m_benches::server(&server).is_some_and(|s| s.toolchain == c1m_benches::Toolchain::Go) {
        let installed = c1m_benches::install_go_servers(&bin_dir)
            .map_err(|e| TaskError::Failed(format!("installing {server}: {e}")))?;
        if !installed {
            return Err(TaskError::Failed(format!(
                "{server} needs a Go toolchain (apt-get install golang-go)"
            )));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // With two or more cores, server and load each get their own, so the
    // numbers are the server's and not a fight over one core.
    let (server_core, load_core) = if cores >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    };

    // The flags the results use for this server (chapter 08: one worker
    // process, measured on one core like the others).
    let server_args = c1m_benches::server(&server).map_or(&[][..], |s| s.args);
    let mut builder = ServerProcess::builder(bin_dir.join(&server)).args(server_args);
    if let Some(core) = server_core {
        builder = builder.cpu(core);
    }
    let process = builder
        .spawn()
        .map_err(|e| TaskError::Failed(format!("starting {server}: {e}")))?;
    let addr = process.addr().to_string();
    let pid = process.pid().to_string();
    eprintln!("\n{server} listening on {addr} (pid {pid}, core {server_core:?})");

    let loadgen = bin_dir.join("loadgen");
    let pin: Vec<String> = load_core
        .map(|c| vec!["--cpu".to_string(), c.to_string()])
        .unwrap_or_default();
    let echo = run_step(
        &format!(
            "echo: {} connections, 64-byte messages, {} s",
            args.conns, args.duration
        ),
        Command::new(&loadgen)
            .args([
                "echo",
                "--addr",
                &addr,
                "--size",
                "64",
                "--server-pid",
                &pid,
            ])
            .args(["--conns", &args.conns.to_string()])
            .args(["--duration", &args.duration.to_string()])
            .args(&pin),
    );
    let hold = run_step(
        &format!(
            "hold: ramp {} idle connections and ping a sample",
            args.hold
        ),
        Command::new(&loadgen)
            .args(["hold", "--addr", &addr, "--hold", "3"])
            .args(["--conns", &args.hold.to_string()])
            .args(&pin),
    );

    let shutdown = process
        .shutdown()
        .map_err(|e| TaskError::Failed(format!("stopping {server}: {e}")))?;
    if let Some(line) = shutdown.summary_line() {
        println!("\n{server} on SIGINT: {line}");
    }
    echo?;
    hold?;
    Ok(())
}

/// The package of the highest-numbered chapter: `chapters/03-epoll-edge-triggered`
/// holds package `ch03-epoll-edge-triggered`.
fn latest_chapter() -> Result<String, TaskError> {
    let dir: PathBuf = workspace_root().join("chapters");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| TaskError::Failed(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .pop()
        .map(|name| format!("ch{name}"))
        .ok_or_else(|| TaskError::Failed("no chapters found".into()))
}
