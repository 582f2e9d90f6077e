//! `cargo xtask book [--serve]`: build the mdbook, installing mdbook first if needed.

use std::path::PathBuf;
use std::process::Command;

use clap::Args;

use crate::run::{TaskError, TaskResult, cargo, have, run_step, workspace_root};

/// The mdbook release the book is written for.
const MDBOOK_VERSION: &str = "0.5.4";

#[derive(Args)]
pub struct BookArgs {
    /// Serve the book on http://127.0.0.1:3000 and rebuild on change.
    #[arg(long)]
    serve: bool,
    /// After building, check the book like a web page: links, anchors,
    /// images, and every command shown against its binary's --help.
    #[arg(long, conflicts_with = "serve")]
    check: bool,
}

pub fn run(args: &BookArgs) -> TaskResult {
    ensure_mdbook()?;
    if args.serve {
        return run_step(
            "serve the book",
            Command::new(mdbook()?)
                .args(["serve", "--hostname", "127.0.0.1", "--port", "3000"])
                .current_dir(workspace_root().join("book")),
        );
    }
    build()?;
    if args.check {
        crate::book_check::check()?;
    }
    Ok(())
}

/// Build the book and fail on any broken include or link mdbook reports.
pub fn build() -> TaskResult {
    ensure_mdbook()?;
    let book = workspace_root().join("book");
    eprintln!("\n==> build the book\n    $ mdbook build book");
    let output = Command::new(mdbook()?)
        .arg("build")
        .current_dir(&book)
        .output()
        .map_err(|e| TaskError::Failed(format!("could not run mdbook: {e}")))?;
    let log = String::from_utf8_lossy(&output.stderr);
    eprint!("{log}");
    // mdbook logs a missing `{{#include}}` as an error but may still exit 0:
    // a book with a hole in it is a failed build here.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("[ERROR]"))
        .collect();
    if !output.status.success() || !errors.is_empty() {
        return Err(TaskError::Failed(format!(
            "book build failed ({} error line(s)); see the log above",
            errors.len()
        )));
    }
    eprintln!("    ok: open book/build/index.html");
    Ok(())
}

/// The mdbook to run: the one on PATH, else the one `cargo install` put in
/// `$CARGO_HOME/bin` (which a fresh shell may not have on PATH yet).
fn mdbook() -> Result<PathBuf, TaskError> {
    if have("mdbook") {
        return Ok(PathBuf::from("mdbook"));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let installed = cargo_home.map(|home| home.join("bin").join("mdbook"));
    match installed {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(TaskError::Failed(
            "mdbook is not installed; run `cargo install mdbook --locked`".into(),
        )),
    }
}

/// Install mdbook with cargo when it cannot be found.
pub fn ensure_mdbook() -> TaskResult {
    if mdbook().is_ok() {
        return Ok(());
    }
    run_step(
        "install mdbook (one time, a few minutes)",
        cargo().args(["install", "mdbook", "--locked", "--version", MDBOOK_VERSION]),
    )
}
