//! A latency-by-percentile plot as a standalone SVG, in the style of HdrHistogram's plotter:
//! the x axis is the percentile on a log scale of 1/(1-p) (0%, 90%, 99%, 99.9%, ...), so the
//! tail gets as much room as the median; the y axis is latency on a log scale (milliseconds),
//! so p50 and max are both readable. One line per measured latency, with its p50/p99/max in
//! the legend.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::stats::LatencySummary;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 290.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 70.0;
/// Percentile decades shown at least (to 99.9%) and at most (to 99.9999%).
const DECADES_MIN: u32 = 3;
const DECADES_MAX: u32 = 6;
const TICKS_PER_HALF_DISTANCE: u32 = 20;

/// One line of the plot.
pub struct Series<'a> {
    pub name: &'a str,
    /// What is measured, one short line under the name.
    pub what: &'a str,
    pub color: &'a str,
    /// Microseconds.
    pub hist: &'a Histogram<u64>,
}

/// The plot as SVG text. Empty series are listed in the legend as "no data".
pub fn svg(title: &str, subtitle: &str, series: &[Series]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let most = series.iter().map(|s| s.hist.len()).max().unwrap_or(0);
    // Enough decades for the most extreme percentile the data can tell apart.
    let decades = ((most.max(1) as f64).log10().ceil() as u32).clamp(DECADES_MIN, DECADES_MAX);
    let x_of = |q: f64| {
        let x = if q >= 1.0 {
            f64::from(decades)
        } else {
            (1.0 / (1.0 - q)).log10().min(f64::from(decades))
        };
        LEFT + x / f64::from(decades) * plot_w
    };
    let (lo_ms, hi_ms) = y_range(series);
    let (lo_log, hi_log) = (lo_ms.log10(), hi_ms.log10());
    let y_of = |ms: f64| {
        let v = ms.max(lo_ms).log10();
        TOP + plot_h - (v - lo_log) / (hi_log - lo_log) * plot_h
    };

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = write!(
        s,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="28" font-size="18" font-weight="bold">{}</text><text x="{LEFT}" y="50" font-size="12" fill="#444">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    // Vertical grid: one line per percentile decade.
    for d in 0..=decades {
        let x = LEFT + f64::from(d) / f64::from(decades) * plot_w;
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            percentile_label(d)
        );
    }
    // Horizontal grid: 1, 2, 5 per latency decade.
    let mut decade = 10f64.powf(lo_log.floor());
    while decade <= hi_ms {
        for m in [1.0, 2.0, 5.0] {
            let ms = decade * m;
            if ms < lo_ms * 0.999 || ms > hi_ms * 1.001 {
                continue;
            }
            let y = y_of(ms);
            let stroke = if m == 1.0 { "#bbb" } else { "#eee" };
            let _ = write!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                ms_label(ms)
            );
        }
        decade *= 10.0;
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">percentile (log scale of 1/(1-p))</text><text x="20" y="{:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (ms, log scale)</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, ser) in series.iter().enumerate() {
        let legend_y = TOP + 10.0 + i as f64 * 64.0;
        let legend_x = LEFT + plot_w + 20.0;
        let _ = write!(
            s,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
            legend_x + 24.0,
            ser.color,
            legend_x + 30.0,
            legend_y + 5.0,
            escape(ser.name)
        );
        let summary = LatencySummary::of(ser.hist);
        let detail = if ser.hist.is_empty() {
            "no data".to_string()
        } else {
            format!(
                "p50 {} · p99 {} · max {} ms",
                ms_label(summary.p50 as f64 / 1000.0),
                ms_label(summary.p99 as f64 / 1000.0),
                ms_label(summary.max as f64 / 1000.0)
            )
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text><text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text>"##,
            legend_x + 30.0,
            legend_y + 21.0,
            escape(ser.what),
            legend_x + 30.0,
            legend_y + 36.0,
            escape(&detail)
        );
        if ser.hist.is_empty() {
            continue;
        }
        let mut points = String::new();
        let mut last_y = None;
        for v in ser.hist.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let x = x_of(v.quantile_iterated_to());
            let y = y_of(v.value_iterated_to() as f64 / 1000.0);
            // A step line: hold the previous latency until this percentile.
            if let Some(prev) = last_y {
                let _ = write!(points, "{x:.1},{prev:.1} ");
            }
            let _ = write!(points, "{x:.1},{y:.1} ");
            last_y = Some(y);
        }
        let _ = write!(
            s,
            r#"<polyline points="{points}" fill="none" stroke="{}" stroke-width="2"/>"#,
            ser.color
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The y range in milliseconds: whole 1-2-5 steps around every series' min and max.
fn y_range(series: &[Series]) -> (f64, f64) {
    let mut lo = f64::MAX;
    let mut hi = 0f64;
    for s in series.iter().filter(|s| !s.hist.is_empty()) {
        lo = lo.min(s.hist.min().max(1) as f64 / 1000.0);
        hi = hi.max(s.hist.max() as f64 / 1000.0);
    }
    if hi <= 0.0 {
        return (0.01, 10.0);
    }
    let down = |v: f64| {
        let d = 10f64.powf(v.log10().floor());
        [5.0, 2.0, 1.0]
            .into_iter()
            .map(|m| m * d)
            .find(|&c| c <= v)
            .unwrap_or(d)
    };
    let up = |v: f64| {
        let d = 10f64.powf(v.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * d)
            .find(|&c| c >= v)
            .unwrap_or(10.0 * d)
    };
    let (lo, hi) = (down(lo), up(hi));
    if hi / lo < 10.0 {
        (lo, lo * 10.0)
    } else {
        (lo, hi)
    }
}

fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

fn ms_label(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        let s = format!("{ms:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{ms:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    #[test]
    fn percentile_axis_labels_count_nines() {
        let labels: Vec<String> = (0..=5).map(percentile_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn a_plot_has_a_line_per_series_and_labelled_axes() {
        let mut a = stats::new_histogram();
        for us in 100..5_000 {
            stats::record(&mut a, us, 1);
        }
        let empty = stats::new_histogram();
        let text = svg(
            "latency",
            "a <test>",
            &[
                Series {
                    name: "produce",
                    what: "send → ack",
                    color: "#1f77b4",
                    hist: &a,
                },
                Series {
                    name: "end-to-end",
                    what: "send → consumer",
                    color: "#d62728",
                    hist: &empty,
                },
            ],
        );
        assert!(text.starts_with("<svg"));
        assert!(text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<polyline").count(), 1);
        assert!(text.contains("percentile (log scale"));
        assert!(text.contains("latency (ms, log scale)"));
        assert!(text.contains("99.9%"));
        assert!(text.contains("a &lt;test&gt;"));
        assert!(text.contains("no data"));
    }

    #[test]
    fn the_y_range_covers_the_data_in_whole_steps() {
        let mut h = stats::new_histogram();
        stats::record(&mut h, 130, 1);
        stats::record(&mut h, 7_400, 1);
        let (lo, hi) = y_range(&[Series {
            name: "x",
            what: "",
            color: "red",
            hist: &h,
        }]);
        assert!((lo - 0.1).abs() < 1e-9, "{lo}");
        assert!((hi - 10.0).abs() < 1e-9, "{hi}");
    }
}
