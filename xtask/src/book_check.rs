//! The built book checked like a web page, after `mdbook build`:
//!
//! - every internal link and `#anchor` in the generated HTML resolves (the
//!   target file exists inside the built book and has an element with that
//!   `id`), and every image or other `src` exists (an SVG is a whole `<svg>`);
//! - every command the book and the README show (`cargo run -p PKG -- …`,
//!   `cargo xtask …`, `target/release/BIN …`) names a real binary, real
//!   subcommands and real flags: xtask's are checked against its own clap
//!   definition, the binaries' against their `--help`;
//! - where Debian's `chromium` is installed, a headless screenshot of two pages
//!   with figures into `book/build/screenshots/`; skipped with one line where
//!   it is not, never a failure for that reason alone.
//!
//! Each check is a function over plain inputs (a directory, markdown text, a
//! source of help texts) so its unit tests plant a defect and see it caught.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

use crate::run::{TaskError, TaskResult, cargo, workspace_root};

/// Run every check over `book/build` (already built) and the markdown sources.
pub fn check() -> TaskResult {
    let root = workspace_root();
    let build = root.join("book").join("build");
    eprintln!("\n==> the built book checked like a web page");
    let mut problems = check_links(&build)
        .map_err(|e| TaskError::Failed(format!("reading {}: {e}", build.display())))?;
    let link_problems = problems.len();
    eprintln!("    links, anchors and images: {link_problems} problem(s)");

    let mut sources = Vec::new();
    for path in command_sources(&root)
        .map_err(|e| TaskError::Failed(format!("listing the book's pages: {e}")))?
    {
        let text = fs::read_to_string(&path)
            .map_err(|e| TaskError::Failed(format!("reading {}: {e}", path.display())))?;
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        sources.push((shown, text));
    }
    let mut help = LiveHelp::new()?;
    let (checked, command_problems) = check_commands(&sources, &mut help);
    eprintln!(
        "    commands shown: {checked} checked against their --help, {} problem(s)",
        command_problems.len()
    );
    problems.extend(command_problems);

    screenshots(&build);

    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        eprintln!("    ✗ {problem}");
    }
    Err(TaskError::Failed(format!(
        "the built book has {} broken link(s), image(s) or command(s); see above",
        problems.len()
    )))
}

// ---------------------------------------------------------------- links

/// Every `href`/`src` in every HTML file under `build` that points inside the
/// book must resolve to a file there, and a `#fragment` to an `id` in it.
pub fn check_links(build: &Path) -> std::io::Result<Vec<String>> {
    let mut pages = Vec::new();
    collect_files(build, "html", &mut pages)?;
    let mut ids: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut problems = Vec::new();
    for page in &pages {
        // mdbook's 404 page links relative to the site's root URL, which a
        // book opened from disk does not have.
        if page.file_name().is_some_and(|n| n == "404.html") {
            continue;
        }
        let html = fs::read_to_string(page)?;
        let from = page
            .strip_prefix(build)
            .unwrap_or(page)
            .display()
            .to_string();
        for n in empty_listings(&html) {
            problems.push(format!(
                "{from}: code listing {n} is empty (an {{{{#include}}}} whose anchor matches nothing?)"
            ));
        }
        for (attribute, url) in attributes(&html, &["href", "src", "data"]) {
            let url = decode_entities(&url);
            if is_external(&url) {
                continue;
            }
            let (path_part, fragment) = match url.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (url.as_str(), None),
            };
            let path_part = path_part.split('?').next().unwrap_or("");
            let target = if path_part.is_empty() {
                page.clone()
            } else {
                let joined = normalize(
                    &page
                        .parent()
                        .unwrap_or(build)
                        .join(percent_decode(path_part)),
                );
                if joined.is_dir() {
                    joined.join("index.html")
                } else {
                    joined
                }
            };
            if !target.starts_with(build) {
                problems.push(format!(
                    "{from}: {attribute}=\"{url}\" points outside the built book (mdbook copies only book/src)"
                ));
                continue;
            }
            if !target.is_file() {
                problems.push(format!(
                    "{from}: {attribute}=\"{url}\": no such file in the built book"
                ));
                continue;
            }
            if target.extension().is_some_and(|e| e == "svg") && attribute != "href" {
                let svg = fs::read_to_string(&target).unwrap_or_default();
                if !(svg.contains("<svg") && svg.trim_end().ends_with("</svg>")) {
                    problems.push(format!("{from}: image {url} is not a whole SVG"));
                }
            }
            let Some(fragment) = fragment else { continue };
            if fragment.is_empty() || target.extension().is_none_or(|e| e != "html") {
                continue;
            }
            if !ids.contains_key(&target) {
                let text = fs::read_to_string(&target)?;
                let found = attributes(&text, &["id"])
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect();
                ids.insert(target.clone(), found);
            }
            let fragment = percent_decode(fragment);
            if !ids[&target].contains(&fragment) {
                problems.push(format!(
                    "{from}: {attribute}=\"{url}\": no id \"{fragment}\" in {}",
                    target.strip_prefix(build).unwrap_or(&target).display()
                ));
            }
        }
    }
    Ok(problems)
}

/// The 1-based numbers of the code blocks (`<pre>`) with nothing in them but
/// what mdbook wraps around Rust listings (`#![allow(unused)] fn main() {}`).
fn empty_listings(html: &str) -> Vec<usize> {
    let mut empty = Vec::new();
    let mut rest = html;
    let mut n = 0;
    // `<pre><code …>` or, for Rust, `<pre class="playground"><code …>`.
    while let Some(at) = rest.find("<pre") {
        n += 1;
        rest = &rest[at..];
        let end = rest.find("</code></pre>").unwrap_or(rest.len());
        let block = &rest[..end];
        let body = block
            .find("<code")
            .and_then(|code| block[code..].split_once('>'))
            .map_or("", |(_, b)| b);
        let mut text = String::new();
        let mut in_tag = false;
        for c in body.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        let text = text
            .replace("#![allow(unused)]", "")
            .replace("fn main() {", "")
            .replace('}', "");
        if text.trim().is_empty() {
            empty.push(n);
        }
        rest = &rest[end..];
    }
    empty
}

fn collect_files(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, extension, out)?;
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    Ok(())
}

/// `(attribute, value)` for every double- or single-quoted `name=` among
/// `names` in the HTML, outside `<script>` bodies (whose strings are code).
fn attributes(html: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        for name in names {
            let mut search = tag;
            while let Some(at) = search.find(&format!("{name}=")) {
                let before = search[..at].chars().next_back();
                let value_start = &search[at + name.len() + 1..];
                search = value_start;
                if !before.is_some_and(char::is_whitespace) {
                    continue;
                }
                let Some(quote) = value_start
                    .chars()
                    .next()
                    .filter(|c| *c == '"' || *c == '\'')
                else {
                    continue;
                };
                if let Some(close) = value_start[1..].find(quote) {
                    found.push((name.to_string(), value_start[1..1 + close].to_string()));
                }
            }
        }
        rest = &rest[end..];
        if tag.starts_with("script")
            && let Some(close) = rest.find("</script>")
        {
            rest = &rest[close..];
        }
    }
    found
}

fn is_external(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    [
        "http:",
        "https:",
        "mailto:",
        "javascript:",
        "data:",
        "//",
        "ftp:",
    ]
    .iter()
    .any(|scheme| lower.starts_with(scheme))
}

fn decode_entities(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------- commands

/// The files whose commands are checked: the README, the book's pages (the
/// generated ones included: they show the command that produced them) and
/// the exercises' READMEs.
fn command_sources(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = vec![root.join("README.md")];
    collect_files(&root.join("book").join("src"), "md", &mut files)?;
    for entry in fs::read_dir(root.join("exercises"))? {
        let readme = entry?.path().join("README.md");
        if readme.is_file() {
            files.push(readme);
        }
    }
    files.sort();
    Ok(files)
}

/// A command the book shows, as far as the check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The binary: `xtask` for `cargo xtask`, else a cargo binary target.
    pub binary: String,
    /// What follows the binary: subcommands, flags, values, placeholders.
    pub args: Vec<String>,
    /// Where it is shown and the line as written, for the message.
    pub at: String,
}

/// Every command in fenced code blocks and inline code spans of `markdown`
/// that runs one of our binaries. Continuation lines are joined, `$ `
/// prompts, `# comments`, `[optional]` brackets and `VAR=value`, `taskset`,
/// `flock`, `sudo` prefixes are dropped; `&&`, `;` and `|` split commands.
pub fn commands_in(markdown: &str, file: &str) -> Vec<Shown> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            if pending.is_empty() {
                pending_line = n + 1;
            }
            if let Some(joined) = line.trim_end().strip_suffix('\\') {
                pending.push_str(joined);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            lines.push((pending_line, std::mem::take(&mut pending)));
        } else {
            // Inline code spans: `cargo run …`, `cargo xtask …`.
            let mut parts = line.split('`');
            parts.next();
            while let Some(span) = parts.next() {
                lines.push((n + 1, span.to_string()));
                parts.next();
            }
        }
    }
    let mut shown = Vec::new();
    for (n, line) in lines {
        let line = line.trim().strip_prefix("$ ").unwrap_or(line.trim());
        let line = match line.find(" #") {
            Some(at) => &line[..at],
            None => line,
        };
        for segment in line
            .split("&&")
            .flat_map(|s| s.split(';'))
            .flat_map(|s| s.split(" | "))
        {
            if let Some(command) = parse_command(segment) {
                shown.push(Shown {
                    at: format!("{file}:{n}: `{}`", segment.trim()),
                    ..command
                });
            }
        }
    }
    shown
}

fn parse_command(segment: &str) -> Option<Shown> {
    let mut words: Vec<String> = segment
        .split_whitespace()
        // Brackets mark optional words; a quote closes a `sh -c '…'` around
        // the command.
        .map(|w| {
            w.trim_matches(|c| c == '[' || c == ']')
                .trim_end_matches(['\'', '"'])
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect();
    // Prefixes that run the command under something else.
    loop {
        let first = words.first()?.clone();
        if (first.contains('=') && !first.starts_with('-')) || first == "sudo" {
            words.remove(0);
        } else if first == "taskset" || first == "flock" {
            // taskset -c LIST CMD…; flock FILE CMD…
            words.remove(0);
            while words.first().is_some_and(|w| w.starts_with('-')) {
                words.remove(0);
                if first == "taskset" {
                    words.remove(0);
                }
            }
            if first == "flock" && !words.is_empty() {
                words.remove(0);
            }
        } else {
            break;
        }
    }
    let first = words.first()?.as_str();
    if first == "cargo" {
        match words.get(1).map(String::as_str) {
            Some("xtask") => Some(Shown {
                binary: "xtask".into(),
                args: words[2..].to_vec(),
                at: String::new(),
            }),
            Some("run") => {
                let split = words.iter().position(|w| w == "--").unwrap_or(words.len());
                let cargo_args = &words[2..split];
                let value_of = |flags: &[&str]| {
                    cargo_args
                        .iter()
                        .position(|w| flags.contains(&w.as_str()))
                        .and_then(|i| cargo_args.get(i + 1).cloned())
                };
                let binary = value_of(&["--bin"]).or_else(|| value_of(&["-p", "--package"]))?;
                let args = words
                    .get(split + 1..)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default();
                Some(Shown {
                    binary,
                    args,
                    at: String::new(),
                })
            }
            _ => None,
        }
    } else {
        let path = first.strip_prefix("./").unwrap_or(first);
        let binary = path
            .strip_prefix("target/release/")
            .or_else(|| path.strip_prefix("target/debug/"))?;
        if binary.is_empty() || binary.contains('/') {
            return None;
        }
        Some(Shown {
            binary: binary.to_string(),
            args: words[1..].to_vec(),
            at: String::new(),
        })
    }
}

/// Where the check gets a binary's help. `path` is the subcommands chosen so
/// far.
pub trait HelpSource {
    fn help(&mut self, binary: &str, path: &[String]) -> Result<Help, String>;
}

/// What a help source knows about a binary.
pub enum Help {
    /// Its help text, as clap prints it.
    Text(String),
    /// No such binary in the workspace: a defect in the page.
    NoSuchBinary,
    /// A real binary that cannot be asked here (built by a toolchain this
    /// machine lacks): skipped with one line, not a failure.
    Unavailable(String),
}

/// The flags (`--long`, `-s`) and subcommands a clap help text lists.
#[derive(Debug, Default)]
pub struct HelpText {
    flags: BTreeSet<String>,
    subcommands: BTreeSet<String>,
}

pub fn parse_help(text: &str) -> HelpText {
    let mut help = HelpText::default();
    let mut in_commands = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if line.trim_end().ends_with(':') && !line.starts_with(' ') {
            in_commands = trimmed.starts_with("Commands");
            continue;
        }
        if in_commands && line.starts_with("  ") {
            if let Some(name) = trimmed.split_whitespace().next() {
                help.subcommands
                    .insert(name.trim_end_matches(',').to_string());
            }
            continue;
        }
        // Option lines start with the flag: `-p, --procs <N>`, `--addr <ADDR>`.
        for word in trimmed.split([' ', ',', '=', '[', ']', '<', '>']) {
            let long = word.len() > 2 && word.starts_with("--");
            let short = word.len() == 2 && word.starts_with('-') && word != "--";
            if long || short {
                help.flags.insert(word.to_string());
            }
            if !word.is_empty() && !word.starts_with('-') {
                break;
            }
        }
    }
    help.flags.insert("--help".into());
    help.flags.insert("-h".into());
    help
}

/// Check every shown command; returns how many were checked and the problems.
pub fn check_commands(
    sources: &[(String, String)],
    help: &mut dyn HelpSource,
) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut cache: BTreeMap<(String, Vec<String>), Result<HelpText, Help>> = BTreeMap::new();
    let mut skipped = BTreeSet::new();
    for (file, text) in sources {
        for shown in commands_in(text, file) {
            checked += 1;
            let mut path: Vec<String> = Vec::new();
            let mut current = match lookup(help, &mut cache, &shown.binary, &path) {
                Ok(Ok(h)) => h,
                Ok(Err(Help::Unavailable(why))) => {
                    if skipped.insert(shown.binary.clone()) {
                        eprintln!("    commands of `{}` skipped: {why}", shown.binary);
                    }
                    continue;
                }
                Ok(Err(_)) => {
                    problems.push(format!(
                        "{}: no binary `{}` in the workspace",
                        shown.at, shown.binary
                    ));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", shown.at));
                    continue;
                }
            };
            let mut positional_seen = false;
            for arg in &shown.args {
                if arg == "--" {
                    break;
                }
                if arg.starts_with('-') && arg.len() > 1 {
                    let flag = arg.split('=').next().unwrap_or(arg);
                    // `-abc` style clusters are not used in the book; check each as written.
                    if !current.flags.contains(flag) {
                        let shown_path = if path.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", path.join(" "))
                        };
                        problems.push(format!(
                            "{}: `{}{shown_path}` has no flag `{flag}` (see its --help)",
                            shown.at, shown.binary
                        ));
                    }
                    continue;
                }
                if positional_seen || current.subcommands.is_empty() {
                    positional_seen = true;
                    continue;
                }
                if current.subcommands.contains(arg) {
                    path.push(arg.clone());
                    current = match lookup(help, &mut cache, &shown.binary, &path) {
                        Ok(Ok(h)) => h,
                        _ => {
                            problems.push(format!(
                                "{}: no help for `{} {}`",
                                shown.at,
                                shown.binary,
                                path.join(" ")
                            ));
                            break;
                        }
                    };
                } else if looks_like_placeholder(arg) {
                    positional_seen = true;
                } else {
                    problems.push(format!(
                        "{}: `{}` has no subcommand `{arg}` (it has: {})",
                        shown.at,
                        shown.binary,
                        current
                            .subcommands
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    break;
                }
            }
        }
    }
    (checked, problems)
}

/// `N`, `NAME`, `<addr>`, `...`: what a reader fills in, not a subcommand.
fn looks_like_placeholder(word: &str) -> bool {
    word.chars()
        .all(|c| c.is_ascii_uppercase() || c == '_' || c == '|')
        || word.starts_with('<')
        || word.contains("...")
        || word.contains('…')
}

fn lookup<'c>(
    help: &mut dyn HelpSource,
    cache: &'c mut BTreeMap<(String, Vec<String>), Result<HelpText, Help>>,
    binary: &str,
    path: &[String],
) -> Result<Result<&'c HelpText, &'c Help>, String> {
    let key = (binary.to_string(), path.to_vec());
    if !cache.contains_key(&key) {
        let parsed = match help.help(binary, path)? {
            Help::Text(text) => Ok(parse_help(&text)),
            other => Err(other),
        };
        cache.insert(key.clone(), parsed);
    }
    Ok(cache[&key].as_ref())
}

/// Help from the real binaries: xtask's own clap definition in-process, the
/// workspace's binaries by `cargo run -q -p PKG --bin BIN -- … --help`.
struct LiveHelp {
    /// Binary target name → its package, from `cargo metadata`.
    packages: BTreeMap<String, String>,
}

impl LiveHelp {
    fn new() -> Result<LiveHelp, TaskError> {
        let output = cargo()
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .output()
            .map_err(|e| TaskError::Failed(format!("cargo metadata: {e}")))?;
        if !output.status.success() {
            return Err(TaskError::Failed(format!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| TaskError::Failed(format!("cargo metadata: {e}")))?;
        let mut packages = BTreeMap::new();
        for package in metadata["packages"].as_array().into_iter().flatten() {
            let name = package["name"].as_str().unwrap_or_default();
            for target in package["targets"].as_array().into_iter().flatten() {
                let is_bin = target["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k == "bin");
                if is_bin && let Some(bin) = target["name"].as_str() {
                    packages.insert(bin.to_string(), name.to_string());
                }
            }
        }
        Ok(LiveHelp { packages })
    }
}

impl HelpSource for LiveHelp {
    fn help(&mut self, binary: &str, path: &[String]) -> Result<Help, String> {
        if binary == "xtask" {
            return Ok(xtask_help(path).map_or(Help::NoSuchBinary, Help::Text));
        }
        let output = match self.packages.get(binary) {
            Some(package) => cargo()
                .args(["run", "-q", "-p", package, "--bin", binary, "--"])
                .args(path)
                .arg("--help")
                .output(),
            // A server another toolchain builds (go-echo): the test command
            // has put it next to the release binaries if that toolchain is here.
            None if c1m_benches::server(binary).is_some() => {
                let built = c1m_benches::release_dir().join(binary);
                if !built.is_file() {
                    return Ok(Help::Unavailable(format!(
                        "{} is not built (its toolchain is missing)",
                        built.display()
                    )));
                }
                Command::new(built).args(path).arg("--help").output()
            }
            None => return Ok(Help::NoSuchBinary),
        }
        .map_err(|e| format!("could not run `{binary} --help`: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "`{binary} {} --help` failed: {}",
                path.join(" "),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(Help::Text(
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }
}

/// The help of `cargo xtask PATH…`, rendered from the clap definition.
fn xtask_help(path: &[String]) -> Option<String> {
    let mut command = crate::Cli::command();
    for name in path {
        command = command.find_subcommand(name)?.clone();
    }
    Some(command.render_long_help().to_string())
}

// ---------------------------------------------------------------- screenshots

/// Two pages with figures, shot by a headless chromium where there is one.
fn screenshots(build: &Path) {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        eprintln!("    screenshots: skipped, no chromium on PATH (apt-get install chromium)");
        return;
    };
    let out_dir = build.join("screenshots");
    if let Err(e) = fs::create_dir_all(&out_dir) {
        eprintln!(
            "    screenshots: skipped, cannot create {}: {e}",
            out_dir.display()
        );
        return;
    }
    for page in ["results.html", "ch02-epoll-level-triggered.html"] {
        let png = out_dir.join(page.replace(".html", ".png"));
        let status = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--window-size=1280,2400")
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("file://{}", build.join(page).display()))
            .output();
        let size = fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        match status {
            Ok(o) if o.status.success() && size > 0 => {
                eprintln!(
                    "    screenshot: {} ({} KiB): look at it",
                    png.display(),
                    size / 1024
                )
            }
            _ => eprintln!("    screenshot of {page}: {browser} did not write one (not a failure)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A help source with made-up binaries, as clap would print them.
    struct Fake;

    impl HelpSource for Fake {
        fn help(&mut self, binary: &str, path: &[String]) -> Result<Help, String> {
            let text = match (binary, path.join(" ").as_str()) {
                ("loadgen", "") => {
                    "Usage: loadgen <COMMAND>\n\nCommands:\n  echo  Closed loop\n  hold  Hold\n  help  Print\n\nOptions:\n  -h, --help  Print help\n"
                }
                ("loadgen", "echo") => {
                    "Usage: loadgen echo [OPTIONS]\n\nOptions:\n      --addr <ADDR>  Where\n  -c, --conns <N>    How many\n      --json         JSON\n  -h, --help  Print help\n"
                }
                ("ch02-server", "") => {
                    "Usage: ch02-server [OPTIONS]\n\nOptions:\n      --addr <ADDR>     Where\n      --work-us <N>  Work [default: 0]\n  -h, --help  Print help\n"
                }
                ("go-echo", "") => return Ok(Help::Unavailable("no Go here".into())),
                _ => return Ok(Help::NoSuchBinary),
            };
            Ok(Help::Text(text.to_string()))
        }
    }

    fn problems(markdown: &str) -> Vec<String> {
        check_commands(&[("page.md".into(), markdown.into())], &mut Fake).1
    }

    #[test]
    fn commands_are_found_in_blocks_and_inline_code() {
        let md = "Run `cargo run -p ch02-server -- --addr 127.0.0.1:0` first.\n\n```sh\n$ C1M=1 cargo run --release -p loadgen -- echo \\\n    --conns 10 # ten\ntarget/release/ch02-server --work-us 5 | tee log && cargo xtask book [--serve]\n```\n";
        let found = commands_in(md, "page.md");
        let summary: Vec<(String, Vec<String>)> =
            found.into_iter().map(|s| (s.binary, s.args)).collect();
        assert_eq!(
            summary,
            vec![
                (
                    "ch02-server".to_string(),
                    vec!["--addr".to_string(), "127.0.0.1:0".to_string()]
                ),
                (
                    "loadgen".to_string(),
                    vec!["echo".into(), "--conns".into(), "10".into()]
                ),
                (
                    "ch02-server".to_string(),
                    vec!["--work-us".into(), "5".into()]
                ),
                ("xtask".to_string(), vec!["book".into(), "--serve".into()]),
            ]
        );
    }

    #[test]
    fn good_commands_pass() {
        let md = "```sh\ncargo run -p loadgen -- echo --addr 127.0.0.1:1 -c 5 --json\ntarget/release/go-echo --addr x --anything\ncargo run -p ch02-server -- --addr=127.0.0.1:0\ncargo run -p loadgen -- echo --help\n```\n";
        assert_eq!(problems(md), Vec::<String>::new());
    }

    #[test]
    fn a_flag_the_binary_lacks_is_caught() {
        let found =
            problems("```sh\ncargo run -p ch02-server -- --addr 127.0.0.1:0 --threads 2\n```\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("no flag `--threads`"), "{found:?}");
        assert!(found[0].starts_with("page.md:2:"), "{found:?}");
    }

    #[test]
    fn a_flag_of_another_subcommand_is_caught() {
        // `--addr` exists on `echo`, but `--rate` does not.
        let found = problems("`cargo run -p loadgen -- echo --addr x --rate 5`");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("loadgen echo` has no flag `--rate`"),
            "{found:?}"
        );
    }

    #[test]
    fn an_unknown_subcommand_and_binary_are_caught() {
        let found = problems(
            "```\ncargo run -p loadgen -- flood --conns 5\ntarget/release/ch99-nothing --addr x\n```\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("no subcommand `flood`"), "{found:?}");
        assert!(found[1].contains("no binary `ch99-nothing`"), "{found:?}");
    }

    #[test]
    fn xtask_commands_are_checked_against_its_own_definition() {
        let md = "```sh\ncargo xtask exercise 02a --hint 2\ncargo xtask million --conns N\ncargo xtask book --serve\n```\n";
        struct XtaskOnly;
        impl HelpSource for XtaskOnly {
            fn help(&mut self, binary: &str, path: &[String]) -> Result<Help, String> {
                let text = (binary == "xtask").then(|| xtask_help(path)).flatten();
                Ok(text.map_or(Help::NoSuchBinary, Help::Text))
            }
        }
        let ok = check_commands(&[("a.md".into(), md.into())], &mut XtaskOnly).1;
        assert_eq!(ok, Vec::<String>::new());
        let bad = "`cargo xtask book --open` and `cargo xtask resluts`";
        let found = check_commands(&[("a.md".into(), bad.into())], &mut XtaskOnly).1;
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("no flag `--open`"), "{found:?}");
        assert!(found[1].contains("no subcommand `resluts`"), "{found:?}");
    }

    /// A tiny built book in a scratch directory.
    fn scratch_book(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "c1m-book-check-{}-{}",
            std::process::id(),
            files.len()
                ^ files
                    .iter()
                    .map(|(n, t)| n.len() * 31 + t.len())
                    .sum::<usize>()
        ));
        let _ = fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    const SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n";

    #[test]
    fn a_sound_book_has_no_problems() {
        let dir = scratch_book(&[
            (
                "index.html",
                "<pre><code class=\"language-rust\">fn main() {}\nlet x = 1;</code></pre><a href=\"ch01.html#the-idea\">x</a> <img src=\"img/a.svg\"> <a href=\"https://example.org/#x\">y</a>",
            ),
            (
                "ch01.html",
                "<h2 id=\"the-idea\">x</h2><a href=\"index.html\">i</a><a id=\"top\"></a><a href='#top'>t</a><a href=\"sub/\">s</a>",
            ),
            ("sub/index.html", "<a href=\"../ch01.html#the-idea\">u</a>"),
            ("img/a.svg", SVG),
        ]);
        let found = check_links(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn broken_links_anchors_and_images_are_caught() {
        let dir = scratch_book(&[
            (
                "index.html",
                "<a href=\"ch01.html#no-such-heading\">a</a>\n<a href=\"ch02.html\">b</a>\n<img src=\"img/missing.svg\">\n<img src=\"img/cut.svg\">\n<a href=\"../../chapters/01/src/main.rs\">c</a><script>var s = '<a href=\"nowhere.html\">';</script>",
            ),
            (
                "ch01.html",
                "<h2 id=\"the-idea\">x</h2><pre class=\"playground\"><code class=\"language-rust\"><span class=\"boring\">#![allow(unused)]\nfn main() {\n</span>\n<span class=\"boring\">}</span></code></pre>",
            ),
            (
                "img/cut.svg",
                "<svg xmlns=\"http://www.w3.org/2000/svg\"><rect",
            ),
        ]);
        let found = check_links(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 6, "{found:#?}");
        // Pages in path order: ch01.html, then index.html.
        assert!(found[0].contains("ch01.html: code listing 1 is empty"));
        assert!(found[1].contains("no id \"no-such-heading\" in ch01.html"));
        assert!(found[2].contains("ch02.html\": no such file"));
        assert!(found[3].contains("img/missing.svg\": no such file"));
        assert!(found[4].contains("img/cut.svg is not a whole SVG"));
        assert!(found[5].contains("points outside the built book"));
    }

    #[test]
    fn help_text_is_parsed_like_clap_prints_it() {
        let help = parse_help(
            "Usage: x [OPTIONS] <COMMAND>\n\nCommands:\n  echo  E\n  hold  H\n\nOptions:\n  -p, --procs <N>  Procs\n      --pin[=<BOOL>]  Pin\n          Keep going --not-a-flag here\n",
        );
        assert!(
            help.flags.contains("--procs")
                && help.flags.contains("-p")
                && help.flags.contains("--pin")
        );
        assert!(!help.flags.contains("--not-a-flag"), "{help:?}");
        assert_eq!(
            help.subcommands.iter().cloned().collect::<Vec<_>>(),
            ["echo", "hold"]
        );
    }
}
