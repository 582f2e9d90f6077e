//! The check that keeps measurements out of the book's hand-written text.
//!
//! Every measured figure on a page comes from a generated file the page
//! includes (`{{#include generated/….md}}`, rendered from
//! `book/src/results/*.json`), so it can be re-measured and cannot go stale
//! unnoticed. This check reads every hand-written page under `book/src` and
//! fails on what looks like a figure typed in by hand:
//!
//! - a **table row** with a cell that is a figure (a number, with or without
//!   a unit or an interval: `13.6 µs [13.2, 14.6]`, `79,083`, `6.38`);
//! - in **prose**, a number followed by a unit of measurement when it reads
//!   as measured rather than chosen: a decimal (`4.7 µs`, `9.0 MiB`), an
//!   approximation (`about 25 KiB`, `≈6 GiB`), a percentile (`p99 216 ms`),
//!   or a ratio or rate (`1.16×`, `15,072 conn/s`).
//!
//! - in an **output block** (a ```` ```text ```` block, or one without a
//!   language, that is not a diagram): any line with a digit, outside an
//!   address. What a program printed is recorded by `cargo xtask samples`
//!   into `generated/samples/*.txt` and included; typed in, it goes stale.
//!
//! Whole numbers with a unit (`16 KiB chunks`, `a 10 s timeout`, `100 ms`)
//! are design constants and settings, and pass. Other code blocks (`sh`,
//! `rust`, …), inline code and `{{#include}}` lines are not prose. What
//! remains that is not a measurement goes in [`ALLOWED`], with the reason.

use std::path::Path;

use regex::Regex;

use crate::run::{TaskError, TaskResult, workspace_root};

/// Figures on hand-written pages that are not measurements: (page, the exact
/// text the check reports, why it may stay).
pub const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "appendix-baselines.md",
        "1.05×",
        "an example of how to read the ratio column, not a result",
    ),
    (
        "appendix-baselines.md",
        "1.30×",
        "an example of how to read the ratio column, not a result",
    ),
    (
        "appendix-measuring.md",
        "~100%",
        "what a saturated core reads as, not a result",
    ),
    (
        "ch09-io-uring.md",
        "1.4–1.6×",
        "published figures of other io_uring servers, cited as such",
    ),
    (
        "ch08-million-connections.md",
        "about 95 %",
        "the fill factor the supervisor's plan uses (FILL_PERCENT), a constant",
    ),
    (
        "appendix-measuring.md",
        "5,000 per second",
        "the connect rate the memory probe asks loadgen for (--rate), a setting",
    ),
    (
        "ch07-core-pinning.md",
        "500 per second",
        "the connect rate of the trickle (loadgen --rate 500), a setting",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.5 s",
        "an example timeout, to show how the tick is sized",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.1 s",
        "a timeout setting (the smallest timeout the wheel sizes for)",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.3 s",
        "a timeout setting of the test it describes",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.6 s",
        "a work setting of the test it describes",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.2 s",
        "a timeout setting of the test it describes",
    ),
    (
        "ch06-idle-timeouts.md",
        "0.4 ms",
        "an example of a timeout rounded down, not a result",
    ),
    (
        "appendix-host-tuning.md",
        "net.ipv4.ip_local_port_range: 32768 60999 -> 1024 65535",
        "`doctor --apply` on a freshly booted host: re-recording it would reset this host's \
         sysctls; the values are the kernel's defaults and the doctor's targets",
    ),
];

/// One figure the check objects to.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub line: usize,
    /// The figure, or the whole row for a table.
    pub text: String,
    pub what: &'static str,
}

/// The patterns, compiled once per check.
struct Patterns {
    /// A number with a unit in prose, with what may come before it.
    prose: Regex,
    /// A table cell that is only a figure.
    cell: Regex,
    code_span: Regex,
    /// An IPv4 address, with or without a port: not a figure.
    address: Regex,
}

const NUMBER: &str = r"\d[\d,]*(?:\.\d+)?";
/// Units of measurement, longest first where one is a prefix of another.
const UNITS: &str = r"(?:messages per second|connections per second|connections a second|per second|msgs/s|messages/s|conn/s|seconds?|minutes?|ns|µs|us|ms|s|KB|MB|GB|kB|KiB|MiB|GiB|B|bytes|%)";

impl Patterns {
    fn new() -> Patterns {
        let range = format!(r"{NUMBER}(?:\s*(?:–|-|to|/|\.\.)\s*{NUMBER})?");
        let prose = format!(
            r"(?:^|[^\w.\-])(?P<pre>≈|~|(?:about|around|roughly|nearly|near|p50|p99|p99\.9|median)\s+)?(?P<n>{range})(?:(?P<ratio>×)|[ \n\u{{a0}}]?(?P<unit>{UNITS}))(?:[^\w]|$)"
        );
        let cell = format!(r"^\s*[≈~]?{range}\s*(?:{UNITS}|×)?\s*(?:\[[^\]]*\])?\s*†?\s*$");
        Patterns {
            prose: Regex::new(&prose).expect("the prose pattern is valid"),
            cell: Regex::new(&cell).expect("the cell pattern is valid"),
            code_span: Regex::new(r"`[^`]*`").expect("the code span pattern is valid"),
            address: Regex::new(r"\d+\.\d+\.\d+\.\d+(?::\d+)?")
                .expect("the address pattern is valid"),
        }
    }
}

/// Rates and ratios are always measurements in this book's prose.
fn is_rate(unit: &str) -> bool {
    unit.contains("per second") || unit.ends_with("/s") || unit == "connections a second"
}

/// The figures typed into one page's hand-written text.
pub fn scan(text: &str) -> Vec<Finding> {
    let patterns = Patterns::new();
    let mut findings = Vec::new();
    if text.starts_with("<!-- Generated") {
        return findings;
    }
    // Prose is read a paragraph at a time, so a figure wrapped over two
    // lines ("about\n5 KB") is still one figure: (first line, text).
    let mut paragraph: Option<(usize, String)> = None;
    let mut fence: Option<&str> = None;
    // The lines of the output block being read: (first line, lines).
    let mut output: Option<(usize, Vec<&str>)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        let in_code = match (fence, marker) {
            (None, Some(m)) => {
                fence = Some(m);
                let language = trimmed[m.len()..].trim();
                if OUTPUT_LANGUAGES.contains(&language) {
                    output = Some((index + 2, Vec::new()));
                }
                true
            }
            (Some(open), Some(m)) if open == m => {
                fence = None;
                if let Some((first, block)) = output.take() {
                    scan_output(&patterns, first, &block, &mut findings);
                }
                true
            }
            (Some(_), _) if output.is_some() => {
                if let Some((_, block)) = &mut output {
                    block.push(line);
                }
                true
            }
            (Some(_), _) => true,
            (None, None) => false,
        };
        let prose = patterns.code_span.replace_all(line, "``");
        let row = prose.trim();
        let is_row = !in_code && row.starts_with('|');
        let ends_paragraph = in_code
            || is_row
            || row.is_empty()
            || row.starts_with('#')
            || line.contains("{{#include");
        if ends_paragraph && let Some((first, text)) = paragraph.take() {
            scan_prose(&patterns, first, &text, &mut findings);
        }
        if in_code || line.contains("{{#include") {
            continue;
        }
        if is_row {
            let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
            let figure = cells
                .iter()
                .skip(1)
                .any(|c| c.chars().any(|ch| ch.is_ascii_digit()) && patterns.cell.is_match(c));
            if figure {
                findings.push(Finding {
                    line: index + 1,
                    text: line.trim().to_string(),
                    what: "a figure in a table typed into the page",
                });
            } else {
                scan_prose(&patterns, index + 1, row, &mut findings);
            }
            continue;
        }
        if !ends_paragraph {
            match &mut paragraph {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(&prose);
                }
                None => paragraph = Some((index + 1, prose.into_owned())),
            }
        }
    }
    if let Some((first, text)) = paragraph {
        scan_prose(&patterns, first, &text, &mut findings);
    }
    findings
}

/// Code blocks that show what a program printed, by their fence's language.
const OUTPUT_LANGUAGES: &[&str] = &["", "text", "console", "output"];

/// Box-drawing characters, arrows and ASCII frames: a drawing, whose
/// numbers are labels (`slot 5`, `t+127`), not output.
fn is_diagram(block: &[&str]) -> bool {
    block.iter().any(|line| {
        line.chars().any(|c| {
            ('\u{2500}'..='\u{257f}').contains(&c)
                || ('\u{2190}'..='\u{21ff}').contains(&c)
                || "►◄▲▼▶◀".contains(c)
        }) || line.trim_start().starts_with("+---")
    })
}

/// An output block typed into the page: its first line with a digit
/// (outside an address), once per block; an `{{#include}}` of a recorded
/// sample and a diagram pass.
fn scan_output(patterns: &Patterns, first: usize, block: &[&str], findings: &mut Vec<Finding>) {
    if is_diagram(block) {
        return;
    }
    for (offset, line) in block.iter().enumerate() {
        if line.contains("{{#include") {
            continue;
        }
        let bare = patterns.address.replace_all(line, "");
        if bare.chars().any(|c| c.is_ascii_digit()) {
            findings.push(Finding {
                line: first + offset,
                text: line.trim().to_string(),
                what: "a program's output typed into the page (record it with \
                       `cargo xtask samples` and include the file)",
            });
            return;
        }
    }
}

/// The measured-looking figures of one paragraph (or table row) whose first
/// line is `first`; a figure's line is counted from there.
fn scan_prose(patterns: &Patterns, first: usize, text: &str, findings: &mut Vec<Finding>) {
    for m in patterns.prose.captures_iter(text) {
        let number = m.name("n").map_or("", |n| n.as_str());
        let unit = m.name("unit").map_or("", |u| u.as_str());
        let measured = m.name("pre").is_some()
            || m.name("ratio").is_some()
            || number.contains('.')
            || is_rate(unit);
        if !measured {
            continue;
        }
        let start = m.name("pre").or(m.name("n")).map_or(0, |s| s.start());
        let end = m
            .name("ratio")
            .or(m.name("unit"))
            .map_or(start, |s| s.end());
        let line = first + text[..start].matches('\n').count();
        findings.push(Finding {
            line,
            // A figure wrapped over two lines reads as on one.
            text: text[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            what: "a measured figure typed into the prose",
        });
    }
}

/// Whether the allow-list covers a finding on `page`.
fn allowed(page: &str, finding: &Finding) -> bool {
    ALLOWED
        .iter()
        .any(|(p, text, _)| *p == page && *text == finding.text)
}

/// The check the test command runs over every page in `book/src`.
pub fn check() -> TaskResult {
    eprintln!("\n==> no measured figure typed into a page (each comes from a generated file)");
    let src = workspace_root().join("book").join("src");
    let mut pages: Vec<_> = std::fs::read_dir(&src)
        .map_err(|e| TaskError::Failed(format!("reading {}: {e}", src.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    let mut problems = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for path in &pages {
        let page = file_name(path);
        let text = std::fs::read_to_string(path)
            .map_err(|e| TaskError::Failed(format!("reading {}: {e}", path.display())))?;
        for finding in scan(&text) {
            if let Some(i) = ALLOWED
                .iter()
                .position(|(p, t, _)| *p == page && *t == finding.text)
            {
                used[i] = true;
            }
            if !allowed(&page, &finding) {
                problems.push(format!(
                    "book/src/{page}:{}: {}: {}",
                    finding.line, finding.what, finding.text
                ));
            }
        }
    }
    // An entry nothing needs any more is one more place a figure could hide.
    for ((page, text, _), used) in ALLOWED.iter().zip(used) {
        if !used {
            problems.push(format!(
                "typed_numbers::ALLOWED lists `{text}` on {page}, which is not there any more: \
                 remove the entry"
            ));
        }
    }
    if problems.is_empty() {
        eprintln!(
            "    ok ({} pages, {} allowed figures)",
            pages.len(),
            ALLOWED.len()
        );
        return Ok(());
    }
    for problem in &problems {
        eprintln!("    {problem}");
    }
    Err(TaskError::Failed(format!(
        "{} figure(s) typed into the book: measure them with a command that writes a \
         generated file the page includes (see `cargo xtask results`), or, if one is not a \
         measurement, add it with the reason to ALLOWED in xtask/src/typed_numbers.rs",
        problems.len()
    )))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# A page

The loop costs about 4.7 µs of server CPU per message, and rayon was 1.16×
faster; p99 216 ms with one reactor, 15,072 conn/s while ramping, 9.0 MiB in all,
about
5 KB per socket end.

| bench | hand | rayon |
|---|---:|---:|
| `round_trip` | 13.6 µs [13.2, 14.6] | 7.2 µs [5.8, 16.6] |
| msgs/s | 79,083 | 61,518 |

Settings are not measurements: 16 KiB chunks, a 10 s timeout, 100 ms back-off,
`--work-us 200`, 64-byte messages, 2 cores.

| limit | fix |
|---|---|
| `RLIMIT_NOFILE` | `ulimit -n 1100000` |

{{#include generated/ch04-worker-pool-bench-hand-off.md}}

```rust
let took = \"2.5 ms\";
```
";

    #[test]
    fn typed_figures_in_prose_and_tables_are_found() {
        let found: Vec<String> = scan(PAGE).into_iter().map(|f| f.text).collect();
        for figure in [
            "about 4.7 µs",
            "1.16×",
            "p99 216 ms",
            "15,072 conn/s",
            "9.0 MiB",
            "about 5 KB",
        ] {
            assert!(
                found.iter().any(|f| f == figure),
                "{figure} not found in {found:?}"
            );
        }
        assert!(
            found.iter().any(|f| f.contains("13.6 µs [13.2, 14.6]")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("79,083")), "{found:?}");
    }

    #[test]
    fn settings_code_and_includes_pass() {
        let found: Vec<String> = scan(PAGE).into_iter().map(|f| f.text).collect();
        assert_eq!(found.len(), 8, "{found:?}");
        for setting in ["16 KiB", "10 s", "100 ms", "200", "2.5 ms", "1100000"] {
            assert!(
                !found
                    .iter()
                    .any(|f| f.contains(setting) && !f.contains('|')),
                "{setting} flagged: {found:?}"
            );
        }
    }

    #[test]
    fn typed_output_blocks_are_found_and_recorded_ones_pass() {
        let page = "\
Run it:

```text
listening on 127.0.0.1:7878
summary: connections_served=1 epoll_wait=4
```

```
status: open=20 rss=9.0 MiB
```

```text
{{#include generated/samples/ch02-run.txt}}
```

```text
listening on 127.0.0.1:7878
```

```sh
loadgen echo --addr 127.0.0.1:7878 -c 100 --duration 5
```

```text
  tick:  t    t+1         slot 5 ──► conn 17
```
";
        let found = scan(page);
        let texts: Vec<&str> = found.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "summary: connections_served=1 epoll_wait=4",
                "status: open=20 rss=9.0 MiB"
            ],
            "{found:?}"
        );
        assert_eq!(found[0].line, 5);
        assert_eq!(found[1].line, 9);
    }

    #[test]
    fn the_book_has_no_typed_figures() {
        if let Err(e) = check() {
            panic!("{e}");
        }
    }

    #[test]
    fn generated_pages_are_not_scanned() {
        let page = "<!-- Generated by `cargo xtask results`. -->\n\n| a | 1.5 µs |\n";
        assert!(scan(page).is_empty());
    }

    #[test]
    fn the_allow_list_names_exact_text_with_a_reason() {
        for (page, text, why) in ALLOWED {
            assert!(page.ends_with(".md"), "{page}");
            assert!(!text.is_empty() && !why.is_empty());
        }
        let finding = Finding {
            line: 1,
            text: "1.05×".to_string(),
            what: "",
        };
        assert!(allowed("appendix-baselines.md", &finding));
        assert!(!allowed("ch04-worker-pool.md", &finding));
    }
}
