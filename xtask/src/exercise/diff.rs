//! `--solution`: the reference solution against your file, as a unified diff
//! or in two columns.

use similar::{ChangeTag, DiffTag, TextDiff};

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Lines of unchanged text kept around each change.
const CONTEXT: usize = 3;

/// A unified diff from `yours` to `solution`; `-` lines are yours, `+` lines
/// the solution's. Empty when the texts are equal.
pub fn unified(yours: &str, solution: &str, labels: (&str, &str), color: bool) -> String {
    let diff = TextDiff::from_lines(yours, solution);
    let mut out = String::new();
    let mut unified = diff.unified_diff();
    unified.context_radius(CONTEXT);
    for (i, hunk) in unified.iter_hunks().enumerate() {
        if i == 0 {
            out.push_str(&paint(
                &format!("--- {}\n+++ {}\n", labels.0, labels.1),
                DIM,
                color,
            ));
        }
        out.push_str(&paint(&format!("{}\n", hunk.header()), CYAN, color));
        for change in hunk.iter_changes() {
            let (sign, colour) = match change.tag() {
                ChangeTag::Delete => ('-', RED),
                ChangeTag::Insert => ('+', GREEN),
                ChangeTag::Equal => (' ', ""),
            };
            let line = format!("{sign}{}", change.value().trim_end_matches('\n'));
            out.push_str(&paint(&line, colour, color));
            out.push('\n');
        }
    }
    out
}

/// Your file on the left, the solution on the right, `width` columns in
/// all; long unchanged stretches fold into one `⋮` line.
pub fn side_by_side(
    yours: &str,
    solution: &str,
    labels: (&str, &str),
    width: usize,
    color: bool,
) -> String {
    let column = width.saturating_sub(3) / 2;
    let diff = TextDiff::from_lines(yours, solution);
    let left = diff.old_slices();
    let right = diff.new_slices();
    let mut rows: Vec<(Option<&str>, char, Option<&str>)> = Vec::new();
    let ops = diff.ops();
    for (n, op) in ops.iter().enumerate() {
        let (tag, old, new) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => {
                let len = old.len();
                let keep_head = if n == 0 { 0 } else { CONTEXT };
                let keep_tail = if n + 1 == ops.len() { 0 } else { CONTEXT };
                if len > keep_head + keep_tail + 1 {
                    for i in 0..keep_head {
                        rows.push((Some(left[old.start + i]), ' ', Some(right[new.start + i])));
                    }
                    rows.push((None, '⋮', None));
                    for i in len - keep_tail..len {
                        rows.push((Some(left[old.start + i]), ' ', Some(right[new.start + i])));
                    }
                } else {
                    for i in 0..len {
                        rows.push((Some(left[old.start + i]), ' ', Some(right[new.start + i])));
                    }
                }
            }
            DiffTag::Delete => rows.extend(old.map(|i| (Some(left[i]), '<', None))),
            DiffTag::Insert => rows.extend(new.map(|i| (None, '>', Some(right[i])))),
            DiffTag::Replace => {
                for i in 0..old.len().max(new.len()) {
                    let l = (i < old.len()).then(|| left[old.start + i]);
                    let r = (i < new.len()).then(|| right[new.start + i]);
                    let mark = match (l, r) {
                        (Some(_), Some(_)) => '|',
                        (Some(_), None) => '<',
                        _ => '>',
                    };
                    rows.push((l, mark, r));
                }
            }
        }
    }
    let mut out = format!(
        "{}\n",
        paint(
            &format!("{} │ {}", fit(labels.0, column), fit(labels.1, column)),
            DIM,
            color
        )
    );
    for (l, mark, r) in rows {
        let (lc, rc) = match mark {
            '|' => (RED, GREEN),
            '<' => (RED, ""),
            '>' => ("", GREEN),
            _ => ("", ""),
        };
        let l = paint(&fit(l.unwrap_or(""), column), lc, color);
        let r = paint(fit(r.unwrap_or(""), column).trim_end(), rc, color);
        out.push_str(&format!("{l} {mark} {r}\n"));
    }
    out
}

/// `text` as exactly `width` characters: tabs expanded, cut with `…`.
fn fit(text: &str, width: usize) -> String {
    let text = text.trim_end_matches(['\n', '\r']).replace('\t', "    ");
    let count = text.chars().count();
    if count > width {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        format!("{text}{}", " ".repeat(width - count))
    }
}

fn paint(text: &str, colour: &str, color: bool) -> String {
    if color && !colour.is_empty() {
        format!("{colour}{text}{RESET}")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YOURS: &str = "fn a() {\n    todo!()\n}\n";
    const SOLUTION: &str = "fn a() {\n    42\n}\n";

    #[test]
    fn the_unified_diff_marks_your_lines_and_the_solutions() {
        let diff = unified(YOURS, SOLUTION, ("yours", "solution"), false);
        assert!(diff.contains("-    todo!()\n"));
        assert!(diff.contains("+    42\n"));
        assert!(diff.contains(" fn a() {\n"));
        assert_eq!(unified(YOURS, YOURS, ("a", "b"), false), "");
    }

    #[test]
    fn side_by_side_pairs_the_changed_lines() {
        let text = side_by_side(YOURS, SOLUTION, ("yours", "solution"), 41, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[2].starts_with("    todo!()"));
        assert!(lines[2].contains(" | "));
        assert!(lines[2].ends_with("    42"));
    }

    #[test]
    fn long_unchanged_stretches_fold() {
        let body: String = (0..40).map(|n| format!("line {n}\n")).collect();
        let yours = format!("{body}todo!()\n");
        let solution = format!("{body}42\n");
        let text = side_by_side(&yours, &solution, ("a", "b"), 60, false);
        assert!(text.contains('⋮'));
        assert!(text.lines().count() < 10, "{text}");
    }
}
