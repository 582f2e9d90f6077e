//! `cargo xtask results`: measure every server, then write the book's results
//! page, its plots and each chapter's table from what was measured.
//!
//! - `cargo xtask results`           run the matrix, write `data.json`, render
//! - `cargo xtask results --quick`   the same with short windows (a pipeline check)
//! - `cargo xtask results --render`  re-render from the committed `data.json`
//! - `cargo xtask results --only-scenarios`  measure only the chapter
//!   scenarios (see `scenarios.rs`) and keep the committed matrix
//! - `cargo xtask results --only-benches`  run the chapters' criterion
//!   benches (see `bench_estimates.rs`), import their estimates and keep
//!   everything else in the committed `data.json`
//! - `cargo xtask results --check`   re-render in memory and fail if any generated
//!   file differs from it (no measuring; the test command runs this)
//! - `cargo xtask results --quick --server go-echo`  measure one server (or a
//!   few), print its numbers as JSON, write nothing
//!
//! Everything generated lives under `book/src`: `results.md`, `results/*.svg`,
//! `generated/<server>.md` and the chapter scenario tables
//! `generated/<chapter>-<table>.md`. The numbers come from `results/data.json`
//! only, so a hand-edited number is a `--check` failure.

mod bench_estimates;
mod claims;
mod data;
pub(crate) mod format;
mod machine;
mod measure;
pub(crate) mod plot;
mod render;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use c1m_benches::{
    CONNECTION_COUNTS, CorePlan, FLOOR, IDLE_CONNECTIONS, MESSAGE_SIZE, PIPELINE_CONNECTIONS,
    PIPELINE_DEPTH, REFERENCE, SERVERS, WORK_CONNECTIONS, WORK_US,
};
use clap::Args;

use crate::run::{TaskError, TaskResult, workspace_root};
use data::{EchoPoint, MemoryProbe, ResultsData, ServerResults, Settings};
use measure::{EchoPass, Keep, Matrix, Timing};

/// Passes of the one-connection point in a full run (three with `--quick`),
/// which keeps the median of them. At one connection a pass is two wake-ups
/// per message and little else, and single passes of the same server spread
/// by a third or more either way: two passes, best of, showed a 7% gap
/// between chapters whose median over many passes was equal. The point is
/// cheap (warm-up plus window, on a fresh server), so seven passes add about
/// half a minute per server to a run; an odd count makes the median one
/// real pass, whose latency and CPU figures go with its rate.
const ONE_CONNECTION_PASSES: usize = 7;
const ONE_CONNECTION_PASSES_QUICK: usize = 3;

#[derive(Args)]
pub struct ResultsArgs {
    /// Short windows, one pass and 2,000 idle connections: checks the
    /// pipeline in about a fifth of the time; the page says it was a quick run.
    #[arg(long, conflicts_with_all = ["check", "render"])]
    quick: bool,
    /// Echo passes over all servers (interleaved); each point keeps its best
    /// pass, except the one-connection point, which runs at least
    /// ONE_CONNECTION_PASSES times and keeps its median. Default: 2, or 1
    /// with --quick.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10))]
    passes: Option<u32>,
    /// Do not measure: re-render from the committed data.json and fail if any
    /// generated file differs.
    #[arg(long, conflicts_with = "render")]
    check: bool,
    /// Do not measure: re-render from the committed data.json and write the files.
    #[arg(long)]
    render: bool,
    /// Measure only the chapter scenarios (the tables on chapter pages the
    /// matrix does not cover) and keep the committed matrix numbers.
    #[arg(long, conflicts_with_all = ["check", "render", "quick", "passes"])]
    only_scenarios: bool,
    /// With --only-scenarios: measure only this chapter's scenarios
    /// (repeatable, e.g. `--chapter ch07-core-pinning`) and keep every other
    /// table in data.json.
    #[arg(long = "chapter", value_name = "PACKAGE", requires = "only_scenarios")]
    chapters: Vec<String>,
    /// Run only the chapters' criterion benches (chapters 04, 05, 06; a few
    /// minutes), import criterion's estimates into data.json and keep
    /// everything else in it. The full run measures them too.
    #[arg(long, conflicts_with_all = ["check", "render", "quick", "passes", "only_scenarios"])]
    only_benches: bool,
    /// Measure only this server (repeatable), print its numbers as JSON and
    /// write nothing: a quick look at one server, e.g. `--quick --server
    /// go-echo`. The book's numbers always come from a run over all of them.
    #[arg(long = "server", value_name = "NAME", conflicts_with_all = ["check", "render", "only_scenarios"])]
    servers: Vec<String>,
}

pub fn run(args: &ResultsArgs) -> TaskResult {
    if args.check {
        return check();
    }
    if args.render {
        let data = load(&data_path())?;
        return write_rendered(&data);
    }
    let started = Instant::now();
    if args.only_benches {
        let mut data = load(&data_path())?;
        data.benches = Some(bench_estimates::measure_all().map_err(TaskError::Failed)?);
        write_file(&data_path(), &to_json(&data)?)?;
        write_rendered(&data)?;
        eprintln!(
            "\nresults: ran the criterion benches in {:.0} s; wrote {} and the pages it renders",
            started.elapsed().as_secs_f64(),
            relative(&data_path())
        );
        return Ok(());
    }
    if args.only_scenarios {
        let mut data = load(&data_path())?;
        for chapter in &args.chapters {
            if !scenarios::TABLES.iter().any(|(c, _)| c == chapter) {
                return Err(TaskError::Usage(format!(
                    "--chapter {chapter}: no chapter scenario has that name (see TABLES in \
                     xtask/src/results/scenarios.rs)"
                )));
            }
        }
        let measured = measure_scenarios(true, &args.chapters)?;
        data.scenarios = Some(match data.scenarios.take() {
            Some(old) if !args.chapters.is_empty() => merge_scenarios(old, measured),
            _ => measured,
        });
        write_file(&data_path(), &to_json(&data)?)?;
        write_rendered(&data)?;
        eprintln!(
            "\nresults: measured the chapter scenarios in {:.0} s; wrote {} and the pages it renders",
            started.elapsed().as_secs_f64(),
            relative(&data_path())
        );
        return Ok(());
    }
    let passes = args
        .passes
        .map_or(if args.quick { 1 } else { 2 }, |p| p as usize);
    if !args.servers.is_empty() {
        for name in &args.servers {
            if c1m_benches::server(name).is_none() {
                return Err(TaskError::Failed(format!(
                    "no server {name} in SERVERS (benches/src/lib.rs)"
                )));
            }
        }
        let data = measure_all(args.quick, passes, &args.servers)?;
        println!("{}", to_json(&data)?);
        eprintln!(
            "\nresults: measured {} server(s) in {:.0} s; wrote nothing",
            data.servers.len(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let mut data = measure_all(args.quick, passes, &[])?;
    // The servers and loadgen are built by now.
    data.scenarios = Some(measure_scenarios(false, &[])?);
    data.benches = if args.quick {
        // A quick run checks the pipeline; the committed benches stay.
        load(&data_path()).ok().and_then(|old| old.benches)
    } else {
        Some(bench_estimates::measure_all().map_err(TaskError::Failed)?)
    };
    write_file(&data_path(), &to_json(&data)?)?;
    write_rendered(&data)?;
    eprintln!(
        "\nresults: measured {} servers in {:.0} s; wrote {} and the pages it renders",
        data.servers.len(),
        started.elapsed().as_secs_f64(),
        relative(&data_path())
    );
    Ok(())
}

fn to_json(data: &ResultsData) -> Result<String, TaskError> {
    Ok(serde_json::to_string_pretty(data)
        .map_err(|e| TaskError::Failed(format!("serialising the results: {e}")))?
        + "\n")
}

/// Builds what the scenarios run (the servers and loadgen too, unless the
/// matrix just did) and measures them.
fn measure_scenarios(build_servers: bool, only: &[String]) -> Result<data::ScenarioSet, TaskError> {
    let cores = CorePlan::detect();
    let release_dir = if build_servers {
        eprintln!("==> build loadgen and every server (release)");
        c1m_benches::build_release(&["loadgen"])
            .map_err(|e| TaskError::Failed(format!("building the servers: {e}")))?
    } else {
        c1m_benches::release_dir()
    };
    scenarios::build_examples().map_err(TaskError::Failed)?;
    measure::check_binaries(&release_dir, &c1m_benches::available()).map_err(TaskError::Failed)?;
    c1m_benches::raise_fd_limit(19_000).map_err(TaskError::Failed)?;
    Ok(scenarios::measure_all(&release_dir, cores, only))
}

/// The committed tables with the newly measured ones in their place (or
/// added), for a run of some chapters' scenarios only. Each new table
/// carries the machine, date and time of its own run.
fn merge_scenarios(old: data::ScenarioSet, new: data::ScenarioSet) -> data::ScenarioSet {
    let mut tables = old.tables;
    for mut table in new.tables {
        table.machine = Some(new.machine.clone());
        table.seconds = Some(new.seconds);
        match tables
            .iter_mut()
            .find(|t| t.chapter == table.chapter && t.id == table.id)
        {
            Some(slot) => *slot = table,
            None => tables.push(table),
        }
    }
    data::ScenarioSet {
        machine: old.machine,
        seconds: old.seconds,
        tables,
    }
}

/// `CPU, N cores, Linux K, DATE (UTC)`: the stamp other generated pages
/// (the profile) carry, in the same words as the results page.
pub fn describe_this_machine() -> String {
    let m = machine::this_machine(CorePlan::detect());
    format!(
        "{}, {} cores, Linux {}, {} (UTC)",
        m.cpu, m.cores, m.kernel, m.date
    )
}

/// The committed data file every generated page comes from.
fn data_path() -> PathBuf {
    book_src().join("results").join("data.json")
}

fn book_src() -> PathBuf {
    workspace_root().join("book").join("src")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ANCHOR: measure_all
/// Builds the release binaries and measures every server in `SERVERS` (or
/// only those named in `only`), one after another.
fn measure_all(quick: bool, passes: usize, only: &[String]) -> Result<ResultsData, TaskError> {
    // Before anything is pinned: pinning shrinks what this process may use.
    let cores = CorePlan::detect();
    eprintln!("==> build loadgen and every server (release)");
    let release_dir = c1m_benches::build_release(&["loadgen"])
        .map_err(|e| TaskError::Failed(format!("building the servers: {e}")))?;
    // Every server, less a Go one where there is no Go toolchain.
    let mut measured = c1m_benches::available();
    if !only.is_empty() {
        measured.retain(|s| only.iter().any(|name| name == s.name));
    }
    measure::check_binaries(&release_dir, &measured).map_err(TaskError::Failed)?;
    let most = CONNECTION_COUNTS.into_iter().max().unwrap_or(1);
    // Servers inherit this process's descriptor limit.
    c1m_benches::raise_fd_limit(most.max(IDLE_CONNECTIONS)).map_err(TaskError::Failed)?;

    let timing = if quick {
        Timing {
            warmup: Duration::from_millis(500),
            measure: Duration::from_millis(1500),
            hold: Duration::from_secs(2),
        }
    } else {
        Timing {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
            hold: Duration::from_secs(3),
        }
    };
    let one_connection_passes = if !CONNECTION_COUNTS.contains(&1) {
        0
    } else if quick {
        passes.max(ONE_CONNECTION_PASSES_QUICK)
    } else {
        passes.max(ONE_CONNECTION_PASSES)
    };
    let settings = Settings {
        quick,
        message_size: MESSAGE_SIZE,
        warmup_seconds: timing.warmup.as_secs_f64(),
        measure_seconds: timing.measure.as_secs_f64(),
        passes,
        one_connection_passes,
        connection_counts: CONNECTION_COUNTS.to_vec(),
        work_us: WORK_US,
        work_connections: WORK_CONNECTIONS,
        idle_connections: if quick { 2_000 } else { IDLE_CONNECTIONS },
        reference: REFERENCE.to_string(),
        floor: Some(FLOOR.to_string()),
        pipeline_depth: PIPELINE_DEPTH,
        pipeline_connections: PIPELINE_CONNECTIONS,
    };
    let matrix = Matrix {
        release_dir,
        cores,
        timing,
        settings: settings.clone(),
    };
    eprintln!("    {}", cores.describe());
    eprintln!("\n==> memory per idle connection");
    let memory: Vec<MemoryProbe> = measured.iter().map(|s| matrix.memory(s)).collect();
    // Passes go over every server in turn, so a burst of noise from
    // elsewhere on the machine hits one server's pass, not all of its passes.
    let mut runs: Vec<Vec<EchoPass>> = measured.iter().map(|_| Vec::new()).collect();
    for pass in 1..=passes {
        eprintln!("\n==> echo pass {pass} of {passes}");
        for (server, runs) in measured.iter().zip(runs.iter_mut()) {
            runs.push(matrix.echo_pass(server));
        }
    }
    // The one-connection point's extra passes, interleaved the same way.
    let mut lone: Vec<Vec<EchoPoint>> = measured.iter().map(|_| Vec::new()).collect();
    for pass in passes + 1..=one_connection_passes {
        eprintln!("\n==> one-connection pass {pass} of {one_connection_passes}");
        for (server, lone) in measured.iter().zip(lone.iter_mut()) {
            lone.push(matrix.lone_point(server, 1));
        }
    }
    let servers = measured
        .iter()
        .zip(memory)
        .zip(runs)
        .zip(lone)
        .map(|(((server, memory), runs), lone)| {
            let mut echo_by_count: Vec<Vec<EchoPoint>> = settings
                .connection_counts
                .iter()
                .map(|_| Vec::new())
                .collect();
            let mut pipelined = Vec::new();
            let mut work = Vec::new();
            for run in runs {
                for (points, point) in echo_by_count.iter_mut().zip(run.echo) {
                    points.push(point);
                }
                pipelined.push(run.pipelined);
                work.extend(run.work);
            }
            let echo = settings
                .connection_counts
                .iter()
                .zip(echo_by_count)
                .map(|(&connections, mut points)| {
                    if connections == 1 && one_connection_passes > 0 {
                        points.extend(lone.iter().cloned());
                        measure::aggregate(points, Keep::Median)
                    } else {
                        measure::aggregate(points, Keep::Best)
                    }
                })
                .collect();
            ServerResults {
                name: server.name.to_string(),
                kind: server.kind.as_str().to_string(),
                args: server.args.iter().map(|a| a.to_string()).collect(),
                echo,
                pipelined: Some(measure::aggregate(pipelined, Keep::Best)),
                work: (!work.is_empty()).then(|| measure::aggregate(work, Keep::Best)),
                memory,
            }
        })
        .collect();
    Ok(ResultsData {
        machine: machine::this_machine(cores),
        settings,
        servers,
        scenarios: None,
        benches: None,
    })
}
// ANCHOR_END: measure_all

fn load(path: &Path) -> Result<ResultsData, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        TaskError::Failed(format!(
            "cannot read {}: {e} (run `cargo xtask results` to measure)",
            relative(path)
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        TaskError::Failed(format!("{} is not valid results data: {e}", relative(path)))
    })
}

fn rendered(data: &ResultsData) -> Result<Vec<(PathBuf, String)>, TaskError> {
    render::render(data, SERVERS).map_err(TaskError::Failed)
}

fn write_file(path: &Path, contents: &str) -> TaskResult {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| TaskError::Failed(format!("creating {}: {e}", dir.display())))?;
    }
    std::fs::write(path, contents)
        .map_err(|e| TaskError::Failed(format!("writing {}: {e}", path.display())))
}

/// Writes every rendered file and removes generated snippets nothing renders any more.
fn write_rendered(data: &ResultsData) -> TaskResult {
    let files = rendered(data)?;
    let src = book_src();
    for (path, contents) in &files {
        write_file(&src.join(path), contents)?;
        eprintln!("    wrote book/src/{}", path.display());
    }
    for stale in stale_snippets(&files) {
        std::fs::remove_file(&stale)
            .map_err(|e| TaskError::Failed(format!("removing {}: {e}", stale.display())))?;
        eprintln!("    removed {}", relative(&stale));
    }
    Ok(())
}

/// Files in `book/src/generated/` that other tasks render, from their own
/// data: never stale here. (`cargo xtask million` writes `million.md`,
/// `million-ch09.md`, `ramp-flamegraphs.md` and `ramp-experiments.md`,
/// `cargo xtask profile` writes `profile.md`, `cargo xtask neighbours`
/// writes `chapter-diffs.md` and `reading-time.md`.)
const RENDERED_ELSEWHERE: &[&str] = &[
    "million.md",
    "million-ch09.md",
    "ramp-flamegraphs.md",
    "ramp-experiments.md",
    "profile.md",
    "chapter-diffs.md",
    "reading-time.md",
    // The program output pages show: `cargo xtask samples` writes and checks it.
    "samples",
];

/// Files in `book/src/generated/` that rendering did not produce.
fn stale_snippets(files: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let dir = book_src().join("generated");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_none_or(|name| !RENDERED_ELSEWHERE.iter().any(|other| name == *other))
        })
        .filter(|p| {
            p.strip_prefix(book_src())
                .is_ok_and(|rel| !files.iter().any(|(f, _)| f == rel))
        })
        .collect();
    stale.sort();
    stale
}

// ANCHOR: check
/// The check the test command runs: every generated file is exactly what the
/// committed `data.json` renders to.
pub fn check() -> TaskResult {
    eprintln!("\n==> results page and chapter tables match book/src/results/data.json");
    let data = load(&data_path())?;
    let files = rendered(&data)?;
    let src = book_src();
    let mut problems = Vec::new();
    for (path, expected) in &files {
        match std::fs::read_to_string(src.join(path)) {
            Ok(actual) if actual == *expected => {}
            Ok(_) => problems.push(format!(
                "book/src/{} differs from what data.json renders to",
                path.display()
            )),
            Err(_) => problems.push(format!("book/src/{} is missing", path.display())),
        }
    }
    for stale in stale_snippets(&files) {
        problems.push(format!(
            "{} is not rendered from data.json",
            relative(&stale)
        ));
    }
    // Every chapter page shows its own rows from the same run.
    problems.extend(pages_missing_their_rows());
    if problems.is_empty() {
        eprintln!("    ok ({} generated files)", files.len());
        return Ok(());
    }
    for problem in &problems {
        eprintln!("    {problem}");
    }
    Err(TaskError::Failed(format!(
        "{} problem(s) with the generated results: re-render with \
         `cargo xtask results --render` (or re-measure with `cargo xtask results`)",
        problems.len()
    )))
}
// ANCHOR_END: check

/// Chapter pages that exist but do not include their generated rows.
fn pages_missing_their_rows() -> Vec<String> {
    let src = book_src();
    SERVERS
        .iter()
        .filter(|s| s.kind == c1m_benches::Kind::Chapter)
        .filter_map(|server| {
            let page = src.join(format!("{}.md", server.name));
            // No page for this chapter yet: nothing to show rows on.
            let text = std::fs::read_to_string(&page).ok()?;
            let include = format!("{{{{#include generated/{}.md}}}}", server.name);
            (!text.contains(&include)).then(|| {
                format!(
                    "{} does not show its measured rows; add `{include}` to it",
                    relative(&page)
                )
            })
        })
        .collect()
}
