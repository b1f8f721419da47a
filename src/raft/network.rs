//! The client side of Raft RPC: openraft's network traits over peer connections.
//!
//! - [`PeerPool`]: one per core (in an `Rc`), shared by every Raft group of that core. It keeps
//!   one pipelined TLS connection per target node address, to the *same core* of that node
//!   (preamble kind peer), presenting this node's own certificate. Any number of RPCs of any
//!   group are in flight on it at once (`client::Connection` matches answers by correlation
//!   id).
//! - [`PeerNetworkFactory`] (one per group: the pool and the partition) makes a
//!   [`PeerNetwork`] per target, which implements `RaftNetworkV2`: append_entries, vote,
//!   pre_vote, full_snapshot, transfer_leader.
//!
//! Failure handling, per target address (a decision table):
//!
//! | what happened                                      | what the RPC returns | next RPC      |
//! |----------------------------------------------------|----------------------|---------------|
//! | no answer within the RPC's timeout (below)         | `Timeout`            | same conn     |
//! | [`PEER_TIMEOUTS_IN_A_ROW_MAX`] timeouts in a row   | `Timeout`            | re-dial (*)   |
//! | and no answer for [`PEER_SILENCE_MS_MIN`]          |                      |               |
//! | a working connection broke                         | `Network`            | re-dial now   |
//! | dialing (TCP, preamble, TLS) failed                | `Unreachable`        | backoff (*)   |
//! | inside a backoff window                            | `Unreachable` at once| after window  |
//! | the peer answered with an error frame              | `Unreachable`        | same conn     |
//! | the answer does not decode                         | `Unreachable`        | same conn     |
//!
//! (*) Each failure without an answer in between doubles the wait before the next dial:
//! 0, [`PEER_BACKOFF_MS_MIN`], twice that, ... capped at [`PEER_BACKOFF_MS_MAX`]; any answer
//! resets it. A dead peer therefore costs one dial per window, and RPCs to it fail at once
//! with `Unreachable`, which makes openraft back off too. Remote errors map to `Unreachable`
//! because the network's error type leaves no room for a remote error (`RPCError<C,
//! Infallible>`): an unknown partition, a group that is not replicated there or stopped.
//!
//! Timeouts, per RPC. Only a timeout that fires here counts toward a re-dial: openraft wraps
//! some RPCs in a timer of its own at `option.hard_ttl()` and drops the call when it fires,
//! and a dropped call counts nothing. Those RPCs therefore time out here at
//! `option.soft_ttl()` (3/4 of `hard_ttl`, as openraft asks of a network), a quarter before
//! openraft's. At `hard_ttl` as well, ours was armed microseconds after openraft's and was
//! counted only because both usually expire in the same pass of the reactor, where the
//! runtime's timeout (src/raft/rt.rs) polls the wrapped call first: a race won in practice,
//! not a guarantee. Heartbeats are what carries a silent connection's timeouts while the
//! cluster is idle (tests/cluster.rs, `a_silent_connection_to_an_idle_follower_is_re_dialed`).
//!
//! | RPC                              | our timeout                 | openraft's own timer     |
//! |----------------------------------|-----------------------------|--------------------------|
//! | AppendEntries without entries    | `soft_ttl`                  | `hard_ttl` for heartbeats|
//! | (heartbeats, stream probes)      |                             | (heartbeat worker)       |
//! | vote, pre_vote, transfer_leader  | `soft_ttl`                  | `hard_ttl` (RaftCore)    |
//! | AppendEntries with entries       | `hard_ttl`, at least        | none (replication stream)|
//! |                                  | [`APPEND_ENTRIES_TTL_MS_MIN`] |                        |
//! | each snapshot chunk              | `hard_ttl`                  | none (`full_snapshot`)   |
//!
//! A probe of the replication stream is not wrapped, but it cannot be told from a heartbeat
//! here (both carry no entries), and `soft_ttl` is what openraft asks for anyway.
//!
//! Sizes: a request must fit the frame limit (`frame_bytes_max`, the same on every node of a
//! cluster). AppendEntries sends the longest prefix of its entries that fits and reports
//! `PartialSuccess` (openraft then sends the rest). A full snapshot is sent as chunks of whole
//! batches (docs/PROTOCOL.md, "Peer API"), each at most openraft's `snapshot_max_chunk_size`
//! and the frame limit, one chunk in flight at a time, each with the RPC's `hard_ttl` (openraft
//! sets no timer around `full_snapshot`, so nothing drops a chunk before ours fires); a single
//! batch too large for one frame fails the transfer with a message naming the limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;

use crate::client::{ClientConfig, ClientError, Connection};
use crate::net::errors::ServerError;
use crate::net::frame::{self, Request, Response};
use crate::net::preamble::ConnKind;
use crate::proto::RaftSnapshotRequest;
use crate::raft::types::{LogSnapshot, Node, NodeId, SnapshotReadError, TypeConfig, Vote};
use crate::raft::wire;
use crate::sync::Event;
use crate::types::Partition;

/// Time to dial a peer: TCP connect, then the TLS handshake, each.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// The wait before the second dial after failures; it doubles with each further failure.
pub const PEER_BACKOFF_MS_MIN: u64 = 50;
/// The longest wait between dials of an unreachable peer: bounds how late a restarted node
/// hears from its leader.
pub const PEER_BACKOFF_MS_MAX: u64 = 2_000;
/// RPC timeouts in a row, with no answer in between, after which the connection is presumed
/// dead (a silent network partition) and re-dialed, once it has also been silent for
/// [`PEER_SILENCE_MS_MIN`]. Only timeouts that fire here count: an RPC openraft drops at its
/// own `hard_ttl` counts nothing, which is why those time out here at `soft_ttl` (module doc).
pub const PEER_TIMEOUTS_IN_A_ROW_MAX: u32 = 3;
/// How long a connection must have answered nothing before timeouts re-dial it. A follower
/// answers an AppendEntries without entries (a heartbeat, a probe of the replication stream)
/// only once its earlier entries are durable, so on a slow disk (a 150 ms `fdatasync`) three
/// of them time out in a row (at 37.5 ms, the `soft_ttl` of the 50 ms heartbeat interval) on
/// a healthy connection; re-dialing it failed the entries in flight on it, and such a follower
/// never caught up.
pub const PEER_SILENCE_MS_MIN: u64 = 2_000;
/// Snapshot chunk size when openraft gives none (its own default `snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 3 << 20;
/// The wait before the second snapshot transfer to a target after one was refused (it was
/// too large for the target or for this node, or the target answered a chunk with an error);
/// it doubles with each further refusal in a row.
pub const SNAPSHOT_REFUSED_BACKOFF_MS_MIN: u64 = 1_000;
/// The longest wait between snapshot transfers a target keeps refusing.
pub const SNAPSHOT_REFUSED_BACKOFF_MS_MAX: u64 = 60_000;
/// The shortest time an AppendEntries that carries entries may take. openraft gives every
/// replication RPC the heartbeat interval (50 ms by default), but the follower answers only
/// once the entries are durable: a transfer, a write and an `fdatasync`, which a busy disk
/// stretches past 50 ms. Timed out, the same entries were read, encrypted and sent again
/// while the follower was still writing them, and three in a row re-dialed the connection
/// (failing every RPC on it). A follower that is gone is noticed by its connection closing;
/// this bounds only one that is alive but stuck. openraft's replication stream sets no timer
/// of its own around these, so nothing drops them before this fires. AppendEntries without
/// entries (heartbeats) get `soft_ttl` instead, below openraft's: the heartbeat worker drops
/// each at `hard_ttl` and sends the next one only after the last is answered or dropped.
pub const APPEND_ENTRIES_TTL_MS_MIN: u64 = 2_000;
/// The connection's own per-request timeout: only a backstop, every RPC has a shorter one.
const PEER_REQUEST_TIMEOUT_MS_BACKSTOP: u64 = 600_000;

/// One core's connections to its peers (see the module doc). Create one per core with
/// [`PeerPool::new`] and hand it to every group's [`PeerNetworkFactory`].
pub struct PeerPool {
    /// This core: every connection goes to the same core of the target node.
    core: u16,
    /// This node's Raft id, sent as `from_node`.
    node_id: NodeId,
    tls: Arc<rustls::ClientConfig>,
    frame_bytes_max: usize,
    /// The most bytes of one snapshot this node reads to send (`--snapshot-bytes-max`).
    snapshot_bytes_max: Cell<u64>,
    peers: RefCell<HashMap<String, Rc<Peer>>>,
    next_transfer_id: Cell<u64>,
}

impl PeerPool {
    /// A pool for core `core` of node `node_id`. `tls` is the node's client-side TLS config:
    /// its own node certificate (which carries clientAuth) and the cluster CA, i.e.
    /// `crate::net::tls::client_config(tls_dir, tls_name)` with the same dir and name the
    /// node serves with; build it once per node and share the `Arc` between cores.
    /// `frame_bytes_max` is the node's `--frame-bytes-max`.
    pub fn new(
        core: u16,
        node_id: NodeId,
        tls: Arc<rustls::ClientConfig>,
        frame_bytes_max: usize,
    ) -> Rc<PeerPool> {
        assert!(
            (frame::FRAME_BYTES_MAX_MIN..=frame::FRAME_BYTES_MAX_LIMIT).contains(&frame_bytes_max),
            "frame_bytes_max = {frame_bytes_max} is outside the validated config range"
        );
        Rc::new(PeerPool {
            core,
            node_id,
            tls,
            frame_bytes_max,
            snapshot_bytes_max: Cell::new(crate::net::conn::SNAPSHOT_BYTES_MAX_DEFAULT),
            peers: RefCell::new(HashMap::new()),
            // Distinct from transfers of an earlier run of this node on a reused connection.
            next_transfer_id: Cell::new(crate::io::now_ms() as u64),
        })
    }

    /// [`PeerPool::new`], building the TLS config from `tls_dir` and the node's certificate
    /// name (`NAME.pem`, `NAME-key.pem`, `ca.pem`).
    pub fn from_tls_dir(
        core: u16,
        node_id: NodeId,
        tls_dir: &Path,
        tls_name: &str,
        frame_bytes_max: usize,
    ) -> Result<Rc<PeerPool>, crate::net::tls::TlsError> {
        let tls = crate::net::tls::client_config(tls_dir, tls_name)?;
        Ok(PeerPool::new(core, node_id, tls, frame_bytes_max))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The most bytes of batches one snapshot this node sends may hold: it reads them into
    /// memory first. The node's `--snapshot-bytes-max` (default
    /// [`crate::net::conn::SNAPSHOT_BYTES_MAX_DEFAULT`]).
    pub fn set_snapshot_bytes_max(&self, bytes: u64) {
        self.snapshot_bytes_max.set(bytes);
    }

    /// Closes every connection (RPCs in flight fail). Later RPCs dial again.
    pub fn close_all(&self) {
        for peer in self.peers.borrow().values() {
            peer.close();
        }
    }

    /// The peer at `addr`, created on first use.
    fn peer(&self, addr: &str) -> Rc<Peer> {
        self.peers
            .borrow_mut()
            .entry(addr.to_string())
            .or_insert_with(|| Rc::new(Peer::new(addr.to_string())))
            .clone()
    }

    fn next_transfer_id(&self) -> u64 {
        let id = self.next_transfer_id.get();
        self.next_transfer_id.set(id.wrapping_add(1));
        id
    }
}

impl PeerPool {
    /// Asks node `target` (at `addr`) for its last log id in `partition`'s group, with a
    /// Pre-Vote that changes nothing there: `Ok(None)` when its log is empty. Used to find the
    /// most up-to-date voter after a leader is gone (src/raft/liveness.rs). The probe waits
    /// `ttl` for the answer: no timer of openraft's races it.
    pub async fn probe_last_log_id(
        self: &Rc<Self>,
        partition: Partition,
        target: NodeId,
        addr: &str,
        probe: VoteRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<Option<crate::raft::types::LogId>, String> {
        let network = PeerNetwork {
            peer: self.peer(addr),
            pool: self.clone(),
            partition,
            target,
            snapshot_refusals: 0,
            snapshot_retry_at: None,
            snapshot_refused_on: None,
        };
        network
            .send_vote(probe, ttl, true)
            .await
            .map(|resp| resp.last_log_id)
            .map_err(|e| e.to_string())
    }
}

/// Makes the network clients of one Raft group.
pub struct PeerNetworkFactory {
    pub pool: Rc<PeerPool>,
    pub partition: Partition,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        PeerNetwork {
            peer: self.pool.peer(&node.addr),
            pool: self.pool.clone(),
            partition: self.partition,
            target,
            snapshot_refusals: 0,
            snapshot_retry_at: None,
            snapshot_refused_on: None,
        }
    }
}

/// One group's RPC client for one target node.
pub struct PeerNetwork {
    pool: Rc<PeerPool>,
    peer: Rc<Peer>,
    partition: Partition,
    target: NodeId,
    /// Snapshot transfers refused in a row, when the next may start, and, when the target
    /// refused the last one, on which connection to it.
    snapshot_refusals: u32,
    snapshot_retry_at: Option<Instant>,
    snapshot_refused_on: Option<u64>,
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = LogSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Without entries, a heartbeat: openraft's heartbeat worker drops it at hard_ttl.
        let ttl = if rpc.entries.is_empty() {
            ttl_under_openraft_timer(&option)
        } else {
            entries_ttl(&option)
        };
        let mut request = wire::encode_append_request(
            self.partition.0,
            self.pool.node_id,
            &rpc,
            self.peer.takes_stored_batches(),
        );
        let truncated = fit_entries(&mut request, self.pool.frame_bytes_max)
            .map_err(|message| self.unreachable(&message))?;
        let last_sent = request
            .entries
            .last()
            .map(|e| crate::raft::types::log_id(e.term, e.index));
        let answer = self
            .call(Request::RaftAppend(request), ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::AppendEntries, ttl))?;
        let Response::RaftAppend(answer) = answer else {
            return Err(self.unexpected(&answer));
        };
        let (answer, stored_batches) =
            wire::decode_append_response(answer).map_err(|e| self.unreachable(&e.to_string()))?;
        self.peer.stored_batches_said(stored_batches);
        // The peer took every entry it was sent; openraft sends the rest next.
        Ok(match answer {
            AppendEntriesResponse::Success if truncated => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, ttl_under_openraft_timer(&option), false)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, ttl_under_openraft_timer(&option), true)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, LogSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.send_snapshot(vote, snapshot, &option);
        futures_lite::future::or(send, async { Err(StreamingError::Closed(cancel.await)) }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = ttl_under_openraft_timer(&option);
        let request =
            wire::encode_transfer_leader_request(self.partition.0, self.pool.node_id, &req);
        let answer = self
            .call(Request::RaftTransferLeader(request), ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::TransferLeader, ttl))?;
        let Response::RaftTransferLeader(answer) = answer else {
            return Err(self.unexpected(&answer));
        };
        wire::decode_transfer_leader_response(answer).map_err(|e| self.unreachable(&e.to_string()))
    }
}

impl PeerNetwork {
    /// Sends a Vote or Pre-Vote and waits at most `ttl` for the answer.
    async fn send_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
        ttl: Duration,
        pre_vote: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request =
            wire::encode_vote_request(self.partition.0, self.pool.node_id, &rpc, pre_vote);
        let answer = self
            .call(Request::RaftVote(request), ttl)
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::Vote, ttl))?;
        let Response::RaftVote(answer) = answer else {
            return Err(self.unexpected(&answer));
        };
        wire::decode_vote_response(answer).map_err(|e| self.unreachable(&e.to_string()))
    }

    /// Sends the snapshot ([`PeerNetwork::send_snapshot_once`]) unless a refused one is
    /// waiting out its backoff. A refusal will repeat (the snapshot is too large for the
    /// target or for this node, or the target finds a chunk bad), and each attempt reads the
    /// whole snapshot from disk and sends it up to the refusal, so attempts after one are
    /// spaced [`SNAPSHOT_REFUSED_BACKOFF_MS_MIN`], doubling up to
    /// [`SNAPSHOT_REFUSED_BACKOFF_MS_MAX`]; openraft's own retries in between fail at once,
    /// without reading anything. Each refusal is logged with the reason. A new connection to
    /// the target (it restarted, perhaps with a higher limit) ends the wait.
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, LogSnapshot>,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // A new connection may reach the target restarted with a higher limit: try at once.
        // (Not when this node refused: no connection changes its own limit.)
        if self
            .snapshot_refused_on
            .is_some_and(|on| on != self.peer.connections.get())
        {
            self.snapshot_retry_at = None;
        }
        if let Some(at) = self.snapshot_retry_at {
            let now = Instant::now();
            if now < at {
                return Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!(
                        "node {}, partition {}: the last {} snapshot transfer(s) were refused; the \
                     next starts in {} ms",
                        self.target,
                        self.partition.0,
                        self.snapshot_refusals,
                        (at - now).as_millis()
                    ),
                )));
            }
        }
        match self.send_snapshot_once(vote, snapshot, option).await {
            Ok(done) => {
                self.snapshot_refusals = 0;
                self.snapshot_retry_at = None;
                Ok(done)
            }
            Err(SnapshotFailure::Refused { reason, by_target }) => {
                self.snapshot_refusals = self.snapshot_refusals.saturating_add(1);
                let wait = snapshot_refused_backoff(self.snapshot_refusals);
                self.snapshot_retry_at = Some(Instant::now() + wait);
                self.snapshot_refused_on = by_target.then(|| self.peer.connections.get());
                log::warn!(
                    "partition {}: snapshot for node {} refused ({} in a row): {reason}; next \
                     attempt in {} ms",
                    self.partition.0,
                    self.target,
                    self.snapshot_refusals,
                    wait.as_millis()
                );
                Err(StreamingError::Unreachable(Unreachable::from_string(
                    reason,
                )))
            }
            Err(SnapshotFailure::Other(e)) => Err(e),
        }
    }

    /// Sends the snapshot as chunks, one in flight at a time; the last chunk's answer is the
    /// receiver's vote after installing. Chunk 0 declares the snapshot's size, so a receiver
    /// with a lower limit refuses it before any batch travels.
    async fn send_snapshot_once(
        &self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, LogSnapshot>,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, SnapshotFailure> {
        // Each chunk gets the whole hard_ttl: openraft sets no timer around full_snapshot
        // (its snapshot transmitter awaits it unbounded), so nothing drops a chunk before ours
        // fires, and soft_ttl would only cut a large chunk's time short.
        let ttl = option.hard_ttl();
        let frame_bytes_max = self.pool.frame_bytes_max;
        let chunk_bytes_max = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK_BYTES_DEFAULT)
            .clamp(1, frame_bytes_max);
        let transfer_id = self.pool.next_transfer_id();
        let end_offset = snapshot.snapshot.end_offset;
        let batches = snapshot
            .snapshot
            .into_batches_at_most(self.pool.snapshot_bytes_max.get())
            .await
            .map_err(|e| {
                let reason = format!(
                    "node {}, partition {}: reading the snapshot to send: {e}",
                    self.target, self.partition.0
                );
                if let SnapshotReadError::TooLarge { .. } = e {
                    SnapshotFailure::Refused {
                        reason,
                        by_target: false,
                    }
                } else {
                    SnapshotFailure::Other(StreamingError::Unreachable(Unreachable::from_string(
                        reason,
                    )))
                }
            })?;
        let snapshot_bytes: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let mut batches = batches.into_iter().peekable();
        let mut chunk_index: u32 = 0;
        loop {
            let first = chunk_index == 0;
            let mut chunk = RaftSnapshotRequest {
                partition: self.partition.0,
                from_node: self.pool.node_id,
                transfer_id,
                chunk_index,
                vote: first.then(|| wire::encode_vote(&vote)),
                meta: first.then(|| wire::encode_snapshot_meta(&snapshot.meta)),
                batches: Vec::new(),
                last: false,
                end_offset: first.then_some(end_offset),
                snapshot_bytes: first.then_some(snapshot_bytes),
            };
            // Chunk 0 carries no batch when there are any: a receiver refuses a snapshot over
            // its limit by the declared size, before a batch travels.
            let chunk_bytes = if first && batches.peek().is_some() {
                frame::frame_bytes(&chunk)
            } else {
                fill_chunk(&mut chunk, &mut batches, chunk_bytes_max)
            };
            if chunk_bytes > frame_bytes_max {
                let batch = chunk.batches.first().map_or(0, |b| b.len());
                return Err(SnapshotFailure::Refused {
                    reason: format!(
                        "snapshot of partition {} for node {}: a batch of {batch} bytes needs a \
                         frame of {chunk_bytes} bytes, over the frame limit of \
                         {frame_bytes_max} bytes; raise --frame-bytes-max on every node",
                        self.partition.0, self.target
                    ),
                    by_target: false,
                });
            }
            let last = chunk.last;
            let answer =
                self.call(Request::RaftSnapshot(chunk), ttl)
                    .await
                    .map_err(|e| match e {
                        // A refusal of the transfer itself (too large, a damaged batch): it would
                        // be refused again. Other answers (UNAVAILABLE while the group starts, too
                        // many transfers at once) clear up, and openraft retries them as usual.
                        PeerError::Remote(err @ ServerError::BadRequest { .. }) => {
                            SnapshotFailure::Refused {
                                reason: format!(
                                    "node {} ({}), partition {}: answered snapshot chunk \
                                 {chunk_index} with {err}",
                                    self.target, self.peer.addr, self.partition.0
                                ),
                                by_target: true,
                            }
                        }
                        e => SnapshotFailure::Other(StreamingError::from(self.rpc_error(
                            e,
                            RPCTypes::InstallSnapshot,
                            ttl,
                        ))),
                    })?;
            let Response::RaftSnapshot(answer) = answer else {
                return Err(SnapshotFailure::Other(self.unexpected(&answer).into()));
            };
            match (last, wire::decode_snapshot_response(answer)) {
                (true, Some(done)) => return Ok(done),
                (false, None) => {}
                (true, None) | (false, Some(_)) => {
                    return Err(SnapshotFailure::Other(StreamingError::Unreachable(
                        Unreachable::from_string(format!(
                            "node {} answered snapshot chunk {chunk_index} of partition {} out of \
                             protocol (last = {last})",
                            self.target, self.partition.0
                        )),
                    )));
                }
            }
            chunk_index = chunk_index.checked_add(1).ok_or_else(|| {
                SnapshotFailure::Other(StreamingError::Unreachable(Unreachable::from_string(
                    "snapshot has more than u32::MAX chunks",
                )))
            })?;
        }
    }

    /// Sends one request and waits for its answer, at most `ttl` (dialing included).
    async fn call(&self, request: Request, ttl: Duration) -> Result<Response, PeerError> {
        let used: RefCell<Option<Rc<Connection>>> = RefCell::new(None);
        let attempt = async {
            let conn = self.peer.connection(&self.pool).await?;
            *used.borrow_mut() = Some(conn.clone());
            match conn.request(request).await {
                Ok(response) => {
                    self.peer.answered();
                    match response {
                        Response::Error(e) => {
                            Err(PeerError::Remote(ServerError::from_response(&e)))
                        }
                        other => Ok(other),
                    }
                }
                Err(ClientError::Timeout { .. }) => Err(PeerError::Timeout),
                Err(e) => {
                    self.peer.broken(&conn, e.to_string());
                    Err(PeerError::Broken(e.to_string()))
                }
            }
        };
        let outcome = futures_lite::future::or(async { Some(attempt.await) }, async {
            crate::io::sleep(ttl).await;
            None
        })
        .await;
        match outcome {
            Some(Err(PeerError::Timeout)) | None => {
                if let Some(conn) = used.borrow().as_ref() {
                    self.peer.timed_out(conn);
                }
                Err(PeerError::Timeout)
            }
            Some(result) => result,
        }
    }

    fn rpc_error(&self, e: PeerError, action: RPCTypes, ttl: Duration) -> RPCError<TypeConfig> {
        let partition = self.partition.0;
        let target = self.target;
        let addr = &self.peer.addr;
        match e {
            PeerError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.pool.node_id,
                target,
                timeout: ttl,
            }),
            PeerError::Broken(message) => RPCError::Network(NetworkError::from_string(format!(
                "node {target} ({addr}), partition {partition}: {message}"
            ))),
            PeerError::Unreachable(message) => self.unreachable(&message),
            PeerError::Remote(err) => self.unreachable(&format!("answered {err}")),
        }
    }

    fn unreachable(&self, message: &str) -> RPCError<TypeConfig> {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "node {} ({}), partition {}: {message}",
            self.target, self.peer.addr, self.partition.0
        )))
    }

    fn unexpected(&self, response: &Response) -> RPCError<TypeConfig> {
        self.unreachable(&format!(
            "answered with an unexpected {:?} frame",
            response.kind()
        ))
    }
}

/// Why one RPC got no usable answer, before it is mapped to openraft's errors.
#[derive(Debug)]
enum PeerError {
    Timeout,
    /// A working connection broke: retry at once.
    Broken(String),
    /// Dialing failed, or the peer is in its backoff window.
    Unreachable(String),
    /// The peer answered with an error frame.
    Remote(ServerError),
}

/// Drops entries from the end of `request` until its frame fits `frame_bytes_max`; returns
/// whether any were dropped. Fails when not even one entry (or the heartbeat) fits.
fn fit_entries(
    request: &mut crate::proto::RaftAppendRequest,
    frame_bytes_max: usize,
) -> Result<bool, String> {
    let mut bytes = frame::frame_bytes(request);
    let mut truncated = false;
    while bytes > frame_bytes_max && request.entries.len() > 1 {
        if let Some(entry) = request.entries.pop() {
            bytes -= prost::encoding::message::encoded_len(5, &entry);
            truncated = true;
        }
    }
    if bytes > frame_bytes_max {
        return Err(format!(
            "an AppendEntries frame of {bytes} bytes (one entry) exceeds the frame limit of \
             {frame_bytes_max} bytes; raise --frame-bytes-max on every node"
        ));
    }
    Ok(truncated)
}

/// Moves whole batches from `batches` into `chunk` until the next one would take its frame
/// over `chunk_bytes_max` (a chunk takes at least one batch, so every chunk makes progress),
/// sets `last` when none remain, and returns the chunk's frame size, which is over
/// `chunk_bytes_max` only when a single batch is.
fn fill_chunk(
    chunk: &mut RaftSnapshotRequest,
    batches: &mut std::iter::Peekable<std::vec::IntoIter<bytes::Bytes>>,
    chunk_bytes_max: usize,
) -> usize {
    // Counted as set, so that setting it below cannot grow the frame.
    chunk.last = true;
    let mut chunk_bytes = frame::frame_bytes(chunk);
    while let Some(batch) = batches.peek() {
        let batch_bytes = prost::encoding::bytes::encoded_len(7, batch);
        if !chunk.batches.is_empty() && chunk_bytes + batch_bytes > chunk_bytes_max {
            break;
        }
        chunk_bytes += batch_bytes;
        chunk.batches.extend(batches.next());
    }
    chunk.last = batches.peek().is_none();
    frame::frame_bytes(chunk)
}

/// Our timeout for an RPC that openraft bounds with a timer of its own at `hard_ttl`
/// (heartbeats, votes, pre-votes, leadership transfers; RaftCore and the heartbeat worker wrap
/// them): `soft_ttl`, so that ours fires first, by a margin, and the timeout is counted (module
/// doc, "Timeouts").
fn ttl_under_openraft_timer(option: &RPCOption) -> Duration {
    option.soft_ttl()
}

/// Our timeout for an AppendEntries carrying entries: openraft's replication stream sets no
/// timer around it, and the follower answers only once they are durable
/// ([`APPEND_ENTRIES_TTL_MS_MIN`]).
fn entries_ttl(option: &RPCOption) -> Duration {
    option
        .hard_ttl()
        .max(Duration::from_millis(APPEND_ENTRIES_TTL_MS_MIN))
}

/// Why a snapshot transfer failed.
enum SnapshotFailure {
    /// It will fail again as it is: too large for the target or for this node, or refused by
    /// the target (`by_target`). The next attempt waits ([`snapshot_refused_backoff`]).
    Refused { reason: String, by_target: bool },
    /// Anything else (a timeout, a broken connection, a snapshot that changed while it was
    /// read): openraft retries as for any RPC.
    Other(StreamingError<TypeConfig>),
}

/// The wait before the next snapshot transfer to a target after `refusals` in a row.
fn snapshot_refused_backoff(refusals: u32) -> Duration {
    let shift = refusals.saturating_sub(1).min(20);
    Duration::from_millis(
        (SNAPSHOT_REFUSED_BACKOFF_MS_MIN << shift).min(SNAPSHOT_REFUSED_BACKOFF_MS_MAX),
    )
}

/// The wait before dial number `failures + 1` after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let shift = (failures - 2).min(20);
    Duration::from_millis((PEER_BACKOFF_MS_MIN << shift).min(PEER_BACKOFF_MS_MAX))
}

/// One target address: its connection and its dial state.
struct Peer {
    addr: String,
    state: RefCell<PeerState>,
    /// Fires when a dial ends.
    dialed: Event,
    /// Failures (dials, breaks, timeout runs) since the last answer.
    failures: Cell<u32>,
    /// RPC timeouts since the last answer on the current connection.
    timeouts_in_a_row: Cell<u32>,
    /// When the current connection last answered (or was made).
    last_answer: Cell<Instant>,
    /// Connections made so far: a new one may reach a restarted node.
    connections: Cell<u64>,
    /// The connection (its number in `connections`) on which the peer last said it takes
    /// entries of kind STORED_BATCH. A new connection may reach a node restarted with another
    /// build: until it says so again, it is sent NORMAL entries, which every build takes.
    stored_batches_on: Cell<Option<u64>>,
}

enum PeerState {
    /// No connection: the next RPC dials.
    Idle,
    Dialing,
    Connected(Rc<Connection>),
    /// Dials wait until `until`; RPCs fail at once.
    BackingOff {
        until: Instant,
        error: String,
    },
}

impl Peer {
    fn new(addr: String) -> Peer {
        Peer {
            addr,
            state: RefCell::new(PeerState::Idle),
            dialed: Event::new(),
            failures: Cell::new(0),
            timeouts_in_a_row: Cell::new(0),
            last_answer: Cell::new(Instant::now()),
            connections: Cell::new(0),
            stored_batches_on: Cell::new(None),
        }
    }

    /// Whether to send records entries as the stored batches (kind STORED_BATCH).
    fn takes_stored_batches(&self) -> bool {
        self.stored_batches_on.get() == Some(self.connections.get())
    }

    /// An AppendEntries answer said whether the peer takes STORED_BATCH entries.
    fn stored_batches_said(&self, takes: bool) {
        self.stored_batches_on
            .set(takes.then(|| self.connections.get()));
    }

    /// The connection, dialing when there is none.
    /// One RPC dials at most once: when its own dial fails, it fails with the dial's error.
    async fn connection(self: &Rc<Self>, pool: &Rc<PeerPool>) -> Result<Rc<Connection>, PeerError> {
        let mut dialed = false;
        loop {
            let seen = self.dialed.generation();
            let broken = {
                let state = self.state.borrow();
                match &*state {
                    PeerState::Connected(conn) if !conn.is_closed() => return Ok(conn.clone()),
                    PeerState::Connected(conn) => Some(conn.clone()),
                    PeerState::Dialing => None,
                    PeerState::BackingOff { error, .. } if dialed => {
                        return Err(PeerError::Unreachable(error.clone()));
                    }
                    PeerState::BackingOff { until, error } if Instant::now() < *until => {
                        let left_ms = until.saturating_duration_since(Instant::now()).as_millis();
                        return Err(PeerError::Unreachable(format!(
                            "not dialing for another {left_ms} ms after: {error}"
                        )));
                    }
                    PeerState::Idle | PeerState::BackingOff { .. } => {
                        drop(state);
                        self.dial(pool);
                        dialed = true;
                        None
                    }
                }
            };
            if let Some(conn) = broken {
                // Broke while idle (the read loop saw it first).
                self.broken(&conn, "connection closed".to_string());
                continue;
            }
            self.dialed.wait(seen).await;
        }
    }

    /// Starts a dial in its own task, so that an RPC timing out does not abandon it.
    fn dial(self: &Rc<Self>, pool: &Rc<PeerPool>) {
        *self.state.borrow_mut() = PeerState::Dialing;
        let pool = pool.clone();
        let peer = self.clone();
        glommio::spawn_local(async move {
            let result = dial(&pool, &peer.addr).await;
            match result {
                Ok(conn) => {
                    peer.timeouts_in_a_row.set(0);
                    peer.last_answer.set(Instant::now());
                    peer.connections.set(peer.connections.get() + 1);
                    *peer.state.borrow_mut() = PeerState::Connected(Rc::new(conn));
                }
                Err(error) => {
                    log::debug!("dialing peer {} failed: {error}", peer.addr);
                    peer.fail(error);
                }
            }
            peer.dialed.notify();
        })
        .detach();
    }

    /// Counts a failure and starts the backoff window it earns.
    fn fail(&self, error: String) {
        let failures = self.failures.get().saturating_add(1);
        self.failures.set(failures);
        *self.state.borrow_mut() = PeerState::BackingOff {
            until: Instant::now() + backoff(failures),
            error,
        };
    }

    /// `conn` broke; counts once per connection, however many RPCs notice.
    fn broken(&self, conn: &Rc<Connection>, error: String) {
        let current =
            matches!(&*self.state.borrow(), PeerState::Connected(c) if Rc::ptr_eq(c, conn));
        if current {
            conn.close();
            self.fail(error);
        }
    }

    fn timed_out(&self, conn: &Rc<Connection>) {
        // A timeout on a connection already replaced says nothing about the current one.
        let current =
            matches!(&*self.state.borrow(), PeerState::Connected(c) if Rc::ptr_eq(c, conn));
        if !current {
            return;
        }
        let timeouts = self.timeouts_in_a_row.get().saturating_add(1);
        self.timeouts_in_a_row.set(timeouts);
        let silent = self.last_answer.get().elapsed();
        if timeouts >= PEER_TIMEOUTS_IN_A_ROW_MAX
            && silent >= Duration::from_millis(PEER_SILENCE_MS_MIN)
        {
            self.timeouts_in_a_row.set(0);
            log::warn!(
                "peer {}: {timeouts} RPCs in a row got no answer in time, none for {} ms; \
                 re-dialing",
                self.addr,
                silent.as_millis()
            );
            self.broken(
                conn,
                format!("{timeouts} RPCs in a row got no answer in time"),
            );
        }
    }

    fn answered(&self) {
        self.failures.set(0);
        self.timeouts_in_a_row.set(0);
        self.last_answer.set(Instant::now());
    }

    fn close(&self) {
        let mut state = self.state.borrow_mut();
        if let PeerState::Connected(conn) = &*state {
            conn.close();
            *state = PeerState::Idle;
        }
    }
}

/// TCP, preamble (peer, this core), TLS with the node's certificate. A `HOST:PORT` address is
/// looked up off this core ([`crate::net::addr::resolve`]) and its addresses tried in turn.
async fn dial(pool: &PeerPool, addr: &str) -> Result<Connection, String> {
    let resolved = crate::net::addr::resolve(addr)
        .await
        .map_err(|e| format!("peer {e}"))?;
    let mut last = String::new();
    for socket_addr in resolved.addrs {
        let config = ClientConfig {
            addr: socket_addr,
            tls: pool.tls.clone(),
            server_name: resolved.server_name.clone(),
            frame_bytes_max: pool.frame_bytes_max,
            request_timeout: Duration::from_millis(PEER_REQUEST_TIMEOUT_MS_BACKSTOP),
            connect_timeout: Duration::from_millis(PEER_CONNECT_TIMEOUT_MS),
        };
        match Connection::connect(&config, pool.core, ConnKind::Peer).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{RaftAppendRequest, RaftEntry, RaftEntryKind};
    use bytes::Bytes;

    #[test]
    fn refused_snapshots_wait_one_second_then_double_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9)
            .map(|n| snapshot_refused_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(
            snapshot_refused_backoff(u32::MAX),
            Duration::from_millis(SNAPSHOT_REFUSED_BACKOFF_MS_MAX)
        );
    }

    /// Regression: heartbeats, votes and leadership transfers timed out here at `hard_ttl`, the
    /// deadline at which openraft's own timer drops them, so whether a timeout counted toward
    /// a re-dial was a race between two timers. Ours now fires a quarter earlier.
    #[test]
    fn rpcs_openraft_drops_at_hard_ttl_time_out_here_first() {
        // The heartbeat interval, the election timeout minimum, a long one.
        for hard_ms in [50, 250, 10_000] {
            let option = RPCOption::new(Duration::from_millis(hard_ms));
            let ours = ttl_under_openraft_timer(&option);
            assert!(
                ours <= option.hard_ttl() * 4 / 5,
                "hard_ttl {hard_ms} ms: ours is {ours:?}, not clear of openraft's timer"
            );
            assert!(
                ours > option.hard_ttl() / 2,
                "hard_ttl {hard_ms} ms: {ours:?}"
            );
        }
    }

    #[test]
    fn append_entries_with_entries_wait_at_least_two_seconds_and_never_less_than_openraft() {
        let ms = |d: Duration| d.as_millis() as u64;
        let short = RPCOption::new(Duration::from_millis(50));
        assert_eq!(ms(entries_ttl(&short)), APPEND_ENTRIES_TTL_MS_MIN);
        let long = RPCOption::new(Duration::from_millis(5_000));
        assert_eq!(ms(entries_ttl(&long)), 5_000);
    }

    #[test]
    fn backoff_retries_once_at_once_then_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [0, 50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(
            backoff(u32::MAX),
            Duration::from_millis(PEER_BACKOFF_MS_MAX)
        );
    }

    fn append_with_entries(n: usize, body_bytes: usize) -> RaftAppendRequest {
        let mut body = Vec::new();
        body.extend_from_slice(&(body_bytes as u32 - 4).to_le_bytes());
        body.resize(body_bytes, 0xAB);
        RaftAppendRequest {
            partition: 1,
            from_node: 1,
            vote: None,
            prev_log_id: None,
            entries: (0..n as u64)
                .map(|i| RaftEntry {
                    term: 1,
                    index: i,
                    kind: RaftEntryKind::Normal as i32,
                    timestamp_ms: 1,
                    count: 1,
                    body: Bytes::from(body.clone()),
                    membership_json: Bytes::new(),
                    batch: Bytes::new(),
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn append_entries_that_fit_are_sent_whole() {
        let mut request = append_with_entries(10, 1000);
        assert_eq!(fit_entries(&mut request, 1 << 20), Ok(false));
        assert_eq!(request.entries.len(), 10);
    }

    #[test]
    fn append_entries_over_the_frame_limit_send_the_longest_prefix_that_fits() {
        let mut request = append_with_entries(10, 1000);
        assert_eq!(fit_entries(&mut request, 4500), Ok(true));
        assert!(frame::frame_bytes(&request) <= 4500);
        assert_eq!(request.entries.len(), 4);
        assert_eq!(request.entries.last().map(|e| e.index), Some(3));
        // One more entry would not have fit.
        assert!(frame::frame_bytes(&append_with_entries(5, 1000)) > 4500);
    }

    #[test]
    fn an_entry_too_large_for_any_frame_is_an_error_that_names_the_limit() {
        let mut request = append_with_entries(2, 5000);
        let err = fit_entries(&mut request, 4096).unwrap_err();
        assert!(
            err.contains("4096") && err.contains("--frame-bytes-max"),
            "{err}"
        );
    }

    /// The chunks `batches` is sent as: the number of batches in each, and their frame sizes.
    fn chunks(batches: Vec<Bytes>, chunk_bytes_max: usize) -> Vec<(usize, usize, bool)> {
        let mut batches = batches.into_iter().peekable();
        let mut out = Vec::new();
        loop {
            let mut chunk = RaftSnapshotRequest {
                chunk_index: out.len() as u32,
                ..RaftSnapshotRequest::default()
            };
            let bytes = fill_chunk(&mut chunk, &mut batches, chunk_bytes_max);
            assert_eq!(bytes, frame::frame_bytes(&chunk), "the size is the frame's");
            out.push((chunk.batches.len(), bytes, chunk.last));
            if chunk.last {
                return out;
            }
        }
    }

    #[test]
    fn a_snapshot_is_cut_into_chunks_of_whole_batches_within_the_chunk_size() {
        let batch = Bytes::from(vec![7u8; 600_000]);
        let got = chunks(vec![batch; 8], 3 << 20);
        let counts: Vec<_> = got.iter().map(|(n, _, last)| (*n, *last)).collect();
        assert_eq!(counts, [(5, false), (3, true)]);
        assert!(got.iter().all(|(_, bytes, _)| *bytes <= 3 << 20));
    }

    #[test]
    fn an_empty_snapshot_is_one_last_chunk() {
        assert_eq!(
            chunks(Vec::new(), 1 << 20),
            [(0, frame::FRAME_HEADER_BYTES + 2, true)]
        );
    }

    /// Stored batches go only to a peer that said, on the connection in use, that it takes
    /// them; a new connection (perhaps to a node restarted with another build) starts over.
    #[test]
    fn stored_batches_go_only_where_the_peer_said_so_on_this_connection() {
        let peer = Peer::new("127.0.0.1:1".into());
        assert!(!peer.takes_stored_batches(), "nothing said yet");
        peer.stored_batches_said(true);
        assert!(peer.takes_stored_batches());
        peer.connections.set(peer.connections.get() + 1);
        assert!(!peer.takes_stored_batches(), "said on another connection");
        peer.stored_batches_said(true);
        assert!(peer.takes_stored_batches());
        peer.stored_batches_said(false);
        assert!(
            !peer.takes_stored_batches(),
            "a build without them answered"
        );
    }

    #[test]
    fn a_batch_larger_than_the_chunk_size_travels_alone() {
        let small = Bytes::from(vec![1u8; 100]);
        let big = Bytes::from(vec![2u8; 5000]);
        let got = chunks(vec![small.clone(), big, small], 4096);
        let counts: Vec<_> = got.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(counts, [1, 1, 1]);
        assert!(
            got[1].1 > 4096,
            "the caller checks it against the frame limit"
        );
    }
}
