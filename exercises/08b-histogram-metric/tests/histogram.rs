//! The histogram, parsed back the way a Prometheus server reads it.
#![allow(clippy::unwrap_used)]

use ex08_histogram_metric::Renderer;

const NAME: &str = "c1m_loop_iteration_seconds";
const BOUNDS_NS: [u64; 4] = [1_000, 4_000, 16_000, 1_000_000_000];

fn render(counts: &[u64], sum_ns: u64) -> String {
    let mut renderer = Renderer::new();
    renderer.counter("c1m_loop_wakeups_total", "Returns from epoll_wait.", 7);
    renderer.histogram(NAME, "Time per loop iteration.", &BOUNDS_NS, counts, sum_ns);
    renderer.gauge("c1m_connections_open", "Connections open.", 3);
    renderer.finish()
}

/// `(le, value)` of every bucket line, in order.
fn buckets(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix(&format!("{NAME}_bucket{{le=\"")))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").unwrap();
            (le.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn buckets_are_cumulative_in_seconds_and_end_at_inf() {
    let text = render(&[3, 2, 0, 4, 1], 2_500_000_000);
    let got = buckets(&text);
    let want = [
        ("0.000001", 3),
        ("0.000004", 5),
        ("0.000016", 5),
        ("1", 9),
        ("+Inf", 10),
    ];
    let want: Vec<(String, u64)> = want.iter().map(|(le, n)| (le.to_string(), *n)).collect();
    assert_eq!(got, want, "\n{text}");
    assert_eq!(sample(&text, &format!("{NAME}_count")), 10.0);
    assert_eq!(sample(&text, &format!("{NAME}_sum")), 2.5);
}

#[test]
fn an_empty_histogram_is_still_complete() {
    let text = render(&[0; 5], 0);
    let got = buckets(&text);
    assert_eq!(got.len(), BOUNDS_NS.len() + 1, "\n{text}");
    assert!(got.iter().all(|(_, n)| *n == 0));
    assert_eq!(got.last().unwrap().0, "+Inf");
    assert_eq!(sample(&text, &format!("{NAME}_count")), 0.0);
    assert_eq!(sample(&text, &format!("{NAME}_sum")), 0.0);
}

#[test]
fn buckets_never_decrease_and_inf_equals_count() {
    let counts = [5, 0, 7, 1, 9];
    let text = render(&counts, 123);
    let values: Vec<u64> = buckets(&text).into_iter().map(|(_, n)| n).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    assert_eq!(*values.last().unwrap(), counts.iter().sum::<u64>());
    assert_eq!(
        sample(&text, &format!("{NAME}_count")) as u64,
        *values.last().unwrap()
    );
}

#[test]
fn every_sample_line_belongs_to_a_declared_metric() {
    let text = render(&[1, 1, 1, 1, 1], 5_000);
    let mut declared: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            declared.push((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let owner = declared.iter().find(|(d, kind)| {
                d == name
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(d.as_str())))
            });
            assert!(owner.is_some(), "undeclared sample: {line}\n{text}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        }
    }
    assert!(declared.contains(&(NAME.to_string(), "histogram".to_string())));
}
