//! `cargo xtask test`: everything CI checks, in the order a failure is cheapest
//! to find. `.ci/run` calls exactly this.

use std::time::Instant;

use clap::Args;

use crate::run::{TaskResult, cargo, run_step};
use crate::{book, exercise, million, results};

#[derive(Args)]
pub struct TestArgs {
    /// Skip the exercise checks (they build every exercise twice).
    #[arg(long)]
    skip_exercises: bool,
    /// Skip building the book.
    #[arg(long)]
    skip_book: bool,
}

pub fn run(args: &TestArgs) -> TaskResult {
    let started = Instant::now();
    run_step(
        "format check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run_step(
        "clippy, warnings are errors",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step("all tests", cargo().args(["test", "--workspace"]))?;
    if !args.skip_exercises {
        eprintln!("\n==> exercises: each fails untouched and passes with its solution");
        exercise::check_all()?;
    }
    if !args.skip_book {
        book::build()?;
    }
    // The results page and chapter tables come from the committed data only.
    results::check()?;
    eprintln!("\n==> the recorded million run matches its page");
    million::check_recorded()?;
    million::run_scaled_for_ci()?;
    eprintln!(
        "\nall checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
