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
use crate::storage::format::{Batch, HEADER_BYTES};

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
#[derive(Clone, Serialize, Deserialize)]
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
    /// The whole batch (header and `body`) as a log stores it, when this entry came from one:
    /// read from this node's log, queued to it, or received that way from the leader. It is
    /// replicated as is, so a follower writes the leader's bytes, checked by their CRC, with
    /// no copy. `body` is a slice of it. Not part of equality: the same entry may or may not
    /// carry it.
    #[serde(skip)]
    pub stored: Option<Batch>,
    /// Made by [`RecordBatch::from_values`]: the records with room for a batch header in
    /// front (`body` is a slice of it), so the leader's log seals the batch around them
    /// without copying them. Taken when the entry is appended.
    #[serde(skip)]
    pub unsealed: Option<Bytes>,
}

impl PartialEq for RecordBatch {
    fn eq(&self, other: &Self) -> bool {
        self.timestamp_ms == other.timestamp_ms
            && self.count == other.count
            && self.body == other.body
            && self.base_offset == other.base_offset
    }
}

impl Eq for RecordBatch {}

impl RecordBatch {
    /// Encodes `values` as a batch body.
    pub fn from_values<V: AsRef<[u8]>>(values: &[V], timestamp_ms: i64) -> RecordBatch {
        let len: usize = values.iter().map(|v| 4 + v.as_ref().len()).sum();
        let mut buf = Vec::with_capacity(HEADER_BYTES + len);
        buf.resize(HEADER_BYTES, 0);
        for v in values {
            let v = v.as_ref();
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        let unsealed = Bytes::from(buf);
        RecordBatch {
            timestamp_ms,
            count: values.len() as u32,
            body: unsealed.slice(HEADER_BYTES..),
            base_offset: None,
            stored: None,
            unsealed: Some(unsealed),
        }
    }

    /// The entry's records as a stored batch says them (`batch` must be a records batch).
    pub fn from_stored(batch: Batch) -> RecordBatch {
        let header = batch.header();
        RecordBatch {
            timestamp_ms: header.meta.timestamp_ms,
            count: header.record_count,
            body: batch.body(),
            base_offset: Some(header.base_offset),
            stored: Some(batch),
            unsealed: None,
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
/// retained batches themselves (format v1 bytes, each checked on arrival), oldest first, and
/// the offset after the last record it covers. Retention may have removed every batch the
/// snapshot covers (it cuts up to the applied index): then `batches` is empty and
/// `end_offset` alone says where the receiver's log continues.
///
/// A snapshot built on this node is lazy ([`LogSnapshot::source`]): it names the log and the
/// last Raft index it covers, and its batches are read only when it is sent to a follower. A
/// snapshot received from the leader carries its batches.
#[derive(Clone, Default)]
pub struct LogSnapshot {
    pub batches: Vec<Bytes>,
    pub source: Option<SnapshotSource>,
    /// The offset after the last record covered: the high watermark once it is installed.
    pub end_offset: u64,
}

/// Why a snapshot's batches could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotReadError {
    /// It holds more bytes of batches than a node takes for one transfer.
    TooLarge { bytes_max: u64 },
    /// Reading the log failed, or retention removed batches while they were read.
    Other(String),
}

impl fmt::Display for SnapshotReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotReadError::TooLarge { bytes_max } => write!(
                f,
                "the snapshot holds more than the {bytes_max} bytes this node reads for one \
                 transfer (--snapshot-bytes-max)"
            ),
            SnapshotReadError::Other(message) => f.write_str(message),
        }
    }
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
            .field("end_offset", &self.end_offset)
            .finish()
    }
}

/// Checks that a snapshot's batches (their `headers`, oldest first) are what a snapshot
/// covering Raft entries up to `upto` (`None`: nothing) and offsets up to `end_offset` must
/// be: consecutive Raft indexes ending at `upto`, dense offsets ending at `end_offset`.
/// Installing one that is not would leave the receiver's offsets or entries unlike the
/// leader's.
pub fn check_snapshot_batches(
    headers: &[crate::storage::format::Header],
    upto: Option<u64>,
    end_offset: u64,
) -> Result<(), String> {
    let Some(last) = headers.last() else {
        return Ok(());
    };
    let Some(upto) = upto else {
        return Err(format!(
            "a snapshot that covers no entry carries {} batches",
            headers.len()
        ));
    };
    for pair in headers.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.meta.raft_index != a.meta.raft_index + 1 {
            return Err(format!(
                "snapshot batches jump from Raft index {} to {}",
                a.meta.raft_index, b.meta.raft_index
            ));
        }
        if b.base_offset != a.next_offset() {
            return Err(format!(
                "snapshot batches are not dense: offset {} follows a batch ending at {}",
                b.base_offset.get(),
                a.next_offset().get()
            ));
        }
    }
    if last.meta.raft_index != upto {
        return Err(format!(
            "the snapshot covers Raft entries up to {upto}, its last batch has index {}",
            last.meta.raft_index
        ));
    }
    if last.next_offset().get() != end_offset {
        return Err(format!(
            "the snapshot ends at offset {end_offset}, its last batch ends at {}",
            last.next_offset().get()
        ));
    }
    Ok(())
}

impl LogSnapshot {
    /// Every batch of the snapshot, reading a lazy one from its log now.
    pub async fn into_batches(self) -> Result<Vec<Bytes>, String> {
        self.into_batches_at_most(u64::MAX)
            .await
            .map_err(|e| e.to_string())
    }

    /// [`LogSnapshot::into_batches`], failing with [`SnapshotReadError::TooLarge`] as soon as
    /// the batches read add up to more than `bytes_max`: what a node holds of one snapshot in
    /// memory.
    pub async fn into_batches_at_most(
        self,
        bytes_max: u64,
    ) -> Result<Vec<Bytes>, SnapshotReadError> {
        let mut bytes = 0u64;
        let mut count = |b: &Bytes| -> Result<(), SnapshotReadError> {
            bytes = bytes.saturating_add(b.len() as u64);
            if bytes > bytes_max {
                return Err(SnapshotReadError::TooLarge { bytes_max });
            }
            Ok(())
        };
        for b in &self.batches {
            count(b)?;
        }
        let Some(source) = self.source else {
            return Ok(self.batches);
        };
        // From the oldest batch the log holds (retention may have removed the first ones, or
        // every one up to `upto`); from there on, indexes must be consecutive, or retention
        // removed segments while they were read and the snapshot must be read again later.
        let mut out = self.batches;
        let mut next: Option<u64> = None;
        loop {
            let chunk = source
                .log
                .read_raft(next.unwrap_or(0), 4 << 20)
                .await
                .map_err(|e| SnapshotReadError::Other(e.to_string()))?;
            let mut progressed = false;
            for b in chunk {
                let index = b.header().meta.raft_index;
                match next {
                    Some(n) if index < n => continue,
                    Some(n) if index > n => {
                        return Err(SnapshotReadError::Other(format!(
                            "retention removed Raft entries {n}..{index} while a snapshot of \
                             them was read; it is read again on the next attempt"
                        )));
                    }
                    _ => {}
                }
                if index > source.upto {
                    return Ok(out);
                }
                count(b.bytes())?;
                out.push(b.bytes().clone());
                next = Some(index + 1);
                progressed = true;
            }
            if !progressed || next.is_some_and(|n| n > source.upto) {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_read_only_up_to_the_byte_limit() {
        let snapshot = LogSnapshot {
            batches: vec![Bytes::from(vec![1u8; 600]), Bytes::from(vec![2u8; 500])],
            source: None,
            end_offset: 2,
        };
        let read = |max| futures_lite::future::block_on(snapshot.clone().into_batches_at_most(max));
        assert_eq!(read(1_100).map(|b| b.len()), Ok(2));
        let refused = read(1_099).unwrap_err();
        assert_eq!(refused, SnapshotReadError::TooLarge { bytes_max: 1_099 });
        assert!(
            refused.to_string().contains("--snapshot-bytes-max"),
            "{refused}"
        );
        assert_eq!(
            futures_lite::future::block_on(snapshot.into_batches()).map(|b| b.len()),
            Ok(2)
        );
    }
}
