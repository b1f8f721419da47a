//! [`merge`]: every core's [`CoreSnapshot`] into one [`NodeStats`], on request.
//!
//! Histograms merge exactly (hdrhistogram counts add bucket by bucket, so the merged p99 is the
//! p99 of all values, not an average of p99s); counters sum. Three views survive the merge: the
//! node as a whole, each partition (merged across cores, though a partition normally lives on
//! one), and each core. Raft state is not summed but united: a partition's Raft group lives on
//! the one core that owns the partition.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::core_stats::{
    ConnectionCounters, CoreSnapshot, LogGauges, PartitionCounters, RaftState, ReactorStats,
    add_histogram, new_latency_histogram,
};
use super::op::Op;
use crate::types::Partition;

/// One op's latencies across the node.
#[derive(Clone, Debug)]
pub struct OpLatency {
    /// Every recording of the op, on every core and partition.
    pub merged: Histogram<u64>,
    /// Recordings made without a partition (node-wide ops), merged across cores.
    pub unpartitioned: Option<Histogram<u64>>,
    /// Recordings per partition, merged across cores.
    pub partitions: BTreeMap<Partition, Histogram<u64>>,
}

/// One core's view: its ops merged over its partitions, and its own counters.
#[derive(Clone, Debug)]
pub struct CoreView {
    pub core: usize,
    /// Every op in [`Op::ALL`], merged over the partitions this core recorded.
    pub ops: BTreeMap<Op, Histogram<u64>>,
    /// The partitions this core recorded anything for (latencies, counters or Raft state).
    pub partitions: Vec<Partition>,
    /// Errors of every kind on this core.
    pub errors: u64,
    pub connections: ConnectionCounters,
    pub bad_preambles: u64,
    pub reactor: ReactorStats,
}

/// The whole node's statistics, merged from every core's snapshot.
#[derive(Clone, Debug)]
pub struct NodeStats {
    /// Every op in [`Op::ALL`], recorded or not.
    pub ops: BTreeMap<Op, OpLatency>,
    pub partitions: BTreeMap<Partition, PartitionCounters>,
    /// The sum over all partitions.
    pub totals: PartitionCounters,
    pub errors: BTreeMap<&'static str, u64>,
    pub connections: ConnectionCounters,
    pub bad_preambles: u64,
    pub reactor: ReactorStats,
    /// The Raft state of every partition that has one; empty on a standalone node.
    pub raft: BTreeMap<Partition, RaftState>,
    /// What each partition's log holds.
    pub logs: BTreeMap<Partition, LogGauges>,
    /// One entry per snapshot, ordered by core.
    pub cores: Vec<CoreView>,
    /// The process's background file removals (deleted segments). Not part of any core's
    /// snapshot: [`merge`] leaves it zero and the stats server fills it in.
    pub file_removals: crate::io::RemovalStats,
}

/// Merges the snapshots of every core.
pub fn merge(snapshots: &[CoreSnapshot]) -> NodeStats {
    let mut node = NodeStats {
        ops: Op::ALL
            .iter()
            .map(|op| {
                let latency = OpLatency {
                    merged: new_latency_histogram(),
                    unpartitioned: None,
                    partitions: BTreeMap::new(),
                };
                (*op, latency)
            })
            .collect(),
        partitions: BTreeMap::new(),
        totals: PartitionCounters::default(),
        errors: BTreeMap::new(),
        connections: ConnectionCounters::default(),
        bad_preambles: 0,
        reactor: ReactorStats::default(),
        raft: BTreeMap::new(),
        logs: BTreeMap::new(),
        cores: Vec::with_capacity(snapshots.len()),
        file_removals: Default::default(),
    };
    for snapshot in snapshots {
        merge_one(&mut node, snapshot);
        node.cores.push(core_view(snapshot));
    }
    node.cores.sort_by_key(|c| c.core);
    node
}

fn merge_one(node: &mut NodeStats, snapshot: &CoreSnapshot) {
    for (&(op, partition), histogram) in &snapshot.latencies {
        let latency = node.ops.get_mut(&op).expect("merge starts with every op");
        add_histogram(&mut latency.merged, histogram);
        let target = match partition {
            Some(p) => latency
                .partitions
                .entry(p)
                .or_insert_with(new_latency_histogram),
            None => latency
                .unpartitioned
                .get_or_insert_with(new_latency_histogram),
        };
        add_histogram(target, histogram);
    }
    for (partition, counters) in &snapshot.partitions {
        node.partitions.entry(*partition).or_default().add(counters);
        node.totals.add(counters);
    }
    for (kind, count) in &snapshot.errors {
        let total = node.errors.entry(kind).or_insert(0);
        *total = total.saturating_add(*count);
    }
    node.connections.add(&snapshot.connections);
    node.bad_preambles = node.bad_preambles.saturating_add(snapshot.bad_preambles);
    node.reactor.add(&snapshot.reactor);
    for (partition, state) in &snapshot.raft {
        merge_raft_state(&mut node.raft, *partition, state);
    }
    // One core owns a partition's log. Were two to report one, keep the one further along,
    // whatever order the cores replied in.
    for (partition, log) in &snapshot.logs {
        let kept = node.logs.entry(*partition).or_insert(*log);
        if (log.log_end_offset, log.log_bytes) > (kept.log_end_offset, kept.log_bytes) {
            *kept = *log;
        }
    }
}

/// Adds one core's `state` for `partition`. Two cores never own one partition, but if reports
/// ever overlapped the stats endpoint should still answer rather than crash, and not flip with
/// the order the cores replied in: keep the state with the newest Raft position (term, last log
/// index, applied index); on an exact tie the first merged stays.
fn merge_raft_state(
    raft: &mut BTreeMap<Partition, RaftState>,
    partition: Partition,
    state: &RaftState,
) {
    let position = |s: &RaftState| (s.term, s.last_log_index, s.applied_index);
    match raft.get(&partition) {
        Some(kept) if position(kept) >= position(state) => {}
        _ => {
            raft.insert(partition, state.clone());
        }
    }
}

fn core_view(snapshot: &CoreSnapshot) -> CoreView {
    let mut ops: BTreeMap<Op, Histogram<u64>> = Op::ALL
        .iter()
        .map(|op| (*op, new_latency_histogram()))
        .collect();
    let mut partitions = Vec::new();
    for (&(op, partition), histogram) in &snapshot.latencies {
        if let Some(target) = ops.get_mut(&op) {
            add_histogram(target, histogram);
        }
        if let Some(p) = partition {
            partitions.push(p);
        }
    }
    partitions.extend(snapshot.partitions.keys().copied());
    partitions.extend(snapshot.raft.keys().copied());
    partitions.extend(snapshot.logs.keys().copied());
    partitions.sort();
    partitions.dedup();
    CoreView {
        core: snapshot.core,
        ops,
        partitions,
        errors: snapshot
            .errors
            .values()
            .fold(0u64, |sum, n| sum.saturating_add(*n)),
        connections: snapshot.connections,
        bad_preambles: snapshot.bad_preambles,
        reactor: snapshot.reactor.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::CoreStats;

    /// Core 0 records 1..=500 µs, core 1 records 501..=1000 µs: only a real merge puts the
    /// node's p50 near 500 and its p99 near 990 (neither core alone has those percentiles).
    fn two_cores() -> Vec<CoreSnapshot> {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.add_partition(Partition(0));
        b.add_partition(Partition(1));
        for v in 1..=500 {
            a.record_latency(Op::Produce, Some(Partition(0)), v);
        }
        for v in 501..=1000 {
            b.record_latency(Op::Produce, Some(Partition(1)), v);
        }
        a.record_latency(Op::Metadata, None, 40);
        b.record_latency(Op::Metadata, None, 60);
        a.record_in(Partition(0), 10, 1000);
        b.record_in(Partition(1), 5, 500);
        b.record_out(Partition(1), 2, 200);
        a.record_error("not_leader");
        b.record_error("not_leader");
        b.record_error("bad_request");
        a.connection_opened();
        b.connection_opened();
        b.connection_opened();
        b.connection_closed();
        a.bad_preamble();
        a.record_reactor_lateness(20_000, 10_000);
        b.record_reactor_lateness(100, 10_000);
        // Out of order on purpose: the per-core view is sorted by core.
        vec![b.snapshot(), a.snapshot()]
    }

    #[test]
    fn merged_percentiles_come_from_all_cores_values() {
        let node = merge(&two_cores());
        let produce = &node.ops[&Op::Produce];
        assert_eq!(produce.merged.len(), 1000);
        assert_eq!(produce.merged.value_at_quantile(0.5), 500);
        assert_eq!(produce.merged.value_at_quantile(0.99), 990);
        assert_eq!(produce.merged.max(), 1000);
        assert_eq!(produce.merged.min(), 1);
        assert_eq!(produce.partitions[&Partition(0)].len(), 500);
        assert_eq!(produce.partitions[&Partition(0)].max(), 500);
        assert_eq!(produce.partitions[&Partition(1)].min(), 501);
        assert!(produce.unpartitioned.is_none());
        let metadata = &node.ops[&Op::Metadata];
        assert_eq!(metadata.merged.len(), 2);
        assert_eq!(metadata.unpartitioned.as_ref().map(|h| h.len()), Some(2));
        assert!(metadata.partitions.is_empty());
    }

    #[test]
    fn counters_sum_across_cores() {
        let node = merge(&two_cores());
        assert_eq!(node.partitions[&Partition(0)].records_in, 10);
        assert_eq!(node.partitions[&Partition(1)].bytes_out, 200);
        assert_eq!(
            node.totals,
            PartitionCounters {
                bytes_in: 1500,
                records_in: 15,
                bytes_out: 200,
                records_out: 2
            }
        );
        assert_eq!(node.errors["not_leader"], 2);
        assert_eq!(node.errors["bad_request"], 1);
        assert_eq!(node.connections.opened, 3);
        assert_eq!(node.connections.open(), 2);
        assert_eq!(node.bad_preambles, 1);
        assert_eq!(node.reactor.stalls, 1);
        assert_eq!(node.reactor.lateness_us.len(), 2);
    }

    #[test]
    fn per_core_views_keep_each_core_apart() {
        let node = merge(&two_cores());
        assert_eq!(node.cores.len(), 2);
        assert_eq!(node.cores[0].core, 0);
        assert_eq!(node.cores[0].ops[&Op::Produce].len(), 500);
        assert_eq!(node.cores[0].partitions, vec![Partition(0)]);
        assert_eq!(node.cores[0].errors, 1);
        assert_eq!(node.cores[0].reactor.stalls, 1);
        assert_eq!(node.cores[1].ops[&Op::Produce].min(), 501);
        assert_eq!(node.cores[1].errors, 2);
        assert_eq!(node.cores[1].connections.open(), 1);
    }

    #[test]
    fn merging_nothing_gives_every_op_empty() {
        let node = merge(&[]);
        assert_eq!(node.ops.len(), Op::ALL.len());
        assert!(node.ops.values().all(|l| l.merged.is_empty()));
        assert!(node.cores.is_empty());
        assert!(node.raft.is_empty());
    }

    fn raft_state(is_leader: bool, term: u64, last_log_index: u64) -> RaftState {
        RaftState {
            is_leader,
            term,
            leader: Some(if is_leader { 1 } else { 2 }),
            last_log_index,
            committed_index: last_log_index,
            applied_index: last_log_index,
            leader_changes: term,
            takeover_elections: 0,
            takeover_votes_granted: 0,
            follower_lag: if is_leader {
                BTreeMap::from([(2, 0), (3, 7)])
            } else {
                BTreeMap::new()
            },
        }
    }

    #[test]
    fn raft_state_is_the_union_of_every_cores_partitions() {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.set_raft_state(Partition(0), raft_state(true, 2, 10));
        b.set_raft_state(Partition(1), raft_state(false, 5, 20));
        b.set_raft_state(Partition(3), raft_state(true, 1, 1));
        let node = merge(&[b.snapshot(), a.snapshot()]);
        assert_eq!(node.raft.len(), 3);
        assert_eq!(node.raft[&Partition(0)], raft_state(true, 2, 10));
        assert_eq!(node.raft[&Partition(1)], raft_state(false, 5, 20));
        assert_eq!(node.raft[&Partition(3)], raft_state(true, 1, 1));
        assert_eq!(node.cores[1].partitions, vec![Partition(1), Partition(3)]);
    }

    #[test]
    fn a_partition_reported_by_two_cores_keeps_the_newest_position_in_any_order() {
        let a = CoreStats::new(0);
        let b = CoreStats::new(1);
        a.set_raft_state(Partition(0), raft_state(true, 2, 10));
        b.set_raft_state(Partition(0), raft_state(false, 3, 9));
        for snapshots in [
            vec![a.snapshot(), b.snapshot()],
            vec![b.snapshot(), a.snapshot()],
        ] {
            let node = merge(&snapshots);
            assert_eq!(node.raft[&Partition(0)], raft_state(false, 3, 9));
        }
    }

    fn gauges(end: u64, bytes: u64) -> LogGauges {
        LogGauges {
            log_start_offset: 1,
            high_watermark: end,
            log_end_offset: end,
            log_bytes: bytes,
            segments: 2,
        }
    }

    #[test]
    fn logs_are_the_union_of_every_cores_partitions_and_an_overlap_keeps_the_longer() {
        let mut a = CoreStats::new(0).snapshot();
        let mut b = CoreStats::new(1).snapshot();
        a.logs.insert(Partition(0), gauges(10, 100));
        a.logs.insert(Partition(2), gauges(5, 50));
        b.logs.insert(Partition(1), gauges(7, 70));
        b.logs.insert(Partition(2), gauges(6, 60));
        for snapshots in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let node = merge(&snapshots);
            assert_eq!(node.logs.len(), 3);
            assert_eq!(node.logs[&Partition(0)], gauges(10, 100));
            assert_eq!(node.logs[&Partition(1)], gauges(7, 70));
            assert_eq!(node.logs[&Partition(2)], gauges(6, 60));
            assert_eq!(node.cores[1].partitions, vec![Partition(1), Partition(2)]);
        }
    }

    #[test]
    fn a_standalone_node_has_no_raft_state() {
        let node = merge(&two_cores());
        assert!(node.raft.is_empty());
    }
}
