//! The results page's plots, drawn as SVG with plotters.
//!
//! plotters is built without a font backend (no `ttf`, no `ab_glyph`), so
//! text is measured by its built-in estimate and written as SVG `<text>`:
//! the same data gives the same bytes on every machine, which is what lets
//! `cargo xtask results --check` compare plots byte for byte.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::{ResultsData, ServerResults};

const WIDTH: u32 = 900;
/// Width of the legend strip right of a line chart.
const LEGEND_WIDTH: u32 = 250;
const HEIGHT: u32 = 500;

/// Line colours, one per server in table order; chapters solid, baselines dashed.
const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    // Beyond ten servers (go-echo, and any chapter after 08), so no colour repeats.
    RGBColor(0, 0, 0),
    RGBColor(0, 90, 90),
];

fn colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a plot: {e}")
}

/// One line of a chart: a server's points.
struct Line {
    name: String,
    dashed: bool,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

fn lines(data: &ResultsData, value: impl Fn(&ServerResults, usize) -> Option<f64>) -> Vec<Line> {
    data.servers
        .iter()
        .enumerate()
        .map(|(i, server)| Line {
            name: server.name.clone(),
            dashed: server.kind != "chapter",
            colour: colour(i),
            points: server
                .echo
                .iter()
                .filter_map(|p| Some((p.connections as f64, value(server, p.connections)?)))
                .collect(),
        })
        .collect()
}

/// `1`, `100`, `1,000`, `10,000` on a log axis.
fn connections_label(x: &f64) -> String {
    super::format::thousands(x.round() as u64)
}

fn x_range(data: &ResultsData) -> std::ops::Range<f64> {
    let max = data
        .settings
        .connection_counts
        .iter()
        .copied()
        .max()
        .unwrap_or(10) as f64;
    0.7..max * 1.5
}

/// Draws `lines` on a chart already set up by the caller.
fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: &[Line],
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for line in lines.iter().filter(|l| !l.points.is_empty()) {
        let style = line.colour.stroke_width(3);
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(line.points.clone(), 10, 6, style))
                .map_err(err)?;
        } else {
            chart
                .draw_series(LineSeries::new(line.points.clone(), style))
                .map_err(err)?;
        }
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, line.colour.filled())),
            )
            .map_err(err)?;
    }
    Ok(())
}

/// The legend, in its own strip right of the plot, where no line can hide it.
fn draw_legend(area: &DrawingArea<SVGBackend<'_>, Shift>, lines: &[Line]) -> Result<(), String> {
    let text =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, line) in lines.iter().enumerate() {
        let y = 70 + 26 * i as i32;
        let style = line.colour.stroke_width(3);
        if line.dashed {
            for x in [4, 20] {
                area.draw(&PathElement::new(vec![(x, y), (x + 10, y)], style))
                    .map_err(err)?;
            }
        } else {
            area.draw(&PathElement::new(vec![(4, y), (34, y)], style))
                .map_err(err)?;
        }
        area.draw(&Text::new(line.name.clone(), (42, y), text.clone()))
            .map_err(err)?;
    }
    let note = ("sans-serif", 12)
        .into_font()
        .color(&BLACK.mix(0.6))
        .pos(Pos::new(HPos::Left, VPos::Center));
    let y = 70 + 26 * lines.len() as i32 + 8;
    area.draw(&Text::new(
        "solid: chapters, dashed: baselines and the floor",
        (4, y),
        note,
    ))
    .map_err(err)
}

fn caption(data: &ResultsData, what: &str) -> String {
    format!(
        "{what} — {}, {} cores, {}",
        data.machine.cpu, data.machine.cores, data.machine.date
    )
}

fn page(buf: &mut String) -> DrawingArea<SVGBackend<'_>, Shift> {
    let root = SVGBackend::with_string(buf, (WIDTH, HEIGHT)).into_drawing_area();
    // Filling cannot fail on a string backend; ignore the Result to keep
    // the call sites simple.
    let _ = root.fill(&WHITE);
    root
}

/// Messages/s against connections, one line per server, log x axis.
pub fn throughput(data: &ResultsData) -> Result<String, String> {
    let lines = lines(data, |s, c| s.at(c)?.rate().map(|r| r as f64));
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let mut buf = String::new();
    {
        let root = page(&mut buf);
        let body = root
            .titled(
                &caption(data, "Echo messages/s (64 B, closed loop)"),
                ("sans-serif", 18),
            )
            .map_err(err)?;
        let (plot_area, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(x_range(data).log_scale(), 0.0..top * 1.15)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent connections (log scale)")
            .y_desc("messages per second")
            .x_label_formatter(&connections_label)
            .y_label_formatter(&|y| super::format::thousands(y.round() as u64))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(err)?;
        draw_lines(&mut chart, &lines)?;
        draw_legend(&legend, &lines)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// p99 round-trip time against connections, one line per server, log-log.
pub fn p99(data: &ResultsData) -> Result<String, String> {
    let lines = lines(data, |s, c| s.at(c)?.p99().map(|us| us.max(1) as f64));
    let values = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let top = values().fold(10.0, f64::max);
    let bottom = values().fold(top, f64::min);
    let mut buf = String::new();
    {
        let root = page(&mut buf);
        let body = root
            .titled(&caption(data, "p99 round-trip time"), ("sans-serif", 18))
            .map_err(err)?;
        let (plot_area, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(
                x_range(data).log_scale(),
                (bottom / 2.0..top * 3.0).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent connections (log scale)")
            .y_desc("p99 RTT (log scale)")
            .x_label_formatter(&connections_label)
            .y_label_formatter(&|us| super::format::micros(us.round() as u64))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(err)?;
        draw_lines(&mut chart, &lines)?;
        draw_legend(&legend, &lines)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// Bytes of userland memory per idle connection, one bar per server.
pub fn memory(data: &ResultsData) -> Result<String, String> {
    let bars: Vec<(String, Option<f64>, RGBColor)> = data
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), s.memory.bytes_per_connection(), colour(i)))
        .collect();
    let top = bars.iter().filter_map(|b| b.1).fold(100.0, f64::max);
    let n = bars.len().max(1);
    let held = super::format::thousands(data.settings.idle_connections as u64);
    let mut buf = String::new();
    {
        let root = page(&mut buf);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                caption(
                    data,
                    &format!("Userland memory per idle connection ({held} held)"),
                ),
                ("sans-serif", 18),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..top * 1.25, (0..n - 1).into_segmented())
            .map_err(err)?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let name_of = move |v: &SegmentValue<usize>| match v {
            // Row 0 is at the bottom; the first server goes on top.
            SegmentValue::CenterOf(row) => (n - 1)
                .checked_sub(*row)
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("bytes of RSS growth per held connection")
            .x_label_formatter(&|x| super::format::thousands(x.round() as u64))
            .y_label_formatter(&name_of)
            .y_labels(n)
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 14))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(err)?;
        for (i, (_, value, colour)) in bars.iter().enumerate() {
            let row = n - 1 - i;
            let label_at = (value.unwrap_or(0.0), SegmentValue::CenterOf(row));
            let label = match value {
                Some(bytes) => format!("{} B", super::format::thousands(bytes.round() as u64)),
                None => "failed".to_string(),
            };
            if let Some(bytes) = value {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (*bytes, SegmentValue::Exact(row + 1)),
                    ],
                    colour.filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                chart.draw_series(std::iter::once(bar)).map_err(err)?;
            }
            // The value just right of its bar's end (SVG drops leading spaces,
            // so the gap is an offset in pixels).
            let value_label = EmptyElement::at(label_at)
                + Text::new(
                    label,
                    (8, 0),
                    TextStyle::from(("sans-serif", 14).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                );
            chart
                .draw_series(std::iter::once(value_label))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// A million run's ramp: connections open against seconds (left axis) and
/// connections per second (right axis), so a ramp that slows shows where.
pub fn ramp(open: &[(f64, f64)], rate: &[(f64, f64)], title: &str) -> Result<String, String> {
    let seconds = open.iter().map(|p| p.0).fold(1.0, f64::max);
    let most = open.iter().map(|p| p.1).fold(1.0, f64::max);
    let fastest = rate.iter().map(|p| p.1).fold(1.0, f64::max);
    let (open_colour, rate_colour) = (colour(0), colour(1));
    let mut buf = String::new();
    {
        let root = page(&mut buf);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .right_y_label_area_size(84)
            .build_cartesian_2d(0.0..seconds * 1.02, 0.0..most * 1.1)
            .map_err(err)?
            .set_secondary_coord(0.0..seconds * 1.02, 0.0..fastest * 1.2);
        chart
            .configure_mesh()
            .x_desc("seconds since loadgen started")
            .y_desc("connections open (server's count)")
            .y_label_formatter(&|y| super::format::thousands(y.round() as u64))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .light_line_style(BLACK.mix(0.05))
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("connections per second (1 s window)")
            .y_label_formatter(&|y| super::format::thousands(y.round() as u64))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(open.to_vec(), open_colour.stroke_width(3)))
            .map_err(err)?
            .label("connections open (left)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], open_colour.stroke_width(3))
            });
        chart
            .draw_secondary_series(DashedLineSeries::new(
                rate.to_vec(),
                8,
                5,
                rate_colour.stroke_width(2),
            ))
            .map_err(err)?
            .label("connections per second (right)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], rate_colour.stroke_width(2))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}
