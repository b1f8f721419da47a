//! HdrHistogram's percentile distribution text (`.hgrm`), as HdrHistogram's
//! `outputPercentileDistribution` prints it and its plotters read it: a table of
//! `Value Percentile TotalCount 1/(1-Percentile)` at 5 ticks per half distance, then the
//! `#[Mean ...]`, `#[Max ...]`, `#[Buckets ...]` footer. Values are in milliseconds (the
//! histograms hold microseconds), as wrk2 writes them.

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100% (HdrHistogram's default).
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per printed unit (milliseconds).
const UNIT_SCALING_RATIO: f64 = 1000.0;
/// Decimals of the printed values (the histograms' significant digits).
const VALUE_DECIMALS: usize = 3;

/// The distribution of `h` (microseconds) as `.hgrm` text.
pub fn render(h: &Histogram<u64>) -> String {
    let d = VALUE_DECIMALS;
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / UNIT_SCALING_RATIO;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                out.push_str(&format!(
                    "{value:>12.d$} {q:>2.12} {total:>10} {:>14.2}\n",
                    1.0 / (1.0 - q)
                ));
            } else {
                out.push_str(&format!("{value:>12.d$} {q:>2.12} {total:>10}\n"));
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / UNIT_SCALING_RATIO,
            h.stdev() / UNIT_SCALING_RATIO,
            h.max() as f64 / UNIT_SCALING_RATIO,
        )
    };
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    out.push_str(&format!(
        "#[Mean    = {mean:>12.d$}, StdDeviation   = {stdev:>12.d$}]\n"
    ));
    out.push_str(&format!(
        "#[Max     = {max:>12.d$}, Total count    = {:>12}]\n",
        h.len()
    ));
    out.push_str(&format!(
        "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]\n",
        h.buckets()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    #[test]
    fn the_table_has_the_plotters_columns_and_ends_at_100_percent() {
        let mut h = stats::new_histogram();
        for us in 1..=10_000 {
            stats::record(&mut h, us, 1);
        }
        let text = render(&h);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 50, "{} rows", rows.len());
        let first = &rows[0];
        assert_eq!(first.len(), 4);
        assert_eq!(first[1], "0.000000000000");
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p)");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let max: f64 = last[0].parse().unwrap();
        assert!((9.99..=10.01).contains(&max), "max {max} ms");
        // Percentiles and counts never go down.
        for pair in rows.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a[1].parse::<f64>().unwrap() <= b[1].parse::<f64>().unwrap());
            assert!(a[2].parse::<u64>().unwrap() <= b[2].parse::<u64>().unwrap());
        }
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn an_empty_histogram_still_has_a_header_and_footer() {
        let text = render(&stats::new_histogram());
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }
}
