//! The Raft vocabulary of corelog: what one entry of a partition's Raft log carries.
//!
//! Every Raft entry is one batch in the partition's segment files (DESIGN.md §3). A normal
//! entry carries records; blank and membership entries are control batches, which take a Raft
//! index but no offset. The Raft term and index live in the batch header; the committed leader
//! id is the term alone (`leader_id_std`), so a log id is exactly `(term, index)`.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Offset;
use crate::raft::rt::GlommioRuntime;

/// A node of the cluster, as Raft knows it.
pub type NodeId = u64;

/// A node's address (the one TLS port) as stored in the membership.
pub type Node = openraft::BasicNode;

/// The leader id type: one leader per term, committed leader id = term.
pub type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;

openraft::declare_raft_types!(
    /// corelog's Raft type configuration.
    pub TypeConfig:
        D = RecordBatch,
        R = AppendResponse,
        NodeId = NodeId,
        Node = Node,
        Term = u64,
        LeaderId = LeaderId,
        AsyncRuntime = GlommioRuntime,
);

pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type LogId = openraft::LogId<openraft::vote::leader_id_std::CommittedLeaderId<u64>>;
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership =
    openraft::StoredMembership<openraft::vote::leader_id_std::CommittedLeaderId<u64>, NodeId, Node>;
pub type Raft = openraft::Raft<TypeConfig, crate::raft::store::StateMachine>;

/// The records of one produce request, as they will sit in the batch body: each record is
/// `[u32 little-endian length][value]` (format v1, `storage::format`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBatch {
    /// Set by the leader when the request is proposed; every replica stores the same value.
    pub timestamp_ms: i64,
    /// Number of records in `body`.
    pub count: u32,
    /// The encoded records.
    pub body: Bytes,
    /// The offset of the first record, once the entry sits in a log (set by the log store;
    /// not part of what is replicated).
    #[serde(skip)]
    pub base_offset: Option<Offset>,
}

impl RecordBatch {
    /// Encodes `values` as a batch body.
    pub fn from_values<V: AsRef<[u8]>>(values: &[V], timestamp_ms: i64) -> RecordBatch {
        let len: usize = values.iter().map(|v| 4 + v.as_ref().len()).sum();
        let mut body = Vec::with_capacity(len);
        for v in values {
            let v = v.as_ref();
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(v);
        }
        RecordBatch {
            timestamp_ms,
            count: values.len() as u32,
            body: Bytes::from(body),
            base_offset: None,
        }
    }
}

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatch")
            .field("count", &self.count)
            .field("bytes", &self.body.len())
            .field("base_offset", &self.base_offset)
            .finish()
    }
}

impl fmt::Display for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} records, {} bytes", self.count, self.body.len())
    }
}

/// What applying a normal entry answers: where its records landed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// Offset of the first record (for blank and membership entries: the next offset).
    pub base_offset: u64,
}

/// Builds a log id.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(
        openraft::vote::leader_id_std::CommittedLeaderId::new(term),
        index,
    )
}

/// A snapshot of a partition: for a log the state *is* the log, so a snapshot carries the
/// retained batches themselves (format v1 bytes, each checked on arrival), oldest first.
///
/// A snapshot built on this node is lazy ([`LogSnapshot::source`]): it names the log and the
/// last Raft index it covers, and its batches are read only when it is sent to a follower. A
/// snapshot received from the leader carries its batches.
#[derive(Clone, Default)]
pub struct LogSnapshot {
    pub batches: Vec<Bytes>,
    pub source: Option<SnapshotSource>,
}

/// Where a lazy snapshot's batches come from: every batch of `log` up to Raft index `upto`.
#[derive(Clone)]
pub struct SnapshotSource {
    pub log: crate::storage::Log,
    pub upto: u64,
}

impl fmt::Debug for LogSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSnapshot")
            .field("batches", &self.batches.len())
            .field("upto", &self.source.as_ref().map(|s| s.upto))
            .finish()
    }
}

impl LogSnapshot {
    /// Every batch of the snapshot, reading a lazy one from its log now.
    pub async fn into_batches(self) -> crate::Result<Vec<Bytes>> {
        let Some(source) = self.source else {
            return Ok(self.batches);
        };
        let mut out = self.batches;
        let mut next = 0;
        loop {
            let chunk = source.log.read_raft(next, 4 << 20).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            for b in chunk {
                let index = b.header().meta.raft_index;
                if index < next && !out.is_empty() {
                    continue;
                }
                if index > source.upto {
                    return Ok(out);
                }
                out.push(b.bytes().clone());
                next = index + 1;
            }
            if next > source.upto {
                return Ok(out);
            }
        }
    }
}
