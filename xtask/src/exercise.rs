//! `cargo xtask exercise [NAME]`: check an exercise, show its hints, and (for
//! `cargo xtask test`) prove that every exercise fails untouched and passes
//! with its reference solution.
//!
//! An exercise is a standalone crate in `exercises/NN-name/` (its own
//! workspace), with `README.md`, `HINTS.md` (hints separated by `---` lines),
//! the start state in `src/`, tests in `tests/`, and the reference solution in
//! `solution/` laid out relative to the crate root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Args;

use crate::run::{TaskError, TaskResult, describe, workspace_root};

#[derive(Args)]
pub struct ExerciseArgs {
    /// The exercise: its directory name (`01-bounded-thread-pool`) or a unique
    /// prefix of it (`01`). Without it, list the exercises.
    name: Option<String>,
    /// Show hint N (1 = the gentlest) instead of running the tests.
    #[arg(long, value_name = "N")]
    hint: Option<usize>,
    /// Check the reference solution instead of your work (in a scratch copy;
    /// your files are not touched).
    #[arg(long, conflicts_with = "hint")]
    solution: bool,
}

struct Exercise {
    name: String,
    dir: PathBuf,
}

pub fn run(args: &ExerciseArgs) -> TaskResult {
    let exercises = list()?;
    let Some(query) = &args.name else {
        println!("exercises (check one with `cargo xtask exercise NAME`):");
        for ex in &exercises {
            println!("  {:<32} {}", ex.name, title(ex));
        }
        return Ok(());
    };
    let ex = find(&exercises, query)?;
    if let Some(n) = args.hint {
        return show_hint(ex, n);
    }
    if args.solution {
        let copy = scratch_copy(ex, true)?;
        let output = cargo_in(&copy, &["test"])?;
        print_output(&output);
        return if output.status.success() {
            println!("the reference solution of {} passes", ex.name);
            Ok(())
        } else {
            Err(TaskError::Failed(format!(
                "the reference solution of {} fails",
                ex.name
            )))
        };
    }
    println!("checking your work in {}", ex.dir.display());
    let status = cargo_command(&ex.dir, &["test"])
        .status()
        .map_err(|e| TaskError::Failed(format!("could not run cargo: {e}")))?;
    if status.success() {
        println!(
            "\n{}: all tests pass. Well done — compare with solution/ to see another way.",
            ex.name
        );
        Ok(())
    } else {
        println!("\n{}: not yet. A hint:\n", ex.name);
        show_hint(ex, 1)?;
        println!(
            "\n(more with `cargo xtask exercise {} --hint 2`, …; the task is in {}/README.md)",
            ex.name,
            ex.dir.display()
        );
        Err(TaskError::Failed(format!("{} is not solved yet", ex.name)))
    }
}

/// For `cargo xtask test`: every exercise must compile and fail untouched, and
/// pass (tests and clippy) with its reference solution.
pub fn check_all() -> TaskResult {
    let exercises = list()?;
    if exercises.is_empty() {
        return Err(TaskError::Failed(
            "no exercises found under exercises/".into(),
        ));
    }
    let mut problems = Vec::new();
    // The book's exercise page includes every exercise's README, so a new
    // exercise cannot be forgotten there.
    let page = workspace_root()
        .join("book")
        .join("src")
        .join("exercises.md");
    let page = fs::read_to_string(&page).unwrap_or_default();
    for ex in &exercises {
        let include = format!("exercises/{}/README.md", ex.name);
        if !page.contains(&include) {
            problems.push(format!(
                "{}: book/src/exercises.md does not include {include}",
                ex.name
            ));
        }
    }
    for ex in &exercises {
        eprintln!("    exercise {}", ex.name);
        if let Err(problem) = check_one(ex) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        eprintln!(
            "    ok: {} exercises fail untouched and pass solved",
            exercises.len()
        );
        Ok(())
    } else {
        Err(TaskError::Failed(problems.join("\n")))
    }
}

fn check_one(ex: &Exercise) -> Result<(), String> {
    for required in ["README.md", "HINTS.md", "solution", "tests"] {
        if !ex.dir.join(required).exists() {
            return Err(format!("{}: missing {required}", ex.name));
        }
    }
    if hints(ex).map_err(|e| e.to_string())?.is_empty() {
        return Err(format!("{}: HINTS.md has no hints", ex.name));
    }

    let start = scratch_copy(ex, false).map_err(|e| e.to_string())?;
    let built = cargo_in(&start, &["test", "--no-run"]).map_err(|e| e.to_string())?;
    if !built.status.success() {
        print_output(&built);
        return Err(format!("{}: the start state does not compile", ex.name));
    }
    let untouched = cargo_in(&start, &["test"]).map_err(|e| e.to_string())?;
    if untouched.status.success() {
        print_output(&untouched);
        return Err(format!(
            "{}: tests pass on the untouched exercise (they must fail)",
            ex.name
        ));
    }

    let solved = scratch_copy(ex, true).map_err(|e| e.to_string())?;
    let tested = cargo_in(&solved, &["test"]).map_err(|e| e.to_string())?;
    if !tested.status.success() {
        print_output(&tested);
        return Err(format!(
            "{}: tests fail with the reference solution",
            ex.name
        ));
    }
    let linted = cargo_in(
        &solved,
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )
    .map_err(|e| e.to_string())?;
    if !linted.status.success() {
        print_output(&linted);
        return Err(format!(
            "{}: clippy fails on the reference solution",
            ex.name
        ));
    }
    let formatted = cargo_in(&solved, &["fmt", "--", "--check"]).map_err(|e| e.to_string())?;
    if !formatted.status.success() {
        print_output(&formatted);
        return Err(format!(
            "{}: the reference solution is not rustfmt-clean",
            ex.name
        ));
    }
    let formatted = cargo_in(&start, &["fmt", "--", "--check"]).map_err(|e| e.to_string())?;
    if !formatted.status.success() {
        print_output(&formatted);
        return Err(format!("{}: the start state is not rustfmt-clean", ex.name));
    }
    Ok(())
}

fn list() -> Result<Vec<Exercise>, TaskError> {
    let root = workspace_root().join("exercises");
    let entries = fs::read_dir(&root)
        .map_err(|e| TaskError::Failed(format!("cannot read {}: {e}", root.display())))?;
    let mut exercises: Vec<Exercise> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| Exercise {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
        })
        .collect();
    exercises.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(exercises)
}

fn find<'a>(exercises: &'a [Exercise], query: &str) -> Result<&'a Exercise, TaskError> {
    if let Some(ex) = exercises.iter().find(|ex| ex.name == query) {
        return Ok(ex);
    }
    let matches: Vec<&Exercise> = exercises
        .iter()
        .filter(|ex| ex.name.starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(TaskError::Usage(format!(
            "no exercise matches `{query}`; `cargo xtask exercise` lists them"
        ))),
        many => Err(TaskError::Usage(format!(
            "`{query}` matches several exercises: {}",
            many.iter()
                .map(|ex| ex.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The first heading of the exercise's README, for the listing.
fn title(ex: &Exercise) -> String {
    fs::read_to_string(ex.dir.join("README.md"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim().to_string())
        })
        .unwrap_or_default()
}

fn hints(ex: &Exercise) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(ex.dir.join("HINTS.md"))?;
    let mut hints = vec![String::new()];
    for line in text.lines() {
        if line.trim() == "---" {
            hints.push(String::new());
        } else if let Some(current) = hints.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    Ok(hints
        .into_iter()
        .map(|h| h.trim().to_string())
        // A section holding only a heading (`# Hints`) is a title, not a hint.
        .filter(|h| {
            h.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect())
}

fn show_hint(ex: &Exercise, n: usize) -> TaskResult {
    let hints = hints(ex).map_err(|e| TaskError::Failed(format!("{}: HINTS.md: {e}", ex.name)))?;
    match n.checked_sub(1).and_then(|i| hints.get(i)) {
        Some(hint) => {
            println!("hint {n} of {}:\n\n{hint}", hints.len());
            Ok(())
        }
        None => Err(TaskError::Usage(format!(
            "{} has hints 1..={}; the reference solution is in {}/solution/",
            ex.name,
            hints.len(),
            ex.dir.display()
        ))),
    }
}

/// Copy the exercise to `target/exercise-check/<name>[-solved]`, leaving out
/// `solution/` and build output; with `solved`, lay the solution over it.
fn scratch_copy(ex: &Exercise, solved: bool) -> Result<PathBuf, TaskError> {
    let suffix = if solved { "-solved" } else { "" };
    let dest = workspace_root()
        .join("target")
        .join("exercise-check")
        .join(format!("{}{suffix}", ex.name));
    let copy = || -> io::Result<()> {
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        copy_tree(&ex.dir, &dest, &["solution", "target", "Cargo.lock"])?;
        if solved {
            copy_tree(&ex.dir.join("solution"), &dest, &[])?;
        }
        Ok(())
    };
    copy().map_err(|e| TaskError::Failed(format!("copying {}: {e}", ex.name)))?;
    Ok(dest)
}

fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target, &[])?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `cargo ARGS` in an exercise crate. Exercises share target dirs so their
/// dependencies build once, but the start state, the solved copy and your
/// work each get their own: all three are the same package, and cargo would
/// otherwise happily run one's test binary for another.
fn cargo_command(dir: &Path, args: &[&str]) -> Command {
    let flavour = match dir.file_name().and_then(|n| n.to_str()) {
        Some(name) if name.ends_with("-solved") => "solved",
        _ if dir.starts_with(workspace_root().join("target")) => "start",
        _ => "work",
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(dir).env(
        "CARGO_TARGET_DIR",
        workspace_root()
            .join("target")
            .join("exercises")
            .join(flavour),
    );
    cmd
}

fn cargo_in(dir: &Path, args: &[&str]) -> Result<Output, TaskError> {
    let mut cmd = cargo_command(dir, args);
    cmd.output()
        .map_err(|e| TaskError::Failed(format!("could not run {}: {e}", describe(&cmd))))
}

fn print_output(output: &Output) {
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
}
