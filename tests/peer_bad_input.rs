//! Bad input on the peer (Raft) and admin (Join/Leave) paths of a replicated node: the real
//! `corelog serve --cluster --node-id 1` on loopback, with certificates made by `corelog
//! certs`.
//!
//! Each test starts a cluster of one (it leads its one partition), has a well-behaved client
//! produce some records, then sends bad requests the way a broken or hostile peer or operator
//! would: Raft snapshot chunks on a peer connection (preamble kind peer, the node certificate,
//! which has the `replicate` right), Join and Leave with the node certificate (which has
//! `admin`), oversized frames. It checks the answer docs/PROTOCOL.md promises (a typed error,
//! `BAD_REQUEST` with a message that names the problem; `FRAME_TOO_LARGE` then a close), that
//! `/stats` counts the refusals, that the Raft group was not disturbed (same leader, same term,
//! it still answers peer RPCs), and that the node still serves: a new record is acknowledged
//! and every record acknowledged before reads back at its offset, and nothing else is there.
//!
//! No snapshot sent here can be installed: every one is malformed, and the well-formed control
//! carries a vote of term 0, lower than the node's, which openraft refuses before installing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::node::{
    Acked, Ending, NodeProcess, RawConn, assert_still_serves, error_count, read_partition,
    seed_records, server_error,
};
use corelog::Offset;
use corelog::client::Client;
use corelog::net::errors::ServerError;
use corelog::net::frame::{Request, Response};
use corelog::net::preamble::ConnKind;
use corelog::proto::{
    JoinRequest, LeaveRequest, MetadataRequest, ProduceRequest, RaftLogId, RaftSnapshotMeta,
    RaftSnapshotRequest, RaftVote, RaftVoteRequest,
};
use corelog::raft::types::{Membership, Node};
use corelog::raft::wire;
use corelog::storage::BatchMeta;
use corelog::storage::format;

/// The node's id (`--node-id`).
const NODE_ID: u64 = 1;
/// The one partition of the test nodes.
const PARTITION: u32 = 0;
/// The `from_node` of the peer requests sent here: a node that is not a member, so nothing the
/// node does about its peers (liveness, leadership) concerns it.
const STRANGER: u64 = 2;
/// How long a fresh node may take to elect itself.
const READY: Duration = Duration::from_secs(30);
/// Frame kind bytes used raw.
const KIND_RAFT_SNAPSHOT: u8 = 0x42;
const KIND_PRODUCE: u8 = 0x01;

/// A replicated node of its own cluster (`--cluster --node-id 1`), one core, one partition,
/// certificates made by `corelog certs` in its test directory (removed after a passing test).
struct ClusterNode {
    node: NodeProcess,
    tls: PathBuf,
    _remove: common::RemoveOnSuccess,
}

impl ClusterNode {
    fn start(name: &str, extra: &[&str]) -> ClusterNode {
        ClusterNode::start_partitions(name, 1, extra)
    }

    /// A node of `partitions` partitions, all on its one core.
    fn start_partitions(name: &str, partitions: u32, extra: &[&str]) -> ClusterNode {
        let dir = common::test_dir(name);
        let tls = dir.join("tls");
        common::cluster::make_certs(&tls);
        let id = NODE_ID.to_string();
        let partitions = partitions.to_string();
        let mut args = vec![
            "--tls-dir",
            tls.to_str().unwrap(),
            "--tls-name",
            "node",
            "--node-id",
            &id,
            "--cluster",
            "--cores",
            "1",
            "--partitions",
            &partitions,
        ];
        args.extend_from_slice(extra);
        let node = NodeProcess::start(&dir.join("data"), &args);
        let node = ClusterNode {
            node,
            tls,
            _remove: common::RemoveOnSuccess(dir),
        };
        node.wait_until_leader();
        node
    }

    /// `/stats` → `raft` → partition 0.
    fn raft_state(&self) -> serde_json::Value {
        self.stats_json()["raft"][PARTITION.to_string()].clone()
    }

    fn wait_until_leader(&self) {
        let deadline = Instant::now() + READY;
        loop {
            let (status, _) = self.http_get("/health");
            if status == 200 && self.raft_state()["is_leader"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {NODE_ID} did not lead partition {PARTITION} within {READY:?}: {}",
                self.raft_state()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection of preamble `kind` presenting certificate `cert` of the cluster's CA.
    fn conn(&self, kind: ConnKind, cert: &str) -> RawConn {
        let tls = corelog::net::tls::client_config(&self.tls, cert).expect("TLS config");
        RawConn::open_kind(self.listen, kind, 0, tls).expect("connection")
    }

    /// A peer connection with the node certificate, as another node's Raft transport opens.
    fn peer(&self) -> Peer {
        Peer {
            conn: self.conn(ConnKind::Peer, "node"),
            next_corr: 1,
        }
    }

    /// A client connection with the node certificate: the `admin` right under the default
    /// policy.
    fn admin(&self) -> Peer {
        Peer {
            conn: self.conn(ConnKind::Client, "node"),
            next_corr: 1,
        }
    }

    /// The membership of the node's own group, as a snapshot's meta would carry it.
    fn membership_json(&self) -> Bytes {
        let membership = Membership::new(
            vec![BTreeSet::from([NODE_ID])],
            BTreeMap::from([(NODE_ID, Node::new(self.listen))]),
        )
        .expect("a valid membership");
        wire::encode_membership(&membership)
    }
}

impl Deref for ClusterNode {
    type Target = NodeProcess;
    fn deref(&self) -> &NodeProcess {
        &self.node
    }
}

/// A raw connection that numbers its requests.
struct Peer {
    conn: RawConn,
    next_corr: u32,
}

impl Peer {
    fn call(&mut self, request: Request) -> Response {
        let corr = self.next_corr;
        self.next_corr += 1;
        self.conn.call(corr, &request)
    }

    fn chunk(&mut self, chunk: RaftSnapshotRequest) -> Response {
        self.call(Request::RaftSnapshot(chunk))
    }
}

/// The Raft state of partition 0 that bad input must not change.
#[derive(Debug, PartialEq)]
struct RaftBefore {
    term: u64,
    leader_changes: u64,
}

impl RaftBefore {
    fn read(node: &ClusterNode) -> RaftBefore {
        let state = node.raft_state();
        assert_eq!(state["is_leader"], true, "{state}");
        RaftBefore {
            term: state["term"].as_u64().expect("term"),
            leader_changes: state["leader_changes"].as_u64().expect("leader_changes"),
        }
    }

    /// The node still leads partition 0 in the same term, without a leader change, and its
    /// group answers a Raft RPC on `peer`.
    fn assert_undisturbed(&self, node: &ClusterNode, peer: &mut Peer) {
        let state = node.raft_state();
        assert_eq!(state["is_leader"], true, "{state}");
        assert_eq!(state["leader"].as_u64(), Some(NODE_ID), "{state}");
        assert_eq!(RaftBefore::read(node), *self, "{state}");
        // A Pre-Vote changes nothing on the receiver; a stale one (term 0) is refused with
        // the receiver's own vote: the group is running and answers.
        let pre_vote = Request::RaftVote(RaftVoteRequest {
            partition: PARTITION,
            from_node: STRANGER,
            vote: Some(stale_vote()),
            last_log_id: None,
            leadership_transfer: false,
            pre_vote: true,
        });
        match peer.call(pre_vote) {
            Response::RaftVote(answer) => {
                assert!(!answer.vote_granted, "{answer:?}");
                let vote = answer.vote.expect("the receiver's vote");
                assert_eq!(
                    (vote.term, vote.node_id),
                    (self.term, NODE_ID),
                    "{answer:?}"
                );
                assert!(vote.committed, "{answer:?}");
                // `/stats` may lag the group by a report (100 ms), never lead it.
                let last = state["last_log_index"].as_u64().expect("last_log_index");
                let answered = answer.last_log_id.map(|l| l.index);
                assert!(answered.is_some_and(|i| i >= last), "{answer:?} {state}");
            }
            other => panic!("expected a vote answer, got {other:?}"),
        }
    }
}

/// A vote no node has: term 0 is below the term of any elected leader, so openraft refuses a
/// snapshot (or vote) that carries it.
fn stale_vote() -> RaftVote {
    RaftVote {
        term: 0,
        node_id: STRANGER,
        committed: false,
    }
}

/// One-record batches in storage format v1, made by corelog's own encoder: Raft index
/// `indexes[i]` (term 1) at offset `offsets[i]`.
fn batches(offsets: &[u64], indexes: &[u64]) -> Vec<Bytes> {
    assert_eq!(offsets.len(), indexes.len());
    offsets
        .iter()
        .zip(indexes)
        .map(|(&offset, &raft_index)| {
            let meta = BatchMeta {
                timestamp_ms: 1,
                term: 1,
                raft_index,
            };
            format::encode_batch(Offset(offset), &[format!("snapshot-{raft_index}")], meta)
        })
        .collect()
}

/// Chunk 0 of transfer `id` with every required field: the stale vote, a meta covering Raft
/// entries up to `last_index` (term 1; `None`: nothing) with `membership`, and `end_offset`.
fn first_chunk(
    id: u64,
    last_index: Option<u64>,
    end_offset: u64,
    batches: Vec<Bytes>,
    last: bool,
    membership: &Bytes,
) -> RaftSnapshotRequest {
    RaftSnapshotRequest {
        partition: PARTITION,
        from_node: STRANGER,
        transfer_id: id,
        chunk_index: 0,
        vote: Some(stale_vote()),
        meta: Some(RaftSnapshotMeta {
            last_log_id: last_index.map(|index| RaftLogId { term: 1, index }),
            membership_log_id: Some(RaftLogId { term: 1, index: 1 }),
            membership_json: membership.clone(),
        }),
        batches,
        last,
        end_offset: Some(end_offset),
        snapshot_bytes: None,
    }
}

/// Chunk `index` (≥ 1) of transfer `id`.
fn next_chunk(id: u64, index: u32, batches: Vec<Bytes>, last: bool) -> RaftSnapshotRequest {
    RaftSnapshotRequest {
        partition: PARTITION,
        from_node: STRANGER,
        transfer_id: id,
        chunk_index: index,
        vote: None,
        meta: None,
        batches,
        last,
        end_offset: None,
        snapshot_bytes: None,
    }
}

/// The answer to a chunk that is not the last: an empty acknowledgement.
fn expect_ack(response: Response, what: &str) {
    match response {
        Response::RaftSnapshot(ack) => assert!(ack.vote.is_none(), "{what}: {ack:?}"),
        other => panic!("{what}: expected an acknowledgement, got {other:?}"),
    }
}

/// `BAD_REQUEST` whose message contains every one of `needles`.
fn expect_bad_request(response: Response, what: &str, needles: &[&str]) {
    match server_error(&response) {
        ServerError::BadRequest { message } => {
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{what}: the message {message:?} does not say {needle:?}"
                );
            }
        }
        other => panic!("{what}: expected BAD_REQUEST, got {other:?}"),
    }
}

/// The node still serves (a new record on each partition is acknowledged and everything
/// acknowledged reads back) and each partition holds exactly its acknowledged records: no
/// snapshot replaced or extended a log.
fn assert_log_intact(node: &ClusterNode, acked: &mut Vec<Acked>, tag: &str) {
    assert_still_serves(node, acked, tag);
    let config = node.client_config("client");
    let partitions = node.partitions;
    let stored = common::run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        let mut stored = Vec::new();
        for p in 0..partitions {
            stored.push(read_partition(&client, p).await);
        }
        stored
    });
    for (p, stored) in stored.into_iter().enumerate() {
        let want: BTreeMap<u64, Bytes> = acked
            .iter()
            .filter(|a| a.partition == p as u32)
            .map(|a| (a.offset, a.value.clone()))
            .collect();
        assert_eq!(
            stored, want,
            "partition {p} holds exactly what was acknowledged"
        );
    }
}

#[test]
fn snapshot_chunks_that_do_not_continue_a_transfer_are_bad_request_and_install_nothing() {
    let node = ClusterNode::start("peer-snapshot-order", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let refused_before = error_count(&node, "bad_snapshot_chunk");
    let membership = node.membership_json();
    // The batches of a snapshot up to Raft index 4 ending at offset 3, one per chunk.
    let good = batches(&[0, 1, 2], &[2, 3, 4]);
    let first = |id: u64| first_chunk(id, Some(4), 3, good[..1].to_vec(), false, &membership);
    let mut peer = node.peer();

    // Chunk 1 with no chunk 0 before it (set `last`: it would end the transfer).
    let response = peer.chunk(next_chunk(10, 1, good[1..].to_vec(), true));
    expect_bad_request(
        response,
        "chunk 1 without chunk 0",
        &["chunk 1 of transfer 10", "without chunk 0"],
    );

    // Chunk 1 of another transfer than the one in progress.
    expect_ack(peer.chunk(first(11)), "chunk 0 of transfer 11");
    let response = peer.chunk(next_chunk(12, 1, good[1..].to_vec(), true));
    expect_bad_request(
        response,
        "chunk 1 of another transfer",
        &[
            "chunk 1 of transfer 12",
            "does not continue",
            "transfer 11, expecting chunk 1",
        ],
    );
    // That refusal abandoned transfer 11: its own chunk 1 now has no chunk 0.
    let response = peer.chunk(next_chunk(11, 1, good[1..].to_vec(), true));
    expect_bad_request(
        response,
        "chunk 1 of the abandoned transfer",
        &["chunk 1 of transfer 11", "without chunk 0"],
    );

    // A gap: chunk 2 right after chunk 0.
    expect_ack(peer.chunk(first(13)), "chunk 0 of transfer 13");
    let response = peer.chunk(next_chunk(13, 2, good[2..].to_vec(), true));
    expect_bad_request(
        response,
        "chunk 2 after chunk 0",
        &["chunk 2 of transfer 13", "expecting chunk 1"],
    );

    // A chunk sent twice.
    expect_ack(peer.chunk(first(14)), "chunk 0 of transfer 14");
    let second = next_chunk(14, 1, good[1..2].to_vec(), false);
    expect_ack(peer.chunk(second.clone()), "chunk 1 of transfer 14");
    expect_bad_request(
        peer.chunk(second),
        "chunk 1 again",
        &["chunk 1 of transfer 14", "expecting chunk 2"],
    );

    // Chunk 0 of a new transfer replaces the unfinished one: the old one cannot continue.
    expect_ack(peer.chunk(first(15)), "chunk 0 of transfer 15");
    expect_ack(peer.chunk(first(16)), "chunk 0 of transfer 16");
    let response = peer.chunk(next_chunk(15, 1, good[1..].to_vec(), true));
    expect_bad_request(
        response,
        "chunk 1 of the replaced transfer",
        &["chunk 1 of transfer 15", "transfer 16, expecting chunk 1"],
    );
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(refused, 6, "/stats counts each refused chunk");

    // A partition the node does not have.
    let mut elsewhere = first(17);
    elsewhere.partition = 7;
    elsewhere.last = true;
    assert_eq!(
        server_error(&peer.chunk(elsewhere)),
        ServerError::UnknownPartition {
            partition: corelog::Partition(7)
        }
    );

    // A peer frame from a certificate without the `replicate` right (a client certificate
    // under the default policy) is refused before it is looked at.
    let mut intruder = Peer {
        conn: node.conn(ConnKind::Peer, "client"),
        next_corr: 1,
    };
    let whole = first_chunk(18, Some(4), 3, good.clone(), true, &membership);
    assert_eq!(
        server_error(&intruder.chunk(whole)),
        ServerError::Unauthorized {
            action: "replicate".to_string(),
            object: "cluster".to_string()
        }
    );

    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-order");
}

#[test]
fn snapshot_chunk_0_without_its_vote_meta_or_end_offset_is_bad_request_naming_the_field() {
    let node = ClusterNode::start("peer-snapshot-chunk0", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let refused_before = error_count(&node, "bad_snapshot_chunk");
    let membership = node.membership_json();
    let good = batches(&[0, 1, 2], &[2, 3, 4]);
    // Complete but for the one thing each case takes away: `last` set, so a chunk that were
    // accepted would go to openraft.
    let whole = |id: u64| first_chunk(id, Some(4), 3, good.clone(), true, &membership);
    // Valid JSON of a membership whose voter is not among its nodes.
    let invalid_membership = {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&membership).expect("membership JSON");
        assert!(doc.get("nodes").is_some(), "{doc}");
        doc["nodes"] = serde_json::json!({});
        Bytes::from(serde_json::to_vec(&doc).expect("JSON"))
    };
    let with_membership = |id: u64, json: Bytes| {
        let mut chunk = whole(id);
        chunk.meta.as_mut().expect("meta").membership_json = json;
        chunk
    };
    let cases: Vec<(&str, RaftSnapshotRequest, &[&str])> = vec![
        (
            "no vote",
            RaftSnapshotRequest {
                vote: None,
                ..whole(20)
            },
            &["RaftSnapshotRequest has no vote", "required"],
        ),
        (
            "no meta",
            RaftSnapshotRequest {
                meta: None,
                ..whole(21)
            },
            &["RaftSnapshotRequest has no meta", "required"],
        ),
        (
            "no membership",
            with_membership(22, Bytes::new()),
            &["membership of a snapshot is not openraft membership JSON"],
        ),
        (
            "a membership that is not JSON",
            with_membership(23, Bytes::from_static(b"{\"configs\": [[1]")),
            &["membership of a snapshot is not openraft membership JSON"],
        ),
        (
            "a membership whose voter is no node",
            with_membership(24, invalid_membership),
            &["membership of a snapshot is not valid"],
        ),
        (
            "no end_offset",
            RaftSnapshotRequest {
                end_offset: None,
                ..whole(25)
            },
            &["chunk 0 has no end_offset", "required"],
        ),
    ];
    let count = cases.len() as u64;
    let mut peer = node.peer();
    for (what, chunk, needles) in cases {
        let id = chunk.transfer_id;
        expect_bad_request(peer.chunk(chunk), what, needles);
        // Nothing of the refused chunk 0 was kept.
        let response = peer.chunk(next_chunk(id, 1, Vec::new(), true));
        expect_bad_request(response, what, &["without chunk 0"]);
    }
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(refused, 2 * count, "/stats counts each refused chunk");

    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-chunk0");
}

#[test]
fn a_damaged_snapshot_batch_is_bad_request_and_abandons_the_transfer() {
    let node = ClusterNode::start("peer-snapshot-damaged", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let refused_before = error_count(&node, "bad_snapshot_chunk");
    let membership = node.membership_json();
    let good = batches(&[0, 1, 2], &[2, 3, 4]);
    let edit = |i: usize, f: &dyn Fn(&mut Vec<u8>)| -> Bytes {
        let mut bytes = good[i].to_vec();
        f(&mut bytes);
        Bytes::from(bytes)
    };
    // The last byte of the record value: only the CRC notices.
    let flipped_value = edit(1, &|b| *b.last_mut().unwrap() ^= 0x01);
    // A bit of the Raft index in the header (byte 40), also under the CRC.
    let flipped_index = edit(1, &|b| b[40] ^= 0x01);
    let truncated = edit(1, &|b| b.truncate(b.len() - 3));
    let wrong_version = edit(1, &|b| b[4] = 9);
    let cases: Vec<(&str, Bytes, &[&str])> = vec![
        (
            "a flipped value byte",
            flipped_value,
            &["checksum mismatch"],
        ),
        (
            "a flipped header byte",
            flipped_index,
            &["checksum mismatch"],
        ),
        ("a truncated batch", truncated, &["truncated"]),
        ("another format version", wrong_version, &["version 9"]),
        (
            "bytes that are no batch",
            Bytes::from(vec![b'x'; 80]),
            &["bad magic"],
        ),
        ("an empty batch", Bytes::new(), &["end of data"]),
    ];
    let count = cases.len() as u64;
    let mut peer = node.peer();
    for (n, (what, damaged, needles)) in cases.into_iter().enumerate() {
        let id = 30 + 2 * n as u64;
        // In chunk 0, as the second batch of a whole snapshot.
        let chunk = first_chunk(
            id,
            Some(4),
            3,
            vec![good[0].clone(), damaged.clone(), good[2].clone()],
            true,
            &membership,
        );
        let mut wanted = vec!["snapshot chunk 0 of partition 0: batch 1 is damaged"];
        wanted.extend_from_slice(needles);
        expect_bad_request(peer.chunk(chunk), what, &wanted);

        // In a later chunk: refused, and the transfer is abandoned.
        let id = id + 1;
        let chunk0 = first_chunk(id, Some(4), 3, good[..1].to_vec(), false, &membership);
        expect_ack(peer.chunk(chunk0), what);
        let chunk1 = next_chunk(id, 1, vec![damaged, good[2].clone()], true);
        let mut wanted = vec!["snapshot chunk 1 of partition 0: batch 0 is damaged"];
        wanted.extend_from_slice(needles);
        expect_bad_request(peer.chunk(chunk1), what, &wanted);
        let response = peer.chunk(next_chunk(id, 2, Vec::new(), true));
        expect_bad_request(response, what, &["without chunk 0"]);
    }
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(refused, 3 * count, "/stats counts each refused chunk");

    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-damaged");
}

/// A transfer that grows past `--snapshot-bytes-max` is refused at the chunk that crosses it
/// (the message names the limit and the flag) and dropped, so the node does not keep holding
/// its memory; a transfer within the limit on the same connection is still taken. A chunk 0
/// that declares a size over the limit (`snapshot_bytes`) is refused at once.
#[test]
fn a_snapshot_over_the_size_limit_is_bad_request_and_dropped() {
    const LIMIT: u64 = 1 << 20;
    let node = ClusterNode::start(
        "peer-snapshot-too-large",
        &["--snapshot-bytes-max", "1048576"],
    );
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let refused_before = error_count(&node, "bad_snapshot_chunk");
    let membership = node.membership_json();
    // Batches of ~256 KiB each (one record), dense offsets and Raft indexes from 2.
    let big = |offset: u64| -> Bytes {
        let meta = BatchMeta {
            timestamp_ms: 1,
            term: 1,
            raft_index: offset + 2,
        };
        format::encode_batch(Offset(offset), &[vec![b'v'; 256 << 10]], meta)
    };
    let mut peer = node.peer();
    let chunk0 = first_chunk(50, Some(9), 8, vec![big(0), big(1)], false, &membership);
    expect_ack(peer.chunk(chunk0), "chunk 0, ~512 KiB");
    let chunk1 = next_chunk(50, 1, vec![big(2)], false);
    expect_ack(peer.chunk(chunk1), "chunk 1, ~768 KiB in all");
    let chunk2 = next_chunk(50, 2, vec![big(3), big(4)], false);
    expect_bad_request(
        peer.chunk(chunk2),
        "chunk 2, past 1 MiB",
        &[
            "the snapshot of partition 0 exceeds the 1048576 bytes",
            "--snapshot-bytes-max",
        ],
    );
    // Dropped: its next chunk belongs to no transfer.
    let response = peer.chunk(next_chunk(50, 3, vec![big(5)], true));
    expect_bad_request(response, "chunk 3 after the refusal", &["without chunk 0"]);
    // A new transfer under the limit is assembled (and then refused by openraft for its stale
    // vote, which proves it got that far: a BAD_REQUEST would mean the limit still counted the
    // dropped transfer).
    let total: u64 = [big(0), big(1), big(2)]
        .iter()
        .map(|b| b.len() as u64)
        .sum();
    assert!(total < LIMIT);
    let fresh = first_chunk(
        51,
        Some(4),
        3,
        vec![big(0), big(1), big(2)],
        true,
        &membership,
    );
    match peer.chunk(fresh) {
        Response::RaftSnapshot(answer) => {
            let vote = answer.vote.expect("openraft answers with its own vote");
            assert_eq!(vote.node_id, NODE_ID, "{vote:?}");
        }
        other => panic!("a snapshot under the limit: expected openraft's answer, got {other:?}"),
    }
    // Chunk 0 that declares more than the limit is refused at once, before any batch: nothing
    // is assembled (its next chunk belongs to no transfer). One that declares less is taken.
    let declared = |id: u64, bytes: u64| RaftSnapshotRequest {
        snapshot_bytes: Some(bytes),
        ..first_chunk(id, Some(9), 8, Vec::new(), false, &membership)
    };
    expect_bad_request(
        peer.chunk(declared(52, LIMIT + 1)),
        "chunk 0 declaring 1 MiB + 1",
        &[
            "the snapshot of partition 0 is 1048577 bytes, over the 1048576 bytes",
            "--snapshot-bytes-max",
        ],
    );
    let response = peer.chunk(next_chunk(52, 1, vec![big(0)], false));
    expect_bad_request(
        response,
        "chunk 1 after a declared refusal",
        &["without chunk 0"],
    );
    expect_ack(peer.chunk(declared(53, LIMIT)), "chunk 0 declaring 1 MiB");
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(refused, 4, "/stats counts each refused chunk");
    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-too-large");
}

/// One peer connection assembles at most 16 transfers at once (one per partition): chunk 0 of
/// a 17th is refused naming the limit; another connection may still start one, and finishing
/// or dropping a transfer frees its place.
#[test]
fn a_seventeenth_snapshot_transfer_on_one_connection_is_bad_request() {
    let partitions = 18;
    let node = ClusterNode::start_partitions("peer-snapshot-transfers", partitions, &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let membership = node.membership_json();
    let open = |partition: u32, id: u64| RaftSnapshotRequest {
        partition,
        ..first_chunk(id, Some(4), 3, batches(&[0], &[2]), false, &membership)
    };
    let mut peer = node.peer();
    for p in 0..16 {
        expect_ack(
            peer.chunk(open(p, 100 + u64::from(p))),
            &format!("transfer of p{p}"),
        );
    }
    expect_bad_request(
        peer.chunk(open(16, 116)),
        "a 17th transfer",
        &["at most 16 snapshot transfers per connection"],
    );
    // Another chunk 0 for a partition already in progress replaces its transfer: no new place.
    expect_ack(
        peer.chunk(open(3, 200)),
        "a new transfer of p3 replaces the old one",
    );
    // Another connection has places of its own.
    let mut other = node.peer();
    expect_ack(
        other.chunk(open(16, 300)),
        "a transfer on another connection",
    );
    // A refused chunk drops its transfer and frees the place.
    let damaged = RaftSnapshotRequest {
        partition: 5,
        ..next_chunk(105, 1, vec![Bytes::from(vec![b'x'; 80])], false)
    };
    expect_bad_request(peer.chunk(damaged), "a damaged chunk of p5", &["bad magic"]);
    expect_ack(peer.chunk(open(17, 117)), "p17 takes the freed place");
    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-transfers");
}

#[test]
fn a_snapshot_whose_batches_do_not_match_its_meta_is_refused_at_its_last_chunk() {
    let node = ClusterNode::start("peer-snapshot-mismatch", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let refused_before = error_count(&node, "bad_snapshot_chunk");
    let membership = node.membership_json();
    // (what, meta's last Raft index, end_offset, batches as (offset, Raft index), message).
    type Case = (
        &'static str,
        Option<u64>,
        u64,
        Vec<(u64, u64)>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "Raft indexes with a gap",
            Some(5),
            3,
            vec![(0, 2), (1, 3), (2, 5)],
            &["snapshot batches jump from Raft index 3 to 5"],
        ),
        (
            "Raft indexes out of order",
            Some(4),
            3,
            vec![(0, 3), (1, 2), (2, 4)],
            &["snapshot batches jump from Raft index 3 to 2"],
        ),
        (
            "offsets with a gap",
            Some(4),
            6,
            vec![(0, 2), (1, 3), (5, 4)],
            &["not dense: offset 5 follows a batch ending at 2"],
        ),
        (
            "batches that end before meta.last_log_id",
            Some(9),
            3,
            vec![(0, 2), (1, 3), (2, 4)],
            &["covers Raft entries up to 9, its last batch has index 4"],
        ),
        (
            "batches that go past meta.last_log_id",
            Some(3),
            3,
            vec![(0, 2), (1, 3), (2, 4)],
            &["covers Raft entries up to 3, its last batch has index 4"],
        ),
        (
            "batches that end before end_offset",
            Some(4),
            10,
            vec![(0, 2), (1, 3), (2, 4)],
            &["ends at offset 10, its last batch ends at 3"],
        ),
        (
            "batches that go past end_offset",
            Some(4),
            2,
            vec![(0, 2), (1, 3), (2, 4)],
            &["ends at offset 2, its last batch ends at 3"],
        ),
        (
            "batches in a snapshot of no entry",
            None,
            3,
            vec![(0, 2), (1, 3), (2, 4)],
            &["a snapshot that covers no entry carries 3 batches"],
        ),
    ];
    let count = cases.len() as u64;
    let mut peer = node.peer();
    for (n, (what, last_index, end_offset, layout, needles)) in cases.into_iter().enumerate() {
        let (offsets, indexes): (Vec<u64>, Vec<u64>) = layout.into_iter().unzip();
        let all = batches(&offsets, &indexes);
        let id = 50 + 2 * n as u64;
        // All in one chunk.
        let chunk = first_chunk(id, last_index, end_offset, all.clone(), true, &membership);
        let mut wanted = vec!["snapshot of partition 0"];
        wanted.extend_from_slice(needles);
        expect_bad_request(peer.chunk(chunk), what, &wanted);
        // Over three chunks: the first two are acknowledged, the last is refused.
        let id = id + 1;
        let chunk0 = first_chunk(
            id,
            last_index,
            end_offset,
            all[..1].to_vec(),
            false,
            &membership,
        );
        expect_ack(peer.chunk(chunk0), what);
        expect_ack(
            peer.chunk(next_chunk(id, 1, all[1..2].to_vec(), false)),
            what,
        );
        let response = peer.chunk(next_chunk(id, 2, all[2..].to_vec(), true));
        expect_bad_request(response, what, &wanted);
    }
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(refused, 2 * count, "/stats counts each refused last chunk");

    // The control: the same snapshot made consistent passes these checks and reaches openraft,
    // which refuses to install it because its vote is older than the node's, and answers with
    // the node's vote. (Offsets 0..3 here are not the node's records: installing it would
    // replace the log, which the final check would see.)
    let all = batches(&[0, 1, 2], &[2, 3, 4]);
    let chunk0 = first_chunk(70, Some(4), 3, all[..2].to_vec(), false, &membership);
    expect_ack(peer.chunk(chunk0), "the consistent snapshot");
    match peer.chunk(next_chunk(70, 1, all[2..].to_vec(), true)) {
        Response::RaftSnapshot(answer) => {
            let vote = answer
                .vote
                .expect("the answer to the last chunk carries a vote");
            assert_eq!((vote.term, vote.node_id), (raft.term, NODE_ID), "{vote:?}");
        }
        other => panic!("the consistent snapshot: expected the node's vote, got {other:?}"),
    }
    // Retention may leave a snapshot with no batch at all: end_offset alone places the log.
    let empty = first_chunk(71, Some(4), 3, Vec::new(), true, &membership);
    match peer.chunk(empty) {
        Response::RaftSnapshot(answer) => {
            let vote = answer
                .vote
                .expect("the answer to the last chunk carries a vote");
            assert_eq!((vote.term, vote.node_id), (raft.term, NODE_ID), "{vote:?}");
        }
        other => panic!("the batchless snapshot: expected the node's vote, got {other:?}"),
    }
    let refused = error_count(&node, "bad_snapshot_chunk") - refused_before;
    assert_eq!(
        refused,
        2 * count,
        "the consistent snapshots were not counted as bad"
    );

    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-mismatch");
}

/// PROTOCOL.md: each element of `batches` is exactly one whole batch. An element with bytes
/// after its batch (garbage, or a second batch) is refused (a regression: only the batch at
/// the start of each element used to be checked, and the installer dropped the rest
/// silently).
#[test]
fn a_snapshot_batch_with_trailing_bytes_is_bad_request() {
    let node = ClusterNode::start("peer-snapshot-trailing", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let membership = node.membership_json();
    let good = batches(&[0, 1, 2], &[2, 3, 4]);
    let mut peer = node.peer();
    let trailing_garbage = {
        let mut bytes = good[2].to_vec();
        bytes.extend_from_slice(b"trailing garbage");
        Bytes::from(bytes)
    };
    let two_in_one = {
        let mut bytes = good[1].to_vec();
        bytes.extend_from_slice(&good[2]);
        Bytes::from(bytes)
    };
    // Each snapshot is consistent as far as the first batch of each element goes (the meta
    // and end_offset match those), so only the extra bytes are wrong.
    let cases = [
        (
            "garbage after the last batch",
            Some(4),
            3,
            vec![good[0].clone(), good[1].clone(), trailing_garbage],
        ),
        (
            "two batches in one element",
            Some(3),
            2,
            vec![good[0].clone(), two_in_one],
        ),
    ];
    for (n, (what, last_index, end_offset, batches)) in cases.into_iter().enumerate() {
        let id = 80 + n as u64;
        let chunk = first_chunk(id, last_index, end_offset, batches, true, &membership);
        expect_bad_request(peer.chunk(chunk), what, &["batch"]);
    }
    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-snapshot-trailing");
}

#[test]
fn join_and_leave_with_invalid_fields_are_bad_request_and_change_no_membership() {
    let node = ClusterNode::start("admin-join-leave", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let mut admin = node.admin();
    let members = |admin: &mut Peer| match admin.call(Request::Metadata(MetadataRequest {})) {
        Response::Metadata(meta) => meta.partitions[PARTITION as usize]
            .members
            .iter()
            .map(|m| (m.node_id, m.addr.clone(), m.voter))
            .collect::<Vec<_>>(),
        other => panic!("expected metadata, got {other:?}"),
    };
    let alone = vec![(NODE_ID, node.listen.to_string(), true)];
    assert_eq!(members(&mut admin), alone);
    let join = |node_id: u64, addr: &str| {
        Request::Join(JoinRequest {
            partition: PARTITION,
            node_id,
            addr: addr.to_string(),
        })
    };
    let leave = |node_id: u64| {
        Request::Leave(LeaveRequest {
            partition: PARTITION,
            node_id,
        })
    };

    // The dev client certificate has no `admin` right: what follows is refused for its
    // fields, not for who sends it.
    let mut client = Peer {
        conn: node.conn(ConnKind::Client, "client"),
        next_corr: 1,
    };
    let unauthorized = ServerError::Unauthorized {
        action: "admin".to_string(),
        object: "cluster".to_string(),
    };
    assert_eq!(server_error(&client.call(join(0, ""))), unauthorized);
    assert_eq!(server_error(&client.call(leave(0))), unauthorized);

    let good_addr = "127.0.0.1:7999";
    let joins: [(u64, &str, &[&str]); 12] = [
        (0, good_addr, &["node_id"]),
        (0, "", &["node_id"]),
        (2, "", &["addr"]),
        (2, "not-an-address", &["addr", "not-an-address"]),
        (2, "127.0.0.1", &["addr", "127.0.0.1"]),
        (2, "127.0.0.1:", &["addr", "127.0.0.1:"]),
        (2, ":7400", &["addr", ":7400"]),
        (2, "127.0.0.1:http", &["addr", "127.0.0.1:http"]),
        (2, "127.0.0.1:70000", &["addr", "127.0.0.1:70000"]),
        (2, "127.0.0.1:-1", &["addr", "127.0.0.1:-1"]),
        (2, "bad host:7400", &["addr", "bad host:7400"]),
        (2, " 127.0.0.1:7400", &["addr"]),
    ];
    for (node_id, addr, needles) in joins {
        let what = format!("join of node {node_id} at {addr:?}");
        expect_bad_request(admin.call(join(node_id, addr)), &what, needles);
    }
    expect_bad_request(admin.call(leave(0)), "leave of node 0", &["node_id"]);
    // The node is its partition's last voter: it cannot leave.
    expect_bad_request(
        admin.call(leave(NODE_ID)),
        "leave of the last voter",
        &["last voter"],
    );
    // The controls: a well-formed Leave of a node that is not a member is answered with
    // success and changes nothing; a Join to a partition the node does not have is
    // UNKNOWN_PARTITION.
    assert!(
        matches!(admin.call(leave(5)), Response::Leave(_)),
        "leave of a non-member"
    );
    let elsewhere = Request::Join(JoinRequest {
        partition: 7,
        node_id: 2,
        addr: good_addr.to_string(),
    });
    assert_eq!(
        server_error(&admin.call(elsewhere)),
        ServerError::UnknownPartition {
            partition: corelog::Partition(7)
        }
    );
    assert_eq!(members(&mut admin), alone, "the membership did not change");

    let mut peer = node.peer();
    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-join-leave");
}

#[test]
fn a_peer_frame_over_the_size_limit_gets_frame_too_large_like_a_client_frame() {
    let node = ClusterNode::start("peer-frame-too-large", &["--frame-bytes-max", "65536"]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let too_large_before = error_count(&node, "frame_too_large");
    let membership = node.membership_json();

    // A chunk just under the limit is read and handled (refused only for what it says).
    let mut peer = node.peer();
    let big = batches(&[0], &[2]);
    let mut fits = first_chunk(90, Some(2), 1, big, true, &membership);
    fits.vote = None;
    let frame_bytes = Request::RaftSnapshot(fits.clone()).frame_bytes();
    assert!(frame_bytes < 65_536, "{frame_bytes}");
    expect_bad_request(peer.chunk(fits), "a chunk with no vote", &["no vote"]);

    // Only the header of each oversized frame is sent: unread body bytes could turn the
    // server's close into a reset that loses the answer.
    let header = |length: u32, kind: u8, corr: u32| {
        let mut header = length.to_be_bytes().to_vec();
        header.push(kind);
        header.extend_from_slice(&corr.to_be_bytes());
        header
    };
    // One byte over the limit, on a peer connection and on a client connection: the same
    // typed error on the frame's correlation id, then the connection closes.
    let mut errors = Vec::new();
    for (kind, cert, frame_kind) in [
        (ConnKind::Peer, "node", KIND_RAFT_SNAPSHOT),
        (ConnKind::Client, "client", KIND_PRODUCE),
    ] {
        let mut conn = node.conn(kind, cert);
        conn.write_bytes(&header(65_537 - 4, frame_kind, 9))
            .expect("send the header");
        let (corr, response) = conn.recv();
        assert_eq!(
            corr, 9,
            "{kind:?}: the error names the frame's correlation id"
        );
        assert!(matches!(conn.expect_end(), Ending::Closed), "{kind:?}");
        errors.push(server_error(&response));
    }
    let expected = ServerError::FrameTooLarge {
        frame_bytes: 65_537,
        frame_bytes_max: 65_536,
    };
    assert_eq!(errors, [expected.clone(), expected]);

    // A length of 4 GiB on the peer connection that already carried a request: refused the
    // same way, without the node allocating it.
    peer.conn
        .write_bytes(&header(u32::MAX, KIND_RAFT_SNAPSHOT, 10))
        .expect("send the header");
    let (corr, response) = peer.conn.recv();
    assert_eq!(corr, 10);
    assert_eq!(
        server_error(&response),
        ServerError::FrameTooLarge {
            frame_bytes: 4 + u64::from(u32::MAX),
            frame_bytes_max: 65_536
        }
    );
    assert!(matches!(peer.conn.expect_end(), Ending::Closed));
    let too_large = error_count(&node, "frame_too_large") - too_large_before;
    assert_eq!(too_large, 3, "/stats counts each oversized frame");

    // A client frame on a peer connection is BAD_REQUEST and the connection stays.
    let mut peer = node.peer();
    let produce = Request::Produce(ProduceRequest {
        partition: PARTITION,
        records: vec![Bytes::from_static(b"through a peer connection")],
    });
    expect_bad_request(
        peer.call(produce),
        "a produce on a peer connection",
        &["not a peer frame"],
    );

    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-peer-frame-too-large");
}

/// AppendEntries may carry a records entry as the leader's stored batch (PROTOCOL.md, kind
/// stored_batch). One whose CRC fails, whose records do not fill it, or whose header names
/// another entry is refused with BAD_REQUEST before the Raft group sees the request; the same
/// request with the batch intact reaches the group (which answers it: here with its higher
/// vote, the sender's being stale).
#[test]
fn append_entries_with_a_damaged_stored_batch_is_bad_request_and_changes_nothing() {
    use corelog::proto::{RaftAppendRequest, RaftEntry, RaftEntryKind};
    let node = ClusterNode::start("peer-append-stored", &[]);
    let mut acked = seed_records(&node, 5, "before");
    let raft = RaftBefore::read(&node);
    let mut peer = node.peer();
    let index = 1_000;
    let meta = BatchMeta {
        timestamp_ms: 1_700_000_000_000,
        term: raft.term,
        raft_index: index,
    };
    let good = format::encode_batch(Offset(5), &[b"x".as_slice(), b"yz"], meta);
    let append = |batch: Bytes| {
        Request::RaftAppend(RaftAppendRequest {
            partition: PARTITION,
            from_node: STRANGER,
            vote: Some(stale_vote()),
            prev_log_id: None,
            entries: vec![RaftEntry {
                term: raft.term,
                index,
                kind: RaftEntryKind::StoredBatch as i32,
                batch,
                ..RaftEntry::default()
            }],
            leader_commit: None,
        })
    };
    let flipped = {
        let mut bytes = good.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        Bytes::from(bytes)
    };
    let other_entry = format::encode_batch(
        Offset(5),
        &[b"x".as_slice()],
        BatchMeta {
            raft_index: 7,
            ..meta
        },
    );
    let before = error_count(&node, "bad_body");
    for (what, batch, needle) in [
        ("a flipped bit", flipped, "checksum"),
        ("a cut batch", good.slice(..good.len() - 1), "stored batch"),
        ("another entry's batch", other_entry, "names entry 7"),
    ] {
        expect_bad_request(peer.call(append(batch)), what, &["stored batch", needle]);
    }
    assert_eq!(error_count(&node, "bad_body"), before + 3);
    match peer.call(append(good)) {
        Response::RaftAppend(answer) => {
            assert!(answer.higher_vote.is_some(), "{answer:?}")
        }
        other => panic!("the intact batch should reach the group, got {other:?}"),
    }
    raft.assert_undisturbed(&node, &mut peer);
    assert_log_intact(&node, &mut acked, "after-append-stored");
}
