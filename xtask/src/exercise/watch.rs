//! `cargo xtask exercise watch`: re-run the current exercise's tests every
//! time you save a file in its `src/`, show the next hint while it fails,
//! and move on to the next unfinished exercise when it passes.
//!
//! Saves are debounced (an editor's write-rename-chmod is one event), so one
//! save is one run. Keys, each followed by Enter: `h` the next hint, `l` the
//! list, `r` run again, `q` (or Ctrl-C) quit.

use std::io::{self, BufRead, IsTerminal};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

use super::{Exercise, check, first_unfinished, hints, print_list, save_progress};
use crate::exercise::progress::Progress;
use crate::run::{TaskError, TaskResult};

/// How long a burst of file events may last and still count as one save.
const DEBOUNCE: Duration = Duration::from_millis(300);

enum Event {
    /// Files changed under the watched `src/`.
    Saved(Vec<std::path::PathBuf>),
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
        if let Ok(changes) = result {
            let paths = changes.into_iter().map(|change| change.path).collect();
            // The receiver only goes away when we are leaving anyway.
            let _ = saves.send(Event::Saved(paths));
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
            Ok(Event::Saved(paths)) => {
                // Editors also write swap and backup files; only Rust
                // sources are the reader's work.
                run_now = paths
                    .iter()
                    .any(|path| path.extension().is_some_and(|ext| ext == "rs"));
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
