//! Runs the book keeps: a list in one JSON file under `book/src/results/`
//! and the page it renders to under `book/src/generated/`, written together
//! and checked together.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::run::{TaskError, TaskResult, workspace_root};

/// One recorded list: `book/src/results/STEM.json` → `book/src/generated/STEM.md`.
pub(super) struct RecordedRuns {
    pub(super) stem: &'static str,
    /// The command that records a run, named when the page is stale.
    pub(super) command: &'static str,
}

impl RecordedRuns {
    fn json(&self) -> PathBuf {
        workspace_root().join(format!("book/src/results/{}.json", self.stem))
    }

    fn page(&self) -> PathBuf {
        workspace_root().join(format!("book/src/generated/{}.md", self.stem))
    }

    /// The recorded runs; none when nothing was recorded yet.
    pub(super) fn read<T: DeserializeOwned>(&self) -> Result<Vec<T>, TaskError> {
        match fs::read_to_string(self.json()) {
            Ok(json) => serde_json::from_str(&json).map_err(|e| {
                TaskError::Failed(format!("book/src/results/{}.json: {e}", self.stem))
            }),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Writes the runs and the page rendered from them.
    pub(super) fn write<T: Serialize>(&self, runs: &[T], page: String) -> TaskResult {
        let json = serde_json::to_string_pretty(runs)
            .map_err(|e| TaskError::Failed(format!("encoding {}: {e}", self.stem)))?;
        write_files([(self.json(), json + "\n"), (self.page(), page)])
    }

    /// Writes the page again (after a change to how it renders).
    pub(super) fn write_page(&self, page: String) -> TaskResult {
        fs::write(self.page(), page)
            .map_err(|e| TaskError::Failed(format!("writing {}: {e}", self.page().display())))
    }

    /// For `cargo xtask test`: the committed page is `rendered`.
    pub(super) fn check_page(&self, rendered: &str) -> TaskResult {
        if fs::read_to_string(self.page()).unwrap_or_default() != rendered {
            return Err(TaskError::Failed(format!(
                "book/src/generated/{stem}.md differs from what book/src/results/{stem}.json \
                 renders to; re-record with `{command}`",
                stem = self.stem,
                command = self.command
            )));
        }
        eprintln!(
            "    ok: book/src/generated/{stem}.md matches {stem}.json",
            stem = self.stem
        );
        Ok(())
    }
}

/// Writes each file and says where.
pub(super) fn write_files(files: impl IntoIterator<Item = (PathBuf, String)>) -> TaskResult {
    for (path, text) in files {
        fs::write(&path, text)
            .map_err(|e| TaskError::Failed(format!("writing {}: {e}", path.display())))?;
        eprintln!("recorded in {}", path.display());
    }
    Ok(())
}
