//! Which exercises you have finished: `exercises/.progress`, one name a line.
//!
//! The file is your state, not the project's: it is gitignored, so pulling
//! new chapters never conflicts with it and `reset` never loses it. A name
//! is written when the exercise's tests pass through the runner and removed
//! when they fail again or the exercise is reset.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const HEADER: &str = "\
# Exercises you have finished, one name a line. Written by `cargo xtask exercise`
# when an exercise's tests pass; safe to edit or delete (gitignored).
";

/// The names recorded as done.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    done: BTreeSet<String>,
}

impl Progress {
    /// Reads the progress text: blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Progress {
        let done = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect();
        Progress { done }
    }

    pub fn render(&self) -> String {
        let mut text = HEADER.to_string();
        for name in &self.done {
            text.push_str(name);
            text.push('\n');
        }
        text
    }

    pub fn is_done(&self, name: &str) -> bool {
        self.done.contains(name)
    }

    /// Records the result of a run; true if that changed anything.
    pub fn set_done(&mut self, name: &str, done: bool) -> bool {
        if done {
            self.done.insert(name.to_string())
        } else {
            self.done.remove(name)
        }
    }

    /// `exercises/.progress` under `root`, the workspace root.
    pub fn path(root: &Path) -> PathBuf {
        root.join("exercises").join(".progress")
    }

    /// A missing file is a fresh start, not an error.
    pub fn load(root: &Path) -> io::Result<Progress> {
        match fs::read_to_string(Progress::path(root)) {
            Ok(text) => Ok(Progress::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Progress::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, root: &Path) -> io::Result<()> {
        fs::write(Progress::path(root), self.render())
    }
}

/// `[██████░░░░░░░░░░░░░░]  3/15` in `width` cells.
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    format!(
        "[{}{}] {done}/{total}",
        "█".repeat(filled),
        "░".repeat(width - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_a_round_trip_through_its_file() {
        let mut progress = Progress::default();
        assert!(progress.set_done("02a-partial-writes", true));
        assert!(progress.set_done("01a-bounded-thread-pool", true));
        assert!(!progress.set_done("01a-bounded-thread-pool", true), "twice");
        let text = progress.render();
        assert!(text.starts_with('#'), "the file explains itself");
        assert!(text.ends_with("01a-bounded-thread-pool\n02a-partial-writes\n"));
        assert_eq!(Progress::parse(&text), progress);
    }

    #[test]
    fn a_failed_run_takes_an_exercise_off_the_list() {
        let mut progress = Progress::parse("03a-et-drain\n03b-read-budget\n");
        assert!(progress.set_done("03a-et-drain", false));
        assert!(!progress.is_done("03a-et-drain"));
        assert!(progress.is_done("03b-read-budget"));
    }

    #[test]
    fn hand_edits_with_blanks_and_comments_are_read() {
        let progress = Progress::parse("# mine\n\n  05a-buffer-pool  \n#06a-wheel-tick\n");
        assert!(progress.is_done("05a-buffer-pool"));
        assert!(!progress.is_done("06a-wheel-tick"));
    }

    #[test]
    fn a_missing_file_is_a_fresh_start() {
        let root = std::env::temp_dir().join(format!("xtask-progress-{}", std::process::id()));
        fs::create_dir_all(root.join("exercises")).unwrap();
        assert_eq!(Progress::load(&root).unwrap(), Progress::default());
        let mut progress = Progress::default();
        progress.set_done("07a-pin-threads", true);
        progress.save(&root).unwrap();
        assert_eq!(Progress::load(&root).unwrap(), progress);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar(0, 4, 4), "[░░░░] 0/4");
        assert_eq!(bar(2, 4, 4), "[██░░] 2/4");
        assert_eq!(bar(4, 4, 4), "[████] 4/4");
        assert_eq!(bar(0, 0, 4), "[░░░░] 0/0");
    }
}
