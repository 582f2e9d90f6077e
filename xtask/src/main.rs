//! `cargo xtask …`: the project's own commands, written in Rust so they run
//! wherever cargo does.
//!
//! - `test`      everything CI checks: fmt, clippy, tests, exercises, the book
//! - `demo`      the most advanced server present, measured by loadgen
//! - `book`      build the book (or `--serve` it)
//! - `exercise`  the exercises: list and progress, check, next, watch, reset, hints, solutions
//! - `results`   measure every server and write the book's results page
//! - `doctor`    check (and with --apply raise) the host limits for a million connections
//! - `million`   hold a million connections with chapter 08's server, measure, report
//! - `neighbours` the table of diff sizes between neighbouring chapters, and the reading-time estimate
//! - `profile`   perf profiles of servers at several connection counts, for the book
//! - `samples`   run the programs whose output the book shows, and record it (or --check its shape)

mod book;
mod book_check;
mod clock;
mod demo;
mod descriptor_watch;
mod doctor;
mod exercise;
mod first_touch;
mod million;
mod neighbours;
mod procfs;
mod profile;
mod reading_time;
mod results;
mod run;
mod samples;
mod test;
mod typed_numbers;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "c1m-rs project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every check CI runs: fmt, clippy, all tests, exercise checks, book build.
    Test(test::TestArgs),
    /// Start the most advanced server present and measure it with loadgen.
    Demo(demo::DemoArgs),
    /// Build the book into book/build (installs mdbook if missing).
    Book(book::BookArgs),
    /// The exercises: list with progress, check one (NAME, chapter NN, next), watch, reset, --hint, --solution.
    Exercise(exercise::ExerciseArgs),
    /// Measure every server and write the book's results page (or --check it).
    Results(results::ResultsArgs),
    /// Check the host limits a million connections meet (--apply fixes them as root).
    Doctor(doctor::DoctorArgs),
    /// Hold a million connections with chapter 08's server: doctor, ramp, measure, tear down, report.
    Million(million::MillionArgs),
    /// Write (or --check) the neighbouring chapters' diff sizes and the chapters' reading-time estimate.
    Neighbours(neighbours::NeighboursArgs),
    /// Profile servers with perf at several connection counts; writes book/src/generated/profile.md.
    Profile(profile::ProfileArgs),
    /// Record the program output the book shows (or --check its shape; --walkthrough: ch08's 200K run).
    Samples(samples::SamplesArgs),
    /// Hold N eventfds open until stdin closes (the doctor's descriptor-watch child).
    #[command(hide = true)]
    HoldDescriptors(descriptor_watch::HoldArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Book(args) => book::run(&args),
        Command::Exercise(args) => exercise::run(&args),
        Command::Results(args) => results::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Million(args) => million::run(&args),
        Command::Profile(args) => profile::run(&args),
        Command::Neighbours(args) => neighbours::run(&args),
        Command::Samples(args) => samples::run(&args),
        Command::HoldDescriptors(args) => descriptor_watch::hold(&args)
            .map_err(|e| run::TaskError::Failed(format!("holding descriptors: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
