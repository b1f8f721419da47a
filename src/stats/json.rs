//! [`render_json`]: the `/stats` document, for people and scripts.
//!
//! Shape (every latency in microseconds; every op of [`Op::ALL`] is present, in that order,
//! recorded or not, so scripts can rely on the keys):
//!
//! ```text
//! {
//!   "latency_unit": "us",
//!   "ops": {
//!     "produce": {
//!       "merged":     {"count", "p50", "p90", "p99", "p999", "p9999", "max", "mean"},
//!       "partitions": {"0": {same keys}, "1": {…}}
//!     },
//!     "consume": {…}, …
//!   },
//!   "partitions":  {"0": {"bytes_in", "records_in", "bytes_out", "records_out",
//!                         "log_start_offset", "high_watermark", "log_end_offset",
//!                         "log_bytes", "segments"}, …},
//!   "totals":      {"bytes_in", "records_in", "bytes_out", "records_out", "log_bytes",
//!                   "segments"},
//!   "raft":        {"0": {"is_leader", "term", "leader", "last_log_index", "committed_index",
//!                         "applied_index", "leader_changes", "takeover_elections",
//!                         "takeover_votes_granted",
//!                         "follower_lag": {"<node>": n}}, …},
//!   "errors":      {"<kind>": count, …},
//!   "connections": {"opened", "closed", "open"},
//!   "bad_preambles": n,
//!   "reactor":     {"stalls", "stall_threshold_us", "lateness": {latency keys}},
//!   "file_removals": {"pending", "removed", "failed"},
//!   "cores": [
//!     {"core", "partitions": [..], "ops": {"produce": {latency keys}, …}, "errors",
//!      "connections", "bad_preambles", "reactor"}
//!   ]
//! }
//! ```
//!
//! Percentiles are hdrhistogram's: the highest value equivalent (within 0.1%) to the value at
//! that rank. An op never recorded shows `count` 0 and zeros everywhere.
//!
//! The log keys of a partition ([`super::LogGauges`]) are its state when the document was made:
//! offsets are record offsets, `log_bytes` the bytes of its segments' batches (index files not
//! included). They are absent for a partition whose log did not report.
//!
//! `file_removals` counts, for the whole process, the files of deleted segments handed to the
//! background remover ([`crate::io::Disk::remove_files_in_background`]): `pending` still
//! queued or being shrunk, `removed` since start, `failed` since start (each also logged; the
//! next open removes what is left).
//!
//! `raft` is always present and holds the partitions whose Raft group reported state
//! ([`super::RaftState`]): `{}` on a standalone node. `leader` is a Raft node id or `null`;
//! indexes are Raft log indexes; `leader_changes` counts since start; `follower_lag` maps each
//! follower's node id to the entries it is behind the leader's `last_log_index`, and is `{}`
//! except on the leader.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::ser::SerializeMap;

use super::core_stats::{
    ConnectionCounters, LogGauges, PartitionCounters, RaftState, ReactorStats,
};
use super::node_stats::{CoreView, NodeStats, OpLatency};
use super::op::Op;

/// The `/stats` document for `stats`, pretty-printed.
pub fn render_json(stats: &NodeStats) -> String {
    let doc = Document {
        latency_unit: "us",
        ops: OpMap(
            stats
                .ops
                .iter()
                .map(|(op, latency)| (*op, op_json(latency)))
                .collect(),
        ),
        partitions: partitions_json(stats),
        totals: TotalsJson {
            counters: stats.totals,
            log_bytes: stats.logs.values().map(|l| l.log_bytes).sum(),
            segments: stats.logs.values().map(|l| l.segments).sum(),
        },
        raft: stats.raft.iter().map(|(p, state)| (p.0, state)).collect(),
        errors: &stats.errors,
        connections: connections_json(&stats.connections),
        bad_preambles: stats.bad_preambles,
        reactor: reactor_json(&stats.reactor),
        file_removals: FileRemovalsJson {
            pending: stats.file_removals.pending,
            removed: stats.file_removals.removed,
            failed: stats.file_removals.failed,
        },
        cores: stats.cores.iter().map(core_json).collect(),
    };
    serde_json::to_string_pretty(&doc).expect("the stats document has only string map keys")
}

/// The latency summary of one histogram, in microseconds.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            // Tenths of a microsecond are already below the histogram's precision.
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Serialize)]
struct Document<'a> {
    latency_unit: &'static str,
    ops: OpMap<OpJson>,
    partitions: BTreeMap<u32, PartitionJson>,
    totals: TotalsJson,
    raft: BTreeMap<u32, &'a RaftState>,
    errors: &'a BTreeMap<&'static str, u64>,
    connections: ConnectionsJson,
    bad_preambles: u64,
    reactor: ReactorJson,
    file_removals: FileRemovalsJson,
    cores: Vec<CoreJson>,
}

#[derive(Serialize)]
struct FileRemovalsJson {
    pending: u64,
    removed: u64,
    failed: u64,
}

/// One partition's traffic counters and, when its log reported, what the log holds.
#[derive(Serialize)]
struct PartitionJson {
    #[serde(flatten)]
    counters: PartitionCounters,
    #[serde(flatten)]
    log: Option<LogGauges>,
}

#[derive(Serialize)]
struct TotalsJson {
    #[serde(flatten)]
    counters: PartitionCounters,
    log_bytes: u64,
    segments: u64,
}

/// Every partition that has counters or a log.
fn partitions_json(stats: &NodeStats) -> BTreeMap<u32, PartitionJson> {
    let keys = stats.partitions.keys().chain(stats.logs.keys());
    keys.map(|p| {
        let json = PartitionJson {
            counters: stats.partitions.get(p).copied().unwrap_or_default(),
            log: stats.logs.get(p).copied(),
        };
        (p.0, json)
    })
    .collect()
}

/// A map from op label to `T`, serialized in [`Op::ALL`] order (a `BTreeMap` keyed by label
/// would sort alphabetically).
struct OpMap<T>(Vec<(Op, T)>);

impl<T: Serialize> Serialize for OpMap<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (op, value) in &self.0 {
            map.serialize_entry(op.label(), value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct OpJson {
    merged: LatencySummary,
    partitions: BTreeMap<u32, LatencySummary>,
}

fn op_json(latency: &OpLatency) -> OpJson {
    OpJson {
        merged: LatencySummary::of(&latency.merged),
        partitions: latency
            .partitions
            .iter()
            .map(|(p, h)| (p.0, LatencySummary::of(h)))
            .collect(),
    }
}

#[derive(Serialize)]
struct ConnectionsJson {
    opened: u64,
    closed: u64,
    open: u64,
}

fn connections_json(c: &ConnectionCounters) -> ConnectionsJson {
    ConnectionsJson {
        opened: c.opened,
        closed: c.closed,
        open: c.open(),
    }
}

#[derive(Serialize)]
struct ReactorJson {
    stalls: u64,
    stall_threshold_us: u64,
    lateness: LatencySummary,
}

fn reactor_json(r: &ReactorStats) -> ReactorJson {
    ReactorJson {
        stalls: r.stalls,
        stall_threshold_us: r.stall_threshold_us,
        lateness: LatencySummary::of(&r.lateness_us),
    }
}

#[derive(Serialize)]
struct CoreJson {
    core: usize,
    partitions: Vec<u32>,
    ops: OpMap<LatencySummary>,
    errors: u64,
    connections: ConnectionsJson,
    bad_preambles: u64,
    reactor: ReactorJson,
}

fn core_json(core: &CoreView) -> CoreJson {
    CoreJson {
        core: core.core,
        partitions: core.partitions.iter().map(|p| p.0).collect(),
        ops: OpMap(
            core.ops
                .iter()
                .map(|(op, h)| (*op, LatencySummary::of(h)))
                .collect(),
        ),
        errors: core.errors,
        connections: connections_json(&core.connections),
        bad_preambles: core.bad_preambles,
        reactor: reactor_json(&core.reactor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CoreStats, RaftState, merge};
    use crate::types::Partition;

    const SUMMARY_KEYS: [&str; 8] = ["count", "p50", "p90", "p99", "p999", "p9999", "max", "mean"];

    fn sample() -> serde_json::Value {
        serde_json::from_str(&sample_text()).expect("render_json writes valid JSON")
    }

    fn sample_text() -> String {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.add_partition(Partition(0));
        b.add_partition(Partition(1));
        for v in 1..=100 {
            a.record_latency(Op::Produce, Some(Partition(0)), v);
            b.record_latency(Op::Produce, Some(Partition(1)), v + 100);
        }
        a.record_in(Partition(0), 3, 30);
        b.record_error("not_leader");
        b.connection_opened();
        render_json(&merge(&[a.snapshot(), b.snapshot()]))
    }

    #[test]
    fn partitions_show_their_log_and_totals_sum_bytes_and_segments() {
        let a = CoreStats::new(0);
        a.add_partition(Partition(0));
        a.record_in(Partition(0), 3, 30);
        let mut snapshot = a.snapshot();
        let log = |start, end, bytes, segments| crate::stats::LogGauges {
            log_start_offset: start,
            high_watermark: end,
            log_end_offset: end + 1,
            log_bytes: bytes,
            segments,
        };
        snapshot.logs.insert(Partition(0), log(0, 3, 300, 1));
        // A partition with a log and no traffic yet is listed too.
        snapshot.logs.insert(Partition(4), log(8, 9, 4096, 3));
        let doc: serde_json::Value =
            serde_json::from_str(&render_json(&merge(&[snapshot]))).expect("valid JSON");
        let p0 = &doc["partitions"]["0"];
        assert_eq!(p0["records_in"], 3);
        assert_eq!(p0["log_start_offset"], 0);
        assert_eq!(p0["high_watermark"], 3);
        assert_eq!(p0["log_end_offset"], 4);
        assert_eq!(p0["log_bytes"], 300);
        assert_eq!(p0["segments"], 1);
        let p4 = &doc["partitions"]["4"];
        assert_eq!(p4["records_in"], 0);
        assert_eq!(p4["log_start_offset"], 8);
        assert_eq!(doc["totals"]["log_bytes"], 4396);
        assert_eq!(doc["totals"]["segments"], 4);
        assert_eq!(doc["totals"]["records_in"], 3);
        // Without a reported log, a partition has only its counters.
        let counters_only: serde_json::Value =
            serde_json::from_str(&sample_text()).expect("valid JSON");
        assert!(counters_only["partitions"]["0"].get("log_bytes").is_none());
    }

    fn assert_summary(v: &serde_json::Value, at: &str) {
        for key in SUMMARY_KEYS {
            assert!(v.get(key).is_some(), "{at} lacks {key}: {v}");
        }
    }

    #[test]
    fn every_op_has_every_latency_key_merged_and_per_partition() {
        let doc = sample();
        assert_eq!(doc["latency_unit"], "us");
        let ops = doc["ops"].as_object().expect("ops is an object");
        assert_eq!(ops.len(), Op::ALL.len());
        for op in Op::ALL {
            assert!(ops.contains_key(op.label()), "{} missing", op.label());
        }
        for (label, op) in ops {
            assert_summary(&op["merged"], label);
            let partitions = op["partitions"].as_object().expect("partitions object");
            for (p, summary) in partitions {
                assert_summary(summary, &format!("{label}/{p}"));
            }
        }
        let produce = &doc["ops"]["produce"];
        assert_eq!(produce["merged"]["count"], 200);
        assert_eq!(produce["merged"]["p50"], 100);
        assert_eq!(produce["merged"]["max"], 200);
        assert_eq!(produce["partitions"]["1"]["p50"], 150);
        assert_eq!(doc["ops"]["metadata"]["merged"]["count"], 0);
    }

    #[test]
    fn ops_are_written_in_declaration_order() {
        let text = sample_text();
        // serde_json's Value sorts keys, so look at the text: the first occurrence of each
        // label is its entry under "ops".
        let positions: Vec<usize> = Op::ALL
            .iter()
            .map(|op| {
                let key = format!("\"{}\": {{", op.label());
                text.find(&key).unwrap_or_else(|| panic!("{key} missing"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }

    #[test]
    fn counters_connections_and_cores_are_present() {
        let doc = sample();
        assert_eq!(doc["partitions"]["0"]["records_in"], 3);
        assert_eq!(doc["partitions"]["0"]["bytes_in"], 30);
        assert_eq!(doc["totals"]["bytes_in"], 30);
        assert_eq!(doc["errors"]["not_leader"], 1);
        assert_eq!(doc["connections"]["open"], 1);
        assert_eq!(doc["bad_preambles"], 0);
        assert_eq!(doc["reactor"]["stalls"], 0);
        assert_summary(&doc["reactor"]["lateness"], "reactor.lateness");
        let removals = &doc["file_removals"];
        assert_eq!(
            removals,
            &serde_json::json!({"pending": 0, "removed": 0, "failed": 0})
        );
        let cores = doc["cores"].as_array().expect("cores is an array");
        assert_eq!(cores.len(), 2);
        assert_eq!(cores[1]["core"], 1);
        assert_eq!(cores[1]["partitions"], serde_json::json!([1]));
        assert_eq!(cores[1]["ops"]["produce"]["count"], 100);
        assert_summary(&cores[0]["ops"]["fsync"], "cores[0].fsync");
    }

    #[test]
    fn raft_ops_have_latency_keys_like_any_op() {
        let doc = sample();
        for label in ["raft_append", "raft_commit", "raft_apply"] {
            assert_summary(&doc["ops"][label]["merged"], label);
            assert_summary(&doc["ops"][label]["partitions"]["0"], label);
            assert_summary(&doc["cores"][0]["ops"][label], label);
        }
    }

    #[test]
    fn a_standalone_node_shows_an_empty_raft_object() {
        let doc = sample();
        assert_eq!(doc["raft"], serde_json::json!({}));
    }

    #[test]
    fn raft_state_is_shown_per_partition() {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.set_raft_state(
            Partition(0),
            RaftState {
                is_leader: true,
                term: 4,
                leader: Some(1),
                last_log_index: 120,
                committed_index: 118,
                applied_index: 117,
                leader_changes: 3,
                takeover_elections: 1,
                takeover_votes_granted: 2,
                follower_lag: BTreeMap::from([(2, 0), (3, 15)]),
            },
        );
        b.set_raft_state(
            Partition(1),
            RaftState {
                term: 2,
                ..RaftState::default()
            },
        );
        let doc: serde_json::Value =
            serde_json::from_str(&render_json(&merge(&[a.snapshot(), b.snapshot()])))
                .expect("render_json writes valid JSON");
        assert_eq!(
            doc["raft"]["0"],
            serde_json::json!({
                "is_leader": true,
                "term": 4,
                "leader": 1,
                "last_log_index": 120,
                "committed_index": 118,
                "applied_index": 117,
                "leader_changes": 3,
                "takeover_elections": 1,
                "takeover_votes_granted": 2,
                "follower_lag": {"2": 0, "3": 15}
            })
        );
        assert_eq!(doc["raft"]["1"]["is_leader"], false);
        assert_eq!(doc["raft"]["1"]["leader"], serde_json::Value::Null);
        assert_eq!(doc["raft"]["1"]["follower_lag"], serde_json::json!({}));
        assert_eq!(doc["raft"].as_object().map(|o| o.len()), Some(2));
    }
}
