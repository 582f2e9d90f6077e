//! Exercise 08 — a histogram in a tiny Prometheus text renderer.
//!
//! The text exposition format: for each metric, `# HELP name text` and
//! `# TYPE name kind`, then `name{labels} value` lines. Counters and gauges
//! are done; write `histogram`, marked `todo!()` (see README.md).
//! (This is the reference solution.)

use std::fmt::Write as _;

/// Builds one `/metrics` response body.
#[derive(Debug, Default)]
pub struct Renderer {
    out: String,
}

impl Renderer {
    pub fn new() -> Renderer {
        Renderer::default()
    }

    /// A value that only goes up (restarts aside): `name_total` by convention.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, "counter", help, value);
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, "gauge", help, value);
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }

    /// A histogram in seconds from buckets counted in nanoseconds:
    /// `counts[i]` observations fell in `(bounds_ns[i-1], bounds_ns[i]]`,
    /// and the last count (`counts.len() == bounds_ns.len() + 1`) above every
    /// bound. `sum_ns` is the sum of all observations. Prometheus wants the
    /// buckets cumulative, ending with `le="+Inf"`, then `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds_ns: &[u64],
        counts: &[u64],
        sum_ns: u64,
    ) {
        assert_eq!(
            counts.len(),
            bounds_ns.len() + 1,
            "one count per bound, plus +Inf"
        );
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound_ns, count) in bounds_ns.iter().zip(counts) {
            cumulative += count;
            let le = *bound_ns as f64 / 1e9;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += counts.last().copied().unwrap_or(0);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = sum_ns as f64 / 1e9;
        let _ = writeln!(self.out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}
