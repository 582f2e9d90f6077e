//! The chapters' criterion benches, imported into the results data.
//!
//! `cargo xtask results --only-benches` runs each bench in [`BENCHES`] with
//! the short, bounded settings its source sets (10 samples, a second or two
//! of measurement per benchmark), reads criterion's own
//! `target/criterion/GROUP/…/new/estimates.json` and `benchmark.json`, and
//! keeps the median and its 95% interval in `data.json`. The tables the
//! chapter pages include are rendered from there, like every other
//! generated table: no criterion figure is typed into a page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use c1m_benches::CorePlan;
use serde::Deserialize;

use super::data::{BenchEstimate, BenchSet};
use super::format::thousands;
use super::machine;
use super::render::{MARKDOWN_NOTE, table_header, table_row};

/// A criterion bench target of a chapter, and the groups it writes.
pub struct BenchSpec {
    pub package: &'static str,
    pub bench: &'static str,
    pub groups: &'static [&'static str],
}

/// Every bench imported, in the order they run.
pub const BENCHES: &[BenchSpec] = &[
    BenchSpec {
        package: "ch04-worker-pool",
        bench: "pools",
        groups: &["hand_off"],
    },
    BenchSpec {
        package: "ch05-buffer-pool",
        bench: "pool",
        groups: &["output_buffer"],
    },
    BenchSpec {
        package: "ch06-idle-timeouts",
        bench: "timers",
        groups: &["insert", "touch", "expire", "tick"],
    },
];

/// Every table rendered from the benches, as (chapter, id): the pages
/// include `generated/<chapter>-<id>.md`.
pub const TABLES: &[(&str, &str)] = &[
    ("ch04-worker-pool", "bench-hand-off"),
    ("ch05-buffer-pool", "bench-pool"),
    ("ch06-idle-timeouts", "bench-insert"),
    ("ch06-idle-timeouts", "bench-touch"),
    ("ch06-idle-timeouts", "bench-expire"),
    ("ch06-idle-timeouts", "bench-tick"),
];

/// Where criterion writes: `$CRITERION_HOME`, or `criterion` in the target dir.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    c1m_benches::release_dir()
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("criterion")
}

/// Runs every bench and imports what criterion measured.
pub fn measure_all() -> Result<BenchSet, String> {
    let cores = CorePlan::detect();
    let started = Instant::now();
    let root = criterion_dir();
    let mut estimates = Vec::new();
    eprintln!("\n==> criterion benches");
    for spec in BENCHES {
        // Old results of these groups must not be mistaken for this run's.
        for group in spec.groups {
            let dir = root.join(group);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("removing {}: {e}", dir.display()))?;
            }
        }
        eprintln!(
            "    cargo bench -p {} --bench {} -- --noplot",
            spec.package, spec.bench
        );
        let bench_started = Instant::now();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .current_dir(c1m_benches::workspace_root())
            .args([
                "bench",
                "--quiet",
                "-p",
                spec.package,
                "--bench",
                spec.bench,
            ])
            .args(["--", "--noplot"])
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            return Err(format!(
                "`cargo bench -p {} --bench {}` failed ({}):\n{}",
                spec.package,
                spec.bench,
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let mut found = Vec::new();
        for group in spec.groups {
            import_group(&root.join(group), spec, &mut found)?;
        }
        if found.is_empty() {
            return Err(format!(
                "`cargo bench -p {} --bench {}` left no estimates under {}",
                spec.package,
                spec.bench,
                root.display()
            ));
        }
        eprintln!(
            "    {} benchmarks in {:.0} s",
            found.len(),
            bench_started.elapsed().as_secs_f64()
        );
        estimates.extend(found);
    }
    Ok(BenchSet {
        machine: machine::this_machine(cores),
        seconds: started.elapsed().as_secs_f64().round(),
        estimates,
    })
}

#[derive(Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EstimatesJson {
    median: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

/// Every `…/new/` directory under a group's directory, sorted.
fn new_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            out.push(path);
        } else {
            new_dirs(&path, out);
        }
    }
}

fn import_group(dir: &Path, spec: &BenchSpec, out: &mut Vec<BenchEstimate>) -> Result<(), String> {
    let mut dirs = Vec::new();
    new_dirs(dir, &mut dirs);
    dirs.sort();
    for new in dirs {
        let read = |name: &str| {
            std::fs::read_to_string(new.join(name))
                .map_err(|e| format!("reading {}: {e}", new.join(name).display()))
        };
        let benchmark: BenchmarkJson = serde_json::from_str(&read("benchmark.json")?)
            .map_err(|e| format!("{}: {e}", new.join("benchmark.json").display()))?;
        let estimates: EstimatesJson = serde_json::from_str(&read("estimates.json")?)
            .map_err(|e| format!("{}: {e}", new.join("estimates.json").display()))?;
        let elements = benchmark
            .throughput
            .as_ref()
            .and_then(|t| t.get("Elements"))
            .and_then(serde_json::Value::as_u64);
        let median = estimates.median;
        out.push(BenchEstimate {
            package: spec.package.to_string(),
            bench: spec.bench.to_string(),
            group: benchmark.group_id,
            function: benchmark.function_id.unwrap_or_default(),
            value: benchmark.value_str,
            elements,
            median_ns: median.point_estimate,
            lower_ns: median.confidence_interval.lower_bound,
            upper_ns: median.confidence_interval.upper_bound,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Rendering.

/// Where a bench table lives, under `book/src`.
fn table_path(chapter: &str, id: &str) -> PathBuf {
    PathBuf::from("generated").join(format!("{chapter}-{id}.md"))
}

/// Every bench table, measured or not.
pub fn render(set: Option<&BenchSet>) -> Vec<(PathBuf, String)> {
    TABLES
        .iter()
        .map(|&(chapter, id)| {
            let body = set.and_then(|set| table(set, id));
            let text = match (body, set) {
                (Some(body), Some(set)) => {
                    format!("{MARKDOWN_NOTE}\n\n{body}{}", footer(set, chapter))
                }
                _ => format!(
                    "{MARKDOWN_NOTE}\n\nThis table has not been measured yet: run \
                     `cargo xtask results --only-benches` to fill it in.\n"
                ),
            };
            (table_path(chapter, id), text)
        })
        .collect()
}

fn table(set: &BenchSet, id: &str) -> Option<String> {
    match id {
        "bench-hand-off" => Some(hand_off(set)),
        "bench-pool" => Some(output_buffer(set)),
        "bench-insert" => Some(timers(set, "insert", &["wheel", "heap", "scan"], true)),
        "bench-touch" => Some(timers(
            set,
            "touch",
            &["wheel", "wheel-eager", "heap", "scan"],
            true,
        )),
        "bench-expire" => Some(timers(set, "expire", &["wheel", "heap", "scan"], false)),
        "bench-tick" => Some(timers(set, "tick", &["wheel", "heap", "scan"], false)),
        _ => None,
    }
}

fn footer(set: &BenchSet, package: &str) -> String {
    let m = &set.machine;
    let command = BENCHES
        .iter()
        .find(|b| b.package == package)
        .map_or_else(String::new, |b| {
            format!(" of `cargo bench -p {} --bench {}`", b.package, b.bench)
        });
    format!(
        "<small>Criterion's median and its 95% interval from one run{}, imported by \
         `cargo xtask results --only-benches` on {}, {} cores, Linux {}, {} (UTC); the \
         chapters' benches took {} s together. Ratios compare benchmarks of the same \
         run.</small>\n",
        command, m.cpu, m.cores, m.kernel, m.date, set.seconds
    )
}

/// Nanoseconds in a readable unit, three significant digits.
pub fn duration_ns(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if value >= 100.0 {
        format!("{value:.0} {unit}")
    } else if value >= 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

/// `12.3 µs [11.9, 13.0]`: the median and its interval, per `per` elements.
fn with_interval(e: &BenchEstimate, per: f64) -> String {
    let median = duration_ns(e.median_ns / per);
    let unit = median.rsplit(' ').next().unwrap_or("ns");
    let scale = match unit {
        "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => 1.0,
    };
    let bound = |ns: f64| {
        let v = ns / per / scale;
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    format!("{median} [{}, {}]", bound(e.lower_ns), bound(e.upper_ns))
}

/// `a / b` as `0.041×`, `1.31×`, `24.0×` or `389×`: three significant
/// digits, or `–` if either side is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 100.0 {
                format!("{r:.0}×")
            } else if r >= 10.0 {
                format!("{r:.1}×")
            } else if r >= 0.1 || r == 0.0 {
                format!("{r:.2}×")
            } else {
                let decimals = (1.0 - r.log10().floor()) as usize + 1;
                format!("{r:.decimals$}×")
            }
        }
        _ => "–".to_string(),
    }
}

fn missing() -> String {
    "–".to_string()
}

/// Chapter 04: the hand-off through each pool and back.
fn hand_off(set: &BenchSet) -> String {
    let mut out = String::new();
    table_header(
        &mut out,
        &[
            "bench".to_string(),
            "`--pool hand`".to_string(),
            "`--pool rayon`".to_string(),
            "rayon / hand".to_string(),
        ],
    );
    for (function, label) in [
        ("round_trip", "`round_trip` (one job)"),
        ("batch_of_64", "`batch_of_64` (per batch)"),
    ] {
        let hand = set.find("hand_off", function, "hand");
        let rayon = set.find("hand_off", function, "rayon");
        table_row(
            &mut out,
            &[
                label.to_string(),
                hand.map_or_else(missing, |e| with_interval(e, 1.0)),
                rayon.map_or_else(missing, |e| with_interval(e, 1.0)),
                ratio(rayon.map(|e| e.median_ns), hand.map(|e| e.median_ns)),
            ],
        );
    }
    out.push('\n');
    let faster = |function: &str| {
        let hand = set.find("hand_off", function, "hand")?.median_ns;
        let rayon = set.find("hand_off", function, "rayon")?.median_ns;
        Some(if rayon < hand {
            "rayon"
        } else {
            "the hand-rolled pool"
        })
    };
    if let (Some(one), Some(batch)) = (faster("round_trip"), faster("batch_of_64")) {
        let _ = writeln!(
            out,
            "In this run {one} had the faster single round trip and {batch} the faster \
             batch of 64.\n"
        );
    }
    out
}

/// Chapter 05: a pooled chunk against allocating one.
fn output_buffer(set: &BenchSet) -> String {
    let mut out = String::new();
    table_header(
        &mut out,
        &[
            "N".to_string(),
            "pool `take` + `give_back`".to_string(),
            "`Vec::with_capacity(N)` + drop".to_string(),
            "`vec![0; N]` + drop".to_string(),
            "with_capacity / pool".to_string(),
            "zeroed / pool".to_string(),
        ],
    );
    for size in ["4KiB", "16KiB", "64KiB"] {
        let pool = set.find("output_buffer", "pool_take_give_back", size);
        let capacity = set.find("output_buffer", "vec_with_capacity", size);
        let zeroed = set.find("output_buffer", "vec_zeroed", size);
        let median = |e: Option<&BenchEstimate>| e.map(|e| e.median_ns);
        table_row(
            &mut out,
            &[
                size.replace("KiB", " KiB"),
                pool.map_or_else(missing, |e| with_interval(e, 1.0)),
                capacity.map_or_else(missing, |e| with_interval(e, 1.0)),
                zeroed.map_or_else(missing, |e| with_interval(e, 1.0)),
                ratio(median(capacity), median(pool)),
                ratio(median(zeroed), median(pool)),
            ],
        );
    }
    out.push('\n');
    out
}

const TIMER_SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];

/// Chapter 06: one operation on wheel, heap and scan at each size. With
/// `per_element`, the time is divided by the timers touched or inserted.
fn timers(set: &BenchSet, group: &str, structures: &[&str], per_element: bool) -> String {
    let mut out = String::new();
    let mut header = vec!["N".to_string()];
    header.extend(structures.iter().map(|s| format!("`{s}`")));
    let others: Vec<&str> = structures
        .iter()
        .copied()
        .filter(|s| *s != "wheel")
        .collect();
    header.extend(others.iter().map(|s| format!("{s} / wheel")));
    table_header(&mut out, &header);
    // (structure, lowest ratio, highest ratio) over the sizes.
    let mut spans: Vec<(&str, f64, f64)> = Vec::new();
    for n in TIMER_SIZES {
        let value = n.to_string();
        let per = |e: &BenchEstimate| {
            if per_element {
                e.elements.unwrap_or(n) as f64
            } else {
                1.0
            }
        };
        let mut row = vec![thousands(n)];
        for s in structures {
            row.push(
                set.find(group, s, &value)
                    .map_or_else(missing, |e| with_interval(e, per(e))),
            );
        }
        let wheel = set.find(group, "wheel", &value).map(|e| e.median_ns);
        for other in &others {
            let theirs = set.find(group, other, &value).map(|e| e.median_ns);
            row.push(ratio(theirs, wheel));
            if let (Some(t), Some(w)) = (theirs, wheel)
                && w > 0.0
            {
                let r = t / w;
                match spans.iter_mut().find(|(s, _, _)| s == other) {
                    Some(span) => {
                        span.1 = span.1.min(r);
                        span.2 = span.2.max(r);
                    }
                    None => spans.push((other, r, r)),
                }
            }
        }
        table_row(&mut out, &row);
    }
    out.push('\n');
    let parts: Vec<String> = spans
        .iter()
        .map(|(s, lo, hi)| {
            format!(
                "`{s}` took {} to {} the wheel's time",
                ratio(Some(*lo), Some(1.0)),
                ratio(Some(*hi), Some(1.0))
            )
        })
        .collect();
    if !parts.is_empty() {
        let _ = writeln!(
            out,
            "Over the three sizes in this run: {} (above 1.00×, the wheel was cheaper).\n",
            parts.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::data::Machine;

    fn estimate(group: &str, function: &str, value: &str, ns: f64) -> BenchEstimate {
        BenchEstimate {
            package: "p".into(),
            bench: "b".into(),
            group: group.into(),
            function: function.into(),
            value: Some(value.into()),
            elements: None,
            median_ns: ns,
            lower_ns: ns * 0.9,
            upper_ns: ns * 1.1,
        }
    }

    fn set(estimates: Vec<BenchEstimate>) -> BenchSet {
        BenchSet {
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                kernel: "6.0".into(),
                date: "2026-01-01".into(),
                pinning: String::new(),
                pinned: false,
            },
            seconds: 10.0,
            estimates,
        }
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(ratio(Some(388.6), Some(1.0)), "389×");
        assert_eq!(ratio(Some(24.01), Some(1.0)), "24.0×");
        assert_eq!(ratio(Some(1.314), Some(1.0)), "1.31×");
        assert_eq!(ratio(Some(0.0406), Some(1.0)), "0.0406×");
        assert_eq!(ratio(None, Some(1.0)), "–");
    }

    #[test]
    fn durations_pick_a_unit_and_three_digits() {
        assert_eq!(duration_ns(2.84), "2.84 ns");
        assert_eq!(duration_ns(638.5), "638 ns");
        assert_eq!(duration_ns(13_600.0), "13.6 µs");
        assert_eq!(duration_ns(1_210_000.0), "1.21 ms");
    }

    #[test]
    fn hand_off_table_says_which_pool_won_from_the_numbers() {
        let s = set(vec![
            estimate("hand_off", "round_trip", "hand", 13_600.0),
            estimate("hand_off", "round_trip", "rayon", 7_200.0),
            estimate("hand_off", "batch_of_64", "hand", 25_500.0),
            estimate("hand_off", "batch_of_64", "rayon", 30_000.0),
        ]);
        let text = hand_off(&s);
        assert!(text.contains("13.6 µs [12.2, 15.0]"), "{text}");
        assert!(text.contains("0.53×"), "{text}");
        assert!(
            text.contains("rayon had the faster single round trip and the hand-rolled pool"),
            "{text}"
        );
    }

    #[test]
    fn timer_tables_divide_by_elements_and_give_the_ratio_span() {
        let mut estimates = Vec::new();
        for (n, w, h) in [
            (10_000, 100.0, 400.0),
            (100_000, 100.0, 1_400.0),
            (1_000_000, 100.0, 900.0),
        ] {
            let mut wheel = estimate("expire", "wheel", &n.to_string(), w);
            wheel.elements = Some(n);
            estimates.push(wheel);
            estimates.push(estimate("expire", "heap", &n.to_string(), h));
        }
        let text = timers(&set(estimates), "expire", &["wheel", "heap"], false);
        assert!(
            text.contains("| 100,000 | 100 ns [90.0, 110] | 1.40 µs"),
            "{text}"
        );
        assert!(text.contains("`heap` took 4.00× to 14.0×"), "{text}");
        let per_timer = timers(
            &set(vec![{
                let mut e = estimate("insert", "wheel", "10000", 200_000.0);
                e.elements = Some(10_000);
                e
            }]),
            "insert",
            &["wheel"],
            true,
        );
        assert!(
            per_timer.contains("| 10,000 | 20.0 ns [18.0, 22.0] |"),
            "{per_timer}"
        );
    }

    #[test]
    fn every_table_renders_even_without_data() {
        let files = render(None);
        assert_eq!(files.len(), TABLES.len());
        assert!(
            files
                .iter()
                .all(|(_, text)| text.contains("--only-benches"))
        );
    }
}
