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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSnapshot {
    pub batches: Vec<Bytes>,
}
