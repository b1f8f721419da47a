//! Conversions between openraft's RPC types and the peer messages of `proto/corelog.proto`
//! (docs/PROTOCOL.md, "Peer API"). Pure functions, no I/O.
//!
//! Encoding cannot fail: every openraft value has a message. Decoding reads bytes another node
//! sent, so it never panics and never trusts a field: a required field that is absent, an enum
//! value this build does not know, a membership that is not valid JSON or not a valid
//! membership, a normal entry whose body is not exactly `count` records, or a stored batch
//! that is damaged or names another entry, is a
//! [`WireError`]. The receiver answers such a request with BAD_REQUEST; the Raft group is not
//! touched, so a bad message cannot stop it.
//!
//! Mapping rules:
//! - A log id is `(term, index)` (`leader_id_std`: the committed leader id is the term); an
//!   absent `RaftLogId` field is `None`.
//! - A vote is `(term, node_id, committed)`.
//! - Entry payloads: blank, normal (`RecordBatch`: timestamp, count, body; the body `Bytes` is
//!   shared with the frame, not copied), membership (openraft's `Membership` as JSON, the
//!   `serde` feature). `RecordBatch::base_offset` is local to a log and is not sent.
//! - A `RecordBatch` that carries its stored form (read from the sender's log or queued to
//!   it) is sent as that batch (kind STORED_BATCH), header and CRC included; the receiver
//!   checks the CRC, the records and that the header names the entry, and its log writes
//!   those bytes unchanged. The sender shares the batch with the frame; the receiver does too
//!   for a batch of at least `OWN_BUFFER_MIN_BYTES` (64 KiB) and copies a smaller one, which
//!   would otherwise pin the connection's shared read buffer from its log's tail cache.

use bytes::Bytes;
use openraft::raft::TransferLeaderError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::{EntryPayload, StoredMembership};

use crate::proto;
use crate::raft::types::{Entry, LeaderId, LogId, Membership, RecordBatch, TypeConfig, Vote};
use crate::storage::format::Batch;

/// The meta of a snapshot of a partition.
pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// Why a peer message could not be turned into openraft's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{message} has no {field}, which is required")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },

    #[error("{message}.{field} has value {value}, which this node does not know")]
    UnknownEnumValue {
        message: &'static str,
        field: &'static str,
        value: i32,
    },

    #[error("membership of {context} is not openraft membership JSON: {detail}")]
    BadMembershipJson { context: String, detail: String },

    #[error("membership of {context} is not valid: {detail}")]
    InvalidMembership { context: String, detail: String },

    #[error("normal entry {index} (term {term}) does not hold exactly {count} records")]
    BadRecords { term: u64, index: u64, count: u32 },

    #[error("stored batch of entry {index} (term {term}) is not valid: {detail}")]
    BadStoredBatch {
        term: u64,
        index: u64,
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Log ids and votes.
// ---------------------------------------------------------------------------------------------

pub fn encode_log_id(log_id: Option<&LogId>) -> Option<proto::RaftLogId> {
    log_id.map(|id| proto::RaftLogId {
        term: id.leader_id.term,
        index: id.index,
    })
}

pub fn decode_log_id(log_id: Option<proto::RaftLogId>) -> Option<LogId> {
    log_id.map(|id| crate::raft::types::log_id(id.term, id.index))
}

pub fn encode_vote(vote: &Vote) -> proto::RaftVote {
    proto::RaftVote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.voted_for,
        committed: vote.committed,
    }
}

/// A required vote field of `message`.
pub fn decode_vote(
    vote: Option<proto::RaftVote>,
    message: &'static str,
    field: &'static str,
) -> Result<Vote, WireError> {
    vote.map(vote_from_wire)
        .ok_or(WireError::MissingField { message, field })
}

fn vote_from_wire(vote: proto::RaftVote) -> Vote {
    openraft::Vote {
        leader_id: LeaderId {
            term: vote.term,
            voted_for: vote.node_id,
        },
        committed: vote.committed,
    }
}

// ---------------------------------------------------------------------------------------------
// Entries and memberships.
// ---------------------------------------------------------------------------------------------

/// `stored_batches`: the receiver takes kind STORED_BATCH (`RaftAppendResponse.stored_batches`);
/// otherwise a records entry goes as NORMAL, which every node takes.
pub fn encode_entry(entry: &Entry, stored_batches: bool) -> proto::RaftEntry {
    let mut wire = proto::RaftEntry {
        term: entry.log_id.leader_id.term,
        index: entry.log_id.index,
        ..proto::RaftEntry::default()
    };
    match &entry.payload {
        EntryPayload::Blank => wire.kind = proto::RaftEntryKind::Blank as i32,
        EntryPayload::Normal(batch) => match batch.stored.as_ref().filter(|_| stored_batches) {
            Some(stored) => {
                wire.kind = proto::RaftEntryKind::StoredBatch as i32;
                wire.batch = stored.bytes().clone();
            }
            None => {
                wire.kind = proto::RaftEntryKind::Normal as i32;
                wire.timestamp_ms = batch.timestamp_ms;
                wire.count = batch.count;
                wire.body = batch.body.clone();
            }
        },
        EntryPayload::Membership(membership) => {
            wire.kind = proto::RaftEntryKind::Membership as i32;
            wire.membership_json = encode_membership(membership);
        }
    }
    wire
}

pub fn decode_entry(wire: proto::RaftEntry) -> Result<Entry, WireError> {
    let log_id = crate::raft::types::log_id(wire.term, wire.index);
    let kind =
        proto::RaftEntryKind::try_from(wire.kind).map_err(|_| WireError::UnknownEnumValue {
            message: "RaftEntry",
            field: "kind",
            value: wire.kind,
        })?;
    let payload = match kind {
        proto::RaftEntryKind::Unspecified => {
            return Err(WireError::UnknownEnumValue {
                message: "RaftEntry",
                field: "kind",
                value: wire.kind,
            });
        }
        proto::RaftEntryKind::Blank => EntryPayload::Blank,
        proto::RaftEntryKind::Normal => {
            // A body that is not exactly `count` records would be refused by the log store,
            // which openraft treats as a fatal storage error: refuse it here instead.
            if crate::storage::format::check_records_body(wire.count, &wire.body).is_err() {
                return Err(WireError::BadRecords {
                    term: wire.term,
                    index: wire.index,
                    count: wire.count,
                });
            }
            EntryPayload::Normal(RecordBatch {
                timestamp_ms: wire.timestamp_ms,
                count: wire.count,
                body: wire.body,
                base_offset: None,
                stored: None,
                unsealed: None,
            })
        }
        proto::RaftEntryKind::StoredBatch => {
            let bad = |detail: String| WireError::BadStoredBatch {
                term: wire.term,
                index: wire.index,
                detail,
            };
            // A follower's log keeps the batch (in its tail cache). One smaller than
            // OWN_BUFFER_MIN_BYTES may sit in the read buffer the connection shares among
            // frames, which it would keep alive unseen by the cache's byte count: it gets
            // bytes of its own. A larger one came in a frame with its own buffer.
            let bytes = if wire.batch.len() < crate::net::conn::OWN_BUFFER_MIN_BYTES {
                Bytes::copy_from_slice(&wire.batch)
            } else {
                wire.batch.clone()
            };
            let batch = Batch::parse(bytes).map_err(|e| bad(e.to_string()))?;
            let header = *batch.header();
            if batch.len() != wire.batch.len() {
                return Err(bad(format!(
                    "{} bytes after the batch's {}",
                    wire.batch.len() - batch.len(),
                    batch.len()
                )));
            }
            if header.is_control() || header.record_count == 0 {
                return Err(bad("it holds no records".into()));
            }
            if (header.meta.term, header.meta.raft_index) != (wire.term, wire.index) {
                return Err(bad(format!(
                    "its header names entry {} (term {})",
                    header.meta.raft_index, header.meta.term
                )));
            }
            EntryPayload::Normal(RecordBatch {
                timestamp_ms: header.meta.timestamp_ms,
                count: header.record_count,
                body: batch.body(),
                base_offset: None,
                stored: Some(batch),
                unsealed: None,
            })
        }
        proto::RaftEntryKind::Membership => {
            EntryPayload::Membership(decode_membership(&wire.membership_json, || {
                format!("entry {} (term {})", wire.index, wire.term)
            })?)
        }
    };
    Ok(Entry { log_id, payload })
}

/// openraft's `Membership` as JSON.
pub fn encode_membership(membership: &Membership) -> Bytes {
    // Node ids and `BasicNode`s always serialize; a failure is a programmer error.
    Bytes::from(serde_json::to_vec(membership).expect("a Membership always serializes to JSON"))
}

/// Parses and validates a membership: every voter has a node, no joint config is empty.
/// `context` names what carried it, for the error.
pub fn decode_membership(
    json: &[u8],
    context: impl Fn() -> String,
) -> Result<Membership, WireError> {
    let membership: Membership =
        serde_json::from_slice(json).map_err(|e| WireError::BadMembershipJson {
            context: context(),
            detail: e.to_string(),
        })?;
    // Deserializing skips openraft's checks; `Membership::new` runs them. The initial empty
    // membership (no configs at all) is valid.
    if !membership.get_joint_config().is_empty() {
        let nodes: std::collections::BTreeMap<_, _> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        Membership::new(membership.get_joint_config().clone(), nodes).map_err(|e| {
            WireError::InvalidMembership {
                context: context(),
                detail: e.to_string(),
            }
        })?;
    }
    Ok(membership)
}

// ---------------------------------------------------------------------------------------------
// AppendEntries.
// ---------------------------------------------------------------------------------------------

pub fn encode_append_request(
    partition: u32,
    from_node: u64,
    request: &AppendEntriesRequest<TypeConfig>,
    stored_batches: bool,
) -> proto::RaftAppendRequest {
    proto::RaftAppendRequest {
        partition,
        from_node,
        vote: Some(encode_vote(&request.vote)),
        prev_log_id: encode_log_id(request.prev_log_id.as_ref()),
        entries: request
            .entries
            .iter()
            .map(|e| encode_entry(e, stored_batches))
            .collect(),
        leader_commit: encode_log_id(request.leader_commit.as_ref()),
    }
}

pub fn decode_append_request(
    wire: proto::RaftAppendRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    Ok(AppendEntriesRequest {
        vote: decode_vote(wire.vote, "RaftAppendRequest", "vote")?,
        prev_log_id: decode_log_id(wire.prev_log_id),
        entries: wire
            .entries
            .into_iter()
            .map(decode_entry)
            .collect::<Result<_, _>>()?,
        leader_commit: decode_log_id(wire.leader_commit),
    })
}

/// `stored_batches`: this node takes entries of kind STORED_BATCH (always, except when it
/// plays a node built before them, `--inject-legacy-replication`).
pub fn encode_append_response(
    response: &AppendEntriesResponse<TypeConfig>,
    stored_batches: bool,
) -> proto::RaftAppendResponse {
    use proto::RaftAppendResult as R;
    let mut wire = proto::RaftAppendResponse {
        stored_batches,
        ..proto::RaftAppendResponse::default()
    };
    match response {
        AppendEntriesResponse::Success => wire.result = R::Success as i32,
        AppendEntriesResponse::PartialSuccess(matched) => {
            wire.result = R::PartialSuccess as i32;
            wire.matched = encode_log_id(matched.as_ref());
        }
        AppendEntriesResponse::Conflict => wire.result = R::Conflict as i32,
        AppendEntriesResponse::HigherVote(vote) => {
            wire.result = R::HigherVote as i32;
            wire.higher_vote = Some(encode_vote(vote));
        }
    }
    wire
}

/// The response, and whether its sender takes entries of kind STORED_BATCH.
pub fn decode_append_response(
    wire: proto::RaftAppendResponse,
) -> Result<(AppendEntriesResponse<TypeConfig>, bool), WireError> {
    let stored_batches = wire.stored_batches;
    decode_append_result(wire).map(|r| (r, stored_batches))
}

fn decode_append_result(
    wire: proto::RaftAppendResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, WireError> {
    use proto::RaftAppendResult as R;
    let unknown = WireError::UnknownEnumValue {
        message: "RaftAppendResponse",
        field: "result",
        value: wire.result,
    };
    match R::try_from(wire.result).map_err(|_| unknown.clone())? {
        R::Unspecified => Err(unknown),
        R::Success => Ok(AppendEntriesResponse::Success),
        R::PartialSuccess => Ok(AppendEntriesResponse::PartialSuccess(decode_log_id(
            wire.matched,
        ))),
        R::Conflict => Ok(AppendEntriesResponse::Conflict),
        R::HigherVote => Ok(AppendEntriesResponse::HigherVote(decode_vote(
            wire.higher_vote,
            "RaftAppendResponse",
            "higher_vote",
        )?)),
    }
}

// ---------------------------------------------------------------------------------------------
// Vote and Pre-Vote.
// ---------------------------------------------------------------------------------------------

pub fn encode_vote_request(
    partition: u32,
    from_node: u64,
    request: &VoteRequest<TypeConfig>,
    pre_vote: bool,
) -> proto::RaftVoteRequest {
    proto::RaftVoteRequest {
        partition,
        from_node,
        vote: Some(encode_vote(&request.vote)),
        last_log_id: encode_log_id(request.last_log_id.as_ref()),
        leadership_transfer: request.leadership_transfer,
        pre_vote,
    }
}

/// The request, and whether it is a Pre-Vote.
pub fn decode_vote_request(
    wire: proto::RaftVoteRequest,
) -> Result<(VoteRequest<TypeConfig>, bool), WireError> {
    let request = VoteRequest {
        vote: decode_vote(wire.vote, "RaftVoteRequest", "vote")?,
        last_log_id: decode_log_id(wire.last_log_id),
        leadership_transfer: wire.leadership_transfer,
    };
    Ok((request, wire.pre_vote))
}

pub fn encode_vote_response(response: &VoteResponse<TypeConfig>) -> proto::RaftVoteResponse {
    proto::RaftVoteResponse {
        vote: Some(encode_vote(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: encode_log_id(response.last_log_id.as_ref()),
    }
}

pub fn decode_vote_response(
    wire: proto::RaftVoteResponse,
) -> Result<VoteResponse<TypeConfig>, WireError> {
    Ok(VoteResponse {
        vote: decode_vote(wire.vote, "RaftVoteResponse", "vote")?,
        vote_granted: wire.vote_granted,
        last_log_id: decode_log_id(wire.last_log_id),
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshots.
// ---------------------------------------------------------------------------------------------

pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> proto::RaftSnapshotMeta {
    proto::RaftSnapshotMeta {
        last_log_id: encode_log_id(meta.last_log_id.as_ref()),
        membership_log_id: encode_log_id(meta.last_membership.log_id().as_ref()),
        membership_json: encode_membership(meta.last_membership.membership()),
    }
}

/// A required meta field of a snapshot chunk.
pub fn decode_snapshot_meta(
    wire: Option<proto::RaftSnapshotMeta>,
) -> Result<SnapshotMeta, WireError> {
    let wire = wire.ok_or(WireError::MissingField {
        message: "RaftSnapshotRequest",
        field: "meta",
    })?;
    let membership = decode_membership(&wire.membership_json, || "a snapshot".to_string())?;
    Ok(SnapshotMeta {
        last_log_id: decode_log_id(wire.last_log_id),
        last_membership: StoredMembership::new(decode_log_id(wire.membership_log_id), membership),
    })
}

pub fn encode_snapshot_response(
    response: &SnapshotResponse<TypeConfig>,
) -> proto::RaftSnapshotResponse {
    proto::RaftSnapshotResponse {
        vote: Some(encode_vote(&response.vote)),
    }
}

/// The answer to a snapshot chunk: `None` acknowledges a chunk that was not the last one.
pub fn decode_snapshot_response(
    wire: proto::RaftSnapshotResponse,
) -> Option<SnapshotResponse<TypeConfig>> {
    // Cannot fail: an absent vote is the acknowledgement of an intermediate chunk.
    wire.vote
        .map(|vote| SnapshotResponse::new(vote_from_wire(vote)))
}

// ---------------------------------------------------------------------------------------------
// TransferLeader.
// ---------------------------------------------------------------------------------------------

pub fn encode_transfer_leader_request(
    partition: u32,
    from_node: u64,
    request: &TransferLeaderRequest<TypeConfig>,
) -> proto::RaftTransferLeaderRequest {
    proto::RaftTransferLeaderRequest {
        partition,
        from_node,
        from_leader: Some(encode_vote(request.from_leader())),
        to_node_id: *request.to_node_id(),
        last_log_id: encode_log_id(request.last_log_id()),
    }
}

pub fn decode_transfer_leader_request(
    wire: proto::RaftTransferLeaderRequest,
) -> Result<TransferLeaderRequest<TypeConfig>, WireError> {
    Ok(TransferLeaderRequest::new(
        decode_vote(wire.from_leader, "RaftTransferLeaderRequest", "from_leader")?,
        wire.to_node_id,
        decode_log_id(wire.last_log_id),
    ))
}

pub fn encode_transfer_leader_response(
    response: &TransferLeaderResponse<TypeConfig>,
) -> proto::RaftTransferLeaderResponse {
    use proto::RaftTransferLeaderResult as R;
    let mut wire = proto::RaftTransferLeaderResponse::default();
    match response {
        Ok(()) => wire.result = R::Ok as i32,
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            wire.result = R::VoteChanged as i32;
            wire.expected_vote = Some(encode_vote(expected));
            wire.actual_vote = Some(encode_vote(actual));
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            wire.result = R::LogNotFlushed as i32;
            wire.expected_log_id = encode_log_id(expected.as_ref());
            wire.actual_log_id = encode_log_id(actual.as_ref());
        }
    }
    wire
}

pub fn decode_transfer_leader_response(
    wire: proto::RaftTransferLeaderResponse,
) -> Result<TransferLeaderResponse<TypeConfig>, WireError> {
    use proto::RaftTransferLeaderResult as R;
    const MESSAGE: &str = "RaftTransferLeaderResponse";
    let unknown = WireError::UnknownEnumValue {
        message: MESSAGE,
        field: "result",
        value: wire.result,
    };
    match R::try_from(wire.result).map_err(|_| unknown.clone())? {
        R::Unspecified => Err(unknown),
        R::Ok => Ok(Ok(())),
        R::VoteChanged => Ok(Err(TransferLeaderError::VoteChanged {
            expected: decode_vote(wire.expected_vote, MESSAGE, "expected_vote")?,
            actual: decode_vote(wire.actual_vote, MESSAGE, "actual_vote")?,
        })),
        R::LogNotFlushed => Ok(Err(TransferLeaderError::LogNotFlushed {
            expected: decode_log_id(wire.expected_log_id),
            actual: decode_log_id(wire.actual_log_id),
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prost::Message;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::raft::types::{Node, log_id};

    fn vote(term: u64, node: u64, committed: bool) -> Vote {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    }

    fn membership() -> Membership {
        let voters = BTreeSet::from([1, 2, 3]);
        let nodes: BTreeMap<u64, Node> = (1..=4)
            .map(|id| (id, Node::new(format!("127.0.0.{id}:7400"))))
            .collect();
        // Node 4 is a learner.
        Membership::new(vec![voters], nodes).expect("valid membership")
    }

    fn joint_membership() -> Membership {
        let nodes: BTreeMap<u64, Node> = (1..=3)
            .map(|id| (id, Node::new(format!("10.0.0.{id}:7400"))))
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])], nodes)
            .expect("valid joint membership")
    }

    fn normal(term: u64, index: u64, values: &[&[u8]]) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(RecordBatch::from_values(values, 1_700_000_000_123)),
        }
    }

    fn every_entry() -> Vec<Entry> {
        vec![
            Entry {
                log_id: log_id(0, 0),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
            normal(1, 2, &[b"hello", b"", &[0xFF; 300]]),
            normal(1, 3, &[]),
            stored(1, 4, &[b"stored", b"batch"]),
            Entry {
                log_id: log_id(2, 4),
                payload: EntryPayload::Membership(joint_membership()),
            },
            Entry {
                log_id: log_id(u64::MAX, u64::MAX),
                payload: EntryPayload::Blank,
            },
        ]
    }

    /// Through protobuf bytes and back, as a peer would receive it.
    fn through_bytes<M: Message + Default>(message: &M) -> M {
        M::decode(Bytes::from(message.encode_to_vec())).expect("own encoding decodes")
    }

    #[test]
    fn log_ids_round_trip_including_none() {
        for id in [
            None,
            Some(log_id(0, 0)),
            Some(log_id(7, 42)),
            Some(log_id(u64::MAX, 1)),
        ] {
            let wire = encode_log_id(id.as_ref());
            assert_eq!(wire.is_none(), id.is_none());
            assert_eq!(decode_log_id(wire.map(|w| through_bytes(&w))), id);
        }
    }

    #[test]
    fn committed_and_uncommitted_votes_round_trip() {
        for v in [
            vote(0, 0, false),
            vote(3, 2, false),
            vote(3, 2, true),
            vote(u64::MAX, 9, true),
        ] {
            let wire = through_bytes(&encode_vote(&v));
            assert_eq!(decode_vote(Some(wire), "m", "f"), Ok(v));
        }
    }

    #[test]
    fn every_entry_kind_round_trips() {
        for entry in every_entry() {
            for stored_batches in [true, false] {
                let wire = through_bytes(&encode_entry(&entry, stored_batches));
                assert_eq!(decode_entry(wire).as_ref(), Ok(&entry), "{entry:?}");
            }
        }
    }

    /// A peer that has not said it takes STORED_BATCH (a node built before the kind) is sent
    /// the same records as a NORMAL entry, which it stores the same way.
    #[test]
    fn without_the_peers_word_a_stored_batch_goes_as_a_normal_entry() {
        let entry = stored(3, 9, &[b"abc", b"de"]);
        let EntryPayload::Normal(sent) = &entry.payload else {
            unreachable!()
        };
        let wire = encode_entry(&entry, false);
        assert_eq!(wire.kind, proto::RaftEntryKind::Normal as i32);
        assert!(wire.batch.is_empty());
        assert_eq!(
            (wire.timestamp_ms, wire.count, &wire.body),
            (sent.timestamp_ms, sent.count, &sent.body)
        );
        let decoded = decode_entry(through_bytes(&wire)).unwrap();
        assert_eq!(decoded, entry);
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: vote(3, 1, true),
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        };
        for (stored_batches, kind) in [
            (true, proto::RaftEntryKind::StoredBatch),
            (false, proto::RaftEntryKind::Normal),
        ] {
            let wire = encode_append_request(0, 1, &request, stored_batches);
            assert_eq!(wire.entries[0].kind, kind as i32);
        }
    }

    #[test]
    fn a_normal_entry_body_shares_the_frame_memory() {
        let entry = normal(1, 2, &[b"zero-copy"]);
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: vote(1, 1, true),
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        };
        let bytes = Bytes::from(encode_append_request(0, 1, &request, true).encode_to_vec());
        let wire = proto::RaftAppendRequest::decode(bytes.clone()).unwrap();
        let decoded = decode_append_request(wire).unwrap();
        let EntryPayload::Normal(batch) = &decoded.entries[0].payload else {
            panic!("not a normal entry");
        };
        let frame = bytes.as_ptr_range();
        assert!(frame.contains(&batch.body.as_ptr()), "the body was copied");
        assert_eq!(batch.base_offset, None, "base_offset is not replicated");
    }

    #[test]
    fn append_requests_round_trip() {
        let cases = [
            (None, Vec::new(), None),
            (Some(log_id(1, 1)), every_entry(), Some(log_id(1, 1))),
            (Some(log_id(5, 100)), vec![normal(5, 101, &[b"x"])], None),
        ];
        for (prev_log_id, entries, leader_commit) in cases {
            let request = AppendEntriesRequest::<TypeConfig> {
                vote: vote(5, 1, true),
                prev_log_id,
                entries,
                leader_commit,
            };
            let wire = through_bytes(&encode_append_request(9, 1, &request, true));
            assert_eq!((wire.partition, wire.from_node), (9, 1));
            let decoded = decode_append_request(wire).unwrap();
            assert_eq!(decoded.vote, request.vote);
            assert_eq!(decoded.prev_log_id, request.prev_log_id);
            assert_eq!(decoded.entries, request.entries);
            assert_eq!(decoded.leader_commit, request.leader_commit);
        }
    }

    #[test]
    fn every_append_response_round_trips_including_conflict_and_higher_vote() {
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 9))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote(4, 2, false)),
            AppendEntriesResponse::HigherVote(vote(4, 2, true)),
        ] {
            for stored_batches in [true, false] {
                let wire = through_bytes(&encode_append_response(&response, stored_batches));
                assert_eq!(
                    decode_append_response(wire),
                    Ok((response.clone(), stored_batches))
                );
            }
        }
    }

    #[test]
    fn vote_and_pre_vote_requests_round_trip() {
        for (last_log_id, transfer, pre_vote) in [
            (None, false, false),
            (Some(log_id(2, 7)), true, false),
            (Some(log_id(2, 7)), false, true),
        ] {
            let request = VoteRequest::<TypeConfig> {
                vote: vote(3, 2, false),
                last_log_id,
                leadership_transfer: transfer,
            };
            let wire = through_bytes(&encode_vote_request(4, 2, &request, pre_vote));
            assert_eq!((wire.partition, wire.from_node), (4, 2));
            assert_eq!(decode_vote_request(wire), Ok((request, pre_vote)));
        }
    }

    #[test]
    fn vote_responses_round_trip() {
        for (v, granted, last) in [
            (vote(3, 2, false), true, Some(log_id(2, 7))),
            (vote(4, 3, true), false, None),
        ] {
            let response = VoteResponse::<TypeConfig>::new(v, last, granted);
            let wire = through_bytes(&encode_vote_response(&response));
            assert_eq!(decode_vote_response(wire), Ok(response));
        }
    }

    #[test]
    fn snapshot_meta_round_trips_with_and_without_a_membership() {
        let metas = [
            SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::new(None, Membership::default()),
            },
            SnapshotMeta {
                last_log_id: Some(log_id(3, 500)),
                last_membership: StoredMembership::new(Some(log_id(1, 0)), membership()),
            },
            SnapshotMeta {
                last_log_id: Some(log_id(4, 9)),
                last_membership: StoredMembership::new(Some(log_id(4, 8)), joint_membership()),
            },
        ];
        for meta in metas {
            let wire = through_bytes(&encode_snapshot_meta(&meta));
            assert_eq!(decode_snapshot_meta(Some(wire)), Ok(meta));
        }
        assert_eq!(
            decode_snapshot_meta(None),
            Err(WireError::MissingField {
                message: "RaftSnapshotRequest",
                field: "meta"
            })
        );
    }

    #[test]
    fn snapshot_responses_round_trip_and_an_absent_vote_is_an_ack() {
        let response = SnapshotResponse::<TypeConfig>::new(vote(6, 1, true));
        let wire = through_bytes(&encode_snapshot_response(&response));
        assert_eq!(decode_snapshot_response(wire), Some(response));
        assert_eq!(
            decode_snapshot_response(proto::RaftSnapshotResponse { vote: None }),
            None
        );
    }

    #[test]
    fn transfer_leader_requests_and_every_response_round_trip() {
        for last in [None, Some(log_id(5, 50))] {
            let request = TransferLeaderRequest::<TypeConfig>::new(vote(5, 1, true), 3, last);
            let wire = through_bytes(&encode_transfer_leader_request(2, 1, &request));
            assert_eq!((wire.partition, wire.from_node, wire.to_node_id), (2, 1, 3));
            assert_eq!(decode_transfer_leader_request(wire), Ok(request));
        }
        let responses: [TransferLeaderResponse<TypeConfig>; 4] = [
            Ok(()),
            Err(TransferLeaderError::VoteChanged {
                expected: vote(5, 1, true),
                actual: vote(6, 2, false),
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: Some(log_id(5, 50)),
                actual: None,
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: None,
                actual: Some(log_id(5, 49)),
            }),
        ];
        for response in responses {
            let wire = through_bytes(&encode_transfer_leader_response(&response));
            assert_eq!(decode_transfer_leader_response(wire), Ok(response));
        }
    }

    #[test]
    fn required_votes_that_are_absent_are_typed_errors() {
        let append = proto::RaftAppendRequest::default();
        assert!(matches!(
            decode_append_request(append),
            Err(WireError::MissingField {
                message: "RaftAppendRequest",
                field: "vote"
            })
        ));
        assert!(matches!(
            decode_vote_request(proto::RaftVoteRequest::default()),
            Err(WireError::MissingField { field: "vote", .. })
        ));
        assert!(matches!(
            decode_vote_response(proto::RaftVoteResponse::default()),
            Err(WireError::MissingField { field: "vote", .. })
        ));
        assert!(matches!(
            decode_transfer_leader_request(proto::RaftTransferLeaderRequest::default()),
            Err(WireError::MissingField {
                field: "from_leader",
                ..
            })
        ));
        let higher = proto::RaftAppendResponse {
            result: proto::RaftAppendResult::HigherVote as i32,
            ..Default::default()
        };
        assert!(matches!(
            decode_append_response(higher),
            Err(WireError::MissingField {
                field: "higher_vote",
                ..
            })
        ));
        let changed = proto::RaftTransferLeaderResponse {
            result: proto::RaftTransferLeaderResult::VoteChanged as i32,
            expected_vote: Some(encode_vote(&vote(1, 1, true))),
            ..Default::default()
        };
        assert!(matches!(
            decode_transfer_leader_response(changed),
            Err(WireError::MissingField {
                field: "actual_vote",
                ..
            })
        ));
    }

    #[test]
    fn unspecified_and_unknown_enum_values_are_refused() {
        for value in [0, 5, 99, -1] {
            let entry = proto::RaftEntry {
                kind: value,
                ..Default::default()
            };
            assert_eq!(
                decode_entry(entry),
                Err(WireError::UnknownEnumValue {
                    message: "RaftEntry",
                    field: "kind",
                    value
                })
            );
        }
        for value in [0, 5, -3] {
            let response = proto::RaftAppendResponse {
                result: value,
                ..Default::default()
            };
            assert!(matches!(
                decode_append_response(response),
                Err(WireError::UnknownEnumValue { value: v, .. }) if v == value
            ));
        }
        for value in [0, 4, -3] {
            let response = proto::RaftTransferLeaderResponse {
                result: value,
                ..Default::default()
            };
            assert!(matches!(
                decode_transfer_leader_response(response),
                Err(WireError::UnknownEnumValue { value: v, .. }) if v == value
            ));
        }
    }

    #[test]
    fn a_normal_entry_whose_body_is_not_its_record_count_is_refused() {
        let good = encode_entry(&normal(2, 5, &[b"abc", b"de"]), true);
        for (count, body) in [
            (3, good.body.clone()),
            (1, good.body.clone()),
            (2, good.body.slice(..good.body.len() - 1)),
            (0, Bytes::from_static(b"\x01")),
            (1, Bytes::from_static(b"\xFF\xFF\xFF\xFFabc")),
        ] {
            let wire = proto::RaftEntry {
                count,
                body,
                ..good.clone()
            };
            assert_eq!(
                decode_entry(wire),
                Err(WireError::BadRecords {
                    term: 2,
                    index: 5,
                    count
                })
            );
        }
    }

    /// A normal entry as `term`/`index`'s batch in a log (base offset 40), carrying its
    /// stored form as an entry read from a log does (but no `base_offset`).
    fn stored(term: u64, index: u64, values: &[&[u8]]) -> Entry {
        let records = RecordBatch::from_values(values, 1_700_000_000_456);
        let meta = crate::storage::BatchMeta {
            timestamp_ms: records.timestamp_ms,
            term,
            raft_index: index,
        };
        let bytes = crate::storage::format::encode_records_body(
            crate::Offset(40),
            records.count,
            &records.body,
            meta,
        );
        let batch = Batch::parse(bytes).expect("own batch parses");
        // base_offset is local to a log and not sent: like `normal`, leave it out.
        let mut records = RecordBatch::from_stored(batch);
        records.base_offset = None;
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(records),
        }
    }

    #[test]
    fn a_stored_batch_travels_whole_and_arrives_as_the_same_records_sharing_the_frame() {
        let big = vec![7u8; crate::net::conn::OWN_BUFFER_MIN_BYTES];
        // A small batch gets bytes of its own (the frame may sit in a shared read buffer); a
        // large one (its frame has a buffer of its own) shares the frame.
        for (values, shares) in [
            (vec![&b"one"[..], b"", &[7; 200]], false),
            (vec![&b"one"[..], &big], true),
        ] {
            let entry = stored(3, 9, &values);
            let EntryPayload::Normal(sent) = &entry.payload else {
                unreachable!()
            };
            let wire = encode_entry(&entry, true);
            assert_eq!(wire.kind, proto::RaftEntryKind::StoredBatch as i32);
            assert!(
                wire.body.is_empty(),
                "the records travel once, inside the batch"
            );
            let bytes = Bytes::from(wire.encode_to_vec());
            let decoded = decode_entry(proto::RaftEntry::decode(bytes.clone()).unwrap()).unwrap();
            assert_eq!(decoded.log_id, entry.log_id);
            let EntryPayload::Normal(got) = &decoded.payload else {
                panic!("not a normal entry: {decoded:?}")
            };
            assert_eq!(
                (got.timestamp_ms, got.count, &got.body),
                (sent.timestamp_ms, sent.count, &sent.body)
            );
            assert_eq!(got.base_offset, None, "base_offset is not replicated");
            let got_batch = got.stored.as_ref().expect("arrives with its stored form");
            assert_eq!(
                got_batch.bytes(),
                sent.stored.as_ref().unwrap().bytes(),
                "byte for byte"
            );
            let frame = bytes.as_ptr_range();
            let len = got_batch.len();
            assert_eq!(
                frame.contains(&got_batch.bytes().as_ptr()),
                shares,
                "a batch of {len} bytes: shares the frame"
            );
            assert_eq!(frame.contains(&got.body.as_ptr()), shares, "{len} bytes");
        }
    }

    #[test]
    fn a_stored_batch_that_is_damaged_or_names_another_entry_is_refused() {
        let good = encode_entry(&stored(3, 9, &[b"abc", b"de"]), true);
        let mut flipped = good.batch.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let mut trailing = good.batch.to_vec();
        trailing.push(0);
        let control = crate::storage::format::encode_control(
            crate::Offset(40),
            b"x",
            crate::storage::BatchMeta {
                timestamp_ms: 1,
                term: 3,
                raft_index: 9,
            },
        );
        let cases: Vec<(proto::RaftEntry, &str)> = vec![
            (
                proto::RaftEntry {
                    batch: Bytes::from(flipped),
                    ..good.clone()
                },
                "checksum mismatch",
            ),
            (
                proto::RaftEntry {
                    batch: good.batch.slice(..good.batch.len() - 1),
                    ..good.clone()
                },
                "truncated",
            ),
            (
                proto::RaftEntry {
                    batch: Bytes::from(trailing),
                    ..good.clone()
                },
                "bytes after",
            ),
            (
                proto::RaftEntry {
                    batch: Bytes::new(),
                    ..good.clone()
                },
                "",
            ),
            (
                proto::RaftEntry {
                    batch: control,
                    ..good.clone()
                },
                "no records",
            ),
            (
                proto::RaftEntry {
                    batch: crate::storage::format::encode_batch::<&[u8]>(
                        crate::Offset(40),
                        &[],
                        crate::storage::BatchMeta {
                            timestamp_ms: 1,
                            term: 3,
                            raft_index: 9,
                        },
                    ),
                    ..good.clone()
                },
                "no records",
            ),
            (
                proto::RaftEntry {
                    index: 10,
                    ..good.clone()
                },
                "names entry 9 (term 3)",
            ),
            (
                proto::RaftEntry {
                    term: 4,
                    ..good.clone()
                },
                "names entry 9 (term 3)",
            ),
        ];
        for (wire, needle) in cases {
            let (term, index) = (wire.term, wire.index);
            match decode_entry(wire) {
                Err(WireError::BadStoredBatch {
                    term: t,
                    index: i,
                    detail,
                }) => {
                    assert_eq!((t, i), (term, index));
                    assert!(
                        detail.to_lowercase().contains(needle),
                        "{detail:?} should name {needle:?}"
                    );
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_and_invalid_memberships_are_refused() {
        let entry = |json: &'static [u8]| proto::RaftEntry {
            term: 1,
            index: 3,
            kind: proto::RaftEntryKind::Membership as i32,
            membership_json: Bytes::from_static(json),
            ..Default::default()
        };
        for json in [&b""[..], b"{", b"[]", b"{\"configs\":7}", b"\xFF\xFE"] {
            assert!(
                matches!(
                    decode_entry(entry(json)),
                    Err(WireError::BadMembershipJson { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(json)
            );
        }
        // A voter without a node, and an empty sub-config.
        for json in [
            &b"{\"configs\":[[1,2]],\"nodes\":{\"1\":{\"addr\":\"a:1\"}}}"[..],
            b"{\"configs\":[[]],\"nodes\":{}}",
        ] {
            let err = decode_entry(entry(json)).unwrap_err();
            assert!(
                matches!(&err, WireError::InvalidMembership { context, .. }
                    if context == "entry 3 (term 1)"),
                "{err:?}"
            );
        }
    }

    /// Fault model: a peer (a buggy or different build) sends arbitrary bytes as a body. Neither
    /// prost nor the conversions may panic; whatever decodes must convert or be an error.
    #[test]
    fn random_bodies_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_0005);
        let seeds: Vec<Vec<u8>> = vec![
            encode_append_request(
                1,
                2,
                &AppendEntriesRequest::<TypeConfig> {
                    vote: vote(1, 2, true),
                    prev_log_id: Some(log_id(1, 1)),
                    entries: every_entry(),
                    leader_commit: Some(log_id(1, 1)),
                },
                true,
            )
            .encode_to_vec(),
            encode_snapshot_meta(&SnapshotMeta {
                last_log_id: Some(log_id(3, 500)),
                last_membership: StoredMembership::new(Some(log_id(1, 0)), membership()),
            })
            .encode_to_vec(),
            encode_transfer_leader_response(&Err(TransferLeaderError::VoteChanged {
                expected: vote(1, 1, true),
                actual: vote(2, 2, false),
            }))
            .encode_to_vec(),
        ];
        for round in 0..3_000 {
            let mut body = seeds[round % seeds.len()].clone();
            if round % 4 == 3 {
                body = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            } else {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..body.len());
                    body[i] = rng.random();
                }
            }
            let body = Bytes::from(body);
            if let Ok(m) = proto::RaftAppendRequest::decode(body.clone()) {
                let _ = decode_append_request(m);
            }
            if let Ok(m) = proto::RaftAppendResponse::decode(body.clone()) {
                let _ = decode_append_response(m);
            }
            if let Ok(m) = proto::RaftVoteRequest::decode(body.clone()) {
                let _ = decode_vote_request(m);
            }
            if let Ok(m) = proto::RaftVoteResponse::decode(body.clone()) {
                let _ = decode_vote_response(m);
            }
            if let Ok(m) = proto::RaftSnapshotMeta::decode(body.clone()) {
                let _ = decode_snapshot_meta(Some(m));
            }
            if let Ok(m) = proto::RaftSnapshotResponse::decode(body.clone()) {
                let _ = decode_snapshot_response(m);
            }
            if let Ok(m) = proto::RaftTransferLeaderRequest::decode(body.clone()) {
                let _ = decode_transfer_leader_request(m);
            }
            if let Ok(m) = proto::RaftTransferLeaderResponse::decode(body) {
                let _ = decode_transfer_leader_response(m);
            }
        }
    }
}
