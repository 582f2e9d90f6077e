//! `cargo xtask exercise …`: the learner's side of the exercises, and (for
//! `cargo xtask test`) the proof that every exercise fails untouched and
//! passes with its reference solution.
//!
//! An exercise is a standalone crate in `exercises/NNx-name/` (its own
//! workspace): `NN` is the chapter, `x` the order within it. It has
//! `README.md`, `HINTS.md` (hints separated by `---` lines), the start state
//! in `src/`, tests in `tests/`, and the reference solution in `solution/`
//! laid out relative to the crate root.
//!
//! - `cargo xtask exercise`               the list, with marks and a progress bar
//! - `cargo xtask exercise NAME`          run its tests; on failure, a hint
//! - `cargo xtask exercise next`          the same for the first unfinished one
//! - `cargo xtask exercise watch [NAME]`  re-run on every save, move on when it passes
//! - `cargo xtask exercise reset NAME`    restore the start state from git
//! - `--hint N`, `--solution [--side-by-side]`
//!
//! NAME is a full name (`02b-epollout-toggle`), a chapter (`02`: its first
//! unfinished exercise) or a unique prefix (`02b`). Progress lives in
//! `exercises/.progress` (see `progress.rs`).

mod diff;
mod progress;
mod watch;

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Args;

use crate::run::{TaskError, TaskResult, describe, workspace_root};
use progress::Progress;

#[derive(Args)]
pub struct ExerciseArgs {
    /// NAME (`02b-epollout-toggle`, `02b`, or `02` for chapter 02's first
    /// unfinished exercise), or `next`, `watch [NAME]`, `reset NAME`.
    /// Without it, list the exercises and your progress.
    #[arg(value_name = "NAME|next|watch|reset")]
    action: Option<String>,
    /// The exercise for `watch` and `reset`.
    #[arg(value_name = "NAME")]
    target: Option<String>,
    /// Show hint N (1 = the gentlest) instead of running the tests.
    #[arg(long, value_name = "N")]
    hint: Option<usize>,
    /// Show the reference solution as a diff against your files.
    #[arg(long, conflicts_with = "hint")]
    solution: bool,
    /// With --solution: your file and the solution in two columns.
    #[arg(long, requires = "solution")]
    side_by_side: bool,
    /// With reset: do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    /// For maintainers: prove that NAME (or, without it, every exercise)
    /// fails untouched and passes with its reference solution (tests,
    /// clippy, rustfmt), in scratch copies: the check `cargo xtask test` runs.
    #[arg(long, conflicts_with_all = ["hint", "solution"])]
    verify: bool,
}

/// What the words after `cargo xtask exercise` ask for.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    List,
    Check(String),
    Next,
    Watch(Option<String>),
    Reset(String),
}

fn parse_action(action: Option<&str>, target: Option<&str>) -> Result<Action, String> {
    match (action, target) {
        (None, _) => Ok(Action::List),
        (Some("next"), None) => Ok(Action::Next),
        (Some("watch"), target) => Ok(Action::Watch(target.map(str::to_string))),
        (Some("reset"), Some(name)) => Ok(Action::Reset(name.to_string())),
        (Some("reset"), None) => {
            Err("`reset` needs the exercise: `cargo xtask exercise reset NAME`".into())
        }
        (Some(name), None) => Ok(Action::Check(name.to_string())),
        (Some(first), Some(second)) => Err(format!(
            "unexpected `{second}` after `{first}`; only `watch` and `reset` take a name"
        )),
    }
}

pub struct Exercise {
    name: String,
    dir: PathBuf,
}

pub fn run(args: &ExerciseArgs) -> TaskResult {
    let exercises = list()?;
    let root = workspace_root();
    let mut progress = load_progress(&root)?;
    let action =
        parse_action(args.action.as_deref(), args.target.as_deref()).map_err(TaskError::Usage)?;
    if args.verify {
        return match &action {
            Action::List => check_all(),
            Action::Check(query) => {
                let ex = find(&exercises, &progress, query)?;
                eprintln!("    exercise {}", ex.name);
                check_one(ex).map_err(TaskError::Failed)?;
                eprintln!("    ok: {} fails untouched and passes solved", ex.name);
                Ok(())
            }
            _ => Err(TaskError::Usage(
                "--verify takes an exercise name, or none for all of them".into(),
            )),
        };
    }
    let chosen = match &action {
        Action::List if args.hint.is_none() && !args.solution => {
            print_list(&exercises, &progress);
            return Ok(());
        }
        Action::Watch(name) => {
            let start = match name {
                Some(query) => Some(find(&exercises, &progress, query)?),
                None => first_unfinished(&exercises, &progress),
            };
            return watch::run(&exercises, start, &mut progress);
        }
        Action::Reset(query) => {
            return reset(find(&exercises, &progress, query)?, &mut progress, args.yes);
        }
        Action::Check(query) => find(&exercises, &progress, query)?,
        // `--hint` and `--solution` without a name mean the next exercise.
        Action::List | Action::Next => match first_unfinished(&exercises, &progress) {
            Some(ex) => ex,
            None => {
                println!("{}", all_done(&exercises));
                return Ok(());
            }
        },
    };
    if let Some(n) = args.hint {
        return show_hint(chosen, n);
    }
    if args.solution {
        return show_solution(chosen, args.side_by_side);
    }
    if progress.is_done(&chosen.name) {
        println!("({} is already done; checking it again)", chosen.name);
    }
    if check(chosen, &mut progress, false)? {
        match first_unfinished(&exercises, &progress) {
            Some(next) => println!("next: {} (`cargo xtask exercise next`)", next.name),
            None => println!("{}", all_done(&exercises)),
        }
        Ok(())
    } else {
        println!();
        show_hint(chosen, 1)?;
        println!(
            "\n(more with `cargo xtask exercise {} --hint 2`, …; the task is in {}/README.md)",
            chosen.name,
            chosen.dir.display()
        );
        Err(TaskError::Failed(format!(
            "{} is not solved yet",
            chosen.name
        )))
    }
}

fn load_progress(root: &Path) -> Result<Progress, TaskError> {
    Progress::load(root)
        .map_err(|e| TaskError::Failed(format!("{}: {e}", Progress::path(root).display())))
}

fn save_progress(progress: &Progress) -> TaskResult {
    let root = workspace_root();
    progress
        .save(&root)
        .map_err(|e| TaskError::Failed(format!("{}: {e}", Progress::path(&root).display())))
}

/// Runs the exercise's tests on your work, records the result in the
/// progress file and says how it went. `quiet` passes `-q` to the test run.
fn check(ex: &Exercise, progress: &mut Progress, quiet: bool) -> Result<bool, TaskError> {
    println!("checking your work in {}", ex.dir.display());
    let mut args = vec!["test"];
    if quiet {
        args.push("-q");
    }
    let status = cargo_command(&ex.dir, &args)
        .status()
        .map_err(|e| TaskError::Failed(format!("could not run cargo: {e}")))?;
    let passed = status.success();
    if progress.set_done(&ex.name, passed) {
        save_progress(progress)?;
    }
    if passed {
        println!(
            "\n✓ {}: all tests pass. Well done — `--solution` shows another way.",
            ex.name
        );
    } else {
        println!("\n✗ {}: not yet.", ex.name);
    }
    Ok(passed)
}

fn first_unfinished<'a>(exercises: &'a [Exercise], progress: &Progress) -> Option<&'a Exercise> {
    exercises.iter().find(|ex| !progress.is_done(&ex.name))
}

fn all_done(exercises: &[Exercise]) -> String {
    format!(
        "all {} exercises done. `cargo xtask exercise reset NAME` to do one again.",
        exercises.len()
    )
}

fn print_list(exercises: &[Exercise], progress: &Progress) {
    let done = exercises
        .iter()
        .filter(|ex| progress.is_done(&ex.name))
        .count();
    let next = first_unfinished(exercises, progress).map(|ex| ex.name.as_str());
    println!("exercises {}\n", progress::bar(done, exercises.len(), 30));
    let width = exercises.iter().map(|ex| ex.name.len()).max().unwrap_or(0);
    for ex in exercises {
        let mark = if progress.is_done(&ex.name) {
            "✓"
        } else if Some(ex.name.as_str()) == next {
            "▸"
        } else {
            " "
        };
        println!("  {mark} {:<width$}  {}", ex.name, title(ex));
    }
    println!();
    match next {
        Some(name) => println!(
            "next: {name}. `cargo xtask exercise next` checks it; `cargo xtask exercise watch` re-checks on every save."
        ),
        None => println!("{}", all_done(exercises)),
    }
}

/// `--solution`: every file of `solution/` against yours.
fn show_solution(ex: &Exercise, side_by_side: bool) -> TaskResult {
    let solution_dir = ex.dir.join("solution");
    let mut files = Vec::new();
    files_under(&solution_dir, &mut files)
        .map_err(|e| TaskError::Failed(format!("{}: {e}", solution_dir.display())))?;
    files.sort();
    let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(160);
    for file in files {
        let Ok(relative) = file.strip_prefix(&solution_dir) else {
            continue;
        };
        let solution = fs::read_to_string(&file)
            .map_err(|e| TaskError::Failed(format!("{}: {e}", file.display())))?;
        let yours = fs::read_to_string(ex.dir.join(relative)).unwrap_or_default();
        let labels = (
            format!("yours: {}", relative.display()),
            format!("solution: solution/{}", relative.display()),
        );
        let labels = (labels.0.as_str(), labels.1.as_str());
        let shown = if side_by_side {
            diff::side_by_side(&yours, &solution, labels, width, color)
        } else {
            diff::unified(&yours, &solution, labels, color)
        };
        if yours == solution {
            println!("{}: yours is the reference solution", relative.display());
        } else {
            print!("{shown}");
        }
    }
    println!(
        "\n(the reference solution of {} is in {}; it is one way, not the only one)",
        ex.name,
        solution_dir.display()
    );
    Ok(())
}

fn files_under(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            files_under(&entry.path(), files)?;
        } else {
            files.push(entry.path());
        }
    }
    Ok(())
}

/// `reset NAME`: the exercise as git has it (HEAD), your changes and new
/// files under it gone, and its mark removed.
fn reset(ex: &Exercise, progress: &mut Progress, yes: bool) -> TaskResult {
    let root = workspace_root();
    let relative = format!("exercises/{}", ex.name);
    let git = |args: &[&str]| -> Result<Output, TaskError> {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&root).args(args);
        cmd.output()
            .map_err(|e| TaskError::Failed(format!("could not run {}: {e}", describe(&cmd))))
    };
    let tracked = git(&["ls-files", "--", &relative])?;
    if !tracked.status.success() || tracked.stdout.is_empty() {
        return Err(TaskError::Failed(format!(
            "{relative} is not in a git checkout, so there is no start state to restore; \
             clone the repository to use `reset`"
        )));
    }
    let status = git(&["status", "--short", "--", &relative])?;
    let changed = String::from_utf8_lossy(&status.stdout).into_owned();
    if changed.trim().is_empty() {
        println!("{} is already in its start state", ex.name);
    } else {
        println!(
            "reset {} to its start state, discarding:\n{changed}",
            ex.name
        );
        if !yes && !confirm("discard these changes? [y/N] ")? {
            println!("nothing changed");
            return Ok(());
        }
        for args in [
            &["checkout", "HEAD", "--", relative.as_str()][..],
            &["clean", "-fdq", "--", relative.as_str()][..],
        ] {
            let out = git(args)?;
            if !out.status.success() {
                return Err(TaskError::Failed(format!(
                    "git {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        println!("{} is back to its start state", ex.name);
    }
    if progress.set_done(&ex.name, false) {
        save_progress(progress)?;
    }
    Ok(())
}

fn confirm(question: &str) -> Result<bool, TaskError> {
    print!("{question}");
    io::stdout().flush().ok();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| TaskError::Failed(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
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

/// Resolves NAME: a full name; a chapter number (`02` or `2`), meaning its
/// first unfinished exercise (its first one once all are done); or a unique
/// prefix.
fn find<'a>(
    exercises: &'a [Exercise],
    progress: &Progress,
    query: &str,
) -> Result<&'a Exercise, TaskError> {
    if let Some(ex) = exercises.iter().find(|ex| ex.name == query) {
        return Ok(ex);
    }
    if (1..=2).contains(&query.len()) && query.bytes().all(|b| b.is_ascii_digit()) {
        // `4` is chapter 04 too.
        let number = format!("{query:0>2}");
        let chapter: Vec<&Exercise> = exercises
            .iter()
            .filter(|ex| chapter_of(&ex.name) == Some(number.as_str()))
            .collect();
        if let Some(ex) = chapter
            .iter()
            .find(|ex| !progress.is_done(&ex.name))
            .or(chapter.first())
        {
            return Ok(ex);
        }
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

/// `02` for `02b-epollout-toggle`: the digits before the order letter.
fn chapter_of(name: &str) -> Option<&str> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0).then(|| &name[..digits])
}

/// The first heading of the exercise's README without its `Exercise 02b —`
/// prefix, for the listing.
fn title(ex: &Exercise) -> String {
    fs::read_to_string(ex.dir.join("README.md"))
        .ok()
        .and_then(|text| {
            text.lines().find(|l| l.starts_with('#')).map(|l| {
                let heading = l.trim_start_matches('#').trim();
                heading
                    .split_once(" — ")
                    .map_or(heading, |(_, title)| title)
                    .to_string()
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exercises(names: &[&str]) -> Vec<Exercise> {
        names
            .iter()
            .map(|name| Exercise {
                name: (*name).to_string(),
                dir: PathBuf::from("exercises").join(name),
            })
            .collect()
    }

    const NAMES: &[&str] = &[
        "01a-bounded-thread-pool",
        "02a-partial-writes",
        "02b-epollout-toggle",
        "03a-et-drain",
    ];

    fn resolve(progress: &str, query: &str) -> Result<String, String> {
        find(&exercises(NAMES), &Progress::parse(progress), query)
            .map(|ex| ex.name.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_chapter_number_means_its_first_unfinished_exercise() {
        assert_eq!(resolve("", "02").unwrap(), "02a-partial-writes");
        assert_eq!(
            resolve("02a-partial-writes\n", "02").unwrap(),
            "02b-epollout-toggle"
        );
        assert_eq!(
            resolve("02a-partial-writes\n02b-epollout-toggle\n", "02").unwrap(),
            "02a-partial-writes",
            "all done: start the chapter again"
        );
        assert_eq!(resolve("", "01").unwrap(), "01a-bounded-thread-pool");
        assert!(
            resolve("", "09")
                .unwrap_err()
                .contains("no exercise matches")
        );
        assert_eq!(
            resolve("", "2").unwrap(),
            "02a-partial-writes",
            "`2` is chapter 02"
        );
    }

    #[test]
    fn full_names_and_unique_prefixes_still_work() {
        assert_eq!(
            resolve("", "02b-epollout-toggle").unwrap(),
            "02b-epollout-toggle"
        );
        assert_eq!(resolve("", "02b").unwrap(), "02b-epollout-toggle");
        assert_eq!(resolve("", "03a-et").unwrap(), "03a-et-drain");
        assert!(resolve("", "0").unwrap_err().contains("several"));
        assert!(
            resolve("", "zz")
                .unwrap_err()
                .contains("no exercise matches")
        );
    }

    #[test]
    fn next_is_the_first_unfinished_in_order() {
        let list = exercises(NAMES);
        let progress = Progress::parse("01a-bounded-thread-pool\n02b-epollout-toggle\n");
        let next = first_unfinished(&list, &progress).map(|ex| ex.name.as_str());
        assert_eq!(next, Some("02a-partial-writes"));
        let all = Progress::parse(&NAMES.join("\n"));
        assert!(first_unfinished(&list, &all).is_none());
    }

    #[test]
    fn the_words_after_exercise_are_read_as_an_action() {
        assert_eq!(parse_action(None, None), Ok(Action::List));
        assert_eq!(parse_action(Some("next"), None), Ok(Action::Next));
        assert_eq!(parse_action(Some("watch"), None), Ok(Action::Watch(None)));
        assert_eq!(
            parse_action(Some("watch"), Some("03")),
            Ok(Action::Watch(Some("03".into())))
        );
        assert_eq!(
            parse_action(Some("reset"), Some("02a")),
            Ok(Action::Reset("02a".into()))
        );
        assert!(parse_action(Some("reset"), None).is_err());
        assert_eq!(
            parse_action(Some("02"), None),
            Ok(Action::Check("02".into()))
        );
        assert!(parse_action(Some("02"), Some("03")).is_err());
    }

    #[test]
    fn exercise_names_are_unique_and_ordered_by_chapter() {
        let list = list().unwrap();
        assert!(!list.is_empty());
        for ex in &list {
            let chapter = chapter_of(&ex.name).unwrap_or_default();
            assert_eq!(chapter.len(), 2, "{}: NNx-name", ex.name);
            let order = ex.name.as_bytes()[2];
            assert!(
                order.is_ascii_lowercase() && ex.name.as_bytes()[3] == b'-',
                "{}: NNx-name, x the order within the chapter",
                ex.name
            );
        }
    }
}
