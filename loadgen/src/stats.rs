//! What a core measures, and how cores' measurements merge.
//!
//! Latencies are recorded in microseconds into HdrHistograms (3 significant digits, up to
//! [`LATENCY_US_MAX`]; longer values are clamped to it). Each core keeps two sets: the
//! *window* (only what falls in the measured window, after the warm-up) merged into the
//! final report, and the *interval* (everything since the last progress tick) sent to the
//! main thread once a second for the progress line.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency a histogram holds; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records `us` microseconds `count` times (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64, count: u64) {
    h.saturating_record_n(us.clamp(1, LATENCY_US_MAX), count);
}

/// Adds `from` into `into` (same bounds, so this cannot fail).
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .expect("histograms with the same bounds always add");
}

/// One kind of traffic: records, bytes and latencies.
#[derive(Clone)]
pub struct Flow {
    pub records: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            records: 0,
            bytes: 0,
            latency: new_histogram(),
        }
    }
}

impl Flow {
    pub fn merge(&mut self, other: &Flow) {
        self.records += other.records;
        self.bytes += other.bytes;
        merge(&mut self.latency, &other.latency);
    }

    pub fn reset(&mut self) {
        self.records = 0;
        self.bytes = 0;
        self.latency.reset();
    }
}

/// Everything one core measured over some span: produce acks, records consumed, end-to-end
/// delivery, errors by kind.
#[derive(Clone, Default)]
pub struct Measures {
    pub produce: Flow,
    pub consume: Flow,
    pub end_to_end: Flow,
    pub errors: HashMap<String, u64>,
    /// Violations found on the spot (the final check adds more at the end).
    pub violations: u64,
}

impl Measures {
    pub fn merge(&mut self, other: &Measures) {
        self.produce.merge(&other.produce);
        self.consume.merge(&other.consume);
        self.end_to_end.merge(&other.end_to_end);
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += n;
        }
        self.violations += other.violations;
    }

    pub fn reset(&mut self) {
        self.produce.reset();
        self.consume.reset();
        self.end_to_end.reset();
        self.errors.clear();
        self.violations = 0;
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The percentiles the report and the JSON give, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_give_percentiles_of_the_union() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for us in 1..=500 {
            record(&mut a, us, 1);
        }
        for us in 501..=1000 {
            record(&mut b, us, 1);
        }
        merge(&mut a, &b);
        let s = LatencySummary::of(&a);
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        assert_eq!(s.max, 1000);
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, u64::MAX, 3);
        record(&mut h, 0, 1);
        assert_eq!(h.len(), 4);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}
