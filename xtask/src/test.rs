//! `cargo xtask test`: everything CI checks, in the order a failure is cheapest
//! to find. `.ci/run` calls exactly this.

use std::time::Instant;

use clap::Args;

use crate::run::{TaskError, TaskResult, cargo, run_step};
use crate::{book, book_check, exercise, million, neighbours, results, samples, typed_numbers};

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
    // The Go baseline, where Go is installed, next to the release binaries
    // (its conformance tests above ran the same build); one line otherwise.
    eprintln!("\n==> go-echo next to the release binaries");
    c1m_benches::install_go_servers(&c1m_benches::release_dir())
        .map_err(|e| TaskError::Failed(format!("installing go-echo: {e}")))?;
    if !args.skip_exercises {
        eprintln!("\n==> exercises: each fails untouched and passes with its solution");
        exercise::check_all()?;
    }
    if !args.skip_book {
        book::build()?;
        book_check::check()?;
    }
    // The results page and chapter tables come from the committed data only.
    results::check()?;
    typed_numbers::check()?;
    samples::check()?;
    neighbours::check()?;
    eprintln!("\n==> the recorded million run matches its page");
    million::check_recorded()?;
    million::run_scaled_for_ci()?;
    eprintln!(
        "\nall checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
