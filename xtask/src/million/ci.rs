//! The scaled million the test command runs on every change.

use super::{MillionArgs, run, shortest_hold};
use crate::run::{TaskResult, workspace_root};

/// The scaled million `cargo xtask test` runs once chapter 08 exists:
/// `cargo xtask million --conns 50000 --procs 3 --probes 1 --skip-doctor`, so the
/// multi-process path (3 server processes, 3 loadgen processes) runs on
/// every change, judged on what is meaningful at 50,000: all held, every
/// one answered, a clean tear-down. (The doctor is skipped: it would ask a
/// fresh host for a million's SYN backlog; 50,000 need nothing special.)
pub fn run_scaled_for_ci() -> TaskResult {
    let manifest = workspace_root().join("chapters/08-million-connections/Cargo.toml");
    if !manifest.is_file() {
        eprintln!(
            "\n==> the scaled million: skipped until {} exists",
            manifest.display()
        );
        return Ok(());
    }
    run(&MillionArgs {
        conns: 50_000,
        server: super::DEFAULT_SERVER.to_string(),
        procs: "3".to_string(),
        rate: None,
        hold: Some(shortest_hold(1)),
        active: 1000,
        probes: 1,
        sources: "auto".to_string(),
        max_connecting: None,
        pin: false,
        skip_doctor: true,
        apply: false,
        json: None,
        record: false,
        record_from: None,
        min_available_gib: 3.0,
        flamegraph: false,
        record_flamegraph: false,
        record_experiment: None,
        render: false,
        check: false,
        flamegraph_from: 0.5,
        netns: false,
        dests: None,
        pre_touch: None,
    })
}
