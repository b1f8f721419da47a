//! What one core owns: the logs of its partitions, its stats, its connections, and the
//! messages it exchanges with other cores.
//!
//! Partition `p` of a node with `C` cores is owned by core `p % C`. All of a partition's I/O
//! happens on its owner core; other cores never touch its `Log`. Cross-core work (handing over
//! a connection, gathering stats or partition offsets) goes over glommio's channel mesh as
//! [`CoreMsg`]s, bounded.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use glommio::channels::channel_mesh::Senders;

use crate::config::NodeConfig;
use crate::io::net::HandoffSocket;
use crate::net::acl::Policy;
use crate::net::preamble::ConnKind;
use crate::proto::PartitionInfo;
use crate::stats::{CoreSnapshot, CoreStats, LogGauges};
use crate::storage::Log;
use crate::sync::Event;
use crate::types::Partition;

/// Capacity of each core-to-core channel.
pub const MESH_CHANNEL_CAPACITY: usize = 256;

/// A message from one core to another.
pub enum CoreMsg {
    /// A connection whose preamble named this core.
    Connection {
        socket: HandoffSocket,
        kind: ConnKind,
        peer: Option<std::net::SocketAddr>,
    },
    /// Send a stats snapshot back.
    Stats {
        reply: futures::channel::oneshot::Sender<CoreSnapshot>,
    },
    /// Send the offsets of this core's partitions back.
    Partitions {
        reply: futures::channel::oneshot::Sender<Vec<PartitionInfo>>,
    },
}

/// Read-only facts shared by every core of the node.
pub struct NodeShared {
    pub config: NodeConfig,
    /// The partition count, fixed at first start.
    pub partitions: u32,
    pub cores: usize,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub policy: Policy,
    /// Set by the signal handler (or a test) to start a graceful shutdown.
    pub shutdown: AtomicBool,
    /// Set once every core has started.
    pub ready: AtomicBool,
    /// The address the TLS port is bound to (the real port when configured as 0).
    pub listen: std::net::SocketAddr,
    /// Replicated nodes: the address peers and clients use for this node.
    pub advertise: String,
    /// The data directory was new at this start (a replicated node then bootstraps or joins).
    pub fresh: bool,
    /// Replicated nodes: the node's own client-side TLS (its node certificate) for peers.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// Cores whose partitions all have a leader (or gave up waiting): `/health` is ready when
    /// every core is.
    pub cores_led: std::sync::atomic::AtomicUsize,
}

impl NodeShared {
    /// The core that owns partition `p`.
    pub fn owner_core(&self, p: Partition) -> usize {
        p.0 as usize % self.cores
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// The state one core owns. Lives in an `Rc` on that core's executor.
pub struct Shard {
    pub core: usize,
    pub node: Arc<NodeShared>,
    pub logs: BTreeMap<Partition, Log>,
    pub stats: Rc<CoreStats>,
    senders: RefCell<Option<Rc<Senders<CoreMsg>>>>,
    /// Connections open on this core.
    pub connections: Cell<usize>,
    /// Fires when this core starts shutting down.
    pub shutdown: Event,
    shutting_down: Cell<bool>,
    /// Fires when a connection on this core closes.
    pub connection_closed: Event,
    /// Peer (Raft) connections open on this core (counted in `connections` too).
    pub peer_connections: Cell<usize>,
    /// Fires when peer connections must stop: after the Raft groups stopped, at the end of a
    /// shutdown. Until then peers keep being served while clients drain (a produce in flight
    /// on a leader that handed off is answered once the new leader's commit arrives).
    pub peers_stop: Event,
    peers_stopped: Cell<bool>,
    /// Records served so far (drives `--inject-fault`).
    records_served: Cell<u64>,
    /// The Raft groups of this core's partitions.
    pub raft_groups: RefCell<HashMap<Partition, crate::raft::types::Raft>>,
    /// Replicated nodes: the Raft group of each partition this core owns.
    pub groups: RefCell<BTreeMap<Partition, crate::raft::group::Group>>,
    /// Replicated nodes: this core's connections to its peers, shared by its groups.
    pub peer_pool: RefCell<Option<Rc<crate::raft::network::PeerPool>>>,
    /// Which nodes have peer connections open to this core (fast failover).
    pub peer_liveness: crate::raft::liveness::PeerLiveness,
}

impl Shard {
    pub fn new(
        core: usize,
        node: Arc<NodeShared>,
        logs: BTreeMap<Partition, Log>,
        stats: Rc<CoreStats>,
    ) -> Shard {
        Shard {
            core,
            node,
            logs,
            stats,
            senders: RefCell::new(None),
            connections: Cell::new(0),
            shutdown: Event::new(),
            shutting_down: Cell::new(false),
            connection_closed: Event::new(),
            peer_connections: Cell::new(0),
            peers_stop: Event::new(),
            peers_stopped: Cell::new(false),
            records_served: Cell::new(0),
            raft_groups: RefCell::new(HashMap::new()),
            groups: RefCell::new(BTreeMap::new()),
            peer_pool: RefCell::new(None),
            peer_liveness: Default::default(),
        }
    }

    /// The last peer connection from `node` to this core closed: each group of this core that
    /// `node` led may take over from it (src/raft/liveness.rs).
    pub fn peer_gone(self: &Rc<Self>, node: crate::raft::types::NodeId) {
        let Some(replication) = &self.node.config.replication else {
            return;
        };
        let Some(pool) = self.peer_pool.borrow().clone() else {
            return;
        };
        if node == self.node.config.node_id {
            return;
        }
        let timing = replication.timing;
        for group in self.groups.borrow().values() {
            if group.leader().map(|(id, _)| id) != Some(node) {
                continue;
            }
            let (group, shard, pool) = (group.clone(), self.clone(), pool.clone());
            glommio::spawn_local(async move {
                group
                    .take_over(node, timing, &pool, || shard.peer_liveness.gone_for(node))
                    .await;
            })
            .detach();
        }
    }

    /// Whether a vote request for partition `p` may be granted although this node still
    /// holds its leader's lease: the leader closed every peer connection to this core at
    /// least `heartbeat_ms` ago and opened none since (src/raft/liveness.rs).
    pub fn leader_gone(&self, p: Partition) -> bool {
        let Some(replication) = &self.node.config.replication else {
            return false;
        };
        let Some((leader, _)) = self.group(p).and_then(|g| g.leader()) else {
            return false;
        };
        if leader == self.node.config.node_id {
            return false;
        }
        self.peer_liveness.gone_for(leader).is_some_and(|gone| {
            gone >= std::time::Duration::from_millis(replication.timing.heartbeat_ms)
        })
    }

    /// Applies the testing-only `--inject-fault` to records about to be served.
    pub fn apply_read_fault(&self, records: &mut Vec<crate::storage::Record>) {
        use crate::config::ReadFault;
        let Some(fault) = self.node.config.read_fault else {
            return;
        };
        let mut kept = Vec::with_capacity(records.len());
        for mut r in records.drain(..) {
            let n = self.records_served.get() + 1;
            self.records_served.set(n);
            match fault {
                ReadFault::DropRecord { every } if n.is_multiple_of(every) => continue,
                ReadFault::CorruptRecord { every }
                    if n.is_multiple_of(every) && !r.value.is_empty() =>
                {
                    let mut v = r.value.to_vec();
                    v[0] ^= 0x5A;
                    r.value = v.into();
                }
                _ => {}
            }
            kept.push(r);
        }
        *records = kept;
    }

    /// The Raft group of partition `p` (replicated nodes; `p` owned by this core).
    pub fn group(&self, p: Partition) -> Option<crate::raft::group::Group> {
        self.groups.borrow().get(&p).cloned()
    }

    /// Registers a partition's Raft group: peers' RPCs and client requests reach it.
    pub fn add_group(&self, group: crate::raft::group::Group) {
        self.raft_groups
            .borrow_mut()
            .insert(group.partition, group.raft.clone());
        self.groups.borrow_mut().insert(group.partition, group);
    }

    pub fn set_senders(&self, senders: Senders<CoreMsg>) {
        *self.senders.borrow_mut() = Some(Rc::new(senders));
    }

    /// Connections one core may hold.
    pub fn connections_max(&self) -> usize {
        (self.node.config.connections_max / self.node.cores).max(1)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    pub fn peers_stopped(&self) -> bool {
        self.peers_stopped.get()
    }

    /// Ends the peer connections (the last step of a shutdown).
    pub fn stop_peers(&self) {
        if !self.peers_stopped.replace(true) {
            self.peers_stop.notify();
        }
    }

    pub fn begin_shutdown(&self) {
        if !self.shutting_down.replace(true) {
            self.shutdown.notify();
        }
    }

    /// Sends `msg` to core `to` (never this core).
    pub async fn send_to(&self, to: usize, msg: CoreMsg) -> Result<(), String> {
        assert_ne!(to, self.core, "a core does not message itself");
        let Some(senders) = self.senders.borrow().clone() else {
            return Err("core mesh not connected yet".into());
        };
        senders
            .send_to(to, msg)
            .await
            .map_err(|_| format!("core {to} is not reachable"))
    }

    /// This core's partitions with their offsets.
    pub fn local_partition_infos(&self) -> Vec<PartitionInfo> {
        self.logs
            .iter()
            .map(|(p, log)| PartitionInfo {
                partition: p.0,
                owner_core: self.core as u32,
                leader_id: match self.group(*p) {
                    Some(g) => g.leader().map(|(id, _)| id.to_string()).unwrap_or_default(),
                    None => self.node.config.node_id.to_string(),
                },
                log_start_offset: log.lowest_offset().get(),
                high_watermark: log.durable_offset().get(),
                members: self.group(*p).map_or_else(Vec::new, |g| {
                    let (nodes, voters) = g.members();
                    nodes
                        .into_iter()
                        .map(|(node_id, addr)| crate::proto::Member {
                            node_id,
                            addr,
                            voter: voters.contains(&node_id),
                        })
                        .collect()
                }),
            })
            .collect()
    }

    /// Every partition of the node with its offsets, asking the other cores.
    pub async fn all_partition_infos(&self) -> Vec<PartitionInfo> {
        let mut infos = self.local_partition_infos();
        for core in (0..self.node.cores).filter(|c| *c != self.core) {
            let (tx, rx) = futures::channel::oneshot::channel();
            if self
                .send_to(core, CoreMsg::Partitions { reply: tx })
                .await
                .is_ok()
                && let Ok(more) = rx.await
            {
                infos.extend(more);
            }
        }
        infos.sort_by_key(|i| i.partition);
        infos
    }

    /// This core's stats, with what each of its partitions' logs holds now.
    pub fn stats_snapshot(&self) -> CoreSnapshot {
        let mut snapshot = self.stats.snapshot();
        snapshot.logs = self
            .logs
            .iter()
            .map(|(p, log)| {
                let gauges = LogGauges {
                    log_start_offset: log.lowest_offset().get(),
                    high_watermark: log.durable_offset().get(),
                    log_end_offset: log.written_offset().get(),
                    log_bytes: log.size_bytes(),
                    segments: log.segment_count() as u64,
                };
                (*p, gauges)
            })
            .collect();
        snapshot
    }

    /// Stats snapshots of every core, this one included.
    pub async fn all_snapshots(&self) -> Vec<CoreSnapshot> {
        let mut snaps = vec![self.stats_snapshot()];
        for core in (0..self.node.cores).filter(|c| *c != self.core) {
            let (tx, rx) = futures::channel::oneshot::channel();
            if self
                .send_to(core, CoreMsg::Stats { reply: tx })
                .await
                .is_ok()
                && let Ok(snap) = rx.await
            {
                snaps.push(snap);
            }
        }
        snaps.sort_by_key(|s| s.core);
        snaps
    }

    /// The Raft group of `partition`, if it lives on this core.
    pub fn raft_group(&self, partition: Partition) -> Option<crate::raft::types::Raft> {
        self.raft_groups.borrow().get(&partition).cloned()
    }
}
