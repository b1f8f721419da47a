//! [`CoreStats`]: what one core records, and [`CoreSnapshot`]: a copy of it that can travel to
//! another core.
//!
//! A `CoreStats` lives on one core and is shared there through `Rc`; every method takes `&self`
//! and updates `Cell`s or briefly borrows a `RefCell` (never across an `.await`), so recording
//! costs no lock and no atomic. Latencies go into hdrhistograms of
//! [`LATENCY_US_MIN`]..=[`LATENCY_US_MAX`] microseconds at [`LATENCY_SIGNIFICANT_DIGITS`]
//! significant digits; a value above the range is clamped to the top (saturating record) rather
//! than dropped, so a 2-minute outlier still shows as "60 s".
//!
//! Everything is cumulative since the core started (Prometheus computes rates from cumulative
//! counters and histograms); nothing is ever reset. The one exception is [`RaftState`]: a
//! partition's Raft position and role as last reported, replaced whole by each
//! [`CoreStats::set_raft_state`] (its `leader_changes` is still a count since start).
//!
//! Memory: a histogram covering the whole range is about 140 KiB (17 408 `u64` counts), and a
//! core holds one per (op, partition), each copied by every snapshot and merge. So histograms
//! start at 16 KiB (values up to 2 ms) and grow, by hdrhistogram's auto-resize, only as far as
//! the largest value recorded, never past [`LATENCY_US_MAX`]: an idle op costs 16 KiB, a
//! typical one a few tens. A growth step allocates on the recording path; it happens at most
//! once per doubling of the largest value seen (15 times over a histogram's life). The
//! histograms themselves are allocated up front: by [`CoreStats::new`] for ops whose [`Scope`]
//! is `Node`, by [`CoreStats::add_partition`] for the per-partition ones, on first use otherwise.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::op::{Op, Scope};
use crate::types::Partition;

/// The smallest latency a histogram tells apart from zero, in microseconds.
pub const LATENCY_US_MIN: u64 = 1;
/// The largest latency a histogram tracks; larger values are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Relative precision of every recorded value: 3 digits is within 0.1%.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// The largest value a new histogram holds before its first growth step, in microseconds.
const LATENCY_US_PREALLOCATED: u64 = 2;

/// An empty latency histogram with the one configuration every core uses, so any two can be
/// merged. It grows as values arrive; record into it with [`record_latency_us`].
pub fn new_latency_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(
        LATENCY_US_MIN,
        LATENCY_US_PREALLOCATED,
        LATENCY_SIGNIFICANT_DIGITS,
    )
    .expect("the latency histogram bounds are valid constants");
    h.auto(true);
    h
}

/// Records `micros` into `h`, clamped to [`LATENCY_US_MAX`].
pub fn record_latency_us(h: &mut Histogram<u64>, micros: u64) {
    // hdrhistogram's own saturating record clamps to the *current* size instead of growing, so
    // clamp to the fixed range here and let `record` grow the histogram.
    h.record(micros.min(LATENCY_US_MAX))
        .expect("a value up to LATENCY_US_MAX always fits once the histogram has grown");
}

/// Which histogram a latency goes into: the op, and the partition when there is one.
pub type LatencyKey = (Op, Option<Partition>);

/// Traffic of one partition.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionCounters {
    /// Record bytes appended (values as produced, not the on-disk batch size).
    pub bytes_in: u64,
    /// Records appended.
    pub records_in: u64,
    /// Record bytes sent to consumers and subscribers.
    pub bytes_out: u64,
    /// Records sent to consumers and subscribers.
    pub records_out: u64,
}

impl PartitionCounters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PartitionCounters) {
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.records_in = self.records_in.saturating_add(other.records_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.records_out = self.records_out.saturating_add(other.records_out);
    }
}

/// What a partition's log holds at the moment of a snapshot (gauges, read from the log by the
/// core that owns it, not recorded as traffic goes by).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogGauges {
    /// The oldest offset still held; retention moves it up.
    pub log_start_offset: u64,
    /// The end of what consumers can read: the first offset they cannot read yet.
    pub high_watermark: u64,
    /// The first offset not yet durable on this node. Above the high watermark while
    /// replicated records wait for a majority; equal to it on a standalone node.
    pub log_end_offset: u64,
    /// Bytes of batches held over all segments (index files not included).
    pub log_bytes: u64,
    /// Segments held, the active one included.
    pub segments: u64,
}

/// Client and peer connections on the one port.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    pub opened: u64,
    pub closed: u64,
}

impl ConnectionCounters {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ConnectionCounters) {
        self.opened = self.opened.saturating_add(other.opened);
        self.closed = self.closed.saturating_add(other.closed);
    }
}

/// One partition's Raft group as this node last saw it, set by the Raft layer from openraft's
/// metrics with [`CoreStats::set_raft_state`]. Node ids are Raft node ids; indexes are Raft log
/// indexes (not record offsets: control entries take an index but no offset). A node without
/// Raft (standalone) never sets one, and then `/stats` and `/metrics` show no Raft state.
/// Serialized as is under `raft` in `/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RaftState {
    /// Whether this node is the partition's leader.
    pub is_leader: bool,
    /// The current term as this node knows it.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<u64>,
    /// The index of the last entry in this node's Raft log of the partition.
    pub last_log_index: u64,
    /// The highest index this node knows to be committed.
    pub committed_index: u64,
    /// The highest index applied to this node's state machine.
    pub applied_index: u64,
    /// How many times the known leader changed on this node since start (a count: Prometheus
    /// computes the rate).
    pub leader_changes: u64,
    /// Elections this node started because the leader closed every peer connection to it
    /// (its process is gone: src/raft/liveness.rs) instead of waiting out the leader lease.
    pub takeover_elections: u64,
    /// Votes this node granted despite the leader lease it held, because that leader had
    /// closed every peer connection to it (the voter's side of a takeover election).
    pub takeover_votes_granted: u64,
    /// Follower node id → how many entries it is behind the leader's `last_log_index`. Only
    /// the leader knows this; empty on followers.
    pub follower_lag: BTreeMap<u64, u64>,
}

/// What the stall detector ([`super::stall`]) saw on a core.
#[derive(Clone, Debug)]
pub struct ReactorStats {
    /// Timer ticks that fired at least `stall_threshold_us` late.
    pub stalls: u64,
    /// The threshold the detector used; 0 when no detector ran on this core.
    pub stall_threshold_us: u64,
    /// How late every tick fired, stalls or not, in microseconds.
    pub lateness_us: Histogram<u64>,
}

impl Default for ReactorStats {
    fn default() -> ReactorStats {
        ReactorStats {
            stalls: 0,
            stall_threshold_us: 0,
            lateness_us: new_latency_histogram(),
        }
    }
}

impl ReactorStats {
    /// Adds `other` into `self`; the threshold shown is the largest any core used.
    pub fn add(&mut self, other: &ReactorStats) {
        self.stalls = self.stalls.saturating_add(other.stalls);
        self.stall_threshold_us = self.stall_threshold_us.max(other.stall_threshold_us);
        add_histogram(&mut self.lateness_us, &other.lateness_us);
    }
}

/// Adds `source` into `target`. Both come from [`new_latency_histogram`] (same precision,
/// `target` grows as needed), so the addition cannot fail; failing here is a bug in this module.
pub fn add_histogram(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    target
        .add(source)
        .expect("latency histograms share one configuration");
}

/// One core's statistics, recorded on that core only. Share it on the core with `Rc`.
pub struct CoreStats {
    core: usize,
    latencies: RefCell<BTreeMap<LatencyKey, Histogram<u64>>>,
    partitions: RefCell<BTreeMap<Partition, PartitionCounters>>,
    errors: RefCell<BTreeMap<&'static str, u64>>,
    connections_opened: Cell<u64>,
    connections_closed: Cell<u64>,
    bad_preambles: Cell<u64>,
    reactor: RefCell<ReactorStats>,
    raft: RefCell<BTreeMap<Partition, RaftState>>,
}

impl CoreStats {
    /// Empty statistics for core number `core` (the index the node gives its executors).
    pub fn new(core: usize) -> CoreStats {
        let stats = CoreStats {
            core,
            latencies: RefCell::new(BTreeMap::new()),
            partitions: RefCell::new(BTreeMap::new()),
            errors: RefCell::new(BTreeMap::new()),
            connections_opened: Cell::new(0),
            connections_closed: Cell::new(0),
            bad_preambles: Cell::new(0),
            reactor: RefCell::new(ReactorStats::default()),
            raft: RefCell::new(BTreeMap::new()),
        };
        // Node-wide ops get their histograms now, so the first request allocates nothing and
        // /metrics shows every op from the start.
        for op in Op::ALL.iter().filter(|op| op.scope() == Scope::Node) {
            stats.ensure_histogram(*op, None);
        }
        stats
    }

    /// The core these statistics belong to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Declares that this core owns `partition`: allocates its counters and the histograms of
    /// every per-partition op now, off the data path.
    pub fn add_partition(&self, partition: Partition) {
        self.partitions.borrow_mut().entry(partition).or_default();
        for op in Op::ALL.iter().filter(|op| op.scope() == Scope::Partition) {
            self.ensure_histogram(*op, Some(partition));
        }
    }

    /// Records one `op` that took `micros` microseconds, for `partition` if it has one.
    pub fn record_latency(&self, op: Op, partition: Option<Partition>, micros: u64) {
        let mut latencies = self.latencies.borrow_mut();
        let histogram = latencies
            .entry((op, partition))
            .or_insert_with(new_latency_histogram);
        record_latency_us(histogram, micros);
    }

    /// Records one `op` that started at `start` and has just finished.
    pub fn record_latency_since(&self, op: Op, partition: Option<Partition>, start: Instant) {
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.record_latency(op, partition, micros);
    }

    /// Counts `records` records of `bytes` bytes appended to `partition`.
    pub fn record_in(&self, partition: Partition, records: u64, bytes: u64) {
        let mut partitions = self.partitions.borrow_mut();
        let counters = partitions.entry(partition).or_default();
        counters.records_in = counters.records_in.saturating_add(records);
        counters.bytes_in = counters.bytes_in.saturating_add(bytes);
    }

    /// Counts `records` records of `bytes` bytes sent from `partition` to a reader.
    pub fn record_out(&self, partition: Partition, records: u64, bytes: u64) {
        let mut partitions = self.partitions.borrow_mut();
        let counters = partitions.entry(partition).or_default();
        counters.records_out = counters.records_out.saturating_add(records);
        counters.bytes_out = counters.bytes_out.saturating_add(bytes);
    }

    /// Counts one error of `kind` (a stable snake-case label such as `"offset_out_of_range"`).
    /// Kinds are `&'static str` so the set of labels is bounded by the program text.
    pub fn record_error(&self, kind: &'static str) {
        let mut errors = self.errors.borrow_mut();
        let count = errors.entry(kind).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Counts a connection accepted (after its preamble was read and it reached this core).
    pub fn connection_opened(&self) {
        bump(&self.connections_opened);
    }

    /// Counts a connection closed, for whatever reason.
    pub fn connection_closed(&self) {
        bump(&self.connections_closed);
    }

    /// Counts a connection closed because its preamble was garbage.
    pub fn bad_preamble(&self) {
        bump(&self.bad_preambles);
    }

    /// Records how late one stall-detector tick fired; a lateness of at least
    /// `stall_threshold_us` also counts as a stall.
    pub fn record_reactor_lateness(&self, lateness_us: u64, stall_threshold_us: u64) {
        let mut reactor = self.reactor.borrow_mut();
        reactor.stall_threshold_us = stall_threshold_us;
        record_latency_us(&mut reactor.lateness_us, lateness_us);
        if lateness_us >= stall_threshold_us {
            reactor.stalls = reactor.stalls.saturating_add(1);
        }
    }

    /// Replaces what this core shows about `partition`'s Raft group. Call it whenever openraft
    /// reports new metrics for the group; the endpoint shows the latest state set.
    pub fn set_raft_state(&self, partition: Partition, state: RaftState) {
        self.raft.borrow_mut().insert(partition, state);
    }

    /// A copy of everything recorded so far, to send to the core that merges.
    pub fn snapshot(&self) -> CoreSnapshot {
        CoreSnapshot {
            core: self.core,
            latencies: self.latencies.borrow().clone(),
            partitions: self.partitions.borrow().clone(),
            errors: self.errors.borrow().clone(),
            connections: ConnectionCounters {
                opened: self.connections_opened.get(),
                closed: self.connections_closed.get(),
            },
            bad_preambles: self.bad_preambles.get(),
            reactor: self.reactor.borrow().clone(),
            raft: self.raft.borrow().clone(),
            logs: BTreeMap::new(),
        }
    }

    fn ensure_histogram(&self, op: Op, partition: Option<Partition>) {
        self.latencies
            .borrow_mut()
            .entry((op, partition))
            .or_insert_with(new_latency_histogram);
    }
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().saturating_add(1));
}

/// Everything one core had recorded when [`CoreStats::snapshot`] ran. Owned and `Send`, so a
/// core can send it over a channel to the core serving the stats endpoint.
#[derive(Clone, Debug)]
pub struct CoreSnapshot {
    pub core: usize,
    pub latencies: BTreeMap<LatencyKey, Histogram<u64>>,
    pub partitions: BTreeMap<Partition, PartitionCounters>,
    pub errors: BTreeMap<&'static str, u64>,
    pub connections: ConnectionCounters,
    pub bad_preambles: u64,
    pub reactor: ReactorStats,
    /// The Raft state of each partition on this core that has one (none on a standalone node).
    pub raft: BTreeMap<Partition, RaftState>,
    /// The logs of this core's partitions. [`CoreStats::snapshot`] leaves it empty: the shard,
    /// which holds the logs, fills it (`Shard::stats_snapshot`).
    pub logs: BTreeMap<Partition, LogGauges>,
}

// A snapshot crosses cores: keep it `Send` (a compile error here, not at the node's call site).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<CoreSnapshot>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_the_histogram_of_its_op_and_partition() {
        let stats = CoreStats::new(3);
        stats.record_latency(Op::Produce, Some(Partition(1)), 100);
        stats.record_latency(Op::Produce, Some(Partition(1)), 300);
        stats.record_latency(Op::Produce, Some(Partition(2)), 5);
        let snap = stats.snapshot();
        assert_eq!(snap.core, 3);
        assert_eq!(snap.latencies[&(Op::Produce, Some(Partition(1)))].len(), 2);
        assert_eq!(snap.latencies[&(Op::Produce, Some(Partition(2)))].len(), 1);
        assert!(!snap.latencies.contains_key(&(Op::Produce, None)));
    }

    #[test]
    fn a_latency_above_the_range_is_clamped_not_dropped() {
        let stats = CoreStats::new(0);
        stats.record_latency(Op::Fsync, None, 3_600_000_000);
        stats.record_latency(Op::Fsync, None, 0);
        let snap = stats.snapshot();
        let h = &snap.latencies[&(Op::Fsync, None)];
        assert_eq!(h.len(), 2);
        assert!(h.equivalent(h.max(), LATENCY_US_MAX));
        assert_eq!(h.min(), 0);
    }

    #[test]
    fn node_ops_exist_from_the_start_and_partition_ops_after_add_partition() {
        let stats = CoreStats::new(0);
        stats.add_partition(Partition(7));
        let snap = stats.snapshot();
        assert!(snap.latencies.contains_key(&(Op::Metadata, None)));
        assert!(
            snap.latencies
                .contains_key(&(Op::Produce, Some(Partition(7))))
        );
        assert!(
            snap.latencies
                .contains_key(&(Op::Fsync, Some(Partition(7))))
        );
        assert!(
            !snap
                .latencies
                .contains_key(&(Op::Metadata, Some(Partition(7))))
        );
        assert_eq!(snap.partitions[&Partition(7)], PartitionCounters::default());
    }

    #[test]
    fn counters_count() {
        let stats = CoreStats::new(0);
        stats.record_in(Partition(0), 3, 300);
        stats.record_in(Partition(0), 1, 10);
        stats.record_out(Partition(0), 2, 20);
        stats.record_error("not_leader");
        stats.record_error("not_leader");
        stats.record_error("bad_request");
        stats.connection_opened();
        stats.connection_opened();
        stats.connection_closed();
        stats.bad_preamble();
        stats.record_reactor_lateness(50, 10_000);
        stats.record_reactor_lateness(25_000, 10_000);
        let snap = stats.snapshot();
        assert_eq!(
            snap.partitions[&Partition(0)],
            PartitionCounters {
                bytes_in: 310,
                records_in: 4,
                bytes_out: 20,
                records_out: 2
            }
        );
        assert_eq!(snap.errors["not_leader"], 2);
        assert_eq!(snap.errors["bad_request"], 1);
        assert_eq!(snap.connections.open(), 1);
        assert_eq!(snap.bad_preambles, 1);
        assert_eq!(snap.reactor.stalls, 1);
        assert_eq!(snap.reactor.stall_threshold_us, 10_000);
        assert_eq!(snap.reactor.lateness_us.len(), 2);
    }

    #[test]
    fn raft_state_is_replaced_whole_per_partition() {
        let stats = CoreStats::new(0);
        assert!(stats.snapshot().raft.is_empty(), "no Raft state until set");
        let mut state = RaftState {
            is_leader: true,
            term: 3,
            leader: Some(1),
            last_log_index: 40,
            committed_index: 38,
            applied_index: 37,
            leader_changes: 2,
            takeover_elections: 1,
            takeover_votes_granted: 2,
            follower_lag: BTreeMap::from([(2, 0), (3, 5)]),
        };
        stats.set_raft_state(Partition(4), state.clone());
        stats.set_raft_state(Partition(5), RaftState::default());
        assert_eq!(stats.snapshot().raft[&Partition(4)], state);

        // Losing leadership: the new state replaces the old one, lag included.
        state.is_leader = false;
        state.leader = Some(2);
        state.term = 4;
        state.leader_changes = 3;
        state.follower_lag.clear();
        stats.set_raft_state(Partition(4), state.clone());
        let snap = stats.snapshot();
        assert_eq!(snap.raft.len(), 2);
        assert_eq!(snap.raft[&Partition(4)], state);
        assert_eq!(snap.raft[&Partition(5)], RaftState::default());
    }

    #[test]
    fn a_snapshot_is_a_copy() {
        let stats = CoreStats::new(0);
        stats.record_latency(Op::Consume, Some(Partition(0)), 10);
        let snap = stats.snapshot();
        stats.record_latency(Op::Consume, Some(Partition(0)), 10);
        assert_eq!(snap.latencies[&(Op::Consume, Some(Partition(0)))].len(), 1);
    }
}
