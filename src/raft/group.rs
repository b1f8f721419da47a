//! One partition's Raft group on its owner core: start, bootstrap, membership, writes.
//!
//! The node keeps one [`Group`] per partition it owns (on the partition's core). Every group of
//! a core shares that core's peer connections (`network::PeerPool`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftNetworkFactory, ServerState};

use crate::Offset;
use crate::io::Disk;
use crate::raft::store::{self, LogStore, StateMachine};
use crate::raft::types::{LogSnapshot, Node, NodeId, Raft, RecordBatch, TypeConfig};
use crate::storage::Log;
use crate::types::Partition;

/// How long one leadership hand-off attempt waits before trying another voter.
const HAND_OFF_TRY_MS: u64 = 1_000;

/// Raft timing, from the node's flags.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat_ms: 50,
            election_min_ms: 250,
            election_max_ms: 500,
        }
    }
}

/// openraft's configuration for a partition group.
pub fn raft_config(timing: RaftTiming) -> Result<Arc<openraft::Config>, String> {
    let config = openraft::Config {
        cluster_name: "corelog".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        // The log is the data: never snapshot-and-purge it on a schedule. Followers catch up
        // from the log itself.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 1024,
        // A node that cannot win (cut off by the network, or behind) asks the voters first and
        // keeps its term when they would not elect it: rejoining, it then cannot depose a
        // healthy leader with a term it raised alone. (openraft leaves this off by default.)
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| format!("Raft configuration: {e}"))
}

/// Why a write or a membership change did not happen here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// Another node leads (or nobody is known to): send there.
    #[error("not the leader of this partition (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The write may or may not have committed (leader change while it was in flight).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The group stopped (storage failure, shutdown).
    #[error("replication unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
}

fn not_leader(f: &openraft::error::ForwardToLeader<TypeConfig>) -> GroupError {
    GroupError::NotLeader {
        leader: f
            .leader_id
            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> GroupError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => GroupError::Unknown(
            format!("leader changed while the write was in flight; the new leader is {f}"),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            GroupError::Invalid(c.to_string())
        }
        RaftError::APIError(other) => GroupError::Invalid(other.to_string()),
        RaftError::Fatal(f) => GroupError::Unavailable(f.to_string()),
    }
}

/// Why `raft` stopped (openraft's `Fatal`, e.g. a storage failure), if it did. Callers answer
/// from this instead of calling a stopped group: openraft logs every call it refuses at ERROR
/// level, and a leader's heartbeats alone are 20 a second.
pub fn stopped(raft: &Raft) -> Option<openraft::error::Fatal<TypeConfig>> {
    raft.metrics().borrow_watched().running_state.clone().err()
}

/// A partition's Raft group.
#[derive(Clone)]
pub struct Group {
    pub partition: Partition,
    pub node_id: NodeId,
    pub raft: Raft,
    pub store: LogStore,
    pub sm: StateMachine,
    /// Elections started by [`Group::take_over`].
    takeover_elections: std::rc::Rc<std::cell::Cell<u64>>,
    /// Votes granted although this node held its leader's lease (the leader was gone).
    takeover_votes_granted: std::rc::Rc<std::cell::Cell<u64>>,
}

impl Group {
    /// Opens the Raft side of `log` and starts the group (it does not bootstrap: see
    /// [`Group::bootstrap`]).
    pub async fn start<N>(
        node_id: NodeId,
        partition: Partition,
        log: Log,
        network: N,
        config: Arc<openraft::Config>,
    ) -> crate::Result<Group>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = LogSnapshot>,
    {
        let (store, sm) = store::open(log, Disk::new()).await?;
        let raft = Raft::new(node_id, config, network, store.clone(), sm.clone())
            .await
            .map_err(|e| crate::Error::InvalidArgument(format!("starting Raft: {e}")))?;
        Ok(Group {
            partition,
            node_id,
            raft,
            store,
            sm,
            takeover_elections: Default::default(),
            takeover_votes_granted: Default::default(),
        })
    }

    /// Makes this node the only member of a new cluster, unless the group already has state.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), GroupError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| GroupError::Unavailable(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members = BTreeMap::from([(
            self.node_id,
            Node {
                addr: addr.to_string(),
            },
        )]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()), // initialized meanwhile
            Err(RaftError::Fatal(f)) => Err(GroupError::Unavailable(f.to_string())),
        }
    }

    /// The known leader: id and address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// Members with their addresses, and the voters. While a membership change is in
    /// progress (a joint configuration), a voter is a node in every half: one being added is not
    /// yet counted, one being removed no longer is.
    pub fn members(&self) -> (BTreeMap<NodeId, String>, BTreeSet<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let nodes = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let mut halves = membership.get_joint_config().iter();
        let voters = match halves.next() {
            Some(first) => halves.fold(first.clone(), |acc, half| {
                acc.intersection(half).copied().collect()
            }),
            None => BTreeSet::new(),
        };
        (nodes, voters)
    }

    /// Appends records through Raft; resolves with the base offset once committed (a majority
    /// has them durable) and applied here.
    pub async fn write(&self, batch: RecordBatch) -> Result<Offset, GroupError> {
        if let Some(fatal) = stopped(&self.raft) {
            return Err(GroupError::Unavailable(fatal.to_string()));
        }
        match self.raft.client_write(batch).await {
            Ok(resp) => Ok(Offset(resp.data.base_offset)),
            Err(e) => Err(write_error(e)),
        }
    }

    /// Waits until a read of everything committed before now is safe here (read index).
    pub async fn linearizable_barrier(&self) -> Result<(), GroupError> {
        use openraft::error::LinearizableReadError;
        if let Some(fatal) = stopped(&self.raft) {
            return Err(GroupError::Unavailable(fatal.to_string()));
        }
        match self
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(not_leader(&f))
            }
            Err(RaftError::APIError(e)) => Err(GroupError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(GroupError::Unavailable(f.to_string())),
        }
    }

    /// Adds a node: as a learner (caught up before this returns), then as a voter when the
    /// group has fewer than `replication_factor` voters.
    pub async fn add_node(
        &self,
        id: NodeId,
        addr: &str,
        replication_factor: usize,
    ) -> Result<bool, GroupError> {
        let node = Node {
            addr: addr.to_string(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(write_error)?;
        let (_, voters) = self.members();
        if voters.contains(&id) {
            return Ok(true);
        }
        if voters.len() >= replication_factor {
            return Ok(false);
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map_err(write_error)?;
        Ok(true)
    }

    /// Removes a node from the group (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), GroupError> {
        let (nodes, voters) = self.members();
        if !nodes.contains_key(&id) {
            return Ok(());
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(GroupError::Invalid(
                    "cannot remove the last voter of a partition".into(),
                ));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        let (nodes, _) = self.members();
        if nodes.contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// If this node leads, hands leadership to another voter and waits (up to `timeout`) for
    /// one to take over, asking the most caught-up voter first and the others in turn (openraft
    /// refuses a target whose log does not catch up in time). Returns whether this node still
    /// leads.
    pub async fn hand_off_leadership(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut tried = BTreeSet::new();
        while self.is_leader() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let per_try = left.min(Duration::from_millis(HAND_OFF_TRY_MS));
            match self.hand_off_once(&mut tried, per_try).await {
                Some(still_leader) if !still_leader => return false,
                Some(_) => {}
                // Nobody to hand off to at all (a group of one, or no voter answers).
                None if tried.is_empty() => return self.is_leader(),
                // Every voter was tried: start over after a pause.
                None => {
                    tried.clear();
                    crate::io::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.is_leader()
    }

    /// One hand-off attempt to the most caught-up voter not in `tried`; `None` when there is
    /// none.
    async fn hand_off_once(&self, tried: &mut BTreeSet<NodeId>, timeout: Duration) -> Option<bool> {
        if !self.is_leader() {
            return Some(false);
        }
        // The most caught-up other voter (one that answers replication at all).
        let (_, voters) = self.members();
        let to = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.replication.as_ref().and_then(|r| {
                r.iter()
                    .filter(|(id, matched)| {
                        **id != self.node_id
                            && voters.contains(id)
                            && matched.is_some()
                            && !tried.contains(*id)
                    })
                    .max_by_key(|(_, matched)| matched.map(|l| l.index))
                    .map(|(id, _)| *id)
            })
        };
        let to = to?;
        tried.insert(to);
        if self.transfer_leadership_to(to, timeout).await {
            return Some(false);
        }
        Some(self.is_leader())
    }

    /// This group as the leader balancer sees it ([`crate::raft::balance`]); `held` is its
    /// last log index a moment before ([`Group::last_log_index`]).
    pub fn balance_view(&self, held: Option<u64>) -> crate::raft::balance::GroupView {
        let (_, voters) = self.members();
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        // See `balance::caught_up`: a voter within a moment of this leader.
        let caught_up = crate::raft::balance::caught_up(
            m.replication
                .iter()
                .flat_map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))),
            m.last_log_index,
            held,
        );
        crate::raft::balance::GroupView {
            partition: self.partition,
            leader: m.current_leader,
            voters,
            caught_up,
        }
    }

    /// This group's last log index while this node leads it (for [`Group::balance_view`]).
    pub fn last_log_index(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.current_leader == Some(self.node_id) {
            m.last_log_index
        } else {
            None
        }
    }

    /// Hands this group's leadership to voter `to` (openraft's leadership transfer) and waits
    /// up to `timeout` for this node to step down; whether it did.
    pub async fn transfer_leadership_to(&self, to: NodeId, timeout: Duration) -> bool {
        if !self.is_leader() || self.raft.trigger().transfer_leader(to).await.is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_leader() {
                return true;
            }
            crate::io::sleep(Duration::from_millis(10)).await;
        }
        !self.is_leader()
    }

    /// Counts a vote granted although this node held its leader's lease, because that leader
    /// was gone (the voter's side of [`Group::take_over`]; shown on /stats).
    pub fn count_takeover_vote(&self) {
        self.takeover_votes_granted
            .set(self.takeover_votes_granted.get() + 1);
    }

    /// Takes over from `gone`, the leader whose every peer connection to this core closed
    /// (src/raft/liveness.rs). A voter waits two heartbeats (a live leader that only
    /// redialled shows up again), then asks the other voters for their last log id (a
    /// Pre-Vote, which changes nothing on them) and starts an election only if no reachable
    /// voter's log is ahead of its own (ties: the lowest node id) — so exactly the voter that
    /// can win runs, and no term is spent on one that cannot. It also needs answers from
    /// enough voters to make a quorum with its own vote: a node cut off by the network sees
    /// its leader's connections close as well, and a term it raised there would depose the
    /// leader once the network heals. If it does not run (or nothing happens), openraft's
    /// election timers still decide, with Pre-Vote, as they would without this.
    pub async fn take_over(
        &self,
        gone: NodeId,
        timing: RaftTiming,
        pool: &std::rc::Rc<crate::raft::network::PeerPool>,
        gone_for: impl Fn() -> Option<Duration>,
    ) {
        let (nodes, voters) = self.members();
        if !voters.contains(&self.node_id) || !voters.contains(&gone) {
            return;
        }
        crate::io::sleep(Duration::from_millis(timing.heartbeat_ms * 2)).await;
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.current_leader, m.current_term)
        };
        if leader != Some(gone) || gone_for().is_none() {
            return;
        }
        let mine = self.store.last_log_id();
        let probe = openraft::raft::VoteRequest::new(
            openraft::impls::Vote::new(term + 1, self.node_id),
            mine,
        );
        let ttl = Duration::from_millis(timing.election_min_ms);
        let others: Vec<(NodeId, String)> = voters
            .iter()
            .filter(|v| **v != gone && **v != self.node_id)
            .filter_map(|v| nodes.get(v).map(|addr| (*v, addr.clone())))
            .collect();
        let answers = futures::future::join_all(others.iter().map(|(id, addr)| {
            pool.probe_last_log_id(self.partition, *id, addr, probe.clone(), ttl)
        }))
        .await;
        // This node's own vote counts; the gone leader's cannot.
        let mut reachable = 1;
        for ((id, _), answer) in others.iter().zip(answers) {
            match answer {
                Ok(theirs) if theirs > mine || (theirs == mine && *id < self.node_id) => {
                    log::info!(
                        "partition {}: leader {gone} is gone; node {id} is at least as up to \
                         date as this one ({theirs:?} vs {mine:?}) and runs the election",
                        self.partition
                    );
                    return;
                }
                Ok(_) => reachable += 1,
                // It cannot vote for anyone now; the election needs the others.
                Err(e) => log::info!("partition {}: probing node {id}: {e}", self.partition),
            }
        }
        if reachable < voters.len() / 2 + 1 {
            // Cut off from the voters rather than left by a dead leader (the leader's
            // connections close when the network fails too): an election could not be won,
            // and its higher term would depose the leader once the network heals. The
            // election timers decide, with Pre-Vote.
            log::info!(
                "partition {}: leader {gone} closed every peer connection, but only {reachable} \
                 of {} voters answer here: no election",
                self.partition,
                voters.len()
            );
            return;
        }
        let now = self.raft.metrics().borrow_watched().current_leader;
        if now != Some(gone) || gone_for().is_none() {
            return;
        }
        log::info!(
            "partition {}: leader {gone} closed every peer connection; node {} starts an \
             election",
            self.partition,
            self.node_id
        );
        self.takeover_elections
            .set(self.takeover_elections.get() + 1);
        if let Err(e) = self.raft.trigger().elect(false).await {
            log::warn!("partition {}: election: {e}", self.partition);
        }
    }

    /// Applies size/age retention through Raft: segments wholly below both the limits and the
    /// applied index are covered by a (lazy) snapshot, purged from the Raft log, then removed.
    /// A follower that later needs them is sent the retained segments instead. Returns how
    /// many segments went.
    pub async fn apply_retention(
        &self,
        bytes_max: Option<u64>,
        age_ms: Option<u64>,
    ) -> Result<usize, String> {
        let log = self.store.log();
        let Some(cut) = log
            .retention_cut(bytes_max, age_ms)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(0);
        };
        let Some(applied) = self.sm.applied_index() else {
            return Ok(0);
        };
        let cut = cut.min(applied);
        let fatal = |e: openraft::error::Fatal<TypeConfig>| e.to_string();
        let covered =
            |m: &openraft::RaftMetrics<TypeConfig>| m.snapshot.is_some_and(|s| s.index >= cut);
        if !covered(&self.raft.metrics().borrow_watched()) {
            self.raft.trigger().snapshot().await.map_err(fatal)?;
            self.wait_metrics(covered).await?;
        }
        let purged =
            |m: &openraft::RaftMetrics<TypeConfig>| m.purged.is_some_and(|p| p.index >= cut);
        if !purged(&self.raft.metrics().borrow_watched()) {
            self.raft.trigger().purge_log(cut).await.map_err(fatal)?;
            self.wait_metrics(purged).await?;
        }
        log.purge_raft(cut).await.map_err(|e| e.to_string())
    }

    async fn wait_metrics(
        &self,
        done: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.raft.metrics().borrow_watched()) {
            if Instant::now() >= deadline {
                return Err("Raft did not snapshot/purge within 10 s".into());
            }
            crate::io::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Publishes the group's Raft state (leader, term, indexes, follower lag) into `stats`
    /// whenever openraft's metrics change, until the group stops.
    pub async fn report_metrics(self, stats: std::rc::Rc<crate::stats::CoreStats>) {
        let mut rx = self.raft.metrics();
        let mut leader_changes = 0u64;
        let mut last_leader = None;
        loop {
            let state = {
                let m = rx.borrow_watched();
                if m.current_leader != last_leader {
                    if m.current_leader.is_some() {
                        leader_changes += 1;
                    }
                    last_leader = m.current_leader;
                }
                let last = m.last_log_index.unwrap_or(0);
                let follower_lag = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .filter(|(id, _)| **id != self.node_id)
                            .map(|(id, matched)| {
                                (*id, last.saturating_sub(matched.map_or(0, |l| l.index)))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                crate::stats::RaftState {
                    is_leader: m.state == ServerState::Leader,
                    term: m.current_term,
                    leader: m.current_leader,
                    last_log_index: last,
                    committed_index: m.local_committed.map_or(0, |c| c.index),
                    applied_index: m.last_applied.map_or(0, |a| a.index),
                    leader_changes,
                    takeover_elections: self.takeover_elections.get(),
                    takeover_votes_granted: self.takeover_votes_granted.get(),
                    follower_lag,
                }
            };
            stats.set_raft_state(self.partition, state);
            // At most ten reports a second: under load the metrics change with every entry.
            crate::io::sleep(Duration::from_millis(100)).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops the group and writes its Raft state out.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            log::warn!("partition {}: Raft shutdown: {e}", self.partition);
        }
        if let Err(e) = self.store.close().await {
            log::warn!("partition {}: saving Raft state: {e}", self.partition);
        }
    }
}
