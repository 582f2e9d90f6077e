//! "The playbook's claims, checked": the table on the Go appendix page.
//!
//! Each row is one claim of the popular Go million-connection advice, what
//! this repository's measurements say about it, and the command that
//! measured it. Every number is read from `data.json` (the matrix and the
//! chapter scenario tables), so the verdicts change when the numbers do; a
//! claim with nothing measured yet says so instead of guessing.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::data::{ResultsData, ScenarioTable, ServerResults};
use super::format::thousands;
use super::render::{MARKDOWN_NOTE, table_row};

/// The Go server the goroutine claims are checked against.
const GO: &str = "go-echo";

/// Where the table lives, under `book/src`.
pub fn path() -> PathBuf {
    PathBuf::from("generated").join("go-claims.md")
}

/// One row: the claim, what we measured, whether it holds here, how to re-measure.
struct Claim {
    claim: &'static str,
    measured: String,
    verdict: String,
    command: &'static str,
}

/// The whole table, as Markdown.
pub fn render(data: &ResultsData) -> String {
    let claims = [
        goroutine_size(data),
        edge_triggered(data),
        worker_pool(data),
        object_pool(data),
        idle_cleanup(data),
        pinning(data),
        monitoring(data),
    ];
    let mut out = String::new();
    let _ = writeln!(out, "{MARKDOWN_NOTE}\n");
    // Sentences, not figures: every column left-aligned.
    let _ = writeln!(
        out,
        "| the playbook says | measured here | verdict here | measured by |\n| --- | --- | --- | --- |"
    );
    for c in claims {
        table_row(
            &mut out,
            &[
                c.claim.to_string(),
                c.measured,
                c.verdict,
                format!("`{}`", c.command),
            ],
        );
    }
    out
}

const NOT_YET: &str = "not measured yet";

fn not_yet(claim: &'static str, command: &'static str, why: &str) -> Claim {
    Claim {
        claim,
        measured: format!("{NOT_YET} ({why})"),
        verdict: "–".to_string(),
        command,
    }
}

fn bytes_per_idle(server: Option<&ServerResults>) -> Option<f64> {
    server?.memory.bytes_per_connection()
}

fn whole(x: f64) -> String {
    thousands(x.round() as u64)
}

// ---------------------------------------------------------------------------
// Reading the chapter scenario tables by column name and row labels.

fn table<'a>(data: &'a ResultsData, chapter: &str, id: &str) -> Option<&'a ScenarioTable> {
    data.scenarios
        .as_ref()?
        .tables
        .iter()
        .find(|t| t.chapter == chapter && t.id == id)
}

/// The cell in `column` of the first row whose cells start with `labels`.
fn cell<'a>(table: &'a ScenarioTable, labels: &[&str], column: &str) -> Option<&'a str> {
    let col = table.columns.iter().position(|c| c == column)?;
    table
        .rows
        .iter()
        .filter(|r| r.error.is_none())
        .find(|r| labels.iter().zip(&r.cells).all(|(l, c)| c == l))
        .and_then(|r| r.cells.get(col))
        .map(String::as_str)
}

/// `12,345`, `2.26`, `1.96×`, `13.60 ms` → the leading number.
fn number(cell: &str) -> Option<f64> {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// The claims.

// ANCHOR: goroutine_size
fn goroutine_size(data: &ResultsData) -> Claim {
    let claim = "A goroutine costs about 2 KB, so a goroutine per connection scales";
    let command = "cargo xtask results";
    let go = data.server(GO);
    let Some(rss) = bytes_per_idle(go) else {
        return not_yet(
            claim,
            command,
            "no go-echo memory probe in data.json: run it with Go installed",
        );
    };
    let held = go.map_or(0, |g| g.memory.connections);
    let stack = go.and_then(|g| g.memory.stack_bytes_per_connection);
    let mut measured = format!(
        "go-echo, {} idle connections: {} B of RSS each",
        thousands(held as u64),
        whole(rss)
    );
    if let Some(stack) = stack {
        let _ = write!(
            measured,
            ", {} B of it goroutine stack (`StackInuse`)",
            thousands(stack)
        );
    }
    let others: Vec<String> = ["tokio-echo", "ch08-million-connections"]
        .into_iter()
        .filter_map(|name| {
            Some(format!(
                "{name} {} B",
                whole(bytes_per_idle(data.server(name))?)
            ))
        })
        .collect();
    if !others.is_empty() {
        let _ = write!(measured, "; {}", others.join(", "));
    }
    let verdict = match stack {
        // The runtime's starting stack is 2,048 B; "about 2 KB" allows a
        // little for the runtime's own goroutines in the average.
        Some(stack) if stack <= 2_560 => format!(
            "holds for the stack alone; the whole idle connection costs {:.1}× that in RSS",
            rss / stack as f64
        ),
        Some(stack) => format!(
            "does not hold: a goroutine parked in `Read` has a {} B stack, not 2 KB",
            thousands(stack)
        ),
        None => format!("the connection costs {} B, not 2 KB", whole(rss)),
    };
    Claim {
        claim,
        measured,
        verdict,
        command,
    }
}
// ANCHOR_END: goroutine_size

fn edge_triggered(data: &ResultsData) -> Claim {
    let claim = "Edge-triggered epoll is more efficient than level-triggered";
    let command = "cargo xtask results --only-scenarios";
    let Some(t) = table(data, "ch03-epoll-edge-triggered", "syscalls") else {
        return not_yet(claim, command, "no chapter 03 syscall table");
    };
    let per_message = |workload: &str, server: &str| {
        let w = t
            .rows
            .iter()
            .find(|r| r.cells.first().is_some_and(|c| c.starts_with(workload)))?
            .cells
            .first()?
            .clone();
        number(cell(t, &[&w, server], "syscalls / message")?)
    };
    let (Some(pp_lt), Some(pp_et), Some(slow_lt), Some(slow_et)) = (
        per_message("(a)", "02 LT"),
        per_message("(a)", "03 ET"),
        per_message("(b)", "02 LT"),
        per_message("(b)", "03 ET"),
    ) else {
        return not_yet(claim, command, "the chapter 03 table lacks a row");
    };
    let measured = format!(
        "system calls per message, LT → ET: 64 B ping-pong {pp_lt:.2} → {pp_et:.2}; \
         256 KiB to slow readers {slow_lt:.2} → {slow_et:.2}"
    );
    let saves = |lt: f64, et: f64| et < lt * 0.95;
    let verdict = match (saves(pp_lt, pp_et), saves(slow_lt, slow_et)) {
        (true, true) => "holds in both workloads".to_string(),
        (false, true) => format!(
            "ties at ping-pong ({:.2}×); ET saves {:.0}% only where sockets stay ready \
             across wake-ups (slow readers)",
            pp_et / pp_lt,
            (1.0 - slow_et / slow_lt) * 100.0
        ),
        (true, false) => "holds at ping-pong, not with slow readers".to_string(),
        (false, false) => "no measurable difference here".to_string(),
    };
    Claim {
        claim,
        measured,
        verdict,
        command,
    }
}

fn worker_pool(data: &ResultsData) -> Claim {
    let claim = "A worker pool reduces scheduling pressure";
    let command = "cargo xtask results --only-scenarios";
    let pool = "04 `--pool hand`";
    let heavy = table(data, "ch04-worker-pool", "work-200")
        .and_then(|t| number(cell(t, &[pool], "vs 03")?));
    // Every read handed to the pool at `--work-us 0`: labelled with
    // `--offload always` since chapter 04 keeps cheap work on the loop.
    let light = table(data, "ch04-worker-pool", "work-0").and_then(|t| {
        ["04 `--offload always --pool hand`", pool]
            .into_iter()
            .find_map(|label| number(cell(t, &[label], "vs 03")?))
    });
    let (Some(heavy), Some(light)) = (heavy, light) else {
        return not_yet(claim, command, "no chapter 04 pool tables");
    };
    let measured = format!(
        "chapter 04's pool against work on the event loop, messages/s: {heavy:.2}× with \
         200 µs of CPU work per message, {light:.2}× with none"
    );
    let verdict = match (heavy > 1.05, light < 0.95) {
        (true, true) => {
            "holds only when the work costs more than the hand-off; for cheap work the pool \
             costs throughput (so chapter 04 keeps cheap work on the loop)"
                .to_string()
        }
        (true, false) => "holds".to_string(),
        (false, _) => "does not hold here".to_string(),
    };
    Claim {
        claim,
        measured,
        verdict,
        command,
    }
}

fn object_pool(data: &ResultsData) -> Claim {
    let claim = "`sync.Pool` (object pooling) cuts allocation and GC";
    let command = "cargo xtask results --only-scenarios";
    let Some(t) = table(data, "ch05-buffer-pool", "idle-memory") else {
        return not_yet(claim, command, "no chapter 05 idle-memory table");
    };
    let column = "userland bytes per idle connection";
    let of = |name: &str| number(cell(t, &[&format!("`{name}`")], column)?);
    let (Some(before), Some(pooled)) = (of("ch04-worker-pool"), of("ch05-buffer-pool")) else {
        return not_yet(claim, command, "the chapter 05 table lacks a row");
    };
    let mut measured = format!(
        "userland bytes per idle connection: chapter 04 {}, chapter 05 with pooled buffers {}",
        whole(before),
        whole(pooled)
    );
    let buffer_per_connection: Vec<String> = ["tokio-echo", GO]
        .into_iter()
        .filter_map(|name| {
            Some(format!(
                "{name} {}",
                whole(bytes_per_idle(data.server(name))?)
            ))
        })
        .collect();
    if !buffer_per_connection.is_empty() {
        let _ = write!(
            measured,
            "; a buffer per connection: {}",
            buffer_per_connection.join(", ")
        );
    }
    let verdict = if pooled < before {
        "holds: no buffer is held by an idle connection (Rust has no GC; the saving is memory)"
            .to_string()
    } else {
        "no saving measured here".to_string()
    };
    Claim {
        claim,
        measured,
        verdict,
        command,
    }
}

fn idle_cleanup(data: &ResultsData) -> Claim {
    let claim = "Clean up idle connections";
    let command = "cargo xtask results --only-scenarios";
    let Some(t) = table(data, "ch06-idle-timeouts", "reap-lateness") else {
        return not_yet(claim, command, "no chapter 06 reaping table");
    };
    let row = ["1s", "`since_sent`"];
    let (Some(clients), Some(p99), Some(max)) = (
        cell(t, &row, "clients"),
        cell(t, &row, "p99"),
        cell(t, &row, "max"),
    ) else {
        return not_yet(claim, command, "the chapter 06 table lacks its 1 s row");
    };
    Claim {
        claim,
        measured: format!(
            "chapter 06's timing wheel, {clients} idle clients, 1 s timeout: reaped late by \
             {p99} at p99, {max} at most"
        ),
        verdict: "holds, and costs O(1) per timer: each reaped connection frees its descriptor \
                  and kernel socket memory"
            .to_string(),
        command,
    }
}

fn pinning(data: &ResultsData) -> Claim {
    let claim = "Pin threads to cores";
    let command = "cargo xtask results --only-scenarios";
    let Some(t) = table(data, "ch07-core-pinning", "reactors") else {
        return not_yet(claim, command, "no chapter 07 reactors table");
    };
    let rate = |flags: &str| number(cell(t, &[flags], "messages/s")?);
    let (Some(one), Some(one_pin), Some(two), Some(two_pin)) = (
        rate("`--threads 1`"),
        rate("`--threads 1 --pin`"),
        rate("`--threads 2`"),
        rate("`--threads 2 --pin`"),
    ) else {
        return not_yet(claim, command, "the chapter 07 table lacks a row");
    };
    let (r1, r2) = (one_pin / one, two_pin / two);
    let verdict = if r1 < 0.97 && r2 < 0.97 {
        format!(
            "does not hold on this {}-core machine, where the load generator needs a core too: \
             pinning costs throughput",
            data.machine.cores
        )
    } else if r1 > 1.03 && r2 > 1.03 {
        "holds".to_string()
    } else {
        "no consistent effect here".to_string()
    };
    Claim {
        claim,
        measured: format!(
            "chapter 07, messages/s pinned against unpinned: {r1:.2}× with one reactor, \
             {r2:.2}× with two"
        ),
        verdict,
        command,
    }
}

fn monitoring(data: &ResultsData) -> Claim {
    let claim = "Monitor connections, CPU and GC time";
    let command = "cargo xtask results";
    let cpu = |name: &str| {
        let point = data.server(name)?.at(100)?;
        if point.error.is_some() {
            return None;
        }
        // Zero means the time was spent in processes the probe did not see.
        point.server_cpu_us_per_message.filter(|us| *us > 0.0)
    };
    let shown: Vec<String> = ["ch07-core-pinning", "tokio-echo", GO]
        .into_iter()
        .filter_map(|name| Some(format!("{name} {:.1} µs", cpu(name)?)))
        .collect();
    if shown.is_empty() {
        return not_yet(
            claim,
            command,
            "no server CPU per message at 100 connections",
        );
    }
    Claim {
        claim,
        measured: format!(
            "server CPU per message at 100 connections, read from `/proc` for every point: {}",
            shown.join(", ")
        ),
        verdict: "holds: every number in this book is such a reading; chapter 08 serves \
                  connections and system-call counts with `--metrics`, go-echo's summary \
                  reports GC cycles and pause time (the Rust servers have no GC)"
            .to_string(),
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::super::data::MemoryProbe;
    use super::*;

    /// The committed data, with a go-echo entry as a run with Go would add.
    fn data_with_go(stack: Option<u64>) -> ResultsData {
        let text = std::fs::read_to_string(super::super::data_path()).unwrap();
        let mut data: ResultsData = serde_json::from_str(&text).unwrap();
        let mut go = data.reference().unwrap().clone();
        go.name = GO.to_string();
        go.memory = MemoryProbe {
            connections: 10_000,
            rss_idle_bytes: Some(4_000_000),
            rss_held_bytes: Some(4_000_000 + 10_000 * 4_000),
            stack_bytes_per_connection: stack,
            ..MemoryProbe::default()
        };
        // The committed data may already hold a measured go-echo: this
        // made-up one takes its place.
        data.servers.retain(|s| s.name != GO);
        data.servers.push(go);
        data
    }

    #[test]
    fn goroutine_claim_is_checked_against_the_go_servers_probe() {
        let row = goroutine_size(&data_with_go(Some(2_100)));
        assert!(
            row.measured.contains("4,000 B of RSS each"),
            "{}",
            row.measured
        );
        assert!(row.measured.contains("2,100 B of it goroutine stack"));
        assert!(
            row.verdict.starts_with("holds for the stack alone"),
            "{}",
            row.verdict
        );

        let row = goroutine_size(&data_with_go(Some(8_192)));
        assert!(row.verdict.starts_with("does not hold"), "{}", row.verdict);
    }

    #[test]
    fn every_claim_has_a_row_even_without_go_numbers() {
        let text = std::fs::read_to_string(super::super::data_path()).unwrap();
        let data: ResultsData = serde_json::from_str(&text).unwrap();
        let table = render(&data);
        // Note, header, rule, seven claims.
        assert_eq!(table.lines().filter(|l| l.starts_with('|')).count(), 9);
        assert!(table.contains(NOT_YET) || data.server(GO).is_some());
    }

    #[test]
    fn number_reads_the_leading_figure_of_a_cell() {
        assert_eq!(number("12,345"), Some(12345.0));
        assert_eq!(number("1.96×"), Some(1.96));
        assert_eq!(number("13.60 ms"), Some(13.6));
        assert_eq!(number("–"), None);
    }
}
