//! One client connection on its owner core: TLS, then pipelined frames.
//!
//! The reader decodes frames in order and admits at most `in_flight_max` requests at once
//! (a permit per request, returned once its response is written). A client that stops
//! reading responses therefore stops being read from: buffered memory stays bounded by
//! `in_flight_max` responses, and record-carrying responses (consume, subscribe events) also
//! share a per-connection byte budget (`OUTBOX_KIB_MAX`), reserved before the log is read. Produce requests are *submitted* to the log in read order (their
//! offsets are assigned before the next frame is read), so a connection's produces to one
//! partition keep their order; their acks are awaited concurrently.
//!
//! Connection rules (docs/PROTOCOL.md): a frame over the size limit or a malformed length gets
//! an error and the connection closes; an unknown kind or an invalid body gets BAD_REQUEST and
//! the connection stays.
//!
//! Peer connections (preamble kind peer) carry only Raft frames, client connections only client
//! frames; the other side's kinds get BAD_REQUEST. Every peer frame needs the `replicate` right
//! on the cluster. A peer request names its Raft group by partition; the group must live on
//! this core ([`Shard::raft_group`]), otherwise it is answered UNKNOWN_PARTITION, WRONG_CORE, or
//! UNAVAILABLE ("not replicated here"). Raft calls run in their own tasks holding the
//! request's permit, so many RPCs of many groups are in flight on one connection. A snapshot
//! arrives as chunks (docs/PROTOCOL.md, "Peer API"), assembled per partition on the connection
//! that carries them, bounded by `--snapshot-bytes-max` ([`SNAPSHOT_BYTES_MAX_DEFAULT`]) and
//! [`SNAPSHOT_TRANSFERS_MAX`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};

use crate::io::net::TcpIo;
use crate::net::acl::{Action, Object};
use crate::net::errors;
use crate::net::frame::{self, FrameDecoder, FrameError, Request, Response};
use crate::net::preamble::ConnKind;
use crate::net::tls::{Identity, peer_identity};
use crate::proto::{
    ConsumeRequest, ConsumeResponse, ErrorResponse, GetServersResponse, MetadataResponse,
    ProduceRequest, ProduceResponse, RaftAppendRequest, RaftSnapshotRequest, RaftSnapshotResponse,
    RaftTransferLeaderRequest, RaftVoteRequest, Record as WireRecord, Server,
    SubscribeCancelResponse, SubscribeEvent, SubscribeRequest,
};
use crate::raft::types::{LogSnapshot, Raft, Vote};
use crate::raft::wire::{self, SnapshotMeta};
use crate::shard::Shard;
use crate::stats::Op;
use crate::storage::{BatchMeta, Log, Record};
use crate::sync::Event;
use crate::types::{Offset, Partition};

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a leader asked to leave waits for another voter to take over.
const LEAVE_HAND_OFF_MS: u64 = 3_000;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Frames at least this large get a read buffer of their own (see `Connection::read_loop`);
/// smaller ones share one, which whatever is kept of them keeps alive.
pub(crate) const OWN_BUFFER_MIN_BYTES: usize = 64 << 10;
/// How far a client connection's read buffer may be allocated ahead of the bytes received:
/// a frame header alone (which may announce up to `--frame-bytes-max`) buys no more than
/// this. Peers (authenticated nodes) get buffers of the announced size at once.
pub(crate) const CLIENT_BUFFER_AHEAD_MAX_BYTES: usize = 1 << 20;
/// Consume/subscribe responses are capped below the frame limit by this much headroom.
const RESPONSE_OVERHEAD_BYTES: usize = 64 << 10;
/// Default `max_bytes` of a consume or subscribe that gives 0.
const CONSUME_BYTES_DEFAULT: usize = 1 << 20;
/// Longest long-poll a consume may ask for.
const CONSUME_WAIT_MS_MAX: u32 = 60_000;
/// Subscriptions one connection may hold open.
pub const SUBSCRIPTIONS_MAX: usize = 64;
/// Credits a subscription may hold (events queued ahead of the client).
const SUBSCRIBE_CREDITS_MAX: u32 = 1024;
/// Bytes of record-carrying responses (consume, subscribe events) one connection may have
/// read from the log and not yet written to the socket, in KiB. Bounds a connection's memory
/// by bytes, not only by request count: a client that never reads stops being served.
const OUTBOX_KIB_MAX: u64 = 64 * 1024;
/// Default bytes of batches one snapshot transfer may assemble in memory
/// (`--snapshot-bytes-max`). The whole snapshot is held until it is installed (`LogSnapshot`
/// is in memory), so this bounds one transfer's memory.
pub const SNAPSHOT_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Snapshot transfers one peer connection may assemble at once (one per partition).
pub const SNAPSHOT_TRANSFERS_MAX: usize = 16;

/// The size of a new read buffer for a frame of `total` bytes of which `buffered` are in a
/// buffer of `capacity`, or `None` to keep reading into that one. The buffer may run at most
/// `ahead_max` past the bytes received; within that it is the frame's size. Otherwise a
/// buffer of the frame's own (larger than the shared [`READ_CHUNK_BYTES`] one) is filled,
/// then replaced by one at least twice as large, so the copies of a frame that outgrows its
/// buffers add up to less than the frame itself.
fn own_buffer_bytes(
    total: usize,
    buffered: usize,
    capacity: usize,
    ahead_max: usize,
) -> Option<usize> {
    let target = total.min(buffered.saturating_add(ahead_max));
    if capacity >= target || (capacity > READ_CHUNK_BYTES && buffered < capacity) {
        return None;
    }
    Some(target.max(capacity.saturating_mul(2)).min(total))
}

/// Serves a connection accepted on, or handed to, this core.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, kind: ConnKind) {
    let _ = stream.set_nodelay(true);
    let stopping = match kind {
        ConnKind::Peer => shard.peers_stopped(),
        ConnKind::Client => shard.is_shutting_down(),
    };
    if stopping {
        return;
    }
    let acceptor = futures_rustls::TlsAcceptor::from(shard.node.server_tls.clone());
    let handshake = futures_lite::future::or(
        async { Some(acceptor.accept(TcpIo::new(stream)).await) },
        async {
            crate::io::sleep(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS)).await;
            None
        },
    )
    .await;
    let tls = match handshake {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            log::info!("TLS handshake failed: {e}");
            shard.stats.record_error("tls_handshake");
            return;
        }
        None => {
            shard.stats.record_error("tls_handshake_timeout");
            return;
        }
    };
    let identity = match tls.get_ref().1.peer_certificates().map(peer_identity) {
        Some(Ok(identity)) => identity,
        _ => {
            shard.stats.record_error("no_client_identity");
            return;
        }
    };
    let (reader, writer) = tls.split();
    let conn = Rc::new(Connection {
        shard: shard.clone(),
        identity,
        kind,
        in_flight: Rc::new(Semaphore::new(shard.node.config.in_flight_max as u64)),
        outbox_budget: Rc::new(Semaphore::new(OUTBOX_KIB_MAX)),
        outbox: RefCell::new(VecDeque::new()),
        outbox_ready: Event::new(),
        closing: Cell::new(false),
        finished: Cell::new(false),
        subscriptions: RefCell::new(HashMap::new()),
        snapshots: RefCell::new(HashMap::new()),
        peer_node: Cell::new(None),
    });
    shard.connections.set(shard.connections.get() + 1);
    let peer = kind == ConnKind::Peer;
    if peer {
        shard.peer_connections.set(shard.peer_connections.get() + 1);
    }
    shard.stats.connection_opened();
    let writer_task = glommio::spawn_local(write_loop(conn.clone(), writer));
    if shard.connections.get() > shard.connections_max() {
        shard.stats.record_error("connection_limit");
        conn.send_error(
            frame::CORRELATION_ID_CONNECTION,
            errors::overloaded(format!(
                "connection limit of {} reached on this core; retry later",
                shard.connections_max()
            )),
            None,
        );
    } else {
        conn.clone().read_loop(reader).await;
    }
    conn.finish().await;
    let _ = writer_task.await;
    shard.connections.set(shard.connections.get() - 1);
    if peer {
        shard.peer_connections.set(shard.peer_connections.get() - 1);
        if let Some(node) = conn.peer_node.get()
            && shard.peer_liveness.closed(node)
        {
            shard.peer_gone(node);
        }
    }
    shard.stats.connection_closed();
    shard.connection_closed.notify();
}

/// A response frame waiting to be written, with the permit it releases once written.
struct Outgoing {
    frame: Bytes,
    _permit: Option<StaticPermit>,
    _budget: Option<StaticPermit>,
}

struct Connection {
    shard: Rc<Shard>,
    identity: Identity,
    kind: ConnKind,
    in_flight: Rc<Semaphore>,
    /// KiB of record data queued for the socket (see [`OUTBOX_KIB_MAX`]).
    outbox_budget: Rc<Semaphore>,
    outbox: RefCell<VecDeque<Outgoing>>,
    outbox_ready: Event,
    /// No more reading; the writer ends once the outbox is empty and requests are done.
    closing: Cell<bool>,
    /// Every admitted request has answered: the writer may end once the outbox is empty.
    finished: Cell<bool>,
    subscriptions: RefCell<HashMap<u32, Rc<Subscription>>>,
    /// Snapshot transfers in progress on this (peer) connection, by partition.
    snapshots: RefCell<HashMap<u32, SnapshotAssembly>>,
    /// Peer connections: the node whose requests this connection carries (the `from_node` of
    /// its first request), counted in the core's `peer_liveness` while it is open.
    peer_node: Cell<Option<u64>>,
}

/// The chunks of one snapshot transfer received so far.
struct SnapshotAssembly {
    transfer_id: u64,
    /// The chunk index expected next.
    next_chunk: u32,
    vote: Vote,
    meta: SnapshotMeta,
    end_offset: u64,
    batches: Vec<Bytes>,
    /// The batches' headers, to check the whole snapshot before openraft sees it.
    headers: Vec<crate::storage::format::Header>,
    bytes: u64,
}

struct Subscription {
    credits: Cell<u32>,
    changed: Event,
    cancelled: Cell<bool>,
}

impl Connection {
    async fn read_loop<R: AsyncRead + Unpin>(self: Rc<Self>, mut reader: R) {
        let mut decoder = FrameDecoder::new(self.shard.node.config.frame_bytes_max as usize);
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let Ok(permit) = self.in_flight.clone().acquire_static_permit(1).await
                        else {
                            return;
                        };
                        if !self.clone().dispatch(frame, permit).await {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.shard.stats.record_error(frame_error_kind(&e));
                        let fatal = e.is_fatal();
                        self.send_error(e.correlation_id(), errors::from_frame_error(&e), None);
                        if fatal {
                            return;
                        }
                    }
                }
            }
            // A large frame is read into a buffer of its own, of exactly its size, and no read
            // goes past its end. Its bytes may live long after it is handled (a follower's log
            // keeps the leader's batches, slices of the frame, in its tail cache); in the shared
            // read buffer that forced a new allocation, and a copy of what was buffered, on
            // almost every read. A client's buffer grows towards that size with the bytes
            // received (`own_buffer_bytes`).
            let limit = match decoder.incomplete_frame_bytes(&buf) {
                Some(total) if total >= OWN_BUFFER_MIN_BYTES => {
                    let ahead_max = match self.kind {
                        ConnKind::Peer => usize::MAX,
                        ConnKind::Client => CLIENT_BUFFER_AHEAD_MAX_BYTES,
                    };
                    if let Some(bytes) =
                        own_buffer_bytes(total, buf.len(), buf.capacity(), ahead_max)
                    {
                        let mut own = BytesMut::with_capacity(bytes);
                        own.extend_from_slice(&buf);
                        buf = own;
                    }
                    (total - buf.len())
                        .min(buf.capacity() - buf.len())
                        .min(READ_CHUNK_BYTES)
                }
                _ => {
                    if buf.capacity() == 0 {
                        buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
                    }
                    READ_CHUNK_BYTES
                }
            };
            let chunk = &mut chunk[..limit];
            let read = futures_lite::future::or(async { Some(reader.read(chunk).await) }, async {
                // Clients stop being read when the shutdown begins; peers only once the
                // Raft groups have stopped.
                if self.kind == ConnKind::Peer {
                    let seen = self.shard.peers_stop.generation();
                    if !self.shard.peers_stopped() {
                        self.shard.peers_stop.wait(seen).await;
                    }
                } else {
                    let seen = self.shard.shutdown.generation();
                    if !self.shard.is_shutting_down() {
                        self.shard.shutdown.wait(seen).await;
                    }
                }
                None
            })
            .await;
            match read {
                Some(Ok(0)) | Some(Err(_)) | None => return,
                Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Handles one request. Produce submits inline (ordering); everything that waits runs in
    /// its own task holding the request's permit. Returns false when the connection must
    /// close (a request on the reserved correlation id 0).
    async fn dispatch(self: Rc<Self>, frame: frame::Frame, permit: StaticPermit) -> bool {
        let corr = frame.correlation_id;
        let request = match frame::decode_request(&frame) {
            Ok(r) => r,
            Err(e) => {
                self.shard.stats.record_error(frame_error_kind(&e));
                self.send_error(
                    e.correlation_id(),
                    errors::from_frame_error(&e),
                    Some(permit),
                );
                return !e.is_fatal();
            }
        };
        if self.kind == ConnKind::Peer {
            self.dispatch_peer(corr, request, permit).await;
            return true;
        }
        let kind = request.kind();
        if kind.is_peer() {
            self.shard.stats.record_error("bad_frame_kind");
            let err = errors::bad_request(format!(
                "frame kind {kind:?} (0x{:02x}) is a peer frame; it is accepted only on peer \
                 connections",
                kind as u8
            ));
            self.send_error(corr, err, Some(permit));
            return true;
        }
        match request {
            Request::Produce(req) => self.produce(corr, req, permit).await,
            Request::Consume(req) => {
                glommio::spawn_local(self.consume(corr, req, permit)).detach();
            }
            Request::Subscribe(req) => self.subscribe(corr, req, permit),
            Request::SubscribeCredit(credit) => {
                drop(permit);
                if let Some(sub) = self.subscriptions.borrow().get(&corr) {
                    let credits = sub
                        .credits
                        .get()
                        .saturating_add(credit.credits)
                        .min(SUBSCRIBE_CREDITS_MAX);
                    sub.credits.set(credits);
                    sub.changed.notify();
                }
            }
            Request::SubscribeCancel(_) => {
                if let Some(sub) = self.subscriptions.borrow_mut().remove(&corr) {
                    sub.cancelled.set(true);
                    sub.changed.notify();
                }
                self.send(
                    corr,
                    Response::SubscribeCancel(SubscribeCancelResponse {}),
                    Some(permit),
                );
            }
            Request::Metadata(_) => {
                glommio::spawn_local(self.metadata(corr, permit)).detach();
            }
            Request::GetServers(_) => {
                glommio::spawn_local(self.get_servers(corr, permit)).detach();
            }
            Request::Join(req) => {
                glommio::spawn_local(self.join(corr, req, permit)).detach();
            }
            Request::Leave(req) => {
                glommio::spawn_local(self.leave(corr, req, permit)).detach();
            }
            Request::RaftAppend(_)
            | Request::RaftVote(_)
            | Request::RaftSnapshot(_)
            | Request::RaftTransferLeader(_) => {
                unreachable!("peer kinds were refused above on a client connection")
            }
        }
        true
    }

    /// Handles one request of a peer connection: only peer requests, from a peer with the
    /// replicate right.
    async fn dispatch_peer(self: Rc<Self>, corr: u32, request: Request, permit: StaticPermit) {
        // Peers authenticate like anyone else and need the replicate right (a node certificate
        // by default).
        let (object, action) = (Object::Cluster, Action::Replicate);
        if !self
            .shard
            .node
            .policy
            .allows(&self.identity, object, action)
        {
            self.shard.stats.record_error("unauthorized");
            let err = errors::unauthorized(action.as_str(), &object.to_string());
            self.send_error(corr, err, Some(permit));
            return;
        }
        let from_node = match &request {
            Request::RaftAppend(r) => Some(r.from_node),
            Request::RaftVote(r) => Some(r.from_node),
            Request::RaftSnapshot(r) => Some(r.from_node),
            Request::RaftTransferLeader(r) => Some(r.from_node),
            _ => None,
        };
        if let Some(node) = from_node
            && self.peer_node.get().is_none()
        {
            self.peer_node.set(Some(node));
            self.shard.peer_liveness.opened(node);
        }
        match request {
            Request::RaftAppend(req) => self.raft_append(corr, req, permit),
            Request::RaftVote(req) => self.raft_vote(corr, req, permit),
            Request::RaftSnapshot(req) => self.raft_snapshot_chunk(corr, req, permit).await,
            Request::RaftTransferLeader(req) => self.raft_transfer_leader(corr, req, permit),
            Request::Produce(_)
            | Request::Consume(_)
            | Request::Subscribe(_)
            | Request::SubscribeCredit(_)
            | Request::SubscribeCancel(_)
            | Request::Metadata(_)
            | Request::GetServers(_)
            | Request::Join(_)
            | Request::Leave(_) => {
                self.shard.stats.record_error("bad_frame_kind");
                let kind = request.kind();
                let err = errors::bad_request(format!(
                    "frame kind {kind:?} (0x{:02x}) is not a peer frame; a peer connection \
                     carries only peer frames",
                    kind as u8
                ));
                self.send_error(corr, err, Some(permit));
            }
        }
    }

    /// The Raft group of `partition` on this core; answers the request when there is none.
    fn raft_group(
        &self,
        corr: u32,
        partition: u32,
        permit: &mut Option<StaticPermit>,
    ) -> Option<Raft> {
        let p = Partition(partition);
        if partition >= self.shard.node.partitions {
            self.shard.stats.record_error("unknown_partition");
            self.send_error(corr, errors::unknown_partition(p), permit.take());
            return None;
        }
        let owner = self.shard.node.owner_core(p);
        if owner != self.shard.core {
            self.shard.stats.record_error("wrong_core");
            self.send_error(corr, errors::wrong_core(p, owner as u32), permit.take());
            return None;
        }
        let group = self.shard.raft_group(p);
        if group.is_none() {
            self.shard.stats.record_error("not_replicated");
            let err = errors::unavailable(format!(
                "partition {partition} is not replicated here: no Raft group for it on core {} \
                 of node {}",
                self.shard.core, self.shard.node.config.node_id
            ));
            self.send_error(corr, err, permit.take());
            return None;
        }
        // A group stopped by a storage failure answers from here, not through openraft.
        let stopped = group.as_ref().and_then(crate::raft::group::stopped);
        if let Some(fatal) = stopped {
            self.raft_fatal(corr, partition, &fatal, permit.take());
            return None;
        }
        group
    }

    /// A peer request whose body does not map to openraft's types.
    fn bad_peer_body(&self, corr: u32, e: &wire::WireError, permit: Option<StaticPermit>) {
        self.shard.stats.record_error("bad_body");
        self.send_error(corr, errors::bad_request(e.to_string()), permit);
    }

    /// The Raft group stopped (openraft's `Fatal`): it answers no more RPCs.
    fn raft_fatal(
        &self,
        corr: u32,
        partition: u32,
        e: &dyn std::fmt::Display,
        permit: Option<StaticPermit>,
    ) {
        self.shard.stats.record_error("raft_stopped");
        let err = errors::unavailable(format!(
            "the Raft group of partition {partition} on node {} has stopped: {e}",
            self.shard.node.config.node_id
        ));
        self.send_error(corr, err, permit);
    }

    fn raft_append(self: Rc<Self>, corr: u32, req: RaftAppendRequest, permit: StaticPermit) {
        let mut permit = Some(permit);
        let partition = req.partition;
        let Some(raft) = self.raft_group(corr, partition, &mut permit) else {
            return;
        };
        let legacy = self.shard.node.config.legacy_replication;
        if legacy
            && let Some(entry) = req
                .entries
                .iter()
                .find(|e| e.kind == crate::proto::RaftEntryKind::StoredBatch as i32)
        {
            // What a node built before the kind answers.
            let e = wire::WireError::UnknownEnumValue {
                message: "RaftEntry",
                field: "kind",
                value: entry.kind,
            };
            return self.bad_peer_body(corr, &e, permit);
        }
        let rpc = match wire::decode_append_request(req) {
            Ok(rpc) => rpc,
            Err(e) => return self.bad_peer_body(corr, &e, permit),
        };
        glommio::spawn_local(async move {
            match raft.append_entries(rpc).await {
                Ok(resp) => {
                    let resp = wire::encode_append_response(&resp, !legacy);
                    self.send(corr, Response::RaftAppend(resp), permit);
                }
                Err(e) => self.raft_fatal(corr, partition, &e, permit),
            }
        })
        .detach();
    }

    fn raft_vote(self: Rc<Self>, corr: u32, req: RaftVoteRequest, permit: StaticPermit) {
        let mut permit = Some(permit);
        let partition = req.partition;
        let Some(raft) = self.raft_group(corr, partition, &mut permit) else {
            return;
        };
        let (mut rpc, pre_vote) = match wire::decode_vote_request(req) {
            Ok(decoded) => decoded,
            Err(e) => return self.bad_peer_body(corr, &e, permit),
        };
        // Our leader's process is gone (src/raft/liveness.rs): its lease protects nothing.
        let mut takeover = false;
        if !pre_vote && !rpc.leadership_transfer && self.shard.leader_gone(Partition(partition)) {
            log::info!(
                "partition {partition}: vote for node {} counts as a takeover: the leader \
                 closed every peer connection",
                rpc.vote.leader_id.voted_for
            );
            rpc.leadership_transfer = true;
            takeover = true;
        }
        glommio::spawn_local(async move {
            let answer = if pre_vote {
                raft.pre_vote(rpc).await
            } else {
                raft.vote(rpc).await
            };
            match answer {
                Ok(resp) => {
                    if takeover
                        && resp.vote_granted
                        && let Some(group) = self.shard.group(Partition(partition))
                    {
                        group.count_takeover_vote();
                    }
                    let resp = wire::encode_vote_response(&resp);
                    self.send(corr, Response::RaftVote(resp), permit);
                }
                Err(e) => self.raft_fatal(corr, partition, &e, permit),
            }
        })
        .detach();
    }

    fn raft_transfer_leader(
        self: Rc<Self>,
        corr: u32,
        req: RaftTransferLeaderRequest,
        permit: StaticPermit,
    ) {
        let mut permit = Some(permit);
        let partition = req.partition;
        let Some(raft) = self.raft_group(corr, partition, &mut permit) else {
            return;
        };
        // A stopping node takes no leadership (a balancing or hand-off transfer from a peer
        // that has not seen it stop): it would only have to hand it on, or die with it. From
        // the signal on, through its own hand-off, not only once the shard drains.
        let stopping = self.shard.node.shutting_down() || self.shard.is_shutting_down();
        if req.to_node_id == self.shard.node.config.node_id && stopping {
            let err = errors::unavailable(format!(
                "node {} is stopping: it takes no leadership of partition {partition}",
                self.shard.node.config.node_id
            ));
            return self.send_error(corr, err, permit);
        }
        let rpc = match wire::decode_transfer_leader_request(req) {
            Ok(rpc) => rpc,
            Err(e) => return self.bad_peer_body(corr, &e, permit),
        };
        glommio::spawn_local(async move {
            match raft.handle_transfer_leader(rpc).await {
                Ok(resp) => {
                    let resp = wire::encode_transfer_leader_response(&resp);
                    self.send(corr, Response::RaftTransferLeader(resp), permit);
                }
                Err(e) => self.raft_fatal(corr, partition, &e, permit),
            }
        })
        .detach();
    }

    /// Adds one chunk to the partition's snapshot transfer, inline so chunks apply in the
    /// order they were read; the last chunk installs the snapshot in its own task.
    async fn raft_snapshot_chunk(
        self: Rc<Self>,
        corr: u32,
        req: RaftSnapshotRequest,
        permit: StaticPermit,
    ) {
        let mut permit = Some(permit);
        let partition = req.partition;
        let Some(raft) = self.raft_group(corr, partition, &mut permit) else {
            self.snapshots.borrow_mut().remove(&partition);
            return;
        };
        if let Err(message) = self.add_snapshot_chunk(&req).await {
            self.snapshots.borrow_mut().remove(&partition);
            self.shard.stats.record_error("bad_snapshot_chunk");
            self.send_error(corr, errors::bad_request(message), permit);
            return;
        }
        if !req.last {
            let ack = RaftSnapshotResponse { vote: None };
            self.send(corr, Response::RaftSnapshot(ack), permit);
            return;
        }
        let Some(done) = self.snapshots.borrow_mut().remove(&partition) else {
            unreachable!("add_snapshot_chunk keeps the transfer it accepted a chunk for");
        };
        let snapshot = openraft::Snapshot {
            meta: done.meta,
            snapshot: LogSnapshot {
                source: None,
                batches: done.batches,
                end_offset: done.end_offset,
            },
        };
        glommio::spawn_local(async move {
            match raft.install_full_snapshot(done.vote, snapshot).await {
                Ok(resp) => {
                    let resp = wire::encode_snapshot_response(&resp);
                    self.send(corr, Response::RaftSnapshot(resp), permit);
                }
                Err(e) => self.raft_fatal(corr, partition, &e, permit),
            }
        })
        .detach();
    }

    /// The most bytes of batches this node assembles for one snapshot transfer.
    fn snapshot_bytes_max(&self) -> u64 {
        self.shard
            .node
            .config
            .replication
            .as_ref()
            .map_or(SNAPSHOT_BYTES_MAX_DEFAULT, |r| r.snapshot_bytes_max)
    }

    /// Checks a chunk against the transfer in progress and keeps its batches; the error is
    /// the BAD_REQUEST message.
    async fn add_snapshot_chunk(&self, req: &RaftSnapshotRequest) -> Result<(), String> {
        let partition = req.partition;
        if req.chunk_index == 0 {
            let vote = wire::decode_vote(req.vote, "RaftSnapshotRequest", "vote")
                .map_err(|e| e.to_string())?;
            let meta = wire::decode_snapshot_meta(req.meta.clone()).map_err(|e| e.to_string())?;
            let end_offset = req.end_offset.ok_or_else(|| {
                "RaftSnapshotRequest chunk 0 has no end_offset, which is required".to_string()
            })?;
            let max = self.snapshot_bytes_max();
            if let Some(bytes) = req.snapshot_bytes.filter(|b| *b > max) {
                return Err(format!(
                    "the snapshot of partition {partition} is {bytes} bytes, over the {max} bytes \
                     a node assembles for one transfer (--snapshot-bytes-max)"
                ));
            }
            let mut snapshots = self.snapshots.borrow_mut();
            if !snapshots.contains_key(&partition) && snapshots.len() >= SNAPSHOT_TRANSFERS_MAX {
                return Err(format!(
                    "at most {SNAPSHOT_TRANSFERS_MAX} snapshot transfers per connection"
                ));
            }
            // A new transfer for the partition replaces an unfinished one.
            snapshots.insert(
                partition,
                SnapshotAssembly {
                    transfer_id: req.transfer_id,
                    next_chunk: 0,
                    vote,
                    meta,
                    end_offset,
                    batches: Vec::new(),
                    headers: Vec::new(),
                    bytes: 0,
                },
            );
        }
        // Batches are checked (length, CRC) here, so that a damaged snapshot is refused as a bad
        // request instead of failing the install, which openraft treats as a fatal storage
        // error of the group.
        let mut headers = Vec::with_capacity(req.batches.len());
        for (i, batch) in req.batches.iter().enumerate() {
            match crate::storage::format::validate_batch(batch) {
                Ok(header) if header.length as usize != batch.len() => {
                    return Err(format!(
                        "snapshot chunk {} of partition {partition}: batch {i} is {} bytes, \
                         its header says {}: each element must be exactly one batch",
                        req.chunk_index,
                        batch.len(),
                        header.length
                    ));
                }
                Ok(header) => headers.push(header),
                Err(e) => {
                    return Err(format!(
                        "snapshot chunk {} of partition {partition}: batch {i} is damaged: {e}",
                        req.chunk_index
                    ));
                }
            }
            glommio::yield_if_needed().await;
        }
        let mut snapshots = self.snapshots.borrow_mut();
        let Some(assembly) = snapshots.get_mut(&partition) else {
            return Err(format!(
                "snapshot chunk {} of transfer {} for partition {partition} arrived without \
                 chunk 0 of that transfer",
                req.chunk_index, req.transfer_id
            ));
        };
        if assembly.transfer_id != req.transfer_id || assembly.next_chunk != req.chunk_index {
            return Err(format!(
                "snapshot chunk {} of transfer {} for partition {partition} does not continue \
                 the transfer in progress (transfer {}, expecting chunk {})",
                req.chunk_index, req.transfer_id, assembly.transfer_id, assembly.next_chunk
            ));
        }
        let bytes: u64 = req.batches.iter().map(|b| b.len() as u64).sum();
        assembly.bytes = assembly.bytes.saturating_add(bytes);
        let max = self.snapshot_bytes_max();
        if assembly.bytes > max {
            return Err(format!(
                "the snapshot of partition {partition} exceeds the {max} bytes a node \
                 assembles for one transfer (--snapshot-bytes-max)"
            ));
        }
        assembly.batches.extend(req.batches.iter().cloned());
        assembly.headers.extend(headers);
        assembly.next_chunk = assembly.next_chunk.saturating_add(1);
        if req.last {
            crate::raft::types::check_snapshot_batches(
                &assembly.headers,
                assembly.meta.last_log_id.map(|l| l.index),
                assembly.end_offset,
            )
            .map_err(|e| format!("snapshot of partition {partition}: {e}"))?;
        }
        Ok(())
    }

    /// Checks the ACL and that this core owns the partition; answers the request when not.
    fn admit(
        &self,
        corr: u32,
        partition: u32,
        action: Action,
        permit: &mut Option<StaticPermit>,
    ) -> Option<Log> {
        let p = Partition(partition);
        let object = Object::Partition(partition);
        if !self
            .shard
            .node
            .policy
            .allows(&self.identity, object, action)
        {
            self.shard.stats.record_error("unauthorized");
            let err = errors::unauthorized(action.as_str(), &object.to_string());
            self.send_error(corr, err, permit.take());
            return None;
        }
        if partition >= self.shard.node.partitions {
            self.shard.stats.record_error("unknown_partition");
            self.send_error(corr, errors::unknown_partition(p), permit.take());
            return None;
        }
        match self.shard.logs.get(&p) {
            Some(log) => Some(log.clone()),
            None => {
                self.shard.stats.record_error("wrong_core");
                let owner = self.shard.node.owner_core(p) as u32;
                self.send_error(corr, errors::wrong_core(p, owner), permit.take());
                None
            }
        }
    }

    async fn produce(self: Rc<Self>, corr: u32, req: ProduceRequest, permit: StaticPermit) {
        let start = Instant::now();
        let mut permit = Some(permit);
        let Some(log) = self.admit(corr, req.partition, Action::Produce, &mut permit) else {
            return;
        };
        if let Some(group) = self.shard.group(Partition(req.partition)) {
            self.produce_replicated(corr, req, group, log, permit, start);
            return;
        }
        let meta = BatchMeta {
            timestamp_ms: crate::io::now_ms(),
            term: 0,
            raft_index: 0,
        };
        let bytes: u64 = req.records.iter().map(|r| r.len() as u64).sum();
        let count = req.records.len() as u32;
        let ticket = match log.submit_batch(&req.records, meta).await {
            Ok(t) => t,
            Err(e) => {
                self.storage_error(corr, &e, permit);
                return;
            }
        };
        let partition = Partition(req.partition);
        glommio::spawn_local(async move {
            match ticket.durable().await {
                Ok(base) => {
                    let stats = &self.shard.stats;
                    stats.record_latency_since(Op::Produce, Some(partition), start);
                    stats.record_in(partition, u64::from(count), bytes);
                    let resp = ProduceResponse {
                        base_offset: base.get(),
                        record_count: count,
                    };
                    self.send(corr, Response::Produce(resp), permit);
                }
                Err(e) => self.storage_error(corr, &e, permit),
            }
        })
        .detach();
    }

    /// Produce to a replicated partition: through Raft; acknowledged once a majority has the
    /// batch durable and it is applied here.
    fn produce_replicated(
        self: Rc<Self>,
        corr: u32,
        req: ProduceRequest,
        group: crate::raft::group::Group,
        log: Log,
        permit: Option<StaticPermit>,
        start: Instant,
    ) {
        if req.records.is_empty() {
            self.send_error(
                corr,
                errors::bad_request("a produce needs at least one record"),
                permit,
            );
            return;
        }
        let batch = crate::raft::types::RecordBatch::from_values(&req.records, crate::io::now_ms());
        let len = crate::storage::format::HEADER_BYTES + batch.body.len();
        if len > log.config().batch_bytes_max {
            let e = crate::Error::BatchTooLarge {
                bytes: len,
                max: log.config().batch_bytes_max,
            };
            self.storage_error(corr, &e, permit);
            return;
        }
        let bytes: u64 = req.records.iter().map(|r| r.len() as u64).sum();
        let count = req.records.len() as u32;
        let partition = Partition(req.partition);
        // Spawned tasks first run in spawn order, so a connection's produces reach Raft in
        // the order they were read.
        glommio::spawn_local(async move {
            match group.write(batch).await {
                Ok(base) => {
                    let stats = &self.shard.stats;
                    stats.record_latency_since(Op::Produce, Some(partition), start);
                    stats.record_in(partition, u64::from(count), bytes);
                    let resp = ProduceResponse {
                        base_offset: base.get(),
                        record_count: count,
                    };
                    self.send(corr, Response::Produce(resp), permit);
                }
                Err(e) => self.group_error(corr, &e, permit),
            }
        })
        .detach();
    }

    /// Answers a request a partition's Raft group refused.
    fn group_error(
        &self,
        corr: u32,
        e: &crate::raft::group::GroupError,
        permit: Option<StaticPermit>,
    ) {
        use crate::raft::group::GroupError;
        let err = match e {
            GroupError::NotLeader { leader } => {
                self.shard.stats.record_error("not_leader");
                match leader {
                    Some((id, addr)) => errors::not_leader(Some(&id.to_string()), Some(addr)),
                    None => errors::not_leader(None, None),
                }
            }
            GroupError::Unknown(m) | GroupError::Unavailable(m) => {
                self.shard.stats.record_error("raft_unavailable");
                errors::unavailable(m.clone())
            }
            GroupError::Invalid(m) => errors::bad_request(m.clone()),
        };
        self.send_error(corr, err, permit);
    }

    /// Admin: adds a node to a partition's Raft group (on its leader).
    async fn join(self: Rc<Self>, corr: u32, req: crate::proto::JoinRequest, permit: StaticPermit) {
        let mut permit = Some(permit);
        let Some(group) = self.admin_group(corr, req.partition, &mut permit) else {
            return;
        };
        // Checked here, before the group sees it: a learner at an address that cannot be
        // dialled would join the membership for good and the join would wait for it forever.
        let invalid = if req.node_id == 0 {
            Some("join needs a node_id ≥ 1, got 0".to_string())
        } else if !is_host_port(&req.addr) {
            Some(format!(
                "join needs the node's addr as HOST:PORT (an IP address or a DNS name, and a \
                 port 1-65535), got {:?}",
                req.addr
            ))
        } else {
            None
        };
        if let Some(message) = invalid {
            self.send_error(corr, errors::bad_request(message), permit);
            return;
        }
        let rf = self
            .shard
            .node
            .config
            .replication
            .as_ref()
            .map_or(1, |r| r.replication_factor);
        match group.add_node(req.node_id, &req.addr, rf).await {
            Ok(voter) => {
                log::info!(
                    "partition {}: node {} ({}) joined as a {}",
                    req.partition,
                    req.node_id,
                    req.addr,
                    if voter { "voter" } else { "learner" }
                );
                let resp = crate::proto::JoinResponse { voter };
                self.send(corr, Response::Join(resp), permit);
            }
            Err(e) => self.group_error(corr, &e, permit),
        }
    }

    /// Admin: removes a node from a partition's Raft group (on its leader).
    async fn leave(
        self: Rc<Self>,
        corr: u32,
        req: crate::proto::LeaveRequest,
        permit: StaticPermit,
    ) {
        let mut permit = Some(permit);
        let Some(group) = self.admin_group(corr, req.partition, &mut permit) else {
            return;
        };
        if req.node_id == 0 {
            let err = errors::bad_request("leave needs a node_id ≥ 1, got 0");
            self.send_error(corr, err, permit);
            return;
        }
        // A leader that is asked to remove itself hands leadership off first; the client
        // follows NOT_LEADER to the new leader, which removes it.
        if req.node_id == group.node_id && group.is_leader() {
            group
                .hand_off_leadership(Duration::from_millis(LEAVE_HAND_OFF_MS))
                .await;
            if !group.is_leader() {
                let err = match group.leader() {
                    Some((id, addr)) => errors::not_leader(Some(&id.to_string()), Some(&addr)),
                    None => errors::not_leader(None, None),
                };
                self.send_error(corr, err, permit);
                return;
            }
        }
        match group.remove_node(req.node_id).await {
            Ok(()) => {
                log::info!("partition {}: node {} left", req.partition, req.node_id);
                self.send(
                    corr,
                    Response::Leave(crate::proto::LeaveResponse {}),
                    permit,
                );
            }
            Err(e) => self.group_error(corr, &e, permit),
        }
    }

    /// The Raft group for an admin request: admin right, partition on this core, replicated.
    fn admin_group(
        &self,
        corr: u32,
        partition: u32,
        permit: &mut Option<StaticPermit>,
    ) -> Option<crate::raft::group::Group> {
        let (object, action) = (Object::Cluster, Action::Admin);
        if !self
            .shard
            .node
            .policy
            .allows(&self.identity, object, action)
        {
            self.shard.stats.record_error("unauthorized");
            let err = errors::unauthorized(action.as_str(), &object.to_string());
            self.send_error(corr, err, permit.take());
            return None;
        }
        self.admit(corr, partition, Action::Consume, permit)?;
        match self.shard.group(Partition(partition)) {
            Some(g) => Some(g),
            None => {
                let err = errors::bad_request(
                    "this node is standalone (not started with --cluster or --join)",
                );
                self.send_error(corr, err, permit.take());
                None
            }
        }
    }

    async fn consume(self: Rc<Self>, corr: u32, req: ConsumeRequest, permit: StaticPermit) {
        let start = Instant::now();
        let mut permit = Some(permit);
        let Some(log) = self.admit(corr, req.partition, Action::Consume, &mut permit) else {
            return;
        };
        if req.linearizable
            && let Some(group) = self.shard.group(Partition(req.partition))
            && let Err(e) = group.linearizable_barrier().await
        {
            self.group_error(corr, &e, permit);
            return;
        }
        let max_bytes = self.response_bytes_max(req.max_bytes);
        let Some(budget) = self.reserve_outbox(max_bytes).await else {
            return;
        };
        let offset = Offset(req.offset);
        let wait_ms = req.max_wait_ms.min(CONSUME_WAIT_MS_MAX);
        let mut records = log.read_from(offset, max_bytes).await;
        if matches!(&records, Ok(r) if r.is_empty()) && wait_ms > 0 {
            let stop_seen = self.shard.shutdown.generation();
            let waited =
                futures_lite::future::or(async { log.wait_for(offset).await.is_ok() }, async {
                    // A shutdown answers long-polls now (empty) instead of after max_wait.
                    let stop = async {
                        if !self.shard.is_shutting_down() {
                            self.shard.shutdown.wait(stop_seen).await;
                        }
                    };
                    let timeout = crate::io::sleep(Duration::from_millis(u64::from(wait_ms)));
                    futures_lite::future::or(stop, timeout).await;
                    false
                })
                .await;
            if waited {
                records = log.read_from(offset, max_bytes).await;
            }
        }
        match records {
            Ok(mut records) => {
                self.shard.apply_read_fault(&mut records);
                let partition = Partition(req.partition);
                let bytes: u64 = records.iter().map(|r| r.value.len() as u64).sum();
                let stats = &self.shard.stats;
                stats.record_out(partition, records.len() as u64, bytes);
                stats.record_latency_since(Op::Consume, Some(partition), start);
                let resp = ConsumeResponse {
                    records: to_wire(records),
                    high_watermark: log.durable_offset().get(),
                    log_start_offset: log.lowest_offset().get(),
                };
                self.send_budgeted(corr, Response::Consume(resp), permit, Some(budget));
            }
            Err(e) => self.storage_error(corr, &e, permit),
        }
    }

    /// Reserves outbox room for a response of up to `bytes` record bytes; `None` when the
    /// connection is closing.
    async fn reserve_outbox(&self, bytes: usize) -> Option<StaticPermit> {
        let kib = (bytes as u64).div_ceil(1024).clamp(1, OUTBOX_KIB_MAX);
        self.outbox_budget
            .clone()
            .acquire_static_permit(kib)
            .await
            .ok()
    }

    fn subscribe(self: &Rc<Self>, corr: u32, req: SubscribeRequest, permit: StaticPermit) {
        let mut permit = Some(permit);
        let Some(log) = self.admit(corr, req.partition, Action::Consume, &mut permit) else {
            return;
        };
        // A subscription holds no request permit: its credits bound what it queues.
        drop(permit);
        if self.subscriptions.borrow().len() >= SUBSCRIPTIONS_MAX {
            self.send_error(
                corr,
                errors::overloaded(format!(
                    "at most {SUBSCRIPTIONS_MAX} subscriptions per connection"
                )),
                None,
            );
            return;
        }
        let sub = Rc::new(Subscription {
            credits: Cell::new(req.credits.min(SUBSCRIBE_CREDITS_MAX)),
            changed: Event::new(),
            cancelled: Cell::new(false),
        });
        self.subscriptions.borrow_mut().insert(corr, sub.clone());
        let conn = self.clone();
        let max_bytes = self.response_bytes_max(req.max_bytes);
        let partition = Partition(req.partition);
        glommio::spawn_local(async move {
            conn.run_subscription(corr, log, partition, Offset(req.offset), max_bytes, sub)
                .await;
            conn.subscriptions.borrow_mut().remove(&corr);
        })
        .detach();
    }

    async fn run_subscription(
        &self,
        corr: u32,
        log: Log,
        partition: Partition,
        mut next: Offset,
        max_bytes: usize,
        sub: Rc<Subscription>,
    ) {
        loop {
            // Wait for a credit.
            loop {
                let seen = sub.changed.generation();
                let stop_seen = self.shard.shutdown.generation();
                if sub.cancelled.get() || self.closing.get() || self.shard.is_shutting_down() {
                    return;
                }
                if sub.credits.get() > 0 {
                    break;
                }
                futures_lite::future::or(
                    sub.changed.wait(seen),
                    self.shard.shutdown.wait(stop_seen),
                )
                .await;
            }
            let Some(budget) = self.reserve_outbox(max_bytes).await else {
                return;
            };
            // Wait for data.
            let mut records = loop {
                match log.read_from(next, max_bytes).await {
                    Ok(r) if r.is_empty() => {}
                    Ok(r) => break r,
                    Err(e) => {
                        if !sub.cancelled.get() && !self.closing.get() {
                            self.storage_error(corr, &e, None);
                        }
                        return;
                    }
                }
                let seen = sub.changed.generation();
                let stop_seen = self.shard.shutdown.generation();
                if sub.cancelled.get() || self.closing.get() || self.shard.is_shutting_down() {
                    return;
                }
                futures_lite::future::or(
                    async {
                        let _ = log.wait_for(next).await;
                    },
                    futures_lite::future::or(
                        sub.changed.wait(seen),
                        self.shard.shutdown.wait(stop_seen),
                    ),
                )
                .await;
            };
            // Nothing may follow the answer to a cancel (docs/PROTOCOL.md).
            if sub.cancelled.get() || self.closing.get() {
                return;
            }
            let start = Instant::now();
            next = records.last().map_or(next, |r| r.offset.plus(1));
            self.shard.apply_read_fault(&mut records);
            let bytes: u64 = records.iter().map(|r| r.value.len() as u64).sum();
            self.shard
                .stats
                .record_out(partition, records.len() as u64, bytes);
            sub.credits.set(sub.credits.get() - 1);
            let event = SubscribeEvent {
                records: to_wire(records),
                high_watermark: log.durable_offset().get(),
            };
            self.send_budgeted(corr, Response::SubscribeEvent(event), None, Some(budget));
            self.shard
                .stats
                .record_latency_since(Op::Subscribe, Some(partition), start);
            // Cached data can feed events back to back without an await that yields: let the
            // core's other tasks (acks, other connections) run between events.
            glommio::yield_if_needed().await;
        }
    }

    async fn metadata(self: Rc<Self>, corr: u32, permit: StaticPermit) {
        let start = Instant::now();
        let object = Object::Cluster;
        if !self
            .shard
            .node
            .policy
            .allows(&self.identity, object, Action::Consume)
        {
            let err = errors::unauthorized(Action::Consume.as_str(), &object.to_string());
            self.send_error(corr, err, Some(permit));
            return;
        }
        let partitions = self.shard.all_partition_infos().await;
        let resp = MetadataResponse {
            node_id: self.shard.node.config.node_id.to_string(),
            cores: self.shard.node.cores as u32,
            partitions,
        };
        self.send(corr, Response::Metadata(resp), Some(permit));
        self.shard
            .stats
            .record_latency_since(Op::Metadata, None, start);
    }

    async fn get_servers(self: Rc<Self>, corr: u32, permit: StaticPermit) {
        let start = Instant::now();
        let node = &self.shard.node;
        let servers = if node.config.replication.is_none() {
            vec![Server {
                id: node.config.node_id.to_string(),
                rpc_addr: node.listen.to_string(),
                is_leader: true,
                partitions_led: (0..node.partitions).collect(),
                partitions_voter: Vec::new(),
                partitions_learner: Vec::new(),
            }]
        } else {
            servers_from_partitions(&self.shard.all_partition_infos().await)
        };
        let resp = GetServersResponse { servers };
        self.send(corr, Response::GetServers(resp), Some(permit));
        self.shard
            .stats
            .record_latency_since(Op::GetServers, None, start);
    }

    fn response_bytes_max(&self, asked: u32) -> usize {
        let limit = (self.shard.node.config.frame_bytes_max as usize)
            .saturating_sub(RESPONSE_OVERHEAD_BYTES)
            .max(1024);
        match asked {
            0 => CONSUME_BYTES_DEFAULT.min(limit),
            n => (n as usize).min(limit),
        }
    }

    fn storage_error(&self, corr: u32, e: &crate::Error, permit: Option<StaticPermit>) {
        self.shard.stats.record_error(storage_error_kind(e));
        self.send_error(corr, errors::from_engine(e), permit);
    }

    fn send_error(&self, corr: u32, err: ErrorResponse, permit: Option<StaticPermit>) {
        self.send(corr, Response::Error(err), permit);
    }

    fn send(&self, corr: u32, response: Response, permit: Option<StaticPermit>) {
        self.send_budgeted(corr, response, permit, None);
    }

    fn send_budgeted(
        &self,
        corr: u32,
        response: Response,
        permit: Option<StaticPermit>,
        budget: Option<StaticPermit>,
    ) {
        let mut frame = BytesMut::with_capacity(response.frame_bytes());
        response.encode(corr, &mut frame);
        self.outbox.borrow_mut().push_back(Outgoing {
            frame: frame.freeze(),
            _permit: permit,
            _budget: budget,
        });
        self.outbox_ready.notify();
    }

    /// Stops reading, ends subscriptions, and waits for every admitted request to answer.
    async fn finish(&self) {
        self.closing.set(true);
        for sub in self.subscriptions.borrow().values() {
            sub.cancelled.set(true);
            sub.changed.notify();
        }
        // Every permit back means every request has queued its response and it was written.
        let all = self.shard.node.config.in_flight_max as u64;
        let _all_back = self.in_flight.acquire_permit(all).await;
        self.finished.set(true);
        self.outbox_ready.notify();
    }
}

/// Writes queued responses, many per write, until the connection is finished.
async fn write_loop<W: AsyncWrite + Unpin>(conn: Rc<Connection>, mut writer: W) {
    let mut buf = BytesMut::new();
    loop {
        let seen = conn.outbox_ready.generation();
        let batch: Vec<Outgoing> = conn.outbox.borrow_mut().drain(..).collect();
        if batch.is_empty() {
            if conn.finished.get() {
                break;
            }
            conn.outbox_ready.wait(seen).await;
            continue;
        }
        let frames = batch.iter().map(|out| &out.frame);
        if crate::net::write::write_frames(&mut writer, &mut buf, frames)
            .await
            .is_err()
        {
            // The peer is gone: drop what is queued (releasing permits) and stop.
            conn.closing.set(true);
            drop(batch);
            conn.outbox.borrow_mut().clear();
            break;
        }
        drop(batch);
    }
    let _ = writer.close().await;
}

fn to_wire(records: Vec<Record>) -> Vec<WireRecord> {
    records
        .into_iter()
        .map(|r| WireRecord {
            value: r.value,
            offset: r.offset.get(),
        })
        .collect()
}

fn frame_error_kind(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLarge { .. } => "frame_too_large",
        FrameError::Malformed { .. } => "malformed_frame",
        FrameError::UnknownKind { .. } | FrameError::UnexpectedKind { .. } => "bad_frame_kind",
        FrameError::BadBody { .. } => "bad_body",
        FrameError::ReservedCorrelationId { .. } => "reserved_correlation_id",
    }
}

fn storage_error_kind(e: &crate::Error) -> &'static str {
    use crate::Error::*;
    match e {
        OffsetOutOfRange { .. } => "offset_out_of_range",
        Corrupt { .. } => "corrupt",
        DiskFull { .. } => "disk_full",
        Io { .. } => "io",
        Stopped { .. } => "partition_stopped",
        BatchTooLarge { .. } => "batch_too_large",
        InvalidArgument(_) => "invalid_argument",
        Closed => "closed",
    }
}

/// A replicated cluster's servers as this node's partitions see them: every member of any
/// partition's group, with the partitions it leads, votes in, or follows as a learner.
fn servers_from_partitions(infos: &[crate::proto::PartitionInfo]) -> Vec<Server> {
    let mut servers: std::collections::BTreeMap<u64, Server> = std::collections::BTreeMap::new();
    for info in infos {
        for m in &info.members {
            let s = servers.entry(m.node_id).or_insert_with(|| Server {
                id: m.node_id.to_string(),
                rpc_addr: m.addr.clone(),
                ..Default::default()
            });
            if m.voter {
                s.partitions_voter.push(info.partition);
            } else {
                s.partitions_learner.push(info.partition);
            }
            if info.leader_id == m.node_id.to_string() {
                s.partitions_led.push(info.partition);
                s.is_leader = true;
            }
        }
    }
    servers.into_values().collect()
}

/// Whether a Join's `addr` is `HOST:PORT` as the other nodes dial it (src/raft/network.rs):
/// an IP address (IPv6 in brackets) or a DNS name, and a port 1-65535.
fn is_host_port(addr: &str) -> bool {
    if let Ok(socket_addr) = addr.parse::<std::net::SocketAddr>() {
        return socket_addr.port() != 0;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    matches!(port.parse::<u16>(), Ok(p) if p != 0)
        && host.parse::<std::net::IpAddr>().is_err()
        && rustls_pki_types::DnsName::try_from(host).is_ok()
}

#[cfg(test)]
mod tests {
    use super::{CLIENT_BUFFER_AHEAD_MAX_BYTES, is_host_port, own_buffer_bytes};

    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;

    #[test]
    fn a_frame_that_fits_is_read_where_it_is() {
        assert_eq!(own_buffer_bytes(64 * KIB, 10, 64 * KIB, usize::MAX), None);
        assert_eq!(own_buffer_bytes(100 * KIB, 60 * KIB, 100 * KIB, 0), None);
    }

    #[test]
    fn peers_and_frames_within_the_allowance_get_a_buffer_of_the_frame_size_at_once() {
        // A 16 MiB AppendEntries announced by its header: one buffer, one copy of the header.
        assert_eq!(
            own_buffer_bytes(16 * MIB, 20, 64 * KIB, usize::MAX),
            Some(16 * MIB)
        );
        // A 65 KiB produce from a client, in the shared 64 KiB buffer.
        assert_eq!(
            own_buffer_bytes(65 * KIB, 20, 64 * KIB, CLIENT_BUFFER_AHEAD_MAX_BYTES),
            Some(65 * KIB)
        );
    }

    /// A client's header announcing 16 MiB buys 1 MiB; the buffer then doubles as the bytes
    /// come, and every byte of the frame is copied fewer than two times in all.
    #[test]
    fn a_client_buffer_grows_with_the_bytes_received() {
        let total = 16 * MIB;
        let ahead = CLIENT_BUFFER_AHEAD_MAX_BYTES;
        assert_eq!(own_buffer_bytes(total, 20, 64 * KIB, ahead), Some(MIB + 20));
        let (mut capacity, mut buffered, mut copied, mut buffers) = (MIB + 20, 20, 20, 1);
        while buffered < total {
            match own_buffer_bytes(total, buffered, capacity, ahead) {
                Some(bytes) => {
                    assert_eq!(
                        buffered, capacity,
                        "a new buffer only once this one is full"
                    );
                    assert!(
                        bytes <= buffered + ahead.max(capacity),
                        "{bytes} ahead of {buffered}"
                    );
                    copied += buffered;
                    capacity = bytes;
                    buffers += 1;
                }
                None => buffered = (buffered + 64 * KIB).min(capacity),
            }
        }
        assert_eq!(capacity, total, "the last buffer is the frame's size");
        assert!(
            copied < total,
            "{copied} bytes copied for a {total}-byte frame"
        );
        assert!(buffers <= 6, "{buffers} buffers");
    }

    #[test]
    fn a_join_addr_is_an_ip_or_dns_name_and_a_nonzero_port() {
        for good in [
            "127.0.0.1:7400",
            "[::1]:7400",
            "localhost:7400",
            "node-3.corelog.internal:65535",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "::1:7400",
            ":7400",
            "host:",
            "host:port",
            "host:65536",
            "bad host:7400",
            " localhost:7400",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
        }
    }
}
