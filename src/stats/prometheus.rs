//! [`render_prometheus`]: the `/metrics` page in the Prometheus text exposition format 0.0.4.
//!
//! The `prometheus-client` crate writes the text (HELP and TYPE lines, label escaping, `_total`
//! on counters, cumulative `_bucket` lines, `+Inf`, `_sum`, `_count`). Its metric types record
//! values themselves, but ours are already recorded in hdrhistograms, so a [`Collector`] hands
//! it finished values: the crate's supported way to expose numbers kept elsewhere.
//!
//! Families (counters get `_total` appended by the encoder):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `corelog_op_latency_seconds` | histogram | `op`, `partition` (absent for node-wide ops) |
//! | `corelog_bytes_in_total`, `corelog_bytes_out_total` | counter | `partition` |
//! | `corelog_records_in_total`, `corelog_records_out_total` | counter | `partition` |
//! | `corelog_log_start_offset`, `corelog_high_watermark`, `corelog_log_end_offset` | gauge | `partition` |
//! | `corelog_log_bytes`, `corelog_log_segments` | gauge | `partition` |
//! | `corelog_raft_is_leader` (1 or 0), `corelog_raft_term` | gauge | `partition` |
//! | `corelog_raft_leader_changes_total` | counter | `partition` |
//! | `corelog_raft_takeover_elections_total` | counter | `partition` |
//! | `corelog_raft_takeover_votes_granted_total` | counter | `partition` |
//! | `corelog_raft_last_log_index`, `corelog_raft_commit_index`, `corelog_raft_applied_index` | gauge | `partition` |
//! | `corelog_raft_follower_lag_entries` | gauge | `partition`, `follower` (a Raft node id) |
//! | `corelog_errors_total` | counter | `kind` |
//! | `corelog_connections_opened_total`, `corelog_connections_closed_total` | counter | `core` |
//! | `corelog_connections_open` | gauge | `core` |
//! | `corelog_bad_preambles_total` | counter | `core` |
//! | `corelog_reactor_stalls_total` | counter | `core` |
//! | `corelog_reactor_lateness_seconds` | histogram | `core` |
//! | `corelog_file_removals_pending` | gauge | |
//! | `corelog_file_removals_total` | counter | `result` (`removed`, `failed`) |
//!
//! The `corelog_raft_*` families appear only for partitions whose Raft group reported state
//! (none on a standalone node), and `corelog_raft_follower_lag_entries` only on the leader:
//! entries each follower is behind the leader's last log index. The Raft latencies are ops of
//! `corelog_op_latency_seconds` (`raft_append`, `raft_commit`, `raft_apply`).
//!
//! Latency series are per partition (a partition lives on one core, so there is no separate
//! core label) and never an "all partitions" series: Prometheus sums series exactly, and a
//! merged series next to its parts would be double-counted by `sum()`.
//!
//! Buckets: the fixed ladder [`BUCKETS_US`] (50 µs .. 10 s), derived from the hdrhistogram
//! counts: a value counts towards `le` when the low end of its hdrhistogram bucket is at most
//! `le`, so boundaries are exact to the histogram's precision (0.1%). `_count` and the `+Inf`
//! bucket are the exact number of recordings. `_sum` is hdrhistogram's mean times the count,
//! accurate to the same 0.1% (the histograms do not keep an exact sum).

use std::fmt;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::node_stats::NodeStats;

/// The `Content-Type` of the page [`render_prometheus`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the histogram buckets, in microseconds (then `+Inf`): 1-2.5-5 steps from
/// 50 µs to 10 s, covering a cached read through a stalled disk.
pub const BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const MICROS_PER_SECOND: f64 = 1e6;

/// The `/metrics` page for `stats`.
pub fn render_prometheus(stats: &NodeStats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition::of(stats)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Finished values for every family, in the order they are written.
#[derive(Debug)]
struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(u64),
    /// `buckets` holds per-bucket (not cumulative) counts; the encoder accumulates them.
    Histogram {
        sum_seconds: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, value: Value) {
        self.samples.push(Sample { labels, value });
    }
}

impl Exposition {
    fn of(stats: &NodeStats) -> Exposition {
        let mut latency = Family::new(
            "corelog_op_latency_seconds",
            "Latency of each operation, per partition (node-wide operations have no partition).",
            MetricType::Histogram,
        );
        for (op, op_latency) in &stats.ops {
            if let Some(h) = &op_latency.unpartitioned {
                latency.push(vec![("op", op.label().to_string())], histogram_value(h));
            }
            for (partition, h) in &op_latency.partitions {
                let labels = vec![
                    ("op", op.label().to_string()),
                    ("partition", partition.to_string()),
                ];
                latency.push(labels, histogram_value(h));
            }
        }

        let mut partition_counters = [
            Family::new(
                "corelog_bytes_in",
                "Record bytes appended to a partition.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_records_in",
                "Records appended to a partition.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_bytes_out",
                "Record bytes sent from a partition to consumers and subscribers.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_records_out",
                "Records sent from a partition to consumers and subscribers.",
                MetricType::Counter,
            ),
        ];
        for (partition, c) in &stats.partitions {
            let values = [c.bytes_in, c.records_in, c.bytes_out, c.records_out];
            for (family, value) in partition_counters.iter_mut().zip(values) {
                family.push(
                    vec![("partition", partition.to_string())],
                    Value::Counter(value),
                );
            }
        }

        let mut errors = Family::new("corelog_errors", "Errors, by kind.", MetricType::Counter);
        for (kind, count) in &stats.errors {
            errors.push(vec![("kind", kind.to_string())], Value::Counter(*count));
        }

        let mut per_core = [
            Family::new(
                "corelog_connections_opened",
                "Connections accepted on the one port, by the core that serves them.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_connections_closed",
                "Connections closed.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_connections_open",
                "Connections open now.",
                MetricType::Gauge,
            ),
            Family::new(
                "corelog_bad_preambles",
                "Connections closed because their preamble was invalid.",
                MetricType::Counter,
            ),
            Family::new(
                "corelog_reactor_stalls",
                "Stall-detector ticks that fired later than the stall threshold: something held the core.",
                MetricType::Counter,
            ),
        ];
        let mut lateness = Family::new(
            "corelog_reactor_lateness_seconds",
            "How late each stall-detector tick fired.",
            MetricType::Histogram,
        );
        for core in &stats.cores {
            let values = [
                Value::Counter(core.connections.opened),
                Value::Counter(core.connections.closed),
                Value::Gauge(core.connections.open()),
                Value::Counter(core.bad_preambles),
                Value::Counter(core.reactor.stalls),
            ];
            for (family, value) in per_core.iter_mut().zip(values) {
                family.push(vec![("core", core.core.to_string())], value);
            }
            lateness.push(
                vec![("core", core.core.to_string())],
                histogram_value(&core.reactor.lateness_us),
            );
        }

        let mut families = vec![latency];
        families.extend(partition_counters);
        families.extend(log_families(stats));
        families.extend(raft_families(stats));
        families.push(errors);
        families.extend(per_core);
        families.push(lateness);
        families.extend(removal_families(stats));
        Exposition { families }
    }
}

/// The process's background removals of deleted segments' files.
fn removal_families(stats: &NodeStats) -> [Family; 2] {
    let r = stats.file_removals;
    let mut pending = Family::new(
        "corelog_file_removals_pending",
        "Files of deleted segments queued for the background remover.",
        MetricType::Gauge,
    );
    pending.push(Vec::new(), Value::Gauge(r.pending));
    let mut done = Family::new(
        "corelog_file_removals",
        "Files of deleted segments the background remover finished, by result.",
        MetricType::Counter,
    );
    done.push(
        vec![("result", "removed".into())],
        Value::Counter(r.removed),
    );
    done.push(vec![("result", "failed".into())], Value::Counter(r.failed));
    [pending, done]
}

/// What each partition's log holds (gauges; see [`crate::stats::LogGauges`]).
fn log_families(stats: &NodeStats) -> [Family; 5] {
    let mut families = [
        Family::new(
            "corelog_log_start_offset",
            "The oldest offset a partition still holds.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_high_watermark",
            "The first offset of a partition that consumers cannot read yet.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_log_end_offset",
            "The first offset of a partition not yet durable on this node.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_log_bytes",
            "Bytes of batches a partition holds on disk, over all its segments.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_log_segments",
            "Segments a partition holds, the active one included.",
            MetricType::Gauge,
        ),
    ];
    for (partition, log) in &stats.logs {
        let values = [
            log.log_start_offset,
            log.high_watermark,
            log.log_end_offset,
            log.log_bytes,
            log.segments,
        ];
        for (family, value) in families.iter_mut().zip(values) {
            family.push(
                vec![("partition", partition.to_string())],
                Value::Gauge(value),
            );
        }
    }
    families
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in &self.families {
            // A family with no series would be a bare HELP/TYPE pair: legal but noise.
            if family.samples.is_empty() {
                continue;
            }
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for sample in &family.samples {
                let mut series = metric.encode_family(&sample.labels)?;
                match &sample.value {
                    Value::Counter(v) => series.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                    Value::Gauge(v) => series.encode_gauge(v)?,
                    Value::Histogram {
                        sum_seconds,
                        count,
                        buckets,
                    } => series.encode_histogram::<NoLabelSet>(
                        *sum_seconds,
                        *count,
                        buckets,
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// The per-partition Raft families, in the order they are written; no samples when no
/// partition has Raft state.
fn raft_families(stats: &NodeStats) -> Vec<Family> {
    let mut per_partition = [
        Family::new(
            "corelog_raft_is_leader",
            "1 when this node is the partition's Raft leader, else 0.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_raft_term",
            "The partition's current Raft term as this node knows it.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_raft_leader_changes",
            "Changes of the partition's Raft leader seen by this node.",
            MetricType::Counter,
        ),
        Family::new(
            "corelog_raft_takeover_elections",
            "Elections this node started because the partition's leader closed every peer \
             connection (its process is gone), without waiting out the leader lease.",
            MetricType::Counter,
        ),
        Family::new(
            "corelog_raft_takeover_votes_granted",
            "Votes this node granted despite its leader lease, because that leader had closed \
             every peer connection (its process is gone).",
            MetricType::Counter,
        ),
        Family::new(
            "corelog_raft_last_log_index",
            "Index of the last entry in this node's Raft log of the partition.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_raft_commit_index",
            "Highest Raft index of the partition this node knows to be committed.",
            MetricType::Gauge,
        ),
        Family::new(
            "corelog_raft_applied_index",
            "Highest Raft index of the partition applied on this node.",
            MetricType::Gauge,
        ),
    ];
    let mut lag = Family::new(
        "corelog_raft_follower_lag_entries",
        "Entries a follower is behind the leader's last log index (reported by the leader only).",
        MetricType::Gauge,
    );
    for (partition, state) in &stats.raft {
        let values = [
            Value::Gauge(u64::from(state.is_leader)),
            Value::Gauge(state.term),
            Value::Counter(state.leader_changes),
            Value::Counter(state.takeover_elections),
            Value::Counter(state.takeover_votes_granted),
            Value::Gauge(state.last_log_index),
            Value::Gauge(state.committed_index),
            Value::Gauge(state.applied_index),
        ];
        for (family, value) in per_partition.iter_mut().zip(values) {
            family.push(vec![("partition", partition.to_string())], value);
        }
        for (follower, entries) in &state.follower_lag {
            let labels = vec![
                ("partition", partition.to_string()),
                ("follower", follower.to_string()),
            ];
            lag.push(labels, Value::Gauge(*entries));
        }
    }
    let mut families = Vec::from(per_partition);
    families.push(lag);
    families
}

/// The Prometheus view of one hdrhistogram (microseconds) in seconds.
fn histogram_value(h: &Histogram<u64>) -> Value {
    let mut per_bucket = [0u64; BUCKETS_US.len()];
    for v in h.iter_recorded() {
        let low_us = h.lowest_equivalent(v.value_iterated_to());
        // Values above the last bound count only towards +Inf, which the encoder writes from
        // the total count.
        if let Some(i) = BUCKETS_US.iter().position(|&le| low_us <= le) {
            per_bucket[i] = per_bucket[i].saturating_add(v.count_at_value());
        }
    }
    Value::Histogram {
        sum_seconds: h.mean() * h.len() as f64 / MICROS_PER_SECOND,
        count: h.len(),
        buckets: BUCKETS_US
            .iter()
            .zip(per_bucket)
            .map(|(&le, n)| (le as f64 / MICROS_PER_SECOND, n))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::stats::{CoreStats, Op, RaftState, merge};
    use crate::types::Partition;

    fn sample_text() -> String {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.add_partition(Partition(0));
        b.add_partition(Partition(1));
        for v in [
            10, 50, 51, 99, 100, 101, 1_000, 10_000, 10_010, 9_000_000, 20_000_000,
        ] {
            a.record_latency(Op::Produce, Some(Partition(0)), v);
        }
        for v in 1..=1000 {
            b.record_latency(Op::Produce, Some(Partition(1)), v);
        }
        b.record_latency(Op::Metadata, None, 70);
        a.record_in(Partition(0), 2, 20);
        // A label value needing every escape the format has.
        b.record_error("weird \"kind\"\\\nline");
        a.connection_opened();
        b.record_reactor_lateness(12_000, 10_000);
        render_prometheus(&merge(&[a.snapshot(), b.snapshot()]))
    }

    /// Two cores with Raft: core 0 leads partition 0, core 1 follows on partition 1.
    fn raft_text() -> String {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.add_partition(Partition(0));
        b.add_partition(Partition(1));
        a.record_latency(Op::RaftAppend, Some(Partition(0)), 400);
        a.record_latency(Op::RaftCommit, Some(Partition(0)), 900);
        b.record_latency(Op::RaftApply, Some(Partition(1)), 30);
        a.set_raft_state(
            Partition(0),
            RaftState {
                is_leader: true,
                term: 7,
                leader: Some(1),
                last_log_index: 500,
                committed_index: 498,
                applied_index: 497,
                leader_changes: 2,
                takeover_elections: 0,
                takeover_votes_granted: 0,
                follower_lag: BTreeMap::from([(2, 0), (3, 42)]),
            },
        );
        b.set_raft_state(
            Partition(1),
            RaftState {
                is_leader: false,
                term: 5,
                leader: Some(2),
                last_log_index: 90,
                committed_index: 90,
                applied_index: 89,
                leader_changes: 1,
                takeover_elections: 1,
                takeover_votes_granted: 3,
                follower_lag: BTreeMap::new(),
            },
        );
        render_prometheus(&merge(&[a.snapshot(), b.snapshot()]))
    }

    /// One parsed sample line: name, labels in order, value.
    #[derive(Debug)]
    struct Line {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// A strict parser for the sample lines of the text format: a metric name, optional
    /// `{k="v",…}` with `\\`, `\"` and `\n` as the only escapes, one space, a float.
    fn parse_line(line: &str) -> Line {
        let chars: Vec<char> = line.chars().collect();
        let at = |i: usize| -> char {
            *chars
                .get(i)
                .unwrap_or_else(|| panic!("line ends early: {line}"))
        };
        let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut i = 0;
        let mut name = String::new();
        while i < chars.len() && is_name_char(chars[i]) {
            name.push(chars[i]);
            i += 1;
        }
        assert!(!name.is_empty(), "no metric name: {line}");
        let mut labels = Vec::new();
        if at(i) == '{' {
            i += 1;
            loop {
                let mut key = String::new();
                while at(i) != '=' {
                    assert!(is_name_char(at(i)), "bad label name in {line}");
                    key.push(at(i));
                    i += 1;
                }
                i += 1;
                assert_eq!(at(i), '"', "unquoted label value in {line}");
                i += 1;
                let mut value = String::new();
                loop {
                    match at(i) {
                        '\\' => {
                            i += 1;
                            match at(i) {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("bad escape \\{other} in {line}"),
                            }
                        }
                        '"' => break,
                        '\n' => panic!("raw newline in {line}"),
                        c => value.push(c),
                    }
                    i += 1;
                }
                i += 1;
                labels.push((key, value));
                match at(i) {
                    ',' => i += 1,
                    '}' => {
                        i += 1;
                        break;
                    }
                    other => panic!("expected , or }} but found {other} in {line}"),
                }
            }
        }
        assert_eq!(at(i), ' ', "no space before the value: {line}");
        let value: String = chars[i + 1..].iter().collect();
        Line {
            name,
            labels,
            value: parse_value(&value),
        }
    }

    fn parse_value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => v.parse().unwrap_or_else(|_| panic!("bad value {v}")),
        }
    }

    /// Checks the structure of a page (HELP then TYPE before a family's samples, each once;
    /// counters end in `_total`; every sample line parses) and returns family name → type.
    fn families_by_type(text: &str) -> BTreeMap<String, String> {
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(helped.insert(name.clone()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap().to_string();
                let kind = parts.next().unwrap().to_string();
                assert!(helped.contains(&name), "TYPE before HELP for {name}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind.as_str()),
                    "{line}"
                );
                assert!(typed.insert(name, kind).is_none(), "TYPE twice: {line}");
            } else {
                let sample = parse_line(line);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        let base = sample.name.strip_suffix(s)?;
                        (typed.get(base).map(String::as_str) == Some("histogram"))
                            .then(|| base.to_string())
                    })
                    .unwrap_or_else(|| sample.name.clone());
                assert!(
                    typed.contains_key(&family),
                    "sample before its TYPE: {line}"
                );
                if typed[&family] == "counter" {
                    assert!(
                        sample.name.ends_with("_total"),
                        "counter without _total: {line}"
                    );
                }
            }
        }
        typed
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = sample_text();
        let typed = families_by_type(&text);
        for name in [
            "corelog_op_latency_seconds",
            "corelog_bytes_in_total",
            "corelog_records_out_total",
            "corelog_errors_total",
            "corelog_connections_open",
            "corelog_reactor_stalls_total",
            "corelog_reactor_lateness_seconds",
        ] {
            assert!(typed.contains_key(name), "{name} missing from:\n{text}");
        }
    }

    /// One histogram series as written: `(le, cumulative count)` pairs, `_sum`, `_count`.
    #[derive(Default, Debug)]
    struct Series {
        buckets: Vec<(f64, f64)>,
        sum: f64,
        count: f64,
    }

    /// Groups histogram lines by series, keyed by their labels other than `le`.
    fn histogram_series(text: &str, family: &str) -> BTreeMap<String, Series> {
        let mut series: BTreeMap<String, Series> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = parse_line(line);
            let Some(suffix) = sample.name.strip_prefix(family) else {
                continue;
            };
            let key: Vec<String> = sample
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let entry = series.entry(key.join(",")).or_default();
            match suffix {
                "_bucket" => {
                    let le = sample
                        .labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .map(|(_, v)| parse_value(v))
                        .expect("bucket has le");
                    entry.buckets.push((le, sample.value));
                }
                "_sum" => entry.sum = sample.value,
                "_count" => entry.count = sample.value,
                other => panic!("unexpected histogram line {other}"),
            }
        }
        series
    }

    #[test]
    fn buckets_are_cumulative_and_inf_equals_count() {
        let text = sample_text();
        for family in [
            "corelog_op_latency_seconds",
            "corelog_reactor_lateness_seconds",
        ] {
            let series = histogram_series(&text, family);
            assert!(!series.is_empty(), "no {family} series");
            for (key, Series { buckets, count, .. }) in series {
                assert_eq!(buckets.len(), BUCKETS_US.len() + 1, "{key}");
                assert!(
                    buckets
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{key}: bounds and counts must increase: {buckets:?}"
                );
                let last = buckets.last().unwrap();
                assert_eq!(last.0, f64::INFINITY, "{key}");
                assert_eq!(last.1, count, "{key}: +Inf bucket is the count");
            }
        }
    }

    #[test]
    fn bucket_counts_follow_the_recorded_values() {
        let text = sample_text();
        let series = histogram_series(&text, "corelog_op_latency_seconds");
        let Series {
            buckets,
            sum,
            count,
        } = &series["op=produce,partition=0"];
        let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
        // Recorded: 10 50 51 99 100 101 1000 10000 10010 9e6 2e7 µs. At 10 ms the histogram's
        // resolution is 8 µs, so 10010 (bucket 10008..10015) is above the 10 ms bound.
        assert_eq!(*count, 11.0);
        assert_eq!(at(0.00005), 2.0, "10 and 50 are <= 50 µs");
        assert_eq!(at(0.0001), 5.0, "51, 99, 100 join");
        assert_eq!(at(0.001), 7.0, "101 and 1000 join");
        assert_eq!(at(0.01), 8.0, "10000 is exactly on the bound; 10010 is not");
        assert_eq!(at(0.025), 9.0);
        assert_eq!(at(10.0), 10.0, "9 s");
        assert_eq!(at(f64::INFINITY), 11.0, "20 s only in +Inf");
        let exact_sum =
            (10 + 50 + 51 + 99 + 100 + 101 + 1_000 + 10_000 + 10_010) as f64 / 1e6 + 29.0;
        assert!(
            (sum - exact_sum).abs() / exact_sum < 0.001,
            "sum {sum} vs {exact_sum}"
        );
        assert_eq!(
            series["op=metadata"].count, 1.0,
            "node-wide ops have no partition label"
        );
    }

    #[test]
    fn raft_state_is_exposed_per_partition_with_lag_per_follower() {
        let text = raft_text();
        let typed = families_by_type(&text);
        for (kind, family) in [
            ("gauge", "corelog_raft_is_leader"),
            ("gauge", "corelog_raft_term"),
            ("counter", "corelog_raft_leader_changes_total"),
            ("counter", "corelog_raft_takeover_elections_total"),
            ("counter", "corelog_raft_takeover_votes_granted_total"),
            ("gauge", "corelog_raft_last_log_index"),
            ("gauge", "corelog_raft_commit_index"),
            ("gauge", "corelog_raft_applied_index"),
            ("gauge", "corelog_raft_follower_lag_entries"),
        ] {
            assert_eq!(
                typed.get(family).map(String::as_str),
                Some(kind),
                "{family} in:\n{text}"
            );
        }
        for line in [
            "corelog_raft_is_leader{partition=\"0\"} 1",
            "corelog_raft_is_leader{partition=\"1\"} 0",
            "corelog_raft_term{partition=\"0\"} 7",
            "corelog_raft_term{partition=\"1\"} 5",
            "corelog_raft_leader_changes_total{partition=\"0\"} 2",
            "corelog_raft_leader_changes_total{partition=\"1\"} 1",
            "corelog_raft_takeover_elections_total{partition=\"1\"} 1",
            "corelog_raft_takeover_votes_granted_total{partition=\"1\"} 3",
            "corelog_raft_last_log_index{partition=\"0\"} 500",
            "corelog_raft_commit_index{partition=\"0\"} 498",
            "corelog_raft_applied_index{partition=\"0\"} 497",
            "corelog_raft_applied_index{partition=\"1\"} 89",
            "corelog_raft_follower_lag_entries{partition=\"0\",follower=\"2\"} 0",
            "corelog_raft_follower_lag_entries{partition=\"0\",follower=\"3\"} 42",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing:\n{text}"
            );
        }
        let lag_lines = text
            .lines()
            .filter(|l| l.starts_with("corelog_raft_follower_lag_entries{"))
            .count();
        assert_eq!(lag_lines, 2, "only the leader reports lag");
    }

    #[test]
    fn raft_latencies_are_op_histograms() {
        let series = histogram_series(&raft_text(), "corelog_op_latency_seconds");
        assert_eq!(series["op=raft_append,partition=0"].count, 1.0);
        assert_eq!(series["op=raft_commit,partition=0"].count, 1.0);
        assert_eq!(series["op=raft_apply,partition=1"].count, 1.0);
        assert_eq!(
            series["op=raft_apply,partition=0"].count, 0.0,
            "allocated by add_partition, never recorded"
        );
    }

    #[test]
    fn logs_are_gauges_per_partition() {
        let mut snapshot = CoreStats::new(0).snapshot();
        let gauges = crate::stats::LogGauges {
            log_start_offset: 5,
            high_watermark: 9,
            log_end_offset: 11,
            log_bytes: 8192,
            segments: 2,
        };
        snapshot.logs.insert(Partition(3), gauges);
        let text = render_prometheus(&merge(&[snapshot]));
        for (family, value) in [
            ("corelog_log_start_offset", 5),
            ("corelog_high_watermark", 9),
            ("corelog_log_end_offset", 11),
            ("corelog_log_bytes", 8192),
            ("corelog_log_segments", 2),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} gauge\n")),
                "{family}: {text}"
            );
            assert!(
                text.contains(&format!("{family}{{partition=\"3\"}} {value}\n")),
                "{family}: {text}"
            );
        }
    }

    #[test]
    fn background_file_removals_are_a_gauge_and_counters_by_result() {
        let mut node = merge(&[CoreStats::new(0).snapshot()]);
        node.file_removals = crate::io::RemovalStats {
            pending: 2,
            removed: 7,
            failed: 1,
        };
        let text = render_prometheus(&node);
        for line in [
            "# TYPE corelog_file_removals_pending gauge\n",
            "corelog_file_removals_pending 2\n",
            "# TYPE corelog_file_removals_total counter\n",
            "corelog_file_removals_total{result=\"removed\"} 7\n",
            "corelog_file_removals_total{result=\"failed\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }

    #[test]
    fn a_standalone_node_has_no_raft_families() {
        let text = sample_text();
        assert!(!text.contains("corelog_raft_"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_counters_carry_their_values() {
        let text = sample_text();
        let errors: Vec<Line> = text
            .lines()
            .filter(|l| l.starts_with("corelog_errors_total"))
            .map(parse_line)
            .collect();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].labels[0].1, "weird \"kind\"\\\nline");
        assert_eq!(errors[0].value, 1.0);
        assert!(
            text.contains("corelog_bytes_in_total{partition=\"0\"} 20\n"),
            "{text}"
        );
        assert!(
            text.contains("corelog_connections_open{core=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("corelog_reactor_stalls_total{core=\"1\"} 1\n"),
            "{text}"
        );
    }
}
