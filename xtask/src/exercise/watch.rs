//! `cargo xtask exercise watch`: re-run the current exercise's tests every
//! time you save a file in its `src/`, show the next hint while it fails,
//! and move on to the next unfinished exercise when it passes.
//!
//! Saves are debounced (an editor's write-rename-chmod is one event), so one
//! save is one run. Keys, each followed by Enter: `h` the next hint, `l` the
//! list, `r` run again, `q` (or Ctrl-C) quit.

use std::fs;
use std::io::{self, BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

use super::{Exercise, check, first_unfinished, hints, print_list, save_progress};
use crate::exercise::progress::Progress;
use crate::run::{TaskError, TaskResult};

/// How long a burst of file events may last and still count as one save.
const DEBOUNCE: Duration = Duration::from_millis(300);

enum Event {
    /// Something happened under the watched `src/`.
    Saved,
    /// A line typed on the terminal.
    Key(String),
}

pub fn run(
    exercises: &[Exercise],
    start: Option<&Exercise>,
    progress: &mut Progress,
) -> TaskResult {
    let Some(mut current) = start else {
        println!("{}", super::all_done(exercises));
        return Ok(());
    };

    // Ctrl-C reaches the test run too (same process group) and ends it;
    // this flag makes the watcher itself leave through the front door.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .map_err(|e| TaskError::Failed(format!("installing the Ctrl-C handler: {e}")))?;
    }

    let (events, received) = mpsc::channel();
    let saves = events.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        if result.is_ok() {
            // The receiver only goes away when we are leaving anyway.
            let _ = saves.send(Event::Saved);
        }
    })
    .map_err(|e| TaskError::Failed(format!("starting the file watcher: {e}")))?;
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if events.send(Event::Key(line.trim().to_string())).is_err() {
                break;
            }
        }
    });

    let mut watched = current.dir.join("src");
    watch(&mut debouncer, &watched, true)?;
    let mut hints_shown = 0;
    let mut run_now = true;
    let mut last_run = Vec::new();
    loop {
        if run_now {
            run_now = false;
            if io::stdout().is_terminal() {
                // Clear the screen: each run starts on a fresh page.
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "watching {} — save a file in {} to run its tests again",
                current.name,
                watched.display()
            );
            last_run = fingerprint(&watched);
            let passed = check(current, progress, true)?;
            if interrupted.load(Ordering::Relaxed) {
                break;
            }
            if passed {
                let Some(next) = first_unfinished(exercises, progress) else {
                    println!("\n{}", super::all_done(exercises));
                    return Ok(());
                };
                println!(
                    "\nmoving on to {} (its task: {}/README.md)\n",
                    next.name,
                    next.dir.display()
                );
                current = next;
                hints_shown = 0;
                watch(&mut debouncer, &watched, false)?;
                watched = current.dir.join("src");
                watch(&mut debouncer, &watched, true)?;
                // Its untouched state fails: show what it asks, and hint 1.
                thread::sleep(Duration::from_secs(2));
                run_now = true;
                continue;
            }
            hints_shown = show_next_hint(current, hints_shown);
            println!(
                "\n[h] next hint  [l] list  [r] run again  [q] quit  (each followed by Enter)"
            );
        }
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        match received.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Saved) => {
                // The watcher also reports reads (the compiler opening the
                // files) and editors' swap files: run only when a Rust
                // source was written since the last run.
                run_now = fingerprint(&watched) != last_run;
            }
            Ok(Event::Key(key)) => match key.as_str() {
                "h" => hints_shown = show_next_hint(current, hints_shown),
                "l" => print_list(exercises, progress),
                "r" | "" => run_now = true,
                "q" => break,
                other => println!("`{other}`: [h] hint  [l] list  [r] run  [q] quit"),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    save_progress(progress)?;
    let done = exercises
        .iter()
        .filter(|ex| progress.is_done(&ex.name))
        .count();
    println!(
        "\nstopped watching; {done} of {} exercises done",
        exercises.len()
    );
    Ok(())
}

/// Shows the hint after the `shown` already shown (the last one again once
/// they are all out), and returns how many have been shown.
fn show_next_hint(ex: &Exercise, shown: usize) -> usize {
    let hints = hints(ex).unwrap_or_default();
    if hints.is_empty() {
        return shown;
    }
    let n = (shown + 1).min(hints.len());
    println!("\nhint {n} of {}:\n\n{}", hints.len(), hints[n - 1]);
    if n == hints.len() {
        println!(
            "\n(that was the last hint; `cargo xtask exercise {} --solution` shows the reference solution)",
            ex.name
        );
    }
    n
}

/// The Rust sources under `dir` with their modification times and sizes:
/// what changes when the reader saves, and not when the compiler reads.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    if super::files_under(dir, &mut files).is_err() {
        return Vec::new();
    }
    let mut prints: Vec<_> = files
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            let meta = fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect();
    prints.sort();
    prints
}

fn watch(
    debouncer: &mut notify_debouncer_mini::Debouncer<
        notify_debouncer_mini::notify::RecommendedWatcher,
    >,
    dir: &Path,
    on: bool,
) -> TaskResult {
    let watcher = debouncer.watcher();
    let result = if on {
        watcher.watch(dir, RecursiveMode::Recursive)
    } else {
        watcher.unwatch(dir)
    };
    result.map_err(|e| TaskError::Failed(format!("watching {}: {e}", dir.display())))
}
