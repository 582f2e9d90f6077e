//! How big each chapter's step is: lines added and removed between
//! neighbouring chapters (`diff -r chapters/NN-… chapters/NN+1-…`), file by
//! file, rendered into `book/src/generated/chapter-diffs.md` for the
//! introduction. A chapter is supposed to differ from its predecessor only by
//! its lesson; this table makes growth visible. The test command checks the
//! committed table against the tree (`cargo xtask neighbours` rewrites it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use similar::{ChangeTag, TextDiff};

use crate::reading_time;
use crate::run::{TaskError, TaskResult, workspace_root};

#[derive(Args)]
pub struct NeighboursArgs {
    /// Only compare the committed table with the tree; fail if it differs.
    #[arg(long)]
    check: bool,
}

/// Lines added and removed between two versions of a chapter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Size {
    added: usize,
    removed: usize,
}

impl Size {
    fn changed(self) -> usize {
        self.added + self.removed
    }
}

pub fn run(args: &NeighboursArgs) -> TaskResult {
    let table = render(&chapters()?);
    let path = table_path();
    if args.check {
        check_with(&table)?;
        return check_reading_time();
    }
    fs::write(&path, table)
        .map_err(|e| TaskError::Failed(format!("writing {}: {e}", path.display())))?;
    eprintln!("wrote {}", path.display());
    // The chapters' reading-time estimate follows the pages the same way.
    let reading = reading_time::path();
    fs::write(&reading, reading_time::render()?)
        .map_err(|e| TaskError::Failed(format!("writing {}: {e}", reading.display())))?;
    eprintln!("wrote {}", reading.display());
    Ok(())
}

fn check_reading_time() -> TaskResult {
    let committed = fs::read_to_string(reading_time::path()).unwrap_or_default();
    if committed == reading_time::render()? {
        Ok(())
    } else {
        Err(TaskError::Failed(
            "book/src/generated/reading-time.md is out of date: run `cargo xtask neighbours`"
                .to_string(),
        ))
    }
}

/// For `cargo xtask test`: the committed table is what the tree gives.
pub fn check() -> TaskResult {
    eprintln!("\n==> the table of neighbour diffs matches the chapters");
    check_with(&render(&chapters()?))?;
    check_reading_time()
}

fn check_with(table: &str) -> TaskResult {
    let committed = fs::read_to_string(table_path()).unwrap_or_default();
    if committed == table {
        eprintln!("    ok");
        Ok(())
    } else {
        Err(TaskError::Failed(
            "book/src/generated/chapter-diffs.md is out of date: run `cargo xtask neighbours`"
                .to_string(),
        ))
    }
}

fn table_path() -> PathBuf {
    workspace_root().join("book/src/generated/chapter-diffs.md")
}

/// `chapters/NN-name` directories, in order.
fn chapters() -> Result<Vec<PathBuf>, TaskError> {
    let dir = workspace_root().join("chapters");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| TaskError::Failed(format!("reading {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// Every source file of a chapter (Rust sources, tests, benches and its
/// manifest), by path relative to the chapter.
fn files(chapter: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![chapter.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") || name == "Cargo.toml" {
                let relative = path
                    .strip_prefix(chapter)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.insert(relative, fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    out
}

/// What `diff -r old new` would count: per file, lines added and removed
/// (a file only on one side counts all its lines).
fn compare(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<(String, Size)> {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let a = old.get(name).map_or("", String::as_str);
            let b = new.get(name).map_or("", String::as_str);
            (name.clone(), diff_size(a, b))
        })
        .filter(|(_, size)| size.changed() > 0)
        .collect()
}

fn diff_size(a: &str, b: &str) -> Size {
    let mut size = Size::default();
    for change in TextDiff::from_lines(a, b).iter_all_changes() {
        match change.tag() {
            ChangeTag::Insert => size.added += 1,
            ChangeTag::Delete => size.removed += 1,
            ChangeTag::Equal => {}
        }
    }
    size
}

fn render(chapters: &[PathBuf]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated by `cargo xtask neighbours`; `cargo xtask test` checks it. Do not edit. -->\n"
    );
    let _ = writeln!(
        out,
        "| step | lines added | lines removed | files changed | the biggest changes |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- |");
    for pair in chapters.windows(2) {
        let [old, new] = pair else { continue };
        let name = |p: &Path| {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let mut sizes = compare(&files(old), &files(new));
        let total = sizes.iter().fold(Size::default(), |sum, (_, s)| Size {
            added: sum.added + s.added,
            removed: sum.removed + s.removed,
        });
        sizes.sort_by(|a, b| b.1.changed().cmp(&a.1.changed()).then(a.0.cmp(&b.0)));
        let biggest: Vec<String> = sizes
            .iter()
            .take(3)
            .map(|(file, s)| format!("`{file}` +{} −{}", s.added, s.removed))
            .collect();
        let _ = writeln!(
            out,
            "| {} → {} | {} | {} | {} | {} |",
            name(old),
            name(new),
            total.added,
            total.removed,
            sizes.len(),
            biggest.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_counts_once_each_way() {
        let size = diff_size("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(
            size,
            Size {
                added: 2,
                removed: 1
            }
        );
    }

    #[test]
    fn a_file_on_one_side_counts_all_its_lines() {
        let old = BTreeMap::from([("x.rs".to_string(), "1\n2\n".to_string())]);
        let new = BTreeMap::from([("y.rs".to_string(), "1\n".to_string())]);
        let sizes = compare(&old, &new);
        assert_eq!(
            sizes,
            vec![
                (
                    "x.rs".to_string(),
                    Size {
                        added: 0,
                        removed: 2
                    }
                ),
                (
                    "y.rs".to_string(),
                    Size {
                        added: 1,
                        removed: 0
                    }
                ),
            ]
        );
    }
}
