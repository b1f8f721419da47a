//! Who does what: the partitions under load (targets), which core runs which producer and
//! consumer, and the run's timeline. Built once on the main thread, then shared read-only
//! with every core; the few things cores tell each other go through [`Shared`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::args::ConsumeFrom;
use crate::route::Named;

/// One partition of one node under load (`--cluster`: one partition of the cluster).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Index into the run's `--addr` list (`--cluster`: 0).
    pub node: usize,
    /// The node loaded (`--cluster`: the partition's leader when the run started).
    pub addr: SocketAddr,
    pub partition: u32,
    /// Where consumers start reading.
    pub start_offset: u64,
    /// The partition's high watermark when the run started.
    pub end_offset_at_start: u64,
    /// `--cluster`: the leader's node id when the run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u64>,
    /// `--cluster`: the partition's Raft group members (voters and learners).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Replica>,
}

/// A member of a cluster partition's Raft group.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub node_id: u64,
    /// Where it is reached (its advertised address, or where its host name led).
    pub addr: SocketAddr,
    /// Advertised by host name: the name and its lookup, for each core's
    /// [`Nodes`](crate::route::Nodes) (not in the report).
    #[serde(skip)]
    pub named: Option<Named>,
}

impl Target {
    /// How messages name the partition.
    pub fn label(&self) -> String {
        match self.leader_id {
            Some(id) => format!(
                "partition {} (leader node {id} at {})",
                self.partition, self.addr
            ),
            None => format!("partition {} of {}", self.partition, self.addr),
        }
    }

    /// `--cluster`: where consumer `id` reads: the leader, or one of the other replicas.
    pub fn read_replicas(&self, from: ConsumeFrom, id: u32) -> Vec<SocketAddr> {
        let followers: Vec<SocketAddr> = self
            .replicas
            .iter()
            .filter(|r| Some(r.node_id) != self.leader_id)
            .map(|r| r.addr)
            .collect();
        match from {
            ConsumeFrom::Follower if !followers.is_empty() => {
                // Start each consumer on a different follower; it moves to the next on failure.
                let n = followers.len();
                (0..n).map(|i| followers[(id as usize + i) % n]).collect()
            }
            _ => vec![self.addr],
        }
    }
}

/// A producer or a consumer: its id, the core (index into the run's CPUs) it runs on, and
/// its target (index into [`Plan::targets`]).
#[derive(Debug, Clone, Copy)]
pub struct Assignment {
    pub id: u32,
    pub core: usize,
    pub target: usize,
}

/// The whole run's division of work.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Random per run: tells this run's records from older ones in the same partition.
    pub run_id: u64,
    pub targets: Vec<Target>,
    pub producers: Vec<Assignment>,
    pub consumers: Vec<Assignment>,
}

impl Plan {
    /// Spreads `producers` and `consumers` round-robin over `cores` and `targets`.
    pub fn new(
        run_id: u64,
        targets: Vec<Target>,
        cores: usize,
        producers: u32,
        consumers: u32,
    ) -> Plan {
        assert!(
            cores > 0 && !targets.is_empty(),
            "a plan needs cores and targets"
        );
        let assign = |n: u32| -> Vec<Assignment> {
            (0..n)
                .map(|id| Assignment {
                    id,
                    core: id as usize % cores,
                    target: id as usize % targets.len(),
                })
                .collect()
        };
        Plan {
            run_id,
            producers: assign(producers),
            consumers: assign(consumers),
            targets,
        }
    }

    /// The producers writing to `target`.
    pub fn producers_of(&self, target: usize) -> Vec<u32> {
        self.producers
            .iter()
            .filter(|p| p.target == target)
            .map(|p| p.id)
            .collect()
    }
}

/// The run's clock: one `epoch` for every core (records carry send times relative to it),
/// the start, the end of the warm-up, and the end of the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub epoch: Instant,
    pub start: Instant,
    pub warm_end: Instant,
    pub measure_end: Instant,
}

impl Timeline {
    pub fn new(epoch: Instant, start: Instant, warmup: Duration, duration: Duration) -> Self {
        Timeline {
            epoch,
            start,
            warm_end: start + warmup,
            measure_end: start + warmup + duration,
        }
    }

    /// Whether `t` falls in the measured window.
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.warm_end && t < self.measure_end
    }

    /// `t` as nanoseconds since the epoch (what records carry).
    pub fn ns_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub fn instant_of(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

/// What cores tell each other and the main thread while running. Control plane only: the
/// per-record paths never touch it.
pub struct Shared {
    /// Set by the main thread once every core is connected.
    pub timeline: OnceLock<Timeline>,
    /// Cores connected and ready to start.
    pub ready: AtomicUsize,
    /// Cores finished (successfully or not).
    pub finished: AtomicUsize,
    /// Stop everything now (a core failed to start).
    pub abort: AtomicBool,
    pub setup_error: Mutex<Option<String>>,
    /// Producers still running.
    producers_left: AtomicUsize,
    /// Per target: one past the highest offset any producer had acknowledged.
    acked_end: Mutex<Vec<Option<u64>>>,
    /// Per target: where consumers may stop, once every producer is done.
    pub end_offsets: OnceLock<Vec<u64>>,
    /// When consumers give up draining.
    pub drain_deadline: OnceLock<Instant>,
}

impl Shared {
    pub fn new(plan: &Plan) -> Shared {
        Shared {
            timeline: OnceLock::new(),
            ready: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            setup_error: Mutex::new(None),
            producers_left: AtomicUsize::new(plan.producers.len()),
            acked_end: Mutex::new(vec![None; plan.targets.len()]),
            end_offsets: OnceLock::new(),
            drain_deadline: OnceLock::new(),
        }
    }

    /// Stops the run because `error` kept a core from starting.
    pub fn fail_setup(&self, error: String) {
        if let Ok(mut slot) = self.setup_error.lock() {
            slot.get_or_insert(error);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// A producer is done (every request answered or timed out). The last one fixes where
    /// consumers may stop: each target's highest acknowledged offset, or what the consumers
    /// must read anyway (`floor`).
    pub fn producer_done(
        &self,
        target: usize,
        acked_end: Option<u64>,
        floors: &[u64],
        drain: Duration,
    ) {
        let mut ends = match self.acked_end.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(end) = acked_end {
            let slot = &mut ends[target];
            *slot = Some(slot.map_or(end, |e| e.max(end)));
        }
        if self.producers_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let end_offsets = ends
                .iter()
                .zip(floors)
                .map(|(end, &floor)| end.unwrap_or(0).max(floor))
                .collect();
            let _ = self.drain_deadline.set(Instant::now() + drain);
            let _ = self.end_offsets.set(end_offsets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: u32) -> Vec<Target> {
        (0..n)
            .map(|p| Target {
                node: 0,
                addr: "127.0.0.1:7400".parse().unwrap(),
                partition: p,
                start_offset: 0,
                end_offset_at_start: 0,
                leader_id: None,
                replicas: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn work_is_spread_round_robin_over_cores_and_partitions() {
        let plan = Plan::new(1, targets(2), 2, 4, 3);
        let cores: Vec<_> = plan.producers.iter().map(|p| p.core).collect();
        let parts: Vec<_> = plan.producers.iter().map(|p| p.target).collect();
        assert_eq!(cores, vec![0, 1, 0, 1]);
        assert_eq!(parts, vec![0, 1, 0, 1]);
        assert_eq!(plan.producers_of(1), vec![1, 3]);
        assert_eq!(plan.consumers.len(), 3);
    }

    #[test]
    fn the_last_producer_fixes_where_consumers_stop() {
        let plan = Plan::new(1, targets(2), 1, 2, 2);
        let shared = Shared::new(&plan);
        let floors = [5, 7];
        shared.producer_done(0, Some(100), &floors, Duration::from_secs(1));
        assert!(shared.end_offsets.get().is_none());
        shared.producer_done(1, None, &floors, Duration::from_secs(1));
        assert_eq!(shared.end_offsets.get(), Some(&vec![100, 7]));
        assert!(shared.drain_deadline.get().is_some());
    }
}
